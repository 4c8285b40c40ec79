//! The FUSE side: lookups and attributes from the tree, reads from the chunk store. A read
//! whose chunks are not local asks the scheduler for them (ahead of the prefetch) and waits.

use std::ffi::OsStr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use fuser::{
    Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation, INodeNo,
    KernelConfig, LockOwner, OpenFlags, ReplyAttr, ReplyData, ReplyDirectory, ReplyEntry,
    ReplyOpen, Request,
};

use super::chunks::{ChunkState, ReadFailure};
use super::prefetch::Scheduler;
use super::tree::{NodeKind, Tree};

/// The artifact is immutable: the kernel may cache names and attributes for long.
const TTL: Duration = Duration::from_secs(3600);

pub struct ModelFs {
    pub tree: Tree,
    pub scheduler: Arc<Scheduler>,
    pub verify_before_read: bool,
    /// A read waits this long for its chunks before failing with EIO.
    pub read_timeout: Duration,
    pub mtime: SystemTime,
    pub uid: u32,
    pub gid: u32,
    /// Blobs whose unverified bytes were already reported in the log.
    warned_unverified: std::sync::Mutex<std::collections::HashSet<usize>>,
    /// Files inside tar layers whose header was found as the tree says.
    headers_checked: std::sync::Mutex<std::collections::HashSet<u64>>,
}

impl ModelFs {
    pub fn new(
        tree: Tree,
        scheduler: Arc<Scheduler>,
        verify_before_read: bool,
        read_timeout: Duration,
    ) -> ModelFs {
        let (uid, gid) = (
            rustix::process::getuid().as_raw(),
            rustix::process::getgid().as_raw(),
        );
        ModelFs {
            tree,
            scheduler,
            verify_before_read,
            read_timeout,
            mtime: SystemTime::now(),
            uid,
            gid,
            warned_unverified: Default::default(),
            headers_checked: Default::default(),
        }
    }

    fn attr(&self, ino: u64) -> Option<FileAttr> {
        let node = self.tree.get(ino)?;
        let (kind, size, perm, nlink) = match &node.kind {
            NodeKind::Dir { children } => {
                let is_dir = |c: &u64| {
                    matches!(
                        self.tree.get(*c).map(|n| &n.kind),
                        Some(NodeKind::Dir { .. })
                    )
                };
                let subdirs = children.values().filter(|c| is_dir(c)).count();
                (FileType::Directory, 0, 0o555, 2 + subdirs as u32)
            }
            NodeKind::File { size, mode, .. } => {
                (FileType::RegularFile, *size, (*mode & 0o555) as u16, 1)
            }
        };
        Some(FileAttr {
            ino: INodeNo(ino),
            size,
            blocks: size.div_ceil(512),
            atime: self.mtime,
            mtime: self.mtime,
            ctime: self.mtime,
            crtime: self.mtime,
            kind,
            perm,
            nlink,
            uid: self.uid,
            gid: self.gid,
            rdev: 0,
            flags: 0,
            blksize: 1 << 20,
        })
    }

    /// Serve `size` bytes at `offset` of the file `ino`, which is `len` bytes of blob `b`
    /// from `start`. A file inside a tar (an image-volume layer) is served only once the
    /// header in front of it says what the tree does: this file, this size, data right there.
    fn read_file(
        &self,
        ino: u64,
        b: usize,
        (start, len): (u64, u64),
        offset: u64,
        size: u32,
    ) -> Result<Vec<u8>, Errno> {
        if offset >= len {
            return Ok(Vec::new());
        }
        if start > 0 {
            self.check_tar_header(ino, b, start, len)?;
        }
        let size = (len - offset).min(u64::from(size)) as u32;
        self.read_blob(b, start + offset, size)
    }

    fn check_tar_header(&self, ino: u64, b: usize, start: u64, len: u64) -> Result<(), Errno> {
        if self
            .headers_checked
            .lock()
            .expect("header set")
            .contains(&ino)
        {
            return Ok(());
        }
        let head = self.read_blob(b, 0, start as u32)?;
        let path = self.tree.path_of(ino);
        let found = tar::Archive::new(&head[..])
            .entries()
            .ok()
            .and_then(|mut entries| entries.next()?.ok())
            .map(|entry| {
                entry.header().entry_type().is_file()
                    && entry.size() == len
                    && entry.raw_file_position() == start
                    && entry
                        .path()
                        .ok()
                        .and_then(|p| p.to_str().map(str::to_owned))
                        == Some(path.clone())
            });
        if found != Some(true) {
            tracing::error!(
                "mount: EIO: the tar header of {path} does not describe {len} bytes of {path} at byte {start} of {}",
                self.scheduler.blobs[b].name
            );
            return Err(Errno::EIO);
        }
        self.headers_checked.lock().expect("header set").insert(ino);
        Ok(())
    }

    /// Serve `size` bytes of blob `b` at `offset`, fetching what is missing.
    fn read_blob(&self, b: usize, offset: u64, size: u32) -> Result<Vec<u8>, Errno> {
        let blob = &self.scheduler.blobs[b];
        if offset >= blob.desc.size {
            return Ok(Vec::new());
        }
        let end = (offset + size as u64).min(blob.desc.size);
        let first = (offset / blob.chunk_size) as usize;
        let last = ((end - 1) / blob.chunk_size) as usize;
        let started = Instant::now();
        let mut waited = false;
        if self.verify_before_read && !blob.is_verified() {
            // The read waits for the whole blob: ask for all of it, not only its own chunks
            // (without prefetch nobody else would).
            for c in 0..blob.chunks() {
                if matches!(
                    blob.chunk_state(c),
                    ChunkState::Missing | ChunkState::Failed
                ) {
                    self.scheduler.urgent(b, c);
                }
            }
        }
        for c in first..=last {
            let ask = || self.scheduler.urgent(b, c);
            match blob.wait_chunk(c, self.verify_before_read, self.read_timeout, ask) {
                Ok(w) => waited |= w,
                Err(failure) => {
                    self.scheduler
                        .stats
                        .read_errors
                        .fetch_add(1, Ordering::Relaxed);
                    match failure {
                        ReadFailure::Corrupt(why) => tracing::error!("mount: EIO: {why}"),
                        ReadFailure::Fetch(why) => {
                            tracing::error!("mount: EIO reading {}: {why}", blob.name)
                        }
                        ReadFailure::TimedOut => tracing::error!(
                            "mount: EIO reading {}: no data after {:?}",
                            blob.name,
                            self.read_timeout
                        ),
                    }
                    return Err(Errno::EIO);
                }
            }
        }
        let data = blob.read_at(offset, (end - offset) as usize).map_err(|e| {
            tracing::error!("mount: reading the chunk store for {}: {e}", blob.name);
            Errno::EIO
        })?;
        let verified = blob.is_verified();
        if !verified && self.warned_unverified.lock().expect("warned set").insert(b) {
            tracing::warn!(
                "mount: serving {} before its digest is verified (it is checked as soon as the blob is complete; --verify-before-read waits for that)",
                blob.name
            );
        }
        self.scheduler.stats.served(
            data.len() as u64,
            waited.then(|| started.elapsed()),
            verified,
        );
        Ok(data)
    }
}

impl Filesystem for ModelFs {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        let _ = config.set_max_readahead(1 << 20);
        Ok(())
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let found = name
            .to_str()
            .and_then(|n| self.tree.child(parent.0, n))
            .and_then(|ino| self.attr(ino));
        match found {
            Some(attr) => reply.entry(&TTL, &attr, Generation(0)),
            None => reply.error(Errno::ENOENT),
        }
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        match self.attr(ino.0) {
            Some(attr) => reply.attr(&TTL, &attr),
            None => reply.error(Errno::ENOENT),
        }
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        match self.tree.get(ino.0).map(|n| &n.kind) {
            Some(NodeKind::File { blob, .. }) => {
                if flags.0 & libc::O_ACCMODE != libc::O_RDONLY {
                    reply.error(Errno::EROFS);
                } else if self.scheduler.blobs[*blob].is_verified() {
                    // Verified bytes never change: keep the page cache across opens.
                    reply.opened(FileHandle(0), FopenFlags::FOPEN_KEEP_CACHE);
                } else {
                    // Not verified yet: each open drops cached pages, so once a blob turns
                    // out corrupt no new open is served from the kernel's cache.
                    reply.opened(FileHandle(0), FopenFlags::empty());
                }
            }
            Some(NodeKind::Dir { .. }) => reply.error(Errno::EISDIR),
            None => reply.error(Errno::ENOENT),
        }
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        match self.tree.get(ino.0).map(|n| &n.kind) {
            Some(&NodeKind::File {
                blob,
                size: len,
                start,
                ..
            }) => match self.read_file(ino.0, blob, (start, len), offset, size) {
                Ok(data) => reply.data(&data),
                Err(e) => reply.error(e),
            },
            Some(NodeKind::Dir { .. }) => reply.error(Errno::EISDIR),
            None => reply.error(Errno::ENOENT),
        }
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        let Some(node) = self.tree.get(ino.0) else {
            return reply.error(Errno::ENOENT);
        };
        let NodeKind::Dir { children } = &node.kind else {
            return reply.error(Errno::ENOTDIR);
        };
        let mut entries: Vec<(u64, FileType, &str)> = vec![
            (ino.0, FileType::Directory, "."),
            (node.parent, FileType::Directory, ".."),
        ];
        for (name, &child) in children {
            let kind = match self.tree.get(child).map(|n| &n.kind) {
                Some(NodeKind::Dir { .. }) => FileType::Directory,
                _ => FileType::RegularFile,
            };
            entries.push((child, kind, name));
        }
        for (i, (child, kind, name)) in entries.into_iter().enumerate().skip(offset as usize) {
            if reply.add(INodeNo(child), (i + 1) as u64, kind, name) {
                break;
            }
        }
        reply.ok();
    }
}
