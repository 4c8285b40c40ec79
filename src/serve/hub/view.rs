//! What the Hub shows of a manifest: its raw layers as files described as the Hub describes
//! LFS files, the model or dataset info, the paged tree, the headers of a file's answer.

use super::{commit_id, HubError, Kind};
use crate::digest::Digest;
use crate::oci::{media, LayerFormat, LayerPlan, Manifest, ManifestKind};

/// Entries per page of a tree listing (the Hub's own page size).
const TREE_PAGE: usize = 1000;

/// Is the manifest a Hub dataset's artifact?
fn kind_of(manifest: &Manifest) -> Kind {
    match manifest.annotations.get(media::ANNOTATION_SOURCE) {
        Some(s) if s.contains("/datasets/") => Kind::Dataset,
        _ => Kind::Model,
    }
}

/// One file of the Hub view.
#[derive(Debug, Clone)]
pub struct HubFile {
    pub path: String,
    pub size: u64,
    pub digest: Digest,
}

impl HubFile {
    /// The git-lfs pointer the Hub keeps in git for an LFS file.
    fn pointer(&self) -> String {
        format!(
            "version https://git-lfs.github.com/spec/v1\noid sha256:{}\nsize {}\n",
            self.digest.hex(),
            self.size
        )
    }

    /// The git blob id of the pointer: the Hub's `oid` for an LFS file.
    fn oid(&self) -> String {
        git_oid(self.pointer().as_bytes())
    }

    fn lfs(&self) -> serde_json::Value {
        serde_json::json!({
            "oid": self.digest.hex(),
            "size": self.size,
            "pointerSize": self.pointer().len(),
        })
    }
}

fn git_oid(bytes: &[u8]) -> String {
    use sha1::Digest as _;
    let mut h = sha1::Sha1::new();
    h.update(format!("blob {}\0", bytes.len()).as_bytes());
    h.update(bytes);
    hex::encode(h.finalize())
}

/// A revision of a repository, resolved: what the Hub view shows of it.
#[derive(Debug, Clone)]
pub struct Snapshot {
    pub commit: String,
    pub files: Vec<HubFile>,
    pub created: Option<String>,
}

/// The Hub view of a manifest (of kind `kind`): its raw layers as files.
pub fn snapshot(
    kind: Kind,
    media_type: &str,
    bytes: &[u8],
    digest: &Digest,
) -> Result<Snapshot, HubError> {
    let manifest = match ManifestKind::parse(Some(media_type), bytes) {
        Ok(ManifestKind::Image(m)) => *m,
        Ok(ManifestKind::Index(_)) => {
            return Err(HubError::not_files(
                "this tag names an index (the image-volume form): the Hub API serves a ModelPack artifact's files; ask for its ModelPack tag",
            ))
        }
        Err(e) => return Err(HubError::not_files(format!("not a manifest: {e}"))),
    };
    if kind_of(&manifest) != kind {
        return Err(HubError::repo_not_found());
    }
    let plan = LayerPlan::from_manifest(&manifest, false)
        .map_err(|e| HubError::not_files(format!("its layers are no files: {e}")))?;
    if plan.layers.iter().any(|l| l.format != LayerFormat::Raw) {
        return Err(HubError::not_files(
            "its files are in tar layers (--layer-format tar, or an image): the Hub API serves raw layers, one file each; pull it with hoist pull",
        ));
    }
    let files = plan
        .layers
        .iter()
        .map(|l| HubFile {
            path: l
                .path
                .components()
                .map(|c| c.as_os_str().to_string_lossy().into_owned())
                .collect::<Vec<_>>()
                .join("/"),
            size: l.descriptor.size,
            digest: l.descriptor.digest.clone(),
        })
        .collect();
    Ok(Snapshot {
        commit: commit_id(&manifest, digest),
        files,
        created: manifest.annotations.get(media::ANNOTATION_CREATED).cloned(),
    })
}

/// `model_info` / `dataset_info`: the revision's commit and files with their sizes.
pub fn info_json(kind: Kind, repo: &str, snap: &Snapshot) -> serde_json::Value {
    let when = snap
        .created
        .clone()
        .unwrap_or_else(|| "1970-01-01T00:00:00.000Z".into());
    let siblings: Vec<serde_json::Value> = snap
        .files
        .iter()
        .map(|f| {
            serde_json::json!({
                "rfilename": f.path,
                "size": f.size,
                "blobId": f.oid(),
                // The model info's siblings name the hash `sha256`, the tree's `lfs` `oid`.
                "lfs": {"size": f.size, "sha256": f.digest.hex(), "pointerSize": f.pointer().len()},
            })
        })
        .collect();
    let used: u64 = snap.files.iter().map(|f| f.size).sum();
    let mut v = serde_json::json!({
        "_id": &snap.commit[..24],
        "id": repo,
        "sha": snap.commit,
        "private": false,
        "disabled": false,
        "gated": false,
        "downloads": 0,
        "likes": 0,
        "tags": [],
        "lastModified": when,
        "createdAt": when,
        "siblings": siblings,
        "usedStorage": used,
    });
    if kind == Kind::Model {
        v["modelId"] = repo.into();
    }
    v
}

/// A page of the tree listing under `path` (recursive or one level), from entry `cursor`;
/// and the cursor of the next page, if any.
/// A file `over_xet` says is served over Xet carries `xetHash`, as on the Hub: a client that
/// listed the tree then skips the file's `HEAD`.
pub fn tree_page(
    snap: &Snapshot,
    path: &str,
    recursive: bool,
    cursor: usize,
    over_xet: impl Fn(&HubFile) -> bool,
) -> Result<(Vec<serde_json::Value>, Option<usize>), HubError> {
    let prefix = if path.is_empty() {
        String::new()
    } else {
        format!("{path}/")
    };
    let mut folders = std::collections::BTreeSet::new();
    let mut files = Vec::new();
    for f in &snap.files {
        let Some(below) = f.path.strip_prefix(&prefix) else {
            continue;
        };
        let parts: Vec<&str> = below.split('/').collect();
        for depth in 1..parts.len() {
            if recursive || depth == 1 {
                folders.insert(format!("{prefix}{}", parts[..depth].join("/")));
            }
        }
        if recursive || parts.len() == 1 {
            files.push(f);
        }
    }
    if !path.is_empty() && files.is_empty() && folders.is_empty() {
        return Err(HubError::entry_not_found(path, &snap.commit));
    }
    let mut entries: Vec<serde_json::Value> = folders
        .iter()
        .map(|d| {
            serde_json::json!({"type": "directory", "oid": git_oid(d.as_bytes()), "size": 0, "path": d})
        })
        .collect();
    entries.extend(files.iter().map(|f| {
        serde_json::json!({"type": "file", "oid": f.oid(), "size": f.size, "path": f.path, "lfs": f.lfs()})
    }));
    let total = entries.len();
    let mut page: Vec<serde_json::Value> =
        entries.into_iter().skip(cursor).take(TREE_PAGE).collect();
    // Entries are the folders, then the files.
    for (i, entry) in page.iter_mut().enumerate() {
        let file = (cursor + i)
            .checked_sub(folders.len())
            .and_then(|k| files.get(k));
        if let Some(f) = file.filter(|f| over_xet(f)) {
            entry["xetHash"] = f.digest.hex().into();
        }
    }
    let next = cursor.checked_add(TREE_PAGE).filter(|n| *n < total);
    Ok((page, next))
}

/// The `Link` header of the next page; `base` is the server as the client reached it
/// (`http://HOST` or `https://HOST`).
pub fn next_link(
    base: &str,
    kind: Kind,
    repo: &str,
    revision: &str,
    path: &str,
    recursive: bool,
    cursor: usize,
) -> String {
    let path: String = path
        .split('/')
        .filter(|p| !p.is_empty())
        .map(|p| format!("/{}", encode_segment(p)))
        .collect();
    let repo: Vec<String> = repo.split('/').map(encode_segment).collect();
    format!(
        "<{base}/api/{}/{}/tree/{}{path}?recursive={recursive}&expand=false&cursor={cursor}>; rel=\"next\"",
        kind.api(),
        repo.join("/"),
        encode_segment(revision)
    )
}

/// The `Link` a file's `HEAD` carries to say it downloads over Xet: where its client gets a
/// token (`xet-read-token`) for the revision's commit.
pub fn xet_auth_link(base: &str, kind: Kind, repo: &str, commit: &str) -> String {
    let repo: Vec<String> = repo.split('/').map(encode_segment).collect();
    format!(
        "<{base}/api/{}/{}/xet-read-token/{}>; rel=\"xet-auth\"",
        kind.api(),
        repo.join("/"),
        encode_segment(commit)
    )
}

/// A path segment percent-encoded: RFC 3986's unreserved characters stay, all else is
/// `%XX` (a `/` in a revision included).
fn encode_segment(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// The headers a file's answer carries beside its bytes.
pub fn file_headers(file: &HubFile, commit: &str) -> [(&'static str, String); 5] {
    let sha = file.digest.hex().to_string();
    [
        ("X-Repo-Commit", commit.to_string()),
        ("ETag", format!("\"{sha}\"")),
        ("X-Linked-Etag", format!("\"{sha}\"")),
        ("X-Linked-Size", file.size.to_string()),
        ("Accept-Ranges", "bytes".to_string()),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A snapshot of files of `size` 1 at these paths (their bytes are never read).
    fn snapshot_of(paths: impl IntoIterator<Item = String>) -> Snapshot {
        let digest = Digest::of_bytes(b"x");
        let files = paths
            .into_iter()
            .map(|path| HubFile {
                path,
                size: 1,
                digest: digest.clone(),
            })
            .collect();
        Snapshot {
            commit: "c".repeat(40),
            files,
            created: None,
        }
    }

    #[test]
    fn the_next_page_is_linked_as_the_client_reached_the_server() {
        let link = next_link(
            "https://h:5000",
            Kind::Dataset,
            "o/d",
            "refs/pr/1",
            "a b/c",
            true,
            1000,
        );
        assert_eq!(
            link,
            "<https://h:5000/api/datasets/o/d/tree/refs%2Fpr%2F1/a%20b/c?recursive=true&expand=false&cursor=1000>; rel=\"next\""
        );
    }

    #[test]
    fn a_deep_tree_of_few_files_pages_to_its_end() {
        let snap = snapshot_of((0..600).map(|i| format!("a{i}/b/c/d/f")));
        let mut cursor = Some(0);
        let mut seen = 0;
        while let Some(c) = cursor {
            let (page, next) = tree_page(&snap, "", true, c, |_| false).unwrap();
            seen += page.len();
            cursor = next;
        }
        assert_eq!(seen, 600 * 5, "600 files and their 2,400 folders");
        assert!(tree_page(&snap, "", true, usize::MAX, |_| false)
            .unwrap()
            .0
            .is_empty());
    }

    #[test]
    fn xet_hashes_go_to_the_files_that_have_them_on_every_page() {
        let snap = snapshot_of((0..1500).map(|i| format!("d{}/f{i}", i % 3)));
        let over_xet = |f: &HubFile| f.path.ends_with('7');
        let (mut cursor, mut marked) = (Some(0), 0);
        while let Some(c) = cursor {
            let (page, next) = tree_page(&snap, "", true, c, over_xet).unwrap();
            for e in &page {
                let path = e["path"].as_str().unwrap();
                let want = e["type"] == "file" && path.ends_with('7');
                assert_eq!(e.get("xetHash").is_some(), want, "{path}");
                marked += usize::from(want);
            }
            cursor = next;
        }
        assert_eq!(marked, 150);
    }

    #[test]
    fn the_tree_is_paged_and_folders_are_listed() {
        let snap = snapshot_of(
            (0..1500)
                .map(|i| format!("d{}/f{i}", i % 3))
                .chain(["config.json".to_string()]),
        );
        let (page, next) = tree_page(&snap, "", true, 0, |_| false).unwrap();
        assert_eq!(page.len(), TREE_PAGE);
        let (rest, end) = tree_page(&snap, "", true, next.unwrap(), |_| false).unwrap();
        assert_eq!(page.len() + rest.len(), 1501 + 3);
        assert!(end.is_none());
        let (top, _) = tree_page(&snap, "", false, 0, |_| false).unwrap();
        assert_eq!(top.len(), 4, "three folders and config.json");
        let (sub, _) = tree_page(&snap, "d1", false, 0, |_| false).unwrap();
        assert_eq!(sub.len(), 500);
        assert_eq!(
            tree_page(&snap, "nope", true, 0, |_| false)
                .unwrap_err()
                .code,
            "EntryNotFound"
        );
    }
}
