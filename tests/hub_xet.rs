//! Xet downloads from `hoist serve` (src/serve/hub/xet.rs): what `huggingface_hub` does with
//! its defaults when a file's `HEAD` (or the tree) names a Xet hash — `hf_xet` fetches the
//! file's chunks from the CAS routes — tried with the real client, and the routes' trust
//! tried by hand: a token reads its repository only, a xorb URL is good only as signed.

mod common;

use std::path::Path;

use common::hub::MINILM as REPO;
use common::hub::{push_as_alice, python_can_import, serve_real_model, sha256_hex};
use common::*;
use serde_json::Value;

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn clients() -> bool {
    python_can_import("huggingface_hub, hf_xet, safetensors")
}

/// Requests to the Xet routes `served` answered so far, by status.
fn xet_requests(served: &Served, code: u16) -> u64 {
    let (_, _, metrics) = curl(&[&served.url("/metrics")]);
    let line = format!("hoist_serve_requests_total{{route=\"xet\",code=\"{code}\"}} ");
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(&line))
        .map_or(0, |n| n.trim().parse().unwrap())
}

/// GET `url` with `headers`: (status, body bytes).
fn get(url: &str, headers: &[String]) -> (u16, Vec<u8>) {
    let dir = tempfile::tempdir().unwrap();
    let body = dir.path().join("body");
    let mut cmd = std::process::Command::new("curl");
    cmd.args(["-s", "-o", s(&body), "-w", "%{http_code}"]);
    for h in headers {
        cmd.args(["-H", h]);
    }
    let out = cmd.arg(url).output().unwrap();
    let status = String::from_utf8_lossy(&out.stdout).parse().unwrap();
    (status, std::fs::read(&body).unwrap_or_default())
}

/// GET `url`: (status, response headers as sent — a token is case-sensitive).
fn head_of(url: &str, headers: &[String]) -> (u16, String) {
    let mut cmd = std::process::Command::new("curl");
    cmd.args(["-s", "-D", "-", "-o", "/dev/null"]);
    for h in headers {
        cmd.args(["-H", h]);
    }
    let head = String::from_utf8(cmd.arg(url).output().unwrap().stdout).unwrap();
    let status = head.split_whitespace().nth(1).unwrap().parse().unwrap();
    (status, head)
}

/// The value of header `name` (any case) in `head`.
fn header(head: &str, name: &str) -> String {
    head.lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case(name).then(|| v.trim().to_string())
        })
        .unwrap_or_else(|| panic!("no {name} in {head}"))
}

/// The chunks of a served xorb range, unframed: every header says uncompressed, and
/// says the length that follows.
fn unframe(mut framed: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while !framed.is_empty() {
        let len = u32::from_le_bytes([framed[5], framed[6], framed[7], 0]) as usize;
        assert_eq!(framed[0], 0, "chunk format version");
        assert_eq!(framed[4], 0, "no compression");
        assert_eq!(framed[1..4], framed[5..8], "compressed length = length");
        assert!(len <= 128 << 10, "a chunk the client takes");
        out.extend_from_slice(&framed[8..8 + len]);
        framed = &framed[8 + len..];
    }
    out
}

/// What a Xet client builds from a reconstruction answer (v1 or v2): each term's chunks
/// fetched by the signed URL and range given, unframed, joined; the first term's offset
/// skipped; `len` bytes kept.
fn rebuild(answer: &Value, len: usize) -> Vec<u8> {
    let mut out = Vec::new();
    for term in answer["terms"].as_array().unwrap() {
        let hash = term["hash"].as_str().unwrap();
        let (url, bytes) = match answer.get("xorbs") {
            Some(xorbs) => {
                let fetch = &xorbs[hash][0];
                (fetch["url"].as_str().unwrap(), &fetch["ranges"][0]["bytes"])
            }
            None => {
                let fetch = &answer["fetch_info"][hash][0];
                (fetch["url"].as_str().unwrap(), &fetch["url_range"])
            }
        };
        let range = format!("Range: bytes={}-{}", bytes["start"], bytes["end"]);
        let (status, framed) = get(url, &[range]);
        assert_eq!(status, 206);
        let chunks = unframe(&framed);
        assert_eq!(
            chunks.len() as u64,
            term["unpacked_length"].as_u64().unwrap()
        );
        out.extend_from_slice(&chunks);
    }
    let offset = answer["offset_into_first_range"].as_u64().unwrap() as usize;
    out.drain(..offset);
    out.truncate(len);
    out
}

#[test]
fn snapshot_download_goes_over_xet_by_default_and_over_resolve_without_it() {
    if !clients() {
        return;
    }
    let (served, _) = serve_real_model(&[]);
    let work = tempfile::tempdir().unwrap();
    let download = |disable_xet: bool, dir: &str| {
        python(&format!(
            r#"
import os
os.environ["HF_ENDPOINT"] = "http://{addr}"
os.environ["HF_HOME"] = "{work}/hf-{dir}"
os.environ.pop("HF_TOKEN", None)
if {disable_xet}:
    os.environ["HF_HUB_DISABLE_XET"] = "1"
from huggingface_hub import snapshot_download
path = snapshot_download("{REPO}", local_dir="{work}/{dir}")
from safetensors import safe_open
with safe_open(os.path.join(path, "model.safetensors"), "np") as f:
    print("tensors", len(list(f.keys())))
"#,
            addr = served.addr,
            work = work.path().display(),
            disable_xet = if disable_xet { "True" } else { "False" },
        ))
    };
    let source = tree(&real_model(), false);
    let out = download(false, "xet");
    assert!(out.contains("tensors "), "{out}");
    assert_eq!(tree(&work.path().join("xet"), false), source);
    // model.safetensors (~90 MB) alone is six 16 MiB xorbs, fetched by range.
    let xorbs = xet_requests(&served, 206);
    assert!(xorbs >= 6, "xorb fetches: {xorbs}");
    let out = download(true, "plain");
    assert!(out.contains("tensors "), "{out}");
    assert_eq!(tree(&work.path().join("plain"), false), source);
    assert_eq!(
        xet_requests(&served, 206),
        xorbs,
        "Xet off: nothing over Xet"
    );
}

#[test]
fn the_xet_routes_read_only_what_a_token_grants_and_only_as_signed() {
    let dir = tempfile::tempdir().unwrap();
    let users = htpasswd(dir.path(), &[("alice", "a-pass"), ("bob", "b-pass")]);
    let policy = dir.path().join("policy.toml");
    std::fs::write(
        &policy,
        "[[rule]]\nwho = [\"alice\"]\nrepositories = [\"**\"]\nactions = [\"pull\", \"push\"]\n\n\
         [[rule]]\nwho = [\"bob\"]\nrepositories = [\"team/b\"]\nactions = [\"pull\"]\n",
    )
    .unwrap();
    let served = Served::start_free(&["--htpasswd", s(&users), "--access-policy", s(&policy)]);
    let small = tempfile::tempdir().unwrap();
    small_model(small.path());
    push_as_alice(&served, &real_model(), "team/a");
    push_as_alice(&served, small.path(), "team/b");
    let weights = std::fs::read(real_model().join("model.safetensors")).unwrap();
    let blob = sha256_hex(&weights);
    let as_user = |who: &str| format!("Authorization: Bearer {who}");
    let token_of = |repo: &str, who: Option<&str>| {
        let url = served.url(&format!("/api/models/{repo}/xet-read-token/main"));
        let auth: Vec<String> = who.map(as_user).into_iter().collect();
        head_of(&url, &auth)
    };

    // A token only for who may read the repository; otherwise the Hub's "not found".
    for who in [None, Some("bob:b-pass"), Some("alice:wrong")] {
        let (status, head) = token_of("team/a", who);
        assert_eq!(status, 401, "{who:?}");
        assert_eq!(header(&head, "x-error-code"), "RepoNotFound");
        assert!(
            !head.to_ascii_lowercase().contains("x-xet-access-token"),
            "{head}"
        );
    }
    let token = |repo: &str, who: &str| {
        let (status, head) = token_of(repo, Some(who));
        assert_eq!(status, 200, "{head}");
        (
            header(&head, "x-xet-access-token"),
            header(&head, "x-xet-cas-url"),
        )
    };
    let (bobs, _) = token("team/b", "bob:b-pass");
    let (alices, cas) = token("team/a", "alice:a-pass");

    // The file's HEAD names it for Xet: its SHA-256, and where the token comes from.
    let (_, head, _) = curl(&[
        "-I",
        "-H",
        &as_user("alice:a-pass"),
        &served.url("/team/a/resolve/main/model.safetensors"),
    ]);
    assert!(head.contains(&format!("x-xet-hash: {blob}")), "{head}");
    assert!(
        head.contains("/api/models/team/a/xet-read-token/"),
        "{head}"
    );

    let reconstruction = format!("{cas}/v2/reconstructions/{blob}");
    let bearer = |t: &str| format!("Authorization: Bearer {t}");
    // No token, a token for another repository, a forged or foreign one: nothing.
    let (claims, sig) = alices.split_once('.').unwrap();
    let forged = format!("{claims}.{}", "0".repeat(sig.len()));
    let foreign = {
        let other = Served::start_free(&[]);
        run(Hoist::new()
            .cmd()
            .args(["push", s(small.path()), &other.reference("team/a:main")]))
        .ok();
        let url = other.url("/api/models/team/a/xet-read-token/main");
        header(&head_of(&url, &[]).1, "x-xet-access-token")
    };
    assert_eq!(get(&reconstruction, &[]).0, 401);
    assert_eq!(get(&reconstruction, &[bearer(&forged)]).0, 401);
    assert_eq!(get(&reconstruction, &[bearer(&foreign)]).0, 401);
    assert_eq!(
        get(&reconstruction, &[bearer(&bobs)]).0,
        404,
        "not team/b's blob"
    );

    // With the token: the whole file, and a range of it, in both answer shapes.
    let (status, body) = get(&reconstruction, &[bearer(&alices)]);
    assert_eq!(status, 200);
    let answer: Value = serde_json::from_slice(&body).unwrap();
    assert!(rebuild(&answer, weights.len()) == weights, "the whole file");
    let (start, end) = (1_000_003usize, 40_000_001usize);
    let range = format!("Range: bytes={start}-{end}");
    for version in ["v1", "v2"] {
        let url = format!("{cas}/{version}/reconstructions/{blob}");
        let (status, body) = get(&url, &[bearer(&alices), range.clone()]);
        assert_eq!(status, 200, "{version}");
        let answer: Value = serde_json::from_slice(&body).unwrap();
        assert!(
            rebuild(&answer, end + 1 - start) == weights[start..=end],
            "{version}: bytes {start}-{end}"
        );
    }
    let past = format!("Range: bytes={}-", weights.len());
    assert_eq!(get(&reconstruction, &[bearer(&alices), past]).0, 416);

    // A xorb URL is good only as it was signed.
    let fetch = &answer["xorbs"][answer["terms"][1]["hash"].as_str().unwrap()][0];
    let url = fetch["url"].as_str().unwrap();
    let whole = format!("Range: bytes=0-{}", fetch["ranges"][0]["bytes"]["end"]);
    assert_eq!(get(url, std::slice::from_ref(&whole)).0, 206);
    let (path, query) = url.split_once('?').unwrap();
    let exp: u64 = query
        .split('&')
        .find_map(|p| p.strip_prefix("exp="))
        .unwrap()
        .parse()
        .unwrap();
    let sig = query
        .split('&')
        .find_map(|p| p.strip_prefix("sig="))
        .unwrap();
    let tampered = [
        format!("{path}?exp={exp}&sig={}", "0".repeat(sig.len())),
        format!("{path}?exp={}&sig={sig}", exp + 1),
        format!("{}/0?exp={exp}&sig={sig}", path.rsplit_once('/').unwrap().0),
        format!("{path}?sig={sig}"),
        path.to_string(),
    ];
    for url in &tampered {
        assert_eq!(get(url, std::slice::from_ref(&whole)).0, 403, "{url}");
    }
    assert_eq!(get(url, &["Range: bytes=999999999-".into()]).0, 416);
    // Unknown CAS paths answer nothing.
    for path in [
        "/v2/reconstructions/..%2f..%2fetc",
        "/v3/reconstructions/x",
        "/xorbs/x/0",
    ] {
        assert_eq!(
            get(&format!("{cas}{path}"), &[bearer(&alices)]).0,
            404,
            "{path}"
        );
    }
}

#[test]
fn a_pull_through_cache_serves_over_xet_what_it_holds_and_brings_back_what_it_lost() {
    if !clients() {
        return;
    }
    let (origin, _) = serve_real_model(&[]);
    let cache = Served::start_free(&["--upstream", &origin.addr]);
    let work = tempfile::tempdir().unwrap();
    let download = |dir: &str| {
        let out = python(&format!(
            r#"
import os
os.environ["HF_ENDPOINT"] = "http://{addr}"
os.environ["HF_HOME"] = "{work}/hf-{dir}"
os.environ.pop("HF_TOKEN", None)
from huggingface_hub import snapshot_download
snapshot_download("{REPO}", local_dir="{work}/{dir}")
print("done")
"#,
            addr = cache.addr,
            work = work.path().display(),
        ));
        assert!(out.contains("done"), "{out}");
        assert_eq!(
            tree(&work.path().join(dir), false),
            tree(&real_model(), false)
        );
    };
    // A miss goes the /resolve way (streamed from the origin as it arrives); once the cache
    // holds the files, they go over Xet.
    download("first");
    assert_eq!(
        xet_requests(&cache, 206),
        0,
        "nothing was here to name for Xet"
    );
    download("second");
    assert!(xet_requests(&cache, 206) >= 6);

    // Named for Xet, then gone from the cache: a reconstruction brings it back first.
    let weights = std::fs::read(real_model().join("model.safetensors")).unwrap();
    let blob = sha256_hex(&weights);
    let (_, head) = head_of(
        &cache.url(&format!("/api/models/{REPO}/xet-read-token/main")),
        &[],
    );
    let (token, cas) = (
        header(&head, "x-xet-access-token"),
        header(&head, "x-xet-cas-url"),
    );
    std::fs::remove_file(cache.root.path().join("blobs/sha256").join(&blob)).unwrap();
    let sent_before = bytes_served(&origin);
    let url = format!("{cas}/v2/reconstructions/{blob}");
    let (status, body) = get(&url, &[format!("Authorization: Bearer {token}")]);
    assert_eq!(status, 200);
    let answer: Value = serde_json::from_slice(&body).unwrap();
    assert!(rebuild(&answer, weights.len()) == weights);
    assert_eq!(bytes_served(&origin) - sent_before, weights.len() as u64);
}

fn bytes_served(served: &Served) -> u64 {
    let (_, _, metrics) = curl(&[&served.url("/metrics")]);
    metrics
        .lines()
        .find_map(|l| l.strip_prefix("hoist_serve_bytes_served_total "))
        .map_or(0, |n| n.trim().parse().unwrap())
}
