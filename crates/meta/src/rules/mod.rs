//! The metadata store's Kafka decisions, as plain functions with no database
//! code. Every backend loads the rows a decision needs, calls the rule here
//! and writes back what it returns, so each rule has exactly one home and a
//! new backend costs only its SQL.
//!
//! - [`producer`]: the idempotent-producer check (epoch, duplicate, sequence
//!   gap) over the remembered recent batches.
//! - [`commit`]: a segment commit's plan: offsets per batch, the partition
//!   rows and producer state to write back, the index entries to insert.
//! - [`retention`]: how far retention moves a partition's log start.
//! - [`compaction`]: which run of small entries to merge, and whether a
//!   replace request is valid.
//! - [`registry`]: broker liveness and node-id ownership.
//! - [`groups`]: group-coordinator fencing.
//! - [`txn`]: what transactions allow into the log (data, markers), and
//!   the last stable offset.

pub mod acl;
pub mod commit;
pub mod compaction;
pub mod groups;
pub mod producer;
pub mod registry;
pub mod retention;
pub mod txn;

use uuid::Uuid;

use crate::{MetaError, TopicMeta};

/// A producer on a partition: `(topic_id, partition, producer_id)`.
pub type ProducerKey = (Uuid, i32, i64);

/// A partition's row as the store keeps it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PartitionRow {
    pub log_start_offset: i64,
    pub next_offset: i64,
    /// Max timestamp of every record appended so far (`i64::MIN` if none).
    pub max_timestamp: i64,
}

/// The error for a partition the store has no row for: the topic is unknown
/// (`topic` is `None`) or it has fewer partitions.
pub fn missing_partition(topic: Option<TopicMeta>, topic_id: Uuid, partition: i32) -> MetaError {
    match topic {
        Some(topic) => MetaError::UnknownPartition {
            topic: topic.name,
            partition,
        },
        None => MetaError::UnknownTopic(topic_id.to_string()),
    }
}
