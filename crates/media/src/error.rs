//! The error type of every demuxer operation.

/// Why opening or reading a media file failed.
#[derive(thiserror::Error, Debug)]
pub enum MediaError {
    /// The underlying reader failed.
    #[error("I/O error: {0}")]
    Io(#[from] std::io::Error),
    /// The container or codec is not supported (or no supported track remains).
    #[error("unsupported: {0}")]
    Unsupported(String),
    /// The file is malformed; the message names the box/element path and byte offset.
    #[error("malformed: {0}")]
    Malformed(String),
}

impl MediaError {
    /// A [`MediaError::Malformed`] naming `path` (box/element path) and byte `offset`.
    pub(crate) fn malformed(path: &str, offset: u64, what: impl std::fmt::Display) -> Self {
        MediaError::Malformed(format!("{path} at offset {offset}: {what}"))
    }
}
