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
    #[arg(value_name = "REFERENCE", required_unless_present_any = ["marker", "key", "cert_chain", "cert_oidc_issuer"])]
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
    #[arg(long, value_name = "IDENTITY")]
    cert_identity: Vec<String>,
    /// Check offline against the folder's Sigstore signature: its certificate issued for an
    /// identity (--cert-identity) of this OIDC issuer (exact or glob; repeatable).
    #[arg(long, value_name = "ISSUER", conflicts_with_all = ["reference", "marker"])]
    cert_oidc_issuer: Vec<String>,
    /// The Sigstore trusted root (`trusted_root.json`); default the public-good one, built in.
    #[arg(long, value_name = "FILE")]
    sigstore_trusted_root: Option<PathBuf>,
    /// Check this signature bundle alone (a `model.sig` anywhere), not a folder: the
    /// signature and who signed; the files it lists are reported, not checked.
    #[arg(long, value_name = "BUNDLE", conflicts_with_all = ["reference", "marker"])]
    bundle: Option<PathBuf>,
    /// Hash every file, even those the pull's record vouches for.
    #[arg(long)]
    full: bool,
    /// Print the result as JSON.
    #[arg(long)]
    json: bool,
}

/// `verify --bundle`: the signature alone, its files listed as not checked.
fn verify_bundle(path: &std::path::Path, trust: &hoist::sign::Trust) -> Result<(), Error> {
    let signed = transfer::verify::verify_bundle(path, trust)?;
    println!(
        "Verified the signature of {:?} by {}; its {} are not checked here",
        signed.name,
        transfer::verify::signer_words(&signed),
        count(signed.files.len(), "listed file")
    );
    Ok(())
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
            let trust = hoist::sign::Trust::load(&hoist::sign::TrustOptions {
                keys: args.key.clone(),
                roots: args.cert_chain.clone(),
                identities: args.cert_identity.clone(),
                oidc_issuers: args.cert_oidc_issuer.clone(),
                sigstore_root: args.sigstore_trusted_root.clone(),
            })
            .map_err(transfer::TransferError::from)?
            .unwrap_or_default();
            match &args.bundle {
                Some(bundle) => return verify_bundle(bundle, &trust),
                None => transfer::verify::verify_signature(&args.dir, &trust, args.full)?,
            }
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
