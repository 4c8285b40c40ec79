//! The shape of the source tree, checked as the README's DESIGN notes promise it: no import
//! circle between the files of `src/`, and no source file (tests aside) over 600 lines.
//!
//! An "import" is any path a file names (`use crate::x::y`, `super::z::f(...)`, a path inside
//! a `use` tree), resolved through the re-exports of `lib.rs` and each `mod.rs` to the module
//! that defines it. Between two modules neither of which contains the other, the import is
//! an edge between the two siblings under their nearest common parent (`transfer::pull::plan
//! → transfer::delta` is `pull → delta` inside `transfer`). A parent and its own children
//! may name each other freely: that is how a folder module shares its types.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

const MAX_LINES: usize = 600;

type ModPath = Vec<String>;

struct Tree {
    /// Module path → file.
    files: BTreeMap<ModPath, PathBuf>,
    /// Modules declared under `#[cfg(test)]` (and everything below them).
    test_only: BTreeSet<ModPath>,
    /// (module, name) → the child module a `pub use child::name` re-exports it from.
    reexports: BTreeMap<(ModPath, String), String>,
}

fn module_path(root: &Path, file: &Path) -> Option<ModPath> {
    let rel = file.strip_prefix(root).ok()?.with_extension("");
    let mut parts: ModPath = rel
        .iter()
        .map(|p| p.to_string_lossy().into_owned())
        .collect();
    match parts.last().map(String::as_str) {
        Some("mod") | Some("lib") => {
            parts.pop();
        }
        // The binary's root: its modules (`cli`) are walked on their own.
        Some("main") if parts.len() == 1 => return None,
        _ => {}
    }
    Some(parts)
}

fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            walk(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The file without its comments and without a trailing `#[cfg(test)] mod tests { ... }`.
fn code_of(text: &str) -> String {
    let text = match text.find("#[cfg(test)]\nmod tests") {
        Some(i) => &text[..i],
        None => text,
    };
    text.lines()
        .map(|l| match l.find("//") {
            Some(i) if !l[..i].contains('"') => &l[..i],
            _ => l,
        })
        .collect::<Vec<_>>()
        .join("\n")
}

fn load(root: &Path) -> Tree {
    let mut paths = Vec::new();
    walk(root, &mut paths);
    let mut tree = Tree {
        files: BTreeMap::new(),
        test_only: BTreeSet::new(),
        reexports: BTreeMap::new(),
    };
    for p in &paths {
        if let Some(m) = module_path(root, p) {
            tree.files.insert(m, p.clone());
        }
    }
    let mut test_only = BTreeSet::new();
    let mut reexports = BTreeMap::new();
    for (m, p) in &tree.files {
        let text = std::fs::read_to_string(p).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        for (i, line) in lines.iter().enumerate() {
            let decl = line
                .trim_start_matches("pub ")
                .trim_start_matches("pub(crate) ")
                .strip_prefix("mod ")
                .and_then(|r| r.strip_suffix(';'));
            if let Some(name) = decl {
                if i > 0 && lines[i - 1].starts_with("#[cfg(") && lines[i - 1].contains("test") {
                    let mut child = m.clone();
                    child.push(name.to_string());
                    test_only.insert(child);
                }
            }
        }
        for u in use_statements(&code_of(&text)) {
            let Some(rest) = u
                .strip_prefix("pub ")
                .or_else(|| u.strip_prefix("pub(crate) "))
            else {
                continue;
            };
            for path in expand(rest) {
                let parts: Vec<&str> = path.split("::").collect();
                let mut child = m.clone();
                child.push(parts[0].to_string());
                if parts.len() > 1 && tree.files.contains_key(&child) {
                    let name = parts.last().unwrap().split(" as ").last().unwrap();
                    reexports.insert((m.clone(), name.trim().to_string()), parts[0].to_string());
                }
            }
        }
    }
    tree.test_only = test_only;
    tree.reexports = reexports;
    tree
}

/// `use` statements (without `use` and `;`), whitespace removed, `pub` kept as a prefix.
fn use_statements(code: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = code;
    while let Some(i) = rest.find("use ") {
        let before = &rest[..i];
        let starts_item = before.is_empty()
            || before.ends_with('\n')
            || before.ends_with(' ')
            || before.ends_with('{')
            || before.ends_with(';');
        let after = &rest[i + 4..];
        let Some(end) = after.find(';') else { break };
        if starts_item {
            let line_start = before.rfind('\n').map_or(0, |n| n + 1);
            let vis = before[line_start..].trim();
            let body: String = after[..end]
                .split_whitespace()
                .map(|t| if t == "as" { " as " } else { t })
                .collect();
            match vis {
                "pub" => out.push(format!("pub {body}")),
                "pub(crate)" => out.push(format!("pub(crate) {body}")),
                _ => out.push(body),
            }
        }
        rest = &after[end..];
    }
    out
}

/// `a::{b, c::{d, e}}` → `a::b`, `a::c::d`, `a::c::e`.
fn expand(tree: &str) -> Vec<String> {
    let Some(open) = tree.find('{') else {
        return vec![tree.to_string()];
    };
    let prefix = &tree[..open];
    let mut depth = 0;
    let mut close = tree.len();
    for (i, c) in tree.char_indices().skip(open) {
        match c {
            '{' => depth += 1,
            '}' => {
                depth -= 1;
                if depth == 0 {
                    close = i;
                    break;
                }
            }
            _ => {}
        }
    }
    let inner = &tree[open + 1..close.min(tree.len())];
    let (mut parts, mut current, mut d) = (Vec::new(), String::new(), 0);
    for c in inner.chars() {
        match c {
            '{' => d += 1,
            '}' => d -= 1,
            ',' if d == 0 => {
                parts.push(std::mem::take(&mut current));
                continue;
            }
            _ => {}
        }
        current.push(c);
    }
    parts.push(current);
    parts
        .into_iter()
        .filter(|p| !p.is_empty())
        .flat_map(|p| expand(&p))
        .map(|p| format!("{prefix}{p}"))
        .collect()
}

impl Tree {
    /// The module a path names, from module `from`; `None` for paths outside the crate.
    fn resolve(&self, from: &ModPath, path: &str) -> Option<ModPath> {
        let mut parts: Vec<&str> = path.split("::").map(str::trim).collect();
        let mut base: ModPath = match parts.first()? {
            &"crate" => {
                parts.remove(0);
                Vec::new()
            }
            &"super" | &"self" => from.clone(),
            _ => return None,
        };
        while let Some(&first) = parts.first() {
            match first {
                "super" => {
                    base.pop();
                }
                "self" => {}
                _ => break,
            }
            parts.remove(0);
        }
        let mut module = base;
        for part in parts {
            let part = part.split(" as ").next().unwrap();
            let mut child = module.clone();
            child.push(part.to_string());
            if self.files.contains_key(&child) {
                module = child;
            } else if let Some(sub) = self.reexports.get(&(module.clone(), part.to_string())) {
                module.push(sub.clone());
            } else {
                break;
            }
        }
        Some(module)
    }

    /// Every import of a non-test module: (from, to).
    fn imports(&self) -> BTreeSet<(ModPath, ModPath)> {
        let mut edges = BTreeSet::new();
        for (m, p) in &self.files {
            if self.is_test(m) {
                continue;
            }
            let code = code_of(&std::fs::read_to_string(p).unwrap());
            let mut named: Vec<String> = Vec::new();
            for u in use_statements(&code) {
                let body = u.split_once(' ').map_or(u.as_str(), |(v, b)| {
                    if v.starts_with("pub") {
                        b
                    } else {
                        u.as_str()
                    }
                });
                named.extend(expand(body));
            }
            // Paths written in the code itself: `crate::a::b`, `super::c::f(...)`.
            let bytes = code.as_bytes();
            for start in ["crate::", "super::", "self::"] {
                let mut from = 0;
                while let Some(i) = code[from..].find(start) {
                    let at = from + i;
                    from = at + start.len();
                    if at > 0 && (bytes[at - 1].is_ascii_alphanumeric() || bytes[at - 1] == b'_') {
                        continue;
                    }
                    let end = code[at..]
                        .find(|c: char| !(c.is_alphanumeric() || c == '_' || c == ':'))
                        .map_or(code.len(), |e| at + e);
                    named.push(code[at..end].trim_end_matches(':').to_string());
                }
            }
            for path in named {
                if let Some(target) = self.resolve(m, &path) {
                    if &target != m && !self.is_test(&target) {
                        edges.insert((m.clone(), target));
                    }
                }
            }
        }
        edges
    }

    fn is_test(&self, m: &ModPath) -> bool {
        (1..=m.len()).any(|n| self.test_only.contains(&m[..n]))
            || m.last().is_some_and(|l| l == "tests")
    }
}

/// The circles among siblings: each as the list of sibling names, under their parent.
fn circles(tree: &Tree) -> Vec<String> {
    let mut graphs: BTreeMap<ModPath, BTreeMap<String, BTreeSet<String>>> = BTreeMap::new();
    for (from, to) in tree.imports() {
        let common = from.iter().zip(&to).take_while(|(a, b)| a == b).count();
        if common == from.len() || common == to.len() {
            continue; // a parent and its own descendant
        }
        graphs
            .entry(from[..common].to_vec())
            .or_default()
            .entry(from[common].clone())
            .or_default()
            .insert(to[common].clone());
    }
    let mut found = Vec::new();
    for (parent, graph) in &graphs {
        let mut seen_cycles = BTreeSet::new();
        for start in graph.keys() {
            // Shortest way back to `start`, breadth first.
            let mut queue = std::collections::VecDeque::from([vec![start.clone()]]);
            let mut visited = BTreeSet::new();
            while let Some(path) = queue.pop_front() {
                let last = path.last().unwrap();
                for next in graph.get(last).into_iter().flatten() {
                    if next == start {
                        let mut key = path.clone();
                        key.sort();
                        if seen_cycles.insert(key) {
                            let mut shown = path.clone();
                            shown.push(start.clone());
                            let at = if parent.is_empty() {
                                "src".to_string()
                            } else {
                                parent.join("::")
                            };
                            found.push(format!("{at}: {}", shown.join(" → ")));
                        }
                    } else if visited.insert(next.clone()) {
                        let mut longer = path.clone();
                        longer.push(next.clone());
                        queue.push_back(longer);
                    }
                }
            }
        }
    }
    found
}

fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

#[test]
fn no_import_circle_in_src() {
    let tree = load(&src());
    assert!(
        tree.files.len() > 50,
        "the tree was read: {}",
        tree.files.len()
    );
    let edges = tree.imports();
    // The reading sees real imports (so an empty answer below means something).
    let has = |a: &str, b: &str| {
        edges
            .iter()
            .any(|(f, t)| f.join("::") == a && t.join("::") == b)
    };
    assert!(
        has("transfer::pull::plan", "reserved"),
        "a crate:: path is read"
    );
    assert!(
        has("registry::auth::token", "registry::body"),
        "a path in code is read"
    );
    let found = circles(&tree);
    assert!(found.is_empty(), "import circles:\n{}", found.join("\n"));
}

#[test]
fn no_source_file_over_600_lines() {
    let tree = load(&src());
    let mut long = Vec::new();
    for (m, p) in &tree.files {
        if tree.is_test(m) {
            continue;
        }
        let lines = std::fs::read_to_string(p).unwrap().lines().count();
        if lines > MAX_LINES {
            long.push(format!("{} ({lines} lines)", p.display()));
        }
    }
    assert!(
        long.is_empty(),
        "over {MAX_LINES} lines: {}",
        long.join(", ")
    );
}

/// The checks themselves find what they look for: a planted circle through a re-export and
/// a `super::` path, and a long file.
#[test]
fn a_planted_circle_is_found() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    std::fs::create_dir_all(root.join("net")).unwrap();
    std::fs::write(root.join("lib.rs"), "pub mod net;\npub mod store;\n").unwrap();
    std::fs::write(
        root.join("net/mod.rs"),
        "mod client;\nmod auth;\npub use client::Client;\n",
    )
    .unwrap();
    std::fs::write(
        root.join("net/client.rs"),
        "use super::auth::Token;\npub struct Client;\n",
    )
    .unwrap();
    std::fs::write(
        root.join("net/auth.rs"),
        "pub struct Token;\nfn f() { let _ = super::Client; }\n",
    )
    .unwrap();
    std::fs::write(
        root.join("store.rs"),
        "use crate::net::Client;\n#[cfg(test)]\nmod tests { use crate::store; }\n",
    )
    .unwrap();
    let tree = load(root);
    let found = circles(&tree);
    assert_eq!(
        found,
        vec!["net: auth → client → auth".to_string()],
        "{found:?}"
    );
    // A test module's imports do not count.
    assert!(!tree
        .imports()
        .iter()
        .any(|(f, _)| f.join("::") == "store::tests"));
}
