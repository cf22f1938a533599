//! Synthetic File-sets with realistic attributes, for the demo, the tests and the benchmarks.
//!
//! Everything is deterministic in the seed: the same [`Spec`] gives the same bytes. Instances are
//! MR and CT images with real geometry (so converters such as dcm2niix accept a series), plus a
//! Basic Text SR and an Encapsulated PDF when `documents` is set. Patient names include ISO_IR 100
//! and ISO_IR 192 text. The DICOMDIR is written with [`crate::dicomdir::WDicomDir`] from records
//! built by [`crate::records::for_instance`], the same path an ingest takes.

use crate::dicom::{self, tags, Writer, ITEM};
use crate::dicomdir::{Elem, WDicomDir};
use std::io;
use std::path::Path;

/// What to generate.
#[derive(Clone, Debug)]
pub struct Spec {
    pub patients: usize,
    pub studies: usize,
    pub series: usize,
    pub instances: usize,
    pub rows: u16,
    pub cols: u16,
    pub seed: u64,
    /// Add an SR and a PDF series to every study.
    pub documents: bool,
    /// Write the instance files (off: only the DICOMDIR, for large-DICOMDIR benchmarks).
    pub files: bool,
    pub fileset_id: String,
}

impl Default for Spec {
    fn default() -> Self {
        Spec {
            patients: 3,
            studies: 2,
            series: 2,
            instances: 5,
            rows: 64,
            cols: 64,
            seed: 1,
            documents: true,
            files: true,
            fileset_id: "DICOMFS_DEMO".into(),
        }
    }
}

fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// A deterministic UID under the 2.25 (UUID) root.
pub fn uid(seed: u64, parts: &[u64]) -> String {
    let mut a = mix(seed ^ 0x00D1_C0F5);
    let mut b = mix(seed.wrapping_add(7));
    for &p in parts {
        a = mix(a ^ p);
        b = mix(b.wrapping_add(p).rotate_left(17));
    }
    let v = ((a as u128) << 64 | b as u128) >> 1; // keep it below 2^127: at most 39 digits
    format!("2.25.{v}")
}

/// A UID that differs on every call (the File-set UID of `dicomfs demo`).
pub fn fresh_uid() -> String {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    uid(t ^ (std::process::id() as u64) << 32, &[t])
}

const NAMES: &[(&str, &[u8], &str)] = &[
    ("", b"DOE^JANE", "F"),
    ("ISO_IR 192", "MÜLLER^JÜRGEN".as_bytes(), "M"),
    ("ISO_IR 100", b"GARC\xcdA^ANA", "F"),
    ("", b"SMITH^JOHN^A", "M"),
    ("", b"NGUYEN^VAN AN", "M"),
    ("", b"O'BRIEN/KELLY^SIOBHAN", "F"),
];

const MR: &str = "1.2.840.10008.5.1.4.1.1.4";
const CT: &str = "1.2.840.10008.5.1.4.1.1.2";
const BASIC_TEXT_SR: &str = "1.2.840.10008.5.1.4.1.1.88.11";
const ENCAP_PDF: &str = "1.2.840.10008.5.1.4.1.1.104.1";

fn e(tag: u32, vr: &[u8; 2], v: impl AsRef<[u8]>) -> Elem {
    Elem {
        tag,
        vr: *vr,
        value: v.as_ref().to_vec(),
    }
}

/// Encode items for a sequence value (defined lengths).
pub fn seq_value(items: &[Vec<Elem>]) -> Vec<u8> {
    let mut w = Writer::new();
    for it in items {
        let mut body = Writer::new();
        let mut sorted: Vec<&Elem> = it.iter().collect();
        sorted.sort_by_key(|e| e.tag);
        for el in sorted {
            body.elem(el.tag, el.vr, &el.value);
        }
        w.item_tag(ITEM, body.out.len() as u32);
        w.out.extend_from_slice(&body.out);
    }
    w.out
}

/// Encode a Part-10 file (Explicit VR Little Endian) from data set elements.
pub fn part10(ds: &[Elem]) -> Vec<u8> {
    let get = |t| {
        ds.iter()
            .find(|e| e.tag == t)
            .map(|e| dicom::ascii(&e.value))
            .unwrap_or_default()
    };
    let mut out = dicom::part10_header(
        &get(tags::SOP_CLASS_UID),
        &get(tags::SOP_INSTANCE_UID),
        dicom::EXPLICIT_LE,
    );
    let mut sorted: Vec<&Elem> = ds.iter().collect();
    sorted.sort_by_key(|e| e.tag);
    let mut w = Writer {
        out: std::mem::take(&mut out),
    };
    for el in sorted {
        w.elem(el.tag, el.vr, &el.value);
    }
    w.out
}

/// One generated instance: its File ID and data set.
pub struct Instance {
    pub file_id: Vec<String>,
    pub ds: Vec<Elem>,
}

impl Instance {
    pub fn sop_class(&self) -> String {
        self.get(tags::SOP_CLASS_UID)
    }
    pub fn sop_instance(&self) -> String {
        self.get(tags::SOP_INSTANCE_UID)
    }
    pub fn get(&self, tag: u32) -> String {
        self.ds
            .iter()
            .find(|e| e.tag == tag)
            .map(|e| dicom::ascii(&e.value))
            .unwrap_or_default()
    }
    pub fn bytes(&self) -> Vec<u8> {
        part10(&self.ds)
    }
}

/// All instances of a spec, in File ID order.
pub fn instances(spec: &Spec) -> Vec<Instance> {
    let s = spec.seed;
    let mut out = Vec::new();
    for p in 0..spec.patients {
        let (cs, name, sex) = NAMES[p % NAMES.len()];
        let pid = format!("PID{:05}", p + 1);
        let mut patient = vec![
            e(tags::PATIENT_NAME, b"PN", name),
            e(tags::PATIENT_ID, b"LO", &pid),
            e(
                tags::PATIENT_BIRTH_DATE,
                b"DA",
                format!("19{:02}0{}1{}", 40 + p % 60, 1 + p % 9, p % 10),
            ),
            e(tags::PATIENT_SEX, b"CS", sex),
        ];
        if !cs.is_empty() {
            patient.push(e(tags::SPECIFIC_CHARACTER_SET, b"CS", cs));
        }
        for st in 0..spec.studies {
            let pst = [p as u64, st as u64];
            let date = format!("2024{:02}{:02}", 1 + (p + st) % 12, 1 + (p * 7 + st) % 28);
            let time = format!("{:02}{:02}00", 8 + st % 10, (p * 13) % 60);
            let ct = (p + st) % 2 == 1;
            let study = [
                e(
                    tags::STUDY_INSTANCE_UID,
                    b"UI",
                    uid(s, &[1, pst[0], pst[1]]),
                ),
                e(tags::STUDY_DATE, b"DA", &date),
                e(tags::STUDY_TIME, b"TM", &time),
                e(tags::STUDY_ID, b"SH", format!("{}", st + 1)),
                e(
                    tags::ACCESSION_NUMBER,
                    b"SH",
                    format!("A{:06}{:02}", p + 1, st + 1),
                ),
                e(
                    tags::STUDY_DESCRIPTION,
                    b"LO",
                    if ct {
                        "CT CHEST W/O CONTRAST"
                    } else {
                        "MRI BRAIN"
                    },
                ),
                e(0x0008_0090, b"PN", ""),
            ];
            let nseries = spec.series + if spec.documents { 2 } else { 0 };
            for se in 0..nseries {
                let kind = if se < spec.series {
                    if ct {
                        "CT"
                    } else {
                        "MR"
                    }
                } else if se == spec.series {
                    "SR"
                } else {
                    "DOC"
                };
                let series_uid = uid(s, &[2, pst[0], pst[1], se as u64]);
                let series_desc = match kind {
                    "CT" => format!("AXIAL {} MM", 1 + se),
                    "MR" => ["T1 AXIAL", "T2 FLAIR", "DWI", "T1 POST"][se % 4].to_string(),
                    "SR" => "REPORT".into(),
                    _ => "SCANNED REQUEST".into(),
                };
                let series = [
                    e(tags::SERIES_INSTANCE_UID, b"UI", &series_uid),
                    e(tags::SERIES_NUMBER, b"IS", format!("{}", se + 1)),
                    e(tags::MODALITY, b"CS", kind),
                    e(tags::SERIES_DESCRIPTION, b"LO", &series_desc),
                    e(tags::INSTITUTION_NAME, b"LO", "SYNTHETIC GENERAL HOSPITAL"),
                    e(0x0008_0070, b"LO", "DICOMFS SYNTH"),
                    e(tags::SERIES_DATE, b"DA", &date),
                    e(tags::SERIES_TIME, b"TM", &time),
                ];
                let n = if kind == "SR" || kind == "DOC" {
                    1
                } else {
                    spec.instances
                };
                for i in 0..n {
                    let sop = uid(s, &[3, pst[0], pst[1], se as u64, i as u64]);
                    let mut ds = patient.clone();
                    ds.extend(study.iter().cloned());
                    ds.extend(series.iter().cloned());
                    ds.push(e(tags::SOP_INSTANCE_UID, b"UI", &sop));
                    ds.push(e(tags::INSTANCE_NUMBER, b"IS", format!("{}", i + 1)));
                    ds.push(e(tags::CONTENT_DATE, b"DA", &date));
                    ds.push(e(tags::CONTENT_TIME, b"TM", &time));
                    match kind {
                        "CT" | "MR" => image(&mut ds, spec, kind, i, uid(s, &[4, pst[0], pst[1]])),
                        "SR" => sr(&mut ds),
                        _ => pdf(&mut ds, &date),
                    }
                    out.push(Instance {
                        file_id: vec![
                            format!("P{:05}", p + 1),
                            format!("S{:04}", st + 1),
                            format!("E{:04}", se + 1),
                            format!("I{:05}", i + 1),
                        ],
                        ds,
                    });
                }
            }
        }
    }
    out
}

fn ds_str(v: &[f64]) -> String {
    v.iter()
        .map(|x| format!("{x}"))
        .collect::<Vec<_>>()
        .join("\\")
}

fn image(ds: &mut Vec<Elem>, spec: &Spec, kind: &str, i: usize, frame_uid: String) {
    let (rows, cols) = (spec.rows as usize, spec.cols as usize);
    ds.push(e(
        tags::SOP_CLASS_UID,
        b"UI",
        if kind == "CT" { CT } else { MR },
    ));
    ds.push(e(tags::IMAGE_TYPE, b"CS", "ORIGINAL\\PRIMARY\\AXIAL"));
    ds.push(e(0x0018_0050, b"DS", "3"));
    if kind == "MR" {
        ds.push(e(0x0018_0020, b"CS", "SE"));
        ds.push(e(0x0018_0021, b"CS", "NONE"));
        ds.push(e(0x0018_0022, b"CS", ""));
        ds.push(e(0x0018_0023, b"CS", "2D"));
        ds.push(e(0x0018_0080, b"DS", "500"));
        ds.push(e(0x0018_0081, b"DS", "15"));
        ds.push(e(0x0018_0087, b"DS", "1.5"));
        ds.push(e(0x0018_0091, b"IS", "1"));
    } else {
        ds.push(e(0x0018_0060, b"DS", "120"));
        ds.push(e(0x0028_1050, b"DS", "40"));
        ds.push(e(0x0028_1051, b"DS", "400"));
        ds.push(e(0x0028_1052, b"DS", "-1024"));
        ds.push(e(0x0028_1053, b"DS", "1"));
        ds.push(e(0x0028_1054, b"LO", "HU"));
    }
    ds.push(e(0x0018_5100, b"CS", "HFS"));
    let z = i as f64 * 3.0;
    ds.push(e(
        0x0020_0032,
        b"DS",
        ds_str(&[-(cols as f64) / 2.0, -(rows as f64) / 2.0, z]),
    ));
    ds.push(e(
        0x0020_0037,
        b"DS",
        ds_str(&[1.0, 0.0, 0.0, 0.0, 1.0, 0.0]),
    ));
    ds.push(e(0x0020_0052, b"UI", frame_uid));
    ds.push(e(0x0020_1040, b"LO", ""));
    ds.push(e(0x0020_1041, b"DS", format!("{z}")));
    ds.push(e(0x0028_0002, b"US", 1u16.to_le_bytes()));
    ds.push(e(0x0028_0004, b"CS", "MONOCHROME2"));
    ds.push(e(tags::ROWS, b"US", (rows as u16).to_le_bytes()));
    ds.push(e(tags::COLUMNS, b"US", (cols as u16).to_le_bytes()));
    ds.push(e(0x0028_0030, b"DS", "1\\1"));
    ds.push(e(0x0028_0100, b"US", 16u16.to_le_bytes()));
    ds.push(e(0x0028_0101, b"US", 12u16.to_le_bytes()));
    ds.push(e(0x0028_0102, b"US", 11u16.to_le_bytes()));
    ds.push(e(0x0028_0103, b"US", 0u16.to_le_bytes()));
    // A sphere phantom: bright inside a radius that shrinks away from the middle slice.
    let mut px = Vec::with_capacity(rows * cols * 2);
    let mid = spec.instances as f64 / 2.0;
    let r = ((rows.min(cols) as f64) / 3.0)
        * (1.0 - ((i as f64 - mid) / (mid + 1.0)).powi(2))
            .max(0.0)
            .sqrt();
    for y in 0..rows {
        for x in 0..cols {
            let dx = x as f64 - cols as f64 / 2.0;
            let dy = y as f64 - rows as f64 / 2.0;
            let v: u16 = if dx * dx + dy * dy < r * r {
                1800
            } else {
                ((x + y) % 64) as u16
            };
            px.extend_from_slice(&v.to_le_bytes());
        }
    }
    ds.push(e(tags::PIXEL_DATA, b"OW", px));
}

fn code(value: &str, scheme: &str, meaning: &str) -> Vec<Elem> {
    vec![
        e(0x0008_0100, b"SH", value),
        e(0x0008_0102, b"SH", scheme),
        e(0x0008_0104, b"LO", meaning),
    ]
}

fn sr(ds: &mut Vec<Elem>) {
    ds.push(e(tags::SOP_CLASS_UID, b"UI", BASIC_TEXT_SR));
    ds.push(e(
        tags::CONCEPT_NAME_CODE_SEQUENCE,
        b"SQ",
        seq_value(&[code("18748-4", "LN", "Diagnostic Imaging Report")]),
    ));
    ds.push(e(0x0040_A040, b"CS", "CONTAINER"));
    ds.push(e(0x0040_A050, b"CS", "SEPARATE"));
    ds.push(e(tags::COMPLETION_FLAG, b"CS", "COMPLETE"));
    ds.push(e(tags::VERIFICATION_FLAG, b"CS", "UNVERIFIED"));
    ds.push(e(0x0040_A375, b"SQ", Vec::new()));
    ds.push(e(0x0040_A372, b"SQ", Vec::new()));
    let text = vec![
        e(0x0040_A010, b"CS", "CONTAINS"),
        e(0x0040_A040, b"CS", "TEXT"),
        e(
            tags::CONCEPT_NAME_CODE_SEQUENCE,
            b"SQ",
            seq_value(&[code("121071", "DCM", "Finding")]),
        ),
        e(
            0x0040_A160,
            b"UT",
            "No acute abnormality. Synthetic report.",
        ),
    ];
    ds.push(e(0x0040_A730, b"SQ", seq_value(&[text])));
}

fn pdf(ds: &mut Vec<Elem>, date: &str) {
    ds.push(e(tags::SOP_CLASS_UID, b"UI", ENCAP_PDF));
    ds.push(e(tags::DOCUMENT_TITLE, b"ST", "Scanned request"));
    ds.push(e(tags::CONCEPT_NAME_CODE_SEQUENCE, b"SQ", Vec::new()));
    ds.push(e(tags::MIME_TYPE, b"LO", "application/pdf"));
    ds.push(e(0x0008_002A, b"DT", format!("{date}120000")));
    ds.push(e(0x0028_0301, b"CS", "NO"));
    ds.push(e(0x0042_0013, b"LO", ""));
    ds.push(e(0x0040_A493, b"CS", "UNVERIFIED"));
    let body = b"%PDF-1.4\n1 0 obj<</Type/Catalog/Pages 2 0 R>>endobj 2 0 obj<</Type/Pages/Kids[]/Count 0>>endobj\ntrailer<</Root 1 0 R>>\n%%EOF\n";
    ds.push(e(0x0042_0011, b"OB", body));
}

/// Build the DICOMDIR for instances (the same hierarchy rules as an ingest).
pub fn dicomdir_for(insts: &[Instance], fileset_id: &str, fileset_uid: &str) -> WDicomDir {
    let entries: Vec<crate::rebuild::Entry> = insts
        .iter()
        .map(|i| crate::rebuild::Entry {
            file_id: i.file_id.join("\\"),
            ds: i.ds.clone(),
            sop_class: i.sop_class(),
            sop_instance: i.sop_instance(),
            transfer_syntax: dicom::EXPLICIT_LE.into(),
        })
        .collect();
    crate::rebuild::directory_for(&entries, fileset_id, fileset_uid)
}

/// Write each instance's Part-10 file under its File ID below the host directory `dir`.
pub fn write_instances(dir: &Path, insts: &[Instance]) -> io::Result<()> {
    for inst in insts {
        let p = inst
            .file_id
            .iter()
            .fold(dir.to_path_buf(), |p, c| p.join(c));
        if let Some(parent) = p.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::write(&p, inst.bytes())?;
    }
    Ok(())
}

/// What [`generate`] wrote.
pub struct Generated {
    pub instances: usize,
    pub records: usize,
    pub dicomdir_bytes: usize,
}

/// Write a synthetic File-set into the host directory `dir` (created if missing).
pub fn generate(dir: &Path, spec: &Spec) -> io::Result<Generated> {
    std::fs::create_dir_all(dir)?;
    let insts = instances(spec);
    if spec.files {
        write_instances(dir, &insts)?;
    }
    let d = dicomdir_for(&insts, &spec.fileset_id, &uid(spec.seed, &[99]));
    let bytes = d.encode();
    std::fs::write(dir.join("DICOMDIR"), &bytes)?;
    Ok(Generated {
        instances: insts.len(),
        records: d.records.len(),
        dicomdir_bytes: bytes.len(),
    })
}
