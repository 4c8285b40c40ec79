//! Handing a store folder to the user that will serve it: `hoist init-store DIR --owner
//! UID:GID`, run as root in an init container before `hoist serve` starts as that user. A
//! Kubernetes `hostPath` volume is created root-owned (0755) and `fsGroup` does not apply to
//! it, so a non-root server could not write its store without this step.

use std::path::Path;

use super::StoreError;

/// Most entries one hand-over changes: a store holds few files per blob, and a hostile or
/// mistaken `DIR` (the node's `/`) must not be walked for ever.
pub const MAX_ENTRIES: usize = 10_000_000;

/// Create `dir` (and its parents) and give it, and everything under it, to `uid:gid`. Links
/// are changed themselves, never followed: a link in the folder cannot hand over what lies
/// outside it. Returns how many entries were changed.
pub fn hand_over(dir: &Path, uid: u32, gid: u32) -> Result<usize, StoreError> {
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| StoreError::Io { path, source }
    };
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    let (uid, gid) = (Some(uid), Some(gid));
    let mut stack = vec![dir.to_path_buf()];
    let mut changed = 0;
    while let Some(path) = stack.pop() {
        std::os::unix::fs::lchown(&path, uid, gid).map_err(io(&path))?;
        changed += 1;
        if changed > MAX_ENTRIES {
            return Err(StoreError::Io {
                path: dir.to_path_buf(),
                source: std::io::Error::other(format!(
                    "more than {MAX_ENTRIES} entries: is this a hoist store?"
                )),
            });
        }
        let meta = std::fs::symlink_metadata(&path).map_err(io(&path))?;
        if meta.is_dir() {
            for entry in std::fs::read_dir(&path).map_err(io(&path))? {
                stack.push(entry.map_err(io(&path))?.path());
            }
        }
    }
    Ok(changed)
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::MetadataExt;

    /// Everything under the folder changes hands; a link's target outside it does not.
    #[test]
    fn hands_over_the_tree_but_not_what_links_reach() {
        if !rustix::process::geteuid().is_root() {
            eprintln!("SKIPPED: changing owners needs root");
            assert!(std::env::var_os("CI").is_none(), "CI runs as root");
            return;
        }
        let outside = tempfile::tempdir().unwrap();
        std::fs::write(outside.path().join("secret"), b"x").unwrap();
        let root = tempfile::tempdir().unwrap();
        let store = root.path().join("a/store");
        std::fs::create_dir_all(store.join("blobs/sha256")).unwrap();
        std::fs::write(store.join("blobs/sha256/x"), b"blob").unwrap();
        std::os::unix::fs::symlink(outside.path().join("secret"), store.join("link")).unwrap();
        let n = super::hand_over(&store, 65532, 65533).unwrap();
        assert_eq!(n, 5);
        for p in ["", "blobs", "blobs/sha256", "blobs/sha256/x", "link"] {
            let m = std::fs::symlink_metadata(store.join(p)).unwrap();
            assert_eq!((m.uid(), m.gid()), (65532, 65533), "{p}");
        }
        let m = std::fs::metadata(outside.path().join("secret")).unwrap();
        assert_eq!(m.uid(), 0, "a link's target changed hands");
    }
}
