//! `hoist mount` against the real distribution registry: the real model loaded by python
//! `safetensors` from the mount, random reads against the source, a corrupted blob, unmount
//! under load, and the registry going away mid-read. Skipped (with the reason printed) where
//! FUSE is not usable.

mod common;

use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use common::{cannot_run, put_volume_layer, python, real_model, tar_with, tree, Hoist, Registry};

fn fuse_usable() -> bool {
    let ok = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/fuse")
        .is_ok();
    ok || !cannot_run("/dev/fuse cannot be opened here, so hoist mount cannot be tested")
}

fn mounted(path: &Path) -> bool {
    let want = std::fs::canonicalize(path).unwrap_or(path.to_path_buf());
    std::fs::read_to_string("/proc/self/mounts")
        .unwrap()
        .lines()
        .any(|l| l.split(' ').nth(1) == Some(want.to_str().unwrap()))
}

/// A `hoist mount` process; dropped = SIGTERM, and the mount must be gone.
struct Mount {
    child: Child,
    pub dir: tempfile::TempDir,
    pub log: PathBuf,
    pub metrics: PathBuf,
}

impl Mount {
    fn start(h: &Hoist, reference: &str, extra: &[&str]) -> Mount {
        let dir = tempfile::tempdir().unwrap();
        let point = dir.path().join("model");
        std::fs::create_dir(&point).unwrap();
        let log = dir.path().join("log");
        let metrics = dir.path().join("metrics.prom");
        let child = h
            .cmd()
            .arg("mount")
            .arg(reference)
            .arg(&point)
            .arg("--metrics-file")
            .arg(&metrics)
            .args(extra)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let m = Mount {
            child,
            dir,
            log,
            metrics,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while !mounted(&m.point()) {
            assert!(
                Instant::now() < deadline,
                "not mounted: {}",
                std::fs::read_to_string(&m.log).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        m
    }

    fn point(&self) -> PathBuf {
        self.dir.path().join("model")
    }

    /// SIGTERM and wait; returns the exit code and the log.
    fn stop(&mut self) -> (i32, String) {
        // SAFETY: signalling our own child by its pid.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                let log = std::fs::read_to_string(&self.log).unwrap_or_default();
                return (status.code().unwrap_or(-1), log);
            }
            assert!(Instant::now() < deadline, "hoist mount ignored SIGTERM");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.stop();
        }
        if mounted(&self.point()) {
            let _ = std::process::Command::new("fusermount3")
                .args(["-u", "-z"])
                .arg(self.point())
                .status();
        }
    }
}

#[test]
fn real_model_loads_from_the_mount() {
    if !fuse_usable() {
        return;
    }
    let reg = Registry::start();
    let h = Hoist::new();
    let src = real_model();
    let reference = reg.reference("minilm:v1");
    h.run(&["push", src.to_str().unwrap(), &reference]).ok();
    let cache = tempfile::tempdir().unwrap();
    // No prefetch: every byte the loader gets is fetched because it was read.
    let mut m = Mount::start(
        &h,
        &reference,
        &[
            "--cache-dir",
            cache.path().to_str().unwrap(),
            "--no-prefetch",
        ],
    );
    let point = m.point();
    // The tree is there before any weight byte was fetched.
    let size = std::fs::metadata(point.join("model.safetensors"))
        .unwrap()
        .len();
    assert_eq!(size, 90_868_376);
    assert!(point.join("1_Pooling/config.json").is_file());
    assert_eq!(reg.blob_get_count(), 0, "listing the tree fetched blobs");

    // Random-offset reads, byte for byte against the source.
    let mounted_file = std::fs::File::open(point.join("model.safetensors")).unwrap();
    let source = std::fs::File::open(src.join("model.safetensors")).unwrap();
    let mut seed = 0x9e3779b97f4a7c15u64;
    for _ in 0..40 {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let offset = seed % size;
        let len = (seed >> 40) as usize % 300_000 + 1;
        let mut a = vec![0u8; len];
        let mut b = vec![0u8; len];
        let n = mounted_file.read_at(&mut a, offset).unwrap();
        let m2 = source.read_at(&mut b, offset).unwrap();
        assert_eq!(n, m2);
        assert!(a[..n] == b[..n], "bytes differ at {offset}+{n}");
    }

    // The real consumer: python safetensors loads the same tensors.
    let out = python(&format!(
        r#"
import numpy as np
from safetensors.numpy import load_file
a = load_file({:?}); b = load_file({:?})
assert a.keys() == b.keys()
assert all(np.array_equal(a[k], b[k]) for k in a)
print(len(a))
"#,
        point.join("model.safetensors"),
        src.join("model.safetensors")
    ));
    assert_eq!(out.trim(), "104");
    for f in ["tokenizer.json", "config.json", "1_Pooling/config.json"] {
        assert_eq!(
            std::fs::read(point.join(f)).unwrap(),
            std::fs::read(src.join(f)).unwrap()
        );
    }
    drop(mounted_file);
    let (code, log) = m.stop();
    assert_eq!(code, 0, "{log}");
    assert!(!mounted(&point), "still mounted after SIGTERM");
    let metrics = std::fs::read_to_string(&m.metrics).unwrap();
    assert!(
        metrics.contains("hoist_mount_read_stalls_total"),
        "{metrics}"
    );
    let stalls: f64 = metrics
        .lines()
        .find(|l| l.starts_with("hoist_mount_read_stalls_total{"))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
        .unwrap();
    assert!(
        stalls >= 1.0,
        "reads without prefetch must have waited: {metrics}"
    );

    // Blobs read completely were verified and kept in the cache: a second mount reads the
    // weights without fetching a byte.
    let gets = reg.blob_get_count();
    let again = Mount::start(
        &h,
        &reference,
        &[
            "--cache-dir",
            cache.path().to_str().unwrap(),
            "--no-prefetch",
        ],
    );
    assert_eq!(
        std::fs::read(again.point().join("model.safetensors")).unwrap(),
        std::fs::read(src.join("model.safetensors")).unwrap()
    );
    assert_eq!(
        reg.blob_get_count(),
        gets,
        "a cached blob was fetched again"
    );
}

/// Processes killed when the test ends, pass or fail.
struct Children(Vec<Child>);

impl Drop for Children {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// A [`common::large_model`] of `mib` MiB pushed to `reg` as `repo_tag`: the folder (to
/// compare with) and the reference.
fn push_large(
    h: &Hoist,
    reg: &Registry,
    repo_tag: &str,
    mib: usize,
) -> (tempfile::TempDir, String) {
    let src = tempfile::tempdir().unwrap();
    common::large_model(src.path(), mib);
    let reference = reg.reference(repo_tag);
    h.run(&["push", src.path().to_str().unwrap(), &reference])
        .ok();
    (src, reference)
}

fn weights_digest(dir: &Path) -> String {
    hoist::digest::Digest::of_file(&dir.join("model.safetensors"))
        .unwrap()
        .to_string()
}

#[test]
fn corrupted_blob_fails_with_eio_and_never_enters_the_cache() {
    if !fuse_usable() {
        return;
    }
    let reg = Registry::start();
    let h = Hoist::new();
    let (src, reference) = push_large(&h, &reg, "bad:v1", 24);
    let digest = weights_digest(src.path());
    // Same size, other bytes: the registry serves them without noticing.
    let data = reg.blob_data(&digest);
    let mut bytes = std::fs::read(&data).unwrap();
    bytes[20 << 20] ^= 0xff;
    std::fs::write(&data, bytes).unwrap();

    for extra in [&[][..], &["--verify-before-read"][..]] {
        let cache = tempfile::tempdir().unwrap();
        let mut args = vec!["--cache-dir", cache.path().to_str().unwrap()];
        args.extend_from_slice(extra);
        let mut m = Mount::start(&h, &reference, &args);
        let file = m.point().join("model.safetensors");
        // Read to the end: the blob completes, fails its check, and the read fails.
        let Err(err) = std::fs::read(&file) else {
            panic!("a corrupt blob was read whole");
        };
        assert_eq!(err.raw_os_error(), Some(libc::EIO), "{err}");
        // Every later read fails too, even of bytes that were fine.
        let f = std::fs::File::open(&file).unwrap();
        let mut buf = [0u8; 16];
        let Err(err) = f.read_at(&mut buf, 0) else {
            panic!("corrupt blob served");
        };
        assert_eq!(err.raw_os_error(), Some(libc::EIO));
        // The good file of the same artifact still reads.
        assert_eq!(
            std::fs::read(m.point().join("config.json")).unwrap(),
            std::fs::read(src.path().join("config.json")).unwrap()
        );
        drop(f);
        let (code, log) = m.stop();
        assert!(log.contains("VERIFICATION FAILED"), "{log}");
        assert_eq!(code, 6, "a mount that saw a corrupt blob exits 6: {log}");
        let hex = digest.trim_start_matches("sha256:");
        assert!(
            !cache.path().join("blobs/sha256").join(hex).exists(),
            "an unverified blob entered the cache"
        );
        let leftovers: Vec<_> = std::fs::read_dir(cache.path().join("ingest"))
            .unwrap()
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().contains(".mount-"))
            .collect();
        assert!(leftovers.is_empty(), "part files left: {leftovers:?}");
    }
}

#[test]
fn sigterm_under_load_leaves_no_stuck_mount() {
    if !fuse_usable() {
        return;
    }
    let reg = Registry::start();
    let h = Hoist::new();
    let _pushed = push_large(&h, &reg, "busy:v1", 64);
    // Slow link, so readers are mid-read when the signal comes.
    let wan = common::Wan::start(
        &reg.addr,
        hoist::wan::Link {
            rate: 4 << 20,
            ..Default::default()
        },
    );
    let mut m = Mount::start(&h, &wan.reference("busy:v1"), &[]);
    let file = m.point().join("model.safetensors");
    let _readers = Children(
        (0..3)
            .map(|i| {
                std::process::Command::new("sh")
                    .arg("-c")
                    .arg(format!(
                        "while true; do dd if='{}' of=/dev/null bs=1M skip={} 2>/dev/null; done",
                        file.display(),
                        i * 20
                    ))
                    .spawn()
                    .unwrap()
            })
            .collect(),
    );
    // Stop while the readers are fetching through the link.
    let deadline = Instant::now() + Duration::from_secs(20);
    while wan.bytes_down() < 2 << 20 {
        assert!(Instant::now() < deadline, "the readers fetched nothing");
        std::thread::sleep(Duration::from_millis(20));
    }
    let started = Instant::now();
    let (_code, log) = m.stop();
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "unmount under load took {:?}",
        started.elapsed()
    );
    assert!(!mounted(&m.point()), "mount left behind: {log}");
    // Nothing unverified was promoted, and the mount point is an ordinary folder again.
    assert!(std::fs::read_dir(m.point()).unwrap().next().is_none());
}

#[test]
fn registry_gone_mid_read_cached_chunks_still_read_others_fail() {
    if !fuse_usable() {
        return;
    }
    let reg = Registry::start();
    let h = Hoist::new();
    let (src, reference) = push_large(&h, &reg, "gone:v1", 16);
    let m = Mount::start(&h, &reference, &["--no-prefetch", "--chunk-size", "1MiB"]);
    let file = std::fs::File::open(m.point().join("model.safetensors")).unwrap();
    let source = std::fs::read(src.path().join("model.safetensors")).unwrap();
    let mut head = vec![0u8; 4096];
    file.read_exact_at(&mut head, 0).unwrap();
    assert_eq!(head, source[..4096]);
    drop(reg); // the registry goes away

    // Cached chunks still read (bypass the page cache with a fresh descriptor and offset).
    let again = std::fs::File::open(m.point().join("model.safetensors")).unwrap();
    let mut part = vec![0u8; 1000];
    again.read_exact_at(&mut part, 5000).unwrap();
    assert_eq!(part, source[5000..6000]);
    // Others fail with EIO after the retries, in bounded time.
    let started = Instant::now();
    let Err(err) = again.read_exact_at(&mut part, 12 << 20) else {
        panic!("read of an unfetched chunk succeeded with no registry");
    };
    assert_eq!(err.raw_os_error(), Some(libc::EIO), "{err}");
    assert!(
        started.elapsed() < Duration::from_secs(60),
        "EIO took {:?}",
        started.elapsed()
    );
}

#[test]
fn daemon_mode_returns_once_mounted_and_umount_ends_it() {
    if !fuse_usable() {
        return;
    }
    let reg = Registry::start();
    let h = Hoist::new();
    let reference = reg.reference("daemon:v1");
    let src = common::push_small(&h, &reference);
    let dir = tempfile::tempdir().unwrap();
    let point = dir.path().join("m");
    std::fs::create_dir(&point).unwrap();
    let log = dir.path().join("log");
    let run = h
        .run(&[
            "mount",
            &reference,
            point.to_str().unwrap(),
            "--daemon",
            "--log-file",
            log.to_str().unwrap(),
        ])
        .ok();
    let pid: i32 = run.stdout.trim().parse().expect("the server's pid");
    assert!(mounted(&point), "--daemon returned before the mount was up");
    assert_eq!(
        std::fs::read(point.join("1_Pooling/config.json")).unwrap(),
        std::fs::read(src.path().join("1_Pooling/config.json")).unwrap()
    );
    h.run(&["umount", point.to_str().unwrap()]).ok();
    assert!(!mounted(&point));
    // The background server notices and exits on its own.
    let deadline = Instant::now() + Duration::from_secs(10);
    // Gone, or a zombie (where nothing reaps orphans, e.g. in a container).
    let alive = || {
        std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .map(|s| {
                !s.rsplit(')')
                    .next()
                    .unwrap_or("")
                    .trim_start()
                    .starts_with('Z')
            })
            .unwrap_or(false)
    };
    while alive() {
        assert!(Instant::now() < deadline, "the mount server did not exit");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(std::fs::read_to_string(&log).unwrap().contains("Unmounted"));
    // Unmounting what is not a mount is a clear error.
    h.run(&["umount", point.to_str().unwrap()])
        .fails_with(1, "is it a mount point?");
}

/// With --verify-before-read and no prefetch, a small read still completes: the read asks
/// for its whole blob, and no byte reaches it unverified.
#[test]
fn verify_before_read_fetches_the_whole_blob_even_without_prefetch() {
    if !fuse_usable() {
        return;
    }
    let reg = Registry::start();
    let h = Hoist::new();
    let (src, reference) = push_large(&h, &reg, "vbr:v1", 12);
    let cache = tempfile::tempdir().unwrap();
    let mut m = Mount::start(
        &h,
        &reference,
        &[
            "--cache-dir",
            cache.path().to_str().unwrap(),
            "--no-prefetch",
            "--verify-before-read",
            "--chunk-size",
            "1MiB",
            "--read-timeout",
            "30",
        ],
    );
    let f = std::fs::File::open(m.point().join("model.safetensors")).unwrap();
    let mut buf = vec![0u8; 100];
    f.read_exact_at(&mut buf, 5 << 20).unwrap();
    let source = std::fs::read(src.path().join("model.safetensors")).unwrap();
    assert_eq!(buf, source[5 << 20..(5 << 20) + 100]);
    drop(f);
    let (code, log) = m.stop();
    assert_eq!(code, 0, "{log}");
    let metrics = std::fs::read_to_string(&m.metrics).unwrap();
    assert!(
        metrics.contains("hoist_mount_unverified_read_bytes_total{reference=\"")
            && metrics.lines().any(
                |l| l.starts_with("hoist_mount_unverified_read_bytes_total{") && l.ends_with(" 0")
            ),
        "{metrics}"
    );
    let hex = weights_digest(src.path())
        .trim_start_matches("sha256:")
        .to_string();
    assert!(
        cache.path().join("blobs/sha256").join(hex).is_file(),
        "the verified blob was cached"
    );
}

/// The image-volume form mounts too: each file is served from inside its tar layer, the
/// tree is the model's and the real loader reads the weights.
#[test]
fn image_volume_form_mounts_as_the_models_files() {
    if !fuse_usable() {
        return;
    }
    let reg = Registry::start();
    let h = Hoist::new();
    let src = real_model();
    let reference = reg.reference("minilm:v1");
    h.run(&["push", src.to_str().unwrap(), &reference, "--image-volume"])
        .ok();
    let volume_ref = format!("{reference}-volume");
    let mut m = Mount::start(&h, &volume_ref, &[]);
    let point = m.point();
    // The probe of a mount sidecar: 0 and the reference while the mount is live.
    let live = h.run(&["mounted", point.to_str().unwrap()]).ok();
    assert!(live.stdout.contains(&volume_ref), "{}", live.stdout);
    assert_eq!(
        std::fs::metadata(point.join("model.safetensors"))
            .unwrap()
            .len(),
        90_868_376
    );
    assert_eq!(tree(&src, false), tree(&point, false));
    let n = python(&format!(
        "from safetensors.numpy import load_file\nprint(len(load_file({:?})))",
        point.join("model.safetensors").to_str().unwrap()
    ));
    assert!(n.trim().parse::<usize>().unwrap() > 0);
    // Not a mount any more, or never one: exit 4.
    assert_eq!(m.stop().0, 0);
    h.run(&["mounted", point.to_str().unwrap()])
        .fails_with(4, "is not a live hoist mount");
    let plain = tempfile::tempdir().unwrap();
    h.run(&["mounted", plain.path().to_str().unwrap()])
        .fails_with(4, "is not a live hoist mount");
}

/// A volume layer whose tar header names another file than its annotations: the mount
/// serves no byte of it (EIO), whatever the digests say.
#[test]
fn image_volume_layer_with_another_header_is_not_served() {
    if !fuse_usable() {
        return;
    }
    let reg = Registry::start();
    let h = Hoist::new();
    let tar = tar_with(&[("other.bin", tar::EntryType::Regular, "", b"7 bytes")]);
    let reference = put_volume_layer(&reg, "lying", &tar, "model.bin", 7);
    let m = Mount::start(&h, &reference, &[]);
    let err = std::fs::read(m.point().join("model.bin")).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EIO), "{err}");
    let log = std::fs::read_to_string(&m.log).unwrap();
    assert!(log.contains("tar header of model.bin"), "{log}");
}
