//! The views without a mount: generated File-sets, lowercase media, the alternate view's names.

use super::*;
use crate::synth;
use std::path::PathBuf;

fn tmpdir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("dicomfs-vfs-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn open(dir: &std::path::Path, view: View) -> Vfs {
    let m: Arc<dyn Medium> = Arc::new(fsimpl::HostDir::open(dir).unwrap());
    let fs = FileSet::open(m).unwrap();
    Vfs::new(
        fs,
        Options {
            view,
            case_insensitive: false,
        },
    )
}

fn names(v: &Vfs, ino: u64) -> Vec<String> {
    v.readdir(ino)
        .unwrap()
        .into_iter()
        .map(|e| e.0.to_string())
        .collect()
}

#[test]
fn native_view_mirrors_the_medium() {
    let d = tmpdir("native");
    synth::generate(&d, &synth::Spec::default()).unwrap();
    std::fs::write(d.join("README.TXT"), b"hello").unwrap();
    let v = open(&d, View::Native);
    assert_eq!(
        names(&v, ROOT),
        ["DICOMDIR", "P00001", "P00002", "P00003", "README.TXT"]
    );
    let a = v.resolve("P00001/S0001/E0001/I00001").unwrap();
    let want = std::fs::read(d.join("P00001/S0001/E0001/I00001")).unwrap();
    assert_eq!(a.size, want.len() as u64);
    assert_eq!(v.read(a.ino, 0, 1 << 20).unwrap(), want);
    assert_eq!(v.read(a.ino, 10, 20).unwrap(), want[10..30]);
    assert!(v.resolve("P00001/NOPE").is_err());
    assert!(v.resolve("by-patient").is_err());
    assert!(v.statfs().unwrap().blocks > 0);
}

#[test]
fn dcm_view_names_and_same_inodes() {
    let d = tmpdir("dcm");
    synth::generate(&d, &synth::Spec::default()).unwrap();
    let v = open(&d, View::Both);
    let root = names(&v, ROOT);
    assert!(root.contains(&ALT_DIR.to_string()));
    let alt = v.lookup(ROOT, ALT_DIR).unwrap().ino;
    assert_eq!(
        names(&v, alt),
        [
            "DOE JANE (PID00001)",
            "MÜLLER JÜRGEN (PID00002)",
            "GARCÍA ANA (PID00003)"
        ]
    );
    let p = v.lookup(alt, "DOE JANE (PID00001)").unwrap().ino;
    assert_eq!(
        names(&v, p),
        ["2024-01-01 MRI BRAIN", "2024-02-02 CT CHEST W_O CONTRAST"]
    );
    let s = v.lookup(p, "2024-01-01 MRI BRAIN").unwrap().ino;
    assert_eq!(
        names(&v, s),
        [
            "1 MR T1 AXIAL",
            "2 MR T2 FLAIR",
            "3 SR REPORT",
            "4 DOC SCANNED REQUEST"
        ]
    );
    let se = v.lookup(s, "1 MR T1 AXIAL").unwrap().ino;
    assert_eq!(names(&v, se), ["1.dcm", "2.dcm", "3.dcm", "4.dcm", "5.dcm"]);
    let viadcm = v.lookup(se, "1.dcm").unwrap();
    let native = v.resolve("P00001/S0001/E0001/I00001").unwrap();
    assert_eq!(viadcm.ino, native.ino);
    // Every instance once in the .dcm view.
    let mut count = 0;
    let mut stack = vec![alt];
    while let Some(i) = stack.pop() {
        for (_, ino, k) in v.readdir(i).unwrap() {
            if k == Kind::Dir {
                stack.push(ino)
            } else {
                count += 1
            }
        }
    }
    assert_eq!(count, v.instances);
    assert_eq!(count, 72);
}

#[test]
fn dcm_view_at_root() {
    let d = tmpdir("dcmroot");
    synth::generate(&d, &synth::Spec::default()).unwrap();
    let v = open(&d, View::Dcm);
    assert_eq!(names(&v, ROOT).len(), 3);
    assert!(v
        .resolve("DOE JANE (PID00001)/2024-01-01 MRI BRAIN/3 SR REPORT/1.dcm")
        .is_ok());
    assert!(v.resolve("DICOMDIR").is_err());
}

#[test]
fn lowercase_media_are_served_uppercase() {
    let d = tmpdir("lower");
    let src = tmpdir("lower-src");
    synth::generate(
        &src,
        &synth::Spec {
            patients: 1,
            studies: 1,
            series: 1,
            instances: 2,
            documents: false,
            ..Default::default()
        },
    )
    .unwrap();
    // Copy with every name lowercased, as a Linux CD mount shows an ISO 9660 medium.
    fn copy(a: &std::path::Path, b: &std::path::Path) {
        for e in std::fs::read_dir(a).unwrap() {
            let e = e.unwrap();
            let n = e.file_name().to_string_lossy().to_lowercase();
            if e.file_type().unwrap().is_dir() {
                std::fs::create_dir(b.join(&n)).unwrap();
                copy(&e.path(), &b.join(&n));
            } else {
                std::fs::copy(e.path(), b.join(&n)).unwrap();
            }
        }
    }
    copy(&src, &d);
    std::fs::write(d.join("readme.txt"), b"x").unwrap();
    let v = open(&d, View::Native);
    assert_eq!(names(&v, ROOT), ["DICOMDIR", "P00001", "readme.txt"]);
    assert!(v.resolve("P00001/S0001/E0001/I00002").is_ok());
    assert!(v.resolve("p00001").is_err());
    let m: Arc<dyn Medium> = Arc::new(fsimpl::HostDir::open(&d).unwrap());
    let ci = Vfs::new(
        FileSet::open(m).unwrap(),
        Options {
            view: View::Native,
            case_insensitive: true,
        },
    );
    assert_eq!(
        ci.resolve("p00001/s0001").unwrap().ino,
        ci.resolve("P00001/S0001").unwrap().ino
    );
}

#[test]
fn sanitize_names() {
    assert_eq!(sanitize("O'BRIEN/KELLY^SIOBHAN"), "O'BRIEN_KELLY SIOBHAN");
    assert_eq!(sanitize("  a\u{0}b^^c  "), "a b c");
    assert_eq!(sanitize(".."), "");
    assert_eq!(sanitize(".hidden"), "_hidden");
    assert_eq!(sanitize(&"x".repeat(300)).len(), 200);
}

#[test]
fn duplicate_names_get_suffixes() {
    let mut t = HashSet::new();
    assert_eq!(unique("1.dcm".into(), &mut t), "1.dcm");
    assert_eq!(unique("1.dcm".into(), &mut t), "1 (2).dcm");
    assert_eq!(unique("1.dcm".into(), &mut t), "1 (3).dcm");
    assert_eq!(unique("A".into(), &mut t), "A");
    assert_eq!(unique("A".into(), &mut t), "A (2)");
}
