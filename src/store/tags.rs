//! Tags. One small file per tag (`repositories/<repo>/_tags/<tag>`, the manifest descriptor
//! as JSON) is the truth; `index.json`, which other OCI tools read, follows it.
//!
//! Why: `index.json` holds every tag of every repository, so rewriting it for each tag write
//! costs time in proportion to all tags (0.26 s per tag at 100,000). A CLI process still
//! updates it at once (one write per command). A server defers it: changes queue, and a
//! background flush applies all of them in one rewrite per second, so a tag write costs one
//! small file whatever the number of tags. The first queued change leaves a marker
//! (`index.json.dirty`); a store opened with the marker present (a server stopped before its
//! flush) rebuilds `index.json` from the tag files.

use std::collections::BTreeMap;
use std::fs;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use super::{io_err, read_small, write_atomic, Store, StoreError};
use crate::digest::Digest;
use crate::oci::Index;
use crate::oci::{media, Descriptor};
use std::fs::File;

/// Changes (`repo:tag`, new descriptor or removal) not yet in `index.json`.
pub(crate) type Pending = Arc<Mutex<Vec<(String, Option<Descriptor>)>>>;

const DIRTY: &str = "index.json.dirty";
const TAGS: &str = "_tags";

fn invalid(store: &Store, what: String) -> StoreError {
    StoreError::Io {
        path: store.root().join("repositories"),
        source: std::io::Error::other(what),
    }
}

fn tags_dir(store: &Store, repository: &str) -> Result<PathBuf, StoreError> {
    if !crate::reference::valid_repository(repository) {
        return Err(invalid(
            store,
            format!("{repository:?} is not a repository name"),
        ));
    }
    let mut p = store.root().join("repositories");
    p.extend(repository.split('/'));
    Ok(p.join(TAGS))
}

/// When `repo:tag` was last set (its tag file's time); `None` for a tag only in `index.json`.
pub(crate) fn set_at(store: &Store, repository: &str, tag: &str) -> Option<std::time::SystemTime> {
    let path = tag_path(store, repository, tag).ok()?;
    fs::metadata(path).and_then(|m| m.modified()).ok()
}

fn tag_path(store: &Store, repository: &str, tag: &str) -> Result<PathBuf, StoreError> {
    if !crate::reference::valid_tag(tag) {
        return Err(invalid(store, format!("{tag:?} is not a tag")));
    }
    Ok(tags_dir(store, repository)?.join(tag))
}

/// The index entry for `repo:tag`.
fn entry(name: &str, manifest: &Descriptor) -> Descriptor {
    let mut e = manifest.clone();
    e.annotations.clear();
    e.annotations
        .insert(media::ANNOTATION_REF_NAME.into(), name.to_string());
    e
}

/// Write the tag file only (used when migrating a store that had tags in `index.json` alone).
/// `durable`: synced before it is renamed into place (a migration syncs once at the end).
pub(crate) fn write_file(
    store: &Store,
    repository: &str,
    tag: &str,
    manifest: &Descriptor,
    durable: bool,
) -> Result<(), StoreError> {
    let path = tag_path(store, repository, tag)?;
    let dir = path.parent().expect("tag files live in a folder");
    fs::create_dir_all(dir).map_err(io_err(dir))?;
    let bytes = serde_json::to_vec(&entry(&format!("{repository}:{tag}"), manifest))
        .expect("descriptor serialises");
    let how = if durable {
        crate::fsutil::Replace::DURABLE
    } else {
        crate::fsutil::Replace::FAST
    };
    crate::fsutil::write_atomic(&path, &bytes, how).map_err(io_err(&path))
}

/// Set (`Some`) or remove (`None`) `repo:tag`; whether it existed before.
pub(crate) fn set(
    store: &Store,
    repository: &str,
    tag: &str,
    manifest: Option<&Descriptor>,
) -> Result<bool, StoreError> {
    let path = tag_path(store, repository, tag)?;
    let name = format!("{repository}:{tag}");
    // Whether it existed matters only for a removal; a tag another tool wrote into
    // index.json alone is looked up there (a read of the whole index, so only then), unless
    // a change not yet written there already removed it.
    let existed = path.is_file()
        || (manifest.is_none()
            && pending_change(store, &name) != Some(false)
            && in_index(store, &name)?);
    match manifest {
        Some(m) => write_file(store, repository, tag, m, true)?,
        None => match fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(StoreError::Io { path, source: e }),
        },
    }
    let change = (
        name,
        manifest.map(|m| entry(&format!("{repository}:{tag}"), m)),
    );
    match &store.deferred {
        Some(pending) => {
            let mut queue = pending.lock().expect("pending tags");
            if queue.is_empty() {
                let marker = store.root().join(DIRTY);
                fs::write(&marker, b"").map_err(io_err(&marker))?;
            }
            queue.push(change);
        }
        None => store.update_index(|index| apply(&mut index.manifests, vec![change]))?,
    }
    Ok(existed)
}

/// The last change to `name` still waiting for `index.json`: `Some(true)` set, `Some(false)`
/// removed, `None` none.
fn pending_change(store: &Store, name: &str) -> Option<bool> {
    let pending = store.deferred.as_ref()?.lock().expect("pending tags");
    pending
        .iter()
        .rev()
        .find(|(n, _)| n == name)
        .map(|(_, change)| change.is_some())
}

/// Is `name` in `index.json`? Only asked when no tag file says so (a tag another tool wrote).
fn in_index(store: &Store, name: &str) -> Result<bool, StoreError> {
    Ok(store
        .read_index()?
        .manifests
        .iter()
        .any(|d| d.annotation(media::ANNOTATION_REF_NAME) == Some(name)))
}

fn apply(entries: &mut Vec<Descriptor>, changes: Vec<(String, Option<Descriptor>)>) {
    let mut by_name: BTreeMap<String, Descriptor> = std::mem::take(entries)
        .into_iter()
        .filter_map(|d| Some((d.annotation(media::ANNOTATION_REF_NAME)?.to_string(), d)))
        .collect();
    for (name, change) in changes {
        match change {
            Some(d) => by_name.insert(name, d),
            None => by_name.remove(&name),
        };
    }
    *entries = by_name.into_values().collect();
}

pub(crate) fn resolve(
    store: &Store,
    repository: &str,
    tag: &str,
) -> Result<Descriptor, StoreError> {
    let name = format!("{repository}:{tag}");
    let not_found = || StoreError::NotFound {
        reference: name.clone(),
        root: store.root().to_path_buf(),
    };
    let Ok(path) = tag_path(store, repository, tag) else {
        return Err(not_found());
    };
    match read_small(&path) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map_err(|source| StoreError::CorruptIndex { path, source }),
        // Removed, and index.json not rewritten yet.
        Err(_) if pending_change(store, &name) == Some(false) => Err(not_found()),
        // A tag another tool wrote into index.json only.
        Err(_) => store
            .read_index()?
            .manifests
            .into_iter()
            .find(|d| d.annotation(media::ANNOTATION_REF_NAME) == Some(name.as_str()))
            .ok_or_else(not_found),
    }
}

/// Every tag of `repository` with its descriptor, sorted by tag.
pub(crate) fn of_repository(
    store: &Store,
    repository: &str,
) -> Result<Vec<(String, Descriptor)>, StoreError> {
    let Ok(dir) = tags_dir(store, repository) else {
        return Ok(Vec::new());
    };
    if !dir.is_dir() {
        // No tag files: tags another tool wrote into index.json, if any.
        let prefix = format!("{repository}:");
        let mut tags: Vec<(String, Descriptor)> = store
            .read_index()?
            .manifests
            .into_iter()
            .filter_map(|d| {
                let tag = d
                    .annotation(media::ANNOTATION_REF_NAME)?
                    .strip_prefix(&prefix)?;
                Some((tag.to_string(), d.clone()))
            })
            .collect();
        tags.sort_by(|a, b| a.0.cmp(&b.0));
        return Ok(tags);
    }
    let mut tags = Vec::new();
    for e in fs::read_dir(&dir).map_err(io_err(&dir))?.flatten() {
        let tag = e.file_name().to_string_lossy().into_owned();
        if !crate::reference::valid_tag(&tag) {
            continue; // a temporary file of a write in progress
        }
        if let Ok(bytes) = read_small(&e.path()) {
            if let Ok(d) = serde_json::from_slice::<Descriptor>(&bytes) {
                tags.push((tag, d));
            }
        }
    }
    tags.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(tags)
}

/// Apply the queued changes to `index.json` in one rewrite.
pub(crate) fn flush(store: &Store) -> Result<(), StoreError> {
    let Some(pending) = &store.deferred else {
        return Ok(());
    };
    let changes = std::mem::take(&mut *pending.lock().expect("pending tags"));
    if changes.is_empty() {
        return Ok(());
    }
    if let Err(e) = store.update_index(|index| apply(&mut index.manifests, changes.clone())) {
        // Keep them, in order, ahead of what arrived meanwhile: the next flush retries.
        let mut queue = pending.lock().expect("pending tags");
        let newer = std::mem::take(&mut *queue);
        *queue = changes.into_iter().chain(newer).collect();
        return Err(e);
    }
    if pending.lock().expect("pending tags").is_empty() {
        let _ = fs::remove_file(store.root().join(DIRTY));
    }
    Ok(())
}

/// Every tag in tag files (`repo:tag` → descriptor), and the repositories that have them.
fn from_files(
    store: &Store,
) -> Result<
    (
        BTreeMap<String, Descriptor>,
        std::collections::BTreeSet<String>,
    ),
    StoreError,
> {
    let mut found: BTreeMap<String, Descriptor> = BTreeMap::new();
    let mut repos = std::collections::BTreeSet::new();
    let mut todo = vec![(store.root().join("repositories"), String::new())];
    while let Some((dir, repo)) = todo.pop() {
        let Ok(entries) = fs::read_dir(&dir) else {
            continue;
        };
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if name == TAGS && !repo.is_empty() {
                repos.insert(repo.clone());
                for (tag, d) in of_repository(store, &repo)? {
                    found.insert(format!("{repo}:{tag}"), d);
                }
            } else if !name.starts_with('_') && e.file_type().is_ok_and(|t| t.is_dir()) {
                let child = if repo.is_empty() {
                    name
                } else {
                    format!("{repo}/{name}")
                };
                todo.push((e.path(), child));
            }
        }
    }
    Ok((found, repos))
}

/// Every tag: from the tag files, and from `index.json` for repositories without any (tags
/// another tool wrote). Sorted by name; right even before a deferred flush.
pub(crate) fn all(store: &Store) -> Result<Vec<(String, Descriptor)>, StoreError> {
    let (mut found, repos) = from_files(store)?;
    for d in store.read_index()?.manifests {
        let Some(name) = d.annotation(media::ANNOTATION_REF_NAME).map(str::to_string) else {
            continue;
        };
        let owned_by_files = name
            .rsplit_once(':')
            .is_some_and(|(repo, _)| repos.contains(repo));
        if !owned_by_files {
            found.entry(name).or_insert(d);
        }
    }
    Ok(found.into_iter().collect())
}

/// After a server stopped with changes not yet flushed: rebuild `index.json` from the tag
/// files (repositories with tag files take their tags from them alone).
pub(crate) fn recover(store: &Store) -> Result<(), StoreError> {
    let marker = store.root().join(DIRTY);
    if !marker.exists() {
        return Ok(());
    }
    let tags = all(store)?;
    store.update_index(|index| {
        index.manifests = tags.into_iter().map(|(_, d)| d).collect();
    })?;
    fs::remove_file(&marker).map_err(io_err(&marker))
}

/// One tag of the store, as `hoist list` shows it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Listed {
    /// `repo:tag`.
    pub reference: String,
    /// The layers' total size.
    pub size: Option<u64>,
    pub digest: Digest,
}

impl Store {
    /// The manifest `repo:tag` points at.
    pub fn resolve(&self, repository: &str, tag: &str) -> Result<Descriptor, StoreError> {
        resolve(self, repository, tag)
    }

    /// Point `repo:tag` at a manifest already stored as a blob.
    pub fn tag(
        &self,
        repository: &str,
        tag: &str,
        manifest: &Descriptor,
    ) -> Result<(), StoreError> {
        set(self, repository, tag, Some(manifest)).map(drop)
    }

    /// Remove `repo:tag`; whether it existed.
    pub fn untag(&self, repository: &str, tag: &str) -> Result<bool, StoreError> {
        set(self, repository, tag, None)
    }

    /// Remove every tag of `repo` that points at `digest`; how many there were.
    pub fn untag_digest(&self, repository: &str, digest: &Digest) -> Result<usize, StoreError> {
        let mut removed = 0;
        for (tag, desc) in of_repository(self, repository)? {
            if desc.digest == *digest && self.untag(repository, &tag)? {
                removed += 1;
            }
        }
        Ok(removed)
    }

    /// The tags of one repository, sorted.
    pub fn tags(&self, repository: &str) -> Result<Vec<String>, StoreError> {
        Ok(of_repository(self, repository)?
            .into_iter()
            .map(|(t, _)| t)
            .collect())
    }

    /// Write tag changes to `index.json` in batches (a long-running server): see `tags`.
    pub fn defer_index_writes(mut self) -> Store {
        self.deferred = Some(std::sync::Arc::new(std::sync::Mutex::new(Vec::new())));
        self
    }

    /// Apply the deferred tag changes to `index.json` now.
    pub fn flush_index(&self) -> Result<(), StoreError> {
        flush(self)
    }

    /// Serialises changes to the index and referrer lists across processes (released on drop).
    pub(super) fn lock_index(&self) -> Result<File, StoreError> {
        let lock_path = self.root.join("index.json.lock");
        let lock = File::create(&lock_path).map_err(io_err(&lock_path))?;
        lock.lock().map_err(io_err(&lock_path))?;
        Ok(lock)
    }

    /// Read-modify-write `index.json` under the lock.
    pub(crate) fn update_index<T>(
        &self,
        change: impl FnOnce(&mut Index) -> T,
    ) -> Result<T, StoreError> {
        let _lock = self.lock_index()?;
        let mut index = self.read_index()?;
        let result = change(&mut index);
        let bytes = serde_json::to_vec_pretty(&index).expect("index serialises");
        write_atomic(&self.root.join("index.json"), &bytes)?;
        Ok(result)
    }

    /// Every tagged manifest: (`repo:tag`, descriptor).
    pub fn list(&self) -> Result<Vec<(String, Descriptor)>, StoreError> {
        all(self)
    }

    /// Every tag with its digest and the total size of its layers (`None` for an index or
    /// a manifest that cannot be read): what `hoist list` shows.
    pub fn listing(&self) -> Result<Vec<Listed>, StoreError> {
        Ok(self
            .list()?
            .into_iter()
            .map(|(reference, desc)| Listed {
                size: self.layers_size(&desc),
                reference,
                digest: desc.digest,
            })
            .collect())
    }

    fn layers_size(&self, desc: &Descriptor) -> Option<u64> {
        let bytes = self
            .read_blob(&desc.digest, crate::oci::MAX_MANIFEST_BYTES)
            .ok()?;
        match crate::oci::ManifestKind::parse(Some(&desc.media_type), &bytes) {
            Ok(crate::oci::ManifestKind::Image(m)) => Some(m.layers.iter().map(|l| l.size).sum()),
            _ => None,
        }
    }

    pub(crate) fn read_index(&self) -> Result<Index, StoreError> {
        let path = self.root.join("index.json");
        let bytes = fs::read(&path).map_err(io_err(&path))?;
        serde_json::from_slice(&bytes).map_err(|source| StoreError::CorruptIndex { path, source })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::digest::Digest;

    #[test]
    fn deferred_tags_reach_the_index_on_flush_or_on_the_next_open() {
        let root = tempfile::tempdir().unwrap();
        let store = Store::open(root.path()).unwrap().defer_index_writes();
        let d = Descriptor::new(media::OCI_MANIFEST, Digest::of_bytes(b"m"), 1);
        let index = root.path().join("index.json");
        let before = fs::read(&index).unwrap();
        for i in 0..50 {
            store.tag("team/m", &format!("v{i}"), &d).unwrap();
        }
        // Tags are readable at once; index.json has not been rewritten 50 times.
        assert_eq!(store.tags("team/m").unwrap().len(), 50);
        assert_eq!(store.resolve("team/m", "v7").unwrap().digest, d.digest);
        assert_eq!(fs::read(&index).unwrap(), before);
        store.flush_index().unwrap();
        assert_eq!(Store::open(root.path()).unwrap().list().unwrap().len(), 50);
        // Changes queued but never flushed (a server killed): the next open rebuilds.
        store.untag("team/m", "v1").unwrap();
        store.tag("team/m", "late", &d).unwrap();
        drop(store);
        let reopened = Store::open(root.path()).unwrap();
        let names: Vec<String> = reopened
            .list()
            .unwrap()
            .into_iter()
            .map(|(n, _)| n)
            .collect();
        assert_eq!(names.len(), 50);
        assert!(names.contains(&"team/m:late".to_string()));
        assert!(!names.contains(&"team/m:v1".to_string()));
    }
}
