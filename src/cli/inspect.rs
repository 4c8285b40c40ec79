//! `hoist inspect`: what an artifact is (its model, its files), whether it has an
//! image-volume form, and which signatures claim to cover it.

use clap::Args;
use hoist::oci::LayerPlan;
use hoist::reference::Reference;
use hoist::transfer;
use hoist::transfer::signature::SignatureClaim;
use hoist::Error;

use super::global::Env;
use super::output::{count, human_bytes};

#[derive(Args)]
pub struct InspectArgs {
    /// The artifact, e.g. `registry/repo:tag` or a local-store name.
    reference: String,
    /// Print the raw manifest and config as JSON.
    #[arg(long)]
    json: bool,
}

pub async fn inspect(args: InspectArgs, env: &Env) -> Result<(), Error> {
    let reference = Reference::parse(&args.reference)?;
    let source = env.ctx.target(&reference)?;
    let resolved = source
        .resolve(&reference.target())
        .await
        .map_err(Error::from)?;
    let manifest = &resolved.manifest;
    let volume_form = hoist::pack::volume::is_volume_form(manifest);
    let modelpack =
        manifest.artifact_type.as_deref() == Some(hoist::oci::media::MODELPACK_ARTIFACT);
    // Whether a volume form exists is a side note: a registry that will not say (auth, a
    // hiccup) leaves it unknown rather than failing the inspect.
    let (volume, volume_unknown) = match (&reference.tag, modelpack) {
        (Some(tag), true) => {
            match transfer::find_volume_form(&source, tag, &resolved.manifest_digest).await {
                Ok(found) => (found, None),
                Err(e) => (None, Some(e.to_string())),
            }
        }
        _ => (None, None),
    };
    // Signatures, like the volume form, are a side note: shown as claims (no keys here),
    // unknown when the registry will not list them.
    let signatures = transfer::signature::claims(&source, &resolved).await;
    if args.json {
        let config = source.config_json(manifest).await;
        let doc = serde_json::json!({
            "digest": resolved.digest,
            "manifestDigest": resolved.manifest_digest,
            "manifest": manifest,
            "config": config,
            "isImageVolume": volume_form,
            "imageVolume": volume,
            "signatures": signatures_json(&signatures),
        });
        println!("{}", serde_json::to_string_pretty(&doc).expect("json"));
        return Ok(());
    }
    println!("Reference:     {reference}");
    println!("Digest:        {}", resolved.digest);
    println!(
        "Artifact type: {}",
        manifest
            .artifact_type
            .as_deref()
            .unwrap_or(&manifest.config.media_type)
    );
    if modelpack {
        if let Some(line) = model_line(&source.config_json(manifest).await) {
            println!("Model:         {line}");
        }
    }
    if volume_form {
        println!(
            "Image volume:  yes (containerd and CRI-O mount this reference as the model's folder)"
        );
    } else if let Some(why) = &volume_unknown {
        println!("Image volume:  unknown ({why})");
    } else if modelpack {
        match &volume {
            Some(v) => {
                let at = Reference {
                    tag: Some(v.tag.clone()),
                    digest: None,
                    ..reference.clone()
                };
                let which = if v.current {
                    "holds these files".to_string()
                } else {
                    match &v.of {
                        Some(of) => format!("made from another version, {of}: push --image-volume again"),
                        None => "does not say which version it holds".to_string(),
                    }
                };
                println!("Image volume:  {at} ({which})");
            }
            None => println!(
                "Image volume:  none (hoist push --image-volume or hoist convert --to image-volume publishes one)"
            ),
        }
    }
    print_signatures(&signatures);
    println!();
    println!("{:<40} {:>12}  MEDIA TYPE", "FILE", "SIZE");
    let plan = LayerPlan::from_manifest(manifest, true).ok();
    for layer in &manifest.layers {
        let name = plan
            .as_ref()
            .and_then(|p| p.layers.iter().find(|l| l.descriptor == *layer))
            .map_or_else(
                || format!("<{}>", &layer.digest.hex()[..12]),
                |l| l.path.display().to_string(),
            );
        println!(
            "{:<40} {:>12}  {}",
            name,
            human_bytes(layer.size),
            layer.media_type
        );
    }
    let total: u64 = manifest.layers.iter().map(|l| l.size).sum();
    println!(
        "{:<40} {:>12}  ({})",
        "TOTAL",
        human_bytes(total),
        count(manifest.layers.len(), "layer")
    );
    Ok(())
}

type Claims = Result<(Vec<SignatureClaim>, usize), hoist::transfer::TransferError>;

/// `{"total": N, "claims": [...]}`, or `{"unknown": why}`.
fn signatures_json(signatures: &Claims) -> serde_json::Value {
    match signatures {
        Ok((claims, total)) => serde_json::json!({ "total": total, "claims": claims }),
        Err(e) => serde_json::json!({ "unknown": e.to_string() }),
    }
}

/// `Signatures:    2 (claims, not verified here: ...)` and a line per claim.
fn print_signatures(signatures: &Claims) {
    let (claims, total) = match signatures {
        Ok(found) => found,
        Err(e) => return println!("Signatures:    unknown ({e})"),
    };
    if *total == 0 {
        return println!("Signatures:    none (hoist sign or push --sign attaches one)");
    }
    let shown = if claims.len() < *total {
        format!(", the newest {} shown", claims.len())
    } else {
        String::new()
    };
    println!(
        "Signatures:    {total}{shown} (claims, not verified here: pull --verify-key checks them)"
    );
    for claim in claims {
        // Everything but the digest is what a bundle says: no control character reaches the
        // terminal.
        let line: String = claim_line(claim)
            .chars()
            .map(|c| if c.is_control() { '?' } else { c })
            .collect();
        println!("  {line}");
    }
}

/// `sha256:0123456789ab key 5f2c…e1 "minilm" 7 files: covers these files`, or what is wrong.
fn claim_line(claim: &SignatureClaim) -> String {
    let mut line = claim.digest.as_str()[..19.min(claim.digest.as_str().len())].to_string();
    if let Some(hint) = &claim.key_hint {
        line.push_str(&format!(" key {hint}"));
    }
    if let Some(name) = &claim.name {
        line.push_str(&format!(" {name:?}"));
    }
    if let Some(files) = claim.files {
        line.push_str(&format!(" {}", count(files, "file")));
    }
    match &claim.problem {
        None => line.push_str(": covers these files"),
        Some(why) => line.push_str(&format!(": {why}")),
    }
    line
}

/// What a ModelPack config says the model is, on one line: `BertModel, 22.7m parameters,
/// float32, safetensors`; `None` when it says nothing.
fn model_line(config: &serde_json::Value) -> Option<String> {
    let c = &config["config"];
    let text = |v: &serde_json::Value| v.as_str().filter(|s| !s.is_empty()).map(str::to_owned);
    let parts: Vec<String> = [
        text(&c["architecture"]),
        text(&c["paramSize"]).map(|p| format!("{p} parameters")),
        text(&c["precision"]),
        text(&c["quantization"]),
        text(&c["format"]),
    ]
    .into_iter()
    .flatten()
    .collect();
    (!parts.is_empty()).then(|| parts.join(", "))
}
