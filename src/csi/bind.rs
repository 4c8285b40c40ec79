//! The read-only bind mount of a volume's folder at kubelet's target, and its removal, both
//! made on the target folder as opened by [`Target`] (never on a path looked up again).
//!
//! A bind mount is made writable and then remounted read-only (the kernel ignores MS_RDONLY
//! on the first call), so a write through the Pod's volume fails with EROFS whatever the
//! files' modes are. Only a mount whose folder is the volume's own (same device and inode)
//! is ever unmounted: a target holding another driver's mount is left as it is.

use std::io;
use std::path::Path;

use rustix::mount::{mount_bind, mount_remount, unmount as umount2, MountFlags, UnmountFlags};

use super::target::{identity_of, Target};

/// Bind `source` at the opened `target`, read-only.
pub fn mount_read_only(source: &Path, target: &mut Target) -> io::Result<()> {
    mount_bind(source, target.handle())?;
    // The handle still names the folder under the new mount: open what is on top now.
    let checked = target
        .reopen()
        .map_err(|e| io::Error::other(e.to_string()))
        .and_then(|()| {
            if target.identity()? == identity_of(source)? {
                Ok(())
            } else {
                Err(io::Error::other("the mount is not on top of the target"))
            }
        });
    let result = checked.and_then(|()| {
        Ok(mount_remount(
            target.handle(),
            MountFlags::BIND | MountFlags::RDONLY,
            "",
        )?)
    });
    if let Err(e) = result {
        // Never leave a writable mount behind.
        let _ = umount2(target.handle(), UnmountFlags::DETACH);
        return Err(e);
    }
    Ok(())
}

/// Is the folder on top at `target` the volume folder `source` (its bind mount)?
pub fn holds(target: &Target, source: &Path) -> bool {
    match (target.identity(), identity_of(source)) {
        (Ok(a), Ok(b)) => a == b,
        _ => false,
    }
}

/// Remove every bind mount of `source` at `target` (a retried publish may have stacked two),
/// detached lazily: a reader still holding a file open does not keep the volume busy. A
/// mount of anything else is left. Returns how many were removed.
pub fn unmount_own(source: &Path, target: &mut Target) -> io::Result<usize> {
    let mut removed = 0;
    // Bounded: a mount that survives a detach would otherwise loop forever.
    while holds(target, source) {
        if removed == 16 {
            return Err(io::Error::other("still mounted after 16 unmounts"));
        }
        umount2(target.handle(), UnmountFlags::DETACH)?;
        removed += 1;
        target
            .reopen()
            .map_err(|e| io::Error::other(e.to_string()))?;
    }
    Ok(removed)
}

/// Detach whatever is mounted on the opened `target` (a lazy volume's FUSE mount, found as
/// the plugin's own by the caller).
pub fn detach(target: &Target) -> io::Result<()> {
    Ok(umount2(target.handle(), UnmountFlags::DETACH)?)
}
