//! `HF_ENDPOINT=http://<hoist serve>`: the Hugging Face Hub's read API served from OCI
//! artifacts, tried with the real clients and their defaults — PyPI `huggingface_hub`
//! (`snapshot_download` into its cache and into `local_dir`, `hf_hub_download`, `model_info`,
//! `list_repo_files`, revisions by tag and by commit id, `HF_HUB_OFFLINE=1`, the `hf` command)
//! and `transformers` (`AutoConfig`, `AutoTokenizer`). The real all-MiniLM-L6-v2 pushed with
//! `hoist push`, and copied with `copy hf://` from the Hub stand-in (its commit id kept), comes
//! back byte-identical and its weights open with `safetensors`. Errors raise the client's own
//! exceptions; a private repository reveals nothing; hostile paths are refused.

mod common;

use std::collections::BTreeMap;
use std::path::Path;

use common::hub::{commit_of, files_of, hoist_for, HubRepoSpec, HubStandIn};
use common::hub::{push_as_alice, python_can_import, serve_real_model};
use common::hub::{MINILM as REPO, MINILM_OCI as OCI_REPO};
use common::*;

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// Can the clients run here?
fn clients() -> bool {
    python_can_import("huggingface_hub, transformers, safetensors")
}

/// Python with the Hub's settings pointing at `endpoint` and a home of its own.
fn hf_python(endpoint: &str, home: &Path, code: &str) -> String {
    python(&format!(
        r#"
import os, sys
os.environ["HF_ENDPOINT"] = "{endpoint}"
os.environ["HF_HOME"] = "{home}"
os.environ["HF_HUB_DISABLE_TELEMETRY"] = "1"
os.environ.pop("HF_TOKEN", None)
{code}
"#,
        home = home.display()
    ))
}

fn visible(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    tree(dir, false)
}

/// A hoist serve holding what `hoist copy SOURCE` brought from a Hub stand-in serving
/// `spec` as `repo`, at `dest` (`REPOSITORY:TAG`).
fn copied_from_stand_in(repo: &str, spec: HubRepoSpec, source: &str, dest: &str) -> Served {
    let hub = HubStandIn::start([(repo.to_string(), spec)].into_iter().collect());
    let served = Served::start_free(&[]);
    let h = Hoist::new();
    run(hoist_for(&h, &hub).args(["copy", source, &served.reference(dest)])).ok();
    served
}

#[test]
fn huggingface_hub_and_transformers_load_the_real_model_from_hoist_serve() {
    if !clients() {
        return;
    }
    let (served, commit) = serve_real_model(&[]);
    let endpoint = format!("http://{}", served.addr);
    let work = tempfile::tempdir().unwrap();
    let home = work.path().join("hf");
    let out = hf_python(
        &endpoint,
        &home,
        &format!(
            r#"
from huggingface_hub import snapshot_download, hf_hub_download, HfApi
api = HfApi()
info = api.model_info("{REPO}")
print("sha", info.sha)
print("siblings", len(info.siblings))
print("files", len(api.list_repo_files("{REPO}")))
cached = snapshot_download("{REPO}")
print("cached", cached)
snapshot_download("{REPO}", local_dir="{work}/local")
snapshot_download("{REPO}", revision="v1", local_dir="{work}/by-tag")
snapshot_download("{REPO}", revision="{commit}", local_dir="{work}/by-commit")
one = hf_hub_download("{REPO}", "1_Pooling/config.json")
print("one", one)
from safetensors import safe_open
with safe_open(os.path.join(cached, "model.safetensors"), "np") as f:
    print("tensors", len(list(f.keys())))
from transformers import AutoConfig, AutoTokenizer
config = AutoConfig.from_pretrained("{REPO}")
print("config", config.model_type, config.hidden_size)
tok = AutoTokenizer.from_pretrained("{REPO}")
print("tokens", tok("hello world")["input_ids"])
"#,
            work = work.path().display()
        ),
    );
    assert!(out.contains(&format!("sha {commit}")), "{out}");
    let source = visible(&real_model());
    assert!(out.contains(&format!("siblings {}", source.len())), "{out}");
    assert!(out.contains(&format!("files {}", source.len())), "{out}");
    assert!(out.contains("config bert 384"), "{out}");
    assert!(out.contains("tokens [101, 7592, 2088, 102]"), "{out}");
    assert!(out.contains("tensors "), "{out}");
    for dir in ["local", "by-tag", "by-commit"] {
        assert_eq!(visible(&work.path().join(dir)), source, "{dir}");
    }
    let snapshot = home
        .join("hub/models--sentence-transformers--all-MiniLM-L6-v2/snapshots")
        .join(&commit);
    assert_eq!(visible(&snapshot), source, "the cache snapshot");

    // Offline, after a download: the cache answers, the server is not asked.
    drop(served);
    let out = hf_python(
        &endpoint,
        &home,
        &format!(
            r#"
os.environ["HF_HUB_OFFLINE"] = "1"
from huggingface_hub import snapshot_download
print("offline", snapshot_download("{REPO}"))
from transformers import AutoTokenizer
print("tokens", AutoTokenizer.from_pretrained("{REPO}")("hello")["input_ids"])
"#
        ),
    );
    assert!(out.contains(&commit), "{out}");
}

#[test]
fn the_hf_command_downloads_from_hoist_serve() {
    if !clients() {
        return;
    }
    let (served, _) = serve_real_model(&[]);
    let work = tempfile::tempdir().unwrap();
    let hf = std::process::Command::new("hf")
        .env("HF_ENDPOINT", format!("http://{}", served.addr))
        .env("HF_HOME", work.path().join("hf"))
        .env("HF_HUB_DISABLE_TELEMETRY", "1")
        .env_remove("HF_TOKEN")
        .args(["download", REPO, "--local-dir", s(&work.path().join("out"))])
        .output();
    match hf {
        Ok(out) => assert!(
            out.status.success(),
            "hf download: {}",
            String::from_utf8_lossy(&out.stderr)
        ),
        Err(e) => {
            if cannot_run(&format!(
                "the hf command of huggingface_hub cannot run: {e}"
            )) {
                return;
            }
        }
    }
    assert_eq!(visible(&work.path().join("out")), visible(&real_model()));
}

#[test]
fn a_model_copied_from_the_hub_keeps_its_commit_id() {
    if !clients() {
        return;
    }
    let commit = commit_of("real");
    let spec = HubRepoSpec::at_main("real", files_of(&real_model()));
    let served = copied_from_stand_in(
        REPO,
        spec,
        &format!("hf://{REPO}"),
        &format!("{OCI_REPO}:main"),
    );
    let work = tempfile::tempdir().unwrap();
    let out = hf_python(
        &format!("http://{}", served.addr),
        &work.path().join("hf"),
        &format!(
            r#"
from huggingface_hub import HfApi, snapshot_download
print("sha", HfApi().model_info("{REPO}").sha)
snapshot_download("{REPO}", revision="{commit}", local_dir="{work}/out")
"#,
            work = work.path().display()
        ),
    );
    assert!(out.contains(&format!("sha {commit}")), "{out}");
    assert_eq!(visible(&work.path().join("out")), visible(&real_model()));
}

#[test]
fn missing_repositories_revisions_and_files_raise_the_clients_own_errors() {
    if !clients() {
        return;
    }
    let (served, _) = serve_real_model(&[]);
    let work = tempfile::tempdir().unwrap();
    let out = hf_python(
        &format!("http://{}", served.addr),
        &work.path().join("hf"),
        &format!(
            r#"
from huggingface_hub import hf_hub_download, HfApi
from huggingface_hub.errors import RepositoryNotFoundError, RevisionNotFoundError, EntryNotFoundError
def kind(f):
    try:
        f()
        return "ok"
    except RepositoryNotFoundError:
        return "repo"
    except RevisionNotFoundError:
        return "revision"
    except EntryNotFoundError:
        return "entry"
    except Exception as e:
        return "other " + type(e).__name__ + " " + str(e)
print("missing-repo", kind(lambda: hf_hub_download("nobody/nothing", "config.json")))
print("missing-info", kind(lambda: HfApi().model_info("nobody/nothing")))
print("missing-revision", kind(lambda: hf_hub_download("{REPO}", "config.json", revision="v9")))
print("missing-commit", kind(lambda: hf_hub_download("{REPO}", "config.json", revision="0123456789abcdef0123456789abcdef01234567")))
print("missing-file", kind(lambda: hf_hub_download("{REPO}", "nope.json")))
print("pr-revision", kind(lambda: hf_hub_download("{REPO}", "config.json", revision="refs/pr/1")))
print("a-dataset", kind(lambda: HfApi().dataset_info("{REPO}")))
"#
        ),
    );
    for line in [
        "missing-repo repo",
        "missing-info repo",
        "missing-revision revision",
        "missing-commit revision",
        "missing-file entry",
        "pr-revision revision",
        "a-dataset repo",
    ] {
        assert!(out.contains(line), "{line} in\n{out}");
    }
}

#[test]
fn a_private_repository_is_read_with_a_token_and_reveals_nothing_without_one() {
    if !clients() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let users = htpasswd(dir.path(), &[("alice", "a-pass"), ("bob", "b-pass")]);
    let policy = dir.path().join("policy.toml");
    std::fs::write(
        &policy,
        "[[rule]]\nwho = [\"alice\"]\nrepositories = [\"**\"]\nactions = [\"pull\", \"push\"]\n",
    )
    .unwrap();
    let served = Served::start_free(&["--htpasswd", s(&users), "--access-policy", s(&policy)]);
    push_as_alice(&served, &real_model(), OCI_REPO);
    let endpoint = format!("http://{}", served.addr);
    let work = tempfile::tempdir().unwrap();
    let probe = format!(
        r#"
from huggingface_hub import hf_hub_download, HfApi
from huggingface_hub.errors import RepositoryNotFoundError
def kind(f):
    try:
        f()
        return "ok"
    except RepositoryNotFoundError:
        return "repo"
    except Exception as e:
        return "other " + type(e).__name__
print("existing", kind(lambda: hf_hub_download("{REPO}", "config.json")))
print("missing", kind(lambda: hf_hub_download("nobody/nothing", "config.json")))
print("info", kind(lambda: HfApi().model_info("{REPO}")))
"#
    );
    // Without a token, or as a user the policy gives nothing: the same answer as for a
    // repository that does not exist.
    for token in [None, Some("bob:b-pass"), Some("alice:wrong")] {
        let code = match token {
            Some(t) => format!("os.environ['HF_TOKEN'] = '{t}'\n{probe}"),
            None => probe.clone(),
        };
        let out = hf_python(&endpoint, &work.path().join("hf"), &code);
        for line in ["existing repo", "missing repo", "info repo"] {
            assert!(out.contains(line), "{token:?}: {line} in\n{out}");
        }
    }
    let out = hf_python(
        &endpoint,
        &work.path().join("hf"),
        &format!("os.environ['HF_TOKEN'] = 'alice:a-pass'\n{probe}"),
    );
    assert!(
        out.contains("existing ok") && out.contains("info ok"),
        "{out}"
    );
    assert!(out.contains("missing repo"), "{out}");
    // The same answer, byte for byte, for a private repository and a missing one.
    let private = curl(&[&served.url(&format!("/api/models/{REPO}"))]);
    let missing = curl(&[&served.url("/api/models/nobody/nothing")]);
    assert_eq!(private.0, 401);
    assert_eq!((private.0, &private.2), (missing.0, &missing.2));
}

#[test]
fn hostile_paths_are_refused_and_read_nothing_outside_the_store() {
    let (served, _) = serve_real_model(&[]);
    let secret = served
        .root
        .path()
        .parent()
        .unwrap()
        .join("hoist-hub-secret");
    std::fs::write(&secret, b"secret").unwrap();
    for path in [
        format!("/{REPO}/resolve/main/../../../../etc/passwd"),
        format!("/{REPO}/resolve/main/%2e%2e/%2e%2e/%2e%2e/etc/passwd"),
        format!("/{REPO}/resolve/main/1_Pooling%2Fconfig.json"),
        format!("/{REPO}/resolve/main/%2Fetc%2Fpasswd"),
        format!("/{REPO}/resolve/main//etc/passwd"),
        format!("/{REPO}/resolve/%2e%2e/config.json"),
        format!("/{REPO}/resolve/{}/config.json", "v".repeat(5000)),
        format!(
            "/sentence-transformers/{}/resolve/main/config.json",
            "m".repeat(5000)
        ),
        format!("/api/models/{REPO}/tree/main/%2e%2e"),
        format!("/api/models/{REPO}/revision/..%2F..%2Fhoist-hub-secret"),
        "/api/models/..%2F..%2Fhoist-hub-secret".to_string(),
        format!("/{REPO}/resolve/main/..%5C..%5Choist-hub-secret"),
    ] {
        let (status, _, body) = curl(&[&served.url(&path)]);
        assert!((400..500).contains(&status), "{path}: {status} {body}");
        assert!(
            !body.contains("secret") || body.contains("hoist-hub-secret"),
            "{path}: {body}"
        );
        assert!(!body.contains("root:"), "{path}: {body}");
    }
    // Allowed spellings still work: an encoded revision, HEAD, a byte range.
    let (status, head, _) = curl(&[
        "-I",
        &served.url(&format!("/{REPO}/resolve/v1/config.json")),
    ]);
    assert_eq!(status, 200);
    assert!(
        head.contains("x-repo-commit: ") && head.contains("x-linked-etag: "),
        "{head}"
    );
    let (status, head, body) = curl(&[
        "-H",
        "Range: bytes=0-9",
        &served.url(&format!("/{REPO}/resolve/main/config.json")),
    ]);
    assert_eq!(status, 206, "{head}");
    assert_eq!(
        body.as_bytes(),
        &std::fs::read(real_model().join("config.json")).unwrap()[..10]
    );
    // Writes are not the Hub API's.
    let (status, _, _) = curl(&[
        "-X",
        "DELETE",
        &served.url(&format!("/{REPO}/resolve/main/config.json")),
    ]);
    assert_eq!(status, 405);
}

#[test]
fn tar_layer_artifacts_and_volume_forms_are_refused_with_a_reason() {
    let served = Served::start_free(&[]);
    let h = Hoist::new();
    let src = tempfile::tempdir().unwrap();
    small_model(src.path());
    h.run(&[
        "push",
        s(src.path()),
        &served.reference("org/tarred:main"),
        "--layer-format",
        "tar",
        "--image-volume",
    ])
    .ok();
    for path in [
        "/api/models/org/tarred",
        "/org/tarred/resolve/main/config.json",
        "/org/tarred/resolve/main-volume/config.json",
    ] {
        let (status, head, body) = curl(&[&served.url(path)]);
        assert_eq!(status, 400, "{path}: {body}");
        assert!(head.contains("x-error-message: "), "{head}");
        assert!(
            body.contains("tar layers") || body.contains("index"),
            "{path}: {body}"
        );
    }
}

#[test]
fn a_pull_through_cache_answers_the_hub_api_from_its_upstream() {
    if !clients() {
        return;
    }
    let (origin, commit) = serve_real_model(&[]);
    let cache = Served::start_free(&["--upstream", &origin.addr]);
    let work = tempfile::tempdir().unwrap();
    for (i, dir) in ["first", "second"].iter().enumerate() {
        let out = hf_python(
            &format!("http://{}", cache.addr),
            &work.path().join(format!("hf{i}")),
            &format!(
                r#"
from huggingface_hub import snapshot_download
snapshot_download("{REPO}", local_dir="{work}/{dir}")
print("done")
"#,
                work = work.path().display()
            ),
        );
        assert!(out.contains("done"), "{out}");
        assert_eq!(
            visible(&work.path().join(dir)),
            visible(&real_model()),
            "{dir}"
        );
    }
    // The origin sent the model's bytes once, for both clients (the second was served by
    // the cache).
    let (_, _, metrics) = curl(&[&origin.url("/metrics")]);
    let sent: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("hoist_serve_bytes_served_total "))
        .and_then(|n| n.trim().parse().ok())
        .unwrap();
    let model: u64 = visible(&real_model())
        .values()
        .map(|b| b.len() as u64)
        .sum();
    assert_eq!(sent, model, "bytes the origin served:\n{metrics}");
    // The cache now holds the model under the same name and commit.
    let (status, _, body) = curl(&[&cache.url(&format!("/api/models/{REPO}"))]);
    assert_eq!(status, 200);
    assert!(body.contains(&commit), "{body}");
}

#[test]
fn a_dataset_copied_from_the_hub_is_served_under_the_datasets_routes() {
    if !clients() {
        return;
    }
    const DATASET: &str = "org/Tiny-Set";
    let files = vec![
        common::hub::HubFile::new("data/train.csv", b"a,b\n1,2\n".to_vec(), false),
        common::hub::HubFile::new("README.md", b"# a dataset\n".to_vec(), false),
    ];
    let mut spec = HubRepoSpec::at_main("tiny-set", files);
    spec.dataset = true;
    let served = copied_from_stand_in(
        DATASET,
        spec,
        &format!("hf://datasets/{DATASET}"),
        "org/tiny-set:main",
    );
    let work = tempfile::tempdir().unwrap();
    let out = hf_python(
        &format!("http://{}", served.addr),
        &work.path().join("hf"),
        &format!(
            r#"
from huggingface_hub import snapshot_download, HfApi
from huggingface_hub.errors import RepositoryNotFoundError
print("sha", HfApi().dataset_info("{DATASET}").sha)
snapshot_download("{DATASET}", repo_type="dataset", local_dir="{work}/out")
try:
    HfApi().model_info("{DATASET}")
    print("as-model ok")
except RepositoryNotFoundError:
    print("as-model repo")
"#,
            work = work.path().display()
        ),
    );
    assert!(
        out.contains(&format!("sha {}", commit_of("tiny-set"))),
        "{out}"
    );
    assert!(out.contains("as-model repo"), "{out}");
    let got = visible(&work.path().join("out"));
    assert_eq!(got["data/train.csv"], b"a,b\n1,2\n");
    assert_eq!(got.len(), 2);
}

/// `HF_TOKEN` may also be one of serve's own tokens (`--auth token`), scoped as for the OCI
/// routes: a token for one repository reads that one and no other.
#[test]
fn a_serve_token_in_hf_token_reads_what_it_is_scoped_to() {
    if !clients() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let users = htpasswd(dir.path(), &[("alice", "a-pass")]);
    let served = Served::start_free(&["--htpasswd", s(&users), "--auth", "token"]);
    for repo in [OCI_REPO, "other/model"] {
        push_as_alice(&served, &real_model(), repo);
    }
    let (status, _, body) = curl(&[
        "-u",
        "alice:a-pass",
        &served.url(&format!(
            "/token?service=hoist&scope=repository:{OCI_REPO}:pull"
        )),
    ]);
    assert_eq!(status, 200, "{body}");
    let token = serde_json::from_str::<serde_json::Value>(&body).unwrap()["token"]
        .as_str()
        .unwrap()
        .to_string();
    let work = tempfile::tempdir().unwrap();
    let out = hf_python(
        &format!("http://{}", served.addr),
        &work.path().join("hf"),
        &format!(
            r#"
os.environ["HF_TOKEN"] = "{token}"
from huggingface_hub import HfApi
from huggingface_hub.errors import RepositoryNotFoundError
print("scoped", HfApi().model_info("{REPO}").sha is not None)
try:
    HfApi().model_info("other/model")
    print("other ok")
except RepositoryNotFoundError:
    print("other repo")
"#
        ),
    );
    assert!(
        out.contains("scoped True") && out.contains("other repo"),
        "{out}"
    );
}

/// The OCI routes come first: a repository with a component named `resolve` (or `api`) is
/// pushed and pulled as any other.
#[test]
fn oci_repositories_named_like_hub_routes_stay_oci() {
    let served = Served::start_free(&[]);
    let h = Hoist::new();
    let src = tempfile::tempdir().unwrap();
    small_model(src.path());
    for repo in ["team/resolve/m", "api/models/x"] {
        let reference = served.reference(&format!("{repo}:v1"));
        h.run(&["push", s(src.path()), &reference]).ok();
        let out = tempfile::tempdir().unwrap();
        h.run(&["pull", &reference, "-o", s(out.path())]).ok();
        assert_eq!(visible(out.path()), visible(src.path()), "{repo}");
    }
}

/// A tree longer than a page (1,000 entries) is listed whole by the client, following the
/// `Link` to the next page, in a folder whose name needs encoding.
#[test]
fn a_tree_of_more_than_a_page_is_listed_whole() {
    if !clients() {
        return;
    }
    let served = Served::start_free(&[]);
    let src = tempfile::tempdir().unwrap();
    std::fs::create_dir(src.path().join("sub dir")).unwrap();
    for i in 0..1005 {
        std::fs::write(src.path().join(format!("sub dir/f{i}.txt")), i.to_string()).unwrap();
    }
    std::fs::write(src.path().join("config.json"), b"{}").unwrap();
    let h = Hoist::new();
    h.run(&["push", s(src.path()), &served.reference("org/many:main")])
        .ok();
    let work = tempfile::tempdir().unwrap();
    let out = hf_python(
        &format!("http://{}", served.addr),
        &work.path().join("hf"),
        r#"
from huggingface_hub import HfApi
api = HfApi()
print("files", len(api.list_repo_files("org/many")))
print("in-folder", len(list(api.list_repo_tree("org/many", path_in_repo="sub dir"))))
"#,
    );
    assert!(
        out.contains("files 1006") && out.contains("in-folder 1005"),
        "{out}"
    );
}
