//! The one place internal errors become Kafka error codes. Matches are
//! exhaustive so a new error variant forces a decision here.

use kafka_protocol::ResponseError;
use tributary_meta::{BatchRejection, MetaError};
use tributary_protocol::batch::BatchError;
use tributary_storage::{ReadError, WriteError};

/// Kafka error code for a metadata-store error.
pub(crate) fn meta_error_code(e: &MetaError) -> i16 {
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

/// Kafka error code for a metadata-store error met by the group coordinator:
/// the store being down makes the coordinator unavailable (clients look it
/// up again), and a lost claim means another broker coordinates the group.
pub(crate) fn group_meta_error_code(e: &MetaError) -> i16 {
    match e {
        MetaError::UnknownTopic(_) | MetaError::UnknownPartition { .. } => {
            ResponseError::UnknownTopicOrPartition.code()
        }
        MetaError::Backend { .. } => ResponseError::CoordinatorNotAvailable.code(),
        MetaError::Fenced { .. } => ResponseError::NotCoordinator.code(),
        MetaError::TopicExists(_)
        | MetaError::InvalidPartitions { .. }
        | MetaError::OffsetOutOfRange { .. }
        | MetaError::SegmentExists(_)
        | MetaError::CommitTooLate { .. }
        | MetaError::InvalidArgument(_) => ResponseError::UnknownServerError.code(),
    }
}

/// Kafka error code for a record batch a produce request carried that
/// cannot be appended as it is.
pub(crate) fn batch_error_code(e: &BatchError) -> i16 {
    match e {
        BatchError::UnsupportedMagic(_) => ResponseError::UnsupportedForMessageFormat.code(),
        BatchError::UnsupportedCompression(_) => ResponseError::UnsupportedCompressionType.code(),
        BatchError::Truncated
        | BatchError::CorruptCrc { .. }
        | BatchError::InvalidRecordCount { .. }
        | BatchError::InvalidLength(_)
        | BatchError::Decode(_) => ResponseError::CorruptMessage.code(),
        BatchError::TooLarge { .. } => ResponseError::MessageTooLarge.code(),
    }
}

/// Kafka error code for a failed append.
pub(crate) fn write_error_code(e: &WriteError) -> i16 {
    match e {
        WriteError::Upload { .. } | WriteError::Commit { .. } => {
            ResponseError::KafkaStorageError.code()
        }
        WriteError::ShuttingDown => ResponseError::NotLeaderOrFollower.code(),
    }
}

/// Kafka error code for a batch the metadata store refused.
pub(crate) fn rejection_code(r: BatchRejection) -> i16 {
    match r {
        BatchRejection::UnknownTopicOrPartition => ResponseError::UnknownTopicOrPartition.code(),
        BatchRejection::OutOfOrderSequence => ResponseError::OutOfOrderSequenceNumber.code(),
        BatchRejection::InvalidProducerEpoch => ResponseError::InvalidProducerEpoch.code(),
        BatchRejection::InvalidTxnState => ResponseError::InvalidTxnState.code(),
        BatchRejection::InvalidProducerIdMapping => ResponseError::InvalidProducerIdMapping.code(),
        BatchRejection::OutcomeUnknown | BatchRejection::AwaitingEarlierRetry => {
            ResponseError::KafkaStorageError.code()
        }
    }
}

/// Kafka error code for a failed read.
pub(crate) fn read_error_code(e: &ReadError) -> i16 {
    match e {
        ReadError::OffsetOutOfRange { .. } => ResponseError::OffsetOutOfRange.code(),
        ReadError::Meta(m) => meta_error_code(m),
        ReadError::Object { .. } => ResponseError::KafkaStorageError.code(),
        ReadError::Corrupt { .. } | ReadError::Mismatch { .. } => {
            ResponseError::KafkaStorageError.code()
        }
    }
}
