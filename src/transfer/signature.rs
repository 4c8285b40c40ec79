//! Model signatures as referrers of the model's manifest: [`sign`] attaches a bundle
//! (`artifactType` the bundle's media type, one layer `model.sig`); [`require`] finds one
//! that a verification key vouches for and that covers the manifest's files exactly. Both
//! work from the manifest alone: a raw layer's digest is its file's SHA-256.

use std::collections::BTreeMap;

use super::{Resolved, Target, TransferError};
use crate::digest::Digest;
use crate::oci::{LayerFormat, LayerPlan, Manifest, ManifestKind};
use crate::sign::{self, SignError, SigningKey, Trust, BUNDLE_MEDIA_TYPE, MAX_BUNDLE_BYTES};

/// Each file of the manifest and its SHA-256 (hex), by path. Only raw layers name their
/// file's digest; a tar layer's files are known only once unpacked, so such an artifact is
/// refused for signing and verification alike.
pub fn manifest_files(manifest: &Manifest) -> Result<BTreeMap<String, String>, TransferError> {
    let plan = LayerPlan::from_manifest(manifest, false)?;
    let mut files = BTreeMap::new();
    for layer in &plan.layers {
        if layer.format != LayerFormat::Raw {
            return Err(SignError::Mismatch(format!(
                "{} is a {:?} layer: signatures are checked against raw layers (hoist's default push), whose digests are the files'",
                layer.path.display(),
                layer.format
            ))
            .into());
        }
        let name = layer
            .path
            .components()
            .map(|c| c.as_os_str().to_string_lossy())
            .collect::<Vec<_>>()
            .join("/");
        files.insert(name, layer.descriptor.digest.hex().to_string());
    }
    Ok(files)
}

/// Sign the manifest `reference` names with `signer` (a key, and its certificate chain if it
/// has one) and attach the bundle to it. `name` is the statement's subject (the model
/// folder's name). Returns the referrer's digest.
pub async fn sign(
    target: &Target,
    reference: &str,
    signer: &SigningKey,
    name: &str,
) -> Result<Digest, TransferError> {
    let resolved = target.resolve(reference).await?;
    let files = manifest_files(&resolved.manifest)?;
    let bundle = sign::sign(name, &files, &sign::own_paths(), &signer.key, &signer.chain);
    let dir = tempfile::tempdir().map_err(TransferError::io(&std::env::temp_dir()))?;
    let path = dir.path().join(sign::SIGNATURE_FILE);
    std::fs::write(&path, &bundle).map_err(TransferError::io(&path))?;
    super::attach(
        target,
        resolved.manifest_digest.as_str(),
        &[path],
        BUNDLE_MEDIA_TYPE,
        BTreeMap::new(),
    )
    .await
}

/// What `verification` requires of `resolved` (from `target`): the bundle of a signature
/// that vouches for it, `None` when nothing is checked or when a `warn` rule let a failed
/// check through (reported on one line first). Nothing is placed before this returns.
pub async fn check(
    target: &Target,
    resolved: &Resolved,
    verification: &sign::Verification,
) -> Result<Option<Vec<u8>>, TransferError> {
    let Some(requirement) = verification.for_repository(&target.policy_name())? else {
        return Ok(None);
    };
    match require(target, resolved, &requirement.trust).await {
        Ok(bundle) => Ok(Some(bundle)),
        Err(TransferError::Signature(e)) if requirement.mode == sign::Mode::Warn => {
            tracing::warn!("signature policy warns, the model is placed unverified: {e}");
            Ok(None)
        }
        Err(e) => Err(e),
    }
}

/// The bundle of a signature `trust` vouches for that covers `resolved`'s files exactly,
/// looked for among the manifest's signature referrers (the newest [`sign::MAX_CANDIDATES`]).
/// Nothing is downloaded but manifests and bundles.
pub async fn require(
    target: &Target,
    resolved: &Resolved,
    trust: &Trust,
) -> Result<Vec<u8>, TransferError> {
    let files = manifest_files(&resolved.manifest)?;
    if files.contains_key(sign::SIGNATURE_FILE) {
        return Err(SignError::Mismatch(format!(
            "the model has a file named {}, where a verified pull writes the signature",
            sign::SIGNATURE_FILE
        ))
        .into());
    }
    let unsigned = |why: String| SignError::Unsigned {
        reference: format!("{}@{}", target.repository(), resolved.manifest_digest),
        why,
    };
    let (newest, total) = newest_signatures(target, resolved).await?;
    if total == 0 {
        return Err(unsigned("no signature is attached".into()).into());
    }
    let mut last = None;
    for digest in &newest {
        match candidate(target, digest, trust, &files).await {
            Ok(bundle) => return Ok(bundle),
            Err(e) => {
                tracing::debug!("signature {digest}: {e}");
                // The most telling failure wins: one from a key we hold over "not ours".
                let not_ours = matches!(
                    e,
                    SignError::OtherKey(_) | SignError::NoRoots(_) | SignError::Keyless(_)
                );
                if !not_ours || last.is_none() {
                    last = Some(e);
                }
            }
        }
    }
    let why = last.map_or_else(|| "none could be read".into(), |e| e.to_string());
    Err(unsigned(why).into())
}

/// The signature referrers of `resolved` that are looked at, the newest
/// [`sign::MAX_CANDIDATES`] first, and how many are attached in all. One level: the listing
/// is bounded by its body size, and only the newest few are read.
async fn newest_signatures(
    target: &Target,
    resolved: &Resolved,
) -> Result<(Vec<Digest>, usize), TransferError> {
    let referrers =
        super::referrers::list(target, &resolved.manifest_digest, Some(BUNDLE_MEDIA_TYPE)).await?;
    let newest = referrers
        .iter()
        .rev()
        .take(sign::MAX_CANDIDATES)
        .map(|r| r.digest.clone())
        .collect();
    Ok((newest, referrers.len()))
}

/// One signature referrer: its bundle, checked against the trust and the files.
async fn candidate(
    target: &Target,
    digest: &Digest,
    trust: &Trust,
    files: &BTreeMap<String, String>,
) -> Result<Vec<u8>, SignError> {
    let bundle = fetch_bundle(target, digest).await?;
    let signed = sign::open(&bundle, trust)?;
    sign::covers(&signed, files)?;
    Ok(bundle)
}

/// The bundle of the signature referrer `digest`: its manifest's first layer, at most
/// [`MAX_BUNDLE_BYTES`].
async fn fetch_bundle(target: &Target, digest: &Digest) -> Result<Vec<u8>, SignError> {
    let unreadable = |why: &str| SignError::Bundle(why.to_string());
    let (media_type, bytes, _) = target
        .fetch_manifest(digest.as_str())
        .await
        .map_err(|e| unreadable(&format!("its manifest cannot be read ({e})")))?;
    let manifest = match ManifestKind::parse(Some(&media_type), &bytes) {
        Ok(ManifestKind::Image(m)) => m,
        _ => return Err(unreadable("its manifest is not an image manifest")),
    };
    let layer = manifest
        .layers
        .first()
        .ok_or_else(|| unreadable("its manifest has no layer"))?;
    if layer.size > MAX_BUNDLE_BYTES {
        return Err(SignError::TooLarge(MAX_BUNDLE_BYTES));
    }
    target
        .small_blob(layer, MAX_BUNDLE_BYTES)
        .await
        .ok_or_else(|| unreadable("its bundle cannot be read whole"))
}

/// A signature attached to a manifest as its bundle claims, read without keys: for showing
/// (`hoist inspect`), not for trusting. Only a pull with keys verifies one.
#[derive(Debug, Clone, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SignatureClaim {
    /// The signature referrer's manifest.
    pub digest: Digest,
    /// How the signer is named: `key`, `certificate` or `sigstore`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub method: Option<&'static str>,
    /// The hint of the key that claims to have signed (hex SHA-256 of its PEM text); only
    /// a hex one is kept.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key_hint: Option<String>,
    /// Who the certificate names (subject, SANs), as written in it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub identity: Option<String>,
    /// A Sigstore certificate's OIDC issuer, as written in it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub issuer: Option<String>,
    /// With what to trust signatures by (inspect's `--verify-…` flags): `verifies`, or why
    /// not. A claim about these bytes under those roots and keys, not a placement.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub verdict: Option<String>,
    /// The signed folder's name.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// How many files the statement lists.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub files: Option<usize>,
    /// Why the bundle does not cover the manifest's files exactly, or cannot be read;
    /// `None` when its statement lists exactly them.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub problem: Option<String>,
}

/// The signatures attached to `resolved` (the newest [`sign::MAX_CANDIDATES`], newest
/// first) with what each claims, and how many are attached in all. With `trust`, each also
/// says whether it would verify under it.
pub async fn claims(
    target: &Target,
    resolved: &Resolved,
    trust: Option<&Trust>,
) -> Result<(Vec<SignatureClaim>, usize), TransferError> {
    let (newest, total) = newest_signatures(target, resolved).await?;
    let files = manifest_files(&resolved.manifest).map_err(|e| e.to_string());
    let mut claims = Vec::new();
    for digest in newest {
        let bundle = fetch_bundle(target, &digest).await;
        let claimed = bundle
            .as_ref()
            .map_err(clone_error)
            .and_then(|b| sign::describe(b));
        let mut claim = match claimed {
            Ok(signed) => claim_of(digest, &signed, &files),
            Err(e) => SignatureClaim {
                digest,
                method: None,
                key_hint: None,
                identity: None,
                issuer: None,
                verdict: None,
                name: None,
                files: None,
                problem: Some(e.to_string()),
            },
        };
        if let (Some(trust), Ok(bundle), Ok(files)) = (trust, &bundle, &files) {
            claim.verdict = Some(
                match sign::open(bundle, trust).and_then(|s| sign::covers(&s, files)) {
                    Ok(()) => "verifies".into(),
                    Err(e) => e.to_string(),
                },
            );
        }
        claims.push(claim);
    }
    Ok((claims, total))
}

fn clone_error(e: &SignError) -> SignError {
    SignError::Bundle(e.to_string())
}

/// What a readable bundle claims, shown as written.
fn claim_of(
    digest: Digest,
    signed: &sign::Signed,
    files: &Result<BTreeMap<String, String>, String>,
) -> SignatureClaim {
    let (identity, issuer) = match &signed.method {
        sign::Method::Key => (None, None),
        sign::Method::Certificate(who) => (Some(who.to_string()), None),
        sign::Method::Sigstore(logged) => (
            Some(logged.identity.to_string()),
            Some(logged.issuer.clone()),
        ),
    };
    SignatureClaim {
        digest,
        method: Some(signed.method.name()),
        // A hint is hex; anything else is not shown as one.
        key_hint: Some(signed.key.clone())
            .filter(|k| (1..=128).contains(&k.len()) && k.bytes().all(|b| b.is_ascii_hexdigit())),
        identity,
        issuer,
        verdict: None,
        name: Some(signed.name.clone()),
        files: Some(signed.files.len()),
        problem: match files {
            Ok(files) => sign::covers(signed, files).err().map(|e| e.to_string()),
            Err(e) => Some(e.clone()),
        },
    }
}
