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
