//! Tests that really mount a File-set (and always unmount): generated File-sets, pydicom's
//! sample File-set, a DICOMDIR made by dcmmkdir, lowercase media, the .dcm view with dcm2niix.

mod common;

use common::*;
use dicomfs::synth;
use std::os::unix::fs::MetadataExt;
use std::process::Command;

fn demo(dir: &std::path::Path) -> usize {
    synth::generate(
        dir,
        &synth::Spec {
            patients: 4,
            ..Default::default()
        },
    )
    .unwrap()
    .instances
}

#[test]
fn generated_fileset_native_view_is_byte_exact_and_passes_the_oracles() {
    let t = TempDir::new("native");
    let src = t.join("src");
    let n = demo(&src);
    std::fs::write(src.join("README"), b"File-set descriptor\n").unwrap();
    {
        let m = Mount::new(&src, &t.join("mnt"), &["-o", "ro"]);
        assert_same_tree(&src, m.path());
        assert_oracles_pass(m.path());
        // Every instance once: the native view adds nothing.
        assert_eq!(files_below(m.path()).len(), n + 2);
        // Read-only: writes are refused with EROFS, nothing changes.
        let e = std::fs::write(m.join("NEW"), b"x").unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::EROFS));
        let e = std::fs::OpenOptions::new()
            .write(true)
            .open(m.join("DICOMDIR"))
            .unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::EROFS));
        let e = std::fs::remove_file(m.join("P00001/S0001/E0001/I00001")).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::EROFS));
        // stat answers M-INQUIRE FILE from the medium.
        let a = std::fs::metadata(src.join("DICOMDIR")).unwrap();
        let b = std::fs::metadata(m.join("DICOMDIR")).unwrap();
        assert_eq!((a.size(), a.mtime()), (b.size(), b.mtime()));
        // statfs answers M-INQUIRE FILE-SET (the medium's space).
        let out = run(Command::new("stat")
            .args(["-f", "-c", "%b %S"])
            .arg(m.path()));
        let out2 = run(Command::new("stat").args(["-f", "-c", "%b %S"]).arg(&src));
        assert_eq!(out.stdout, out2.stdout);
        // Inodes are stable while mounted.
        let i1 = std::fs::metadata(m.join("P00002/S0002/E0001/I00003"))
            .unwrap()
            .ino();
        let _ = files_below(m.path());
        let i2 = std::fs::metadata(m.join("P00002/S0002/E0001/I00003"))
            .unwrap()
            .ino();
        assert_eq!(i1, i2);
    }
    assert!(!is_mounted(&t.join("mnt")));
    assert_oracles_pass(&src);
}

#[test]
fn dcm_view_is_the_same_files_and_dcm2niix_converts_a_series() {
    need("dcm2niix");
    let t = TempDir::new("dcmview");
    let src = t.join("src");
    let n = demo(&src);
    let m = Mount::new(&src, &t.join("mnt"), &["--view", "both"]);
    let alt = m.join("by-patient");
    let dcm = files_below(&alt);
    assert_eq!(dcm.len(), n, "every instance exactly once in the .dcm view");
    assert!(dcm
        .iter()
        .all(|p| p.extension().is_some_and(|e| e == "dcm")));
    // Same inode and bytes as the native file.
    let series = alt.join("DOE JANE (PID00001)/2024-01-01 MRI BRAIN/1 MR T1 AXIAL");
    let a = std::fs::metadata(series.join("3.dcm")).unwrap();
    let b = std::fs::metadata(m.join("P00001/S0001/E0001/I00003")).unwrap();
    assert_eq!(a.ino(), b.ino());
    assert_eq!(
        std::fs::read(series.join("3.dcm")).unwrap(),
        std::fs::read(src.join("P00001/S0001/E0001/I00003")).unwrap()
    );
    // Names decoded from ISO_IR 192 and ISO_IR 100, non-image records included.
    assert!(alt.join("MÜLLER JÜRGEN (PID00002)").is_dir());
    assert!(alt.join("GARCÍA ANA (PID00003)").is_dir());
    assert!(alt
        .join("DOE JANE (PID00001)/2024-01-01 MRI BRAIN/3 SR REPORT/1.dcm")
        .is_file());
    assert!(alt
        .join("DOE JANE (PID00001)/2024-01-01 MRI BRAIN/4 DOC SCANNED REQUEST/1.dcm")
        .is_file());
    // dcm2niix reads a series through the .dcm view.
    let out = t.join("nii");
    std::fs::create_dir_all(&out).unwrap();
    let r = run(Command::new("dcm2niix")
        .args(["-z", "n", "-f", "vol", "-o"])
        .arg(&out)
        .arg(&series));
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stdout));
    let nii = std::fs::read(out.join("vol.nii")).unwrap();
    // NIfTI-1 header: dim[0..4] at byte 40 as i16.
    let dim: Vec<i16> = (0..4)
        .map(|i| i16::from_le_bytes([nii[40 + 2 * i], nii[41 + 2 * i]]))
        .collect();
    assert_eq!(dim, [3, 64, 64, 5]);
    drop(m);
    // --view dcm puts the alternate view at the root and nothing else.
    let m = Mount::new(&src, &t.join("mnt"), &["-o", "view=dcm"]);
    let root: Vec<String> = std::fs::read_dir(m.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(root.len(), 4);
    assert!(root.iter().all(|n| n.ends_with(')')));
    assert_eq!(files_below(m.path()).len(), n);
}

#[test]
fn pydicom_sample_fileset_and_its_variants() {
    let t = TempDir::new("pydicom");
    let src = t.join("src");
    std::fs::create_dir_all(&src).unwrap();
    copy_tree(&pydicom_fileset(), &src);
    {
        let m = Mount::new(&src, &t.join("mnt"), &["--view", "both"]);
        assert_same_tree_except(&src, m.path(), &["by-patient"]);
        assert_oracles_pass(m.path());
        assert_eq!(files_below(&m.join("by-patient")).len(), 31);
    }
    // The same File-set described by Big Endian, Implicit VR and reordered DICOMDIRs.
    for variant in ["DICOMDIR-bigEnd", "DICOMDIR-implicit", "DICOMDIR-reordered"] {
        std::fs::copy(src.join(variant), src.join("DICOMDIR")).unwrap();
        let m = Mount::new(&src, &t.join("mnt"), &["--view", "dcm"]);
        assert_eq!(files_below(m.path()).len(), 31, "{variant}");
        assert!(m.join("Doe Archibald (77654033)").is_dir(), "{variant}");
    }
}

#[test]
fn dicomdir_made_by_dcmmkdir() {
    need("dcmmkdir");
    let t = TempDir::new("dcmmkdir");
    let src = t.join("src");
    let spec = synth::Spec {
        documents: false,
        ..Default::default()
    };
    let n = synth::generate(&src, &spec).unwrap().instances;
    std::fs::remove_file(src.join("DICOMDIR")).unwrap();
    let r = run(Command::new("dcmmkdir")
        .current_dir(&src)
        .args(["+r", "+id", ".", "+D", "DICOMDIR", "+F", "DCMMKDIR"]));
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    let m = Mount::new(&src, &t.join("mnt"), &["--view", "both"]);
    assert_same_tree_except(&src, m.path(), &["by-patient"]);
    assert_oracles_pass(m.path());
    assert_eq!(files_below(&m.join("by-patient")).len(), n);
    let out = run(Command::new(bin()).arg("check").arg(&src));
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}

#[test]
fn lowercase_medium_is_served_in_uppercase() {
    let t = TempDir::new("lower");
    let up = t.join("up");
    let n = demo(&up);
    let src = t.join("src");
    std::fs::create_dir_all(&src).unwrap();
    for f in files_below(&up) {
        let rel = f
            .strip_prefix(&up)
            .unwrap()
            .to_string_lossy()
            .to_lowercase();
        let dst = src.join(rel);
        std::fs::create_dir_all(dst.parent().unwrap()).unwrap();
        std::fs::copy(&f, dst).unwrap();
    }
    {
        let m = Mount::new(&src, &t.join("mnt"), &[]);
        assert_same_tree(&up, m.path());
        assert_oracles_pass(m.path());
        assert!(!m.join("p00001").exists());
    }
    let m = Mount::new(&src, &t.join("mnt"), &["-o", "case_insensitive"]);
    assert_eq!(
        std::fs::read(m.join("p00001/s0001/e0001/i00001")).unwrap(),
        std::fs::read(up.join("P00001/S0001/E0001/I00001")).unwrap()
    );
    assert_eq!(files_below(m.path()).len(), n + 1);
}

#[test]
fn mount_errors_are_clear() {
    let t = TempDir::new("errors");
    let empty = t.join("empty");
    std::fs::create_dir_all(&empty).unwrap();
    let mnt = t.join("mnt");
    std::fs::create_dir_all(&mnt).unwrap();
    let out = run(Command::new(bin()).arg("mount").arg(&empty).arg(&mnt));
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("DICOMDIR") && err.contains("no such file"),
        "{err}"
    );
    assert!(!is_mounted(&mnt));
    // A DICOMDIR that is not DICOM.
    std::fs::write(empty.join("DICOMDIR"), b"hello, not dicom").unwrap();
    let out = run(Command::new(bin()).arg("mount").arg(&empty).arg(&mnt));
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("DICOMDIR: malformed"), "{err}");
    // A mountpoint that does not exist.
    let src = t.join("src");
    demo(&src);
    let out = run(Command::new(bin())
        .arg("mount")
        .arg(&src)
        .arg(t.join("nowhere")));
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot mount"));
    // An unknown -o option.
    let out = run(Command::new(bin())
        .args(["mount", "-o", "bogus"])
        .arg(&src)
        .arg(&mnt));
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("bogus"));
}
