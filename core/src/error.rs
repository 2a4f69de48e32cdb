//! The error type of `trainfleet-core`.

use std::path::PathBuf;

/// Everything that can go wrong in core: reading and validating configuration and identifiers.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A config file could not be read at all.
    #[error("cannot read config file {path}: {source}")]
    ReadConfig {
        /// The file.
        path: PathBuf,
        /// What the OS said.
        source: std::io::Error,
    },
    /// A config document is not valid YAML or does not fit the schema (typo'd key, wrong type).
    /// `location` is `file:line:column` when the parser knows it.
    #[error("{location}: {message}")]
    ParseConfig {
        /// `file:line:column` (or just the file name).
        location: String,
        /// What is wrong, from the parser, with the valid choices where there are some.
        message: String,
    },
    /// A value parsed but is not acceptable.
    #[error("{origin}: `{field}` {message}")]
    InvalidConfig {
        /// The file (or "flags"/"environment") the value came from.
        origin: String,
        /// Dotted field path.
        field: String,
        /// What is wrong and what would fix it.
        message: String,
    },
    /// The state store failed (I/O, corruption, a second process holding it).
    #[error("state store: {0}")]
    Store(String),
    /// A fenced write was refused: this replica's leadership ended (another replica leads).
    #[error("state store: fenced write refused, this replica no longer leads: {0}")]
    Fenced(String),
    /// Reading or writing an artifact failed; `uri` names the object.
    #[error("artifact {uri}: {message}")]
    Artifact {
        /// The object (or the store's base URL).
        uri: String,
        /// What went wrong.
        message: String,
    },
    /// A dataset cannot be scanned; `path` names the file or directory.
    #[error("dataset {path}: {message}")]
    Dataset {
        /// Where.
        path: String,
        /// What went wrong.
        message: String,
    },
    /// A field of a request or document has an unacceptable value.
    #[error("`{field}` {message}")]
    InvalidField {
        /// Field path.
        field: String,
        /// What is wrong and what would fix it.
        message: String,
    },
    /// A field names something its sender may not reach (a path outside a worker's data
    /// roots). gRPC: PERMISSION_DENIED.
    #[error("permission denied: `{field}` {message}")]
    PermissionDenied {
        /// Field path.
        field: String,
        /// What was named and what is allowed.
        message: String,
    },
}

/// Shorthand for results of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// An [`Error::InvalidField`] for `field`.
    pub fn invalid_field(field: impl Into<String>, message: impl Into<String>) -> Self {
        Error::InvalidField {
            field: field.into(),
            message: message.into(),
        }
    }
}

/// An error with its causes, `: `-separated ("transport error: tcp connect error: Connection
/// refused (os error 111)", not just the outermost "transport error"); a cause whose text is
/// already in the message is not repeated.
pub fn chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}
