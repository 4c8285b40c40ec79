//! The read-only bind mount of a volume's folder at kubelet's target path, and its removal.
//!
//! A bind mount is made writable and then remounted read-only (the kernel ignores MS_RDONLY
//! on the first call), so a write through the Pod's volume fails with EROFS whatever the
//! files' modes are. Mount state is read from the mount table, never by touching the target:
//! a lazy volume whose plugin died leaves a FUSE mount that answers ENOTCONN.

use std::io;
use std::path::Path;

use rustix::mount::{mount_bind, mount_remount, unmount as umount2, MountFlags, UnmountFlags};

use crate::fsutil::is_mount_point;

/// Bind `source` at `target` (created if missing), read-only.
pub fn mount_read_only(source: &Path, target: &Path) -> io::Result<()> {
    std::fs::create_dir_all(target)?;
    mount_bind(source, target)?;
    if let Err(e) = mount_remount(target, MountFlags::BIND | MountFlags::RDONLY, "") {
        // Never leave a writable mount behind.
        let _ = umount2(target, UnmountFlags::DETACH);
        return Err(e.into());
    }
    Ok(())
}

/// Remove every mount at `target` (a retried publish may have stacked two), then the
/// folder itself. Detached lazily: a reader still holding a file open does not keep the
/// volume busy. Nothing there is not an error (unpublish is idempotent).
pub fn unmount_and_remove(target: &Path) -> io::Result<()> {
    // Bounded: a mount that survives a detach would otherwise loop forever.
    for _ in 0..16 {
        if !is_mount_point(target)? {
            break;
        }
        umount2(target, UnmountFlags::DETACH)?;
    }
    if is_mount_point(target)? {
        return Err(io::Error::other("still mounted after 16 unmounts"));
    }
    match std::fs::remove_dir(target) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        // Kubelet may have made it a file for a block volume; not ours to touch then.
        Err(e) => Err(e),
    }
}
