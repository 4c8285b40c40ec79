//! The commit plan: everything a pull will place, validated as a whole before the first file
//! is placed, so a plan that cannot be placed completely is refused with nothing changed.
//!
//! The rules, in order:
//! 1. Image whiteouts are applied to the plan itself, never to the disk: a whiteout can only
//!    drop what a lower layer of this same pull staged (nothing this pull did not create is
//!    ever removed).
//! 2. Every name fits the filesystem (each component at most `NAME_MAX` bytes, the whole path
//!    under `PATH_MAX`) and none reaches hoist's own state (`.hoist-partial`, the record).
//! 3. No path is both a file and a folder (`a` and `a/b`), in the plan or against the disk;
//!    no existing parent folder is a symlink or a file.
//! 4. A file that is already on disk and that no earlier pull placed is not replaced unless
//!    the caller allows it (the error lists them).
//! 5. Every symlink, resolved through the links already in the plan and on disk, stays inside
//!    the output folder.

use std::collections::{BTreeMap, VecDeque};
use std::ffi::OsString;
use std::fs;
use std::path::{Path, PathBuf};

use super::paths::{check_disk_parents, check_name};
use super::record::Record;
use super::{MaterializeError, Staged};

/// Links followed while resolving one symlink (the kernel's own limit).
const MAX_LINK_HOPS: usize = 40;

#[derive(Debug, Clone, PartialEq, Eq)]
enum Kind {
    File,
    Dir,
    Link(PathBuf),
}

fn kind_of(item: &Staged) -> Option<(&Path, Kind)> {
    match item {
        Staged::File {
            relative,
            link_target: Some(t),
            ..
        } => Some((relative, Kind::Link(t.clone()))),
        Staged::File { relative, .. } => Some((relative, Kind::File)),
        Staged::Dir { relative } => Some((relative, Kind::Dir)),
        Staged::Remove { .. } | Staged::Opaque { .. } => None,
    }
}

/// Apply whiteouts inside the plan; a later entry at a path replaces an earlier one.
pub(super) fn apply_whiteouts(items: &[Staged]) -> Vec<Staged> {
    let mut live: Vec<Option<Staged>> = Vec::with_capacity(items.len());
    let mut at: BTreeMap<PathBuf, usize> = BTreeMap::new();
    for item in items {
        match item {
            Staged::Remove { relative } => drop_under(&mut live, &mut at, relative, true),
            Staged::Opaque { relative } => drop_under(&mut live, &mut at, relative, false),
            Staged::Dir { relative } if matches!(at.get(relative), Some(&i) if matches!(live[i], Some(Staged::Dir { .. }))) =>
                {}
            Staged::File { relative, .. } | Staged::Dir { relative } => {
                if let Some(i) = at.remove(relative) {
                    live[i] = None;
                }
                at.insert(relative.clone(), live.len());
                live.push(Some(item.clone()));
            }
        }
    }
    live.into_iter().flatten().collect()
}

fn drop_under(
    live: &mut [Option<Staged>],
    at: &mut BTreeMap<PathBuf, usize>,
    root: &Path,
    including_root: bool,
) {
    let doomed: Vec<PathBuf> = at
        .range(root.to_path_buf()..)
        .take_while(|(p, _)| p.starts_with(root))
        .filter(|(p, _)| including_root || p.as_path() != root)
        .map(|(p, _)| p.clone())
        .collect();
    for p in doomed {
        if let Some(i) = at.remove(&p) {
            live[i] = None;
        }
    }
}

/// Check the whole plan against rules 2–5 (see the module comment).
pub(super) fn validate(
    out: &Path,
    items: &[Staged],
    record: &Record,
    overwrite: bool,
) -> Result<(), MaterializeError> {
    let mut kinds: BTreeMap<&Path, Kind> = BTreeMap::new();
    for item in items {
        if let Some((rel, kind)) = kind_of(item) {
            check_name(out, rel)?;
            kinds.insert(rel, kind);
        }
    }
    let mut foreign = Vec::new();
    for (rel, kind) in &kinds {
        for ancestor in rel.ancestors().skip(1) {
            if ancestor.as_os_str().is_empty() {
                break;
            }
            if matches!(kinds.get(ancestor), Some(Kind::File | Kind::Link(_))) {
                return Err(MaterializeError::Blocked {
                    path: out.join(rel),
                    why: "the artifact has both a file and a folder at one path",
                });
            }
        }
        check_disk_parents(out, rel)?;
        match (fs::symlink_metadata(out.join(rel)), kind) {
            (Ok(m), Kind::File | Kind::Link(_)) if m.is_dir() => {
                return Err(MaterializeError::Blocked {
                    path: out.join(rel),
                    why: "a folder is in the way of a file",
                })
            }
            (Ok(m), Kind::Dir) if !m.is_dir() => {
                return Err(MaterializeError::Blocked {
                    path: out.join(rel),
                    why: "a file is in the way of a folder",
                })
            }
            (Ok(_), Kind::File | Kind::Link(_)) if !overwrite && !record.placed(rel) => {
                foreign.push(rel.display().to_string());
            }
            _ => {}
        }
    }
    if !foreign.is_empty() {
        return Err(MaterializeError::WouldOverwrite {
            out: out.to_path_buf(),
            files: foreign,
        });
    }
    for (rel, kind) in &kinds {
        if let Kind::Link(target) = kind {
            if !link_stays_inside(out, &kinds, rel, target) {
                return Err(MaterializeError::UnsafeEntry {
                    layer: "the plan".into(),
                    path: rel.display().to_string(),
                    why: format!(
                        "symlink to {} leaves the output folder (resolved through the other links)",
                        target.display()
                    ),
                });
            }
        }
    }
    Ok(())
}

/// Resolve the symlink at `rel` (pointing to `target`) step by step, expanding every link met
/// on the way — planned ones first, then those already on disk — and fail if the walk ever
/// climbs above the root or meets an absolute target.
fn link_stays_inside(
    out: &Path,
    planned: &BTreeMap<&Path, Kind>,
    rel: &Path,
    target: &Path,
) -> bool {
    let mut stack: Vec<OsString> = rel
        .parent()
        .map(|p| p.iter().map(OsString::from).collect())
        .unwrap_or_default();
    if target.is_absolute() {
        return false;
    }
    let mut hops = 0;
    let mut queue: VecDeque<OsString> = target.iter().map(OsString::from).collect();
    while let Some(part) = queue.pop_front() {
        if part == "." {
            continue;
        }
        if part == ".." {
            if stack.pop().is_none() {
                return false;
            }
            continue;
        }
        let mut candidate: PathBuf = stack.iter().collect();
        candidate.push(&part);
        let link = match planned.get(candidate.as_path()) {
            Some(Kind::Link(t)) => Some(t.clone()),
            Some(_) => None,
            None => match fs::symlink_metadata(out.join(&candidate)) {
                Ok(m) if m.file_type().is_symlink() => fs::read_link(out.join(&candidate)).ok(),
                _ => None,
            },
        };
        match link {
            Some(t) => {
                hops += 1;
                if hops > MAX_LINK_HOPS || t.is_absolute() {
                    return false;
                }
                for c in t.iter().rev() {
                    queue.push_front(OsString::from(c));
                }
            }
            None => stack.push(part),
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    fn link(rel: &str, target: &str) -> Staged {
        Staged::File {
            from: PathBuf::new(),
            relative: rel.into(),
            mode: 0o777,
            placement: super::super::Placement::Move,
            digest: None,
            link_target: Some(target.into()),
        }
    }

    #[test]
    fn a_chain_of_links_cannot_climb_out() {
        let out = tempfile::tempdir().unwrap();
        let mut items = vec![Staged::Dir {
            relative: "d".into(),
        }];
        items.push(link("d/u1", ".."));
        for i in 2..=14 {
            items.push(link(&format!("d/u{i}"), &format!("u{}/..", i - 1)));
        }
        items.push(link("tokenizer.json", "d/u14/etc/passwd"));
        assert!(validate(out.path(), &items, &Record::default(), false).is_err());
        // Each link alone is harmless: the first two are accepted without the chain's end.
        let ok = vec![items[0].clone(), items[1].clone()];
        assert!(validate(out.path(), &ok, &Record::default(), false).is_ok());
    }

    #[test]
    fn links_on_disk_count_too() {
        let out = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink("..", out.path().join("up")).unwrap();
        let items = vec![link("x", "up/y")];
        assert!(validate(out.path(), &items, &Record::default(), true).is_err());
        let items = vec![link("x", "sub/y")];
        assert!(validate(out.path(), &items, &Record::default(), true).is_ok());
    }

    #[test]
    fn whiteouts_touch_only_the_plan() {
        let f = |p: &str| Staged::File {
            from: PathBuf::new(),
            relative: p.into(),
            mode: 0o644,
            placement: super::super::Placement::Move,
            digest: None,
            link_target: None,
        };
        let items = vec![
            f("a/x"),
            f("a/y"),
            f("b"),
            Staged::Remove {
                relative: "a/x".into(),
            },
            Staged::Opaque {
                relative: "".into(),
            },
            f("c"),
        ];
        let kept: Vec<PathBuf> = apply_whiteouts(&items)
            .iter()
            .filter_map(|s| kind_of(s).map(|(p, _)| p.to_path_buf()))
            .collect();
        assert_eq!(kept, vec![PathBuf::from("c")]);
    }
}
