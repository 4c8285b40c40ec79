//! Publishing a copied volume at a target and unpublishing it: the bind mount on the opened
//! target, and the targets recorded per volume folder (`<folder>/targets/<hash>`), so a
//! folder shared by several Pods (one volume id) outlives all but its last target, across
//! restarts of the plugin. Only the plugin's own mounts and empty targets are removed.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use super::bind;
use super::request::Volume;
use super::target::Target as TargetDir;
use super::volumes::{placed, Refused, Volumes};
use crate::digest::Digest;
use crate::ExitCode;

impl Volumes {
    /// Open a target beneath kubelet's pods folder, never through a link.
    pub fn open_target(&self, path: &Path, create: bool) -> Result<Option<TargetDir>, Refused> {
        Ok(TargetDir::open(&self.pods, path, create)?)
    }

    /// Publish a copied volume: its model placed (pulled first if need be), its folder bind
    /// mounted read-only at the target, and the target recorded in the folder, so the folder
    /// lives while any target uses it.
    pub async fn publish(
        self: &Arc<Self>,
        volume: &Volume,
        wait: Option<Duration>,
    ) -> Result<(), Refused> {
        // A link on the way is refused before anything is pulled.
        self.open_target(&volume.target, false)?;
        // Twice at most: the folder may be removed by the unpublish of its last other target
        // between its placing and the mount.
        for _ in 0..2 {
            let Some(model) = self.place(volume, wait).await? else {
                return Err(Refused::Pending(format!(
                    "{} is still being pulled; the pull goes on, and a retry of this call joins it",
                    volume.reference
                )));
            };
            let _mounts = self.mounts.lock().expect("mounts lock");
            let folder = self.folder(&volume.id);
            if placed(&folder).is_none_or(|p| p.content != volume.content_key()) {
                continue;
            }
            let mut target = self
                .open_target(&volume.target, true)?
                .expect("a created target exists");
            if !bind::holds(&target, &model) {
                if is_mount_point(&volume.target) {
                    return Err(Refused::Conflict(format!(
                        "something other than volume {} is mounted at {}",
                        volume.id,
                        volume.target.display()
                    )));
                }
                bind::mount_read_only(&model, &mut target)
                    .map_err(|e| Refused::io("cannot mount the volume at", &volume.target, e))?;
                tracing::info!(
                    "volume {}: {} mounted read-only at {}",
                    volume.id,
                    volume.reference,
                    volume.target.display()
                );
            }
            record_target(&folder, &volume.target)
                .map_err(|e| Refused::io("cannot record the target in", &folder, e))?;
            return Ok(());
        }
        Err(Refused::failed(
            ExitCode::Interrupted,
            format!(
                "volume {} was unpublished while it was published",
                volume.id
            ),
        ))
    }

    /// Unpublish `id` at `path`: the plugin's own mount there is removed, and the empty
    /// target folder; anything else is left as it is. The volume's folder (and a pull of it
    /// still running) goes with its last target. The store keeps the blobs.
    pub async fn unpublish(&self, id: &str, path: &Path) -> Result<(), Refused> {
        let target = self.open_target(path, false)?;
        let mut known = false;
        #[cfg(feature = "mount")]
        {
            let mounted = self.lazy.lock().expect("lazy lock").remove(id);
            if let Some(mounted) = mounted {
                known = true;
                let _ = tokio::task::spawn_blocking(move || mounted.unmount()).await;
            }
        }
        let folder = self.folder(id);
        let model = folder.join("model");
        known |= folder.exists() || self.jobs.lock().expect("jobs lock").contains_key(id);
        let mounts = self.mounts.lock().expect("mounts lock");
        if let Some(mut target) = target {
            let unmounted = bind::unmount_own(&model, &mut target)
                .map_err(|e| Refused::io("cannot unmount the volume at", path, e))?;
            if is_mount_point(path) && is_dead_lazy_mount(path) {
                // A lazy volume of an earlier run of the plugin, its FUSE server gone.
                bind::detach(&target)
                    .map_err(|e| Refused::io("cannot unmount the dead volume at", path, e))?;
                known = true;
                target.reopen()?;
            }
            known |= unmounted > 0;
            let foreign = is_mount_point(path);
            let removed = !foreign
                && target
                    .remove_if_empty()
                    .map_err(|e| Refused::io("cannot remove", path, e))?;
            if !known && !removed {
                return Err(Refused::Unknown(format!(
                    "volume {id} is not published at {}, which holds something else: left as it is",
                    path.display()
                )));
            }
        }
        if !known {
            return Ok(()); // unpublished already: the spec's idempotent answer
        }
        forget_target(&folder, path);
        if self.live_targets(&folder, &model) > 0 {
            tracing::info!("volume {id}: other targets still use its folder");
            return Ok(());
        }
        drop(mounts);
        self.stop_pull(id).await;
        let _mounts = self.mounts.lock().expect("mounts lock");
        if self.live_targets(&folder, &model) > 0 {
            return Ok(()); // published again meanwhile
        }
        match std::fs::remove_dir_all(&folder) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(Refused::io("cannot remove the volume's folder", &folder, e)),
        }
    }

    /// How many recorded targets still hold the volume's bind mount; the records of those
    /// that no longer do (kubelet tore them down while the plugin was away) are dropped.
    fn live_targets(&self, folder: &Path, model: &Path) -> usize {
        recorded_targets(folder)
            .into_iter()
            .filter(|(record, path)| {
                let live = matches!(
                    TargetDir::open(&self.pods, path, false),
                    Ok(Some(t)) if bind::holds(&t, model)
                );
                if !live {
                    let _ = std::fs::remove_file(record);
                }
                live
            })
            .count()
    }
}

/// Is there a mount at `path` (read from the mount table, never by touching it)?
fn is_mount_point(path: &Path) -> bool {
    crate::fsutil::is_mount_point(path).unwrap_or(false)
}

/// A FUSE mount of `hoist mount` at `path` (its source is `hoist:REFERENCE`).
fn is_dead_lazy_mount(path: &Path) -> bool {
    crate::fsutil::mount_table()
        .unwrap_or_default()
        .iter()
        .any(|m| m.point == path && m.fstype.starts_with("fuse") && m.source.starts_with("hoist:"))
}

/// The folder keeps one file per target it is mounted at, so it outlives each but the last,
/// across restarts of the plugin.
fn target_record(folder: &Path, target: &Path) -> PathBuf {
    let hex = Digest::of_bytes(target.as_os_str().as_encoded_bytes())
        .hex()
        .to_string();
    folder.join("targets").join(&hex[..32])
}

fn record_target(folder: &Path, target: &Path) -> std::io::Result<()> {
    let record = target_record(folder, target);
    std::fs::create_dir_all(record.parent().expect("in targets/"))?;
    crate::fsutil::write_atomic(
        &record,
        target.as_os_str().as_encoded_bytes(),
        crate::fsutil::Replace::DURABLE,
    )
}

fn forget_target(folder: &Path, target: &Path) {
    let _ = std::fs::remove_file(target_record(folder, target));
}

/// The recorded targets: (record file, target path).
fn recorded_targets(folder: &Path) -> Vec<(PathBuf, PathBuf)> {
    let Ok(entries) = std::fs::read_dir(folder.join("targets")) else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| {
            let bytes = std::fs::read(e.path()).ok()?;
            let path = PathBuf::from(std::ffi::OsString::from(
                <std::ffi::OsStr as std::os::unix::ffi::OsStrExt>::from_bytes(&bytes),
            ));
            Some((e.path(), path))
        })
        .collect()
}
