//! Codec tests: round trips of what dicomfs writes, and the malformed-DICOMDIR corpus.

use super::*;
use crate::synth;

fn sample() -> (WDicomDir, Vec<u8>) {
    let spec = synth::Spec::default();
    let insts = synth::instances(&spec);
    let w = synth::dicomdir_for(&insts, "TESTSET", "2.25.1234");
    let b = w.encode();
    (w, b)
}

#[test]
fn write_read_round_trip_is_byte_exact() {
    let (w, b) = sample();
    let d = DicomDir::parse(&b).unwrap();
    assert!(d.findings.is_empty(), "{:?}", d.findings);
    assert_eq!(d.records.len(), w.records.len());
    assert_eq!(d.fileset_id, "TESTSET");
    assert_eq!(d.fileset_uid, "2.25.1234");
    let w2 = WDicomDir::from_read(&d, &b).unwrap();
    assert_eq!(w2.records.len(), w.records.len());
    assert_eq!(w2.roots, w.roots);
    assert_eq!(w2.encode(), b);
}

#[test]
fn offsets_point_at_item_tags() {
    let (_, b) = sample();
    let d = DicomDir::parse(&b).unwrap();
    let at = |o: u32| &b[o as usize..o as usize + 4];
    assert_eq!(at(d.first_root), [0xFE, 0xFF, 0x00, 0xE0]);
    assert_eq!(at(d.last_root), [0xFE, 0xFF, 0x00, 0xE0]);
    for r in &d.records {
        assert_eq!(at(r.offset), [0xFE, 0xFF, 0x00, 0xE0]);
        if r.next != 0 {
            assert!(d.at_offset(r.next).is_some());
        }
        if r.lower != 0 {
            assert!(d.at_offset(r.lower).is_some());
        }
    }
    // The tree: 3 patients, each with 2 studies of 4 series.
    assert_eq!(d.roots.len(), 3);
    for &p in &d.roots {
        let p = &d.records[p as usize];
        assert_eq!(&*p.rtype, "PATIENT");
        assert_eq!(p.children.len(), 2);
        for &s in &p.children {
            assert_eq!(d.records[s as usize].children.len(), 4);
        }
    }
}

#[test]
fn keys_are_decoded_by_character_set() {
    let (_, b) = sample();
    let d = DicomDir::parse(&b).unwrap();
    let names: Vec<&str> = d
        .roots
        .iter()
        .map(|&i| d.records[i as usize].key(tags::PATIENT_NAME).unwrap())
        .collect();
    assert_eq!(names, ["DOE^JANE", "MÜLLER^JÜRGEN", "GARCÍA^ANA"]);
}

#[test]
fn file_id_rules() {
    assert_eq!(file_id_problem("P00001\\S0001\\I1"), None);
    assert!(file_id_problem("p0001").unwrap().contains("'p'"));
    assert!(file_id_problem("ABCDEFGHI")
        .unwrap()
        .contains("9 characters"));
    assert!(file_id_problem("A\\B\\C\\D\\E\\F\\G\\H\\I")
        .unwrap()
        .contains("9 components"));
    assert!(file_id_problem("\\A").unwrap().contains("empty"));
    assert!(file_id_problem("..\\A").is_some());
    assert!(!file_id_safe("..\\A"));
    assert!(!file_id_safe("A/B"));
    assert!(file_id_safe("img001\\x"));
}

// ---------------------------------------------------------------------------------------------
// The malformed-DICOMDIR corpus. Each case is built in code, either by patching a DICOMDIR that
// dicomfs wrote (Explicit VR Little Endian, defined lengths) or by assembling one by hand in any
// of the three uncompressed transfer syntaxes, and asserts the exact outcome.

/// A small DICOMDIR written by dicomfs: 1 patient, 1 study, 2 series of 2 images (8 records).
fn small() -> Vec<u8> {
    let spec = synth::Spec {
        patients: 1,
        studies: 1,
        series: 2,
        instances: 2,
        documents: false,
        files: false,
        ..synth::Spec::default()
    };
    let insts = synth::instances(&spec);
    synth::dicomdir_for(&insts, "SMALL", "2.25.77").encode()
}

/// Byte position of the value of the first element `tag` at or after `from` (Explicit VR Little
/// Endian, the elements of one level).
fn value_at(buf: &[u8], from: usize, tag: u32) -> usize {
    let mut r = Reader::new(buf, from, Syntax::EXPLICIT_LE);
    loop {
        let h = r.header().unwrap();
        if h.tag == tag {
            return r.pos;
        }
        r.skip_value(&h).unwrap();
    }
}

fn put_u32(buf: &mut [u8], at: usize, v: u32) {
    buf[at..at + 4].copy_from_slice(&v.to_le_bytes());
}

/// Set a UL structural element (next or lower) of the record whose item starts at `rec`.
fn set_link(buf: &mut [u8], rec: u32, tag: u32, v: u32) {
    let at = value_at(buf, rec as usize + 8, tag);
    put_u32(buf, at, v);
}

/// Where the data set starts.
fn dataset_at(buf: &[u8]) -> usize {
    dicom::read_meta(buf).unwrap().dataset_offset
}

/// The visible records in tree order, indented by depth, each with its type and identifying key.
fn outline(d: &DicomDir) -> Vec<String> {
    d.visible()
        .into_iter()
        .map(|i| {
            let r = &d.records[i as usize];
            let mut depth = 0;
            let mut p = r.parent;
            while let Some(q) = p {
                depth += 1;
                p = d.records[q as usize].parent;
            }
            let id = r
                .file_id
                .as_deref()
                .or_else(|| {
                    [
                        tags::SERIES_INSTANCE_UID,
                        tags::STUDY_INSTANCE_UID,
                        tags::PATIENT_ID,
                        tags::PRIVATE_RECORD_UID,
                    ]
                    .iter()
                    .find_map(|&t| r.key(t))
                })
                .unwrap_or("");
            format!("{}{} {id}", "  ".repeat(depth), r.rtype)
        })
        .collect()
}

/// The full tree: the outline plus every kept key and File ID of every visible record.
fn tree(d: &DicomDir) -> Vec<String> {
    outline(d)
        .into_iter()
        .zip(d.visible())
        .map(|(o, i)| {
            let r = &d.records[i as usize];
            format!("{o} {:?} {:?}", r.file_id, r.keys)
        })
        .collect()
}

fn has(d: &DicomDir, severity: Severity, needle: &str) -> bool {
    d.findings
        .iter()
        .any(|f| f.severity == severity && f.message.contains(needle))
}

#[track_caller]
fn assert_finding(d: &DicomDir, severity: Severity, needle: &str) {
    assert!(
        has(d, severity, needle),
        "no {severity:?} containing {needle:?} in {:#?}",
        d.findings
    );
}

#[track_caller]
fn assert_err(buf: &[u8], needle: &str) {
    match DicomDir::parse(buf) {
        Ok(d) => panic!(
            "parsed, expected an error with {needle:?}; findings {:?}",
            d.findings
        ),
        Err(e) => assert!(
            e.contains(needle),
            "error {e:?} does not contain {needle:?}"
        ),
    }
}

/// An element encoder for any of the three uncompressed transfer syntaxes.
struct Enc {
    s: Syntax,
    out: Vec<u8>,
}

impl Enc {
    fn new(s: Syntax) -> Enc {
        Enc { s, out: Vec::new() }
    }

    fn u16(&mut self, v: u16) {
        let b = if self.s.big_endian {
            v.to_be_bytes()
        } else {
            v.to_le_bytes()
        };
        self.out.extend_from_slice(&b);
    }

    fn u32(&mut self, v: u32) {
        let b = if self.s.big_endian {
            v.to_be_bytes()
        } else {
            v.to_le_bytes()
        };
        self.out.extend_from_slice(&b);
    }

    fn tag(&mut self, tag: u32) {
        self.u16((tag >> 16) as u16);
        self.u16(tag as u16);
    }

    fn header(&mut self, tag: u32, vr: [u8; 2], len: u32) {
        self.tag(tag);
        if !self.s.explicit {
            self.u32(len);
            return;
        }
        self.out.extend_from_slice(&vr);
        if dicom::long_vr(vr) {
            self.out.extend_from_slice(&[0, 0]);
            self.u32(len);
        } else {
            self.u16(len as u16);
        }
    }

    /// An item or delimiter tag.
    fn item(&mut self, tag: u32, len: u32) {
        self.tag(tag);
        self.u32(len);
    }

    fn text(&mut self, tag: u32, vr: [u8; 2], value: &[u8]) {
        let v = dicom::padded(vr, value);
        self.header(tag, vr, v.len() as u32);
        self.out.extend_from_slice(&v);
    }

    fn ul(&mut self, tag: u32, v: u32) {
        self.header(tag, *b"UL", 4);
        self.u32(v);
    }

    fn us(&mut self, tag: u32, v: u16) {
        self.header(tag, *b"US", 2);
        self.u16(v);
    }
}

/// A record of a hand-built DICOMDIR: its type, text elements in tag order, children (indices),
/// Record In-use Flag.
struct HRec {
    rtype: &'static str,
    elems: Vec<(u32, [u8; 2], Vec<u8>)>,
    children: Vec<usize>,
    in_use: u16,
}

fn hrec(rtype: &'static str, elems: &[(u32, &[u8; 2], &[u8])], children: &[usize]) -> HRec {
    HRec {
        rtype,
        elems: elems
            .iter()
            .map(|&(t, vr, v)| (t, *vr, v.to_vec()))
            .collect(),
        children: children.to_vec(),
        in_use: 0xFFFF,
    }
}

/// How to lay out a hand-built DICOMDIR.
struct Layout {
    ts: &'static str,
    undefined_seq: bool,
    undefined_items: bool,
    /// The item order as record indices; empty for index order.
    order: Vec<usize>,
}

impl Default for Layout {
    fn default() -> Self {
        Layout {
            ts: dicom::EXPLICIT_LE,
            undefined_seq: false,
            undefined_items: false,
            order: Vec::new(),
        }
    }
}

/// Assemble a DICOMDIR: File Meta Information in Explicit VR Little Endian, the data set in the
/// layout's transfer syntax, exact offsets whatever the item order.
fn build(recs: &[HRec], roots: &[usize], l: &Layout) -> Vec<u8> {
    let s = Syntax::for_uid(l.ts).unwrap();
    let n = recs.len();
    let order: Vec<usize> = if l.order.is_empty() {
        (0..n).collect()
    } else {
        l.order.clone()
    };
    let body = |i: usize, next: u32, lower: u32| {
        let r = &recs[i];
        let mut e = Enc::new(s);
        e.ul(tags::NEXT_RECORD, next);
        e.us(tags::IN_USE, r.in_use);
        e.ul(tags::LOWER_RECORD, lower);
        e.text(tags::RECORD_TYPE, *b"CS", r.rtype.as_bytes());
        for (tag, vr, v) in &r.elems {
            e.text(*tag, *vr, v);
        }
        if l.undefined_items {
            e.item(ITEM_END, 0);
        }
        e.out
    };
    let top = |first: u32, last: u32| {
        let mut e = Enc::new(s);
        e.text(tags::FILE_SET_ID, *b"CS", b"HANDMADE");
        e.ul(tags::FIRST_ROOT_RECORD, first);
        e.ul(tags::LAST_ROOT_RECORD, last);
        e.us(tags::CONSISTENCY_FLAG, 0);
        e.out
    };
    let head = dicom::part10_header(dicom::MEDIA_STORAGE_DIRECTORY, "2.25.42", l.ts);
    let seq_header = if s.explicit { 12 } else { 8 };
    let base = head.len() + top(0, 0).len() + seq_header;
    let mut offset = vec![0u32; n];
    let mut pos = base;
    for &i in &order {
        offset[i] = pos as u32;
        pos += 8 + body(i, 0, 0).len();
    }
    let mut next = vec![0u32; n];
    for chain in std::iter::once(roots).chain(recs.iter().map(|r| &r.children[..])) {
        for w in chain.windows(2) {
            next[w[0]] = offset[w[1]];
        }
    }
    let mut e = Enc::new(s);
    e.out = head;
    let first = roots.first().map_or(0, |&i| offset[i]);
    let last = roots.last().map_or(0, |&i| offset[i]);
    e.out.extend(top(first, last));
    let seq_len = if l.undefined_seq {
        UNDEFINED
    } else {
        (pos - base) as u32
    };
    e.header(tags::DIRECTORY_RECORD_SEQUENCE, *b"SQ", seq_len);
    for &i in &order {
        let lower = recs[i].children.first().map_or(0, |&c| offset[c]);
        let b = body(i, next[i], lower);
        assert_eq!(e.out.len(), offset[i] as usize);
        e.item(
            ITEM,
            if l.undefined_items {
                UNDEFINED
            } else {
                b.len() as u32
            },
        );
        e.out.extend(b);
    }
    if l.undefined_seq {
        e.item(SEQ_END, 0);
    }
    e.out
}

/// The hand-built tree: two patients, three series, four images (11 records, index order is
/// tree order).
fn hand() -> (Vec<HRec>, Vec<usize>) {
    let patient = |name: &[u8], id: &[u8], kids: &[usize]| {
        hrec(
            "PATIENT",
            &[
                (tags::PATIENT_NAME, b"PN", name),
                (tags::PATIENT_ID, b"LO", id),
            ],
            kids,
        )
    };
    let study = |uid: &[u8], kids: &[usize]| {
        hrec(
            "STUDY",
            &[
                (tags::STUDY_DATE, b"DA", b"20240102"),
                (tags::STUDY_TIME, b"TM", b"120000"),
                (tags::STUDY_INSTANCE_UID, b"UI", uid),
                (tags::STUDY_ID, b"SH", b"1"),
            ],
            kids,
        )
    };
    let series = |modality: &[u8], uid: &[u8], kids: &[usize]| {
        hrec(
            "SERIES",
            &[
                (tags::MODALITY, b"CS", modality),
                (tags::SERIES_INSTANCE_UID, b"UI", uid),
                (tags::SERIES_NUMBER, b"IS", b"1"),
            ],
            kids,
        )
    };
    let image = |fid: &[u8], uid: &[u8], number: &[u8]| {
        hrec(
            "IMAGE",
            &[
                (tags::REFERENCED_FILE_ID, b"CS", fid),
                (
                    tags::REFERENCED_SOP_CLASS,
                    b"UI",
                    b"1.2.840.10008.5.1.4.1.1.4",
                ),
                (tags::REFERENCED_SOP_INSTANCE, b"UI", uid),
                (
                    tags::REFERENCED_TRANSFER_SYNTAX,
                    b"UI",
                    dicom::EXPLICIT_LE.as_bytes(),
                ),
                (tags::INSTANCE_NUMBER, b"IS", number),
            ],
            &[],
        )
    };
    let recs = vec![
        patient(b"DOE^JOHN", b"P1", &[1]),
        study(b"2.25.1.1", &[2, 5]),
        series(b"MR", b"2.25.1.1.1", &[3, 4]),
        image(b"P1\\S1\\I1", b"2.25.1.1.1.1", b"1"),
        image(b"P1\\S1\\I2", b"2.25.1.1.1.2", b"2"),
        series(b"CT", b"2.25.1.1.2", &[6]),
        image(b"P1\\S2\\I1", b"2.25.1.1.2.1", b"1"),
        patient(b"ROE^JANE", b"P2", &[8]),
        study(b"2.25.2.1", &[9]),
        series(b"MR", b"2.25.2.1.1", &[10]),
        image(b"P2\\S1\\I1", b"2.25.2.1.1.1", b"1"),
    ];
    (recs, vec![0, 7])
}

const HAND_OUTLINE: [&str; 11] = [
    "PATIENT P1",
    "  STUDY 2.25.1.1",
    "    SERIES 2.25.1.1.1",
    "      IMAGE P1\\S1\\I1",
    "      IMAGE P1\\S1\\I2",
    "    SERIES 2.25.1.1.2",
    "      IMAGE P1\\S2\\I1",
    "PATIENT P2",
    "  STUDY 2.25.2.1",
    "    SERIES 2.25.2.1.1",
    "      IMAGE P2\\S1\\I1",
];

fn hand_bytes(l: &Layout) -> Vec<u8> {
    let (recs, roots) = hand();
    build(&recs, &roots, l)
}

/// A parse that must succeed without findings and without a rebuild.
#[track_caller]
fn clean(buf: &[u8]) -> DicomDir {
    let d = DicomDir::parse(buf).unwrap();
    assert!(d.findings.is_empty(), "{:#?}", d.findings);
    assert!(!d.rebuilt);
    d
}

#[test]
fn hand_built_dicomdir_parses_to_its_tree() {
    let d = clean(&hand_bytes(&Layout::default()));
    assert_eq!(outline(&d), HAND_OUTLINE);
    assert_eq!(d.fileset_id, "HANDMADE");
    assert_eq!(d.fileset_uid, "2.25.42");
    let p2 = &d.records[d.roots[1] as usize];
    assert_eq!(p2.key(tags::PATIENT_NAME), Some("ROE^JANE"));
    assert_eq!(p2.offset, d.last_root);
}

#[test]
fn explicit_and_undefined_lengths_give_the_same_tree() {
    let defined = hand_bytes(&Layout::default());
    let want = tree(&clean(&defined));
    for (seq, items) in [(true, true), (true, false), (false, true)] {
        let b = hand_bytes(&Layout {
            undefined_seq: seq,
            undefined_items: items,
            ..Layout::default()
        });
        assert_ne!(b, defined);
        let d = clean(&b);
        assert_eq!(tree(&d), want, "undefined sequence {seq}, items {items}");
        assert_eq!(d.records.len(), 11);
    }
    // The undefined-length items really are delimited: FFFE,E00D after each body, and the
    // sequence ends in FFFE,E0DD.
    let b = hand_bytes(&Layout {
        undefined_seq: true,
        undefined_items: true,
        ..Layout::default()
    });
    assert_eq!(&b[b.len() - 8..], &[0xFE, 0xFF, 0xDD, 0xE0, 0, 0, 0, 0]);
    let d = DicomDir::parse(&b).unwrap();
    for r in &d.records {
        let e = r.body.1 as usize;
        assert_eq!(&b[e - 8..e - 4], &[0xFE, 0xFF, 0x0D, 0xE0]);
    }
}

#[test]
fn shuffled_item_order_follows_the_offsets() {
    let order = vec![10, 3, 7, 0, 5, 9, 1, 6, 4, 8, 2];
    let b = hand_bytes(&Layout {
        order,
        ..Layout::default()
    });
    let d = clean(&b);
    assert_eq!(outline(&d), HAND_OUTLINE);
    assert_eq!(tree(&d), tree(&clean(&hand_bytes(&Layout::default()))));
    // Records are kept in file order: the first item is an image, the last a series.
    assert_eq!(&*d.records[0].rtype, "IMAGE");
    assert_eq!(&*d.records[10].rtype, "SERIES");
    assert!(d.records.windows(2).all(|w| w[0].offset < w[1].offset));
    // The same with undefined lengths.
    let b = hand_bytes(&Layout {
        order: vec![10, 3, 7, 0, 5, 9, 1, 6, 4, 8, 2],
        undefined_seq: true,
        undefined_items: true,
        ..Layout::default()
    });
    assert_eq!(outline(&clean(&b)), HAND_OUTLINE);
}

#[test]
fn private_records_are_read_and_shown() {
    let (mut recs, mut roots) = hand();
    // A PRIVATE record at the root, and one under the first series (allowed anywhere).
    recs.push(hrec(
        "PRIVATE",
        &[(tags::PRIVATE_RECORD_UID, b"UI", b"2.25.999.1")],
        &[],
    ));
    roots.push(11);
    recs.push(hrec(
        "PRIVATE",
        &[(tags::PRIVATE_RECORD_UID, b"UI", b"2.25.999.2")],
        &[],
    ));
    recs[2].children.push(12);
    let d = clean(&build(&recs, &roots, &Layout::default()));
    assert_eq!(d.visible().len(), 13);
    let o = outline(&d);
    assert_eq!(o[5], "      PRIVATE ");
    assert_eq!(o[12], "PRIVATE ");
    let privates: Vec<_> = d
        .records
        .iter()
        .filter(|r| &*r.rtype == "PRIVATE")
        .collect();
    assert_eq!(privates.len(), 2);
    // The Private Record UID is not a kept key; the record is there by type only.
    assert!(privates
        .iter()
        .all(|r| r.keys.is_empty() && r.file_id.is_none()));
    assert_eq!(level_of("PRIVATE"), 0);
    assert!(allowed_under(Some("SERIES"), "PRIVATE"));
    assert!(allowed_under(None, "PRIVATE"));
}

#[test]
fn inactive_record_is_not_visible_nor_its_subtree() {
    let (mut recs, roots) = hand();
    recs[2].in_use = 0; // the first series, with two images
    let b = build(&recs, &roots, &Layout::default());
    let d = DicomDir::parse(&b).unwrap();
    assert!(!d.rebuilt);
    assert_eq!(d.findings.len(), 1, "{:#?}", d.findings);
    assert_finding(
        &d,
        Severity::Warning,
        "is inactive (Record In-use Flag 0000H): not shown",
    );
    assert_eq!(d.records.len(), 11);
    assert!(!d.records[2].in_use);
    assert!(!d.visible().contains(&2));
    assert_eq!(
        outline(&d),
        [
            "PATIENT P1",
            "  STUDY 2.25.1.1",
            "    SERIES 2.25.1.1.2",
            "      IMAGE P1\\S2\\I1",
            "PATIENT P2",
            "  STUDY 2.25.2.1",
            "    SERIES 2.25.2.1.1",
            "      IMAGE P2\\S1\\I1",
        ]
    );
    // Rewriting drops the inactive record and its subtree.
    let w = WDicomDir::from_read(&d, &b).unwrap();
    assert_eq!(w.records.len(), 8);
    assert_eq!(outline(&clean(&w.encode())), outline(&d));
}

#[test]
fn record_character_sets_latin1_and_utf8() {
    let (mut recs, roots) = hand();
    recs[0].elems = vec![
        (tags::SPECIFIC_CHARACTER_SET, *b"CS", b"ISO_IR 100".to_vec()),
        (tags::PATIENT_NAME, *b"PN", b"M\xdcLLER^J\xdcRGEN".to_vec()),
        (tags::PATIENT_ID, *b"LO", b"P1".to_vec()),
    ];
    recs[7].elems = vec![
        (tags::SPECIFIC_CHARACTER_SET, *b"CS", b"ISO_IR 192".to_vec()),
        (tags::PATIENT_NAME, *b"PN", "GARCÍA^ÁNA".as_bytes().to_vec()),
        (tags::PATIENT_ID, *b"LO", b"P2".to_vec()),
    ];
    // A UTF-8 study description under the Latin-1 patient: each record has its own set, and a
    // record without one is read in the default repertoire.
    recs[1]
        .elems
        .push((tags::STUDY_DESCRIPTION, *b"LO", "Ä".as_bytes().to_vec()));
    recs[1].elems.sort_by_key(|e| e.0);
    let d = clean(&build(&recs, &roots, &Layout::default()));
    let name = |i: usize| d.records[d.roots[i] as usize].key(tags::PATIENT_NAME);
    assert_eq!(name(0), Some("MÜLLER^JÜRGEN"));
    assert_eq!(name(1), Some("GARCÍA^ÁNA"));
    let p0 = &d.records[d.roots[0] as usize];
    assert_eq!(p0.key(tags::SPECIFIC_CHARACTER_SET), Some("ISO_IR 100"));
    let st = &d.records[p0.children[0] as usize];
    // Two UTF-8 bytes read as Latin-1: no set on the record, so not UTF-8.
    assert_eq!(st.key(tags::STUDY_DESCRIPTION), Some("Ã\u{84}"));
}

#[test]
fn offset_that_misses_an_item_rebuilds_from_item_order() {
    let mut b = small();
    let d0 = clean(&b);
    let n = d0.records.len();
    assert_eq!(n, 8);
    let study = &d0.records[d0.records[d0.roots[0] as usize].children[0] as usize];
    let bad = study.lower + 2;
    set_link(&mut b, study.offset, tags::LOWER_RECORD, bad);
    let d = DicomDir::parse(&b).unwrap();
    assert_finding(
        &d,
        Severity::Error,
        &format!(
            "offset {bad} (from the record at byte {}) does not land on a record item",
            study.offset
        ),
    );
    assert_finding(&d, Severity::Warning, "rebuilt from the item order");
    assert!(d.rebuilt);
    assert_eq!(d.visible().len(), n);
    // dicomfs writes items in tree order, so the rebuilt tree is the real one.
    assert_eq!(tree(&d), tree(&d0));
}

#[test]
fn offset_cycle_next_points_back() {
    let mut b = small();
    let d0 = clean(&b);
    let study = &d0.records[d0.records[d0.roots[0] as usize].children[0] as usize];
    let (s1, s2) = (study.children[0], study.children[1]);
    let (o1, o2) = (
        d0.records[s1 as usize].offset,
        d0.records[s2 as usize].offset,
    );
    // The second series' next points back at the first.
    set_link(&mut b, o2, tags::NEXT_RECORD, o1);
    let d = DicomDir::parse(&b).unwrap();
    assert_finding(
        &d,
        Severity::Error,
        &format!("the record at byte {o1} is reached twice (offset cycle or shared record)"),
    );
    assert!(d.rebuilt);
    assert_eq!(d.visible().len(), 8);
    assert_eq!(tree(&d), tree(&d0));
}

#[test]
fn offset_cycle_lower_points_to_itself() {
    let mut b = small();
    let d0 = clean(&b);
    let p = d0.records[d0.roots[0] as usize].offset;
    set_link(&mut b, p, tags::LOWER_RECORD, p);
    let d = DicomDir::parse(&b).unwrap();
    assert_finding(
        &d,
        Severity::Error,
        &format!("the record at byte {p} is reached twice"),
    );
    assert!(d.rebuilt);
    assert_eq!(tree(&d), tree(&d0));
}

#[test]
fn dangling_lower_offset_past_the_end() {
    let mut b = small();
    let d0 = clean(&b);
    let study = &d0.records[d0.records[d0.roots[0] as usize].children[0] as usize];
    let series = &d0.records[study.children[0] as usize];
    let past = b.len() as u32 + 1000;
    set_link(&mut b, series.offset, tags::LOWER_RECORD, past);
    let d = DicomDir::parse(&b).unwrap();
    assert_finding(
        &d,
        Severity::Error,
        &format!(
            "offset {past} (from the record at byte {}) does not land on a record item",
            series.offset
        ),
    );
    assert!(d.rebuilt);
    assert_eq!(d.visible().len(), 8);
}

#[test]
fn zero_lower_offset_leaves_records_unreachable() {
    let mut b = small();
    let d0 = clean(&b);
    let study = d0.records[d0.records[d0.roots[0] as usize].children[0] as usize].offset;
    set_link(&mut b, study, tags::LOWER_RECORD, 0);
    let d = DicomDir::parse(&b).unwrap();
    // Two series and their four images.
    assert_finding(
        &d,
        Severity::Error,
        "6 record(s) are not reachable from the root through the offsets",
    );
    assert!(d.rebuilt);
    assert_eq!(d.visible().len(), 8);
}

#[test]
fn zero_first_root_offset_with_records() {
    let mut b = small();
    let at = value_at(&b, dataset_at(&b), tags::FIRST_ROOT_RECORD);
    put_u32(&mut b, at, 0);
    let d = DicomDir::parse(&b).unwrap();
    assert_finding(
        &d,
        Severity::Error,
        "Offset of First Record of Root Entity is 0 but there are records",
    );
    assert!(d.rebuilt);
    assert_eq!(d.visible().len(), 8);
}

#[test]
fn wrong_last_root_offset_is_a_warning() {
    let mut b = small();
    let d0 = clean(&b);
    let at = value_at(&b, dataset_at(&b), tags::LAST_ROOT_RECORD);
    put_u32(&mut b, at, 12345);
    let d = DicomDir::parse(&b).unwrap();
    assert_eq!(d.findings.len(), 1);
    assert_finding(
        &d,
        Severity::Warning,
        &format!(
            "Offset of Last Record of Root Entity is 12345 but the root chain ends at {}",
            d0.first_root
        ),
    );
    assert!(!d.rebuilt);
}

#[test]
fn every_truncation_parses_without_panic() {
    let b = small();
    let mut ok = 0;
    for cut in 0..=b.len() {
        if let Ok(d) = DicomDir::parse(&b[..cut]) {
            ok += 1;
            let v = d.visible();
            assert!(v.len() <= d.records.len());
            if cut < b.len() {
                assert!(d.errors().next().is_some(), "cut {cut} gave no error");
            }
        }
    }
    assert!(ok > 0);
    // The same for a hand-built Implicit VR file with undefined lengths everywhere.
    let h = hand_bytes(&Layout {
        ts: dicom::IMPLICIT_LE,
        undefined_seq: true,
        undefined_items: true,
        ..Layout::default()
    });
    for cut in 0..h.len() {
        if let Ok(d) = DicomDir::parse(&h[..cut]) {
            d.visible();
        }
    }
}

#[test]
fn truncation_spot_checks() {
    let b = small();
    let d0 = clean(&b);
    let n = d0.records.len();
    assert_err(&b[..100], "only 100 bytes: too short for a Part-10 file");
    assert_err(&b[..140], "truncated");
    let ds = dataset_at(&b);
    assert_err(&b[..ds], "no Directory Record Sequence (0004,1220)");
    // Cut right after the sequence header: no records at all.
    let seq = value_at(&b, ds, tags::DIRECTORY_RECORD_SEQUENCE);
    let d = DicomDir::parse(&b[..seq]).unwrap();
    assert_finding(
        &d,
        Severity::Error,
        &format!("runs {} bytes past the end of the file", b.len() - seq),
    );
    assert!(d.records.is_empty() && d.visible().is_empty());
    // Cut 10 bytes into the last record's elements: every record is there, the last one short.
    let d = DicomDir::parse(&b[..b.len() - 10]).unwrap();
    assert_finding(
        &d,
        Severity::Error,
        "runs 10 bytes past the end of the file",
    );
    assert_finding(&d, Severity::Error, "truncated at byte");
    assert_eq!(d.records.len(), n);
    assert!(!d.rebuilt);
    // Cut inside the last record's item tag: that record is lost, its sibling's next misses.
    let last = d0.records[n - 1].offset as usize;
    let d = DicomDir::parse(&b[..last + 4]).unwrap();
    assert_finding(&d, Severity::Error, "record sequence: truncated at byte");
    assert_finding(
        &d,
        Severity::Error,
        &format!("offset {last} (from the record at byte"),
    );
    assert!(d.rebuilt);
    assert_eq!(d.records.len(), n - 1);
    assert_eq!(d.visible().len(), n - 1);
}

#[test]
fn sequence_length_larger_than_the_file() {
    let mut b = small();
    let d0 = clean(&b);
    let seq = value_at(&b, dataset_at(&b), tags::DIRECTORY_RECORD_SEQUENCE);
    put_u32(&mut b, seq - 4, 0xFFFF_FFF0);
    let d = DicomDir::parse(&b).unwrap();
    assert_eq!(d.findings.len(), 1, "{:#?}", d.findings);
    assert_finding(
        &d,
        Severity::Error,
        &format!(
            "Directory Record Sequence length 4294967280 runs {} bytes past the end of the file",
            seq + 0xFFFF_FFF0 - b.len()
        ),
    );
    assert!(!d.rebuilt);
    assert_eq!(tree(&d), tree(&d0));
}

#[test]
fn item_length_larger_than_the_file() {
    let mut b = small();
    let d0 = clean(&b);
    let p = d0.records[d0.roots[0] as usize].offset as usize;
    put_u32(&mut b, p + 4, 0x7FFF_FFF0);
    let d = DicomDir::parse(&b).unwrap();
    // The patient item swallows the rest of the file, then runs out of bytes.
    assert_finding(
        &d,
        Severity::Error,
        &format!("record at byte {p}: truncated at byte {}", b.len()),
    );
    assert_eq!(d.records.len(), 1);
    assert!(d.rebuilt);
    assert_eq!(
        outline(&d),
        [format!(
            "PATIENT {}",
            d0.records[0].key(tags::PATIENT_ID).unwrap()
        )]
    );
}

#[test]
fn element_length_larger_than_the_file() {
    let (mut recs, roots) = hand();
    recs[10]
        .elems
        .push((0x0040_A160, *b"UT", b"SOME TEXT".to_vec()));
    let mut b = build(&recs, &roots, &Layout::default());
    // (0040,A160) UT: tag, VR, 2 reserved bytes, then the 4-byte length.
    let hdr = [0x40, 0x00, 0x60, 0xA1, b'U', b'T', 0, 0];
    let at = b.windows(8).position(|w| w == hdr).unwrap();
    put_u32(&mut b, at + 8, 0xFFFF_FFF0);
    let d = DicomDir::parse(&b).unwrap();
    assert_eq!(d.findings.len(), 1, "{:#?}", d.findings);
    assert_finding(
        &d,
        Severity::Error,
        &format!(
            "(0040,A160) at byte {at}: truncated at byte {}: 4294967280 bytes needed, {} left",
            at + 12,
            b.len() - at - 12
        ),
    );
    // The record itself is kept: only its last element was unreadable.
    assert!(!d.rebuilt);
    assert_eq!(outline(&d), HAND_OUTLINE);
    // A short-VR length past the end.
    let mut b = small();
    let n = b.len();
    let last = clean(&b).records.last().unwrap().offset as usize;
    let at = value_at(&b, last + 8, tags::REFERENCED_FILE_ID);
    b[at - 2..at].copy_from_slice(&0xFFFFu16.to_le_bytes());
    let d = DicomDir::parse(&b).unwrap();
    assert_finding(&d, Severity::Error, "65535 bytes needed");
    assert_eq!(d.records.len(), 8);
    assert_eq!(b.len(), n);
}

#[test]
fn elements_past_the_item_length() {
    let mut b = small();
    let d0 = clean(&b);
    let last = d0.records.last().unwrap();
    let len = last.body.1 - last.body.0;
    put_u32(&mut b, last.offset as usize + 4, len - 2);
    let d = DicomDir::parse(&b).unwrap();
    assert_finding(
        &d,
        Severity::Error,
        &format!(
            "record at byte {}: its elements run past the item length",
            last.offset
        ),
    );
    assert_eq!(d.records.len(), 8);
    assert!(!d.rebuilt);
}

#[test]
fn big_endian_dicomdir_gives_the_same_tree() {
    let want = tree(&clean(&hand_bytes(&Layout::default())));
    for undefined in [false, true] {
        let b = hand_bytes(&Layout {
            ts: dicom::EXPLICIT_BE,
            undefined_seq: undefined,
            undefined_items: undefined,
            ..Layout::default()
        });
        // Really big endian: the sequence tag as 00 04 12 20.
        assert!(b.windows(4).any(|w| w == [0x00, 0x04, 0x12, 0x20]));
        let d = DicomDir::parse(&b).unwrap();
        assert_eq!(d.findings.len(), 1, "{:#?}", d.findings);
        assert_finding(
            &d,
            Severity::Warning,
            "the DICOMDIR is encoded in Explicit VR Big Endian, not Explicit VR Little Endian",
        );
        assert!(!d.rebuilt);
        assert_eq!(d.transfer_syntax, dicom::EXPLICIT_BE);
        assert_eq!(tree(&d), want);
        // Only Explicit VR Little Endian is rewritten in place.
        assert!(WDicomDir::from_read(&d, &b).is_err());
    }
}

#[test]
fn implicit_vr_dicomdir_gives_the_same_tree() {
    let want = tree(&clean(&hand_bytes(&Layout::default())));
    for undefined in [false, true] {
        let b = hand_bytes(&Layout {
            ts: dicom::IMPLICIT_LE,
            undefined_seq: undefined,
            undefined_items: undefined,
            ..Layout::default()
        });
        let d = DicomDir::parse(&b).unwrap();
        assert_eq!(d.findings.len(), 1, "{:#?}", d.findings);
        assert_finding(
            &d,
            Severity::Warning,
            "the DICOMDIR is encoded in Implicit VR Little Endian, not Explicit VR Little Endian",
        );
        assert!(!d.rebuilt);
        assert_eq!(tree(&d), want);
    }
}

#[test]
fn consistency_flag_ffff_is_an_error() {
    let mut b = small();
    let d0 = clean(&b);
    let at = value_at(&b, dataset_at(&b), tags::CONSISTENCY_FLAG);
    b[at..at + 2].copy_from_slice(&[0xFF, 0xFF]);
    let d = DicomDir::parse(&b).unwrap();
    assert_eq!(d.findings.len(), 1, "{:#?}", d.findings);
    assert_finding(
        &d,
        Severity::Error,
        "File-set Consistency Flag is FFFFH; only 0000H is allowed",
    );
    assert_eq!(d.consistency_flag, 0xFFFF);
    assert!(!d.rebuilt);
    assert_eq!(tree(&d), tree(&d0));
}

#[test]
fn non_dicom_files_are_errors() {
    assert_err(b"", "only 0 bytes: too short for a Part-10 file");
    let mut pdf = b"%PDF-1.4\n".to_vec();
    pdf.resize(300, b' ');
    assert_err(&pdf, "no DICM prefix at byte 128: not a DICOM Part-10 file");
    let mut only_dicm = vec![0u8; 128];
    only_dicm.extend_from_slice(b"DICM");
    only_dicm.extend_from_slice(&[0x08, 0x00, 0x05, 0x00]);
    assert_err(
        &only_dicm,
        "no File Meta Information (group 0002) after DICM",
    );
}

#[test]
fn no_directory_record_sequence_is_an_error() {
    let mut b = dicom::part10_header(dicom::MEDIA_STORAGE_DIRECTORY, "2.25.5", dicom::EXPLICIT_LE);
    let mut w = Writer::new();
    w.str(tags::FILE_SET_ID, *b"CS", "EMPTY");
    w.u32(tags::FIRST_ROOT_RECORD, 0);
    w.u32(tags::LAST_ROOT_RECORD, 0);
    w.u16(tags::CONSISTENCY_FLAG, 0);
    b.extend_from_slice(&w.out);
    assert_err(&b, "no Directory Record Sequence (0004,1220)");
    // A DICOMDIR whose sequence tag was damaged: (0004,1221) is skipped as an unknown element.
    let mut b = small();
    let seq = value_at(&b, dataset_at(&b), tags::DIRECTORY_RECORD_SEQUENCE);
    b[seq - 10] = 0x21;
    assert_err(&b, "no Directory Record Sequence (0004,1220)");
    // An empty sequence is not an error: an empty File-set.
    let mut b = dicom::part10_header(dicom::MEDIA_STORAGE_DIRECTORY, "2.25.5", dicom::EXPLICIT_LE);
    let mut w = Writer::new();
    w.u32(tags::FIRST_ROOT_RECORD, 0);
    w.u32(tags::LAST_ROOT_RECORD, 0);
    w.header(tags::DIRECTORY_RECORD_SEQUENCE, *b"SQ", 0);
    b.extend_from_slice(&w.out);
    let d = clean(&b);
    assert!(d.records.is_empty() && d.visible().is_empty());
}

#[test]
fn deflated_and_wrong_class_dicomdirs() {
    let mut b = dicom::part10_header(dicom::MEDIA_STORAGE_DIRECTORY, "2.25.5", dicom::DEFLATED_LE);
    b.extend_from_slice(&[0x78, 0x9C, 0, 0]);
    assert_err(&b, "Deflated");
    let mut b = dicom::part10_header("1.2.840.10008.5.1.4.1.1.4", "2.25.5", dicom::EXPLICIT_LE);
    let mut w = Writer::new();
    w.header(tags::DIRECTORY_RECORD_SEQUENCE, *b"SQ", 0);
    b.extend_from_slice(&w.out);
    let d = DicomDir::parse(&b).unwrap();
    assert_finding(
        &d,
        Severity::Error,
        "not Media Storage Directory Storage (1.2.840.10008.1.3.10)",
    );
}

/// A small deterministic PRNG (xorshift64).
struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// Parse, and if that works walk the tree and rewrite: nothing may panic.
fn exercise(buf: &[u8]) {
    let Ok(d) = DicomDir::parse(buf) else {
        return;
    };
    assert!(d.findings.len() <= 1001);
    let v = d.visible();
    let mut seen = vec![false; d.records.len()];
    for &i in &v {
        assert!(
            !std::mem::replace(&mut seen[i as usize], true),
            "{i} shown twice"
        );
    }
    for (i, r) in d.records.iter().enumerate() {
        assert!(
            r.body.0 <= r.body.1 && r.body.1 as usize <= buf.len(),
            "record {i}"
        );
    }
    if let Ok(w) = WDicomDir::from_read(&d, buf) {
        let _ = DicomDir::parse(&w.encode());
    }
}

#[test]
fn random_byte_flips_never_panic() {
    let bases = [
        small(),
        hand_bytes(&Layout {
            undefined_seq: true,
            undefined_items: true,
            order: vec![10, 3, 7, 0, 5, 9, 1, 6, 4, 8, 2],
            ..Layout::default()
        }),
        hand_bytes(&Layout {
            ts: dicom::IMPLICIT_LE,
            undefined_seq: true,
            undefined_items: true,
            ..Layout::default()
        }),
        hand_bytes(&Layout {
            ts: dicom::EXPLICIT_BE,
            ..Layout::default()
        }),
    ];
    let mut rng = XorShift(0x9E37_79B9_7F4A_7C15);
    let mut parsed = 0;
    for iter in 0..4000 {
        let base = &bases[iter % bases.len()];
        let mut b = base.clone();
        // Leave the preamble alone most of the time: it is never read.
        let pos = |rng: &mut XorShift, len: usize| 128 + rng.below(len - 128);
        for _ in 0..1 + rng.below(4) {
            match rng.below(4) {
                0 => {
                    let p = pos(&mut rng, b.len());
                    b[p] ^= 1 << rng.below(8);
                }
                1 => {
                    let p = pos(&mut rng, b.len());
                    b[p] = rng.next() as u8;
                }
                2 => {
                    // An interesting 32-bit value: lengths and offsets.
                    let p = pos(&mut rng, b.len() - 4);
                    let v = match rng.below(6) {
                        0 => 0,
                        1 => UNDEFINED,
                        2 => 0x7FFF_FFFF,
                        3 => 0xFFFF_FFF0,
                        4 => rng.below(b.len()) as u32,
                        _ => rng.next() as u32,
                    };
                    put_u32(&mut b, p, v);
                }
                _ => {
                    let cut = pos(&mut rng, b.len());
                    b.truncate(cut.max(136));
                }
            }
        }
        if DicomDir::parse(&b).is_ok() {
            parsed += 1;
        }
        exercise(&b);
    }
    // Most mutants still parse (leniently): the flips reached the records, not just the header.
    assert!(parsed > 2000, "only {parsed} of 4000 parsed");
}

/// Write the seed corpus for the fuzz target (tests/fuzz): valid DICOMDIRs in every layout the
/// reader knows. Run with `cargo test --lib write_fuzz_seeds -- --ignored`.
#[test]
#[ignore]
fn write_fuzz_seeds() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fuzz/seeds/dicomdir");
    std::fs::create_dir_all(&dir).unwrap();
    let undefined = |ts| Layout {
        ts,
        undefined_seq: true,
        undefined_items: true,
        ..Layout::default()
    };
    let seeds = [
        ("small", small()),
        ("explicit_le", hand_bytes(&Layout::default())),
        (
            "explicit_le_undefined",
            hand_bytes(&undefined(dicom::EXPLICIT_LE)),
        ),
        (
            "explicit_le_shuffled",
            hand_bytes(&Layout {
                order: vec![10, 3, 7, 0, 5, 9, 1, 6, 4, 8, 2],
                ..Layout::default()
            }),
        ),
        (
            "explicit_be",
            hand_bytes(&Layout {
                ts: dicom::EXPLICIT_BE,
                ..Layout::default()
            }),
        ),
        (
            "implicit_le",
            hand_bytes(&Layout {
                ts: dicom::IMPLICIT_LE,
                ..Layout::default()
            }),
        ),
        (
            "implicit_le_undefined",
            hand_bytes(&undefined(dicom::IMPLICIT_LE)),
        ),
    ];
    for (name, bytes) in seeds {
        std::fs::write(dir.join(name), bytes).unwrap();
    }
}

#[test]
fn records_inherit_the_data_set_character_set() {
    // A record without (0008,0005) in a DICOMDIR whose data set says ISO_IR 192.
    let spec = synth::Spec {
        patients: 2,
        studies: 1,
        series: 1,
        instances: 1,
        documents: false,
        ..Default::default()
    };
    let mut insts = synth::instances(&spec);
    for i in &mut insts {
        i.ds.retain(|e| e.tag != tags::SPECIFIC_CHARACTER_SET);
    }
    let mut b = synth::dicomdir_for(&insts, "X", "2.25.1").encode();
    let mut w = crate::dicom::Writer::new();
    w.str(tags::SPECIFIC_CHARACTER_SET, *b"CS", "ISO_IR 192");
    b.extend_from_slice(&w.out);
    let d = DicomDir::parse(&b).unwrap();
    assert_eq!(d.charset, "ISO_IR 192");
    let names: Vec<&str> = d
        .roots
        .iter()
        .map(|&i| d.records[i as usize].key(tags::PATIENT_NAME).unwrap())
        .collect();
    assert_eq!(names, ["DOE^JANE", "MÜLLER^JÜRGEN"]);
}
