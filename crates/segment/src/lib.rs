//! The immutable segment object format: one object holding record batches
//! of many partitions, grouped into one chunk per partition, with a footer
//! that makes the object self-describing. Builder and reader over `Bytes`;
//! no I/O.
//!
//! Format v1 (all integers big-endian):
//!
//! ```text
//! header   magic b"TRIBSEG\0" (8) · format version u16 (= 1)          10 bytes
//! chunks   per (topic_id, partition), in order of first appearance:
//!          its batches concatenated in push order, each with the
//!          baseOffset field (bytes 0..8) written as 0
//! footer   chunk count u32, then per chunk (72 bytes):
//!          topic_id [16] · partition i32 · byte_start u64 (from object
//!          start) · byte_len u64 · batch_count u32 · record_count i64 ·
//!          offset_count i64 · first_timestamp i64 · max_timestamp i64
//! trailer  footer length u32 (excluding trailer) · CRC32C of the footer
//!          u32 · magic b"TRIBEND\0" (8)                               16 bytes
//! ```
//!
//! A reader can fetch the trailer and footer with two ranged GETs
//! ([`parse_trailer`], then [`parse_footer`] and [`check_chunk_bounds`]),
//! or parse a whole object with [`read_footer`].
//!
//! Compatibility: the golden-bytes test (`tests/golden.rs`) pins v1. A
//! format change bumps [`FORMAT_VERSION`] and keeps the v1 reader, because
//! segments are immutable and old objects stay readable for as long as
//! they are retained. The version lives in the header only, so a new version
//! must also change the trailer magic (or readers must fetch the header)
//! for tail-only readers to tell the versions apart.

mod builder;
mod format;
mod reader;

pub use builder::{BatchHandle, BatchLocation, BuiltSegment, PushBatch, SegmentBuilder};
pub use format::{
    ChunkInfo, FOOTER_ENTRY_LEN, FORMAT_VERSION, HEADER_LEN, HEADER_MAGIC, TRAILER_LEN,
    TRAILER_MAGIC,
};
pub use reader::{
    check_chunk_bounds, chunk_bytes, parse_footer, parse_header, parse_trailer, read_footer,
    SegmentError,
};
