//! Tests of the write side (M-WRITE by copying in, M-DELETE by rm) that really mount a File-set
//! read-write and run the real tools (cp, rsync, mv, rm), then check the bytes on the medium, the
//! File IDs in the DICOMDIR, errnos, the daemon's log, and the external oracles, both on the
//! mount and on the backing directory after unmounting.

mod common;

use common::*;
use dicomfs::dicom;
use dicomfs::synth;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

// ---------------------------------------------------------------------------------------------
// Fixtures and helpers

/// A test's directories: an empty File-set made by `dicomfs init`, a scratch directory for
/// instance fixtures (never the mount), the mount point and the daemon's log file.
struct Rig {
    t: TempDir,
    src: PathBuf,
    scratch: PathBuf,
    log: PathBuf,
}

impl Rig {
    fn new(name: &str) -> Rig {
        let t = TempDir::new(name);
        let src = t.join("fs");
        std::fs::create_dir_all(&src).unwrap();
        let out = run(Command::new(bin()).arg("init").arg(&src));
        assert!(out.status.success(), "dicomfs init: {}", text(&out));
        Rig::with_src(t, src)
    }

    fn with_src(t: TempDir, src: PathBuf) -> Rig {
        let scratch = t.join("scratch");
        std::fs::create_dir_all(&scratch).unwrap();
        let log = t.join("log");
        Rig {
            t,
            src,
            scratch,
            log,
        }
    }

    /// Mount read-write with the log in `self.log` and extra arguments.
    fn mount(&self, extra: &[&str]) -> Mount {
        let mut args = vec!["--log-file", self.log.to_str().unwrap()];
        args.extend_from_slice(extra);
        Mount::new(&self.src, &self.t.join("mnt"), &args)
    }

    fn mnt(&self) -> PathBuf {
        self.t.join("mnt")
    }

    fn dicomdir(&self) -> Vec<u8> {
        std::fs::read(self.src.join("DICOMDIR")).unwrap()
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

/// Small synthetic instances (16x16 MR/CT images), no SR/PDF.
fn instances(patients: usize, series: usize, per_series: usize, seed: u64) -> Vec<synth::Instance> {
    synth::instances(&synth::Spec {
        patients,
        studies: 1,
        series,
        instances: per_series,
        rows: 16,
        cols: 16,
        seed,
        documents: false,
        ..Default::default()
    })
}

fn one_instance(seed: u64) -> synth::Instance {
    instances(1, 1, 1, seed).pop().unwrap()
}

/// The records of the DICOMDIR in `dir` (a mount or a backing directory), read by pydicom:
/// (Directory Record Type, Referenced File ID joined with `\` or "").
fn records(dir: &Path) -> Vec<(String, String)> {
    need("python3");
    let out = ok(Command::new("python3")
        .arg("-c")
        .arg(
            "import pydicom,sys\n\
         ds=pydicom.dcmread(sys.argv[1])\n\
         for r in ds.DirectoryRecordSequence:\n\
         \x20   v=r.get('ReferencedFileID','')\n\
         \x20   v=v if isinstance(v,str) else '\\\\'.join(v)\n\
         \x20   print(r.DirectoryRecordType.strip()+'\\t'+v)\n",
        )
        .arg(dir.join("DICOMDIR")));
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| {
            let (a, b) = l.split_once('\t').unwrap();
            (a.to_string(), b.to_string())
        })
        .collect()
}

/// The Referenced File IDs of the DICOMDIR in `dir`, sorted.
fn file_ids(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = records(dir)
        .into_iter()
        .filter(|(_, f)| !f.is_empty())
        .map(|(_, f)| f)
        .collect();
    v.sort();
    v
}

/// How many records of each type.
fn record_counts(dir: &Path) -> BTreeMap<String, usize> {
    let mut m = BTreeMap::new();
    for (t, _) in records(dir) {
        *m.entry(t).or_insert(0) += 1;
    }
    m
}

/// The instance files on the backing medium: every regular file except the DICOMDIR and the
/// staging directory DICOMFS.TMP, as (File ID with `\`, bytes), sorted.
fn stored(backing: &Path) -> Vec<(String, Vec<u8>)> {
    let mut v: Vec<(String, Vec<u8>)> = files_below(backing)
        .into_iter()
        .filter_map(|p| {
            let rel = p
                .strip_prefix(backing)
                .unwrap()
                .to_string_lossy()
                .into_owned();
            if rel == "DICOMDIR" || rel.starts_with("DICOMFS.TMP/") {
                return None;
            }
            let bytes = std::fs::read(&p).unwrap();
            Some((rel.replace('/', "\\"), bytes))
        })
        .collect();
    v.sort();
    v
}

/// Files in the staging directory (partial copies would be here).
fn staged_files(backing: &Path) -> Vec<PathBuf> {
    let d = backing.join("DICOMFS.TMP");
    if d.is_dir() {
        files_below(&d)
    } else {
        Vec::new()
    }
}

fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

/// Lines of the daemon's log that contain every needle.
fn log_lines(rig: &Rig, needles: &[&str]) -> Vec<String> {
    rig.log()
        .lines()
        .filter(|l| needles.iter().all(|n| l.contains(n)))
        .map(str::to_string)
        .collect()
}

/// Exactly one log line contains every needle (the log is written before the reply, but
/// allow the daemon a moment).
fn assert_one_log_line(rig: &Rig, needles: &[&str]) -> String {
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        let l = log_lines(rig, needles);
        if l.len() == 1 {
            return l[0].clone();
        }
        if l.len() > 1 || Instant::now() > deadline {
            panic!(
                "expected exactly one log line with {needles:?}, found {}:\n{}",
                l.len(),
                rig.log()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A refusal: exactly one log line, at level warn, containing every needle (SEMANTICS.md).
fn assert_refusal_logged(rig: &Rig, needles: &[&str]) -> String {
    let line = assert_one_log_line(rig, needles);
    assert!(line.contains(" WARN "), "not logged at level warn: {line}");
    line
}

/// Poll until a condition holds (deletes are written ~100 ms after the last one).
fn eventually(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Clutter that operating systems leave in folders.
const CLUTTER: [&str; 4] = [".DS_Store", "Thumbs.db", "desktop.ini", "._img 000.dcm"];

fn is_clutter_name(n: &str) -> bool {
    CLUTTER.contains(&n) || n.starts_with("._")
}

/// Write instances into `dir` under deep, arbitrary names (spaces, lowercase, unicode, five
/// directory levels), with clutter at every level. Returns the instance files written.
fn messy_folder(dir: &Path, insts: &[synth::Instance]) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for (k, inst) in insts.iter().enumerate() {
        let d = dir
            .join("pacs export")
            .join(format!("{} données", inst.file_id[0].to_lowercase()))
            .join("étude ünïcode 2024")
            .join(format!("série {} – axial", inst.file_id[2].to_lowercase()))
            .join("level five");
        std::fs::create_dir_all(&d).unwrap();
        let name = match k % 3 {
            0 => format!("img {k:03}.dcm"),
            1 => format!("slice_{k}"),
            _ => format!("Bild-Ä{k}.DCM"),
        };
        let f = d.join(&name);
        std::fs::write(&f, inst.bytes()).unwrap();
        files.push(f);
        // AppleDouble companion of this file.
        std::fs::write(d.join(format!("._{name}")), vec![0u8; 4096]).unwrap();
    }
    // Clutter in every directory of the tree.
    let mut dirs = vec![dir.to_path_buf()];
    let mut stack = vec![dir.to_path_buf()];
    while let Some(p) = stack.pop() {
        for e in std::fs::read_dir(&p).unwrap() {
            let e = e.unwrap();
            if e.file_type().unwrap().is_dir() {
                dirs.push(e.path());
                stack.push(e.path());
            }
        }
    }
    for d in dirs {
        for c in CLUTTER {
            std::fs::write(d.join(c), format!("clutter {c} {}\n", "x".repeat(300))).unwrap();
        }
    }
    files.sort();
    files
}

/// The sorted bytes of some files, to compare with what is stored regardless of names.
fn sorted_contents(files: &[PathBuf]) -> Vec<Vec<u8>> {
    let mut v: Vec<Vec<u8>> = files.iter().map(|f| std::fs::read(f).unwrap()).collect();
    v.sort();
    v
}

fn sha(p: &Path) -> String {
    let out = ok(Command::new("sha256sum").arg(p));
    String::from_utf8_lossy(&out.stdout)
        .split(' ')
        .next()
        .unwrap()
        .to_string()
}

/// After a refusal: DICOMDIR bytes and the stored files are as before, nothing staged.
fn assert_nothing_changed(rig: &Rig, dicomdir: &[u8], before: &[(String, Vec<u8>)]) {
    assert!(rig.dicomdir() == dicomdir, "the DICOMDIR changed");
    let now = stored(&rig.src);
    let names: Vec<&String> = now.iter().map(|x| &x.0).collect();
    assert!(now == before, "files on the medium changed: {names:?}");
    assert_eq!(staged_files(&rig.src), Vec::<PathBuf>::new());
}

/// After the Mount guard is dropped. `umount` returns before the daemon has finished (FUSE
/// sends no DESTROY to a non-block mount), so wait for the daemon to exit, after which pending
/// deletes must be written and DICOMFS.TMP removed (SEMANTICS.md, unmount). Whether they are
/// already done when `umount` returns is checked by
/// `delete_just_before_umount_is_on_the_medium_when_umount_returns`.
fn unmounted(rig: &Rig) {
    assert!(
        !is_mounted(&rig.mnt()),
        "still mounted after the guard was dropped"
    );
    let mnt = rig.mnt().to_string_lossy().into_owned();
    eventually("the daemon exits after unmount", || {
        daemons(&mnt).is_empty()
    });
    let tmp = rig.src.join("DICOMFS.TMP");
    assert!(!tmp.exists(), "DICOMFS.TMP left after a clean unmount");
}

/// Pids of dicomfs daemons serving the mount point `mnt`.
fn daemons(mnt: &str) -> Vec<u32> {
    let mut v = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(cmd) = std::fs::read(e.path().join("cmdline")) else {
            continue;
        };
        let args: Vec<&[u8]> = cmd.split(|&b| b == 0).collect();
        if args.first().is_some_and(|a| a.ends_with(b"dicomfs")) && args.contains(&mnt.as_bytes()) {
            v.push(pid);
        }
    }
    v
}

// ---------------------------------------------------------------------------------------------
// 1. cp of a single instance under a non-File-ID name

#[test]
fn cp_single_instance_to_root_is_ingested_byte_exact_and_its_name_becomes_a_ghost() {
    let rig = Rig::new("cp1");
    let inst = one_instance(1);
    let a = rig.scratch.join("a.dcm");
    std::fs::write(&a, inst.bytes()).unwrap();
    {
        let m = rig.mount(&[]);
        ok(Command::new("cp").arg(&a).arg(m.path()));
        // The copied-in name is not listed, but stat still answers.
        let root = names(m.path());
        assert!(!root.contains(&"a.dcm".to_string()), "{root:?}");
        let st = std::fs::metadata(m.join("a.dcm")).expect("stat MNT/a.dcm after the copy");
        assert!(st.is_file());
        assert_eq!(st.len(), inst.bytes().len() as u64);
        let out = ok(Command::new("stat").arg(m.join("a.dcm")));
        assert!(String::from_utf8_lossy(&out.stdout).contains("regular file"));
        // Exactly one instance referenced, and it is the source's bytes.
        let fids = file_ids(m.path());
        assert_eq!(fids.len(), 1, "{fids:?}");
        let s = stored(&rig.src);
        assert_eq!(s.len(), 1);
        assert_eq!(s[0].0, fids[0]);
        assert!(
            s[0].1 == inst.bytes(),
            "stored file differs from the source"
        );
        // Read back through the mount under its File ID.
        let via_mount = std::fs::read(m.join(&fids[0].replace('\\', "/"))).unwrap();
        assert!(via_mount == inst.bytes());
        assert_one_log_line(&rig, &["a.dcm: added as ", &fids[0]]);
        assert_oracles_pass(m.path());
    }
    unmounted(&rig);
    assert_eq!(file_ids(&rig.src).len(), 1);
    assert_oracles_pass(&rig.src);
}

// ---------------------------------------------------------------------------------------------
// 2. cp -r of a deep, messy folder

#[test]
fn cp_r_deep_unicode_folder_with_clutter_ingests_every_instance_and_drops_the_clutter() {
    let rig = Rig::new("cpr");
    let folder = rig.scratch.join("My Export Ü");
    let insts = instances(2, 3, 5, 2);
    assert_eq!(insts.len(), 30);
    let files = messy_folder(&folder, &insts);
    {
        let m = rig.mount(&[]);
        ok(Command::new("cp").arg("-r").arg(&folder).arg(m.path()));
        // The folder is not listed afterwards.
        let root = names(m.path());
        assert!(!root.contains(&"My Export Ü".to_string()), "{root:?}");
        assert!(
            root.iter().all(|n| n == "DICOMDIR" || n.starts_with('P')),
            "{root:?}"
        );
        // Exactly 30 instances, stored byte-exact under their File IDs.
        let fids = file_ids(m.path());
        assert_eq!(fids.len(), 30, "{fids:?}");
        let s = stored(&rig.src);
        assert_eq!(s.iter().map(|x| x.0.clone()).collect::<Vec<_>>(), fids);
        let mut got: Vec<Vec<u8>> = s.into_iter().map(|x| x.1).collect();
        got.sort();
        assert!(
            got == sorted_contents(&files),
            "stored bytes differ from the sources"
        );
        // Clutter is nowhere: not in the mount, not on the medium.
        for f in files_below(m.path())
            .iter()
            .chain(files_below(&rig.src).iter())
        {
            let n = f.file_name().unwrap().to_string_lossy();
            assert!(
                !is_clutter_name(&n),
                "clutter on the medium: {}",
                f.display()
            );
        }
        // 2 patients, one study each, 3 series each.
        let c = record_counts(m.path());
        assert_eq!(c.get("PATIENT"), Some(&2), "{c:?}");
        assert_eq!(c.get("STUDY"), Some(&2), "{c:?}");
        assert_eq!(c.get("SERIES"), Some(&6), "{c:?}");
        assert_eq!(c.get("IMAGE"), Some(&30), "{c:?}");
        assert_eq!(log_lines(&rig, &["added as"]).len(), 30);
        assert_oracles_pass(m.path());
    }
    unmounted(&rig);
    assert_eq!(file_ids(&rig.src).len(), 30);
    assert_oracles_pass(&rig.src);
}

// ---------------------------------------------------------------------------------------------
// 3. rsync, twice

#[test]
fn rsync_a_folder_twice_second_run_changes_nothing() {
    need("rsync");
    let rig = Rig::new("rsync");
    let folder = rig.scratch.join("folder");
    let insts = instances(2, 2, 5, 3);
    let files = messy_folder(&folder, &insts);
    let src_arg = format!("{}/", folder.display());
    {
        let m = rig.mount(&[]);
        ok(Command::new("rsync").arg("-a").arg(&src_arg).arg(m.path()));
        assert_eq!(file_ids(m.path()).len(), 20);
        let d1 = std::fs::read(m.join("DICOMDIR")).unwrap();
        let sha1 = sha(&m.join("DICOMDIR"));
        ok(Command::new("rsync").arg("-a").arg(&src_arg).arg(m.path()));
        let d2 = std::fs::read(m.join("DICOMDIR")).unwrap();
        assert!(d1 == d2, "the second rsync changed the DICOMDIR");
        assert_eq!(sha1, sha(&m.join("DICOMDIR")));
        assert!(
            rig.dicomdir() == d1,
            "backing DICOMDIR differs from the mount's"
        );
        assert_eq!(file_ids(m.path()).len(), 20);
        let s = stored(&rig.src);
        assert_eq!(s.len(), 20);
        let mut got: Vec<Vec<u8>> = s.into_iter().map(|x| x.1).collect();
        got.sort();
        assert!(got == sorted_contents(&files));
        assert_eq!(log_lines(&rig, &["added as"]).len(), 20);
        for f in files_below(&rig.src) {
            let n = f.file_name().unwrap().to_string_lossy();
            assert!(
                !is_clutter_name(&n),
                "clutter on the medium: {}",
                f.display()
            );
        }
        assert_oracles_pass(m.path());
    }
    unmounted(&rig);
    assert_eq!(file_ids(&rig.src).len(), 20);
    assert_oracles_pass(&rig.src);
}

/// Documented: rsync's temporary `.NAME.XXXXXX` of a File ID NAME keeps the File ID. Copying a
/// whole File-set (its DICOMDIR included) into the root with rsync is the natural way to do it.
#[test]
fn rsync_of_a_fileset_tree_keeps_its_file_ids() {
    need("rsync");
    let rig = Rig::new("rsyncfs");
    let demo = rig.scratch.join("demo");
    ok(Command::new(bin())
        .args([
            "demo",
            "--patients",
            "1",
            "--studies",
            "1",
            "--series",
            "1",
            "--instances",
            "3",
            "--rows",
            "16",
            "--cols",
            "16",
            "--no-documents",
        ])
        .arg(&demo));
    let want = file_ids(&demo);
    assert_eq!(want.len(), 3);
    let src_arg = format!("{}/", demo.display());
    {
        let m = rig.mount(&[]);
        let out = run(Command::new("rsync").arg("-a").arg(&src_arg).arg(m.path()));
        let after = text(&out);
        // The mount's DICOMDIR is still there and is dicomfs's, not the copied one.
        let d = std::fs::read(m.join("DICOMDIR"));
        assert!(
            d.is_ok(),
            "MNT/DICOMDIR unreadable after rsync: {:?}\nrsync: {after}",
            d.err()
        );
        assert!(out.status.success(), "rsync -a DEMO/ MNT/: {after}");
        assert_eq!(file_ids(m.path()), want);
        for w in &want {
            let p = w.replace('\\', "/");
            assert!(std::fs::read(m.join(&p)).unwrap() == std::fs::read(demo.join(&p)).unwrap());
        }
        let before = rig.dicomdir();
        ok(Command::new("rsync").arg("-a").arg(&src_arg).arg(m.path()));
        assert!(rig.dicomdir() == before);
        assert_oracles_pass(m.path());
    }
    unmounted(&rig);
    assert_eq!(file_ids(&rig.src), want);
    assert_oracles_pass(&rig.src);
}

// ---------------------------------------------------------------------------------------------
// 4. mv from another file system

/// Removes a file when dropped.
struct RmOnDrop(PathBuf);
impl Drop for RmOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

#[test]
fn mv_from_another_filesystem_moves_the_instance_in() {
    let rig = Rig::new("mv");
    let inst = one_instance(4);
    let shm = Path::new("/dev/shm");
    let dir = if shm.is_dir() {
        shm.to_path_buf()
    } else {
        std::env::temp_dir()
    };
    let f = dir.join(format!(
        "dicomfs-it-mv-{}-{}.dcm",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    ));
    let _guard = RmOnDrop(f.clone());
    std::fs::write(&f, inst.bytes()).unwrap();
    let name = f.file_name().unwrap().to_string_lossy().into_owned();
    {
        let m = rig.mount(&[]);
        ok(Command::new("mv").arg(&f).arg(m.path()));
        assert!(!f.exists(), "mv left its source behind");
        let fids = file_ids(m.path());
        assert_eq!(fids.len(), 1);
        let s = stored(&rig.src);
        assert_eq!(s.len(), 1);
        assert!(s[0].1 == inst.bytes());
        assert!(!names(m.path()).contains(&name));
        assert_one_log_line(&rig, &[&format!("{name}: added as "), &fids[0]]);
        assert_oracles_pass(m.path());
    }
    unmounted(&rig);
    assert_eq!(file_ids(&rig.src).len(), 1);
    assert_oracles_pass(&rig.src);
}

// ---------------------------------------------------------------------------------------------
// 5. rm and rm -r in both views

#[test]
fn rm_in_native_and_dcm_views_deletes_files_records_and_empty_levels() {
    let t = TempDir::new("rm");
    let src = t.join("fs");
    // 3 patients x 1 study x 2 series x 3 instances = 18, File IDs P0000n/S0001/E000n/I0000n.
    ok(Command::new(bin())
        .args([
            "demo",
            "--patients",
            "3",
            "--studies",
            "1",
            "--series",
            "2",
            "--instances",
            "3",
            "--rows",
            "16",
            "--cols",
            "16",
            "--no-documents",
        ])
        .arg(&src));
    let rig = Rig::with_src(t, src);
    assert_eq!(file_ids(&rig.src).len(), 18);
    let gone = |p: &str| {
        let b = rig.src.join(p);
        move || !b.exists()
    };
    {
        let m = rig.mount(&["-o", "view=both"]);
        let alt = m.join("by-patient");
        let series1 = alt.join("DOE JANE (PID00001)/2024-01-01 MRI BRAIN/1 MR T1 AXIAL");
        assert_eq!(names(&series1), ["1.dcm", "2.dcm", "3.dcm"]);
        // rm of a native instance path.
        ok(Command::new("rm").arg(m.join("P00001/S0001/E0001/I00001")));
        eventually(
            "P00001/S0001/E0001/I00001 removed from the medium",
            gone("P00001/S0001/E0001/I00001"),
        );
        assert!(!m.join("P00001/S0001/E0001/I00001").exists());
        assert_one_log_line(&rig, &["P00001\\S0001\\E0001\\I00001: deleted"]);
        // rm of a .dcm name (instance 2 of the same series).
        ok(Command::new("rm").arg(series1.join("2.dcm")));
        eventually(
            "P00001/S0001/E0001/I00002 removed",
            gone("P00001/S0001/E0001/I00002"),
        );
        assert_one_log_line(&rig, &["P00001\\S0001\\E0001\\I00002: deleted"]);
        assert_eq!(names(&series1), ["3.dcm"]);
        assert_eq!(file_ids(m.path()).len(), 16);
        // Removing the last instance of a series removes the series record and directory.
        ok(Command::new("rm").arg(m.join("P00001/S0001/E0001/I00003")));
        eventually("series directory E0001 removed", gone("P00001/S0001/E0001"));
        // The kernel may keep the directory's entry for up to the 1 s attribute timeout.
        eventually("the series' alternate directory gone", || !series1.exists());
        assert_eq!(names(&m.join("P00001/S0001")), ["E0002"]);
        // rm -r of a whole series directory in the native view: the last series of the
        // study, so the study and patient go too.
        ok(Command::new("rm")
            .arg("-r")
            .arg(m.join("P00001/S0001/E0002")));
        eventually("patient directory P00001 removed", gone("P00001"));
        // Listings show it at once; a name the kernel looked up before may be cached for the
        // attribute TTL (1 s read-write).
        assert!(!names(m.path()).contains(&"P00001".to_string()));
        assert!(!names(&alt).contains(&"DOE JANE (PID00001)".to_string()));
        let p1 = m.join("P00001");
        eventually("stat MNT/P00001 fails", || !p1.exists());
        // rm -r of a patient directory in the .dcm view.
        let p2 = alt.join("MÜLLER JÜRGEN (PID00002)");
        assert!(p2.is_dir());
        ok(Command::new("rm").arg("-r").arg(&p2));
        eventually("patient directory P00002 removed", gone("P00002"));
        assert!(!p2.exists());
        assert_eq!(names(&alt), ["GARCÍA ANA (PID00003)"]);
        assert_eq!(names(m.path()), ["DICOMDIR", "P00003", "by-patient"]);
        // Exactly patient 3's 6 instances are left, and nothing else on the medium.
        let fids = file_ids(m.path());
        assert_eq!(fids.len(), 6, "{fids:?}");
        assert!(fids.iter().all(|f| f.starts_with("P00003\\")), "{fids:?}");
        let s: Vec<String> = stored(&rig.src).into_iter().map(|x| x.0).collect();
        assert_eq!(s, fids);
        let c = record_counts(m.path());
        let want: BTreeMap<String, usize> =
            [("PATIENT", 1), ("STUDY", 1), ("SERIES", 2), ("IMAGE", 6)]
                .into_iter()
                .map(|(k, v)| (k.to_string(), v))
                .collect();
        assert_eq!(c, want);
        assert_eq!(log_lines(&rig, &[": deleted"]).len(), 12);
        // No empty directories are left on the medium.
        let mut left = names(&rig.src);
        left.retain(|n| n != "DICOMFS.TMP");
        assert_eq!(left, ["DICOMDIR", "P00003"]);
        assert_eq!(files_below(&alt).len(), 6);
        assert_oracles_pass(m.path());
    }
    unmounted(&rig);
    assert_eq!(names(&rig.src), ["DICOMDIR", "P00003"]);
    assert_eq!(file_ids(&rig.src).len(), 6);
    assert_oracles_pass(&rig.src);
}

/// SEMANTICS.md: unmount writes pending deletes and syncs ("unmount also survives a power
/// loss"). So once `umount` has returned, the DICOMDIR on the medium no longer references a
/// file deleted just before.
#[test]
fn delete_just_before_umount_is_on_the_medium_when_umount_returns() {
    let t = TempDir::new("rmumount");
    let src = t.join("fs");
    ok(Command::new(bin())
        .args(["demo", "--patients", "1", "--studies", "1", "--series", "1"])
        .args([
            "--instances",
            "3",
            "--rows",
            "16",
            "--cols",
            "16",
            "--no-documents",
        ])
        .arg(&src));
    let rig = Rig::with_src(t, src);
    let before = rig.dicomdir();
    let now;
    {
        let m = rig.mount(&[]);
        std::fs::remove_file(m.join("P00001/S0001/E0001/I00001")).unwrap();
        // umount by hand (the guard waits for the daemon to exit), then read at once: what a
        // user who unplugs the medium after umount would have.
        ok(Command::new("umount").arg(m.path()));
        now = rig.dicomdir();
    }
    std::fs::write(rig.scratch.join("DICOMDIR"), &now).unwrap();
    let fids_now = file_ids(&rig.scratch);
    unmounted(&rig);
    assert_eq!(
        file_ids(&rig.src),
        [
            "P00001\\S0001\\E0001\\I00002",
            "P00001\\S0001\\E0001\\I00003"
        ]
    );
    assert!(
        now != before,
        "umount returned before the pending delete was written: the DICOMDIR read then lists {fids_now:?}"
    );
    assert_oracles_pass(&rig.src);
}

// ---------------------------------------------------------------------------------------------
// 6. A copy under a File ID keeps it

#[test]
fn copy_under_a_file_id_path_keeps_exactly_that_file_id() {
    let rig = Rig::new("fid");
    let inst = one_instance(6);
    let img = rig.scratch.join("IMG1");
    std::fs::write(&img, inst.bytes()).unwrap();
    {
        let m = rig.mount(&[]);
        std::fs::create_dir(m.join("CDCOPY")).unwrap();
        ok(Command::new("cp").arg(&img).arg(m.join("CDCOPY/IMG1")));
        assert_eq!(file_ids(m.path()), ["CDCOPY\\IMG1"]);
        assert_eq!(names(&m.join("CDCOPY")), ["IMG1"]);
        assert!(std::fs::read(m.join("CDCOPY/IMG1")).unwrap() == inst.bytes());
        assert!(std::fs::read(rig.src.join("CDCOPY/IMG1")).unwrap() == inst.bytes());
        assert_eq!(stored(&rig.src).len(), 1);
        assert_one_log_line(&rig, &["IMG1: added as CDCOPY\\IMG1"]);
        assert_oracles_pass(m.path());
    }
    unmounted(&rig);
    assert_eq!(file_ids(&rig.src), ["CDCOPY\\IMG1"]);
    assert_oracles_pass(&rig.src);
}

// ---------------------------------------------------------------------------------------------
// 7. Bad inputs

/// A File-set with one instance ingested as `a.dcm`; returns the instance.
fn with_one_ingested(m: &Mount) -> synth::Instance {
    let inst = one_instance(7);
    write_close(&m.join("a.dcm"), &inst.bytes()).unwrap();
    assert_eq!(file_ids(m.path()).len(), 1);
    inst
}

#[test]
fn non_dicom_file_is_refused_with_einval() {
    let rig = Rig::new("notdicom");
    let junk = format!(
        "This is a plain text file, not DICOM.\n{}\n",
        "lorem ipsum ".repeat(40)
    );
    assert!(junk.len() > 200);
    {
        let m = rig.mount(&[]);
        with_one_ingested(&m);
        let dd = rig.dicomdir();
        let before = stored(&rig.src);
        // Raw syscalls: the write covering byte 128 fails.
        let r = write_close(&m.join("notes.txt"), junk.as_bytes());
        // semantics.md: at the write covering bytes 128..132; with FUSE passthrough writes
        // the daemon sees the bytes only at close.
        assert!(matches!(r, Err(("write" | "close", libc::EINVAL))), "{r:?}");
        assert_refusal_logged(&rig, &["notes.txt", "not a DICOM"]);
        // cp reports it too.
        let f = rig.scratch.join("readme.txt");
        std::fs::write(&f, &junk).unwrap();
        let out = run(Command::new("cp").arg(&f).arg(m.path()));
        assert!(!out.status.success());
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("Invalid argument"),
            "{}",
            text(&out)
        );
        assert_refusal_logged(&rig, &["readme.txt", "not a DICOM"]);
        assert!(!names(m.path()).contains(&"notes.txt".to_string()));
        assert!(!names(m.path()).contains(&"readme.txt".to_string()));
        assert_nothing_changed(&rig, &dd, &before);
        assert_oracles_pass(m.path());
    }
    unmounted(&rig);
    assert_eq!(file_ids(&rig.src).len(), 1);
    assert_oracles_pass(&rig.src);
}

#[test]
fn truncated_part10_file_is_refused_with_einval_at_close() {
    let rig = Rig::new("trunc");
    let inst = one_instance(71);
    let full = inst.bytes();
    // 16x16x2 bytes of pixel data end the file: cut in its middle.
    let cut = &full[..full.len() - 256];
    {
        let m = rig.mount(&[]);
        with_one_ingested(&m);
        let dd = rig.dicomdir();
        let before = stored(&rig.src);
        let r = write_close(&m.join("cut.dcm"), cut);
        assert_eq!(r, Err(("close", libc::EINVAL)));
        assert_refusal_logged(&rig, &["cut.dcm", "truncated"]);
        // cp reports it too.
        let f = rig.scratch.join("cut2.dcm");
        std::fs::write(&f, cut).unwrap();
        let out = run(Command::new("cp").arg(&f).arg(m.path()));
        assert!(!out.status.success(), "{}", text(&out));
        assert!(String::from_utf8_lossy(&out.stderr).contains("Invalid argument"));
        assert_refusal_logged(&rig, &["cut2.dcm", "truncated"]);
        assert_nothing_changed(&rig, &dd, &before);
        assert_eq!(file_ids(m.path()).len(), 1);
        assert_oracles_pass(m.path());
    }
    unmounted(&rig);
    assert_eq!(file_ids(&rig.src).len(), 1);
    assert_oracles_pass(&rig.src);
}

#[test]
fn meta_and_dataset_sop_instance_uid_mismatch_is_refused_with_einval() {
    let rig = Rig::new("mismatch");
    let mut inst = one_instance(72);
    let class = inst.sop_class();
    let old = inst.sop_instance();
    // Same length, last digit changed.
    let mut new = old.clone();
    let last = new.pop().unwrap();
    new.push(if last == '1' { '2' } else { '1' });
    for e in inst.ds.iter_mut() {
        if e.tag == dicom::tags::SOP_INSTANCE_UID {
            e.value = new.as_bytes().to_vec();
        }
    }
    // A Part-10 header for the old UID, then the data set with the new one.
    let body = synth::part10(&inst.ds);
    let new_hdr = dicom::part10_header(&class, &new, dicom::EXPLICIT_LE);
    assert!(body.starts_with(&new_hdr));
    let mut bytes = dicom::part10_header(&class, &old, dicom::EXPLICIT_LE);
    bytes.extend_from_slice(&body[new_hdr.len()..]);
    {
        let m = rig.mount(&[]);
        with_one_ingested(&m);
        let dd = rig.dicomdir();
        let before = stored(&rig.src);
        let r = write_close(&m.join("mixed.dcm"), &bytes);
        assert_eq!(r, Err(("close", libc::EINVAL)));
        assert_refusal_logged(&rig, &["mixed.dcm", "SOP Instance UID"]);
        assert_nothing_changed(&rig, &dd, &before);
        assert_oracles_pass(m.path());
    }
    unmounted(&rig);
    assert_eq!(file_ids(&rig.src).len(), 1);
    assert_oracles_pass(&rig.src);
}

#[test]
fn same_sop_instance_uid_other_bytes_is_eexist_same_bytes_is_a_no_op() {
    let rig = Rig::new("eexist");
    {
        let m = rig.mount(&[]);
        let inst = with_one_ingested(&m);
        let dd = rig.dicomdir();
        let before = stored(&rig.src);
        // Same SOP Instance UID, one pixel changed.
        let mut other = inst.bytes();
        let n = other.len();
        other[n - 2] ^= 0x01;
        let r = write_close(&m.join("other.dcm"), &other);
        assert_eq!(r, Err(("close", libc::EEXIST)));
        assert_refusal_logged(
            &rig,
            &["other.dcm", &inst.sop_instance(), "already on the medium"],
        );
        assert_nothing_changed(&rig, &dd, &before);
        // cp says so too.
        let f = rig.scratch.join("other2.dcm");
        std::fs::write(&f, &other).unwrap();
        let out = run(Command::new("cp").arg(&f).arg(m.path()));
        assert!(!out.status.success());
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("File exists"),
            "{}",
            text(&out)
        );
        assert_refusal_logged(&rig, &["other2.dcm", "already on the medium"]);
        assert_nothing_changed(&rig, &dd, &before);
        // The same bytes again: success, nothing changes.
        let f = rig.scratch.join("again.dcm");
        std::fs::write(&f, inst.bytes()).unwrap();
        ok(Command::new("cp").arg(&f).arg(m.path()));
        write_close(&m.join("again2.dcm"), &inst.bytes()).unwrap();
        assert_one_log_line(
            &rig,
            &["again.dcm: already on the medium as", "with the same bytes"],
        );
        assert_nothing_changed(&rig, &dd, &before);
        assert_eq!(file_ids(m.path()).len(), 1);
        assert_oracles_pass(m.path());
    }
    unmounted(&rig);
    assert_eq!(file_ids(&rig.src).len(), 1);
    assert_oracles_pass(&rig.src);
}

#[test]
fn dicomdir_and_ingested_instances_are_immutable_eperm() {
    let rig = Rig::new("eperm");
    {
        let m = rig.mount(&[]);
        with_one_ingested(&m);
        let dd = rig.dicomdir();
        let before = stored(&rig.src);
        let fid = file_ids(m.path()).pop().unwrap();
        let inst_path = m.join(&fid.replace('\\', "/"));
        let dicomdir = m.join("DICOMDIR");
        let eperm = |r: std::io::Result<()>, what: &str| {
            let e = r.expect_err(what);
            assert_eq!(e.raw_os_error(), Some(libc::EPERM), "{what}: {e}");
        };
        // Write, truncate, rename, delete the DICOMDIR.
        eperm(
            std::fs::OpenOptions::new()
                .write(true)
                .open(&dicomdir)
                .map(drop),
            "open DICOMDIR for writing",
        );
        assert_refusal_logged(&rig, &["DICOMDIR", "cannot be written"]);
        let c = cpath(&dicomdir);
        // SAFETY: c is a valid path.
        let r = unsafe { libc::truncate(c.as_ptr(), 0) };
        assert_eq!((r, last_errno()), (-1, libc::EPERM), "truncate DICOMDIR");
        assert_refusal_logged(&rig, &["DICOMDIR", "cannot be truncated"]);
        eperm(
            std::fs::rename(&dicomdir, m.join("OLDDIR")),
            "rename DICOMDIR",
        );
        assert_refusal_logged(&rig, &["DICOMDIR", "File IDs never change"]);
        eperm(std::fs::remove_file(&dicomdir), "rm DICOMDIR");
        assert_refusal_logged(&rig, &["DICOMDIR", "cannot be deleted"]);
        let out = run(Command::new("cp")
            .arg(rig.src.join("DICOMDIR"))
            .arg(&dicomdir));
        assert!(!out.status.success());
        assert!(String::from_utf8_lossy(&out.stderr).contains("Operation not permitted"));
        // An instance under its File ID.
        eperm(
            std::fs::OpenOptions::new()
                .write(true)
                .open(&inst_path)
                .map(drop),
            "open an instance for writing",
        );
        assert_refusal_logged(&rig, &[&fid.replace('\\', "/"), "immutable"]);
        eperm(
            std::fs::rename(&inst_path, m.join("MOVED")),
            "rename an instance",
        );
        let leaf = fid.rsplit('\\').next().unwrap();
        assert_refusal_logged(&rig, &[leaf, "File IDs never change"]);
        assert!(std::fs::read(m.join("DICOMDIR")).unwrap() == dd);
        assert_nothing_changed(&rig, &dd, &before);
        // The ghost of a copied-in name, opened for writing without truncation.
        eperm(
            std::fs::OpenOptions::new()
                .append(true)
                .open(m.join("a.dcm"))
                .map(drop),
            "open the copied-in name a.dcm for appending",
        );
        assert_nothing_changed(&rig, &dd, &before);
        assert_oracles_pass(m.path());
        // Every refusal above names what it refused: the ghost too.
        assert_refusal_logged(&rig, &["a.dcm", "cannot be modified"]);
    }
    unmounted(&rig);
    assert_eq!(file_ids(&rig.src).len(), 1);
    assert_oracles_pass(&rig.src);
}

#[test]
fn illegal_name_in_an_existing_native_directory_is_einval() {
    let rig = Rig::new("illegal");
    {
        let m = rig.mount(&[]);
        with_one_ingested(&m);
        let dd = rig.dicomdir();
        let before = stored(&rig.src);
        let fid = file_ids(m.path()).pop().unwrap();
        let patient = fid.split('\\').next().unwrap().to_string();
        assert!(m.join(&patient).is_dir());
        let inst = one_instance(73);
        let r = write_close(&m.join(&patient).join("lower.dcm"), &inst.bytes());
        assert_eq!(r, Err(("open", libc::EINVAL)));
        assert_refusal_logged(&rig, &[&format!("{patient}/lower.dcm"), "not a File ID"]);
        let e = std::fs::create_dir(m.join(&patient).join("my dir")).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::EINVAL));
        assert_refusal_logged(&rig, &[&format!("{patient}/my dir"), "not a File ID"]);
        assert_nothing_changed(&rig, &dd, &before);
        assert_eq!(names(&m.join(&patient)), names(&rig.src.join(&patient)));
        assert_oracles_pass(m.path());
    }
    unmounted(&rig);
    assert_eq!(file_ids(&rig.src).len(), 1);
    assert_oracles_pass(&rig.src);
}

#[test]
fn dicomdir_copied_inside_a_folder_is_dropped_with_a_log_line() {
    let rig = Rig::new("dropdd");
    // Some other File-set's DICOMDIR.
    let other = rig.scratch.join("other");
    ok(Command::new(bin())
        .args(["demo", "--patients", "1", "--rows", "16", "--cols", "16"])
        .arg(&other));
    {
        let m = rig.mount(&[]);
        with_one_ingested(&m);
        let dd = rig.dicomdir();
        let before = stored(&rig.src);
        std::fs::create_dir(m.join("export")).unwrap();
        ok(Command::new("cp")
            .arg(other.join("DICOMDIR"))
            .arg(m.join("export/DICOMDIR")));
        assert_one_log_line(&rig, &["DICOMDIR: a DICOMDIR copied in is dropped"]);
        // A DICOMDIR under another name is recognized by its SOP Class.
        ok(Command::new("cp")
            .arg(other.join("DICOMDIR"))
            .arg(m.join("export/index.dcm")));
        assert_one_log_line(&rig, &["index.dcm", "DICOMDIR copied in is not kept"]);
        assert_nothing_changed(&rig, &dd, &before);
        assert!(std::fs::read(m.join("DICOMDIR")).unwrap() == dd);
        let dicomdirs: Vec<PathBuf> = files_below(&rig.src)
            .into_iter()
            .filter(|p| std::fs::read(p).unwrap() == std::fs::read(other.join("DICOMDIR")).unwrap())
            .collect();
        assert!(dicomdirs.is_empty(), "{dicomdirs:?}");
        assert_oracles_pass(m.path());
    }
    unmounted(&rig);
    assert_eq!(file_ids(&rig.src).len(), 1);
    assert_oracles_pass(&rig.src);
}

/// A tmpfs mounted for a test; unmounted when dropped, even on panic.
struct Tmpfs(PathBuf);
impl Drop for Tmpfs {
    fn drop(&mut self) {
        let ok = Command::new("umount")
            .arg(&self.0)
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        if !ok {
            let _ = Command::new("umount").arg("-l").arg(&self.0).status();
        }
    }
}

#[test]
fn full_medium_reports_enospc_and_keeps_nothing_partial() {
    let t = TempDir::new("enospc");
    let small = t.join("small");
    std::fs::create_dir_all(&small).unwrap();
    ok(Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=3m", "tmpfs"])
        .arg(&small));
    let src = small.join("fs");
    let rig = Rig::with_src(t, src.clone());
    // Declared after the rig, so dropped (unmounted) before the rig's directory is removed.
    let _tmpfs = Tmpfs(small.clone());
    std::fs::create_dir_all(&src).unwrap();
    ok(Command::new(bin()).arg("init").arg(&src));
    // 128 KiB instances: 40 of them do not fit in 3 MiB.
    let insts = synth::instances(&synth::Spec {
        patients: 1,
        studies: 1,
        series: 1,
        instances: 40,
        rows: 256,
        cols: 256,
        seed: 8,
        documents: false,
        ..Default::default()
    });
    let mut files = Vec::new();
    for (k, inst) in insts.iter().enumerate() {
        let f = rig.scratch.join(format!("f{k:02}.dcm"));
        std::fs::write(&f, inst.bytes()).unwrap();
        files.push(f);
    }
    let name;
    {
        let m = rig.mount(&[]);
        let mut copied = Vec::new();
        let mut failure = None;
        let mut dicomdir_before = Vec::new();
        for f in &files {
            dicomdir_before = rig.dicomdir();
            let out = run(Command::new("cp").arg(f).arg(m.path()));
            if out.status.success() {
                copied.push(f.clone());
            } else {
                failure = Some((f.clone(), out));
                break;
            }
        }
        let (failed, out) = failure.expect("40 x 128 KiB fit in a 3 MiB tmpfs?");
        assert!(
            rig.dicomdir() == dicomdir_before,
            "the copy that failed changed the DICOMDIR"
        );
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("No space left on device"),
            "{}",
            text(&out)
        );
        assert!(
            copied.len() >= 5,
            "only {} copies before ENOSPC",
            copied.len()
        );
        name = failed.file_name().unwrap().to_string_lossy().into_owned();
        // Nothing partial: the staged copy is gone, every file on the medium is a complete
        // copied instance, and the DICOMDIR references exactly those.
        assert_eq!(
            staged_files(&rig.src),
            Vec::<PathBuf>::new(),
            "staged files left after {} successful copies; log:\n{}",
            copied.len(),
            rig.log()
        );
        let s = stored(&rig.src);
        assert_eq!(
            s.len(),
            copied.len(),
            "{} copies succeeded but {} files are on the medium; log:\n{}",
            copied.len(),
            s.len(),
            rig.log()
        );
        let mut got: Vec<Vec<u8>> = s.iter().map(|x| x.1.clone()).collect();
        got.sort();
        assert!(
            got == sorted_contents(&copied),
            "stored files differ from the copies"
        );
        let fids = file_ids(m.path());
        assert_eq!(fids, s.iter().map(|x| x.0.clone()).collect::<Vec<_>>());
        assert!(!names(m.path()).contains(&name));
        assert_oracles_pass(m.path());
    }
    unmounted(&rig);
    assert_oracles_pass(&rig.src);
    // One log line names the file that did not fit, and why.
    assert_refusal_logged(&rig, &[&name, "No space left on device"]);
}

// ---------------------------------------------------------------------------------------------
// 8. Transcoding

/// pydicom, for each file: its transfer syntax, a digest of its pixel data, and a digest of
/// every data set element (tag and value, without the File Meta Information).
fn ts_and_digests(files: &[&Path]) -> Vec<(String, String, String)> {
    let out = ok(Command::new("python3")
        .arg("-c")
        .arg(
            "import pydicom,sys,hashlib\n\
             for f in sys.argv[1:]:\n\
             \x20   ds=pydicom.dcmread(f)\n\
             \x20   h=hashlib.sha256()\n\
             \x20   for e in ds:\n\
             \x20       h.update(repr((e.tag, e.value)).encode())\n\
             \x20   print(ds.file_meta.TransferSyntaxUID, hashlib.sha256(ds.PixelData).hexdigest(), h.hexdigest())\n",
        )
        .args(files));
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| {
            let v: Vec<&str> = l.split(' ').collect();
            (v[0].to_string(), v[1].to_string(), v[2].to_string())
        })
        .collect()
}

#[test]
fn implicit_vr_instance_is_stored_as_explicit_vr_le_with_equal_pixels() {
    need("dcmconv");
    let rig = Rig::new("transcode");
    let inst = one_instance(9);
    let orig = rig.scratch.join("orig.dcm");
    std::fs::write(&orig, inst.bytes()).unwrap();
    let ivr = rig.scratch.join("ivr.dcm");
    ok(Command::new("dcmconv").arg("+ti").arg(&orig).arg(&ivr));
    let d = ts_and_digests(&[&orig, &ivr]);
    assert_eq!(d[0].0, dicom::EXPLICIT_LE);
    assert_eq!(d[1].0, dicom::IMPLICIT_LE);
    assert_eq!(d[0].1, d[1].1, "dcmconv changed the pixel data");
    let (pixels, dataset) = (d[0].1.clone(), d[0].2.clone());
    {
        let m = rig.mount(&[]);
        ok(Command::new("cp").arg(&ivr).arg(m.path()));
        let fids = file_ids(m.path());
        assert_eq!(fids.len(), 1);
        let stored_path = rig.src.join(fids[0].replace('\\', "/"));
        // On the medium and read through the mount: Explicit VR LE, the same pixel data,
        // and the same data set as the Explicit VR LE original.
        let via_mount = m.join(&fids[0].replace('\\', "/"));
        for (f, (ts, px, all)) in [&stored_path, &via_mount]
            .iter()
            .zip(ts_and_digests(&[&stored_path, &via_mount]))
        {
            assert_eq!(ts, dicom::EXPLICIT_LE, "{}", f.display());
            assert_eq!(px, pixels, "pixel data differ: {}", f.display());
            assert_eq!(all, dataset, "data set differs: {}", f.display());
        }
        let out = ok(Command::new("dcmdump")
            .args(["+P", "0002,0010"])
            .arg(&stored_path));
        assert!(
            String::from_utf8_lossy(&out.stdout).contains("LittleEndianExplicit"),
            "{}",
            text(&out)
        );
        // The DICOMDIR records the stored transfer syntax.
        let out = ok(Command::new("python3")
            .arg("-c")
            .arg(
                "import pydicom,sys\n\
                 ds=pydicom.dcmread(sys.argv[1])\n\
                 print([str(r.ReferencedTransferSyntaxUIDInFile) for r in ds.DirectoryRecordSequence if 'ReferencedFileID' in r])\n",
            )
            .arg(m.join("DICOMDIR")));
        assert_eq!(
            String::from_utf8_lossy(&out.stdout).trim(),
            format!("['{}']", dicom::EXPLICIT_LE)
        );
        assert_one_log_line(&rig, &["ivr.dcm: transcoded from 1.2.840.10008.1.2 "]);
        assert_oracles_pass(m.path());
    }
    unmounted(&rig);
    assert_oracles_pass(&rig.src);
}

// ---------------------------------------------------------------------------------------------
// 9. Concurrency

/// Walk a directory tree, counting files; entries that vanish meanwhile are fine, any other
/// error is returned.
fn walk_count(d: &Path) -> Result<usize, String> {
    let mut n = 0;
    let rd = match std::fs::read_dir(d) {
        Ok(r) => r,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(format!("{}: {e}", d.display())),
    };
    for e in rd {
        let e = e.map_err(|e| format!("{}: {e}", d.display()))?;
        let p = e.path();
        match std::fs::metadata(&p) {
            Ok(md) if md.is_dir() => n += walk_count(&p)?,
            Ok(_) => n += 1,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(format!("{}: {e}", p.display())),
        }
    }
    Ok(n)
}

#[test]
fn two_concurrent_cp_r_with_a_reader_listing_the_dcm_view() {
    let rig = Rig::new("concurrent");
    let a = rig.scratch.join("Export A");
    let b = rig.scratch.join("Export B ü");
    let ia = instances(2, 2, 5, 21);
    let ib = instances(3, 2, 4, 22);
    let fa = messy_folder(&a, &ia);
    let fb = messy_folder(&b, &ib);
    let total = ia.len() + ib.len();
    assert_eq!(total, 44);
    {
        let m = rig.mount(&["-o", "view=both"]);
        let stop = Arc::new(AtomicBool::new(false));
        let alt = m.join("by-patient");
        let reader = {
            let stop = stop.clone();
            let alt = alt.clone();
            std::thread::spawn(move || {
                let mut walks = 0usize;
                let mut errors = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    match walk_count(&alt) {
                        Ok(n) => assert!(n <= 44),
                        Err(e) => errors.push(e),
                    }
                    walks += 1;
                }
                (walks, errors)
            })
        };
        let cps: Vec<_> = [a.clone(), b.clone()]
            .into_iter()
            .map(|f| {
                let mnt = m.path().to_path_buf();
                std::thread::spawn(move || run(Command::new("cp").arg("-r").arg(&f).arg(&mnt)))
            })
            .collect();
        for c in cps {
            let out = c.join().unwrap();
            assert!(out.status.success(), "cp -r: {}", text(&out));
        }
        stop.store(true, Ordering::Relaxed);
        let (walks, errors) = reader.join().unwrap();
        assert!(walks > 0);
        assert!(errors.is_empty(), "reader errors: {errors:?}");
        assert_eq!(walk_count(&alt).unwrap(), total);
        let fids = file_ids(m.path());
        assert_eq!(fids.len(), total);
        let s = stored(&rig.src);
        assert_eq!(s.iter().map(|x| x.0.clone()).collect::<Vec<_>>(), fids);
        let mut got: Vec<Vec<u8>> = s.into_iter().map(|x| x.1).collect();
        got.sort();
        let all: Vec<PathBuf> = fa.iter().chain(fb.iter()).cloned().collect();
        assert!(got == sorted_contents(&all));
        assert_eq!(log_lines(&rig, &["added as"]).len(), total);
        assert_oracles_pass(m.path());
    }
    unmounted(&rig);
    assert_eq!(file_ids(&rig.src).len(), total);
    assert_oracles_pass(&rig.src);
}
