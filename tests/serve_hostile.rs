//! `hoist serve` attacked by its clients: slow and idle connections, names built to reach
//! other paths, other repositories' blobs, users beyond their rights, password guessing, and
//! requests whose bodies the server answers before reading (issue 18). Findings 15–23 of the
//! trust issue; SECURITY.md lists them.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::fake::{FakeRegistry, Request, Response};
use common::*;

fn s(p: &std::path::Path) -> &str {
    p.to_str().unwrap()
}

/// Send raw bytes on a connection and read one response: (status, headers, body).
fn exchange(stream: &mut TcpStream, request: &[u8]) -> (u16, String, Vec<u8>) {
    stream.write_all(request).unwrap();
    read_response(stream)
}

fn read_response(stream: &mut TcpStream) -> (u16, String, Vec<u8>) {
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut head = String::new();
    loop {
        let mut line = String::new();
        let n = reader.read_line(&mut line).unwrap();
        assert!(n > 0, "the connection closed before a response: {head}");
        if line == "\r\n" {
            break;
        }
        head.push_str(&line);
    }
    let status = head.split_whitespace().nth(1).unwrap().parse().unwrap();
    let length: usize = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse().ok())?
        })
        .unwrap_or(0);
    let mut body = vec![0; length];
    reader.read_exact(&mut body).unwrap();
    (status, head.to_ascii_lowercase(), body)
}

fn connect(addr: &str) -> TcpStream {
    let s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    s
}

/// Finding 15: one idle TCP connection blocked every HTTPS client (the handshake ran in the
/// accept loop). Finding 17: `--auth token` announced an http:// realm under TLS.
#[test]
fn tls_handshakes_run_per_connection_and_the_realm_follows_the_scheme() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key, ca) = tls_files(dir.path());
    let users = htpasswd(dir.path(), &[("alice", "wonderland")]);
    let served = Served::start_free(&[
        "--tls-cert",
        &cert,
        "--tls-key",
        &key,
        "--htpasswd",
        s(&users),
        "--auth",
        "token",
    ]);
    // Idle connections that never start a handshake.
    let _idle: Vec<TcpStream> = (0..3).map(|_| connect(&served.addr)).collect();
    let (status, headers, _) = curl(&[
        "--cacert",
        &ca,
        "-X",
        "POST",
        &format!("https://{}/v2/team/m/blobs/uploads/", served.addr),
    ]);
    assert_eq!(status, 401, "{headers}");
    assert!(
        headers.contains(&format!("realm=\"https://{}/token\"", served.addr)),
        "{headers}"
    );
    // A full push and pull over TLS with a token, while the idle connections stay open.
    let h = Hoist::new();
    let src = tempfile::tempdir().unwrap();
    small_model(src.path());
    let reference = served.reference("team/m:v1");
    let started = Instant::now();
    let auth = |c: &mut std::process::Command| {
        c.env("HOIST_USERNAME", "alice")
            .env("HOIST_PASSWORD", "wonderland");
    };
    let mut push = h.cmd();
    auth(&mut push);
    run(push.args(["push", s(src.path()), &reference, "--ca-file", &ca])).ok();
    assert!(
        started.elapsed() < Duration::from_secs(8),
        "blocked behind idle connections"
    );
    let out = tempfile::tempdir().unwrap();
    let mut pull = h.cmd();
    auth(&mut pull);
    run(pull.args(["pull", &reference, "-o", s(out.path()), "--ca-file", &ca])).ok();
    assert_eq!(tree(src.path(), false), tree(out.path(), false));
    // `hoist login` over TLS gets its token from the https realm, then a pull uses the
    // saved credentials.
    let config = tempfile::tempdir().unwrap();
    let mut login = h.cmd();
    login
        .env("DOCKER_CONFIG", config.path())
        .env_remove("HOIST_USERNAME")
        .env_remove("HOIST_PASSWORD")
        .args([
            "login",
            &served.addr,
            "-u",
            "alice",
            "--password-stdin",
            "--ca-file",
            &ca,
        ])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let mut child = login.spawn().unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"wonderland\n")
        .unwrap();
    let done = child.wait_with_output().unwrap();
    assert!(
        done.status.success(),
        "{}",
        String::from_utf8_lossy(&done.stderr)
    );
    let again = tempfile::tempdir().unwrap();
    run(h
        .cmd()
        .env("DOCKER_CONFIG", config.path())
        .env_remove("HOIST_USERNAME")
        .env_remove("HOIST_PASSWORD")
        .args(["pull", &reference, "-o", s(again.path()), "--ca-file", &ca]))
    .ok();
}

/// Finding 16: half-sent requests were held for ever; many of them starved other clients.
#[test]
fn half_sent_requests_are_cut_and_connections_are_bounded() {
    let served = Served::start_free(&["--idle-timeout", "2", "--max-connections", "20"]);
    let mut stalled: Vec<TcpStream> = (0..40)
        .map(|_| {
            let mut c = connect(&served.addr);
            let _ = c.write_all(b"GET /v2/ HTTP/1.1\r\nHost: x\r\n"); // never finished
            c
        })
        .collect();
    // Every stalled connection is closed by the server (limit at accept, or idle timeout):
    // each read waits for that, for at most 10 s.
    let deadline = Instant::now() + Duration::from_secs(10);
    for c in &mut stalled {
        let mut buf = [0u8; 64];
        let left = deadline.saturating_duration_since(Instant::now());
        c.set_read_timeout(Some(left.max(Duration::from_millis(1))))
            .unwrap();
        match c.read(&mut buf) {
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                panic!("a half-sent request's connection was still open after 10 s")
            }
            Ok(0) | Err(_) => {}
            Ok(n) => {
                let text = String::from_utf8_lossy(&buf[..n]).to_string();
                assert!(
                    text.starts_with("HTTP/1.1 408") || text.starts_with("HTTP/1.1 4"),
                    "{text}"
                );
            }
        }
    }
    let (status, _, _) = curl(&[&served.url("/v2/")]);
    assert_eq!(status, 200);
}

/// `n` connections each holding a request whose headers never end.
fn half_sent(addr: &str, n: usize) -> Vec<TcpStream> {
    (0..n)
        .map(|_| {
            let mut c = connect(addr);
            let _ = c.write_all(b"GET /v2/ HTTP/1.1\r\nHost: x\r\n");
            c
        })
        .collect()
}

/// One request on a fresh connection, answered within `within` (else the test fails).
fn answered_within(addr: &str, within: Duration) -> (u16, String) {
    let started = Instant::now();
    let mut c = TcpStream::connect(addr).unwrap();
    c.set_read_timeout(Some(within)).unwrap();
    c.write_all(b"GET /v2/ HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        match c.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => head.extend_from_slice(&buf[..n]),
            Err(e) => panic!(
                "no answer within {within:?} ({e}), {:?} after connecting",
                started.elapsed()
            ),
        }
    }
    let head = String::from_utf8_lossy(&head).to_ascii_lowercase();
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no HTTP answer: {head:?}"));
    (status, head)
}

/// Issue 27: started with `ulimit -n 256`, `hoist serve` held by 300 half-sent requests
/// refused every new client until the header timeout freed them (each held connection took
/// a descriptor; accept then failed for all). The soft limit is raised to the hard one, and
/// under a low hard limit the connections are capped below it (said in the log).
/// SECURITY.md, shared node, case 12: at the cap, the connection that has waited longest
/// for its headers is closed for the newcomer, so a client that sends a whole request is
/// served at once, again and again, while 300 half-sent requests keep arriving.
#[test]
fn half_sent_requests_never_use_up_the_descriptors() {
    let logs = tempfile::tempdir().unwrap();
    // A low soft limit under a high hard one: raised at start, so every client is served.
    let served = Served::start_with_open_files(256, 4096, &logs.path().join("soft.log"), &[]);
    let held = half_sent(&served.addr, 300);
    let (status, _) = answered_within(&served.addr, Duration::from_secs(5));
    assert_eq!(
        status, 200,
        "a new client is served beside 300 held connections"
    );
    drop(held);
    drop(served);

    // Both limits at 256: the cap fits under them and the log says so; a whole request is
    // still served at once, each time, the half-sent ones giving up their slots.
    let log = logs.path().join("hard.log");
    let served = Served::start_with_open_files(256, 256, &log, &[]);
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(
        text.contains("serving at most 96 connections at once, not 1024")
            && text.contains("ulimit -n"),
        "{text}"
    );
    let mut held = half_sent(&served.addr, 300);
    std::thread::sleep(Duration::from_millis(500));
    for round in 0..5 {
        let (status, head) = answered_within(&served.addr, Duration::from_secs(2));
        assert_eq!(status, 200, "round {round}: {head}");
        held.extend(half_sent(&served.addr, 50));
    }
    // The oldest half-sent ones were the ones closed: the first of them reads EOF.
    let mut first = held.remove(0);
    first
        .set_read_timeout(Some(Duration::from_secs(2)))
        .unwrap();
    let mut buf = [0u8; 64];
    assert!(
        matches!(first.read(&mut buf), Ok(0) | Err(_)),
        "the longest waiter still holds its slot"
    );
    drop(held);
}

/// Over TLS too: connections that never start a handshake hold every slot (96), and a
/// client that does is served at once, in the slot of the one that waited longest.
#[test]
fn over_tls_a_newcomer_takes_the_slot_of_a_stalled_handshake() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key, ca) = tls_files(dir.path());
    let log = dir.path().join("tls.log");
    let served =
        Served::start_with_open_files(256, 256, &log, &["--tls-cert", &cert, "--tls-key", &key]);
    let held: Vec<TcpStream> = (0..300).map(|_| connect(&served.addr)).collect();
    std::thread::sleep(Duration::from_millis(500));
    let started = Instant::now();
    let (status, _, _) = curl(&[
        "--max-time",
        "5",
        "--cacert",
        &ca,
        &format!("https://{}/v2/", served.addr),
    ]);
    assert_eq!(status, 200, "after {:?}", started.elapsed());
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    drop(held);
}

/// Findings 18 and 19: pull-through joined names into upstream URLs; tags were not checked.
#[test]
fn names_and_tags_follow_the_grammar_on_every_route() {
    let upstream = FakeRegistry::start(|r: &Request| {
        if r.path == "/v2/" {
            return Response::new(200);
        }
        Response::json(
            404,
            "application/json",
            r#"{"errors":[{"code":"NOT_FOUND"}]}"#,
        )
    });
    let served = Served::start_free(&["--upstream", &upstream.addr]);
    for path in [
        "/v2/a/manifests/x/../../../secret/x/tags/list",
        "/v2/a/manifests/../../../../internal/admin",
        "/v2/a/blobs/..%2f..%2finternal",
        "/v2/a/manifests/%2e%2e%2f%2e%2e%2finternal",
    ] {
        let (status, _, _) = curl(&["--path-as-is", &served.url(path)]);
        assert!(status == 404 || status == 400, "{path}: {status}");
    }
    for r in upstream.requests() {
        assert!(
            !r.path.contains("secret") && !r.path.contains("internal") && !r.path.contains(".."),
            "reached upstream: {}",
            r.path
        );
    }
    // Tags outside the grammar are refused when written.
    let plain = Served::start();
    let long = "t".repeat(4000);
    for tag in ["a:b@c", long.as_str(), "%00nul", "-lead", ".hidden"] {
        let (status, _, body) = curl(&[
            "--path-as-is",
            "-X",
            "PUT",
            "-H",
            "Content-Type: application/vnd.oci.image.manifest.v1+json",
            "--data-binary",
            "{}",
            &plain.url(&format!("/v2/a/manifests/{tag}")),
        ]);
        assert_eq!(status, 400, "{tag}: {body}");
    }
    let tags = std::fs::read_to_string(plain.root.path().join("index.json")).unwrap();
    assert!(!tags.contains("nul") && !tags.contains("a:b@c"), "{tags}");
}

/// The digest of the first layer of `reference`'s manifest (`hoist inspect --json`).
fn first_layer(h: &Hoist, reference: &str) -> String {
    let doc: serde_json::Value =
        serde_json::from_str(&h.run(&["inspect", reference, "--json"]).ok().stdout).unwrap();
    doc["manifest"]["layers"][0]["digest"]
        .as_str()
        .unwrap()
        .to_string()
}

/// Finding 20: one blob pool for all repositories (delete, mount, read across repositories).
#[test]
fn blobs_belong_to_the_repositories_that_hold_them() {
    let served = Served::start();
    let h = Hoist::new();
    let src = push_small(&h, &served.reference("team/a:v1"));
    drop(src);
    let blob = first_layer(&h, &served.reference("team/a:v1"));
    let get = |repo: &str| curl(&["-I", &served.url(&format!("/v2/{repo}/blobs/{blob}"))]).0;
    assert_eq!(get("team/a"), 200);
    assert_eq!(
        get("other/b"),
        404,
        "readable through a repository that never had it"
    );
    // Mount from a repository that never had it: a normal upload session instead (202).
    let mount = |to: &str, from: &str| {
        curl(&[
            "-X",
            "POST",
            &served.url(&format!("/v2/{to}/blobs/uploads/?mount={blob}&from={from}")),
        ])
        .0
    };
    assert_eq!(mount("other/c", "other/b"), 202);
    assert_eq!(get("other/c"), 404);
    assert_eq!(mount("other/c", "team/a"), 201);
    assert_eq!(get("other/c"), 200);
    // Delete removes this repository's link only.
    let (status, _, _) = curl(&[
        "-X",
        "DELETE",
        &served.url(&format!("/v2/team/a/blobs/{blob}")),
    ]);
    assert_eq!(status, 202);
    assert_eq!(get("team/a"), 404);
    assert_eq!(get("other/c"), 200, "another repository's blob was deleted");
}

/// Finding 21: every user could push and delete everywhere; `/metrics` was open.
#[test]
fn the_access_policy_decides_who_may_pull_push_and_delete() {
    let dir = tempfile::tempdir().unwrap();
    let users = htpasswd(
        dir.path(),
        &[("alice", "a-pass"), ("bob", "b-pass"), ("carol", "c-pass")],
    );
    let policy = dir.path().join("policy.toml");
    std::fs::write(
        &policy,
        r#"
[groups]
admins = ["carol"]

[[rule]]
who = ["alice"]
repositories = ["team/*"]
actions = ["pull", "push"]

[[rule]]
who = ["bob"]
repositories = ["team/*"]
actions = ["pull"]

[[rule]]
who = ["group:admins"]
repositories = ["**"]
actions = ["pull", "push", "delete"]
"#,
    )
    .unwrap();
    let src = tempfile::tempdir().unwrap();
    small_model(src.path());
    for mode in ["basic", "token"] {
        let served = Served::start_free(&[
            "--htpasswd",
            s(&users),
            "--auth",
            mode,
            "--access-policy",
            s(&policy),
        ]);
        let h = Hoist::new();
        let as_user = |user: &str, pass: &str, args: &[&str]| {
            run(h
                .cmd()
                .env("HOIST_USERNAME", user)
                .env("HOIST_PASSWORD", pass)
                .args(args))
        };
        let reference = served.reference("team/m:v1");
        as_user("bob", "b-pass", &["push", s(src.path()), &reference]).fails_with(3, "");
        as_user("alice", "a-pass", &["push", s(src.path()), &reference]).ok();
        as_user(
            "alice",
            "a-pass",
            &["push", s(src.path()), &served.reference("other/m:v1")],
        )
        .fails_with(3, "");
        let out = tempfile::tempdir().unwrap();
        as_user("bob", "b-pass", &["pull", &reference, "-o", s(out.path())]).ok();
        if mode == "basic" {
            let delete = |user: &str| {
                curl(&[
                    "-u",
                    user,
                    "-X",
                    "DELETE",
                    &served.url("/v2/team/m/manifests/v1"),
                ])
                .0
            };
            assert_eq!(delete("alice:a-pass"), 403, "{mode}");
            assert_eq!(delete("carol:c-pass"), 202, "{mode}");
        }
        assert_eq!(
            curl(&[&served.url("/metrics")]).0,
            401,
            "{mode}: metrics open"
        );
        if mode == "basic" {
            assert_eq!(curl(&["-u", "bob:b-pass", &served.url("/metrics")]).0, 200);
        }
    }
}

/// Finding 22: bcrypt ran on the async workers (wrong passwords slowed every request) and
/// an unknown user answered 100× faster than a known one.
#[test]
fn password_checks_neither_stall_the_server_nor_reveal_users() {
    let dir = tempfile::tempdir().unwrap();
    let users = htpasswd_cost(dir.path(), &[("alice", "right")], 10);
    let served = Served::start_free(&["--htpasswd", s(&users)]);
    let time_of = |user: &str| {
        let mut v: Vec<Duration> = (0..5)
            .map(|_| {
                let t = Instant::now();
                assert_eq!(
                    curl(&["-u", &format!("{user}:wrong"), &served.url("/v2/")]).0,
                    401
                );
                t.elapsed()
            })
            .collect();
        v.sort();
        v[2]
    };
    let (known, unknown) = (time_of("alice"), time_of("nobody"));
    assert!(
        unknown * 3 > known && known * 3 > unknown,
        "known {known:?} vs unknown {unknown:?}: the timing tells users apart"
    );
    // Eight clients guessing passwords; /healthz keeps answering promptly.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let guessers: Vec<_> = (0..8)
        .map(|_| {
            let (stop, url) = (stop.clone(), served.url("/v2/"));
            std::thread::spawn(move || {
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    curl(&["-u", "alice:guess", &url]);
                }
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(500));
    let mut worst = Duration::ZERO;
    for _ in 0..10 {
        let t = Instant::now();
        assert_eq!(curl(&[&served.url("/healthz")]).0, 200);
        worst = worst.max(t.elapsed());
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for g in guessers {
        g.join().unwrap();
    }
    assert!(
        worst < Duration::from_millis(500),
        "/healthz took {worst:?} under guessing"
    );
}

/// Issue 18: after an answer that did not read the request body, the next request on the
/// same connection must still work.
#[test]
fn early_answers_leave_the_connection_usable() {
    let served = Served::start();
    let h = Hoist::new();
    push_small(&h, &served.reference("conn/m:v1"));
    let mut c = connect(&served.addr);
    let ping = b"GET /v2/ HTTP/1.1\r\nHost: x\r\n\r\n";
    let body = vec![b'x'; 300_000];
    let with_body = |head: String| {
        let mut r = head.into_bytes();
        r.extend_from_slice(&body);
        r
    };
    // Start an upload session to send chunks to.
    let (status, headers, _) = exchange(
        &mut c,
        b"POST /v2/conn/m/blobs/uploads/ HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n",
    );
    assert_eq!(status, 202);
    let location = headers
        .lines()
        .find_map(|l| l.strip_prefix("location: "))
        .unwrap()
        .trim()
        .to_string();
    // A blob the repository already holds, sent again whole.
    let existing = {
        let digest = format!("sha256:{}", hoist::digest::Digest::of_bytes(&body).hex());
        let mut first = format!(
            "POST /v2/conn/m/blobs/uploads/?digest={digest} HTTP/1.1\r\nHost: x\r\nContent-Type: application/octet-stream\r\nContent-Length: {}\r\n\r\n",
            body.len()
        )
        .into_bytes();
        first.extend_from_slice(&body);
        assert_eq!(exchange(&mut c, &first).0, 201);
        first
    };
    let cases: Vec<(&str, Vec<u8>, u16)> = vec![
        ("existing blob", existing, 201),
        (
            "out-of-order chunk",
            with_body(format!(
                "PATCH {location} HTTP/1.1\r\nHost: x\r\nContent-Range: 5000-{}\r\nContent-Type: application/octet-stream\r\nContent-Length: {}\r\n\r\n",
                5000 + body.len() - 1,
                body.len()
            )),
            416,
        ),
        (
            "wrong digest",
            with_body(format!(
                "POST /v2/conn/m/blobs/uploads/?digest=sha256:{} HTTP/1.1\r\nHost: x\r\nContent-Type: application/octet-stream\r\nContent-Length: {}\r\n\r\n",
                "0".repeat(64),
                body.len()
            )),
            400,
        ),
        (
            "manifest naming unknown blobs",
            with_body(format!(
                "PUT /v2/conn/m/manifests/v2 HTTP/1.1\r\nHost: x\r\nContent-Type: application/vnd.oci.image.manifest.v1+json\r\nContent-Length: {}\r\n\r\n",
                body.len()
            )),
            400,
        ),
        (
            "oversized manifest",
            {
                let big = vec![b' '; 5 << 20];
                let mut r = format!(
                    "PUT /v2/conn/m/manifests/v3 HTTP/1.1\r\nHost: x\r\nContent-Type: application/vnd.oci.image.manifest.v1+json\r\nContent-Length: {}\r\n\r\n",
                    big.len()
                )
                .into_bytes();
                r.extend_from_slice(&big);
                r
            },
            413,
        ),
    ];
    for (what, request, want) in cases {
        let (status, _, _) = exchange(&mut c, &request);
        assert_eq!(status, want, "{what}");
        let (status, _, _) = exchange(&mut c, ping);
        assert_eq!(
            status, 200,
            "the request after '{what}' failed on the same connection"
        );
    }
    // A 401 before the body is read, on a server with users.
    let dir = tempfile::tempdir().unwrap();
    let users = htpasswd(dir.path(), &[("alice", "pw")]);
    let secured = Served::start_free(&["--htpasswd", s(&users)]);
    let mut c = connect(&secured.addr);
    let request = with_body(format!(
        "POST /v2/conn/m/blobs/uploads/?digest=sha256:{} HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n",
        "0".repeat(64),
        body.len()
    ));
    assert_eq!(exchange(&mut c, &request).0, 401);
    let (status, _, _) = exchange(&mut c, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!(
        status, 200,
        "the request after a 401 failed on the same connection"
    );
}

/// Clients that hang up in the middle of a blob (a pull whose other connection took over the
/// rest of the range, a killed client) end their own connection only: the server keeps
/// serving, and a pull that splits its ranges across connections completes.
#[test]
fn clients_hanging_up_mid_blob_do_not_stop_the_server() {
    use std::io::{Read, Write};
    let mut served = Served::start();
    let h = Hoist::new();
    let src = tempfile::tempdir().unwrap();
    large_model(src.path(), 48);
    let reference = served.reference("hangup/model:v1");
    h.run(&["push", src.path().to_str().unwrap(), &reference])
        .ok();
    let digest = hoist::digest::Digest::of_file(&src.path().join("model.safetensors")).unwrap();
    for _ in 0..20 {
        let mut s = std::net::TcpStream::connect(&served.addr).unwrap();
        write!(
            s,
            "GET /v2/hangup/model/blobs/{digest} HTTP/1.1\r\nHost: {}\r\n\r\n",
            served.addr
        )
        .unwrap();
        let mut some = [0u8; 4096];
        let _ = s.read(&mut some).unwrap();
        drop(s); // mid-body: the server is still writing
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    std::thread::sleep(std::time::Duration::from_millis(300));
    assert!(served.alive(), "hoist serve died when clients hung up");
    // Small ranges and many connections: runs are split, connections dropped mid-response.
    pull_same(&h, &reference, src.path(), &["--range-size", "1MiB"]);
    assert!(served.alive(), "hoist serve died during a pull");
}

/// A pull-through cache held one pool of blobs for all repositories: a blob fetched for one
/// repository was served through any other repository's path, without the upstream saying
/// that repository has it.
#[test]
fn a_pull_through_cache_serves_a_blob_only_where_the_upstream_has_it() {
    let upstream = Registry::start();
    let h = Hoist::new();
    push_small(&h, &upstream.reference("team/a:v1"));
    let cache = Served::start_free(&["--upstream", &upstream.addr]);
    let out = tempfile::tempdir().unwrap();
    h.run(&[
        "pull",
        &cache.reference("team/a:v1"),
        "-o",
        out.path().to_str().unwrap(),
    ])
    .ok();
    let blob = first_layer(&h, &upstream.reference("team/a:v1"));
    let get = |repo: &str| curl(&[&cache.url(&format!("/v2/{repo}/blobs/{blob}"))]).0;
    assert_eq!(get("team/a"), 200);
    assert_eq!(
        get("other/b"),
        404,
        "a cached blob was served through a repository the upstream does not hold it in"
    );
    // Once the upstream holds it there too, the cache serves it there.
    push_small(&h, &upstream.reference("other/b:v1"));
    assert_eq!(get("other/b"), 200);
    // With the upstream down, nothing new is confirmed: still refused elsewhere.
    drop(upstream);
    assert_eq!(get("third/c"), 404);
    assert_eq!(get("team/a"), 200, "what was confirmed stays served");
}
