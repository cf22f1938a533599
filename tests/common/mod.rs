//! Helpers for tests that really mount: temporary directories, a mount guard that always
//! unmounts, and the external oracles.
#![allow(dead_code)]

pub mod fat;

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_dicomfs")
}

/// A fresh directory under the system temp dir, removed when dropped.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(name: &str) -> TempDir {
        // A counter too: tests starting on parallel threads can read the same clock value.
        static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let k = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let d = std::env::temp_dir().join(format!(
            "dicomfs-it-{name}-{}-{k}-{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos()
        ));
        std::fs::create_dir_all(&d).unwrap();
        TempDir(d)
    }
    pub fn path(&self) -> &Path {
        &self.0
    }
    pub fn join(&self, p: &str) -> PathBuf {
        self.0.join(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A live mount; unmounted when dropped, even when the test panics.
pub struct Mount {
    pub mnt: PathBuf,
}

impl Mount {
    /// `dicomfs mount ARGS... SRC MNT`; panics with the daemon's message if it fails.
    pub fn new(src: &Path, mnt: &Path, args: &[&str]) -> Mount {
        std::fs::create_dir_all(mnt).unwrap();
        let out = Command::new(bin())
            .arg("mount")
            .args(args)
            .arg(src)
            .arg(mnt)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "mount failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let m = Mount {
            mnt: mnt.to_path_buf(),
        };
        assert!(
            is_mounted(mnt),
            "mount returned but {} is not mounted",
            mnt.display()
        );
        m
    }
    pub fn path(&self) -> &Path {
        &self.mnt
    }
    pub fn join(&self, p: &str) -> PathBuf {
        self.mnt.join(p)
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        let ok = Command::new("umount")
            .arg(&self.mnt)
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        if !ok {
            let _ = Command::new("umount").arg("-l").arg(&self.mnt).status();
        }
        // umount returns before the daemon has finished (written pending deletes, removed its
        // staging directory): wait for it to exit, so the medium is final.
        wait_daemon_gone(&self.mnt);
    }
}

/// Wait (up to 20 s) until no `dicomfs mount ... MNT` process is left.
pub fn wait_daemon_gone(mnt: &Path) {
    let want = mnt.to_string_lossy().to_string();
    let alive = || {
        std::fs::read_dir("/proc")
            .map(|d| {
                d.flatten().any(|e| {
                    std::fs::read(e.path().join("cmdline"))
                        .map(|c| {
                            let args: Vec<String> = c
                                .split(|&b| b == 0)
                                .map(|a| String::from_utf8_lossy(a).to_string())
                                .collect();
                            args.iter().any(|a| a == "mount")
                                && args.last().is_some_and(|a| a.is_empty())
                                && args.iter().rev().nth(1).is_some_and(|a| *a == want)
                        })
                        .unwrap_or(false)
                })
            })
            .unwrap_or(false)
    };
    for _ in 0..400 {
        if !alive() {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

pub fn is_mounted(mnt: &Path) -> bool {
    let mnt = std::fs::canonicalize(mnt).unwrap_or(mnt.to_path_buf());
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .any(|l| l.split(' ').nth(4) == Some(mnt.to_str().unwrap()))
}

/// Panic unless an external tool is installed (scripts/test.sh installs them all).
pub fn need(tool: &str) {
    let found = Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {tool}"))
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    assert!(
        found,
        "{tool} is not installed: run scripts/test.sh, which installs the oracles"
    );
}

pub fn oracles_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/oracles")
}

/// Run ../shared/oracles/check_fileset.sh on DIR; returns (passed, output).
pub fn check_fileset(dir: &Path) -> (bool, String) {
    for t in ["dcmdump", "dciodvfy", "dcmftest", "dcmmkdir", "python3"] {
        need(t);
    }
    let out = Command::new("bash")
        .arg(oracles_dir().join("check_fileset.sh"))
        .arg(dir)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

pub fn assert_oracles_pass(dir: &Path) {
    let (ok, text) = check_fileset(dir);
    assert!(ok, "oracles failed on {}:\n{text}", dir.display());
    assert!(text.contains("dciodvfy: 0 errors"), "{text}");
    assert!(text.contains("pydicom FileSet: RESULT: OK"), "{text}");
}

pub fn run(cmd: &mut Command) -> Output {
    cmd.output().unwrap()
}

/// A command's exit status and output, for assertion messages.
pub fn text(o: &Output) -> String {
    format!(
        "status {:?}\nstdout: {}\nstderr: {}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// Run a command and insist that it exits 0.
pub fn ok(cmd: &mut Command) -> Output {
    let out = run(cmd);
    assert!(out.status.success(), "{cmd:?} failed: {}", text(&out));
    out
}

/// `diff -r A B` is empty.
pub fn assert_same_tree(a: &Path, b: &Path) {
    assert_same_tree_except(a, b, &[]);
}

/// `diff -r -x X... A B` is empty.
pub fn assert_same_tree_except(a: &Path, b: &Path, except: &[&str]) {
    let mut cmd = Command::new("diff");
    cmd.arg("-r");
    for x in except {
        cmd.arg("-x").arg(x);
    }
    let out = run(cmd.arg(a).arg(b));
    assert!(
        out.status.success(),
        "diff -r {} {}:\n{}{}",
        a.display(),
        b.display(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Every regular file below a directory.
pub fn files_below(d: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![d.to_path_buf()];
    while let Some(p) = stack.pop() {
        for e in std::fs::read_dir(&p).unwrap() {
            let e = e.unwrap();
            if e.file_type().unwrap().is_dir() {
                stack.push(e.path());
            } else {
                out.push(e.path());
            }
        }
    }
    out.sort();
    out
}

/// Where pydicom keeps its sample File-set.
pub fn pydicom_fileset() -> PathBuf {
    need("python3");
    let out = run(Command::new("python3").arg("-c").arg(
        "import pydicom, os; print(os.path.join(os.path.dirname(pydicom.__file__), 'data', 'test_files', 'dicomdirtests'))",
    ));
    assert!(
        out.status.success(),
        "pydicom is not installed: run scripts/test.sh"
    );
    PathBuf::from(String::from_utf8_lossy(&out.stdout).trim())
}

pub fn copy_tree(a: &Path, b: &Path) {
    let st = run(Command::new("cp")
        .arg("-a")
        .arg(format!("{}/.", a.display()))
        .arg(b));
    assert!(st.status.success());
}

/// The errno of the last failed libc call.
pub fn last_errno() -> i32 {
    std::io::Error::last_os_error().raw_os_error().unwrap()
}

/// A path as a C string.
pub fn cpath(p: &Path) -> CString {
    CString::new(p.as_os_str().as_bytes()).unwrap()
}

/// open(O_CREAT|O_TRUNC) + write + close with raw syscalls, so an error returned by close()
/// is seen (std's File ignores it). Err((which call, errno)).
pub fn write_close(path: &Path, data: &[u8]) -> Result<(), (&'static str, i32)> {
    let c = cpath(path);
    // SAFETY: c is a valid NUL-terminated path.
    let fd = unsafe {
        libc::open(
            c.as_ptr(),
            libc::O_WRONLY | libc::O_CREAT | libc::O_TRUNC | libc::O_CLOEXEC,
            0o644,
        )
    };
    if fd < 0 {
        return Err(("open", last_errno()));
    }
    let mut off = 0;
    while off < data.len() {
        let n = (data.len() - off).min(64 * 1024);
        // SAFETY: the buffer holds at least n bytes from off; fd is open.
        let w = unsafe { libc::write(fd, data[off..].as_ptr().cast(), n) };
        if w < 0 {
            let e = last_errno();
            // SAFETY: fd is open and ours.
            unsafe { libc::close(fd) };
            return Err(("write", e));
        }
        off += w as usize;
    }
    // SAFETY: fd is open and ours.
    if unsafe { libc::close(fd) } != 0 {
        return Err(("close", last_errno()));
    }
    Ok(())
}
