//! The local store's own commands: `list`, `rm`, `tag`, `prune`.

use clap::Args;
use hoist::reference::Reference;
use hoist::Error;

use super::global::Env;
use super::output::{count, human_bytes, print_json};
use super::parse;

#[derive(Args)]
pub struct ListArgs {
    /// Print the result as JSON (one object per tag).
    #[arg(long)]
    json: bool,
}

pub fn list(args: ListArgs, env: &Env) -> Result<(), Error> {
    let store = env.ctx.existing_store()?;
    let rows = store.listing()?;
    if args.json {
        print_json(&rows);
        return Ok(());
    }
    if rows.is_empty() {
        println!(
            "The local store {} is empty; `hoist push DIR NAME:TAG` adds a model.",
            store.root().display()
        );
        return Ok(());
    }
    println!("{:<40} {:>12}  DIGEST", "REFERENCE", "SIZE");
    for row in rows {
        println!(
            "{:<40} {:>12}  {}",
            row.reference,
            row.size.map_or("-".into(), human_bytes),
            row.digest
        );
    }
    Ok(())
}

#[derive(Args)]
pub struct RmArgs {
    /// A local-store model: `name:tag`, or `name@sha256:…` for every tag pointing at it.
    reference: String,
    /// Print the result as JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
pub struct PruneArgs {
    /// Keep the newest N versions of each repository (a version: a manifest with its tags,
    /// as new as its newest tag).
    #[arg(long, value_name = "N", required_unless_present = "older_than")]
    keep: Option<usize>,
    /// Remove versions last tagged longer ago than this (e.g. 30d, 12h).
    #[arg(long, value_name = "AGE", value_parser = parse::age)]
    older_than: Option<std::time::Duration>,
    /// Print the result as JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
pub struct TagArgs {
    /// The local-store model to name (`name:tag` or `name@sha256:…`).
    source: String,
    /// The new name (`name:tag`; `name:v2,latest` tags twice).
    target: String,
}

/// A reference that must name the local store.
fn local(reference: &str, verb: &str) -> Result<(Reference, Vec<String>), Error> {
    let (parsed, tags) = Reference::parse_with_tags(reference)?;
    if let Some(registry) = &parsed.registry {
        return Err(Error::Usage(format!(
            "hoist {verb} works on the local store; {reference} names the registry {registry}"
        )));
    }
    Ok((parsed, tags))
}

pub fn rm(args: RmArgs, env: &Env) -> Result<(), Error> {
    let (reference, _) = local(&args.reference, "rm")?;
    let store = env.ctx.existing_store()?;
    let removed = store.remove(
        &reference.repository,
        reference.tag.as_deref(),
        reference.digest.as_ref(),
    )?;
    if args.json {
        print_json(&removed);
        return Ok(());
    }
    println!(
        "Removed {}; freed {} ({})",
        removed.tags.join(", "),
        count(removed.freed_blobs, "blob"),
        human_bytes(removed.freed_bytes)
    );
    Ok(())
}

pub fn tag(args: TagArgs, env: &Env) -> Result<(), Error> {
    let (source, _) = local(&args.source, "tag")?;
    let (target, tags) = local(&args.target, "tag")?;
    if tags.is_empty() {
        return Err(Error::Usage(format!(
            "{} names no tag (e.g. {}:v2)",
            args.target, target.repository
        )));
    }
    let store = env.ctx.existing_store()?;
    let manifest = store.find(
        &source.repository,
        source.tag.as_deref(),
        source.digest.as_ref(),
    )?;
    for tag in &tags {
        store.tag_as(&manifest, &target.repository, tag)?;
    }
    println!(
        "Tagged {} as {}",
        manifest.digest,
        tags.iter()
            .map(|t| format!("{}:{t}", target.repository))
            .collect::<Vec<_>>()
            .join(", ")
    );
    Ok(())
}

pub fn prune(args: PruneArgs, env: &Env) -> Result<(), Error> {
    let store = env.ctx.existing_store()?;
    let pruned = store.prune(hoist::store::Keep {
        newest: args.keep,
        younger_than: args.older_than,
    })?;
    if args.json {
        print_json(&pruned);
        return Ok(());
    }
    for version in &pruned.versions {
        println!("Removed {}", version.tags.join(", "));
    }
    println!(
        "Pruned {}; freed {} ({})",
        count(pruned.versions.len(), "version"),
        count(pruned.freed_blobs, "blob"),
        human_bytes(pruned.freed_bytes)
    );
    Ok(())
}
