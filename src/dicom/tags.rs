//! Tags dicomfs reads or writes, as (group << 16) | element.

pub const FILE_META_GROUP_LENGTH: u32 = 0x0002_0000;
pub const FILE_META_VERSION: u32 = 0x0002_0001;
pub const MEDIA_STORAGE_SOP_CLASS_UID: u32 = 0x0002_0002;
pub const MEDIA_STORAGE_SOP_INSTANCE_UID: u32 = 0x0002_0003;
pub const TRANSFER_SYNTAX_UID: u32 = 0x0002_0010;
pub const IMPLEMENTATION_CLASS_UID: u32 = 0x0002_0012;
pub const IMPLEMENTATION_VERSION_NAME: u32 = 0x0002_0013;

pub const FILE_SET_ID: u32 = 0x0004_1130;
pub const FILE_SET_DESCRIPTOR_FILE_ID: u32 = 0x0004_1141;
pub const FIRST_ROOT_RECORD: u32 = 0x0004_1200;
pub const LAST_ROOT_RECORD: u32 = 0x0004_1202;
pub const CONSISTENCY_FLAG: u32 = 0x0004_1212;
pub const DIRECTORY_RECORD_SEQUENCE: u32 = 0x0004_1220;
pub const NEXT_RECORD: u32 = 0x0004_1400;
pub const IN_USE: u32 = 0x0004_1410;
pub const LOWER_RECORD: u32 = 0x0004_1420;
pub const RECORD_TYPE: u32 = 0x0004_1430;
pub const PRIVATE_RECORD_UID: u32 = 0x0004_1432;
pub const REFERENCED_FILE_ID: u32 = 0x0004_1500;
pub const REFERENCED_SOP_CLASS: u32 = 0x0004_1510;
pub const REFERENCED_SOP_INSTANCE: u32 = 0x0004_1511;
pub const REFERENCED_TRANSFER_SYNTAX: u32 = 0x0004_1512;

pub const SPECIFIC_CHARACTER_SET: u32 = 0x0008_0005;
pub const IMAGE_TYPE: u32 = 0x0008_0008;
pub const SOP_CLASS_UID: u32 = 0x0008_0016;
pub const SOP_INSTANCE_UID: u32 = 0x0008_0018;
pub const STUDY_DATE: u32 = 0x0008_0020;
pub const SERIES_DATE: u32 = 0x0008_0021;
pub const CONTENT_DATE: u32 = 0x0008_0023;
pub const STUDY_TIME: u32 = 0x0008_0030;
pub const SERIES_TIME: u32 = 0x0008_0031;
pub const CONTENT_TIME: u32 = 0x0008_0033;
pub const ACCESSION_NUMBER: u32 = 0x0008_0050;
pub const MODALITY: u32 = 0x0008_0060;
pub const INSTITUTION_NAME: u32 = 0x0008_0080;
pub const STUDY_DESCRIPTION: u32 = 0x0008_1030;
pub const SERIES_DESCRIPTION: u32 = 0x0008_103E;
pub const PATIENT_NAME: u32 = 0x0010_0010;
pub const PATIENT_ID: u32 = 0x0010_0020;
pub const PATIENT_BIRTH_DATE: u32 = 0x0010_0030;
pub const PATIENT_SEX: u32 = 0x0010_0040;
pub const STUDY_INSTANCE_UID: u32 = 0x0020_000D;
pub const SERIES_INSTANCE_UID: u32 = 0x0020_000E;
pub const STUDY_ID: u32 = 0x0020_0010;
pub const SERIES_NUMBER: u32 = 0x0020_0011;
pub const INSTANCE_NUMBER: u32 = 0x0020_0013;
pub const ROWS: u32 = 0x0028_0010;
pub const COLUMNS: u32 = 0x0028_0011;
pub const DOCUMENT_TITLE: u32 = 0x0042_0010;
pub const MIME_TYPE: u32 = 0x0042_0012;
pub const CONCEPT_NAME_CODE_SEQUENCE: u32 = 0x0040_A043;
pub const COMPLETION_FLAG: u32 = 0x0040_A491;
pub const VERIFICATION_FLAG: u32 = 0x0040_A493;
pub const CONTENT_LABEL: u32 = 0x0070_0080;
pub const PIXEL_DATA: u32 = 0x7FE0_0010;

/// The VR of a tag for reading Implicit VR data: only what the DICOMDIR codec needs to know.
pub fn implicit_vr(tag: u32) -> [u8; 2] {
    match tag {
        DIRECTORY_RECORD_SEQUENCE
        | CONCEPT_NAME_CODE_SEQUENCE
        | 0x0008_1115
        | 0x0008_1140
        | 0x0088_0200
        | 0x0040_A730
        | 0x0008_1032 => *b"SQ",
        FIRST_ROOT_RECORD | LAST_ROOT_RECORD | NEXT_RECORD | LOWER_RECORD => *b"UL",
        CONSISTENCY_FLAG | IN_USE | ROWS | COLUMNS => *b"US",
        PATIENT_NAME => *b"PN",
        _ => *b"UN",
    }
}

/// Data Set Trailing Padding (PS3.10 7.2): allowed at the end of a nested data set too.
pub const TRAILING_PADDING: u32 = 0xFFFC_FFFC;
