//! Directory records for an instance (PS3.3 Annex F, PS3.11 Annex J): which record type a SOP
//! Class gets and which keys each record carries, taken from the instance's data set.

use crate::dicom::tags;
use crate::dicomdir::Elem;

const P: &str = "1.2.840.10008.5.1.4.1.1.";

/// The leaf record type for a SOP Class UID (dicomdir-facts.md section 4).
pub fn record_type(sop_class: &str) -> &'static str {
    match sop_class {
        "1.2.840.10008.5.1.4.38.1" => return "HANGING PROTOCOL",
        "1.2.840.10008.5.1.4.39.1" => return "PALETTE",
        "1.2.840.10008.5.1.4.43.1" => return "IMPLANT",
        "1.2.840.10008.5.1.4.44.1" => return "IMPLANT ASSY",
        "1.2.840.10008.5.1.4.45.1" => return "IMPLANT GROUP",
        _ => {}
    }
    let Some(s) = sop_class.strip_prefix(P) else {
        return "IMAGE";
    };
    match s {
        "88.59" => "KEY OBJECT DOC",
        "88.11" | "88.22" | "88.33" | "88.34" | "88.35" | "88.40" | "88.50" | "88.65" | "88.67"
        | "88.68" | "88.69" | "88.70" | "88.71" | "88.72" | "88.73" | "88.74" | "88.75"
        | "78.6" | "79.1" => "SR DOCUMENT",
        "131" => "PRESENTATION",
        "481.2" => "RT DOSE",
        "481.3" => "RT STRUCTURE SET",
        "481.5" | "481.8" => "RT PLAN",
        "481.4" | "481.6" | "481.7" | "481.9" => "RT TREAT RECORD",
        "4.2" => "SPECTROSCOPY",
        "66" => "RAW DATA",
        "66.1" | "66.3" => "REGISTRATION",
        "66.2" => "FIDUCIAL",
        "66.5" => "SURFACE",
        "66.6" => "TRACT",
        "67" => "VALUE MAP",
        "68.1" | "68.2" => "SURFACE SCAN",
        "77.1.5.3" => "STEREOMETRIC",
        "78.1" | "78.2" | "78.3" | "78.4" | "78.5" | "78.7" | "78.8" | "80.1" => "MEASUREMENT",
        s if s.starts_with("11.") => "PRESENTATION",
        s if s.starts_with("9.") => "WAVEFORM",
        s if s.starts_with("104.") => "ENCAP DOC",
        _ => "IMAGE",
    }
}

fn get(ds: &[Elem], tag: u32) -> Option<&Elem> {
    ds.iter().find(|e| e.tag == tag)
}

/// Copy the listed keys that the instance has (Type 1C/2/3 behaviour); `required` keys are
/// written empty when missing (Type 2) so the record stays valid.
fn copy(ds: &[Elem], keys: &[(u32, [u8; 2])], required: &[u32]) -> Vec<Elem> {
    let mut out = Vec::new();
    for &(tag, vr) in keys {
        match get(ds, tag) {
            Some(e) => out.push(e.clone()),
            None if required.contains(&tag) => out.push(Elem {
                tag,
                vr,
                value: Vec::new(),
            }),
            None => {}
        }
    }
    out
}

/// The four records of one instance: patient, study, series, and the leaf (type and elements).
pub struct InstanceRecords {
    pub patient: Vec<Elem>,
    pub study: Vec<Elem>,
    pub series: Vec<Elem>,
    pub leaf_type: &'static str,
    pub leaf: Vec<Elem>,
}

/// Build the records for an instance whose data set is `ds`, stored under `file_id` (components
/// joined with `\`), with the given SOP Class, Instance and Transfer Syntax UIDs.
pub fn for_instance(
    ds: &[Elem],
    file_id: &str,
    sop_class: &str,
    sop_instance: &str,
    transfer_syntax: &str,
) -> InstanceRecords {
    let cs: Vec<Elem> = get(ds, tags::SPECIFIC_CHARACTER_SET)
        .cloned()
        .into_iter()
        .collect();
    let mut patient = cs.clone();
    patient.extend(copy(
        ds,
        &[
            (tags::PATIENT_NAME, *b"PN"),
            (tags::PATIENT_ID, *b"LO"),
            (tags::PATIENT_BIRTH_DATE, *b"DA"),
            (tags::PATIENT_SEX, *b"CS"),
        ],
        &[tags::PATIENT_NAME, tags::PATIENT_ID],
    ));
    let mut study = cs.clone();
    study.extend(copy(
        ds,
        &[
            (tags::STUDY_DATE, *b"DA"),
            (tags::STUDY_TIME, *b"TM"),
            (tags::ACCESSION_NUMBER, *b"SH"),
            (tags::STUDY_DESCRIPTION, *b"LO"),
            (tags::STUDY_INSTANCE_UID, *b"UI"),
            (tags::STUDY_ID, *b"SH"),
        ],
        &[
            tags::STUDY_DATE,
            tags::STUDY_TIME,
            tags::ACCESSION_NUMBER,
            tags::STUDY_DESCRIPTION,
            tags::STUDY_ID,
        ],
    ));
    let mut series = cs.clone();
    series.extend(copy(
        ds,
        &[
            (tags::MODALITY, *b"CS"),
            (tags::INSTITUTION_NAME, *b"LO"),
            (tags::SERIES_DESCRIPTION, *b"LO"),
            (tags::SERIES_INSTANCE_UID, *b"UI"),
            (tags::SERIES_NUMBER, *b"IS"),
        ],
        &[
            tags::MODALITY,
            tags::SERIES_INSTANCE_UID,
            tags::SERIES_NUMBER,
        ],
    ));
    let leaf_type = record_type(sop_class);
    let mut leaf = cs;
    leaf.push(Elem::str(tags::REFERENCED_FILE_ID, b"CS", file_id));
    leaf.push(Elem::str(tags::REFERENCED_SOP_CLASS, b"UI", sop_class));
    leaf.push(Elem::str(
        tags::REFERENCED_SOP_INSTANCE,
        b"UI",
        sop_instance,
    ));
    leaf.push(Elem::str(
        tags::REFERENCED_TRANSFER_SYNTAX,
        b"UI",
        transfer_syntax,
    ));
    let common = [(tags::INSTANCE_NUMBER, *b"IS")];
    let specific: &[(u32, [u8; 2])] = match leaf_type {
        "IMAGE" => &[
            (tags::IMAGE_TYPE, *b"CS"),
            (0x0008_002A, *b"DT"),
            (0x0018_1800, *b"CS"),
            (0x0020_0032, *b"DS"),
            (0x0020_0037, *b"DS"),
            (0x0020_0052, *b"UI"),
            (0x0020_0200, *b"UI"),
            (0x0028_0008, *b"IS"),
            (tags::ROWS, *b"US"),
            (tags::COLUMNS, *b"US"),
            (0x0028_0030, *b"DS"),
            (0x0028_2112, *b"DS"),
            (0x0050_0004, *b"CS"),
            (0x0008_1140, *b"SQ"),
        ],
        "SR DOCUMENT" => &[
            (tags::CONTENT_DATE, *b"DA"),
            (tags::CONTENT_TIME, *b"TM"),
            (0x0040_A030, *b"DT"),
            (tags::CONCEPT_NAME_CODE_SEQUENCE, *b"SQ"),
            (tags::COMPLETION_FLAG, *b"CS"),
            (tags::VERIFICATION_FLAG, *b"CS"),
        ],
        "KEY OBJECT DOC" | "WAVEFORM" => &[
            (tags::CONTENT_DATE, *b"DA"),
            (tags::CONTENT_TIME, *b"TM"),
            (tags::CONCEPT_NAME_CODE_SEQUENCE, *b"SQ"),
        ],
        "ENCAP DOC" => &[
            (tags::CONTENT_DATE, *b"DA"),
            (tags::CONTENT_TIME, *b"TM"),
            (tags::DOCUMENT_TITLE, *b"ST"),
            (tags::CONCEPT_NAME_CODE_SEQUENCE, *b"SQ"),
            (tags::MIME_TYPE, *b"LO"),
        ],
        "PRESENTATION" => &[
            (0x0008_1115, *b"SQ"),
            (tags::CONTENT_LABEL, *b"CS"),
            (0x0070_0081, *b"LO"),
            (0x0070_0082, *b"DA"),
            (0x0070_0083, *b"TM"),
            (0x0070_0084, *b"PN"),
        ],
        "RT DOSE" => &[(0x3004_000A, *b"CS")],
        "RT STRUCTURE SET" => &[
            (0x3006_0002, *b"SH"),
            (0x3006_0008, *b"DA"),
            (0x3006_0009, *b"TM"),
        ],
        "RT PLAN" => &[
            (0x300A_0002, *b"SH"),
            (0x300A_0006, *b"DA"),
            (0x300A_0007, *b"TM"),
        ],
        _ => &[],
    };
    leaf.extend(copy(ds, &common, &[tags::INSTANCE_NUMBER]));
    leaf.extend(copy(ds, specific, &[]));
    let mut recs = InstanceRecords {
        patient,
        study,
        series,
        leaf_type,
        leaf,
    };
    derive_type1(ds, &mut recs);
    recs
}

fn value(ds: &[Elem], tag: u32) -> Option<&[u8]> {
    get(ds, tag)
        .map(|e| crate::dicom::trim_value(&e.value))
        .filter(|v| !v.is_empty())
}

/// Set a record key to a derived value when it is missing or empty.
fn fill(rec: &mut Vec<Elem>, tag: u32, vr: [u8; 2], v: &[u8]) {
    match rec.iter_mut().find(|e| e.tag == tag) {
        Some(e) if !crate::dicom::trim_value(&e.value).is_empty() => {}
        Some(e) => e.value = v.to_vec(),
        None => rec.push(Elem {
            tag,
            vr,
            value: v.to_vec(),
        }),
    }
}

/// A short stable hash (FNV-1a) for derived identifiers.
fn fnv(parts: &[&[u8]]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for p in parts {
        for &b in p.iter().chain(b"\\") {
            h ^= b as u64;
            h = h.wrapping_mul(0x100_0000_01b3);
        }
    }
    h
}

/// Type 1 record keys that instances often lack (they are Type 2 in most IODs) get values
/// derived deterministically from the instance, in the DICOMDIR only (the instance file is
/// never changed):
///
/// - Patient ID: `DFS` and 10 hex digits of a hash of Patient's Name and Birth Date, so one
///   unnamed patient keeps one record;
/// - Study Date and Time: from Series, Acquisition, then Content Date/Time, else 19000101 and
///   000000; Study ID: the Accession Number, else `1`;
/// - Modality: `OT`; Series Number and Instance Number: `1`;
/// - Content Date/Time (SR, KO, waveform): from the study's; Completion Flag `PARTIAL` and
///   Verification Flag `UNVERIFIED` (SR); Presentation Creation Date/Time: from Content or
///   Study Date/Time; Content Label: `UNNAMED`; MIME type: `application/pdf`.
pub fn derive_type1(ds: &[Elem], r: &mut InstanceRecords) {
    let name = value(ds, tags::PATIENT_NAME).unwrap_or(b"");
    let birth = value(ds, tags::PATIENT_BIRTH_DATE).unwrap_or(b"");
    let pid = format!("DFS{:010X}", fnv(&[name, birth]) & 0xFF_FFFF_FFFF);
    fill(&mut r.patient, tags::PATIENT_ID, *b"LO", pid.as_bytes());
    let first = |tags: &[u32], dflt: &'static [u8]| -> Vec<u8> {
        tags.iter()
            .find_map(|&t| value(ds, t))
            .unwrap_or(dflt)
            .to_vec()
    };
    let date = first(
        &[
            tags::STUDY_DATE,
            tags::SERIES_DATE,
            0x0008_0022,
            tags::CONTENT_DATE,
        ],
        b"19000101",
    );
    let time = first(
        &[
            tags::STUDY_TIME,
            tags::SERIES_TIME,
            0x0008_0032,
            tags::CONTENT_TIME,
        ],
        b"000000",
    );
    fill(&mut r.study, tags::STUDY_DATE, *b"DA", &date);
    fill(&mut r.study, tags::STUDY_TIME, *b"TM", &time);
    let sid = first(&[tags::STUDY_ID, tags::ACCESSION_NUMBER], b"1");
    fill(&mut r.study, tags::STUDY_ID, *b"SH", &sid);
    fill(&mut r.series, tags::MODALITY, *b"CS", b"OT");
    fill(&mut r.series, tags::SERIES_NUMBER, *b"IS", b"1");
    fill(&mut r.leaf, tags::INSTANCE_NUMBER, *b"IS", b"1");
    let cdate = first(&[tags::CONTENT_DATE], b"")
        .into_iter()
        .collect::<Vec<u8>>();
    let cdate = if cdate.is_empty() {
        date.clone()
    } else {
        cdate
    };
    let ctime = first(&[tags::CONTENT_TIME], b"");
    let ctime = if ctime.is_empty() {
        time.clone()
    } else {
        ctime
    };
    match r.leaf_type {
        "SR DOCUMENT" | "KEY OBJECT DOC" | "WAVEFORM" => {
            fill(&mut r.leaf, tags::CONTENT_DATE, *b"DA", &cdate);
            fill(&mut r.leaf, tags::CONTENT_TIME, *b"TM", &ctime);
            if r.leaf_type == "SR DOCUMENT" {
                fill(&mut r.leaf, tags::COMPLETION_FLAG, *b"CS", b"PARTIAL");
                fill(&mut r.leaf, tags::VERIFICATION_FLAG, *b"CS", b"UNVERIFIED");
            }
        }
        "PRESENTATION" => {
            fill(&mut r.leaf, 0x0070_0082, *b"DA", &cdate);
            fill(&mut r.leaf, 0x0070_0083, *b"TM", &ctime);
            fill(&mut r.leaf, tags::CONTENT_LABEL, *b"CS", b"UNNAMED");
            fill(&mut r.leaf, 0x0070_0081, *b"LO", b"");
            fill(&mut r.leaf, 0x0070_0084, *b"PN", b"");
        }
        "ENCAP DOC" => {
            fill(&mut r.leaf, tags::MIME_TYPE, *b"LO", b"application/pdf");
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_types() {
        assert_eq!(record_type("1.2.840.10008.5.1.4.1.1.4"), "IMAGE");
        assert_eq!(record_type("1.2.840.10008.5.1.4.1.1.88.11"), "SR DOCUMENT");
        assert_eq!(record_type("1.2.840.10008.5.1.4.1.1.104.1"), "ENCAP DOC");
        assert_eq!(record_type("1.2.840.10008.5.1.4.1.1.481.2"), "RT DOSE");
        assert_eq!(record_type("1.2.840.10008.5.1.4.1.1.11.1"), "PRESENTATION");
        assert_eq!(record_type("1.2.840.10008.5.1.4.1.1.9.1.1"), "WAVEFORM");
        assert_eq!(
            record_type("1.2.840.10008.5.1.4.1.1.88.59"),
            "KEY OBJECT DOC"
        );
        assert_eq!(record_type("1.2.840.10008.5.1.4.38.1"), "HANGING PROTOCOL");
    }
}
