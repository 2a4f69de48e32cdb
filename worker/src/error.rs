//! The worker's error type: one enum for the crate, each variant saying what and where.

use std::path::{Path, PathBuf};

/// What can go wrong in a worker: talking to the coordinator, reading data, training.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The coordinator address cannot be parsed.
    #[error("coordinator address {0:?} is not valid ({1}); use host:port or http://host:port")]
    BadAddress(String, String),
    /// No connection could be made.
    #[error("cannot connect: {0}")]
    Connect(String),
    /// A call failed.
    #[error("{0} failed: {code:?}: {message}", code = .1.code(), message = .1.message())]
    Rpc(&'static str, tonic::Status),
    /// A file could not be read or written.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// What the OS said.
        source: std::io::Error,
    },
    /// A data file is malformed; `offset` is the byte where the problem was found.
    #[error("corrupt data in {}{}: {message}", path.display(), offset.map(|o| format!(" at byte {o}")).unwrap_or_default())]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// Byte offset (in the decompressed stream for compressed files).
        offset: Option<u64>,
        /// What is wrong.
        message: String,
    },
    /// A download failed on every mirror.
    #[error("cannot download {file}: {message}")]
    Download {
        /// The file being fetched.
        file: String,
        /// What went wrong on each URL tried.
        message: String,
    },
    /// A downloaded or cached file does not have its pinned checksum.
    #[error(
        "checksum mismatch for {file} (from {url}): expected sha256 {expected}, got {got}; {action}"
    )]
    Checksum {
        /// The file.
        file: String,
        /// Where it came from.
        url: String,
        /// Pinned sha256.
        expected: String,
        /// sha256 of what arrived.
        got: String,
        /// What was done about it ("the download was deleted", ...).
        action: &'static str,
    },
    /// The data on disk is not the dataset version the job pinned.
    #[error("refusing to train on drifted data: {path}: {message}")]
    Drift {
        /// The file or directory that differs.
        path: String,
        /// How it differs from the pinned version.
        message: String,
    },
    /// The job spec is invalid (checked before any work starts).
    #[error(transparent)]
    Spec(#[from] trainfleet_core::Error),
    /// The job asks for something this worker cannot do (a missing GPU, say).
    #[error("{0}")]
    Unsupported(String),

    /// A report or one of its charts could not be made (never fails a run: see `report`).
    #[error("report: {0}")]
    Report(String),
    /// libtorch reported an error.
    #[error("libtorch: {0}")]
    Torch(#[from] tch::TchError),
    /// The run was cancelled.
    #[error("cancelled")]
    Cancelled,
}

/// Shorthand for worker results.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// An [`Error::Io`] for `path`.
    pub fn io(path: &Path, source: std::io::Error) -> Self {
        Error::Io {
            path: path.to_owned(),
            source,
        }
    }

    /// An [`Error::Corrupt`] for `path`.
    pub fn corrupt(path: &Path, offset: Option<u64>, message: String) -> Self {
        Error::Corrupt {
            path: path.to_owned(),
            offset,
            message,
        }
    }
}
