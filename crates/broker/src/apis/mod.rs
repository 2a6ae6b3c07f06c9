//! One module per Kafka API, each with a `handle` the router's table calls
//! (the group APIs are thin adapters in the table to [`crate::groups`]).
//! [`topic_configs`] holds what the config APIs share.
//! Handlers never fail as a whole: problems become per-topic or
//! per-partition error codes.

pub mod acls;
pub mod alter_configs;
pub mod create_partitions;
pub mod create_topics;
pub mod delete_records;
pub mod delete_topics;
pub mod describe_cluster;
pub mod describe_configs;
pub mod describe_topic_partitions;
pub mod fetch;
pub mod find_coordinator;
pub mod incremental_alter_configs;
pub mod init_producer_id;
pub mod list_offsets;
pub mod metadata;
pub mod offset_for_leader_epoch;
pub mod produce;
pub mod record_rules;
pub mod sasl_authenticate;
pub mod sasl_handshake;
pub mod scram_credentials;
pub mod topic_configs;
pub mod transactions;

use kafka_protocol::messages::TopicName;
use kafka_protocol::protocol::StrBytes;

/// Largest partition count one request may ask for.
pub(crate) const MAX_PARTITIONS: i32 = 10_000;

/// A `TopicName` from a string.
pub(crate) fn topic_name(name: &str) -> TopicName {
    TopicName(StrBytes::from_string(name.to_string()))
}

/// A `StrBytes` from a string.
pub(crate) fn str_bytes(s: &str) -> StrBytes {
    StrBytes::from_string(s.to_string())
}

/// The topic of one partition of a request, or the error code to answer that
/// partition with (unknown topic or partition, or a metadata failure).
pub(crate) fn partition_topic(
    lookup: &Result<Option<std::sync::Arc<tributary_meta::TopicMeta>>, tributary_meta::MetaError>,
    partition: i32,
) -> Result<&tributary_meta::TopicMeta, i16> {
    match lookup {
        Ok(Some(topic)) if partition >= 0 && partition < topic.partitions => Ok(topic),
        Ok(_) => Err(kafka_protocol::ResponseError::UnknownTopicOrPartition.code()),
        Err(e) => Err(crate::error::meta_error_code(e)),
    }
}
