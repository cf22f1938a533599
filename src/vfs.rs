//! The views of a File-set as inodes: the native view (the medium as it is) and the alternate
//! `.dcm` view (patient / study / series / instance built from the DICOMDIR), and on a writable
//! File-set the names being copied in. No FUSE here: the adapter in [`crate::fuse`] only
//! translates requests into these calls, so all of this is tested without a mount.
//!
//! Inode 1 is the root. Inodes are never reused while mounted. A `.dcm` entry has the inode of
//! its native file, so both names are the same file.
//!
//! Copying in (see `write.rs`): a file created under a name that is not a File ID is *staged*:
//! its bytes go to a file in the medium's staging directory, and when it is closed it is handed
//! to [`Live::ingest`]. Its name then becomes a *ghost*: hidden from listings, but still found by
//! lookups (so `rsync` can rename it and set its times right after closing it).

mod write;

use crate::dicom::tags;
use crate::dicomdir::{DicomDir, Record};
use crate::error::{Error, Result};
use crate::fileset::{self, FileSet, Spelling, DICOMDIR};
use crate::fsu::{Live, Profile, STAGING};
use fsimpl::{Kind, Medium, Stat, StatFs};
use parking_lot::RwLock;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
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
#[derive(Default, Clone)]
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

/// A file being copied in.
struct Staged {
    /// Where it was created (it can be renamed before it is closed).
    parent: u64,
    name: Box<str>,
    /// Its bytes on the medium (in the staging directory); `None` for a file that is dropped
    /// (operating-system clutter, a DICOMDIR), whose bytes are discarded.
    staged: Option<String>,
    /// Why it is dropped, logged when it is closed.
    dropped: Option<String>,
    /// A write that failed (ENOSPC, EFBIG, not DICOM): its errno and reason. Nothing of the
    /// copy is kept, and every later write, truncate and the close return the error again.
    failed: Option<(i32, String)>,
    size: u64,
    mtime: SystemTime,
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
    /// A file being copied in.
    Staged(Staged),
    /// The name a file was copied in under, after it was ingested (or dropped).
    Ghost {
        target: Option<u64>,
        size: u64,
        mtime: SystemTime,
    },
    /// A folder made while copying in (`cp -r`, `rsync`): it holds staged files and ghosts.
    StagingDir { mtime: SystemTime },
}

struct Node {
    kind: Kind,
    data: Data,
}

struct Nodes {
    nodes: Vec<Node>,
    /// Native shown path -> inode.
    by_path: HashMap<Box<str>, u64>,
    /// Alternate-view directories: record index -> inode.
    alt: HashMap<u32, u64>,
    /// (directory, name) of alternate-view directories that went away with their records.
    gone: HashSet<(u64, Box<str>)>,
    /// Entries added by copying in, per directory inode.
    overlay: HashMap<u64, BTreeMap<Box<str>, u64>>,
    /// Native directories made by mkdir in this session: they accept any name (copy-in folders).
    user_dirs: HashSet<u64>,
}

impl Nodes {
    fn get(&self, ino: u64) -> Result<&Node> {
        ino.checked_sub(1)
            .and_then(|i| self.nodes.get(i as usize))
            .ok_or(Error::NotFound {
                path: format!("inode {ino}"),
            })
    }
    fn get_mut(&mut self, ino: u64) -> Result<&mut Node> {
        ino.checked_sub(1)
            .and_then(|i| self.nodes.get_mut(i as usize))
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
            let node = &mut self.nodes[i as usize - 1];
            node.kind = kind;
            if let Data::Native { path: p, .. } = &mut node.data {
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
    /// Where an overlay node is: (directory inode, name).
    fn overlay_entry(&self, ino: u64) -> Option<(u64, Box<str>)> {
        self.overlay.iter().find_map(|(p, m)| {
            m.iter()
                .find(|(_, &c)| c == ino)
                .map(|(n, _)| (*p, n.clone()))
        })
    }

    /// Is an overlay entry shown in listings? Staged files are; ghosts are not; a copy-in
    /// folder is while it is empty or shows something.
    fn visible(&self, ino: u64, depth: usize) -> bool {
        match self.get(ino).map(|n| &n.data) {
            Ok(Data::Staged(_)) => true,
            Ok(Data::StagingDir { .. }) => match self.overlay.get(&ino) {
                None => true,
                Some(m) if m.is_empty() => true,
                Some(m) => depth < 32 && m.values().any(|&c| self.visible(c, depth + 1)),
            },
            _ => false,
        }
    }
}

/// The File-set as a tree of inodes.
pub struct Vfs {
    live: Arc<Live>,
    opts: Options,
    nodes: RwLock<Nodes>,
    /// Uppercase shown paths of File ID directories and files (for lowercase media).
    upper: HashSet<Box<str>>,
    alt_root: Option<u64>,
    dicomdir_stat: Stat,
    /// The File-set generation the views last caught up with.
    seen: AtomicU64,
    /// The alternate view needs a rebuild.
    alt_dirty: std::sync::atomic::AtomicBool,
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
    /// Build the read-only views of an opened File-set.
    pub fn new(fs: FileSet, opts: Options) -> Vfs {
        match Live::open(fs, false, Profile::default()) {
            Ok(live) => Vfs::with_live(Arc::new(live), opts),
            Err(e) => unreachable!("opening read-only cannot fail: {e}"),
        }
    }

    /// Build the views of a live File-set (writable or not).
    pub fn with_live(live: Arc<Live>, opts: Options) -> Vfs {
        let medium = live.medium.clone();
        let st = live.read();
        let spelling = st.spelling;
        let dicomdir_path = fileset::medium_path(DICOMDIR, spelling);
        let dicomdir_stat = medium.stat(&dicomdir_path).unwrap_or_else(|_| epoch_stat());
        let mut nodes = Nodes {
            nodes: Vec::new(),
            by_path: HashMap::new(),
            alt: HashMap::new(),
            gone: HashSet::new(),
            overlay: HashMap::new(),
            user_dirs: HashSet::new(),
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
        let d = &st.dir;
        let visible = d.visible();
        let mut instances = 0;
        for &i in &visible {
            let Some(fid) = d.records[i as usize].file_id.as_deref() else {
                continue;
            };
            if !crate::dicomdir::file_id_safe(fid) {
                continue;
            }
            let path = fileset::medium_path(fid, spelling);
            let shown = fid.replace('\\', "/");
            nodes.native(&path, &shown, Kind::File);
            instances += 1;
            if spelling == Spelling::Lower {
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
        if spelling == Spelling::Lower {
            upper.insert(DICOMDIR.into());
        }
        let alt_root = match opts.view {
            View::Native => None,
            View::Dcm => Some(ROOT),
            View::Both => Some(nodes.add(Node {
                kind: Kind::Dir,
                data: Data::Virtual {
                    listing: Arc::new(Listing::default()),
                },
            })),
        };
        if let Some(a) = alt_root {
            build_alt(&mut nodes, d, a);
            nodes.gone.clear();
        }
        let records = d.records.len();
        let generation = st.generation;
        drop(st);
        Vfs {
            live,
            opts,
            nodes: RwLock::new(nodes),
            upper,
            alt_root,
            dicomdir_stat,
            seen: AtomicU64::new(generation),
            alt_dirty: Default::default(),
            records,
            instances,
        }
    }

    pub fn medium(&self) -> &Arc<dyn Medium> {
        &self.live.medium
    }

    pub fn live(&self) -> &Arc<Live> {
        &self.live
    }

    pub fn writable(&self) -> bool {
        self.live.writable
    }

    /// Catch up with changes to the File-set: drop cached listings of changed medium
    /// directories, give new instance files their inodes, and mark the alternate view for a
    /// rebuild (done when it is next listed).
    fn refresh(&self) {
        let g = self.live.generation();
        if self.seen.load(Ordering::Acquire) == g {
            return;
        }
        let changes = self.live.take_changes();
        let spelling = self.live.read().spelling;
        let mut nodes = self.nodes.write();
        for d in changes.dirs.iter().map(String::as_str).chain([DICOMDIR]) {
            if let Some(&i) = nodes.by_path.get(d) {
                if let Data::Native { listing, stat, .. } = &mut nodes.nodes[i as usize - 1].data {
                    *listing = None;
                    *stat = None;
                }
            }
        }
        for d in &changes.removed {
            let (up, name) = d.rsplit_once('/').unwrap_or(("", d));
            if let Some(&p) = nodes.by_path.get(up) {
                nodes.gone.insert((p, name.into()));
            }
        }
        for fid in &changes.added {
            let shown = fid.replace('\\', "/");
            let i = nodes.native(&fileset::medium_path(fid, spelling), &shown, Kind::File);
            // A File ID freed by a delete and given again: its cached stat is stale.
            if let Data::Native { stat, .. } = &mut nodes.nodes[i as usize - 1].data {
                *stat = None;
            }
            // Into its directory's cached listing, instead of listing the medium again (a
            // `cp -r` adds to the directory it then looks up in).
            let (up, name) = shown.rsplit_once('/').unwrap_or(("", &shown));
            let Some(&p) = nodes.by_path.get(up) else {
                continue;
            };
            if let Data::Native { listing, stat, .. } = &mut nodes.nodes[p as usize - 1].data {
                *stat = None;
                if let Some(l) = listing {
                    if spelling != Spelling::Exact || !self.upper.is_empty() {
                        *listing = None;
                    } else if !l.index.contains_key(name) {
                        Arc::make_mut(l).push(name.into(), i);
                    }
                }
            }
        }
        self.alt_dirty.store(true, Ordering::Release);
        self.seen.store(g, Ordering::Release);
    }

    /// Rebuild the alternate view if the File-set changed since it was built.
    fn refresh_alt(&self) {
        let Some(a) = self.alt_root else {
            return;
        };
        if !self.alt_dirty.swap(false, Ordering::AcqRel) {
            return;
        }
        let mut nodes = self.nodes.write();
        let st = self.live.read();
        build_alt(&mut nodes, &st.dir, a);
    }

    fn attr_of(&self, ino: u64, node: &Node, stat: Stat) -> Attr {
        let w = self.live.writable;
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
            perm: match (node.kind, w) {
                (Kind::Dir, false) => 0o555,
                (Kind::Dir, true) => 0o755,
                (Kind::File, false) => 0o444,
                (Kind::File, true) => 0o644,
            },
            nlink: if node.kind == Kind::Dir { 2 } else { 1 },
        }
    }

    /// Attributes of an inode (M-INQUIRE FILE).
    pub fn getattr(&self, ino: u64) -> Result<Attr> {
        self.refresh();
        let nodes = self.nodes.read();
        let node = nodes.get(ino)?;
        let at = |size: u64, mtime: SystemTime| Stat {
            kind: node.kind,
            size,
            mtime,
            atime: mtime,
            ctime: mtime,
        };
        match &node.data {
            Data::Virtual { .. } => Ok(self.attr_of(ino, node, self.dicomdir_stat)),
            Data::Staged(s) => {
                // Written through passthrough, the daemon does not see the size change.
                let size = match &s.staged {
                    Some(p) => self.medium().stat(p).map(|st| st.size).unwrap_or(s.size),
                    None => s.size,
                };
                Ok(self.attr_of(ino, node, at(size, s.mtime)))
            }
            Data::Ghost {
                target: Some(t),
                mtime,
                ..
            } => {
                // The file it became: its size, with the times given to this name.
                let (t, mtime) = (*t, *mtime);
                drop(nodes);
                let a = self.getattr(t)?;
                Ok(Attr { ino, mtime, ..a })
            }
            Data::Ghost { size, mtime, .. } => Ok(self.attr_of(ino, node, at(*size, *mtime))),
            Data::StagingDir { mtime } => Ok(self.attr_of(ino, node, at(0, *mtime))),
            Data::Native { stat: Some(st), .. } => Ok(self.attr_of(ino, node, *st)),
            Data::Native { path, .. } => {
                let path = path.clone();
                drop(nodes);
                let st = self
                    .medium()
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

    /// The base listing of a native or alternate-view directory (`None` for copy-in folders).
    fn listing(&self, ino: u64) -> Result<Option<Arc<Listing>>> {
        self.refresh();
        if self.alt_root.is_some() && self.alt_dirty.load(Ordering::Acquire) {
            let virt = matches!(
                self.nodes.read().get(ino).map(|n| &n.data),
                Ok(Data::Virtual { .. })
            );
            if virt {
                self.refresh_alt();
            }
        }
        let nodes = self.nodes.read();
        let node = nodes.get(ino)?;
        if node.kind != Kind::Dir {
            return Err(Error::medium(
                format!("inode {ino}"),
                std::io::Error::from_raw_os_error(libc::ENOTDIR),
            ));
        }
        let (path, shown) = match &node.data {
            Data::Virtual { listing } => return Ok(Some(listing.clone())),
            Data::Native {
                listing: Some(l), ..
            } => return Ok(Some(l.clone())),
            Data::Native { path, shown, .. } => (path.clone(), shown.clone()),
            _ => return Ok(None),
        };
        drop(nodes);
        let entries = self
            .medium()
            .list(&path)
            .map_err(|e| Error::medium(path.to_string(), e))?;
        // In the medium's order (`Medium::list`): on FAT the directory's own order, usually
        // the order of the files' clusters, so reading a listing in turn reads the medium
        // front to back.
        let hidden: HashSet<String> = if self.live.writable {
            self.live.read().pending_paths.clone()
        } else {
            HashSet::new()
        };
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
                    self.medium().describe()
                );
                continue;
            }
            let shown_path = fsimpl::join(&shown, &name);
            if (shown.is_empty() && name == STAGING) || hidden.contains(&shown_path) {
                continue;
            }
            let real = fsimpl::join(&path, &orig);
            let ci = nodes.native(&real, &shown_path, e.kind);
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
        Ok(Some(listing))
    }

    /// The inode of a name in a directory, without its attributes.
    fn find(&self, parent: u64, name: &str) -> Result<u64> {
        if let Some(l) = self.listing(parent)? {
            if let Some(ino) = l.get(name, self.opts.case_insensitive) {
                return Ok(ino);
            }
        }
        let nodes = self.nodes.read();
        let ino = nodes
            .overlay
            .get(&parent)
            .and_then(|m| m.get(name).copied());
        match ino {
            Some(i) if self.ghost_alive(&nodes, i) => Ok(i),
            _ => Err(Error::NotFound {
                path: name.to_string(),
            }),
        }
    }

    /// An overlay entry counts unless it is a ghost of an instance deleted since.
    fn ghost_alive(&self, nodes: &Nodes, ino: u64) -> bool {
        let Ok(Node {
            data: Data::Ghost {
                target: Some(t), ..
            },
            ..
        }) = nodes.get(ino)
        else {
            return true;
        };
        match nodes.get(*t).map(|n| &n.data) {
            Ok(Data::Native { shown, .. }) => {
                &**shown == DICOMDIR || self.live.read().references(&shown.replace('/', "\\"))
            }
            _ => true,
        }
    }

    /// Find a name in a directory.
    pub fn lookup(&self, parent: u64, name: &str) -> Result<Attr> {
        let ino = self.find(parent, name)?;
        self.getattr(ino)
    }

    /// Call `f(index, name, inode, kind)` for a directory's entries from index `skip` on, until
    /// it returns `true` (the reply is full).
    pub fn readdir_with(
        &self,
        ino: u64,
        skip: usize,
        mut f: impl FnMut(usize, &str, u64, Kind) -> bool,
    ) -> Result<()> {
        let l = self.listing(ino)?;
        let nodes = self.nodes.read();
        let base = l.as_ref().map(|l| l.entries.len()).unwrap_or(0);
        if let Some(l) = &l {
            for (i, (n, child)) in l.entries.iter().enumerate().skip(skip) {
                let k = nodes.get(*child).map(|n| n.kind).unwrap_or(Kind::File);
                if f(i, n, *child, k) {
                    return Ok(());
                }
            }
        }
        if let Some(m) = nodes.overlay.get(&ino) {
            let visible = m.iter().filter(|(_, &c)| nodes.visible(c, 0));
            for (k, (n, &child)) in visible.enumerate() {
                let i = base + k;
                if i < skip {
                    continue;
                }
                let kind = nodes.get(child).map(|n| n.kind).unwrap_or(Kind::File);
                if f(i, n, child, kind) {
                    break;
                }
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
            Data::Staged(Staged {
                staged: Some(p), ..
            }) => Ok(p.clone()),
            Data::Ghost {
                target: Some(t), ..
            } => {
                let t = *t;
                drop(nodes);
                self.file_path(t)
            }
            Data::Ghost { target: None, .. } | Data::Staged(_) => Err(Error::NotFound {
                path: format!("inode {ino} (dropped)"),
            }),
            _ => Err(Error::medium(
                format!("inode {ino}"),
                std::io::Error::from_raw_os_error(libc::EISDIR),
            )),
        }
    }

    /// The staged bytes' medium path of a file being copied in.
    pub fn staged_path(&self, ino: u64) -> Option<String> {
        let nodes = self.nodes.read();
        match &nodes.get(ino).ok()?.data {
            Data::Staged(Staged {
                staged: Some(p), ..
            }) => Some(p.clone()),
            _ => None,
        }
    }

    /// Is this inode a file of the medium (an instance, the DICOMDIR), as opposed to a file
    /// being copied in?
    pub fn is_native_file(&self, ino: u64) -> bool {
        let nodes = self.nodes.read();
        matches!(
            nodes.get(ino).map(|n| (&n.data, n.kind)),
            Ok((Data::Native { .. }, Kind::File))
        )
    }

    /// Read bytes of a file.
    pub fn read(&self, ino: u64, offset: u64, size: usize) -> Result<Vec<u8>> {
        let mut buf = vec![0u8; size.min(16 << 20)];
        let n = self.read_into(ino, offset, &mut buf)?;
        buf.truncate(n);
        Ok(buf)
    }

    /// [`Vfs::read`] into the caller's buffer (the FUSE adapter reuses one per thread):
    /// the number of bytes read, short only at the end of the file.
    pub fn read_into(&self, ino: u64, offset: u64, buf: &mut [u8]) -> Result<usize> {
        let path = match self.file_path(ino) {
            Ok(p) => p,
            Err(Error::NotFound { .. }) => return Ok(0),
            Err(e) => return Err(e),
        };
        self.medium()
            .read_at(&path, offset, buf)
            .map_err(|e| Error::medium(path, e))
    }

    /// Space on the medium (M-INQUIRE FILE-SET).
    pub fn statfs(&self) -> Result<StatFs> {
        self.medium()
            .statfs()
            .map_err(|e| Error::medium(self.medium().describe(), e))
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

/// Build (or rebuild, keeping inodes) the alternate tree under `root`. Directory inodes are
/// keyed by record index in `alt`; names that disappear from a directory are noted in `gone`.
fn build_alt(nodes: &mut Nodes, d: &DicomDir, root: u64) {
    fn dir(nodes: &mut Nodes, d: &DicomDir, kids: &[u32], depth: usize, ino: u64) {
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
                Some(fino) if r.children.iter().all(|&k| !d.records[k as usize].in_use) => {
                    listing.push(unique(leaf_name(r), &mut taken).into(), fino);
                }
                _ if r.children.is_empty() || depth > 16 => {}
                _ => {
                    let name = unique(dir_name(d, r), &mut taken);
                    let child = match nodes.alt.get(&c) {
                        Some(&i) => i,
                        None => {
                            let i = nodes.add(Node {
                                kind: Kind::Dir,
                                data: Data::Virtual {
                                    listing: Arc::new(Listing::default()),
                                },
                            });
                            nodes.alt.insert(c, i);
                            i
                        }
                    };
                    dir(nodes, d, &r.children, depth + 1, child);
                    listing.push(name.into(), child);
                }
            }
        }
        let node = &mut nodes.nodes[ino as usize - 1];
        if let Data::Virtual { listing: old } = &node.data {
            for (n, _) in &old.entries {
                if !listing.index.contains_key(n) {
                    nodes.gone.insert((ino, n.clone()));
                }
            }
        }
        let node = &mut nodes.nodes[ino as usize - 1];
        node.data = Data::Virtual {
            listing: Arc::new(listing),
        };
    }
    dir(nodes, d, &d.roots, 0, root);
    // Directories of records that went away: empty, their names noted as gone.
    let stale: Vec<(u32, u64)> = nodes
        .alt
        .iter()
        .filter(|(&r, _)| !d.records[r as usize].in_use)
        .map(|(&r, &i)| (r, i))
        .collect();
    for (r, ino) in stale {
        if let Data::Virtual { listing } = &nodes.nodes[ino as usize - 1].data {
            let names: Vec<Box<str>> = listing.entries.iter().map(|e| e.0.clone()).collect();
            for n in names {
                nodes.gone.insert((ino, n));
            }
        }
        nodes.nodes[ino as usize - 1].data = Data::Virtual {
            listing: Arc::new(Listing::default()),
        };
        nodes.alt.remove(&r);
    }
}
