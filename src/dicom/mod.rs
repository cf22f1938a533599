//! The DICOM data encoding (PS3.5) that dicomfs needs: element headers in the three uncompressed
//! transfer syntaxes, the Part-10 File Meta Information (PS3.10 7.1), text decoding by Specific
//! Character Set, and an Explicit VR Little Endian writer.
//!
//! Everything here reads from a byte slice and checks every length against what is left of it, so a
//! malformed file can make a read fail but never panic or allocate what a length field claims.

pub mod charset;
pub mod dataset;
pub mod tags;

pub use charset::decode_text;

/// Transfer syntax UIDs.
pub const IMPLICIT_LE: &str = "1.2.840.10008.1.2";
pub const EXPLICIT_LE: &str = "1.2.840.10008.1.2.1";
pub const DEFLATED_LE: &str = "1.2.840.10008.1.2.1.99";
pub const EXPLICIT_BE: &str = "1.2.840.10008.1.2.2";
/// Media Storage Directory Storage SOP Class (the DICOMDIR).
pub const MEDIA_STORAGE_DIRECTORY: &str = "1.2.840.10008.1.3.10";
/// dicomfs's Implementation Class UID (a UUID-derived UID, PS3.5 B.2).
pub const IMPLEMENTATION_CLASS_UID: &str = "2.25.110977390185155734869208395702367716271";
/// dicomfs's Implementation Version Name.
pub const IMPLEMENTATION_VERSION: &str = concat!("DICOMFS_", env!("CARGO_PKG_VERSION"));

/// Undefined length (PS3.5 7.1.1).
pub const UNDEFINED: u32 = 0xFFFF_FFFF;
pub const ITEM: u32 = 0xFFFE_E000;
pub const ITEM_END: u32 = 0xFFFE_E00D;
pub const SEQ_END: u32 = 0xFFFE_E0DD;

/// How a data set is encoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Syntax {
    pub explicit: bool,
    pub big_endian: bool,
}

impl Syntax {
    pub const EXPLICIT_LE: Syntax = Syntax {
        explicit: true,
        big_endian: false,
    };
    pub const IMPLICIT_LE: Syntax = Syntax {
        explicit: false,
        big_endian: false,
    };
    pub const EXPLICIT_BE: Syntax = Syntax {
        explicit: true,
        big_endian: true,
    };

    /// The encoding of the data set for a transfer syntax UID; compressed syntaxes encode the data
    /// set in Explicit VR Little Endian. `None` for Deflated (the data set is zlib-compressed).
    pub fn for_uid(uid: &str) -> Option<Syntax> {
        match uid {
            IMPLICIT_LE => Some(Syntax::IMPLICIT_LE),
            EXPLICIT_BE => Some(Syntax::EXPLICIT_BE),
            DEFLATED_LE => None,
            _ => Some(Syntax::EXPLICIT_LE),
        }
    }
}

/// VRs whose explicit header has 2 reserved bytes and a 4-byte length.
pub fn long_vr(vr: [u8; 2]) -> bool {
    matches!(
        &vr,
        b"OB"
            | b"OD"
            | b"OF"
            | b"OL"
            | b"OV"
            | b"OW"
            | b"SQ"
            | b"SV"
            | b"UC"
            | b"UN"
            | b"UR"
            | b"UT"
            | b"UV"
    )
}

/// One element header as found in the stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    /// (group << 16) | element.
    pub tag: u32,
    /// The VR, or `b"  "` when the syntax is implicit (see [`tags::implicit_vr`]) or for items.
    pub vr: [u8; 2],
    /// Value length, or [`UNDEFINED`].
    pub len: u32,
    /// Bytes taken by the header itself.
    pub header_len: usize,
}

impl Header {
    pub fn is_sequence(&self) -> bool {
        &self.vr == b"SQ" || (self.vr == *b"  " && tags::implicit_vr(self.tag) == *b"SQ")
    }
}

/// Why a read stopped.
pub type ReadError = String;

/// A cursor over a byte slice that reads element headers and values with bounds checks.
#[derive(Clone)]
pub struct Reader<'a> {
    pub buf: &'a [u8],
    pub pos: usize,
    pub syntax: Syntax,
}

impl<'a> Reader<'a> {
    pub fn new(buf: &'a [u8], pos: usize, syntax: Syntax) -> Self {
        Reader { buf, pos, syntax }
    }

    pub fn remaining(&self) -> usize {
        self.buf.len().saturating_sub(self.pos)
    }

    pub fn at_end(&self) -> bool {
        self.pos >= self.buf.len()
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], ReadError> {
        if self.remaining() < n {
            return Err(format!(
                "truncated at byte {}: {} bytes needed, {} left",
                self.pos,
                n,
                self.remaining()
            ));
        }
        let s = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }

    pub fn u16(&mut self) -> Result<u16, ReadError> {
        let b = self.take(2)?;
        Ok(if self.syntax.big_endian {
            u16::from_be_bytes([b[0], b[1]])
        } else {
            u16::from_le_bytes([b[0], b[1]])
        })
    }

    pub fn u32(&mut self) -> Result<u32, ReadError> {
        let b = self.take(4)?;
        let a = [b[0], b[1], b[2], b[3]];
        Ok(if self.syntax.big_endian {
            u32::from_be_bytes(a)
        } else {
            u32::from_le_bytes(a)
        })
    }

    /// Read the tag only (item and delimiter tags are always read in the stream's byte order).
    fn tag(&mut self) -> Result<u32, ReadError> {
        let g = self.u16()? as u32;
        let e = self.u16()? as u32;
        Ok((g << 16) | e)
    }

    /// Read one element header.
    pub fn header(&mut self) -> Result<Header, ReadError> {
        let start = self.pos;
        let tag = self.tag()?;
        if tag >> 16 == 0xFFFE {
            let len = self.u32()?;
            return Ok(Header {
                tag,
                vr: *b"  ",
                len,
                header_len: 8,
            });
        }
        if !self.syntax.explicit {
            let len = self.u32()?;
            return Ok(Header {
                tag,
                vr: *b"  ",
                len,
                header_len: 8,
            });
        }
        let v = self.take(2)?;
        let vr = [v[0], v[1]];
        if !vr.iter().all(|c| c.is_ascii_uppercase()) {
            return Err(format!(
                "byte {start}: element ({:04X},{:04X}) has no valid VR ({:02X} {:02X}); wrong transfer syntax?",
                tag >> 16,
                tag & 0xFFFF,
                vr[0],
                vr[1]
            ));
        }
        let len = if long_vr(vr) {
            self.take(2)?;
            self.u32()?
        } else {
            self.u16()? as u32
        };
        Ok(Header {
            tag,
            vr,
            len,
            header_len: self.pos - start,
        })
    }

    /// The value bytes of an element with a defined length.
    pub fn value(&mut self, h: &Header) -> Result<&'a [u8], ReadError> {
        if h.len == UNDEFINED {
            return Err(format!(
                "byte {}: ({:04X},{:04X}) has undefined length where a value was expected",
                self.pos,
                h.tag >> 16,
                h.tag & 0xFFFF
            ));
        }
        self.take(h.len as usize)
    }

    /// Skip the value of an element, including a sequence or encapsulated value of undefined
    /// length (walked item by item, with a depth limit).
    pub fn skip_value(&mut self, h: &Header) -> Result<(), ReadError> {
        if h.len != UNDEFINED {
            self.take(h.len as usize)?;
            return Ok(());
        }
        self.skip_undefined(0)
    }

    fn skip_undefined(&mut self, depth: usize) -> Result<(), ReadError> {
        if depth > 64 {
            return Err(format!("byte {}: sequences nested too deep", self.pos));
        }
        loop {
            let h = self.header()?;
            match h.tag {
                SEQ_END => return Ok(()),
                ITEM => {
                    if h.len == UNDEFINED {
                        self.skip_item_undefined(depth + 1)?;
                    } else {
                        self.take(h.len as usize)?;
                    }
                }
                _ => {
                    return Err(format!(
                        "byte {}: expected an item in a sequence, found ({:04X},{:04X})",
                        self.pos - h.header_len,
                        h.tag >> 16,
                        h.tag & 0xFFFF
                    ))
                }
            }
        }
    }

    fn skip_item_undefined(&mut self, depth: usize) -> Result<(), ReadError> {
        loop {
            let h = self.header()?;
            if h.tag == ITEM_END {
                return Ok(());
            }
            if h.len == UNDEFINED {
                self.skip_undefined(depth + 1)?;
            } else {
                self.take(h.len as usize)?;
            }
        }
    }
}

/// Decode a string value: strip trailing padding (spaces, NULs) and leading spaces.
pub fn trim_value(b: &[u8]) -> &[u8] {
    let mut end = b.len();
    while end > 0 && (b[end - 1] == b' ' || b[end - 1] == 0) {
        end -= 1;
    }
    let mut start = 0;
    while start < end && b[start] == b' ' {
        start += 1;
    }
    &b[start..end]
}

/// A UID or code string value as ASCII text (non-ASCII bytes are replaced).
pub fn ascii(b: &[u8]) -> String {
    String::from_utf8_lossy(trim_value(b)).into_owned()
}

/// The File Meta Information of a Part-10 file.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Meta {
    pub sop_class: String,
    pub sop_instance: String,
    pub transfer_syntax: String,
    pub implementation_class: String,
    /// Byte offset where the data set starts.
    pub dataset_offset: usize,
    /// The 128-byte preamble was all zeros.
    pub preamble_zero: bool,
}

/// Read the preamble, `DICM` and the File Meta Information group (always Explicit VR Little
/// Endian, PS3.10 7.1).
pub fn read_meta(buf: &[u8]) -> Result<Meta, ReadError> {
    if buf.len() < 132 {
        return Err(format!(
            "only {} bytes: too short for a Part-10 file (128-byte preamble and DICM)",
            buf.len()
        ));
    }
    if &buf[128..132] != b"DICM" {
        return Err("no DICM prefix at byte 128: not a DICOM Part-10 file".into());
    }
    let mut m = Meta {
        preamble_zero: buf[..128].iter().all(|&b| b == 0),
        ..Meta::default()
    };
    let mut r = Reader::new(buf, 132, Syntax::EXPLICIT_LE);
    let mut seen_any = false;
    loop {
        if r.remaining() < 4 {
            break;
        }
        let mut peek = r.clone();
        let tag = peek.tag()?;
        if tag >> 16 != 0x0002 {
            break;
        }
        let h = r.header()?;
        let v = r.value(&h)?;
        seen_any = true;
        match h.tag {
            tags::MEDIA_STORAGE_SOP_CLASS_UID => m.sop_class = ascii(v),
            tags::MEDIA_STORAGE_SOP_INSTANCE_UID => m.sop_instance = ascii(v),
            tags::TRANSFER_SYNTAX_UID => m.transfer_syntax = ascii(v),
            tags::IMPLEMENTATION_CLASS_UID => m.implementation_class = ascii(v),
            _ => {}
        }
    }
    if !seen_any {
        return Err("no File Meta Information (group 0002) after DICM".into());
    }
    if m.transfer_syntax.is_empty() {
        return Err("File Meta Information has no Transfer Syntax UID (0002,0010)".into());
    }
    m.dataset_offset = r.pos;
    Ok(m)
}

/// An Explicit VR Little Endian writer.
#[derive(Default)]
pub struct Writer {
    pub out: Vec<u8>,
}

/// Pad a value to even length the way its VR wants (PS3.5 6.2).
pub fn padded(vr: [u8; 2], value: &[u8]) -> std::borrow::Cow<'_, [u8]> {
    if value.len().is_multiple_of(2) {
        return value.into();
    }
    let mut v = value.to_vec();
    v.push(match &vr {
        b"UI" | b"OB" | b"UN" => 0,
        _ => b' ',
    });
    v.into()
}

impl Writer {
    pub fn new() -> Self {
        Writer::default()
    }

    /// Write a header with an explicit length (or [`UNDEFINED`] for SQ/UN/OB).
    pub fn header(&mut self, tag: u32, vr: [u8; 2], len: u32) {
        self.out
            .extend_from_slice(&((tag >> 16) as u16).to_le_bytes());
        self.out
            .extend_from_slice(&((tag & 0xFFFF) as u16).to_le_bytes());
        self.out.extend_from_slice(&vr);
        if long_vr(vr) {
            self.out.extend_from_slice(&[0, 0]);
            self.out.extend_from_slice(&len.to_le_bytes());
        } else {
            self.out.extend_from_slice(&(len as u16).to_le_bytes());
        }
    }

    /// Write an element, padding its value to even length. Values of short-VR elements longer
    /// than 65,534 bytes are a caller bug and are cut (they cannot be encoded).
    pub fn elem(&mut self, tag: u32, vr: [u8; 2], value: &[u8]) {
        let v = padded(vr, value);
        let v: &[u8] = if !long_vr(vr) && v.len() > 0xFFFE {
            &v[..0xFFFE]
        } else {
            &v
        };
        self.header(tag, vr, v.len() as u32);
        self.out.extend_from_slice(v);
    }

    pub fn str(&mut self, tag: u32, vr: [u8; 2], s: &str) {
        self.elem(tag, vr, s.as_bytes());
    }

    pub fn u16(&mut self, tag: u32, v: u16) {
        self.elem(tag, *b"US", &v.to_le_bytes());
    }

    pub fn u32(&mut self, tag: u32, v: u32) {
        self.elem(tag, *b"UL", &v.to_le_bytes());
    }

    /// An item or delimiter tag with a length.
    pub fn item_tag(&mut self, tag: u32, len: u32) {
        self.out
            .extend_from_slice(&((tag >> 16) as u16).to_le_bytes());
        self.out
            .extend_from_slice(&((tag & 0xFFFF) as u16).to_le_bytes());
        self.out.extend_from_slice(&len.to_le_bytes());
    }

    /// A sequence of defined length from already encoded item bodies.
    pub fn sequence(&mut self, tag: u32, items: &[Vec<u8>]) {
        let len: usize = items.iter().map(|i| 8 + i.len()).sum();
        self.header(tag, *b"SQ", len as u32);
        for i in items {
            self.item_tag(ITEM, i.len() as u32);
            self.out.extend_from_slice(i);
        }
    }
}

/// The 128-byte preamble, `DICM` and a File Meta Information group for a Part-10 file.
pub fn part10_header(sop_class: &str, sop_instance: &str, transfer_syntax: &str) -> Vec<u8> {
    let mut g = Writer::new();
    g.elem(tags::FILE_META_VERSION, *b"OB", &[0, 1]);
    g.str(tags::MEDIA_STORAGE_SOP_CLASS_UID, *b"UI", sop_class);
    g.str(tags::MEDIA_STORAGE_SOP_INSTANCE_UID, *b"UI", sop_instance);
    g.str(tags::TRANSFER_SYNTAX_UID, *b"UI", transfer_syntax);
    g.str(
        tags::IMPLEMENTATION_CLASS_UID,
        *b"UI",
        IMPLEMENTATION_CLASS_UID,
    );
    g.str(
        tags::IMPLEMENTATION_VERSION_NAME,
        *b"SH",
        IMPLEMENTATION_VERSION,
    );
    let mut out = vec![0u8; 128];
    out.extend_from_slice(b"DICM");
    let mut w = Writer { out };
    w.u32(tags::FILE_META_GROUP_LENGTH, g.out.len() as u32);
    w.out.extend_from_slice(&g.out);
    w.out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn meta_round_trip() {
        let h = part10_header("1.2.3", "1.2.3.4", EXPLICIT_LE);
        let m = read_meta(&h).unwrap();
        assert_eq!(m.sop_class, "1.2.3");
        assert_eq!(m.sop_instance, "1.2.3.4");
        assert_eq!(m.transfer_syntax, EXPLICIT_LE);
        assert_eq!(m.implementation_class, IMPLEMENTATION_CLASS_UID);
        assert_eq!(m.dataset_offset, h.len());
        assert!(m.preamble_zero);
    }

    #[test]
    fn meta_errors_never_panic() {
        assert!(read_meta(b"short").is_err());
        let mut b = vec![0u8; 132];
        assert!(read_meta(&b).unwrap_err().contains("DICM"));
        b[128..132].copy_from_slice(b"DICM");
        assert!(read_meta(&b).is_err());
        let h = part10_header("1.2", "1.2.3", EXPLICIT_LE);
        for cut in 0..h.len() {
            let _ = read_meta(&h[..cut]);
        }
    }

    #[test]
    fn headers_in_each_syntax() {
        // (0010,0010) PN "AB" explicit LE
        let mut r = Reader::new(b"\x10\x00\x10\x00PN\x02\x00AB", 0, Syntax::EXPLICIT_LE);
        let h = r.header().unwrap();
        assert_eq!(
            (h.tag, h.vr, h.len, h.header_len),
            (0x0010_0010, *b"PN", 2, 8)
        );
        assert_eq!(r.value(&h).unwrap(), b"AB");
        let mut r = Reader::new(b"\x00\x10\x00\x10PN\x00\x02AB", 0, Syntax::EXPLICIT_BE);
        let h = r.header().unwrap();
        assert_eq!((h.tag, h.len), (0x0010_0010, 2));
        let mut r = Reader::new(
            b"\x10\x00\x10\x00\x02\x00\x00\x00AB",
            0,
            Syntax::IMPLICIT_LE,
        );
        let h = r.header().unwrap();
        assert_eq!((h.tag, h.len, h.header_len), (0x0010_0010, 2, 8));
        // a long length must not be trusted
        let mut r = Reader::new(
            b"\x10\x00\x10\x00\xff\xff\xff\x7fAB",
            0,
            Syntax::IMPLICIT_LE,
        );
        let h = r.header().unwrap();
        assert!(r.value(&h).is_err());
    }

    #[test]
    fn padding() {
        let mut w = Writer::new();
        w.str(0x0008_0018, *b"UI", "1.2.3");
        assert_eq!(&w.out[8..], b"1.2.3\0");
        let mut w = Writer::new();
        w.str(0x0010_0010, *b"PN", "ABC");
        assert_eq!(&w.out[8..], b"ABC ");
        assert_eq!(trim_value(b" AB \0"), b"AB");
    }
}
