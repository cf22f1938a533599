//! `dicomfs info SOURCE`: what a File-set holds and which PS3.11 application profiles it
//! conforms to, naming what breaks each one it does not.

use crate::progress::Progress;
use dicomfs::dicom::{self, tags};
use dicomfs::dicomdir::Severity;
use dicomfs::fileset::FileSet;
use std::collections::BTreeMap;
use std::fmt::Write as _;

const JPEG: [&str; 3] = [
    "1.2.840.10008.1.2.4.70",
    "1.2.840.10008.1.2.4.50",
    "1.2.840.10008.1.2.4.51",
];
const J2K: [&str; 2] = ["1.2.840.10008.1.2.4.90", "1.2.840.10008.1.2.4.91"];

/// Which physical media and Media Format a profile requires (PS3.11, PS3.12).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Media {
    /// 120 mm CD-R, ISO 9660.
    Cd,
    /// DVD-RAM / DVD, UDF or ISO 9660.
    Dvd,
    /// USB, SD, CF, MMC: FAT.
    Fat,
}

struct Def {
    name: &'static str,
    media: Media,
    compressed: &'static [&'static str],
}

const PROFILES: &[Def] = &[
    Def {
        name: "STD-GEN-CD",
        media: Media::Cd,
        compressed: &[],
    },
    Def {
        name: "STD-GEN-DVD-RAM",
        media: Media::Dvd,
        compressed: &[],
    },
    Def {
        name: "STD-GEN-DVD-JPEG",
        media: Media::Dvd,
        compressed: &JPEG,
    },
    Def {
        name: "STD-GEN-DVD-J2K",
        media: Media::Dvd,
        compressed: &J2K,
    },
    Def {
        name: "STD-GEN-USB-JPEG",
        media: Media::Fat,
        compressed: &JPEG,
    },
    Def {
        name: "STD-GEN-USB-J2K",
        media: Media::Fat,
        compressed: &J2K,
    },
    Def {
        name: "STD-GEN-SD-JPEG",
        media: Media::Fat,
        compressed: &JPEG,
    },
    Def {
        name: "STD-GEN-SD-J2K",
        media: Media::Fat,
        compressed: &J2K,
    },
    Def {
        name: "STD-GEN-CF-JPEG",
        media: Media::Fat,
        compressed: &JPEG,
    },
    Def {
        name: "STD-GEN-CF-J2K",
        media: Media::Fat,
        compressed: &J2K,
    },
    Def {
        name: "STD-GEN-MMC-JPEG",
        media: Media::Fat,
        compressed: &JPEG,
    },
    Def {
        name: "STD-GEN-MMC-J2K",
        media: Media::Fat,
        compressed: &J2K,
    },
];

/// A transfer syntax's name, for the UIDs a File-set usually holds.
pub fn syntax_name(uid: &str) -> &'static str {
    match uid {
        "1.2.840.10008.1.2" => "Implicit VR Little Endian",
        "1.2.840.10008.1.2.1" => "Explicit VR Little Endian",
        "1.2.840.10008.1.2.1.99" => "Deflated Explicit VR Little Endian",
        "1.2.840.10008.1.2.2" => "Explicit VR Big Endian",
        "1.2.840.10008.1.2.4.50" => "JPEG Baseline (Process 1)",
        "1.2.840.10008.1.2.4.51" => "JPEG Extended (Process 2 & 4)",
        "1.2.840.10008.1.2.4.57" => "JPEG Lossless (Process 14)",
        "1.2.840.10008.1.2.4.70" => "JPEG Lossless SV1",
        "1.2.840.10008.1.2.4.80" => "JPEG-LS Lossless",
        "1.2.840.10008.1.2.4.81" => "JPEG-LS Near-Lossless",
        "1.2.840.10008.1.2.4.90" => "JPEG 2000 Lossless",
        "1.2.840.10008.1.2.4.91" => "JPEG 2000",
        "1.2.840.10008.1.2.4.100" | "1.2.840.10008.1.2.4.101" => "MPEG-2",
        "1.2.840.10008.1.2.4.102" | "1.2.840.10008.1.2.4.103" => "MPEG-4 AVC/H.264",
        "1.2.840.10008.1.2.5" => "RLE Lossless",
        "" => "unknown (no Referenced Transfer Syntax UID, file unreadable)",
        _ => "other",
    }
}

fn size(b: u64) -> String {
    let units = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = b as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < units.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{b} B")
    } else {
        format!("{v:.1} {}", units[u])
    }
}

/// The transfer syntax of a leaf record: (0004,1512), else the file's meta.
fn syntax_of(fs: &FileSet, r: &dicomfs::dicomdir::Record) -> String {
    if let Some(ts) = r
        .key(tags::REFERENCED_TRANSFER_SYNTAX)
        .filter(|t| !t.is_empty())
    {
        return ts.to_string();
    }
    let Some(path) = r.file_id.as_deref().and_then(|f| fs.path_of(f)) else {
        return String::new();
    };
    let mut buf = vec![0u8; 64 << 10];
    match fs.medium.read_at(&path, 0, &mut buf) {
        Ok(n) => dicom::read_meta(&buf[..n])
            .map(|m| m.transfer_syntax)
            .unwrap_or_default(),
        Err(_) => String::new(),
    }
}

/// The report, as printed.
pub fn info(source: &std::path::Path, fs: &FileSet) -> String {
    let d = &fs.dir;
    let m = &fs.medium;
    let mut o = String::new();
    let desc = m.describe();
    let fat = desc.to_ascii_lowercase().contains("fat");
    let _ = writeln!(o, "Source:             {}", source.display());
    let _ = writeln!(o, "Medium:             {desc}");
    match m.statfs() {
        Ok(s) => {
            let bs = s.block_size as u64;
            let _ = writeln!(
                o,
                "Free space:         {} of {} ({} free)",
                size(s.blocks_avail * bs),
                size(s.blocks * bs),
                if s.blocks > 0 {
                    format!("{:.0}%", s.blocks_avail as f64 * 100.0 / s.blocks as f64)
                } else {
                    "-".into()
                }
            );
        }
        Err(e) => {
            let _ = writeln!(o, "Free space:         unknown ({e})");
        }
    }
    let _ = writeln!(
        o,
        "File-set ID:        {}",
        if d.fileset_id.is_empty() {
            "(none)"
        } else {
            &d.fileset_id
        }
    );
    let _ = writeln!(o, "File-set UID:       {}", d.fileset_uid);
    let _ = writeln!(
        o,
        "DICOMDIR:           {} bytes, {} records, {}",
        fs.bytes.len(),
        d.records.len(),
        syntax_name(&d.transfer_syntax)
    );

    // Counts from the tree, and the transfer syntax of every instance.
    let visible = d.visible();
    let (mut patients, mut studies, mut series, mut instances) = (0usize, 0usize, 0usize, 0usize);
    let mut modalities: BTreeMap<String, (usize, usize)> = BTreeMap::new();
    let mut syntaxes: BTreeMap<String, usize> = BTreeMap::new();
    let mut patient_ids: BTreeMap<String, usize> = BTreeMap::new();
    let mut progress = Progress::new(format!("reading {}", source.display()), "records");
    for (n, &i) in visible.iter().enumerate() {
        if n % 64 == 0 {
            progress.update(n, visible.len());
        }
        let r = &d.records[i as usize];
        match &*r.rtype {
            "PATIENT" => {
                patients += 1;
                *patient_ids
                    .entry(r.key(tags::PATIENT_ID).unwrap_or("").to_string())
                    .or_default() += 1;
            }
            "STUDY" => studies += 1,
            "SERIES" => {
                series += 1;
                let modality = r
                    .key(tags::MODALITY)
                    .filter(|m| !m.is_empty())
                    .unwrap_or("(none)");
                let leaves = r
                    .children
                    .iter()
                    .filter(|&&c| {
                        d.records[c as usize].in_use && d.records[c as usize].file_id.is_some()
                    })
                    .count();
                let e = modalities.entry(modality.to_string()).or_default();
                e.0 += 1;
                e.1 += leaves;
            }
            _ if r.file_id.is_some() => {
                instances += 1;
                *syntaxes.entry(syntax_of(fs, r)).or_default() += 1;
            }
            _ => {}
        }
    }
    progress.update(visible.len(), visible.len());
    progress.finish();
    let _ = writeln!(o, "Patients:           {patients}");
    let _ = writeln!(o, "Studies:            {studies}");
    let _ = writeln!(o, "Series:             {series}");
    let _ = writeln!(o, "Instances:          {instances}");
    let _ = writeln!(o, "Modalities:");
    for (m, (s, i)) in &modalities {
        let _ = writeln!(o, "  {m:<8} {s} series, {i} instances");
    }
    let _ = writeln!(o, "Transfer syntaxes:");
    for (ts, n) in &syntaxes {
        let _ = writeln!(o, "  {ts:<24} {} ({n} instances)", syntax_name(ts));
    }

    // What breaks every profile.
    let mut common = Vec::new();
    let findings = {
        let mut p = Progress::new(format!("checking {}", source.display()), "records");
        let f = fs.check(|n, t| p.update(n, t));
        p.finish();
        f
    };
    let errors: Vec<_> = findings
        .iter()
        .filter(|f| f.severity == Severity::Error)
        .collect();
    if let Some(first) = errors.first() {
        common.push(format!(
            "{} error(s) found by dicomfs check (first: {})",
            errors.len(),
            first.message
        ));
    }
    if d.transfer_syntax != dicom::EXPLICIT_LE {
        common.push(format!(
            "the DICOMDIR is in {} (must be Explicit VR Little Endian)",
            syntax_name(&d.transfer_syntax)
        ));
    }
    if patients == 0 {
        common
            .push("the DICOMDIR has no patient records (an empty DICOMDIR is not allowed)".into());
    }
    let dup: Vec<_> = patient_ids
        .iter()
        .filter(|(_, n)| **n > 1)
        .map(|(p, _)| p.as_str())
        .collect();
    if !dup.is_empty() {
        common.push(format!(
            "Patient ID not unique across PATIENT records: {}",
            dup.iter()
                .take(5)
                .map(|p| format!("{p:?}"))
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }

    let _ = writeln!(o, "Profiles (PS3.11):");
    for p in PROFILES {
        let mut why = common.clone();
        let bad: Vec<String> = syntaxes
            .iter()
            .filter(|(ts, _)| {
                ts.as_str() != dicom::EXPLICIT_LE && !p.compressed.contains(&ts.as_str())
            })
            .map(|(ts, n)| {
                format!(
                    "{n} instance(s) in {} ({})",
                    syntax_name(ts),
                    if ts.is_empty() { "?" } else { ts }
                )
            })
            .collect();
        if !bad.is_empty() {
            why.push(format!("not allowed by the profile: {}", bad.join(", ")));
        }
        let medium = match (p.media, fat) {
            (Media::Cd, true) => {
                why.push("needs a CD-R with ISO 9660; this is a FAT volume".into());
                ""
            }
            (Media::Dvd, true) => {
                why.push("needs a DVD with UDF or ISO 9660; this is a FAT volume".into());
                ""
            }
            (Media::Fat, true) => "",
            (_, false) => " (the physical medium of a host directory is not checked)",
        };
        if why.is_empty() {
            let _ = writeln!(o, "  {:<18} conforms{medium}", p.name);
        } else {
            let _ = writeln!(o, "  {:<18} does not conform: {}", p.name, why.join("; "));
        }
    }
    o
}
