//! The live File-set and its File-set Updater (PS3.10 8.5: M-WRITE, M-DELETE).
//!
//! [`Live`] holds the DICOMDIR as read (the tree the views show) and, on a writable medium, an
//! image of its bytes, so that adding an instance costs O(1) in the size of the DICOMDIR: its
//! records are appended at the end of the Directory Record Sequence and the few offsets that
//! must point at them are patched in place (4 bytes each), along with the sequence length.
//! Deleting detaches records in memory at once; [`Live::commit`] writes a batch of deletes in
//! place (the links patched, the records' bytes turned into padding inside the record before
//! them, behind a journal: `journal.rs`) or, for large batches and to drop accumulated padding,
//! rewrites the DICOMDIR (atomically: a new file renamed over the old one); then the files are
//! removed.
//!
//! Order of writes, so that a crash (kill -9, a pulled stick) never leaves a record pointing at
//! a missing file: an instance is written in full to the staging directory, renamed to its File
//! ID, and only then referenced; on delete the DICOMDIR stops referencing a file before it is
//! removed. What a crash can leave (trailing bytes after the sequence, appended records not yet
//! linked, files nothing references, staged files) is repaired by [`repair`], which runs when a
//! writable File-set is opened and the staging directory shows the last session did not end
//! cleanly, and by `dicomfs check --repair`.

use crate::dicom::dataset::{self, ReadAt};
use crate::dicom::{self, tags};
use crate::dicomdir::{self, DicomDir, Elem, Record, KEPT_KEYS};
use crate::error::{Error, Result};
use crate::fileset::{self, FileSet, Spelling, DICOMDIR, MAX_DICOMDIR};
use crate::records;

mod journal;
use fsimpl::{Kind, Medium};
use parking_lot::{Mutex, RwLock, RwLockReadGuard};
use std::collections::{HashMap, HashSet};
use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The staging directory at the medium root: files being copied in, and the new DICOMDIR of a
/// rewrite. Its name has a dot, so it can never be a File ID component. It exists only while a
/// writable mount is live; finding it at open means the last session did not end cleanly.
pub const STAGING: &str = "DICOMFS.TMP";

/// At most this many entries dicomfs puts in a directory it makes (FAT directories slow down
/// past a few thousand entries).
pub const DIR_CAP: usize = 2000;
/// The root directory gets at most this many (a FAT12/16 root holds 512 entries in all).
pub const ROOT_CAP: usize = 400;

/// The largest instance dicomfs transcodes (it is transcoded in memory).
const MAX_TRANSCODE: u64 = 1 << 30;

/// Which transfer syntaxes copied-in instances may have (PS3.11 application profiles).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Profile {
    pub name: String,
    /// `None`: any transfer syntax.
    pub syntaxes: Option<Vec<&'static str>>,
}

const JPEG: [&str; 3] = [
    "1.2.840.10008.1.2.4.70",
    "1.2.840.10008.1.2.4.50",
    "1.2.840.10008.1.2.4.51",
];
const J2K: [&str; 2] = ["1.2.840.10008.1.2.4.90", "1.2.840.10008.1.2.4.91"];

impl Default for Profile {
    fn default() -> Self {
        let mut s = vec![dicom::EXPLICIT_LE];
        s.extend(JPEG);
        s.extend(J2K);
        Profile {
            name: "STD-GEN-USB-JPEG or STD-GEN-USB-J2K (the default)".into(),
            syntaxes: Some(s),
        }
    }
}

impl std::str::FromStr for Profile {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Profile, String> {
        let up = s.to_ascii_uppercase();
        let media = ["USB", "SD", "CF", "MMC"];
        let mut syntaxes = vec![dicom::EXPLICIT_LE];
        match up.as_str() {
            "ANY" => {
                return Ok(Profile {
                    name: "any".into(),
                    syntaxes: None,
                })
            }
            "DEFAULT" => return Ok(Profile::default()),
            "STD-GEN-CD" | "STD-GEN-DVD-RAM" => {}
            _ => {
                let rest = up
                    .strip_prefix("STD-GEN-")
                    .ok_or_else(|| format!("unknown profile {s:?}"))?;
                let (m, kind) = rest
                    .split_once('-')
                    .ok_or_else(|| format!("unknown profile {s:?}"))?;
                if !media.contains(&m) {
                    return Err(format!("unknown profile {s:?}"));
                }
                match kind {
                    "JPEG" => syntaxes.extend(JPEG),
                    "J2K" => syntaxes.extend(J2K),
                    _ => return Err(format!("unknown profile {s:?}")),
                }
            }
        }
        Ok(Profile {
            name: up,
            syntaxes: Some(syntaxes),
        })
    }
}

impl Profile {
    fn allows(&self, ts: &str) -> bool {
        self.syntaxes.as_ref().is_none_or(|s| s.contains(&ts))
    }
}

/// What became of a file copied in.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Ingested {
    /// A new instance, stored under this File ID (components joined with `\`).
    Added(String),
    /// The instance was already there with the same bytes: nothing changed.
    Same(String),
    /// Not an instance to keep (a DICOMDIR copied in); the reason is logged.
    Dropped(String),
}

/// Changes the views must pick up: medium directories whose listing changed, and File IDs
/// added.
#[derive(Default)]
pub struct Changes {
    pub dirs: Vec<String>,
    pub added: Vec<String>,
    /// Medium directories removed because deletes left them empty.
    pub removed: Vec<String>,
}

/// Per-directory allocation state: how many entries, and the highest number used per prefix.
#[derive(Default, Clone)]
struct DirInfo {
    count: usize,
    max: HashMap<u8, u32>,
    /// Known to exist on the medium.
    exists: bool,
}

/// The mutable state: the DICOMDIR tree, its bytes, and indexes.
pub struct State {
    pub dir: DicomDir,
    pub spelling: Spelling,
    /// Bumped on every change the views can see.
    pub generation: u64,
    /// The DICOMDIR's bytes as on the medium (writable File-sets only).
    image: Vec<u8>,
    /// The buffer of the image before, reused by the next rewrite.
    spare: Vec<u8>,
    /// SOP Instance UID -> leaf record.
    by_sop: HashMap<Box<str>, u32>,
    /// File ID -> record.
    by_file: HashMap<Box<str>, u32>,
    dirs: HashMap<String, DirInfo>,
    /// Directories (File ID prefixes) known to exist on the medium, beyond those in `dirs`.
    existing: HashSet<String>,
    /// Medium paths of files whose records were detached, to remove after the next rewrite.
    pending_files: Vec<String>,
    /// Shown File ID paths (with `/`) of those files, hidden from the views meanwhile.
    pub pending_paths: HashSet<String>,
    last_delete: Option<Instant>,
    /// Records detached since the last commit.
    pending_recs: Vec<u32>,
    /// Bytes of deleted records kept as Data Set Trailing Padding inside other records (the
    /// in-place delete); a rewrite drops them.
    padding: u64,
    /// The image can be patched in place (Explicit VR LE, defined sequence length at the end
    /// of the file, every record's offsets patchable, no inactive records).
    patchable: bool,
}

/// A File-set open for reading and, if `writable`, updating.
pub struct Live {
    pub medium: Arc<dyn Medium>,
    pub writable: bool,
    pub profile: Profile,
    state: RwLock<State>,
    changes: Mutex<Changes>,
    next_stage: AtomicU64,
    /// The staging directory exists.
    staging: std::sync::atomic::AtomicBool,
    /// Held while the staging directory is made, used or removed.
    staging_lock: Mutex<()>,
    /// When a file was last staged.
    last_staged: Mutex<Instant>,
}

/// A file on a medium as [`ReadAt`].
pub struct MediumFile<'a> {
    pub medium: &'a dyn Medium,
    pub path: &'a str,
    pub size: u64,
}

impl ReadAt for MediumFile<'_> {
    fn size(&self) -> u64 {
        self.size
    }
    fn read_at(&self, pos: u64, buf: &mut [u8]) -> io::Result<usize> {
        self.medium.read_at(self.path, pos, buf)
    }
}

fn patchable(d: &DicomDir, len: usize) -> bool {
    d.transfer_syntax == dicom::EXPLICIT_LE
        && d.seq_len_at != 0
        && !d.after_seq
        && d.seq_end as usize == len
        && !d.rebuilt
        && d.consistency_flag == 0
        && d.first_root_at != 0
        && d.last_root_at != 0
        && d.records
            .iter()
            .all(|r| r.in_use && r.next_at != 0 && r.lower_at != 0)
}

/// The kept keys of a record about to be written, decoded as the reader would.
fn keys_of(elems: &[Elem], inherited: &str) -> Vec<(u32, Box<str>)> {
    let cs = elems
        .iter()
        .find(|e| e.tag == tags::SPECIFIC_CHARACTER_SET)
        .map(|e| dicom::ascii(&e.value))
        .unwrap_or_else(|| inherited.to_string());
    elems
        .iter()
        .filter(|e| KEPT_KEYS.contains(&e.tag))
        .map(|e| {
            (
                e.tag,
                dicom::decode_text(dicom::trim_value(&e.value), &cs).into(),
            )
        })
        .collect()
}

/// Split a File ID into its components.
fn parts(fid: &str) -> Vec<&str> {
    fid.split('\\').collect()
}

/// The number in an 8-character name like `P0000012` with the given prefix letter.
fn numbered(name: &str, prefix: u8) -> Option<u32> {
    let b = name.as_bytes();
    (b.len() == 8 && b[0] == prefix && b[1..].iter().all(u8::is_ascii_digit))
        .then(|| name[1..].parse().ok())
        .flatten()
}

impl State {
    fn new(dir: DicomDir, spelling: Spelling, image: Vec<u8>) -> State {
        State {
            dir,
            spelling,
            generation: 0,
            image,
            spare: Vec::new(),
            by_sop: HashMap::new(),
            by_file: HashMap::new(),
            dirs: HashMap::new(),
            existing: HashSet::new(),
            pending_files: Vec::new(),
            pending_paths: HashSet::new(),
            last_delete: None,
            pending_recs: Vec::new(),
            padding: 0,
            patchable: false,
        }
    }

    /// Bytes held as padding by the records as read.
    fn count_padding(&mut self) {
        self.padding = self
            .dir
            .records
            .iter()
            .filter(|r| r.in_use && r.pad != 0)
            .map(|r| (r.end - r.pad) as u64)
            .sum();
    }

    /// Does a record reference this File ID (components joined with `\\`)?
    pub fn references(&self, fid: &str) -> bool {
        self.by_file.contains_key(fid)
    }

    fn index(&mut self) {
        self.by_sop.clear();
        self.by_file.clear();
        for i in self.dir.visible() {
            let r = &self.dir.records[i as usize];
            if let Some(f) = &r.file_id {
                self.by_file.insert(f.clone(), i);
            }
            if let (Some(_), Some(sop)) = (&r.file_id, r.key(tags::REFERENCED_SOP_INSTANCE)) {
                self.by_sop.insert(sop.into(), i);
            }
        }
    }

    fn dir_info(&mut self, medium: &dyn Medium, dir: &str) -> &mut DirInfo {
        let spelling = self.spelling;
        self.dirs.entry(dir.to_string()).or_insert_with(|| {
            let mut info = DirInfo::default();
            if let Ok(entries) = medium.list(&fileset::medium_path(dir, spelling)) {
                info.exists = true;
                info.count = entries.len();
                for e in entries {
                    let up = e.name.to_ascii_uppercase();
                    if let Some(&p) = up.as_bytes().first() {
                        if let Some(n) = numbered(&up, p) {
                            let m = info.max.entry(p).or_default();
                            *m = (*m).max(n);
                        }
                    }
                }
            }
            info
        })
    }

    /// A new name `X0000001`-style in `dir` (a File ID path with `\`), counted as taken.
    fn new_name(&mut self, medium: &dyn Medium, dir: &str, prefix: u8) -> String {
        let info = self.dir_info(medium, dir);
        let n = info.max.get(&prefix).copied().unwrap_or(0) + 1;
        info.max.insert(prefix, n);
        info.count += 1;
        format!("{}{:07}", prefix as char, n)
    }

    fn join(dir: &str, name: &str) -> String {
        if dir.is_empty() {
            name.to_string()
        } else {
            format!("{dir}\\{name}")
        }
    }

    /// A new directory (File ID path) under `parent` with a prefix letter; at the root, once
    /// it is full, inside bucket directories `B0000001`...
    fn new_dir(&mut self, medium: &dyn Medium, parent: &str, prefix: u8) -> String {
        let cap = if parent.is_empty() { ROOT_CAP } else { DIR_CAP };
        if self.dir_info(medium, parent).count < cap {
            let n = self.new_name(medium, parent, prefix);
            let d = Self::join(parent, &n);
            self.dirs.insert(d.clone(), DirInfo::default());
            return d;
        }
        if parent.is_empty() {
            // The newest bucket with room, else a new one.
            let last = self
                .dir_info(medium, "")
                .max
                .get(&b'B')
                .copied()
                .unwrap_or(0);
            let bucket = if last > 0 {
                let b = format!("B{last:07}");
                (self.dir_info(medium, &b).count < DIR_CAP).then_some(b)
            } else {
                None
            };
            let bucket = bucket.unwrap_or_else(|| {
                let info = self.dir_info(medium, "");
                let n = info.max.get(&b'B').copied().unwrap_or(0) + 1;
                info.max.insert(b'B', n);
                info.count += 1;
                let b = format!("B{n:07}");
                self.dirs.insert(b.clone(), DirInfo::default());
                b
            });
            return self.new_dir(medium, &bucket, prefix);
        }
        // A full non-root directory: a sibling of the same kind.
        match parent.rfind('\\') {
            Some(k) => {
                let up = parent[..k].to_string();
                let p = parent.as_bytes()[k + 1];
                let sibling = self.new_dir(medium, &up, p);
                self.new_dir(medium, &sibling, prefix)
            }
            None => {
                let sibling = self.new_dir(medium, "", parent.as_bytes()[0]);
                self.new_dir(medium, &sibling, prefix)
            }
        }
    }

    /// The first File ID found below a record (depth-first).
    fn some_file_below(&self, rec: u32) -> Option<String> {
        let mut stack = vec![rec];
        while let Some(i) = stack.pop() {
            let r = &self.dir.records[i as usize];
            if let Some(f) = &r.file_id {
                return Some(f.to_string());
            }
            stack.extend(r.children.iter().rev());
        }
        None
    }

    /// The directory of a File ID with `up` more levels removed, if it is deep enough.
    fn dir_of(fid: &str, up: usize) -> Option<String> {
        let p = parts(fid);
        (p.len() > up).then(|| p[..p.len() - 1 - up].join("\\"))
    }

    /// Assign a File ID for a new instance under existing (patient, study, series) records:
    /// reuse the directories of their instances where there is room, else make new ones
    /// (P/S/E/I numbered names, 4 levels).
    fn assign(
        &mut self,
        medium: &dyn Medium,
        patient: Option<u32>,
        study: Option<u32>,
        series: Option<u32>,
    ) -> String {
        let mut series_dir = series
            .and_then(|e| {
                let r = &self.dir.records[e as usize];
                r.children
                    .last()
                    .and_then(|&c| self.dir.records[c as usize].file_id.as_deref())
                    .and_then(|f| Self::dir_of(f, 0))
            })
            .filter(|d| !d.is_empty());
        if let Some(d) = &series_dir {
            if self.dir_info(medium, d).count >= DIR_CAP {
                series_dir = None;
            }
        }
        let series_dir = match series_dir {
            Some(d) => d,
            None => {
                let study_dir = study
                    .and_then(|s| self.some_file_below(s))
                    .and_then(|f| Self::dir_of(&f, 1))
                    .filter(|d| !d.is_empty());
                let study_dir = match study_dir {
                    Some(d) => d,
                    None => {
                        let patient_dir = patient
                            .and_then(|p| self.some_file_below(p))
                            .and_then(|f| Self::dir_of(&f, 2))
                            .filter(|d| !d.is_empty());
                        let patient_dir = match patient_dir {
                            Some(d) => d,
                            None => self.new_dir(medium, "", b'P'),
                        };
                        self.new_dir(medium, &patient_dir, b'S')
                    }
                };
                self.new_dir(medium, &study_dir, b'E')
            }
        };
        let name = self.new_name(medium, &series_dir, b'I');
        let fid = Self::join(&series_dir, &name);
        if parts(&fid).len() > 8 {
            // Directories reused from another writer are too deep: start a fresh chain.
            let p = self.new_dir(medium, "", b'P');
            let s = self.new_dir(medium, &p, b'S');
            let e = self.new_dir(medium, &s, b'E');
            let n = self.new_name(medium, &e, b'I');
            return Self::join(&e, &n);
        }
        fid
    }

    /// Find a child of `parent` (or a root record) of a type whose key `tag` equals `value`.
    fn find_child(&self, parent: Option<u32>, rtype: &str, tag: u32, value: &str) -> Option<u32> {
        let kids = match parent {
            None => &self.dir.roots,
            Some(p) => &self.dir.records[p as usize].children,
        };
        kids.iter().copied().find(|&c| {
            let r = &self.dir.records[c as usize];
            r.in_use && &*r.rtype == rtype && r.key(tag).is_some_and(|v| v.trim() == value)
        })
    }
}

/// What ingest learned from a staged file.
struct Checked {
    header: dataset::Header,
    size: u64,
}

impl Live {
    fn new(medium: Arc<dyn Medium>, writable: bool, profile: Profile, state: State) -> Live {
        Live {
            medium,
            writable,
            profile,
            state: RwLock::new(state),
            changes: Mutex::new(Changes::default()),
            next_stage: AtomicU64::new(1),
            staging: Default::default(),
            staging_lock: Mutex::new(()),
            last_staged: Mutex::new(Instant::now()),
        }
    }

    /// Open a File-set. A writable one is repaired first if the last session did not end
    /// cleanly, and gets its staging directory.
    pub fn open(fs: FileSet, writable: bool, profile: Profile) -> Result<Live> {
        let FileSet {
            medium,
            dir,
            spelling,
            bytes,
        } = fs;
        let mut live = Live::new(
            medium,
            writable,
            profile,
            State::new(dir, spelling, Vec::new()),
        );
        if writable {
            if live.medium.stat(STAGING).is_ok() {
                log::warn!(
                    "{}: the last writable session did not end cleanly; repairing",
                    live.medium.describe()
                );
                let report = repair(&live.medium, &live.profile)?;
                for line in &report {
                    log::warn!("repair: {line}");
                }
                live.reload()?;
            } else {
                // The DICOMDIR as already read and parsed.
                let st = live.state.get_mut();
                st.patchable = patchable(&st.dir, bytes.len());
                st.image = bytes;
                st.count_padding();
            }
        }
        live.state.get_mut().index();
        Ok(live)
    }

    /// Re-read the DICOMDIR from the medium into the state.
    fn reload(&mut self) -> Result<()> {
        let medium = self.medium.clone();
        Self::reload_state(&*medium, self.state.get_mut())
    }

    /// Re-read the DICOMDIR from the medium: after a rewrite that could not be written, what
    /// is on the medium is the truth again (pending deletes are dropped).
    fn reload_state(medium: &dyn Medium, st: &mut State) -> Result<()> {
        let path = fileset::medium_path(DICOMDIR, st.spelling);
        let bytes = fileset::read_file(medium, &path, MAX_DICOMDIR)?;
        let dir = DicomDir::parse(&bytes).map_err(|r| Error::malformed(DICOMDIR, r))?;
        st.patchable = patchable(&dir, bytes.len());
        st.dir = dir;
        st.image = bytes;
        st.pending_files.clear();
        st.pending_paths.clear();
        st.pending_recs.clear();
        st.dirs.clear();
        st.existing.clear();
        st.index();
        st.count_padding();
        st.generation += 1;
        Ok(())
    }

    pub fn read(&self) -> RwLockReadGuard<'_, State> {
        self.state.read()
    }

    pub fn generation(&self) -> u64 {
        self.state.read().generation
    }

    /// What changed since the last call.
    pub fn take_changes(&self) -> Changes {
        std::mem::take(&mut *self.changes.lock())
    }

    fn changed(&self, dir: String) {
        self.changes.lock().dirs.push(dir);
    }

    /// Make the staging directory (on the first write of a session, so that a writable mount
    /// that is only read leaves the medium untouched).
    fn staging_dir(&self) -> Result<()> {
        *self.last_staged.lock() = Instant::now();
        if self.staging.load(Ordering::Acquire) {
            return Ok(());
        }
        match self.medium.mkdir(STAGING) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(Error::medium(STAGING, e)),
        }
        self.staging.store(true, Ordering::Release);
        Ok(())
    }

    /// A new staging file name (a medium path), created empty.
    pub fn stage(&self) -> Result<String> {
        let _g = self.staging_lock.lock();
        self.staging_dir()?;
        loop {
            let n = self.next_stage.fetch_add(1, Ordering::Relaxed);
            let p = format!("{STAGING}/{n:08}");
            match self.medium.create(&p) {
                Ok(()) => return Ok(p),
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(Error::medium(p, e)),
            }
        }
    }

    fn reject(name: &str, errno: i32, reason: impl Into<String>) -> Error {
        Error::rejected(name, errno, reason)
    }

    /// Validate a staged file and normalize it in place (transcode, clear the preamble).
    fn check_staged(
        &self,
        staged: &str,
        name: &str,
    ) -> Result<std::result::Result<Checked, String>> {
        let m = &*self.medium;
        let size = m.stat(staged).map_err(|e| Error::medium(staged, e))?.size;
        let src = MediumFile {
            medium: m,
            path: staged,
            size,
        };
        let mut head = vec![0u8; size.min(4096) as usize];
        let n = m
            .read_at(staged, 0, &mut head)
            .map_err(|e| Error::medium(staged, e))?;
        head.truncate(n);
        let meta = match dicom::read_meta(&head) {
            Ok(meta) => meta,
            Err(e) if head.len() < 132 || &head[128..132] != b"DICM" => {
                return Err(Self::reject(
                    name,
                    libc::EINVAL,
                    format!("not a DICOM file: {e}"),
                ))
            }
            Err(e) if head.len() == 4096 => {
                // A meta group longer than 4 KiB: let the full reader judge.
                let _ = e;
                dicom::Meta::default()
            }
            Err(e) => {
                return Err(Self::reject(
                    name,
                    libc::EINVAL,
                    format!("truncated or malformed Part-10 file: {e}"),
                ))
            }
        };
        if meta.sop_class == dicom::MEDIA_STORAGE_DIRECTORY {
            return Ok(Err(
                "a DICOMDIR copied in is not kept (dicomfs keeps its own)".into(),
            ));
        }
        let ts = meta.transfer_syntax.as_str();
        let transcodable = [dicom::IMPLICIT_LE, dicom::EXPLICIT_BE, dicom::DEFLATED_LE];
        let mut size = size;
        // Deflated data sets cannot be indexed in place: always inflated.
        let deflated = ts == dicom::DEFLATED_LE;
        if (!self.profile.allows(ts) || deflated) && !meta.transfer_syntax.is_empty() {
            if !transcodable.contains(&ts) {
                return Err(Self::reject(
                    name,
                    libc::EINVAL,
                    format!(
                        "transfer syntax {ts} is not allowed by the profile {}",
                        self.profile.name
                    ),
                ));
            }
            if self.profile.syntaxes.is_some() || deflated {
                let bytes = fileset::read_file(m, staged, MAX_TRANSCODE).map_err(|e| {
                    Self::reject(name, libc::EFBIG, format!("cannot transcode {ts}: {e}"))
                })?;
                let out = dataset::transcode_to_explicit_le(&bytes).map_err(|e| {
                    Self::reject(name, libc::EINVAL, format!("cannot transcode {ts}: {e}"))
                })?;
                m.truncate(staged, 0)
                    .map_err(|e| Error::medium(staged, e))?;
                m.write_at(staged, 0, &out)
                    .map_err(|e| Error::medium(staged, e))?;
                size = out.len() as u64;
                log::info!("{name}: transcoded from {ts} to Explicit VR Little Endian");
            }
        }
        let src = MediumFile { size, ..src };
        let header = dataset::read_header(&src).map_err(|e| Self::reject(name, libc::EINVAL, e))?;
        if !header.meta.preamble_zero {
            let mut pre = [0u8; 4];
            let _ = m.read_at(staged, 0, &mut pre);
            let tiff = &pre == b"II*\0" || &pre == b"MM\0*";
            if !tiff {
                m.write_at(staged, 0, &[0u8; 128])
                    .map_err(|e| Error::medium(staged, e))?;
                log::info!("{name}: cleared a non-zero preamble (PS3.10 7.5)");
            }
        }
        Ok(Ok(Checked { header, size }))
    }

    /// Do two files on the medium have the same bytes?
    fn same_bytes(&self, a: &str, b: &str, size: u64) -> Result<bool> {
        let m = &*self.medium;
        if m.stat(b).map_err(|e| Error::medium(b, e))?.size != size {
            return Ok(false);
        }
        let mut x = vec![0u8; 1 << 20];
        let mut y = vec![0u8; 1 << 20];
        let mut pos = 0;
        while pos < size {
            let n = m.read_at(a, pos, &mut x).map_err(|e| Error::medium(a, e))?;
            let k = m.read_at(b, pos, &mut y).map_err(|e| Error::medium(b, e))?;
            if n != k || x[..n] != y[..k] {
                return Ok(false);
            }
            if n == 0 {
                break;
            }
            pos += n as u64;
        }
        Ok(true)
    }

    /// Ingest a staged file (M-WRITE): validate it, give it a File ID (`want`, a File ID with
    /// `\`, or a new one), put it in place and add its records. `name` is the name it was copied
    /// under, for messages. On any error the staged file is removed and nothing else changed.
    pub fn ingest(&self, staged: &str, name: &str, want: Option<&str>) -> Result<Ingested> {
        let r = self.ingest_inner(staged, name, want);
        if !matches!(r, Ok(Ingested::Added(_))) {
            let _ = self.medium.remove(staged);
        }
        match r {
            Err(e) if e.errno() == libc::EINVAL && self.full() => Err(Self::reject(
                name,
                libc::ENOSPC,
                "No space left on device: the medium is full; the copy was cut short and nothing of it was kept",
            )),
            r => r,
        }
    }

    /// Is the medium (nearly) full? A copy cut short by a full medium reads as truncated.
    fn full(&self) -> bool {
        self.medium
            .statfs()
            .is_ok_and(|s| s.blocks_avail.saturating_mul(s.block_size as u64) < (1 << 20))
    }

    fn ingest_inner(&self, staged: &str, name: &str, want: Option<&str>) -> Result<Ingested> {
        if !self.writable {
            return Err(Error::ReadOnly { path: name.into() });
        }
        let checked = match self.check_staged(staged, name)? {
            Ok(c) => c,
            Err(why) => return Ok(Ingested::Dropped(why)),
        };
        let h = &checked.header;
        let m = &*self.medium;
        let mut st = self.state.write();
        // Deletes not yet written would be cut off the chains by the append's links (and a
        // File ID being replaced must be free): write them first.
        self.commit_locked(&mut st)?;
        if let Some(&i) = st.by_sop.get(h.sop_instance.as_str()) {
            let fid = st.dir.records[i as usize]
                .file_id
                .as_deref()
                .unwrap_or("")
                .to_string();
            let existing = fileset::medium_path(&fid, st.spelling);
            drop(st);
            return if self.same_bytes(staged, &existing, checked.size)? {
                Ok(Ingested::Same(fid))
            } else {
                Err(Self::reject(
                    name,
                    libc::EEXIST,
                    format!(
                        "SOP Instance UID {} is already on the medium as {fid}, with other bytes (delete it first to replace it)",
                        h.sop_instance
                    ),
                ))
            };
        }
        self.ensure_patchable(&mut st)?;
        let ds = &h.elems;
        let get = |t: u32| {
            ds.iter()
                .find(|e| e.tag == t)
                .map(|e| dicom::ascii(&e.value))
                .unwrap_or_default()
        };
        // The records this instance needs; the File ID is filled in below.
        let mut recs = records::for_instance(
            ds,
            "",
            &h.sop_class,
            &h.sop_instance,
            &h.meta.transfer_syntax,
        );
        let pid = recs
            .patient
            .iter()
            .find(|e| e.tag == tags::PATIENT_ID)
            .map(|e| dicom::ascii(&e.value))
            .unwrap_or_default();
        let root_leaf = dicomdir::level_of(recs.leaf_type) == 0;
        let patient = if root_leaf {
            None
        } else {
            st.find_child(None, "PATIENT", tags::PATIENT_ID, &pid)
        };
        let study_uid = get(tags::STUDY_INSTANCE_UID);
        let series_uid = get(tags::SERIES_INSTANCE_UID);
        let study = patient
            .and_then(|p| st.find_child(Some(p), "STUDY", tags::STUDY_INSTANCE_UID, &study_uid));
        let series = study
            .and_then(|s| st.find_child(Some(s), "SERIES", tags::SERIES_INSTANCE_UID, &series_uid));
        let fid = match want {
            Some(w) => {
                let p = fileset::medium_path(w, st.spelling);
                if m.stat(&p).is_ok() {
                    return Err(Self::reject(
                        name,
                        libc::EEXIST,
                        format!("{w} already exists"),
                    ));
                }
                w.to_string()
            }
            None => st.assign(m, patient, study, series),
        };
        for e in recs.leaf.iter_mut() {
            if e.tag == tags::REFERENCED_FILE_ID {
                e.value = fid.as_bytes().to_vec();
            }
        }
        // Put the file in place: make its directories, then rename.
        let target = fileset::medium_path(&fid, st.spelling);
        let comps: Vec<&str> = target.split('/').collect();
        let mut made = Vec::new();
        let fcomps = parts(&fid);
        for k in 1..comps.len() {
            let key = fcomps[..k].join("\\");
            if st.dirs.get(&key).is_some_and(|i| i.exists) || st.existing.contains(&key) {
                continue;
            }
            let d = comps[..k].join("/");
            match m.mkdir(&d) {
                Ok(()) => made.push(d),
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
                Err(e) => {
                    undo_dirs(m, &made);
                    return Err(Error::medium(d, e));
                }
            }
            if let Some(i) = st.dirs.get_mut(&key) {
                i.exists = true;
            } else {
                st.existing.insert(key);
            }
        }
        if let Err(e) = m.rename(staged, &target) {
            undo_dirs(m, &made);
            st.dirs.clear();
            st.existing.clear();
            return Err(Error::medium(name, e));
        }
        // Reference it.
        let chain: Vec<(&str, Vec<Elem>)> = if root_leaf {
            vec![(recs.leaf_type, std::mem::take(&mut recs.leaf))]
        } else {
            let mut c = Vec::new();
            if patient.is_none() {
                c.push(("PATIENT", std::mem::take(&mut recs.patient)));
            }
            if study.is_none() {
                c.push(("STUDY", std::mem::take(&mut recs.study)));
            }
            if series.is_none() {
                c.push(("SERIES", std::mem::take(&mut recs.series)));
            }
            c.push((recs.leaf_type, std::mem::take(&mut recs.leaf)));
            c
        };
        let parent = if root_leaf {
            None
        } else {
            series.or(study).or(patient)
        };
        if let Err(e) = self.append(&mut st, parent, chain, &h.sop_instance) {
            let _ = m.rename(&target, staged);
            undo_dirs(m, &made);
            st.dirs.clear();
            st.existing.clear();
            return Err(e);
        }
        // Views: directories made appear in their parents; the new file is added to its
        // directory's listing (`Changes::added`), which is not listed again.
        for d in &made {
            self.changed(d.rsplit_once('/').map(|x| x.0).unwrap_or("").to_string());
        }
        self.changes.lock().added.push(fid.clone());
        st.generation += 1;
        Ok(Ingested::Added(fid))
    }

    /// Rewrite a DICOMDIR that cannot be patched in place (another writer's encoding,
    /// undefined lengths, inactive records) in dicomfs's own form, once.
    fn ensure_patchable(&self, st: &mut State) -> Result<()> {
        if st.patchable {
            return Ok(());
        }
        // Deletes detached in memory but not written yet: detached again in the new tree.
        let pending: Vec<String> = st
            .pending_paths
            .iter()
            .map(|p| p.replace('/', "\\"))
            .collect();
        let mut bytes = std::mem::take(&mut st.image);
        if st.dir.transfer_syntax != dicom::EXPLICIT_LE {
            bytes = dataset::transcode_to_explicit_le(&bytes)
                .map_err(|e| Error::malformed(DICOMDIR, e))?;
        }
        let d = DicomDir::parse(&bytes).map_err(|e| Error::malformed(DICOMDIR, e))?;
        let w = dicomdir::WDicomDir::from_read(&d, &bytes)
            .map_err(|e| Error::malformed(DICOMDIR, e))?;
        let out = w.encode();
        self.replace_dicomdir(st, &out, true)?;
        log::warn!(
            "{}: rewrote the DICOMDIR in Explicit VR Little Endian with defined lengths so it can be updated in place",
            self.medium.describe()
        );
        let d = DicomDir::parse(&out).map_err(|e| Error::malformed(DICOMDIR, e))?;
        st.patchable = patchable(&d, out.len());
        st.dir = d;
        st.image = out;
        st.index();
        st.pending_files.clear();
        st.pending_paths.clear();
        st.pending_recs.clear();
        for f in pending {
            if let Some(&i) = st.by_file.get(f.as_str()) {
                self.detach(st, i);
            }
        }
        st.count_padding();
        st.generation += 1;
        if !st.patchable {
            return Err(Error::malformed(
                DICOMDIR,
                "cannot be put in a form that can be updated in place",
            ));
        }
        Ok(())
    }

    /// Replace the DICOMDIR atomically: write the new bytes to the staging directory, make
    /// them durable, rename over the old one.
    ///
    /// With `durable` the new bytes are synced before the rename. Without, a kill -9 still finds
    /// the old or the new DICOMDIR, and so does a power loss on filesystems that order a
    /// replacing rename after the new file's data (ext4, btrfs); fsync and unmount make it
    /// durable everywhere.
    fn replace_dicomdir(&self, st: &State, bytes: &[u8], durable: bool) -> Result<()> {
        let m = &*self.medium;
        let _g = self.staging_lock.lock();
        self.staging_dir()?;
        let tmp = format!("{STAGING}/DICOMDIR");
        let _ = m.remove(&tmp);
        let wrap = |e| Error::medium(DICOMDIR, e);
        m.create(&tmp).map_err(wrap)?;
        let written =
            m.write_at(&tmp, 0, bytes).and_then(
                |_| {
                    if durable {
                        m.sync(Some(&tmp))
                    } else {
                        Ok(())
                    }
                },
            );
        if let Err(e) = written {
            let _ = m.remove(&tmp);
            return Err(wrap(e));
        }
        let path = fileset::medium_path(DICOMDIR, st.spelling);
        m.rename(&tmp, &path).map_err(wrap)?;
        Ok(())
    }

    /// Append a chain of new records (each the child of the one before; the first a child of
    /// `parent`, or a root record) to the DICOMDIR: new bytes at the end, then the sequence
    /// length, then the one offset that links them in.
    fn append(
        &self,
        st: &mut State,
        parent: Option<u32>,
        chain: Vec<(&str, Vec<Elem>)>,
        sop: &str,
    ) -> Result<()> {
        let m = &*self.medium;
        let path = fileset::medium_path(DICOMDIR, st.spelling);
        let wrap = |e| Error::medium(DICOMDIR, e);
        let old_len = st.image.len();
        // Lay out: each record's lower offset is the next one's start.
        let mut enc = Vec::new();
        let mut at = old_len;
        let mut starts = Vec::new();
        for (rtype, elems) in &chain {
            let e = dicomdir::encode_record(rtype, elems, 0, 0);
            starts.push(at);
            at += e.bytes.len();
            enc.push(e);
        }
        let mut bytes = Vec::with_capacity(at - old_len);
        for (k, e) in enc.iter_mut().enumerate() {
            if let Some(&next_start) = starts.get(k + 1) {
                e.bytes[e.lower_at..e.lower_at + 4]
                    .copy_from_slice(&(next_start as u32).to_le_bytes());
            }
            bytes.extend_from_slice(&e.bytes);
        }
        if at > u32::MAX as usize {
            return Err(Error::rejected(
                DICOMDIR,
                libc::EFBIG,
                "the DICOMDIR would pass 4 GiB, the limit of its 32-bit offsets",
            ));
        }
        let first = starts[0] as u32;
        // The patches: (position, value).
        let seq_len = (at - st.dir.seq_start as usize) as u32;
        let mut patches = vec![(st.dir.seq_len_at, seq_len)];
        let siblings = match parent {
            None => &st.dir.roots,
            Some(p) => &st.dir.records[p as usize].children,
        };
        match (siblings.last(), parent) {
            (Some(&last), _) => patches.push((st.dir.records[last as usize].next_at, first)),
            (None, Some(p)) => patches.push((st.dir.records[p as usize].lower_at, first)),
            (None, None) => patches.push((st.dir.first_root_at, first)),
        }
        if parent.is_none() {
            patches.push((st.dir.last_root_at, first));
        }
        if let Err(e) = m.write_at(&path, old_len as u64, &bytes) {
            let _ = m.truncate(&path, old_len as u64);
            return Err(wrap(e));
        }
        for &(pos, v) in &patches {
            if let Err(e) = m.write_at(&path, pos as u64, &v.to_le_bytes()) {
                // Undo: restore what was patched, drop the appended bytes.
                for &(p, _) in &patches {
                    let old = &st.image[p as usize..p as usize + 4];
                    let _ = m.write_at(&path, p as u64, old);
                }
                let _ = m.truncate(&path, old_len as u64);
                return Err(wrap(e));
            }
        }
        // Mirror in memory.
        st.image.extend_from_slice(&bytes);
        for &(pos, v) in &patches {
            st.image[pos as usize..pos as usize + 4].copy_from_slice(&v.to_le_bytes());
        }
        st.dir.seq_end = at as u32;
        let inherited = st.dir.charset.clone();
        let mut up = parent;
        for (k, ((rtype, elems), e)) in chain.iter().zip(&enc).enumerate() {
            let idx = st.dir.records.len() as u32;
            let s = starts[k] as u32;
            let fid = elems
                .iter()
                .find(|x| x.tag == tags::REFERENCED_FILE_ID)
                .map(|x| dicom::ascii(&x.value).into());
            let rec = Record {
                offset: s,
                body: (s + 8, s + e.bytes.len() as u32),
                end: s + e.bytes.len() as u32,
                rtype: (*rtype).into(),
                in_use: true,
                next: 0,
                lower: starts.get(k + 1).map(|&x| x as u32).unwrap_or(0),
                next_at: s + e.next_at as u32,
                lower_at: s + e.lower_at as u32,
                pad: 0,
                parent: up,
                children: Vec::new(),
                file_id: fid,
                keys: keys_of(elems, &inherited),
            };
            st.dir.records.push(rec);
            match up {
                None => st.dir.roots.push(idx),
                Some(p) => st.dir.records[p as usize].children.push(idx),
            }
            up = Some(idx);
        }
        if let Some(leaf) = up {
            st.by_sop.insert(sop.into(), leaf);
            if let Some(f) = st.dir.records[leaf as usize].file_id.clone() {
                st.by_file.insert(f, leaf);
            }
        }
        Ok(())
    }

    /// Delete an instance (M-DELETE) by its File ID: detach its record, and its series, study
    /// and patient records if they are left empty. The DICOMDIR is rewritten and the file
    /// removed by the next [`Live::commit`] (batched, so `rm -r` of a series is one rewrite).
    pub fn delete(&self, fid: &str) -> Result<()> {
        if !self.writable {
            return Err(Error::ReadOnly { path: fid.into() });
        }
        let mut st = self.state.write();
        let Some(&i) = st.by_file.get(fid) else {
            return Err(Error::NotFound { path: fid.into() });
        };
        // A delete on its own (`rm FILE`) is written before it returns, so it is on the
        // medium when `umount` returns; one that follows others within 200 ms joins their
        // batch (`rm -r`: written at its rmdir, or 100 ms after the last delete).
        let alone = st
            .last_delete
            .is_none_or(|t| t.elapsed() > Duration::from_millis(200));
        self.detach(&mut st, i);
        drop(st);
        if alone {
            self.commit()?;
        }
        Ok(())
    }

    fn detach(&self, st: &mut State, i: u32) {
        let mut cur = Some(i);
        while let Some(c) = cur {
            let parent = st.dir.records[c as usize].parent;
            st.dir.records[c as usize].in_use = false;
            st.pending_recs.push(c);
            if let Some(f) = st.dir.records[c as usize].file_id.clone() {
                st.by_file.remove(&f);
                st.pending_files.push(fileset::medium_path(&f, st.spelling));
                st.pending_paths.insert(f.replace('\\', "/"));
                if let Some(sop) = st.dir.records[c as usize].key(tags::REFERENCED_SOP_INSTANCE) {
                    let sop: Box<str> = sop.into();
                    st.by_sop.remove(&sop);
                }
            }
            let sibs = match parent {
                None => &mut st.dir.roots,
                Some(p) => &mut st.dir.records[p as usize].children,
            };
            sibs.retain(|&x| x != c);
            let empty = sibs.is_empty();
            cur = match parent {
                Some(p) if empty && dicomdir::level_of(&st.dir.records[p as usize].rtype) < 3 => {
                    Some(p)
                }
                _ => None,
            };
        }
        st.last_delete = Some(Instant::now());
        st.generation += 1;
    }

    /// Are deletes waiting, and for how long since the last one?
    pub fn pending_for(&self) -> Option<Duration> {
        let st = self.state.read();
        if st.pending_files.is_empty() {
            None
        } else {
            Some(st.last_delete.map(|t| t.elapsed()).unwrap_or_default())
        }
    }

    /// Write pending deletes: rewrite the DICOMDIR without the detached records (one atomic
    /// replace), then remove their files and the directories left empty.
    pub fn commit(&self) -> Result<()> {
        let mut st = self.state.write();
        self.commit_locked(&mut st)
    }

    fn commit_locked(&self, st: &mut State) -> Result<()> {
        if st.pending_files.is_empty() && st.pending_recs.is_empty() {
            return Ok(());
        }
        self.ensure_patchable(st)?;
        let t = Instant::now();
        let journaled = match plan_unlink(st) {
            Some(plan) => {
                self.commit_in_place(st, plan)?;
                log::debug!("commit: deleted in place in {:.1?}", t.elapsed());
                true
            }
            None => {
                self.commit_rewrite(st)?;
                log::debug!("commit: rewrote the DICOMDIR in {:.1?}", t.elapsed());
                false
            }
        };
        st.pending_recs.clear();
        let files = std::mem::take(&mut st.pending_files);
        st.pending_paths.clear();
        let m = &*self.medium;
        for d in remove_files(m, &files) {
            let up = d.rsplit_once('/').map(|x| x.0).unwrap_or("").to_string();
            self.changed(up);
            self.changes.lock().removed.push(d);
        }
        for f in &files {
            self.changed(f.rsplit_once('/').map(|x| x.0).unwrap_or("").to_string());
        }
        if journaled {
            // Last: until the files are gone, a crash replays the journal, which removes them.
            let _ = m.remove(&journal::path());
        }
        // Directory entry counts of series directories shrank; re-count lazily.
        st.dirs.retain(|_, _| false);
        st.existing.clear();
        st.generation += 1;
        log::debug!("{} instance(s) deleted", files.len());
        Ok(())
    }

    /// Undo detached deletes after a failed write: what is on the medium is the truth again.
    fn restore(&self, st: &mut State) {
        for f in &st.pending_files {
            self.changed(f.rsplit_once('/').map(|x| x.0).unwrap_or("").to_string());
        }
        if let Err(e2) = Self::reload_state(&*self.medium, st) {
            log::error!("after a failed DICOMDIR update, the DICOMDIR cannot be read again: {e2}");
        }
        self.changed(String::new());
    }

    /// The batched deletes as one atomic rewrite of the DICOMDIR (which also drops padding).
    fn commit_rewrite(&self, st: &mut State) -> Result<()> {
        let out = rewrite(st)?;
        if let Err(e) = self.replace_dicomdir(st, &out, false) {
            // Nothing changed on the medium: the deletes are undone.
            self.restore(st);
            return Err(e);
        }
        st.spare = std::mem::replace(&mut st.image, out);
        st.padding = 0;
        Ok(())
    }

    /// The batched deletes in place (O(1) in the DICOMDIR's size): the journal first, then the
    /// patches, synced before any file is removed.
    fn commit_in_place(&self, st: &mut State, plan: Unlink) -> Result<()> {
        let m = &*self.medium;
        let path = fileset::medium_path(DICOMDIR, st.spelling);
        let j = journal::Journal {
            dicomdir: path.clone(),
            len: st.image.len() as u32,
            patches: plan.patches,
            files: st.pending_files.clone(),
        };
        {
            let _g = self.staging_lock.lock();
            self.staging_dir()?;
            if let Err(e) = journal::write(m, &j) {
                self.restore(st);
                return Err(Error::medium(journal::path(), e));
            }
        }
        let wrap = |e| Error::medium(DICOMDIR, e);
        for (k, p) in j.patches.iter().enumerate() {
            if let Err(e) = m.write_at(&path, p.pos as u64, &p.new) {
                let undone = j.patches[..=k]
                    .iter()
                    .rev()
                    .all(|p| m.write_at(&path, p.pos as u64, &p.old).is_ok());
                if undone {
                    let _ = m.remove(&journal::path());
                }
                // Otherwise the journal stays, and the next repair finishes the delete.
                self.restore(st);
                return Err(wrap(e));
            }
        }
        if let Err(e) = m.sync(Some(&path)) {
            // The journal stays: the next repair finishes the delete and removes the files.
            self.restore(st);
            return Err(wrap(e));
        }
        for p in &j.patches {
            let at = p.pos as usize;
            st.image[at..at + p.new.len()].copy_from_slice(&p.new);
        }
        for &(r, end, pad) in &plan.grow {
            let r = &mut st.dir.records[r as usize];
            r.end = end;
            r.pad = pad;
        }
        for &i in &st.pending_recs {
            st.dir.records[i as usize].children.clear();
        }
        st.padding += plan.bytes;
        Ok(())
    }

    /// When idle (nothing staged or pending for a while), remove the empty staging directory,
    /// so the medium is clean even before the unmount finishes.
    pub fn tidy(&self, idle: Duration) {
        if !self.staging.load(Ordering::Acquire) || self.last_staged.lock().elapsed() < idle {
            return;
        }
        let st = self.state.write();
        if !st.pending_files.is_empty() {
            return;
        }
        let _g = self.staging_lock.lock();
        let m = &*self.medium;
        if m.list(STAGING).is_ok_and(|l| l.is_empty()) && m.rmdir(STAGING).is_ok() {
            self.staging.store(false, Ordering::Release);
        }
        drop(st);
    }

    /// Make everything written so far durable.
    pub fn sync(&self) -> Result<()> {
        if self.writable {
            self.commit()?;
            self.medium
                .sync(None)
                .map_err(|e| Error::medium(self.medium.describe(), e))?;
        }
        Ok(())
    }

    /// End a writable session cleanly: write pending deletes, remove the staging directory.
    pub fn close(&self) -> Result<()> {
        if !self.writable {
            return Ok(());
        }
        self.close_fileset()?;
        // Last: the medium's own clean state (on FAT: metadata, FSInfo, the dirty bit).
        self.medium
            .close()
            .map_err(|e| Error::medium(self.medium.describe(), e))
    }

    fn close_fileset(&self) -> Result<()> {
        self.commit()?;
        if !self.staging.load(Ordering::Acquire) {
            return Ok(());
        }
        let m = &*self.medium;
        if let Ok(entries) = m.list(STAGING) {
            for e in entries {
                let _ = m.remove(&format!("{STAGING}/{}", e.name));
            }
        }
        self.sync()?;
        m.rmdir(STAGING).map_err(|e| Error::medium(STAGING, e))?;
        m.sync(None).map_err(|e| Error::medium(m.describe(), e))?;
        Ok(())
    }
}

/// Remove deleted instances' files, then the directories they leave empty (deepest first,
/// walking up while they empty out). Returns the directories removed.
fn remove_files(m: &dyn Medium, files: &[String]) -> Vec<String> {
    let mut dirs = Vec::new();
    for f in files {
        match m.remove(f) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => log::warn!("{f}: could not remove the deleted instance's file: {e}"),
        }
        if let Some((d, _)) = f.rsplit_once('/') {
            dirs.push(d.to_string());
        }
    }
    dirs.sort();
    dirs.dedup();
    dirs.sort_by_key(|d| std::cmp::Reverse(d.matches('/').count()));
    let mut removed = Vec::new();
    for d in dirs {
        let mut d = d;
        loop {
            let empty = m.list(&d).map(|l| l.is_empty()).unwrap_or(false);
            if !empty || m.rmdir(&d).is_err() {
                break;
            }
            let up = d.rsplit_once('/').map(|x| x.0).unwrap_or("").to_string();
            removed.push(d);
            if up.is_empty() {
                break;
            }
            d = up;
        }
    }
    removed
}

/// An in-place delete: the patches that unlink the detached records from the tree and turn
/// their bytes into Data Set Trailing Padding (FFFC,FFFC) at the end of the item physically
/// before them (PS3.10 7.2 lets nested data sets end with it), so no byte moves and no offset
/// changes.
struct Unlink {
    patches: Vec<journal::Patch>,
    /// (record, its new end, where its padding starts)
    grow: Vec<(u32, u32, u32)>,
    /// Bytes turned into padding.
    bytes: u64,
}

/// Plan an in-place delete of the records detached since the last commit, or `None` when a
/// rewrite is the way: too many records, padding past a quarter of the DICOMDIR (the rewrite
/// compacts it), a record first in the sequence (nothing before it to absorb it), or an
/// encoding the plan does not handle.
fn plan_unlink(st: &State) -> Option<Unlink> {
    const MAX_RECORDS: usize = 4096;
    let d = &st.dir;
    let img = &st.image;
    let dead = &st.pending_recs;
    if dead.is_empty() || dead.len() > MAX_RECORDS || !st.patchable {
        return None;
    }
    let rec = |i: u32| d.records.get(i as usize);
    let is_dead: HashSet<u32> = dead.iter().copied().collect();
    if dead
        .iter()
        .any(|&i| rec(i).is_none_or(|r| !r.children.is_empty() || r.in_use))
    {
        return None;
    }
    let rd = |pos: u32| -> Option<u32> {
        let p = pos as usize;
        Some(u32::from_le_bytes(img.get(p..p + 4)?.try_into().ok()?))
    };
    let mut patches: Vec<journal::Patch> = Vec::new();
    let want = |patches: &mut Vec<journal::Patch>, pos: u32, v: u32| -> Option<()> {
        if pos == 0 {
            return None;
        }
        let cur = rd(pos)?;
        if cur != v {
            patches.push(journal::Patch {
                pos,
                old: cur.to_le_bytes().to_vec(),
                new: v.to_le_bytes().to_vec(),
            });
        }
        Some(())
    };
    // The links: every live list that lost a member (a parent's children, or the roots).
    let mut lists: Vec<Option<u32>> = dead
        .iter()
        .map(|&i| d.records[i as usize].parent)
        .filter(|p| p.is_none_or(|p| !is_dead.contains(&p)))
        .collect();
    lists.sort();
    lists.dedup();
    for p in lists {
        let (list, head_at) = match p {
            None => (&d.roots, d.first_root_at),
            Some(p) => (&rec(p)?.children, rec(p)?.lower_at),
        };
        let off = |i: u32| rec(i).map(|r| r.offset);
        want(
            &mut patches,
            head_at,
            list.first().map_or(Some(0), |&c| off(c))?,
        )?;
        for w in list.windows(2) {
            want(&mut patches, rec(w[0])?.next_at, off(w[1])?)?;
        }
        if let Some(&l) = list.last() {
            want(&mut patches, rec(l)?.next_at, 0)?;
        }
        if p.is_none() {
            want(
                &mut patches,
                d.last_root_at,
                list.last().map_or(Some(0), |&c| off(c))?,
            )?;
        }
    }
    // The bytes: runs of physically adjacent dead records, each absorbed by the live record
    // just before it.
    let mut order: Vec<u32> = dead.clone();
    order.sort_by_key(|&i| d.records[i as usize].offset);
    order.dedup();
    let mut runs: Vec<(u32, u32, u32)> = Vec::new(); // (first record, start, end)
    for &i in &order {
        let r = &d.records[i as usize];
        match runs.last_mut() {
            Some(run) if run.2 == r.offset => run.2 = r.end,
            _ => runs.push((i, r.offset, r.end)),
        }
    }
    let mut grow = Vec::new();
    let mut bytes = 0u64;
    for (first, start, end) in runs {
        let size = end.checked_sub(start)?;
        if size < 12 || size % 2 != 0 {
            return None;
        }
        // Records are kept in file order; dead ones before are inside some live record.
        let p = (0..first)
            .rev()
            .find(|&j| d.records[j as usize].in_use && !is_dead.contains(&j))?;
        let pr = &d.records[p as usize];
        if pr.end != start
            || img.get(pr.offset as usize..pr.offset as usize + 4)? != [0xFE, 0xFF, 0x00, 0xE0]
        {
            return None;
        }
        // A defined-length item, its padding (if any) at its end.
        if rd(pr.offset + 4)? != pr.end - pr.offset - 8 {
            return None;
        }
        want(&mut patches, pr.offset + 4, end - pr.offset - 8)?;
        let pad = if pr.pad != 0 {
            if rd(pr.pad + 8)? != pr.end - pr.pad - 12 {
                return None;
            }
            want(&mut patches, pr.pad + 8, end - pr.pad - 12)?;
            pr.pad
        } else {
            let mut h = vec![0xFC, 0xFF, 0xFC, 0xFF, b'O', b'B', 0, 0];
            h.extend_from_slice(&(size - 12).to_le_bytes());
            let old = img.get(start as usize..start as usize + 12)?.to_vec();
            patches.push(journal::Patch {
                pos: start,
                old,
                new: h,
            });
            start
        };
        grow.push((p, end, pad));
        bytes += size as u64;
    }
    // Compaction: past a quarter of the DICOMDIR (and 256 KiB), rewrite instead.
    if st.padding + bytes > (img.len() as u64 / 4).max(256 << 10) {
        return None;
    }
    let mut at: Vec<(u32, u32)> = patches
        .iter()
        .map(|p| (p.pos, p.pos + p.new.len() as u32))
        .collect();
    at.sort();
    if at.windows(2).any(|w| w[1].0 < w[0].1) {
        return None;
    }
    Some(Unlink {
        patches,
        grow,
        bytes,
    })
}

fn undo_dirs(m: &dyn Medium, made: &[String]) {
    for d in made.iter().rev() {
        let _ = m.rmdir(d);
    }
}

/// Where a record's bytes end once its trailing padding is dropped.
fn kept_end(r: &Record) -> u32 {
    if r.pad != 0 {
        r.pad
    } else {
        r.end
    }
}

/// A new image without the detached records (and without padding): the header as it was, the live records in
/// item order with their offsets recomputed. The state's records get their new positions.
fn rewrite(st: &mut State) -> Result<Vec<u8>> {
    let d = &mut st.dir;
    let img = &st.image;
    let spare = &mut st.spare;
    let n = d.records.len();
    // The live records in item order (records are kept in file order: appends go at the end,
    // and a rewrite keeps the order).
    let mut keep = vec![false; n];
    for i in d.visible() {
        keep[i as usize] = true;
    }
    const NONE: u32 = u32::MAX;
    let mut next_of = vec![NONE; n];
    let mut link = |list: &[u32]| {
        for w in list.windows(2) {
            next_of[w[0] as usize] = w[1];
        }
    };
    link(&d.roots);
    for (i, r) in d.records.iter().enumerate() {
        if keep[i] {
            link(&r.children);
        }
    }
    let head = d.seq_start as usize;
    let mut newoff = vec![0u32; n];
    let mut pos = head;
    for (i, r) in d.records.iter().enumerate() {
        if keep[i] {
            newoff[i] = pos as u32;
            pos += (kept_end(r) - r.offset) as usize;
        }
    }
    let off = |i: &u32| newoff[*i as usize];
    // Reuse the pages of the image before last (a fresh 35 MB buffer costs its page faults).
    let mut out = std::mem::take(spare);
    out.clear();
    out.reserve(pos);
    out.extend_from_slice(&img[..head]);
    for (i, r) in d.records.iter().enumerate() {
        if !keep[i] {
            continue;
        }
        let (s, e) = (r.offset as usize, kept_end(r) as usize);
        let item = img
            .get(s..e)
            .ok_or_else(|| Error::malformed(DICOMDIR, "a record lies outside the file"))?;
        let base = out.len();
        out.extend_from_slice(item);
        if r.pad != 0 {
            // The padding is dropped: the item's defined length shrinks to its elements.
            out[base + 4..base + 8].copy_from_slice(&((e - s - 8) as u32).to_le_bytes());
        }
        let next = match next_of[i] {
            NONE => 0,
            k => off(&k),
        };
        let lower = r.children.first().map(off).unwrap_or(0);
        let na = base + (r.next_at - r.offset) as usize;
        let la = base + (r.lower_at - r.offset) as usize;
        out[na..na + 4].copy_from_slice(&next.to_le_bytes());
        out[la..la + 4].copy_from_slice(&lower.to_le_bytes());
    }
    let first = d.roots.first().map(off).unwrap_or(0);
    let last = d.roots.last().map(off).unwrap_or(0);
    let seq_len = (out.len() - head) as u32;
    for (at, v) in [
        (d.first_root_at, first),
        (d.last_root_at, last),
        (d.seq_len_at, seq_len),
    ] {
        out[at as usize..at as usize + 4].copy_from_slice(&v.to_le_bytes());
    }
    // New positions in memory.
    for (i, r) in d.records.iter_mut().enumerate() {
        if !keep[i] {
            continue;
        }
        let n = newoff[i];
        let delta = |x: u32| n + (x - r.offset);
        r.next_at = delta(r.next_at);
        r.lower_at = delta(r.lower_at);
        r.body = (delta(r.body.0), delta(r.body.1));
        r.end = delta(kept_end(r));
        r.pad = 0;
        r.offset = n;
    }
    for r in d.records.iter_mut().filter(|r| !r.in_use) {
        r.children.clear();
    }
    d.seq_end = out.len() as u32;
    Ok(out)
}

/// Bring a File-set back to a consistent state after a crash (or a foreign tool's damage):
/// drop trailing bytes and records the offsets do not reach, drop records whose file is
/// missing or is not the instance they say, take in files nothing references (where their
/// path is a legal File ID), and empty the staging directory. Returns one line per change.
pub fn repair(arc: &Arc<dyn Medium>, profile: &Profile) -> Result<Vec<String>> {
    let medium = &**arc;
    let mut report = Vec::new();
    // An in-place delete a crash interrupted: finish it (or drop a torn journal) first.
    match journal::replay(medium).map_err(|e| Error::medium(journal::path(), e))? {
        journal::Replayed::None => {}
        journal::Replayed::Applied { patches, files } => {
            report.push(format!(
                "DICOMDIR: finished an interrupted delete ({patches} in-place change(s), {} file(s) removed)",
                files.len()
            ));
            for d in remove_files(medium, &files) {
                report.push(format!("{d}: removed, left empty by the delete"));
            }
        }
        journal::Replayed::Discarded(why) => {
            report.push(format!("{STAGING}/{}: discarded ({why})", journal::NAME));
        }
    }
    let fs = FileSet::open(arc.clone())?;
    let spelling = fs.spelling;
    let mut d = fs.dir;
    let mut bytes = fs.bytes;
    if (d.seq_end as usize) < bytes.len() && d.seq_len_at != 0 {
        report.push(format!(
            "DICOMDIR: dropped {} bytes after the record sequence (an append cut short)",
            bytes.len() - d.seq_end as usize
        ));
        bytes.truncate(d.seq_end as usize);
        d = DicomDir::parse(&bytes).map_err(|e| Error::malformed(DICOMDIR, e))?;
    }
    if d.rebuilt {
        let n = d.keep_reachable();
        report.push(format!(
            "DICOMDIR: dropped {n} record(s) the offsets do not reach (their files are taken in again below)"
        ));
    }
    // Records whose file is missing or wrong.
    let mut drop_recs = Vec::new();
    let mut referenced = HashSet::new();
    for i in d.visible() {
        let r = &d.records[i as usize];
        let Some(f) = r.file_id.as_deref() else {
            continue;
        };
        let p = fileset::medium_path(f, spelling);
        let ok = match medium.stat(&p) {
            Ok(st) if st.kind == Kind::File => {
                let src = MediumFile {
                    medium,
                    path: &p,
                    size: st.size,
                };
                match r.key(tags::REFERENCED_SOP_INSTANCE) {
                    Some(sop) => dataset::read_header(&src)
                        .map(|h| h.sop_instance == sop)
                        .unwrap_or(false),
                    None => true,
                }
            }
            _ => false,
        };
        if ok {
            referenced.insert(p);
        } else {
            report.push(format!(
                "{f}: missing or not the instance its record names: record dropped"
            ));
            drop_recs.push(i);
        }
    }
    let needs_write = !report.is_empty();
    // Write the repaired DICOMDIR through a Live over the same medium.
    let mut live = Live::new(
        arc.clone(),
        true,
        profile.clone(),
        State::new(d, spelling, bytes),
    );
    {
        let st = live.state.get_mut();
        st.index();
    }
    if needs_write {
        let mut st = live.state.write();
        // Make it patchable from the records we keep: mark dropped ones, then rewrite fully.
        for &i in &drop_recs {
            live.detach(&mut st, i);
        }
        st.pending_files.clear();
        st.pending_paths.clear();
        let w = rewrite_fresh(&st)?;
        live.replace_dicomdir(&st, &w, true)?;
        drop(st);
        live.reload()?;
        live.state.get_mut().index();
    }
    // Staged files: never acknowledged (ingest renames them before close returns).
    if let Ok(entries) = medium.list(STAGING) {
        for e in entries {
            let _ = medium.remove(&format!("{STAGING}/{}", e.name));
        }
        if medium.rmdir(STAGING).is_ok() {
            // `stage` below must make it again.
            live.staging.store(false, Ordering::Release);
            report.push(format!(
                "{STAGING}: removed files of copies that never finished"
            ));
        }
    }
    // Files nothing references (each is moved aside with `stage`, which makes the staging
    // directory again, and taken in at its own File ID).
    let orphans = crate::rebuild::all_files(medium, true)?
        .into_iter()
        .filter(|p| !referenced.contains(p));
    for p in orphans {
        let fid = p.replace('/', "\\").to_ascii_uppercase();
        if dicomdir::file_id_problem(&fid).is_some() {
            report.push(format!(
                "{p}: not referenced and not a legal File ID: left alone"
            ));
            continue;
        }
        // Move it aside and ingest it at its own File ID.
        let staged = match live.stage() {
            Ok(s) => s,
            Err(e) => {
                report.push(format!("{p}: {e}"));
                continue;
            }
        };
        if medium.rename(&p, &staged).is_err() {
            continue;
        }
        match live.ingest_inner(&staged, &p, Some(&fid)) {
            Ok(Ingested::Added(_)) => {
                report.push(format!("{p}: not referenced: added to the DICOMDIR"))
            }
            Ok(Ingested::Same(f)) => {
                let _ = medium.remove(&staged);
                report.push(format!("{p}: a second copy of {f}: removed"))
            }
            Ok(Ingested::Dropped(why)) => {
                let _ = medium.rename(&staged, &p);
                report.push(format!("{p}: not referenced, left alone: {why}"))
            }
            Err(e) => {
                // Not an instance we can take: put it back where it was.
                let _ = medium.rename(&staged, &p);
                report.push(format!("{p}: not referenced and not taken: {e}"));
            }
        }
    }
    let _ = medium.rmdir(STAGING);
    medium
        .sync(None)
        .map_err(|e| Error::medium(medium.describe(), e))?;
    Ok(report)
}

/// A full rewrite from the state's tree (used by repair, whose offsets may not be patchable).
fn rewrite_fresh(st: &State) -> Result<Vec<u8>> {
    let d = &st.dir;
    let mut w =
        dicomdir::WDicomDir::from_read(d, &st.image).map_err(|e| Error::malformed(DICOMDIR, e))?;
    if w.fileset_uid.is_empty() {
        w.fileset_uid = crate::synth::fresh_uid();
    }
    Ok(w.encode())
}

/// Write batched deletes in the background once they have been quiet for 100 ms.
pub fn spawn_committer(live: &Arc<Live>) {
    let w = Arc::downgrade(live);
    std::thread::spawn(move || loop {
        std::thread::sleep(Duration::from_millis(50));
        let Some(l) = w.upgrade() else {
            return;
        };
        if l.pending_for()
            .is_some_and(|d| d >= Duration::from_millis(100))
        {
            if let Err(e) = l.commit() {
                e.log();
            }
        }
        // Not after every copy: making and removing a directory per file is slow (ext4 scans
        // for recently deleted inodes), so the staging directory goes when idle.
        l.tidy(Duration::from_millis(100));
    });
}

#[cfg(test)]
mod tests;
