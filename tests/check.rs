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
    synth::write_instances(t.path(), &insts).unwrap();
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
    synth::write_instances(t.path(), &insts).unwrap();
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

#[test]
fn init_creates_an_empty_fileset_and_never_touches_an_existing_one() {
    need("dciodvfy");
    let t = TempDir::new("init");
    let out = run(Command::new(bin())
        .args(["init", "--fileset-id", "MY STICK"])
        .arg(t.path()));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let bytes = std::fs::read(t.join("DICOMDIR")).unwrap();
    let d = DicomDir::parse(&bytes).unwrap();
    assert_eq!(d.fileset_id, "MY STICK");
    assert!(d.fileset_uid.starts_with("2.25."));
    assert_eq!(
        (
            d.records.len(),
            d.first_root,
            d.last_root,
            d.consistency_flag
        ),
        (0, 0, 0, 0)
    );
    assert!(d.findings.is_empty(), "{:?}", d.findings);
    // The oracles that apply to an empty File-set (dcmftest and dcmmkdir need files).
    let v = run(Command::new("dciodvfy").arg(t.join("DICOMDIR")));
    let text =
        String::from_utf8_lossy(&v.stderr).into_owned() + &String::from_utf8_lossy(&v.stdout);
    assert_eq!(
        text.lines().filter(|l| l.starts_with("Error")).count(),
        0,
        "{text}"
    );
    let p = run(Command::new("python3")
        .arg(oracles_dir().join("fileset_list.py"))
        .arg(t.join("DICOMDIR")));
    assert!(p.status.success(), "{}", String::from_utf8_lossy(&p.stdout));
    assert_eq!(check(t.path()).0, 0);
    // A second init refuses and changes nothing.
    let out = run(Command::new(bin()).arg("init").arg(t.path()));
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("DICOMDIR: already exists"));
    assert_eq!(std::fs::read(t.join("DICOMDIR")).unwrap(), bytes);
    // An illegal File-set ID is a usage error.
    let t2 = TempDir::new("init2");
    let out = run(Command::new(bin())
        .args(["init", "--fileset-id", "lowercase"])
        .arg(t2.path()));
    assert_eq!(out.status.code(), Some(2));
    assert!(!t2.join("DICOMDIR").exists());
}
