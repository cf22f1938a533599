//! `dicomfs check` finds each planted fault and names it; `dicomfs ls` lists the tree.

mod common;

use common::*;
use dicomfs::dicom::tags;
use dicomfs::dicomdir::{DicomDir, Elem};
use dicomfs::synth;
use std::process::Command;

fn check(dir: &std::path::Path) -> (i32, String) {
    let out = run(Command::new(bin()).arg("check").arg(dir));
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr),
    )
}

fn small() -> synth::Spec {
    synth::Spec {
        patients: 2,
        studies: 1,
        series: 1,
        instances: 3,
        ..Default::default()
    }
}

#[test]
fn clean_fileset_exits_0() {
    let t = TempDir::new("check-clean");
    synth::generate(t.path(), &small()).unwrap();
    let (code, out) = check(t.path());
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("0 errors"), "{out}");
}

#[test]
fn missing_file_is_named() {
    let t = TempDir::new("check-missing");
    synth::generate(t.path(), &small()).unwrap();
    std::fs::remove_file(t.join("P00002/S0001/E0001/I00002")).unwrap();
    let (code, out) = check(t.path());
    assert_eq!(code, 4, "{out}");
    assert!(
        out.contains("P00002\\S0001\\E0001\\I00002 is missing"),
        "{out}"
    );
    assert!(out.contains("1 errors"), "{out}");
}

#[test]
fn bad_offset_is_named() {
    let t = TempDir::new("check-offset");
    synth::generate(t.path(), &small()).unwrap();
    let path = t.join("DICOMDIR");
    let mut b = std::fs::read(&path).unwrap();
    let d = DicomDir::parse(&b).unwrap();
    // The first record's Offset of the Next Directory Record is its first element (value at +8).
    let r = &d.records[0];
    assert_ne!(r.next, 0);
    let at = r.body.0 as usize + 8;
    assert_eq!(&b[at - 8..at - 4], &[0x04, 0x00, 0x00, 0x14]);
    b[at..at + 4].copy_from_slice(&(r.next + 3).to_le_bytes());
    std::fs::write(&path, &b).unwrap();
    let (code, out) = check(t.path());
    assert_eq!(code, 4, "{out}");
    assert!(
        out.contains(&format!(
            "offset {} (from the root chain) does not land on a record item",
            r.next + 3
        )),
        "{out}"
    );
}

#[test]
fn illegal_file_id_is_named() {
    let t = TempDir::new("check-fileid");
    let spec = small();
    let mut insts = synth::instances(&spec);
    // An instance stored under a File ID with lowercase and 9 characters.
    insts[0].file_id = vec!["P00001".into(), "images".into(), "IMG000001".into()];
    for inst in &insts {
        let p = inst
            .file_id
            .iter()
            .fold(t.path().to_path_buf(), |p, c| p.join(c));
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, inst.bytes()).unwrap();
    }
    let d = synth::dicomdir_for(&insts, "X", "2.25.9");
    std::fs::write(t.join("DICOMDIR"), d.encode()).unwrap();
    let (code, out) = check(t.path());
    assert_eq!(code, 4, "{out}");
    assert!(
        out.contains("illegal File ID \"P00001\\\\images\\\\IMG000001\""),
        "{out}"
    );
    assert!(out.contains("'i'"), "{out}");
}

#[test]
fn mismatched_instance_uid_is_named() {
    let t = TempDir::new("check-uid");
    let spec = small();
    let insts = synth::instances(&spec);
    let mut d = synth::dicomdir_for(&insts, "X", "2.25.9");
    for inst in &insts {
        let p = inst
            .file_id
            .iter()
            .fold(t.path().to_path_buf(), |p, c| p.join(c));
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, inst.bytes()).unwrap();
    }
    let leaf = d.records.iter_mut().find(|r| r.rtype == "IMAGE").unwrap();
    leaf.elems
        .retain(|e| e.tag != tags::REFERENCED_SOP_INSTANCE);
    leaf.elems
        .push(Elem::str(tags::REFERENCED_SOP_INSTANCE, b"UI", "1.2.3.4"));
    std::fs::write(t.join("DICOMDIR"), d.encode()).unwrap();
    let (code, out) = check(t.path());
    assert_eq!(code, 4, "{out}");
    assert!(
        out.contains("SOP Instance UID is") && out.contains("says 1.2.3.4"),
        "{out}"
    );
}

#[test]
fn could_not_run_exits_8_and_broken_dicomdir_exits_4() {
    let t = TempDir::new("check-8");
    let (code, _) = check(&t.join("nowhere"));
    assert_eq!(code, 8);
    let (code, out) = check(t.path());
    assert_eq!(code, 8, "{out}");
    std::fs::write(t.join("DICOMDIR"), vec![0u8; 300]).unwrap();
    let (code, out) = check(t.path());
    assert_eq!(code, 4, "{out}");
    assert!(
        out.contains("DICOMDIR: malformed") && out.contains("DICM"),
        "{out}"
    );
}

#[test]
fn ls_lists_the_tree() {
    let t = TempDir::new("ls");
    synth::generate(t.path(), &small()).unwrap();
    let out = run(Command::new(bin()).arg("ls").arg(t.path()));
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines[0], "DOE JANE (PID00001)");
    assert_eq!(lines[1], "  2024-01-01 MRI BRAIN");
    assert_eq!(lines[2], "    1 MR T1 AXIAL");
    assert_eq!(lines[3], "      1.dcm  IMAGE  P00001\\S0001\\E0001\\I00001");
    // 2 patients x (1 study + 3 series + 5 instances)
    assert_eq!(lines.len(), 2 * (1 + 1 + 3 + 5));
}
