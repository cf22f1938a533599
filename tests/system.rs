//! dicomfs as a system's filesystem driver: `mount -t fuse.dicomfs` and fstab lines through the
//! mount.fuse.dicomfs helper, umount(8) through umount.fuse.dicomfs (which waits for the
//! daemon), signals, the lock on SOURCE, every `-o` option of the man page, logs (file,
//! syslog, stderr), progress bars on a terminal, `dicomfs info`, and the rows of SEMANTICS.md
//! that tests/write.rs does not cover.
//!
//! The helpers are installed as symlinks to the freshly built binary in /usr/sbin for the
//! tests that need them (root), and removed when the last of those tests ends.

mod common;

use common::*;
use dicomfs::synth;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

// ---------------------------------------------------------------------------------------------
// Helpers

const HELPERS: [&str; 4] = [
    "/usr/sbin/mount.fuse.dicomfs",
    "/usr/sbin/mount.dicomfs",
    "/usr/sbin/umount.fuse.dicomfs",
    "/usr/sbin/umount.dicomfs",
];
static HELPER_USERS: Mutex<usize> = Mutex::new(0);

/// The mount helpers, installed while at least one guard lives.
struct Helpers;

impl Helpers {
    fn install() -> Helpers {
        let mut n = HELPER_USERS.lock().unwrap_or_else(|e| e.into_inner());
        if *n == 0 {
            for h in HELPERS {
                let _ = std::fs::remove_file(h);
                std::os::unix::fs::symlink(bin(), h).unwrap();
            }
        }
        *n += 1;
        Helpers
    }
}

impl Drop for Helpers {
    fn drop(&mut self) {
        let mut n = HELPER_USERS.lock().unwrap_or_else(|e| e.into_inner());
        *n -= 1;
        if *n == 0 {
            for h in HELPERS {
                let _ = std::fs::remove_file(h);
            }
        }
    }
}

/// A mount made by mount(8); `umount` when dropped (even when the test fails).
struct SysMount(PathBuf);

impl Drop for SysMount {
    fn drop(&mut self) {
        if is_mounted(&self.0) {
            let ok = Command::new("umount")
                .arg(&self.0)
                .status()
                .is_ok_and(|s| s.success());
            if !ok {
                let _ = Command::new("umount").arg("-l").arg(&self.0).status();
            }
        }
        wait_daemon_gone(&self.0);
    }
}

/// A test's directories: SOURCE (an empty File-set unless `init` is false), a scratch
/// directory, the mount point and a log file.
struct Rig {
    t: TempDir,
    src: PathBuf,
    scratch: PathBuf,
    mnt: PathBuf,
    log: PathBuf,
}

impl Rig {
    fn new(name: &str, init: bool) -> Rig {
        let t = TempDir::new(name);
        let (src, scratch, mnt) = (t.join("src"), t.join("scratch"), t.join("mnt"));
        for d in [&src, &scratch, &mnt] {
            std::fs::create_dir_all(d).unwrap();
        }
        if init {
            ok(Command::new(bin()).arg("init").arg(&src));
        }
        let log = t.join("log");
        Rig {
            t,
            src,
            scratch,
            mnt,
            log,
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Instances written as files into scratch/NAME.
    fn instances(&self, name: &str, n: usize, seed: u64) -> PathBuf {
        let dir = self.scratch.join(name);
        std::fs::create_dir_all(&dir).unwrap();
        let insts = synth::instances(&synth::Spec {
            patients: 1,
            studies: 1,
            series: 1,
            instances: n,
            rows: 16,
            cols: 16,
            seed,
            documents: false,
            ..Default::default()
        });
        for (i, inst) in insts.iter().enumerate() {
            std::fs::write(dir.join(format!("im{i:04}.dcm")), inst.bytes()).unwrap();
        }
        dir
    }
}

/// The live (not zombie) dicomfs processes serving MNT.
fn daemons(mnt: &Path) -> Vec<u32> {
    let want = mnt.as_os_str().as_bytes();
    let mut v = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(cmd) = std::fs::read(e.path().join("cmdline")) else {
            continue;
        };
        let args: Vec<&[u8]> = cmd.split(|&b| b == 0).collect();
        if args.first().is_some_and(|a| a.ends_with(b"dicomfs")) && args.contains(&want) {
            v.push(pid);
        }
    }
    v
}

/// The mountinfo line of MNT.
fn mountinfo(mnt: &Path) -> Option<String> {
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .find(|l| l.split(' ').nth(4) == mnt.to_str())
        .map(str::to_string)
}

/// Referenced File IDs in the DICOMDIR of DIR (by `dicomfs ls`: the third column).
fn referenced(dir: &Path) -> Vec<String> {
    let out = ok(Command::new(bin()).arg("ls").arg(dir));
    let mut v: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            let parts: Vec<&str> = l.trim_start().split("  ").collect();
            (parts.len() == 3).then(|| parts[2].trim().replace('\\', "/"))
        })
        .collect();
    v.sort();
    v
}

/// Instance files on the medium (everything but the DICOMDIR).
fn instance_files(src: &Path) -> Vec<String> {
    let mut v: Vec<String> = files_below(src)
        .iter()
        .map(|p| p.strip_prefix(src).unwrap().to_string_lossy().to_string())
        .filter(|p| p != "DICOMDIR")
        .collect();
    v.sort();
    v
}

/// The medium is final and consistent: no staging directory, every file referenced and every
/// reference present, `dicomfs check` clean, and the external oracles pass.
fn assert_clean_medium(src: &Path) {
    assert!(
        !src.join("DICOMFS.TMP").exists(),
        "the staging directory is still on the medium"
    );
    assert_eq!(referenced(src), instance_files(src));
    let out = run(Command::new(bin()).arg("check").arg(src));
    assert!(out.status.success(), "dicomfs check: {}", text(&out));
    assert_oracles_pass(src);
}

fn eventually(what: &str, mut f: impl FnMut() -> bool) {
    let t = Instant::now();
    while !f() {
        assert!(t.elapsed() < Duration::from_secs(20), "timed out: {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

// ---------------------------------------------------------------------------------------------
// mount -t fuse.dicomfs, fstab, umount

#[test]
fn mount_t_fuse_dicomfs_copy_in_umount_waits_and_oracles_pass() {
    let _h = Helpers::install();
    let rig = Rig::new("mount-t", true);
    let study = rig.instances("study", 12, 51);
    {
        let opts = format!(
            "rw,profile=STD-GEN-USB-JPEG,log_file={},noexec",
            rig.log.display()
        );
        ok(Command::new("mount")
            .args(["-t", "fuse.dicomfs", "-o", &opts])
            .arg(&rig.src)
            .arg(&rig.mnt));
        let guard = SysMount(rig.mnt.clone());
        let line = mountinfo(&rig.mnt).expect("not mounted");
        assert!(line.contains(" - fuse.dicomfs "), "{line}");
        assert!(line.contains(&format!(" {} ", rig.src.display())), "{line}");
        assert!(
            line.contains("noexec"),
            "noexec did not reach mount(2): {line}"
        );
        ok(Command::new("cp").arg("-r").arg(&study).arg(&rig.mnt));
        assert_eq!(referenced(&rig.mnt).len(), 12);
        // A delete left pending at umount is written before umount returns.
        let refs = referenced(&rig.mnt);
        std::fs::remove_file(rig.mnt.join(&refs[0])).unwrap();
        std::fs::remove_file(rig.mnt.join(&refs[1])).unwrap();
        ok(Command::new("umount").arg(&rig.mnt));
        // umount ran umount.fuse.dicomfs, which waited for the daemon: it is gone and the
        // medium is final the moment umount returns.
        assert!(!is_mounted(&rig.mnt));
        assert!(!rig.src.join("DICOMFS.TMP").exists());
        assert_eq!(referenced(&rig.src).len(), 10);
        drop(guard);
    }
    assert!(rig.log().contains("added as"), "{}", rig.log());
    assert!(rig.log().contains("deleted"), "{}", rig.log());
    assert_clean_medium(&rig.src);
}

#[test]
fn fstab_line_with_noauto_nofail_user_mounts_through_mount_t_file() {
    let _h = Helpers::install();
    // No DICOMDIR yet: `create` makes one.
    let rig = Rig::new("fstab", false);
    let study = rig.instances("study", 5, 52);
    let fstab = rig.t.join("fstab");
    std::fs::write(
        &fstab,
        format!(
            "# a test fstab\n{} {} fuse.dicomfs noauto,nofail,user,users,_netdev,create,view=both,case_insensitive,no_passthrough,log_file={} 0 0\n",
            rig.src.display(),
            rig.mnt.display(),
            rig.log.display()
        ),
    )
    .unwrap();
    {
        ok(Command::new("mount").arg("-T").arg(&fstab).arg(&rig.mnt));
        let _g = SysMount(rig.mnt.clone());
        let line = mountinfo(&rig.mnt).expect("not mounted");
        assert!(line.contains(" - fuse.dicomfs "), "{line}");
        // view=both: the native tree and by-patient/; case_insensitive: lowercase names.
        assert!(rig.mnt.join("by-patient").is_dir());
        assert!(rig.mnt.join("dicomdir").is_file());
        ok(Command::new("cp").arg("-r").arg(&study).arg(&rig.mnt));
        assert_eq!(referenced(&rig.mnt).len(), 5);
        // no_passthrough: reads go through the daemon, and still read the bytes.
        let f = &referenced(&rig.mnt)[0];
        assert_eq!(
            std::fs::read(rig.mnt.join(f)).unwrap(),
            std::fs::read(rig.src.join(f)).unwrap()
        );
        ok(Command::new("umount").arg(&rig.mnt));
    }
    assert!(rig.log().contains("new File-set"), "{}", rig.log());
    assert!(
        rig.log().contains("passthrough not available"),
        "{}",
        rig.log()
    );
    assert_clean_medium(&rig.src);
}

#[test]
fn mount_dicomfs_type_ro_view_dcm_allow_other_and_fake_mount() {
    let _h = Helpers::install();
    let rig = Rig::new("mount-ro", false);
    ok(Command::new(bin())
        .args(["demo", "--patients", "2", "--studies", "1", "--series", "1"])
        .arg(&rig.src));
    let before = std::fs::read(rig.src.join("DICOMDIR")).unwrap();
    // -f: mount(8)'s fake mount runs the helper with -f, which must do nothing.
    ok(Command::new("mount")
        .args(["-f", "-t", "dicomfs", "-o", "ro"])
        .arg(&rig.src)
        .arg(&rig.mnt));
    assert!(!is_mounted(&rig.mnt));
    ok(Command::new("mount")
        .args(["-t", "dicomfs", "-o", "ro,view=dcm,allow_other"])
        .arg(&rig.src)
        .arg(&rig.mnt));
    let _g = SysMount(rig.mnt.clone());
    let line = mountinfo(&rig.mnt).expect("not mounted");
    assert!(line.contains(" ro,"), "{line}");
    assert!(line.contains("allow_other"), "{line}");
    // view=dcm: patients at the root, no DICOMDIR.
    let names: Vec<String> = std::fs::read_dir(&rig.mnt)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
        .collect();
    assert!(names.iter().all(|n| n.contains('(')), "{names:?}");
    // ro: nothing can be created.
    let e = std::fs::write(rig.mnt.join("x.dcm"), b"x").unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::EROFS));
    // A read-only mount shares SOURCE with another read-only mount...
    let mnt2 = rig.t.join("mnt2");
    {
        let _m2 = Mount::new(&rig.src, &mnt2, &["-o", "ro"]);
    }
    // ...but not with a writer.
    let out = run(Command::new(bin()).arg("mount").arg(&rig.src).arg(&mnt2));
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("already mounted on"),
        "{}",
        text(&out)
    );
    ok(Command::new("umount").arg(&rig.mnt));
    assert_eq!(std::fs::read(rig.src.join("DICOMDIR")).unwrap(), before);
}

#[test]
fn fusermount3_u_unmounts_and_the_daemon_finishes() {
    let rig = Rig::new("fusermount", true);
    let study = rig.instances("study", 4, 53);
    {
        let _m = Mount::new(&rig.src, &rig.mnt, &[]);
        ok(Command::new("cp").arg("-r").arg(&study).arg(&rig.mnt));
        std::fs::remove_file(rig.mnt.join(&referenced(&rig.mnt)[0])).unwrap();
        ok(Command::new("fusermount3").arg("-u").arg(&rig.mnt));
        // fusermount3 does not wait for the daemon: wait for it.
        wait_daemon_gone(&rig.mnt);
    }
    assert_eq!(referenced(&rig.src).len(), 3);
    assert_clean_medium(&rig.src);
}

// ---------------------------------------------------------------------------------------------
// Signals and the lock

/// SIGTERM or SIGINT while `cp -r` copies 300 files in: the daemon unmounts (detaching the busy
/// mount), finishes, and leaves a consistent medium: every instance whose close returned
/// is referenced, nothing else is on it, no staging directory, oracles pass.
fn signal_during_a_copy(sig: libc::c_int, name: &str) {
    let rig = Rig::new(name, true);
    let study = rig.instances("study", 300, 54);
    let m = Mount::new(
        &rig.src,
        &rig.mnt,
        &["--log-file", rig.log.to_str().unwrap()],
    );
    let pids = daemons(&rig.mnt);
    assert_eq!(pids.len(), 1, "{pids:?}");
    let mut cp = Command::new("cp")
        .arg("-r")
        .arg(&study)
        .arg(&rig.mnt)
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // Some instances are in, the copy is not finished.
    eventually("the first instances to be ingested", || {
        rig.log().matches("added as").count() >= 20
    });
    // SAFETY: sending a signal to the daemon we started.
    assert_eq!(unsafe { libc::kill(pids[0] as i32, sig) }, 0);
    let status = cp.wait().unwrap();
    wait_daemon_gone(&rig.mnt);
    assert!(daemons(&rig.mnt).is_empty(), "the daemon did not exit");
    assert!(!is_mounted(&rig.mnt));
    drop(m);
    let n = referenced(&rig.src).len();
    assert!(n >= 20, "{n} instances referenced");
    assert!(
        n < 300 || status.success(),
        "the copy was not interrupted ({n} instances)"
    );
    assert!(rig.log().contains("unmounting"), "{}", rig.log());
    assert_clean_medium(&rig.src);
}

#[test]
fn sigterm_during_a_copy_leaves_a_consistent_medium() {
    signal_during_a_copy(libc::SIGTERM, "sigterm");
}

#[test]
fn sigint_during_a_copy_leaves_a_consistent_medium() {
    signal_during_a_copy(libc::SIGINT, "sigint");
}

#[test]
fn a_busy_source_is_refused_by_a_second_mount_and_by_writing_commands() {
    let rig = Rig::new("lock", true);
    let mnt2 = rig.t.join("mnt2");
    std::fs::create_dir_all(&mnt2).unwrap();
    {
        let _m = Mount::new(&rig.src, &rig.mnt, &[]);
        let before = std::fs::read(rig.src.join("DICOMDIR")).unwrap();
        for args in [
            vec!["mount"],
            vec!["mount", "-o", "ro"],
            vec!["mount", "--foreground"],
        ] {
            let out = run(Command::new(bin()).args(&args).arg(&rig.src).arg(&mnt2));
            assert_eq!(out.status.code(), Some(1), "{args:?}: {}", text(&out));
            let err = String::from_utf8_lossy(&out.stderr);
            assert!(
                err.contains(&format!("already mounted on {}", rig.mnt.display())),
                "{args:?}: {err}"
            );
            assert!(!is_mounted(&mnt2));
        }
        for args in [vec!["rebuild"], vec!["check", "--repair"]] {
            let out = run(Command::new(bin()).args(&args).arg(&rig.src));
            assert_eq!(out.status.code(), Some(8), "{args:?}: {}", text(&out));
            assert!(
                String::from_utf8_lossy(&out.stderr).contains("already mounted on"),
                "{args:?}: {}",
                text(&out)
            );
        }
        assert_eq!(std::fs::read(rig.src.join("DICOMDIR")).unwrap(), before);
    }
    // Free again once unmounted.
    let _m = Mount::new(&rig.src, &mnt2, &[]);
}

// ---------------------------------------------------------------------------------------------
// Every -o option of the man page (the others are in the tests above)

#[test]
fn o_foreground_stays_attached_and_logs_to_stderr() {
    let rig = Rig::new("fg", true);
    let child = Command::new(bin())
        .args(["mount", "-o", "foreground"])
        .arg(&rig.src)
        .arg(&rig.mnt)
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    eventually("the foreground mount", || is_mounted(&rig.mnt));
    let study = rig.instances("study", 2, 55);
    ok(Command::new("cp").arg("-r").arg(&study).arg(&rig.mnt));
    ok(Command::new("umount").arg(&rig.mnt));
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("mounted on"), "{err}");
    assert_eq!(err.matches("added as").count(), 2, "{err}");
    assert!(
        !err.contains("fuser"),
        "library noise at the default level: {err}"
    );
    assert_clean_medium(&rig.src);
}

#[test]
fn o_profile_any_keeps_implicit_vr_and_info_names_what_breaks_each_profile() {
    need("dcmconv");
    let rig = Rig::new("profile", true);
    let study = rig.instances("study", 2, 56);
    let ivr = rig.scratch.join("ivr.dcm");
    ok(Command::new("dcmconv")
        .arg("+ti")
        .arg(study.join("im0000.dcm"))
        .arg(&ivr));
    // A profile that does not exist is a usage error.
    let out = run(Command::new(bin())
        .args(["mount", "-o", "profile=STD-GEN-FLOPPY"])
        .arg(&rig.src)
        .arg(&rig.mnt));
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    {
        let _m = Mount::new(&rig.src, &rig.mnt, &["-o", "profile=any"]);
        ok(Command::new("cp").arg(&ivr).arg(&rig.mnt));
        ok(Command::new("cp")
            .arg(study.join("im0001.dcm"))
            .arg(&rig.mnt));
    }
    let out = ok(Command::new(bin()).arg("info").arg(&rig.src));
    let info = String::from_utf8_lossy(&out.stdout).to_string();
    for want in [
        "Instances:          2",
        "Patients:           1",
        "Series:             1",
        "1.2.840.10008.1.2 ",
        "Implicit VR Little Endian (1 instances)",
        "Explicit VR Little Endian (1 instances)",
        "MR       1 series, 2 instances",
        "STD-GEN-CD         does not conform: not allowed by the profile: 1 instance(s) in Implicit VR Little Endian",
        "STD-GEN-USB-JPEG   does not conform",
        "host directory",
        "Free space:",
    ] {
        assert!(info.contains(want), "missing {want:?} in:\n{info}");
    }
    assert!(!info.contains(" conforms"), "{info}");
}

#[test]
fn o_partition_on_a_directory_is_refused_with_a_message() {
    let rig = Rig::new("partition", true);
    let out = run(Command::new(bin())
        .args(["mount", "-o", "partition=1"])
        .arg(&rig.src)
        .arg(&rig.mnt));
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("a partition was given"),
        "{}",
        text(&out)
    );
    let out = run(Command::new(bin())
        .args(["mount", "-o", "partition=x"])
        .arg(&rig.src)
        .arg(&rig.mnt));
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    let out = run(Command::new(bin())
        .args(["mount", "-o", "bogus"])
        .arg(&rig.src)
        .arg(&rig.mnt));
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(!is_mounted(&rig.mnt));
}

// ---------------------------------------------------------------------------------------------
// Logs, progress, info

#[test]
fn background_daemon_logs_one_syslog_line_per_instance_added_refused_or_deleted() {
    let rig = Rig::new("syslog", true);
    let sock_path = rig.t.join("log.sock");
    let sock = std::os::unix::net::UnixDatagram::bind(&sock_path).unwrap();
    sock.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let study = rig.instances("study", 2, 57);
    std::fs::write(rig.scratch.join("notdicom.dcm"), vec![7u8; 300]).unwrap();
    std::fs::create_dir_all(&rig.mnt).unwrap();
    let out = Command::new(bin())
        .arg("mount")
        .arg(&rig.src)
        .arg(&rig.mnt)
        .env("DICOMFS_SYSLOG_SOCKET", &sock_path)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let m = Mount {
        mnt: rig.mnt.clone(),
    };
    ok(Command::new("cp").arg("-r").arg(&study).arg(&rig.mnt));
    assert!(!run(Command::new("cp")
        .arg(rig.scratch.join("notdicom.dcm"))
        .arg(&rig.mnt))
    .status
    .success());
    std::fs::remove_file(rig.mnt.join(&referenced(&rig.mnt)[0])).unwrap();
    drop(m);
    let mut lines = Vec::new();
    let mut buf = vec![0u8; 8192];
    while let Ok(n) = sock.recv(&mut buf) {
        lines.push(String::from_utf8_lossy(&buf[..n]).to_string());
    }
    let count = |needle: &str| lines.iter().filter(|l| l.contains(needle)).count();
    assert_eq!(count("added as"), 2, "{lines:#?}");
    assert_eq!(count("notdicom.dcm"), 1, "{lines:#?}");
    assert_eq!(count(": deleted"), 1, "{lines:#?}");
    for l in &lines {
        assert!(l.starts_with('<') && l.contains(">dicomfs["), "{l}");
    }
    let refusal = lines.iter().find(|l| l.contains("notdicom.dcm")).unwrap();
    assert!(
        refusal.starts_with("<28>") && refusal.contains("WARN"),
        "{refusal}"
    );
    let added = lines.iter().find(|l| l.contains("added as")).unwrap();
    assert!(added.starts_with("<30>"), "{added}");
}

/// Run a command on a pseudo-terminal (script(1)); its output as the terminal saw it.
fn on_a_tty(cmd: &str) -> String {
    need("script");
    let out = ok(Command::new("script")
        .args(["-qec", cmd, "/dev/null"])
        .env("COLUMNS", "100"));
    String::from_utf8_lossy(&out.stdout).to_string()
}

#[test]
fn check_rebuild_and_info_show_progress_on_a_terminal_and_stay_quiet_otherwise() {
    let rig = Rig::new("progress", false);
    ok(Command::new(bin())
        .args(["demo", "--patients", "3", "--instances", "10"])
        .arg(&rig.src));
    let src = rig.src.display().to_string();
    for (sub, what) in [
        ("check", "checking"),
        ("info", "checking"),
        ("rebuild", "rebuilding"),
    ] {
        let tty = on_a_tty(&format!("{} {sub} {src}", bin()));
        assert!(
            tty.contains(&format!("\r{what} {src}")),
            "{sub}: no progress bar on a terminal:\n{tty:?}"
        );
        assert!(tty.contains("/s"), "{sub}: no rate:\n{tty:?}");
        let out = ok(Command::new(bin()).arg(sub).arg(&rig.src));
        assert!(
            !String::from_utf8_lossy(&out.stderr).contains('\r')
                && !String::from_utf8_lossy(&out.stdout).contains('\r'),
            "{sub}: progress when not a terminal: {}",
            text(&out)
        );
    }
    // The bar has a count, a rate and the time left.
    let tty = on_a_tty(&format!("{} check {src}", bin()));
    assert!(tty.contains("records") && tty.contains("/s"), "{tty:?}");
    assert_clean_medium(&rig.src);
}

#[test]
fn info_of_a_demo_fileset() {
    let rig = Rig::new("info", false);
    ok(Command::new(bin())
        .args([
            "demo",
            "--patients",
            "2",
            "--studies",
            "1",
            "--series",
            "1",
            "--instances",
            "3",
        ])
        .arg(&rig.src));
    let out = ok(Command::new(bin()).arg("info").arg(&rig.src));
    let info = String::from_utf8_lossy(&out.stdout).to_string();
    for want in [
        "File-set ID:        DICOMFS_DEMO",
        "File-set UID:       2.25.",
        "Patients:           2",
        "Studies:            2",
        "Instances:          10",
        "CT       1 series, 3 instances",
        "1.2.840.10008.1.2.1      Explicit VR Little Endian (10 instances)",
        "STD-GEN-CD         conforms",
        "STD-GEN-USB-J2K    conforms",
    ] {
        assert!(info.contains(want), "missing {want:?} in:\n{info}");
    }
    // Not a File-set: exit 8.
    let out = run(Command::new(bin()).arg("info").arg(&rig.scratch));
    assert_eq!(out.status.code(), Some(8), "{}", text(&out));
}

// ---------------------------------------------------------------------------------------------
// Rows of SEMANTICS.md not covered by tests/write.rs

fn errno_of(r: std::io::Result<impl Sized>) -> i32 {
    r.err().and_then(|e| e.raw_os_error()).unwrap_or(0)
}

#[test]
fn semantics_rename_truncate_chmod_utimes_fsync_of_native_files() {
    let rig = Rig::new("sem-native", true);
    let study = rig.instances("study", 2, 58);
    let _m = Mount::new(&rig.src, &rig.mnt, &[]);
    ok(Command::new("cp").arg("-r").arg(&study).arg(&rig.mnt));
    let fid = referenced(&rig.mnt)[0].clone();
    let inst = rig.mnt.join(&fid);
    let top = rig.mnt.join(fid.split('/').next().unwrap());
    // rename of a native file or directory: EPERM.
    assert_eq!(
        errno_of(std::fs::rename(&inst, rig.mnt.join("X"))),
        libc::EPERM
    );
    assert_eq!(
        errno_of(std::fs::rename(&top, rig.mnt.join("Y"))),
        libc::EPERM
    );
    // truncate of an instance: EPERM.
    let c = cpath(&inst);
    // SAFETY: c is a valid path.
    assert_eq!(unsafe { libc::truncate(c.as_ptr(), 0) }, -1);
    assert_eq!(
        std::io::Error::last_os_error().raw_os_error(),
        Some(libc::EPERM)
    );
    // chmod, chown, utimes of native files and directories: accepted and ignored.
    ok(Command::new("chmod").arg("600").arg(&inst));
    ok(Command::new("chown").arg("0:0").arg(&top));
    ok(Command::new("touch").arg("-d").arg("2001-01-01").arg(&top));
    // fsync and fsyncdir succeed.
    std::fs::File::open(&inst).unwrap().sync_all().unwrap();
    std::fs::File::open(&top).unwrap().sync_all().unwrap();
    assert_eq!(
        std::fs::read(&inst).unwrap(),
        std::fs::read(rig.src.join(&fid)).unwrap()
    );
}

#[test]
fn semantics_unlink_of_a_native_file_no_record_references_removes_it() {
    let rig = Rig::new("sem-unref", true);
    // Files another program left on the medium: not referenced by the DICOMDIR.
    std::fs::write(rig.src.join("README.TXT"), b"burned by some viewer").unwrap();
    std::fs::create_dir(rig.src.join("VIEWER")).unwrap();
    std::fs::write(rig.src.join("VIEWER/RUN.EXE"), b"MZ").unwrap();
    let before = std::fs::read(rig.src.join("DICOMDIR")).unwrap();
    {
        let _m = Mount::new(&rig.src, &rig.mnt, &[]);
        std::fs::remove_file(rig.mnt.join("README.TXT")).expect("unlink README.TXT");
        std::fs::remove_file(rig.mnt.join("VIEWER/RUN.EXE")).expect("unlink VIEWER/RUN.EXE");
        std::fs::remove_dir(rig.mnt.join("VIEWER")).expect("rmdir VIEWER");
        assert!(!rig.mnt.join("README.TXT").exists());
    }
    assert!(
        !rig.src.join("README.TXT").exists(),
        "removed from the medium"
    );
    assert!(!rig.src.join("VIEWER").exists(), "removed from the medium");
    assert_eq!(
        std::fs::read(rig.src.join("DICOMDIR")).unwrap(),
        before,
        "the DICOMDIR is untouched"
    );
}

#[test]
fn semantics_copy_onto_a_ghost_copies_the_name_in_again() {
    let rig = Rig::new("sem-ghost-trunc", true);
    let study = rig.instances("study", 2, 61);
    let _m = Mount::new(&rig.src, &rig.mnt, &[]);
    let ghost = rig.mnt.join("a.dcm");
    std::fs::copy(study.join("im0000.dcm"), &ghost).unwrap();
    // open(O_WRONLY|O_TRUNC) of the ghost: the same bytes again change nothing...
    std::fs::copy(study.join("im0000.dcm"), &ghost).expect("the same instance onto its ghost");
    assert_eq!(referenced(&rig.mnt).len(), 1);
    // ...another instance under the same name is copied in as a new one.
    std::fs::copy(study.join("im0001.dcm"), &ghost).expect("another instance onto the ghost");
    assert_eq!(referenced(&rig.mnt).len(), 2);
}

#[test]
fn semantics_ghosts_copy_in_folders_and_native_directories() {
    let rig = Rig::new("sem-ghost", true);
    let study = rig.instances("study", 3, 59);
    let _m = Mount::new(&rig.src, &rig.mnt, &[]);
    // A ghost: utimes kept, unlink removes the name only.
    let ghost = rig.mnt.join("a.dcm");
    std::fs::copy(study.join("im0000.dcm"), &ghost).unwrap();
    assert!(!std::fs::read_dir(&rig.mnt)
        .unwrap()
        .any(|e| e.unwrap().file_name() == "a.dcm"));
    ok(Command::new("touch")
        .arg("-d")
        .arg("2001-02-03")
        .arg(&ghost));
    let mtime = std::fs::metadata(&ghost).unwrap().modified().unwrap();
    assert_eq!(
        mtime,
        std::time::UNIX_EPOCH + Duration::from_secs(981158400),
        "utimes of a ghost is kept"
    );
    assert_eq!(referenced(&rig.mnt).len(), 1);
    std::fs::remove_file(&ghost).unwrap();
    assert_eq!(
        referenced(&rig.mnt).len(),
        1,
        "unlink of a ghost kept the instance"
    );
    // A copy-in folder: mkdir, rename, rmdir with its ghosts.
    let f = rig.mnt.join("Folder 1");
    std::fs::create_dir(&f).unwrap();
    std::fs::copy(study.join("im0001.dcm"), f.join("b.dcm")).unwrap();
    std::fs::rename(&f, rig.mnt.join("Folder 2")).unwrap();
    std::fs::remove_dir(rig.mnt.join("Folder 2")).unwrap();
    assert_eq!(referenced(&rig.mnt).len(), 2);
    // A File ID name made with mkdir in the root is a directory on the medium.
    std::fs::create_dir(rig.mnt.join("CD1")).unwrap();
    std::fs::copy(study.join("im0002.dcm"), rig.mnt.join("CD1/IMG1")).unwrap();
    assert!(referenced(&rig.mnt).contains(&"CD1/IMG1".to_string()));
    // rmdir of a native directory that is not empty: ENOTEMPTY; a non-File-ID name in it:
    // EINVAL.
    assert_eq!(
        errno_of(std::fs::remove_dir(rig.mnt.join("CD1"))),
        libc::ENOTEMPTY
    );
    let fid = referenced(&rig.mnt)[0].clone();
    let native = rig.mnt.join(fid.split('/').next().unwrap());
    assert_eq!(
        errno_of(std::fs::create_dir(native.join("not a file id"))),
        libc::EINVAL
    );
    // rmdir of an alternate directory succeeds once its last instance is deleted: see
    // tests/write.rs rm_in_native_and_dcm_views_deletes_files_records_and_empty_levels.
}

#[test]
fn o_fstab_only_and_generic_mount_flags_are_accepted_and_reach_mount2() {
    let rig = Rig::new("flags", true);
    let opts = [
        (
            "defaults,auto,nouser,owner,group,x-systemd.automount,comment=x,suid,dev,exec,noexec,noatime,nodiratime,sync,dirsync,lazytime",
            &["noexec", "noatime", "nodiratime", "sync", "dirsync", "lazytime"][..],
            &["nosuid", "nodev"][..],
        ),
        (
            "nosuid,nodev,exec,atime,relatime,strictatime,diratime,async,nolazytime",
            &["nosuid", "nodev"][..],
            &["noexec", "noatime", "relatime", "nodiratime", "sync", "lazytime"][..],
        ),
    ];
    for (o, want, not) in opts {
        let _m = Mount::new(&rig.src, &rig.mnt, &["-o", o]);
        let line = mountinfo(&rig.mnt).expect("not mounted");
        let flags: Vec<&str> = line
            .split(' ')
            .enumerate()
            .filter(|(i, _)| *i == 5)
            .flat_map(|(_, f)| f.split(','))
            .chain(line.rsplit(' ').next().unwrap_or("").split(','))
            .collect();
        for w in want {
            assert!(flags.contains(w), "{o}: {w} missing in {line}");
        }
        for n in not {
            assert!(!flags.contains(n), "{o}: {n} set in {line}");
        }
    }
}
