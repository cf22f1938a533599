//! FAT fixtures: images made with `mkfs.fat` (whole, or in an MBR/GPT partition made with
//! `sfdisk`), populated with mtools, read back with mtools, judged by `fsck.fat -n`, and loop
//! devices that are always detached.
//!
//! What `fsck.fat -n` (dosfstools 4.2) does, checked by hand and encoded in [`Fsck`]:
//! - clean image: exit 0, two lines (`fsck.fat 4.2 (...)`, `IMG: N files, U/T clusters`);
//! - dirty bit set: exit 1, `Dirty bit is set. Fs was not properly unmounted ...`;
//! - clusters allocated in the FAT but in no chain: exit 1, `Reclaimed N unused cluster(s)`;
//! - a chain longer than the file: exit 1, `/PATH` then `File size is N bytes, cluster chain
//!   length is > M bytes.`;
//! - FSInfo free count wrong (FAT32): exit 1, `Free cluster summary wrong (A vs. really B)`;
//!   unset (0xFFFFFFFF): `Free cluster summary uninitialized (should be B)`;
//! - FAT32 with the dirty bit in the boot sector but not in its backup: `There are differences
//!   between boot sector and its backup.` then `65:01/00`;
//! - FAT copies that differ: `FATs differ but appear to be intact.` `Using first FAT.`;
//! - every finding is followed by `Leaving filesystem unchanged.`
#![allow(dead_code)]

use super::*;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Where a FAT volume sits in an image file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Layout {
    /// The volume is the whole image (a "superfloppy", as cameras format cards).
    Whole,
    /// An MBR with one partition (type 0x0c) starting at 1 MiB.
    Mbr,
    /// A GPT with one Basic Data partition starting at 1 MiB.
    Gpt,
}

/// A FAT image file (or block device) and where its volume starts.
#[derive(Clone, Debug)]
pub struct Img {
    pub path: PathBuf,
    /// Byte offset of the volume (0, or the partition's start).
    pub offset: u64,
    /// Length of the volume in bytes.
    pub len: u64,
    pub bits: u8,
}

pub const PART_START: u64 = 1 << 20;

fn sh(cmd: &mut Command) -> Output {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// A command of mtools: no geometry check (images of any size).
pub fn mtools(tool: &str) -> Command {
    let mut c = Command::new(tool);
    c.env("MTOOLS_SKIP_CHECK", "1")
        .env("MTOOLS_NO_VFAT", "0")
        .env("MTOOLS_LOWER_CASE", "0");
    c
}

/// `mkfs.fat -F BITS` on a new image of `mib` MiB in `dir`, as `layout` says. FAT32 uses one
/// sector per cluster on small images (mkfs.fat needs 65,525 clusters).
pub fn mkfs(dir: &Path, name: &str, bits: u8, mib: u64, layout: Layout) -> Img {
    let path = dir.join(name);
    let total = mib << 20;
    sh(Command::new("truncate")
        .arg("-s")
        .arg(total.to_string())
        .arg(&path));
    let (offset, len) = match layout {
        Layout::Whole => (0, total),
        Layout::Mbr | Layout::Gpt => {
            // GPT keeps 33 sectors at the end for its backup.
            let len = total - PART_START - if layout == Layout::Gpt { 1 << 20 } else { 0 };
            let script = if layout == Layout::Mbr {
                format!("label: dos\nstart=2048, size={}, type=c\n", len / 512)
            } else {
                format!(
                    "label: gpt\nstart=2048, size={}, type=EBD0A0A2-B9E5-4433-87C0-68B6B72699C7\n",
                    len / 512
                )
            };
            let mut c = Command::new("sfdisk");
            c.arg("--no-reread").arg("-q").arg(&path);
            c.stdin(std::process::Stdio::piped())
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped());
            let mut child = c.spawn().unwrap();
            use std::io::Write;
            child
                .stdin
                .take()
                .unwrap()
                .write_all(script.as_bytes())
                .unwrap();
            let out = child.wait_with_output().unwrap();
            assert!(
                out.status.success(),
                "sfdisk: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            (PART_START, len)
        }
    };
    let mut c = Command::new("mkfs.fat");
    c.arg("-F").arg(bits.to_string()).arg("-n").arg("NO NAME");
    if bits == 32 && mib < 600 {
        c.arg("-s").arg("1");
    }
    if offset != 0 {
        c.arg("--offset").arg((offset / 512).to_string());
    }
    c.arg(&path).arg((len / 1024).to_string());
    sh(&mut c);
    Img {
        path,
        offset,
        len,
        bits,
    }
}

impl Img {
    /// The image as mtools addresses it (`IMG@@OFFSET`).
    pub fn target(&self) -> String {
        if self.offset == 0 {
            self.path.display().to_string()
        } else {
            format!("{}@@{}", self.path.display(), self.offset)
        }
    }

    /// `mcopy -s -m` of the contents of `src` to `::/DEST` (DEST "" is the root).
    pub fn mcopy_in(&self, src: &Path, dest: &str) {
        let mut entries: Vec<PathBuf> = std::fs::read_dir(src)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        entries.sort();
        if entries.is_empty() {
            return;
        }
        sh(mtools("mcopy")
            .arg("-s")
            .arg("-m")
            .arg("-i")
            .arg(self.target())
            .args(&entries)
            .arg(format!("::/{dest}")));
    }

    /// `mcopy -s -n` of the volume's root (or of the named top-level entries) into `dst`.
    pub fn mcopy_out(&self, dst: &Path, only: &[&str]) {
        std::fs::create_dir_all(dst).unwrap();
        let names: Vec<String> = if only.is_empty() {
            self.ls_root()
        } else {
            only.iter().map(|s| s.to_string()).collect()
        };
        if names.is_empty() {
            return;
        }
        let mut c = mtools("mcopy");
        c.arg("-s").arg("-n").arg("-m").arg("-i").arg(self.target());
        for n in &names {
            c.arg(format!("::/{n}"));
        }
        sh(c.arg(dst));
    }

    /// Names in the root directory, as `mdir -b` prints them (short names; long ones if any).
    pub fn ls_root(&self) -> Vec<String> {
        self.ls("")
    }

    /// Names in a directory of the volume, without `.` and `..`.
    pub fn ls(&self, dir: &str) -> Vec<String> {
        let out = sh(mtools("mdir")
            .arg("-b")
            .arg("-i")
            .arg(self.target())
            .arg(format!("::/{dir}")));
        let mut v: Vec<String> = String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| {
                l.trim_end_matches('/')
                    .rsplit('/')
                    .next()
                    .map(str::to_string)
            })
            .filter(|n| !n.is_empty() && n != "." && n != "..")
            .collect();
        v.sort();
        v
    }

    /// `mtype` of one file.
    pub fn mtype(&self, path: &str) -> Vec<u8> {
        sh(mtools("mtype")
            .arg("-i")
            .arg(self.target())
            .arg(format!("::/{path}")))
        .stdout
    }

    /// `fsck.fat -n` of the volume (a partition is run on a loop device of its bytes).
    pub fn fsck(&self) -> Fsck {
        if self.offset == 0 {
            return fsck_path(&self.path);
        }
        let l = Loop::attach(&self.path, self.offset, Some(self.len), false);
        fsck_path(&l.dev)
    }

    /// The volume's boot sector.
    pub fn boot(&self) -> Vec<u8> {
        read_at(&self.path, self.offset, 512)
    }

    /// Whether the dirty bit of the boot sector is set (BPB byte 37 on FAT12/16, 65 on FAT32;
    /// the bit the Linux driver and fsck.fat use).
    pub fn dirty(&self) -> bool {
        let b = self.boot();
        let fat32 = u16::from_le_bytes([b[22], b[23]]) == 0;
        b[if fat32 { 65 } else { 37 }] & 1 != 0
    }

    /// Set or clear the dirty bit, as a crashed kernel driver leaves it.
    pub fn set_dirty(&self, on: bool) {
        let b = self.boot();
        let fat32 = u16::from_le_bytes([b[22], b[23]]) == 0;
        let at = if fat32 { 65 } else { 37 };
        let v = if on { b[at] | 1 } else { b[at] & !1 };
        write_at(&self.path, self.offset + at as u64, &[v]);
    }

    /// The volume label of the boot sector (BPB), trimmed.
    pub fn boot_label(&self) -> String {
        let b = self.boot();
        let fat32 = u16::from_le_bytes([b[22], b[23]]) == 0;
        let at = if fat32 { 71 } else { 43 };
        String::from_utf8_lossy(&b[at..at + 11])
            .trim_end()
            .to_string()
    }

    /// The volume label as mtools reads it (the root directory's label entry).
    pub fn mlabel(&self) -> String {
        let out = sh(mtools("mlabel")
            .arg("-s")
            .arg("-i")
            .arg(self.target())
            .arg("::"));
        let s = String::from_utf8_lossy(&out.stdout).to_string();
        s.trim()
            .strip_prefix("Volume label is ")
            .map(|x| x.trim().to_string())
            .unwrap_or_default()
    }

    /// Every directory entry of the volume as `mdir -/ -a` lists it: (directory, line). A line
    /// with a long name has a field after the time; see [`Img::long_names`].
    pub fn long_names(&self) -> Vec<String> {
        let out = sh(mtools("mdir")
            .arg("-/")
            .arg("-a")
            .arg("-i")
            .arg(self.target())
            .arg("::/"));
        let mut found = Vec::new();
        for l in String::from_utf8_lossy(&out.stdout).lines() {
            // "NAME     EXT   SIZE|<DIR> YYYY-MM-DD  HH:MM  [LONG NAME]"
            let f: Vec<&str> = l.split_whitespace().collect();
            let Some(t) = f.iter().position(|x| {
                x.len() == 5
                    && x.as_bytes()[2] == b':'
                    && x.chars().all(|c| c.is_ascii_digit() || c == ':')
            }) else {
                continue;
            };
            if t >= 2 && f[t - 1].len() == 10 && f[t - 1].as_bytes()[4] == b'-' && t + 1 < f.len() {
                found.push(l.to_string());
            }
        }
        found
    }

    /// Where a file's first cluster lies, as a byte offset in the volume (`mshowfat`).
    pub fn first_cluster_byte(&self, path: &str) -> u64 {
        let out = sh(mtools("mshowfat")
            .arg("-i")
            .arg(self.target())
            .arg(format!("::/{path}")));
        let s = String::from_utf8_lossy(&out.stdout);
        // "::/P00001/DICOMDIR <2-5>" or "<2-5><7-9>"
        let first: u64 = s
            .split('<')
            .nth(1)
            .and_then(|x| x.split(['-', '>']).next())
            .and_then(|x| x.trim().parse().ok())
            .unwrap_or_else(|| panic!("mshowfat {path}: {s}"));
        let g = Geometry::of(self);
        g.cluster_byte(first)
    }
}

/// The BPB figures needed to find clusters.
#[derive(Clone, Copy, Debug)]
pub struct Geometry {
    pub bps: u64,
    pub spc: u64,
    pub reserved: u64,
    pub fats: u64,
    pub fat_sectors: u64,
    pub root_entries: u64,
    pub total_sectors: u64,
    pub root_cluster: u32,
    pub fsinfo: u64,
}

impl Geometry {
    pub fn of(img: &Img) -> Geometry {
        let b = img.boot();
        let u16at = |i: usize| u16::from_le_bytes([b[i], b[i + 1]]) as u64;
        let u32at = |i: usize| u32::from_le_bytes(b[i..i + 4].try_into().unwrap()) as u64;
        let f16 = u16at(22);
        let t16 = u16at(19);
        Geometry {
            bps: u16at(11),
            spc: b[13] as u64,
            reserved: u16at(14),
            fats: b[16] as u64,
            fat_sectors: if f16 != 0 { f16 } else { u32at(36) },
            root_entries: u16at(17),
            total_sectors: if t16 != 0 { t16 } else { u32at(32) },
            root_cluster: if f16 == 0 { u32at(44) as u32 } else { 0 },
            fsinfo: if f16 == 0 { u16at(48) } else { 0 },
        }
    }
    pub fn cluster_bytes(&self) -> u64 {
        self.bps * self.spc
    }
    pub fn data_start(&self) -> u64 {
        (self.reserved + self.fats * self.fat_sectors) * self.bps
            + (self.root_entries * 32).div_ceil(self.bps) * self.bps
    }
    pub fn cluster_byte(&self, c: u64) -> u64 {
        self.data_start() + (c - 2) * self.cluster_bytes()
    }
    pub fn clusters(&self) -> u64 {
        (self.total_sectors * self.bps - self.data_start()) / self.cluster_bytes()
    }
}

/// Reserve `bytes` of a FAT32 volume as one contiguous file `/NAME` (8.3, no long name) placed
/// right after the highest used cluster, without writing its data (a sparse image stays sparse;
/// the file reads as zeros). Later allocations by mtools land after it: this is how files and
/// directories are put past the 2 GiB and 4 GiB marks of a big image. FSInfo is kept right.
pub fn reserve_fat32(img: &Img, name11: &[u8; 11], bytes: u64) {
    let g = Geometry::of(img);
    assert!(g.root_cluster != 0, "reserve_fat32 needs FAT32");
    let fat_at = img.offset + g.reserved * g.bps;
    let fat_len = g.fat_sectors * g.bps;
    let mut fat = read_at(&img.path, fat_at, fat_len as usize);
    let ent = |fat: &[u8], c: u64| {
        u32::from_le_bytes(fat[c as usize * 4..c as usize * 4 + 4].try_into().unwrap())
            & 0x0FFF_FFFF
    };
    let max = g.clusters() + 2;
    let high = (2..max).rev().find(|&c| ent(&fat, c) != 0).unwrap_or(2);
    let n = bytes.div_ceil(g.cluster_bytes());
    let start = high + 1;
    assert!(
        start + n <= max,
        "the volume is too small to reserve {bytes} bytes"
    );
    for c in start..start + n {
        let v: u32 = if c == start + n - 1 {
            0x0FFF_FFFF
        } else {
            c as u32 + 1
        };
        fat[c as usize * 4..c as usize * 4 + 4].copy_from_slice(&v.to_le_bytes());
    }
    for k in 0..g.fats {
        write_at(&img.path, fat_at + k * fat_len, &fat);
    }
    // A free slot in the root directory's first cluster.
    let root_at = img.offset + g.cluster_byte(g.root_cluster as u64);
    let root = read_at(&img.path, root_at, g.cluster_bytes() as usize);
    let slot = (0..root.len() / 32)
        .find(|&i| root[i * 32] == 0 || root[i * 32] == 0xE5)
        .expect("a free slot in the root's first cluster");
    let mut e = [0u8; 32];
    e[..11].copy_from_slice(name11);
    e[11] = 0x20;
    e[20..22].copy_from_slice(&((start >> 16) as u16).to_le_bytes());
    e[26..28].copy_from_slice(&(start as u16).to_le_bytes());
    e[28..32].copy_from_slice(&(bytes as u32).to_le_bytes());
    // 2024-01-01 00:00
    let date = (((2024 - 1980) << 9) | (1 << 5) | 1u16).to_le_bytes();
    for at in [16, 18, 24] {
        e[at..at + 2].copy_from_slice(&date);
    }
    write_at(&img.path, root_at + slot as u64 * 32, &e);
    // FSInfo: free count and next free.
    let fsi = img.offset + g.fsinfo * g.bps;
    let free = (2..max).filter(|&c| ent(&fat, c) == 0).count() as u32;
    write_at(&img.path, fsi + 488, &free.to_le_bytes());
    write_at(&img.path, fsi + 492, &((start + n) as u32).to_le_bytes());
}

pub fn read_at(path: &Path, off: u64, n: usize) -> Vec<u8> {
    use std::os::unix::fs::FileExt;
    let f = std::fs::File::open(path).unwrap();
    let mut b = vec![0u8; n];
    f.read_exact_at(&mut b, off).unwrap();
    b
}

pub fn write_at(path: &Path, off: u64, data: &[u8]) {
    use std::os::unix::fs::FileExt;
    let f = std::fs::OpenOptions::new().write(true).open(path).unwrap();
    f.write_all_at(data, off).unwrap();
    f.sync_data().unwrap();
}

/// What `fsck.fat -n` said.
#[derive(Clone, Debug)]
pub struct Fsck {
    pub code: i32,
    pub out: String,
    pub findings: Vec<FsckFinding>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FsckFinding {
    DirtyBit,
    /// Clusters allocated but in no chain (what a pulled stick leaves).
    LostClusters,
    /// A chain longer than its file's size.
    ChainLonger(String),
    /// FSInfo's free count (advisory) is wrong or unset.
    FreeCount,
    /// FAT32: the boot sector and its backup differ only in the dirty bit.
    BackupBootDirty,
    /// The FAT copies differ but each is consistent (a crash between writing the first and
    /// the second copy, as a kernel driver can leave too); fsck.fat uses the first.
    FatsDiffer,
    Other(String),
}

/// Lines fsck.fat prints that are not findings.
fn fsck_noise(l: &str) -> bool {
    let t = l.trim();
    t.is_empty()
        || t.starts_with("fsck.fat ")
        || t == "Leaving filesystem unchanged."
        || t.contains(" files, ") && t.contains(" clusters")
        || t.starts_with("Automatically removing dirty bit")
        || t.starts_with("Auto-correcting")
        || t.starts_with("Truncating file to")
}

pub fn fsck_path(p: &Path) -> Fsck {
    need("fsck.fat");
    let out = Command::new("fsck.fat").arg("-n").arg(p).output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let mut findings = Vec::new();
    let lines: Vec<&str> = text.lines().collect();
    let mut i = 0;
    while i < lines.len() {
        let l = lines[i].trim();
        if fsck_noise(l) {
        } else if l.starts_with("Dirty bit is set") {
            findings.push(FsckFinding::DirtyBit);
        } else if l.starts_with("Reclaimed ") && l.contains("unused cluster") {
            findings.push(FsckFinding::LostClusters);
        } else if l.starts_with("There are differences between boot sector and its backup") {
            // Lines of "OFFSET:ORIGINAL/BACKUP" follow. Only the dirty bit (FAT32: byte 65)
            // differing is what a kernel driver leaves (it marks only the first copy).
            let mut offsets = Vec::new();
            while let Some(n) = lines.get(i + 1).map(|x| x.trim()) {
                if n.starts_with("This is mostly harmless") {
                } else if let Some((o, _)) = n
                    .split_once(':')
                    .filter(|(o, v)| o.chars().all(|c| c.is_ascii_digit()) && v.contains('/'))
                {
                    offsets.push(o.parse::<u32>().unwrap_or(0));
                } else if n.starts_with("Not automatically fixing") {
                } else {
                    break;
                }
                i += 1;
            }
            if offsets == [65] {
                findings.push(FsckFinding::BackupBootDirty);
            } else {
                findings.push(FsckFinding::Other(format!(
                    "boot sector and backup differ at {offsets:?}"
                )));
            }
        } else if l.starts_with("FATs differ but appear to be intact") {
            findings.push(FsckFinding::FatsDiffer);
        } else if l.starts_with("Using first FAT") {
        } else if l.starts_with("Free cluster summary") {
            findings.push(FsckFinding::FreeCount);
        } else if l.starts_with('/')
            && lines
                .get(i + 1)
                .is_some_and(|n| n.contains("cluster chain length is >"))
        {
            findings.push(FsckFinding::ChainLonger(l.to_string()));
            i += 1;
        } else {
            findings.push(FsckFinding::Other(l.to_string()));
        }
        i += 1;
    }
    Fsck {
        code: out.status.code().unwrap_or(-1),
        out: text,
        findings,
    }
}

/// `fsck.fat -n` exits 0 and finds nothing.
pub fn assert_fsck_clean(img: &Img) {
    let f = img.fsck();
    assert!(
        f.code == 0 && f.findings.is_empty(),
        "fsck.fat -n {} is not clean (exit {}):\n{}",
        img.path.display(),
        f.code,
        f.out
    );
}

/// `fsck.fat -n` finds at most what a pulled stick leaves under a kernel driver (the dirty bit,
/// lost clusters, FSInfo's free count, FAT copies that differ but are each intact) or what the
/// FAT layer's crash plan allows (a chain longer than its file).
pub fn assert_fsck_only_crash_damage(img: &Img, what: &str) -> Fsck {
    let f = img.fsck();
    let bad: Vec<&FsckFinding> = f
        .findings
        .iter()
        .filter(|x| matches!(x, FsckFinding::Other(_)))
        .collect();
    assert!(
        bad.is_empty(),
        "{what}: fsck.fat -n {} found more than crash damage: {bad:?}\n{}",
        img.path.display(),
        f.out
    );
    f
}

/// A loop device over (part of) a file; detached when dropped.
pub struct Loop {
    pub dev: PathBuf,
}

impl Loop {
    pub fn attach(file: &Path, offset: u64, size: Option<u64>, writable: bool) -> Loop {
        need("losetup");
        let mut c = Command::new("losetup");
        c.arg("--find").arg("--show");
        if offset != 0 {
            c.arg("--offset").arg(offset.to_string());
        }
        if let Some(s) = size {
            c.arg("--sizelimit").arg(s.to_string());
        }
        if !writable {
            c.arg("--read-only");
        }
        let out = sh(c.arg(file));
        Loop {
            dev: PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()),
        }
    }
}

impl Drop for Loop {
    fn drop(&mut self) {
        for _ in 0..50 {
            if Command::new("losetup")
                .arg("-d")
                .arg(&self.dev)
                .status()
                .map(|s| s.success())
                .unwrap_or(false)
            {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
    }
}

/// `dicomfs ARGS...`: its output (not asserted).
pub fn dicomfs(args: &[&std::ffi::OsStr]) -> Output {
    Command::new(bin()).args(args).output().unwrap()
}

/// The File-set ID `fat_fileset` gives (and so the volume label `dicomfs init` sets).
pub const FILESET_ID: &str = "CARD 2024";

/// A new FAT image holding an empty File-set (`dicomfs init --fileset-id FILESET_ID IMG`,
/// which also labels the volume).
pub fn fat_fileset(dir: &Path, name: &str, bits: u8, mib: u64, layout: Layout) -> Img {
    let img = mkfs(dir, name, bits, mib, layout);
    let out = Command::new(bin())
        .arg("init")
        .arg("--fileset-id")
        .arg(FILESET_ID)
        .arg(&img.path)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "dicomfs init {}: {}{}",
        img.path.display(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    img
}

/// Copy the File-set of a FAT image out with `mcopy -s` and run the oracles on the copy.
pub fn assert_fat_oracles_pass(img: &Img, scratch: &Path) -> PathBuf {
    let out = scratch.join(format!(
        "mcopy-out-{}",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    ));
    img.mcopy_out(&out, &[]);
    assert_oracles_pass(&out);
    out
}

/// Rename every file and directory below `dir` to uppercase (a copy of a lowercase medium,
/// before the oracles, which look for `DICOMDIR` and uppercase File IDs).
pub fn upcase_tree(dir: &Path) {
    for e in std::fs::read_dir(dir).unwrap() {
        let e = e.unwrap();
        let mut p = e.path();
        let up = e.file_name().to_string_lossy().to_uppercase();
        if *up != *e.file_name().to_string_lossy() {
            let q = dir.join(&up);
            std::fs::rename(&p, &q).unwrap();
            p = q;
        }
        if p.is_dir() {
            upcase_tree(&p);
        }
    }
}
