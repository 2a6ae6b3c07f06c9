//! Dropping records from a stored batch, as key compaction does (Kafka's
//! log cleaner): the kept records stay byte for byte as they were, at their
//! offsets; the batch keeps its header (producer id, epoch, base sequence,
//! base offset and `lastOffsetDelta`, so it still spans the same offsets and
//! the log stays contiguous); only the record count, the records section
//! (compressed again with the batch's codec), `batchLength` and the CRC
//! change. A batch left without records stays as an empty batch, as Kafka's
//! cleaner leaves one: consumers step over it.

use bytes::{BufMut, Bytes, BytesMut};

use crate::batch::{
    crc32c, header_and_records, walk_records, BatchError, CRC_OFFSET, CRC_START, HEADER_LEN,
};
use crate::recompress::{compress, Codec};

/// What [`filter_records`] shows of each record to decide whether it stays.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordView<'a> {
    /// Added to the batch's base offset.
    pub offset_delta: i64,
    /// Its own timestamp (base timestamp + delta).
    pub timestamp: i64,
    pub key: Option<&'a [u8]>,
    /// A null value: a tombstone in a compacted topic.
    pub tombstone: bool,
}

/// Visit every record of `batch` (whole, trailing bytes ignored), in order.
pub fn visit_records(
    batch: &Bytes,
    max_decompressed: usize,
    mut visit: impl FnMut(RecordView<'_>),
) -> Result<(), BatchError> {
    filter(batch, max_decompressed, |r| {
        visit(r);
        true
    })
    .map(|_| ())
}

/// `batch` with only the records `keep` says yes to; `None` when every
/// record stays (nothing to rewrite).
pub fn filter_records(
    batch: &Bytes,
    max_decompressed: usize,
    keep: impl FnMut(RecordView<'_>) -> bool,
) -> Result<Option<Bytes>, BatchError> {
    filter(batch, max_decompressed, keep)
}

fn filter(
    batch: &Bytes,
    max_decompressed: usize,
    mut keep: impl FnMut(RecordView<'_>) -> bool,
) -> Result<Option<Bytes>, BatchError> {
    let (header, section) = header_and_records(batch, max_decompressed)?;
    let mut kept: Vec<(usize, usize)> = Vec::new();
    let mut dropped = false;
    walk_records(&section, header.record_count, header.base_timestamp, |r| {
        let view = RecordView {
            offset_delta: r.offset_delta,
            timestamp: r.timestamp,
            key: r.key.as_deref(),
            tombstone: r.value.is_none(),
        };
        if keep(view) {
            kept.push((r.start, r.end));
        } else {
            dropped = true;
        }
        Ok(())
    })?;
    if !dropped {
        return Ok(None);
    }
    let mut records = Vec::with_capacity(kept.iter().map(|(s, e)| e - s).sum());
    for (s, e) in &kept {
        records.extend_from_slice(&section[*s..*e]);
    }
    let codec = Codec::from_id(header.compression())
        .ok_or(BatchError::UnsupportedCompression(header.compression()))?;
    let compressed = if kept.is_empty() {
        Vec::new()
    } else {
        compress(&records, codec).map_err(|e| BatchError::Decode(e.to_string()))?
    };
    let mut out = BytesMut::with_capacity(HEADER_LEN + compressed.len());
    out.put_slice(&batch[..HEADER_LEN]);
    out.put_slice(&compressed);
    let batch_length =
        i32::try_from(out.len() - 12).map_err(|_| BatchError::InvalidLength(i32::MAX))?;
    out[8..12].copy_from_slice(&batch_length.to_be_bytes());
    if kept.is_empty() {
        // An empty batch is stored uncompressed: there is nothing to
        // decompress.
        let attributes = i16::from_be_bytes([out[21], out[22]]) & !0x07;
        out[21..23].copy_from_slice(&attributes.to_be_bytes());
    }
    let count =
        i32::try_from(kept.len()).map_err(|_| BatchError::Decode("record count".to_owned()))?;
    out[57..61].copy_from_slice(&count.to_be_bytes());
    let crc = crc32c(&out[CRC_START..]);
    out[CRC_OFFSET..CRC_START].copy_from_slice(&crc.to_be_bytes());
    Ok(Some(out.freeze()))
}

#[cfg(test)]
mod tests {
    use kafka_protocol::records::{
        Compression, Record, RecordBatchEncoder, RecordEncodeOptions, TimestampType,
    };

    use super::*;
    use crate::batch::{
        check_stored_crc, decode_records, split_batches, split_stored_batches, BatchView,
    };

    /// A stored batch's view, its CRC checked (a filtered batch has gaps, so
    /// the produce gate's record-count check does not apply).
    fn stored(b: &Bytes) -> BatchView {
        let views = split_stored_batches(b).expect("bounds");
        assert_eq!(views.len(), 1);
        check_stored_crc(&views[0]).expect("crc");
        views[0].clone()
    }

    /// (key, value) records, offsets 0.., one batch.
    fn batch(records: &[(Option<&str>, Option<&str>)], compression: Compression) -> Bytes {
        let records: Vec<Record> = records
            .iter()
            .enumerate()
            .map(|(i, (k, v))| Record {
                transactional: false,
                control: false,
                delete_horizon: false,
                partition_leader_epoch: -1,
                producer_id: 9,
                producer_epoch: 0,
                timestamp_type: TimestampType::Creation,
                offset: i as i64,
                sequence: i as i32,
                timestamp: 1_000 + i as i64,
                key: k.map(|k| Bytes::copy_from_slice(k.as_bytes())),
                value: v.map(|v| Bytes::copy_from_slice(v.as_bytes())),
                headers: Default::default(),
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
    fn kept_records_keep_their_offsets_and_the_batch_its_span() {
        for codec in [
            Compression::None,
            Compression::Gzip,
            Compression::Snappy,
            Compression::Lz4,
            Compression::Zstd,
        ] {
            let b = batch(
                &[
                    (Some("a"), Some("1")),
                    (Some("b"), Some("2")),
                    (Some("a"), Some("3")),
                    (Some("b"), None),
                ],
                codec,
            );
            let mut seen = Vec::new();
            visit_records(&b, 1 << 20, |r| {
                seen.push((r.offset_delta, r.key.map(<[u8]>::to_vec), r.tombstone))
            })
            .expect("visit");
            assert_eq!(seen.len(), 4);
            assert!(seen[3].2, "a null value is a tombstone");
            // Keep the latest of each key.
            let out = filter_records(&b, 1 << 20, |r| r.offset_delta >= 2)
                .expect("filter")
                .expect("something dropped");
            let (h0, h) = (
                split_batches(&b).expect("valid")[0].header,
                stored(&out).header,
            );
            assert_eq!(h.record_count, 2);
            assert_eq!(
                h.last_offset_delta, h0.last_offset_delta,
                "same offset span"
            );
            assert_eq!(
                (h.producer_id, h.base_sequence),
                (h0.producer_id, h0.base_sequence)
            );
            assert_eq!(h.compression(), h0.compression());
            let left = decode_records(&out, 1 << 20).expect("decode");
            let offsets: Vec<i64> = left.iter().map(|r| r.offset_delta).collect();
            assert_eq!(offsets, [2, 3]);
            assert_eq!(left[0].value.as_deref(), Some(&b"3"[..]));
            assert_eq!(left[1].value, None);
            // Nothing dropped: no rewrite.
            assert_eq!(filter_records(&b, 1 << 20, |_| true).expect("filter"), None);
            // Everything dropped: an empty batch over the same offsets.
            let empty = filter_records(&b, 1 << 20, |_| false)
                .expect("filter")
                .expect("rewritten");
            let h = stored(&empty).header;
            assert_eq!(
                (h.record_count, h.last_offset_delta, h.compression()),
                (0, 3, 0)
            );
            assert!(decode_records(&empty, 1 << 20).expect("decode").is_empty());
        }
    }
}
