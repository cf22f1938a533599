//! What the ingest path needs from a Part-10 file: a checked walk of the whole data set with the
//! top-level elements before Pixel Data ([`read_header`]), and a lossless transcoder from Implicit
//! VR Little Endian, Explicit VR Big Endian and Deflated Explicit VR Little Endian to Explicit VR
//! Little Endian ([`transcode_to_explicit_le`]).
//!
//! Nothing here allocates what a length field claims: [`read_header`] reads the file through a
//! window of at most 64 KiB (larger only for a File Meta Information group that is, with a hard
//! limit), and the transcoder only copies bytes that are really in its input.
//!
//! VRs for Implicit VR data come from the standard dictionary (`dicom-dictionary-std`), with these
//! rules: group lengths (gggg,0000) are UL; in odd (private) groups, Private Creators
//! (gggg,0010-00FF) are LO and everything else UN; tags the dictionary does not know are UN; the
//! multi-VR entries map as dicom-rs's `VirtualVr::relaxed` does: "US or SS" → US, "OB or OW"
//! (Pixel Data, Overlay Data, Waveform Data, ...) → OW, which is what PS3.5 A.1 prescribes for
//! Implicit VR, "US or OW" (LUT Data) → OW. An element of undefined length whose dictionary VR is
//! not SQ is written as UN of undefined length with its content copied as it is (Implicit VR LE,
//! PS3.5 6.2.2), and so is a dictionary SQ whose content does not parse as items. A value longer
//! than 0xFFFE bytes whose VR has a 2-byte length field in Explicit VR is written as UN.
//!
//! Big Endian values are swapped by the width of their VR's numbers (AT as two 16-bit halves);
//! Pixel Data (7FE0,0010) in OW by 16-bit words, or by 32/64-bit words when the Bits Allocated
//! of the same data set or item is 32/64 (which is how pydicom and GDCM write and read it).

use super::{
    ascii, long_vr, read_meta, tags, Meta, Syntax, Writer, DEFLATED_LE, EXPLICIT_BE, EXPLICIT_LE,
    IMPLICIT_LE, ITEM, ITEM_END, SEQ_END, UNDEFINED,
};
use crate::dicomdir::Elem;
use std::borrow::Cow;
use std::io::Read;

/// How much [`read_header`] reads at a time.
const CHUNK: usize = 64 * 1024;
/// The largest File Meta Information group [`read_header`] accepts.
const MAX_META: usize = 1024 * 1024;
/// Top-level values longer than this are left out of [`Header::elems`].
const MAX_VALUE: u64 = 64 * 1024;
/// Sequence nesting limit.
const MAX_DEPTH: usize = 64;
/// The largest inflated data set [`transcode_to_explicit_le`] accepts.
const MAX_INFLATED: u64 = 1 << 30;

/// Random access to the bytes of a file (a slice in memory, or a file on a medium).
pub trait ReadAt {
    fn size(&self) -> u64;
    /// Read from `pos` into `buf`; fills `buf` unless the end of the file comes first.
    fn read_at(&self, pos: u64, buf: &mut [u8]) -> std::io::Result<usize>;
}

impl ReadAt for [u8] {
    fn size(&self) -> u64 {
        self.len() as u64
    }

    fn read_at(&self, pos: u64, buf: &mut [u8]) -> std::io::Result<usize> {
        let start = (pos.min(self.len() as u64)) as usize;
        let n = buf.len().min(self.len() - start);
        buf[..n].copy_from_slice(&self[start..start + n]);
        Ok(n)
    }
}

impl ReadAt for Vec<u8> {
    fn size(&self) -> u64 {
        self.as_slice().size()
    }

    fn read_at(&self, pos: u64, buf: &mut [u8]) -> std::io::Result<usize> {
        self.as_slice().read_at(pos, buf)
    }
}

/// So that a `&[u8]` can be passed as `&dyn ReadAt` (as `&slice`).
impl<T: ReadAt + ?Sized> ReadAt for &T {
    fn size(&self) -> u64 {
        (**self).size()
    }

    fn read_at(&self, pos: u64, buf: &mut [u8]) -> std::io::Result<usize> {
        (**self).read_at(pos, buf)
    }
}

impl ReadAt for std::fs::File {
    /// The file's length now (0 if it cannot be had).
    fn size(&self) -> u64 {
        self.metadata().map(|m| m.len()).unwrap_or(0)
    }

    fn read_at(&self, pos: u64, buf: &mut [u8]) -> std::io::Result<usize> {
        use std::os::unix::fs::FileExt;
        let mut got = 0;
        while got < buf.len() {
            match FileExt::read_at(self, &mut buf[got..], pos + got as u64) {
                Ok(0) => break,
                Ok(n) => got += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(got)
    }
}

/// What ingest needs from a Part-10 file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Header {
    pub meta: Meta,
    /// Top-level data-set elements in stream order, from the start of the data set up to (not
    /// including) the first element whose tag is above (7FE0,0000) (Pixel Data, Float/Double
    /// Pixel Data, ...), as Explicit VR Little Endian value bytes (Big Endian input byte-swapped
    /// by VR, Implicit VR input given its dictionary VR). A sequence's value is the Explicit VR LE
    /// encoding of its items (defined or undefined item lengths, no sequence delimiter), to be
    /// written back with a defined length. Values longer than 64 KiB are left out.
    pub elems: Vec<Elem>,
    /// (0008,0016) from the data set, trimmed.
    pub sop_class: String,
    /// (0008,0018) from the data set, trimmed.
    pub sop_instance: String,
}

/// One element, item or delimiter header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Hdr {
    tag: u32,
    /// `b"  "` for items, delimiters and Implicit VR elements.
    vr: [u8; 2],
    len: u32,
    hlen: usize,
}

enum HdrError {
    /// This many bytes are needed for the header.
    Short(usize),
    Bad(String),
}

fn tag_str(tag: u32) -> String {
    format!("({:04X},{:04X})", tag >> 16, tag & 0xFFFF)
}

fn vr_str(vr: [u8; 2]) -> String {
    if vr.iter().all(|c| c.is_ascii_graphic()) {
        String::from_utf8_lossy(&vr).into_owned()
    } else {
        format!("{:02X} {:02X}", vr[0], vr[1])
    }
}

/// Every VR of PS3.5 6.2.
fn known_vr(vr: [u8; 2]) -> bool {
    matches!(
        &vr,
        b"AE"
            | b"AS"
            | b"AT"
            | b"CS"
            | b"DA"
            | b"DS"
            | b"DT"
            | b"FD"
            | b"FL"
            | b"IS"
            | b"LO"
            | b"LT"
            | b"OB"
            | b"OD"
            | b"OF"
            | b"OL"
            | b"OV"
            | b"OW"
            | b"PN"
            | b"SH"
            | b"SL"
            | b"SQ"
            | b"SS"
            | b"ST"
            | b"SV"
            | b"TM"
            | b"UC"
            | b"UI"
            | b"UL"
            | b"UN"
            | b"UR"
            | b"US"
            | b"UT"
            | b"UV"
    )
}

/// Parse a header from the bytes available at its position.
fn parse_header(b: &[u8], syn: Syntax) -> Result<Hdr, HdrError> {
    if b.len() < 8 {
        return Err(HdrError::Short(8));
    }
    let u16_at = |i: usize| {
        let a = [b[i], b[i + 1]];
        if syn.big_endian {
            u16::from_be_bytes(a)
        } else {
            u16::from_le_bytes(a)
        }
    };
    let u32_at = |i: usize| {
        let a = [b[i], b[i + 1], b[i + 2], b[i + 3]];
        if syn.big_endian {
            u32::from_be_bytes(a)
        } else {
            u32::from_le_bytes(a)
        }
    };
    let tag = ((u16_at(0) as u32) << 16) | u16_at(2) as u32;
    if tag >> 16 == 0xFFFE || !syn.explicit {
        return Ok(Hdr {
            tag,
            vr: *b"  ",
            len: u32_at(4),
            hlen: 8,
        });
    }
    let vr = [b[4], b[5]];
    if !known_vr(vr) {
        return Err(HdrError::Bad(format!(
            "element {} has no valid VR ({}); wrong transfer syntax, or not a data set",
            tag_str(tag),
            vr_str(vr)
        )));
    }
    if long_vr(vr) {
        if b.len() < 12 {
            return Err(HdrError::Short(12));
        }
        Ok(Hdr {
            tag,
            vr,
            len: u32_at(8),
            hlen: 12,
        })
    } else {
        Ok(Hdr {
            tag,
            vr,
            len: u16_at(6) as u32,
            hlen: 8,
        })
    }
}

/// The VR of a tag in Implicit VR data (see the module documentation for the rules).
pub fn implicit_vr(tag: u32) -> [u8; 2] {
    use dicom_core::dictionary::DataDictionary;
    let (g, e) = ((tag >> 16) as u16, (tag & 0xFFFF) as u16);
    if e == 0 {
        return *b"UL";
    }
    if g & 1 == 1 {
        return if (0x10..=0xFF).contains(&e) {
            *b"LO"
        } else {
            *b"UN"
        };
    }
    match dicom_dictionary_std::StandardDataDictionary.by_tag(dicom_core::Tag(g, e)) {
        Some(entry) => entry.vr.relaxed().to_bytes(),
        None => *b"UN",
    }
}

/// The width of the numbers in a value of this VR, for byte-swapping (AT as two 16-bit halves).
fn swap_width(vr: [u8; 2]) -> usize {
    match &vr {
        b"US" | b"SS" | b"OW" | b"AT" => 2,
        b"UL" | b"SL" | b"FL" | b"OF" | b"OL" => 4,
        b"FD" | b"OD" | b"OV" | b"SV" | b"UV" => 8,
        _ => 1,
    }
}

/// Append `v` with each `width`-byte number reversed (a remainder is copied as it is).
fn extend_swapped(out: &mut Vec<u8>, v: &[u8], width: usize) {
    if width < 2 {
        out.extend_from_slice(v);
        return;
    }
    let mut chunks = v.chunks_exact(width);
    for c in &mut chunks {
        out.extend(c.iter().rev());
    }
    out.extend_from_slice(chunks.remainder());
}

/// A cursor over a [`ReadAt`] that walks headers through a bounded window.
struct Walker<'a> {
    src: &'a dyn ReadAt,
    size: u64,
    win: Vec<u8>,
    win_start: u64,
    /// Added to positions in messages.
    base: u64,
}

impl<'a> Walker<'a> {
    fn new(src: &'a dyn ReadAt, base: u64) -> Self {
        Walker {
            src,
            size: src.size(),
            win: Vec::new(),
            win_start: 0,
            base,
        }
    }

    /// Up to `n` bytes from `pos` (fewer only at the end of the file).
    fn bytes(&mut self, pos: u64, n: usize) -> Result<&[u8], String> {
        let want = (n as u64).min(self.size.saturating_sub(pos)) as usize;
        let win_end = self.win_start + self.win.len() as u64;
        if pos < self.win_start || pos + want as u64 > win_end {
            let len = (want.max(CHUNK) as u64).min(self.size - pos.min(self.size)) as usize;
            self.win.resize(len, 0);
            self.win_start = pos;
            let mut got = 0;
            while got < len {
                let k = self
                    .src
                    .read_at(pos + got as u64, &mut self.win[got..])
                    .map_err(|e| format!("read error at byte {}: {e}", pos + got as u64))?;
                if k == 0 {
                    self.win.truncate(got);
                    return Err(format!(
                        "the file ends at byte {} although its size is {}",
                        pos + got as u64,
                        self.size
                    ));
                }
                got += k;
            }
        }
        let off = (pos - self.win_start) as usize;
        Ok(&self.win[off..off + want])
    }

    fn truncated(&self, what: &str, pos: u64, need: u64) -> String {
        format!(
            "truncated: {what} at byte {} needs {need} bytes but the file ends at byte {}",
            self.base + pos,
            self.base + self.size
        )
    }

    fn header(&mut self, pos: u64, syn: Syntax) -> Result<Hdr, String> {
        let base = self.base;
        let b = self.bytes(pos, 12)?;
        match parse_header(b, syn) {
            Ok(h) => Ok(h),
            Err(HdrError::Short(n)) => Err(self.truncated("element header", pos, n as u64)),
            Err(HdrError::Bad(m)) => Err(format!("byte {}: {m}", base + pos)),
        }
    }

    /// Skip the element whose header `h` is at `pos`; returns where it ends.
    fn skip_element(
        &mut self,
        pos: u64,
        h: &Hdr,
        syn: Syntax,
        depth: usize,
    ) -> Result<u64, String> {
        if h.len != UNDEFINED {
            let end = pos + h.hlen as u64 + h.len as u64;
            if end > self.size {
                return Err(self.truncated(&tag_str(h.tag), pos, h.hlen as u64 + h.len as u64));
            }
            return Ok(end);
        }
        let nested = match &h.vr {
            b"UN" => Syntax::IMPLICIT_LE,
            b"SQ" | b"OB" | b"OW" | b"  " => syn,
            _ => {
                return Err(format!(
                    "byte {}: {} has undefined length but VR {}",
                    self.base + pos,
                    tag_str(h.tag),
                    vr_str(h.vr)
                ))
            }
        };
        self.skip_items(pos + h.hlen as u64, nested, depth + 1)
    }

    /// Skip the items of a sequence (or fragments) of undefined length, through its delimiter.
    fn skip_items(&mut self, mut pos: u64, syn: Syntax, depth: usize) -> Result<u64, String> {
        if depth > MAX_DEPTH {
            return Err(format!(
                "byte {}: sequences nested too deep",
                self.base + pos
            ));
        }
        loop {
            let h = self.header(pos, syn)?;
            match h.tag {
                SEQ_END => return Ok(pos + 8),
                ITEM if h.len == UNDEFINED => pos = self.skip_item(pos + 8, syn, depth + 1)?,
                ITEM => {
                    if pos + 8 + h.len as u64 > self.size {
                        return Err(self.truncated("item", pos, 8 + h.len as u64));
                    }
                    pos += 8 + h.len as u64;
                }
                t => {
                    return Err(format!(
                        "byte {}: expected an item or a sequence delimiter, found {}",
                        self.base + pos,
                        tag_str(t)
                    ))
                }
            }
        }
    }

    /// Skip the elements of an item of undefined length, through its delimiter.
    fn skip_item(&mut self, mut pos: u64, syn: Syntax, depth: usize) -> Result<u64, String> {
        loop {
            let h = self.header(pos, syn)?;
            match h.tag {
                ITEM_END => return Ok(pos + 8),
                t if t >> 16 == 0xFFFE => {
                    return Err(format!(
                        "byte {}: unexpected {} inside an item",
                        self.base + pos,
                        tag_str(t)
                    ))
                }
                _ => pos = self.skip_element(pos, &h, syn, depth)?,
            }
        }
    }
}

/// Read and check a Part-10 file: its File Meta Information, the structure of the whole data set
/// (which must end exactly at the end of the file), and its SOP Class and Instance UIDs (which must
/// be those of the File Meta Information). Deflated files give `Err("deflated: transcode first")`.
pub fn read_header(src: &dyn ReadAt) -> Result<Header, String> {
    let size = src.size();
    let mut w = Walker::new(src, 0);
    let mut n = CHUNK;
    let meta = loop {
        let b = w.bytes(0, n)?;
        let whole = b.len() as u64 == size;
        match read_meta(b) {
            Ok(m) if whole || m.dataset_offset + 4 <= b.len() => break m,
            Err(e) if whole || !e.contains("truncated") => {
                return Err(format!("File Meta Information: {e}"))
            }
            _ => {}
        }
        if n >= MAX_META {
            return Err(format!(
                "File Meta Information: longer than {MAX_META} bytes"
            ));
        }
        n *= 4;
    };
    if meta.transfer_syntax == DEFLATED_LE {
        return Err("deflated: transcode first".into());
    }
    let syn = Syntax::for_uid(&meta.transfer_syntax).unwrap_or(Syntax::EXPLICIT_LE);

    let mut elems = Vec::new();
    let mut collecting = true;
    let mut pos = meta.dataset_offset as u64;
    while pos < size {
        let h = w.header(pos, syn)?;
        if h.tag >> 16 == 0xFFFE {
            return Err(format!(
                "byte {pos}: item or delimiter {} at the top level of the data set",
                tag_str(h.tag)
            ));
        }
        let end = w.skip_element(pos, &h, syn, 0)?;
        if h.tag > 0x7FE0_0000 {
            collecting = false;
        }
        let delim = if h.len == UNDEFINED { 8 } else { 0 };
        let vlen = end - pos - h.hlen as u64 - delim;
        if collecting && vlen <= MAX_VALUE {
            let b = w.bytes(pos, (end - pos) as usize)?;
            elems.push(top_elem(b, &h, syn, pos)?);
        }
        pos = end;
    }

    let uid = |tag: u32, name: &str| {
        elems
            .iter()
            .find(|e| e.tag == tag)
            .map(|e| ascii(&e.value))
            .ok_or_else(|| format!("the data set has no {name} {}", tag_str(tag)))
    };
    let sop_class = uid(tags::SOP_CLASS_UID, "SOP Class UID")?;
    let sop_instance = uid(tags::SOP_INSTANCE_UID, "SOP Instance UID")?;
    if sop_class != meta.sop_class {
        return Err(format!(
            "SOP Class UID in the data set is {sop_class} but the File Meta Information says {}",
            meta.sop_class
        ));
    }
    if sop_instance != meta.sop_instance {
        return Err(format!(
            "SOP Instance UID in the data set is {sop_instance} but the File Meta Information says {}",
            meta.sop_instance
        ));
    }
    Ok(Header {
        meta,
        elems,
        sop_class,
        sop_instance,
    })
}

/// A top-level element (all of its bytes in `b`) as an [`Elem`].
fn top_elem(b: &[u8], h: &Hdr, syn: Syntax, pos: u64) -> Result<Elem, String> {
    let delim = if h.len == UNDEFINED { 8 } else { 0 };
    if syn == Syntax::EXPLICIT_LE {
        return Ok(Elem {
            tag: h.tag,
            vr: h.vr,
            value: b[h.hlen..b.len() - delim].to_vec(),
        });
    }
    let tx = Tx {
        inp: b,
        base: pos as usize,
        syn,
    };
    let mut out = Vec::new();
    let mut p = 0;
    tx.element(&mut p, *h, b.len(), 0, &mut out, &mut 0)?;
    let oh = match parse_header(&out, Syntax::EXPLICIT_LE) {
        Ok(oh) => oh,
        Err(_) => return Err(format!("byte {pos}: {} re-encodes badly", tag_str(h.tag))),
    };
    let odelim = if oh.len == UNDEFINED { 8 } else { 0 };
    Ok(Elem {
        tag: oh.tag,
        vr: oh.vr,
        value: out[oh.hlen..out.len() - odelim].to_vec(),
    })
}

/// Transcode a whole Part-10 file in Implicit VR Little Endian, Explicit VR Big Endian or
/// Deflated Explicit VR Little Endian to Explicit VR Little Endian, losslessly: the same preamble,
/// the File Meta Information with the new Transfer Syntax UID and a correct group length (the
/// other meta elements kept as they were), and every data-set element re-encoded (see the module
/// documentation for how VRs are chosen). A file already in Explicit VR Little Endian is returned
/// as it is; encapsulated (compressed) syntaxes are an error.
pub fn transcode_to_explicit_le(file: &[u8]) -> Result<Vec<u8>, String> {
    let meta = read_meta(file).map_err(|e| format!("File Meta Information: {e}"))?;
    let ds = &file[meta.dataset_offset..];
    let (syn, data, base): (Syntax, Cow<[u8]>, usize) = match meta.transfer_syntax.as_str() {
        EXPLICIT_LE => return Ok(file.to_vec()),
        IMPLICIT_LE => (Syntax::IMPLICIT_LE, ds.into(), meta.dataset_offset),
        EXPLICIT_BE => (Syntax::EXPLICIT_BE, ds.into(), meta.dataset_offset),
        DEFLATED_LE => (Syntax::EXPLICIT_LE, inflate(ds)?.into(), 0),
        other => {
            return Err(format!(
                "transfer syntax {other} is encapsulated or unknown: not transcoded"
            ))
        }
    };

    // File Meta Information, with the new Transfer Syntax UID and group length.
    let mut g = Writer::new();
    let mut r = super::Reader::new(&file[..meta.dataset_offset], 132, Syntax::EXPLICIT_LE);
    while !r.at_end() {
        let h = r.header()?;
        let v = r.value(&h)?;
        match h.tag {
            tags::FILE_META_GROUP_LENGTH => {}
            tags::TRANSFER_SYNTAX_UID => g.str(h.tag, h.vr, EXPLICIT_LE),
            _ => {
                g.header(h.tag, h.vr, h.len);
                g.out.extend_from_slice(v);
            }
        }
    }
    let mut w = Writer {
        out: Vec::with_capacity(file.len() + file.len() / 8),
    };
    w.out.extend_from_slice(&file[..132]);
    w.u32(tags::FILE_META_GROUP_LENGTH, g.out.len() as u32);
    w.out.extend_from_slice(&g.out);

    let tx = Tx {
        inp: &data,
        base,
        syn,
    };
    tx.dataset(0, data.len(), 0, &mut w.out)?;
    Ok(w.out)
}

/// Inflate a deflated data set (raw deflate, PS3.5 A.5; a zlib stream is accepted too).
fn inflate(d: &[u8]) -> Result<Vec<u8>, String> {
    fn run(r: impl Read) -> std::io::Result<Vec<u8>> {
        let mut out = Vec::new();
        r.take(MAX_INFLATED + 1).read_to_end(&mut out)?;
        Ok(out)
    }
    let out = match run(flate2::read::DeflateDecoder::new(d)) {
        Ok(o) => o,
        Err(e) => {
            let zlib_header = d.len() >= 2
                && (d[0] & 0x0F) == 8
                && u16::from_be_bytes([d[0], d[1]]).is_multiple_of(31);
            match zlib_header.then(|| run(flate2::read::ZlibDecoder::new(d))) {
                Some(Ok(o)) => o,
                _ => return Err(format!("deflated data set: {e}")),
            }
        }
    };
    if out.len() as u64 > MAX_INFLATED {
        return Err(format!(
            "deflated data set inflates to more than {MAX_INFLATED} bytes"
        ));
    }
    Ok(out)
}

/// Re-encodes data in `syn` as Explicit VR Little Endian. Positions are into `inp`; `lim` is
/// the end of the enclosing defined-length value.
struct Tx<'a> {
    inp: &'a [u8],
    /// Added to positions in messages.
    base: usize,
    syn: Syntax,
}

fn put_header(out: &mut Vec<u8>, tag: u32, vr: [u8; 2], len: u32) {
    out.extend_from_slice(&((tag >> 16) as u16).to_le_bytes());
    out.extend_from_slice(&((tag & 0xFFFF) as u16).to_le_bytes());
    out.extend_from_slice(&vr);
    if long_vr(vr) {
        out.extend_from_slice(&[0, 0]);
        out.extend_from_slice(&len.to_le_bytes());
    } else {
        out.extend_from_slice(&(len as u16).to_le_bytes());
    }
}

fn put_item(out: &mut Vec<u8>, tag: u32, len: u32) {
    out.extend_from_slice(&((tag >> 16) as u16).to_le_bytes());
    out.extend_from_slice(&((tag & 0xFFFF) as u16).to_le_bytes());
    out.extend_from_slice(&len.to_le_bytes());
}

fn defined_len(n: usize, what: &str) -> Result<u32, String> {
    u32::try_from(n)
        .ok()
        .filter(|&l| l != UNDEFINED)
        .ok_or_else(|| format!("{what} re-encodes to {n} bytes: too long for a length field"))
}

impl Tx<'_> {
    fn header(&self, pos: usize, lim: usize) -> Result<Hdr, String> {
        match parse_header(&self.inp[pos..lim], self.syn) {
            Ok(h) => Ok(h),
            Err(HdrError::Short(n)) => Err(self.truncated("element header", pos, n, lim)),
            Err(HdrError::Bad(m)) => Err(format!("byte {}: {m}", self.base + pos)),
        }
    }

    fn truncated(&self, what: &str, pos: usize, need: usize, lim: usize) -> String {
        if lim == self.inp.len() {
            format!(
                "truncated: {what} at byte {} needs {need} bytes but the file ends at byte {}",
                self.base + pos,
                self.base + lim
            )
        } else {
            format!(
                "byte {}: {what} needs {need} bytes but its enclosing item or sequence ends at byte {}",
                self.base + pos,
                self.base + lim
            )
        }
    }

    fn take(&self, pos: usize, n: usize, lim: usize, what: &str) -> Result<&[u8], String> {
        if n > lim - pos {
            return Err(self.truncated(what, pos, n, lim));
        }
        Ok(&self.inp[pos..pos + n])
    }

    /// The elements in `[pos, end)`.
    fn dataset(
        &self,
        mut pos: usize,
        end: usize,
        depth: usize,
        out: &mut Vec<u8>,
    ) -> Result<(), String> {
        let mut bits = 0;
        while pos < end {
            let h = self.header(pos, end)?;
            self.element(&mut pos, h, end, depth, out, &mut bits)?;
        }
        Ok(())
    }

    /// The element whose header `h` is at `*pos`. `bits`: the Bits Allocated (0028,0100) seen
    /// so far in the same data set or item, for byte-swapping Big Endian Pixel Data.
    fn element(
        &self,
        pos: &mut usize,
        h: Hdr,
        lim: usize,
        depth: usize,
        out: &mut Vec<u8>,
        bits: &mut u16,
    ) -> Result<(), String> {
        let start = *pos;
        if h.tag >> 16 == 0xFFFE {
            return Err(format!(
                "byte {}: unexpected item or delimiter {} where an element should be",
                self.base + start,
                tag_str(h.tag)
            ));
        }
        if depth > MAX_DEPTH {
            return Err(format!(
                "byte {}: sequences nested too deep",
                self.base + start
            ));
        }
        let vstart = start + h.hlen;
        let vr = if self.syn.explicit {
            h.vr
        } else {
            implicit_vr(h.tag)
        };
        if h.len == UNDEFINED {
            match &vr {
                b"SQ" => {
                    put_header(out, h.tag, vr, UNDEFINED);
                    *pos = vstart;
                    return self.items(pos, lim, true, false, depth + 1, out);
                }
                b"OB" | b"OW" if self.syn.explicit => {
                    put_header(out, h.tag, vr, UNDEFINED);
                    *pos = vstart;
                    return self.items(pos, lim, true, true, depth + 1, out);
                }
                _ if &vr == b"UN" || !self.syn.explicit => {
                    // Implicit VR LE items (PS3.5 6.2.2): copied as they are.
                    let src = &self.inp[..lim];
                    let mut walk = Walker::new(&src, self.base as u64);
                    let end =
                        walk.skip_items(vstart as u64, Syntax::IMPLICIT_LE, depth + 1)? as usize;
                    put_header(out, h.tag, *b"UN", UNDEFINED);
                    out.extend_from_slice(&self.inp[vstart..end]);
                    *pos = end;
                    return Ok(());
                }
                _ => {
                    return Err(format!(
                        "byte {}: {} has undefined length but VR {}",
                        self.base + start,
                        tag_str(h.tag),
                        vr_str(vr)
                    ))
                }
            }
        }
        let len = h.len as usize;
        if len > lim - vstart {
            return Err(self.truncated(&tag_str(h.tag), start, h.hlen + len, lim));
        }
        let v = &self.inp[vstart..vstart + len];
        *pos = vstart + len;
        if &vr == b"SQ" {
            let mut body = Vec::new();
            let mut p = vstart;
            match self.items(&mut p, vstart + len, false, false, depth + 1, &mut body) {
                Ok(()) => {
                    put_header(out, h.tag, vr, defined_len(body.len(), &tag_str(h.tag))?);
                    out.extend_from_slice(&body);
                    return Ok(());
                }
                // A dictionary guess that does not fit: keep the bytes as UN.
                Err(_) if !self.syn.explicit => {
                    put_header(out, h.tag, *b"UN", h.len);
                    out.extend_from_slice(v);
                    return Ok(());
                }
                Err(e) => return Err(e),
            }
        }
        let ovr = if !long_vr(vr) && len > 0xFFFE {
            *b"UN"
        } else {
            vr
        };
        put_header(out, h.tag, ovr, h.len);
        if h.tag == 0x0028_0100 && len == 2 {
            *bits = if self.syn.big_endian {
                u16::from_be_bytes([v[0], v[1]])
            } else {
                u16::from_le_bytes([v[0], v[1]])
            };
        }
        if self.syn.big_endian {
            let width = match (h.tag, &vr, *bits) {
                (tags::PIXEL_DATA, b"OW", 32) => 4,
                (tags::PIXEL_DATA, b"OW", 64) => 8,
                _ => swap_width(vr),
            };
            extend_swapped(out, v, width);
        } else {
            out.extend_from_slice(v);
        }
        Ok(())
    }

    /// The items of a sequence: up to `lim` (defined length) or through the sequence delimiter
    /// (`delimited`, which is written too). `fragments`: encapsulated pixel data, copied as is.
    fn items(
        &self,
        pos: &mut usize,
        lim: usize,
        delimited: bool,
        fragments: bool,
        depth: usize,
        out: &mut Vec<u8>,
    ) -> Result<(), String> {
        if depth > MAX_DEPTH {
            return Err(format!(
                "byte {}: sequences nested too deep",
                self.base + *pos
            ));
        }
        loop {
            if !delimited && *pos >= lim {
                return Ok(());
            }
            let h = self.header(*pos, lim)?;
            match h.tag {
                SEQ_END if delimited => {
                    put_item(out, SEQ_END, 0);
                    *pos += 8;
                    return Ok(());
                }
                ITEM if h.len != UNDEFINED => {
                    let v = &self.take(*pos, 8 + h.len as usize, lim, "item")?[8..];
                    if fragments {
                        put_item(out, ITEM, h.len);
                        out.extend_from_slice(v);
                    } else {
                        let mut body = Vec::new();
                        self.dataset(*pos + 8, *pos + 8 + v.len(), depth + 1, &mut body)?;
                        put_item(out, ITEM, defined_len(body.len(), "an item")?);
                        out.extend_from_slice(&body);
                    }
                    *pos += 8 + v.len();
                }
                ITEM if !fragments => {
                    put_item(out, ITEM, UNDEFINED);
                    *pos += 8;
                    let mut bits = 0;
                    loop {
                        let eh = self.header(*pos, lim)?;
                        if eh.tag == ITEM_END {
                            put_item(out, ITEM_END, 0);
                            *pos += 8;
                            break;
                        }
                        self.element(pos, eh, lim, depth + 1, out, &mut bits)?;
                    }
                }
                t => {
                    return Err(format!(
                        "byte {}: expected an item{}, found {}",
                        self.base + *pos,
                        if delimited {
                            " or a sequence delimiter"
                        } else {
                            ""
                        },
                        if t == ITEM {
                            "a fragment of undefined length".to_string()
                        } else {
                            tag_str(t)
                        }
                    ))
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dicom::part10_header;
    use std::cell::Cell;

    const CLASS: &str = "1.2.840.10008.5.1.4.1.1.7";
    const INST: &str = "1.2.826.0.1.3680043.2.1125.1.42";

    /// A test data-set model, encoded independently of the code under test.
    #[derive(Clone)]
    enum V {
        /// Little Endian value bytes.
        B(Vec<u8>),
        /// (undefined sequence length, [(undefined item length, elements)]).
        Seq(bool, Vec<(bool, Vec<E>)>),
    }

    #[derive(Clone)]
    struct E {
        tag: u32,
        vr: [u8; 2],
        v: V,
    }

    fn e(tag: u32, vr: &[u8; 2], v: &[u8]) -> E {
        E {
            tag,
            vr: *vr,
            v: V::B(v.to_vec()),
        }
    }

    fn s(tag: u32, undefined: bool, items: Vec<(bool, Vec<E>)>) -> E {
        E {
            tag,
            vr: *b"SQ",
            v: V::Seq(undefined, items),
        }
    }

    fn u16s(v: &[u16]) -> Vec<u8> {
        v.iter().flat_map(|x| x.to_le_bytes()).collect()
    }

    fn width(vr: &[u8; 2]) -> usize {
        match vr {
            b"US" | b"SS" | b"OW" | b"AT" => 2,
            b"UL" | b"SL" | b"FL" | b"OF" | b"OL" => 4,
            b"FD" | b"OD" | b"OV" | b"SV" | b"UV" => 8,
            _ => 1,
        }
    }

    fn put16(out: &mut Vec<u8>, v: u16, syn: Syntax) {
        out.extend(if syn.big_endian {
            v.to_be_bytes()
        } else {
            v.to_le_bytes()
        });
    }

    fn put32(out: &mut Vec<u8>, v: u32, syn: Syntax) {
        out.extend(if syn.big_endian {
            v.to_be_bytes()
        } else {
            v.to_le_bytes()
        });
    }

    fn enc(elems: &[E], syn: Syntax) -> Vec<u8> {
        let mut out = Vec::new();
        for x in elems {
            enc_elem(x, syn, &mut out);
        }
        out
    }

    fn enc_elem(x: &E, syn: Syntax, out: &mut Vec<u8>) {
        let (value, len) = match &x.v {
            V::B(b) => {
                let mut v = Vec::new();
                let w = if syn.big_endian { width(&x.vr) } else { 1 };
                for c in b.chunks(w) {
                    v.extend(c.iter().rev());
                }
                let l = v.len() as u32;
                (v, l)
            }
            V::Seq(und, items) => {
                let mut v = Vec::new();
                for (iund, el) in items {
                    let body = enc(el, syn);
                    put16(&mut v, 0xFFFE, syn);
                    put16(&mut v, 0xE000, syn);
                    put32(
                        &mut v,
                        if *iund { UNDEFINED } else { body.len() as u32 },
                        syn,
                    );
                    v.extend(&body);
                    if *iund {
                        put16(&mut v, 0xFFFE, syn);
                        put16(&mut v, 0xE00D, syn);
                        put32(&mut v, 0, syn);
                    }
                }
                let l = if *und { UNDEFINED } else { v.len() as u32 };
                if *und {
                    put16(&mut v, 0xFFFE, syn);
                    put16(&mut v, 0xE0DD, syn);
                    put32(&mut v, 0, syn);
                }
                (v, l)
            }
        };
        put16(out, (x.tag >> 16) as u16, syn);
        put16(out, x.tag as u16, syn);
        if syn.explicit {
            out.extend(x.vr);
            if long_vr(x.vr) {
                out.extend([0, 0]);
                put32(out, len, syn);
            } else {
                put16(out, len as u16, syn);
            }
        } else {
            put32(out, len, syn);
        }
        out.extend(value);
    }

    /// The test data set, with the VRs that the Implicit VR mapping gives.
    fn model(class: &str, inst: &str) -> Vec<E> {
        let mut frag = Vec::new();
        frag.extend(1000.0f64.to_le_bytes());
        vec![
            e(0x0008_0005, b"CS", b"ISO_IR 100"),
            e(0x0008_0016, b"UI", format!("{class}\0").as_bytes()),
            e(0x0008_0018, b"UI", format!("{inst}\0").as_bytes()),
            e(0x0008_0060, b"CS", b"OT"),
            s(
                0x0008_1140,
                true,
                vec![
                    (
                        true,
                        vec![
                            e(0x0008_1150, b"UI", b"1.2.3\0"),
                            e(0x0008_1155, b"UI", b"1.2.3.4.5\0"),
                            s(
                                0x0008_9215,
                                false,
                                vec![(false, vec![e(0x0008_0100, b"SH", b"121327")])],
                            ),
                        ],
                    ),
                    (false, vec![e(0x0008_1150, b"UI", b"1.2.4\0")]),
                    (true, vec![]),
                ],
            ),
            e(0x0009_0010, b"LO", b"ACME"),
            e(0x0009_1001, b"UN", &[1, 2, 3, 4, 5, 6]),
            e(0x0010_0010, b"PN", b"Doe^Jane"),
            s(0x0010_1002, false, vec![]),
            e(0x0018_9087, b"FD", &frag),
            e(
                0x0018_9089,
                b"FD",
                &[0.5f64, -0.25, 2.0]
                    .iter()
                    .flat_map(|x| x.to_le_bytes())
                    .collect::<Vec<_>>(),
            ),
            e(0x0020_0013, b"IS", b"7 "),
            e(0x0028_0009, b"AT", &u16s(&[0x0018, 0x1063])),
            e(0x0028_0010, b"US", &u16s(&[2])),
            e(0x0028_0011, b"US", &u16s(&[2])),
            e(0x0028_0100, b"US", &u16s(&[16])),
            e(0x0028_0106, b"US", &u16s(&[3])),
            e(0x0028_1050, b"DS", b"40"),
            e(0x0040_A0B0, b"US", &u16s(&[1, 2, 3, 4])),
            e(0x7FE0_0010, b"OW", &u16s(&[0x0102, 0x0304, 0xA0B0, 0xFFFE])),
        ]
    }

    fn file(ts: &str, ds: &[u8]) -> Vec<u8> {
        let mut f = part10_header(CLASS, INST, ts);
        f.extend_from_slice(ds);
        f
    }

    /// The elements `read_header` should give for a model.
    fn expected_elems(m: &[E]) -> Vec<Elem> {
        m.iter()
            .take_while(|x| x.tag <= 0x7FE0_0000)
            .map(|x| {
                let mut b = Vec::new();
                enc_elem(x, Syntax::EXPLICIT_LE, &mut b);
                let hl = if long_vr(x.vr) { 12 } else { 8 };
                let end = match &x.v {
                    V::Seq(true, _) => b.len() - 8,
                    _ => b.len(),
                };
                Elem {
                    tag: x.tag,
                    vr: x.vr,
                    value: b[hl..end].to_vec(),
                }
            })
            .collect()
    }

    /// Counts what is read.
    struct Counting {
        data: Vec<u8>,
        calls: Cell<usize>,
        bytes: Cell<u64>,
        max_req: Cell<usize>,
    }

    impl Counting {
        fn new(data: Vec<u8>) -> Self {
            Counting {
                data,
                calls: Cell::new(0),
                bytes: Cell::new(0),
                max_req: Cell::new(0),
            }
        }
    }

    impl ReadAt for Counting {
        fn size(&self) -> u64 {
            self.data.len() as u64
        }

        fn read_at(&self, pos: u64, buf: &mut [u8]) -> std::io::Result<usize> {
            self.calls.set(self.calls.get() + 1);
            self.max_req.set(self.max_req.get().max(buf.len()));
            let n = self.data.read_at(pos, buf)?;
            self.bytes.set(self.bytes.get() + n as u64);
            Ok(n)
        }
    }

    #[test]
    fn dictionary_vrs_of_the_model() {
        for x in model(CLASS, INST) {
            assert_eq!(implicit_vr(x.tag), x.vr, "{}", tag_str(x.tag));
        }
        assert_eq!(implicit_vr(0x0019_0000), *b"UL");
        assert_eq!(implicit_vr(0x0029_10FF), *b"UN");
        assert_eq!(implicit_vr(0x6001_3000), *b"UN");
        assert_eq!(implicit_vr(0x6002_3000), *b"OW");
        assert_eq!(implicit_vr(0x0028_3006), *b"OW");
        assert_eq!(implicit_vr(0x0011_0011), *b"LO");
        assert_eq!(implicit_vr(0x0008_0000), *b"UL");
        assert_eq!(implicit_vr(0x0008_0001), *b"UL");
        assert_eq!(implicit_vr(0x0008_0002), *b"UN");
    }

    #[test]
    fn read_header_explicit_le() {
        let m = model(CLASS, INST);
        let f = file(EXPLICIT_LE, &enc(&m, Syntax::EXPLICIT_LE));
        let h = read_header(&f).unwrap();
        assert_eq!(h.sop_class, CLASS);
        assert_eq!(h.sop_instance, INST);
        assert_eq!(h.meta.transfer_syntax, EXPLICIT_LE);
        assert_eq!(h.elems, expected_elems(&m));
        assert!(h.elems.iter().all(|e| e.tag != tags::PIXEL_DATA));
        assert_eq!(h.elems[7].value, b"Doe^Jane");
        // and through a plain slice
        let sl: &[u8] = &f;
        assert_eq!(read_header(&sl).unwrap(), h);
    }

    #[test]
    fn read_header_other_syntaxes_give_explicit_le_values() {
        let m = model(CLASS, INST);
        let want = expected_elems(&m);
        for (ts, syn) in [
            (IMPLICIT_LE, Syntax::IMPLICIT_LE),
            (EXPLICIT_BE, Syntax::EXPLICIT_BE),
        ] {
            let f = file(ts, &enc(&m, syn));
            let h = read_header(&f).unwrap();
            assert_eq!(h.elems, want, "{ts}");
            assert_eq!(h.sop_instance, INST);
        }
        let d = file(DEFLATED_LE, &[3, 0]);
        assert_eq!(read_header(&d).unwrap_err(), "deflated: transcode first");
    }

    #[test]
    fn every_truncation_is_an_error() {
        let m = model(CLASS, INST);
        let ds = enc(&m, Syntax::EXPLICIT_LE);
        let f = file(EXPLICIT_LE, &ds);
        let off = f.len() - ds.len();
        // Ends of top-level elements: a cut there is a shorter but valid data set.
        let mut bounds = vec![];
        let mut p = off;
        for x in &m {
            let mut b = Vec::new();
            enc_elem(x, Syntax::EXPLICIT_LE, &mut b);
            p += b.len();
            bounds.push(p);
        }
        assert!(read_header(&f).is_ok());
        let mut truncated = 0;
        for cut in 0..f.len() {
            match read_header(&f[..cut].to_vec()) {
                Ok(_) => assert!(bounds.contains(&cut), "cut {cut} accepted"),
                Err(e) => {
                    if cut > off && !bounds.contains(&cut) {
                        assert!(e.contains("truncated"), "cut {cut}: {e}");
                        truncated += 1;
                    }
                }
            }
        }
        assert!(truncated > 100);
        // The same for the other syntaxes, and for the transcoder.
        for (ts, syn) in [
            (IMPLICIT_LE, Syntax::IMPLICIT_LE),
            (EXPLICIT_BE, Syntax::EXPLICIT_BE),
        ] {
            let ds = enc(&m, syn);
            let f = file(ts, &ds);
            let off = f.len() - ds.len();
            for cut in 0..f.len() {
                let r = read_header(&f[..cut].to_vec());
                let t = transcode_to_explicit_le(&f[..cut]);
                if let Err(e) = &r {
                    if cut > off {
                        assert!(t.is_err() || e.contains("no SOP"), "{ts} cut {cut}");
                        assert!(
                            e.contains("truncated") || e.contains("no SOP"),
                            "{ts} cut {cut}: {e}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn error_message_for_a_cut_value() {
        let m = model(CLASS, INST);
        let f = file(EXPLICIT_LE, &enc(&m, Syntax::EXPLICIT_LE));
        let cut = f.len() - 3;
        let e = read_header(&f[..cut].to_vec()).unwrap_err();
        assert_eq!(
            e,
            format!(
                "truncated: (7FE0,0010) at byte {} needs 20 bytes but the file ends at byte {cut}",
                f.len() - 20
            )
        );
    }

    #[test]
    fn uid_mismatch() {
        let m = model(CLASS, "1.2.3.5");
        let f = file(EXPLICIT_LE, &enc(&m, Syntax::EXPLICIT_LE));
        let e = read_header(&f).unwrap_err();
        assert!(e.contains("1.2.3.5") && e.contains(INST), "{e}");
        assert!(e.contains("SOP Instance UID"), "{e}");
        let m = model("1.2.3", INST);
        let f = file(EXPLICIT_LE, &enc(&m, Syntax::EXPLICIT_LE));
        let e = read_header(&f).unwrap_err();
        assert!(e.contains("1.2.3 ") && e.contains(CLASS), "{e}");
        let m: Vec<E> = model(CLASS, INST)
            .into_iter()
            .filter(|x| x.tag != tags::SOP_INSTANCE_UID)
            .collect();
        let f = file(EXPLICIT_LE, &enc(&m, Syntax::EXPLICIT_LE));
        assert!(read_header(&f).unwrap_err().contains("(0008,0018)"));
    }

    fn check_transcode(ts: &str, syn: Syntax) {
        let m = model(CLASS, INST);
        let want = file(EXPLICIT_LE, &enc(&m, Syntax::EXPLICIT_LE));
        let input = file(ts, &enc(&m, syn));
        let got = transcode_to_explicit_le(&input).unwrap();
        let gm = read_meta(&got).unwrap();
        assert_eq!(gm.transfer_syntax, EXPLICIT_LE);
        assert_eq!(gm.sop_instance, INST);
        assert_eq!(gm, read_meta(&want).unwrap());
        assert_eq!(got, want, "{ts}");
        let h = read_header(&got).unwrap();
        assert_eq!(h.elems, expected_elems(&m));
    }

    #[test]
    fn transcode_implicit_le() {
        check_transcode(IMPLICIT_LE, Syntax::IMPLICIT_LE);
    }

    #[test]
    fn transcode_explicit_be() {
        check_transcode(EXPLICIT_BE, Syntax::EXPLICIT_BE);
    }

    #[test]
    fn transcode_big_endian_32_bit_pixels() {
        // Pixel Data OW with Bits Allocated 32 holds 32-bit big-endian numbers.
        let mut m = model(CLASS, INST);
        let px: Vec<u8> = [0x0102_0304u32, 0xA0B0_C0D0]
            .iter()
            .flat_map(|x| x.to_le_bytes())
            .collect();
        for x in m.iter_mut() {
            match x.tag {
                0x0028_0100 => x.v = V::B(u16s(&[32])),
                tags::PIXEL_DATA => x.v = V::B(px.clone()),
                _ => {}
            }
        }
        let mut be = enc(&m, Syntax::EXPLICIT_BE);
        let n = be.len();
        be.truncate(n - 8);
        be.extend([1, 2, 3, 4, 0xA0, 0xB0, 0xC0, 0xD0]);
        let got = transcode_to_explicit_le(&file(EXPLICIT_BE, &be)).unwrap();
        assert_eq!(got, file(EXPLICIT_LE, &enc(&m, Syntax::EXPLICIT_LE)));
    }

    #[test]
    fn transcode_deflated() {
        use std::io::Write;
        let m = model(CLASS, INST);
        let ds = enc(&m, Syntax::EXPLICIT_LE);
        let mut z = flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::default());
        z.write_all(&ds).unwrap();
        let mut zd = z.finish().unwrap();
        if zd.len() % 2 == 1 {
            zd.push(0);
        }
        let input = file(DEFLATED_LE, &zd);
        let got = transcode_to_explicit_le(&input).unwrap();
        assert_eq!(got, file(EXPLICIT_LE, &ds));
        assert!(read_header(&got).is_ok());
        // not a deflate stream
        let bad = file(DEFLATED_LE, &[0xFF; 64]);
        assert!(transcode_to_explicit_le(&bad)
            .unwrap_err()
            .contains("deflate"));
    }

    #[test]
    fn transcode_other_syntaxes() {
        let m = model(CLASS, INST);
        let f = file(EXPLICIT_LE, &enc(&m, Syntax::EXPLICIT_LE));
        assert_eq!(transcode_to_explicit_le(&f).unwrap(), f);
        let j = file("1.2.840.10008.1.2.4.50", &enc(&m, Syntax::EXPLICIT_LE));
        assert!(transcode_to_explicit_le(&j).is_err());
    }

    #[test]
    fn long_values() {
        // A short-VR value too long for Explicit VR becomes UN; long values are left out of elems.
        let big = vec![b'x'; 70_000];
        let mut m = model(CLASS, INST);
        m.insert(9, e(0x0010_4000, b"LT", &big));
        let f = file(IMPLICIT_LE, &enc(&m, Syntax::IMPLICIT_LE));
        let h = read_header(&f).unwrap();
        assert!(h.elems.iter().all(|e| e.tag != 0x0010_4000));
        let got = transcode_to_explicit_le(&f).unwrap();
        m[9].vr = *b"UN";
        assert_eq!(got, file(EXPLICIT_LE, &enc(&m, Syntax::EXPLICIT_LE)));
        assert!(read_header(&got).is_ok());
    }

    #[test]
    fn undefined_length_un_and_private_sequences() {
        // Explicit LE: UN of undefined length holds Implicit VR LE items; read_header and the
        // transcoder keep them as they are.
        let inner = s(
            0x0009_1002,
            true,
            vec![(true, vec![e(0x0009_1003, b"UN", &[9, 9])])],
        );
        let mut un = Vec::new();
        enc_elem(&inner, Syntax::IMPLICIT_LE, &mut un);
        let value = un[8..].to_vec(); // items and delimiter, implicit LE
        let mut m = model(CLASS, INST);
        let mut ds = enc(&m[..7], Syntax::EXPLICIT_LE);
        put_header(&mut ds, 0x0009_1002, *b"UN", UNDEFINED);
        ds.extend(&value);
        ds.extend(enc(&m[7..], Syntax::EXPLICIT_LE));
        let f = file(EXPLICIT_LE, &ds);
        let h = read_header(&f).unwrap();
        let x = h.elems.iter().find(|e| e.tag == 0x0009_1002).unwrap();
        assert_eq!((x.vr, &x.value[..]), (*b"UN", &value[..value.len() - 8]));
        // Implicit LE: a private sequence of undefined length becomes UN of undefined length.
        m.insert(7, inner);
        let fi = file(IMPLICIT_LE, &enc(&m, Syntax::IMPLICIT_LE));
        assert_eq!(transcode_to_explicit_le(&fi).unwrap(), f);
        assert_eq!(read_header(&fi).unwrap().elems, h.elems);
    }

    #[test]
    fn encapsulated_pixel_data() {
        let m = model(CLASS, INST);
        let mut ds = enc(&m[..m.len() - 1], Syntax::EXPLICIT_LE);
        let mut w = Writer::new();
        w.header(tags::PIXEL_DATA, *b"OB", UNDEFINED);
        w.item_tag(ITEM, 0);
        w.item_tag(ITEM, 6);
        w.out.extend([0xFF, 0xD8, 1, 2, 0xFF, 0xD9]);
        w.item_tag(SEQ_END, 0);
        ds.extend(&w.out);
        let f = file("1.2.840.10008.1.2.4.50", &ds);
        let h = read_header(&f).unwrap();
        assert_eq!(h.elems, expected_elems(&m));
        for cut in f.len() - w.out.len() + 1..f.len() {
            let e = read_header(&f[..cut].to_vec()).unwrap_err();
            assert!(e.contains("truncated"), "{e}");
        }
        // trailing bytes after the data set
        let mut t = f.clone();
        t.extend([0, 0]);
        assert!(read_header(&t).unwrap_err().contains("truncated"));
    }

    #[test]
    fn common_case_is_cheap() {
        let mut m = model(CLASS, INST);
        let px: Vec<u8> = (0..512 * 1024).map(|i| i as u8).collect();
        *m.last_mut().unwrap() = e(tags::PIXEL_DATA, b"OW", &px);
        let f = Counting::new(file(EXPLICIT_LE, &enc(&m, Syntax::EXPLICIT_LE)));
        let h = read_header(&f).unwrap();
        assert_eq!(h.elems.len(), m.len() - 1);
        assert!(f.calls.get() <= 2, "{} reads", f.calls.get());
        assert!(f.bytes.get() <= 2 * CHUNK as u64);
    }

    fn xorshift(n: usize, mut x: u64) -> Vec<u8> {
        (0..n)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect()
    }

    #[test]
    fn garbage_is_a_quick_error() {
        let t = std::time::Instant::now();
        for (ts, seed) in [
            (EXPLICIT_LE, 1),
            (IMPLICIT_LE, 2),
            (EXPLICIT_BE, 3),
            (IMPLICIT_LE, 4),
            ("1.2.840.10008.1.2.4.90", 5),
        ] {
            let f = Counting::new(file(ts, &xorshift(200_000, seed)));
            assert!(read_header(&f).is_err());
            assert!(f.max_req.get() <= CHUNK + 64, "{}", f.max_req.get());
            if ts == IMPLICIT_LE || ts == EXPLICIT_BE {
                assert!(transcode_to_explicit_le(&f.data).is_err());
            }
        }
        // huge lengths
        for syn in [
            Syntax::EXPLICIT_LE,
            Syntax::IMPLICIT_LE,
            Syntax::EXPLICIT_BE,
        ] {
            let ts = match syn {
                Syntax::IMPLICIT_LE => IMPLICIT_LE,
                Syntax::EXPLICIT_BE => EXPLICIT_BE,
                _ => EXPLICIT_LE,
            };
            let m = model(CLASS, INST);
            let mut ds = enc(&m[..4], syn);
            let mut x = Vec::new();
            enc_elem(&e(0x0010_0010, b"OB", &[1, 2]), syn, &mut x);
            let n = x.len();
            let len = if syn.big_endian {
                0xFFFF_FFF0u32.to_be_bytes()
            } else {
                0xFFFF_FFF0u32.to_le_bytes()
            };
            x[n - 6..n - 2].copy_from_slice(&len);
            ds.extend(&x);
            ds.extend(xorshift(1000, 9));
            let f = Counting::new(file(ts, &ds));
            let e = read_header(&f).unwrap_err();
            assert!(e.contains("truncated: (0010,0010)"), "{e}");
            assert!(f.max_req.get() <= CHUNK + 64);
            if syn != Syntax::EXPLICIT_LE {
                assert!(transcode_to_explicit_le(&f.data).is_err());
            }
            // undefined-length garbage, deep nesting
            let mut deep = enc(&m[..4], syn);
            for _ in 0..1000 {
                let mut h = Vec::new();
                enc_elem(&s(0x0040_A730, true, vec![]), syn, &mut h);
                deep.extend(&h[..h.len() - 8]);
                put16(&mut deep, 0xFFFE, syn);
                put16(&mut deep, 0xE000, syn);
                put32(&mut deep, UNDEFINED, syn);
            }
            let f = file(ts, &deep);
            assert!(read_header(&f).unwrap_err().contains("deep"));
            if syn != Syntax::EXPLICIT_LE {
                assert!(transcode_to_explicit_le(&f).unwrap_err().contains("deep"));
            }
        }
        // a meta group whose length field is huge
        let mut f = part10_header(CLASS, INST, EXPLICIT_LE);
        let mut w = Writer::new();
        w.header(0x0002_0102, *b"OB", 0xFFFF_FFF0);
        f.extend(&w.out);
        f.extend(xorshift(3_000_000, 7));
        let c = Counting::new(f);
        assert!(read_header(&c).is_err());
        assert!(c.bytes.get() <= (MAX_META * 2) as u64);
        assert!(t.elapsed().as_secs() < 5);
    }
}
