//! Versioned pulls: the folder a reader uses switches from one version to the next in one
//! step.
//!
//! A plain pull replaces files one rename at a time: each file is whole at every instant,
//! but a reader listing the folder during the switch can see some files of each version.
//! No rename makes a folder's listing change at once, except swapping what a name points
//! to. So a versioned pull into ROOT fills `ROOT/.hoist-versions/sha256-<hex>/` (a full,
//! verified pull, whose missing chunks come from the version it replaces) and then renames a
//! new symbolic link over `ROOT/current`: a reader opening `ROOT/current/...` sees the old
//! version or the new one, never a mix. The version before stays until the next switch (a
//! reader that resolved `current` just before keeps working); older ones are removed.
//!
//! Everything under ROOT that hoist did not make is left alone: `current` is replaced only
//! while it is a link into `.hoist-versions`, and only folders named by a digest are removed.

use std::path::{Path, PathBuf};

use super::{Observer, PullOptions, PullReport, Target, TransferError};
use crate::materialize::MaterializeError;
use crate::reserved::{CURRENT, VERSIONS_DIR};

/// What a versioned pull did.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Versioned {
    #[serde(flatten)]
    pub report: PullReport,
    /// The folder the version was pulled into (what `current` now points to).
    pub version_dir: PathBuf,
    /// The version `current` pointed to before, if another.
    pub previous: Option<PathBuf>,
    /// Older versions removed.
    pub removed: usize,
}

/// Pull `reference` as a new version under `root` and switch `root/current` to it.
pub async fn pull_versioned(
    source: &Target,
    reference: &str,
    root: &Path,
    opts: &PullOptions,
    observer: Observer,
) -> Result<Versioned, TransferError> {
    // By digest from here on: a tag that moves mid-pull cannot put other bytes under this name.
    let resolved = source.resolve_on(reference, opts.platform.as_ref()).await?;
    let versions = root.join(VERSIONS_DIR);
    prepare_root(root, &versions)?;
    let name = format!("sha256-{}", resolved.digest.hex());
    let version_dir = versions.join(&name);
    // A link planted at the version's name would take the pull elsewhere.
    if std::fs::symlink_metadata(&version_dir).is_ok_and(|m| !m.is_dir()) {
        return Err(MaterializeError::Blocked {
            path: version_dir,
            why: "it is not a folder hoist made (a file or a link)",
        }
        .into());
    }
    let previous = current_version(root)?;
    let mut opts = opts.clone();
    if let Some(prev) = previous.as_ref().filter(|p| **p != name) {
        opts.reuse_from.push(versions.join(prev));
    }
    let report = super::pull(
        source,
        resolved.digest.as_str(),
        &version_dir,
        &opts,
        observer,
    )
    .await?;
    switch(root, &name)?;
    // A re-pull of the current version switches nothing, so it removes nothing either.
    let switched = previous.as_deref() != Some(name.as_str());
    let previous = previous.filter(|_| switched);
    let removed = match switched {
        true => remove_old(&versions, &name, previous.as_deref()),
        false => 0,
    };
    Ok(Versioned {
        report,
        version_dir,
        previous: previous.map(|p| versions.join(p)),
        removed,
    })
}

/// The root and its versions folder exist as real folders (not links hoist would follow).
fn prepare_root(root: &Path, versions: &Path) -> Result<(), TransferError> {
    std::fs::create_dir_all(root).map_err(|source| MaterializeError::Output {
        path: root.to_path_buf(),
        source,
    })?;
    match std::fs::symlink_metadata(versions) {
        Ok(m) if m.is_dir() => Ok(()),
        Ok(_) => Err(MaterializeError::Blocked {
            path: versions.to_path_buf(),
            why: "it is not a folder hoist made (a file or a link)",
        }
        .into()),
        Err(_) => std::fs::create_dir(versions).map_err(TransferError::io(versions)),
    }
}

/// Is `name` one of hoist's version folders (`sha256-<64 hex>`)?
fn is_version_name(name: &str) -> bool {
    name.strip_prefix("sha256-")
        .is_some_and(|hex| hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// The version `root/current` points to; `None` when there is no `current`. Anything else
/// at that name (a file, a folder, a link elsewhere) is the user's: refused, not replaced.
fn current_version(root: &Path) -> Result<Option<String>, TransferError> {
    let link = root.join(CURRENT);
    let Ok(meta) = std::fs::symlink_metadata(&link) else {
        return Ok(None);
    };
    let target = meta
        .file_type()
        .is_symlink()
        .then(|| std::fs::read_link(&link).ok())
        .flatten();
    let name = target.as_deref().and_then(|t| {
        let mut parts = t.components();
        let first = parts.next()?.as_os_str();
        let second = parts.next()?.as_os_str().to_str()?.to_string();
        (first == VERSIONS_DIR && parts.next().is_none() && is_version_name(&second))
            .then_some(second)
    });
    match name {
        Some(name) => Ok(Some(name)),
        None => Err(MaterializeError::WouldOverwrite {
            out: root.to_path_buf(),
            files: vec![CURRENT.to_string()],
        }
        .into()),
    }
}

/// Point `root/current` at version `name` in one rename (a new link renamed over the old).
fn switch(root: &Path, name: &str) -> Result<(), TransferError> {
    // A `.hoist` name: a temporary link left by a crash is never taken for the model's.
    let temp = root.join(".hoist-next-current");
    let _ = std::fs::remove_file(&temp);
    let target = Path::new(VERSIONS_DIR).join(name);
    std::os::unix::fs::symlink(&target, &temp).map_err(TransferError::io(&temp))?;
    let link = root.join(CURRENT);
    std::fs::rename(&temp, &link).map_err(TransferError::io(&link))?;
    // The switch survives a crash once the root's entry is on disk.
    if let Ok(dir) = std::fs::File::open(root) {
        let _ = dir.sync_all();
    }
    Ok(())
}

/// Remove versions other than `keep` and `previous`; how many went. Only folders with
/// version names are touched, and `remove_dir_all` does not follow links inside them.
fn remove_old(versions: &Path, keep: &str, previous: Option<&str>) -> usize {
    let Ok(entries) = std::fs::read_dir(versions) else {
        return 0;
    };
    entries
        .filter_map(Result::ok)
        .filter(|e| {
            let name = e.file_name();
            let name = name.to_str().unwrap_or("");
            is_version_name(name)
                && name != keep
                && Some(name) != previous
                && e.file_type().is_ok_and(|t| t.is_dir())
        })
        .filter(|e| std::fs::remove_dir_all(e.path()).is_ok())
        .count()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_hoists_own_current_link_is_followed() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        assert_eq!(current_version(root).unwrap(), None);
        let name = format!("sha256-{}", "a".repeat(64));
        switch(root, &name).unwrap();
        assert_eq!(current_version(root).unwrap(), Some(name.clone()));
        for hostile in ["/etc", "../elsewhere", ".hoist-versions/../../x", "models"] {
            std::fs::remove_file(root.join(CURRENT)).unwrap();
            std::os::unix::fs::symlink(hostile, root.join(CURRENT)).unwrap();
            assert!(
                current_version(root).is_err(),
                "{hostile} was taken as a version"
            );
        }
        std::fs::remove_file(root.join(CURRENT)).unwrap();
        std::fs::create_dir(root.join(CURRENT)).unwrap();
        assert!(
            current_version(root).is_err(),
            "a user's folder named current"
        );
    }

    #[test]
    fn old_versions_go_and_nothing_else() {
        let dir = tempfile::tempdir().unwrap();
        let v = |c: char| format!("sha256-{}", c.to_string().repeat(64));
        for name in [v('a'), v('b'), v('c'), "notes".to_string()] {
            std::fs::create_dir(dir.path().join(&name)).unwrap();
        }
        let removed = remove_old(dir.path(), &v('c'), Some(&v('b')));
        assert_eq!(removed, 1);
        assert!(!dir.path().join(v('a')).exists());
        for kept in [v('b'), v('c'), "notes".to_string()] {
            assert!(dir.path().join(kept).exists());
        }
    }
}
