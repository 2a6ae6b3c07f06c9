use thiserror::Error;

/// Errors opening or checking storage.
#[derive(Debug, Error)]
pub enum StorageError {
    #[error("invalid object store url url={url}: {reason}")]
    InvalidUrl { url: String, reason: String },
    #[error("object store setup failed url={url}")]
    Setup {
        url: String,
        #[source]
        source: object_store::Error,
    },
    #[error("cannot create data directory path={path}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

/// Why an append was not acknowledged.
#[derive(Debug, Error, Clone)]
pub enum WriteError {
    /// The segment could not be uploaded; nothing was committed.
    #[error("segment upload failed key={key}: {reason}")]
    Upload { key: String, reason: String },
    /// The metadata commit failed; the upload is an orphan.
    #[error("segment commit failed key={key}: {reason}")]
    Commit { key: String, reason: String },
    /// The writer is shutting down.
    #[error("segment writer is shut down")]
    ShuttingDown,
}

impl WriteError {
    /// Whether the producer may retry the same batch.
    pub fn is_retryable(&self) -> bool {
        match self {
            WriteError::Upload { .. } | WriteError::Commit { .. } => true,
            WriteError::ShuttingDown => true,
        }
    }
}

/// Why a read failed.
#[derive(Debug, Error)]
pub enum ReadError {
    #[error(
        "offset out of range offset={offset} log_start={log_start} high_watermark={high_watermark}"
    )]
    OffsetOutOfRange {
        offset: i64,
        log_start: i64,
        high_watermark: i64,
    },
    #[error("metadata lookup failed")]
    Meta(#[from] tributary_meta::MetaError),
    #[error("segment read failed key={key}")]
    Object {
        key: String,
        #[source]
        source: std::sync::Arc<object_store::Error>,
    },
    #[error("stored segment data is corrupt key={key}: {reason}")]
    Corrupt { key: String, reason: String },
}
