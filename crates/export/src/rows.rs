//! Records out of stored batch bytes, and records into Arrow columns.
//!
//! Stored batches keep their producer's bytes, with base offset 0 in the
//! header (the index knows the real base offset of the first batch of a
//! chunk; the following batches are consecutive). Compressed batches are
//! decompressed here; control batches (transaction markers) are skipped;
//! `LogAppendTime` batches give every record the batch's max timestamp, as a
//! Kafka consumer sees it.

use std::sync::Arc;

use arrow_array::builder::{
    BinaryBuilder, Int32Builder, Int64Builder, ListBuilder, StringBuilder, StringDictionaryBuilder,
    StructBuilder, TimestampMillisecondBuilder,
};
use arrow_array::types::Int32Type;
use arrow_array::{ArrayRef, RecordBatch};
use arrow_schema::{ArrowError, DataType, Field, Fields, Schema, SchemaRef, TimeUnit};
use bytes::Bytes;
use kafka_protocol::records::RecordBatchDecoder;
use tributary_protocol::batch::split_stored_batches;

/// One record as exported.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Row {
    pub offset: i64,
    pub timestamp_ms: i64,
    pub key: Option<Bytes>,
    pub value: Option<Bytes>,
    pub headers: Vec<(String, Option<Bytes>)>,
}

/// How the `key` column is typed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum KeyFormat {
    /// Binary, as stored.
    #[default]
    Raw,
    /// UTF-8 text; keys that are not valid UTF-8 are an error.
    String,
}

/// Decode the batches of one index entry's bytes, whose first batch starts
/// at `base_offset`, keeping records with `from <= offset < until`.
pub fn decode_chunk(
    chunk: &Bytes,
    base_offset: i64,
    from: i64,
    until: i64,
    out: &mut Vec<Row>,
) -> Result<(), String> {
    let mut base = base_offset;
    for view in split_stored_batches(chunk).map_err(|e| e.to_string())? {
        let h = view.header;
        let next = h.last_offset(base) + 1;
        if h.is_control() || next <= from || base >= until {
            base = next;
            continue;
        }
        let mut buf = view.bytes.clone();
        let set = RecordBatchDecoder::decode(&mut buf)
            .map_err(|e| format!("batch at offset {base}: {e}"))?;
        for r in set.records {
            let offset = base + (r.offset - h.base_offset);
            if offset < from || offset >= until {
                continue;
            }
            out.push(Row {
                offset,
                timestamp_ms: if h.is_log_append_time() {
                    h.max_timestamp
                } else {
                    r.timestamp
                },
                key: r.key,
                value: r.value,
                headers: r
                    .headers
                    .into_iter()
                    .map(|(k, v)| (k.as_str().to_owned(), v))
                    .collect(),
            });
        }
        base = next;
    }
    Ok(())
}

fn header_fields() -> Fields {
    Fields::from(vec![
        Field::new("key", DataType::Utf8, false),
        Field::new("value", DataType::Binary, true),
    ])
}

fn header_item() -> Arc<Field> {
    Arc::new(Field::new(
        "element",
        DataType::Struct(header_fields()),
        false,
    ))
}

/// The columns of an exported file.
pub fn schema(key: KeyFormat) -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new(
            "topic",
            DataType::Dictionary(Box::new(DataType::Int32), Box::new(DataType::Utf8)),
            false,
        ),
        Field::new("partition", DataType::Int32, false),
        Field::new("offset", DataType::Int64, false),
        Field::new(
            "timestamp",
            DataType::Timestamp(TimeUnit::Millisecond, Some("UTC".into())),
            false,
        ),
        Field::new(
            "key",
            match key {
                KeyFormat::Raw => DataType::Binary,
                KeyFormat::String => DataType::Utf8,
            },
            true,
        ),
        Field::new("value", DataType::Binary, true),
        Field::new("headers", DataType::List(header_item()), false),
    ]))
}

/// Arrow columns being filled, one row per record.
pub struct Columns {
    schema: SchemaRef,
    key_format: KeyFormat,
    topic: StringDictionaryBuilder<Int32Type>,
    partition: Int32Builder,
    offset: Int64Builder,
    timestamp: TimestampMillisecondBuilder,
    raw_key: BinaryBuilder,
    text_key: StringBuilder,
    value: BinaryBuilder,
    headers: ListBuilder<StructBuilder>,
    rows: usize,
}

impl Columns {
    pub fn new(key_format: KeyFormat) -> Self {
        Self {
            schema: schema(key_format),
            key_format,
            topic: StringDictionaryBuilder::new(),
            partition: Int32Builder::new(),
            offset: Int64Builder::new(),
            timestamp: TimestampMillisecondBuilder::new().with_timezone("UTC"),
            raw_key: BinaryBuilder::new(),
            text_key: StringBuilder::new(),
            value: BinaryBuilder::new(),
            headers: ListBuilder::new(StructBuilder::from_fields(header_fields(), 0))
                .with_field(header_item()),
            rows: 0,
        }
    }

    pub fn schema(&self) -> &SchemaRef {
        &self.schema
    }

    pub fn len(&self) -> usize {
        self.rows
    }

    pub fn is_empty(&self) -> bool {
        self.rows == 0
    }

    /// Append one record. Fails (appending nothing) only when `--key-format
    /// string` meets a key that is not UTF-8.
    pub fn push(&mut self, topic: &str, partition: i32, row: &Row) -> Result<(), String> {
        let text_key = match (self.key_format, &row.key) {
            (KeyFormat::String, Some(k)) => Some(
                std::str::from_utf8(k)
                    .map_err(|_| format!("key of offset {} is not UTF-8", row.offset))?,
            ),
            _ => None,
        };
        self.topic.append_value(topic);
        self.partition.append_value(partition);
        self.offset.append_value(row.offset);
        self.timestamp.append_value(row.timestamp_ms);
        match self.key_format {
            KeyFormat::Raw => self.raw_key.append_option(row.key.as_deref()),
            KeyFormat::String => self.text_key.append_option(text_key),
        }
        self.value.append_option(row.value.as_deref());
        let entries = self.headers.values();
        for (k, v) in &row.headers {
            if let Some(b) = entries.field_builder::<StringBuilder>(0) {
                b.append_value(k);
            }
            if let Some(b) = entries.field_builder::<BinaryBuilder>(1) {
                b.append_option(v.as_deref());
            }
            entries.append(true);
        }
        self.headers.append(true);
        self.rows += 1;
        Ok(())
    }

    /// The rows so far as one record batch; the builders start empty again.
    pub fn finish(&mut self) -> Result<RecordBatch, ArrowError> {
        let key: ArrayRef = match self.key_format {
            KeyFormat::Raw => Arc::new(self.raw_key.finish()),
            KeyFormat::String => Arc::new(self.text_key.finish()),
        };
        let columns: Vec<ArrayRef> = vec![
            Arc::new(self.topic.finish()),
            Arc::new(self.partition.finish()),
            Arc::new(self.offset.finish()),
            Arc::new(self.timestamp.finish()),
            key,
            Arc::new(self.value.finish()),
            Arc::new(self.headers.finish()),
        ];
        self.rows = 0;
        RecordBatch::try_new(self.schema.clone(), columns)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow_array::{Array, BinaryArray, Int64Array, ListArray};
    use kafka_protocol::records::{
        Compression, Record, RecordBatchEncoder, RecordEncodeOptions, TimestampType,
    };

    fn batch(records: &[(i64, &str)], compression: Compression) -> Bytes {
        let records: Vec<Record> = records
            .iter()
            .map(|(delta, v)| Record {
                transactional: false,
                control: false,
                delete_horizon: false,
                partition_leader_epoch: 0,
                producer_id: -1,
                producer_epoch: -1,
                timestamp_type: TimestampType::Creation,
                offset: *delta,
                sequence: -1,
                timestamp: 1_700_000_000_000 + delta,
                key: Some(Bytes::from(format!("k{delta}"))),
                value: Some(Bytes::from(v.to_string())),
                headers: [(
                    kafka_protocol::protocol::StrBytes::from_static_str("h"),
                    Some(Bytes::from_static(b"x")),
                )]
                .into_iter()
                .collect(),
            })
            .collect();
        let mut buf = bytes::BytesMut::new();
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
    fn chunks_decode_with_real_offsets_and_bounds() {
        let mut chunk = bytes::BytesMut::new();
        chunk.extend_from_slice(&batch(&[(0, "a"), (1, "b")], Compression::Gzip));
        chunk.extend_from_slice(&batch(&[(0, "c"), (1, "d"), (2, "e")], Compression::Zstd));
        let chunk = chunk.freeze();
        let mut rows = Vec::new();
        decode_chunk(&chunk, 100, 101, 104, &mut rows).expect("decode");
        let got: Vec<(i64, &[u8])> = rows
            .iter()
            .map(|r| (r.offset, r.value.as_deref().unwrap_or_default()))
            .collect();
        assert_eq!(
            got,
            vec![(101, &b"b"[..]), (102, &b"c"[..]), (103, &b"d"[..])]
        );
        assert_eq!(rows[0].headers, vec![("h".into(), Some(Bytes::from("x")))]);

        let mut cols = Columns::new(KeyFormat::Raw);
        for r in &rows {
            cols.push("t", 3, r).expect("push");
        }
        let b = cols.finish().expect("batch");
        assert_eq!(b.num_rows(), 3);
        let offsets = b
            .column(2)
            .as_any()
            .downcast_ref::<Int64Array>()
            .expect("offsets");
        assert_eq!(offsets.values(), &[101, 102, 103]);
        let values = b
            .column(5)
            .as_any()
            .downcast_ref::<BinaryArray>()
            .expect("values");
        assert_eq!(values.value(2), b"d");
        let headers = b
            .column(6)
            .as_any()
            .downcast_ref::<ListArray>()
            .expect("headers");
        assert_eq!(headers.value(0).len(), 1);
        assert!(cols.is_empty(), "finish starts a new batch");
    }

    #[test]
    fn string_keys_must_be_utf8() {
        let mut cols = Columns::new(KeyFormat::String);
        let row = Row {
            offset: 7,
            timestamp_ms: 0,
            key: Some(Bytes::from_static(&[0xff, 0xfe])),
            value: None,
            headers: Vec::new(),
        };
        let err = cols.push("t", 0, &row).expect_err("not utf-8");
        assert!(err.contains("offset 7"), "{err}");
        assert!(cols.is_empty());
        let ok = Row {
            key: Some(Bytes::from("k")),
            ..row
        };
        cols.push("t", 0, &ok).expect("utf-8 key");
        assert_eq!(cols.finish().expect("batch").num_rows(), 1);
    }
}
