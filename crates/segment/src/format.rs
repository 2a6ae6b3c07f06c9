//! Constants and the footer entry type shared by the segment builder and
//! reader. The byte layout itself is documented at the crate root.

use std::ops::Range;

use uuid::Uuid;

/// Magic at the start of every segment object.
pub const HEADER_MAGIC: [u8; 8] = *b"TRIBSEG\0";
/// Magic at the very end of every segment object.
pub const TRAILER_MAGIC: [u8; 8] = *b"TRIBEND\0";
/// Format version written by [`crate::SegmentBuilder`].
pub const FORMAT_VERSION: u16 = 1;
/// Header length: magic (8) + version (2).
pub const HEADER_LEN: usize = 10;
/// Trailer length: footer length (4) + footer CRC32C (4) + magic (8).
pub const TRAILER_LEN: usize = 16;
/// Footer bytes before the entries: the chunk count.
pub(crate) const FOOTER_COUNT_LEN: usize = 4;
/// Length of one footer entry.
pub const FOOTER_ENTRY_LEN: usize = 16 + 4 + 8 + 8 + 4 + 8 + 8 + 8 + 8;

/// One partition's chunk: a footer entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ChunkInfo {
    /// Topic the chunk belongs to.
    pub topic_id: Uuid,
    /// Partition within the topic.
    pub partition: i32,
    /// Position of the chunk's first byte, from the object start.
    pub byte_start: u64,
    /// Length of the chunk in bytes.
    pub byte_len: u64,
    /// Number of batches in the chunk.
    pub batch_count: u32,
    /// Sum of the batches' record counts.
    pub record_count: i64,
    /// Sum of the batches' offset counts (`lastOffsetDelta + 1`): how far
    /// the partition's next offset advances when the chunk is committed.
    pub offset_count: i64,
    /// Smallest base timestamp of the chunk's batches.
    pub first_timestamp: i64,
    /// Largest max timestamp of the chunk's batches.
    pub max_timestamp: i64,
}

impl ChunkInfo {
    /// The chunk's byte range in the object (saturating; readers reject
    /// overflowing entries before handing them out).
    pub fn byte_range(&self) -> Range<u64> {
        self.byte_start..self.byte_start.saturating_add(self.byte_len)
    }
}

/// Footer length for `chunks` entries.
pub(crate) fn footer_len(chunks: usize) -> usize {
    FOOTER_COUNT_LEN + chunks * FOOTER_ENTRY_LEN
}
