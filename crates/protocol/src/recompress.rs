//! Recompressing a batch with a topic's `compression.type`, as Kafka's
//! broker does when the topic's codec differs from the producer's.
//!
//! Only the records section changes: it is decompressed (bounded) and
//! compressed again with the topic's codec and level; every header field
//! (producer id, epoch, sequence, timestamps, offsets, transactional and
//! timestamp-type bits) is kept, the codec bits, `batchLength` and the CRC
//! are rewritten. The records inside are byte-for-byte those the producer
//! sent, so idempotence, transactions and timestamp lookups are unaffected.
//!
//! The frames are those Kafka's own clients write, so every consumer reads
//! them: gzip, snappy in snappy-java's framing (which librdkafka reads too),
//! the LZ4 frame format with independent 64 KiB blocks and no checksums,
//! and a plain zstd frame.

use std::io::Write;

use bytes::{BufMut, Bytes, BytesMut};

use crate::batch::{
    crc32c, records_section, whole_batch, BatchError, CRC_OFFSET, CRC_START, HEADER_LEN,
};

/// A codec a topic can ask for (`compression.type`), with its level.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Codec {
    None,
    /// `compression.gzip.level`: 1-9, or -1 for the codec's default.
    Gzip(i32),
    Snappy,
    /// `compression.lz4.level`: 1-17.
    Lz4(i32),
    /// `compression.zstd.level`.
    Zstd(i32),
}

impl Codec {
    /// The codec of a batch's attribute bits, at its default level (`None`
    /// for an id Kafka does not define).
    pub fn from_id(id: u8) -> Option<Codec> {
        Some(match id {
            0 => Codec::None,
            1 => Codec::Gzip(-1),
            2 => Codec::Snappy,
            3 => Codec::Lz4(9),
            4 => Codec::Zstd(3),
            _ => return None,
        })
    }

    /// The batch attribute bits of this codec.
    pub fn id(self) -> u8 {
        match self {
            Codec::None => 0,
            Codec::Gzip(_) => 1,
            Codec::Snappy => 2,
            Codec::Lz4(_) => 3,
            Codec::Zstd(_) => 4,
        }
    }
}

/// Bytes of one snappy-java block (its default).
const SNAPPY_BLOCK: usize = 32 * 1024;
/// snappy-java's stream header: magic, version 1, compatible version 1.
const XERIAL_HEADER: [u8; 16] = [
    0x82, b'S', b'N', b'A', b'P', b'P', b'Y', 0, 0, 0, 0, 1, 0, 0, 0, 1,
];

/// `batch` (one whole batch; trailing bytes ignored) with its records
/// compressed by `codec`; the batch itself when it already uses that codec.
/// The records are decompressed into at most `max_decompressed` bytes
/// ([`BatchError::TooLarge`] beyond).
pub fn recompress(
    batch: &Bytes,
    codec: Codec,
    max_decompressed: usize,
) -> Result<Bytes, BatchError> {
    let (header, total) = whole_batch(batch)?;
    if header.compression() == codec.id() {
        return Ok(batch.slice(..total));
    }
    let records = records_section(batch, &header, total, max_decompressed)?;
    let compressed = compress(&records, codec).map_err(|e| BatchError::Decode(e.to_string()))?;
    let mut out = BytesMut::with_capacity(HEADER_LEN + compressed.len());
    out.put_slice(&batch[..HEADER_LEN]);
    out.put_slice(&compressed);
    let batch_length =
        i32::try_from(out.len() - 12).map_err(|_| BatchError::InvalidLength(i32::MAX))?;
    out[8..12].copy_from_slice(&batch_length.to_be_bytes());
    let attributes = (i16::from_be_bytes([out[21], out[22]]) & !0x07) | i16::from(codec.id());
    out[21..23].copy_from_slice(&attributes.to_be_bytes());
    let crc = crc32c(&out[CRC_START..]);
    out[CRC_OFFSET..CRC_START].copy_from_slice(&crc.to_be_bytes());
    Ok(out.freeze())
}

pub(crate) fn compress(records: &[u8], codec: Codec) -> std::io::Result<Vec<u8>> {
    Ok(match codec {
        Codec::None => records.to_vec(),
        Codec::Gzip(level) => {
            let level = match u32::try_from(level) {
                Ok(l) if (1..=9).contains(&l) => flate2::Compression::new(l),
                _ => flate2::Compression::default(),
            };
            let mut e = flate2::write::GzEncoder::new(Vec::new(), level);
            e.write_all(records)?;
            e.finish()?
        }
        Codec::Snappy => {
            let mut out = XERIAL_HEADER.to_vec();
            let mut encoder = snap::raw::Encoder::new();
            for block in records.chunks(SNAPPY_BLOCK) {
                let compressed = encoder.compress_vec(block).map_err(std::io::Error::other)?;
                let len = i32::try_from(compressed.len()).map_err(std::io::Error::other)?;
                out.extend_from_slice(&len.to_be_bytes());
                out.extend_from_slice(&compressed);
            }
            out
        }
        Codec::Lz4(level) => {
            let mut e = lz4::EncoderBuilder::new()
                .block_size(lz4::BlockSize::Max64KB)
                .block_mode(lz4::BlockMode::Independent)
                .checksum(lz4::ContentChecksum::NoChecksum)
                .level(u32::try_from(level).unwrap_or(9))
                .build(Vec::new())?;
            e.write_all(records)?;
            let (out, result) = e.finish();
            result?;
            out
        }
        Codec::Zstd(level) => zstd::bulk::compress(records, level)?,
    })
}

#[cfg(test)]
mod tests {
    use kafka_protocol::records::{
        Compression, Record, RecordBatchEncoder, RecordEncodeOptions, TimestampType,
    };

    use super::*;
    use crate::batch::{decode_records, split_batches};

    fn batch(compression: Compression) -> Bytes {
        let records: Vec<Record> = (0..200)
            .map(|i| Record {
                transactional: true,
                control: false,
                delete_horizon: false,
                partition_leader_epoch: 3,
                producer_id: 77,
                producer_epoch: 2,
                timestamp_type: TimestampType::Creation,
                offset: i,
                sequence: 10 + i as i32,
                timestamp: 1_700_000_000_000 + (i % 7),
                key: Some(Bytes::from(format!("key-{}", i % 13))),
                value: Some(Bytes::from(format!("value {i} ").repeat(40))),
                headers: [(
                    kafka_protocol::protocol::StrBytes::from_static_str("h"),
                    Some(Bytes::from_static(b"x")),
                )]
                .into_iter()
                .collect(),
            })
            .collect();
        let mut buf = BytesMut::new();
        RecordBatchEncoder::encode(
            &mut buf,
            &records,
            &RecordEncodeOptions {
                version: 2,
                compression,
            },
        )
        .expect("encode");
        buf.freeze()
    }

    #[test]
    fn every_codec_to_every_codec_keeps_header_and_records() {
        let from = [
            Compression::None,
            Compression::Gzip,
            Compression::Snappy,
            Compression::Lz4,
            Compression::Zstd,
        ];
        let to = [
            Codec::None,
            Codec::Gzip(-1),
            Codec::Gzip(9),
            Codec::Snappy,
            Codec::Lz4(1),
            Codec::Lz4(17),
            Codec::Zstd(3),
            Codec::Zstd(-5),
        ];
        for f in from {
            let original = batch(f);
            let want = decode_records(&original, 1 << 24).expect("decode original");
            let h0 = split_batches(&original).expect("valid")[0].header;
            for t in to {
                let out = recompress(&original, t, 1 << 24).expect("recompress");
                let views = split_batches(&out).expect("a valid batch (CRC, length)");
                assert_eq!(views.len(), 1);
                let h = views[0].header;
                assert_eq!(h.compression(), t.id(), "{f:?} -> {t:?}");
                assert_eq!(
                    (
                        h.producer_id,
                        h.producer_epoch,
                        h.base_sequence,
                        h.record_count
                    ),
                    (
                        h0.producer_id,
                        h0.producer_epoch,
                        h0.base_sequence,
                        h0.record_count
                    )
                );
                assert_eq!(
                    (h.base_timestamp, h.max_timestamp),
                    (h0.base_timestamp, h0.max_timestamp)
                );
                assert_eq!(h.is_transactional(), h0.is_transactional());
                assert_eq!(
                    decode_records(&out, 1 << 24).expect("decode"),
                    want,
                    "{f:?} -> {t:?}"
                );
            }
        }
    }

    #[test]
    fn kafka_protocol_reads_what_we_write() {
        // An independent decoder (kafka-protocol's, as clients use) agrees.
        for t in [Codec::Gzip(5), Codec::Snappy, Codec::Lz4(9), Codec::Zstd(3)] {
            let mut out = recompress(&batch(Compression::None), t, 1 << 24).expect("recompress");
            let records = kafka_protocol::records::RecordBatchDecoder::decode(&mut out)
                .expect("kafka-protocol decodes it");
            assert_eq!(records.records.len(), 200, "{t:?}");
            assert_eq!(records.records[5].producer_id, 77);
        }
    }

    #[test]
    fn the_bound_holds_and_same_codec_is_untouched() {
        let original = batch(Compression::Zstd);
        assert_eq!(
            recompress(&original, Codec::Zstd(9), 1 << 24).expect("same codec"),
            original
        );
        assert!(matches!(
            recompress(&original, Codec::Gzip(1), 1_000),
            Err(BatchError::TooLarge { limit: 1_000 })
        ));
    }
}
