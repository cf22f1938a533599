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

/// The DICOMDIR on disk parses cleanly, every item in its sequence is a reachable record, and
/// dropping the padding that in-place deletes leave gives exactly a fresh encode.
fn assert_clean(d: &Path) -> DicomDir {
    let bytes = std::fs::read(d.join(DICOMDIR)).unwrap();
    let dir = DicomDir::parse(&bytes).unwrap();
    assert!(dir.findings.is_empty(), "{:?}", dir.findings);
    assert!(!dir.rebuilt);
    assert_eq!(
        dir.visible().len(),
        dir.records.len(),
        "unreachable records"
    );
    let mut st = State::new(dir.clone(), Spelling::Exact, bytes.clone());
    let compact = rewrite(&mut st).unwrap();
    let fresh = dicomdir::WDicomDir::from_read(&dir, &bytes)
        .unwrap()
        .encode();
    assert!(
        compact == fresh,
        "dropping the padding does not give a fresh encode"
    );
    dir
}

fn padding(dir: &DicomDir) -> u32 {
    dir.records
        .iter()
        .filter(|r| r.pad != 0)
        .map(|r| r.end - r.pad)
        .sum()
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
    let dir = assert_clean(&d);
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
    let dir = assert_clean(&d);
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

fn filled(name: &str) -> (PathBuf, Live, Vec<String>) {
    let (d, l) = fresh(name);
    let mut fids = Vec::new();
    for i in &insts() {
        match l.ingest(&stage(&l, &i.bytes()), "x", None).unwrap() {
            Ingested::Added(f) => fids.push(f),
            r => panic!("{r:?}"),
        }
    }
    (d, l, fids)
}

#[test]
fn a_delete_changes_the_dicomdir_in_place_and_a_rewrite_compacts_it() {
    let (d, l, fids) = filled("inplace");
    let before = std::fs::read(d.join(DICOMDIR)).unwrap();
    // An instance in the middle of its series: its bytes become padding, nothing moves.
    l.delete(&fids[1]).unwrap();
    let after = std::fs::read(d.join(DICOMDIR)).unwrap();
    assert_eq!(after.len(), before.len());
    let dir = assert_clean(&d);
    assert!(padding(&dir) > 0);
    assert_eq!(referenced(&dir).len(), fids.len() - 1);
    assert!(!d.join(fids[1].replace('\\', "/")).exists());
    // The journal is gone once the delete is done.
    assert!(!d.join(STAGING).join(journal::NAME).exists());
    // Adjacent deletes (the rest of that series, so the SERIES record goes too) extend it.
    l.delete(&fids[0]).unwrap();
    l.delete(&fids[2]).unwrap();
    l.commit().unwrap();
    let dir = assert_clean(&d);
    assert_eq!(std::fs::read(d.join(DICOMDIR)).unwrap().len(), before.len());
    assert_eq!(referenced(&dir).len(), fids.len() - 3);
    let series_dir = fids[0].rsplit_once('\\').unwrap().0.replace('\\', "/");
    assert!(!d.join(&series_dir).exists());
    // Adding after in-place deletes still appends and patches correctly.
    let extra = synth::instances(&synth::Spec {
        patients: 1,
        studies: 1,
        series: 1,
        instances: 2,
        rows: 4,
        cols: 4,
        seed: 7,
        documents: false,
        ..Default::default()
    });
    for i in &extra {
        assert!(matches!(
            l.ingest(&stage(&l, &i.bytes()), "x", None).unwrap(),
            Ingested::Added(_)
        ));
    }
    let dir = assert_clean(&d);
    assert_eq!(referenced(&dir).len(), fids.len() - 3 + 2);
    // A reopen reads the padding back, and keeps deleting in place.
    l.close().unwrap();
    let l = open(&d);
    assert!(l.read().padding > 0);
    l.delete(&fids[5]).unwrap();
    let dir = assert_clean(&d);
    assert_eq!(referenced(&dir).len(), fids.len() - 4 + 2);
    // Padding past a quarter of the DICOMDIR: the next delete rewrites, which drops it all.
    l.state.write().padding = u64::MAX / 2;
    l.delete(&fids[7]).unwrap();
    l.commit().unwrap();
    let dir = assert_canonical(&d);
    assert_eq!(padding(&dir), 0);
    assert_eq!(referenced(&dir).len(), fids.len() - 5 + 2);
    l.close().unwrap();
}

#[test]
fn the_first_record_is_deleted_by_a_rewrite() {
    let (d, l, fids) = filled("first");
    // Deleting every instance of the first patient takes the first record of the sequence,
    // which nothing before it can absorb.
    let first: Vec<String> = {
        let st = l.read();
        let mut todo = vec![st.dir.roots[0]];
        let mut out = Vec::new();
        while let Some(i) = todo.pop() {
            let r = &st.dir.records[i as usize];
            out.extend(r.file_id.as_deref().map(String::from));
            todo.extend(&r.children);
        }
        out
    };
    assert!(first.len() >= 6);
    for f in first.iter().skip(1) {
        l.delete(f).unwrap();
    }
    l.commit().unwrap();
    assert!(padding(&assert_clean(&d)) > 0, "deleted in place");
    l.delete(&first[0]).unwrap();
    l.commit().unwrap();
    let dir = assert_canonical(&d);
    assert_eq!(referenced(&dir).len(), fids.len() - first.len());
    l.close().unwrap();
}

/// A crash in the middle of an in-place delete, after the journal and `k` of its patches:
/// the repair finishes the delete. A torn journal: the repair drops it and nothing changed.
#[test]
fn a_crash_inside_an_in_place_delete_is_finished_or_undone_by_repair() {
    let (d0, l0, fids) = filled("crash0");
    // Count the patches of deleting fids[4] (an instance with siblings on both sides).
    let n = {
        let mut st = l0.state.write();
        let i = st.by_file[fids[4].as_str()];
        l0.detach(&mut st, i);
        plan_unlink(&st).unwrap().patches.len()
    };
    drop(l0);
    let _ = std::fs::remove_dir_all(&d0);
    assert!(n >= 3, "{n} patches");
    for k in 0..=n + 1 {
        let (d, l, fids) = filled(&format!("crash{k}"));
        let path = fileset::medium_path(DICOMDIR, Spelling::Exact);
        let target = fids[4].replace('\\', "/");
        {
            let mut st = l.state.write();
            let i = st.by_file[fids[4].as_str()];
            l.detach(&mut st, i);
            let plan = plan_unlink(&st).unwrap();
            let j = journal::Journal {
                dicomdir: path.clone(),
                len: st.image.len() as u32,
                patches: plan.patches,
                files: st.pending_files.clone(),
            };
            if k == n + 1 {
                // Torn: only part of the journal reached the medium.
                let b = j.encode();
                l.medium.create(&journal::path()).unwrap();
                l.medium
                    .write_at(&journal::path(), 0, &b[..b.len() - 3])
                    .unwrap();
            } else {
                journal::write(&*l.medium, &j).unwrap();
                for p in j.patches.iter().take(k) {
                    l.medium.write_at(&path, p.pos as u64, &p.new).unwrap();
                }
            }
        }
        drop(l); // the crash: the staging directory and the journal stay
        let l = open(&d); // repairs
        drop(l);
        let dir = assert_clean(&d);
        assert!(!d.join(STAGING).exists(), "k={k}");
        let refs = referenced(&dir);
        if k == n + 1 {
            assert_eq!(refs.len(), fids.len(), "torn journal: the old state");
            assert!(d.join(&target).exists());
        } else {
            assert_eq!(refs.len(), fids.len() - 1, "k={k}: the new state");
            assert!(!d.join(&target).exists(), "k={k}");
        }
        for r in dir.records.iter().filter_map(|r| r.file_id.as_deref()) {
            assert!(d.join(r.replace('\\', "/")).is_file(), "k={k}: {r} missing");
        }
        let _ = std::fs::remove_dir_all(&d);
    }
}

/// A delete on a DICOMDIR in another writer's encoding (rewritten into dicomfs's own form
/// first): the rewrite must keep the delete, or the file would go while still referenced.
#[test]
fn a_delete_survives_the_first_rewrite_of_a_foreign_dicomdir() {
    let (d, l, fids) = filled("foreign");
    l.state.write().patchable = false;
    l.delete(&fids[3]).unwrap();
    let dir = assert_clean(&d);
    assert_eq!(referenced(&dir).len(), fids.len() - 1);
    assert!(!d.join(fids[3].replace('\\', "/")).exists());
    for r in dir.records.iter().filter_map(|r| r.file_id.as_deref()) {
        assert!(d.join(r.replace('\\', "/")).is_file(), "{r} missing");
    }
    l.close().unwrap();
}
