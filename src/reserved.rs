//! The names hoist keeps for itself in an output folder, and the one rule that refuses them
//! as a model's file names.
//!
//! A pull writes its state beside the model (the staging folder, the record of what it
//! placed), a versioned pull keeps its versions and the `current` link in the root, and
//! `--referrers` puts attachments in `.referrers`. A file of an artifact titled with one of
//! those names would be placed over hoist's state, or later taken for it (and then neither
//! verified nor replaced). So these names live here, below both the OCI types that read a
//! layer's title and the placement that writes the folder, and every check asks this module.

use std::ffi::OsStr;
use std::path::{Component, Path};

/// Where a pull stages blobs and files before they are placed.
pub const STAGING_DIR: &str = ".hoist-partial";
/// The record of what pulls placed in a folder.
pub const RECORD_FILE: &str = ".hoist-record.json";
/// Where versioned pulls keep their versions, under the root.
pub const VERSIONS_DIR: &str = ".hoist-versions";
/// The link readers of a versioned root use.
pub const CURRENT: &str = "current";
/// Where `pull --referrers` puts what is attached to the artifact.
pub const REFERRERS_DIR: &str = ".referrers";
/// Every top-level name starting with this is hoist's: the names above, ready markers and
/// metrics files written beside the model by convention, temporary files of a switch.
const OWN_PREFIX: &str = ".hoist";

/// Is `name`, at the top of an output folder, one hoist keeps for itself in every folder?
pub fn is_own(name: &OsStr) -> bool {
    name.as_encoded_bytes().starts_with(OWN_PREFIX.as_bytes()) || name == REFERRERS_DIR
}

/// Why `rel` (a model's file, relative to the output folder) may not be placed there, if it
/// may not: its first name is one hoist keeps for itself.
pub fn refusal(rel: &Path) -> Option<&'static str> {
    match rel.components().next() {
        Some(Component::Normal(first)) if is_own(first) => {
            Some("is reserved for hoist's own state in the output folder")
        }
        _ => None,
    }
}

/// [`refusal`] for a pull into `out`: where versioned pulls run (`out` holds
/// [`VERSIONS_DIR`]), [`CURRENT`] is hoist's too.
pub fn refusal_in(out: &Path, rel: &Path) -> Option<&'static str> {
    refusal(rel).or_else(|| {
        let first = rel.components().next()?;
        (first.as_os_str() == CURRENT && is_versioned_root(out))
            .then_some("is the link versioned pulls switch in this folder (`current`)")
    })
}

/// Does `out` hold versioned pulls (a `.hoist-versions` folder, not a link)?
pub fn is_versioned_root(out: &Path) -> bool {
    std::fs::symlink_metadata(out.join(VERSIONS_DIR)).is_ok_and(|m| m.is_dir())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_name_hoist_writes_is_refused_at_the_top_only() {
        for own in [
            STAGING_DIR,
            RECORD_FILE,
            VERSIONS_DIR,
            REFERRERS_DIR,
            ".hoist-ready",
            ".hoist-versions/sha256-00/config.json",
            ".hoist-partial/blobs/x",
        ] {
            assert!(refusal(Path::new(own)).is_some(), "{own}");
        }
        for model in [
            "config.json",
            "a/.hoist-record.json",
            "hoist",
            "current",
            ".cache/x",
        ] {
            assert!(refusal(Path::new(model)).is_none(), "{model}");
        }
    }

    #[test]
    fn current_is_reserved_where_versioned_pulls_run() {
        let dir = tempfile::tempdir().unwrap();
        assert!(refusal_in(dir.path(), Path::new("current/x")).is_none());
        std::fs::create_dir(dir.path().join(VERSIONS_DIR)).unwrap();
        assert!(refusal_in(dir.path(), Path::new("current")).is_some());
        assert!(refusal_in(dir.path(), Path::new("current/x")).is_some());
        assert!(refusal_in(dir.path(), Path::new("a/current")).is_none());
    }
}
