//! Property tests of every parser and path rule the trust model rests on, on generated and
//! arbitrary input: references (parse ↔ print), the safe relative path, manifests, and tar
//! extraction through the staging area (nothing lands outside the output folder, nothing is
//! written through a link, whatever the entries). CI runs them with more cases
//! (`PROPTEST_CASES`); no fuzzing toolchain (nightly) can be installed on these machines.

use std::path::{Path, PathBuf};

use hoist::materialize::{Staging, UnpackLimits};
use hoist::oci::files::safe_relative_path;
use hoist::oci::{LayerFormat, ManifestKind};
use hoist::reference::Reference;
use proptest::prelude::*;

fn component() -> impl Strategy<Value = String> {
    "[a-z0-9]{1,4}([._-][a-z0-9]{1,4}){0,2}"
}

fn repository() -> impl Strategy<Value = String> {
    proptest::collection::vec(component(), 1..4).prop_map(|c| c.join("/"))
}

fn tag() -> impl Strategy<Value = String> {
    "[A-Za-z0-9_][A-Za-z0-9._-]{0,20}"
}

proptest! {
    /// Valid references print back to what was parsed, and parse again to the same thing.
    #[test]
    fn references_round_trip(host in proptest::option::of("(localhost|127\\.0\\.0\\.1|registry\\.example\\.com)(:[0-9]{2,5})?"),
                             first in "[a-z0-9]{1,6}", repo in repository(), t in proptest::option::of(tag())) {
        let mut text = String::new();
        if let Some(h) = &host {
            text.push_str(h);
            text.push('/');
        }
        // Without a host, a first component with a dot would name one (Docker's rule).
        text.push_str(&first);
        text.push('/');
        text.push_str(&repo);
        if let Some(t) = &t {
            text.push(':');
            text.push_str(t);
        }
        let parsed = Reference::parse(&text).unwrap();
        let printed = parsed.to_string();
        let again = Reference::parse(&printed).unwrap();
        prop_assert_eq!(again.to_string(), printed);
        prop_assert_eq!(again.repository, parsed.repository);
        prop_assert_eq!(again.tag, parsed.tag);
    }

    /// Any text: no panic; what parses prints to something that parses the same.
    #[test]
    fn references_on_arbitrary_text(text in ".{0,80}") {
        if let Ok(r) = Reference::parse(&text) {
            let printed = r.to_string();
            let again = Reference::parse(&printed).unwrap();
            prop_assert_eq!(again.to_string(), printed);
        }
    }

    /// A path that passes is plain, relative, inside the root and never hoist's own state.
    #[test]
    fn safe_paths_stay_inside(name in "([a-z./\\\\]|\\.\\.|\\.hoist-partial|\\u{0}){0,12}") {
        if let Ok(p) = safe_relative_path(&name) {
            prop_assert!(p.is_relative());
            for c in p.components() {
                prop_assert!(matches!(c, std::path::Component::Normal(_)), "{:?}", p);
            }
            prop_assert!(!p.starts_with(".hoist-partial"));
            prop_assert!(!name.contains('\0'));
        }
    }

    /// Manifest and index parsing on arbitrary JSON-ish bytes: no panic.
    #[test]
    fn manifests_on_arbitrary_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
        let _ = ManifestKind::parse(None, &bytes);
        let _ = ManifestKind::parse(Some("application/vnd.oci.image.index.v1+json"), &bytes);
    }
}

#[derive(Debug, Clone)]
enum Entry {
    Dir(String),
    File(String, u8),
    Link(String, String),
}

fn name() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("a".to_string()),
        Just("b".to_string()),
        Just("..".to_string()),
        Just(".".to_string()),
        Just(".wh.a".to_string()),
        Just(".wh..".to_string()),
        Just(".wh..wh..opq".to_string()),
        Just("sentinel".to_string()),
    ]
}

fn path() -> impl Strategy<Value = String> {
    proptest::collection::vec(name(), 1..4).prop_map(|v| v.join("/"))
}

fn entry() -> impl Strategy<Value = Entry> {
    prop_oneof![
        path().prop_map(Entry::Dir),
        (path(), any::<u8>()).prop_map(|(p, b)| Entry::File(p, b)),
        (path(), path()).prop_map(|(p, t)| Entry::Link(p, t)),
        (path(), path()).prop_map(|(p, t)| Entry::Link(p, format!("/{t}"))),
    ]
}

/// A tar with raw header names (the `tar` crate refuses to write `..` itself).
fn raw_tar(entries: &[Entry]) -> Vec<u8> {
    let mut out = Vec::new();
    for e in entries {
        let (name, kind, link, data): (&str, tar::EntryType, &str, Vec<u8>) = match e {
            Entry::Dir(p) => (p, tar::EntryType::Directory, "", vec![]),
            Entry::File(p, b) => (p, tar::EntryType::Regular, "", vec![*b; 3]),
            Entry::Link(p, t) => (p, tar::EntryType::Symlink, t, vec![]),
        };
        let mut header = tar::Header::new_old();
        let n = name.len().min(99);
        header.as_old_mut().name[..n].copy_from_slice(&name.as_bytes()[..n]);
        let l = link.len().min(99);
        header.as_old_mut().linkname[..l].copy_from_slice(&link.as_bytes()[..l]);
        header.set_entry_type(kind);
        header.set_size(data.len() as u64);
        header.set_mode(0o644);
        header.set_cksum();
        out.extend_from_slice(header.as_bytes());
        out.extend_from_slice(&data);
        out.resize(out.len().div_ceil(512) * 512, 0);
    }
    out.resize(out.len() + 1024, 0);
    out
}

/// Everything under `dir` (links not followed): relative path → (is link, bytes if a file).
fn snapshot(dir: &Path) -> Vec<(PathBuf, bool, Option<Vec<u8>>)> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let p = e.path();
            let t = e.file_type().unwrap();
            let rel = p.strip_prefix(dir).unwrap().to_path_buf();
            if t.is_dir() {
                todo.push(p);
                out.push((rel, false, None));
            } else if t.is_symlink() {
                out.push((rel, true, None));
            } else {
                out.push((rel, false, Some(std::fs::read(&p).unwrap())));
            }
        }
    }
    out.sort();
    out
}

proptest! {
    #![proptest_config(ProptestConfig { cases: std::env::var("PROPTEST_CASES").ok().and_then(|c| c.parse().ok()).unwrap_or(64), ..ProptestConfig::default() })]

    /// Arbitrary entry sequences, in model layers and image layers: whatever happens, nothing
    /// outside the output folder changes, and every link placed resolves inside it.
    #[test]
    fn tar_extraction_stays_inside(entries in proptest::collection::vec(entry(), 1..10), image in any::<bool>()) {
        let parent = tempfile::tempdir().unwrap();
        let outside = parent.path().join("sentinel");
        std::fs::create_dir(&outside).unwrap();
        std::fs::write(outside.join("a"), b"keep").unwrap();
        std::fs::write(parent.path().join("a"), b"keep").unwrap();
        let out = parent.path().join("out");
        let blob = parent.path().join("layer.tar");
        std::fs::write(&blob, raw_tar(&entries)).unwrap();
        let before = snapshot(parent.path());
        let staging = Staging::open(&out).unwrap();
        let result = staging
            .stage_tar(0, &blob, LayerFormat::Tar, "layer", image, UnpackLimits::default())
            .and_then(|items| staging.commit(&items, false, None));
        if result.is_err() {
            staging.abort(true);
        }
        drop(staging);
        // Outside the output folder: exactly as before (the layer file aside).
        let after: Vec<_> = snapshot(parent.path())
            .into_iter()
            .filter(|(p, _, _)| !p.starts_with("out"))
            .collect();
        let before: Vec<_> = before.into_iter().filter(|(p, _, _)| !p.starts_with("out")).collect();
        prop_assert_eq!(after, before);
        // Inside: every link, fully resolved, stays inside.
        if out.exists() {
            let root = out.canonicalize().unwrap();
            for (rel, is_link, _) in snapshot(&out) {
                if is_link {
                    if let Ok(real) = out.join(&rel).canonicalize() {
                        prop_assert!(real.starts_with(&root), "{:?} -> {:?}", rel, real);
                    }
                }
            }
        }
    }
}
