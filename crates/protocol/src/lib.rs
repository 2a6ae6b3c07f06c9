//! Kafka wire-format helpers for Tributary: RecordBatch v2 header parsing,
//! validation, splitting and base-offset patching, plus CRC32C; request
//! frame decoding.
//!
//! This crate owns everything Tributary needs to know about the bytes of a
//! Kafka record batch. Request/response encoding and decoding is delegated
//! to the `kafka-protocol` crate ([`request`] is the one place requests are
//! decoded). No I/O and no async runtime here.

pub mod batch;
pub mod filter;
pub mod recompress;
pub mod request;
pub mod sequence;

pub use batch::{
    count_records, crc32c, first_offset_at_or_after_timestamp, parse_header, set_base_offset,
    split_batches, split_stored_batches, BatchError, BatchHeader, BatchView,
};
