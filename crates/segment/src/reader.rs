//! Reading segment objects: header, trailer and footer parsing with full
//! validation (magic, version, CRC32C, lengths, chunk bounds).
//!
//! Contract: every function here returns a [`SegmentError`] for malformed
//! input and never panics or slices out of range. Whole-object readers use
//! [`read_footer`]; ranged readers use [`parse_trailer`] on the last
//! [`TRAILER_LEN`] bytes, fetch the footer, then [`parse_footer`] and
//! [`check_chunk_bounds`] with the object length.
//!
//! Only format v1 exists. When a v2 is introduced, this v1 reader stays
//! (dispatching on the version) so existing objects remain readable.

use bytes::{Buf, Bytes};
use uuid::Uuid;

use crate::format::{
    ChunkInfo, FOOTER_COUNT_LEN, FOOTER_ENTRY_LEN, FORMAT_VERSION, HEADER_LEN, HEADER_MAGIC,
    TRAILER_LEN, TRAILER_MAGIC,
};

/// Why a segment object (or part of one) could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SegmentError {
    /// The bytes end before the structure they should hold.
    #[error("segment truncated needed={needed} available={available}")]
    Truncated {
        /// Bytes the structure needs.
        needed: u64,
        /// Bytes there are.
        available: u64,
    },
    /// The object does not start with `TRIBSEG\0`.
    #[error("segment header magic mismatch")]
    BadHeaderMagic,
    /// The object does not end with `TRIBEND\0`.
    #[error("segment trailer magic mismatch")]
    BadTrailerMagic,
    /// The header names a format version this reader does not know.
    #[error("unsupported segment format version version={0}")]
    UnsupportedVersion(u16),
    /// The footer's CRC32C does not match the trailer.
    #[error("segment footer checksum mismatch expected={expected:#010x} actual={actual:#010x}")]
    ChecksumMismatch {
        /// CRC stored in the trailer.
        expected: u32,
        /// CRC computed over the footer.
        actual: u32,
    },
    /// The footer length disagrees with its chunk count.
    #[error("segment footer length mismatch footer_len={footer_len} chunk_count={chunk_count}")]
    FooterLength {
        /// Length of the footer bytes.
        footer_len: u64,
        /// Chunk count stored in the footer.
        chunk_count: u32,
    },
    /// A chunk lies outside the chunk area or overlaps the previous one.
    #[error(
        "segment chunk out of bounds chunk={index} byte_start={byte_start} byte_len={byte_len}"
    )]
    ChunkOutOfBounds {
        /// Position of the chunk in the footer.
        index: usize,
        /// Its claimed start.
        byte_start: u64,
        /// Its claimed length.
        byte_len: u64,
    },
}

fn truncated(needed: usize, available: usize) -> SegmentError {
    SegmentError::Truncated {
        needed: needed as u64,
        available: available as u64,
    }
}

/// Checks the 10-byte header at the start of `header` (magic and version)
/// and returns the format version.
pub fn parse_header(header: &[u8]) -> Result<u16, SegmentError> {
    let Some(h) = header.first_chunk::<HEADER_LEN>() else {
        return Err(truncated(HEADER_LEN, header.len()));
    };
    let (magic, version) = h.split_at(HEADER_MAGIC.len());
    if magic != HEADER_MAGIC {
        return Err(SegmentError::BadHeaderMagic);
    }
    let version = u16::from_be_bytes([version[0], version[1]]);
    if version != FORMAT_VERSION {
        return Err(SegmentError::UnsupportedVersion(version));
    }
    Ok(version)
}

/// Parses the trailer held in the last [`TRAILER_LEN`] bytes of `tail` and
/// returns `(footer_len, footer_crc)`. `tail` may be a longer suffix of the
/// object (e.g. one GET covering footer and trailer).
pub fn parse_trailer(tail: &[u8]) -> Result<(u32, u32), SegmentError> {
    let Some(t) = tail.last_chunk::<TRAILER_LEN>() else {
        return Err(truncated(TRAILER_LEN, tail.len()));
    };
    let mut b: &[u8] = t;
    // `t` is exactly TRAILER_LEN bytes: 4 + 4 + 8.
    let footer_len = b.get_u32();
    let crc = b.get_u32();
    if b != TRAILER_MAGIC {
        return Err(SegmentError::BadTrailerMagic);
    }
    Ok((footer_len, crc))
}

/// Parses footer bytes (exactly `footer_len` bytes, as named by the
/// trailer), checking them against `crc` first.
///
/// Also checks that each chunk starts after the header, does not overflow,
/// and does not overlap the previous one. Whether the chunks end before the
/// footer depends on the object length: see [`check_chunk_bounds`].
pub fn parse_footer(footer: &[u8], crc: u32) -> Result<Vec<ChunkInfo>, SegmentError> {
    let actual = crc32c::crc32c(footer);
    if actual != crc {
        return Err(SegmentError::ChecksumMismatch {
            expected: crc,
            actual,
        });
    }
    let Some(count) = footer.first_chunk::<FOOTER_COUNT_LEN>() else {
        return Err(truncated(FOOTER_COUNT_LEN, footer.len()));
    };
    let chunk_count = u32::from_be_bytes(*count);
    let expected_len = usize::try_from(chunk_count)
        .ok()
        .and_then(|n| n.checked_mul(FOOTER_ENTRY_LEN))
        .and_then(|n| n.checked_add(FOOTER_COUNT_LEN));
    if expected_len != Some(footer.len()) {
        return Err(SegmentError::FooterLength {
            footer_len: footer.len() as u64,
            chunk_count,
        });
    }

    let mut chunks = Vec::with_capacity(footer.len() / FOOTER_ENTRY_LEN);
    let mut prev_end = HEADER_LEN as u64;
    for (index, entry) in footer[FOOTER_COUNT_LEN..]
        .chunks_exact(FOOTER_ENTRY_LEN)
        .enumerate()
    {
        // `entry` is exactly FOOTER_ENTRY_LEN bytes, which the reads below
        // consume exactly.
        let mut b = entry;
        let mut topic = [0u8; 16];
        b.copy_to_slice(&mut topic);
        let chunk = ChunkInfo {
            topic_id: Uuid::from_bytes(topic),
            partition: b.get_i32(),
            byte_start: b.get_u64(),
            byte_len: b.get_u64(),
            batch_count: b.get_u32(),
            record_count: b.get_i64(),
            offset_count: b.get_i64(),
            first_timestamp: b.get_i64(),
            max_timestamp: b.get_i64(),
        };
        let out_of_bounds = SegmentError::ChunkOutOfBounds {
            index,
            byte_start: chunk.byte_start,
            byte_len: chunk.byte_len,
        };
        let Some(end) = chunk.byte_start.checked_add(chunk.byte_len) else {
            return Err(out_of_bounds);
        };
        if chunk.byte_start < prev_end {
            return Err(out_of_bounds);
        }
        prev_end = end;
        chunks.push(chunk);
    }
    Ok(chunks)
}

/// Checks that every chunk ends before the footer of an object of
/// `object_len` bytes whose trailer names `footer_len`.
pub fn check_chunk_bounds(
    chunks: &[ChunkInfo],
    object_len: u64,
    footer_len: u32,
) -> Result<(), SegmentError> {
    let overhead = (HEADER_LEN + TRAILER_LEN) as u64 + u64::from(footer_len);
    let Some(data_end) = object_len
        .checked_sub(TRAILER_LEN as u64 + u64::from(footer_len))
        .filter(|&end| end >= HEADER_LEN as u64)
    else {
        return Err(SegmentError::Truncated {
            needed: overhead,
            available: object_len,
        });
    };
    for (index, chunk) in chunks.iter().enumerate() {
        let in_bounds = chunk.byte_start >= HEADER_LEN as u64
            && chunk
                .byte_start
                .checked_add(chunk.byte_len)
                .is_some_and(|end| end <= data_end);
        if !in_bounds {
            return Err(SegmentError::ChunkOutOfBounds {
                index,
                byte_start: chunk.byte_start,
                byte_len: chunk.byte_len,
            });
        }
    }
    Ok(())
}

/// Validates a whole segment object (header, trailer, footer, chunk bounds)
/// and returns its chunks.
pub fn read_footer(object: &[u8]) -> Result<Vec<ChunkInfo>, SegmentError> {
    let min_len = HEADER_LEN + FOOTER_COUNT_LEN + TRAILER_LEN;
    if object.len() < min_len {
        return Err(truncated(min_len, object.len()));
    }
    parse_header(object)?;
    let (footer_len, crc) = parse_trailer(object)?;
    let footer_end = object.len() - TRAILER_LEN;
    let footer_start = usize::try_from(footer_len)
        .ok()
        .and_then(|len| footer_end.checked_sub(len))
        .filter(|&start| start >= HEADER_LEN);
    let Some(footer_start) = footer_start else {
        return Err(SegmentError::Truncated {
            needed: (HEADER_LEN + TRAILER_LEN) as u64 + u64::from(footer_len),
            available: object.len() as u64,
        });
    };
    let chunks = parse_footer(&object[footer_start..footer_end], crc)?;
    check_chunk_bounds(&chunks, object.len() as u64, footer_len)?;
    Ok(chunks)
}

/// The bytes of `chunk` within a whole `object` (zero-copy), or an error if
/// the chunk does not lie inside it.
pub fn chunk_bytes(object: &Bytes, chunk: &ChunkInfo) -> Result<Bytes, SegmentError> {
    let range = usize::try_from(chunk.byte_start).ok().and_then(|start| {
        let len = usize::try_from(chunk.byte_len).ok()?;
        let end = start.checked_add(len)?;
        (end <= object.len()).then_some(start..end)
    });
    match range {
        Some(range) => Ok(object.slice(range)),
        None => Err(SegmentError::ChunkOutOfBounds {
            index: 0,
            byte_start: chunk.byte_start,
            byte_len: chunk.byte_len,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::builder::{PushBatch, SegmentBuilder};

    fn fake_batch(tag: u8, len: usize, records: i64, ts: i64) -> PushBatch {
        let mut bytes = vec![tag; len];
        // A non-zero "base offset" that the builder must zero.
        bytes[..8].copy_from_slice(&0x0102_0304_0506_0708_i64.to_be_bytes());
        PushBatch {
            bytes: Bytes::from(bytes),
            record_count: records,
            offset_count: records + 1,
            first_timestamp: ts,
            max_timestamp: ts + 10,
        }
    }

    fn topic(n: u128) -> Uuid {
        Uuid::from_u128(n)
    }

    fn small_object() -> Bytes {
        let mut b = SegmentBuilder::new();
        b.push_batch(topic(1), 0, fake_batch(0xa0, 20, 2, 100));
        b.push_batch(topic(2), 5, fake_batch(0xb0, 9, 1, 50));
        b.push_batch(topic(1), 0, fake_batch(0xa1, 12, 3, 90));
        b.finish().bytes
    }

    #[test]
    fn round_trip_three_partitions_interleaved() {
        let mut b = SegmentBuilder::new();
        assert!(b.is_empty());
        let plan = [
            (topic(1), 0, 0xa0u8, 30usize, 3i64, 1_000i64),
            (topic(1), 1, 0xb0, 25, 1, 1_010),
            (topic(2), 0, 0xc0, 40, 4, 990),
            (topic(1), 0, 0xa1, 31, 2, 1_020),
            (topic(2), 0, 0xc1, 10, 1, 980),
            (topic(1), 1, 0xb1, 8, 1, 1_005),
            (topic(1), 0, 0xa2, 64, 7, 1_030),
        ];
        let mut handles = Vec::new();
        for &(t, p, tag, len, records, ts) in &plan {
            handles.push(b.push_batch(t, p, fake_batch(tag, len, records, ts)));
            let size_now = b.estimated_size();
            assert!(size_now > 0);
        }
        assert_eq!(b.batch_count(), plan.len());
        assert_eq!(b.chunk_count(), 3);
        let estimated = b.estimated_size();
        let built = b.finish();
        assert_eq!(built.bytes.len(), estimated);

        let chunks = read_footer(&built.bytes).expect("read footer");
        assert_eq!(chunks, built.chunks);
        let keys: Vec<_> = chunks.iter().map(|c| (c.topic_id, c.partition)).collect();
        assert_eq!(keys, vec![(topic(1), 0), (topic(1), 1), (topic(2), 0)]);

        // Chunk 0: batches a0, a1, a2.
        let c0 = &chunks[0];
        assert_eq!(c0.byte_start, HEADER_LEN as u64);
        assert_eq!(c0.byte_len, 30 + 31 + 64);
        assert_eq!(c0.batch_count, 3);
        assert_eq!(c0.record_count, 12);
        assert_eq!(c0.offset_count, 15);
        assert_eq!(c0.first_timestamp, 1_000);
        assert_eq!(c0.max_timestamp, 1_040);
        // Chunks are contiguous.
        assert_eq!(chunks[1].byte_start, c0.byte_start + c0.byte_len);
        assert_eq!(chunks[1].first_timestamp, 1_005);
        assert_eq!(chunks[2].first_timestamp, 980);
        assert_eq!(chunks[2].max_timestamp, 1_000);
        assert_eq!(chunks[2].record_count, 5);

        // Every batch is where its location says, base offset zeroed,
        // content intact, and inside its chunk.
        for (handle, &(t, p, tag, len, _, _)) in handles.iter().zip(&plan) {
            let loc = built.location(*handle).expect("location");
            assert_eq!((loc.topic_id, loc.partition), (t, p));
            assert_eq!(loc.byte_len, len as u64);
            let start = loc.byte_start as usize;
            let stored = &built.bytes[start..start + len];
            assert_eq!(&stored[..8], &[0u8; 8]);
            assert!(stored[8..].iter().all(|&b| b == tag));
            let chunk = chunks
                .iter()
                .find(|c| (c.topic_id, c.partition) == (t, p))
                .expect("chunk");
            assert!(chunk.byte_range().contains(&loc.byte_start));
            assert!(loc.byte_start + loc.byte_len <= chunk.byte_range().end);
        }
        // Within a chunk, push order is kept.
        let a: Vec<u64> = [0, 3, 6]
            .iter()
            .map(|&i| built.batches[i].byte_start)
            .collect();
        assert!(a.windows(2).all(|w| w[0] < w[1]));

        // chunk_bytes returns exactly the chunk.
        let bytes = chunk_bytes(&built.bytes, c0).expect("chunk bytes");
        assert_eq!(bytes.len() as u64, c0.byte_len);

        // The two-GET path agrees with the whole-object path.
        let (footer_len, crc) =
            parse_trailer(&built.bytes[built.bytes.len() - TRAILER_LEN..]).expect("trailer");
        let end = built.bytes.len() - TRAILER_LEN;
        let footer = &built.bytes[end - footer_len as usize..end];
        let ranged = parse_footer(footer, crc).expect("footer");
        check_chunk_bounds(&ranged, built.bytes.len() as u64, footer_len).expect("bounds");
        assert_eq!(ranged, chunks);
    }

    #[test]
    fn empty_segment_round_trips() {
        let b = SegmentBuilder::new();
        assert_eq!(b.estimated_size(), HEADER_LEN + 4 + TRAILER_LEN);
        let built = b.finish();
        assert_eq!(read_footer(&built.bytes).expect("read"), vec![]);
        assert!(built.batches.is_empty());
    }

    #[test]
    fn every_truncation_is_an_error() {
        let object = small_object();
        assert!(read_footer(&object).is_ok());
        for len in 0..object.len() {
            assert!(read_footer(&object[..len]).is_err(), "prefix len {len}");
            assert!(
                read_footer(&object[object.len() - len..]).is_err(),
                "suffix len {len}"
            );
        }
    }

    #[test]
    fn footer_byte_flip_is_checksum_error() {
        let object = small_object();
        let (footer_len, _) = parse_trailer(&object).expect("trailer");
        let end = object.len() - TRAILER_LEN;
        let start = end - footer_len as usize;
        for i in start..end {
            for bit in 0..8 {
                let mut bad = object.to_vec();
                bad[i] ^= 1 << bit;
                match read_footer(&bad) {
                    Err(SegmentError::ChecksumMismatch { .. }) => {}
                    other => panic!("byte {i} bit {bit}: {other:?}"),
                }
            }
        }
    }

    #[test]
    fn every_byte_flip_outside_chunks_is_an_error() {
        let object = small_object();
        let chunk_end = read_footer(&object)
            .expect("read")
            .last()
            .expect("chunk")
            .byte_range()
            .end as usize;
        let regions = (0..HEADER_LEN).chain(chunk_end..object.len());
        for i in regions {
            let mut bad = object.to_vec();
            bad[i] ^= 0x10;
            assert!(read_footer(&bad).is_err(), "byte {i}");
        }
    }

    #[test]
    fn header_errors() {
        let object = small_object();
        let mut bad = object.to_vec();
        bad[0] = b'X';
        assert_eq!(read_footer(&bad), Err(SegmentError::BadHeaderMagic));
        let mut bad = object.to_vec();
        bad[8..10].copy_from_slice(&2u16.to_be_bytes());
        assert_eq!(read_footer(&bad), Err(SegmentError::UnsupportedVersion(2)));
        assert_eq!(parse_header(&object[..HEADER_LEN]), Ok(1));
    }

    #[test]
    fn trailer_errors() {
        assert!(matches!(
            parse_trailer(&[0u8; 15]),
            Err(SegmentError::Truncated { .. })
        ));
        let mut t = [0u8; 16];
        assert_eq!(parse_trailer(&t), Err(SegmentError::BadTrailerMagic));
        t[8..].copy_from_slice(&TRAILER_MAGIC);
        t[..4].copy_from_slice(&7u32.to_be_bytes());
        assert_eq!(parse_trailer(&t), Ok((7, 0)));
        // Huge footer length against a small object.
        let mut bad = small_object().to_vec();
        let at = bad.len() - TRAILER_LEN;
        bad[at..at + 4].copy_from_slice(&u32::MAX.to_be_bytes());
        assert!(matches!(
            read_footer(&bad),
            Err(SegmentError::Truncated { .. })
        ));
    }

    /// Builds a footer with a valid CRC from raw entries.
    fn footer_with(entries: &[(u64, u64)]) -> (Vec<u8>, u32) {
        let mut f = Vec::new();
        f.extend_from_slice(&(entries.len() as u32).to_be_bytes());
        for &(start, len) in entries {
            f.extend_from_slice(&[7u8; 16]);
            f.extend_from_slice(&0i32.to_be_bytes());
            f.extend_from_slice(&start.to_be_bytes());
            f.extend_from_slice(&len.to_be_bytes());
            f.extend_from_slice(&[0u8; 4 + 8 * 4]);
        }
        let crc = crc32c::crc32c(&f);
        (f, crc)
    }

    #[test]
    fn footer_structure_errors() {
        let (f, crc) = footer_with(&[(10, 5), (15, 5)]);
        assert_eq!(parse_footer(&f, crc).expect("ok").len(), 2);

        // Count disagrees with length.
        let mut bad = f.clone();
        bad[3] = 3;
        let crc_bad = crc32c::crc32c(&bad);
        assert!(matches!(
            parse_footer(&bad, crc_bad),
            Err(SegmentError::FooterLength { chunk_count: 3, .. })
        ));
        let short = &f[..2];
        assert!(matches!(
            parse_footer(short, crc32c::crc32c(short)),
            Err(SegmentError::Truncated { .. })
        ));

        for entries in [
            vec![(0u64, 5u64)],     // inside the header
            vec![(10, 5), (12, 5)], // overlap
            vec![(10, u64::MAX)],   // overflow
            vec![(u64::MAX, 1)],    // overflow
        ] {
            let (f, crc) = footer_with(&entries);
            assert!(
                matches!(
                    parse_footer(&f, crc),
                    Err(SegmentError::ChunkOutOfBounds { .. })
                ),
                "{entries:?}"
            );
        }

        // In range for the footer, but past the end of the object.
        let (f, crc) = footer_with(&[(10, 500)]);
        let chunks = parse_footer(&f, crc).expect("ok");
        assert!(matches!(
            check_chunk_bounds(&chunks, 200, f.len() as u32),
            Err(SegmentError::ChunkOutOfBounds { index: 0, .. })
        ));
        let exact_len = 10 + 500 + f.len() as u64 + 16;
        assert!(check_chunk_bounds(&chunks, exact_len, f.len() as u32).is_ok());
        assert!(check_chunk_bounds(&chunks, exact_len - 1, f.len() as u32).is_err());
        assert!(matches!(
            check_chunk_bounds(&chunks, 20, f.len() as u32),
            Err(SegmentError::Truncated { .. })
        ));
        assert!(matches!(
            chunk_bytes(&Bytes::from_static(&[0u8; 20]), &chunks[0]),
            Err(SegmentError::ChunkOutOfBounds { .. })
        ));
    }

    #[test]
    fn short_batches_are_zeroed_not_rejected() {
        let mut b = SegmentBuilder::new();
        let h = b.push_batch(
            topic(9),
            0,
            PushBatch {
                bytes: Bytes::from_static(&[0xee; 3]),
                record_count: 1,
                offset_count: 1,
                first_timestamp: 0,
                max_timestamp: 0,
            },
        );
        let built = b.finish();
        let loc = built.location(h).expect("loc");
        assert_eq!(loc.byte_len, 3);
        let start = loc.byte_start as usize;
        assert_eq!(&built.bytes[start..start + 3], &[0, 0, 0]);
        assert!(read_footer(&built.bytes).is_ok());
    }
}
