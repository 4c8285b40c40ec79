//! The cluster tiers under faults: an origin behind a capped link, a cluster cache
//! (`hoist serve --upstream`, possibly several replicas) and node caches in front of it,
//! init-container pulls with mirrors. What #15 promises: a cache tier that is down or silent
//! is left within the stall timeout and every node still ends verified; an origin answering
//! 429 for a while is waited out (Retry-After plus jitter) rather than failing the pulls or
//! being escaped by asking elsewhere; replicas of the cluster cache fetch each blob from the
//! origin once between them; the WAN emulator's link cap is shared by all connections.

mod common;

use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use common::*;

/// A model of a few blobs: one large enough to still be downloading when a fault hits.
fn model(dir: &std::path::Path, mib: usize) {
    large_model(dir, mib);
    small_model(&dir.join("extra"));
}

fn push(h: &Hoist, dir: &std::path::Path, reference: &str) {
    h.run(&["push", dir.to_str().unwrap(), reference]).ok();
}

/// An origin registry holding a [`model`] of `mib` MiB as `tiers/model:v1`; the folder, to
/// compare pulls with.
fn published(h: &Hoist, mib: usize) -> (Registry, tempfile::TempDir) {
    let origin = Registry::start();
    let src = tempfile::tempdir().unwrap();
    model(src.path(), mib);
    push(h, src.path(), &origin.reference("tiers/model:v1"));
    (origin, src)
}

/// A link whose far end answers every manifest and blob download with 429 (Retry-After:
/// 1 s) for `secs` after the first one.
fn throttling(secs: u64) -> hoist::wan::Link {
    hoist::wan::Link {
        fault: hoist::wan::Fault::Throttle(Duration::from_secs(secs), 1),
        faulty_connections: usize::MAX,
        ..Default::default()
    }
}

/// Wait for every pull, each of which must succeed with exactly `src`'s files; their
/// (seconds since `started`, stderr), for further checks.
fn verified(
    pulls: Vec<Child>,
    outs: &[tempfile::TempDir],
    src: &std::path::Path,
    started: Instant,
    what: &str,
) -> Vec<(f64, String)> {
    pulls
        .into_iter()
        .zip(outs)
        .map(|(pull, out)| {
            let (ok, secs, stderr) = finish(pull, started);
            assert!(ok, "{what}: a node's pull failed: {stderr}");
            assert_eq!(
                tree(src, false),
                tree(out.path(), false),
                "{what}: a node ended with other files"
            );
            (secs, stderr)
        })
        .collect()
}

/// Distinct non-empty files: the blobs a pull downloads (never the config).
fn blob_count(dir: &std::path::Path) -> usize {
    tree(dir, false)
        .values()
        .filter(|b| !b.is_empty())
        .collect::<std::collections::BTreeSet<_>>()
        .len()
}

fn spawn_pull(h: &Hoist, reference: &str, out: &std::path::Path, extra: &[&str]) -> Child {
    let mut c = h.cmd();
    c.args([
        "pull",
        reference,
        "-o",
        out.to_str().unwrap(),
        // Plain lines: warnings (a wait, a source left) are printed; `none` silences them.
        "--progress",
        "plain",
    ])
    .args(extra)
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    c.spawn().unwrap()
}

/// Wait for a pull: (success, seconds, stderr).
fn finish(child: Child, started: Instant) -> (bool, f64, String) {
    let out = child.wait_with_output().unwrap();
    (
        out.status.success(),
        started.elapsed().as_secs_f64(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// One pull of `tiers/model:v1` into a new folder, verified as [`verified`] does.
fn pull_verified(
    h: &Hoist,
    registry: &str,
    src: &std::path::Path,
    extra: &[&str],
    what: &str,
) -> (f64, String) {
    let out = tempfile::tempdir().unwrap();
    let started = Instant::now();
    let reference = format!("{registry}/tiers/model:v1");
    let child = spawn_pull(h, &reference, out.path(), extra);
    verified(vec![child], &[out], src, started, what).remove(0)
}

fn signal(pid: i32, sig: i32) {
    // SAFETY: a plain kill(2) of a child this test started.
    assert_eq!(unsafe { libc::kill(pid, sig) }, 0, "kill({pid}, {sig})");
}

#[test]
fn a_failing_mirror_gets_two_tries_and_the_rest_of_the_pull_skips_it() {
    let origin = Registry::start();
    let h = Hoist::new();
    let src = tempfile::tempdir().unwrap();
    // Eight blobs of 1 MiB and more, so the pull has blobs after the first wave.
    for i in 0..8 {
        std::fs::write(
            src.path().join(format!("shard-{i}.bin")),
            noise((1 << 20) + i, i as u64),
        )
        .unwrap();
    }
    push(&h, src.path(), &origin.reference("tiers/model:v1"));
    // A mirror that answers every request with 503: up, and useless.
    let broken = common::fake::FakeRegistry::start(|_| common::fake::Response::new(503));
    let mirror = ["--mirror", &broken.addr, "--concurrency", "2"];
    let (secs, _) = pull_verified(&h, &origin.addr, src.path(), &mirror, "503 mirror");
    let blob_requests = broken
        .requests()
        .iter()
        .filter(|r| r.path.contains("/blobs/"))
        .count();
    // Two tries for each blob that asked it before it was known to be failing (at most the
    // two connections' first blobs); none for the six after.
    assert!(
        blob_requests <= 2 * 2,
        "the mirror was asked {blob_requests} times for blobs"
    );
    // Two short backoffs, not six attempts of up to 10 s for every blob.
    assert!(secs < 5.0, "the failing mirror cost {secs:.1} s");
}

#[test]
fn a_cache_tier_that_is_down_or_silent_is_left_within_the_stall_timeout() {
    let h = Hoist::new();
    let (origin, src) = published(&h, 8);
    // Down: nothing listens. Silent: the kernel accepts connections, nobody answers (a hung
    // process, a frozen node).
    let down = format!("127.0.0.1:{}", free_port());
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let silent_addr = silent.local_addr().unwrap().to_string();
    let stall = 3.0;
    for (what, mirror, limit) in [
        // Refused at once: no retry schedule (6 attempts, about 6 s) for a mirror.
        ("down", down.as_str(), 3.0),
        // One stall timeout for the manifest and one for the blobs that were on it, which
        // then skip it: not the 120 s read timeout, not a stall per range.
        ("silent", silent_addr.as_str(), 2.0 * stall + 3.0),
    ] {
        let extra = ["--mirror", mirror, "--stall-timeout", "3"];
        let (secs, stderr) = pull_verified(&h, &origin.addr, src.path(), &extra, what);
        assert!(
            secs < limit,
            "{what} mirror: the pull took {secs:.1} s (limit {limit} s): {stderr}"
        );
    }
}

/// The whole chain: origin behind a capped link ← cluster cache ← node caches ← pulls.
struct Chain {
    origin: Registry,
    link: Wan,
    cluster: Served,
    nodes: Vec<Served>,
}

impl Chain {
    fn start(nodes: usize, node_stall: &str) -> Chain {
        let origin = Registry::start();
        // The origin's egress: slow enough that a fault lands mid-blob.
        let link = Wan::start(
            &origin.addr,
            hoist::wan::Link {
                link_rate: 12_000_000,
                ..Default::default()
            },
        );
        let cluster = Served::start_free(&["--upstream", &link.addr()]);
        let nodes = (0..nodes)
            .map(|_| {
                Served::start_free(&[
                    "--upstream",
                    &link.addr(),
                    "--mirror",
                    &cluster.addr,
                    "--stall-timeout",
                    node_stall,
                ])
            })
            .collect();
        Chain {
            origin,
            link,
            cluster,
            nodes,
        }
    }
}

fn chain_fault_run(sig: i32, what: &str) {
    let h = Hoist::new();
    let mut chain = Chain::start(3, "3");
    let src = tempfile::tempdir().unwrap();
    model(src.path(), 24);
    push(&h, src.path(), &chain.origin.reference("tiers/model:v1"));
    let reference = chain.link.reference("tiers/model:v1");
    let outs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let started = Instant::now();
    let pulls: Vec<Child> = chain
        .nodes
        .iter()
        .zip(&outs)
        .map(|(node, out)| {
            // The init container: node cache, then cluster cache, then the origin. Its own
            // stall timeout is far longer than the caches' (3 s): a node that finishes in
            // time was rescued by its cache's failover, not by its own.
            spawn_pull(
                &h,
                &reference,
                out.path(),
                &[
                    "--mirror",
                    &node.addr,
                    "--mirror",
                    &chain.cluster.addr,
                    "--stall-timeout",
                    "60",
                ],
            )
        })
        .collect();
    // Mid-run: part of the 24 MiB file (10 MiB, about a second) has crossed the 12 MB/s link.
    let deadline = Instant::now() + Duration::from_secs(20);
    while chain.link.bytes_down() < 10 << 20 {
        assert!(Instant::now() < deadline, "nothing crossed the link");
        std::thread::sleep(Duration::from_millis(20));
    }
    let before = chain.link.bytes_down();
    assert!(
        before > 1 << 20 && before < 24 << 20,
        "the fault must land mid-blob ({before} bytes had crossed)"
    );
    signal(chain.cluster.pid(), sig);
    let faulted = started.elapsed().as_secs_f64();
    let model_bytes: u64 = tree(src.path(), false)
        .values()
        .map(|b| b.len() as u64)
        .sum();
    // One cache stall timeout, then at worst the three nodes' whole models over the
    // 12 MB/s origin link, and room for a loaded machine.
    let limit = 3.0 + (3 * model_bytes) as f64 / 12e6 + 3.0;
    for (secs, stderr) in verified(pulls, &outs, src.path(), started, what) {
        assert!(
            secs - faulted < limit,
            "{what}: a node needed {:.1} s after the fault: {stderr}",
            secs - faulted
        );
    }
    if sig == libc::SIGSTOP {
        signal(chain.cluster.pid(), libc::SIGCONT);
    }
    // The origin sent each node cache what the cluster cache had not: never a whole model
    // per node on top of the cluster cache's share.
    // Each node cache resumed its broken fetch at the byte it had reached: had they started
    // again from zero, the origin would have sent what crossed before the fault plus three
    // whole models.
    let egress = chain.link.bytes_down();
    assert!(
        egress < 3 * model_bytes,
        "{what}: the origin sent {egress} bytes ({before} before the fault) for a \
         {model_bytes}-byte model and 3 nodes: the caches started their blobs again"
    );
    for node in &mut chain.nodes {
        assert!(node.alive(), "{what}: a node cache died");
    }
}

#[test]
fn a_cluster_cache_killed_mid_run_leaves_every_node_verified() {
    chain_fault_run(libc::SIGKILL, "killed");
}

#[test]
fn a_cluster_cache_frozen_mid_run_costs_each_node_one_stall_timeout() {
    chain_fault_run(libc::SIGSTOP, "frozen");
}

#[test]
fn an_origin_throttling_for_a_while_is_waited_out_by_every_node() {
    let h = Hoist::new();
    let (origin, src) = published(&h, 8);
    // 429 with Retry-After: 1 on every blob download for 10 s after the first: longer than
    // the six attempts a range has for failures (about 8 s with these waits).
    let window = 10.0;
    let link = Wan::start(&origin.addr, throttling(window as u64));
    // Two nodes pull from the origin directly, two through a node cache that passes the
    // 429 on (its clients wait; nobody escapes to another source).
    let node = Served::start_free(&["--upstream", &link.addr()]);
    let reference = link.reference("tiers/model:v1");
    let outs: Vec<_> = (0..4).map(|_| tempfile::tempdir().unwrap()).collect();
    let started = Instant::now();
    let pulls: Vec<Child> = outs
        .iter()
        .enumerate()
        .map(|(i, out)| {
            let extra: &[&str] = if i < 2 {
                &[]
            } else {
                &["--mirror", &node.addr]
            };
            spawn_pull(&h, &reference, out.path(), extra)
        })
        .collect();
    for (secs, stderr) in verified(pulls, &outs, src.path(), started, "throttled origin") {
        assert!(
            secs >= window - 1.0,
            "finished in {secs:.1} s inside the window"
        );
        assert!(
            stderr.contains("throttling") || stderr.contains("429"),
            "the wait is said: {stderr}"
        );
        // A throttled node cache is waited for, not gone around (to the origin, which is
        // the one throttling).
        assert!(
            !stderr.contains("trying the next source"),
            "a node left its cache for the origin: {stderr}"
        );
    }
    let throttled = link.throttled();
    // Each waiting connection asks again after Retry-After (1 s) at the soonest: four
    // nodes, a node cache, a few connections each, ten seconds.
    assert!(throttled > 0, "the fault never fired");
    assert!(
        throttled < 5 * 8 * window as usize,
        "{throttled} requests in {window} s: the nodes did not wait as asked"
    );
}

#[test]
fn cluster_cache_replicas_fetch_each_blob_from_the_origin_once_between_them() {
    let h = Hoist::new();
    let (origin, src) = published(&h, 4);
    let mut replicas: Vec<Served> = (0..2)
        .map(|_| Served::start_free(&["--upstream", &origin.addr]))
        .collect();
    let group = format!("{},{}", replicas[0].addr, replicas[1].addr);
    let gets_before = origin.blob_get_count();
    let outs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    run_at_once(
        outs.iter()
            .map(|out| {
                let mut c = h.cmd();
                c.args([
                    "pull",
                    &origin.reference("tiers/model:v1"),
                    "-o",
                    out.path().to_str().unwrap(),
                    "--mirror",
                    &group,
                ]);
                c
            })
            .collect(),
    );
    for out in &outs {
        assert_eq!(tree(src.path(), false), tree(out.path(), false));
    }
    let blobs = blob_count(src.path());
    assert_eq!(
        origin.blob_get_count() - gets_before,
        blobs,
        "two replicas and three nodes: each blob crossed the origin's link once"
    );
    // Each replica holds only the blobs whose home it is.
    let held: Vec<usize> = replicas
        .iter()
        .map(|r| {
            std::fs::read_dir(r.root.path().join("blobs/sha256"))
                .map(|d| d.count())
                .unwrap_or(0)
        })
        .collect();
    assert!(
        held.iter().sum::<usize>() <= blobs + 2,
        "blobs were cached twice: {held:?} for {blobs} blobs (plus manifests)"
    );
    // A replica lost: a new node still pulls, through the other one.
    let lost = replicas.remove(0);
    drop(lost);
    let extra = ["--mirror", group.as_str()];
    let (secs, _) = pull_verified(&h, &origin.addr, src.path(), &extra, "a replica lost");
    assert!(secs < 10.0, "the lost replica cost {secs:.1} s");
}

#[test]
fn the_link_cap_is_shared_by_every_connection_through_the_link() {
    let h = Hoist::new();
    let (origin, src) = published(&h, 8);
    let rate = 8_000_000u64;
    let time_pulls = |link: hoist::wan::Link| {
        let wan = Wan::start(&origin.addr, link);
        let outs: Vec<_> = (0..2).map(|_| tempfile::tempdir().unwrap()).collect();
        let started = Instant::now();
        let pulls: Vec<Child> = outs
            .iter()
            .map(|o| spawn_pull(&h, &wan.reference("tiers/model:v1"), o.path(), &[]))
            .collect();
        let secs: Vec<f64> = verified(pulls, &outs, src.path(), started, "capped link")
            .into_iter()
            .map(|(secs, _)| secs)
            .collect();
        (secs, wan.bytes_down())
    };
    // Per connection only: each pull's several connections each get the rate.
    let (per_conn, _) = time_pulls(hoist::wan::Link {
        rate,
        ..Default::default()
    });
    // The link as a whole: both pulls together get the rate.
    let (shared, bytes) = time_pulls(hoist::wan::Link {
        link_rate: rate,
        ..Default::default()
    });
    let floor = bytes as f64 / rate as f64;
    let last = shared.iter().cloned().fold(0.0, f64::max);
    let first = shared.iter().cloned().fold(f64::MAX, f64::min);
    assert!(
        last >= floor * 0.9,
        "{bytes} bytes in {last:.2} s: faster than the {rate} B/s link"
    );
    assert!(
        first >= last * 0.7,
        "one pull took the link: {shared:?} (fair queueing shares it)"
    );
    let per_conn_last = per_conn.iter().cloned().fold(0.0, f64::max);
    assert!(
        per_conn_last < last,
        "a per-connection cap ({per_conn:?}) is looser than the link cap ({shared:?})"
    );
}

#[test]
fn the_deployed_tier_settings_parse_and_unreachable_tiers_cost_nothing() {
    // The init container's mirrors as deploy/overlays/cluster-tiers sets them, with the
    // node's address put in as Kubernetes would: outside a cluster neither tier exists
    // (no listener, no DNS name), so the pull must go straight on to the origin.
    let patch = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("deploy/overlays/cluster-tiers/mirrors.yaml"),
    )
    .unwrap();
    let value = |name: &str| -> String {
        let at = patch.find(&format!("name: {name}")).unwrap();
        let line = patch[at..].lines().nth(1).unwrap().trim();
        let v = line.strip_prefix("value: ").unwrap();
        v.trim_matches('"').to_string()
    };
    let mirrors = value("HOIST_MIRROR").replace("$(HOST_IP)", "127.0.0.1");
    assert!(mirrors.contains(' ') && mirrors.contains(','), "{mirrors}");
    let stall = value("HOIST_STALL_TIMEOUT");
    let h = Hoist::new();
    let (origin, src) = published(&h, 2);
    let out = tempfile::tempdir().unwrap();
    let started = Instant::now();
    let mut cmd = h.cmd();
    cmd.args([
        "pull",
        &origin.reference("tiers/model:v1"),
        "-o",
        out.path().to_str().unwrap(),
    ])
    .env("HOIST_MIRROR", &mirrors)
    .env("HOIST_STALL_TIMEOUT", &stall);
    let r = run(&mut cmd).ok();
    assert_eq!(tree(src.path(), false), tree(out.path(), false));
    let secs = started.elapsed().as_secs_f64();
    assert!(
        secs < 5.0,
        "unreachable tiers cost {secs:.1} s: {}",
        r.stderr
    );
    // Both tiers were tried (a typo in the setting would skip them silently).
    assert!(r.stderr.contains("hoist-cluster-cache-"), "{}", r.stderr);
    // An empty setting (a manifest that clears it) means no mirror, not an error.
    let out = tempfile::tempdir().unwrap();
    let mut cmd = h.cmd();
    cmd.args([
        "pull",
        &origin.reference("tiers/model:v1"),
        "-o",
        out.path().to_str().unwrap(),
    ])
    .env("HOIST_MIRROR", "");
    run(&mut cmd).ok();
    assert_eq!(tree(src.path(), false), tree(out.path(), false));
}

#[test]
fn a_node_cache_answers_for_a_throttling_origin_until_its_wait_is_over() {
    let h = Hoist::new();
    let (origin, src) = published(&h, 4);
    let window = 6;
    let link = Wan::start(&origin.addr, throttling(window));
    let node = Served::start_free(&["--upstream", &link.addr()]);
    let outs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let started = Instant::now();
    let pulls: Vec<Child> = outs
        .iter()
        .map(|out| spawn_pull(&h, &node.reference("tiers/model:v1"), out.path(), &[]))
        .collect();
    verified(pulls, &outs, src.path(), started, "throttled origin");
    let throttled = link.throttled();
    // Three pulls, several blobs each, asking again every second or so: without the cache
    // answering for the origin while it waits, the origin would see dozens of requests a
    // second. With it: the requests in flight when a wait began, then one per wait.
    assert!(throttled > 0, "the fault never fired");
    assert!(
        throttled <= 4 * window as usize,
        "the origin answered {throttled} requests with 429 in {window} s"
    );
}

#[test]
fn a_throttling_origin_behind_both_tiers_is_waited_for_on_its_tier() {
    let h = Hoist::new();
    let (origin, src) = published(&h, 4);
    // The origin throttles everybody: the cluster cache, and the node cache should it come
    // to the origin itself (its own link, so what it takes from there is counted apart).
    let cluster_link = Wan::start(&origin.addr, throttling(4));
    let node_link = Wan::start(&origin.addr, throttling(4));
    let cluster = Served::start_free(&["--upstream", &cluster_link.addr()]);
    // The node cache's stall timeout is shorter than the time a cache waiting out the 429s
    // itself would keep its request open: passing them on is what keeps it on its tier.
    let node = Served::start_free(&[
        "--upstream",
        &node_link.addr(),
        "--mirror",
        &cluster.addr,
        "--stall-timeout",
        "3",
    ]);
    let outs: Vec<_> = (0..2).map(|_| tempfile::tempdir().unwrap()).collect();
    let started = Instant::now();
    let pulls: Vec<Child> = outs
        .iter()
        .map(|out| {
            let node_mirror = format!("http://{}", node.addr);
            let mirrors = ["--mirror", &node_mirror, "--mirror", &cluster.addr];
            spawn_pull(
                &h,
                &node_link.reference("tiers/model:v1"),
                out.path(),
                &mirrors,
            )
        })
        .collect();
    verified(pulls, &outs, src.path(), started, "throttled origin");
    // Not even a manifest: a 429 from the cluster cache is passed on, never taken as a
    // reason to ask the origin.
    assert_eq!(
        node_link.throttled(),
        0,
        "the node cache asked the throttling origin itself"
    );
    assert!(
        node_link.bytes_down() < 1 << 20,
        "the node cache went around the throttled cluster cache: {} bytes straight from the origin",
        node_link.bytes_down()
    );
    assert!(
        cluster_link.bytes_down() >= 7 << 20,
        "the model came through the cluster cache"
    );
}
