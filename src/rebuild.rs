//! File-set Creator over existing files (`dicomfs rebuild`): a new DICOMDIR for the instance
//! files on a medium, when its DICOMDIR is missing or broken. Also the one place that groups
//! instances into PATIENT / STUDY / SERIES records for a whole DICOMDIR (the synthetic File-sets
//! use it too).

use crate::dicom::dataset::{self, ReadAt};
use crate::dicom::{self, tags};
use crate::dicomdir::{self, DicomDir, Elem, WDicomDir, WRecord};
use crate::error::{Error, Result};
use crate::fileset::{self, DICOMDIR, MAX_DICOMDIR};
use crate::fsu::{MediumFile, STAGING};
use crate::records;
use fsimpl::{Kind, Medium};
use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

/// One instance to reference: its File ID (components joined with `\`) and header.
pub struct Entry {
    pub file_id: String,
    pub ds: Vec<Elem>,
    pub sop_class: String,
    pub sop_instance: String,
    pub transfer_syntax: String,
}

/// A DICOMDIR for instances, in the order given: one PATIENT record per Patient ID (derived when
/// missing, see [`records::derive_type1`]), one STUDY per Study Instance UID, one SERIES per
/// Series Instance UID.
pub fn directory_for(entries: &[Entry], fileset_id: &str, fileset_uid: &str) -> WDicomDir {
    let mut d = WDicomDir {
        fileset_id: fileset_id.into(),
        fileset_uid: fileset_uid.into(),
        ..Default::default()
    };
    let mut patients: HashMap<String, usize> = HashMap::new();
    let mut studies: HashMap<(usize, String), usize> = HashMap::new();
    let mut series: HashMap<(usize, String), usize> = HashMap::new();
    let add = |rtype: &str, elems: Vec<Elem>, parent: Option<usize>, d: &mut WDicomDir| {
        let i = d.records.len();
        d.records.push(WRecord {
            rtype: rtype.into(),
            elems,
            children: Vec::new(),
        });
        match parent {
            None => d.roots.push(i),
            Some(p) => d.records[p].children.push(i),
        }
        i
    };
    let value = |elems: &[Elem], tag: u32| {
        elems
            .iter()
            .find(|e| e.tag == tag)
            .map(|e| dicom::ascii(&e.value))
            .unwrap_or_default()
    };
    for e in entries {
        let r = records::for_instance(
            &e.ds,
            &e.file_id,
            &e.sop_class,
            &e.sop_instance,
            &e.transfer_syntax,
        );
        if dicomdir::level_of(r.leaf_type) == 0 {
            add(r.leaf_type, r.leaf, None, &mut d);
            continue;
        }
        let pid = value(&r.patient, tags::PATIENT_ID);
        let p = match patients.get(&pid) {
            Some(&p) => p,
            None => {
                let p = add("PATIENT", r.patient, None, &mut d);
                patients.insert(pid, p);
                p
            }
        };
        let suid = value(&e.ds, tags::STUDY_INSTANCE_UID);
        let st = match studies.get(&(p, suid.clone())) {
            Some(&s) => s,
            None => {
                let s = add("STUDY", r.study, Some(p), &mut d);
                studies.insert((p, suid), s);
                s
            }
        };
        let euid = value(&e.ds, tags::SERIES_INSTANCE_UID);
        let se = match series.get(&(st, euid.clone())) {
            Some(&s) => s,
            None => {
                let s = add("SERIES", r.series, Some(st), &mut d);
                series.insert((st, euid), s);
                s
            }
        };
        add(r.leaf_type, r.leaf, Some(se), &mut d);
    }
    d
}

/// What a rebuild did.
pub struct Rebuilt {
    pub instances: usize,
    pub records: usize,
    /// Files that were not taken, with the reason.
    pub refused: Vec<String>,
}

/// Every file below the medium root except the DICOMDIR and the staging directory, sorted.
/// A directory that cannot be listed fails the walk, or is skipped with `skip_unreadable`.
pub(crate) fn all_files(medium: &dyn Medium, skip_unreadable: bool) -> Result<Vec<String>> {
    let mut out = Vec::new();
    let mut stack = vec![String::new()];
    while let Some(dir) = stack.pop() {
        let entries = match medium.list(&dir) {
            Ok(e) => e,
            Err(_) if skip_unreadable => continue,
            Err(e) => return Err(Error::medium(&dir, e)),
        };
        for e in entries {
            if dir.is_empty() && (e.name.eq_ignore_ascii_case(DICOMDIR) || e.name == STAGING) {
                continue;
            }
            let p = fsimpl::join(&dir, &e.name);
            match e.kind {
                Kind::Dir => stack.push(p),
                Kind::File => out.push(p),
            }
        }
    }
    out.sort();
    Ok(out)
}

/// Write a new DICOMDIR for the instance files on the medium, replacing any there (atomically).
/// Keeps the File-set ID and UID of a DICOMDIR that still parses; otherwise makes a new UID.
/// Files whose path is not a legal File ID or that are not DICOM Part-10 instances are left
/// alone and listed in [`Rebuilt::refused`]. `progress(done, total)` is called as files are read.
pub fn rebuild(
    medium: &Arc<dyn Medium>,
    progress: &(dyn Fn(usize, usize) + Sync),
) -> Result<Rebuilt> {
    let m = &**medium;
    let files = all_files(m, false)?;
    let total = files.len();
    let (fileset_id, fileset_uid) = match fileset::read_file(m, DICOMDIR, MAX_DICOMDIR)
        .ok()
        .and_then(|b| DicomDir::parse(&b).ok())
    {
        Some(d) if !d.fileset_uid.is_empty() => (d.fileset_id, d.fileset_uid),
        _ => (String::new(), crate::synth::fresh_uid()),
    };
    // Read the headers on a few threads: the work is a couple of small reads per file.
    let done = AtomicUsize::new(0);
    let threads = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(2)
        .clamp(1, 8);
    let chunk = files.len().div_ceil(threads).max(1);
    let results: Vec<(usize, std::result::Result<Entry, String>)> = std::thread::scope(|s| {
        let handles: Vec<_> = files
            .chunks(chunk)
            .enumerate()
            .map(|(k, part)| {
                let done = &done;
                s.spawn(move || {
                    let mut out = Vec::with_capacity(part.len());
                    for (j, p) in part.iter().enumerate() {
                        out.push((k * chunk + j, read_entry(m, p)));
                        let n = done.fetch_add(1, Ordering::Relaxed) + 1;
                        if n.is_multiple_of(256) {
                            progress(n, total);
                        }
                    }
                    out
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().unwrap_or_default())
            .collect()
    });
    progress(total, total);
    let mut entries = Vec::new();
    let mut refused = Vec::new();
    let mut results = results;
    results.sort_by_key(|r| r.0);
    let mut seen = HashMap::new();
    for (i, r) in results {
        match r {
            Ok(e) => {
                if let Some(prev) = seen.insert(e.sop_instance.clone(), e.file_id.clone()) {
                    refused.push(format!(
                        "{}: the same SOP Instance UID as {prev}: not referenced twice",
                        files[i]
                    ));
                    continue;
                }
                entries.push(e)
            }
            Err(why) => refused.push(format!("{}: {why}", files[i])),
        }
    }
    let d = directory_for(&entries, &fileset_id, &fileset_uid);
    let bytes = d.encode();
    let tmp = format!("{STAGING}.rebuild");
    let wrap = |e| Error::medium(DICOMDIR, e);
    let _ = m.remove(&tmp);
    m.create(&tmp).map_err(wrap)?;
    if let Err(e) = m.write_at(&tmp, 0, &bytes).and_then(|_| m.sync(Some(&tmp))) {
        let _ = m.remove(&tmp);
        return Err(wrap(e));
    }
    m.rename(&tmp, DICOMDIR).map_err(wrap)?;
    m.sync(None).map_err(wrap)?;
    Ok(Rebuilt {
        instances: entries.len(),
        records: d.records.len(),
        refused,
    })
}

fn read_entry(m: &dyn Medium, path: &str) -> std::result::Result<Entry, String> {
    let fid = path.replace('/', "\\");
    if let Some(p) = dicomdir::file_id_problem(&fid) {
        return Err(format!("not a legal File ID ({p})"));
    }
    let size = m.stat(path).map_err(|e| e.to_string())?.size;
    let src = MediumFile {
        medium: m,
        path,
        size,
    };
    let h = dataset::read_header(&src as &dyn ReadAt).map_err(|e| format!("not taken: {e}"))?;
    if h.meta.sop_class == dicom::MEDIA_STORAGE_DIRECTORY {
        return Err("a DICOMDIR, not an instance".into());
    }
    Ok(Entry {
        file_id: fid,
        sop_class: h.sop_class,
        sop_instance: h.sop_instance,
        transfer_syntax: h.meta.transfer_syntax,
        ds: h.elems,
    })
}
