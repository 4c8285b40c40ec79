//! `hoist attach` and `hoist discover`: signatures, SBOMs and reports attached to a model.

use std::collections::BTreeMap;
use std::path::PathBuf;

use clap::Args;
use hoist::reference::Reference;
use hoist::transfer::{self, Referrer};
use hoist::Error;

use super::commands::target;
use super::GlobalArgs;

#[derive(Args)]
pub struct AttachArgs {
    /// The artifact to attach to (tag or digest).
    reference: String,
    /// Files to attach (each one layer, titled by its name).
    files: Vec<PathBuf>,
    /// What the attachment is, e.g. application/spdx+json or application/vnd.dev.sigstore.bundle+json.
    #[arg(long)]
    artifact_type: String,
    /// Manifest annotations, `key=value` (repeatable).
    #[arg(long = "annotation", short = 'a', value_name = "KEY=VALUE")]
    annotations: Vec<String>,
}

#[derive(Args)]
pub struct DiscoverArgs {
    reference: String,
    /// Only referrers of this artifact type.
    #[arg(long)]
    artifact_type: Option<String>,
    /// `tree` (default) or `json`.
    #[arg(long, default_value = "tree", value_parser = ["tree", "json"])]
    format: String,
    /// How many levels of referrers of referrers to follow.
    #[arg(long, default_value_t = 8)]
    depth: usize,
}

pub async fn attach(args: AttachArgs, global: &GlobalArgs) -> Result<(), Error> {
    let reference = Reference::parse(&args.reference)?;
    let dest = target(&reference, global)?;
    let mut annotations = BTreeMap::new();
    for a in &args.annotations {
        let (k, v) = a
            .split_once('=')
            .ok_or_else(|| Error::Usage(format!("annotation {a:?} is not key=value")))?;
        annotations.insert(k.to_string(), v.to_string());
    }
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
    println!("Attached {} to {reference}", args.artifact_type);
    println!("Digest: {digest}");
    Ok(())
}

pub async fn discover(args: DiscoverArgs, global: &GlobalArgs) -> Result<(), Error> {
    let reference = Reference::parse(&args.reference)?;
    let source = target(&reference, global)?;
    let (_, _, subject) = source.fetch_manifest(&reference.target()).await?;
    let tree = transfer::discover(
        &source,
        &subject,
        args.artifact_type.as_deref(),
        args.depth.max(1),
    )
    .await?;
    if args.format == "json" {
        let doc = serde_json::json!({"reference": reference.to_string(), "digest": subject, "referrers": tree});
        println!("{}", serde_json::to_string_pretty(&doc).expect("json"));
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
