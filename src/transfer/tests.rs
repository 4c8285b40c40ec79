//! Fast tests of the push, pull, copy and fetch engines against an in-process registry
//! (`hoist serve` on a loopback port of this test process, its store in a temp folder) and
//! the in-process WAN emulator: no binary to spawn, no external registry.

use std::path::{Path, PathBuf};
use std::time::Duration;

use super::*;
use crate::digest::Digest;
use crate::pack::PackOptions;
use crate::registry::{Credentials, RegistryClient, TransportOptions};
use crate::reserved::{CURRENT, VERSIONS_DIR};
use crate::store::Store;
use crate::testkit::noise;

/// A registry served by this process until dropped.
struct InProcess {
    addr: std::net::SocketAddr,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
    _root: tempfile::TempDir,
}

impl Drop for InProcess {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn registry() -> InProcess {
    serve_in_process(None, false).await
}

/// `hoist serve` on a loopback port of this process, over a store of its own, pulling
/// through `upstream` if given.
async fn serve_in_process(upstream: Option<crate::serve::Upstream>, read_only: bool) -> InProcess {
    let root = tempfile::tempdir().unwrap();
    let (addr, server) = crate::serve::bind(crate::serve::ServeOptions {
        addr: "127.0.0.1:0".parse().unwrap(),
        store: Store::open(root.path()).unwrap(),
        upstreams: crate::serve::Upstreams::new(upstream, Default::default(), Duration::ZERO, None),
        access: None,
        read_only,
        tls: None,
        limits: Default::default(),
        hub: Default::default(),
    })
    .await
    .unwrap();
    InProcess {
        addr,
        task: tokio::spawn(server),
        _root: root,
    }
}

fn remote(addr: &str, repository: &str) -> Target {
    let opts = TransportOptions {
        max_connections: 16,
        ..Default::default()
    };
    Target::Remote {
        client: RegistryClient::new(addr, &opts, Credentials::default()).unwrap(),
        repository: repository.into(),
        mirrors: Vec::new(),
    }
}

/// A model: a 3 MiB weights file of noise, a config, a nested file.
fn model(dir: &Path) {
    let weights = noise(3 << 20, 1);
    std::fs::create_dir_all(dir.join("sub")).unwrap();
    std::fs::write(dir.join("model.safetensors"), weights).unwrap();
    std::fs::write(dir.join("config.json"), br#"{"model_type":"bert"}"#).unwrap();
    std::fs::write(dir.join("sub/tokenizer.json"), b"{}").unwrap();
}

fn same_files(a: &Path, b: &Path) {
    for name in ["model.safetensors", "config.json", "sub/tokenizer.json"] {
        assert_eq!(
            std::fs::read(a.join(name)).unwrap(),
            std::fs::read(b.join(name)).unwrap(),
            "{name}"
        );
    }
}

async fn push_model(target: &Target, src: &Path) -> PushReport {
    let (_, report) = push_folder(
        src,
        &PackOptions::default(),
        target,
        &["v1".to_string()],
        &PushOptions::default(),
        silent(),
    )
    .await
    .unwrap();
    report
}

fn small_ranges() -> PullOptions {
    let mut opts = PullOptions::default();
    opts.fetch.range_size = Some(256 << 10);
    opts
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn push_then_pull_then_pull_again_finds_everything_in_place() {
    let reg = registry().await;
    let target = remote(&reg.addr.to_string(), "t/model");
    let work = tempfile::tempdir().unwrap();
    let src = work.path().join("src");
    model(&src);
    let pushed = push_model(&target, &src).await;
    let out = work.path().join("out");
    let first = pull(&target, "v1", &out, &small_ranges(), silent())
        .await
        .unwrap();
    assert_eq!(first.digest, pushed.digest);
    assert_eq!(first.files, 3);
    assert_eq!(first.downloaded_bytes, first.bytes);
    same_files(&src, &out);
    let again = pull(&target, "v1", &out, &small_ranges(), silent())
        .await
        .unwrap();
    assert_eq!(again.skipped, 3);
    assert_eq!(again.downloaded_bytes, 0);
}

/// Connections reset mid-body and bodies cut short: every range is retried or resumed, and
/// the files are exactly the pushed ones.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resets_and_truncations_are_retried_to_the_same_bytes() {
    let reg = registry().await;
    let work = tempfile::tempdir().unwrap();
    let src = work.path().join("src");
    model(&src);
    push_model(&remote(&reg.addr.to_string(), "t/model"), &src).await;
    for (i, fault) in [
        crate::wan::Fault::ResetAfter(300_000),
        crate::wan::Fault::TruncateAfter(300_000),
    ]
    .into_iter()
    .enumerate()
    {
        let link = crate::wan::Link {
            fault,
            faulty_connections: 6,
            ..Default::default()
        };
        let proxy = crate::wan::Proxy::start("127.0.0.1:0", reg.addr, link)
            .await
            .unwrap();
        let via = remote(&proxy.addr.to_string(), "t/model");
        let out = work.path().join(format!("out{i}"));
        let mut opts = small_ranges();
        opts.fetch.retry.base = Duration::from_millis(10);
        let report = pull(&via, "v1", &out, &opts, silent()).await.unwrap();
        assert_eq!(report.files, 3);
        same_files(&src, &out);
    }
}

/// Remote to the local store and back out: the copy verifies, the pull links from the store.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copy_into_the_local_store_then_pull_from_it() {
    let reg = registry().await;
    let work = tempfile::tempdir().unwrap();
    let src = work.path().join("src");
    model(&src);
    let from = remote(&reg.addr.to_string(), "t/model");
    let pushed = push_model(&from, &src).await;
    let local = Target::Local {
        store: Store::open(work.path().join("store")).unwrap(),
        repository: "copied".into(),
    };
    let copied = copy(&from, "v1", &local, &["v1".to_string()], 4, silent())
        .await
        .unwrap();
    assert_eq!(copied.digest, pushed.digest);
    assert_eq!(copied.copied, 4, "config and three files");
    let out = work.path().join("out");
    let report = pull(&local, "v1", &out, &PullOptions::default(), silent())
        .await
        .unwrap();
    assert_eq!(report.cache_hits, 3);
    assert_eq!(report.downloaded_bytes, 0);
    same_files(&src, &out);
}

/// A filter that keeps nothing is an error naming what there is; a tag that is not there is
/// not found; neither leaves an output folder.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_selected_and_missing_tags_leave_nothing() {
    let reg = registry().await;
    let target = remote(&reg.addr.to_string(), "t/model");
    let work = tempfile::tempdir().unwrap();
    let src = work.path().join("src");
    model(&src);
    push_model(&target, &src).await;
    let out = work.path().join("out");
    let mut opts = PullOptions::default();
    let mut globs = globset::GlobSetBuilder::new();
    globs.add(globset::Glob::new("*.gguf").unwrap());
    opts.filter.include = Some(globs.build().unwrap());
    let err = pull(&target, "v1", &out, &opts, silent())
        .await
        .unwrap_err();
    assert!(matches!(err, TransferError::NothingSelected(ref all) if all.contains("config.json")));
    let err = pull(&target, "v2", &out, &PullOptions::default(), silent())
        .await
        .unwrap_err();
    assert!(matches!(
        err,
        TransferError::Registry(crate::registry::RegistryError::NotFound { .. })
    ));
    assert!(!out.exists());
}

fn files_in(dir: &Path) -> Vec<String> {
    fn walk(root: &Path, dir: &Path, out: &mut Vec<String>) {
        for e in std::fs::read_dir(dir).unwrap().flatten() {
            let path = e.path();
            let rel = path.strip_prefix(root).unwrap().display().to_string();
            if rel.starts_with(".hoist") {
                continue;
            }
            if e.file_type().unwrap().is_dir() {
                out.push(format!("{rel}/"));
                walk(root, &path, out);
            } else {
                out.push(rel);
            }
        }
    }
    let mut out = Vec::new();
    walk(dir, dir, &mut out);
    out.sort();
    out
}

/// v1 then v2 into one folder: the folder holds exactly v2's files, plus the user's own file
/// and a v1 file the user changed; a folder left empty goes; a filtered pull removes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_version_replaces_what_the_old_one_placed_and_nothing_else() {
    let reg = registry().await;
    let target = remote(&reg.addr.to_string(), "t/model");
    let work = tempfile::tempdir().unwrap();
    let v1 = work.path().join("v1");
    model(&v1);
    std::fs::write(v1.join("old-shard.bin"), b"old shard").unwrap();
    std::fs::write(v1.join("edited.txt"), b"as pushed").unwrap();
    push_model(&target, &v1).await;
    let out = work.path().join("out");
    pull(&target, "v1", &out, &PullOptions::default(), silent())
        .await
        .unwrap();
    std::fs::write(out.join("notes.txt"), b"the user's").unwrap();
    std::fs::write(out.join("edited.txt"), b"changed by the user").unwrap();

    let v2 = work.path().join("v2");
    std::fs::create_dir_all(&v2).unwrap();
    std::fs::write(v2.join("config.json"), br#"{"model_type":"bert"}"#).unwrap();
    std::fs::write(v2.join("model.safetensors"), b"new weights").unwrap();
    std::fs::write(v2.join("new-shard.bin"), b"new shard").unwrap();
    let (_, _) = push_folder(
        &v2,
        &PackOptions::default(),
        &target,
        &["v2".to_string()],
        &PushOptions::default(),
        silent(),
    )
    .await
    .unwrap();
    // A filtered pull of v2 is not a whole version: nothing of v1 goes.
    let mut only_config = PullOptions::default();
    let mut globs = globset::GlobSetBuilder::new();
    globs.add(globset::Glob::new("config.json").unwrap());
    only_config.filter.include = Some(globs.build().unwrap());
    pull(&target, "v2", &out, &only_config, silent())
        .await
        .unwrap();
    assert!(out.join("old-shard.bin").exists());

    pull(&target, "v2", &out, &PullOptions::default(), silent())
        .await
        .unwrap();
    assert_eq!(
        files_in(&out),
        [
            "config.json",
            "edited.txt",
            "model.safetensors",
            "new-shard.bin",
            "notes.txt"
        ],
        "v2's files, the user's file and the file the user changed"
    );
    assert_eq!(
        std::fs::read(out.join("edited.txt")).unwrap(),
        b"changed by the user"
    );
    assert_eq!(
        std::fs::read(out.join("model.safetensors")).unwrap(),
        b"new weights"
    );
    // Back to v1: edited.txt is the user's now, so the pull refuses to replace it.
    let err = pull(&target, "v1", &out, &PullOptions::default(), silent())
        .await
        .unwrap_err();
    let err = match err {
        TransferError::Interrupted { source, .. } => *source,
        other => other,
    };
    assert!(
        matches!(
            err,
            TransferError::Materialize(crate::materialize::MaterializeError::WouldOverwrite { .. })
        ),
        "{err}"
    );
}

/// Push `files` (name, bytes) as `tag`, with or without a chunk index.
async fn push_version(
    target: &Target,
    dir: &Path,
    tag: &str,
    files: &[(&str, &[u8])],
    index: bool,
) {
    std::fs::create_dir_all(dir).unwrap();
    for (name, bytes) in files {
        std::fs::write(dir.join(name), bytes).unwrap();
    }
    let opts = PackOptions {
        chunk_index: index,
        ..Default::default()
    };
    let (_, report) = push_folder(
        dir,
        &opts,
        target,
        &[tag.to_string()],
        &PushOptions::default(),
        silent(),
    )
    .await
    .unwrap();
    assert_eq!(report.chunk_index.is_some(), index);
}

/// v1 → v2 (a quarter of the weights changed) → v3 (v2 re-sharded) into one folder through a
/// link that counts bytes: each step downloads about what changed, reuses the rest from the
/// folder, and leaves exactly that version's files.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_version_downloads_only_the_chunks_that_changed() {
    let reg = registry().await;
    let proxy = crate::wan::Proxy::start("127.0.0.1:0", reg.addr, Default::default())
        .await
        .unwrap();
    let target = remote(&proxy.addr.to_string(), "t/delta");
    let work = tempfile::tempdir().unwrap();
    let weights = noise(8 << 20, 3);
    let config: &[u8] = br#"{"model_type":"bert"}"#;
    push_version(
        &target,
        &work.path().join("v1"),
        "v1",
        &[("model.safetensors", &weights), ("config.json", config)],
        true,
    )
    .await;
    let mut v2 = weights.clone();
    v2[3 << 20..5 << 20].copy_from_slice(&noise(2 << 20, 4)); // 25% changed
    push_version(
        &target,
        &work.path().join("v2"),
        "v2",
        &[("model.safetensors", &v2), ("config.json", config)],
        true,
    )
    .await;
    let (a, b) = v2.split_at(5 << 20 | 12345); // v3: the same bytes in two shards
    push_version(
        &target,
        &work.path().join("v3"),
        "v3",
        &[
            ("shard-1.safetensors", a),
            ("shard-2.safetensors", b),
            ("config.json", config),
        ],
        true,
    )
    .await;

    let out = work.path().join("out");
    let first = pull(&target, "v1", &out, &PullOptions::default(), silent())
        .await
        .unwrap();
    assert_eq!(first.reused_bytes, 0, "nothing to reuse in an empty folder");

    let before = proxy.bytes_down();
    let second = pull(&target, "v2", &out, &PullOptions::default(), silent())
        .await
        .unwrap();
    let sent = proxy.bytes_down() - before;
    assert_eq!(std::fs::read(out.join("model.safetensors")).unwrap(), v2);
    assert!(second.reused_bytes >= 5 << 20, "{second:?}");
    // 2 MiB changed; chunks straddling the edges and the index cost at most 2 MiB more.
    eprintln!(
        "v1 -> v2: {sent} bytes over the link, {} reused",
        second.reused_bytes
    );
    assert!(
        sent < 4 << 20,
        "{sent} bytes crossed the link for a 2 MiB change"
    );
    assert!(
        sent >= 2 << 20,
        "{sent}: the changed bytes must come from the network"
    );

    let before = proxy.bytes_down();
    let third = pull(&target, "v3", &out, &PullOptions::default(), silent())
        .await
        .unwrap();
    let sent = proxy.bytes_down() - before;
    eprintln!(
        "v2 -> v3: {sent} bytes over the link, {} reused",
        third.reused_bytes
    );
    assert!(third.reused_bytes >= 7 << 20, "{third:?}");
    assert!(
        sent < 2 << 20,
        "{sent} bytes for a re-shard of bytes the folder has"
    );
    assert_eq!(
        files_in(&out),
        ["config.json", "shard-1.safetensors", "shard-2.safetensors"],
        "exactly v3's files"
    );
    let mut joined = std::fs::read(out.join("shard-1.safetensors")).unwrap();
    joined.extend(std::fs::read(out.join("shard-2.safetensors")).unwrap());
    assert_eq!(joined, v2);
}

/// An index that lies (chunks in the wrong order: right lengths, right hashes, wrong bytes at
/// each offset) assembles bytes the digest refuses: the blob is downloaded whole and the pull
/// ends verified, nothing reused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_index_that_lies_ends_in_a_verified_full_download() {
    let reg = registry().await;
    let target = remote(&reg.addr.to_string(), "t/liar");
    let work = tempfile::tempdir().unwrap();
    let v1 = noise(4 << 20, 5);
    push_version(
        &target,
        &work.path().join("v1"),
        "v1",
        &[("w.bin", &v1)],
        true,
    )
    .await;
    let mut v2 = v1.clone();
    v2[..4096].copy_from_slice(&[0u8; 4096]);
    let dir = work.path().join("v2");
    push_version(&target, &dir, "v2", &[("w.bin", &v2)], false).await;
    let mut index =
        chunk_index::ChunkIndex::of_files(&[(Digest::of_bytes(&v2), dir.join("w.bin"))]).unwrap();
    for chunks in index.blobs.values_mut() {
        chunks.reverse();
    }
    let resolved = target.resolve("v2").await.unwrap();
    let scratch = tempfile::tempdir().unwrap();
    chunk_index::attach_index(&target, &resolved.manifest_digest, &index, scratch.path())
        .await
        .unwrap();
    let out = work.path().join("out");
    pull(&target, "v1", &out, &PullOptions::default(), silent())
        .await
        .unwrap();
    let report = pull(&target, "v2", &out, &PullOptions::default(), silent())
        .await
        .unwrap();
    assert_eq!(std::fs::read(out.join("w.bin")).unwrap(), v2);
    assert_eq!(report.reused_bytes, 0, "{report:?}");
    assert_eq!(report.downloaded_bytes, v2.len() as u64);
}

/// A safetensors file: the header (with `meta`) and `tensors` (name, bytes) in order.
fn safetensors(meta: &str, tensors: &[(&str, Vec<u8>)]) -> Vec<u8> {
    let mut header = serde_json::Map::new();
    header.insert("__metadata__".into(), serde_json::json!({ "note": meta }));
    let mut at = 0;
    for (name, bytes) in tensors {
        header.insert(
            (*name).into(),
            serde_json::json!({"dtype": "U8", "shape": [bytes.len()], "data_offsets": [at, at + bytes.len()]}),
        );
        at += bytes.len();
    }
    let header = serde_json::to_vec(&header).unwrap();
    let mut out = (header.len() as u64).to_le_bytes().to_vec();
    out.extend(header);
    for (_, bytes) in tensors {
        out.extend(bytes);
    }
    out
}

/// v1 → v4 (only the safetensors metadata changed: every tensor moves by a few bytes) and
/// v1 → v5 (a new tokenizer): each costs about its own change, not the model.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_header_change_or_a_new_tokenizer_costs_about_itself() {
    let reg = registry().await;
    let proxy = crate::wan::Proxy::start("127.0.0.1:0", reg.addr, Default::default())
        .await
        .unwrap();
    let target = remote(&proxy.addr.to_string(), "t/steps");
    let work = tempfile::tempdir().unwrap();
    let tensors: Vec<(&str, Vec<u8>)> = (0..6)
        .map(|i| {
            (
                ["a", "b", "c", "d", "e", "f"][i],
                noise(1 << 20, 10 + i as u64),
            )
        })
        .collect();
    let v1 = safetensors("v1", &tensors);
    let v4 = safetensors("re-exported with other metadata", &tensors);
    let tokenizer: &[u8] = br#"{"vocab": {"a": 1}}"#;
    let new_tokenizer = noise(200_000, 77);
    for (tag, weights, tok) in [
        ("v1", &v1, tokenizer),
        ("v4", &v4, tokenizer),
        ("v5", &v1, &new_tokenizer[..]),
    ] {
        let files: [(&str, &[u8]); 2] = [("model.safetensors", weights), ("tokenizer.json", tok)];
        push_version(&target, &work.path().join(tag), tag, &files, true).await;
    }
    for (tag, changed) in [("v4", 64u64 << 10), ("v5", 200_000)] {
        let out = work.path().join(format!("out-{tag}"));
        pull(&target, "v1", &out, &PullOptions::default(), silent())
            .await
            .unwrap();
        let before = proxy.bytes_down();
        let report = pull(&target, tag, &out, &PullOptions::default(), silent())
            .await
            .unwrap();
        let sent = proxy.bytes_down() - before;
        eprintln!(
            "v1 -> {tag}: {sent} bytes over the link, {} reused",
            report.reused_bytes
        );
        // The change, the manifests and the index: far from the 6 MiB model.
        assert!(sent < changed + (100 << 10), "v1 -> {tag}: {sent} bytes");
        let want = std::fs::read(work.path().join(tag).join("model.safetensors")).unwrap();
        assert_eq!(std::fs::read(out.join("model.safetensors")).unwrap(), want);
    }
}

/// The node cache gives chunks of any model: v1 pulled through the cache from one
/// repository, then v2 (a quarter changed) from another repository into an empty folder
/// costs about the change, and the chunk lists remembered in the store (not the files) say
/// where the chunks are.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_node_cache_gives_chunks_of_any_model_and_version() {
    let reg = registry().await;
    let proxy = crate::wan::Proxy::start("127.0.0.1:0", reg.addr, Default::default())
        .await
        .unwrap();
    let work = tempfile::tempdir().unwrap();
    let (a, b) = (
        remote(&proxy.addr.to_string(), "team/a"),
        remote(&proxy.addr.to_string(), "team/b"),
    );
    let v1 = noise(8 << 20, 21);
    let mut v2 = v1.clone();
    v2[1 << 20..3 << 20].copy_from_slice(&noise(2 << 20, 22));
    push_version(
        &a,
        &work.path().join("v1"),
        "v1",
        &[("w.safetensors", &v1)],
        true,
    )
    .await;
    push_version(
        &b,
        &work.path().join("v2"),
        "v2",
        &[("w.safetensors", &v2)],
        true,
    )
    .await;
    let store = Store::open(work.path().join("cache")).unwrap();
    let opts = PullOptions {
        cache: Some(store.clone()),
        ..Default::default()
    };
    pull(&a, "v1", &work.path().join("out1"), &opts, silent())
        .await
        .unwrap();
    let v1_digest = Digest::of_bytes(&v1);
    let listed = store.known_chunks();
    assert!(
        listed
            .iter()
            .any(|(d, _, k)| *d == v1_digest && !k.chunks.is_empty()),
        "the store remembers v1's chunks"
    );
    let before = proxy.bytes_down();
    let out2 = work.path().join("out2");
    let report = pull(&b, "v2", &out2, &opts, silent()).await.unwrap();
    let sent = proxy.bytes_down() - before;
    eprintln!(
        "other repository, empty folder: {sent} bytes, {} reused",
        report.reused_bytes
    );
    assert_eq!(std::fs::read(out2.join("w.safetensors")).unwrap(), v2);
    assert!(report.reused_bytes >= 5 << 20, "{report:?}");
    assert!(sent < 4 << 20, "{sent} bytes for a 2 MiB change");
    // The assembled blob went into the store, verified, with its own chunk list.
    assert!(store.blob_size(&Digest::of_bytes(&v2)).is_some());
    assert!(store
        .known_chunks()
        .iter()
        .any(|(d, _, _)| *d == Digest::of_bytes(&v2)));
}

/// v1 (4 MiB of noise from `seed`, with a chunk index if `v1_index`) and v2 (its first 4 KiB
/// changed) pushed as `v1` and `v2`, and v1 pulled into `work/out`.
async fn edited_versions(
    target: &Target,
    seed: u64,
    v1_index: bool,
) -> (tempfile::TempDir, Vec<u8>, Vec<u8>) {
    let work = tempfile::tempdir().unwrap();
    let v1 = noise(4 << 20, seed);
    let mut v2 = v1.clone();
    v2[..4096].copy_from_slice(&[seed as u8; 4096]);
    push_version(
        target,
        &work.path().join("v1"),
        "v1",
        &[("w.bin", &v1)],
        v1_index,
    )
    .await;
    push_version(
        target,
        &work.path().join("v2"),
        "v2",
        &[("w.bin", &v2)],
        true,
    )
    .await;
    pull(
        target,
        "v1",
        &work.path().join("out"),
        &PullOptions::default(),
        silent(),
    )
    .await
    .unwrap();
    (work, v1, v2)
}

/// A pull remembers the chunk lists in the folder's record, and the next version's pull
/// uses them instead of cutting the files: a record whose list lies (other hashes) finds
/// nothing to reuse, and the pull still ends verified with every byte downloaded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn remembered_chunk_lists_are_used_and_a_lying_one_costs_only_a_download() {
    let reg = registry().await;
    let target = remote(&reg.addr.to_string(), "t/remember");
    let (work, v1, v2) = edited_versions(&target, 31, true).await;
    let out = work.path().join("out");
    let record = crate::materialize::Record::load(&out);
    let v1_digest = Digest::of_bytes(&v1);
    let known = record
        .chunks
        .get(&v1_digest)
        .expect("v1's chunks remembered");
    assert_eq!(
        known.chunks.iter().map(|c| c.0).sum::<u64>(),
        v1.len() as u64
    );
    // The lie: same lengths, other hashes. (The record's stamps stay valid: the record file
    // is not one of the placed files.)
    let mut text: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join(crate::reserved::RECORD_FILE)).unwrap())
            .unwrap();
    for chunk in text["chunks"][v1_digest.as_str()]["chunks"]
        .as_array_mut()
        .unwrap()
    {
        chunk[1] = serde_json::json!("0".repeat(64));
    }
    std::fs::write(
        out.join(crate::reserved::RECORD_FILE),
        serde_json::to_vec(&text).unwrap(),
    )
    .unwrap();
    let report = pull(&target, "v2", &out, &PullOptions::default(), silent())
        .await
        .unwrap();
    assert_eq!(std::fs::read(out.join("w.bin")).unwrap(), v2);
    assert_eq!(
        report.reused_bytes, 0,
        "the remembered list, not a new cut, was used"
    );
    assert_eq!(report.downloaded_bytes, v2.len() as u64);
}

/// A thread listing a folder over and over, keeping every distinct listing it saw.
struct Lister {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: std::thread::JoinHandle<std::collections::BTreeSet<Vec<String>>>,
}

impl Lister {
    fn start(folder: PathBuf) -> Lister {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let stopped = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut seen = std::collections::BTreeSet::new();
            while !stopped.load(std::sync::atomic::Ordering::Relaxed) {
                let mut names: Vec<String> = std::fs::read_dir(&folder)
                    .unwrap()
                    .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                    .filter(|n| !n.starts_with(".hoist"))
                    .collect();
                names.sort();
                seen.insert(names);
            }
            seen
        });
        Lister { stop, thread }
    }

    fn stop(self) -> std::collections::BTreeSet<Vec<String>> {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        self.thread.join().unwrap()
    }
}

/// A versioned pull switches `current` in one step: a reader listing `current` while v1 is
/// replaced by v3 (v2 re-sharded) only ever sees all of v1's files or all of v3's; the
/// version before stays, older ones go, and the user's own file in the root is untouched.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_versioned_pull_switches_current_in_one_step() {
    let reg = registry().await;
    let target = remote(&reg.addr.to_string(), "t/versions");
    let work = tempfile::tempdir().unwrap();
    let weights = noise(6 << 20, 41);
    let (x, y) = weights.split_at(2 << 20);
    let config: &[u8] = b"{}";
    push_version(
        &target,
        &work.path().join("v1"),
        "v1",
        &[("model.safetensors", &weights), ("config.json", config)],
        true,
    )
    .await;
    push_version(
        &target,
        &work.path().join("v3"),
        "v3",
        &[
            ("shard-1.safetensors", x),
            ("shard-2.safetensors", y),
            ("config.json", config),
        ],
        true,
    )
    .await;
    let root = work.path().join("models");
    std::fs::create_dir_all(&root).unwrap();
    std::fs::write(root.join("NOTES.md"), b"mine").unwrap();
    let first = pull_versioned(&target, "v1", &root, &PullOptions::default(), silent())
        .await
        .unwrap();
    let current = root.join(CURRENT);
    assert_eq!(files_in(&current), ["config.json", "model.safetensors"]);
    let v1_set = files_in(&current);

    let reader = Lister::start(current.clone());
    let third = pull_versioned(&target, "v3", &root, &PullOptions::default(), silent())
        .await
        .unwrap();
    std::thread::sleep(Duration::from_millis(20));
    let seen = reader.stop();
    let v3_set = files_in(&current);
    assert_eq!(
        v3_set,
        ["config.json", "shard-1.safetensors", "shard-2.safetensors"]
    );
    for names in &seen {
        assert!(
            *names == v1_set || *names == v3_set,
            "a reader saw a mix of versions: {names:?}"
        );
    }
    assert!(third.report.reused_bytes >= 4 << 20, "{:?}", third.report);
    assert_eq!(third.previous.as_deref(), Some(first.version_dir.as_path()));
    assert!(first.version_dir.exists(), "the version before stays");
    // A re-pull of the current version switches and removes nothing; another version
    // removes the oldest.
    let again = pull_versioned(&target, "v3", &root, &PullOptions::default(), silent())
        .await
        .unwrap();
    assert_eq!((again.removed, again.previous), (0, None));
    assert!(
        first.version_dir.exists(),
        "a re-pull removed the version before"
    );
    push_version(
        &target,
        &work.path().join("v4"),
        "v4",
        &[("config.json", b"{\"v\":4}")],
        true,
    )
    .await;
    let fourth = pull_versioned(&target, "v4", &root, &PullOptions::default(), silent())
        .await
        .unwrap();
    assert_eq!(fourth.removed, 1);
    assert!(!first.version_dir.exists(), "the oldest version is removed");
    assert!(third.version_dir.exists());
    assert_eq!(std::fs::read(root.join("NOTES.md")).unwrap(), b"mine");
    assert_eq!(files_in(&current), ["config.json"]);
    a_link_at_a_versions_name_is_refused(&target, &root, work.path()).await;
}

/// A link planted at a version's name is refused, and nothing is written through it.
async fn a_link_at_a_versions_name_is_refused(target: &Target, root: &Path, work: &Path) {
    let current = root.join(CURRENT);
    let elsewhere = work.join("elsewhere");
    std::fs::create_dir(&elsewhere).unwrap();
    let resolved = target.resolve("v1").await.unwrap();
    std::os::unix::fs::symlink(
        &elsewhere,
        root.join(VERSIONS_DIR)
            .join(format!("sha256-{}", resolved.digest.hex())),
    )
    .unwrap();
    let err = pull_versioned(target, "v1", root, &PullOptions::default(), silent())
        .await
        .unwrap_err();
    assert!(err.to_string().contains("not a folder hoist made"), "{err}");
    assert_eq!(std::fs::read_dir(&elsewhere).unwrap().count(), 0);
    assert_eq!(files_in(&current), ["config.json"], "current did not move");
}

/// A folder file with no remembered chunk list (its version had no index when it was
/// pulled) is cut again, and still gives its chunks; the first pull into an empty folder
/// remembers the index it found while downloading.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn files_with_nothing_remembered_are_cut_again() {
    let reg = registry().await;
    let target = remote(&reg.addr.to_string(), "t/cut");
    let (work, _, v2) = edited_versions(&target, 51, false).await;
    let out = work.path().join("out");
    assert!(crate::materialize::Record::load(&out).chunks.is_empty());
    let report = pull(&target, "v2", &out, &PullOptions::default(), silent())
        .await
        .unwrap();
    assert_eq!(std::fs::read(out.join("w.bin")).unwrap(), v2);
    assert!(report.reused_bytes >= 3 << 20, "{report:?}");
    let record = crate::materialize::Record::load(&out);
    assert!(
        record.chunks.contains_key(&Digest::of_bytes(&v2)),
        "v2's chunks are remembered for the next version"
    );
}

/// `hoist serve` in this process as a pull-through cache of `origin`.
async fn cache_of(origin: std::net::SocketAddr) -> InProcess {
    let client = RegistryClient::new(
        &origin.to_string(),
        &TransportOptions::default(),
        Credentials::default(),
    )
    .unwrap();
    serve_in_process(Some(crate::serve::Upstream::new(client, Vec::new())), true).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_caches_pull_through_waits_for_a_place_in_the_origins_budget() {
    let origin = registry().await;
    let work = tempfile::tempdir().unwrap();
    let src = work.path().join("src");
    model(&src);
    push_model(&remote(&origin.addr.to_string(), "t/model"), &src).await;
    let cache = cache_of(origin.addr).await;
    // Every place of the origin's budget held by this process's other downloads.
    let budget = crate::registry::budget::registry_budget(&origin.addr.to_string());
    let held = budget
        .clone()
        .acquire_many_owned(crate::registry::budget::REGISTRY_BUDGET as u32)
        .await
        .unwrap();
    let out = work.path().join("out");
    let target = remote(&cache.addr.to_string(), "t/model");
    let pulling = {
        let out = out.clone();
        tokio::spawn(async move { pull(&target, "v1", &out, &small_ranges(), silent()).await })
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        !pulling.is_finished(),
        "the cache fetched from the origin with no place of its budget free"
    );
    drop(held);
    tokio::time::timeout(Duration::from_secs(60), pulling)
        .await
        .expect("the pull ends once places are free")
        .unwrap()
        .unwrap();
    same_files(&src, &out);
    // The cache's fetches give their places back once they have committed their blobs,
    // which may be just after the client has read the last byte.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while budget.available_permits() < crate::registry::budget::REGISTRY_BUDGET {
        assert!(
            std::time::Instant::now() < deadline,
            "the cache kept a place of the origin's budget after its fetches ended"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
