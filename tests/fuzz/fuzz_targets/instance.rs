//! Fuzz the ingest reader and the transcoder: any bytes must give `Ok` or `Err` without a panic,
//! a hang or an allocation sized by a length field; a transcoded file must read back.
//!
//!     RUSTC_BOOTSTRAP=1 cargo fuzz run --fuzz-dir tests/fuzz instance -- -max_total_time=60

#![no_main]

use dicomfs::dicom::dataset::{read_header, transcode_to_explicit_le};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = read_header(&data);
    if let Ok(out) = transcode_to_explicit_le(data) {
        // What the transcoder writes, the reader takes (or refuses cleanly).
        let _ = read_header(&out);
    }
});
