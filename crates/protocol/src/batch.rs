//! Kafka RecordBatch v2 (magic 2): header parsing, validation of produced
//! batches, splitting of concatenated batches, base-offset patching and
//! timestamp lookup.
//!
//! Contract:
//! - Nothing here panics on malformed input; every bound is checked and
//!   reported as a [`BatchError`].
//! - [`split_batches`] is the gate for untrusted bytes (a Produce request's
//!   `records`): it checks lengths, magic, CRC32C, compression codec and the
//!   record count. [`split_stored_batches`] is the fast path for bytes we
//!   stored ourselves: bounds and magic only, no CRC.
//! - Returned [`BatchView`]s are zero-copy slices of the input `Bytes`.
//! - The batch CRC covers bytes `21..` (attributes to the end), so the base
//!   offset (bytes `0..8`) can be rewritten with [`set_base_offset`] without
//!   invalidating it.
//!
//! Header layout (big-endian, [`HEADER_LEN`] = 61 bytes):
//!
//! | offset | field                 | type |
//! |-------:|-----------------------|------|
//! |      0 | baseOffset            | i64  |
//! |      8 | batchLength           | i32 (bytes after this field) |
//! |     12 | partitionLeaderEpoch  | i32  |
//! |     16 | magic                 | i8   |
//! |     17 | crc                   | u32 (CRC32C of bytes 21..end) |
//! |     21 | attributes            | i16  |
//! |     23 | lastOffsetDelta       | i32  |
//! |     27 | baseTimestamp         | i64  |
//! |     35 | maxTimestamp          | i64  |
//! |     43 | producerId            | i64  |
//! |     51 | producerEpoch         | i16  |
//! |     53 | baseSequence          | i32  |
//! |     57 | recordCount           | i32  |

use std::io::{BufReader, Read};

use bytes::{Buf, Bytes};

/// Length of the RecordBatch v2 header, up to and including `recordCount`.
pub const HEADER_LEN: usize = 61;
/// Bytes before the part counted by `batchLength` (baseOffset + batchLength).
pub const LOG_OVERHEAD: usize = 12;
/// Smallest legal `batchLength`: the header minus [`LOG_OVERHEAD`].
pub const MIN_BATCH_LENGTH: i32 = (HEADER_LEN - LOG_OVERHEAD) as i32;
/// The only supported magic byte (RecordBatch v2).
pub const MAGIC_V2: i8 = 2;
/// Byte position of the magic byte.
pub const MAGIC_OFFSET: usize = 16;
/// Byte position of the CRC field.
pub const CRC_OFFSET: usize = 17;
/// First byte covered by the CRC (the attributes field).
pub const CRC_START: usize = 21;
/// Highest compression codec id Kafka defines (zstd).
pub const MAX_COMPRESSION_CODEC: u8 = 4;

/// Attribute bit: timestamps are LogAppendTime.
const ATTR_TIMESTAMP_TYPE: i16 = 1 << 3;
/// Attribute bit: transactional batch.
const ATTR_TRANSACTIONAL: i16 = 1 << 4;
/// Attribute bit: control batch.
const ATTR_CONTROL: i16 = 1 << 5;
/// Attribute bits 0-2: compression codec.
const ATTR_COMPRESSION_MASK: i16 = 0x07;

/// Why a record batch was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BatchError {
    /// The buffer ends before the batch (or its header) does.
    #[error("record batch truncated")]
    Truncated,
    /// The magic byte is not 2 (legacy message sets are not supported).
    #[error("unsupported record batch magic magic={0}")]
    UnsupportedMagic(i8),
    /// The stored CRC32C does not match the batch content.
    #[error("record batch crc mismatch expected={expected:#010x} actual={actual:#010x}")]
    CorruptCrc {
        /// CRC stored in the header.
        expected: u32,
        /// CRC computed over the content.
        actual: u32,
    },
    /// `recordCount` is below 1 or disagrees with `lastOffsetDelta + 1`.
    #[error(
        "invalid record count record_count={record_count} last_offset_delta={last_offset_delta}"
    )]
    InvalidRecordCount {
        /// `recordCount` from the header.
        record_count: i32,
        /// `lastOffsetDelta` from the header.
        last_offset_delta: i32,
    },
    /// `batchLength` is negative or smaller than the v2 header.
    #[error("invalid record batch length batch_length={0}")]
    InvalidLength(i32),
    /// The compression codec in the attributes is not one Kafka defines.
    #[error("unsupported compression codec codec={0}")]
    UnsupportedCompression(u8),
    /// The records inside the batch could not be decoded.
    #[error("record decode failed: {0}")]
    Decode(String),
    /// The records section decompresses to more than the caller allows
    /// (a compression bomb, or a batch far beyond any client's batch size).
    #[error("records decompress to more than {limit} bytes")]
    TooLarge {
        /// The caller's limit.
        limit: usize,
    },
}

/// One record of a batch, as a consumer sees it. Key, values and header
/// values are slices of one buffer holding the (decompressed) records.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BatchRecord {
    /// Added to the batch's base offset.
    pub offset_delta: i64,
    /// The record's own timestamp (base timestamp + delta); callers apply
    /// LogAppendTime from the header.
    pub timestamp: i64,
    pub key: Option<Bytes>,
    pub value: Option<Bytes>,
    pub headers: Vec<(String, Option<Bytes>)>,
}

/// Decode the records of one complete `batch` (header included; extra
/// trailing bytes are ignored). The records section is decompressed with
/// the same bounded decoders as the timestamp scan into at most
/// `max_decompressed` bytes: a batch that would decompress to more is
/// refused with [`BatchError::TooLarge`] once that much has been read, so a
/// compression bomb costs the limit, not what it expands to. Uncompressed
/// batches are not copied.
pub fn decode_records(
    batch: &Bytes,
    max_decompressed: usize,
) -> Result<Vec<BatchRecord>, BatchError> {
    let (header, records) = header_and_records(batch, max_decompressed)?;
    parse_records(&records, header.record_count, header.base_timestamp)
}

/// The header of one whole `batch` and its records section, decompressed
/// into at most `max_decompressed` bytes.
pub(crate) fn header_and_records(
    batch: &Bytes,
    max_decompressed: usize,
) -> Result<(BatchHeader, Bytes), BatchError> {
    let (header, total) = whole_batch(batch)?;
    if header.record_count < 0 {
        return Err(BatchError::InvalidRecordCount {
            record_count: header.record_count,
            last_offset_delta: header.last_offset_delta,
        });
    }
    let records = records_section(batch, &header, total, max_decompressed)?;
    Ok((header, records))
}

/// The records section of a whole `batch` (header `header`, length
/// `total`), decompressed into at most `max_decompressed` bytes
/// ([`BatchError::TooLarge`] beyond). Uncompressed sections are not copied.
pub(crate) fn records_section(
    batch: &Bytes,
    header: &BatchHeader,
    total: usize,
    max_decompressed: usize,
) -> Result<Bytes, BatchError> {
    let section = batch.slice(HEADER_LEN..total);
    if header.compression() == 0 {
        if section.len() > max_decompressed {
            return Err(BatchError::TooLarge {
                limit: max_decompressed,
            });
        }
        return Ok(section);
    }
    let reader = records_reader(&section, header.compression())?;
    // Room for a typical ratio up front, so the buffer is rarely copied
    // while it grows (never more than the limit).
    let mut out = Vec::with_capacity(section.len().saturating_mul(4).min(max_decompressed));
    let limit = u64::try_from(max_decompressed).unwrap_or(u64::MAX);
    reader
        .take(limit.saturating_add(1))
        .read_to_end(&mut out)
        .map_err(|e| BatchError::Decode(e.to_string()))?;
    if out.len() > max_decompressed {
        return Err(BatchError::TooLarge {
            limit: max_decompressed,
        });
    }
    Ok(Bytes::from(out))
}

/// The header of a batch `batch` holds whole, and the batch's length.
pub(crate) fn whole_batch(batch: &[u8]) -> Result<(BatchHeader, usize), BatchError> {
    let header = parse_header(batch)?;
    let total = header.total_len();
    if batch.len() < total {
        return Err(BatchError::Truncated);
    }
    Ok((header, total))
}

/// The `count` records of a decompressed records section.
fn parse_records(
    section: &Bytes,
    count: i32,
    base_timestamp: i64,
) -> Result<Vec<BatchRecord>, BatchError> {
    let bad = |what: &str| BatchError::Decode(what.to_owned());
    // Every record takes at least 7 bytes: never reserve more than the
    // section can hold.
    let mut out = Vec::with_capacity(usize::try_from(count).unwrap_or(0).min(section.len() / 7));
    walk_records(section, count, base_timestamp, |r| {
        let mut at = r.headers_at;
        let header_count = varint_at(section, &mut at)?;
        let header_count =
            usize::try_from(header_count).map_err(|_| bad("negative header count"))?;
        let mut headers = Vec::with_capacity(header_count.min(r.end.saturating_sub(at) / 2));
        for _ in 0..header_count {
            let key_len = varint_at(section, &mut at)?;
            let key = bytes_at(section, &mut at, key_len)?.ok_or_else(|| bad("null header key"))?;
            let key =
                String::from_utf8(key.to_vec()).map_err(|_| bad("header key is not UTF-8"))?;
            let value_len = varint_at(section, &mut at)?;
            headers.push((key, bytes_at(section, &mut at, value_len)?));
        }
        if at != r.end {
            return Err(bad("record length does not match its fields"));
        }
        out.push(BatchRecord {
            offset_delta: r.offset_delta,
            timestamp: r.timestamp,
            key: r.key,
            value: r.value,
            headers,
        });
        Ok(())
    })?;
    Ok(out)
}

/// One record of a decompressed records section, as [`walk_records`] finds
/// it: where it lies (`start..end`, length prefix included), its offset
/// delta, timestamp, key and value, and where its headers begin.
#[derive(Debug)]
pub(crate) struct RawRecord {
    pub start: usize,
    pub end: usize,
    pub offset_delta: i64,
    pub timestamp: i64,
    pub key: Option<Bytes>,
    pub value: Option<Bytes>,
    pub headers_at: usize,
}

/// Walk the `count` records of a decompressed records section in order.
pub(crate) fn walk_records(
    section: &Bytes,
    count: i32,
    base_timestamp: i64,
    mut each: impl FnMut(RawRecord) -> Result<(), BatchError>,
) -> Result<(), BatchError> {
    let bad = |what: &str| BatchError::Decode(what.to_owned());
    let mut at = 0usize;
    for _ in 0..count.max(0) {
        let start = at;
        let len = varint_at(section, &mut at)?;
        let len = usize::try_from(len).map_err(|_| bad("negative record length"))?;
        let end = at
            .checked_add(len)
            .filter(|e| *e <= section.len())
            .ok_or(BatchError::Truncated)?;
        // attributes (unused in v2 records)
        at += 1;
        let timestamp_delta = varint_at(section, &mut at)?;
        let offset_delta = varint_at(section, &mut at)?;
        let key_len = varint_at(section, &mut at)?;
        let key = bytes_at(section, &mut at, key_len)?;
        let value_len = varint_at(section, &mut at)?;
        let value = bytes_at(section, &mut at, value_len)?;
        if at > end {
            return Err(bad("record fields past its length"));
        }
        each(RawRecord {
            start,
            end,
            offset_delta,
            timestamp: base_timestamp.saturating_add(timestamp_delta),
            key,
            value,
            headers_at: at,
        })?;
        at = end;
    }
    Ok(())
}

/// A zigzag varint at `at` (at most 10 bytes).
pub(crate) fn varint_at(section: &[u8], at: &mut usize) -> Result<i64, BatchError> {
    let mut value = 0u64;
    for shift in (0..70).step_by(7) {
        let byte = *section.get(*at).ok_or(BatchError::Truncated)?;
        *at += 1;
        value |= u64::from(byte & 0x7f) << shift.min(63);
        if byte & 0x80 == 0 {
            return Ok((value >> 1) as i64 ^ -((value & 1) as i64));
        }
    }
    Err(BatchError::Decode("varint longer than 10 bytes".to_owned()))
}

/// A byte string of `len` bytes at `at` (-1: null).
fn bytes_at(section: &Bytes, at: &mut usize, len: i64) -> Result<Option<Bytes>, BatchError> {
    if len < 0 {
        return Ok(None);
    }
    let bad = |what: &str| BatchError::Decode(what.to_owned());
    let len = usize::try_from(len).map_err(|_| bad("length"))?;
    let end = at.checked_add(len).filter(|e| *e <= section.len());
    let end = end.ok_or_else(|| bad("field past the end of the records"))?;
    let out = section.slice(*at..end);
    *at = end;
    Ok(Some(out))
}

/// The fixed 61-byte header of a RecordBatch v2.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchHeader {
    /// Offset of the first record (0 for batches stored in segments).
    pub base_offset: i64,
    /// Bytes following the `batchLength` field.
    pub batch_length: i32,
    /// Leader epoch stamped by the producer (informational here).
    pub partition_leader_epoch: i32,
    /// Format version; always 2 for a parsed header.
    pub magic: i8,
    /// CRC32C over bytes `21..` of the batch.
    pub crc: u32,
    /// Compression, timestamp type, transactional and control bits.
    pub attributes: i16,
    /// Offset of the last record relative to `base_offset`.
    pub last_offset_delta: i32,
    /// Timestamp of the first record.
    pub base_timestamp: i64,
    /// Largest record timestamp in the batch.
    pub max_timestamp: i64,
    /// Idempotent/transactional producer id, or -1.
    pub producer_id: i64,
    /// Producer epoch, or -1.
    pub producer_epoch: i16,
    /// Sequence number of the first record, or -1.
    pub base_sequence: i32,
    /// Number of records in the batch.
    pub record_count: i32,
}

impl BatchHeader {
    /// Compression codec (attributes bits 0-2): 0 none, 1 gzip, 2 snappy,
    /// 3 lz4, 4 zstd.
    pub fn compression(&self) -> u8 {
        // Masked to 3 bits, so the cast is lossless.
        (self.attributes & ATTR_COMPRESSION_MASK) as u8
    }

    /// True when the timestamps are LogAppendTime (attributes bit 3).
    pub fn is_log_append_time(&self) -> bool {
        self.attributes & ATTR_TIMESTAMP_TYPE != 0
    }

    /// True for a transactional batch (attributes bit 4).
    pub fn is_transactional(&self) -> bool {
        self.attributes & ATTR_TRANSACTIONAL != 0
    }

    /// True for a control batch (attributes bit 5).
    pub fn is_control(&self) -> bool {
        self.attributes & ATTR_CONTROL != 0
    }

    /// Number of offsets the batch occupies: `last_offset_delta + 1`.
    pub fn offset_count(&self) -> i64 {
        i64::from(self.last_offset_delta) + 1
    }

    /// Total size of the batch in bytes: `12 + batch_length` (a negative
    /// length counts as 0; parsed headers never have one).
    pub fn total_len(&self) -> usize {
        LOG_OVERHEAD + usize::try_from(self.batch_length).unwrap_or(0)
    }

    /// Offset of the last record, given the batch's real base offset.
    pub fn last_offset(&self, base_offset: i64) -> i64 {
        base_offset + i64::from(self.last_offset_delta)
    }
}

/// One batch inside a larger buffer: its parsed header and a zero-copy
/// slice holding the whole batch (`header.total_len()` bytes).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BatchView {
    /// Parsed header.
    pub header: BatchHeader,
    /// The complete batch, header included.
    pub bytes: Bytes,
}

/// Which end of a transaction a control record marks (its key's type).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ControlType {
    Abort,
    Commit,
}

/// A transaction marker: a transactional control batch of one control
/// record (key: version 0, type; value: version 0, coordinator epoch), as
/// Kafka's coordinator writes it, with base offset 0 (patched on the way
/// out like any stored batch) and base sequence -1.
pub fn control_batch(
    producer_id: i64,
    producer_epoch: i16,
    kind: ControlType,
    coordinator_epoch: i32,
    timestamp: i64,
) -> Bytes {
    let mut key = Vec::with_capacity(4);
    key.extend_from_slice(&0i16.to_be_bytes());
    let kind: i16 = match kind {
        ControlType::Abort => 0,
        ControlType::Commit => 1,
    };
    key.extend_from_slice(&kind.to_be_bytes());
    let mut value = Vec::with_capacity(6);
    value.extend_from_slice(&0i16.to_be_bytes());
    value.extend_from_slice(&coordinator_epoch.to_be_bytes());

    // The record: attributes, timestamp delta, offset delta, key, value,
    // no headers (lengths as zigzag varints).
    let mut body = vec![0u8];
    put_varint(&mut body, 0);
    put_varint(&mut body, 0);
    put_varint(&mut body, key.len() as i64);
    body.extend_from_slice(&key);
    put_varint(&mut body, value.len() as i64);
    body.extend_from_slice(&value);
    put_varint(&mut body, 0);
    let mut record = Vec::with_capacity(body.len() + 2);
    put_varint(&mut record, body.len() as i64);
    record.extend_from_slice(&body);

    let total = HEADER_LEN + record.len();
    let mut out = Vec::with_capacity(total);
    out.extend_from_slice(&0i64.to_be_bytes());
    let batch_length = i32::try_from(total - LOG_OVERHEAD).expect("a marker is tiny");
    out.extend_from_slice(&batch_length.to_be_bytes());
    out.extend_from_slice(&0i32.to_be_bytes());
    out.push(MAGIC_V2 as u8);
    out.extend_from_slice(&0u32.to_be_bytes());
    out.extend_from_slice(&(ATTR_TRANSACTIONAL | ATTR_CONTROL).to_be_bytes());
    out.extend_from_slice(&0i32.to_be_bytes());
    out.extend_from_slice(&timestamp.to_be_bytes());
    out.extend_from_slice(&timestamp.to_be_bytes());
    out.extend_from_slice(&producer_id.to_be_bytes());
    out.extend_from_slice(&producer_epoch.to_be_bytes());
    out.extend_from_slice(&(-1i32).to_be_bytes());
    out.extend_from_slice(&1i32.to_be_bytes());
    out.extend_from_slice(&record);
    let crc = crc32c(&out[CRC_START..]);
    out[CRC_OFFSET..CRC_START].copy_from_slice(&crc.to_be_bytes());
    Bytes::from(out)
}

/// The end a control batch marks (the type in its first record's key);
/// `None` for other control records or undecodable bytes.
pub fn control_type(batch: &Bytes) -> Option<ControlType> {
    let records = decode_records(batch, 1 << 10).ok()?;
    let key = records.first()?.key.as_ref()?;
    match key.get(2..4)? {
        [0, 0] => Some(ControlType::Abort),
        [0, 1] => Some(ControlType::Commit),
        _ => None,
    }
}

/// Append `v` as a zigzag varint (the record format's lengths).
fn put_varint(out: &mut Vec<u8>, v: i64) {
    let mut z = ((v << 1) ^ (v >> 63)) as u64;
    loop {
        let byte = (z & 0x7f) as u8;
        z >>= 7;
        if z == 0 {
            out.push(byte);
            return;
        }
        out.push(byte | 0x80);
    }
}

/// CRC32C (Castagnoli), the checksum Kafka uses for RecordBatch v2.
pub fn crc32c(bytes: &[u8]) -> u32 {
    ::crc32c::crc32c(bytes)
}

/// Parses the 61-byte header at the start of `buf`.
///
/// Checks only what is needed to interpret the header: the magic byte must
/// be 2, the buffer must hold the full header and `batchLength` must be at
/// least 49. It does not check the CRC, the record count, or that `buf`
/// holds the whole batch.
pub fn parse_header(buf: &[u8]) -> Result<BatchHeader, BatchError> {
    if let Some(&magic) = buf.get(MAGIC_OFFSET) {
        // Same position in legacy message sets, so this identifies them.
        let magic = i8::from_be_bytes([magic]);
        if magic != MAGIC_V2 {
            return Err(BatchError::UnsupportedMagic(magic));
        }
    }
    let Some(header) = buf.first_chunk::<HEADER_LEN>() else {
        return Err(BatchError::Truncated);
    };
    // `header` is exactly HEADER_LEN bytes and the reads below consume
    // exactly HEADER_LEN bytes, so none of the `get_*` calls can run short.
    let mut b: &[u8] = header;
    let parsed = BatchHeader {
        base_offset: b.get_i64(),
        batch_length: b.get_i32(),
        partition_leader_epoch: b.get_i32(),
        magic: b.get_i8(),
        crc: b.get_u32(),
        attributes: b.get_i16(),
        last_offset_delta: b.get_i32(),
        base_timestamp: b.get_i64(),
        max_timestamp: b.get_i64(),
        producer_id: b.get_i64(),
        producer_epoch: b.get_i16(),
        base_sequence: b.get_i32(),
        record_count: b.get_i32(),
    };
    if parsed.batch_length < MIN_BATCH_LENGTH {
        return Err(BatchError::InvalidLength(parsed.batch_length));
    }
    Ok(parsed)
}

/// Records in a concatenation of batches (a fetch response's `records`),
/// from each batch header's `recordCount`. Stops at the first header that
/// does not parse or a batch that runs past the end (a fetch may end with a
/// partial batch), counting only whole batches.
pub fn count_records(mut records: &[u8]) -> u64 {
    let mut n = 0u64;
    while let Ok(h) = parse_header(records) {
        let len = h.total_len();
        if len > records.len() {
            break;
        }
        n += u64::try_from(h.record_count).unwrap_or(0);
        records = &records[len..];
    }
    n
}

/// How much checking [`split`] does per batch.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Trust {
    /// Untrusted producer input: full validation.
    Untrusted,
    /// Bytes we stored after validating them: bounds and magic only.
    Stored,
}

/// Splits a concatenation of untrusted batches (a Produce request's
/// `records`), validating each one:
/// lengths ([`BatchError::Truncated`], [`BatchError::InvalidLength`]),
/// magic 2 ([`BatchError::UnsupportedMagic`]), CRC32C
/// ([`BatchError::CorruptCrc`]), compression codec 0-4
/// ([`BatchError::UnsupportedCompression`]) and
/// `recordCount >= 1 && lastOffsetDelta + 1 == recordCount`
/// ([`BatchError::InvalidRecordCount`]).
///
/// A trailing partial batch is an error. An empty input gives an empty
/// vector; whether that is acceptable is the caller's decision.
pub fn split_batches(records: &Bytes) -> Result<Vec<BatchView>, BatchError> {
    split(records, Trust::Untrusted)
}

/// Splits a concatenation of batches read back from our own storage.
///
/// Skips the CRC and record-count checks (the data was validated on
/// produce), but still checks every bound and the magic byte, so corrupt
/// input yields an error, never a panic or an out-of-range slice.
pub fn split_stored_batches(chunk: &Bytes) -> Result<Vec<BatchView>, BatchError> {
    split(chunk, Trust::Stored)
}

fn split(buf: &Bytes, trust: Trust) -> Result<Vec<BatchView>, BatchError> {
    let mut views = Vec::new();
    let mut pos = 0usize;
    while pos < buf.len() {
        let rest = &buf[pos..];
        let header = parse_header(rest)?;
        let total = header.total_len();
        let Some(batch) = rest.get(..total) else {
            return Err(BatchError::Truncated);
        };
        if trust == Trust::Untrusted {
            validate(&header, batch)?;
        }
        views.push(BatchView {
            header,
            bytes: buf.slice(pos..pos + total),
        });
        pos += total;
    }
    Ok(views)
}

/// Checks the CRC32C of a batch read back from storage
/// ([`split_stored_batches`] skips it): object stores and disks do corrupt
/// data, and a client that does not check CRCs would take it as records.
pub fn check_stored_crc(batch: &BatchView) -> Result<(), BatchError> {
    let actual = crc32c(batch.bytes.get(CRC_START..).unwrap_or_default());
    if actual != batch.header.crc {
        return Err(BatchError::CorruptCrc {
            expected: batch.header.crc,
            actual,
        });
    }
    Ok(())
}

/// Full validation of one complete batch (`batch.len() == total_len()`).
fn validate(header: &BatchHeader, batch: &[u8]) -> Result<(), BatchError> {
    let actual = crc32c(batch.get(CRC_START..).unwrap_or_default());
    if actual != header.crc {
        return Err(BatchError::CorruptCrc {
            expected: header.crc,
            actual,
        });
    }
    if header.compression() > MAX_COMPRESSION_CODEC {
        return Err(BatchError::UnsupportedCompression(header.compression()));
    }
    if header.record_count < 1 || header.offset_count() != i64::from(header.record_count) {
        return Err(BatchError::InvalidRecordCount {
            record_count: header.record_count,
            last_offset_delta: header.last_offset_delta,
        });
    }
    Ok(())
}

/// Writes `base_offset` into bytes `0..8` of `batch` (big-endian).
///
/// The CRC does not cover these bytes, so the batch stays valid. A slice
/// shorter than 8 bytes (never a real batch) is left unchanged.
pub fn set_base_offset(batch: &mut [u8], base_offset: i64) {
    if let Some(field) = batch.first_chunk_mut::<8>() {
        *field = base_offset.to_be_bytes();
    }
}

/// The offset and timestamp of the first record in `batch`, at or after
/// `from_offset`, whose timestamp is at least `timestamp`, or `None` when
/// every such record is older.
///
/// `batch` holds one complete batch (extra trailing bytes are ignored);
/// `base_offset` is its real base offset (stored batches carry 0 in their
/// header). Batches whose `maxTimestamp` is below `timestamp` are answered
/// from the header alone, as Kafka does. For LogAppendTime batches every
/// record has `maxTimestamp`. Otherwise the records are scanned in order
/// with [`scan_records`] (streaming, bounded memory).
pub fn first_offset_at_or_after_timestamp(
    batch: &Bytes,
    base_offset: i64,
    from_offset: i64,
    timestamp: i64,
) -> Result<Option<(i64, i64)>, BatchError> {
    let (header, _) = whole_batch(batch)?;
    if header.max_timestamp < timestamp {
        return Ok(None);
    }
    if header.record_count < 1 {
        return Err(BatchError::InvalidRecordCount {
            record_count: header.record_count,
            last_offset_delta: header.last_offset_delta,
        });
    }
    if header.is_log_append_time() {
        let last = header.last_offset(base_offset);
        return Ok(
            (last >= from_offset).then(|| (base_offset.max(from_offset), header.max_timestamp))
        );
    }
    let mut found = None;
    // Every record is read (not only up to the answer), so a batch whose
    // records do not match its header is an error, as before.
    scan_records(batch, |r| {
        let offset = base_offset.saturating_add(r.offset_delta);
        if found.is_none() && r.timestamp >= timestamp && offset >= from_offset {
            found = Some((offset, r.timestamp));
        }
    })?;
    Ok(found)
}

/// What [`scan_records`] reads of each record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordFacts {
    /// Its position in the batch (0 for the first record).
    pub index: usize,
    /// Added to the batch's base offset.
    pub offset_delta: i64,
    /// Its own timestamp (base timestamp + delta; the header decides
    /// whether LogAppendTime replaces it).
    pub timestamp: i64,
    /// Whether it has a key (a null key is `false`; an empty key is a key).
    pub has_key: bool,
}

/// Visit every record of one complete `batch` in order, without its key,
/// value or headers. The records are decompressed as a stream
/// (gzip/snappy/lz4/zstd) and never held whole: memory is the
/// decompressor's (a bounded zstd window; snappy, which has no streaming
/// form, at most [`SNAPPY_MAX_RATIO`] times the batch), whatever the records
/// add up to. A batch whose records do not match its header is an error.
pub fn scan_records(batch: &Bytes, mut visit: impl FnMut(RecordFacts)) -> Result<(), BatchError> {
    let (header, total) = whole_batch(batch)?;
    if header.record_count < 0 {
        return Err(BatchError::InvalidRecordCount {
            record_count: header.record_count,
            last_offset_delta: header.last_offset_delta,
        });
    }
    let decode = |e: std::io::Error| BatchError::Decode(e.to_string());
    let mut records = BufReader::new(records_reader(
        &batch[HEADER_LEN..total],
        header.compression(),
    )?);
    for index in 0..usize::try_from(header.record_count).unwrap_or(0) {
        let len = read_varint(&mut records).map_err(decode)?;
        let len = u64::try_from(len)
            .map_err(|_| BatchError::Decode(format!("negative record length len={len}")))?;
        let mut record = (&mut records).take(len);
        let mut attributes = [0u8; 1];
        record.read_exact(&mut attributes).map_err(decode)?;
        let timestamp_delta = read_varint(&mut record).map_err(decode)?;
        let offset_delta = read_varint(&mut record).map_err(decode)?;
        let key_len = read_varint(&mut record).map_err(decode)?;
        visit(RecordFacts {
            index,
            offset_delta,
            timestamp: header.base_timestamp.saturating_add(timestamp_delta),
            has_key: key_len >= 0,
        });
        // The key, value and headers are not needed: skip them.
        let skipped = std::io::copy(&mut record, &mut std::io::sink()).map_err(decode)?;
        if record.limit() != 0 {
            return Err(BatchError::Decode(format!(
                "record truncated len={len} skipped={skipped}"
            )));
        }
    }
    Ok(())
}

/// The zstd window (2^N bytes) a batch may ask its decoder for. A frame
/// header chooses it, up to 2^27 (128 MiB) by default; Kafka clients'
/// levels use at most 2^21 for a batch, so 2^23 leaves room and bounds what
/// a tiny batch can make us allocate.
const ZSTD_WINDOW_LOG_MAX: u32 = 23;
/// Most bytes one byte of a raw snappy block can decompress to: the densest
/// element, a 3-byte copy, yields 64 bytes. A block whose header claims more
/// is corrupt, and is refused before its output buffer is allocated.
const SNAPPY_MAX_RATIO: usize = 22;
/// The header of snappy-java's framing (Kafka's Java client), followed by
/// two 4-byte version fields and then length-prefixed raw snappy blocks.
const XERIAL_MAGIC: [u8; 8] = [0x82, b'S', b'N', b'A', b'P', b'P', b'Y', 0];

/// A reader of the decompressed records section of a batch.
fn records_reader<'a>(records: &'a [u8], codec: u8) -> Result<Box<dyn Read + 'a>, BatchError> {
    let setup = |e: std::io::Error| BatchError::Decode(e.to_string());
    Ok(match codec {
        0 => Box::new(records),
        1 => Box::new(flate2::read::GzDecoder::new(records)),
        2 => Box::new(std::io::Cursor::new(snappy_decompress(records)?)),
        3 => Box::new(lz4::Decoder::new(records).map_err(setup)?),
        4 => {
            let mut d = zstd::stream::read::Decoder::with_buffer(records).map_err(setup)?;
            d.window_log_max(ZSTD_WINDOW_LOG_MAX).map_err(setup)?;
            Box::new(d)
        }
        other => return Err(BatchError::UnsupportedCompression(other)),
    })
}

/// Decompress a snappy records section: raw snappy (librdkafka) or
/// snappy-java's framing (the Java client). The output is at most
/// [`SNAPPY_MAX_RATIO`] times the input.
fn snappy_decompress(input: &[u8]) -> Result<Vec<u8>, BatchError> {
    let corrupt = |e: snap::Error| BatchError::Decode(format!("snappy: {e}"));
    let mut out = Vec::new();
    let mut block = |block: &[u8]| -> Result<(), BatchError> {
        let len = snap::raw::decompress_len(block).map_err(corrupt)?;
        if len > block.len().saturating_mul(SNAPPY_MAX_RATIO) {
            return Err(BatchError::Decode(format!(
                "snappy block claims {len} bytes from {}",
                block.len()
            )));
        }
        let start = out.len();
        out.resize(start + len, 0);
        snap::raw::Decoder::new()
            .decompress(block, &mut out[start..])
            .map_err(corrupt)?;
        Ok(())
    };
    match input.strip_prefix(&XERIAL_MAGIC[..]) {
        Some(framed) => {
            let mut rest = framed.get(8..).ok_or(BatchError::Truncated)?;
            while let Some((len, tail)) = rest.split_first_chunk::<4>() {
                let len = usize::try_from(u32::from_be_bytes(*len)).unwrap_or(usize::MAX);
                let Some((data, tail)) = tail.split_at_checked(len) else {
                    return Err(BatchError::Truncated);
                };
                block(data)?;
                rest = tail;
            }
            if !rest.is_empty() {
                return Err(BatchError::Truncated);
            }
        }
        None => block(input)?,
    }
    Ok(out)
}

/// A zigzag varint (Kafka's VARINT/VARLONG) of at most 10 bytes.
fn read_varint(r: &mut impl Read) -> std::io::Result<i64> {
    let mut value = 0u64;
    for shift in (0..70).step_by(7) {
        let mut byte = [0u8; 1];
        r.read_exact(&mut byte)?;
        value |= u64::from(byte[0] & 0x7f) << shift.min(63);
        if byte[0] & 0x80 == 0 {
            return Ok((value >> 1) as i64 ^ -((value & 1) as i64));
        }
    }
    Err(std::io::Error::new(
        std::io::ErrorKind::InvalidData,
        "varint longer than 10 bytes",
    ))
}

/// Turn a batch into a LogAppendTime batch stamped `now_ms`, as Kafka does
/// for topics with `message.timestamp.type=LogAppendTime`: set the timestamp
/// type attribute, write `now_ms` as the max timestamp, recompute the CRC.
/// Slices shorter than a batch header are left unchanged.
pub fn set_log_append_time(batch: &mut [u8], now_ms: i64) {
    if batch.len() < HEADER_LEN {
        return;
    }
    let attributes = i16::from_be_bytes([batch[21], batch[22]]) | 0x08;
    batch[21..23].copy_from_slice(&attributes.to_be_bytes());
    batch[35..43].copy_from_slice(&now_ms.to_be_bytes());
    let crc = crc32c(&batch[CRC_START..]);
    batch[CRC_OFFSET..CRC_OFFSET + 4].copy_from_slice(&crc.to_be_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::BytesMut;
    use kafka_protocol::records::{
        Compression, Record, RecordBatchDecoder, RecordBatchEncoder, RecordEncodeOptions,
        TimestampType,
    };

    const ALL_CODECS: [Compression; 5] = [
        Compression::None,
        Compression::Gzip,
        Compression::Snappy,
        Compression::Lz4,
        Compression::Zstd,
    ];

    fn record(offset: i64, timestamp: i64) -> Record {
        Record {
            transactional: false,
            control: false,
            delete_horizon: false,
            partition_leader_epoch: 7,
            producer_id: 1234,
            producer_epoch: 3,
            timestamp_type: TimestampType::Creation,
            offset,
            sequence: i32::try_from(offset).expect("small test offset") + 10,
            timestamp,
            key: Some(Bytes::from(format!("key-{offset}"))),
            value: Some(Bytes::from(format!("value-{offset}-{}", "x".repeat(50)))),
            headers: Default::default(),
        }
    }

    /// Encodes one batch whose records have the given timestamps, offsets
    /// starting at `base_offset`.
    fn encode(base_offset: i64, timestamps: &[i64], compression: Compression) -> Bytes {
        let records: Vec<Record> = timestamps
            .iter()
            .zip(base_offset..)
            .map(|(&ts, offset)| record(offset, ts))
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
        .expect("encode batch");
        buf.freeze()
    }

    fn concat(parts: &[&Bytes]) -> Bytes {
        let mut out = BytesMut::new();
        for part in parts {
            out.extend_from_slice(part);
        }
        out.freeze()
    }

    /// Rewrites the CRC after a test modified CRC-covered bytes.
    fn fix_crc(batch: &mut [u8]) {
        let crc = crc32c(&batch[CRC_START..]);
        batch[CRC_OFFSET..CRC_START].copy_from_slice(&crc.to_be_bytes());
    }

    #[test]
    fn count_records_counts_whole_batches_only() {
        let a = encode(0, &[1, 2, 3], Compression::None);
        let b = encode(3, &[4, 5], Compression::Lz4);
        let both = concat(&[&a, &b]);
        assert_eq!(count_records(&both), 5);
        // A fetch response may end inside a batch: that batch is not counted.
        assert_eq!(count_records(&both[..both.len() - 1]), 3);
        assert_eq!(count_records(&both[..10]), 0);
        assert_eq!(count_records(&[]), 0);
    }

    #[test]
    fn log_append_time_rewrite_keeps_batch_valid() {
        let batch = encode(0, &[1000, 1001, 1002], Compression::None);
        let mut bytes = BytesMut::from(&batch[..]);
        set_log_append_time(&mut bytes, 99_000);
        let bytes = bytes.freeze();
        let views = split_batches(&bytes).expect("still a valid batch");
        assert!(views[0].header.is_log_append_time());
        assert_eq!(views[0].header.max_timestamp, 99_000);
        assert_eq!(views[0].header.base_timestamp, 1000);
        assert_eq!(offset_at(&bytes, 0, 50_000), Some(0));
    }

    #[test]
    fn parses_header_fields() {
        let batch = encode(100, &[1_000, 1_005, 1_003], Compression::None);
        let h = parse_header(&batch).expect("parse");
        assert_eq!(h.base_offset, 100);
        assert_eq!(h.total_len(), batch.len());
        assert_eq!(h.partition_leader_epoch, 7);
        assert_eq!(h.magic, 2);
        assert_eq!(h.crc, crc32c(&batch[CRC_START..]));
        assert_eq!(h.compression(), 0);
        assert!(!h.is_transactional());
        assert!(!h.is_control());
        assert!(!h.is_log_append_time());
        assert_eq!(h.last_offset_delta, 2);
        assert_eq!(h.offset_count(), 3);
        assert_eq!(h.last_offset(100), 102);
        assert_eq!(h.base_timestamp, 1_000);
        assert_eq!(h.max_timestamp, 1_005);
        assert_eq!(h.producer_id, 1234);
        assert_eq!(h.producer_epoch, 3);
        assert_eq!(h.base_sequence, 110);
        assert_eq!(h.record_count, 3);
    }

    #[test]
    fn attribute_bits() {
        let mut h = parse_header(&encode(0, &[1], Compression::Zstd)).expect("parse");
        assert_eq!(h.compression(), 4);
        h.attributes = 0b11_1011;
        assert_eq!(h.compression(), 3);
        assert!(h.is_log_append_time());
        assert!(h.is_transactional());
        assert!(h.is_control());
    }

    #[test]
    fn split_every_codec() {
        for codec in ALL_CODECS {
            let a = encode(0, &[10, 11, 12, 13], codec);
            let b = encode(4, &[20], codec);
            let c = encode(5, &[30, 31], codec);
            let all = concat(&[&a, &b, &c]);
            for views in [
                split_batches(&all).expect("split"),
                split_stored_batches(&all).expect("split stored"),
            ] {
                assert_eq!(views.len(), 3, "{codec:?}");
                assert_eq!(views[0].bytes, a);
                assert_eq!(views[1].bytes, b);
                assert_eq!(views[2].bytes, c);
                assert_eq!(views[0].header.record_count, 4);
                assert_eq!(views[1].header.record_count, 1);
                assert_eq!(views[2].header.base_offset, 5);
                assert_eq!(views[2].header.compression(), codec as u8);
            }
        }
    }

    #[test]
    fn split_is_zero_copy() {
        let all = concat(&[&encode(0, &[1, 2], Compression::None)]);
        let views = split_batches(&all).expect("split");
        assert_eq!(views[0].bytes.as_ptr(), all.as_ptr());
    }

    #[test]
    fn split_empty_is_empty() {
        assert!(split_batches(&Bytes::new()).expect("split").is_empty());
    }

    #[test]
    fn every_crc_covered_byte_flip_is_corrupt_crc() {
        let batch = encode(0, &[1, 2, 3], Compression::Lz4);
        for i in CRC_START..batch.len() {
            let mut bad = batch.to_vec();
            bad[i] ^= 0x01;
            match split_batches(&Bytes::from(bad)) {
                Err(BatchError::CorruptCrc { expected, actual }) => assert_ne!(expected, actual),
                other => panic!("byte {i}: expected CorruptCrc, got {other:?}"),
            }
        }
        // Flipping the stored CRC itself is also caught.
        for i in CRC_OFFSET..CRC_START {
            let mut bad = batch.to_vec();
            bad[i] ^= 0x80;
            assert!(matches!(
                split_batches(&Bytes::from(bad)),
                Err(BatchError::CorruptCrc { .. })
            ));
        }
    }

    #[test]
    fn every_truncation_is_an_error() {
        let first = encode(0, &[1, 2], Compression::None);
        let all = concat(&[&first, &encode(2, &[3, 4, 5], Compression::Gzip)]);
        for len in 1..all.len() {
            let cut = all.slice(..len);
            if len == first.len() {
                // Exactly the first batch: a valid one-batch buffer.
                assert_eq!(split_batches(&cut).expect("first batch").len(), 1);
                continue;
            }
            assert!(split_batches(&cut).is_err(), "len {len} accepted");
            assert!(
                split_stored_batches(&cut).is_err(),
                "stored len {len} accepted"
            );
            // Must not panic either.
            let _ = first_offset_at_or_after_timestamp(&cut, 0, i64::MIN, 0);
            let _ = parse_header(&cut);
        }
        assert_eq!(split_batches(&all).expect("whole").len(), 2);
    }

    #[test]
    fn short_input_errors() {
        assert_eq!(parse_header(&[0u8; 10]), Err(BatchError::Truncated));
        assert_eq!(
            split_batches(&Bytes::from_static(&[0u8; 11])),
            Err(BatchError::Truncated)
        );
    }

    #[test]
    fn rejects_legacy_magic() {
        for magic in [0u8, 1, 3, 0xff] {
            let mut bad = encode(0, &[1], Compression::None).to_vec();
            bad[MAGIC_OFFSET] = magic;
            assert_eq!(
                split_batches(&Bytes::from(bad.clone())),
                Err(BatchError::UnsupportedMagic(magic as i8))
            );
            assert_eq!(
                split_stored_batches(&Bytes::from(bad)),
                Err(BatchError::UnsupportedMagic(magic as i8))
            );
        }
    }

    #[test]
    fn rejects_bad_lengths() {
        let batch = encode(0, &[1], Compression::None);
        for (length, expected) in [
            (-1, BatchError::InvalidLength(-1)),
            (i32::MIN, BatchError::InvalidLength(i32::MIN)),
            (0, BatchError::InvalidLength(0)),
            (48, BatchError::InvalidLength(48)),
            (i32::MAX, BatchError::Truncated),
        ] {
            let mut bad = batch.to_vec();
            bad[8..12].copy_from_slice(&i32::to_be_bytes(length));
            assert_eq!(
                split_batches(&Bytes::from(bad.clone())),
                Err(expected.clone())
            );
            assert_eq!(split_stored_batches(&Bytes::from(bad)), Err(expected));
        }
    }

    #[test]
    fn rejects_bad_record_counts() {
        let batch = encode(0, &[1, 2], Compression::None);
        for (record_count, last_offset_delta) in [(0, -1), (3, 1), (2, 2), (-1, -2)] {
            let mut bad = batch.to_vec();
            bad[23..27].copy_from_slice(&i32::to_be_bytes(last_offset_delta));
            bad[57..61].copy_from_slice(&i32::to_be_bytes(record_count));
            fix_crc(&mut bad);
            assert_eq!(
                split_batches(&Bytes::from(bad)),
                Err(BatchError::InvalidRecordCount {
                    record_count,
                    last_offset_delta
                })
            );
        }
    }

    #[test]
    fn rejects_unknown_codec() {
        let mut bad = encode(0, &[1], Compression::None).to_vec();
        bad[22] |= 0x07;
        fix_crc(&mut bad);
        assert_eq!(
            split_batches(&Bytes::from(bad)),
            Err(BatchError::UnsupportedCompression(7))
        );
    }

    #[test]
    fn set_base_offset_keeps_crc_valid() {
        for codec in ALL_CODECS {
            let batch = encode(0, &[1, 2, 3], codec);
            let mut patched = batch.to_vec();
            set_base_offset(&mut patched, 0x0102_0304_0506_0708);
            let patched = Bytes::from(patched);
            let views = split_batches(&patched).expect("still valid");
            assert_eq!(views[0].header.base_offset, 0x0102_0304_0506_0708);
            assert_eq!(&patched[8..], &batch[8..]);
            // Decoders agree on the new offsets.
            let set = RecordBatchDecoder::decode(&mut patched.clone()).expect("decode");
            let offsets: Vec<i64> = set.records.iter().map(|r| r.offset).collect();
            assert_eq!(
                offsets,
                vec![
                    0x0102_0304_0506_0708,
                    0x0102_0304_0506_0709,
                    0x0102_0304_0506_070a
                ]
            );
        }
        let mut short = [1u8; 5];
        set_base_offset(&mut short, 9);
        assert_eq!(short, [1u8; 5]);
    }

    /// The offset found for `ts` with no offset bound.
    fn offset_at(batch: &Bytes, base: i64, ts: i64) -> Option<i64> {
        first_offset_at_or_after_timestamp(batch, base, i64::MIN, ts)
            .expect("lookup")
            .map(|(offset, _)| offset)
    }

    #[test]
    fn timestamp_lookup_answers_the_records_own_timestamp_from_an_offset() {
        let batch = encode(0, &[100, 90, 150, 120, 200], Compression::Lz4);
        let at =
            |from, ts| first_offset_at_or_after_timestamp(&batch, 500, from, ts).expect("lookup");
        assert_eq!(at(i64::MIN, 101), Some((502, 150)), "not the batch's max");
        assert_eq!(
            at(503, 101),
            Some((503, 120)),
            "records before the log start are skipped"
        );
        assert_eq!(at(505, 0), None);
    }

    #[test]
    fn timestamp_lookup_every_codec() {
        for codec in ALL_CODECS {
            // Stored with base offset 0, real base offset 500.
            let batch = encode(0, &[100, 90, 150, 120, 200], codec);
            let lookup = |ts| offset_at(&batch, 500, ts);
            assert_eq!(lookup(i64::MIN), Some(500), "{codec:?}");
            assert_eq!(lookup(100), Some(500));
            assert_eq!(lookup(101), Some(502));
            assert_eq!(lookup(150), Some(502));
            assert_eq!(lookup(151), Some(504));
            assert_eq!(lookup(200), Some(504));
            assert_eq!(lookup(201), None);
        }
    }

    #[test]
    fn timestamp_lookup_uses_real_base_offset_when_header_is_nonzero() {
        let batch = encode(40, &[5, 6, 7], Compression::Snappy);
        assert_eq!(offset_at(&batch, 1_000, 7), Some(1_002));
    }

    #[test]
    fn timestamp_lookup_log_append_time() {
        let mut batch = encode(0, &[100, 110, 120], Compression::None).to_vec();
        batch[22] |= 0x08; // LogAppendTime
        batch[35..43].copy_from_slice(&i64::to_be_bytes(5_000)); // max_timestamp
        fix_crc(&mut batch);
        let batch = Bytes::from(batch);
        assert!(split_batches(&batch).is_ok());
        let lookup = |ts| offset_at(&batch, 10, ts);
        assert_eq!(lookup(100), Some(10));
        assert_eq!(lookup(4_999), Some(10));
        assert_eq!(lookup(5_000), Some(10));
        assert_eq!(lookup(5_001), None);
    }

    #[test]
    fn timestamp_lookup_rejects_lying_record_count() {
        let mut batch = encode(0, &[1, 2], Compression::None).to_vec();
        batch[23..27].copy_from_slice(&i32::to_be_bytes(i32::MAX - 1));
        batch[57..61].copy_from_slice(&i32::to_be_bytes(i32::MAX));
        fix_crc(&mut batch);
        let result = first_offset_at_or_after_timestamp(&Bytes::from(batch), 0, i64::MIN, 0);
        assert!(matches!(result, Err(BatchError::Decode(_))), "{result:?}");
    }

    #[test]
    fn timestamp_lookup_on_corrupt_records_errors() {
        let mut batch = encode(0, &[1, 2], Compression::Gzip).to_vec();
        let last = batch.len() - 1;
        for b in &mut batch[HEADER_LEN..=last] {
            *b = 0xff;
        }
        fix_crc(&mut batch);
        let result = first_offset_at_or_after_timestamp(&Bytes::from(batch), 0, i64::MIN, 0);
        assert!(matches!(result, Err(BatchError::Decode(_))), "{result:?}");
    }

    #[test]
    fn crc32c_known_vector() {
        // RFC 3720 test vector: 32 bytes of zeros.
        assert_eq!(crc32c(&[0u8; 32]), 0x8a91_36aa);
    }

    /// Found by the `record_batch` fuzz target: a 103-byte snappy batch
    /// whose block header claims far more than snappy can expand to made
    /// the decoder allocate 220 MB before failing.
    #[test]
    fn timestamp_lookup_refuses_snappy_claims_before_allocating() {
        let crash = "00000000000000000000005b00000000028a1d2a200002000000000000018bcfe568\
                     100000018bcfe568ffff00000002cef21dab0004000000000000018bcfe5680100\
                     00018bcfe50e76616c2a652d32020a74726163650661626310cd932e0000000010\
                     cd932e";
        let batch: Vec<u8> = (0..crash.len())
            .step_by(2)
            .filter_map(|i| u8::from_str_radix(crash.get(i..i + 2)?, 16).ok())
            .collect();
        assert_eq!(batch.len(), 103);
        let result = first_offset_at_or_after_timestamp(&Bytes::from(batch), 0, i64::MIN, i64::MIN);
        assert!(
            matches!(&result, Err(BatchError::Decode(m)) if m.contains("snappy")),
            "{result:?}"
        );
    }

    #[test]
    fn snappy_java_framing_decompresses() {
        let payload = b"hello snappy-java framing, hello again".repeat(20);
        let block = snap::raw::Encoder::new()
            .compress_vec(&payload)
            .expect("compress");
        let mut framed = XERIAL_MAGIC.to_vec();
        framed.extend_from_slice(&[0, 0, 0, 1, 0, 0, 0, 1]);
        for half in [&block[..], &block[..]] {
            framed.extend_from_slice(&u32::try_from(half.len()).expect("small").to_be_bytes());
            framed.extend_from_slice(half);
        }
        let out = snappy_decompress(&framed).expect("decompress");
        assert_eq!(out, [payload.clone(), payload].concat());
        framed.pop();
        assert!(snappy_decompress(&framed).is_err());
    }

    /// The bounded decoder reads what kafka-protocol's full decoder does,
    /// for every codec, with keys, values, nulls and headers.
    #[test]
    fn decode_records_matches_full_decode() {
        for codec in ALL_CODECS {
            let mut records: Vec<Record> = (0..20).map(|o| record(o, 1_000 + o)).collect();
            records[3].key = None;
            records[4].value = None;
            records[5].headers.insert(
                kafka_protocol::protocol::StrBytes::from_static_str("h1"),
                Some(Bytes::from_static(b"v1")),
            );
            records[5].headers.insert(
                kafka_protocol::protocol::StrBytes::from_static_str("h2"),
                None,
            );
            let mut buf = BytesMut::new();
            RecordBatchEncoder::encode(
                &mut buf,
                &records,
                &RecordEncodeOptions {
                    version: 2,
                    compression: codec,
                },
            )
            .expect("encode");
            let batch = buf.freeze();
            let decoded = decode_records(&batch, 1 << 20).expect("decode");
            let expected = RecordBatchDecoder::decode(&mut batch.clone())
                .expect("full decode")
                .records;
            assert_eq!(decoded.len(), expected.len(), "{codec:?}");
            for (d, e) in decoded.iter().zip(&expected) {
                assert_eq!(d.offset_delta, e.offset, "{codec:?}");
                assert_eq!(d.timestamp, e.timestamp, "{codec:?}");
                assert_eq!(d.key, e.key, "{codec:?}");
                assert_eq!(d.value, e.value, "{codec:?}");
                let headers: Vec<(String, Option<Bytes>)> = e
                    .headers
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.clone()))
                    .collect();
                assert_eq!(d.headers, headers, "{codec:?}");
            }
            // Every truncation is an error, never a panic.
            for cut in HEADER_LEN..batch.len() {
                assert!(decode_records(&batch.slice(..cut), 1 << 20).is_err());
            }
        }
    }

    /// A compression bomb: a few KiB of zstd that expand to 64 MiB cost the
    /// limit, not the expansion.
    #[test]
    fn decode_records_refuses_a_compression_bomb() {
        let section = zstd::bulk::compress(&vec![0u8; 64 << 20], 3).expect("compress");
        assert!(section.len() < 64 << 10, "{} bytes", section.len());
        let mut batch = BytesMut::new();
        batch.extend_from_slice(&0i64.to_be_bytes());
        let batch_length = i32::try_from(HEADER_LEN - 12 + section.len()).expect("fits");
        batch.extend_from_slice(&batch_length.to_be_bytes());
        batch.extend_from_slice(&0i32.to_be_bytes()); // leader epoch
        batch.extend_from_slice(&[2]); // magic
        batch.extend_from_slice(&0u32.to_be_bytes()); // crc (not checked here)
        batch.extend_from_slice(&4i16.to_be_bytes()); // attributes: zstd
        batch.extend_from_slice(&0i32.to_be_bytes()); // last offset delta
        batch.extend_from_slice(&0i64.to_be_bytes()); // base timestamp
        batch.extend_from_slice(&0i64.to_be_bytes()); // max timestamp
        batch.extend_from_slice(&(-1i64).to_be_bytes()); // producer id
        batch.extend_from_slice(&(-1i16).to_be_bytes()); // producer epoch
        batch.extend_from_slice(&(-1i32).to_be_bytes()); // base sequence
        batch.extend_from_slice(&1i32.to_be_bytes()); // record count
        assert_eq!(batch.len(), HEADER_LEN);
        batch.extend_from_slice(&section);
        let batch = batch.freeze();
        match decode_records(&batch, 8 << 20) {
            Err(BatchError::TooLarge { limit }) => assert_eq!(limit, 8 << 20),
            other => panic!("expected TooLarge, got {other:?}"),
        }
    }

    /// A zstd frame asking for a window past [`ZSTD_WINDOW_LOG_MAX`] is refused.
    #[test]
    fn zstd_window_is_bounded() {
        let data = vec![7u8; 1 << 16];
        // No pledged size, so the frame header keeps the 2^26 window.
        let mut frame = Vec::new();
        {
            let mut enc = zstd::stream::write::Encoder::new(&mut frame, 3).expect("encoder");
            enc.set_parameter(zstd::zstd_safe::CParameter::WindowLog(26))
                .expect("window log");
            std::io::Write::write_all(&mut enc, &data).expect("write");
            enc.finish().expect("finish");
        }
        let mut out = Vec::new();
        let result = records_reader(&frame, 4).and_then(|mut r| {
            r.read_to_end(&mut out)
                .map_err(|e| BatchError::Decode(e.to_string()))
        });
        assert!(result.is_err(), "a 2^26 window was accepted");
        // The same data with a normal window decompresses.
        let small = zstd::bulk::compress(&data, 3).expect("compress");
        let mut out = Vec::new();
        records_reader(&small, 4)
            .expect("reader")
            .read_to_end(&mut out)
            .expect("decompress");
        assert_eq!(out, data);
    }

    /// The streaming scan answers what kafka-protocol's full decoder does.
    #[test]
    fn timestamp_lookup_matches_full_decode() {
        for codec in ALL_CODECS {
            let batch = encode(0, &[30, 10, 20, 40, 25], codec);
            let records = RecordBatchDecoder::decode(&mut batch.clone())
                .expect("decode")
                .records;
            for ts in [0, 10, 11, 25, 26, 30, 31, 40] {
                let expected = records
                    .iter()
                    .find(|r| r.timestamp >= ts)
                    .map(|r| r.offset + 7);
                assert_eq!(offset_at(&batch, 7, ts), expected, "{codec:?} ts={ts}");
            }
        }
    }

    #[test]
    fn control_batches_parse_as_kafka_markers() {
        for kind in [ControlType::Commit, ControlType::Abort] {
            let b = control_batch(42, 3, kind, 0, 1_700_000_000_000);
            let views = split_batches(&b).expect("a valid batch");
            assert_eq!(views.len(), 1);
            let h = views[0].header;
            assert!(h.is_control() && h.is_transactional());
            assert_eq!(
                (h.producer_id, h.producer_epoch, h.base_sequence),
                (42, 3, -1)
            );
            assert_eq!((h.record_count, h.offset_count()), (1, 1));
            assert_eq!(control_type(&b), Some(kind));
        }
    }
}
