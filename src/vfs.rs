//! The views of a File-set as inodes: the native view (the medium as it is) and the alternate
//! `.dcm` view (patient / study / series / instance built from the DICOMDIR). No FUSE here: the
//! adapter in [`crate::fuse`] only translates requests into these calls, so all of this is tested
//! without a mount.
//!
//! Inode 1 is the root. Inodes are never reused while mounted. A `.dcm` entry has the inode of
//! its native file, so both names are the same file.

use crate::dicom::tags;
use crate::dicomdir::{DicomDir, Record};
use crate::error::{Error, Result};
use crate::fileset::{self, FileSet, Spelling, DICOMDIR};
use fsimpl::{Kind, Medium, Stat, StatFs};
use parking_lot::RwLock;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::SystemTime;

pub const ROOT: u64 = 1;
/// The alternate view's directory at the root in `both` mode: lowercase, so it can never be a
/// File ID component.
pub const ALT_DIR: &str = "by-patient";

/// Which views a mount shows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum View {
    /// The medium as it is (default).
    Native,
    /// The alternate `.dcm` view at the root.
    Dcm,
    /// Native at the root, the alternate view under [`ALT_DIR`].
    Both,
}

impl std::str::FromStr for View {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<View, String> {
        match s {
            "native" => Ok(View::Native),
            "dcm" => Ok(View::Dcm),
            "both" => Ok(View::Both),
            _ => Err(format!("unknown view {s:?} (native, dcm or both)")),
        }
    }
}

#[derive(Clone, Debug)]
pub struct Options {
    pub view: View,
    /// Answer lookups whatever their case (for viewers that ask for lowercase names).
    pub case_insensitive: bool,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            view: View::Native,
            case_insensitive: false,
        }
    }
}

/// Attributes of an inode.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Attr {
    pub ino: u64,
    pub kind: Kind,
    pub size: u64,
    pub mtime: SystemTime,
    pub atime: SystemTime,
    pub ctime: SystemTime,
    pub perm: u16,
    pub nlink: u32,
}

/// A directory's entries, with an index for lookups.
#[derive(Default)]
struct Listing {
    entries: Vec<(Box<str>, u64)>,
    index: HashMap<Box<str>, u32>,
}

impl Listing {
    fn push(&mut self, name: Box<str>, ino: u64) {
        self.index.insert(name.clone(), self.entries.len() as u32);
        self.entries.push((name, ino));
    }
    fn get(&self, name: &str, case_insensitive: bool) -> Option<u64> {
        if let Some(&i) = self.index.get(name) {
            return Some(self.entries[i as usize].1);
        }
        if case_insensitive {
            return self
                .entries
                .iter()
                .find(|(n, _)| n.eq_ignore_ascii_case(name))
                .map(|e| e.1);
        }
        None
    }
}

enum Data {
    /// A file or directory of the medium.
    Native {
        /// Path on the medium, as the medium spells it.
        path: Box<str>,
        /// Path as shown (File IDs in their DICOMDIR spelling).
        shown: Box<str>,
        stat: Option<Stat>,
        listing: Option<Arc<Listing>>,
    },
    /// A directory of the alternate view.
    Virtual { listing: Arc<Listing> },
}

struct Node {
    kind: Kind,
    data: Data,
}

struct Nodes {
    nodes: Vec<Node>,
    /// Native shown path -> inode.
    by_path: HashMap<Box<str>, u64>,
}

impl Nodes {
    fn get(&self, ino: u64) -> Result<&Node> {
        ino.checked_sub(1)
            .and_then(|i| self.nodes.get(i as usize))
            .ok_or(Error::NotFound {
                path: format!("inode {ino}"),
            })
    }
    fn add(&mut self, n: Node) -> u64 {
        self.nodes.push(n);
        self.nodes.len() as u64
    }
    /// The inode of a native path, created on first sight.
    fn native(&mut self, path: &str, shown: &str, kind: Kind) -> u64 {
        if let Some(&i) = self.by_path.get(shown) {
            if let Data::Native { path: p, .. } = &mut self.nodes[i as usize - 1].data {
                if **p != *path {
                    *p = path.into();
                }
            }
            return i;
        }
        let i = self.add(Node {
            kind,
            data: Data::Native {
                path: path.into(),
                shown: shown.into(),
                stat: None,
                listing: None,
            },
        });
        self.by_path.insert(shown.into(), i);
        i
    }
}

/// The File-set as a tree of inodes.
pub struct Vfs {
    medium: Arc<dyn Medium>,
    opts: Options,
    nodes: RwLock<Nodes>,
    /// Uppercase shown paths of File ID directories and files (for lowercase media).
    upper: HashSet<Box<str>>,
    alt_root: Option<u64>,
    dicomdir_stat: Stat,
    pub records: usize,
    pub instances: usize,
}

fn epoch_stat() -> Stat {
    Stat {
        kind: Kind::Dir,
        size: 0,
        mtime: SystemTime::UNIX_EPOCH,
        atime: SystemTime::UNIX_EPOCH,
        ctime: SystemTime::UNIX_EPOCH,
    }
}

impl Vfs {
    /// Build the views of an opened File-set.
    pub fn new(fs: FileSet, opts: Options) -> Vfs {
        let medium = fs.medium.clone();
        let dicomdir_path = fileset::medium_path(DICOMDIR, fs.spelling);
        let dicomdir_stat = medium.stat(&dicomdir_path).unwrap_or_else(|_| epoch_stat());
        let mut nodes = Nodes {
            nodes: Vec::new(),
            by_path: HashMap::new(),
        };
        // Inode 1: the root.
        let root_is_native = opts.view != View::Dcm;
        if root_is_native {
            nodes.native("", "", Kind::Dir);
        } else {
            nodes.add(Node {
                kind: Kind::Dir,
                data: Data::Virtual {
                    listing: Arc::new(Listing::default()),
                },
            });
        }
        nodes.native(&dicomdir_path, DICOMDIR, Kind::File);
        let mut upper = HashSet::new();
        let d = &fs.dir;
        let visible = d.visible();
        let mut instances = 0;
        for &i in &visible {
            let Some(fid) = d.records[i as usize].file_id.as_deref() else {
                continue;
            };
            let Some(path) = fs.path_of(fid) else {
                continue;
            };
            let shown = fid.replace('\\', "/");
            nodes.native(&path, &shown, Kind::File);
            instances += 1;
            if fs.spelling == Spelling::Lower {
                let mut p = shown.as_str();
                upper.insert(p.into());
                while let Some(k) = p.rfind('/') {
                    p = &p[..k];
                    if !upper.insert(p.into()) {
                        break;
                    }
                }
            }
        }
        if fs.spelling == Spelling::Lower {
            upper.insert(DICOMDIR.into());
        }
        let mut vfs = Vfs {
            medium,
            opts: opts.clone(),
            nodes: RwLock::new(nodes),
            upper,
            alt_root: None,
            dicomdir_stat,
            records: d.records.len(),
            instances,
        };
        if opts.view != View::Native {
            let mut nodes = vfs.nodes.write();
            let alt = build_alt(&mut nodes, d);
            drop(nodes);
            if opts.view == View::Dcm {
                // The alternate tree's root becomes inode 1.
                let mut nodes = vfs.nodes.write();
                let listing = match &nodes.nodes[alt as usize - 1].data {
                    Data::Virtual { listing } => listing.clone(),
                    Data::Native { .. } => Arc::new(Listing::default()),
                };
                nodes.nodes[0].data = Data::Virtual { listing };
                vfs.alt_root = Some(ROOT);
            } else {
                vfs.alt_root = Some(alt);
            }
        }
        vfs
    }

    pub fn medium(&self) -> &Arc<dyn Medium> {
        &self.medium
    }

    fn attr_of(&self, ino: u64, node: &Node, stat: Stat) -> Attr {
        Attr {
            ino,
            kind: node.kind,
            size: if node.kind == Kind::File {
                stat.size
            } else {
                0
            },
            mtime: stat.mtime,
            atime: stat.atime,
            ctime: stat.ctime,
            perm: if node.kind == Kind::Dir { 0o555 } else { 0o444 },
            nlink: if node.kind == Kind::Dir { 2 } else { 1 },
        }
    }

    /// Attributes of an inode (M-INQUIRE FILE).
    pub fn getattr(&self, ino: u64) -> Result<Attr> {
        let nodes = self.nodes.read();
        let node = nodes.get(ino)?;
        match &node.data {
            Data::Virtual { .. } => Ok(self.attr_of(ino, node, self.dicomdir_stat)),
            Data::Native { stat: Some(st), .. } => Ok(self.attr_of(ino, node, *st)),
            Data::Native { path, .. } => {
                let path = path.clone();
                drop(nodes);
                let st = self
                    .medium
                    .stat(&path)
                    .map_err(|e| Error::medium(path.to_string(), e))?;
                let mut nodes = self.nodes.write();
                let node = &mut nodes.nodes[ino as usize - 1];
                if let Data::Native { stat, .. } = &mut node.data {
                    *stat = Some(st);
                }
                node.kind = st.kind;
                Ok(self.attr_of(ino, node, st))
            }
        }
    }

    fn listing(&self, ino: u64) -> Result<Arc<Listing>> {
        let nodes = self.nodes.read();
        let node = nodes.get(ino)?;
        if node.kind != Kind::Dir {
            return Err(Error::medium(
                format!("inode {ino}"),
                std::io::Error::from_raw_os_error(libc::ENOTDIR),
            ));
        }
        let (path, shown) = match &node.data {
            Data::Virtual { listing } => return Ok(listing.clone()),
            Data::Native {
                listing: Some(l), ..
            } => return Ok(l.clone()),
            Data::Native { path, shown, .. } => (path.clone(), shown.clone()),
        };
        drop(nodes);
        let mut entries = self
            .medium
            .list(&path)
            .map_err(|e| Error::medium(path.to_string(), e))?;
        entries.sort_by(|a, b| a.name.cmp(&b.name));
        let mut nodes = self.nodes.write();
        let mut listing = Listing::default();
        let at_root = ino == ROOT && self.opts.view == View::Both;
        for e in entries {
            let orig = e.name;
            let mut name = orig.clone();
            if !self.upper.is_empty() {
                let up = name.to_ascii_uppercase();
                if up != name && self.upper.contains(fsimpl::join(&shown, &up).as_str()) {
                    name = up;
                }
            }
            if at_root && name == ALT_DIR {
                log::warn!(
                    "{}: the medium's {ALT_DIR:?} is hidden by the alternate view",
                    self.medium.describe()
                );
                continue;
            }
            let real = fsimpl::join(&path, &orig);
            let ci = nodes.native(&real, &fsimpl::join(&shown, &name), e.kind);
            listing.push(name.into(), ci);
        }
        if at_root {
            if let Some(a) = self.alt_root {
                listing.push(ALT_DIR.into(), a);
            }
        }
        let listing = Arc::new(listing);
        if let Data::Native { listing: l, .. } = &mut nodes.nodes[ino as usize - 1].data {
            *l = Some(listing.clone());
        }
        Ok(listing)
    }

    /// Find a name in a directory.
    pub fn lookup(&self, parent: u64, name: &str) -> Result<Attr> {
        let l = self.listing(parent)?;
        match l.get(name, self.opts.case_insensitive) {
            Some(ino) => self.getattr(ino),
            None => Err(Error::NotFound {
                path: name.to_string(),
            }),
        }
    }

    /// Call `f(name, inode, kind)` for a directory's entries from index `skip` on, until it
    /// returns `true` (the reply is full). No copy of the listing is made.
    pub fn readdir_with(
        &self,
        ino: u64,
        skip: usize,
        mut f: impl FnMut(usize, &str, u64, Kind) -> bool,
    ) -> Result<()> {
        let l = self.listing(ino)?;
        let nodes = self.nodes.read();
        for (i, (n, child)) in l.entries.iter().enumerate().skip(skip) {
            let k = nodes.get(*child).map(|n| n.kind).unwrap_or(Kind::File);
            if f(i, n, *child, k) {
                break;
            }
        }
        Ok(())
    }

    /// A directory's entries with their inodes and kinds.
    pub fn readdir(&self, ino: u64) -> Result<Vec<(Box<str>, u64, Kind)>> {
        let mut out = Vec::new();
        self.readdir_with(ino, 0, |_, name, child, k| {
            out.push((name.into(), child, k));
            false
        })?;
        Ok(out)
    }

    /// The medium path of a file inode (for opening it).
    pub fn file_path(&self, ino: u64) -> Result<String> {
        let nodes = self.nodes.read();
        let node = nodes.get(ino)?;
        match &node.data {
            Data::Native { path, .. } if node.kind == Kind::File => Ok(path.to_string()),
            _ => Err(Error::medium(
                format!("inode {ino}"),
                std::io::Error::from_raw_os_error(libc::EISDIR),
            )),
        }
    }

    /// Read bytes of a file.
    pub fn read(&self, ino: u64, offset: u64, size: usize) -> Result<Vec<u8>> {
        let path = self.file_path(ino)?;
        let mut buf = vec![0u8; size.min(16 << 20)];
        let n = self
            .medium
            .read_at(&path, offset, &mut buf)
            .map_err(|e| Error::medium(path, e))?;
        buf.truncate(n);
        Ok(buf)
    }

    /// Space on the medium (M-INQUIRE FILE-SET).
    pub fn statfs(&self) -> Result<StatFs> {
        self.medium
            .statfs()
            .map_err(|e| Error::medium(self.medium.describe(), e))
    }

    /// Resolve a `/`-separated path from the root (for tests and tools).
    pub fn resolve(&self, path: &str) -> Result<Attr> {
        let mut a = self.getattr(ROOT)?;
        for c in path.split('/').filter(|c| !c.is_empty()) {
            a = self.lookup(a.ino, c)?;
        }
        Ok(a)
    }
}

// ---------------------------------------------------------------------------------------------
// The alternate view

/// Make a string safe and readable as one path component.
pub fn sanitize(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut space = false;
    for c in s.chars() {
        let c = match c {
            '^' => ' ',
            '/' | '\\' => '_',
            c if c.is_control() => ' ',
            c => c,
        };
        if c.is_whitespace() {
            space = !out.is_empty();
            continue;
        }
        if space {
            out.push(' ');
            space = false;
        }
        out.push(c);
    }
    let mut out = out.trim_end_matches(['.', ' ']).to_string();
    if out.starts_with('.') {
        out.replace_range(0..1, "_");
    }
    if out.len() > 200 {
        let mut k = 200;
        while !out.is_char_boundary(k) {
            k -= 1;
        }
        out.truncate(k);
    }
    out
}

fn iso_date(d: &str) -> String {
    if d.len() == 8 && d.bytes().all(|b| b.is_ascii_digit()) {
        format!("{}-{}-{}", &d[..4], &d[4..6], &d[6..])
    } else {
        d.to_string()
    }
}

pub fn dir_name(d: &DicomDir, r: &Record) -> String {
    let k = |t| r.key(t).unwrap_or("").trim().to_string();
    let name = match &*r.rtype {
        "PATIENT" => {
            let n = sanitize(&k(tags::PATIENT_NAME));
            let n = if n.is_empty() { "(no name)".into() } else { n };
            format!("{n} ({})", k(tags::PATIENT_ID))
        }
        "STUDY" => {
            let mut what = k(tags::STUDY_DESCRIPTION);
            if what.is_empty() {
                let mut mods: Vec<String> = Vec::new();
                for &c in &r.children {
                    let m = d.records[c as usize]
                        .key(tags::MODALITY)
                        .unwrap_or("")
                        .trim();
                    if !m.is_empty() && !mods.iter().any(|x| x == m) {
                        mods.push(m.to_string());
                    }
                }
                what = mods.join("+");
            }
            format!("{} {what}", iso_date(&k(tags::STUDY_DATE)))
        }
        "SERIES" => format!(
            "{} {} {}",
            k(tags::SERIES_NUMBER),
            k(tags::MODALITY),
            k(tags::SERIES_DESCRIPTION)
        ),
        other => other.to_string(),
    };
    let s = sanitize(&name);
    if s.is_empty() {
        sanitize(&r.rtype.to_ascii_lowercase())
    } else {
        s
    }
}

pub fn leaf_name(r: &Record) -> String {
    let n = sanitize(r.key(tags::INSTANCE_NUMBER).unwrap_or(""));
    if n.is_empty() {
        format!("{}.dcm", sanitize(&r.rtype.to_ascii_lowercase()))
    } else {
        format!("{n}.dcm")
    }
}

/// Give `name` a suffix until it is not in `taken`: "x", "x (2)", "x (3)"... (before ".dcm").
fn unique(name: String, taken: &mut HashSet<String>) -> String {
    if taken.insert(name.clone()) {
        return name;
    }
    let (stem, ext) = match name.strip_suffix(".dcm") {
        Some(s) => (s.to_string(), ".dcm"),
        None => (name.clone(), ""),
    };
    for k in 2.. {
        let c = format!("{stem} ({k}){ext}");
        if taken.insert(c.clone()) {
            return c;
        }
    }
    unreachable!("an unbounded counter always finds a free name")
}

fn build_alt(nodes: &mut Nodes, d: &DicomDir) -> u64 {
    fn dir(nodes: &mut Nodes, d: &DicomDir, kids: &[u32], depth: usize) -> u64 {
        let mut listing = Listing::default();
        let mut taken = HashSet::new();
        for &c in kids {
            let r = &d.records[c as usize];
            if !r.in_use {
                continue;
            }
            let file = r.file_id.as_deref().and_then(|f| {
                let shown = f.replace('\\', "/");
                nodes.by_path.get(shown.as_str()).copied()
            });
            match file {
                Some(ino) if r.children.iter().all(|&k| !d.records[k as usize].in_use) => {
                    listing.push(unique(leaf_name(r), &mut taken).into(), ino);
                }
                _ if r.children.is_empty() || depth > 16 => {}
                _ => {
                    let name = unique(dir_name(d, r), &mut taken);
                    let ino = dir(nodes, d, &r.children, depth + 1);
                    listing.push(name.into(), ino);
                }
            }
        }
        nodes.add(Node {
            kind: Kind::Dir,
            data: Data::Virtual {
                listing: Arc::new(listing),
            },
        })
    }
    dir(nodes, d, &d.roots, 0)
}

#[cfg(test)]
mod tests;
