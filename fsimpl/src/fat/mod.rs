//! A FAT12/16/32 medium on a block device or image file, read and written by our own code
//! (no kernel driver).
//!
//! In memory: the FAT as decoded entries (`mem`, the allocator's truth), the FAT bytes as on
//! the device (`disk`), and a tree of the directories and files looked at so far, each file
//! with its cluster chain as runs of contiguous clusters (so a read at any offset costs a
//! binary search, and a request is served with one device read per run).
//!
//! Crash plan (what a kill -9 or a pulled stick can leave; see ARCHITECTURE.md):
//! - A file made by [`Medium::create`] lives in memory only ("pending") until it is synced,
//!   renamed or the medium closed: its data goes to free clusters that the on-disk FAT still
//!   calls free, so a crash before then leaves nothing at all.
//! - Making it real writes, in order: its data (already there), its FAT chain (unreferenced:
//!   a crash now leaves lost clusters), then its directory entry (one 32-byte write).
//! - Renaming onto an existing file rewrites that file's entry in place (one 32-byte write),
//!   then frees the old chain: the old or the new file, never neither, never both.
//! - Growing a file that is on the medium writes data, then the FAT (the chain may be longer
//!   than the size), then the entry. Deleting marks the entry deleted, then frees the chain.
//! - The dirty bit is set while open for writing and cleared by [`Medium::close`]; FSInfo's
//!   free count reads "unknown" while open and is written at close.
//!
//! So fsck.fat can only find lost clusters, a chain longer than its file, and the dirty bit;
//! [`Fat::repair`] fixes all three.

mod dev;
pub mod layout;

pub use dev::{locate, BlockDev, FileDev, MemDev, Window};

use crate::{DirEntry, Kind as EntryKind, Medium, Stat, StatFs};
use layout::{Entry, Geometry, Kind, ATTR_ARCHIVE, ATTR_DIR, ATTR_LFN, ATTR_VOLUME, BAD, EOC};
use parking_lot::Mutex;
use std::collections::{BTreeSet, HashMap};
use std::io;
use std::path::Path;
use std::sync::Arc;
use std::time::SystemTime;

/// How to open a FAT volume.
#[derive(Clone, Debug, Default)]
pub struct FatOptions {
    /// On a partitioned device: the partition (1-based); default the first FAT partition.
    pub partition: Option<u32>,
    /// Open for writing (sets the dirty bit until [`Medium::close`]).
    pub writable: bool,
    /// Open for writing even if the volume was not cleanly unmounted (for repair).
    pub allow_dirty: bool,
}

/// What [`Fat::repair`] changed, one line each.
#[derive(Clone, Debug, Default)]
pub struct RepairReport {
    pub lines: Vec<String>,
}

/// Largest file FAT can hold.
const MAX_FILE: u64 = 0xFFFF_FFFF;
/// Largest directory: 65,536 entries.
const MAX_DIR_SLOTS: u32 = 65536;

fn err(kind: io::ErrorKind, msg: impl Into<String>) -> io::Error {
    io::Error::new(kind, msg.into())
}
fn enoent(path: &str) -> io::Error {
    err(
        io::ErrorKind::NotFound,
        format!("{path}: no such file or directory"),
    )
}
fn errno(n: i32) -> io::Error {
    io::Error::from_raw_os_error(n)
}

/// A run of contiguous clusters of a chain: `len` clusters from `start`, the `logical`-th
/// cluster of the file onwards.
#[derive(Clone, Copy, Debug)]
struct Run {
    logical: u32,
    start: u32,
    len: u32,
}

type Chain = Arc<Vec<Run>>;

fn chain_len(c: &[Run]) -> u32 {
    c.last().map(|r| r.logical + r.len).unwrap_or(0)
}

fn chain_clusters(c: &[Run]) -> impl Iterator<Item = u32> + '_ {
    c.iter().flat_map(|r| r.start..r.start + r.len)
}

fn push_cluster(c: &mut Vec<Run>, cl: u32) {
    if let Some(last) = c.last_mut() {
        if last.start + last.len == cl {
            last.len += 1;
            return;
        }
    }
    let logical = chain_len(c);
    c.push(Run {
        logical,
        start: cl,
        len: 1,
    });
}

/// Where a node's short entry is on the device, and its long-name entries.
#[derive(Clone, Debug)]
struct Slot {
    index: u32,
    off: u64,
    lfn: Vec<(u32, u64)>,
}

struct DirData {
    /// Uppercase names (shown and short) to children.
    keys: HashMap<String, usize>,
    order: Vec<usize>,
    /// Slots before `end` that are free (deleted entries).
    free: BTreeSet<u32>,
    /// The first slot never used (its first byte 0x00).
    end: u32,
    /// From this slot on, every byte is known to be zero.
    zero_from: u32,
    /// Slots the directory holds now.
    capacity: u32,
    /// The root's volume label entry, if any.
    label: Option<u32>,
}

struct Node {
    alive: bool,
    gen: u64,
    parent: usize,
    name: String,
    entry: Entry,
    is_dir: bool,
    /// None: not on the device yet (a new file), or the root.
    slot: Option<Slot>,
    chain: Option<Chain>,
    dir: Option<Box<DirData>>,
}

impl Node {
    /// A live node under `parent`; a directory if the entry says so.
    fn new(parent: usize, name: String, entry: Entry, slot: Option<Slot>) -> Node {
        Node {
            alive: true,
            gen: 0,
            parent,
            name,
            is_dir: entry.attr & ATTR_DIR != 0,
            entry,
            slot,
            chain: None,
            dir: None,
        }
    }
}

/// A directory entry made now (times now, no clusters, size 0).
fn now_entry(short: [u8; 11], attr: u8) -> Entry {
    let (t, d, tenth) = layout::fat_time(SystemTime::now());
    Entry {
        short,
        attr,
        nt_case: 0,
        ctime_tenth: tenth,
        ctime: t,
        cdate: d,
        adate: d,
        first: 0,
        mtime: t,
        mdate: d,
        size: 0,
    }
}

fn upper(s: &str) -> String {
    if s.is_ascii() {
        s.to_ascii_uppercase()
    } else {
        s.to_uppercase()
    }
}

struct State {
    disk: Vec<u8>,
    mem: Vec<u32>,
    dirty_fat: BTreeSet<u64>,
    free: u32,
    hint: u32,
    nodes: Vec<Node>,
    spare: Vec<usize>,
    paths: HashMap<String, (usize, u64)>,
    /// The dirty bit is set on the device.
    marked: bool,
    boot: Vec<u8>,
}

/// A FAT volume.
pub struct Fat {
    dev: Arc<dyn BlockDev>,
    geo: Geometry,
    writable: bool,
    was_dirty: bool,
    st: Mutex<State>,
}

impl Fat {
    /// Open the FAT volume on `dev` (or on a partition of it).
    pub fn open(dev: Arc<dyn BlockDev>, opts: &FatOptions) -> io::Result<Fat> {
        let dev = locate(dev, opts.partition)?;
        let mut boot = vec![0u8; 512];
        dev.read_at(0, &mut boot)?;
        let geo = Geometry::parse(&boot, dev.len()).map_err(|e| {
            err(
                io::ErrorKind::InvalidData,
                format!("{}: {e}", dev.describe()),
            )
        })?;
        if opts.writable && !dev.writable() {
            return Err(errno(libc::EROFS));
        }
        // Only the sectors that hold entries: never more than the clusters the device can hold.
        let mut disk = vec![0u8; geo.fat_used as usize];
        dev.read_at(geo.fat_offset, &mut disk)?;
        let mem: Vec<u32> = (0..geo.clusters + 2).map(|n| geo.get(&disk, n)).collect();
        let free = mem[2..].iter().filter(|&&v| v == 0).count() as u32;
        let mut hint = 2;
        if let Some(at) = geo.fsinfo {
            let mut s = [0u8; 512];
            dev.read_at(at, &mut s)?;
            let nf = u32::from_le_bytes([s[492], s[493], s[494], s[495]]);
            if geo.valid_cluster(nf) {
                hint = nf;
            }
        }
        let clean_bit = geo
            .clean_bit()
            .is_some_and(|b| geo.get(&disk, 1) != EOC && mem[1] & b == 0);
        let was_dirty = boot[geo.dirty_byte] & 1 != 0 || clean_bit;
        let root_entry = Entry {
            first: geo.root_cluster,
            ..now_entry(*b"           ", ATTR_DIR)
        };
        let root = Node::new(0, String::new(), root_entry, None);
        let fat = Fat {
            dev,
            geo,
            writable: opts.writable,
            was_dirty,
            st: Mutex::new(State {
                disk,
                mem,
                dirty_fat: BTreeSet::new(),
                free,
                hint,
                nodes: vec![root],
                spare: Vec::new(),
                paths: HashMap::new(),
                marked: false,
                boot,
            }),
        };
        if opts.writable {
            if was_dirty && !opts.allow_dirty {
                return Err(err(
                    io::ErrorKind::ReadOnlyFilesystem,
                    format!(
                        "{}: the FAT volume was not cleanly unmounted (dirty bit set); run `dicomfs check --repair` on it before writing",
                        fat.dev.describe()
                    ),
                ));
            }
            let mut st = fat.st.lock();
            fat.mark_dirty(&mut st)?;
        }
        Ok(fat)
    }

    /// Open an image file or block device.
    pub fn open_path(path: &Path, opts: &FatOptions) -> io::Result<Fat> {
        let dev: Arc<dyn BlockDev> = Arc::new(FileDev::open(path, opts.writable)?);
        Fat::open(dev, opts)
    }

    /// Whether the volume was marked dirty (not cleanly unmounted) when opened.
    pub fn was_dirty(&self) -> bool {
        self.was_dirty
    }

    /// FAT12, FAT16 or FAT32.
    pub fn kind(&self) -> Kind {
        self.geo.kind
    }

    // ---- dirty bit, FSInfo, FAT write-back ------------------------------------------------

    fn mark_dirty(&self, st: &mut State) -> io::Result<()> {
        if st.marked || !self.writable {
            return Ok(());
        }
        let g = &self.geo;
        if let Some(at) = g.fsinfo {
            self.write_fsinfo(at, 0xFFFF_FFFF, st.hint)?;
        }
        if let Some(bit) = g.clean_bit() {
            let v = st.mem[1] & !bit;
            st.mem[1] = v;
            self.set_disk(st, 1);
            self.write_fat(st)?;
        }
        st.boot[g.dirty_byte] |= 1;
        self.dev.write_at(
            g.dirty_byte as u64,
            &st.boot[g.dirty_byte..g.dirty_byte + 1],
        )?;
        st.marked = true;
        Ok(())
    }

    fn write_fsinfo(&self, at: u64, free: u32, next: u32) -> io::Result<()> {
        let mut s = [0u8; 512];
        self.dev.read_at(at, &mut s)?;
        if s[0..4] != 0x4161_5252u32.to_le_bytes() || s[484..488] != 0x6141_7272u32.to_le_bytes() {
            return Ok(());
        }
        let mut v = [0u8; 8];
        v[0..4].copy_from_slice(&free.to_le_bytes());
        v[4..8].copy_from_slice(&next.to_le_bytes());
        self.dev.write_at(at + 488, &v)
    }

    fn mark_clean(&self, st: &mut State) -> io::Result<()> {
        if !st.marked {
            return Ok(());
        }
        let g = &self.geo;
        self.write_fat(st)?;
        if let Some(at) = g.fsinfo {
            self.write_fsinfo(at, st.free, st.hint)?;
        }
        if let Some(bit) = g.clean_bit() {
            st.mem[1] |= bit;
            self.set_disk(st, 1);
            self.write_fat(st)?;
        }
        self.dev.flush()?;
        st.boot[g.dirty_byte] &= !1;
        self.dev.write_at(
            g.dirty_byte as u64,
            &st.boot[g.dirty_byte..g.dirty_byte + 1],
        )?;
        self.dev.flush()?;
        st.marked = false;
        Ok(())
    }

    /// Copy entry `c` of `mem` into the on-disk FAT image (written by [`Self::write_fat`]).
    fn set_disk(&self, st: &mut State, c: u32) {
        let v = st.mem[c as usize];
        let (a, b) = self.geo.set(&mut st.disk, c, v);
        let bps = self.geo.bytes_per_sector as u64;
        for s in a as u64 / bps..=(b as u64 - 1) / bps {
            st.dirty_fat.insert(s);
        }
    }

    /// Write the changed sectors of the FAT to every copy.
    fn write_fat(&self, st: &mut State) -> io::Result<()> {
        let bps = self.geo.bytes_per_sector as u64;
        let sectors: Vec<u64> = std::mem::take(&mut st.dirty_fat).into_iter().collect();
        let mut i = 0;
        while i < sectors.len() {
            let mut j = i + 1;
            while j < sectors.len() && sectors[j] == sectors[j - 1] + 1 && j - i < 256 {
                j += 1;
            }
            let a = (sectors[i] * bps) as usize;
            let b = ((sectors[j - 1] + 1) * bps) as usize;
            for &copy in &self.geo.fat_copies {
                self.dev.write_at(copy + a as u64, &st.disk[a..b])?;
            }
            i = j;
        }
        Ok(())
    }

    // ---- clusters -------------------------------------------------------------------------

    /// Take `n` free clusters (in memory only), preferring those right after `after`.
    fn alloc(&self, st: &mut State, n: u32, after: Option<u32>) -> io::Result<Vec<u32>> {
        if n > st.free {
            return Err(err(
                io::ErrorKind::StorageFull,
                format!("{}: no space left on the FAT volume", self.dev.describe()),
            ));
        }
        let total = self.geo.clusters;
        let mut c = match after {
            Some(a) if self.geo.valid_cluster(a + 1) => a + 1,
            _ => st.hint,
        };
        let mut out = Vec::with_capacity(n as usize);
        let mut scanned = 0u32;
        while (out.len() as u32) < n && scanned <= total {
            if !self.geo.valid_cluster(c) {
                c = 2;
            }
            if st.mem[c as usize] == 0 {
                out.push(c);
                st.mem[c as usize] = EOC; // reserved; linked below
            }
            c += 1;
            scanned += 1;
        }
        if (out.len() as u32) < n {
            for &c in &out {
                st.mem[c as usize] = 0;
            }
            return Err(errno(libc::ENOSPC));
        }
        for w in out.windows(2) {
            st.mem[w[0] as usize] = w[1];
        }
        st.free -= n;
        st.hint = if self.geo.valid_cluster(c) { c } else { 2 };
        Ok(out)
    }

    /// Free clusters in memory (and, if `on_disk`, in the on-disk image).
    fn release(&self, st: &mut State, clusters: &[u32], on_disk: bool) {
        for &c in clusters {
            if st.mem[c as usize] != 0 {
                st.mem[c as usize] = 0;
                st.free += 1;
            }
            if on_disk {
                self.set_disk(st, c);
            }
        }
    }

    /// The chain from `first`, as runs; stops at an invalid link.
    fn walk(&self, st: &State, first: u32) -> Vec<Run> {
        let mut out = Vec::new();
        let mut c = first;
        let mut steps = 0u32;
        while self.geo.valid_cluster(c) && steps <= self.geo.clusters {
            push_cluster(&mut out, c);
            steps += 1;
            let next = st.mem[c as usize];
            if next == EOC || next == 0 || next == BAD {
                break;
            }
            c = next;
        }
        out
    }

    fn chain(&self, st: &mut State, id: usize) -> Chain {
        if let Some(c) = &st.nodes[id].chain {
            return c.clone();
        }
        let first = st.nodes[id].entry.first;
        let c = Arc::new(if first == 0 {
            Vec::new()
        } else {
            self.walk(st, first)
        });
        st.nodes[id].chain = Some(c.clone());
        c
    }

    /// Device ranges holding bytes `[off, off + len)` of a chain.
    fn ranges(&self, chain: &[Run], off: u64, len: u64) -> Vec<(u64, u64)> {
        let cs = self.geo.cluster_size as u64;
        let mut out = Vec::new();
        let mut pos = off;
        let end = off + len;
        while pos < end {
            let lc = (pos / cs) as u32;
            let i = chain.partition_point(|r| r.logical + r.len <= lc);
            let Some(r) = chain.get(i) else { break };
            let run_end = (r.logical + r.len) as u64 * cs;
            let take = (end.min(run_end)) - pos;
            let dev = self.geo.cluster_offset(r.start + (lc - r.logical)) + pos % cs;
            out.push((dev, take));
            pos += take;
        }
        out
    }

    // ---- directories ----------------------------------------------------------------------

    fn new_node(&self, st: &mut State, n: Node) -> usize {
        if let Some(i) = st.spare.pop() {
            let gen = st.nodes[i].gen + 1;
            st.nodes[i] = n;
            st.nodes[i].gen = gen;
            i
        } else {
            st.nodes.push(n);
            st.nodes.len() - 1
        }
    }

    fn slot_offset(&self, st: &mut State, dir: usize, index: u32) -> io::Result<u64> {
        if dir == 0 && self.geo.kind != Kind::Fat32 {
            return Ok(self.geo.root_region.0 + index as u64 * 32);
        }
        let chain = self.chain(st, dir);
        self.ranges(&chain, index as u64 * 32, 32)
            .first()
            .map(|r| r.0)
            .ok_or_else(|| errno(libc::EIO))
    }

    /// Read a directory's entries into memory (once).
    fn load_dir(&self, st: &mut State, id: usize) -> io::Result<()> {
        if st.nodes[id].dir.is_some() {
            return Ok(());
        }
        if !st.nodes[id].is_dir {
            return Err(errno(libc::ENOTDIR));
        }
        let (bytes, offsets) = if id == 0 && self.geo.kind != Kind::Fat32 {
            let (off, len) = self.geo.root_region;
            let mut b = vec![0u8; len as usize];
            self.dev.read_at(off, &mut b)?;
            (b, vec![(off, len)])
        } else {
            let chain = self.chain(st, id);
            let len = (chain_len(&chain) as u64 * self.geo.cluster_size as u64)
                .min(MAX_DIR_SLOTS as u64 * 32);
            let ranges = self.ranges(&chain, 0, len);
            let mut b = vec![0u8; len as usize];
            let mut at = 0usize;
            for &(o, n) in &ranges {
                self.dev.read_at(o, &mut b[at..at + n as usize])?;
                at += n as usize;
            }
            (b, ranges)
        };
        let off_of = |i: u32| -> u64 {
            let mut pos = i as u64 * 32;
            for &(o, n) in &offsets {
                if pos < n {
                    return o + pos;
                }
                pos -= n;
            }
            0
        };
        let capacity = (bytes.len() / 32) as u32;
        let mut d = DirData {
            keys: HashMap::new(),
            order: Vec::new(),
            free: BTreeSet::new(),
            end: capacity,
            zero_from: capacity,
            capacity,
            label: None,
        };
        let mut zf = capacity;
        while zf > 0
            && bytes[(zf as usize - 1) * 32..zf as usize * 32]
                .iter()
                .all(|&b| b == 0)
        {
            zf -= 1;
        }
        d.zero_from = zf;
        let mut lfn: Vec<(u32, u64, [u8; 32])> = Vec::new();
        let mut children = Vec::new();
        for i in 0..capacity {
            let e = &bytes[i as usize * 32..i as usize * 32 + 32];
            if e[0] == 0 {
                d.end = i;
                break;
            }
            if e[0] == 0xE5 {
                d.free.insert(i);
                lfn.clear();
                continue;
            }
            if e[11] & 0x3F == ATTR_LFN {
                let mut a = [0u8; 32];
                a.copy_from_slice(e);
                lfn.push((i, off_of(i), a));
                continue;
            }
            let entry = Entry::decode(e);
            if entry.attr & ATTR_VOLUME != 0 {
                if id == 0 {
                    d.label = Some(i);
                }
                lfn.clear();
                continue;
            }
            if entry.short[0] == b'.' {
                lfn.clear();
                continue;
            }
            let short = entry.display(false);
            let long = long_name(&lfn, &entry.short);
            let name = match long {
                Some(l) if !l.eq_ignore_ascii_case(&short) => l,
                _ => short.clone(),
            };
            let slot = Slot {
                index: i,
                off: off_of(i),
                lfn: lfn.iter().map(|l| (l.0, l.1)).collect(),
            };
            lfn.clear();
            children.push((name, short, entry, slot));
        }
        for (name, short, entry, slot) in children {
            let nid = self.new_node(st, Node::new(id, name.clone(), entry, Some(slot)));
            d.keys.entry(upper(&name)).or_insert(nid);
            d.keys.entry(short).or_insert(nid);
            d.order.push(nid);
        }
        st.nodes[id].dir = Some(Box::new(d));
        Ok(())
    }

    fn child(&self, st: &mut State, dir: usize, name: &str) -> io::Result<Option<usize>> {
        self.load_dir(st, dir)?;
        let d = st.nodes[dir].dir.as_ref().ok_or_else(|| errno(libc::EIO))?;
        Ok(d.keys.get(&upper(name)).copied())
    }

    fn resolve(&self, st: &mut State, path: &str) -> io::Result<usize> {
        crate::check_path(path)?;
        if path.is_empty() {
            return Ok(0);
        }
        if let Some(&(id, gen)) = st.paths.get(path) {
            if st.nodes[id].alive && st.nodes[id].gen == gen {
                return Ok(id);
            }
        }
        let mut id = 0;
        for c in path.split('/') {
            if !st.nodes[id].is_dir {
                return Err(errno(libc::ENOTDIR));
            }
            id = self.child(st, id, c)?.ok_or_else(|| enoent(path))?;
        }
        if st.paths.len() > 200_000 {
            st.paths.clear();
        }
        st.paths.insert(path.to_string(), (id, st.nodes[id].gen));
        Ok(id)
    }

    /// The parent directory of `path` and the last component.
    fn parent<'p>(&self, st: &mut State, path: &'p str) -> io::Result<(usize, &'p str)> {
        crate::check_path(path)?;
        if path.is_empty() {
            return Err(errno(libc::EINVAL));
        }
        let (dir, name) = match path.rsplit_once('/') {
            Some((d, n)) => (d, n),
            None => ("", path),
        };
        let d = self.resolve(st, dir)?;
        if !st.nodes[d].is_dir {
            return Err(errno(libc::ENOTDIR));
        }
        self.load_dir(st, d)?;
        Ok((d, name))
    }

    /// For create and mkdir: the parent directory, the last component and its 8.3 name, if
    /// the name is one dicomfs may make and nothing has it yet.
    fn new_name<'p>(
        &self,
        st: &mut State,
        path: &'p str,
    ) -> io::Result<(usize, &'p str, [u8; 11])> {
        let (dir, name) = self.parent(st, path)?;
        let short = layout::short_name(name).ok_or_else(|| {
            err(
                io::ErrorKind::InvalidInput,
                format!("{path}: dicomfs creates only uppercase 8.3 names on FAT"),
            )
        })?;
        if self.child(st, dir, name)?.is_some() {
            return Err(err(io::ErrorKind::AlreadyExists, format!("{path}: exists")));
        }
        Ok((dir, name, short))
    }

    /// A free slot in a directory, growing it by a cluster if needed. The slot after it is
    /// made an end marker first if it may hold garbage.
    fn alloc_slot(&self, st: &mut State, dir: usize) -> io::Result<u32> {
        self.load_dir(st, dir)?;
        let cs_slots = self.geo.cluster_size / 32;
        let (free, end, cap, zero_from) = {
            let d = st.nodes[dir].dir.as_ref().ok_or_else(|| errno(libc::EIO))?;
            (d.free.first().copied(), d.end, d.capacity, d.zero_from)
        };
        if let Some(i) = free {
            if let Some(d) = st.nodes[dir].dir.as_mut() {
                d.free.remove(&i);
            }
            return Ok(i);
        }
        if end >= cap {
            if (dir == 0 && self.geo.kind != Kind::Fat32) || cap + cs_slots > MAX_DIR_SLOTS {
                return Err(err(
                    io::ErrorKind::StorageFull,
                    "directory full (a FAT12/16 root holds a fixed number of entries; any directory at most 65,536)",
                ));
            }
            self.grow_dir(st, dir)?;
        }
        let (end, cap) = {
            let d = st.nodes[dir].dir.as_ref().ok_or_else(|| errno(libc::EIO))?;
            (d.end, d.capacity)
        };
        if end + 1 < cap && end + 1 < zero_from {
            let off = self.slot_offset(st, dir, end + 1)?;
            self.dev.write_at(off, &[0u8; 32])?;
        }
        if let Some(d) = st.nodes[dir].dir.as_mut() {
            d.end = end + 1;
        }
        Ok(end)
    }

    /// Add a zeroed cluster to a directory (on the device: data, then FAT).
    fn grow_dir(&self, st: &mut State, dir: usize) -> io::Result<()> {
        let chain = self.chain(st, dir);
        let tail = chain.last().map(|r| r.start + r.len - 1);
        let c = self.alloc(st, 1, tail)?[0];
        let zero = vec![0u8; self.geo.cluster_size as usize];
        if let Err(e) = self.dev.write_at(self.geo.cluster_offset(c), &zero) {
            self.release(st, &[c], false);
            return Err(e);
        }
        self.set_disk(st, c);
        if let Some(t) = tail {
            st.mem[t as usize] = c;
            self.set_disk(st, t);
        }
        self.write_fat(st)?;
        let mut ch = (*chain).clone();
        push_cluster(&mut ch, c);
        st.nodes[dir].chain = Some(Arc::new(ch));
        if let Some(d) = st.nodes[dir].dir.as_mut() {
            if d.zero_from == d.capacity {
                d.zero_from += self.geo.cluster_size / 32;
            }
            d.capacity += self.geo.cluster_size / 32;
        }
        Ok(())
    }

    fn write_entry(&self, st: &State, id: usize) -> io::Result<()> {
        let n = &st.nodes[id];
        if let Some(s) = &n.slot {
            self.dev
                .write_at(s.off, &n.entry.encode(self.geo.kind == Kind::Fat32))?;
        }
        Ok(())
    }

    /// Mark a node's entries deleted on the device.
    fn erase_entry(&self, st: &mut State, id: usize) -> io::Result<()> {
        let Some(s) = st.nodes[id].slot.clone() else {
            return Ok(());
        };
        self.dev.write_at(s.off, &[0xE5])?;
        for &(_, o) in &s.lfn {
            self.dev.write_at(o, &[0xE5])?;
        }
        let parent = st.nodes[id].parent;
        if let Some(d) = st.nodes[parent].dir.as_mut() {
            d.free.insert(s.index);
            for &(i, _) in &s.lfn {
                d.free.insert(i);
            }
        }
        st.nodes[id].slot = None;
        Ok(())
    }

    /// Take a node out of its parent's maps (it stays alive, to be linked elsewhere).
    fn detach(&self, st: &mut State, id: usize) {
        let parent = st.nodes[id].parent;
        let name = upper(&st.nodes[id].name);
        let short = st.nodes[id].entry.display(false);
        if let Some(d) = st.nodes[parent].dir.as_mut() {
            for k in [name, short] {
                if d.keys.get(&k) == Some(&id) {
                    d.keys.remove(&k);
                }
            }
            d.order.retain(|&x| x != id);
        }
        st.nodes[id].gen += 1;
    }

    /// Forget a node: out of its parent's maps, its id reusable.
    fn unlink_node(&self, st: &mut State, id: usize) {
        self.detach(st, id);
        let n = &mut st.nodes[id];
        n.alive = false;
        n.chain = None;
        n.dir = None;
        st.spare.push(id);
    }

    fn link_node(&self, st: &mut State, dir: usize, id: usize) {
        let name = upper(&st.nodes[id].name);
        let short = st.nodes[id].entry.display(false);
        st.nodes[id].parent = dir;
        if let Some(d) = st.nodes[dir].dir.as_mut() {
            d.keys.insert(name, id);
            d.keys.entry(short).or_insert(id);
            d.order.push(id);
        }
    }

    /// Put a new file on the device: its FAT chain, then its directory entry.
    fn materialize(&self, st: &mut State, id: usize) -> io::Result<()> {
        if st.nodes[id].slot.is_some() || id == 0 || !st.nodes[id].alive {
            return Ok(());
        }
        let chain = self.chain(st, id);
        for c in chain_clusters(&chain).collect::<Vec<_>>() {
            self.set_disk(st, c);
        }
        self.write_fat(st)?;
        let dir = st.nodes[id].parent;
        let index = self.alloc_slot(st, dir)?;
        let off = self.slot_offset(st, dir, index)?;
        st.nodes[id].slot = Some(Slot {
            index,
            off,
            lfn: Vec::new(),
        });
        self.write_entry(st, id)
    }

    fn touch(entry: &mut Entry) {
        let (t, d, _) = layout::fat_time(SystemTime::now());
        entry.mtime = t;
        entry.mdate = d;
        entry.adate = d;
    }

    /// Grow or shrink a file's chain to `clusters` clusters. A file on the device is changed
    /// there in crash order (see the module text); a new file only in memory.
    fn resize_chain(&self, st: &mut State, id: usize, clusters: u32) -> io::Result<Vec<u32>> {
        let chain = self.chain(st, id);
        let have = chain_len(&chain);
        let on_disk = st.nodes[id].slot.is_some();
        if clusters > have {
            let tail = chain.last().map(|r| r.start + r.len - 1);
            drop(chain);
            let new = self.alloc(st, clusters - have, tail)?;
            // Extend in place (no copy of the runs unless a reader holds them right now), so
            // writing a file in pieces costs nothing that grows with its size.
            let mut arc = st.nodes[id].chain.take().unwrap_or_default();
            let ch = Arc::make_mut(&mut arc);
            for &c in &new {
                push_cluster(ch, c);
            }
            st.nodes[id].chain = Some(arc);
            match tail {
                Some(t) => st.mem[t as usize] = new[0],
                None => st.nodes[id].entry.first = new[0],
            }
            Ok(new)
        } else if clusters < have {
            let all: Vec<u32> = chain_clusters(&chain).collect();
            let (keep, drop) = all.split_at(clusters as usize);
            if on_disk {
                // The entry stops pointing at the dropped clusters before they are freed.
                if keep.is_empty() {
                    st.nodes[id].entry.first = 0;
                }
                self.write_entry(st, id)?;
            }
            if let Some(&last) = keep.last() {
                st.mem[last as usize] = EOC;
                if on_disk {
                    self.set_disk(st, last);
                }
            } else {
                st.nodes[id].entry.first = 0;
            }
            self.release(st, drop, on_disk);
            if on_disk {
                self.write_fat(st)?;
            }
            let mut ch = Vec::new();
            for &c in keep {
                push_cluster(&mut ch, c);
            }
            st.nodes[id].chain = Some(Arc::new(ch));
            Ok(Vec::new())
        } else {
            Ok(Vec::new())
        }
    }

    /// Write `data` at `off` of file `id` (zeros fill any gap); the caller holds the lock.
    fn write_locked(&self, st: &mut State, id: usize, off: u64, data: &[u8]) -> io::Result<()> {
        let end = off + data.len() as u64;
        if end > MAX_FILE {
            return Err(err(
                io::ErrorKind::FileTooLarge,
                "a file on FAT is at most 4 GiB - 1 bytes",
            ));
        }
        let size = st.nodes[id].entry.size as u64;
        let cs = self.geo.cluster_size as u64;
        let need = end.max(size).div_ceil(cs) as u32;
        let on_disk = st.nodes[id].slot.is_some();
        let first_before = st.nodes[id].entry.first;
        let tail_before = self.chain(st, id).last().map(|r| r.start + r.len - 1);
        let new = self.resize_chain(st, id, need)?;
        let chain = self.chain(st, id);
        let result = (|| {
            if off > size {
                let zeros = vec![0u8; (off - size).min(1 << 20) as usize];
                let mut pos = size;
                while pos < off {
                    let n = (off - pos).min(zeros.len() as u64);
                    for (o, l) in self.ranges(&chain, pos, n) {
                        self.dev.write_at(o, &zeros[..l as usize])?;
                    }
                    pos += n;
                }
            }
            let mut at = 0usize;
            for (o, l) in self.ranges(&chain, off, data.len() as u64) {
                self.dev.write_at(o, &data[at..at + l as usize])?;
                at += l as usize;
            }
            Ok(())
        })();
        if let Err(e) = result {
            if !new.is_empty() {
                // Give back what this write took.
                match tail_before {
                    Some(t) => st.mem[t as usize] = EOC,
                    None => st.nodes[id].entry.first = first_before,
                }
                self.release(st, &new, false);
                st.nodes[id].chain = None;
            }
            return Err(e);
        }
        let n = &mut st.nodes[id];
        n.entry.size = end.max(size) as u32;
        Self::touch(&mut n.entry);
        if on_disk {
            if !new.is_empty() {
                for &c in &new {
                    self.set_disk(st, c);
                }
                if let Some(t) = tail_before {
                    self.set_disk(st, t);
                }
                self.write_fat(st)?;
            }
            self.write_entry(st, id)?;
        }
        Ok(())
    }

    fn ensure_writable(&self, st: &mut State) -> io::Result<()> {
        if !self.writable {
            return Err(errno(libc::EROFS));
        }
        self.mark_dirty(st)
    }

    /// Every node loaded so far that is not yet on the device.
    fn pending(st: &State) -> Vec<usize> {
        st.nodes
            .iter()
            .enumerate()
            .filter(|(i, n)| *i != 0 && n.alive && n.slot.is_none())
            .map(|(i, _)| i)
            .collect()
    }

    /// Put everything on the device.
    fn commit_all(&self, st: &mut State) -> io::Result<()> {
        for id in Self::pending(st) {
            self.materialize(st, id)?;
        }
        self.write_fat(st)
    }

    // ---- repair ---------------------------------------------------------------------------

    /// Make the volume clean for fsck.fat: cut chains at invalid or shared links, make each
    /// file's chain exactly as long as its size, free lost clusters, rewrite FSInfo and clear
    /// the dirty bit. Needs a writable volume.
    pub fn repair(&self) -> io::Result<RepairReport> {
        let mut st = self.st.lock();
        self.ensure_writable(&mut st)?;
        self.commit_all(&mut st)?;
        let mut rep = RepairReport::default();
        let mut used = vec![false; self.geo.clusters as usize + 2];
        let cs = self.geo.cluster_size as u64;
        let mut stack = vec![(0usize, String::new())];
        while let Some((id, path)) = stack.pop() {
            // The chain, cut at the first cluster that is invalid or already used.
            let first = st.nodes[id].entry.first;
            let mut kept: Vec<u32> = Vec::new();
            let mut c = first;
            let mut cut = None;
            while c != 0 {
                if !self.geo.valid_cluster(c) || used[c as usize] || st.mem[c as usize] == 0 {
                    cut = Some(c);
                    break;
                }
                used[c as usize] = true;
                kept.push(c);
                let next = st.mem[c as usize];
                if next == EOC || next == BAD {
                    break;
                }
                c = next;
            }
            let is_dir = st.nodes[id].is_dir;
            let mut changed = cut.is_some();
            let shown = if path.is_empty() {
                "/".to_string()
            } else {
                path.clone()
            };
            if let Some(c) = cut {
                rep.lines.push(format!(
                    "{shown}: cluster chain broken at cluster {c}; cut after {} clusters",
                    kept.len()
                ));
            }
            if !is_dir {
                let size = st.nodes[id].entry.size as u64;
                let need = size.div_ceil(cs) as usize;
                if kept.len() > need {
                    rep.lines.push(format!(
                        "{shown}: cluster chain of {} clusters for {size} bytes; {} freed",
                        kept.len(),
                        kept.len() - need
                    ));
                    let dropped = kept.split_off(need);
                    for &x in &dropped {
                        used[x as usize] = false;
                    }
                    changed = true;
                } else if kept.len() < need {
                    changed = true;
                    let new = kept.len() as u64 * cs;
                    rep.lines.push(format!(
                        "{shown}: size {size} but only {} clusters; size set to {new}",
                        kept.len()
                    ));
                    st.nodes[id].entry.size = new as u32;
                }
            }
            // Write the kept chain back.
            let old_first = st.nodes[id].entry.first;
            let new_first = kept.first().copied().unwrap_or(0);
            if id != 0 && (old_first != new_first || changed) {
                st.nodes[id].entry.first = new_first;
                self.write_entry(&st, id)?;
            }
            if let Some(&last) = kept.last() {
                if st.mem[last as usize] != EOC {
                    st.mem[last as usize] = EOC;
                    self.set_disk(&mut st, last);
                }
            }
            let mut ch = Vec::new();
            for &x in &kept {
                push_cluster(&mut ch, x);
            }
            st.nodes[id].chain = Some(Arc::new(ch));
            if is_dir {
                if let Err(e) = self.load_dir(&mut st, id) {
                    rep.lines
                        .push(format!("{shown}: directory unreadable: {e}"));
                    continue;
                }
                let kids: Vec<usize> = st.nodes[id]
                    .dir
                    .as_ref()
                    .map(|d| d.order.clone())
                    .unwrap_or_default();
                for k in kids {
                    let p = crate::join(&path, &st.nodes[k].name);
                    stack.push((k, p));
                }
            }
        }
        let mut lost = 0u32;
        for c in 2..self.geo.clusters + 2 {
            let v = st.mem[c as usize];
            if v != 0 && v != BAD && !used[c as usize] {
                st.mem[c as usize] = 0;
                self.set_disk(&mut st, c);
                lost += 1;
            }
        }
        if lost > 0 {
            rep.lines.push(format!("{lost} lost clusters freed"));
        }
        st.free = st.mem[2..].iter().filter(|&&v| v == 0).count() as u32;
        st.paths.clear();
        self.write_fat(&mut st)?;
        // The copies of the FAT: a crash between writing one and the next leaves them
        // different; the first (which this code reads) is written over the others.
        let used_len = st.disk.len();
        for (i, &copy) in self.geo.fat_copies.iter().enumerate().skip(1) {
            let mut other = vec![0u8; used_len];
            self.dev.read_at(copy, &mut other)?;
            if other != st.disk {
                self.dev.write_at(copy, &st.disk)?;
                rep.lines
                    .push(format!("FAT copy {} made equal to the first", i + 1));
            }
        }
        if self.was_dirty {
            rep.lines.push("dirty bit cleared".into());
        }
        st.marked = true;
        self.mark_clean(&mut st)?;
        Ok(rep)
    }

    /// Set the volume label (boot sector, its FAT32 backup, and the root directory entry).
    pub fn label(&self, label: &str) -> io::Result<()> {
        let mut st = self.st.lock();
        self.ensure_writable(&mut st)?;
        let mut l = [b' '; 11];
        for (i, b) in label
            .bytes()
            .filter(|b| b.is_ascii_alphanumeric() || *b == b'_' || *b == b' ' || *b == b'-')
            .take(11)
            .enumerate()
        {
            l[i] = b.to_ascii_uppercase();
        }
        let at = self.geo.label_at;
        st.boot[at..at + 11].copy_from_slice(&l);
        self.dev.write_at(at as u64, &l)?;
        if self.geo.kind == Kind::Fat32 {
            let backup = u16::from_le_bytes([st.boot[50], st.boot[51]]) as u64;
            if backup != 0 && backup < self.geo.reserved_sectors as u64 {
                self.dev
                    .write_at(backup * self.geo.bytes_per_sector as u64 + at as u64, &l)?;
            }
        }
        self.load_dir(&mut st, 0)?;
        let existing = st.nodes[0].dir.as_ref().and_then(|d| d.label);
        let index = match existing {
            Some(i) => i,
            None => {
                let i = self.alloc_slot(&mut st, 0)?;
                if let Some(d) = st.nodes[0].dir.as_mut() {
                    d.label = Some(i);
                }
                i
            }
        };
        let off = self.slot_offset(&mut st, 0, index)?;
        let e = now_entry(l, ATTR_VOLUME);
        self.dev
            .write_at(off, &e.encode(self.geo.kind == Kind::Fat32))?;
        Ok(())
    }
}

/// The long name carried by the entries before a short entry, if they are complete and
/// their checksum matches.
fn long_name(lfn: &[(u32, u64, [u8; 32])], short: &[u8; 11]) -> Option<String> {
    if lfn.is_empty() {
        return None;
    }
    let sum = layout::lfn_checksum(short);
    if lfn.iter().any(|l| l.2[13] != sum) || lfn[0].2[0] & 0x40 == 0 {
        return None;
    }
    let mut units = Vec::new();
    for (k, l) in lfn.iter().rev().enumerate() {
        if (l.2[0] & 0x1F) as usize != k + 1 {
            return None;
        }
        units.extend_from_slice(&layout::lfn_chars(&l.2));
    }
    if let Some(p) = units.iter().position(|&u| u == 0) {
        units.truncate(p);
    }
    let s = String::from_utf16(&units).ok()?;
    (!s.is_empty() && !s.contains('/')).then_some(s)
}

impl Medium for Fat {
    fn describe(&self) -> String {
        format!(
            "{} volume on {}",
            match self.geo.kind {
                Kind::Fat12 => "FAT12",
                Kind::Fat16 => "FAT16",
                Kind::Fat32 => "FAT32",
            },
            self.dev.describe()
        )
    }

    fn read_at(&self, path: &str, offset: u64, buf: &mut [u8]) -> io::Result<usize> {
        let (chain, size) = {
            let mut st = self.st.lock();
            let id = self.resolve(&mut st, path)?;
            if st.nodes[id].is_dir {
                return Err(errno(libc::EISDIR));
            }
            (self.chain(&mut st, id), st.nodes[id].entry.size as u64)
        };
        if offset >= size {
            return Ok(0);
        }
        let n = (size - offset).min(buf.len() as u64);
        let mut at = 0usize;
        for (o, l) in self.ranges(&chain, offset, n) {
            self.dev.read_at(o, &mut buf[at..at + l as usize])?;
            at += l as usize;
        }
        Ok(at)
    }

    fn write_at(&self, path: &str, offset: u64, data: &[u8]) -> io::Result<()> {
        let mut st = self.st.lock();
        self.ensure_writable(&mut st)?;
        let id = self.resolve(&mut st, path)?;
        if st.nodes[id].is_dir {
            return Err(errno(libc::EISDIR));
        }
        self.write_locked(&mut st, id, offset, data)
    }

    fn create(&self, path: &str) -> io::Result<()> {
        let mut st = self.st.lock();
        self.ensure_writable(&mut st)?;
        let (dir, name, short) = self.new_name(&mut st, path)?;
        let mut node = Node::new(dir, name.to_string(), now_entry(short, ATTR_ARCHIVE), None);
        node.chain = Some(Arc::new(Vec::new()));
        let id = self.new_node(&mut st, node);
        self.link_node(&mut st, dir, id);
        Ok(())
    }

    fn mkdir(&self, path: &str) -> io::Result<()> {
        let mut st = self.st.lock();
        self.ensure_writable(&mut st)?;
        let (dir, name, short) = self.new_name(&mut st, path)?;
        // The new directory's cluster: zeroed with "." and "..", then its FAT entry.
        let c = self.alloc(&mut st, 1, None)?[0];
        let mut entry = now_entry(short, ATTR_DIR);
        entry.first = c;
        let fat32 = self.geo.kind == Kind::Fat32;
        let mut buf = vec![0u8; self.geo.cluster_size as usize];
        let mut dot = entry.clone();
        dot.short = *b".          ";
        buf[0..32].copy_from_slice(&dot.encode(fat32));
        let mut dotdot = entry.clone();
        dotdot.short = *b"..         ";
        dotdot.first = if dir == 0 {
            0
        } else {
            st.nodes[dir].entry.first
        };
        buf[32..64].copy_from_slice(&dotdot.encode(fat32));
        let r = self
            .dev
            .write_at(self.geo.cluster_offset(c), &buf)
            .and_then(|_| {
                self.set_disk(&mut st, c);
                self.write_fat(&mut st)
            });
        if let Err(e) = r {
            self.release(&mut st, &[c], true);
            let _ = self.write_fat(&mut st);
            return Err(e);
        }
        let id = self.new_node(&mut st, Node::new(dir, name.to_string(), entry, None));
        let spc = self.geo.cluster_size / 32;
        st.nodes[id].dir = Some(Box::new(DirData {
            keys: HashMap::new(),
            order: Vec::new(),
            free: BTreeSet::new(),
            end: 2,
            zero_from: 2,
            capacity: spc,
            label: None,
        }));
        self.link_node(&mut st, dir, id);
        if let Err(e) = self.materialize(&mut st, id) {
            self.unlink_node(&mut st, id);
            self.release(&mut st, &[c], true);
            let _ = self.write_fat(&mut st);
            return Err(e);
        }
        Ok(())
    }

    fn truncate(&self, path: &str, size: u64) -> io::Result<()> {
        let mut st = self.st.lock();
        self.ensure_writable(&mut st)?;
        let id = self.resolve(&mut st, path)?;
        if st.nodes[id].is_dir {
            return Err(errno(libc::EISDIR));
        }
        if size > MAX_FILE {
            return Err(err(
                io::ErrorKind::FileTooLarge,
                "a file on FAT is at most 4 GiB - 1 bytes",
            ));
        }
        let cur = st.nodes[id].entry.size as u64;
        if size > cur {
            return self.write_locked(&mut st, id, size, &[]);
        }
        st.nodes[id].entry.size = size as u32;
        Self::touch(&mut st.nodes[id].entry);
        let need = size.div_ceil(self.geo.cluster_size as u64) as u32;
        self.resize_chain(&mut st, id, need)?;
        self.write_entry(&st, id)
    }

    fn remove(&self, path: &str) -> io::Result<()> {
        let mut st = self.st.lock();
        self.ensure_writable(&mut st)?;
        let id = self.resolve(&mut st, path)?;
        if st.nodes[id].is_dir {
            return Err(errno(libc::EISDIR));
        }
        let on_disk = st.nodes[id].slot.is_some();
        let chain = self.chain(&mut st, id);
        self.erase_entry(&mut st, id)?;
        let clusters: Vec<u32> = chain_clusters(&chain).collect();
        self.release(&mut st, &clusters, on_disk);
        if on_disk {
            self.write_fat(&mut st)?;
        }
        self.unlink_node(&mut st, id);
        Ok(())
    }

    fn rmdir(&self, path: &str) -> io::Result<()> {
        let mut st = self.st.lock();
        self.ensure_writable(&mut st)?;
        let id = self.resolve(&mut st, path)?;
        if id == 0 {
            return Err(errno(libc::EBUSY));
        }
        if !st.nodes[id].is_dir {
            return Err(errno(libc::ENOTDIR));
        }
        self.load_dir(&mut st, id)?;
        let empty = st.nodes[id]
            .dir
            .as_ref()
            .is_some_and(|d| d.order.iter().all(|&k| !st.nodes[k].alive));
        if !empty {
            return Err(err(
                io::ErrorKind::DirectoryNotEmpty,
                format!("{path}: directory not empty"),
            ));
        }
        let chain = self.chain(&mut st, id);
        self.erase_entry(&mut st, id)?;
        let clusters: Vec<u32> = chain_clusters(&chain).collect();
        self.release(&mut st, &clusters, true);
        self.write_fat(&mut st)?;
        self.unlink_node(&mut st, id);
        Ok(())
    }

    fn rename(&self, from: &str, to: &str) -> io::Result<()> {
        let mut st = self.st.lock();
        self.ensure_writable(&mut st)?;
        let src = self.resolve(&mut st, from)?;
        if src == 0 {
            return Err(errno(libc::EBUSY));
        }
        let (dir, name) = self.parent(&mut st, to)?;
        let short = layout::short_name(name).ok_or_else(|| {
            err(
                io::ErrorKind::InvalidInput,
                format!("{to}: dicomfs creates only uppercase 8.3 names on FAT"),
            )
        })?;
        if st.nodes[src].is_dir {
            let mut a = dir;
            while a != 0 {
                if a == src {
                    return Err(errno(libc::EINVAL));
                }
                a = st.nodes[a].parent;
            }
        }
        let target = self.child(&mut st, dir, name)?;
        if target == Some(src) {
            return Ok(());
        }
        if let Some(t) = target {
            if st.nodes[t].is_dir || st.nodes[src].is_dir {
                return Err(if st.nodes[t].is_dir {
                    errno(libc::EISDIR)
                } else {
                    errno(libc::ENOTDIR)
                });
            }
        }
        let fat32 = self.geo.kind == Kind::Fat32;
        // The source's chain on the device (still unreferenced if it is a new file).
        let chain = self.chain(&mut st, src);
        if st.nodes[src].slot.is_none() {
            for c in chain_clusters(&chain).collect::<Vec<_>>() {
                self.set_disk(&mut st, c);
            }
            self.write_fat(&mut st)?;
        }
        let old_parent = st.nodes[src].parent;
        match target {
            Some(t) => {
                // Replace: the source stops being referenced where it was, then the target's
                // entry is rewritten in place to the source's chain, then the old chain goes.
                self.erase_entry(&mut st, src)?;
                let tslot = st.nodes[t].slot.clone();
                let mut e = st.nodes[src].entry.clone();
                e.short = st.nodes[t].entry.short;
                e.nt_case = st.nodes[t].entry.nt_case;
                let tname = st.nodes[t].name.clone();
                let old_chain = self.chain(&mut st, t);
                let t_on_disk = tslot.is_some();
                self.detach(&mut st, src);
                st.nodes[src].entry = e;
                st.nodes[src].name = tname;
                self.unlink_node(&mut st, t);
                self.link_node(&mut st, dir, src);
                match tslot {
                    Some(s) => {
                        st.nodes[src].slot = Some(s);
                        self.write_entry(&st, src)?;
                    }
                    None => {
                        st.nodes[src].slot = None;
                        self.materialize(&mut st, src)?;
                    }
                }
                let old: Vec<u32> = chain_clusters(&old_chain).collect();
                self.release(&mut st, &old, t_on_disk);
                self.write_fat(&mut st)?;
            }
            None => {
                let same_dir = old_parent == dir;
                let slot = st.nodes[src].slot.clone();
                self.detach(&mut st, src);
                st.nodes[src].entry.short = short;
                st.nodes[src].entry.nt_case = 0;
                st.nodes[src].name = name.to_string();
                match slot {
                    Some(s) if same_dir => {
                        // One 32-byte write renames in place; long names go after.
                        st.nodes[src].slot = Some(Slot {
                            index: s.index,
                            off: s.off,
                            lfn: Vec::new(),
                        });
                        self.link_node(&mut st, dir, src);
                        self.write_entry(&st, src)?;
                        for &(i, o) in &s.lfn {
                            self.dev.write_at(o, &[0xE5])?;
                            if let Some(d) = st.nodes[dir].dir.as_mut() {
                                d.free.insert(i);
                            }
                        }
                    }
                    Some(s) => {
                        // Old entry deleted first: a crash between leaves lost clusters,
                        // never two entries sharing one chain.
                        self.dev.write_at(s.off, &[0xE5])?;
                        for &(_, o) in &s.lfn {
                            self.dev.write_at(o, &[0xE5])?;
                        }
                        if let Some(d) = st.nodes[old_parent].dir.as_mut() {
                            d.free.insert(s.index);
                            for &(i, _) in &s.lfn {
                                d.free.insert(i);
                            }
                        }
                        st.nodes[src].slot = None;
                        self.link_node(&mut st, dir, src);
                        self.materialize(&mut st, src)?;
                        if st.nodes[src].is_dir {
                            // ".." now names the new parent.
                            let first = if dir == 0 {
                                0
                            } else {
                                st.nodes[dir].entry.first
                            };
                            let c = st.nodes[src].entry.first;
                            if self.geo.valid_cluster(c) {
                                let off = self.geo.cluster_offset(c) + 32;
                                let mut e = [0u8; 32];
                                self.dev.read_at(off, &mut e)?;
                                let mut d = Entry::decode(&e);
                                d.first = first;
                                self.dev.write_at(off, &d.encode(fat32))?;
                            }
                        }
                    }
                    None => {
                        st.nodes[src].slot = None;
                        self.link_node(&mut st, dir, src);
                        self.materialize(&mut st, src)?;
                    }
                }
            }
        }
        if st.nodes[src].is_dir {
            st.paths.clear();
        }
        Ok(())
    }

    fn list(&self, dir: &str) -> io::Result<Vec<DirEntry>> {
        let mut st = self.st.lock();
        let id = self.resolve(&mut st, dir)?;
        self.load_dir(&mut st, id)?;
        let d = st.nodes[id].dir.as_ref().ok_or_else(|| errno(libc::EIO))?;
        Ok(d.order
            .iter()
            .filter(|&&k| st.nodes[k].alive)
            .map(|&k| DirEntry {
                name: st.nodes[k].name.clone(),
                kind: if st.nodes[k].is_dir {
                    EntryKind::Dir
                } else {
                    EntryKind::File
                },
            })
            .collect())
    }

    fn stat(&self, path: &str) -> io::Result<Stat> {
        let mut st = self.st.lock();
        let id = self.resolve(&mut st, path)?;
        let n = &st.nodes[id];
        let e = &n.entry;
        Ok(Stat {
            kind: if n.is_dir {
                EntryKind::Dir
            } else {
                EntryKind::File
            },
            size: if n.is_dir { 0 } else { e.size as u64 },
            mtime: layout::sys_time(e.mdate, e.mtime),
            atime: layout::sys_time(e.adate, 0),
            ctime: layout::sys_time(e.cdate, e.ctime),
        })
    }

    fn statfs(&self) -> io::Result<StatFs> {
        let st = self.st.lock();
        Ok(StatFs {
            block_size: self.geo.cluster_size,
            blocks: self.geo.clusters as u64,
            blocks_free: st.free as u64,
            blocks_avail: st.free as u64,
            files: 0,
            files_free: 0,
            name_max: 12,
        })
    }

    fn sync(&self, path: Option<&str>) -> io::Result<()> {
        let mut st = self.st.lock();
        if !self.writable {
            return Ok(());
        }
        match path {
            Some(p) => {
                let id = self.resolve(&mut st, p)?;
                self.materialize(&mut st, id)?;
                self.write_fat(&mut st)?;
            }
            None => self.commit_all(&mut st)?,
        }
        drop(st);
        self.dev.flush()
    }

    fn repair_medium(&self) -> io::Result<Vec<String>> {
        self.repair().map(|r| r.lines)
    }

    fn set_label(&self, label: &str) -> io::Result<()> {
        self.label(label)
    }

    fn close(&self) -> io::Result<()> {
        let mut st = self.st.lock();
        if !self.writable {
            return Ok(());
        }
        self.commit_all(&mut st)?;
        self.mark_clean(&mut st)
    }
}

impl Drop for Fat {
    fn drop(&mut self) {
        // A medium dropped without close() is left as a crash would leave it (dirty), so that
        // tests can simulate one; close() is the clean path.
    }
}

#[cfg(test)]
mod tests;
