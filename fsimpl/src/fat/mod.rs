//! A FAT12/16/32 medium on a block device or image file (work in progress).

mod dev;

pub use dev::{locate, BlockDev, FileDev, Window};

use crate::{DirEntry, Medium, Stat, StatFs};
use std::io;
use std::path::Path;
use std::sync::Arc;

/// How to open a FAT volume.
#[derive(Clone, Debug, Default)]
pub struct FatOptions {
    /// On a partitioned device: the partition (1-based); default the first FAT partition.
    pub partition: Option<u32>,
    /// Open for writing (sets the dirty bit until [`Medium::close`]).
    pub writable: bool,
}

/// What [`Fat::repair`] changed.
#[derive(Clone, Debug, Default)]
pub struct RepairReport {
    pub lines: Vec<String>,
}

/// A FAT volume.
pub struct Fat {
    dev: Arc<dyn BlockDev>,
}

fn todo() -> io::Error {
    io::Error::new(
        io::ErrorKind::Unsupported,
        "FAT media are not supported yet",
    )
}

impl Fat {
    pub fn open(dev: Arc<dyn BlockDev>, opts: &FatOptions) -> io::Result<Fat> {
        let dev = locate(dev, opts.partition)?;
        let _ = dev;
        Err(todo())
    }
    pub fn open_path(path: &Path, opts: &FatOptions) -> io::Result<Fat> {
        let dev: Arc<dyn BlockDev> = Arc::new(FileDev::open(path, opts.writable)?);
        Fat::open(dev, opts)
    }
    /// Whether the volume was marked dirty (not cleanly unmounted) when opened.
    pub fn was_dirty(&self) -> bool {
        false
    }
    /// Free lost clusters, fix chains longer than their file, rewrite FSInfo, clear the dirty bit.
    pub fn repair(&self) -> io::Result<RepairReport> {
        Err(todo())
    }
    /// Set the volume label (boot sector and root directory entry).
    pub fn set_label(&self, _label: &str) -> io::Result<()> {
        Err(todo())
    }
}

impl Medium for Fat {
    fn describe(&self) -> String {
        format!("FAT volume on {}", self.dev.describe())
    }
    fn read_at(&self, _: &str, _: u64, _: &mut [u8]) -> io::Result<usize> {
        Err(todo())
    }
    fn write_at(&self, _: &str, _: u64, _: &[u8]) -> io::Result<()> {
        Err(todo())
    }
    fn create(&self, _: &str) -> io::Result<()> {
        Err(todo())
    }
    fn mkdir(&self, _: &str) -> io::Result<()> {
        Err(todo())
    }
    fn truncate(&self, _: &str, _: u64) -> io::Result<()> {
        Err(todo())
    }
    fn remove(&self, _: &str) -> io::Result<()> {
        Err(todo())
    }
    fn rmdir(&self, _: &str) -> io::Result<()> {
        Err(todo())
    }
    fn rename(&self, _: &str, _: &str) -> io::Result<()> {
        Err(todo())
    }
    fn list(&self, _: &str) -> io::Result<Vec<DirEntry>> {
        Err(todo())
    }
    fn stat(&self, _: &str) -> io::Result<Stat> {
        Err(todo())
    }
    fn statfs(&self) -> io::Result<StatFs> {
        Err(todo())
    }
    fn sync(&self, _: Option<&str>) -> io::Result<()> {
        Err(todo())
    }
}
