//! The host-directory medium: a File-set stored in a directory of the host filesystem.

use crate::{check_path, DirEntry, Kind, Medium, Stat, StatFs};
use std::ffi::CString;
use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// How many open file handles the medium keeps for repeated reads.
const OPEN_CACHE: usize = 64;

/// A medium backed by a host directory.
pub struct HostDir {
    root: PathBuf,
    /// Small cache of open read handles, most recent last (reads of one file come in runs).
    open: Mutex<Vec<(String, std::sync::Arc<File>)>>,
    /// The same for write handles (the DICOMDIR is written a few times per copy-in).
    open_rw: Mutex<Vec<(String, std::sync::Arc<File>)>>,
}

impl HostDir {
    /// Open a host directory as a medium. Fails if it is not a directory.
    pub fn open(root: impl AsRef<Path>) -> io::Result<HostDir> {
        let root = fs::canonicalize(root.as_ref())?;
        if !fs::metadata(&root)?.is_dir() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{} is not a directory", root.display()),
            ));
        }
        Ok(HostDir {
            root,
            open: Mutex::new(Vec::new()),
            open_rw: Mutex::new(Vec::new()),
        })
    }

    /// The host path of the medium root.
    pub fn root(&self) -> &Path {
        &self.root
    }

    fn host(&self, path: &str) -> io::Result<PathBuf> {
        check_path(path)?;
        Ok(if path.is_empty() {
            self.root.clone()
        } else {
            self.root.join(path)
        })
    }

    fn reader(&self, path: &str) -> io::Result<std::sync::Arc<File>> {
        self.cached(&self.open, path, false)
    }

    fn cached(
        &self,
        cache: &Mutex<Vec<(String, std::sync::Arc<File>)>>,
        path: &str,
        write: bool,
    ) -> io::Result<std::sync::Arc<File>> {
        let mut open = cache.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(i) = open.iter().position(|(p, _)| p == path) {
            let e = open.remove(i);
            let f = e.1.clone();
            open.push(e);
            return Ok(f);
        }
        let f = std::sync::Arc::new(
            OpenOptions::new()
                .read(true)
                .write(write)
                .open(self.host(path)?)?,
        );
        if open.len() >= if write { 8 } else { OPEN_CACHE } {
            open.remove(0);
        }
        open.push((path.to_string(), f.clone()));
        Ok(f)
    }

    fn forget(&self, path: &str) {
        let below = format!("{path}/");
        for cache in [&self.open, &self.open_rw] {
            let mut open = cache.lock().unwrap_or_else(|e| e.into_inner());
            open.retain(|(p, _)| p != path && !p.starts_with(&below));
        }
    }
}

fn time(secs: i64, nsec: i64) -> SystemTime {
    if secs >= 0 {
        UNIX_EPOCH + Duration::new(secs as u64, nsec.clamp(0, 999_999_999) as u32)
    } else {
        UNIX_EPOCH
    }
}

fn stat_of(md: &fs::Metadata) -> Stat {
    use std::os::unix::fs::MetadataExt;
    Stat {
        kind: if md.is_dir() { Kind::Dir } else { Kind::File },
        size: if md.is_dir() { 0 } else { md.len() },
        mtime: time(md.mtime(), md.mtime_nsec()),
        atime: time(md.atime(), md.atime_nsec()),
        ctime: time(md.ctime(), md.ctime_nsec()),
    }
}

impl Medium for HostDir {
    fn describe(&self) -> String {
        format!("host directory {}", self.root.display())
    }

    fn read_at(&self, path: &str, offset: u64, buf: &mut [u8]) -> io::Result<usize> {
        let f = self.reader(path)?;
        let mut done = 0;
        while done < buf.len() {
            match f.read_at(&mut buf[done..], offset + done as u64) {
                Ok(0) => break,
                Ok(n) => done += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(done)
    }

    fn write_at(&self, path: &str, offset: u64, data: &[u8]) -> io::Result<()> {
        self.cached(&self.open_rw, path, true)?
            .write_all_at(data, offset)
    }

    fn create(&self, path: &str) -> io::Result<()> {
        OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(self.host(path)?)
            .map(|_| ())
    }

    fn mkdir(&self, path: &str) -> io::Result<()> {
        fs::create_dir(self.host(path)?)
    }

    fn truncate(&self, path: &str, size: u64) -> io::Result<()> {
        OpenOptions::new()
            .write(true)
            .open(self.host(path)?)?
            .set_len(size)
    }

    fn remove(&self, path: &str) -> io::Result<()> {
        self.forget(path);
        fs::remove_file(self.host(path)?)
    }

    fn rmdir(&self, path: &str) -> io::Result<()> {
        self.forget(path);
        fs::remove_dir(self.host(path)?)
    }

    fn rename(&self, from: &str, to: &str) -> io::Result<()> {
        self.forget(from);
        self.forget(to);
        fs::rename(self.host(from)?, self.host(to)?)
    }

    fn list(&self, dir: &str) -> io::Result<Vec<DirEntry>> {
        let mut out = Vec::new();
        for e in fs::read_dir(self.host(dir)?)? {
            let e = e?;
            let ft = e.file_type()?;
            // Follow symlinks the way a reader of the medium would.
            let kind = if ft.is_dir() || (ft.is_symlink() && e.path().is_dir()) {
                Kind::Dir
            } else if ft.is_file() || ft.is_symlink() {
                Kind::File
            } else {
                continue; // sockets, fifos, devices are not files of a File-set
            };
            match e.file_name().into_string() {
                Ok(name) => out.push(DirEntry { name, kind }),
                Err(n) => log::warn!(
                    "{}: skipping a name that is not UTF-8: {:?}",
                    self.root.join(dir).display(),
                    n
                ),
            }
        }
        // A host directory's own order is its hash order, unrelated to where the files lie;
        // File IDs are given in sequence, so name order is usually the order they were
        // written in, and reading a listing in turn reads the disk front to back.
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    fn stat(&self, path: &str) -> io::Result<Stat> {
        Ok(stat_of(&fs::metadata(self.host(path)?)?))
    }

    fn statfs(&self) -> io::Result<StatFs> {
        let c = CString::new(self.root.as_os_str().as_bytes())
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        let mut s: libc::statvfs = unsafe { std::mem::zeroed() };
        // SAFETY: c is a valid NUL-terminated path and s a properly sized out-parameter.
        if unsafe { libc::statvfs(c.as_ptr(), &mut s) } != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(StatFs {
            block_size: s.f_frsize as u32,
            blocks: s.f_blocks as u64,
            blocks_free: s.f_bfree as u64,
            blocks_avail: s.f_bavail as u64,
            files: s.f_files as u64,
            files_free: s.f_ffree as u64,
            name_max: s.f_namemax as u32,
        })
    }

    fn sync(&self, path: Option<&str>) -> io::Result<()> {
        match path {
            Some(p) => File::open(self.host(p)?)?.sync_all(),
            None => {
                // The whole filesystem the directory is on (syncfs), not just the directory.
                let f = File::open(&self.root)?;
                use std::os::fd::AsRawFd;
                // SAFETY: f is an open file descriptor for the duration of the call.
                if unsafe { libc::syncfs(f.as_raw_fd()) } != 0 {
                    return Err(io::Error::last_os_error());
                }
                Ok(())
            }
        }
    }

    fn backing_file(&self, path: &str, writable: bool) -> Option<io::Result<File>> {
        Some(
            self.host(path)
                .and_then(|p| OpenOptions::new().read(true).write(writable).open(p)),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmp() -> PathBuf {
        let d = std::env::temp_dir().join(format!(
            "fsimpl-host-{}-{}",
            std::process::id(),
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or(0)
        ));
        fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn create_write_read_list_rename_remove() {
        let d = tmp();
        let m = HostDir::open(&d).unwrap();
        m.mkdir("A").unwrap();
        m.create("A/F").unwrap();
        assert_eq!(
            m.create("A/F").unwrap_err().kind(),
            io::ErrorKind::AlreadyExists
        );
        m.write_at("A/F", 0, b"hello world").unwrap();
        m.write_at("A/F", 6, b"there").unwrap();
        let mut b = [0u8; 32];
        let n = m.read_at("A/F", 0, &mut b).unwrap();
        assert_eq!(&b[..n], b"hello there");
        assert_eq!(m.stat("A/F").unwrap().size, 11);
        assert_eq!(m.stat("A").unwrap().kind, Kind::Dir);
        assert_eq!(
            m.list("A").unwrap(),
            vec![DirEntry {
                name: "F".into(),
                kind: Kind::File
            }]
        );
        m.rename("A/F", "A/G").unwrap();
        let n = m.read_at("A/G", 6, &mut b).unwrap();
        assert_eq!(&b[..n], b"there");
        m.truncate("A/G", 5).unwrap();
        assert_eq!(m.stat("A/G").unwrap().size, 5);
        m.remove("A/G").unwrap();
        m.rmdir("A").unwrap();
        assert!(m.list("").unwrap().is_empty());
        assert!(m.statfs().unwrap().blocks > 0);
        assert!(m.read_at("../etc/passwd", 0, &mut b).is_err());
        fs::remove_dir_all(d).unwrap();
    }
}
