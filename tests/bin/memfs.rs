//! Benchmark reference for scripts/bench.sh: the smallest FUSE filesystem that serves one file,
//! `BIG`, from memory (random bytes), with the FUSE settings dicomfs uses (1 MiB read-ahead,
//! 4 threads). What a FUSE daemon that does no I/O at all reaches bounds what dicomfs reading a
//! FAT image through the daemon can reach on the same machine.
//!
//!     memfs MOUNTPOINT [SIZE_MIB]     (foreground; stop it with umount MOUNTPOINT)

use fuser::{
    Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation, INodeNo,
    KernelConfig, LockOwner, OpenFlags, ReplyAttr, ReplyData, ReplyDirectory, ReplyEntry,
    ReplyOpen, Request,
};
use std::ffi::OsStr;
use std::time::{Duration, SystemTime};

struct MemFs {
    data: Vec<u8>,
}

const TTL: Duration = Duration::from_secs(60);

fn attr(ino: u64, size: u64, dir: bool) -> FileAttr {
    let t = SystemTime::UNIX_EPOCH;
    FileAttr {
        ino: INodeNo(ino),
        size,
        blocks: size.div_ceil(512),
        atime: t,
        mtime: t,
        ctime: t,
        crtime: t,
        kind: if dir {
            FileType::Directory
        } else {
            FileType::RegularFile
        },
        perm: if dir { 0o555 } else { 0o444 },
        nlink: if dir { 2 } else { 1 },
        uid: 0,
        gid: 0,
        rdev: 0,
        blksize: 4096,
        flags: 0,
    }
}

impl Filesystem for MemFs {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        let _ = config.set_max_readahead(1 << 20);
        Ok(())
    }
    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        if parent.0 == 1 && name == "BIG" {
            reply.entry(&TTL, &attr(2, self.data.len() as u64, false), Generation(0))
        } else {
            reply.error(Errno::ENOENT)
        }
    }
    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        match ino.0 {
            1 => reply.attr(&TTL, &attr(1, 0, true)),
            2 => reply.attr(&TTL, &attr(2, self.data.len() as u64, false)),
            _ => reply.error(Errno::ENOENT),
        }
    }
    fn open(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        if ino.0 == 2 {
            reply.opened(FileHandle(0), FopenFlags::empty())
        } else {
            reply.error(Errno::EISDIR)
        }
    }
    fn read(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        let start = (offset as usize).min(self.data.len());
        let end = start.saturating_add(size as usize).min(self.data.len());
        reply.data(&self.data[start..end])
    }
    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        let entries = [
            (1, FileType::Directory, "."),
            (1, FileType::Directory, ".."),
            (2, FileType::RegularFile, "BIG"),
        ];
        if ino.0 != 1 {
            return reply.error(Errno::ENOTDIR);
        }
        for (i, (n, k, name)) in entries.iter().enumerate().skip(offset as usize) {
            if reply.add(INodeNo(*n), i as u64 + 1, *k, name) {
                break;
            }
        }
        reply.ok()
    }
}

fn main() {
    let mut args = std::env::args().skip(1);
    let mnt = args.next().expect("usage: memfs MOUNTPOINT [SIZE_MIB]");
    let mib: usize = args
        .next()
        .map(|s| s.parse().expect("SIZE_MIB"))
        .unwrap_or(1024);
    // xorshift bytes: nothing a compressing or deduplicating layer could flatter.
    let mut data = vec![0u8; mib << 20];
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    for c in data.chunks_mut(8) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        c.copy_from_slice(&x.to_le_bytes()[..c.len()]);
    }
    let mut cfg = fuser::Config::default();
    cfg.mount_options = vec![
        fuser::MountOption::FSName("memfs".into()),
        fuser::MountOption::RO,
    ];
    cfg.n_threads = Some(4);
    cfg.clone_fd = true;
    let session = fuser::Session::new(MemFs { data }, &mnt, &cfg).expect("mount");
    session.run().expect("session");
}
