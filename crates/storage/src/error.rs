use std::sync::Arc;
use std::time::Duration;

use thiserror::Error;
use tributary_meta::MetaError;

/// Errors opening or checking storage.
#[derive(Debug, Error)]
pub enum StorageError {
    #[error("invalid object store url url={url}: {reason}")]
    InvalidUrl { url: String, reason: String },
    #[error("invalid object store url url={url}: {cause}")]
    UnparsableUrl {
        url: String,
        #[source]
        cause: url::ParseError,
    },
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

/// Why an append was not acknowledged. Cloned to every append waiting on
/// the segment, so causes are shared.
#[derive(Debug, Error, Clone)]
pub enum WriteError {
    /// The segment could not be uploaded; nothing was committed.
    #[error("segment upload failed key={key}: {cause}")]
    Upload {
        key: String,
        #[source]
        cause: Arc<UploadFailure>,
    },
    /// The metadata commit failed; the upload is an orphan.
    #[error("segment commit failed key={key}: {cause}")]
    Commit {
        key: String,
        #[source]
        cause: Arc<CommitFailure>,
    },
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

/// Why a segment was not uploaded.
#[derive(Debug, Error)]
pub enum UploadFailure {
    /// A retried PUT found an object of another size under our unique key.
    #[error("object exists with other size={found} expected={expected}")]
    OtherObject { found: u64, expected: u64 },
    /// Credentials, a missing bucket, a malformed request: asking again
    /// cannot help.
    #[error("permanent object-store error: {0}")]
    Permanent(#[source] object_store::Error),
    /// Checking an object a retried PUT found failed for good.
    #[error("checking the uploaded object failed: {0}")]
    Check(#[source] object_store::Error),
    /// The upload task panicked or was cancelled.
    #[error("upload task failed: {0}")]
    Task(#[source] tokio::task::JoinError),
    /// Still not uploaded when the committer stopped waiting.
    #[error("not uploaded within the commit deadline of {0:?}")]
    Deadline(Duration),
}

/// Why a segment's commit failed (the segment is certainly not committed,
/// or its outcome could not be settled).
#[derive(Debug, Error)]
pub enum CommitFailure {
    /// The store answered fewer outcomes than batches.
    #[error("metadata store returned too few outcomes")]
    ShortAnswer,
    /// The commit landed but reading back its outcomes failed.
    #[error("resolving a lost commit answer failed: {0}")]
    Resolve(#[source] MetaError),
    /// Not committed by the deadline, and now never will be.
    #[error("abandoned, not committed within {deadline:?}: {last}")]
    Abandoned {
        deadline: Duration,
        #[source]
        last: CommitAttempt,
    },
    /// The store could not be reached to settle the outcome.
    #[error("outcome unknown, metadata store unreachable: {last}")]
    Unsettled {
        #[source]
        last: CommitAttempt,
    },
}

/// How the last attempt to commit a segment ended.
#[derive(Debug, Error)]
pub enum CommitAttempt {
    /// The deadline had passed before the first attempt.
    #[error("no attempt before the deadline")]
    NotTried,
    /// The metadata store failed or refused.
    #[error("{0}")]
    Store(#[source] MetaError),
    /// No answer within the per-call timeout.
    #[error("metadata commit timed out after {0:?}")]
    TimedOut(Duration),
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
    Meta(#[from] MetaError),
    #[error("segment read failed key={key}")]
    Object {
        key: String,
        #[source]
        source: std::sync::Arc<object_store::Error>,
    },
    #[error("stored segment data is corrupt key={key}{}: {cause}", at_batch(*.base_offset))]
    Corrupt {
        key: String,
        /// The batch whose check failed, when one did.
        base_offset: Option<i64>,
        #[source]
        cause: tributary_protocol::batch::BatchError,
    },
    /// The index and the stored batches disagree about the offsets.
    #[error("stored segment data is corrupt key={key}: index entry covers {first}..={last} but its batches end at {found}")]
    Mismatch {
        key: String,
        first: i64,
        last: i64,
        found: i64,
    },
}

fn at_batch(base_offset: Option<i64>) -> String {
    base_offset.map_or_else(String::new, |b| format!(" batch at offset {b}"))
}
