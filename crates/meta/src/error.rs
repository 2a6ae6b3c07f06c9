//! Errors of the metadata store, shared by every backend.

use thiserror::Error;

/// Errors of the metadata store.
#[derive(Debug, Error)]
pub enum MetaError {
    #[error("topic already exists name={0}")]
    TopicExists(String),
    #[error("unknown topic {0}")]
    UnknownTopic(String),
    #[error("unknown partition topic={topic} partition={partition}")]
    UnknownPartition { topic: String, partition: i32 },
    #[error("invalid partition count requested={requested} current={current}")]
    InvalidPartitions { requested: i32, current: i32 },
    #[error("offset out of range offset={offset} log_start={log_start} next={next}")]
    OffsetOutOfRange {
        offset: i64,
        log_start: i64,
        next: i64,
    },
    #[error("segment already committed key={0}")]
    SegmentExists(String),
    /// The segment is older than its commit deadline by the store's clock:
    /// the janitor may already have deleted it ([`crate::CommitDeadline`]).
    /// Nothing was committed; retrying fails again.
    #[error("segment commit too late key={key} age_ms={age_ms} max_age_ms={max_age_ms}")]
    CommitTooLate {
        key: String,
        age_ms: i64,
        max_age_ms: i64,
    },
    /// A commit made under a group coordinator claim that another claim has
    /// replaced since: this broker no longer coordinates the group.
    #[error("group coordinator fenced group={group} node_id={node_id} epoch={epoch}")]
    Fenced {
        group: String,
        node_id: i32,
        epoch: i64,
    },
    /// The caller passed something the store cannot accept (malformed URL,
    /// negative batch length, ...). Retrying the same call fails again.
    #[error("invalid argument {0}")]
    InvalidArgument(String),
    /// The backend failed (I/O, connection, constraint); retryable unless
    /// the backend says otherwise.
    #[error("metadata backend failed op={op}")]
    Backend {
        op: &'static str,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

impl MetaError {
    /// Whether retrying the same call may succeed.
    pub fn is_retryable(&self) -> bool {
        matches!(self, MetaError::Backend { .. })
    }
}
