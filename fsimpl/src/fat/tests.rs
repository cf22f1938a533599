//! The FAT medium against a reference model: random sequences of every medium operation on
//! images made by mkfs.fat (FAT12, FAT16, FAT32), compared with an in-memory model after each
//! step; then fsck.fat must find nothing and mcopy must read back every file byte for byte.
//! Also: simulated crashes (the device bytes at a random write), repaired to fsck-clean.

use super::*;
use std::collections::{BTreeMap, BTreeSet};
use std::process::Command;

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

fn tmp(name: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("fsimpl-fat-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).expect("temp dir");
    d
}

/// A fresh image made by mkfs.fat with `args`, of `kib` KiB.
fn mkfs(dir: &std::path::Path, args: &[&str], kib: u64) -> Vec<u8> {
    let img = dir.join("mkfs.img");
    let _ = std::fs::remove_file(&img);
    let out = Command::new("mkfs.fat")
        .args(args)
        .arg("-C")
        .arg(&img)
        .arg(kib.to_string())
        .output()
        .expect("mkfs.fat (dosfstools) is needed: scripts/test.sh installs it");
    assert!(out.status.success(), "mkfs.fat: {out:?}");
    std::fs::read(&img).expect("image")
}

/// fsck.fat -n on the bytes: its complaints (empty when clean).
fn fsck(dir: &std::path::Path, bytes: &[u8]) -> Vec<String> {
    let img = dir.join("fsck.img");
    std::fs::write(&img, bytes).expect("write image");
    let out = Command::new("fsck.fat")
        .arg("-n")
        .arg(&img)
        .output()
        .expect("fsck.fat");
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    let lines: Vec<String> = text
        .lines()
        .filter(|l| !l.starts_with("fsck.fat ") && !l.contains(" files, ") && !l.trim().is_empty())
        .map(String::from)
        .collect();
    if !out.status.success() && lines.is_empty() {
        return vec![format!("fsck.fat exit {:?}", out.status.code())];
    }
    lines
}

#[derive(Default, Clone)]
struct Model {
    files: BTreeMap<String, Vec<u8>>,
    dirs: BTreeSet<String>,
}

impl Model {
    fn parent_ok(&self, p: &str) -> bool {
        match p.rsplit_once('/') {
            Some((d, _)) => self.dirs.contains(d),
            None => true,
        }
    }
    fn exists(&self, p: &str) -> bool {
        self.files.contains_key(p) || self.dirs.contains(p)
    }
}

fn name(r: &mut Rng) -> String {
    const N: [&str; 6] = ["A", "B1", "DICOMDIR", "I0000001", "X_Y", "F.DCM"];
    N[r.below(N.len() as u64) as usize].to_string()
}

fn path(r: &mut Rng, m: &Model) -> String {
    let dirs: Vec<&String> = m.dirs.iter().collect();
    let n = name(r);
    if dirs.is_empty() || r.below(3) == 0 {
        n
    } else {
        format!("{}/{n}", dirs[r.below(dirs.len() as u64) as usize])
    }
}

fn compare(fat: &Fat, m: &Model) {
    for (p, want) in &m.files {
        let st = fat.stat(p).unwrap_or_else(|e| panic!("stat {p}: {e}"));
        assert_eq!(st.size, want.len() as u64, "{p}: size");
        let mut buf = vec![0u8; want.len() + 10];
        let n = fat.read_at(p, 0, &mut buf).expect("read");
        assert_eq!(n, want.len(), "{p}: read length");
        assert!(buf[..n] == want[..], "{p}: bytes differ");
    }
    let mut listed = BTreeSet::new();
    let mut stack = vec![String::new()];
    while let Some(d) = stack.pop() {
        for e in fat.list(&d).expect("list") {
            let p = crate::join(&d, &e.name);
            if e.kind == crate::Kind::Dir {
                stack.push(p.clone());
            }
            listed.insert(p);
        }
    }
    let want: BTreeSet<String> = m.files.keys().chain(m.dirs.iter()).cloned().collect();
    assert_eq!(listed, want, "listing");
}

fn run(seed: u64, args: &[&str], kib: u64, steps: usize) {
    let dir = tmp(&format!("{seed}"));
    let mut image = mkfs(&dir, args, kib);
    let dev = Arc::new(MemDev::new(std::mem::take(&mut image)));
    let opts = FatOptions {
        partition: None,
        writable: true,
        allow_dirty: false,
    };
    let mut fat = Fat::open(dev.clone(), &opts).expect("open");
    let mut m = Model::default();
    let mut r = Rng(seed * 2654435761 + 1);
    let cs = fat.geo.cluster_size as u64;
    for step in 0..steps {
        let op = r.below(12);
        let p = path(&mut r, &m);
        match op {
            0 | 1 => {
                let res = fat.create(&p);
                if m.exists(&p) || !m.parent_ok(&p) {
                    assert!(res.is_err(), "step {step}: create {p} should fail");
                } else {
                    res.expect("create");
                    m.files.insert(p, Vec::new());
                }
            }
            2..=4 => {
                if let Some(f) = m
                    .files
                    .keys()
                    .nth(r.below(m.files.len() as u64) as usize)
                    .cloned()
                {
                    let cur = m.files[&f].len() as u64;
                    let off = r.below(cur + cs * 2);
                    let len = r.below(cs * 3) as usize;
                    let data: Vec<u8> = (0..len).map(|_| r.next() as u8).collect();
                    fat.write_at(&f, off, &data).expect("write");
                    let v = m.files.get_mut(&f).expect("model");
                    if v.len() < off as usize + len {
                        v.resize(off as usize + len, 0);
                    }
                    v[off as usize..off as usize + len].copy_from_slice(&data);
                }
            }
            5 => {
                if let Some(f) = m
                    .files
                    .keys()
                    .nth(r.below(m.files.len() as u64) as usize)
                    .cloned()
                {
                    let n = r.below(cs * 3);
                    fat.truncate(&f, n).expect("truncate");
                    m.files.get_mut(&f).expect("model").resize(n as usize, 0);
                }
            }
            6 => {
                let res = fat.remove(&p);
                if m.files.remove(&p).is_some() {
                    res.expect("remove");
                } else {
                    assert!(res.is_err(), "step {step}: remove {p} should fail");
                }
            }
            7 => {
                let res = fat.mkdir(&p);
                if m.exists(&p) || !m.parent_ok(&p) || p.split('/').count() > 4 {
                    if res.is_ok() {
                        m.dirs.insert(p);
                    }
                } else {
                    res.expect("mkdir");
                    m.dirs.insert(p);
                }
            }
            8 => {
                let empty = m.dirs.contains(&p)
                    && !m
                        .files
                        .keys()
                        .chain(m.dirs.iter())
                        .any(|k| k.starts_with(&format!("{p}/")));
                let res = fat.rmdir(&p);
                if empty {
                    res.expect("rmdir");
                    m.dirs.remove(&p);
                } else {
                    assert!(res.is_err(), "step {step}: rmdir {p} should fail");
                }
            }
            9 => {
                if let Some(f) = m
                    .files
                    .keys()
                    .nth(r.below(m.files.len() as u64) as usize)
                    .cloned()
                {
                    let res = fat.rename(&f, &p);
                    let ok = m.parent_ok(&p) && !m.dirs.contains(&p);
                    if ok {
                        res.unwrap_or_else(|e| panic!("step {step}: rename {f} {p}: {e}"));
                        let v = m.files.remove(&f).expect("model");
                        m.files.insert(p, v);
                    } else {
                        assert!(res.is_err(), "step {step}: rename {f} {p} should fail");
                    }
                }
            }
            10 => {
                if r.below(2) == 0 {
                    fat.sync(None).expect("sync");
                } else if let Some(f) = m.files.keys().next().cloned() {
                    fat.sync(Some(&f)).expect("sync file");
                }
            }
            _ => {
                // Close and open again from the bytes: what reached the device is everything.
                fat.close().expect("close");
                assert!(
                    fsck(&dir, &dev.snapshot()).is_empty(),
                    "step {step}: fsck after close: {:?}",
                    fsck(&dir, &dev.snapshot())
                );
                fat = Fat::open(dev.clone(), &opts).expect("reopen");
            }
        }
        compare(&fat, &m);
    }
    fat.close().expect("close");
    let bytes = dev.snapshot();
    assert_eq!(
        fsck(&dir, &bytes),
        Vec::<String>::new(),
        "fsck.fat -n after close"
    );
    // mtools reads every file back byte for byte.
    let img = dir.join("final.img");
    std::fs::write(&img, &bytes).expect("write");
    let out = dir.join("out");
    std::fs::create_dir_all(&out).expect("out");
    if !m.files.is_empty() || !m.dirs.is_empty() {
        let st = Command::new("mcopy")
            .arg("-s")
            .arg("-n")
            .arg("-i")
            .arg(&img)
            .arg("::*")
            .arg(&out)
            .env("MTOOLS_SKIP_CHECK", "1")
            .output()
            .expect("mcopy");
        assert!(st.status.success(), "mcopy: {st:?}");
    }
    for (p, want) in &m.files {
        let got = std::fs::read(out.join(p)).unwrap_or_else(|e| panic!("mcopy'd {p}: {e}"));
        assert!(got == *want, "{p}: mcopy bytes differ");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn model_fat12() {
    for seed in 1..=4 {
        run(seed, &["-F", "12"], 2048, 300);
    }
}

#[test]
fn model_fat16() {
    for seed in 11..=13 {
        run(seed, &["-F", "16", "-s", "1"], 20 * 1024, 300);
    }
}

#[test]
fn model_fat32() {
    for seed in 21..=23 {
        run(seed, &["-F", "32", "-s", "1", "-S", "512"], 40 * 1024, 300);
    }
}

/// A device that keeps only the first `keep` writes: a power loss after them.
struct Cut {
    inner: MemDev,
    keep: usize,
    n: parking_lot::Mutex<usize>,
}

impl BlockDev for Cut {
    fn read_at(&self, o: u64, b: &mut [u8]) -> io::Result<()> {
        self.inner.read_at(o, b)
    }
    fn write_at(&self, o: u64, d: &[u8]) -> io::Result<()> {
        let mut n = self.n.lock();
        *n += 1;
        if *n <= self.keep {
            self.inner.write_at(o, d)
        } else {
            Ok(())
        }
    }
    fn flush(&self) -> io::Result<()> {
        Ok(())
    }
    fn len(&self) -> u64 {
        self.inner.len()
    }
    fn describe(&self) -> String {
        "cut device".into()
    }
    fn writable(&self) -> bool {
        true
    }
}

/// Power loss after every prefix of the writes of a create-write-rename-delete sequence:
/// fsck.fat finds at most lost clusters, a long chain, the dirty bit (and the boot sector
/// differing from its backup by that bit); repair makes it clean; a committed file is intact.
#[test]
fn power_loss_any_write() {
    let dir = tmp("cut");
    let image = mkfs(&dir, &["-F", "16", "-s", "1"], 8 * 1024);
    // How many writes the sequence makes.
    let seq = |fat: &Fat| -> io::Result<()> {
        fat.create("KEEP")?;
        fat.write_at("KEEP", 0, &[7u8; 3000])?;
        fat.sync(Some("KEEP"))?;
        fat.mkdir("D")?;
        fat.create("D/NEW")?;
        fat.write_at("D/NEW", 0, &[1u8; 5000])?;
        fat.rename("D/NEW", "KEEP")?;
        fat.write_at("KEEP", 5000, &[2u8; 2000])?;
        fat.create("T")?;
        fat.write_at("T", 0, &[3u8; 700])?;
        fat.rename("T", "D/T")?;
        fat.remove("D/T")?;
        fat.close()
    };
    let total = {
        let d = Arc::new(Cut {
            inner: MemDev::new(image.clone()),
            keep: usize::MAX,
            n: parking_lot::Mutex::new(0),
        });
        let fat = Fat::open(
            d.clone(),
            &FatOptions {
                writable: true,
                ..Default::default()
            },
        )
        .expect("open");
        seq(&fat).expect("sequence");
        let n = *d.n.lock();
        n
    };
    assert!(total > 10);
    let allowed = |l: &str| {
        l.contains("Dirty bit")
            || l.contains("FATs differ but appear to be intact")
            || l.contains("Using first FAT")
            || l.contains("differences between boot sector")
            || l.contains("mostly harmless")
            || l.contains("Not automatically")
            || l.contains("Automatically removing")
            || l.contains("Leaving filesystem unchanged")
            || l.contains("Free cluster summary")
            || l.contains("Auto-correcting")
            || l.contains("Reclaimed")
            || l.contains("unused clusters")
            || l.contains("File size is")
            || l.contains("Truncating")
            || l.contains("cluster chain length")
            || l.trim_start().starts_with("65:")
            || l.trim_start().starts_with("37:")
            || l.starts_with("/")
    };
    for keep in 0..=total {
        let d = Arc::new(Cut {
            inner: MemDev::new(image.clone()),
            keep,
            n: parking_lot::Mutex::new(0),
        });
        {
            let fat = Fat::open(
                d.clone(),
                &FatOptions {
                    writable: true,
                    ..Default::default()
                },
            )
            .expect("open");
            let _ = seq(&fat);
        }
        let after = d.inner.snapshot();
        let complaints = fsck(&dir, &after);
        for l in &complaints {
            assert!(
                allowed(l),
                "keep {keep}: fsck.fat found {l:?} (all: {complaints:?})"
            );
        }
        let mem = Arc::new(MemDev::new(after));
        let fat = Fat::open(
            mem.clone(),
            &FatOptions {
                writable: true,
                allow_dirty: true,
                ..Default::default()
            },
        )
        .expect("open after crash");
        fat.repair().expect("repair");
        assert_eq!(
            fsck(&dir, &mem.snapshot()),
            Vec::<String>::new(),
            "keep {keep}: after repair"
        );
        // KEEP, once synced, is always the old or the new content, whole.
        if let Ok(st) = fat.stat("KEEP") {
            let mut b = vec![0u8; st.size as usize];
            fat.read_at("KEEP", 0, &mut b).expect("read");
            let old = b.len() == 3000 && b.iter().all(|&x| x == 7);
            let new = b.len() == 5000 && b.iter().all(|&x| x == 1);
            let grown = b.len() == 7000
                && b[..5000].iter().all(|&x| x == 1)
                && b[5000..].iter().all(|&x| x == 2);
            assert!(
                old || new || grown || b.is_empty() && keep < 8,
                "keep {keep}: KEEP has {} bytes of mixed content",
                b.len()
            );
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
}
