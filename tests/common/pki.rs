//! Certificates for the signature tests, from rcgen: a root and code-signing leaves, with the
//! dates and names a test chooses (the openssl of these machines cannot backdate).

/// Certificates the openssl of these machines cannot make (dates in the past or far future,
/// any names), from rcgen: a root, and leaves signed by it.
pub struct RcPki {
    pub root_pem: String,
    issuer: rcgen::Issuer<'static, rcgen::KeyPair>,
}

pub fn rc_pki() -> RcPki {
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "rcgen root");
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params.key_usages = vec![
        rcgen::KeyUsagePurpose::KeyCertSign,
        rcgen::KeyUsagePurpose::CrlSign,
    ];
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = params.self_signed(&key).unwrap();
    RcPki {
        root_pem: cert.pem(),
        issuer: rcgen::Issuer::new(params, key),
    }
}

/// A leaf (key PEM, certificate PEM) with `edit` applied to code-signing defaults.
pub fn rc_leaf(pki: &RcPki, edit: impl FnOnce(&mut rcgen::CertificateParams)) -> (String, String) {
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "rcgen signer");
    params.subject_alt_names = vec![rcgen::SanType::Rfc822Name(
        "signer@example.com".try_into().unwrap(),
    )];
    params.key_usages = vec![rcgen::KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::CodeSigning];
    edit(&mut params);
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = params.signed_by(&key, &pki.issuer).unwrap();
    (key.serialize_pem(), cert.pem())
}

/// A leaf from `pki` written as `DIR/NAME.key` and `DIR/NAME.pem`: (key, certificate).
pub fn write_leaf(
    pki: &RcPki,
    dir: &std::path::Path,
    name: &str,
    edit: impl FnOnce(&mut rcgen::CertificateParams),
) -> (std::path::PathBuf, std::path::PathBuf) {
    let (key_pem, cert_pem) = rc_leaf(pki, edit);
    let (key, cert) = (
        dir.join(format!("{name}.key")),
        dir.join(format!("{name}.pem")),
    );
    std::fs::write(&key, key_pem).unwrap();
    std::fs::write(&cert, cert_pem).unwrap();
    (key, cert)
}
