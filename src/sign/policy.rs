//! Which signatures a pull requires: the keys given on the command line (every model must
//! be signed by one of them), or a policy file that says per repository which keys vouch and
//! whether a failure stops the pull (`enforce`), is reported and let through (`warn`), or is
//! not checked (`off`).
//!
//! ```toml
//! [[rule]]
//! repositories = "registry.example.com/models/**"   # glob on REGISTRY/REPOSITORY
//! keys = ["/etc/hoist-keys/team.pem"]                # any one may vouch
//! roots = ["/etc/hoist-keys/corp-ca.pem"]            # or a certificate chaining to these
//! identities = ["ml-release@example.com"]            # naming one of these (subject or SAN, glob)
//! mode = "enforce"                                   # the default
//! ```
//!
//! The first rule whose pattern matches decides. A repository no rule matches is refused:
//! a policy is a list of what is allowed, so a forgotten repository fails closed.
//!
//! Registries are matched in one canonical spelling ([`canonical_registry`]): a pattern's
//! registry part, when it is written without glob characters, is read the same way as the
//! registry of a pull, so `localhost:05930`, `LOCALHOST:5930` and `127.1:5930` all meet a
//! rule for `127.0.0.1:5930`. Names no parser can tie together (a DNS alias, another address
//! of the same server) stay apart; a permissive rule (`off`, `warn`) after `enforce` rules
//! would let them through, so loading warns about that order.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::{load_public_keys, CertTrust, PublicKey, SignError, SigstoreTrust, TrustedRoot};
use crate::reference::canonical_registry;

/// Most rules a policy file may hold, and its largest size: it is read whole.
const MAX_RULES: usize = 1024;
const MAX_POLICY_BYTES: u64 = 1 << 20;

/// What a failed signature check does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// The pull stops (exit 9) and places nothing.
    Enforce,
    /// The failure is reported on one line and the model is placed (without `model.sig`).
    Warn,
    /// No signature is looked for.
    Off,
}

impl Mode {
    fn name(self) -> &'static str {
        match self {
            Mode::Enforce => "enforce",
            Mode::Warn => "warn",
            Mode::Off => "off",
        }
    }
}

/// What a verifier was given to trust signatures by, as paths and patterns (the flags, a
/// policy rule): keys; certificate roots; the identities a certificate must name; the OIDC
/// issuers a Sigstore certificate must name, with the Sigstore trusted root (the public-good
/// instance's when none is given). Empty paths (an unset variable in a manifest) are none.
#[derive(Debug, Clone, Default)]
pub struct TrustOptions {
    pub keys: Vec<PathBuf>,
    pub roots: Vec<PathBuf>,
    pub identities: Vec<String>,
    pub oidc_issuers: Vec<String>,
    pub sigstore_root: Option<PathBuf>,
}

fn given(paths: &[PathBuf]) -> Vec<PathBuf> {
    paths
        .iter()
        .filter(|p| !p.as_os_str().is_empty())
        .cloned()
        .collect()
}

/// Who may vouch for a model: any of these keys, a certificate chaining to these roots and
/// naming an allowed identity, or a Sigstore signature by an allowed identity and issuer.
#[derive(Debug, Default)]
pub struct Trust {
    pub keys: Vec<PublicKey>,
    pub certs: Option<CertTrust>,
    pub sigstore: Option<SigstoreTrust>,
}

impl Trust {
    /// What `opts` name, loaded and checked; `None` when they name nothing to trust.
    pub fn load(opts: &TrustOptions) -> Result<Option<Trust>, SignError> {
        let (keys, roots) = (given(&opts.keys), given(&opts.roots));
        let issuers: Vec<String> = opts
            .oidc_issuers
            .iter()
            .filter(|i| !i.is_empty())
            .cloned()
            .collect();
        let identities = opts.identities.iter().any(|i| !i.is_empty());
        if keys.is_empty() && roots.is_empty() && issuers.is_empty() {
            if identities {
                return Err(SignError::Key(
                    "an identity to require was given without certificate roots (--verify-cert-chain) or an OIDC issuer (--cert-oidc-issuer)".into(),
                ));
            }
            return Ok(None);
        }
        let certs = match roots.is_empty() {
            true => None,
            false => Some(CertTrust::load(&roots, &opts.identities)?),
        };
        let sigstore = match issuers.is_empty() {
            true => None,
            false => {
                let root = match opts
                    .sigstore_root
                    .as_deref()
                    .filter(|p| !p.as_os_str().is_empty())
                {
                    Some(path) => TrustedRoot::load(path)?,
                    None => TrustedRoot::public_good(),
                };
                Some(SigstoreTrust::new(root, &opts.identities, &issuers)?)
            }
        };
        Ok(Some(Trust {
            keys: load_public_keys(&keys)?,
            certs,
            sigstore,
        }))
    }
}

/// Who may vouch for one repository's models, and what a failure does.
#[derive(Debug, Clone)]
pub struct Requirement {
    pub trust: Arc<Trust>,
    pub mode: Mode,
}

/// What a command that places models requires of their signatures.
#[derive(Debug, Clone)]
pub enum Verification {
    /// Every model, signed by one of these keys or certificates.
    Trust(Arc<Trust>),
    /// Per repository, as the policy says.
    Policy(Arc<Policy>),
}

impl Verification {
    /// What the flags ask for, `None` when nothing is: a policy file, else what `trust`
    /// names.
    pub fn from_files(
        trust: &TrustOptions,
        policy: Option<&Path>,
    ) -> Result<Option<Verification>, SignError> {
        if let Some(path) = policy.filter(|p| !p.as_os_str().is_empty()) {
            return Ok(Some(Verification::Policy(Arc::new(Policy::load(path)?))));
        }
        Ok(Trust::load(trust)?.map(|t| Verification::Trust(Arc::new(t))))
    }

    /// The requirement for `repository` (`REGISTRY/REPOSITORY`), `None` when nothing is
    /// checked; an error when a policy covers no such repository.
    pub fn for_repository(&self, repository: &str) -> Result<Option<Requirement>, SignError> {
        match self {
            Verification::Trust(trust) => Ok(Some(Requirement {
                trust: trust.clone(),
                mode: Mode::Enforce,
            })),
            Verification::Policy(policy) => policy.for_repository(repository),
        }
    }
}

#[derive(Debug)]
pub struct Policy {
    path: PathBuf,
    rules: Vec<Rule>,
}

#[derive(Debug)]
struct Rule {
    pattern: String,
    matcher: globset::GlobMatcher,
    requirement: Requirement,
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct PolicyFile {
    #[serde(default)]
    rule: Vec<RuleFile>,
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct RuleFile {
    repositories: String,
    #[serde(default)]
    keys: Vec<PathBuf>,
    #[serde(default)]
    roots: Vec<PathBuf>,
    #[serde(default)]
    identities: Vec<String>,
    #[serde(default)]
    oidc_issuers: Vec<String>,
    #[serde(default)]
    sigstore_root: Option<PathBuf>,
    #[serde(default = "enforce")]
    mode: Mode,
}

fn enforce() -> Mode {
    Mode::Enforce
}

impl Policy {
    /// Read and check the policy at `path`: every pattern compiles, every key loads (key
    /// paths relative to the policy's folder), every rule that checks names a key.
    pub fn load(path: &Path) -> Result<Policy, SignError> {
        use std::io::Read;
        let bad = |why: String| SignError::Policy(format!("{}: {why}", path.display()));
        let mut text = String::new();
        std::fs::File::open(path)
            .and_then(|f| f.take(MAX_POLICY_BYTES + 1).read_to_string(&mut text))
            .map_err(|e| bad(e.to_string()))?;
        if text.len() as u64 > MAX_POLICY_BYTES {
            return Err(bad(format!("over {MAX_POLICY_BYTES} bytes")));
        }
        let file: PolicyFile = toml::from_str(&text).map_err(|e| bad(one_line(&e.to_string())))?;
        if file.rule.is_empty() {
            return Err(bad(
                "no [[rule]]: the policy would refuse every model".into()
            ));
        }
        if file.rule.len() > MAX_RULES {
            return Err(bad(format!("over {MAX_RULES} rules")));
        }
        let base = path.parent().unwrap_or(Path::new("."));
        let rules = file
            .rule
            .into_iter()
            .map(|r| Rule::new(r, base).map_err(bad))
            .collect::<Result<_, _>>()?;
        let policy = Policy {
            path: path.to_path_buf(),
            rules,
        };
        for warning in policy.warnings() {
            tracing::warn!("{}: {warning}", path.display());
        }
        Ok(policy)
    }

    /// What is legal but likely a hole: a permissive rule (`off` or `warn`) after an
    /// `enforce` rule takes every name the enforce rules miss, other spellings of their
    /// registry included.
    pub fn warnings(&self) -> Vec<String> {
        let Some(first_enforce) = self
            .rules
            .iter()
            .position(|r| r.requirement.mode == Mode::Enforce)
        else {
            return Vec::new();
        };
        self.rules[first_enforce + 1..]
            .iter()
            .filter(|r| r.requirement.mode != Mode::Enforce)
            .map(|r| {
                format!(
                    "rule {:?} (mode {}) follows the enforce rule {:?}: a name the enforce rules do not match, such as another name of the same registry, is let through unverified; prefer enforce as the last, catch-all rule and list the exceptions before it",
                    r.pattern,
                    r.requirement.mode.name(),
                    self.rules[first_enforce].pattern
                )
            })
            .collect()
    }

    fn for_repository(&self, repository: &str) -> Result<Option<Requirement>, SignError> {
        let rule = self
            .rules
            .iter()
            .find(|r| r.matcher.is_match(repository))
            .ok_or_else(|| {
                SignError::Uncovered(format!(
                    "no rule of {} covers {repository}, so it is refused",
                    self.path.display()
                ))
            })?;
        tracing::debug!("signature policy for {repository}: rule {:?}", rule.pattern);
        Ok((rule.requirement.mode != Mode::Off).then(|| rule.requirement.clone()))
    }
}

impl Rule {
    fn new(r: RuleFile, base: &Path) -> Result<Rule, String> {
        let matcher = globset::GlobBuilder::new(&canonical_pattern(&r.repositories))
            .literal_separator(true)
            .build()
            .map_err(|e| format!("rule {:?}: {e}", r.repositories))?
            .compile_matcher();
        if r.mode != Mode::Off
            && r.keys.is_empty()
            && r.roots.is_empty()
            && r.oidc_issuers.is_empty()
        {
            return Err(format!(
                "rule {:?} checks signatures but names no key, no roots and no OIDC issuer",
                r.repositories
            ));
        }
        let opts = TrustOptions {
            keys: r.keys.iter().map(|k| base.join(k)).collect(),
            roots: r.roots.iter().map(|k| base.join(k)).collect(),
            identities: r.identities.clone(),
            oidc_issuers: r.oidc_issuers.clone(),
            sigstore_root: r.sigstore_root.as_ref().map(|p| base.join(p)),
        };
        let trust = Trust::load(&opts)
            .map_err(|e| format!("rule {:?}: {e}", r.repositories))?
            .unwrap_or_default();
        Ok(Rule {
            pattern: r.repositories,
            matcher,
            requirement: Requirement {
                trust: Arc::new(trust),
                mode: r.mode,
            },
        })
    }
}

/// A pattern with its registry part in the canonical spelling, when that part is written
/// without glob characters (`LOCALHOST:5930/m/**` → `127.0.0.1:5930/m/**`); folded to lower
/// case otherwise, as registry names are. A first part that is no host is left as written.
fn canonical_pattern(pattern: &str) -> String {
    let Some((registry, rest)) = pattern.split_once('/') else {
        return pattern.to_string();
    };
    // Docker's rule for what is a host: a `.` or a `:`, or `localhost` (a local store's
    // repository pattern such as `team/**` is left as it is).
    let is_host = registry.contains(['.', ':']) || registry.eq_ignore_ascii_case("localhost");
    let is_glob = registry.contains(['*', '?', '[', '{']);
    if !is_host {
        pattern.to_string()
    } else if is_glob {
        format!("{}/{rest}", registry.to_ascii_lowercase())
    } else {
        format!("{}/{rest}", canonical_registry(registry))
    }
}

/// TOML's errors span lines (a snippet of the file); the error line is one.
fn one_line(message: &str) -> String {
    message.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write_key(dir: &Path, name: &str, seed: u8) {
        let key = crate::sign::PrivateKey::P256(
            p256::ecdsa::SigningKey::from_slice(&[seed; 32]).unwrap(),
        );
        std::fs::write(dir.join(name), key.public().pem()).unwrap();
    }

    fn policy(dir: &Path, text: &str) -> Result<Policy, SignError> {
        let path = dir.join("policy.toml");
        std::fs::write(&path, text).unwrap();
        Policy::load(&path)
    }

    #[test]
    fn the_first_matching_rule_decides_and_unmatched_repositories_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        write_key(dir.path(), "team.pem", 1);
        let p = policy(
            dir.path(),
            r#"
[[rule]]
repositories = "reg.example/models/public/*"
mode = "off"
[[rule]]
repositories = "reg.example/models/**"
keys = ["team.pem"]
[[rule]]
repositories = "reg.example/scratch/*"
keys = ["team.pem"]
mode = "warn"
"#,
        )
        .unwrap();
        let mode = |repo: &str| p.for_repository(repo).map(|r| r.map(|r| r.mode));
        assert_eq!(mode("reg.example/models/public/a").unwrap(), None);
        assert_eq!(
            mode("reg.example/models/public/a/b").unwrap(),
            Some(Mode::Enforce),
            "* does not cross /"
        );
        assert_eq!(mode("reg.example/models/x").unwrap(), Some(Mode::Enforce));
        assert_eq!(mode("reg.example/scratch/x").unwrap(), Some(Mode::Warn));
        let err = mode("other.example/models/x").unwrap_err().to_string();
        assert!(err.contains("covers other.example/models/x"), "{err}");
    }

    #[test]
    fn other_spellings_of_a_registry_meet_its_rules_and_a_late_permissive_rule_is_warned_of() {
        let dir = tempfile::tempdir().unwrap();
        write_key(dir.path(), "team.pem", 1);
        let p = policy(
            dir.path(),
            r#"
[[rule]]
repositories = "LocalHost:05930/secure/**"
keys = ["team.pem"]
[[rule]]
repositories = "**"
mode = "off"
"#,
        )
        .unwrap();
        let mode = |repo: &str| p.for_repository(repo).unwrap().map(|r| r.mode);
        // What signature::check passes: the registry in its canonical spelling.
        for registry in [
            "127.0.0.1:5930",
            "localhost:5930",
            "127.1:05930",
            "LOCALHOST:5930",
        ] {
            let name = format!("{}/secure/m", canonical_registry(registry));
            assert_eq!(mode(&name), Some(Mode::Enforce), "{registry}");
        }
        assert_eq!(mode("127.0.0.1:5931/secure/m"), None);
        let warnings = p.warnings();
        assert_eq!(warnings.len(), 1, "{warnings:?}");
        assert!(
            warnings[0].contains("\"**\" (mode off) follows"),
            "{warnings:?}"
        );

        assert_eq!(canonical_pattern("1/**"), "1/**", "a local repository");
        assert_eq!(canonical_pattern("Reg.IO:0443/m/*"), "reg.io:443/m/*");
        assert_eq!(canonical_pattern("*.Reg.io/m"), "*.reg.io/m");
        let safe = policy(
            dir.path(),
            "[[rule]]\nrepositories = \"r.io/public/**\"\nmode = \"off\"\n[[rule]]\nrepositories = \"**\"\nkeys = [\"team.pem\"]\n",
        )
        .unwrap();
        assert!(safe.warnings().is_empty());
    }

    #[test]
    fn a_policy_out_of_shape_is_refused_when_loaded() {
        let dir = tempfile::tempdir().unwrap();
        write_key(dir.path(), "k.pem", 2);
        for (text, why) in [
            ("", "no [[rule]]"),
            ("[[rule]]\nrepositories = \"**\"\n", "names no key"),
            (
                "[[rule]]\nrepositories = \"**\"\nkeys = [\"missing.pem\"]\n",
                "missing.pem",
            ),
            (
                "[[rule]]\nrepositories = \"a/[\"\nkeys = [\"k.pem\"]\n",
                "a/[",
            ),
            (
                "[[rule]]\nrepositories = \"**\"\nkeys = [\"k.pem\"]\nmode = \"audit\"\n",
                "audit",
            ),
            ("[[rule]]\nrepository = \"**\"\n", "repository"),
        ] {
            let err = policy(dir.path(), text).unwrap_err().to_string();
            assert!(err.contains(why), "{text:?}: {err}");
            assert!(!err.contains('\n'), "one line: {err}");
        }
        let huge = "#".repeat((MAX_POLICY_BYTES + 1) as usize);
        assert!(policy(dir.path(), &huge)
            .unwrap_err()
            .to_string()
            .contains("over"));
    }

    #[test]
    fn rules_name_roots_identities_and_sigstore_issuers() {
        let dir = tempfile::tempdir().unwrap();
        write_key(dir.path(), "k.pem", 2);
        let ca = rcgen::CertificateParams::new(Vec::<String>::new())
            .unwrap()
            .self_signed(&rcgen::KeyPair::generate().unwrap())
            .unwrap();
        std::fs::write(dir.path().join("ca.pem"), ca.pem()).unwrap();
        let p = policy(
            dir.path(),
            r#"
[[rule]]
repositories = "reg.example/pki/**"
roots = ["ca.pem"]
identities = ["ml@example.com"]
[[rule]]
repositories = "reg.example/sigstore/**"
identities = ["ml@example.com"]
oidc_issuers = ["https://accounts.google.com"]
"#,
        )
        .unwrap();
        let pki = p.for_repository("reg.example/pki/m").unwrap().unwrap();
        assert!(pki.trust.certs.is_some() && pki.trust.sigstore.is_none());
        let sig = p.for_repository("reg.example/sigstore/m").unwrap().unwrap();
        assert!(sig.trust.sigstore.is_some() && sig.trust.certs.is_none());
        for (text, why) in [
            (
                "[[rule]]\nrepositories = \"**\"\nidentities = [\"a@b\"]\n",
                "names no key, no roots and no OIDC issuer",
            ),
            (
                "[[rule]]\nrepositories = \"**\"\noidc_issuers = [\"https://x\"]\n",
                "--cert-identity",
            ),
            (
                "[[rule]]\nrepositories = \"**\"\nroots = [\"k.pem\"]\n",
                "no PEM certificate",
            ),
        ] {
            let err = policy(dir.path(), text).unwrap_err().to_string();
            assert!(err.contains(why), "{text:?}: {err}");
        }
    }
}
