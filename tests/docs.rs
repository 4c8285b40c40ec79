//! The documentation kept true: the README is a page whose quickstart runs as written; every
//! link in the docs leads to a file; every module of `src/` is in the one module table
//! (`docs/architecture.md`); every environment variable a flag reads is in the reference.

mod common;

use std::path::{Path, PathBuf};

use common::*;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn read(rel: &str) -> String {
    std::fs::read_to_string(root().join(rel)).unwrap()
}

/// Every Markdown file of the manual: the README, the docs tree, the package page, the
/// contributing and security notes.
fn documents() -> Vec<PathBuf> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                walk(&path, out);
            } else if path.extension().is_some_and(|e| e == "md") {
                out.push(path);
            }
        }
    }
    let mut out: Vec<PathBuf> = [
        "README.md",
        "CONTRIBUTING.md",
        "SECURITY.md",
        "python/README.md",
    ]
    .iter()
    .map(|p| root().join(p))
    .collect();
    walk(&root().join("docs"), &mut out);
    out
}

/// The targets of `[text](target)` links outside code blocks.
fn links(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut fenced = false;
    for line in text.lines() {
        if line.trim_start().starts_with("```") {
            fenced = !fenced;
            continue;
        }
        if fenced {
            continue;
        }
        let mut rest = line;
        while let Some(i) = rest.find("](") {
            let after = &rest[i + 2..];
            let Some(end) = after.find(')') else { break };
            out.push(after[..end].to_string());
            rest = &after[end..];
        }
    }
    out
}

#[test]
fn the_readme_is_a_page() {
    let lines = read("README.md").lines().count();
    assert!(
        lines <= 250,
        "README.md has {lines} lines: the manual is docs/"
    );
}

#[test]
fn every_link_in_the_docs_leads_to_a_file() {
    let mut broken = Vec::new();
    for doc in documents() {
        let text = std::fs::read_to_string(&doc).unwrap();
        for target in links(&text) {
            let path = target.split('#').next().unwrap();
            if path.is_empty() || path.contains("://") || path.starts_with("mailto:") {
                continue;
            }
            if !doc.parent().unwrap().join(path).exists() {
                broken.push(format!("{}: {target}", doc.display()));
            }
        }
    }
    assert!(
        broken.is_empty(),
        "links to nothing:\n{}",
        broken.join("\n")
    );
    assert!(links("[a](b.md) and [c](d#e)\n```\n[no](x)\n```") == ["b.md", "d#e"]);
}

/// `src/` modules: each top-level module of the library and the binary's `cli`, and each
/// folder module (`src/a/b/mod.rs` is `a::b`).
fn modules() -> Vec<String> {
    let lib = read("src/lib.rs");
    let mut out: Vec<String> = lib
        .lines()
        .filter_map(|l| l.strip_prefix("pub mod ")?.strip_suffix(';'))
        .map(str::to_string)
        .collect();
    out.push("cli".into());
    fn folders(dir: &Path, prefix: &str, out: &mut Vec<String>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.join("mod.rs").is_file() {
                let name = path.file_name().unwrap().to_string_lossy().into_owned();
                let full = if prefix.is_empty() {
                    name.clone()
                } else {
                    format!("{prefix}::{name}")
                };
                if !prefix.is_empty() {
                    out.push(full.clone());
                }
                folders(&path, &full, out);
            }
        }
    }
    folders(&root().join("src"), "", &mut out);
    out
}

#[test]
fn every_module_is_in_the_one_module_table() {
    let table: Vec<String> = read("docs/architecture.md")
        .lines()
        .filter(|l| l.starts_with('|'))
        .map(str::to_string)
        .collect();
    let missing: Vec<String> = modules()
        .into_iter()
        .filter(|m| !table.iter().any(|row| row.contains(&format!("`{m}`"))))
        .collect();
    assert!(
        missing.is_empty(),
        "modules missing from docs/architecture.md's table: {missing:?}"
    );
    assert!(modules().contains(&"serve::hub".to_string()));
}

#[test]
fn every_environment_variable_a_flag_reads_is_in_the_reference() {
    let reference = read("docs/reference/environment.md");
    let mut missing = Vec::new();
    for entry in std::fs::read_dir(root().join("src/cli")).unwrap() {
        let text = std::fs::read_to_string(entry.unwrap().path()).unwrap();
        for part in text.split("env = \"").skip(1) {
            let var = part.split('"').next().unwrap();
            if !reference.contains(&format!("`{var}`")) {
                missing.push(var.to_string());
            }
        }
    }
    assert!(
        missing.is_empty(),
        "not in docs/reference/environment.md: {missing:?}"
    );
}

/// The commands of the README's quickstart, as written.
fn quickstart() -> Vec<String> {
    let readme = read("README.md");
    let block = readme
        .split("## Quickstart\n```sh\n")
        .nth(1)
        .and_then(|rest| rest.split("\n```").next())
        .expect("a Quickstart section with a sh block");
    block
        .lines()
        .map(|l| match l.find("  # ") {
            Some(i) => l[..i].trim_end().to_string(),
            None => l.to_string(),
        })
        .collect()
}

#[test]
fn the_readme_quickstart_runs_as_written() {
    let oras = ["oras", "../shared/bin/oras"]
        .iter()
        .map(|p| root().join(p))
        .find(|p| p.is_file())
        .or_else(|| which("oras"));
    let hub = std::process::Command::new("python3")
        .args(["-c", "import huggingface_hub"])
        .status()
        .is_ok_and(|s| s.success());
    let Some(oras) = oras.filter(|_| hub) else {
        cannot_run("the quickstart needs the ORAS CLI and python3 with huggingface_hub");
        return;
    };
    let steps = quickstart();
    assert_eq!(steps.len(), 5, "{steps:?}");
    let port = free_port().to_string();
    let work = tempfile::tempdir().unwrap();
    let out = work.path().join("models/my-model");
    let bin = hoist_bin();
    // The README's names, made real here: its port, its folders, its programs.
    let real = |step: &str| {
        step.replace("5000", &port)
            .replace("./my-model", real_model().to_str().unwrap())
            .replace("/models/my-model", out.to_str().unwrap())
            .replace("hoist ", &format!("{} ", bin.display()))
            .replace("oras ", &format!("{} ", oras.display()))
    };
    let serve = real(&steps[0]);
    let serve = serve
        .strip_suffix(" &")
        .expect("the server runs in the background");
    let mut server = std::process::Command::new("bash")
        .args(["-c", &format!("exec {serve}")])
        .env("HOIST_HOME", work.path().join("served"))
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
    while std::net::TcpStream::connect(format!("127.0.0.1:{port}")).is_err() {
        assert!(
            std::time::Instant::now() < deadline,
            "hoist serve did not start"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let mut outputs = Vec::new();
    for step in &steps[1..] {
        let done = std::process::Command::new("bash")
            .args(["-c", &real(step)])
            .current_dir(work.path())
            .env("HOIST_HOME", work.path().join("client"))
            .env("HF_HOME", work.path().join("hf"))
            .env_remove("HF_TOKEN")
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&done.stdout).into_owned();
        assert!(
            done.status.success(),
            "{step}\n{text}{}",
            String::from_utf8_lossy(&done.stderr)
        );
        outputs.push(text);
    }
    let _ = server.kill();
    let _ = server.wait();
    let source = tree(&real_model(), false);
    assert_eq!(tree(&out, false), source, "hoist pull");
    let snapshot = PathBuf::from(outputs[3].trim());
    assert_eq!(tree(&snapshot, false), source, "snapshot_download");
    // oras pull wrote the files into the working folder.
    let weights = std::fs::read(real_model().join("model.safetensors")).unwrap();
    assert!(std::fs::read(work.path().join("model.safetensors")).unwrap() == weights);
}

fn which(program: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|p| p.join(program))
            .find(|p| p.is_file())
    })
}
