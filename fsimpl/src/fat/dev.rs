//! Block devices: where a FAT volume's bytes live (an image file, `/dev/sdb1`, `/dev/loop0`),
//! and finding the FAT volume on a partitioned disk.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::{FileExt, FileTypeExt, OpenOptionsExt};
use std::path::Path;

/// Bytes at offsets: the only thing the FAT layer needs of a device. Implementations may
/// inject faults (tests) or restrict to a window (a partition).
pub trait BlockDev: Send + Sync {
    /// Fill `buf` from `offset`; reading past the end is an error.
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()>;
    /// Write all of `data` at `offset`.
    fn write_at(&self, offset: u64, data: &[u8]) -> io::Result<()>;
    /// Make every write so far durable.
    fn flush(&self) -> io::Result<()>;
    /// Size in bytes.
    fn len(&self) -> u64;
    /// For messages: "image /x.img", "block device /dev/sdb1".
    fn describe(&self) -> String;
    /// Whether writes are possible.
    fn writable(&self) -> bool;
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// `[offset, offset + n)` must lie within a device of `len` bytes (`what` names it).
fn in_bounds(offset: u64, n: usize, len: u64, write: bool, what: &str) -> io::Result<()> {
    if offset.checked_add(n as u64).is_none_or(|e| e > len) {
        let (kind, op) = if write {
            (io::ErrorKind::InvalidInput, "write")
        } else {
            (io::ErrorKind::UnexpectedEof, "read")
        };
        return Err(io::Error::new(kind, format!("{op} past the end of {what}")));
    }
    Ok(())
}

/// An image file or a block device.
pub struct FileDev {
    file: File,
    len: u64,
    what: String,
    writable: bool,
}

const BLKGETSIZE64: libc::c_ulong = 0x8008_1272;

impl FileDev {
    /// Open `path` for reading, and writing if `writable`. A block device is opened with
    /// `O_EXCL` when written, so the kernel refuses a second writer (and a mounted device).
    pub fn open(path: &Path, writable: bool) -> io::Result<FileDev> {
        let meta = std::fs::metadata(path)?;
        let block = meta.file_type().is_block_device();
        if !block && !meta.is_file() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "not a directory, block device or image file",
            ));
        }
        let mut oo = OpenOptions::new();
        oo.read(true).write(writable);
        if block && writable {
            oo.custom_flags(libc::O_EXCL);
        }
        let file = oo.open(path).map_err(|e| {
            if e.raw_os_error() == Some(libc::EBUSY) {
                io::Error::new(
                    io::ErrorKind::ResourceBusy,
                    "the device is in use (mounted, or open for writing by another program)",
                )
            } else {
                e
            }
        })?;
        let len = if block {
            let mut n: u64 = 0;
            // SAFETY: BLKGETSIZE64 writes one u64 through the pointer, which lives for the call.
            let r = unsafe {
                libc::ioctl(std::os::fd::AsRawFd::as_raw_fd(&file), BLKGETSIZE64, &mut n)
            };
            if r != 0 {
                return Err(io::Error::last_os_error());
            }
            n
        } else {
            meta.len()
        };
        let what = format!(
            "{} {}",
            if block { "block device" } else { "image" },
            path.display()
        );
        Ok(FileDev {
            file,
            len,
            what,
            writable,
        })
    }
}

impl BlockDev for FileDev {
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        in_bounds(offset, buf.len(), self.len, false, &self.what)?;
        self.file.read_exact_at(buf, offset)
    }
    fn write_at(&self, offset: u64, data: &[u8]) -> io::Result<()> {
        if !self.writable {
            return Err(io::Error::from_raw_os_error(libc::EROFS));
        }
        in_bounds(offset, data.len(), self.len, true, &self.what)?;
        self.file.write_all_at(data, offset)
    }
    fn flush(&self) -> io::Result<()> {
        if self.writable {
            self.file.sync_data()
        } else {
            Ok(())
        }
    }
    fn len(&self) -> u64 {
        self.len
    }
    fn describe(&self) -> String {
        self.what.clone()
    }
    fn writable(&self) -> bool {
        self.writable
    }
}

/// A window of another device: a partition.
pub struct Window<D: ?Sized> {
    pub inner: std::sync::Arc<D>,
    pub start: u64,
    pub len: u64,
    pub what: String,
}

impl<D: BlockDev + ?Sized> BlockDev for Window<D> {
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        in_bounds(offset, buf.len(), self.len, false, &self.what)?;
        self.inner.read_at(self.start + offset, buf)
    }
    fn write_at(&self, offset: u64, data: &[u8]) -> io::Result<()> {
        in_bounds(offset, data.len(), self.len, true, &self.what)?;
        self.inner.write_at(self.start + offset, data)
    }
    fn flush(&self) -> io::Result<()> {
        self.inner.flush()
    }
    fn len(&self) -> u64 {
        self.len
    }
    fn describe(&self) -> String {
        self.what.clone()
    }
    fn writable(&self) -> bool {
        self.inner.writable()
    }
}

fn invalid(msg: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg)
}

/// Whether a sector looks like a FAT boot sector (a BPB with sane values).
pub(crate) fn looks_like_fat(s: &[u8]) -> bool {
    if s.len() < 512 {
        return false;
    }
    let bps = u16::from_le_bytes([s[11], s[12]]);
    let spc = s[13];
    let reserved = u16::from_le_bytes([s[14], s[15]]);
    let fats = s[16];
    (s[0] == 0xEB || s[0] == 0xE9 || s[0] == 0xE8 || s[0] == 0x00 || s[0] == 0x90)
        && matches!(bps, 512 | 1024 | 2048 | 4096)
        && spc != 0
        && spc.is_power_of_two()
        && reserved != 0
        && (1..=4).contains(&fats)
        && &s[3..11] != b"EXFAT   "
        && &s[3..11] != b"NTFS    "
}

/// Name what is on a device that is not FAT, for the error message.
fn what_is(dev: &dyn BlockDev, first: &[u8]) -> String {
    if first.len() >= 11 && &first[3..11] == b"EXFAT   " {
        return "an exFAT file system (not supported: format the card FAT32)".into();
    }
    if first.len() >= 11 && &first[3..11] == b"NTFS    " {
        return "an NTFS file system (not supported)".into();
    }
    let mut sb = [0u8; 2];
    if dev.read_at(1024 + 56, &mut sb).is_ok() && sb == [0x53, 0xEF] {
        return "an ext2/3/4 file system (mount it and give the directory instead)".into();
    }
    let mut iso = [0u8; 5];
    if dev.read_at(32769, &mut iso).is_ok() && &iso == b"CD001" {
        return "an ISO 9660 image (mount it and give the directory instead)".into();
    }
    if first.iter().all(|&b| b == 0) {
        return "an empty (all zero) start: no file system".into();
    }
    let head: Vec<String> = first.iter().take(8).map(|b| format!("{b:02x}")).collect();
    format!("no FAT file system (it starts {})", head.join(" "))
}

const GPT_BASIC_DATA: [u8; 16] = [
    0xA2, 0xA0, 0xD0, 0xEB, 0xE5, 0xB9, 0x33, 0x44, 0x87, 0xC0, 0x68, 0xB6, 0xB7, 0x26, 0x99, 0xC7,
];
const GPT_EFI_SYSTEM: [u8; 16] = [
    0x28, 0x73, 0x2A, 0xC1, 0x1F, 0xF8, 0xD2, 0x11, 0xBA, 0x4B, 0x00, 0xA0, 0xC9, 0x3E, 0xC9, 0x3B,
];

/// Partitions of a disk: (number from 1, start byte, length), from an MBR or a GPT.
fn partitions(dev: &dyn BlockDev, first: &[u8]) -> io::Result<Vec<(u32, u64, u64)>> {
    let mut out = Vec::new();
    if first.len() < 512 || first[510] != 0x55 || first[511] != 0xAA {
        return Ok(out);
    }
    let entries: Vec<&[u8]> = (0..4).map(|i| &first[446 + 16 * i..462 + 16 * i]).collect();
    if entries.iter().any(|e| e[4] == 0xEE) {
        // GPT: header at LBA 1 (512-byte sectors assumed; 4K-sector disks try 4096).
        for lba in [512u64, 4096] {
            let mut h = [0u8; 92];
            if dev.read_at(lba, &mut h).is_err() || &h[0..8] != b"EFI PART" {
                continue;
            }
            let table = u64::from_le_bytes(h[72..80].try_into().unwrap_or_default()) * lba;
            let count = u32::from_le_bytes(h[80..84].try_into().unwrap_or_default()).min(256);
            let size = u32::from_le_bytes(h[84..88].try_into().unwrap_or_default()) as u64;
            if !(128..=4096).contains(&size) {
                return Err(invalid(format!("GPT partition entries of {size} bytes")));
            }
            for i in 0..count as u64 {
                let mut e = [0u8; 48];
                dev.read_at(table + i * size, &mut e)?;
                if e[0..16].iter().all(|&b| b == 0) {
                    continue;
                }
                let first_lba = u64::from_le_bytes(e[32..40].try_into().unwrap_or_default());
                let last_lba = u64::from_le_bytes(e[40..48].try_into().unwrap_or_default());
                if last_lba < first_lba {
                    continue;
                }
                let _known = e[0..16] == GPT_BASIC_DATA || e[0..16] == GPT_EFI_SYSTEM;
                out.push((
                    i as u32 + 1,
                    first_lba * lba,
                    (last_lba - first_lba + 1) * lba,
                ));
            }
            return Ok(out);
        }
        return Err(invalid("a protective MBR without a readable GPT".into()));
    }
    for (i, e) in entries.iter().enumerate() {
        let kind = e[4];
        let start = u32::from_le_bytes([e[8], e[9], e[10], e[11]]) as u64 * 512;
        let len = u32::from_le_bytes([e[12], e[13], e[14], e[15]]) as u64 * 512;
        if kind == 0 || len == 0 {
            continue;
        }
        out.push((i as u32 + 1, start, len));
    }
    Ok(out)
}

/// The FAT volume on `dev`: the whole device if it starts with a FAT boot sector (a
/// "superfloppy", as cameras and most cards are formatted), else partition `partition` or the
/// first partition holding FAT.
pub fn locate(
    dev: std::sync::Arc<dyn BlockDev>,
    partition: Option<u32>,
) -> io::Result<std::sync::Arc<dyn BlockDev>> {
    let mut first = vec![0u8; 512.min(dev.len() as usize)];
    dev.read_at(0, &mut first)?;
    if partition.is_none() && looks_like_fat(&first) {
        return Ok(dev);
    }
    let parts = partitions(&*dev, &first)?;
    if parts.is_empty() {
        if partition.is_some() {
            return Err(invalid(format!(
                "{}: no partition table, so no partition to choose",
                dev.describe()
            )));
        }
        return Err(invalid(format!(
            "{}: {}",
            dev.describe(),
            what_is(&*dev, &first)
        )));
    }
    let mut found = Vec::new();
    for &(n, start, len) in &parts {
        if partition.is_some_and(|p| p != n) {
            continue;
        }
        if start.checked_add(len).is_none_or(|e| e > dev.len()) {
            found.push(format!("partition {n} lies past the end of the device"));
            continue;
        }
        let w = std::sync::Arc::new(Window {
            inner: dev.clone(),
            start,
            len,
            what: format!("{} partition {n}", dev.describe()),
        });
        let mut s = vec![0u8; 512.min(len as usize)];
        w.read_at(0, &mut s)?;
        if looks_like_fat(&s) {
            return Ok(w);
        }
        found.push(format!("partition {n} holds {}", what_is(&*w, &s)));
    }
    if let Some(p) = partition {
        if !parts.iter().any(|x| x.0 == p) {
            return Err(invalid(format!(
                "{}: no partition {p} (it has {})",
                dev.describe(),
                parts
                    .iter()
                    .map(|x| x.0.to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            )));
        }
    }
    Err(invalid(format!(
        "{}: no FAT partition: {}",
        dev.describe(),
        found.join("; ")
    )))
}

/// A device in memory: for tests and fuzzing.
pub struct MemDev {
    bytes: parking_lot::RwLock<Vec<u8>>,
}

impl MemDev {
    pub fn new(bytes: Vec<u8>) -> MemDev {
        MemDev {
            bytes: parking_lot::RwLock::new(bytes),
        }
    }
    /// A copy of the bytes.
    pub fn snapshot(&self) -> Vec<u8> {
        self.bytes.read().clone()
    }
}

impl BlockDev for MemDev {
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        let b = self.bytes.read();
        in_bounds(
            offset,
            buf.len(),
            b.len() as u64,
            false,
            "the memory device",
        )?;
        buf.copy_from_slice(&b[offset as usize..][..buf.len()]);
        Ok(())
    }
    fn write_at(&self, offset: u64, data: &[u8]) -> io::Result<()> {
        let mut b = self.bytes.write();
        in_bounds(
            offset,
            data.len(),
            b.len() as u64,
            true,
            "the memory device",
        )?;
        b[offset as usize..][..data.len()].copy_from_slice(data);
        Ok(())
    }
    fn flush(&self) -> io::Result<()> {
        Ok(())
    }
    fn len(&self) -> u64 {
        self.bytes.read().len() as u64
    }
    fn describe(&self) -> String {
        "memory device".into()
    }
    fn writable(&self) -> bool {
        true
    }
}
