//! The content-store test suite (after containerd's): what every way of running the store
//! must do, run against each of them — a store as the CLI opens it, and one with deferred
//! index writes as `hoist serve` runs it. Each case starts from an empty store.

use std::io::Write;
use std::path::Path;
use std::sync::Arc;

use super::{BlobCheck, LinkKind, Store, StoreError};
use crate::digest::Digest;
use crate::oci::{media, Descriptor};

type Open = fn(&Path) -> Store;

const KINDS: [(&str, Open); 2] = [
    ("plain", |p| Store::open(p).unwrap()),
    ("deferred index writes", |p| {
        Store::open(p).unwrap().defer_index_writes()
    }),
];

fn each(case: impl Fn(&str, Store, &Path)) {
    for (kind, open) in KINDS {
        let dir = tempfile::tempdir().unwrap();
        case(kind, open(dir.path()), dir.path());
    }
}

fn blob(bytes: &[u8]) -> Descriptor {
    Descriptor::new(
        "application/octet-stream",
        Digest::of_bytes(bytes),
        bytes.len() as u64,
    )
}

fn ingest_is_empty(root: &Path) -> bool {
    std::fs::read_dir(root.join("ingest"))
        .unwrap()
        .flatten()
        .all(|e| e.file_type().unwrap().is_dir())
}

#[test]
fn a_committed_blob_reads_back_and_a_wrong_one_leaves_nothing() {
    each(|kind, store, root| {
        let good = blob(b"weights");
        store.put_bytes(&good, b"weights").unwrap();
        assert_eq!(
            store.read_blob(&good.digest, 100).unwrap(),
            b"weights",
            "{kind}"
        );
        assert_eq!(store.blob_size(&good.digest), Some(7), "{kind}");
        // Declared digest, size, or both wrong: refused, nothing visible, nothing left.
        let mut lie = blob(b"other");
        lie.size = 99;
        for bad in [blob(b"not these bytes"), lie] {
            let err = store.put_bytes(&bad, b"other").unwrap_err();
            assert!(
                matches!(err, StoreError::DigestMismatch { .. }),
                "{kind}: {err}"
            );
            assert!(store.blob_size(&bad.digest).is_none(), "{kind}");
        }
        assert!(ingest_is_empty(root), "{kind}: ingest left behind");
        // A read is bounded by the caller's limit.
        assert!(store.read_blob(&good.digest, 3).is_err(), "{kind}");
    });
}

#[test]
fn commit_checks_what_the_writer_claims() {
    each(|kind, store, root| {
        let want = blob(b"abc");
        let mut ingest = store.ingest_file().unwrap();
        ingest.write_all(b"abc").unwrap();
        let wrong = Digest::of_bytes(b"abd");
        assert!(store.commit(ingest, &want, wrong, 3).is_err(), "{kind}");
        assert!(store.blob_size(&want.digest).is_none(), "{kind}");
        assert!(
            ingest_is_empty(root),
            "{kind}: a refused ingest file stayed"
        );
        let mut ingest = store.ingest_file().unwrap();
        ingest.write_all(b"abc").unwrap();
        let path = store.commit(ingest, &want, want.digest.clone(), 3).unwrap();
        assert_eq!(std::fs::read(path).unwrap(), b"abc", "{kind}");
    });
}

#[test]
fn concurrent_writers_of_one_blob_all_succeed_and_one_copy_remains() {
    each(|kind, store, root| {
        let bytes = vec![7u8; 1 << 20];
        let desc = blob(&bytes);
        let store = Arc::new(store);
        let writers: Vec<_> = (0..8)
            .map(|_| {
                let (store, desc, bytes) = (store.clone(), desc.clone(), bytes.clone());
                std::thread::spawn(move || store.put_bytes(&desc, &bytes).map(drop))
            })
            .collect();
        for w in writers {
            w.join().unwrap().unwrap();
        }
        assert_eq!(
            store.read_blob(&desc.digest, 2 << 20).unwrap(),
            bytes,
            "{kind}"
        );
        assert!(ingest_is_empty(root), "{kind}");
    });
}

#[test]
fn a_blob_changed_on_disk_is_caught_and_removed() {
    each(|kind, store, _| {
        let desc = blob(b"original bytes");
        let path = store.put_bytes(&desc, b"original bytes").unwrap();
        assert!(matches!(
            store.check_blob(&desc.digest, desc.size),
            Ok(BlobCheck::Good(_))
        ));
        // Same size, other bytes (as an edit through a hard-linked file would do).
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        std::fs::write(&path, b"Original bytes").unwrap();
        let err = store.check_blob(&desc.digest, desc.size).unwrap_err();
        assert!(matches!(err, StoreError::Corrupt { .. }), "{kind}: {err}");
        assert!(
            store.blob_size(&desc.digest).is_none(),
            "{kind}: corrupt blob kept"
        );
        assert!(store.good_blob_size(&desc.digest).is_none(), "{kind}");
    });
}

#[test]
fn tags_links_and_referrers_hold_under_concurrent_writers() {
    each(|kind, store, _| {
        let manifest = blob(b"{}");
        store.put_bytes(&manifest, b"{}").unwrap();
        let store = Arc::new(store);
        let taggers: Vec<_> = (0..8)
            .map(|i| {
                let (store, manifest) = (store.clone(), manifest.clone());
                std::thread::spawn(move || store.tag("repo", &format!("v{i}"), &manifest))
            })
            .collect();
        for t in taggers {
            t.join().unwrap().unwrap();
        }
        store.flush_index().unwrap();
        assert_eq!(
            store.tags("repo").unwrap().len(),
            8,
            "{kind}: a tag was lost"
        );
        assert_eq!(
            store.list().unwrap().len(),
            8,
            "{kind}: the index lost a tag"
        );
        assert!(store.untag("repo", "v3").unwrap(), "{kind}");
        assert!(!store.untag("repo", "v3").unwrap(), "{kind}");
        assert!(store.resolve("repo", "v3").is_err(), "{kind}");
        // Links are per repository.
        store
            .link("repo", LinkKind::Blob, &manifest.digest)
            .unwrap();
        assert!(store.is_linked("repo", LinkKind::Blob, &manifest.digest));
        assert!(!store.is_linked("other", LinkKind::Blob, &manifest.digest));
        assert!(store
            .link("../escape", LinkKind::Blob, &manifest.digest)
            .is_err());
        // A referrer is listed once however often it is added.
        let mut referrer = Descriptor::new(media::OCI_MANIFEST, Digest::of_bytes(b"r"), 1);
        referrer.artifact_type = Some("application/spdx+json".into());
        store.add_referrer(&manifest.digest, &referrer).unwrap();
        store.add_referrer(&manifest.digest, &referrer).unwrap();
        assert_eq!(
            store.referrers(&manifest.digest).unwrap().len(),
            1,
            "{kind}"
        );
    });
}

#[test]
fn delete_and_gc_remove_only_what_nothing_reaches() {
    each(|kind, store, _| {
        let kept = blob(b"kept");
        let loose = blob(b"loose");
        store.put_bytes(&kept, b"kept").unwrap();
        store.put_bytes(&loose, b"loose").unwrap();
        let config = Descriptor::new(media::OCI_EMPTY, Digest::of_bytes(b"{}"), 2);
        store.put_bytes(&config, b"{}").unwrap();
        let manifest = serde_json::to_vec(&serde_json::json!({
            "schemaVersion": 2, "mediaType": media::OCI_MANIFEST,
            "config": config, "layers": [kept],
        }))
        .unwrap();
        store
            .put_manifest("m", "v1", "", &manifest, super::Holding::Stored)
            .unwrap();
        store.flush_index().unwrap();
        let report = store.gc(std::time::Duration::ZERO).unwrap();
        assert_eq!(report.removed, 1, "{kind}: {report:?}");
        assert!(store.blob_size(&loose.digest).is_none(), "{kind}");
        assert!(store.blob_size(&kept.digest).is_some(), "{kind}");
        assert!(store.delete_blob(&kept.digest).unwrap(), "{kind}");
        assert!(!store.delete_blob(&kept.digest).unwrap(), "{kind}");
    });
}
