//! The pull engine under stress: faults from the WAN emulator, kill -9 and resume, a full
//! disk, concurrent pulls, the node cache, partial pulls, registries without Range, mirrors,
//! and the metrics operators read.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::*;
use hoist::wan::{Fault, Link};

const NETWORK: i32 = 5;
const DISK: i32 = 7;

#[test]
fn each_fault_is_retried_and_the_pull_completes() {
    let reg = Registry::start();
    let h = Hoist::new();
    let src = push_small(&h, &reg.reference("faults:v1"));
    let faults = [
        ("reset", Fault::ResetAfter(300_000)),
        ("truncate", Fault::TruncateAfter(300_000)),
        ("stall", Fault::StallAfter(300_000, Duration::from_secs(3))),
        ("503", Fault::Unavailable),
    ];
    for (label, fault) in faults {
        let wan = Wan::start(
            &reg.addr,
            Link {
                fault,
                faulty_connections: 3,
                ..Default::default()
            },
        );
        let out = tempfile::tempdir().unwrap();
        let r = h.run(&[
            "pull",
            &wan.reference("faults:v1"),
            "-o",
            out.path().to_str().unwrap(),
            "--range-size",
            "1MiB",
            "--stall-timeout",
            "1",
        ]);
        assert_eq!(r.code, 0, "{label}: {}", r.stderr);
        assert_eq!(tree(src.path(), false), tree(out.path(), false), "{label}");
        assert_eq!(
            state_left(out.path()),
            Vec::<String>::new(),
            "{label}: state left"
        );
    }
}

#[test]
fn persistent_faults_fail_cleanly_and_the_next_run_resumes() {
    let reg = Registry::start();
    let h = Hoist::new();
    let src = push_small(&h, &reg.reference("broken:v1"));
    let wan = Wan::start(
        &reg.addr,
        Link {
            fault: Fault::ResetAfter(100_000),
            faulty_connections: usize::MAX,
            ..Default::default()
        },
    );
    let parent = tempfile::tempdir().unwrap();
    let out = parent.path().join("out");
    let o = out.to_str().unwrap();
    let r = h.run(&[
        "pull",
        &wan.reference("broken:v1"),
        "-o",
        o,
        "--retries",
        "2",
        "--range-size",
        "1MiB",
    ]);
    let r = r.fails_with(NETWORK, "failed after 2 attempts");
    assert!(
        r.error_line().contains("run the pull again"),
        "{}",
        r.error_line()
    );
    assert!(
        visible_entries(&out).is_empty(),
        "half-written files are visible: {:?}",
        all_entries(&out)
    );
    // The registry is fine again: the next pull completes from where the first stopped.
    h.run(&["pull", &reg.reference("broken:v1"), "-o", o]).ok();
    assert_eq!(tree(src.path(), false), tree(&out, false));
    assert_eq!(state_left(&out), Vec::<String>::new());
}

#[test]
fn kill_9_mid_pull_then_resume_fetches_only_the_rest() {
    let reg = Registry::start();
    let h = Hoist::new();
    let src = tempfile::tempdir().unwrap();
    large_model(src.path(), 96);
    h.run(&[
        "push",
        src.path().to_str().unwrap(),
        &reg.reference("big:v1"),
    ])
    .ok();
    let size = std::fs::metadata(src.path().join("model.safetensors"))
        .unwrap()
        .len();
    // 2 connections capped at 16 MB/s each: the pull takes ~3 s, long enough to kill it.
    let wan = Wan::start(
        &reg.addr,
        Link {
            rate: 16_000_000,
            ..Default::default()
        },
    );
    let out = tempfile::tempdir().unwrap();
    let o = out.path().to_str().unwrap();
    let args = [
        "pull",
        &wan.reference("big:v1"),
        "-o",
        o,
        "--max-connections",
        "2",
        "--range-size",
        "4MiB",
    ];
    let mut child = h
        .cmd()
        .args(args)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let state_dir = out.path().join(".hoist-partial");
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let done_ranges = || -> usize {
        std::fs::read_dir(&state_dir)
            .map(|d| {
                d.flatten()
                    .filter(|e| e.file_name().to_string_lossy().ends_with(".part.state"))
                    .filter_map(|e| {
                        serde_json::from_slice::<serde_json::Value>(&std::fs::read(e.path()).ok()?)
                            .ok()
                    })
                    .map(|state| state["done"].as_str().unwrap_or("").matches('1').count())
                    .sum()
            })
            .unwrap_or(0)
    };
    while done_ranges() < 8 {
        assert!(
            std::time::Instant::now() < deadline,
            "the pull made no progress"
        );
        assert!(
            child.try_wait().unwrap().is_none(),
            "the pull finished before it could be killed"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    let first = wan.bytes_down();
    assert!(
        visible_entries(out.path()).is_empty(),
        "a killed pull left visible files"
    );
    assert!(first < size, "killed too late: {first} of {size} bytes");

    h.run(&args).ok();
    let second = wan.bytes_down() - first;
    assert_eq!(tree(src.path(), false), tree(out.path(), false));
    assert!(
        second < size - 8 * (4 << 20) + (4 << 20),
        "resume fetched {second} of {size} bytes; at least 8 ranges were done"
    );
}

#[test]
fn a_full_disk_is_a_clear_error() {
    if unsafe { libc::geteuid() } != 0 && cannot_run("mounting a small tmpfs needs root") {
        return;
    }
    let reg = Registry::start();
    let h = Hoist::new();
    push_small(&h, &reg.reference("full:v1"));
    let mnt = tempfile::tempdir().unwrap();
    let m = mnt.path().to_str().unwrap();
    assert!(
        run(std::process::Command::new("mount").args(["-t", "tmpfs", "-o", "size=1m", "tmpfs", m]))
            .code
            == 0
    );
    struct Unmount(String);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = std::process::Command::new("umount").arg(&self.0).status();
        }
    }
    let _guard = Unmount(m.to_string());
    let out = mnt.path().join("out");
    h.run(&[
        "pull",
        &reg.reference("full:v1"),
        "-o",
        out.to_str().unwrap(),
    ])
    .fails_with(DISK, "No space left on device")
    // With what was needed and what was there.
    .fails_with(DISK, "3145745 bytes and");
    assert!(visible_entries(&out).is_empty());
}

#[test]
fn concurrent_pulls_into_one_cache_download_once() {
    let reg = Registry::start();
    let h = Hoist::new();
    let src = tempfile::tempdir().unwrap();
    large_model(src.path(), 24);
    h.run(&[
        "push",
        src.path().to_str().unwrap(),
        &reg.reference("shared:v1"),
    ])
    .ok();
    let total: u64 = tree(src.path(), false)
        .values()
        .map(|v| v.len() as u64)
        .sum();
    let wan = Wan::start(
        &reg.addr,
        Link {
            rate: 20_000_000,
            ..Default::default()
        },
    );
    let before = wan.bytes_down();
    // Two pulls at once, sharing one node cache (store), each into its own folder.
    let fresh = [tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap()];
    let node = Hoist::new();
    run_at_once(
        fresh
            .iter()
            .map(|o| {
                let mut c = node.cmd();
                c.args([
                    "pull",
                    &wan.reference("shared:v1"),
                    "-o",
                    o.path().to_str().unwrap(),
                    "--cache",
                ]);
                c
            })
            .collect(),
    );
    let fetched = wan.bytes_down() - before;
    for o in &fresh {
        assert_eq!(tree(src.path(), false), tree(o.path(), false));
    }
    assert!(
        fetched < total + total / 10,
        "two concurrent pulls fetched {fetched} bytes for a {total}-byte model"
    );
}

#[test]
fn node_cache_serves_repulls_and_hardlinks_are_read_only() {
    use std::os::unix::fs::MetadataExt;
    let reg = Registry::start();
    let h = Hoist::new();
    let src = push_small(&h, &reg.reference("cached:v1"));
    let reference = reg.reference("cached:v1");
    let a = tempfile::tempdir().unwrap();
    h.run(&[
        "pull",
        &reference,
        "-o",
        a.path().to_str().unwrap(),
        "--cache",
    ])
    .ok();
    let gets = reg.blob_get_count();
    let b = tempfile::tempdir().unwrap();
    let r = h
        .run(&[
            "pull",
            &reference,
            "-o",
            b.path().to_str().unwrap(),
            "--cache",
            "--link-mode",
            "hardlink",
        ])
        .ok();
    assert_eq!(
        reg.blob_get_count(),
        gets,
        "a cached pull downloaded blobs: {}",
        r.stdout
    );
    assert!(
        r.stdout.contains("6 from cache by hard link)"),
        "{}",
        r.stdout
    );
    assert_eq!(tree(src.path(), false), tree(b.path(), false));
    let file = std::fs::metadata(b.path().join("model.safetensors")).unwrap();
    let digest = hoist::digest::Digest::of_file(&src.path().join("model.safetensors")).unwrap();
    let blob = std::fs::metadata(h.home.path().join("blobs/sha256").join(digest.hex())).unwrap();
    assert_eq!(
        file.ino(),
        blob.ino(),
        "hardlink mode shares the cached blob"
    );
    assert_eq!(file.mode() & 0o222, 0, "hard-linked files are read-only");
    // Copy mode gives independent, writable files.
    let c = tempfile::tempdir().unwrap();
    let r = h
        .run(&[
            "pull",
            &reference,
            "-o",
            c.path().to_str().unwrap(),
            "--cache",
            "--link-mode",
            "copy",
        ])
        .ok();
    assert!(r.stdout.contains("6 from cache by copy)"), "{}", r.stdout);
    // The default (auto) says which it used: a reflink where the filesystem clones, else a copy.
    let d = tempfile::tempdir().unwrap();
    let r = h
        .run(&[
            "pull",
            &reference,
            "-o",
            d.path().to_str().unwrap(),
            "--cache",
            "--json",
        ])
        .ok();
    let report: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    let by = &report["linked_by"];
    assert_eq!(
        by["reflink"].as_u64().unwrap() + by["copy"].as_u64().unwrap(),
        6,
        "{report}"
    );
    assert_eq!(by["hardlink"], 0);
    let copy = std::fs::metadata(c.path().join("model.safetensors")).unwrap();
    assert_ne!(copy.ino(), blob.ino());
    assert_ne!(copy.mode() & 0o200, 0);
}

#[test]
fn partial_pulls_fetch_only_what_is_asked() {
    let reg = Registry::start();
    let h = Hoist::new();
    push_small(&h, &reg.reference("partial:v1"));
    let reference = reg.reference("partial:v1");
    let cases: [(&[&str], &[&str]); 3] = [
        (&["--include", "*.json"], &["1_Pooling", "config.json"]),
        (&["--kind", "weight"], &["model.safetensors"]),
        (
            &["--exclude", "*.safetensors", "--exclude", "1_Pooling/*"],
            &["README.md", "config.json", "empty.txt", "train.py"],
        ),
    ];
    for (flags, expect) in cases {
        let out = tempfile::tempdir().unwrap();
        let before = reg.blob_get_count();
        let mut args = vec![
            "pull",
            reference.as_str(),
            "-o",
            out.path().to_str().unwrap(),
        ];
        args.extend_from_slice(flags);
        h.run(&args).ok();
        assert_eq!(visible_entries(out.path()), expect, "{flags:?}");
        // Empty files need no request at all.
        let files = tree(out.path(), false)
            .values()
            .filter(|bytes| !bytes.is_empty())
            .count();
        assert_eq!(
            reg.blob_get_count() - before,
            files,
            "{flags:?} fetched other layers"
        );
    }
    let out = tempfile::tempdir().unwrap();
    h.run(&[
        "pull",
        &reference,
        "-o",
        out.path().to_str().unwrap(),
        "--include",
        "*.gguf",
    ])
    .fails_with(2, "no file matches");
}

#[test]
fn a_registry_without_range_support_gets_one_stream() {
    let reg = Registry::start();
    let h = Hoist::new();
    let src = push_small(&h, &reg.reference("norange:v1"));
    let wan = Wan::start(
        &reg.addr,
        Link {
            strip_range: true,
            ..Default::default()
        },
    );
    pull_same(
        &h,
        &wan.reference("norange:v1"),
        src.path(),
        &["--range-size", "256KiB"],
    );
    assert!(
        reg.settled_log().contains("\" 200 3145745 "),
        "the weights came as one 200 response"
    );
}

#[test]
fn mirrors_fail_over_and_cannot_substitute_content() {
    let origin = Registry::start();
    let mirror = Registry::start();
    let h = Hoist::new();
    let src = push_small(&h, &origin.reference("mirrored:v1"));
    h.run(&[
        "push",
        src.path().to_str().unwrap(),
        &mirror.reference("mirrored:v1"),
    ])
    .ok();
    // The mirror serves other bytes for the weights.
    let digest = hoist::digest::Digest::of_file(&src.path().join("model.safetensors")).unwrap();
    let data = mirror.blob_data(digest.as_str());
    let mut bytes = std::fs::read(&data).unwrap();
    bytes[10] ^= 1;
    std::fs::write(&data, bytes).unwrap();
    let dead = format!("127.0.0.1:{}", free_port());
    let out = tempfile::tempdir().unwrap();
    let o = out.path().to_str().unwrap();
    h.run(&[
        "pull",
        &origin.reference("mirrored:v1"),
        "-o",
        o,
        "--mirror",
        &dead,
        "--mirror",
        &mirror.addr,
    ])
    .ok();
    assert_eq!(tree(src.path(), false), tree(out.path(), false));
    assert!(mirror.blob_get_count() > 0, "the mirror was tried");
    // The same through a mirrors file.
    let cfg = out.path().join(".mirrors.toml");
    std::fs::write(
        &cfg,
        format!(
            "[registries.\"{}\"]\nmirrors = [\"{}\"]\n",
            origin.addr, mirror.addr
        ),
    )
    .unwrap();
    let out2 = tempfile::tempdir().unwrap();
    h.run(&[
        "pull",
        &origin.reference("mirrored:v1"),
        "-o",
        out2.path().to_str().unwrap(),
        "--mirrors-config",
        cfg.to_str().unwrap(),
    ])
    .ok();
    assert_eq!(tree(src.path(), false), tree(out2.path(), false));
}

#[test]
fn metrics_pass_promtool_and_reach_a_real_pushgateway() {
    let reg = Registry::start();
    let h = Hoist::new();
    push_small(&h, &reg.reference("metered:v1"));
    let dir = tempfile::tempdir().unwrap();
    let metrics = dir.path().join("hoist.prom");
    let out = dir.path().join("out");
    let port = free_port();
    let mut gateway = std::process::Command::new("prometheus-pushgateway")
        .args([
            &format!("--web.listen-address=127.0.0.1:{port}"),
            "--log.level=error",
        ])
        .spawn()
        .expect("prometheus-pushgateway is not installed: run scripts/test");
    struct Kill(std::process::Child);
    impl Drop for Kill {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let _gateway = Kill(std::mem::replace(
        &mut gateway,
        std::process::Command::new("true").spawn().unwrap(),
    ));
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            std::time::Instant::now() < deadline,
            "pushgateway did not start"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let url = format!("http://127.0.0.1:{port}");
    h.run(&[
        "pull",
        &reg.reference("metered:v1"),
        "-o",
        out.to_str().unwrap(),
        "--metrics-file",
        metrics.to_str().unwrap(),
        "--pushgateway",
        &url,
    ])
    .ok();
    let text = std::fs::read_to_string(&metrics).unwrap();
    assert!(
        text.contains("kaito_model_download_duration_seconds_count{repository=\"metered\"} 1"),
        "{text}"
    );
    assert!(text.contains(
        "kaito_model_download_failures_total{repository=\"metered\",reason=\"network\"} 0"
    ));
    let check = run(std::process::Command::new("sh")
        .arg("-c")
        .arg(format!("promtool check metrics < {}", metrics.display())));
    assert_eq!(check.code, 0, "promtool: {}{}", check.stdout, check.stderr);

    let served = run(std::process::Command::new("curl").args(["-sf", &format!("{url}/metrics")]));
    assert!(
        served
            .stdout
            .contains("kaito_model_download_duration_seconds_count{instance="),
        "{}",
        served.stdout
    );
    assert!(served.stdout.contains("job=\"hoist\""));

    // A failed pull counts its reason.
    h.run(&[
        "pull",
        &reg.reference("metered:nope"),
        "-o",
        out.to_str().unwrap(),
        "--metrics-file",
        metrics.to_str().unwrap(),
    ]);
    let text = std::fs::read_to_string(&metrics).unwrap();
    assert!(
        text.contains(
            "kaito_model_download_failures_total{repository=\"metered\",reason=\"not_found\"} 1"
        ),
        "{text}"
    );
    assert!(text.contains("kaito_model_download_duration_seconds_count{repository=\"metered\"} 0"));
}

/// Issue 27: after a copy-mode `pull --cache`, the first `--link-mode hardlink` pull into a
/// new folder (a second Pod on the node) was reported at 0.6–0.9 s with no CPU used, the
/// ones after it at 0.02 s. It places links and renews one stamp per blob: no byte is read
/// and nothing waits for the disk (stamps are hints, not synced), so it stays far below that
/// even on a busy CI machine. The best of three fresh nodes counts (a loaded machine can
/// stall any one process).
#[test]
fn the_first_warm_hardlink_pull_does_not_wait() {
    let reg = Registry::start();
    let src = tempfile::tempdir().unwrap();
    for shard in 0..8 {
        let bytes: Vec<u8> = (0..4u32 << 20).map(|i| (i * 31 + shard) as u8).collect();
        std::fs::write(src.path().join(format!("model-{shard}.safetensors")), bytes).unwrap();
    }
    std::fs::write(src.path().join("config.json"), br#"{"model_type":"test"}"#).unwrap();
    let reference = reg.reference("warm:v1");
    Hoist::new()
        .run(&["push", src.path().to_str().unwrap(), &reference])
        .ok();
    let mut best = Duration::MAX;
    for _ in 0..3 {
        let node = Hoist::new();
        let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let pull = |out: &Path, mode: &str| {
            node.run(&[
                "pull",
                &reference,
                "-o",
                out.to_str().unwrap(),
                "--cache",
                "--link-mode",
                mode,
            ])
            .ok()
        };
        pull(a.path(), "copy");
        let started = Instant::now();
        let r = pull(b.path(), "hardlink");
        best = best.min(started.elapsed());
        assert!(
            r.stdout.contains("9 from cache by hard link)"),
            "{}",
            r.stdout
        );
    }
    assert!(
        best < Duration::from_millis(400),
        "the first warm hard-link pull took {best:?}"
    );
}
