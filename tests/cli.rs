//! The command line as a user meets it: every documented exit code, one error line without
//! colour, progress that prints wherever it runs, an interrupt that says how to resume, and
//! the local store's own verbs. Each test runs the real binary.

mod common;

use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::*;

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// A file where a folder is expected.
fn cwd_file() -> tempfile::NamedTempFile {
    tempfile::NamedTempFile::new().unwrap()
}

/// Each exit code the README lists, caused the way a user would cause it.
#[test]
fn every_documented_exit_code() {
    let h = Hoist::new();
    let src = push_small(&h, "m:v1"); // 0
    let reg = Registry::start();
    let out = tempfile::tempdir().unwrap();
    let o = out.path().join("o");

    // 1: a failure of hoist's own (its server cannot listen: the port is taken).
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    h.run(&["serve", "--addr", &addr])
        .fails_with(1, "cannot listen on");

    // 2: usage, from hoist or from the flag parser (one line either way).
    h.run(&["pull", "Bad/Ref:v1", "-o", s(&o)])
        .fails_with(2, "invalid reference");
    h.run(&["pull", "m:v1", "--range-size", "3 parsecs"])
        .fails_with(2, "unknown unit");

    // 3: auth — a credential helper that fails is an auth problem, not a usage error.
    let config = out.path().join("docker.json");
    std::fs::write(
        &config,
        format!(
            r#"{{"credHelpers": {{"{}": "hoist-test-no-such-helper"}}}}"#,
            reg.addr
        ),
    )
    .unwrap();
    h.run(&[
        "pull",
        &reg.reference("m:v1"),
        "-o",
        s(&o),
        "--registry-config",
        s(&config),
    ])
    .fails_with(3, "credential helper");

    // 4: not found.
    h.run(&["pull", &reg.reference("nothing:here"), "-o", s(&o)])
        .fails_with(4, "not found");

    // 5: network, at once when nothing listens.
    let started = Instant::now();
    h.run(&[
        "pull",
        &format!("127.0.0.1:{}/m:v1", free_port()),
        "-o",
        s(&o),
    ])
    .fails_with(5, "Connection refused");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "a refused connection took {:?} to report",
        started.elapsed()
    );

    // 6: verification.
    let pulled = pull_same(&h, "m:v1", src.path(), &[]);
    std::fs::write(pulled.path().join("config.json"), b"{}").unwrap();
    h.run(&["verify", s(pulled.path()), "m:v1"])
        .fails_with(6, "config.json");

    // 7: local disk — the ready marker cannot be written (its folder is a file).
    let blocker = out.path().join("blocker");
    std::fs::write(&blocker, b"").unwrap();
    h.run(&[
        "pull",
        "m:v1",
        "-o",
        s(&out.path().join("o7")),
        "--ready-marker",
        s(&blocker.join("ready.json")),
    ])
    .fails_with(7, "cannot write the ready marker");

    // 8: invalid or unsafe content.
    let reference = push_manifest(
        &reg,
        "unsafe",
        vec![(
            "../escape".into(),
            "application/octet-stream",
            b"x".to_vec(),
        )],
    );
    h.run(&["pull", &reference, "-o", s(&o)])
        .fails_with(8, "unsafe path");
    assert!(!o.exists(), "failed pulls created the output folder");
    drop(taken);
}

/// Off a terminal: one error line, no ANSI colour, no timestamped log lines; a warning (a
/// mirror left for the next source) is one line in the progress format; `-q` and
/// `--progress none` print nothing but the error line.
#[test]
fn a_failure_is_one_plain_line() {
    let h = Hoist::new();
    let o = tempfile::tempdir().unwrap();
    let reference = format!("127.0.0.1:{}/m:v1", free_port());
    let mirror = format!("127.0.0.1:{}", free_port());
    let run_with = |extra: &[&str]| {
        let mut args = vec!["pull", &reference, "-o", s(o.path()), "--mirror", &mirror];
        args.extend_from_slice(extra);
        let r = h.run(&args);
        assert_eq!(r.code, 5, "{extra:?}: {}", r.stderr);
        assert!(
            !r.stderr.contains('\u{1b}'),
            "colour off a terminal: {:?}",
            r.stderr
        );
        assert!(!r.stderr.contains(" WARN "), "log lines: {}", r.stderr);
        // 127.0.0.1 is already plain HTTP: no advice to pass --plain-http.
        assert!(!r.error_line().contains("--plain-http"), "{}", r.stderr);
        r
    };
    let plain = run_with(&["--progress", "plain"]);
    let warnings: Vec<&str> = plain
        .stderr
        .lines()
        .filter(|l| l.starts_with("hoist: warning: mirror"))
        .collect();
    assert_eq!(warnings.len(), 1, "{}", plain.stderr);
    let json = run_with(&["--progress", "json"]);
    assert!(
        json.stderr.contains(r#""event":"warning""#),
        "{}",
        json.stderr
    );
    for quiet in [&["-q"][..], &["--progress", "none"][..]] {
        let r = run_with(quiet);
        assert_eq!(r.stderr.lines().count(), 1, "{quiet:?}: {}", r.stderr);
    }
}

/// `--progress plain` prints lines into a pipe (a log, CI), with words for counts.
#[test]
fn plain_progress_prints_anywhere() {
    let h = Hoist::new();
    let src = tempfile::tempdir().unwrap();
    std::fs::write(src.path().join("only.bin"), noise(4096, 3)).unwrap();
    let r = h.run(&["push", s(src.path()), "one:v1"]).ok();
    assert!(r.stdout.contains("(1 file,"), "{}", r.stdout);
    let out = tempfile::tempdir().unwrap();
    let r = run(h
        .cmd()
        .args(["pull", "one:v1", "-o", s(out.path()), "--progress", "plain"]))
    .ok();
    assert!(r.stderr.contains("1 file, 4.0 KiB"), "{}", r.stderr);
    assert!(r.stderr.contains("only.bin"), "{}", r.stderr);
    assert!(!r.stderr.contains('{'), "JSON in plain mode: {}", r.stderr);
    assert!(r.stdout.contains(": 1 file, 4.0 KiB"), "{}", r.stdout);
}

/// Ctrl-C stops a pull with exit 130 and says that running it again resumes; the next run
/// reuses what was downloaded and says so.
#[test]
fn an_interrupted_pull_says_how_to_resume_and_resumes() {
    let h = Hoist::new();
    let reg = Registry::start();
    let src = tempfile::tempdir().unwrap();
    large_model(src.path(), 24);
    h.run(&["push", s(src.path()), &reg.reference("big:v1")])
        .ok();
    // 4 MB/s: the pull takes about 6 s, and is stopped after 10 MB (some ranges done).
    let link = Wan::start(
        &reg.addr,
        hoist::wan::Link {
            link_rate: 4_000_000,
            ..Default::default()
        },
    );
    let out = tempfile::tempdir().unwrap();
    // 1 MiB ranges: a resume keeps every range that was finished.
    let mut child = h
        .cmd()
        .args(["pull", &link.reference("big:v1"), "-o", s(out.path())])
        .args(["--range-size", "1MiB"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while link.bytes_down() < 10_000_000 {
        assert!(Instant::now() < deadline, "the pull did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
    // SAFETY: signalling our own child by its pid.
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let started = Instant::now();
    let status = child.wait().unwrap();
    assert!(started.elapsed() < Duration::from_secs(5), "slow to stop");
    let mut stderr = String::new();
    std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut stderr).unwrap();
    assert_eq!(status.code(), Some(130), "{stderr}");
    let line = stderr
        .lines()
        .find(|l| l.starts_with("hoist: error:"))
        .unwrap_or_else(|| panic!("no error line: {stderr}"));
    assert!(line.contains("run the same command again"), "{line}");
    assert!(line.contains(".hoist-partial"), "{line}");
    assert!(
        visible_entries(out.path()).is_empty(),
        "files visible after an interrupt"
    );

    let r = h
        .run(&["pull", &reg.reference("big:v1"), "-o", s(out.path())])
        .ok();
    assert!(
        r.stdout.contains("resumed from an earlier pull"),
        "{}",
        r.stdout
    );
    assert_eq!(tree(src.path(), false), tree(out.path(), false));
}

/// `hoist tag` names a model again without copying; `hoist rm` removes one name and frees
/// only the blobs no other name uses; both refuse a store that does not exist.
#[test]
fn rm_and_tag_manage_the_local_store() {
    let h = Hoist::new();
    let src = push_small(&h, "m:v1");
    h.run(&["tag", "m:v1", "other:prod,latest"]).ok();
    let list = h.run(&["list", "--json"]).ok();
    let rows: serde_json::Value = serde_json::from_str(&list.stdout).unwrap();
    let names: Vec<&str> = rows
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["reference"].as_str().unwrap())
        .collect();
    for want in ["m:v1", "other:prod", "other:latest"] {
        assert!(names.contains(&want), "{names:?}");
    }
    let blobs = |h: &Hoist| {
        std::fs::read_dir(h.home.path().join("blobs/sha256"))
            .unwrap()
            .count()
    };
    let before = blobs(&h);
    let r = h.run(&["rm", "m:v1"]).ok();
    assert!(r.stdout.contains("freed 0 blobs"), "{}", r.stdout);
    assert_eq!(blobs(&h), before, "blobs another name uses were removed");
    pull_same(&h, "other:prod", src.path(), &[]);
    h.run(&["rm", "m:v1"])
        .fails_with(4, "not in the local store");
    let r = h.run(&["rm", "other:prod", "--json"]).ok();
    let removed: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    assert_eq!(removed["freed_blobs"], 0);
    let r = h.run(&["rm", "other:latest"]).ok();
    // The artifact's 8 blobs and its chunk index (a referrer: manifest, config, list).
    assert!(r.stdout.contains("freed 11 blobs"), "{}", r.stdout);
    assert_eq!(blobs(&h), 0, "the last name's blobs are gone");
    h.run(&["rm", "127.0.0.1:5000/m:v1"])
        .fails_with(2, "works on the local store");
    let typo = tempfile::tempdir().unwrap().path().join("typo");
    for args in [
        &["list"][..],
        &["rm", "m:v1"][..],
        &["tag", "m:v1", "n:v1"][..],
    ] {
        let mut args = args.to_vec();
        args.extend(["--store", s(&typo)]);
        h.run(&args).fails_with(4, "no hoist store");
        assert!(!typo.exists(), "{args:?} created a store");
    }
}

/// `--json` prints one JSON document on stdout for every command that reports a result.
#[test]
fn json_output_everywhere() {
    let h = Hoist::new();
    let src = push_small(&h, "m:v1");
    let out = tempfile::tempdir().unwrap();
    h.run(&["pull", "m:v1", "-o", s(out.path())]).ok();
    let sbom = src.path().join("sbom.json");
    std::fs::write(&sbom, b"{}").unwrap();
    let runs: Vec<Vec<&str>> = vec![
        vec!["pull", "m:v1", "-o", s(out.path()), "--json"],
        vec!["push", s(src.path()), "n:v1", "--json"],
        vec!["copy", "m:v1", "c:v1", "--json"],
        vec!["convert", "m:v1", "o:v1", "--to", "oras", "--json"],
        vec!["verify", s(out.path()), "m:v1", "--json"],
        vec!["list", "--json"],
        vec!["inspect", "m:v1", "--json"],
        vec!["discover", "m:v1", "--json"],
        vec![
            "attach",
            "m:v1",
            s(&sbom),
            "--artifact-type",
            "application/spdx+json",
            "--json",
        ],
        vec!["rm", "c:v1", "--json"],
        vec!["prune", "--keep", "5", "--json"],
    ];
    for args in runs {
        let r = h.run(&args).ok();
        let doc: Result<serde_json::Value, _> = serde_json::from_str(r.stdout.trim());
        assert!(doc.is_ok(), "{args:?} printed no JSON: {}", r.stdout);
    }
}

/// Flags that cannot work together are refused, not ignored; hosts may be names.
#[test]
fn flags_mean_what_they_say() {
    let h = Hoist::new();
    push_small(&h, "m:v1");
    h.run(&[
        "convert",
        "m:v1",
        "o:v1",
        "--to",
        "oras",
        "--layer-format",
        "tar",
    ])
    .fails_with(2, "--layer-format applies to --to modelpack");
    // `-o` that is a file, or that cannot be made, says so (not a bare OS error).
    let file = cwd_file();
    h.run(&["pull", "m:v1", "-o", s(file.path())])
        .fails_with(2, "is a file, not a folder");
    h.run(&["pull", "m:v1", "-o", s(&file.path().join("under"))])
        .fails_with(7, "cannot create or write the output folder");
    // A missing folder is one line, not every file listed as missing.
    let r = h.run(&["verify", "/no/such/folder", "m:v1"]);
    assert_eq!(r.code, 6);
    assert!(r.error_line().contains("does not exist"), "{}", r.stderr);
    assert!(!r.error_line().contains("missing"), "{}", r.stderr);
    // HOIST_CACHE switches pull's node cache on and off; it is not a folder anywhere.
    let cwd = tempfile::tempdir().unwrap();
    let out = tempfile::tempdir().unwrap();
    let mut cmd = h.cmd();
    cmd.current_dir(cwd.path())
        .env("HOIST_CACHE", "1")
        .args(["pull", "m:v1", "-o", s(out.path())]);
    run(&mut cmd).ok();
    let mut cmd = h.cmd();
    cmd.env("HOIST_CACHE", "maybe")
        .args(["pull", "m:v1", "-o", s(out.path())]);
    assert_eq!(
        run(&mut cmd).code,
        2,
        "a value that is not on/off is refused"
    );
    let point = tempfile::tempdir().unwrap();
    std::fs::write(point.path().join("keep"), b"x").unwrap();
    let mut cmd = h.cmd();
    cmd.current_dir(cwd.path())
        .env("HOIST_CACHE", "1")
        .args(["mount", "m:v1", s(point.path())]);
    run(&mut cmd).fails_with(2, "is not empty");
    assert!(
        !cwd.path().join("1").exists(),
        "HOIST_CACHE=1 made a store named 1"
    );
    // serve takes a host name.
    let port = free_port();
    let root = tempfile::tempdir().unwrap();
    let mut serve = std::process::Command::new(hoist_bin())
        .args(["serve", "--addr", &format!("localhost:{port}"), "--root"])
        .arg(root.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut first = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(serve.stdout.take().unwrap()),
        &mut first,
    )
    .unwrap();
    let _ = serve.kill();
    let _ = serve.wait();
    assert!(first.contains(&format!("127.0.0.1:{port}")), "{first:?}");
}

/// `mount --daemon` without `--log-file` still says why the mount process failed, with its
/// exit code (here: the model is not in the store, 4).
#[test]
fn a_daemon_mount_that_fails_says_why() {
    let h = Hoist::new();
    let point = tempfile::tempdir().unwrap();
    let r = h.run(&["mount", "absent:v1", s(point.path()), "--daemon"]);
    assert_eq!(r.code, 4, "{}", r.stderr);
    assert!(
        r.error_line().contains("not in the local store"),
        "{}",
        r.stderr
    );
}

/// `login -u USER` on a terminal asks for the password (here through `script`'s terminal),
/// then uses it: the login goes on to the registry (refused here: exit 5).
#[test]
fn login_with_a_username_prompts_for_the_password() {
    if std::process::Command::new("script")
        .arg("--version")
        .output()
        .is_err()
        && cannot_run("`script` (util-linux) gives the test a terminal and is missing")
    {
        return;
    }
    let h = Hoist::new();
    let command = format!(
        "{} login 127.0.0.1:{} -u alice",
        hoist_bin().display(),
        free_port()
    );
    let mut child = std::process::Command::new("script")
        .args(["-qec", &command, "/dev/null"])
        .env("HOIST_HOME", h.home.path())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Answer once the prompt is up.
    let mut seen = Vec::new();
    let mut stdout = child.stdout.take().unwrap();
    while !String::from_utf8_lossy(&seen).contains("Password:") {
        let mut byte = [0u8; 1];
        match std::io::Read::read(&mut stdout, &mut byte) {
            Ok(1) => seen.push(byte[0]),
            _ => panic!("no password prompt: {}", String::from_utf8_lossy(&seen)),
        }
    }
    std::io::Write::write_all(child.stdin.as_mut().unwrap(), b"secret\n").unwrap();
    std::io::Read::read_to_end(&mut stdout, &mut seen).unwrap();
    let out = child.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&seen);
    assert!(!text.contains("secret"), "the password was echoed: {text}");
    assert_eq!(out.status.code(), Some(5), "{text}");
}

/// `hoist prune --keep 1` keeps each repository's newest version; `--older-than` goes by age.
#[test]
fn prune_keeps_the_newest_versions() {
    let h = Hoist::new();
    push_small(&h, "m:v1");
    let v2 = tempfile::tempdir().unwrap();
    std::fs::write(v2.path().join("weights.bin"), noise(2048, 9)).unwrap();
    h.run(&["push", s(v2.path()), "m:v2"]).ok();
    // v1 was tagged an hour ago.
    let tag = h.home.path().join("repositories/m/_tags/v1");
    std::fs::File::options()
        .write(true)
        .open(&tag)
        .unwrap()
        .set_modified(std::time::SystemTime::now() - Duration::from_secs(3600))
        .unwrap();
    h.run(&["prune", "--older-than", "1d"]).ok();
    h.run(&["inspect", "m:v1"]).ok();
    let r = h.run(&["prune", "--keep", "1", "--json"]).ok();
    let pruned: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    assert_eq!(pruned["versions"][0]["tags"][0], "m:v1", "{}", r.stdout);
    assert!(
        pruned["freed_bytes"].as_u64().unwrap() > 3 << 20,
        "{}",
        r.stdout
    );
    h.run(&["inspect", "m:v1"])
        .fails_with(4, "not in the local store");
    h.run(&["inspect", "m:v2"]).ok();
    h.run(&["prune"]).fails_with(2, "--keep");
}

/// `hoist --version` names the version, the commit it was built from and its features.
#[test]
fn the_version_names_the_commit_and_the_features() {
    let out = Hoist::new().run(&["--version"]).ok().stdout;
    let line = out.trim();
    assert!(
        line.starts_with(&format!("hoist {} (commit ", env!("CARGO_PKG_VERSION"))),
        "{line}"
    );
    let commit = line
        .split("(commit ")
        .nth(1)
        .and_then(|r| r.split(';').next())
        .unwrap();
    assert!(
        commit == "unknown"
            || (commit.len() == 12 && commit.bytes().all(|b| b.is_ascii_hexdigit())),
        "{line}"
    );
    for feature in ["serve", "mount", "bench", "csi"] {
        assert!(line.contains(feature), "{feature} missing: {line}");
    }
}

/// Completions come from the parser's own definitions: bash loads them, every shell gets a
/// script that knows the subcommands, and a reader that goes away ends it quietly.
#[test]
fn completions_load_in_bash_and_name_every_command() {
    let h = Hoist::new();
    let bin = hoist_bin();
    let script = format!(
        "source <('{}' completions bash) && complete -p hoist",
        bin.display()
    );
    let loaded = run(std::process::Command::new("bash").args(["-c", &script])).ok();
    assert!(
        loaded.stdout.contains("-F _hoist hoist"),
        "{}",
        loaded.stdout
    );
    for shell in ["bash", "zsh", "fish", "powershell", "elvish"] {
        let out = h.run(&["completions", shell]).ok().stdout;
        for command in ["push", "pull", "copy", "serve", "completions"] {
            assert!(out.contains(command), "{shell}: no {command}");
        }
    }
    let refused = h.run(&["completions", "tcsh"]);
    assert_eq!(refused.code, 2, "{}", refused.stderr);
}

/// `hoist man --out DIR` writes `hoist.1` and one page per command, each of which `man`
/// renders without a warning.
#[test]
fn man_pages_render_for_every_command() {
    if std::process::Command::new("man")
        .arg("--version")
        .output()
        .is_err()
        && cannot_run("man is not installed (scripts/setup installs man-db)")
    {
        return;
    }
    let h = Hoist::new();
    let dir = tempfile::tempdir().unwrap();
    let written = h.run(&["man", "--out", s(dir.path())]).ok().stdout;
    let pages: Vec<&str> = written.lines().collect();
    for command in [
        "hoist",
        "hoist-push",
        "hoist-pull",
        "hoist-copy",
        "hoist-man",
    ] {
        assert!(
            pages.iter().any(|p| p.ends_with(&format!("/{command}.1"))),
            "{command}.1 not written: {written}"
        );
    }
    for page in &pages {
        let rendered = run(std::process::Command::new("man")
            .args(["-l", page])
            .env("MANWIDTH", "80")
            .env("MAN_KEEP_STDERR", "1"))
        .ok();
        let name = Path::new(page).file_stem().unwrap().to_str().unwrap();
        assert!(
            rendered.stdout.contains(&name.to_uppercase()),
            "{page} did not render"
        );
        assert!(
            rendered.stderr.trim().is_empty(),
            "{page}: {}",
            rendered.stderr
        );
    }
    let printed = h.run(&["man"]).ok().stdout;
    assert!(
        printed.starts_with(".ie") || printed.contains(".TH"),
        "{printed:.200}"
    );
}
