//! Fault injection for tests: a [`BlockDev`] wrapper that fails, or stops persisting, after a
//! given number of writes (over any device; [`crate::MemDev`] is the in-memory one).
//!
//! Writes are numbered from 1 in the order they reach the wrapper. With [`Fault::Fail`] `{ after:
//! n }` writes 1..=n are stored and every later write (and flush) returns `EIO`, as a card pulled
//! out while the driver still runs. With [`Fault::Vanish`] `{ after: n }` writes 1..=n are stored
//! and later ones are acknowledged but never reach the device, as a power loss that keeps a
//! prefix of what was written: the writer goes on reading its own writes (they sit in a volatile
//! overlay, like a drive's write cache) until it is dropped, and the device keeps only the
//! prefix. [`Fault::Tear`] is `Vanish` whose first lost write still stores its first sector (a
//! torn multi-sector write).

use crate::BlockDev;
use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// When a [`FaultDev`] stops storing writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// Every write is stored (count writes and flushes only).
    None,
    /// Writes after the `after`-th return `EIO`; so do flushes once one has failed.
    Fail { after: u64 },
    /// Writes after the `after`-th are acknowledged but not stored.
    Vanish { after: u64 },
    /// As `Vanish`, but write `after + 1` stores its first `sector` bytes.
    Tear { after: u64, sector: usize },
}

/// A device that injects a [`Fault`]; see the module documentation.
pub struct FaultDev {
    inner: Arc<dyn BlockDev>,
    fault: Mutex<Fault>,
    writes: AtomicU64,
    flushes: AtomicU64,
    lost: AtomicU64,
    /// Writes acknowledged but not stored, in order: what reads see on top of the device.
    overlay: Mutex<Vec<(u64, Vec<u8>)>>,
}

impl FaultDev {
    pub fn new(inner: Arc<dyn BlockDev>, fault: Fault) -> Arc<FaultDev> {
        Arc::new(FaultDev {
            inner,
            fault: Mutex::new(fault),
            writes: AtomicU64::new(0),
            flushes: AtomicU64::new(0),
            lost: AtomicU64::new(0),
            overlay: Mutex::new(Vec::new()),
        })
    }
    /// Writes seen so far (stored or not).
    pub fn writes(&self) -> u64 {
        self.writes.load(Ordering::SeqCst)
    }
    /// Flushes seen so far.
    pub fn flushes(&self) -> u64 {
        self.flushes.load(Ordering::SeqCst)
    }
    /// Writes that failed or were not stored.
    pub fn lost(&self) -> u64 {
        self.lost.load(Ordering::SeqCst)
    }
    /// Whether the fault has struck (a write failed or was not stored).
    pub fn tripped(&self) -> bool {
        self.lost() > 0
    }
    /// Change the fault from now on (the write count goes on).
    pub fn set_fault(&self, f: Fault) {
        *self.fault.lock().unwrap() = f;
    }
    pub fn fault(&self) -> Fault {
        *self.fault.lock().unwrap()
    }
}

fn eio(what: &str) -> io::Error {
    log::debug!("injected fault: {what}: EIO");
    io::Error::from_raw_os_error(libc::EIO)
}

/// Copy the part of `(at, data)` that overlaps `[offset, offset + buf.len())` into `buf`.
fn patch(buf: &mut [u8], offset: u64, at: u64, data: &[u8]) {
    let start = offset.max(at);
    let end = (offset + buf.len() as u64).min(at + data.len() as u64);
    if start < end {
        let n = (end - start) as usize;
        buf[(start - offset) as usize..][..n].copy_from_slice(&data[(start - at) as usize..][..n]);
    }
}

impl BlockDev for FaultDev {
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        self.inner.read_at(offset, buf)?;
        for (at, data) in self.overlay.lock().unwrap().iter() {
            patch(buf, offset, *at, data);
        }
        Ok(())
    }
    fn write_at(&self, offset: u64, data: &[u8]) -> io::Result<()> {
        let n = self.writes.fetch_add(1, Ordering::SeqCst) + 1;
        let fault = self.fault();
        let keep = |after: u64| n <= after;
        match fault {
            Fault::None => self.inner.write_at(offset, data),
            Fault::Fail { after } if keep(after) => self.inner.write_at(offset, data),
            Fault::Fail { .. } => {
                self.lost.fetch_add(1, Ordering::SeqCst);
                Err(eio(&format!("write {n} at {offset}")))
            }
            Fault::Vanish { after } | Fault::Tear { after, .. } if keep(after) => {
                self.inner.write_at(offset, data)
            }
            Fault::Vanish { .. } | Fault::Tear { .. } => {
                if offset
                    .checked_add(data.len() as u64)
                    .is_none_or(|e| e > self.inner.len())
                {
                    // Out-of-range writes are still the device's error to report.
                    return self.inner.write_at(offset, data);
                }
                if let Fault::Tear { sector, .. } = fault {
                    if self.lost() == 0 {
                        self.inner
                            .write_at(offset, &data[..sector.min(data.len())])?;
                    }
                }
                self.lost.fetch_add(1, Ordering::SeqCst);
                self.overlay.lock().unwrap().push((offset, data.to_vec()));
                Ok(())
            }
        }
    }
    fn flush(&self) -> io::Result<()> {
        self.flushes.fetch_add(1, Ordering::SeqCst);
        match self.fault() {
            Fault::Fail { .. } if self.tripped() => Err(eio("flush after a failed write")),
            // After a vanished write the device still acknowledges flushes.
            _ => self.inner.flush(),
        }
    }
    fn len(&self) -> u64 {
        self.inner.len()
    }
    fn describe(&self) -> String {
        format!(
            "{} (fault injection: {:?})",
            self.inner.describe(),
            self.fault()
        )
    }
    fn writable(&self) -> bool {
        self.inner.writable()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::MemDev;

    fn dev(fault: Fault) -> (Arc<MemDev>, Arc<FaultDev>) {
        let m = Arc::new(MemDev::new(vec![0u8; 4096]));
        let f = FaultDev::new(m.clone(), fault);
        (m, f)
    }

    fn read(d: &dyn BlockDev, off: u64, n: usize) -> Vec<u8> {
        let mut b = vec![0u8; n];
        d.read_at(off, &mut b).unwrap();
        b
    }

    #[test]
    fn none_stores_everything_and_counts() {
        let (m, f) = dev(Fault::None);
        for k in 0..5u8 {
            f.write_at(k as u64 * 10, &[k + 1; 4]).unwrap();
        }
        f.flush().unwrap();
        assert_eq!((f.writes(), f.flushes(), f.lost()), (5, 1, 0));
        assert!(!f.tripped());
        assert_eq!(read(&*m, 40, 4), [5; 4]);
    }

    #[test]
    fn fail_stores_the_first_n_then_eio() {
        let (m, f) = dev(Fault::Fail { after: 2 });
        f.write_at(0, b"aa").unwrap();
        f.write_at(2, b"bb").unwrap();
        f.flush().unwrap();
        let e = f.write_at(4, b"cc").unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::EIO));
        assert_eq!(f.flush().unwrap_err().raw_os_error(), Some(libc::EIO));
        assert!(f.write_at(6, b"dd").is_err());
        assert_eq!(read(&*m, 0, 8), b"aabb\0\0\0\0");
        assert_eq!(read(&*f, 0, 8), b"aabb\0\0\0\0");
        assert_eq!((f.writes(), f.lost()), (4, 2));
    }

    #[test]
    fn vanish_acknowledges_keeps_a_prefix_and_reads_its_own_writes() {
        let (m, f) = dev(Fault::Vanish { after: 1 });
        f.write_at(0, b"1111").unwrap();
        f.write_at(2, b"2222").unwrap();
        f.write_at(4, b"33").unwrap();
        f.flush().unwrap();
        // The writer sees all three; the device only the first.
        assert_eq!(read(&*f, 0, 8), b"112233\0\0");
        assert_eq!(read(&*m, 0, 8), b"1111\0\0\0\0");
        assert_eq!((f.writes(), f.lost()), (3, 2));
        // Out of range is still an error.
        assert!(f.write_at(4095, b"xx").is_err());
    }

    #[test]
    fn tear_stores_the_first_sector_of_the_first_lost_write() {
        let (m, f) = dev(Fault::Tear {
            after: 0,
            sector: 512,
        });
        f.write_at(0, &[7u8; 1024]).unwrap();
        f.write_at(2048, &[8u8; 512]).unwrap();
        assert_eq!(read(&*m, 0, 1024)[..512], [7u8; 512]);
        assert_eq!(read(&*m, 0, 1024)[512..], [0u8; 512]);
        assert_eq!(read(&*m, 2048, 512), [0u8; 512]);
        assert_eq!(read(&*f, 0, 1024), [7u8; 1024]);
        assert_eq!(read(&*f, 2048, 512), [8u8; 512]);
    }

    #[test]
    fn patch_handles_every_overlap() {
        let mut b = [0u8; 4];
        patch(&mut b, 10, 8, b"abcd"); // covers 8..12: bytes 10, 11
        assert_eq!(&b, b"cd\0\0");
        patch(&mut b, 10, 13, b"xyz"); // 13..16: byte 13
        assert_eq!(&b, b"cd\0x");
        patch(&mut b, 10, 20, b"q"); // no overlap
        patch(&mut b, 10, 0, b"0123456789"); // ends at 10: no overlap
        assert_eq!(&b, b"cd\0x");
    }
}
