//! `verify`: a pulled folder checked against its artifact or its ready marker.

use std::path::PathBuf;

use clap::Args;
use hoist::reference::Reference;
use hoist::transfer::{self};
use hoist::Error;

use super::global::Env;
use super::output::{count, print_json};

#[derive(Args)]
pub struct VerifyArgs {
    /// The folder the files were pulled into.
    #[arg(default_value = ".", env = "HOIST_OUTPUT")]
    dir: PathBuf,
    /// Check against this artifact's manifest (sizes and digests of its files).
    #[arg(value_name = "REFERENCE", required_unless_present_any = ["marker", "key", "cert_chain"])]
    reference: Option<String>,
    /// Check offline against the ready marker `hoist pull --ready-marker` wrote.
    #[arg(
        long,
        env = "HOIST_READY_MARKER",
        value_name = "FILE",
        conflicts_with = "reference"
    )]
    marker: Option<PathBuf>,
    /// Check offline against the folder's signature (DIR/model.sig, OpenSSF model signing)
    /// by this public key (PEM; repeatable): exactly the signed files, digest for digest.
    #[arg(long, value_name = "PUB.pem", conflicts_with_all = ["reference", "marker"])]
    key: Vec<PathBuf>,
    /// Check offline against the folder's signature by a certificate that chains to these
    /// roots (PEM; repeatable), valid now and for code signing.
    #[arg(long, value_name = "ROOTS.pem", conflicts_with_all = ["reference", "marker"])]
    cert_chain: Vec<PathBuf>,
    /// With --cert-chain: the identity the signing certificate must name, its subject or a
    /// SAN (email, URI, DNS name), exactly or as a glob (repeatable: any one).
    #[arg(long, value_name = "IDENTITY", requires = "cert_chain")]
    cert_identity: Vec<String>,
    /// Hash every file, even those the pull's record vouches for.
    #[arg(long)]
    full: bool,
    /// Print the result as JSON.
    #[arg(long)]
    json: bool,
}

/// Check a pulled folder: against a manifest (every differing file listed), or offline
/// against its ready marker. Either way files nobody expects are listed too.
pub async fn verify(args: VerifyArgs, env: &Env) -> Result<(), Error> {
    let verified = match (&args.reference, &args.marker) {
        (Some(reference), _) => {
            let parsed = Reference::parse(reference)?;
            let source = env.ctx.target(&parsed)?;
            transfer::verify_folder(&source, &parsed.target(), &args.dir, args.full).await?
        }
        (None, Some(marker)) => transfer::verify_marker(&args.dir, marker, args.full)?,
        (None, None) => {
            let trust = hoist::sign::Trust::load(&args.key, &args.cert_chain, &args.cert_identity)
                .map_err(transfer::TransferError::from)?
                .unwrap_or_default();
            transfer::verify::verify_signature(&args.dir, &trust, args.full)?
        }
    };
    if args.json {
        print_json(&verified);
        return Ok(());
    }
    println!(
        "Verified {} of {} ({}) in {}{}",
        count(verified.checked, "file"),
        verified.reference,
        verified.digest,
        verified.dir.display(),
        match verified.unchecked_tar_layers {
            0 => String::new(),
            1 => "; 1 tar layer has no per-file digests and was not checked".into(),
            n => format!("; {n} tar layers have no per-file digests and were not checked"),
        }
    );
    Ok(())
}
