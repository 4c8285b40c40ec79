//! Replacing a small file atomically: every state file, marker, record, tag and metrics file
//! hoist writes goes through [`write_atomic`], so a reader sees the old bytes or the new ones,
//! never half of either, and a planted symlink at the name is replaced, not written through.

use std::io::{self, Write};
use std::path::Path;

/// How a file is replaced.
#[derive(Debug, Clone, Copy, Default)]
pub struct Replace {
    /// Sync the data before the rename, so a crash leaves the old file or the whole new one
    /// (store indexes, tags, credentials). Files rewritten often and rebuilt on loss (a
    /// download's progress record, a metrics file) skip it.
    pub durable: bool,
    /// Permission bits set before any byte is written (0600 for credentials).
    pub mode: Option<u32>,
}

impl Replace {
    pub const DURABLE: Replace = Replace {
        durable: true,
        mode: None,
    };
    pub const FAST: Replace = Replace {
        durable: false,
        mode: None,
    };
}

/// Write `bytes` to `path` through a temporary file in the same folder and a rename.
pub fn write_atomic(path: &Path, bytes: &[u8], how: Replace) -> io::Result<()> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let mut tmp = tempfile::Builder::new()
        .prefix(".hoist-write.")
        .tempfile_in(dir)?;
    if let Some(mode) = how.mode {
        use std::os::unix::fs::PermissionsExt;
        tmp.as_file()
            .set_permissions(std::fs::Permissions::from_mode(mode))?;
    }
    tmp.write_all(bytes)?;
    if how.durable {
        tmp.as_file().sync_data()?;
    }
    tmp.persist(path).map_err(|e| e.error)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replaces_a_planted_symlink_instead_of_writing_through_it() {
        let dir = tempfile::tempdir().unwrap();
        let victim = dir.path().join("victim");
        std::fs::write(&victim, b"keep").unwrap();
        let path = dir.path().join("state.json");
        std::os::unix::fs::symlink(&victim, &path).unwrap();
        write_atomic(&path, b"new", Replace::DURABLE).unwrap();
        assert_eq!(std::fs::read(&victim).unwrap(), b"keep");
        assert_eq!(std::fs::read(&path).unwrap(), b"new");
        assert!(!std::fs::symlink_metadata(&path).unwrap().is_symlink());
        // Nothing but the two names is left behind.
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 2);
    }

    #[test]
    fn sets_the_mode_before_writing() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("secret.json");
        let how = Replace {
            durable: true,
            mode: Some(0o600),
        };
        write_atomic(&path, b"{}", how).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }
}

/// One line of `/proc/self/mountinfo`: where something is mounted, its type and source.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountEntry {
    pub point: std::path::PathBuf,
    pub fstype: String,
    pub source: String,
}

/// This process's mount table, oldest mount first (a later line covers an earlier one at the
/// same point).
pub fn mount_table() -> io::Result<Vec<MountEntry>> {
    let table = std::fs::read_to_string("/proc/self/mountinfo")?;
    Ok(table.lines().filter_map(parse_mountinfo_line).collect())
}

/// Is `path` (absolute, as the kernel spells it) a mount point in this namespace? Read from
/// the mount table, never by touching `path`: a dead FUSE mount answers ENOTCONN.
pub fn is_mount_point(path: &Path) -> io::Result<bool> {
    Ok(mount_table()?.iter().any(|m| m.point == path))
}

fn parse_mountinfo_line(line: &str) -> Option<MountEntry> {
    let (before, after) = line.split_once(" - ")?;
    let point = unescape_mount_field(before.split(' ').nth(4)?);
    let mut rest = after.split(' ');
    let (fstype, source) = (rest.next()?, rest.next()?);
    Some(MountEntry {
        point: point.into(),
        fstype: fstype.to_string(),
        source: unescape_mount_field(source),
    })
}

/// The kernel writes spaces, tabs, newlines and backslashes in mount fields as octal escapes.
fn unescape_mount_field(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal = bytes
            .get(i + 1..i + 4)
            .filter(|d| d.iter().all(|c| (b'0'..=b'7').contains(c)));
        match (bytes[i], octal) {
            (b'\\', Some(d)) => {
                out.push((d[0] - b'0') * 64 + (d[1] - b'0') * 8 + (d[2] - b'0'));
                i += 4;
            }
            (b, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod mount_table_tests {
    use super::*;

    #[test]
    fn mountinfo_fields_are_unescaped() {
        let line = "36 35 98:0 / /mnt/a\\040b rw,noatime master:1 - fuse hoist:r/m\\072v1 rw";
        let m = parse_mountinfo_line(line).unwrap();
        assert_eq!(m.point, std::path::PathBuf::from("/mnt/a b"));
        assert_eq!(m.fstype, "fuse");
        assert_eq!(m.source, "hoist:r/m:v1");
        assert!(parse_mountinfo_line("garbage").is_none());
    }
}
