//! Media Format layer of dicomfs (PS3.10 section 6: the layer below the DICOM File Service).
//!
//! A [`Medium`] stores named byte streams in a hierarchy of directories. It knows nothing of DICOM:
//! the DICOM layer above addresses files by relative `/`-separated paths ("" is the root) and asks
//! the medium to read, write, create, delete, rename, list and stat them.
//!
//! Implementations: [`HostDir`] (a directory of the host filesystem) and [`Fat`] (a FAT12/16/32
//! volume on a block device or image file, through a [`BlockDev`]). [`open_source`] picks one
//! for a path given on the command line.

pub mod fat;
pub mod fault;
mod host;

pub use fat::{BlockDev, Fat, FatOptions, FileDev, MemDev};
pub use host::HostDir;

use std::fs::File;
use std::io;
use std::time::SystemTime;

/// The kind of a directory entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Kind {
    File,
    Dir,
}

/// One entry of a directory listing, as the medium spells it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DirEntry {
    pub name: String,
    pub kind: Kind,
}

/// What the medium knows of one file or directory (M-INQUIRE FILE).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Stat {
    pub kind: Kind,
    pub size: u64,
    pub mtime: SystemTime,
    pub atime: SystemTime,
    pub ctime: SystemTime,
}

/// Space on the medium (M-INQUIRE FILE-SET).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StatFs {
    pub block_size: u32,
    pub blocks: u64,
    pub blocks_free: u64,
    pub blocks_avail: u64,
    pub files: u64,
    pub files_free: u64,
    pub name_max: u32,
}

/// A storage medium: the operations the DICOM File Service needs of the Media Format layer.
///
/// Paths are relative to the medium's root, use `/` as separator, have no empty, `.` or `..`
/// components, and are passed exactly as spelled (case is the medium's business).
pub trait Medium: Send + Sync {
    /// A short description for logs and `dicomfs info` ("host directory /media/x").
    fn describe(&self) -> String;
    /// Read `buf.len()` bytes at `offset`, fewer only at the end of the file; returns the number
    /// read (0 at or past the end). Callers rely on a short read meaning end of file.
    fn read_at(&self, path: &str, offset: u64, buf: &mut [u8]) -> io::Result<usize>;
    /// Write all of `data` at `offset`, extending the file as needed.
    fn write_at(&self, path: &str, offset: u64, data: &[u8]) -> io::Result<()>;
    /// Create an empty file; fails with `AlreadyExists` if anything has that name.
    fn create(&self, path: &str) -> io::Result<()>;
    /// Create a directory; fails with `AlreadyExists` if anything has that name.
    fn mkdir(&self, path: &str) -> io::Result<()>;
    /// Set a file's length.
    fn truncate(&self, path: &str, size: u64) -> io::Result<()>;
    /// Delete a file.
    fn remove(&self, path: &str) -> io::Result<()>;
    /// Delete an empty directory.
    fn rmdir(&self, path: &str) -> io::Result<()>;
    /// Rename a file or directory, replacing a file at `to`.
    fn rename(&self, from: &str, to: &str) -> io::Result<()>;
    /// List a directory (without `.` and `..`), in the order that reads the medium best: a
    /// FAT directory's own order, a host directory's names sorted.
    fn list(&self, dir: &str) -> io::Result<Vec<DirEntry>>;
    /// Stat one path ("" is the root directory).
    fn stat(&self, path: &str) -> io::Result<Stat>;
    /// Space on the medium.
    fn statfs(&self) -> io::Result<StatFs>;
    /// Make what was written to `path` (or to everything, with `None`) durable.
    fn sync(&self, path: Option<&str>) -> io::Result<()>;
    /// A kernel file whose bytes are exactly the file's bytes, for zero-copy serving
    /// (FUSE passthrough), opened for writing too if `writable`. Media that are not plain host
    /// files return `None`.
    fn backing_file(&self, _path: &str, _writable: bool) -> Option<io::Result<File>> {
        None
    }
    /// Write out everything held in memory and leave the medium clean (on FAT: metadata,
    /// FSInfo, the dirty bit cleared). Called once at unmount or at the end of a command; the
    /// medium may still be read afterwards.
    fn close(&self) -> io::Result<()> {
        Ok(())
    }
    /// Repair what a crash left in the medium's own structures (on FAT: lost clusters, chains
    /// longer than their file, the dirty bit); one line per change. Needs a medium opened
    /// writable with `allow_dirty`.
    fn repair_medium(&self) -> io::Result<Vec<String>> {
        Ok(Vec::new())
    }
    /// Set the volume label, on media that have one (FAT); others ignore it.
    fn set_label(&self, _label: &str) -> io::Result<()> {
        Ok(())
    }
}

/// How to open a SOURCE given on the command line.
#[derive(Clone, Debug, Default)]
pub struct SourceOptions {
    /// On a partitioned disk or image: the partition to use (1-based); default the first FAT one.
    pub partition: Option<u32>,
    /// Open for writing.
    pub writable: bool,
    /// Open for writing even a medium that was not cleanly unmounted (for repair).
    pub allow_dirty: bool,
}

/// Open SOURCE: a directory is a [`HostDir`]; a block device or regular file is a FAT volume
/// (whole, or a partition of it). Anything else gets an error that says what was found.
pub fn open_source(
    path: &std::path::Path,
    how: &SourceOptions,
) -> io::Result<std::sync::Arc<dyn Medium>> {
    let meta = std::fs::metadata(path)?;
    if meta.is_dir() {
        if how.partition.is_some() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "a partition was given, but SOURCE is a directory",
            ));
        }
        return Ok(std::sync::Arc::new(HostDir::open(path)?));
    }
    let opts = FatOptions {
        partition: how.partition,
        writable: how.writable,
        allow_dirty: how.allow_dirty,
    };
    Ok(std::sync::Arc::new(Fat::open_path(path, &opts)?))
}

/// Check that `path` is a relative medium path: no leading `/`, no empty, `.` or `..` components.
pub fn check_path(path: &str) -> io::Result<()> {
    if path.is_empty() {
        return Ok(());
    }
    for c in path.split('/') {
        if c.is_empty() || c == "." || c == ".." || c.contains('\0') {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("not a relative medium path: {path:?}"),
            ));
        }
    }
    Ok(())
}

/// Join a directory path and a name.
pub fn join(dir: &str, name: &str) -> String {
    if dir.is_empty() {
        name.to_string()
    } else {
        format!("{dir}/{name}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths() {
        assert!(check_path("").is_ok());
        assert!(check_path("A/B/C").is_ok());
        assert!(check_path("/A").is_err());
        assert!(check_path("A//B").is_err());
        assert!(check_path("A/../B").is_err());
        assert!(check_path("./A").is_err());
        assert_eq!(join("", "X"), "X");
        assert_eq!(join("A/B", "X"), "A/B/X");
    }
}
