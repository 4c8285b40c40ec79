//! The mounted tree, built from the manifest alone: names, sizes and modes are known before a
//! byte of weights is fetched. Inode 1 is the root; directories come from the file paths.

use std::collections::BTreeMap;
use std::path::Path;

pub const ROOT: u64 = 1;

#[derive(Debug)]
pub enum NodeKind {
    Dir {
        children: BTreeMap<String, u64>,
    },
    /// A file's bytes are `size` bytes of blob `blob` from `start` (0 for a raw layer; past
    /// the tar header in an image-volume layer).
    File {
        blob: usize,
        size: u64,
        mode: u32,
        start: u64,
    },
}

#[derive(Debug)]
pub struct Node {
    pub parent: u64,
    pub kind: NodeKind,
}

#[derive(Debug)]
pub struct Tree {
    nodes: Vec<Node>, // inode n is nodes[n - 1]
}

impl Tree {
    pub fn new() -> Tree {
        Tree {
            nodes: vec![Node {
                parent: ROOT,
                kind: NodeKind::Dir {
                    children: BTreeMap::new(),
                },
            }],
        }
    }

    pub fn get(&self, ino: u64) -> Option<&Node> {
        self.nodes.get((ino as usize).checked_sub(1)?)
    }

    /// Add a file at a (safe, relative) path, creating its folders. Returns false if the path
    /// runs through an existing file or names one twice.
    pub fn add_file(&mut self, path: &Path, blob: usize, size: u64, mode: u32, start: u64) -> bool {
        let parts: Vec<String> = path
            .iter()
            .map(|p| p.to_string_lossy().into_owned())
            .collect();
        let Some((name, dirs)) = parts.split_last() else {
            return false;
        };
        let mut dir = ROOT;
        for part in dirs {
            dir = match self.child(dir, part) {
                Some(ino) if matches!(self.nodes[ino as usize - 1].kind, NodeKind::Dir { .. }) => {
                    ino
                }
                Some(_) => return false,
                None => self.insert(
                    dir,
                    part,
                    NodeKind::Dir {
                        children: BTreeMap::new(),
                    },
                ),
            };
        }
        if self.child(dir, name).is_some() {
            return false;
        }
        self.insert(
            dir,
            name,
            NodeKind::File {
                blob,
                size,
                mode,
                start,
            },
        );
        true
    }

    /// The `/`-separated path of inode `ino` from the root.
    pub fn path_of(&self, mut ino: u64) -> String {
        let mut parts = Vec::new();
        while ino != ROOT {
            let Some(node) = self.get(ino) else { break };
            if let Some(NodeKind::Dir { children }) = self.get(node.parent).map(|p| &p.kind) {
                if let Some((name, _)) = children.iter().find(|(_, &c)| c == ino) {
                    parts.push(name.as_str());
                }
            }
            ino = node.parent;
        }
        parts.reverse();
        parts.join("/")
    }

    pub fn child(&self, dir: u64, name: &str) -> Option<u64> {
        match &self.get(dir)?.kind {
            NodeKind::Dir { children } => children.get(name).copied(),
            NodeKind::File { .. } => None,
        }
    }

    fn insert(&mut self, dir: u64, name: &str, kind: NodeKind) -> u64 {
        self.nodes.push(Node { parent: dir, kind });
        let ino = self.nodes.len() as u64;
        if let NodeKind::Dir { children } = &mut self.nodes[dir as usize - 1].kind {
            children.insert(name.to_string(), ino);
        }
        ino
    }
}

impl Default for Tree {
    fn default() -> Self {
        Tree::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn folders_come_from_paths() {
        let mut t = Tree::new();
        assert!(t.add_file(Path::new("config.json"), 0, 10, 0o444, 0));
        assert!(t.add_file(Path::new("1_Pooling/config.json"), 1, 20, 0o444, 0));
        assert!(!t.add_file(Path::new("config.json/x"), 2, 1, 0o444, 0));
        assert!(!t.add_file(Path::new("1_Pooling/config.json"), 2, 1, 0o444, 0));
        let pooling = t.child(ROOT, "1_Pooling").unwrap();
        let file = t.child(pooling, "config.json").unwrap();
        assert!(matches!(
            t.get(file).unwrap().kind,
            NodeKind::File {
                blob: 1,
                size: 20,
                ..
            }
        ));
        assert_eq!(t.get(pooling).unwrap().parent, ROOT);
        assert_eq!(t.path_of(file), "1_Pooling/config.json");
    }
}
