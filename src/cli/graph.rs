//! `hoist attach` and `hoist discover`: signatures, SBOMs and reports attached to a model.

use std::collections::BTreeMap;
use std::path::PathBuf;

use clap::Args;
use hoist::reference::Reference;
use hoist::transfer::{self, Referrer};
use hoist::Error;

use super::global::Env;
use super::output::print_json;
use super::parse;

#[derive(Args)]
pub struct AttachArgs {
    /// The artifact to attach to (tag or digest).
    reference: String,
    /// Files to attach (each one layer, titled by its name).
    files: Vec<PathBuf>,
    /// What the attachment is, e.g. application/spdx+json or application/vnd.dev.sigstore.bundle+json.
    #[arg(long)]
    artifact_type: String,
    /// Manifest annotations, `KEY=VALUE` (repeatable).
    #[arg(long = "annotation", short = 'a', value_name = "KEY=VALUE", value_parser = parse::annotation)]
    annotations: Vec<(String, String)>,
    /// Print the result as JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
pub struct SignArgs {
    /// The model to sign (tag or digest); its manifest is signed, not re-read files.
    reference: String,
    /// The EC private key (PEM: SEC1 or PKCS#8; P-256, P-384 or P-521).
    #[arg(long, value_name = "KEY.pem")]
    key: PathBuf,
    /// The key's X.509 certificate (PEM): the bundle carries the chain, and verifiers check it
    /// against their roots (`--verify-cert-chain`) instead of holding the public key.
    #[arg(long, value_name = "CERT.pem")]
    cert: Option<PathBuf>,
    /// Intermediate certificates (PEM, repeatable) between the certificate and the root.
    #[arg(long, value_name = "CHAIN.pem", requires = "cert")]
    cert_chain: Vec<PathBuf>,
    /// The statement's subject name (the model folder's name); default the repository's
    /// last component.
    #[arg(long)]
    name: Option<String>,
}

#[derive(Args)]
pub struct DiscoverArgs {
    /// The artifact whose attachments to show (tag or digest).
    reference: String,
    /// Only referrers of this artifact type.
    #[arg(long)]
    artifact_type: Option<String>,
    /// Print the tree as JSON.
    #[arg(long)]
    json: bool,
    /// `--format json` is `--json` (kept for scripts that used it).
    #[arg(long, hide = true, value_parser = ["tree", "json"])]
    format: Option<String>,
    /// How many levels of referrers of referrers to follow.
    #[arg(long, default_value_t = 8)]
    depth: usize,
}

/// `hoist sign`: sign a pushed model and attach the signature as a referrer.
pub async fn sign(args: SignArgs, env: &Env) -> Result<(), Error> {
    let signer = hoist::sign::SigningKey::load(&args.key, args.cert.as_deref(), &args.cert_chain)
        .map_err(transfer::TransferError::from)?;
    let reference = Reference::parse(&args.reference)?;
    let target = env.ctx.target(&reference)?;
    let name = args.name.unwrap_or_else(|| {
        let repo = &reference.repository;
        repo.rsplit('/').next().unwrap_or(repo).to_string()
    });
    let digest = transfer::signature::sign(&target, &reference.target(), &signer, &name).await?;
    println!("Signed {} with {}", args.reference, signer.describe());
    println!("Digest: {digest}");
    Ok(())
}

pub async fn attach(args: AttachArgs, env: &Env) -> Result<(), Error> {
    let reference = Reference::parse(&args.reference)?;
    let dest = env.ctx.target(&reference)?;
    let annotations: BTreeMap<String, String> = args.annotations.iter().cloned().collect();
    for f in &args.files {
        if !f.is_file() {
            return Err(Error::Usage(format!("{} is not a file", f.display())));
        }
    }
    let digest = transfer::attach(
        &dest,
        &reference.target(),
        &args.files,
        &args.artifact_type,
        annotations,
    )
    .await?;
    if args.json {
        print_json(&serde_json::json!({
            "reference": reference.to_string(),
            "artifactType": args.artifact_type,
            "digest": digest,
        }));
        return Ok(());
    }
    println!("Attached {} to {reference}", args.artifact_type);
    println!("Digest: {digest}");
    Ok(())
}

pub async fn discover(args: DiscoverArgs, env: &Env) -> Result<(), Error> {
    let reference = Reference::parse(&args.reference)?;
    let source = env.ctx.target(&reference)?;
    let (_, _, subject) = source.fetch_manifest(&reference.target()).await?;
    let tree = transfer::discover(
        &source,
        &subject,
        args.artifact_type.as_deref(),
        args.depth.max(1),
    )
    .await?;
    if args.json || args.format.as_deref() == Some("json") {
        print_json(&serde_json::json!({
            "reference": reference.to_string(),
            "digest": subject,
            "referrers": tree,
        }));
        return Ok(());
    }
    println!("{reference}@{subject}");
    print_tree(&tree, "");
    Ok(())
}

/// ORAS-style tree: artifact type, then digest, then what refers to that.
fn print_tree(nodes: &[Referrer], indent: &str) {
    for (i, node) in nodes.iter().enumerate() {
        let last = i + 1 == nodes.len();
        let (branch, next) = if last {
            ("└── ", "    ")
        } else {
            ("├── ", "│   ")
        };
        let kind = node
            .descriptor
            .artifact_type
            .as_deref()
            .unwrap_or("(no artifact type)");
        println!("{indent}{branch}{kind}");
        println!("{indent}{next}└── {}", node.descriptor.digest);
        print_tree(&node.referrers, &format!("{indent}{next}    "));
    }
}
