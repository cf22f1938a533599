//! The DICOMDIR codec (PS3.10 8.6, PS3.3 Annex F): read leniently, write strictly.
//!
//! Reading keeps every record's byte offset and the few keys the views need, follows the offsets
//! (not the item order) to build the tree, and reports what is wrong as [`Finding`]s instead of
//! failing where it can: offsets that miss an item, cycles, records reached twice or never, inactive
//! records, illegal File IDs. When the offsets cannot be trusted the tree is rebuilt from the item
//! order and the record types, with a warning. Memory is bounded by the file's real size, never by
//! a length field.
//!
//! Writing produces Explicit VR Little Endian with defined lengths and exact offsets; the items are
//! written in the order given, so reading and writing a DICOMDIR that dicomfs wrote gives the same
//! bytes.

use crate::dicom::{self, tags, Reader, Syntax, Writer, ITEM, ITEM_END, SEQ_END, UNDEFINED};

/// How bad a finding is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Severity {
    Warning,
    Error,
}

/// Something wrong with a DICOMDIR or File-set, said in words.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Finding {
    pub severity: Severity,
    pub message: String,
}

impl std::fmt::Display for Finding {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let s = match self.severity {
            Severity::Warning => "warning",
            Severity::Error => "error",
        };
        write!(f, "{s}: {}", self.message)
    }
}

/// The keys a record keeps after reading (decoded text), by tag.
pub const KEPT_KEYS: &[u32] = &[
    tags::SPECIFIC_CHARACTER_SET,
    tags::PATIENT_NAME,
    tags::PATIENT_ID,
    tags::STUDY_DATE,
    tags::STUDY_TIME,
    tags::STUDY_DESCRIPTION,
    tags::STUDY_INSTANCE_UID,
    tags::STUDY_ID,
    tags::MODALITY,
    tags::SERIES_INSTANCE_UID,
    tags::SERIES_NUMBER,
    tags::SERIES_DESCRIPTION,
    tags::INSTANCE_NUMBER,
    tags::REFERENCED_SOP_CLASS,
    tags::REFERENCED_SOP_INSTANCE,
    tags::REFERENCED_TRANSFER_SYNTAX,
    tags::CONTENT_DATE,
    tags::DOCUMENT_TITLE,
    tags::CONTENT_LABEL,
];

/// One directory record as read.
#[derive(Clone, Debug, Default)]
pub struct Record {
    /// Byte offset of the record's Item tag from the start of the file.
    pub offset: u32,
    /// Byte range of the item body in the file.
    pub body: (u32, u32),
    pub rtype: Box<str>,
    /// Record In-use Flag is not 0000H.
    pub in_use: bool,
    pub next: u32,
    pub lower: u32,
    /// Byte positions of the values of (0004,1400) and (0004,1420) when each is a 4-byte UL in
    /// Little Endian (so it can be patched in place); 0 otherwise.
    pub next_at: u32,
    pub lower_at: u32,
    /// Byte position just past the item (after its delimiter, if any).
    pub end: u32,
    /// Byte position of a Data Set Trailing Padding element (FFFC,FFFC) that ends a
    /// defined-length item (0: none). dicomfs's in-place delete leaves the deleted records'
    /// bytes there; `body` ends where it starts.
    pub pad: u32,
    pub parent: Option<u32>,
    pub children: Vec<u32>,
    /// Referenced File ID components as stored (trimmed), joined with `\`.
    pub file_id: Option<Box<str>>,
    /// Kept keys, raw bytes decoded with the record's character set.
    pub keys: Vec<(u32, Box<str>)>,
}

impl Record {
    pub fn key(&self, tag: u32) -> Option<&str> {
        self.keys.iter().find(|(t, _)| *t == tag).map(|(_, v)| &**v)
    }

    /// The File ID components.
    pub fn file_id_parts(&self) -> Option<Vec<&str>> {
        self.file_id.as_deref().map(|f| f.split('\\').collect())
    }
}

/// A DICOMDIR as read.
#[derive(Clone, Debug, Default)]
pub struct DicomDir {
    pub fileset_id: String,
    /// (0002,0003): the File-set UID.
    pub fileset_uid: String,
    pub transfer_syntax: String,
    pub charset: String,
    pub consistency_flag: u16,
    pub descriptor_file_id: Option<String>,
    pub first_root: u32,
    pub last_root: u32,
    /// Records in file order (their offsets ascend).
    pub records: Vec<Record>,
    /// Root-level records, in sibling order.
    pub roots: Vec<u32>,
    pub findings: Vec<Finding>,
    /// Byte positions of the 4-byte values of (0004,1200) and (0004,1202), and of the Directory
    /// Record Sequence's length field when it is defined (0 otherwise); where the sequence's
    /// value starts and ends.
    pub first_root_at: u32,
    pub last_root_at: u32,
    pub seq_len_at: u32,
    pub seq_start: u32,
    pub seq_end: u32,
    /// Elements follow the Directory Record Sequence.
    pub after_seq: bool,
    /// The tree was rebuilt from the item order because the offsets could not be followed.
    pub rebuilt: bool,
}

/// Where a just-read 4-byte UL value (ending at `end`) sits, if it can be patched in place.
fn patchable(h: &dicom::Header, syntax: Syntax, end: usize) -> u32 {
    if h.len == 4 && !syntax.big_endian && end >= 4 {
        (end - 4) as u32
    } else {
        0
    }
}

fn tagname(t: u32) -> String {
    format!("({:04X},{:04X})", t >> 16, t & 0xFFFF)
}

impl DicomDir {
    fn find(&mut self, severity: Severity, message: impl Into<String>) {
        // Bound the list: a hostile file must not make us keep millions of messages.
        if self.findings.len() < 1000 {
            self.findings.push(Finding {
                severity,
                message: message.into(),
            });
        } else if self.findings.len() == 1000 {
            self.findings.push(Finding {
                severity: Severity::Warning,
                message: "more findings not shown".into(),
            });
        }
    }

    pub fn errors(&self) -> impl Iterator<Item = &Finding> {
        self.findings
            .iter()
            .filter(|f| f.severity == Severity::Error)
    }

    /// Index of the record whose item starts at `offset`.
    pub fn at_offset(&self, offset: u32) -> Option<u32> {
        self.records
            .binary_search_by_key(&offset, |r| r.offset)
            .ok()
            .map(|i| i as u32)
    }

    /// Records that are shown: active, with an active parent chain, in tree (pre-)order.
    pub fn visible(&self) -> Vec<u32> {
        let mut out = Vec::new();
        let mut stack: Vec<u32> = self.roots.iter().rev().copied().collect();
        while let Some(i) = stack.pop() {
            let r = &self.records[i as usize];
            if !r.in_use {
                continue;
            }
            out.push(i);
            stack.extend(r.children.iter().rev());
        }
        out
    }

    /// Parse a DICOMDIR. Fails only when nothing usable can be read (not Part-10, the record
    /// sequence cannot be found); everything else becomes a finding.
    pub fn parse(buf: &[u8]) -> Result<DicomDir, String> {
        let meta = dicom::read_meta(buf)?;
        let mut d = DicomDir {
            fileset_uid: meta.sop_instance.clone(),
            transfer_syntax: meta.transfer_syntax.clone(),
            ..DicomDir::default()
        };
        if meta.sop_class != dicom::MEDIA_STORAGE_DIRECTORY {
            d.find(
                Severity::Error,
                format!(
                    "Media Storage SOP Class is {:?}, not Media Storage Directory Storage ({})",
                    meta.sop_class,
                    dicom::MEDIA_STORAGE_DIRECTORY
                ),
            );
        }
        let syntax = Syntax::for_uid(&meta.transfer_syntax)
            .ok_or("the DICOMDIR is Deflated, which cannot be read in place")?;
        if meta.transfer_syntax != dicom::EXPLICIT_LE {
            d.find(
                Severity::Warning,
                format!(
                    "the DICOMDIR is encoded in {}, not Explicit VR Little Endian",
                    match meta.transfer_syntax.as_str() {
                        dicom::IMPLICIT_LE => "Implicit VR Little Endian",
                        dicom::EXPLICIT_BE => "Explicit VR Big Endian",
                        other => other,
                    }
                ),
            );
        }
        let mut r = Reader::new(buf, meta.dataset_offset, syntax);
        let mut have_seq = false;
        while !r.at_end() {
            let at = r.pos;
            let h = match r.header() {
                Ok(h) => h,
                Err(e) => {
                    d.find(Severity::Error, format!("data set: {e}"));
                    break;
                }
            };
            if h.tag == tags::DIRECTORY_RECORD_SEQUENCE {
                have_seq = true;
                d.seq_start = r.pos as u32;
                if h.len != UNDEFINED && syntax == Syntax::EXPLICIT_LE && h.header_len == 12 {
                    d.seq_len_at = (r.pos - 4) as u32;
                }
                d.read_records(&mut r, &h, syntax);
                d.seq_end = r.pos as u32;
                continue;
            }
            if have_seq {
                d.after_seq = true;
            }
            if h.len == UNDEFINED {
                if let Err(e) = r.skip_value(&h) {
                    d.find(
                        Severity::Error,
                        format!("{} at byte {at}: {e}", tagname(h.tag)),
                    );
                    break;
                }
                continue;
            }
            let v = match r.value(&h) {
                Ok(v) => v,
                Err(e) => {
                    d.find(
                        Severity::Error,
                        format!("{} at byte {at}: {e}", tagname(h.tag)),
                    );
                    break;
                }
            };
            let mut vr = Reader::new(v, 0, syntax);
            match h.tag {
                tags::FILE_SET_ID => d.fileset_id = dicom::ascii(v),
                tags::FILE_SET_DESCRIPTOR_FILE_ID => {
                    d.descriptor_file_id = Some(dicom::ascii(v).replace(' ', ""))
                }
                tags::SPECIFIC_CHARACTER_SET => d.charset = dicom::ascii(v),
                tags::FIRST_ROOT_RECORD => {
                    d.first_root = vr.u32().unwrap_or(0);
                    d.first_root_at = patchable(&h, syntax, r.pos);
                }
                tags::LAST_ROOT_RECORD => {
                    d.last_root = vr.u32().unwrap_or(0);
                    d.last_root_at = patchable(&h, syntax, r.pos);
                }
                tags::CONSISTENCY_FLAG => d.consistency_flag = vr.u16().unwrap_or(0),
                _ => {}
            }
        }
        if !have_seq {
            return Err("no Directory Record Sequence (0004,1220)".into());
        }
        d.inherit_charset();
        if d.consistency_flag != 0 {
            d.find(
                Severity::Error,
                format!(
                    "File-set Consistency Flag is {:04X}H; only 0000H is allowed",
                    d.consistency_flag
                ),
            );
        }
        d.link();
        Ok(d)
    }

    fn read_records(&mut self, r: &mut Reader, h: &dicom::Header, syntax: Syntax) {
        let end = if h.len == UNDEFINED {
            usize::MAX
        } else {
            let e = r.pos.saturating_add(h.len as usize);
            if e > r.buf.len() {
                self.find(
                    Severity::Error,
                    format!(
                        "Directory Record Sequence length {} runs {} bytes past the end of the file",
                        h.len,
                        e - r.buf.len()
                    ),
                );
            }
            e
        };
        while r.pos < end && !r.at_end() {
            let at = r.pos;
            let ih = match r.header() {
                Ok(ih) => ih,
                Err(e) => {
                    self.find(Severity::Error, format!("record sequence: {e}"));
                    r.pos = r.buf.len();
                    return;
                }
            };
            if ih.tag == SEQ_END {
                return;
            }
            if ih.tag != ITEM {
                self.find(
                    Severity::Error,
                    format!(
                        "byte {at}: expected a record item in the Directory Record Sequence, found {}",
                        tagname(ih.tag)
                    ),
                );
                r.pos = r.buf.len();
                return;
            }
            let body_start = r.pos;
            let item_end = if ih.len == UNDEFINED {
                usize::MAX
            } else {
                body_start.saturating_add(ih.len as usize)
            };
            let mut rec = Record {
                offset: at as u32,
                in_use: true,
                ..Record::default()
            };
            let mut raw_keys: Vec<(u32, &[u8])> = Vec::new();
            let mut ok = true;
            let mut pad_end = 0;
            while r.pos < item_end {
                let eat = r.pos;
                let eh = match r.header() {
                    Ok(eh) => eh,
                    Err(e) => {
                        self.find(Severity::Error, format!("record at byte {at}: {e}"));
                        ok = false;
                        break;
                    }
                };
                if eh.tag == ITEM_END {
                    break;
                }
                if eh.len == UNDEFINED || eh.is_sequence() {
                    if let Err(e) = r.skip_value(&eh) {
                        self.find(Severity::Error, format!("record at byte {at}: {e}"));
                        ok = false;
                        break;
                    }
                    continue;
                }
                let v = match r.value(&eh) {
                    Ok(v) => v,
                    Err(e) => {
                        self.find(
                            Severity::Error,
                            format!(
                                "record at byte {at}, {} at byte {eat}: {e}",
                                tagname(eh.tag)
                            ),
                        );
                        ok = false;
                        break;
                    }
                };
                let mut vr = Reader::new(v, 0, syntax);
                if eh.tag == tags::TRAILING_PADDING && ih.len != UNDEFINED {
                    rec.pad = eat as u32;
                    pad_end = r.pos;
                }
                match eh.tag {
                    tags::NEXT_RECORD => {
                        rec.next = vr.u32().unwrap_or(0);
                        rec.next_at = patchable(&eh, syntax, r.pos);
                    }
                    tags::LOWER_RECORD => {
                        rec.lower = vr.u32().unwrap_or(0);
                        rec.lower_at = patchable(&eh, syntax, r.pos);
                    }
                    tags::IN_USE => rec.in_use = vr.u16().map(|f| f != 0).unwrap_or(true),
                    tags::RECORD_TYPE => rec.rtype = dicom::ascii(v).into(),
                    tags::REFERENCED_FILE_ID => {
                        let parts: Vec<String> =
                            v.split(|&b| b == b'\\').map(dicom::ascii).collect();
                        rec.file_id = Some(parts.join("\\").into());
                    }
                    t if KEPT_KEYS.contains(&t) => raw_keys.push((t, v)),
                    _ => {}
                }
            }
            if r.pos > item_end && item_end != usize::MAX {
                self.find(
                    Severity::Error,
                    format!("record at byte {at}: its elements run past the item length"),
                );
            }
            if item_end != usize::MAX && item_end <= r.buf.len() {
                r.pos = item_end;
            }
            rec.end = r.pos.min(r.buf.len()) as u32;
            if rec.pad != 0 && pad_end != item_end {
                // Padding must end the item.
                rec.pad = 0;
            }
            rec.body = (
                body_start as u32,
                if rec.pad != 0 { rec.pad } else { rec.end },
            );
            let cs = raw_keys
                .iter()
                .find(|(t, _)| *t == tags::SPECIFIC_CHARACTER_SET)
                .map(|(_, v)| dicom::ascii(v))
                .unwrap_or_else(|| self.charset.clone());
            rec.keys = raw_keys
                .into_iter()
                .map(|(t, v)| (t, dicom::decode_text(dicom::trim_value(v), &cs).into()))
                .collect();
            if rec.rtype.is_empty() {
                self.find(
                    Severity::Error,
                    format!("record at byte {at} has no Directory Record Type"),
                );
            }
            if !rec.in_use {
                self.find(
                    Severity::Warning,
                    format!(
                        "record at byte {at} is inactive (Record In-use Flag 0000H): not shown"
                    ),
                );
            }
            self.records.push(rec);
            if !ok {
                r.pos = r.buf.len();
                return;
            }
        }
    }

    /// The data set's Specific Character Set comes after the record sequence (tag order), so
    /// records without their own were decoded as Latin-1, which maps bytes to characters one to
    /// one: turn such keys back into bytes and decode them in the inherited character set.
    fn inherit_charset(&mut self) {
        if self.charset.is_empty() || self.charset == "ISO_IR 100" {
            return;
        }
        let cs = self.charset.clone();
        for r in &mut self.records {
            if r.key(tags::SPECIFIC_CHARACTER_SET).is_some() {
                continue;
            }
            for (_, v) in r.keys.iter_mut().filter(|(_, v)| !v.is_ascii()) {
                let bytes: Vec<u8> = v.chars().map(|c| c as u32 as u8).collect();
                *v = dicom::decode_text(&bytes, &cs).into();
            }
        }
    }

    /// Follow the offsets from the root: the chains reached, cut where an offset misses.
    #[allow(clippy::type_complexity)]
    fn walk_offsets(
        &mut self,
    ) -> (
        Vec<u32>,
        Vec<Option<u32>>,
        Vec<Vec<u32>>,
        Vec<bool>,
        Vec<String>,
    ) {
        let n = self.records.len();
        let mut seen = vec![false; n];
        let mut broken = Vec::new();
        let mut roots = Vec::new();
        let mut parents: Vec<Option<u32>> = vec![None; n];
        let mut children: Vec<Vec<u32>> = vec![Vec::new(); n];
        // (chain start offset, parent)
        let mut work: Vec<(u32, Option<u32>)> = Vec::new();
        if self.first_root != 0 {
            work.push((self.first_root, None));
        } else if n > 0 {
            broken.push("Offset of First Record of Root Entity is 0 but there are records".into());
        }
        while let Some((start, parent)) = work.pop() {
            let mut off = start;
            let mut chain = Vec::new();
            while off != 0 {
                let Some(i) = self.at_offset(off) else {
                    broken.push(format!(
                        "offset {off} (from {}) does not land on a record item",
                        match parent {
                            None => "the root chain".to_string(),
                            Some(p) =>
                                format!("the record at byte {}", self.records[p as usize].offset),
                        }
                    ));
                    break;
                };
                if seen[i as usize] {
                    broken.push(format!(
                        "the record at byte {off} is reached twice (offset cycle or shared record)"
                    ));
                    break;
                }
                seen[i as usize] = true;
                chain.push(i);
                let rec = &self.records[i as usize];
                if rec.lower != 0 {
                    work.push((rec.lower, Some(i)));
                }
                off = rec.next;
            }
            match parent {
                None => {
                    if let (Some(&last), true) = (chain.last(), self.last_root != 0) {
                        if self.records[last as usize].offset != self.last_root {
                            self.find(
                                Severity::Warning,
                                format!(
                                    "Offset of Last Record of Root Entity is {} but the root chain ends at {}",
                                    self.last_root, self.records[last as usize].offset
                                ),
                            );
                        }
                    }
                    roots = chain;
                }
                Some(p) => {
                    for &c in &chain {
                        parents[c as usize] = Some(p);
                    }
                    children[p as usize] = chain;
                }
            }
        }
        (roots, parents, children, seen, broken)
    }

    /// Build the tree from the offsets; fall back to the item order if they cannot be followed.
    fn link(&mut self) {
        let (roots, parents, mut children, seen, mut broken) = self.walk_offsets();
        let unreached = seen.iter().filter(|s| !**s).count();
        if unreached > 0 && broken.is_empty() {
            broken.push(format!(
                "{unreached} record(s) are not reachable from the root through the offsets"
            ));
        }
        if broken.is_empty() {
            self.roots = roots;
            for (i, r) in self.records.iter_mut().enumerate() {
                r.parent = parents[i];
                r.children = std::mem::take(&mut children[i]);
            }
            return;
        }
        for b in broken {
            self.find(Severity::Error, b);
        }
        self.find(
            Severity::Warning,
            "the record offsets cannot be followed: the tree was rebuilt from the item order and record types",
        );
        self.rebuilt = true;
        self.rebuild_from_order();
    }

    /// Keep only the records the offsets reach (cutting chains where an offset misses), and
    /// mark the others inactive. Used by repair: after a crash mid-append the records written
    /// last may be unreached, and their files are taken in again from the medium instead.
    /// Returns how many records were dropped.
    pub fn keep_reachable(&mut self) -> usize {
        let (roots, parents, mut children, seen, _) = self.walk_offsets();
        self.roots = roots;
        let mut dropped = 0;
        for (i, r) in self.records.iter_mut().enumerate() {
            r.parent = parents[i];
            r.children = std::mem::take(&mut children[i]);
            if !seen[i] && r.in_use {
                r.in_use = false;
                dropped += 1;
            }
        }
        self.rebuilt = false;
        dropped
    }

    fn rebuild_from_order(&mut self) {
        let mut last: [Option<u32>; 3] = [None; 3];
        self.roots.clear();
        for i in 0..self.records.len() {
            let level = level_of(&self.records[i].rtype);
            let parent = if level == 0 { None } else { last[level - 1] };
            self.records[i].children.clear();
            self.records[i].parent = parent;
            match parent {
                None => self.roots.push(i as u32),
                Some(p) => self.records[p as usize].children.push(i as u32),
            }
            if level < 3 {
                last[level] = Some(i as u32);
                for l in last.iter_mut().skip(level + 1) {
                    *l = None;
                }
            }
        }
    }
}

/// Level of a record type in the patient hierarchy: 0 root, 1 study, 2 series, 3 instance.
pub fn level_of(rtype: &str) -> usize {
    match rtype {
        "STUDY" => 1,
        "SERIES" => 2,
        "PATIENT" | "HANGING PROTOCOL" | "PALETTE" | "IMPLANT" | "IMPLANT ASSY"
        | "IMPLANT GROUP" | "INVENTORY" | "PRIVATE" | "TOPIC" | "PRINT QUEUE" | "VISIT"
        | "HL7 STRUC DOC" => 0,
        _ => 3,
    }
}

/// Whether a record type may appear under a parent type (PS3.3 F.4; retired types tolerated).
pub fn allowed_under(parent: Option<&str>, child: &str) -> bool {
    if child == "PRIVATE" {
        return true;
    }
    match parent {
        None => level_of(child) == 0,
        Some("PATIENT") => child == "STUDY",
        Some("STUDY") => child == "SERIES",
        Some("SERIES") => level_of(child) == 3,
        Some(_) => false,
    }
}

/// Why a File ID is not legal (PS3.10 8.2, 8.5), or `None` when it is.
pub fn file_id_problem(file_id: &str) -> Option<String> {
    let parts: Vec<&str> = file_id.split('\\').collect();
    if parts.len() > 8 {
        return Some(format!("{} components (at most 8)", parts.len()));
    }
    for p in &parts {
        if p.is_empty() {
            return Some("an empty component (absolute or doubled separator)".into());
        }
        if p.len() > 8 {
            return Some(format!(
                "component {p:?} has {} characters (at most 8)",
                p.len()
            ));
        }
        if let Some(c) = p
            .chars()
            .find(|c| !(c.is_ascii_uppercase() || c.is_ascii_digit() || *c == '_'))
        {
            return Some(format!(
                "component {p:?} has the character {c:?} (only A-Z, 0-9 and _ are allowed)"
            ));
        }
    }
    None
}

/// Whether a File ID can be resolved on a medium without leaving the File-set (no `..`, no `/`,
/// no empty component), even if it is not legal.
pub fn file_id_safe(file_id: &str) -> bool {
    file_id
        .split('\\')
        .all(|p| !p.is_empty() && p != "." && p != ".." && !p.contains('/') && !p.contains('\0'))
}

// ---------------------------------------------------------------------------------------------
// Writing

/// One element to write into a record (Explicit VR Little Endian value bytes, unpadded or padded).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Elem {
    pub tag: u32,
    pub vr: [u8; 2],
    pub value: Vec<u8>,
}

impl Elem {
    pub fn str(tag: u32, vr: &[u8; 2], s: &str) -> Elem {
        Elem {
            tag,
            vr: *vr,
            value: s.as_bytes().to_vec(),
        }
    }
}

/// A record to write: its type, its elements (without the four structural ones), its children
/// as indices into the same list.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WRecord {
    pub rtype: String,
    pub elems: Vec<Elem>,
    pub children: Vec<usize>,
}

/// A DICOMDIR to write. `records` are in item order; `roots` lists the root-level records.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct WDicomDir {
    pub fileset_id: String,
    pub fileset_uid: String,
    pub descriptor_file_id: Option<String>,
    pub records: Vec<WRecord>,
    pub roots: Vec<usize>,
}

const STRUCTURAL: [u32; 4] = [
    tags::NEXT_RECORD,
    tags::IN_USE,
    tags::LOWER_RECORD,
    tags::RECORD_TYPE,
];

fn record_body(rec: &WRecord, next: u32, lower: u32) -> Vec<u8> {
    encode_body(&rec.rtype, &rec.elems, next, lower).0
}

/// Encode a record's item body; also returns where in the body the values of (0004,1400) and
/// (0004,1420) are.
fn encode_body(rtype: &str, elems: &[Elem], next: u32, lower: u32) -> (Vec<u8>, usize, usize) {
    let mut elems: Vec<&Elem> = elems
        .iter()
        .filter(|e| !STRUCTURAL.contains(&e.tag))
        .collect();
    elems.sort_by_key(|e| e.tag);
    let mut w = Writer::new();
    let mut at = None;
    let structural = |w: &mut Writer| {
        let start = w.out.len();
        w.u32(tags::NEXT_RECORD, next);
        w.u16(tags::IN_USE, 0xFFFF);
        w.u32(tags::LOWER_RECORD, lower);
        w.str(tags::RECORD_TYPE, *b"CS", rtype);
        // NEXT: 8-byte header + 4; IN USE: 8 + 2; LOWER's value after its 8-byte header.
        (start + 8, start + 30)
    };
    for e in elems {
        if at.is_none() && e.tag > tags::RECORD_TYPE {
            at = Some(structural(&mut w));
        }
        w.elem(e.tag, e.vr, &e.value);
    }
    let (n, l) = match at {
        Some(a) => a,
        None => structural(&mut w),
    };
    (w.out, n, l)
}

/// One record encoded as an item (with its Item tag), and where its two offsets are, counted
/// from the start of the item.
pub struct EncodedRecord {
    pub bytes: Vec<u8>,
    pub next_at: usize,
    pub lower_at: usize,
}

/// Encode one record as a defined-length item.
pub fn encode_record(rtype: &str, elems: &[Elem], next: u32, lower: u32) -> EncodedRecord {
    let (body, n, l) = encode_body(rtype, elems, next, lower);
    let mut w = Writer::new();
    w.item_tag(ITEM, body.len() as u32);
    w.out.extend_from_slice(&body);
    EncodedRecord {
        bytes: w.out,
        next_at: 8 + n,
        lower_at: 8 + l,
    }
}

impl WDicomDir {
    /// Encode the DICOMDIR. Offsets are exact; the item order is `records`' order.
    pub fn encode(&self) -> Vec<u8> {
        let n = self.records.len();
        // Sizes do not depend on offset values (UL is fixed size), so lay out with zeros first.
        let sizes: Vec<usize> = self
            .records
            .iter()
            .map(|r| 8 + record_body(r, 0, 0).len())
            .collect();
        let mut head = dicom::part10_header(
            dicom::MEDIA_STORAGE_DIRECTORY,
            &self.fileset_uid,
            dicom::EXPLICIT_LE,
        );
        let mut top = Writer::new();
        top.str(tags::FILE_SET_ID, *b"CS", &self.fileset_id);
        if let Some(d) = &self.descriptor_file_id {
            top.str(tags::FILE_SET_DESCRIPTOR_FILE_ID, *b"CS", d);
        }
        // Placeholders; patched below once offsets are known.
        let first_at = head.len() + top.out.len() + 8;
        top.u32(tags::FIRST_ROOT_RECORD, 0);
        let last_at = head.len() + top.out.len() + 8;
        top.u32(tags::LAST_ROOT_RECORD, 0);
        top.u16(tags::CONSISTENCY_FLAG, 0);
        let seq_len: usize = sizes.iter().sum();
        top.header(tags::DIRECTORY_RECORD_SEQUENCE, *b"SQ", seq_len as u32);
        head.extend_from_slice(&top.out);
        let mut offsets = Vec::with_capacity(n);
        let mut pos = head.len();
        for s in &sizes {
            offsets.push(pos as u32);
            pos += s;
        }
        let mut next = vec![0u32; n];
        let link = |list: &[usize], next: &mut Vec<u32>| {
            for w in list.windows(2) {
                next[w[0]] = offsets[w[1]];
            }
        };
        link(&self.roots, &mut next);
        for r in &self.records {
            link(&r.children, &mut next);
        }
        head.reserve(seq_len);
        for (i, r) in self.records.iter().enumerate() {
            let lower = r.children.first().map(|&c| offsets[c]).unwrap_or(0);
            let body = record_body(r, next[i], lower);
            let mut w = Writer { out: head };
            w.item_tag(ITEM, body.len() as u32);
            w.out.extend_from_slice(&body);
            head = w.out;
        }
        let first = self.roots.first().map(|&i| offsets[i]).unwrap_or(0);
        let last = self.roots.last().map(|&i| offsets[i]).unwrap_or(0);
        head[first_at..first_at + 4].copy_from_slice(&first.to_le_bytes());
        head[last_at..last_at + 4].copy_from_slice(&last.to_le_bytes());
        head
    }

    /// Turn a DICOMDIR read from `buf` (Explicit VR Little Endian only) back into records to
    /// write, keeping every element of every record and the item order. Inactive records and
    /// their subtrees are dropped.
    pub fn from_read(d: &DicomDir, buf: &[u8]) -> Result<WDicomDir, String> {
        if d.transfer_syntax != dicom::EXPLICIT_LE {
            return Err(
                "only an Explicit VR Little Endian DICOMDIR can be rewritten in place".into(),
            );
        }
        let visible = d.visible();
        let mut keep = vec![false; d.records.len()];
        for &i in &visible {
            keep[i as usize] = true;
        }
        let mut newidx = vec![usize::MAX; d.records.len()];
        let mut out = WDicomDir {
            fileset_id: d.fileset_id.clone(),
            fileset_uid: d.fileset_uid.clone(),
            descriptor_file_id: d.descriptor_file_id.clone(),
            ..Default::default()
        };
        for (i, r) in d.records.iter().enumerate() {
            if !keep[i] {
                continue;
            }
            newidx[i] = out.records.len();
            let (s, e) = (r.body.0 as usize, r.body.1 as usize);
            let body = buf.get(s..e).ok_or("record body outside the file")?;
            let mut rd = Reader::new(body, 0, Syntax::EXPLICIT_LE);
            let mut elems = Vec::new();
            while !rd.at_end() {
                let start = rd.pos;
                let h = rd.header()?;
                if h.tag == ITEM_END {
                    break;
                }
                if h.len == UNDEFINED {
                    // Keep an undefined-length sequence as its raw encoded bytes after the header.
                    rd.skip_value(&h)?;
                    // Items as encoded, without the sequence delimiter: rewritten with a
                    // defined length.
                    let raw = &body[start + h.header_len..rd.pos.saturating_sub(8)];
                    elems.push(Elem {
                        tag: h.tag,
                        vr: *b"SQ",
                        value: raw.to_vec(),
                    });
                    continue;
                }
                let v = rd.value(&h)?;
                if h.tag >> 16 == 0xFFFE {
                    return Err(format!(
                        "record at byte {}: a stray item tag inside the record",
                        r.offset
                    ));
                }
                if STRUCTURAL.contains(&h.tag) {
                    continue;
                }
                elems.push(Elem {
                    tag: h.tag,
                    vr: h.vr,
                    value: v.to_vec(),
                });
            }
            out.records.push(WRecord {
                rtype: r.rtype.to_string(),
                elems,
                children: Vec::new(),
            });
        }
        for (i, r) in d.records.iter().enumerate() {
            if keep[i] {
                let kids = r
                    .children
                    .iter()
                    .filter(|&&c| keep[c as usize])
                    .map(|&c| newidx[c as usize])
                    .collect();
                out.records[newidx[i]].children = kids;
            }
        }
        out.roots = d
            .roots
            .iter()
            .filter(|&&c| keep[c as usize])
            .map(|&c| newidx[c as usize])
            .collect();
        Ok(out)
    }
}

#[cfg(test)]
mod tests;
