//! A "verified" mark on placed files (an extended attribute holding the digest, size and
//! mtime), so a re-pull into the same folder — a restarted init container — can trust a file
//! without reading it again. Any change to the file changes its mtime or size and voids the
//! mark; filesystems without user xattrs simply fall back to hashing.

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use crate::digest::Digest;

const NAME: &[u8] = b"user.hoist.verified\0";

fn stamp(meta: &std::fs::Metadata, digest: &Digest) -> String {
    format!(
        "{digest} {} {}.{}",
        meta.len(),
        meta.mtime(),
        meta.mtime_nsec()
    )
}

/// Mark a regular file as holding `digest` now (best effort).
pub fn mark(path: &Path, digest: &Digest) {
    let (Ok(meta), Ok(c_path)) = (
        std::fs::symlink_metadata(path),
        CString::new(path.as_os_str().as_bytes()),
    ) else {
        return;
    };
    if !meta.is_file() {
        return;
    }
    let value = stamp(&meta, digest);
    // SAFETY: valid NUL-terminated path and name, value pointer and length from a live String.
    unsafe {
        libc::lsetxattr(
            c_path.as_ptr(),
            NAME.as_ptr().cast(),
            value.as_ptr().cast(),
            value.len(),
            0,
        );
    }
}

/// Does the file carry a mark for `digest` that still matches its size and mtime?
pub fn is_marked(path: &Path, digest: &Digest) -> bool {
    let (Ok(meta), Ok(c_path)) = (
        std::fs::symlink_metadata(path),
        CString::new(path.as_os_str().as_bytes()),
    ) else {
        return false;
    };
    let mut buf = [0u8; 256];
    // SAFETY: valid NUL-terminated path and name; the buffer outlives the call.
    let n = unsafe {
        libc::lgetxattr(
            c_path.as_ptr(),
            NAME.as_ptr().cast(),
            buf.as_mut_ptr().cast(),
            buf.len(),
        )
    };
    n > 0 && buf[..n as usize] == *stamp(&meta, digest).as_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_changed_file_loses_its_mark() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        std::fs::write(&p, b"abc").unwrap();
        let d = Digest::of_bytes(b"abc");
        mark(&p, &d);
        if !is_marked(&p, &d) {
            eprintln!("no user xattrs on this filesystem; the mark is best effort");
            return;
        }
        assert!(!is_marked(&p, &Digest::of_bytes(b"other")));
        std::thread::sleep(std::time::Duration::from_millis(5));
        std::fs::write(&p, b"abd").unwrap();
        assert!(!is_marked(&p, &d));
    }
}
