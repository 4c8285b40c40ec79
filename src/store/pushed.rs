//! Where pushes from this machine put each blob: `pushed/<hex>` holds `registry repository`
//! lines, newest first, at most [`KEEP`]. A later push of the same file to another
//! repository of that registry mounts it from one of them instead of sending it again
//! (Docker keeps the same record, its "v2 metadata"). The file is only a hint and is read as
//! hostile: through the bounded reader, names that are not valid repositories are dropped,
//! and a mount the registry declines falls back to an upload.

use super::{read_small, write_atomic, Store};
use crate::digest::Digest;

/// Repositories remembered per blob.
const KEEP: usize = 8;

impl Store {
    fn pushed_path(&self, digest: &Digest) -> std::path::PathBuf {
        self.root().join("pushed").join(digest.hex())
    }

    fn pushed_lines(&self, digest: &Digest) -> Vec<(String, String)> {
        let Ok(bytes) = read_small(&self.pushed_path(digest)) else {
            return Vec::new();
        };
        String::from_utf8_lossy(&bytes)
            .lines()
            .filter_map(|l| l.split_once(' '))
            .filter(|(_, repo)| crate::reference::valid_repository(repo))
            .map(|(r, repo)| (r.to_string(), repo.to_string()))
            .collect()
    }

    /// Repositories of `registry` a push from this store put `digest` in, newest first.
    pub fn pushed_to(&self, digest: &Digest, registry: &str) -> Vec<String> {
        self.pushed_lines(digest)
            .into_iter()
            .filter(|(r, _)| r == registry)
            .map(|(_, repo)| repo)
            .collect()
    }

    /// Remember that `registry/repository` holds `digest`. Best effort: a store that cannot
    /// be written only loses the hint.
    pub fn remember_pushed(&self, digest: &Digest, registry: &str, repository: &str) {
        if registry.contains(char::is_whitespace) || !crate::reference::valid_repository(repository)
        {
            return;
        }
        let mut lines = self.pushed_lines(digest);
        lines.retain(|(r, repo)| !(r == registry && repo == repository));
        lines.insert(0, (registry.to_string(), repository.to_string()));
        lines.truncate(KEEP);
        let text: String = lines
            .iter()
            .map(|(r, repo)| format!("{r} {repo}\n"))
            .collect();
        let path = self.pushed_path(digest);
        let written = std::fs::create_dir_all(path.parent().expect("in pushed/"))
            .map_err(|e| e.to_string())
            .and_then(|()| write_atomic(&path, text.as_bytes()).map_err(|e| e.to_string()));
        if let Err(e) = written {
            tracing::debug!("not remembering where {digest} was pushed: {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn newest_first_per_registry_bounded_and_hostile_lines_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let d = Digest::of_bytes(b"x");
        assert!(store.pushed_to(&d, "r:5000").is_empty());
        for i in 0..10 {
            store.remember_pushed(&d, "r:5000", &format!("team/m{i}"));
        }
        store.remember_pushed(&d, "other", "team/m1");
        store.remember_pushed(&d, "r:5000", "team/m5"); // again: moves to the front
        let repos = store.pushed_to(&d, "r:5000");
        assert_eq!(repos.len(), KEEP - 1, "{repos:?}");
        assert_eq!(repos[0], "team/m5");
        assert_eq!(store.pushed_to(&d, "other"), vec!["team/m1"]);
        // A planted file: bad names are not offered as mount sources.
        std::fs::write(
            store.pushed_path(&d),
            "r:5000 ../../etc\nr:5000 UPPER\nr:5000 ok/repo\n",
        )
        .unwrap();
        assert_eq!(store.pushed_to(&d, "r:5000"), vec!["ok/repo"]);
    }
}
