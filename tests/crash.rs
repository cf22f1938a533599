//! Crash safety of the File-set Updater: kill -9 the daemon while a program copies instances in,
//! then remount (which repairs) or run `dicomfs check --repair`, and check the invariant of
//! notes/semantics.md after every crash:
//!
//! (a) every instance whose close() returned 0, in any round, is referenced by the DICOMDIR and
//!     its stored bytes are the source bytes (nothing referenced is foreign or referenced twice,
//!     and no file is left that nothing references);
//! (b) every referenced file exists and is the instance its record names (`dicomfs check`);
//! (c) the File-set Consistency Flag is 0000H and DICOMFS.TMP is gone after a clean unmount;
//! (d) the external oracles pass (every few rounds and after the last).
//!
//! One File-set takes all the rounds of a test, so the DICOMDIR grows and old content must
//! survive every crash. Rounds copy new variants of 500 small instances (same patients,
//! studies and series, new SOP Instance UIDs) so that crashes land in real ingests; the copies a
//! crash interrupted are retried in the next round, and a few instances already stored are
//! copied again (the same-bytes path). Rounds alternate the three places a copy can go: the
//! mount root, a folder made by mkdir, a folder whose names become the File IDs.
//!
//! Two tests: the acceptance test kills after a random delay (0-1500 ms, or at a random file
//! count if the copy is quicker) during a 500-file copy, 20 times; the second runs the daemon
//! under strace, which delivers SIGKILL on entry to a random pwrite64, so the kills land inside
//! an ingest (after the rename, between the append and each offset patch), which random timing
//! rarely hits. It is skipped, with a message, where strace is not installed. A third test
//! kills the same way inside in-place deletes (`rm`): each must be whole or undone after repair.
//!
//! The seed is printed; rerun a failure with `DICOMFS_CRASH_SEED=N`. On failure the File-set and
//! the daemons' logs are kept under /tmp (the path is in the message).

mod common;

use common::*;
use dicomfs::dicom::tags;
use dicomfs::dicomdir::DicomDir;
use dicomfs::synth;
use std::collections::{HashMap, HashSet};
use std::io::Write;
use std::os::fd::IntoRawFd;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The acceptance test: 20 kills during a 500-file copy, after 0-1500 ms.
const ROUNDS: usize = 20;
const FILES: usize = 500;
const MAX_DELAY_MS: u64 = 1500;
/// The strace test: kills at a random pwrite64 (1..=MAX_WRITE of a thread) during a shorter copy.
const WRITE_ROUNDS: usize = 16;
const WRITE_FILES: usize = 60;
const MAX_WRITE: u64 = 40;
/// Instances already stored that each round copies again (they must succeed, changing nothing).
const AGAIN: usize = 10;
const STAGING: &str = dicomfs::fsu::STAGING;

/// xorshift64*: small, seeded, good enough to pick delays and orders.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        Rng(seed.max(1))
    }
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: u64) -> u64 {
        if n == 0 {
            0
        } else {
            self.next() % n
        }
    }
    fn shuffle<T>(&mut self, v: &mut [T]) {
        for i in (1..v.len()).rev() {
            let j = self.below(i as u64 + 1) as usize;
            v.swap(i, j);
        }
    }
}

/// `dicomfs mount -f SRC MNT` as a child process (optionally under strace), its stderr in a log
/// file. Dropping it kills the daemon (if it still runs) and detaches the mount, so a panicking
/// test never leaves a mount behind.
struct Daemon {
    child: Option<Child>,
    /// The child is strace; the daemon is its child.
    traced: bool,
    mnt: PathBuf,
    log: PathBuf,
}

impl Daemon {
    /// Mount; with `kill_at = Some((n, trace))`, under strace, which kills the daemon (SIGKILL on
    /// entry) at its n-th pwrite64 (counted per thread) and logs its writes to `trace`.
    fn start(src: &Path, mnt: &Path, log: &Path, kill_at: Option<(u64, &Path)>) -> Daemon {
        assert!(!is_mounted(mnt), "{} is already mounted", mnt.display());
        let f = std::fs::File::create(log).unwrap();
        let mut cmd = match kill_at {
            None => Command::new(bin()),
            Some((n, trace)) => {
                let mut c = Command::new("strace");
                c.arg("-f")
                    .arg("-qq")
                    .arg("-o")
                    .arg(trace)
                    .arg("-e")
                    .arg("trace=pwrite64,rename,renameat,renameat2,mkdir,mkdirat,unlink,unlinkat")
                    .arg("-e")
                    .arg(format!("inject=pwrite64:signal=SIGKILL:when={n}"))
                    .arg("--")
                    .arg(bin());
                c
            }
        };
        let child = cmd
            .arg("mount")
            .arg("-f")
            .arg(src)
            .arg(mnt)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(f.try_clone().unwrap())
            .stderr(f)
            .spawn()
            .unwrap();
        let mut d = Daemon {
            child: Some(child),
            traced: kill_at.is_some(),
            mnt: mnt.to_path_buf(),
            log: log.to_path_buf(),
        };
        let t = Instant::now();
        while !is_mounted(mnt) {
            if let Some(st) = d.child.as_mut().unwrap().try_wait().unwrap() {
                d.child = None;
                panic!(
                    "dicomfs mount -f exited ({st}) before mounting:\n{}",
                    tail(log, 40)
                );
            }
            assert!(
                t.elapsed() < Duration::from_secs(60),
                "not mounted after 60 s:\n{}",
                tail(log, 40)
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        d
    }

    /// The daemon's pid (under strace: strace's child), if it still runs.
    fn daemon_pid(&mut self) -> Option<i32> {
        let c = self.child.as_mut()?;
        if c.try_wait().unwrap().is_some() {
            return None;
        }
        let pid = c.id() as i32;
        if !self.traced {
            return Some(pid);
        }
        children_of(pid).first().copied()
    }

    /// Has the daemon died (killed by strace's injection)?
    fn died(&mut self) -> bool {
        match self.child.as_mut() {
            None => true,
            Some(c) => c.try_wait().unwrap().is_some(),
        }
    }

    /// kill -9 (unless it already died), reap, then detach the dead mount. Returns whether
    /// this call did the killing.
    fn kill9(&mut self) -> bool {
        let mut killed_here = false;
        if let Some(pid) = self.daemon_pid() {
            // SAFETY: plain kill(2) of a process we started.
            unsafe { libc::kill(pid, libc::SIGKILL) };
            killed_here = true;
        }
        let mut c = self.child.take().unwrap();
        let st = c.wait().unwrap();
        // strace ends the way its tracee did: killed by SIGKILL (or exit status 137).
        let sig = std::os::unix::process::ExitStatusExt::signal(&st);
        assert!(
            sig == Some(libc::SIGKILL) || st.code() == Some(128 + libc::SIGKILL),
            "the daemon ended otherwise: {st}\n{}",
            tail(&self.log, 20)
        );
        lazy_unmount(&self.mnt);
        killed_here
    }

    /// A clean unmount (umount MNT, which ends the session); waits for the daemon to exit.
    fn stop(&mut self) -> ExitStatus {
        let mut c = self.child.take().unwrap();
        let mut ok = false;
        for _ in 0..100 {
            let out = run(Command::new("umount").arg(&self.mnt));
            if out.status.success() {
                ok = true;
                break;
            }
            if !is_mounted(&self.mnt) {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        assert!(ok, "umount {} failed", self.mnt.display());
        let t = Instant::now();
        loop {
            if let Some(st) = c.try_wait().unwrap() {
                return st;
            }
            if t.elapsed() > Duration::from_secs(60) {
                let _ = c.kill();
                let _ = c.wait();
                panic!(
                    "the daemon did not exit within 60 s of umount:\n{}",
                    tail(&self.log, 40)
                );
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(pid) = self.daemon_pid() {
            // SAFETY: plain kill(2) of a process we started.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        if is_mounted(&self.mnt) {
            lazy_unmount(&self.mnt);
        }
    }
}

/// The pids whose parent is `pid`.
fn children_of(pid: i32) -> Vec<i32> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Some(p) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{p}/stat")) else {
            continue;
        };
        // pid (comm) state ppid ...: comm may hold spaces, so split after the last ')'.
        let ppid = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().nth(1))
            .and_then(|s| s.parse::<i32>().ok());
        if ppid == Some(pid) {
            out.push(p);
        }
    }
    out
}

fn lazy_unmount(mnt: &Path) {
    for _ in 0..100 {
        if !is_mounted(mnt) {
            return;
        }
        let ok = run(Command::new("umount").arg("-l").arg(mnt))
            .status
            .success();
        if !ok {
            let _ = run(Command::new("fusermount3").arg("-u").arg("-z").arg(mnt));
        }
        if !is_mounted(mnt) {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("{} is still mounted", mnt.display());
}

/// The last `n` lines of a log file.
fn tail(p: &Path, n: usize) -> String {
    let s = std::fs::read_to_string(p).unwrap_or_default();
    let lines: Vec<&str> = s.lines().collect();
    let k = lines.len().saturating_sub(n);
    format!(
        "--- {} (last {n} lines)\n{}",
        p.display(),
        lines[k..].join("\n")
    )
}

/// What became of one file the copier tried.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Outcome {
    /// close() returned 0.
    Acked,
    /// A step failed with this errno (`before_kill`: the daemon was still alive).
    Failed {
        step: &'static str,
        errno: i32,
        before_kill: bool,
    },
}

/// One file to copy: the instance's number (index into the sources) and its path in the mount.
struct Job {
    gid: usize,
    rel: String,
}

/// What the copier did: the outcome per file tried, and a failed mkdir of the target folder.
type Copied = (Vec<(usize, Outcome)>, Option<(String, Outcome)>);

/// Copy files one by one (create, write_all, close), recording close()'s result; stop at the
/// first failure (after the kill, everything fails with ENOTCONN or ECONNABORTED).
fn copier(
    mnt: PathBuf,
    mkdir: Option<String>,
    jobs: Vec<Job>,
    bytes: Arc<Vec<Vec<u8>>>,
    killed: Arc<AtomicBool>,
    done: Arc<AtomicUsize>,
) -> Copied {
    let fail = |step, e: std::io::Error| Outcome::Failed {
        step,
        errno: e.raw_os_error().unwrap_or(-1),
        before_kill: !killed.load(Ordering::SeqCst),
    };
    let mut out = Vec::new();
    if let Some(d) = &mkdir {
        if let Err(e) = std::fs::create_dir(mnt.join(d)) {
            let msg = format!("mkdir {d}: {e}");
            return (out, Some((msg, fail("mkdir", e))));
        }
    }
    for j in jobs {
        let p = mnt.join(&j.rel);
        let f = match std::fs::File::create(&p) {
            Ok(f) => f,
            Err(e) => {
                out.push((j.gid, fail("create", e)));
                break;
            }
        };
        if let Err(e) = (&f).write_all(&bytes[j.gid]) {
            out.push((j.gid, fail("write", e)));
            // Close it anyway (its result does not matter any more).
            drop(f);
            break;
        }
        let fd = f.into_raw_fd();
        // SAFETY: fd is ours, from into_raw_fd, closed once.
        let rc = unsafe { libc::close(fd) };
        if rc != 0 {
            out.push((j.gid, fail("close", std::io::Error::last_os_error())));
            break;
        }
        out.push((j.gid, Outcome::Acked));
        done.fetch_add(1, Ordering::SeqCst);
    }
    (out, None)
}

/// What the checks found besides failures (for the round's line).
#[derive(Debug, Default)]
struct Found {
    referenced: usize,
    empty_dirs: usize,
}

fn trim(s: &str) -> &str {
    s.trim_end_matches(['\0', ' ']).trim_start()
}

/// The crash-safety invariant on the backing directory of a File-set that is not mounted.
/// `acked`: instances (by number) whose close() returned 0; `sop`: number -> SOP Instance UID;
/// `bytes`: number -> source bytes. Returns every violation found, not just the first.
fn check_invariant(
    src: &Path,
    acked: &HashSet<usize>,
    sop: &[String],
    bytes: &[Vec<u8>],
) -> Result<Found, (String, Vec<usize>)> {
    let mut bad: Vec<String> = Vec::new();
    let mut found = Found::default();
    let by_sop: HashMap<&str, usize> = sop.iter().enumerate().map(|(i, s)| (&**s, i)).collect();
    let dd = match std::fs::read(src.join("DICOMDIR")) {
        Ok(b) => b,
        Err(e) => return Err((format!("DICOMDIR: {e}"), Vec::new())),
    };
    let d = match DicomDir::parse(&dd) {
        Ok(d) => d,
        Err(e) => return Err((format!("DICOMDIR does not parse: {e}"), Vec::new())),
    };
    for f in d.errors() {
        bad.push(format!("DICOMDIR finding: {}", f.message));
    }
    // (c)
    if d.consistency_flag != 0 {
        bad.push(format!(
            "(c) File-set Consistency Flag is {:04X}H",
            d.consistency_flag
        ));
    }
    if src.join(STAGING).exists() {
        bad.push(format!(
            "(c) {STAGING} is still there: {:?}",
            std::fs::read_dir(src.join(STAGING))
                .map(|r| r.filter_map(|e| e.ok()).map(|e| e.file_name()).collect())
                .unwrap_or_else(|_| Vec::new())
        ));
    }
    // (a)/(b) every referenced file: exists, is one of ours, its bytes; once each.
    let mut refs: HashMap<String, String> = HashMap::new();
    let mut ref_paths: HashSet<PathBuf> = HashSet::new();
    for i in d.visible() {
        let r = &d.records[i as usize];
        let Some(fid) = r.file_id.as_deref() else {
            continue;
        };
        found.referenced += 1;
        let p = src.join(fid.replace('\\', "/"));
        if !ref_paths.insert(p.clone()) {
            bad.push(format!("(b) {fid} is referenced by two records"));
        }
        let Some(s) = r.key(tags::REFERENCED_SOP_INSTANCE).map(trim) else {
            bad.push(format!("(b) the record of {fid} has no SOP Instance UID"));
            continue;
        };
        if let Some(other) = refs.insert(s.to_string(), fid.to_string()) {
            bad.push(format!(
                "(a) SOP Instance UID {s} is referenced twice: {other} and {fid}"
            ));
        }
        let Some(&g) = by_sop.get(s) else {
            bad.push(format!(
                "(a) {fid}: SOP Instance UID {s} was never copied in"
            ));
            continue;
        };
        match std::fs::read(&p) {
            Ok(b) if b == bytes[g] => {}
            Ok(b) => bad.push(format!(
                "(a) {fid} (instance #{g}, {}): {} bytes stored, not the {} source bytes{}",
                if acked.contains(&g) {
                    "acknowledged"
                } else {
                    "not acknowledged"
                },
                b.len(),
                bytes[g].len(),
                if b.len() < bytes[g].len() && bytes[g].starts_with(&b) {
                    " (a prefix: a partial copy)"
                } else {
                    ""
                }
            )),
            Err(e) => bad.push(format!("(b) {fid} (instance #{g}) is referenced but: {e}")),
        }
    }
    // (a) every acknowledged copy is referenced.
    let mut missing: Vec<usize> = acked
        .iter()
        .copied()
        .filter(|&g| !refs.contains_key(&sop[g]))
        .collect();
    missing.sort();
    for &g in &missing {
        bad.push(format!(
            "(a) instance #{g} (SOP Instance UID {}): close() returned 0 but the DICOMDIR does not reference it",
            sop[g]
        ));
    }
    // Files nothing references (a crash must not leak space either).
    let mut stack = vec![src.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let mut n = 0;
        for e in std::fs::read_dir(&dir).unwrap() {
            let e = e.unwrap();
            n += 1;
            let p = e.path();
            if e.file_type().unwrap().is_dir() {
                stack.push(p);
            } else if p != src.join("DICOMDIR") && !ref_paths.contains(&p) {
                bad.push(format!(
                    "a file nothing references: {}",
                    p.strip_prefix(src).unwrap().display()
                ));
            }
        }
        if n == 0 {
            found.empty_dirs += 1;
        }
    }
    // (b) dicomfs check: the DICOMDIR and every referenced file, exit 0.
    let out = run(Command::new(bin()).arg("check").arg(src));
    if !out.status.success() {
        bad.push(format!(
            "(b) dicomfs check exited {}:\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    if bad.is_empty() {
        Ok(found)
    } else {
        let n = bad.len();
        bad.truncate(40);
        Err((
            format!("{n} violation(s):\n  {}", bad.join("\n  ")),
            missing,
        ))
    }
}

/// The kinds of the repair report lines in a log (the lines after `marker`).
fn repair_kinds(log: &str, marker: &str) -> Vec<&'static str> {
    const KINDS: [(&str, &str); 7] = [
        ("after the record sequence", "trailing bytes dropped"),
        ("offsets do not reach", "unlinked records dropped"),
        ("record dropped", "records of missing/wrong files dropped"),
        ("added to the DICOMDIR", "orphan taken in"),
        ("a second copy", "second copy removed"),
        ("never finished", "staged copies removed"),
        ("", "other"),
    ];
    log.lines()
        .filter_map(|l| l.split_once(marker))
        .map(|(_, what)| KINDS.iter().find(|(m, _)| what.contains(m)).unwrap().1)
        .collect()
}

/// Keep the File-set and the logs for a post-mortem, then panic with everything known.
fn fail(t: &TempDir, name: &str, seed: u64, round: usize, logs: &[PathBuf], what: &str) -> ! {
    let keep = std::env::temp_dir().join(format!(
        "dicomfs-crash-failed-{name}-seed{seed}-round{round}"
    ));
    let _ = std::fs::remove_dir_all(&keep);
    std::fs::create_dir_all(&keep).unwrap();
    for sub in ["fs", "logs"] {
        let _ = run(Command::new("cp")
            .arg("-a")
            .arg(t.join(sub))
            .arg(keep.join(sub)));
    }
    let tails: Vec<String> = logs.iter().map(|l| tail(l, 30)).collect();
    panic!(
        "crash test {name}, seed {seed} (rerun: DICOMFS_CRASH_SEED={seed}), round {round}: {what}\n\
         File-set and logs kept in {}\n{}",
        keep.display(),
        tails.join("\n")
    );
}

/// How a round's daemon dies.
#[derive(Clone, Copy, Debug)]
enum Kill {
    /// kill -9 from the test after this long (or when the copy ends, if sooner).
    After(Duration),
    /// SIGKILL from strace on entry to the n-th pwrite64 of one of the daemon's threads (kill -9
    /// from the test if the copy ends first).
    AtWrite(u64),
}

/// One File-set through a series of crashes, and what the copies so far were told.
struct Campaign {
    name: &'static str,
    seed: u64,
    rng: Rng,
    t: TempDir,
    src: PathBuf,
    mnt: PathBuf,
    logs: PathBuf,
    /// Instance number g -> source bytes and SOP Instance UID; round r has g in r*FILES..
    bytes: Arc<Vec<Vec<u8>>>,
    sop: Vec<String>,
    /// Instances whose close() returned 0.
    acked: HashSet<usize>,
    /// Copies a crash interrupted: retried first in the next round.
    interrupted: Vec<usize>,
    /// Instance number -> (round, name) of every copy tried, to find it in the daemons' logs.
    tried: HashMap<usize, Vec<(usize, String)>>,
    kinds: HashMap<&'static str, usize>,
    kills_during_copy: usize,
    direct_repairs: usize,
    oracle_runs: usize,
}

fn seed() -> u64 {
    std::env::var("DICOMFS_CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
                % 1_000_000_007
        })
}

impl Campaign {
    /// The 500 instances, once, in a scratch directory (not the File-set we mount); their
    /// variants for `rounds` rounds; an empty File-set.
    fn new(name: &'static str, rounds: usize) -> Campaign {
        for tool in ["umount", "fusermount3"] {
            need(tool);
        }
        let seed = seed();
        eprintln!("crash test {name}: seed {seed} (rerun: DICOMFS_CRASH_SEED={seed})");
        let t = TempDir::new(&format!("crash-{name}"));
        let src = t.join("fs");
        let logs = t.join("logs");
        std::fs::create_dir_all(&logs).unwrap();
        let mnt = t.join("mnt");
        std::fs::create_dir_all(&mnt).unwrap();
        // is_mounted falls back to the path as given when the mount is dead: make it canonical.
        let mnt = std::fs::canonicalize(&mnt).unwrap();

        let spec = synth::Spec {
            patients: 5,
            studies: 2,
            series: 5,
            instances: 10,
            rows: 8,
            cols: 8,
            documents: false,
            ..Default::default()
        };
        let base = synth::instances(&spec);
        assert_eq!(base.len(), FILES);
        let scratch = t.join("scratch");
        std::fs::create_dir_all(&scratch).unwrap();
        for (i, inst) in base.iter().enumerate() {
            std::fs::write(scratch.join(format!("{i:04}.dcm")), inst.bytes()).unwrap();
        }
        // Round r copies variant r of each: the scratch file itself in round 0, else the same
        // data set with a new SOP Instance UID.
        let mut bytes: Vec<Vec<u8>> = Vec::with_capacity(rounds * FILES);
        let mut sop: Vec<String> = Vec::with_capacity(rounds * FILES);
        for r in 0..rounds {
            for (i, inst) in base.iter().enumerate() {
                if r == 0 {
                    bytes.push(std::fs::read(scratch.join(format!("{i:04}.dcm"))).unwrap());
                    sop.push(inst.sop_instance());
                } else {
                    let u = synth::uid(0xC8A5, &[r as u64, i as u64]);
                    let mut ds = inst.ds.clone();
                    for e in ds.iter_mut().filter(|e| e.tag == tags::SOP_INSTANCE_UID) {
                        e.value = u.as_bytes().to_vec();
                        if e.value.len() % 2 == 1 {
                            e.value.push(0);
                        }
                    }
                    bytes.push(synth::part10(&ds));
                    sop.push(u);
                }
            }
        }
        assert_eq!(
            sop.iter().collect::<HashSet<_>>().len(),
            sop.len(),
            "variants must have distinct SOP Instance UIDs"
        );

        std::fs::create_dir_all(&src).unwrap();
        let out = run(Command::new(bin()).arg("init").arg(&src));
        assert!(
            out.status.success(),
            "dicomfs init: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Campaign {
            name,
            seed,
            rng: Rng::new(seed),
            t,
            src,
            mnt,
            logs,
            bytes: Arc::new(bytes),
            sop,
            acked: HashSet::new(),
            interrupted: Vec::new(),
            tried: HashMap::new(),
            kinds: HashMap::new(),
            kills_during_copy: 0,
            direct_repairs: 0,
            oracle_runs: 0,
        }
    }

    /// What the copy daemons logged about the first few of these instances (by the names they
    /// were copied under): an instance acknowledged but never logged was never ingested.
    fn log_lines_of(&self, gids: &[usize]) -> String {
        let mut out = String::new();
        for g in gids.iter().take(5) {
            for (r, name) in self.tried.get(g).into_iter().flatten() {
                let base = name.rsplit('/').next().unwrap_or(name);
                let log = std::fs::read_to_string(self.logs.join(format!("r{r:02}-copy.log")))
                    .unwrap_or_default();
                let lines: Vec<&str> = log.lines().filter(|l| l.contains(base)).collect();
                out += &format!(
                    "instance #{g}, copied as {name} in round {r}: the daemon logged {}\n",
                    if lines.is_empty() {
                        "nothing about it (never ingested)".to_string()
                    } else {
                        format!("\n    {}", lines.join("\n    "))
                    }
                );
            }
        }
        out
    }

    fn fail(&self, round: usize, what: &str) -> ! {
        let logs: Vec<PathBuf> = ["copy", "strace", "repair"]
            .iter()
            .map(|k| self.logs.join(format!("r{round:02}-{k}.log")))
            .filter(|p| p.exists())
            .collect();
        fail(&self.t, self.name, self.seed, round, &logs, what)
    }

    /// One round: mount, copy `count` new instances (plus the retries and a few again), kill
    /// the daemon as `kill` says, repair (by a remount and a clean unmount, or by `dicomfs check
    /// --repair` if `direct`), check the invariant, and the oracles if `oracles`.
    fn round(&mut self, round: usize, count: usize, kill: Kill, direct: bool, oracles: bool) {
        let tr = Instant::now();
        let copy_log = self.logs.join(format!("r{round:02}-copy.log"));
        let trace_log = self.logs.join(format!("r{round:02}-strace.log"));
        let repair_log = self.logs.join(format!("r{round:02}-repair.log"));
        // Where this round copies to: the root; a folder made by mkdir (a name that is no File
        // ID component, so new File IDs are assigned); a folder of compliant names (kept as the
        // File IDs).
        let mode = round % 3;
        let name = |g: usize| match mode {
            0 => format!("g{g:05}.dcm"),
            1 => format!("batch_r{round:02}/g{g:05}.dcm"),
            _ => format!("R{round:02}/G{g:05}"),
        };
        let dir = match mode {
            0 => None,
            1 => Some(format!("batch_r{round:02}")),
            _ => Some(format!("R{round:02}")),
        };
        let mut order: Vec<usize> = (round * FILES..(round + 1) * FILES).collect();
        self.rng.shuffle(&mut order);
        order.truncate(count);
        // A few already stored, copied again at random places.
        let mut old: Vec<usize> = self.acked.iter().copied().collect();
        old.sort();
        self.rng.shuffle(&mut old);
        for &g in old.iter().take(AGAIN) {
            let at = self.rng.below(order.len() as u64 + 1) as usize;
            order.insert(at, g);
        }
        let mut gids: Vec<usize> = std::mem::take(&mut self.interrupted);
        gids.extend(order);
        let n_jobs = gids.len();
        let jobs: Vec<Job> = gids
            .iter()
            .map(|&g| Job {
                gid: g,
                rel: name(g),
            })
            .collect();

        // Mount, copy, kill.
        let strace = match kill {
            Kill::AtWrite(n) => Some((n, trace_log.as_path())),
            Kill::After(_) => None,
        };
        let mut daemon = Daemon::start(&self.src, &self.mnt, &copy_log, strace);
        let killed = Arc::new(AtomicBool::new(false));
        let done = Arc::new(AtomicUsize::new(0));
        let copy = {
            let (m, b, k, d) = (
                self.mnt.clone(),
                self.bytes.clone(),
                killed.clone(),
                done.clone(),
            );
            let dir = dir.clone();
            std::thread::spawn(move || copier(m, dir, jobs, b, k, d))
        };
        // After the delay, or once `target` files are closed if that comes first (a copy can
        // take less than the longest delay; this keeps the kill inside it).
        let (limit, target) = match kill {
            Kill::After(d) => (d, self.rng.below(n_jobs as u64) as usize),
            Kill::AtWrite(_) => (Duration::from_secs(120), usize::MAX),
        };
        let start = Instant::now();
        while start.elapsed() < limit
            && done.load(Ordering::SeqCst) < target
            && !copy.is_finished()
            && !daemon.died()
        {
            std::thread::sleep(Duration::from_micros(200));
        }
        let at_kill = done.load(Ordering::SeqCst);
        let waited = start.elapsed();
        killed.store(true, Ordering::SeqCst);
        let by_test = daemon.kill9();
        let (outcomes, setup_err) = copy.join().unwrap();
        // After the kill, copies fail with ECONNABORTED (in flight) or ENOTCONN (new calls);
        // any other failure, or one while the daemon lived, is a bug.
        let expected = |errno: i32, before_kill: bool| {
            (errno == libc::ECONNABORTED || errno == libc::ENOTCONN)
                && (matches!(kill, Kill::AtWrite(_)) || !before_kill)
        };
        if let Some((
            e,
            Outcome::Failed {
                errno, before_kill, ..
            },
        )) = &setup_err
        {
            if !expected(*errno, *before_kill) {
                self.fail(round, &format!("the copier failed: {e}"));
            }
        }
        for &(g, _) in &outcomes {
            self.tried.entry(g).or_default().push((round, name(g)));
        }
        for &(g, o) in &outcomes {
            match o {
                Outcome::Acked => {
                    self.acked.insert(g);
                }
                Outcome::Failed {
                    step,
                    errno,
                    before_kill,
                } => {
                    if !expected(errno, before_kill) {
                        self.fail(
                            round,
                            &format!(
                                "copying instance #{g} as {} failed at {step} with errno {errno} ({}){}",
                                name(g),
                                std::io::Error::from_raw_os_error(errno),
                                if before_kill { " while the daemon was alive" } else { "" }
                            ),
                        );
                    }
                    self.interrupted.push(g);
                }
            }
        }
        // Every file copied before the daemon died: the kill hit an idle daemon.
        let finished_first = setup_err.is_none()
            && outcomes.len() == n_jobs
            && outcomes.iter().all(|(_, o)| *o == Outcome::Acked);
        if !finished_first {
            self.kills_during_copy += 1;
        }
        let n_acked = outcomes
            .iter()
            .filter(|(_, o)| *o == Outcome::Acked)
            .count();
        let stopped = outcomes
            .iter()
            .find_map(|&(g, o)| match o {
                Outcome::Failed { step, errno, .. } => {
                    Some(format!("#{g} at {step} (errno {errno})"))
                }
                _ => None,
            })
            .unwrap_or_else(|| "-".into());

        // Repair: a remount (and a clean unmount), or `dicomfs check --repair` directly.
        let kinds = if direct {
            self.direct_repairs += 1;
            let out = run(Command::new(bin())
                .arg("check")
                .arg("--repair")
                .arg(&self.src)
                .env("RUST_LOG", "info"));
            let text = format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            std::fs::write(&repair_log, &text).unwrap();
            if !out.status.success() {
                self.fail(
                    round,
                    &format!("dicomfs check --repair exited {}", out.status),
                );
            }
            repair_kinds(&text, "repaired: ")
        } else {
            let mut d = Daemon::start(&self.src, &self.mnt, &repair_log, None);
            // The repaired File-set can be listed through the mount.
            if let Err(e) = std::fs::read_dir(&self.mnt).map(|r| r.count()) {
                self.fail(round, &format!("readdir after the remount: {e}"));
            }
            let st = d.stop();
            if !st.success() {
                self.fail(
                    round,
                    &format!("the remount (repair) daemon exited {st} after umount"),
                );
            }
            repair_kinds(
                &std::fs::read_to_string(&repair_log).unwrap_or_default(),
                "repair: ",
            )
        };
        for k in &kinds {
            *self.kinds.entry(k).or_default() += 1;
        }
        assert!(!is_mounted(&self.mnt));

        // (a), (b), (c).
        let found = match check_invariant(&self.src, &self.acked, &self.sop, &self.bytes) {
            Ok(f) => f,
            Err((e, missing)) => {
                let hints = self.log_lines_of(&missing);
                self.fail(round, &format!("{e}\n{hints}"))
            }
        };
        // (d).
        if oracles {
            self.oracle_runs += 1;
            let (ok, text) = check_fileset(&self.src);
            if !ok
                || !text.contains("dciodvfy: 0 errors")
                || !text.contains("pydicom FileSet: RESULT: OK")
            {
                self.fail(round, &format!("oracles failed:\n{text}"));
            }
        }
        let mut kinds = kinds;
        kinds.dedup();
        eprintln!(
            "{} round {round:2}: mode {mode}, {} after {:4} ms{} ({at_kill} closed); {} tried, \
             {n_acked} acked, stopped: {stopped}; {}: {}; {} referenced, {} acked in all, \
             {} empty dir(s){}; {:.1} s",
            self.name,
            match (kill, by_test) {
                (Kill::After(d), _) if waited < d => format!("kill -9 at file {target}"),
                (Kill::After(_), _) => "kill -9".to_string(),
                (Kill::AtWrite(n), false) => format!("SIGKILL at pwrite64 #{n}"),
                (Kill::AtWrite(n), true) => format!("(pwrite64 #{n} not reached) kill -9"),
            },
            waited.as_millis(),
            if finished_first {
                " AFTER THE COPY ENDED"
            } else {
                ""
            },
            outcomes.len(),
            if direct { "check --repair" } else { "remount" },
            if kinds.is_empty() {
                "nothing to repair".to_string()
            } else {
                kinds.join(", ")
            },
            found.referenced,
            self.acked.len(),
            found.empty_dirs,
            if oracles { ", oracles pass" } else { "" },
            tr.elapsed().as_secs_f64()
        );
    }

    fn summary(&self, t0: Instant, rounds: usize) {
        let mut kinds: Vec<_> = self.kinds.iter().collect();
        kinds.sort();
        eprintln!(
            "{}: {rounds} kills ({} during the copy), {} direct repairs, {} oracle runs, {} \
             instances acknowledged; repairs by kind: {kinds:?}; {:.1} s",
            self.name,
            self.kills_during_copy,
            self.direct_repairs,
            self.oracle_runs,
            self.acked.len(),
            t0.elapsed().as_secs_f64()
        );
    }
}

/// The acceptance test of the crash invariant: kill -9 at a random instant during a 500-file
/// copy (after 0-1500 ms, or at a random file count if the copy is quicker), 20 times over one
/// File-set; remount (repair) or `dicomfs check --repair`.
#[test]
fn kill_9_during_a_500_file_copy_20_times_keeps_the_fileset_consistent() {
    let t0 = Instant::now();
    let mut c = Campaign::new("random-instant", ROUNDS);
    for round in 0..ROUNDS {
        let delay = Duration::from_millis(c.rng.below(MAX_DELAY_MS + 1));
        let direct = round % 4 == 3;
        let oracles = round % 5 == 4 || round == ROUNDS - 1;
        c.round(round, FILES, Kill::After(delay), direct, oracles);
    }
    c.summary(t0, ROUNDS);
    assert!(
        c.kills_during_copy >= ROUNDS * 3 / 4,
        "most kills should land during the copy (seed {})",
        c.seed
    );
}

/// The same invariant with the kills inside an ingest: strace delivers SIGKILL on entry to a
/// random pwrite64 (staged data, the appended records, the sequence length, the offset that
/// links them in), so repair meets each state an ingest can be cut in.
#[test]
fn kill_9_at_a_random_write_of_the_updater_keeps_the_fileset_consistent() {
    if run(Command::new("sh").arg("-c").arg("command -v strace"))
        .status
        .code()
        != Some(0)
    {
        eprintln!("SKIPPED: strace is not installed (apt-get install strace)");
        return;
    }
    let t0 = Instant::now();
    let mut c = Campaign::new("random-write", WRITE_ROUNDS);
    for round in 0..WRITE_ROUNDS {
        let n = 1 + c.rng.below(MAX_WRITE);
        let direct = round % 4 == 3;
        let oracles = round % 4 == 3 || round == WRITE_ROUNDS - 1;
        c.round(round, WRITE_FILES, Kill::AtWrite(n), direct, oracles);
    }
    c.summary(t0, WRITE_ROUNDS);
    let inside = [
        "trailing bytes dropped",
        "unlinked records dropped",
        "orphan taken in",
    ]
    .iter()
    .filter_map(|k| c.kinds.get(k))
    .sum::<usize>();
    assert!(
        inside > 0,
        "no kill landed inside an ingest (seed {}): {:?}",
        c.seed,
        c.kinds
    );
}

/// Kill -9 inside in-place deletes: strace delivers SIGKILL on entry to the n-th pwrite64 of a
/// daemon thread (the delete journal, then each patch of the DICOMDIR), for n = 1..=14, while
/// `rm` deletes instances one at a time. After `dicomfs check --repair` each delete is either
/// whole or not there at all: the DICOMDIR parses cleanly, every referenced file exists, every
/// instance not deleted is still referenced, and every `rm` that returned 0 is gone from the
/// DICOMDIR and the medium; the oracles pass.
#[test]
fn kill_9_inside_in_place_deletes_leaves_each_delete_whole_or_undone() {
    if run(Command::new("sh").arg("-c").arg("command -v strace"))
        .status
        .code()
        != Some(0)
    {
        eprintln!("SKIPPED: strace is not installed (apt-get install strace)");
        return;
    }
    let t = TempDir::new("crash-delete");
    let mnt = t.join("mnt");
    std::fs::create_dir_all(&mnt).unwrap();
    let (mut finished, mut discarded, mut kills) = (0, 0, 0);
    for n in 1..=14u64 {
        let src = t.join(&format!("fs{n}"));
        ok(Command::new(bin())
            .arg("demo")
            .arg(&src)
            .args(["--patients", "2", "--studies", "1", "--series", "2"])
            .args(["--instances", "6", "--no-documents"]));
        let refs = |src: &Path| -> Vec<String> {
            let d = DicomDir::parse(&std::fs::read(src.join("DICOMDIR")).unwrap()).unwrap();
            assert!(
                d.errors().next().is_none(),
                "n={n}: {:?}",
                d.errors().map(|f| &f.message).collect::<Vec<_>>()
            );
            let mut v: Vec<String> = d
                .visible()
                .into_iter()
                .filter_map(|i| d.records[i as usize].file_id.as_deref())
                .map(|f| f.replace('\\', "/"))
                .collect();
            v.sort();
            v
        };
        let all = refs(&src);
        assert_eq!(all.len(), 24);
        // Every third instance: first, middle and last children of their series.
        let victims: Vec<String> = all.iter().step_by(3).take(6).cloned().collect();
        let log = t.join(&format!("fs{n}.log"));
        let trace = t.join(&format!("fs{n}.strace"));
        let mut d = Daemon::start(&src, &mnt, &log, Some((n, &trace)));
        let mut gone = Vec::new();
        for v in &victims {
            if std::fs::remove_file(mnt.join(v)).is_ok() {
                gone.push(v.clone());
            }
            if d.died() {
                break;
            }
            // More than 200 ms apart: each delete is written on its own, before rm returns.
            std::thread::sleep(Duration::from_millis(250));
        }
        if d.died() {
            d.kill9();
            kills += 1;
        } else {
            d.stop();
        }
        let out = run(Command::new(bin()).arg("check").arg("--repair").arg(&src));
        let report = text(&out);
        finished += report.contains("finished an interrupted delete") as usize;
        discarded += report.contains("JOURNAL: discarded") as usize;
        let now = refs(&src);
        assert!(!src.join(STAGING).exists(), "n={n}: {report}");
        for f in &now {
            assert!(
                src.join(f).is_file(),
                "n={n}: {f} is referenced but missing\n{report}"
            );
        }
        for f in all.iter().filter(|f| !victims.contains(f)) {
            assert!(
                now.contains(f),
                "n={n}: {f} was not deleted but is gone\n{report}"
            );
        }
        for f in &gone {
            assert!(
                !now.contains(f),
                "n={n}: rm {f} returned 0 but it is still referenced\n{report}"
            );
            assert!(
                !src.join(f).exists(),
                "n={n}: rm {f} returned 0 but its file is there"
            );
        }
        if n % 4 == 0 {
            assert_oracles_pass(&src);
        }
    }
    eprintln!("{kills} kills; {finished} deletes finished from their journal, {discarded} journals discarded");
    assert!(kills >= 7, "most runs should be killed inside a delete");
    assert!(
        finished > 0,
        "no kill landed between a delete's journal and its end"
    );
}
