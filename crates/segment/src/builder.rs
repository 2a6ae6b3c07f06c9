//! [`SegmentBuilder`]: collects batches of many partitions and lays them
//! out as one segment object (format v1, see the crate root).
//!
//! Contract: batches are grouped into one chunk per (topic, partition) in
//! order of first appearance and kept in push order inside a chunk; each
//! stored batch has its base offset (bytes 0..8) zeroed. The builder does
//! not interpret batches otherwise, so the caller validates them and passes
//! their counts and timestamps in [`PushBatch`]. [`SegmentBuilder::finish`]
//! writes the object into a single allocation of its final size.

use std::collections::HashMap;

use bytes::{BufMut, Bytes};
use uuid::Uuid;

use crate::format::{
    footer_len, ChunkInfo, FORMAT_VERSION, HEADER_LEN, HEADER_MAGIC, TRAILER_LEN, TRAILER_MAGIC,
};

/// Bytes zeroed at the start of each stored batch (the Kafka baseOffset).
const BASE_OFFSET_LEN: usize = 8;

/// One batch to add to a segment, with the header facts the footer needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PushBatch {
    /// The whole batch as received. Should be at least 8 bytes (any Kafka
    /// batch is); only its first `min(8, len)` bytes are zeroed.
    pub bytes: Bytes,
    /// Number of records in the batch.
    pub record_count: i64,
    /// Offsets the batch occupies (`lastOffsetDelta + 1`).
    pub offset_count: i64,
    /// The batch's base timestamp.
    pub first_timestamp: i64,
    /// The batch's max timestamp.
    pub max_timestamp: i64,
}

/// Identifies a pushed batch: its index in [`BuiltSegment::batches`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BatchHandle(pub usize);

impl BatchHandle {
    /// The index into [`BuiltSegment::batches`].
    pub fn index(self) -> usize {
        self.0
    }
}

/// Where one pushed batch ended up in the final object.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct BatchLocation {
    /// Topic of the batch.
    pub topic_id: Uuid,
    /// Partition of the batch.
    pub partition: i32,
    /// Position of the batch's first byte, from the object start.
    pub byte_start: u64,
    /// Length of the batch in bytes.
    pub byte_len: u64,
}

/// A finished segment object and where everything in it lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuiltSegment {
    /// The complete object, ready to upload.
    pub bytes: Bytes,
    /// Footer entries, in object order.
    pub chunks: Vec<ChunkInfo>,
    /// Batch locations, indexed by [`BatchHandle`].
    pub batches: Vec<BatchLocation>,
}

impl BuiltSegment {
    /// Location of a pushed batch; `None` for a handle from another builder.
    pub fn location(&self, handle: BatchHandle) -> Option<&BatchLocation> {
        self.batches.get(handle.0)
    }
}

/// A chunk being assembled.
#[derive(Debug)]
struct PendingChunk {
    topic_id: Uuid,
    partition: i32,
    batches: Vec<Bytes>,
    byte_len: usize,
    record_count: i64,
    offset_count: i64,
    first_timestamp: i64,
    max_timestamp: i64,
}

/// Accumulates batches and lays them out as a segment object.
#[derive(Debug, Default)]
pub struct SegmentBuilder {
    chunks: Vec<PendingChunk>,
    chunk_index: HashMap<(Uuid, i32), usize>,
    /// Per handle: (chunk index, batch index within the chunk).
    handles: Vec<(usize, usize)>,
    data_len: usize,
}

impl SegmentBuilder {
    /// An empty builder.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a batch for `(topic_id, partition)` and returns its handle.
    pub fn push_batch(&mut self, topic_id: Uuid, partition: i32, batch: PushBatch) -> BatchHandle {
        let chunk_idx = *self
            .chunk_index
            .entry((topic_id, partition))
            .or_insert_with(|| {
                self.chunks.push(PendingChunk {
                    topic_id,
                    partition,
                    batches: Vec::new(),
                    byte_len: 0,
                    record_count: 0,
                    offset_count: 0,
                    first_timestamp: i64::MAX,
                    max_timestamp: i64::MIN,
                });
                self.chunks.len() - 1
            });
        // The index was just read from (or inserted into) the map, which
        // only ever holds valid chunk indexes.
        let chunk = &mut self.chunks[chunk_idx];
        let len = batch.bytes.len();
        chunk.byte_len += len;
        chunk.record_count = chunk.record_count.saturating_add(batch.record_count);
        chunk.offset_count = chunk.offset_count.saturating_add(batch.offset_count);
        chunk.first_timestamp = chunk.first_timestamp.min(batch.first_timestamp);
        chunk.max_timestamp = chunk.max_timestamp.max(batch.max_timestamp);
        chunk.batches.push(batch.bytes);
        self.handles.push((chunk_idx, chunk.batches.len() - 1));
        self.data_len += len;
        BatchHandle(self.handles.len() - 1)
    }

    /// True when no batch was pushed.
    pub fn is_empty(&self) -> bool {
        self.handles.is_empty()
    }

    /// Number of batches pushed so far.
    pub fn batch_count(&self) -> usize {
        self.handles.len()
    }

    /// Number of chunks (distinct partitions) so far.
    pub fn chunk_count(&self) -> usize {
        self.chunks.len()
    }

    /// Exact size of the object [`finish`](Self::finish) would produce now.
    pub fn estimated_size(&self) -> usize {
        HEADER_LEN + self.data_len + footer_len(self.chunks.len()) + TRAILER_LEN
    }

    /// Lays out the object.
    pub fn finish(self) -> BuiltSegment {
        let total = self.estimated_size();
        let mut out: Vec<u8> = Vec::with_capacity(total);
        out.put_slice(&HEADER_MAGIC);
        out.put_u16(FORMAT_VERSION);

        let mut chunks = Vec::with_capacity(self.chunks.len());
        // Start of every batch, per chunk, in push order.
        let mut starts: Vec<Vec<u64>> = Vec::with_capacity(self.chunks.len());
        for chunk in &self.chunks {
            let chunk_start = out.len();
            let mut batch_starts = Vec::with_capacity(chunk.batches.len());
            for batch in &chunk.batches {
                let start = out.len();
                batch_starts.push(start as u64);
                out.put_slice(batch);
                let zero_end = start + batch.len().min(BASE_OFFSET_LEN);
                out[start..zero_end].fill(0);
            }
            starts.push(batch_starts);
            chunks.push(ChunkInfo {
                topic_id: chunk.topic_id,
                partition: chunk.partition,
                byte_start: chunk_start as u64,
                byte_len: chunk.byte_len as u64,
                batch_count: u32::try_from(chunk.batches.len()).unwrap_or(u32::MAX),
                record_count: chunk.record_count,
                offset_count: chunk.offset_count,
                first_timestamp: chunk.first_timestamp,
                max_timestamp: chunk.max_timestamp,
            });
        }

        let footer_start = out.len();
        out.put_u32(u32::try_from(chunks.len()).unwrap_or(u32::MAX));
        for chunk in &chunks {
            out.put_slice(chunk.topic_id.as_bytes());
            out.put_i32(chunk.partition);
            out.put_u64(chunk.byte_start);
            out.put_u64(chunk.byte_len);
            out.put_u32(chunk.batch_count);
            out.put_i64(chunk.record_count);
            out.put_i64(chunk.offset_count);
            out.put_i64(chunk.first_timestamp);
            out.put_i64(chunk.max_timestamp);
        }
        let footer = &out[footer_start..];
        let footer_crc = crc32c::crc32c(footer);
        let footer_len = u32::try_from(footer.len()).unwrap_or(u32::MAX);
        out.put_u32(footer_len);
        out.put_u32(footer_crc);
        out.put_slice(&TRAILER_MAGIC);
        debug_assert_eq!(out.len(), total, "estimated_size must be exact");

        let batches = self
            .handles
            .iter()
            .map(|&(chunk_idx, batch_idx)| {
                let chunk = &self.chunks[chunk_idx];
                BatchLocation {
                    topic_id: chunk.topic_id,
                    partition: chunk.partition,
                    byte_start: starts[chunk_idx][batch_idx],
                    byte_len: chunk.batches[batch_idx].len() as u64,
                }
            })
            .collect();

        BuiltSegment {
            bytes: Bytes::from(out),
            chunks,
            batches,
        }
    }
}
