//! The thin `fuser` adapter: translate kernel requests into [`Vfs`] calls and errors into errnos.
//! File reads go through FUSE passthrough (the kernel reads the backing file itself) where the
//! kernel and the medium allow it, and through [`Vfs::read`] otherwise.

use crate::error::Error;
use crate::vfs::{Attr, Vfs};
use fsimpl::Kind;
use fuser::{
    BackingId, BsdFileFlags, Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags,
    Generation, INodeNo, InitFlags, IoctlFlags, KernelConfig, LockOwner, OpenAccMode, OpenFlags,
    RenameFlags, ReplyAttr, ReplyCreate, ReplyData, ReplyDirectory, ReplyDirectoryPlus, ReplyEmpty,
    ReplyEntry, ReplyIoctl, ReplyOpen, ReplyStatfs, ReplyWrite, ReplyXattr, Request, TimeOrNow,
    WriteFlags,
};
use parking_lot::Mutex;
use std::collections::HashMap;
use std::ffi::OsStr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;
use std::time::SystemTime;

/// How long the kernel may cache names and attributes: the File-set does not change under a
/// read-only mount. A writable one changes by side effect (a copied-in name disappears from
/// listings, a File ID directory appears), so the kernel asks again after a second.
const TTL_RO: Duration = Duration::from_secs(60);
const TTL_RW: Duration = Duration::from_secs(1);

/// One backing file per inode while it is open (FUSE passthrough).
#[derive(Default)]
struct Backing {
    by_fh: HashMap<u64, Arc<BackingId>>,
    by_ino: HashMap<u64, Weak<BackingId>>,
}

pub struct FuseFs {
    vfs: Vfs,
    passthrough: AtomicBool,
    want_passthrough: bool,
    backing: Mutex<Backing>,
    next_fh: AtomicU64,
    /// Handles open for writing (files being copied in), with their passthrough backing file.
    writers: Mutex<HashMap<u64, Option<BackingId>>>,
    ttl: Duration,
    uid: u32,
    gid: u32,
}

impl FuseFs {
    pub fn new(vfs: Vfs, want_passthrough: bool) -> FuseFs {
        // SAFETY: getuid/getgid cannot fail.
        let (uid, gid) = unsafe { (libc::getuid(), libc::getgid()) };
        let ttl = if vfs.writable() { TTL_RW } else { TTL_RO };
        if vfs.writable() {
            crate::fsu::spawn_committer(vfs.live());
        }
        FuseFs {
            vfs,
            passthrough: AtomicBool::new(false),
            want_passthrough,
            backing: Mutex::new(Backing::default()),
            next_fh: AtomicU64::new(1),
            writers: Mutex::new(HashMap::new()),
            ttl,
            uid,
            gid,
        }
    }

    /// A handle for writing, registered before the kernel hears of it: its flush and release
    /// may come on other threads as soon as the reply is sent.
    fn new_writer(&self) -> u64 {
        let fh = self.next_fh.fetch_add(1, Ordering::Relaxed);
        self.writers.lock().insert(fh, None);
        fh
    }

    /// Keep a handle's backing file open until its release (unless that came already).
    fn keep_backing(&self, fh: u64, id: Option<BackingId>) {
        if let Some(slot) = self.writers.lock().get_mut(&fh) {
            *slot = id;
        }
    }

    /// A writable backing file for a file being copied in, so the kernel writes its bytes
    /// straight to the staged file (FUSE passthrough); `None` to take writes in the daemon.
    fn write_backing(
        &self,
        ino: u64,
        open: impl FnOnce(&std::fs::File) -> std::io::Result<BackingId>,
    ) -> Option<BackingId> {
        if !self.passthrough.load(Ordering::Relaxed) {
            return None;
        }
        let path = self.vfs.staged_path(ino)?;
        match self.vfs.medium().backing_file(&path, true)? {
            Ok(f) => open(&f)
                .map_err(|e| {
                    log::info!("{path}: passthrough refused ({e}); writes go through the daemon")
                })
                .ok(),
            Err(e) => {
                log::warn!("{path}: {e}");
                None
            }
        }
    }

    fn attr(&self, a: &Attr) -> FileAttr {
        FileAttr {
            ino: INodeNo(a.ino),
            size: a.size,
            blocks: a.size.div_ceil(512),
            atime: a.atime,
            mtime: a.mtime,
            ctime: a.ctime,
            crtime: a.mtime,
            kind: kind(a.kind),
            perm: a.perm,
            nlink: a.nlink,
            uid: self.uid,
            gid: self.gid,
            rdev: 0,
            // What a host filesystem reports (and the kernel's default for FUSE). Tools size
            // their buffers by it: 1 MiB made `cat` fault in a fresh 1 MiB buffer per file and
            // read 10,000 small files at a third of the native rate.
            blksize: 4096,
            flags: 0,
        }
    }
}

fn kind(k: Kind) -> FileType {
    match k {
        Kind::Dir => FileType::Directory,
        Kind::File => FileType::RegularFile,
    }
}

fn errno(e: &Error) -> Errno {
    e.log();
    Errno::from_i32(e.errno())
}

fn name_of(name: &OsStr) -> Result<&str, Errno> {
    name.to_str().ok_or_else(|| {
        log::warn!("{name:?}: names must be UTF-8");
        Errno::EINVAL
    })
}

fn done(r: crate::error::Result<()>, reply: ReplyEmpty) {
    match r {
        Ok(()) => reply.ok(),
        Err(e) => reply.error(errno(&e)),
    }
}

fn time(t: TimeOrNow) -> SystemTime {
    match t {
        TimeOrNow::SpecificTime(t) => t,
        TimeOrNow::Now => SystemTime::now(),
    }
}

impl Filesystem for FuseFs {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        let _ = config.set_max_readahead(1 << 20);
        let _ = config.set_max_write(1 << 20);
        if self.want_passthrough
            && config.add_capabilities(InitFlags::FUSE_PASSTHROUGH).is_ok()
            && config.set_max_stack_depth(2).is_ok()
        {
            self.passthrough.store(true, Ordering::Relaxed);
            log::debug!("FUSE passthrough enabled");
        } else {
            log::info!("FUSE passthrough not available: reads go through the daemon");
        }
        let _ = config.add_capabilities(InitFlags::FUSE_PARALLEL_DIROPS);
        // O_TRUNC arrives with the open, so `cp` onto a ghost re-stages the name instead of
        // a separate truncate of a file that is no longer being copied.
        let _ = config.add_capabilities(InitFlags::FUSE_ATOMIC_O_TRUNC);
        // Listings carry attributes, so `find`/`ls -l` need no lookup per entry.
        let _ = config.add_capabilities(InitFlags::FUSE_DO_READDIRPLUS);
        Ok(())
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let Some(name) = name.to_str() else {
            return reply.error(Errno::ENOENT);
        };
        match self.vfs.lookup(parent.0, name) {
            Ok(a) => reply.entry(&self.ttl, &self.attr(&a), Generation(0)),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        match self.vfs.getattr(ino.0) {
            Ok(a) => reply.attr(&self.ttl, &self.attr(&a)),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        if flags.acc_mode() != OpenAccMode::O_RDONLY || flags.0 & libc::O_TRUNC != 0 {
            if let Err(e) = self.vfs.open_write(ino.0, flags.0 & libc::O_TRUNC != 0) {
                return reply.error(errno(&e));
            }
            let fh = self.new_writer();
            let id = self.write_backing(ino.0, |f| reply.open_backing(f));
            match &id {
                Some(id) => reply.opened_passthrough(FileHandle(fh), FopenFlags::empty(), id),
                None => reply.opened(FileHandle(fh), FopenFlags::empty()),
            }
            return self.keep_backing(fh, id);
        }
        let path = match self.vfs.file_path(ino.0) {
            Ok(p) => p,
            Err(e) => return reply.error(errno(&e)),
        };
        let fh = self.next_fh.fetch_add(1, Ordering::Relaxed);
        if self.passthrough.load(Ordering::Relaxed) {
            let mut b = self.backing.lock();
            let existing = b.by_ino.get(&ino.0).and_then(Weak::upgrade);
            let id = match existing {
                Some(id) => Some(id),
                None => {
                    match self.vfs.medium().backing_file(&path, false) {
                        Some(Ok(file)) => match reply.open_backing(&file) {
                            Ok(id) => {
                                let id = Arc::new(id);
                                b.by_ino.insert(ino.0, Arc::downgrade(&id));
                                Some(id)
                            }
                            Err(e) => {
                                log::info!("{path}: passthrough refused ({e}); serving reads from the daemon");
                                None
                            }
                        },
                        Some(Err(e)) => return reply.error(errno(&Error::medium(path, e))),
                        None => None,
                    }
                }
            };
            if let Some(id) = id {
                b.by_fh.insert(fh, id.clone());
                return reply.opened_passthrough(FileHandle(fh), FopenFlags::empty(), &id);
            }
        }
        // Instance files never change; the DICOMDIR and files being copied in do.
        let keep = !self.vfs.writable() || (self.vfs.is_native_file(ino.0) && ino.0 != 2);
        reply.opened(
            FileHandle(fh),
            if keep {
                FopenFlags::FOPEN_KEEP_CACHE
            } else {
                FopenFlags::empty()
            },
        )
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
        match self.vfs.read(ino.0, offset, size as usize) {
            Ok(d) => reply.data(&d),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn release(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        if self.writers.lock().remove(&fh.0).is_some() {
            // Normally ingested at flush (close); a handle released without one is taken now.
            if let Err(e) = self.vfs.flush(ino.0) {
                e.log();
            }
            return reply.ok();
        }
        let mut b = self.backing.lock();
        if b.by_fh.remove(&fh.0).is_some()
            && b.by_ino.get(&ino.0).is_some_and(|w| w.strong_count() == 0)
        {
            b.by_ino.remove(&ino.0);
        }
        reply.ok();
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        match self.vfs.getattr(ino.0) {
            Ok(a) if a.kind == Kind::Dir => reply.opened(
                FileHandle(0),
                if self.vfs.writable() {
                    FopenFlags::empty()
                } else {
                    FopenFlags::FOPEN_CACHE_DIR | FopenFlags::FOPEN_KEEP_CACHE
                },
            ),
            Ok(_) => reply.error(Errno::ENOTDIR),
            Err(e) => reply.error(errno(&e)),
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
        // Offsets: 1 and 2 are "." and "..", entry i of the listing is i + 3.
        let mut off = offset as usize;
        if off == 0 {
            if reply.add(ino, 1, FileType::Directory, ".") {
                return reply.ok();
            }
            off = 1;
        }
        if off == 1 {
            if reply.add(ino, 2, FileType::Directory, "..") {
                return reply.ok();
            }
            off = 2;
        }
        let r = self.vfs.readdir_with(ino.0, off - 2, |i, name, child, k| {
            reply.add(INodeNo(child), (i + 3) as u64, kind(k), name)
        });
        if let Err(e) = r {
            return reply.error(errno(&e));
        }
        reply.ok();
    }

    fn readdirplus(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectoryPlus,
    ) {
        let me = match self.vfs.getattr(ino.0) {
            Ok(a) => self.attr(&a),
            Err(e) => return reply.error(errno(&e)),
        };
        // Offsets as in readdir. The kernel takes no attributes from "." and "..".
        let mut off = offset as usize;
        for (o, dot) in [(1usize, "."), (2, "..")] {
            if off == o - 1 {
                if reply.add(ino, o as u64, dot, &self.ttl, &me, Generation(0)) {
                    return reply.ok();
                }
                off = o;
            }
        }
        // Entries whose attributes cannot be read are left out. An empty reply means the end of
        // the directory to the kernel, so go on to the next chunk until an entry was added.
        let mut next = off - 2;
        loop {
            let mut entries = Vec::new();
            let r = self.vfs.readdir_with(ino.0, next, |i, name, child, _| {
                entries.push((i, name.to_string(), child));
                entries.len() >= 256
            });
            if let Err(e) = r {
                return reply.error(errno(&e));
            }
            let Some(&(last, _, _)) = entries.last() else {
                break;
            };
            next = last + 1;
            let mut added = false;
            for (i, name, child) in entries {
                let a = match self.vfs.getattr(child) {
                    Ok(a) => self.attr(&a),
                    Err(e) => {
                        e.log();
                        continue;
                    }
                };
                if reply.add(
                    INodeNo(child),
                    (i + 3) as u64,
                    name,
                    &self.ttl,
                    &a,
                    Generation(0),
                ) {
                    return reply.ok();
                }
                added = true;
            }
            if added {
                break;
            }
        }
        reply.ok();
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        match self.vfs.statfs() {
            Ok(s) => reply.statfs(
                s.blocks,
                s.blocks_free,
                s.blocks_avail,
                s.files,
                s.files_free,
                s.block_size,
                s.name_max,
                s.block_size,
            ),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn access(&self, _req: &Request, ino: INodeNo, mask: fuser::AccessFlags, reply: ReplyEmpty) {
        if mask.bits() & libc::W_OK != 0 && !self.vfs.writable() {
            return reply.error(Errno::EROFS);
        }
        match self.vfs.getattr(ino.0) {
            Ok(_) => reply.ok(),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn mkdir(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        _mode: u32,
        _umask: u32,
        reply: ReplyEntry,
    ) {
        let name = match name_of(name) {
            Ok(n) => n,
            Err(e) => return reply.error(e),
        };
        match self.vfs.mkdir(parent.0, name) {
            Ok(a) => reply.entry(&self.ttl, &self.attr(&a), Generation(0)),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        match name_of(name) {
            Ok(n) => done(self.vfs.unlink(parent.0, n), reply),
            Err(e) => reply.error(e),
        }
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        match name_of(name) {
            Ok(n) => done(self.vfs.rmdir(parent.0, n), reply),
            Err(e) => reply.error(e),
        }
    }

    fn rename(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        _flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        match (name_of(name), name_of(newname)) {
            (Ok(a), Ok(b)) => done(self.vfs.rename(parent.0, a, newparent.0, b), reply),
            (Err(e), _) | (_, Err(e)) => reply.error(e),
        }
    }

    fn create(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        _mode: u32,
        _umask: u32,
        _flags: i32,
        reply: ReplyCreate,
    ) {
        let name = match name_of(name) {
            Ok(n) => n,
            Err(e) => return reply.error(e),
        };
        match self.vfs.create(parent.0, name) {
            Ok(a) => {
                let fh = self.new_writer();
                let id = self.write_backing(a.ino, |f| reply.open_backing(f));
                match &id {
                    Some(id) => reply.created_passthrough(
                        &self.ttl,
                        &self.attr(&a),
                        Generation(0),
                        FileHandle(fh),
                        FopenFlags::empty(),
                        id,
                    ),
                    None => reply.created(
                        &self.ttl,
                        &self.attr(&a),
                        Generation(0),
                        FileHandle(fh),
                        FopenFlags::empty(),
                    ),
                }
                self.keep_backing(fh, id);
            }
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn write(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        match self.vfs.write(ino.0, offset, data) {
            Ok(n) => reply.written(n as u32),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn flush(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        if self.writers.lock().contains_key(&fh.0) {
            return done(self.vfs.flush(ino.0), reply);
        }
        reply.ok()
    }

    fn setattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        _mode: Option<u32>,
        _uid: Option<u32>,
        _gid: Option<u32>,
        size: Option<u64>,
        _atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        _fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        if !self.vfs.writable() && size.is_some() {
            return reply.error(Errno::EROFS);
        }
        match self.vfs.setattr(ino.0, size, mtime.map(time)) {
            Ok(a) => reply.attr(&self.ttl, &self.attr(&a)),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn fsync(&self, _req: &Request, _ino: INodeNo, _fh: FileHandle, _ds: bool, reply: ReplyEmpty) {
        done(self.vfs.sync(), reply)
    }

    fn fsyncdir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _ds: bool,
        reply: ReplyEmpty,
    ) {
        done(self.vfs.sync(), reply)
    }

    fn getxattr(&self, _req: &Request, _ino: INodeNo, _n: &OsStr, _s: u32, reply: ReplyXattr) {
        // ENOSYS once makes the kernel stop asking (no extended attributes here).
        reply.error(Errno::ENOSYS)
    }

    fn listxattr(&self, _req: &Request, _ino: INodeNo, _s: u32, reply: ReplyXattr) {
        reply.error(Errno::ENOSYS)
    }

    #[allow(clippy::too_many_arguments)]
    fn ioctl(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _flags: IoctlFlags,
        _cmd: u32,
        _in_data: &[u8],
        _out_size: u32,
        reply: ReplyIoctl,
    ) {
        reply.error(Errno::ENOTTY)
    }

    fn destroy(&mut self) {
        if let Err(e) = self.vfs.live().close() {
            e.log();
        }
    }
}
