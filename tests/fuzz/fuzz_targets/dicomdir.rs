//! Fuzz the DICOMDIR reader: any bytes must parse to `Ok` or `Err` without a panic, a hang or an
//! allocation sized by a length field, and the tree of a parsed DICOMDIR must be walkable.
//!
//! Run from the repository root (stable toolchain; see tests/fuzz/README.md):
//!     RUSTC_BOOTSTRAP=1 cargo fuzz run --fuzz-dir tests/fuzz dicomdir -- -max_total_time=60

#![no_main]

use dicomfs::dicomdir::{DicomDir, WDicomDir};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(d) = DicomDir::parse(data) {
        let visible = d.visible();
        assert!(visible.len() <= d.records.len());
        for i in visible {
            let r = &d.records[i as usize];
            for &c in &r.children {
                assert!((c as usize) < d.records.len());
            }
        }
        // Rewriting what was read must not panic either (it is what an ingest does).
        if let Ok(w) = WDicomDir::from_read(&d, data) {
            let _ = w.encode();
        }
    }
});
