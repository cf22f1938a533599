//! A File-set on a medium: open its DICOMDIR, resolve File IDs, and check it (`dicomfs check`).

use crate::dicom::{self, tags};
use crate::dicomdir::{self, DicomDir, Finding, Severity};
use crate::error::{Error, Result};
use fsimpl::{Kind, Medium};
use std::sync::Arc;

/// The name of the DICOMDIR file at the File-set root.
pub const DICOMDIR: &str = "DICOMDIR";

/// The largest DICOMDIR dicomfs reads (a 100,000-record DICOMDIR is about 40 MB).
pub const MAX_DICOMDIR: u64 = 2 << 30;

/// Record types that always reference an instance file (PS3.3 F.4).
const LEAF_TYPES: &[&str] = &[
    "IMAGE",
    "RT DOSE",
    "RT STRUCTURE SET",
    "RT PLAN",
    "RT TREAT RECORD",
    "PRESENTATION",
    "WAVEFORM",
    "SR DOCUMENT",
    "KEY OBJECT DOC",
    "SPECTROSCOPY",
    "RAW DATA",
    "REGISTRATION",
    "FIDUCIAL",
    "ENCAP DOC",
    "VALUE MAP",
    "STEREOMETRIC",
    "PLAN",
    "MEASUREMENT",
    "SURFACE",
    "SURFACE SCAN",
    "TRACT",
    "ASSESSMENT",
    "RADIOTHERAPY",
    "ANNOTATION",
    "WF PRESENTATION",
];

/// How File IDs are spelled on the medium.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Spelling {
    /// As in the DICOMDIR (uppercase).
    Exact,
    /// Lowercase (a CD mounted by Linux with `map=normal`, some writers).
    Lower,
}

/// A File-set: its medium and its DICOMDIR as read.
pub struct FileSet {
    pub medium: Arc<dyn Medium>,
    pub dir: DicomDir,
    pub spelling: Spelling,
    /// The DICOMDIR's bytes as read (a writable File-set keeps them to patch in place).
    pub bytes: Vec<u8>,
}

/// Read a whole file from the medium, bounded by its real size and a limit.
pub fn read_file(medium: &dyn Medium, path: &str, limit: u64) -> Result<Vec<u8>> {
    let st = medium.stat(path).map_err(|e| Error::medium(path, e))?;
    if st.kind != Kind::File {
        return Err(Error::Invalid {
            path: path.into(),
            reason: "is a directory, not a file".into(),
        });
    }
    if st.size > limit {
        return Err(Error::Invalid {
            path: path.into(),
            reason: format!("is {} bytes, more than the {limit} dicomfs reads", st.size),
        });
    }
    let mut buf = vec![0u8; st.size as usize];
    let n = medium
        .read_at(path, 0, &mut buf)
        .map_err(|e| Error::medium(path, e))?;
    buf.truncate(n);
    Ok(buf)
}

/// The medium path of a File ID (components joined with `/`) in a spelling.
pub fn medium_path(file_id: &str, spelling: Spelling) -> String {
    let p = file_id.replace('\\', "/");
    match spelling {
        Spelling::Exact => p,
        Spelling::Lower => p.to_ascii_lowercase(),
    }
}

/// Why a File-set ID is not legal (PS3.10 8.1: up to 16 characters of the File ID set), or
/// `None`.
pub fn fileset_id_problem(id: &str) -> Option<String> {
    if id.len() > 16 {
        return Some(format!("{id:?} has {} characters (at most 16)", id.len()));
    }
    id.chars()
        .find(|c| !(c.is_ascii_uppercase() || c.is_ascii_digit() || *c == '_' || *c == ' '))
        .map(|c| format!("{id:?} has the character {c:?} (only A-Z, 0-9, _ and space)"))
}

/// Create a new, empty File-set (File-set Creator): a DICOMDIR with no records and a new File-set
/// UID. Refuses to touch a medium that already has a DICOMDIR.
pub fn create(medium: &dyn Medium, fileset_id: &str, fileset_uid: &str) -> Result<()> {
    if let Some(p) = fileset_id_problem(fileset_id) {
        return Err(Error::Usage(format!("File-set ID {p}")));
    }
    for name in [DICOMDIR, "dicomdir"] {
        if medium.stat(name).is_ok() {
            return Err(Error::Invalid {
                path: format!("{}: {name}", medium.describe()),
                reason: "already exists; dicomfs init does not touch an existing File-set".into(),
            });
        }
    }
    let bytes = dicomdir::WDicomDir {
        fileset_id: fileset_id.into(),
        fileset_uid: fileset_uid.into(),
        ..Default::default()
    }
    .encode();
    // create() is exclusive, so a DICOMDIR made meanwhile by someone else is not overwritten.
    let wrap = |e| Error::medium(DICOMDIR, e);
    medium.create(DICOMDIR).map_err(wrap)?;
    let written = medium
        .write_at(DICOMDIR, 0, &bytes)
        .and_then(|_| medium.sync(Some(DICOMDIR)))
        .and_then(|_| medium.sync(None));
    if let Err(e) = written {
        let _ = medium.remove(DICOMDIR);
        return Err(wrap(e));
    }
    // PS3.10 8.1 note 1: on media with a volume label, the label carries the File-set ID.
    if !fileset_id.trim().is_empty() {
        medium
            .set_label(fileset_id.trim())
            .map_err(|e| Error::medium(medium.describe(), e))?;
    }
    Ok(())
}

impl FileSet {
    /// Open the File-set on a medium: read and parse its DICOMDIR.
    pub fn open(medium: Arc<dyn Medium>) -> Result<FileSet> {
        let (name, bytes) = match read_file(&*medium, DICOMDIR, MAX_DICOMDIR) {
            Ok(b) => (DICOMDIR, b),
            Err(e) if e.errno() == libc::ENOENT => {
                // A lowercase medium.
                match read_file(&*medium, "dicomdir", MAX_DICOMDIR) {
                    Ok(b) => ("dicomdir", b),
                    Err(_) => {
                        return Err(Error::NotFound {
                            path: format!("{}: DICOMDIR", medium.describe()),
                        })
                    }
                }
            }
            Err(e) => return Err(e),
        };
        let dir = DicomDir::parse(&bytes).map_err(|r| Error::malformed(DICOMDIR, r))?;
        let mut fs = FileSet {
            medium,
            dir,
            bytes,
            spelling: if name == DICOMDIR {
                Spelling::Exact
            } else {
                Spelling::Lower
            },
        };
        fs.spelling = fs.detect_spelling();
        Ok(fs)
    }

    /// Look at a few referenced files to see how the medium spells File IDs.
    fn detect_spelling(&self) -> Spelling {
        let mut votes = (0, 0);
        for r in self
            .dir
            .records
            .iter()
            .filter(|r| r.file_id.is_some())
            .take(8)
        {
            let Some(f) = r.file_id.as_deref() else {
                continue;
            };
            if !dicomdir::file_id_safe(f) {
                continue;
            }
            if self.medium.stat(&medium_path(f, Spelling::Exact)).is_ok() {
                votes.0 += 1;
            } else if self.medium.stat(&medium_path(f, Spelling::Lower)).is_ok() {
                votes.1 += 1;
            }
        }
        if votes.1 > votes.0 {
            Spelling::Lower
        } else {
            self.spelling
        }
    }

    /// Where a record's file is on the medium, if it has a safe File ID.
    pub fn path_of(&self, file_id: &str) -> Option<String> {
        dicomdir::file_id_safe(file_id).then(|| medium_path(file_id, self.spelling))
    }

    /// Check the File-set: the DICOMDIR's own findings, then every record: hierarchy, File ID
    /// rules, the referenced file present and a Part-10 file whose meta matches the record.
    /// `progress` is called with (done, total) as records are checked.
    pub fn check(&self, mut progress: impl FnMut(usize, usize)) -> Vec<Finding> {
        let mut out = self.dir.findings.clone();
        let mut unknown = Vec::new();
        let mut err = |m: String| {
            out.push(Finding {
                severity: Severity::Error,
                message: m,
            })
        };
        let d = &self.dir;
        let visible = d.visible();
        let total = visible.len();
        let mut seen_files = std::collections::HashMap::new();
        for (n, &i) in visible.iter().enumerate() {
            if n % 256 == 0 {
                progress(n, total);
            }
            let r = &d.records[i as usize];
            let at = r.offset;
            let parent = r.parent.map(|p| &*d.records[p as usize].rtype);
            if !d.rebuilt && !dicomdir::allowed_under(parent, &r.rtype) {
                err(format!(
                    "record at byte {at}: a {} record may not be under {}",
                    r.rtype,
                    parent.unwrap_or("the root")
                ));
            }
            if &*r.rtype == "PATIENT" && r.key(tags::PATIENT_ID).is_none_or(|v| v.is_empty()) {
                err(format!(
                    "PATIENT record at byte {at} has no Patient ID (0010,0020)"
                ));
            }
            let Some(fid) = r.file_id.as_deref() else {
                if LEAF_TYPES.contains(&&*r.rtype) {
                    err(format!(
                        "{} record at byte {at} has no Referenced File ID",
                        r.rtype
                    ));
                } else if dicomdir::level_of(&r.rtype) == 3 && &*r.rtype != "PRIVATE" {
                    unknown.push(format!(
                        "record at byte {at} has the unknown record type {:?}",
                        r.rtype
                    ));
                }
                continue;
            };
            if let Some(p) = dicomdir::file_id_problem(fid) {
                err(format!("record at byte {at}: illegal File ID {fid:?}: {p}"));
            }
            let Some(path) = self.path_of(fid) else {
                err(format!(
                    "record at byte {at}: File ID {fid:?} leaves the File-set"
                ));
                continue;
            };
            if let Some(prev) = seen_files.insert(path.clone(), at) {
                err(format!(
                    "File ID {fid:?} is referenced by the records at bytes {prev} and {at}"
                ));
            }
            let mut head = vec![0u8; 4096];
            let n = match self.medium.read_at(&path, 0, &mut head) {
                Ok(n) => n,
                Err(e) => {
                    err(format!(
                        "record at byte {at}: referenced file {fid} is missing or unreadable: {e}"
                    ));
                    continue;
                }
            };
            head.truncate(n);
            if r.key(tags::REFERENCED_SOP_INSTANCE).is_none() {
                continue; // a non-instance file (private records may reference anything)
            }
            match dicom::read_meta(&head) {
                Err(e) => err(format!("{fid}: not a DICOM Part-10 file: {e}")),
                Ok(m) => {
                    let want = |t| r.key(t).unwrap_or("");
                    for (tag, got, name) in [
                        (
                            tags::REFERENCED_SOP_INSTANCE,
                            &m.sop_instance,
                            "SOP Instance UID",
                        ),
                        (tags::REFERENCED_SOP_CLASS, &m.sop_class, "SOP Class UID"),
                        (
                            tags::REFERENCED_TRANSFER_SYNTAX,
                            &m.transfer_syntax,
                            "Transfer Syntax UID",
                        ),
                    ] {
                        if !want(tag).is_empty() && want(tag) != got {
                            err(format!(
                                "{fid}: {name} is {got} but its record at byte {at} says {}",
                                want(tag)
                            ));
                        }
                    }
                }
            }
        }
        progress(total, total);
        out.extend(unknown.into_iter().map(|message| Finding {
            severity: Severity::Warning,
            message,
        }));
        out
    }
}
