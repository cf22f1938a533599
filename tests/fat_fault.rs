//! Crash recovery on FAT (issue 4): a copy into a File-set on a FAT image, in-process through
//! `Live` on `Fat` on a `FaultDev`, is cut at the N-th device write, swept over N: the device
//! fails (EIO) or stops persisting (a power loss keeping a prefix, also with a torn write) from
//! there on, and everything is dropped without close, as a crash leaves it. Then `dicomfs check
//! --repair IMAGE` runs, and:
//! - `fsck.fat -n` is clean (before the repair it saw at most crash damage: dirty bit, lost
//!   clusters, a chain longer than its file, FSInfo's free count);
//! - an `mcopy -s` of the volume passes the oracles (check_fileset.sh);
//! - the File-set invariant: every instance whose ingest returned Ok (with Vanish/Tear: before
//!   the first write was lost, i.e. a kill -9 right after it returned) is referenced with its
//!   bytes; every referenced file is there with the bytes of the instance it names; nothing
//!   else is on the volume; Consistency Flag 0000H.
//!
//! The same sweep runs over in-place deletes (the journal, then the DICOMDIR patches). A last
//! test kills the daemon of a real mount with SIGKILL during `cp` of many files.

mod common;

use common::fat::*;
use common::*;
use dicomfs::dicom::tags;
use dicomfs::dicomdir::DicomDir;
use dicomfs::fsu::{Ingested, Live, Profile};
use dicomfs::synth;
use fsimpl::fault::{Fault, FaultDev};
use fsimpl::{BlockDev, Fat, FatOptions, FileDev, Medium};
use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;

fn insts(n: usize, seed: u64) -> Vec<synth::Instance> {
    synth::instances(&synth::Spec {
        patients: 2,
        studies: 1,
        series: 2,
        instances: n.div_ceil(4),
        rows: 48,
        cols: 48,
        seed,
        documents: false,
        ..Default::default()
    })
    .into_iter()
    .take(n)
    .collect()
}

/// What one session did before the crash.
#[derive(Debug, Default)]
struct Session {
    /// Index of every instance whose ingest returned Ok, and whether the fault had struck by then.
    ok: Vec<(usize, bool)>,
    /// Device writes after the File-set was open, and at the end.
    writes_open: u64,
    writes_end: u64,
    stopped: Option<String>,
}

/// Open the File-set on `image` through a FaultDev, ingest `all` until an error, drop.
fn session(image: &Path, fault: Fault, all: &[synth::Instance]) -> Session {
    let mut s = Session::default();
    let dev: Arc<dyn BlockDev> = Arc::new(FileDev::open(image, true).unwrap());
    let fd = FaultDev::new(dev, fault);
    let opts = FatOptions {
        partition: None,
        writable: true,
        allow_dirty: false,
    };
    let fat = match Fat::open(fd.clone(), &opts) {
        Ok(f) => f,
        Err(e) => {
            s.stopped = Some(format!("Fat::open: {e}"));
            return s;
        }
    };
    let m: Arc<dyn Medium> = Arc::new(fat);
    let live = match dicomfs::fileset::FileSet::open(m.clone())
        .and_then(|fs| Live::open(fs, true, Profile::default()))
    {
        Ok(l) => l,
        Err(e) => {
            s.stopped = Some(format!("open: {e}"));
            return s;
        }
    };
    s.writes_open = fd.writes();
    for (k, i) in all.iter().enumerate() {
        let r = live.stage().and_then(|p| {
            live.medium
                .write_at(&p, 0, &i.bytes())
                .map_err(|e| dicomfs::Error::medium(p.clone(), e))?;
            live.ingest(&p, "x", None)
        });
        match r {
            Ok(Ingested::Added(_)) => s.ok.push((k, fd.tripped())),
            Ok(other) => panic!("instance {k}: {other:?}"),
            Err(e) => {
                s.stopped = Some(format!("instance {k}: {e}"));
                break;
            }
        }
    }
    s.writes_end = fd.writes();
    // A crash: no close, no sync.
    drop(live);
    drop(m);
    s
}

/// Repair and check everything the module documentation lists.
fn judge(t: &Path, img: &Img, all: &[synth::Instance], s: &Session, what: &str) {
    let referenced = repaired(t, img, all, what, &format!("{s:?}"));
    for &(k, tripped) in &s.ok {
        if !tripped {
            assert!(
                referenced.contains_key(&k),
                "{what}: instance {k} was ingested (Ok) before the fault but is not referenced\nsession: {s:?}"
            );
        }
    }
}

/// Repair, then check fsck.fat, the oracles, the bytes of every referenced file and that
/// nothing else is on the volume. Returns instance index -> File ID of what is referenced.
fn repaired(
    t: &Path,
    img: &Img,
    all: &[synth::Instance],
    what: &str,
    s: &str,
) -> BTreeMap<usize, String> {
    let before = assert_fsck_only_crash_damage(img, &format!("{what} (session: {s:?})"));
    let out = run(Command::new(bin())
        .arg("check")
        .arg("--repair")
        .arg(&img.path));
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        out.status.code(),
        Some(0),
        "{what}: dicomfs check --repair: {said}\nfsck.fat before: {}\nsession: {s:?}",
        before.out
    );
    let f = img.fsck();
    assert!(
        f.code == 0 && f.findings.is_empty(),
        "{what}: fsck.fat after check --repair:\n{}\nbefore:\n{}\nrepair said: {said}",
        f.out,
        before.out
    );
    let copy = t.join("copy");
    let _ = std::fs::remove_dir_all(&copy);
    img.mcopy_out(&copy, &[]);
    let (passed, text) = check_fileset(&copy);
    let dd = DicomDir::parse(&std::fs::read(copy.join("DICOMDIR")).unwrap()).unwrap();
    if dd.visible().is_empty() {
        // check_fileset.sh runs `xargs dcmftest` on no files at all, which counts as one
        // failure: on an empty File-set, require every other oracle's OK.
        for line in [
            "dcmdump: OK",
            "dciodvfy: 0 errors",
            "pydicom FileSet: RESULT: OK",
            "dcmftest: 0 referenced",
        ] {
            assert!(
                text.contains(line),
                "{what}: oracles on an empty File-set:\n{text}"
            );
        }
    } else {
        assert!(
            passed,
            "{what}: oracles:\n{text}\nsession: {s:?}\nrepair: {said}"
        );
    }
    assert!(dd.findings.is_empty(), "{what}: {:?}", dd.findings);
    assert_eq!(dd.consistency_flag, 0, "{what}");
    let by_uid: BTreeMap<String, usize> = all
        .iter()
        .enumerate()
        .map(|(k, i)| (i.sop_instance(), k))
        .collect();
    let mut referenced = BTreeMap::new();
    for r in dd.visible() {
        let r = &dd.records[r as usize];
        let (Some(fid), Some(uid)) = (r.file_id.as_deref(), r.key(tags::REFERENCED_SOP_INSTANCE))
        else {
            continue;
        };
        let p = copy.join(fid.replace('\\', "/"));
        let bytes = std::fs::read(&p)
            .unwrap_or_else(|e| panic!("{what}: {fid} is referenced but unreadable: {e}"));
        let k = *by_uid
            .get(uid)
            .unwrap_or_else(|| panic!("{what}: {fid} references an unknown UID {uid}"));
        assert!(
            bytes == all[k].bytes(),
            "{what}: {fid} does not hold instance {k}'s bytes"
        );
        referenced.insert(k, fid.to_string());
    }
    // Nothing but the DICOMDIR and the referenced files.
    let mut files: Vec<String> = files_below(&copy)
        .into_iter()
        .map(|p| {
            p.strip_prefix(&copy)
                .unwrap()
                .to_string_lossy()
                .replace('/', "\\")
        })
        .filter(|p| p != "DICOMDIR")
        .collect();
    files.sort();
    let mut want: Vec<String> = referenced.values().cloned().collect();
    want.sort();
    assert_eq!(
        files, want,
        "{what}: files on the volume that nothing references"
    );
    referenced
}

/// About `n` points spread over 0..=end, always with both ends and the start of the copy
/// (every point with FAT_FAULT_ALL=1).
fn points(start: u64, end: u64, n: u64) -> Vec<u64> {
    if std::env::var_os("FAT_FAULT_ALL").is_some() {
        return (0..=end).collect();
    }
    let mut v: Vec<u64> = (0..=n).map(|i| end * i / n).collect();
    v.extend([0, 1, start, start + 1, end.saturating_sub(1), end]);
    v.sort();
    v.dedup();
    v
}

fn sweep(bits: u8, mib: u64, layout: Layout, modes: &[(&str, u64)]) {
    need("fsck.fat");
    let t = TempDir::new(&format!("fatfault{bits}"));
    let pristine = fat_fileset(t.path(), "pristine.img", bits, mib, layout);
    let all = insts(6, 90 + bits as u64);
    // A run without faults: how many writes the copy makes.
    let count_img = t.join("count.img");
    std::fs::copy(&pristine.path, &count_img).unwrap();
    let s = session(&count_img, Fault::None, &all);
    assert_eq!(s.ok.len(), all.len(), "{s:?}");
    assert!(s.writes_end > s.writes_open, "{s:?}");
    eprintln!(
        "FAT{bits} {layout:?}: {} writes to open, {} in all",
        s.writes_open, s.writes_end
    );
    let mut n_runs = 0;
    for &(mode, samples) in modes {
        for n in points(s.writes_open, s.writes_end, samples) {
            let fault = match mode {
                "fail" => Fault::Fail { after: n },
                "vanish" => Fault::Vanish { after: n },
                _ => Fault::Tear {
                    after: n,
                    sector: 512,
                },
            };
            let path = t.join("work.img");
            std::fs::copy(&pristine.path, &path).unwrap();
            let img = Img {
                path,
                ..pristine.clone()
            };
            let s = session(&img.path, fault, &all);
            judge(
                t.path(),
                &img,
                &all,
                &s,
                &format!("FAT{bits} {layout:?} {fault:?}"),
            );
            n_runs += 1;
        }
    }
    eprintln!("FAT{bits} {layout:?}: {n_runs} crash points judged");
}

#[test]
fn fault_sweep_on_fat16_fail_vanish_and_tear_during_a_copy() {
    sweep(
        16,
        16,
        Layout::Whole,
        &[("fail", 16), ("vanish", 16), ("tear", 6)],
    );
}

#[test]
fn fault_sweep_on_fat32_in_an_mbr_partition() {
    sweep(32, 40, Layout::Mbr, &[("fail", 10), ("vanish", 10)]);
}

#[test]
fn fault_sweep_on_fat12() {
    sweep(12, 4, Layout::Whole, &[("fail", 8), ("vanish", 8)]);
}

/// kill -9 of the daemon of a real read-write mount while files are copied in one by one; each
/// close() that returned 0 must survive (SEMANTICS.md), and `check --repair` restores a clean
/// volume.
#[test]
fn kill_9_of_the_daemon_during_a_copy_onto_fat() {
    let t = TempDir::new("fatkill");
    let img = fat_fileset(t.path(), "k.img", 16, 32, Layout::Whole);
    let all = insts(60, 7);
    let mnt = t.join("mnt");
    for (round, delay_ms) in [(0u64, 150u64), (1, 400), (2, 900)] {
        let log = t.join(&format!("log{round}"));
        let m = Mount::new(&img.path, &mnt, &["--log-file", log.to_str().unwrap()]);
        let pid = daemon_pid(&mnt).expect("the daemon's pid");
        let done = Arc::new(std::sync::Mutex::new(Vec::new()));
        let copier = {
            let done = done.clone();
            let dir = mnt.clone();
            let bytes: Vec<Vec<u8>> = all.iter().map(|i| i.bytes()).collect();
            std::thread::spawn(move || {
                for (k, b) in bytes.iter().enumerate() {
                    let p = dir.join(format!("r{round}-{k}.dcm"));
                    let ok = std::fs::File::create(&p)
                        .and_then(|mut f| {
                            std::io::Write::write_all(&mut f, b)?;
                            // std's File ignores close()'s error: close explicitly.
                            let fd = std::os::fd::IntoRawFd::into_raw_fd(f);
                            // SAFETY: fd was just taken from the File.
                            if unsafe { libc::close(fd) } != 0 {
                                return Err(std::io::Error::last_os_error());
                            }
                            Ok(())
                        })
                        .is_ok();
                    if !ok {
                        break;
                    }
                    done.lock().unwrap().push(k);
                }
            })
        };
        std::thread::sleep(std::time::Duration::from_millis(delay_ms));
        // SAFETY: kill(2) of a process we started.
        unsafe { libc::kill(pid, libc::SIGKILL) };
        copier.join().unwrap();
        let _ = Command::new("umount").arg("-l").arg(&mnt).status();
        std::mem::forget(m);
        wait_daemon_gone(&mnt);
        let ok: Vec<(usize, bool)> = done.lock().unwrap().iter().map(|&k| (k, false)).collect();
        let s = Session {
            ok,
            ..Default::default()
        };
        // Instances of earlier rounds are the same bytes (same UIDs): they stay referenced.
        judge(t.path(), &img, &all, &s, &format!("kill -9 round {round}"));
    }
}

fn daemon_pid(mnt: &Path) -> Option<i32> {
    let want = mnt.to_string_lossy().to_string();
    std::fs::read_dir("/proc").ok()?.flatten().find_map(|e| {
        let pid: i32 = e.file_name().to_string_lossy().parse().ok()?;
        let c = std::fs::read(e.path().join("cmdline")).ok()?;
        let args: Vec<String> = c
            .split(|&b| b == 0)
            .map(|a| String::from_utf8_lossy(a).to_string())
            .collect();
        (args.iter().any(|a| a == "mount") && args.contains(&want)).then_some(pid)
    })
}

/// Ingest `all` into the File-set on `image` and close it cleanly; the File IDs in order.
fn populate(image: &Path, all: &[synth::Instance]) -> Vec<String> {
    let dev: Arc<dyn BlockDev> = Arc::new(FileDev::open(image, true).unwrap());
    let opts = FatOptions {
        partition: None,
        writable: true,
        allow_dirty: false,
    };
    let m: Arc<dyn Medium> = Arc::new(Fat::open(dev, &opts).unwrap());
    let fs = dicomfs::fileset::FileSet::open(m).unwrap();
    let live = Live::open(fs, true, Profile::default()).unwrap();
    let mut fids = Vec::new();
    for i in all {
        let p = live.stage().unwrap();
        live.medium.write_at(&p, 0, &i.bytes()).unwrap();
        match live.ingest(&p, "x", None).unwrap() {
            Ingested::Added(f) => fids.push(f),
            r => panic!("{r:?}"),
        }
    }
    live.close().unwrap();
    fids
}

/// Open the File-set through a FaultDev and delete `victims` (File IDs) one by one, each
/// written on its own (in place, behind the journal), until an error; then drop, as a crash.
fn delete_session(image: &Path, fault: Fault, victims: &[(usize, String)]) -> Session {
    let mut s = Session::default();
    let dev: Arc<dyn BlockDev> = Arc::new(FileDev::open(image, true).unwrap());
    let fd = FaultDev::new(dev, fault);
    let opts = FatOptions {
        partition: None,
        writable: true,
        allow_dirty: false,
    };
    let fat = match Fat::open(fd.clone(), &opts) {
        Ok(f) => f,
        Err(e) => {
            s.stopped = Some(format!("Fat::open: {e}"));
            return s;
        }
    };
    let m: Arc<dyn Medium> = Arc::new(fat);
    let live = match dicomfs::fileset::FileSet::open(m.clone())
        .and_then(|fs| Live::open(fs, true, Profile::default()))
    {
        Ok(l) => l,
        Err(e) => {
            s.stopped = Some(format!("open: {e}"));
            return s;
        }
    };
    s.writes_open = fd.writes();
    for (k, fid) in victims {
        match live.delete(fid).and_then(|_| live.commit()) {
            Ok(()) => s.ok.push((*k, fd.tripped())),
            Err(e) => {
                s.stopped = Some(format!("delete {fid}: {e}"));
                break;
            }
        }
    }
    s.writes_end = fd.writes();
    drop(live);
    drop(m);
    s
}

/// The fault sweep over deletes: every instance not deleted stays referenced with its bytes;
/// every delete that returned before the fault is gone; fsck.fat and the oracles as above.
#[test]
fn fault_sweep_on_fat16_during_in_place_deletes() {
    need("fsck.fat");
    let t = TempDir::new("fatfaultdel");
    let pristine = fat_fileset(t.path(), "pristine.img", 16, 16, Layout::Whole);
    let all = insts(12, 77);
    let fids = populate(&pristine.path, &all);
    // Every other instance: first, middle and last children of their series.
    let victims: Vec<(usize, String)> = fids
        .iter()
        .enumerate()
        .step_by(2)
        .map(|(k, f)| (k, f.clone()))
        .collect();
    let count_img = t.join("count.img");
    std::fs::copy(&pristine.path, &count_img).unwrap();
    let s = delete_session(&count_img, Fault::None, &victims);
    assert_eq!(s.ok.len(), victims.len(), "{s:?}");
    let mut n_runs = 0;
    for (mode, samples) in [("fail", 10), ("vanish", 10), ("tear", 4)] {
        for n in points(s.writes_open, s.writes_end, samples) {
            let fault = match mode {
                "fail" => Fault::Fail { after: n },
                "vanish" => Fault::Vanish { after: n },
                _ => Fault::Tear {
                    after: n,
                    sector: 512,
                },
            };
            let path = t.join("work.img");
            std::fs::copy(&pristine.path, &path).unwrap();
            let img = Img {
                path,
                ..pristine.clone()
            };
            let s = delete_session(&img.path, fault, &victims);
            let what = format!("FAT16 deletes {fault:?}");
            let referenced = repaired(t.path(), &img, &all, &what, &format!("{s:?}"));
            let done: Vec<usize> =
                s.ok.iter()
                    .filter(|(_, tripped)| !tripped)
                    .map(|(k, _)| *k)
                    .collect();
            for k in 0..all.len() {
                let victim = victims.iter().any(|(v, _)| *v == k);
                if !victim {
                    assert!(
                        referenced.contains_key(&k),
                        "{what}: instance {k} was not deleted but is gone\nsession: {s:?}"
                    );
                }
                if done.contains(&k) {
                    assert!(
                        !referenced.contains_key(&k),
                        "{what}: the delete of instance {k} returned before the fault but it is still referenced\nsession: {s:?}"
                    );
                }
            }
            n_runs += 1;
        }
    }
    eprintln!(
        "FAT16 deletes: {} writes in all, {n_runs} crash points judged",
        s.writes_end - s.writes_open
    );
}
