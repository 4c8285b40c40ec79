//! A Hugging Face Hub stand-in on loopback, speaking the API the official client uses (held
//! to it by `huggingface_hub.snapshot_download` in tests/hub.rs):
//! - `GET /api/{models,datasets}/{repo}/revision/{rev}`: the commit in `sha`, `siblings`;
//! - `GET /api/{…}/{repo}/tree/{rev}?recursive=…`: the files, paginated with `Link`;
//! - `HEAD|GET /[datasets/]{repo}/resolve/{rev}/{path}`: `X-Repo-Commit`, `ETag`, Range;
//!   an LFS file is a 302 to the "CDN" (another host, 127.0.0.2) with `X-Linked-Etag` (its
//!   SHA-256) and `X-Linked-Size`;
//! - gated repositories: 401 with `X-Error-Code: GatedRepo` without the right token.
//!
//! It records every request with its host and `Authorization` header, and can cut one LFS
//! download after some bytes or answer 429 once, for the failure tests.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex};

use sha1::Digest as _;

#[derive(Clone)]
pub struct HubFile {
    pub path: String,
    pub bytes: Arc<Vec<u8>>,
    pub lfs: bool,
}

impl HubFile {
    pub fn new(path: &str, bytes: Vec<u8>, lfs: bool) -> HubFile {
        HubFile {
            path: path.into(),
            bytes: Arc::new(bytes),
            lfs,
        }
    }
}

#[derive(Clone, Default)]
pub struct HubRepoSpec {
    /// branches and tags → commit
    pub refs: BTreeMap<String, String>,
    /// commit → files
    pub commits: BTreeMap<String, Vec<HubFile>>,
    /// The token a gated repository wants (`None`: public).
    pub gated_token: Option<String>,
    pub dataset: bool,
}

impl HubRepoSpec {
    /// A repository of one commit (named `commit_of(name)`), which `main` names.
    pub fn at_main(name: &str, files: Vec<HubFile>) -> HubRepoSpec {
        let mut spec = HubRepoSpec::default();
        spec.refs.insert("main".into(), commit_of(name));
        spec.commits.insert(commit_of(name), files);
        spec
    }
}

#[derive(Debug, Clone)]
pub struct Seen {
    pub host: String,
    pub method: String,
    pub path: String,
    pub authorization: Option<String>,
    /// The `Range` header, if any.
    pub range: Option<String>,
}

impl Seen {
    /// Where the request asked to start: 0 without a range.
    pub fn range_start(&self) -> u64 {
        self.range
            .as_deref()
            .and_then(|r| r.strip_prefix("bytes="))
            .and_then(|r| r.split('-').next())
            .and_then(|n| n.parse().ok())
            .unwrap_or(0)
    }
}

#[derive(Default)]
pub struct Faults {
    /// Cut the first download of this LFS file (SHA-256 hex) after this many bytes.
    pub cut: Option<(String, usize)>,
    /// Answer 429 with `Retry-After: 1` to the first request whose path contains this.
    pub throttle_once: Option<String>,
    /// Send other bytes for this path's CDN download (a tampered copy).
    pub corrupt: Option<String>,
    /// Before the last this-many bytes of an LFS download, call this and wait for it (a
    /// test's event: the bytes before are surely out before it returns).
    pub hold_last: Option<(usize, HoldFn)>,
}

pub type HoldFn = Arc<dyn Fn() + Send + Sync>;

struct State {
    repos: BTreeMap<String, HubRepoSpec>,
    seen: Vec<Seen>,
    faults: Faults,
    page_size: usize,
    cdn: String,
    api: String,
}

pub struct HubStandIn {
    /// `http://127.0.0.1:PORT`: the value of `HF_ENDPOINT`.
    pub endpoint: String,
    pub cdn: String,
    state: Arc<Mutex<State>>,
}

/// The real model's Hub name, and the OCI repository `hoist serve` keeps it under (the
/// Hub's name folded to lower case).
pub const MINILM: &str = "sentence-transformers/all-MiniLM-L6-v2";
pub const MINILM_OCI: &str = "sentence-transformers/all-minilm-l6-v2";

/// Can python3 import `modules` (a comma-separated list; scripts/setup installs them)? If
/// not, the test says why it cannot run (and fails under `CI`).
pub fn python_can_import(modules: &str) -> bool {
    let ok = std::process::Command::new("python3")
        .args(["-c", &format!("import {modules}")])
        .status()
        .is_ok_and(|s| s.success());
    ok || !super::cannot_run(&format!("python3 cannot import {modules}"))
}

/// A hoist serve (with `extra` flags) holding the real model at `MINILM_OCI:main` and `:v1`;
/// its commit id.
pub fn serve_real_model(extra: &[&str]) -> (super::Served, String) {
    let served = super::Served::start_free(extra);
    let pushed = super::Hoist::new()
        .run(&[
            "push",
            super::real_model().to_str().unwrap(),
            &served.reference(&format!("{MINILM_OCI}:main,v1")),
        ])
        .ok();
    let digest = super::digest_line(&pushed.stdout);
    let commit = digest.trim_start_matches("sha256:")[..40].to_string();
    (served, commit)
}

/// Push the folder `model` to `REPOSITORY:main` on `served` as the user alice (`a-pass`).
pub fn push_as_alice(served: &super::Served, model: &std::path::Path, repository: &str) {
    super::run(
        super::Hoist::new()
            .cmd()
            .env("HOIST_USERNAME", "alice")
            .env("HOIST_PASSWORD", "a-pass")
            .args([
                "push",
                model.to_str().unwrap(),
                &served.reference(&format!("{repository}:main")),
            ]),
    )
    .ok();
}

pub fn git_oid(bytes: &[u8]) -> String {
    let mut h = sha1::Sha1::new();
    h.update(format!("blob {}\0", bytes.len()).as_bytes());
    h.update(bytes);
    hex::encode(h.finalize())
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    hoist::digest::Digest::of_bytes(bytes).hex().to_string()
}

/// A commit id from a name, so tests can write them.
pub fn commit_of(name: &str) -> String {
    git_oid(name.as_bytes())
}

/// The files of a folder, LFS as the Hub's default `.gitattributes` makes them (weights,
/// and anything over 1 MiB).
pub fn files_of(dir: &std::path::Path) -> Vec<HubFile> {
    let mut out = Vec::new();
    for (path, bytes) in super::tree(dir, true) {
        let lfs = bytes.len() > (1 << 20)
            || [".safetensors", ".bin", ".gguf", ".onnx"]
                .iter()
                .any(|e| path.ends_with(e));
        out.push(HubFile {
            path,
            bytes: Arc::new(bytes),
            lfs,
        });
    }
    out
}

/// `hoist` with the Hub's settings pointing at the stand-in, and no token of the machine's.
pub fn hoist_for(h: &super::Hoist, hub: &HubStandIn) -> std::process::Command {
    let mut cmd = h.cmd();
    cmd.env("HF_ENDPOINT", &hub.endpoint)
        .env("HF_HOME", h.home.path().join("hf-home"))
        .env_remove("HF_TOKEN")
        .env_remove("HF_TOKEN_PATH");
    cmd
}

impl HubStandIn {
    pub fn start(repos: BTreeMap<String, HubRepoSpec>) -> HubStandIn {
        let api = TcpListener::bind("127.0.0.1:0").unwrap();
        let cdn = TcpListener::bind("127.0.0.2:0").unwrap();
        let endpoint = format!("http://{}", api.local_addr().unwrap());
        let cdn_url = format!("http://{}", cdn.local_addr().unwrap());
        let state = Arc::new(Mutex::new(State {
            repos,
            seen: Vec::new(),
            faults: Faults::default(),
            page_size: 3,
            cdn: cdn_url.clone(),
            api: endpoint.clone(),
        }));
        for listener in [api, cdn] {
            let state = state.clone();
            std::thread::spawn(move || {
                for stream in listener.incoming() {
                    let Ok(stream) = stream else { continue };
                    let state = state.clone();
                    std::thread::spawn(move || serve(stream, &state));
                }
            });
        }
        HubStandIn {
            endpoint,
            cdn: cdn_url,
            state,
        }
    }

    pub fn seen(&self) -> Vec<Seen> {
        self.state.lock().unwrap().seen.clone()
    }

    /// The requests the "CDN" host got (LFS downloads after the Hub's redirect).
    pub fn cdn_requests(&self) -> Vec<Seen> {
        self.seen()
            .into_iter()
            .filter(|s| s.path.starts_with("/lfs/"))
            .collect()
    }

    /// Entries per page of the tree (3 unless set).
    pub fn page_size(&self, n: usize) {
        self.state.lock().unwrap().page_size = n;
    }

    pub fn faults(&self, f: impl FnOnce(&mut Faults)) {
        f(&mut self.state.lock().unwrap().faults)
    }
}

struct Req {
    method: String,
    target: String,
    headers: BTreeMap<String, String>,
}

fn read_request(reader: &mut BufReader<TcpStream>) -> Option<Req> {
    let mut line = String::new();
    if reader.read_line(&mut line).ok()? == 0 {
        return None;
    }
    let mut parts = line.split_whitespace();
    let method = parts.next()?.to_string();
    let target = parts.next()?.to_string();
    let mut headers = BTreeMap::new();
    loop {
        let mut h = String::new();
        if reader.read_line(&mut h).ok()? == 0 || h == "\r\n" {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_string());
        }
    }
    Some(Req {
        method,
        target,
        headers,
    })
}

struct Resp {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
    /// A window of a file, sent without copying it.
    window: Option<(Arc<Vec<u8>>, usize, usize)>,
    /// Close the connection after this many body bytes (a cut download).
    cut_after: Option<usize>,
    /// Send all but the last N bytes, call the function, then send the rest.
    hold: Option<(usize, HoldFn)>,
}

impl Resp {
    fn new(status: u16) -> Resp {
        Resp {
            status,
            headers: Vec::new(),
            body: Vec::new(),
            window: None,
            cut_after: None,
            hold: None,
        }
    }
    fn header(mut self, k: &str, v: impl Into<String>) -> Resp {
        self.headers.push((k.into(), v.into()));
        self
    }
    fn json(status: u16, v: serde_json::Value) -> Resp {
        let mut r = Resp::new(status).header("Content-Type", "application/json");
        r.body = v.to_string().into_bytes();
        r
    }
    fn error(status: u16, code: &str, message: &str) -> Resp {
        Resp::json(status, serde_json::json!({ "error": message }))
            .header("X-Error-Code", code)
            .header("X-Error-Message", message)
    }
}

fn serve(stream: TcpStream, state: &Mutex<State>) {
    let _ = stream.set_read_timeout(Some(std::time::Duration::from_secs(30)));
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let Some(req) = read_request(&mut reader) else {
        return;
    };
    let host = req.headers.get("host").cloned().unwrap_or_default();
    let resp = {
        let mut st = state.lock().unwrap();
        st.seen.push(Seen {
            host: host.clone(),
            method: req.method.clone(),
            path: req.target.clone(),
            authorization: req.headers.get("authorization").cloned(),
            range: req.headers.get("range").cloned(),
        });
        answer(&mut st, &req)
    };
    let mut out = stream;
    let mut head = format!("HTTP/1.1 {} X\r\nConnection: close\r\n", resp.status);
    let has_length = resp
        .headers
        .iter()
        .any(|(k, _)| k.eq_ignore_ascii_case("content-length"));
    for (k, v) in &resp.headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    let body: &[u8] = match &resp.window {
        Some((bytes, a, b)) => &bytes[*a..*b],
        None => &resp.body,
    };
    if !has_length {
        head.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    head.push_str("\r\n");
    let _ = out.write_all(head.as_bytes());
    if req.method == "HEAD" {
        return;
    }
    let body = match resp.cut_after {
        Some(n) => &body[..n.min(body.len())],
        None => body,
    };
    if let Some((n, wait)) = &resp.hold {
        let (first, last) = body.split_at(body.len().saturating_sub(*n));
        let _ = out.write_all(first);
        let _ = out.flush();
        wait();
        let _ = out.write_all(last);
    } else {
        let _ = out.write_all(body);
    }
    let _ = out.flush();
    if resp.cut_after.is_some() {
        let _ = out.shutdown(std::net::Shutdown::Both);
    }
}

fn answer(st: &mut State, req: &Req) -> Resp {
    let (path, query) = req.target.split_once('?').unwrap_or((&req.target, ""));
    let path = percent_decode(path);
    if let Some(needle) = st.faults.throttle_once.clone() {
        if path.contains(&needle) {
            st.faults.throttle_once = None;
            return Resp::new(429).header("Retry-After", "1");
        }
    }
    if let Some(rest) = path.strip_prefix("/lfs/") {
        return cdn(st, req, rest);
    }
    if let Some(rest) = path.strip_prefix("/api/") {
        let (kind, rest) = rest.split_once('/').unwrap_or(("", ""));
        return api(st, req, kind == "datasets", rest, query);
    }
    let (dataset, rest) = match path.strip_prefix("/datasets/") {
        Some(r) => (true, r.to_string()),
        None => (false, path.trim_start_matches('/').to_string()),
    };
    match find_repo(st, &rest, "/resolve/") {
        Some((repo, tail)) => resolve(st, req, dataset, &repo, &tail),
        None => not_found_repo(),
    }
}

/// The repository named at the start of `rest` (one or two segments) and what follows `sep`.
fn find_repo(st: &State, rest: &str, sep: &str) -> Option<(String, String)> {
    let (repo, tail) = rest.split_once(sep)?;
    st.repos
        .contains_key(repo)
        .then(|| (repo.to_string(), tail.to_string()))
}

/// The repository, checked for its kind and access; the commit a revision names.
fn access(
    st: &State,
    req: &Req,
    dataset: bool,
    repo: &str,
    rev: &str,
) -> Result<(HubRepoSpec, String), Resp> {
    let spec = match st.repos.get(repo) {
        Some(s) if s.dataset == dataset => s.clone(),
        _ => return Err(not_found_repo()),
    };
    if let Some(token) = &spec.gated_token {
        let sent = req.headers.get("authorization").map(String::as_str);
        if sent != Some(&format!("Bearer {token}")) {
            return Err(Resp::error(
                401,
                "GatedRepo",
                &format!("Access to model {repo} is restricted. You must have access to it and be authenticated to access it. Please log in."),
            ));
        }
    }
    let commit = spec
        .refs
        .get(rev)
        .cloned()
        .or_else(|| spec.commits.contains_key(rev).then(|| rev.to_string()));
    match commit {
        Some(c) => Ok((spec, c)),
        None => Err(Resp::error(
            404,
            "RevisionNotFound",
            &format!("Invalid rev id: {rev}"),
        )),
    }
}

fn api(st: &State, req: &Req, dataset: bool, rest: &str, query: &str) -> Resp {
    if let Some((repo, rev)) = find_repo(st, rest, "/revision/") {
        let (spec, commit) = match access(st, req, dataset, &repo, &rev) {
            Ok(x) => x,
            Err(r) => return r,
        };
        let siblings: Vec<_> = spec.commits[&commit]
            .iter()
            .map(|f| serde_json::json!({ "rfilename": f.path }))
            .collect();
        return Resp::json(
            200,
            serde_json::json!({
                "_id": &commit[..24], "id": repo, "modelId": repo, "sha": commit,
                "private": false, "disabled": false, "gated": spec.gated_token.is_some().then_some("manual"),
                "downloads": 0, "likes": 0, "tags": [], "lastModified": "2026-01-01T00:00:00.000Z",
                "createdAt": "2026-01-01T00:00:00.000Z", "siblings": siblings,
            }),
        );
    }
    if let Some((repo, tail)) = find_repo(st, rest, "/tree/") {
        let rev = tail.split('/').next().unwrap_or("").to_string();
        let (spec, commit) = match access(st, req, dataset, &repo, &rev) {
            Ok(x) => x,
            Err(r) => return r,
        };
        let mut entries = Vec::new();
        let mut folders = std::collections::BTreeSet::new();
        for f in &spec.commits[&commit] {
            let mut at = 0;
            while let Some(i) = f.path[at..].find('/') {
                folders.insert(f.path[..at + i].to_string());
                at += i + 1;
            }
            let mut e = serde_json::json!({"type": "file", "oid": git_oid(&f.bytes), "size": f.bytes.len(), "path": f.path});
            if f.lfs {
                e["lfs"] = serde_json::json!({"oid": sha256_hex(&f.bytes), "size": f.bytes.len(), "pointerSize": 134});
            }
            entries.push(e);
        }
        for d in folders {
            entries.push(serde_json::json!({"type": "directory", "oid": git_oid(d.as_bytes()), "size": 0, "path": d}));
        }
        let cursor: usize = query
            .split('&')
            .find_map(|kv| kv.strip_prefix("cursor="))
            .and_then(|c| c.parse().ok())
            .unwrap_or(0);
        let page: Vec<_> = entries
            .iter()
            .skip(cursor)
            .take(st.page_size)
            .cloned()
            .collect();
        let mut resp = Resp::json(200, serde_json::Value::Array(page));
        if cursor + st.page_size < entries.len() {
            let kind = if dataset { "datasets" } else { "models" };
            resp = resp.header(
                "Link",
                format!(
                    "<{}/api/{kind}/{repo}/tree/{rev}?recursive=true&expand=false&cursor={}>; rel=\"next\"",
                    st.api,
                    cursor + st.page_size
                ),
            );
        }
        return resp;
    }
    not_found_repo()
}

/// As the Hub answers a client without a token: a missing repository and a private one look
/// the same (401), so that neither is revealed.
fn not_found_repo() -> Resp {
    Resp::error(
        401,
        "RepoNotFound",
        "Repository Not Found for url. Please make sure you specified the correct `repo_id` and `repo_type`.",
    )
}

fn resolve(st: &State, req: &Req, dataset: bool, repo: &str, tail: &str) -> Resp {
    let Some((rev, file)) = tail.split_once('/') else {
        return Resp::error(404, "EntryNotFound", "no file");
    };
    let (spec, commit) = match access(st, req, dataset, repo, rev) {
        Ok(x) => x,
        Err(r) => return r,
    };
    let Some(f) = spec.commits[&commit].iter().find(|f| f.path == file) else {
        return Resp::error(
            404,
            "EntryNotFound",
            &format!("{file} does not exist on \"{rev}\""),
        );
    };
    let oid = git_oid(&f.bytes);
    if f.lfs {
        let sha = sha256_hex(&f.bytes);
        return Resp::new(302)
            .header("Location", format!("{}/lfs/{sha}?signed=abc", st.cdn))
            .header("X-Repo-Commit", commit)
            .header("ETag", format!("\"{oid}\""))
            .header("X-Linked-Etag", format!("\"{sha}\""))
            .header("X-Linked-Size", f.bytes.len().to_string());
    }
    ranged(req, &f.bytes)
        .header("X-Repo-Commit", commit)
        .header("ETag", format!("\"{oid}\""))
}

fn cdn(st: &mut State, req: &Req, rest: &str) -> Resp {
    let sha = rest.split('?').next().unwrap_or("");
    let found = st
        .repos
        .values()
        .flat_map(|r| r.commits.values().flatten())
        .find(|f| f.lfs && sha256_hex(&f.bytes) == sha)
        .cloned();
    let Some(f) = found else {
        return Resp::new(404);
    };
    let mut bytes = f.bytes.clone();
    if st.faults.corrupt.as_deref() == Some(f.path.as_str()) {
        let mut other = (*bytes).clone();
        let last = other.len() - 1;
        other[last] ^= 0xff;
        bytes = Arc::new(other);
    }
    let mut resp = ranged(req, &bytes).header("ETag", format!("\"{sha}\""));
    resp.hold = st.faults.hold_last.clone();
    if let Some((cut_sha, n)) = st.faults.cut.clone() {
        if cut_sha == sha {
            st.faults.cut = None;
            resp.cut_after = Some(n);
        }
    }
    resp
}

/// 200 with the bytes, or 206 with the range asked (`bytes=N-` or `bytes=N-M`).
fn ranged(req: &Req, bytes: &Arc<Vec<u8>>) -> Resp {
    let range = req
        .headers
        .get("range")
        .and_then(|r| r.strip_prefix("bytes="))
        .and_then(|r| {
            let (a, b) = r.split_once('-')?;
            let a: usize = a.parse().ok()?;
            let b: usize = if b.is_empty() {
                bytes.len().saturating_sub(1)
            } else {
                b.parse().ok()?
            };
            (a < bytes.len() && a <= b).then_some((a, b.min(bytes.len() - 1)))
        });
    let mut resp = match range {
        Some((a, b)) => {
            let mut r =
                Resp::new(206).header("Content-Range", format!("bytes {a}-{b}/{}", bytes.len()));
            r.window = Some((bytes.clone(), a, b + 1));
            r
        }
        None => {
            let mut r = Resp::new(200);
            r.window = Some((bytes.clone(), 0, bytes.len()));
            r
        }
    };
    resp = resp
        .header("Accept-Ranges", "bytes")
        .header("Content-Type", "application/octet-stream");
    resp
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            if let Ok(b) = u8::from_str_radix(&s[i + 1..i + 3], 16) {
                out.push(b);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}
