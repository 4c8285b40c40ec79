//! `hoist inspect`: what an artifact is (its model, its files), whether it has an
//! image-volume form, and which signatures claim to cover it.

use clap::Args;
use hoist::reference::Reference;
use hoist::transfer;
use hoist::transfer::inspect::Signatures;
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
    /// With keys, roots or issuers: say per signature whether it would verify under them
    /// (a claim about the signature, not a pull).
    #[command(flatten)]
    verify: super::pull::VerifyKeyArgs,
}

pub async fn inspect(args: InspectArgs, env: &Env) -> Result<(), Error> {
    let reference = Reference::parse(&args.reference)?;
    let source = env.ctx.target(&reference)?;
    let verification = args.verify.verification()?;
    let found = transfer::inspect::inspect(&source, &reference, verification.as_ref()).await?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&found).expect("json"));
        return Ok(());
    }
    let manifest = &found.manifest;
    println!("Reference:     {reference}");
    println!("Digest:        {}", found.digest);
    println!(
        "Artifact type: {}",
        manifest
            .artifact_type
            .as_deref()
            .unwrap_or(&manifest.config.media_type)
    );
    if found.is_modelpack() {
        if let Some(line) = model_line(&found.config) {
            println!("Model:         {line}");
        }
    }
    if found.is_image_volume {
        println!(
            "Image volume:  yes (containerd and CRI-O mount this reference as the model's folder)"
        );
    } else if let Some(why) = &found.image_volume_unknown {
        println!("Image volume:  unknown ({why})");
    } else if found.is_modelpack() {
        match &found.image_volume {
            Some(v) => {
                let at = Reference {
                    tag: Some(v.tag.clone()),
                    digest: None,
                    ..reference.clone()
                };
                let which = if v.current {
                    "holds these files".to_string()
                } else if !v.platforms_agree {
                    format!(
                        "its platforms ({}) do not list the same layers: a node mounts other files by its architecture; push --image-volume again",
                        v.platforms.join(", ")
                    )
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
    print_signatures(&found.signatures);
    println!();
    println!("{:<40} {:>12}  MEDIA TYPE", "FILE", "SIZE");
    for file in &found.files {
        println!(
            "{:<40} {:>12}  {}",
            file.path,
            human_bytes(file.size),
            file.media_type
        );
    }
    let total: u64 = found.files.iter().map(|f| f.size).sum();
    println!(
        "{:<40} {:>12}  ({})",
        "TOTAL",
        human_bytes(total),
        count(found.files.len(), "layer")
    );
    Ok(())
}

/// `Signatures:    2 (claims, not verified here: ...)` and a line per claim.
fn print_signatures(signatures: &Signatures) {
    let (claims, total) = match signatures {
        Signatures::Found { claims, total } => (claims, total),
        Signatures::Unknown { unknown } => return println!("Signatures:    unknown ({unknown})"),
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
    match (claim.method, &claim.key_hint, &claim.identity) {
        (_, Some(hint), _) => line.push_str(&format!(" key {hint}")),
        (Some(method), None, Some(who)) => line.push_str(&format!(" {method} {who}")),
        _ => {}
    }
    if let Some(issuer) = &claim.issuer {
        line.push_str(&format!(" (issuer {issuer})"));
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
    if let Some(verdict) = &claim.verdict {
        line.push_str(&format!("; under the given trust: {verdict}"));
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
