//! Record batches as a Produce request carries them (validation) and as a
//! segment chunk stores them (splitting, record decoding and decompression
//! for ListOffsets by timestamp). The first input byte is a flag: with bit 0
//! set, every batch's CRC32C is recomputed first so the fuzzer gets past
//! the checksum to the checks behind it.
#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use tributary_protocol::batch::{
    count_records, crc32c, first_offset_at_or_after_timestamp, scan_records, split_batches,
    split_stored_batches, CRC_OFFSET, CRC_START, HEADER_LEN, LOG_OVERHEAD,
};
use tributary_protocol::filter::filter_records;
use tributary_protocol::recompress::{recompress, Codec};

tributary_fuzz::peak_alloc!();

/// The timestamp lookup streams the records through the decompressor, so
/// its memory is the decompressor's state (at most a 2^23-byte zstd window
/// or two 4 MiB lz4 blocks) plus, for snappy, at most 22 bytes per input
/// byte; never the decompressed size.
const DECOMPRESSOR_STATE: usize = 12 << 20;
const PER_BYTE: usize = 32;

fn fix_crcs(buf: &mut [u8]) {
    let mut pos = 0;
    while pos + HEADER_LEN <= buf.len() {
        let len = i32::from_be_bytes([buf[pos + 8], buf[pos + 9], buf[pos + 10], buf[pos + 11]]);
        let Ok(len) = usize::try_from(len) else {
            return;
        };
        let end = pos + LOG_OVERHEAD + len;
        if len < HEADER_LEN - LOG_OVERHEAD || end > buf.len() {
            return;
        }
        let crc = crc32c(&buf[pos + CRC_START..end]);
        buf[pos + CRC_OFFSET..pos + CRC_OFFSET + 4].copy_from_slice(&crc.to_be_bytes());
        pos = end;
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&flags, rest)) = data.split_first() else {
        return;
    };
    let mut buf = rest.to_vec();
    if flags & 1 != 0 {
        fix_crcs(&mut buf);
    }
    let len = buf.len();
    let records = Bytes::from(buf);
    let _ = count_records(&records);
    let produced =
        tributary_fuzz::bounded("split_batches", len, 4, 4 << 10, || split_batches(&records));
    let stored = tributary_fuzz::bounded("split_stored_batches", len, 4, 4 << 10, || {
        split_stored_batches(&records)
    });
    if let Ok(produced) = &produced {
        assert_eq!(
            Ok(produced),
            stored.as_ref(),
            "a valid batch must split the same when stored"
        );
    }
    let Ok(views) = stored else { return };
    for view in views.iter().take(4) {
        let h = &view.header;
        for timestamp in [i64::MIN, h.base_timestamp, h.max_timestamp] {
            let _ = tributary_fuzz::bounded(
                "first_offset_at_or_after_timestamp",
                view.bytes.len(),
                PER_BYTE,
                DECOMPRESSOR_STATE,
                || first_offset_at_or_after_timestamp(&view.bytes, 100, 100, timestamp),
            );
        }
        // The produce checks stream the records too.
        let _ = tributary_fuzz::bounded(
            "scan_records",
            view.bytes.len(),
            PER_BYTE,
            DECOMPRESSOR_STATE,
            || scan_records(&view.bytes, |_| {}),
        );
        // Key compaction and recompression hold the records whole, within
        // their limit (here 1 MiB), plus the compressor's state.
        let _ = tributary_fuzz::bounded(
            "filter_records",
            view.bytes.len(),
            PER_BYTE,
            REWRITE_STATE,
            || filter_records(&view.bytes, REWRITE_LIMIT, |r| r.offset_delta % 2 == 0),
        );
        let _ = tributary_fuzz::bounded(
            "recompress",
            view.bytes.len(),
            PER_BYTE,
            REWRITE_STATE,
            || recompress(&view.bytes, Codec::Zstd(3), REWRITE_LIMIT),
        );
    }
});

/// What key compaction and recompression may decompress a batch into here.
const REWRITE_LIMIT: usize = 1 << 20;
/// Their memory: the records (at most the limit, and the buffer growing to
/// it), the output, and a compressor's or decompressor's state.
const REWRITE_STATE: usize = 4 * REWRITE_LIMIT + DECOMPRESSOR_STATE + (16 << 20);
