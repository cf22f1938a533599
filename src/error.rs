//! The one error type of dicomfs: every error knows the errno a file operation answers with and
//! the level it is logged at.

use std::fmt;
use std::io;

/// An error of the DICOM layer, named for what failed.
#[derive(Debug)]
pub enum Error {
    /// The medium (host directory, device) failed an operation on a path.
    Medium { path: String, source: io::Error },
    /// A DICOMDIR (or other DICOM file) could not be read: what is wrong and where.
    Malformed { path: String, reason: String },
    /// The File-set violates a rule of PS3.10/PS3.3 (for `check`).
    Invalid { path: String, reason: String },
    /// The operation is not allowed on this mount (read-only, the DICOMDIR itself, ...).
    ReadOnly { path: String },
    /// A file operation dicomfs refuses on a File-set, with the errno that says why (EINVAL for
    /// a file that is not an acceptable DICOM instance, EEXIST for an instance already present
    /// with other bytes, EPERM for the DICOMDIR and ingested files, ...).
    Rejected {
        path: String,
        reason: String,
        errno: i32,
    },
    /// The same refusal again, for a later operation on a copy that already failed (its
    /// first report was logged; this one is logged at debug level only).
    Again {
        path: String,
        reason: String,
        errno: i32,
    },
    /// No such file or directory in a view.
    NotFound { path: String },
    /// A bad request from the user (a command-line argument, an option).
    Usage(String),
}

/// How loudly an error is logged.
pub use log::Level;

impl Error {
    pub fn medium(path: impl Into<String>, source: io::Error) -> Error {
        Error::Medium {
            path: path.into(),
            source,
        }
    }
    pub fn malformed(path: impl Into<String>, reason: impl Into<String>) -> Error {
        Error::Malformed {
            path: path.into(),
            reason: reason.into(),
        }
    }

    pub fn rejected(path: impl Into<String>, errno: i32, reason: impl Into<String>) -> Error {
        Error::Rejected {
            path: path.into(),
            reason: reason.into(),
            errno,
        }
    }

    /// The errno a file-system operation answers with.
    pub fn errno(&self) -> i32 {
        match self {
            Error::Medium { source, .. } => source.raw_os_error().unwrap_or(match source.kind() {
                io::ErrorKind::NotFound => libc::ENOENT,
                io::ErrorKind::PermissionDenied => libc::EACCES,
                io::ErrorKind::AlreadyExists => libc::EEXIST,
                io::ErrorKind::InvalidInput => libc::EINVAL,
                io::ErrorKind::ReadOnlyFilesystem => libc::EROFS,
                io::ErrorKind::StorageFull => libc::ENOSPC,
                io::ErrorKind::FileTooLarge => libc::EFBIG,
                io::ErrorKind::DirectoryNotEmpty => libc::ENOTEMPTY,
                io::ErrorKind::NotADirectory => libc::ENOTDIR,
                io::ErrorKind::IsADirectory => libc::EISDIR,
                io::ErrorKind::ResourceBusy => libc::EBUSY,
                _ => libc::EIO,
            }),
            Error::Malformed { .. } | Error::Invalid { .. } => libc::EIO,
            Error::ReadOnly { .. } => libc::EROFS,
            Error::Rejected { errno, .. } | Error::Again { errno, .. } => *errno,
            Error::NotFound { .. } => libc::ENOENT,
            Error::Usage(_) => libc::EINVAL,
        }
    }

    /// The level the error is logged at when it answers a file operation.
    pub fn level(&self) -> Level {
        match self {
            Error::NotFound { .. } | Error::Again { .. } => Level::Debug,
            Error::ReadOnly { .. } => Level::Info,
            Error::Usage(_) | Error::Rejected { .. } => Level::Warn,
            Error::Medium { source, .. } if source.kind() == io::ErrorKind::NotFound => {
                Level::Debug
            }
            _ => Level::Error,
        }
    }

    /// Log the error at its level.
    pub fn log(&self) {
        log::log!(self.level(), "{self}");
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Medium { path, source } => write!(f, "{path}: {source}"),
            Error::Malformed { path, reason } => write!(f, "{path}: malformed: {reason}"),
            Error::Invalid { path, reason } => write!(f, "{path}: {reason}"),
            Error::ReadOnly { path } => write!(f, "{path}: read-only file system"),
            Error::Rejected { path, reason, .. } | Error::Again { path, reason, .. } => {
                write!(f, "{path}: {reason}")
            }
            Error::NotFound { path } => write!(f, "{path}: no such file or directory"),
            Error::Usage(m) => write!(f, "{m}"),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Medium { source, .. } => Some(source),
            _ => None,
        }
    }
}

pub type Result<T> = std::result::Result<T, Error>;

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn errnos() {
        assert_eq!(Error::ReadOnly { path: "x".into() }.errno(), libc::EROFS);
        assert_eq!(
            Error::medium("x", io::Error::from_raw_os_error(libc::ENOSPC)).errno(),
            libc::ENOSPC
        );
        assert_eq!(
            Error::medium("x", io::Error::new(io::ErrorKind::NotFound, "gone")).errno(),
            libc::ENOENT
        );
        assert_eq!(Error::malformed("DICOMDIR", "bad").errno(), libc::EIO);
        assert_eq!(
            Error::malformed("DICOMDIR", "bad").to_string(),
            "DICOMDIR: malformed: bad"
        );
    }
}
