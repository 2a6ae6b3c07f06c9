//! The one place internal errors become Kafka error codes. Matches are
//! exhaustive so a new error variant forces a decision here.

use kafka_protocol::ResponseError;
use tributary_meta::{BatchRejection, MetaError};
use tributary_storage::{ReadError, WriteError};

/// Kafka error code for a metadata-store error.
pub fn meta_error_code(e: &MetaError) -> i16 {
    match e {
        MetaError::TopicExists(_) => ResponseError::TopicAlreadyExists.code(),
        MetaError::UnknownTopic(_) | MetaError::UnknownPartition { .. } => {
            ResponseError::UnknownTopicOrPartition.code()
        }
        MetaError::InvalidPartitions { .. } => ResponseError::InvalidPartitions.code(),
        MetaError::OffsetOutOfRange { .. } => ResponseError::OffsetOutOfRange.code(),
        // Retriable for the client: the write did not take effect as asked.
        MetaError::SegmentExists(_) | MetaError::CommitTooLate { .. } => {
            ResponseError::KafkaStorageError.code()
        }
        MetaError::Backend { .. } => ResponseError::KafkaStorageError.code(),
        MetaError::InvalidArgument(_) => ResponseError::InvalidRequest.code(),
        MetaError::Fenced { .. } => ResponseError::NotCoordinator.code(),
    }
}

/// Kafka error code for a failed append.
pub fn write_error_code(e: &WriteError) -> i16 {
    match e {
        WriteError::Upload { .. } | WriteError::Commit { .. } => {
            ResponseError::KafkaStorageError.code()
        }
        WriteError::ShuttingDown => ResponseError::NotLeaderOrFollower.code(),
    }
}

/// Kafka error code for a batch the metadata store refused.
pub fn rejection_code(r: BatchRejection) -> i16 {
    match r {
        BatchRejection::UnknownTopicOrPartition => ResponseError::UnknownTopicOrPartition.code(),
        BatchRejection::OutOfOrderSequence => ResponseError::OutOfOrderSequenceNumber.code(),
        BatchRejection::InvalidProducerEpoch => ResponseError::InvalidProducerEpoch.code(),
        BatchRejection::OutcomeUnknown | BatchRejection::AwaitingEarlierRetry => {
            ResponseError::KafkaStorageError.code()
        }
    }
}

/// Kafka error code for a failed read.
pub fn read_error_code(e: &ReadError) -> i16 {
    match e {
        ReadError::OffsetOutOfRange { .. } => ResponseError::OffsetOutOfRange.code(),
        ReadError::Meta(m) => meta_error_code(m),
        ReadError::Object { .. } => ResponseError::KafkaStorageError.code(),
        ReadError::Corrupt { .. } => ResponseError::KafkaStorageError.code(),
    }
}
