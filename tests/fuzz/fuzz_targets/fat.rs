//! Fuzz the FAT medium: any image must open or be refused, list, read, take writes and be
//! repaired without a panic, a hang or an allocation sized by a field of the image.
//!
//!     RUSTC_BOOTSTRAP=1 cargo fuzz run --fuzz-dir tests/fuzz fat tests/fuzz/seeds/fat -- -max_total_time=60
//!
//! The input is the start of an image (boot sector, FATs, root directory, first clusters);
//! the device is 64 MiB: that start, then zeros (kept sparse, so a FAT32 volume fits).

#![no_main]

use fsimpl::{BlockDev, Fat, FatOptions, Kind, Medium};
use libfuzzer_sys::fuzz_target;
use std::collections::HashMap;
use std::io;
use std::sync::{Arc, Mutex};

const LEN: u64 = 64 << 20;
const PAGE: u64 = 4096;

struct Sparse {
    base: Vec<u8>,
    pages: Mutex<HashMap<u64, Vec<u8>>>,
}

impl Sparse {
    fn page(&self, pages: &HashMap<u64, Vec<u8>>, n: u64) -> Vec<u8> {
        if let Some(p) = pages.get(&n) {
            return p.clone();
        }
        let mut p = vec![0u8; PAGE as usize];
        let a = (n * PAGE) as usize;
        if a < self.base.len() {
            let b = (a + PAGE as usize).min(self.base.len());
            p[..b - a].copy_from_slice(&self.base[a..b]);
        }
        p
    }
}

impl BlockDev for Sparse {
    fn read_at(&self, off: u64, buf: &mut [u8]) -> io::Result<()> {
        if off + buf.len() as u64 > LEN {
            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "past the end"));
        }
        let pages = self.pages.lock().map_err(|_| io::Error::other("poisoned"))?;
        let mut pos = off;
        let mut at = 0;
        while at < buf.len() {
            let p = self.page(&pages, pos / PAGE);
            let o = (pos % PAGE) as usize;
            let n = (PAGE as usize - o).min(buf.len() - at);
            buf[at..at + n].copy_from_slice(&p[o..o + n]);
            at += n;
            pos += n as u64;
        }
        Ok(())
    }
    fn write_at(&self, off: u64, data: &[u8]) -> io::Result<()> {
        if off + data.len() as u64 > LEN {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "past the end"));
        }
        let mut pages = self.pages.lock().map_err(|_| io::Error::other("poisoned"))?;
        let mut pos = off;
        let mut at = 0;
        while at < data.len() {
            let mut p = self.page(&pages, pos / PAGE);
            let o = (pos % PAGE) as usize;
            let n = (PAGE as usize - o).min(data.len() - at);
            p[o..o + n].copy_from_slice(&data[at..at + n]);
            pages.insert(pos / PAGE, p);
            at += n;
            pos += n as u64;
        }
        Ok(())
    }
    fn flush(&self) -> io::Result<()> {
        Ok(())
    }
    fn len(&self) -> u64 {
        LEN
    }
    fn describe(&self) -> String {
        "fuzz device".into()
    }
    fn writable(&self) -> bool {
        true
    }
}

fuzz_target!(|data: &[u8]| {
    let dev = Arc::new(Sparse {
        base: data[..data.len().min(1 << 20)].to_vec(),
        pages: Mutex::new(HashMap::new()),
    });
    let opts = FatOptions {
        partition: None,
        writable: true,
        allow_dirty: true,
    };
    let Ok(fat) = Fat::open(dev, &opts) else {
        return;
    };
    // Walk and read everything (bounded).
    let mut files = Vec::new();
    let mut stack = vec![(String::new(), 0)];
    let mut seen = 0;
    while let Some((d, depth)) = stack.pop() {
        let Ok(list) = fat.list(&d) else { continue };
        for e in list {
            seen += 1;
            if seen > 2000 {
                break;
            }
            let p = if d.is_empty() {
                e.name.clone()
            } else {
                format!("{d}/{}", e.name)
            };
            if fsimpl::check_path(&p).is_err() {
                continue;
            }
            let _ = fat.stat(&p);
            match e.kind {
                Kind::Dir if depth < 10 => stack.push((p, depth + 1)),
                Kind::File => {
                    let mut buf = vec![0u8; 65536];
                    let _ = fat.read_at(&p, 0, &mut buf);
                    files.push(p);
                }
                _ => {}
            }
        }
    }
    let _ = fat.statfs();
    // Writes in every shape the DICOM layer makes them.
    let _ = fat.create("FUZZ");
    let _ = fat.write_at("FUZZ", 0, &[0x5A; 5000]);
    if let Some(f) = files.first() {
        let _ = fat.rename("FUZZ", f);
        let _ = fat.write_at(f, 100, &[1; 3000]);
        let _ = fat.truncate(f, 10);
    }
    let _ = fat.mkdir("FZD");
    let _ = fat.create("FZD/A");
    let _ = fat.write_at("FZD/A", 70000, &[2; 10]);
    let _ = fat.sync(None);
    let _ = fat.rename("FZD/A", "B");
    let _ = fat.remove("B");
    let _ = fat.rmdir("FZD");
    if let Some(f) = files.get(1) {
        let _ = fat.remove(f);
    }
    let _ = fat.repair();
    let _ = fat.set_label("FUZZ SET");
    let _ = fat.close();
});
