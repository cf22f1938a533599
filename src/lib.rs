//! dicomfs: a DICOM File-set (PS3.10) as a filesystem.
//!
//! Layers, from the bottom: [`fsimpl`] (the medium), [`dicom`] (PS3.5 encoding), [`dicomdir`]
//! (the DICOMDIR codec), [`records`] (records for an instance), [`fileset`] (the File-set on a
//! medium and its checks), [`vfs`] (the views as inodes, no FUSE), and [`fuse`] (the thin `fuser`
//! adapter). [`synth`] makes synthetic File-sets for the demo, tests and benchmarks.

pub mod dicom;
pub mod dicomdir;
pub mod error;
pub mod fileset;
pub mod fsu;
pub mod fuse;
pub mod rebuild;
pub mod records;
pub mod synth;
pub mod vfs;

pub use error::{Error, Result};
