//! The updater without a mount: appends and rewrites give exactly the bytes a fresh encode of
//! the same records gives, and repair brings back the invariant after simulated crashes.

use super::*;
use crate::synth;
use std::path::{Path, PathBuf};

fn tmpdir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("dicomfs-fsu-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn medium(d: &Path) -> Arc<dyn Medium> {
    Arc::new(fsimpl::HostDir::open(d).unwrap())
}

fn open(d: &Path) -> Live {
    let m = medium(d);
    Live::open(FileSet::open(m).unwrap(), true, Profile::default()).unwrap()
}

fn fresh(name: &str) -> (PathBuf, Live) {
    let d = tmpdir(name);
    fileset::create(&*medium(&d), "TEST", "1.2.3.4").unwrap();
    let l = open(&d);
    (d, l)
}

fn stage(l: &Live, bytes: &[u8]) -> String {
    let p = l.stage().unwrap();
    l.medium.write_at(&p, 0, bytes).unwrap();
    p
}

fn insts() -> Vec<synth::Instance> {
    synth::instances(&synth::Spec {
        patients: 2,
        studies: 2,
        series: 2,
        instances: 3,
        rows: 4,
        cols: 4,
        ..Default::default()
    })
}

/// The DICOMDIR on disk parses cleanly and is exactly what a fresh encode of its records gives.
fn assert_canonical(d: &Path) -> DicomDir {
    let bytes = std::fs::read(d.join(DICOMDIR)).unwrap();
    let dir = DicomDir::parse(&bytes).unwrap();
    assert!(dir.findings.is_empty(), "{:?}", dir.findings);
    let again = dicomdir::WDicomDir::from_read(&dir, &bytes)
        .unwrap()
        .encode();
    assert!(
        again == bytes,
        "the DICOMDIR is not what a fresh encode gives"
    );
    dir
}

fn referenced(dir: &DicomDir) -> Vec<String> {
    let mut v: Vec<String> = dir
        .visible()
        .into_iter()
        .filter_map(|i| dir.records[i as usize].key(tags::REFERENCED_SOP_INSTANCE))
        .map(String::from)
        .collect();
    v.sort();
    v
}

#[test]
fn appends_give_the_bytes_of_a_fresh_encode() {
    let (d, l) = fresh("append");
    let all = insts();
    for (k, i) in all.iter().enumerate() {
        let r = l.ingest(&stage(&l, &i.bytes()), "x", None).unwrap();
        assert!(matches!(r, Ingested::Added(_)), "{r:?}");
        if k % 5 == 0 {
            assert_canonical(&d);
        }
    }
    let dir = assert_canonical(&d);
    let mut want: Vec<String> = all.iter().map(|i| i.sop_instance()).collect();
    want.sort();
    assert_eq!(referenced(&dir), want);
    // One record per patient, study and series.
    let count = |t: &str| dir.records.iter().filter(|r| &*r.rtype == t).count();
    assert_eq!((count("PATIENT"), count("STUDY")), (2, 4));
    // The same bytes again: no change. Other bytes under the same UID: EEXIST.
    let before = std::fs::read(d.join(DICOMDIR)).unwrap();
    let r = l
        .ingest(&stage(&l, &all[0].bytes()), "again", None)
        .unwrap();
    assert!(matches!(r, Ingested::Same(_)));
    let mut other = all[0].bytes();
    let n = other.len();
    other[n - 1] ^= 0xFF;
    let e = l.ingest(&stage(&l, &other), "other", None).unwrap_err();
    assert_eq!(e.errno(), libc::EEXIST);
    assert_eq!(std::fs::read(d.join(DICOMDIR)).unwrap(), before);
    // File IDs: P/S/E/I, every referenced file in place.
    for r in dir.records.iter().filter(|r| r.file_id.is_some()) {
        let f = r.file_id.as_deref().unwrap();
        let p: Vec<&str> = f.split('\\').collect();
        assert_eq!(p.len(), 4, "{f}");
        assert!(p[0].starts_with('P') && p[3].starts_with('I'), "{f}");
        assert!(d.join(f.replace('\\', "/")).is_file());
    }
    l.close().unwrap();
    assert!(!d.join(STAGING).exists());
}

#[test]
fn deletes_rewrite_once_and_remove_empty_records_and_directories() {
    let (d, l) = fresh("delete");
    let all = insts();
    let mut fids = Vec::new();
    for i in &all {
        match l.ingest(&stage(&l, &i.bytes()), "x", None).unwrap() {
            Ingested::Added(f) => fids.push(f),
            r => panic!("{r:?}"),
        }
    }
    let series_before = DicomDir::parse(&std::fs::read(d.join(DICOMDIR)).unwrap())
        .unwrap()
        .records
        .iter()
        .filter(|r| &*r.rtype == "SERIES")
        .count();
    // A whole series (the first 3 instances) and one more instance.
    for f in fids.iter().take(4) {
        l.delete(f).unwrap();
    }
    // A delete on its own is written at once; the ones right after it wait for the commit.
    assert!(!d.join(fids[0].replace('\\', "/")).exists());
    assert!(d.join(fids[1].replace('\\', "/")).exists());
    l.commit().unwrap();
    let dir = assert_canonical(&d);
    assert_eq!(referenced(&dir).len(), all.len() - 4);
    for f in fids.iter().take(4) {
        assert!(!d.join(f.replace('\\', "/")).exists(), "{f}");
    }
    // The emptied series directory is gone with its SERIES record.
    let series_dir = fids[0].rsplit_once('\\').unwrap().0.replace('\\', "/");
    assert!(!d.join(&series_dir).exists());
    assert_eq!(
        dir.records.iter().filter(|r| &*r.rtype == "SERIES").count(),
        series_before - 1
    );
    // Deleting everything leaves an empty, valid DICOMDIR and no directories.
    for f in fids.iter().skip(4) {
        l.delete(f).unwrap();
    }
    l.commit().unwrap();
    let dir = assert_canonical(&d);
    assert!(dir.records.is_empty());
    l.close().unwrap();
    let left: Vec<_> = std::fs::read_dir(&d)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(left, vec![std::ffi::OsString::from(DICOMDIR)]);
}

#[test]
fn repair_after_simulated_crashes() {
    let (d, l) = fresh("repair");
    let all = insts();
    let mut fids = Vec::new();
    for i in all.iter().take(6) {
        if let Ingested::Added(f) = l.ingest(&stage(&l, &i.bytes()), "x", None).unwrap() {
            fids.push(f);
        }
    }
    drop(l); // a crash: the staging directory stays
             // 1. An append cut short: bytes after the sequence.
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(d.join(DICOMDIR))
        .unwrap();
    std::io::Write::write_all(&mut f, &[0xFE, 0xFF, 0x00, 0xE0, 0x10, 0, 0, 0, 1, 2]).unwrap();
    drop(f);
    // 2. A file renamed into place but never referenced.
    let orphan = &all[6];
    std::fs::create_dir_all(d.join("P0000009/S0000001/E0000001")).unwrap();
    std::fs::write(
        d.join("P0000009/S0000001/E0000001/I0000001"),
        orphan.bytes(),
    )
    .unwrap();
    // 3. A staged copy that never finished.
    std::fs::create_dir_all(d.join(STAGING)).unwrap();
    std::fs::write(d.join(STAGING).join("00000099"), b"partial").unwrap();
    // 4. A referenced file gone.
    std::fs::remove_file(d.join(fids[1].replace('\\', "/"))).unwrap();
    let report = repair(&medium(&d), &Profile::default()).unwrap();
    let text = report.join("\n");
    assert!(text.contains("dropped 10 bytes"), "{text}");
    assert!(
        text.contains("P0000009/S0000001/E0000001/I0000001: not referenced: added"),
        "{text}"
    );
    assert!(text.contains(&format!("{}: missing", fids[1])), "{text}");
    assert!(!d.join(STAGING).exists());
    let dir = assert_canonical(&d);
    let mut want: Vec<String> = all
        .iter()
        .take(7)
        .enumerate()
        .filter(|(k, _)| *k != 1)
        .map(|(_, i)| i.sop_instance())
        .collect();
    want.sort();
    assert_eq!(referenced(&dir), want);
    // Records appended but never linked (the sequence length patched, the link not): dropped,
    // and their file taken in again from the medium.
    let l = open(&d);
    let before = std::fs::read(d.join(DICOMDIR)).unwrap();
    let r = l.ingest(&stage(&l, &all[7].bytes()), "x", None).unwrap();
    let Ingested::Added(fid) = r else {
        panic!("{r:?}")
    };
    drop(l);
    let after = std::fs::read(d.join(DICOMDIR)).unwrap();
    let dir0 = DicomDir::parse(&before).unwrap();
    let seq_at = dir0.seq_len_at as usize;
    let mut unlinked = before.clone();
    unlinked[seq_at..seq_at + 4].copy_from_slice(&after[seq_at..seq_at + 4]);
    unlinked.extend_from_slice(&after[before.len()..]);
    std::fs::write(d.join(DICOMDIR), &unlinked).unwrap();
    let report = repair(&medium(&d), &Profile::default()).unwrap().join("\n");
    assert!(report.contains("do not reach"), "{report}");
    assert!(
        report.contains(&format!(
            "{}: not referenced: added",
            fid.replace('\\', "/")
        )),
        "{report}"
    );
    let dir = assert_canonical(&d);
    want.push(all[7].sop_instance());
    want.sort();
    assert_eq!(referenced(&dir), want);
}

#[test]
fn preambles_are_cleared_unless_tiff() {
    let (d, l) = fresh("preamble");
    let all = insts();
    let mut exe = all[0].bytes();
    exe[..2].copy_from_slice(b"MZ"); // a Windows executable header
    let mut tiff = all[1].bytes();
    tiff[..4].copy_from_slice(b"II*\0");
    let mut stored = Vec::new();
    for b in [&exe, &tiff] {
        match l.ingest(&stage(&l, b), "x", None).unwrap() {
            Ingested::Added(f) => stored.push(std::fs::read(d.join(f.replace('\\', "/"))).unwrap()),
            r => panic!("{r:?}"),
        }
    }
    assert!(stored[0][..128].iter().all(|&b| b == 0));
    assert_eq!(stored[0][128..], exe[128..]);
    assert_eq!(stored[1], tiff);
}

#[test]
fn the_root_never_holds_more_than_its_cap() {
    let (d, l) = fresh("rootcap");
    let mut base = insts()[0].ds.clone();
    let n = ROOT_CAP + 3;
    let mut fids = Vec::new();
    for k in 0..n {
        // One patient each: a new Patient ID and new UIDs.
        for e in base.iter_mut() {
            match e.tag {
                tags::PATIENT_ID => e.value = format!("CAP{k:05}").into_bytes(),
                tags::SOP_INSTANCE_UID | tags::STUDY_INSTANCE_UID | tags::SERIES_INSTANCE_UID => {
                    e.value = synth::uid(7, &[e.tag as u64, k as u64]).into_bytes()
                }
                _ => {}
            }
        }
        match l
            .ingest(&stage(&l, &synth::part10(&base)), "x", None)
            .unwrap()
        {
            Ingested::Added(f) => fids.push(f),
            r => panic!("{r:?}"),
        }
    }
    let root: Vec<_> = std::fs::read_dir(&d).unwrap().collect();
    assert!(
        root.len() <= ROOT_CAP + 2,
        "{} entries at the root",
        root.len()
    );
    // The first patients at the root, the last ones in a bucket; all five levels legal.
    assert_eq!(fids[0].split('\\').count(), 4);
    let last = &fids[n - 1];
    assert!(last.starts_with("B0000001\\P"), "{last}");
    assert!(dicomdir::file_id_problem(last).is_none());
    l.close().unwrap();
    assert_canonical(&d);
}
