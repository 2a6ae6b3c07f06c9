//! Records out of stored batch bytes, and records into Arrow columns.
//!
//! Stored batches keep their producer's bytes, with base offset 0 in the
//! header (the index knows the real base offset of the first batch of a
//! chunk; the following batches are consecutive). Compressed batches are
//! decompressed here, into at most [`MAX_DECOMPRESSED_BATCH`] bytes each; control batches (transaction markers) and the batches of aborted transactions are skipped;
//! `LogAppendTime` batches give every record the batch's max timestamp, as a
//! Kafka consumer sees it.

use std::sync::Arc;

use arrow_array::builder::{
    BinaryBuilder, Int64Builder, ListBuilder, StringBuilder, StructBuilder,
    TimestampMillisecondBuilder,
};
use arrow_array::{ArrayRef, BooleanArray, RecordBatch, StructArray};
use arrow_schema::{ArrowError, DataType, Field, Fields, Schema, SchemaRef, TimeUnit};
use bytes::Bytes;
use tributary_meta::AbortedTxn;
use tributary_protocol::batch::{decode_records, split_stored_batches};

/// Most bytes one batch's records may decompress to. Client batches are at
/// most a few MiB before compression; a stored batch that expands past this
/// (a compression bomb a producer sent) stops the export with an error
/// naming its offset instead of taking the machine's memory.
pub const MAX_DECOMPRESSED_BATCH: usize = 256 << 20;

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
/// at `base_offset`, keeping records with `from <= offset < until`, except
/// the transactional batches inside an `aborted` range of their producer
/// (what a `read_committed` consumer drops).
pub fn decode_chunk(
    chunk: &Bytes,
    base_offset: i64,
    from: i64,
    until: i64,
    aborted: &[AbortedTxn],
    out: &mut Vec<Row>,
) -> Result<(), String> {
    let mut base = base_offset;
    for view in split_stored_batches(chunk).map_err(|e| e.to_string())? {
        let h = view.header;
        let next = h.last_offset(base) + 1;
        let was_aborted = h.is_transactional()
            && aborted.iter().any(|a| {
                a.producer_id == h.producer_id && a.first_offset <= base && base <= a.last_offset
            });
        if h.is_control() || was_aborted || next <= from || base >= until {
            base = next;
            continue;
        }
        let records = decode_records(&view.bytes, MAX_DECOMPRESSED_BATCH)
            .map_err(|e| format!("batch at offset {base}: {e}"))?;
        for r in records {
            let offset = base + r.offset_delta;
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
                headers: r.headers,
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

/// How the `value` column is typed.
#[derive(Debug, Clone, PartialEq)]
pub enum ValueFormat {
    /// Binary, as stored.
    Raw,
    /// Each value is a JSON object decoded into this schema, as a struct
    /// column; values that are not JSON objects or do not fit it (a type
    /// that does not match, a field the schema lacks) are rejected.
    Json(SchemaRef),
}

/// A record left out of the Parquet file, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejected {
    pub offset: i64,
    pub reason: String,
    pub value: Option<Bytes>,
}

/// The columns of an exported file. Topic and partition are not among them:
/// they are the Hive partition columns of the path (`topic=T/partition=P/`),
/// which DuckDB, pyarrow, Spark and Athena read from there (a column both in
/// the path and in the file is an error for Spark and Athena).
pub fn schema(key: KeyFormat, value: &ValueFormat) -> SchemaRef {
    Arc::new(Schema::new(vec![
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
        match value {
            ValueFormat::Raw => Field::new("value", DataType::Binary, true),
            ValueFormat::Json(s) => Field::new("value", DataType::Struct(s.fields().clone()), true),
        },
        Field::new("headers", DataType::List(header_item()), false),
    ]))
}

/// Infer the schema of JSON object values (fields in first-seen order, the
/// keys of one object in sorted order; all nullable; a field only ever seen
/// as null becomes text). Values that are
/// not JSON objects are skipped.
pub fn infer_value_schema<'a>(
    values: impl Iterator<Item = &'a [u8]>,
) -> Result<SchemaRef, ArrowError> {
    let parsed: Vec<serde_json::Value> = values
        .filter_map(|v| serde_json::from_slice::<serde_json::Value>(v).ok())
        .filter(|v| v.is_object())
        .collect();
    let inferred = arrow_json::reader::infer_json_schema_from_iterator(
        parsed.iter().map(Ok::<_, ArrowError>),
    )?;
    Ok(Arc::new(Schema::new(
        inferred
            .fields()
            .iter()
            .map(|f| without_null_type(f))
            .collect::<Vec<_>>(),
    )))
}

fn without_null_type(f: &Field) -> Field {
    let dt = match f.data_type() {
        DataType::Null => DataType::Utf8,
        DataType::Struct(children) => DataType::Struct(
            children
                .iter()
                .map(|c| without_null_type(c))
                .collect::<Vec<_>>()
                .into(),
        ),
        DataType::List(item) => DataType::List(Arc::new(without_null_type(item))),
        other => other.clone(),
    };
    f.as_ref().clone().with_data_type(dt)
}

/// Arrow columns being filled, one row per record.
#[derive(Debug)]
pub struct Columns {
    schema: SchemaRef,
    key_format: KeyFormat,
    value_format: ValueFormat,
    offset: Int64Builder,
    timestamp: TimestampMillisecondBuilder,
    raw_key: BinaryBuilder,
    text_key: StringBuilder,
    raw_value: BinaryBuilder,
    headers: ListBuilder<StructBuilder>,
    /// JSON mode: each row's parsed value, offset and bytes.
    json: Vec<(serde_json::Value, i64, Option<Bytes>)>,
    rows: usize,
}

impl Columns {
    pub fn new(key_format: KeyFormat, value_format: ValueFormat) -> Self {
        Self {
            schema: schema(key_format, &value_format),
            key_format,
            value_format,
            offset: Int64Builder::new(),
            timestamp: TimestampMillisecondBuilder::new().with_timezone("UTC"),
            raw_key: BinaryBuilder::new(),
            text_key: StringBuilder::new(),
            raw_value: BinaryBuilder::new(),
            headers: ListBuilder::new(StructBuilder::from_fields(header_fields(), 0))
                .with_field(header_item()),
            json: Vec::new(),
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

    /// Append one record, or reject it (appending nothing): a key that is
    /// not UTF-8 with [`KeyFormat::String`], a value that is not a JSON
    /// object with [`ValueFormat::Json`]. Type mismatches against the JSON
    /// schema are found by [`Columns::finish`].
    pub fn push(&mut self, row: &Row) -> Result<(), Rejected> {
        let reject = |reason: String| Rejected {
            offset: row.offset,
            reason,
            value: row.value.clone(),
        };
        let text_key = match (self.key_format, &row.key) {
            (KeyFormat::String, Some(k)) => {
                Some(std::str::from_utf8(k).map_err(|_| reject("key is not UTF-8".to_owned()))?)
            }
            _ => None,
        };
        if let ValueFormat::Json(_) = self.value_format {
            let parsed = match row.value.as_deref() {
                None => return Err(reject("value is null".to_owned())),
                Some(v) => serde_json::from_slice::<serde_json::Value>(v)
                    .map_err(|e| reject(format!("value is not JSON: {e}")))?,
            };
            if !parsed.is_object() {
                return Err(reject("value is not a JSON object".to_owned()));
            }
            self.json.push((parsed, row.offset, row.value.clone()));
        } else {
            self.raw_value.append_option(row.value.as_deref());
        }
        self.offset.append_value(row.offset);
        self.timestamp.append_value(row.timestamp_ms);
        match self.key_format {
            KeyFormat::Raw => self.raw_key.append_option(row.key.as_deref()),
            KeyFormat::String => self.text_key.append_option(text_key),
        }
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

    /// The rows so far as one record batch, with the records whose JSON did
    /// not fit the schema left out and returned; the builders start empty
    /// again.
    pub fn finish(&mut self) -> Result<(RecordBatch, Vec<Rejected>), ArrowError> {
        let key: ArrayRef = match self.key_format {
            KeyFormat::Raw => Arc::new(self.raw_key.finish()),
            KeyFormat::String => Arc::new(self.text_key.finish()),
        };
        let mut rejected = Vec::new();
        let mut keep: Option<BooleanArray> = None;
        let value: ArrayRef = match &self.value_format {
            ValueFormat::Raw => Arc::new(self.raw_value.finish()),
            ValueFormat::Json(value_schema) => {
                let rows = std::mem::take(&mut self.json);
                let (decoded, mask, bad) = decode_json(value_schema, rows)?;
                if bad.iter().len() > 0 {
                    keep = Some(mask);
                }
                rejected = bad;
                Arc::new(StructArray::from(decoded))
            }
        };
        let mut columns: Vec<ArrayRef> = vec![
            Arc::new(self.offset.finish()),
            Arc::new(self.timestamp.finish()),
            key,
            Arc::new(self.headers.finish()),
        ];
        if let Some(mask) = &keep {
            columns = columns
                .iter()
                .map(|c| arrow_select::filter::filter(c.as_ref(), mask))
                .collect::<Result<_, _>>()?;
        }
        columns.insert(3, value);
        self.rows = 0;
        Ok((
            RecordBatch::try_new(self.schema.clone(), columns)?,
            rejected,
        ))
    }
}

/// Decode JSON objects into `schema`: the decoded rows, which input rows
/// they are, and the rejected ones. A batch decodes at once; only when that
/// fails is each row decoded alone to find the ones that do not fit.
fn decode_json(
    schema: &SchemaRef,
    rows: Vec<(serde_json::Value, i64, Option<Bytes>)>,
) -> Result<(RecordBatch, BooleanArray, Vec<Rejected>), ArrowError> {
    let decoder = || {
        arrow_json::ReaderBuilder::new(schema.clone())
            .with_strict_mode(true)
            .build_decoder()
    };
    let values: Vec<&serde_json::Value> = rows.iter().map(|(v, _, _)| v).collect();
    let mut all = decoder()?;
    if let Ok(batch) = all.serialize(&values).and_then(|()| all.flush()) {
        let batch = batch.unwrap_or_else(|| RecordBatch::new_empty(schema.clone()));
        return Ok((
            batch,
            BooleanArray::from(vec![true; rows.len()]),
            Vec::new(),
        ));
    }
    let mut parts = Vec::new();
    let mut mask = Vec::with_capacity(rows.len());
    let mut rejected = Vec::new();
    for (value, offset, raw) in &rows {
        let mut one = decoder()?;
        match one.serialize(&[value]).and_then(|()| one.flush()) {
            Ok(Some(b)) => {
                parts.push(b);
                mask.push(true);
            }
            Ok(None) => {
                mask.push(false);
                rejected.push(Rejected {
                    offset: *offset,
                    reason: "value decoded to no row".to_owned(),
                    value: raw.clone(),
                });
            }
            Err(e) => {
                mask.push(false);
                rejected.push(Rejected {
                    offset: *offset,
                    reason: format!("value does not fit the schema: {e}"),
                    value: raw.clone(),
                });
            }
        }
    }
    let batch = arrow_select::concat::concat_batches(schema, &parts)?;
    Ok((batch, BooleanArray::from(mask), rejected))
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow_array::{Array, BinaryArray, Int64Array, ListArray, StructArray};
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
        decode_chunk(&chunk, 100, 101, 104, &[], &mut rows).expect("decode");
        let got: Vec<(i64, &[u8])> = rows
            .iter()
            .map(|r| (r.offset, r.value.as_deref().unwrap_or_default()))
            .collect();
        assert_eq!(
            got,
            vec![(101, &b"b"[..]), (102, &b"c"[..]), (103, &b"d"[..])]
        );
        assert_eq!(rows[0].headers, vec![("h".into(), Some(Bytes::from("x")))]);

        let mut cols = Columns::new(KeyFormat::Raw, ValueFormat::Raw);
        for r in &rows {
            cols.push(r).expect("push");
        }
        let (b, rejected) = cols.finish().expect("batch");
        assert!(rejected.is_empty());
        assert_eq!(b.num_rows(), 3);
        let offsets = b
            .column(0)
            .as_any()
            .downcast_ref::<Int64Array>()
            .expect("offsets");
        assert_eq!(offsets.values(), &[101, 102, 103]);
        let values = b
            .column(3)
            .as_any()
            .downcast_ref::<BinaryArray>()
            .expect("values");
        assert_eq!(values.value(2), b"d");
        let headers = b
            .column(4)
            .as_any()
            .downcast_ref::<ListArray>()
            .expect("headers");
        assert_eq!(headers.value(0).len(), 1);
        assert!(cols.is_empty(), "finish starts a new batch");
    }

    #[test]
    fn string_keys_must_be_utf8() {
        let mut cols = Columns::new(KeyFormat::String, ValueFormat::Raw);
        let row = Row {
            offset: 7,
            timestamp_ms: 0,
            key: Some(Bytes::from_static(&[0xff, 0xfe])),
            value: None,
            headers: Vec::new(),
        };
        let err = cols.push(&row).expect_err("not utf-8");
        assert_eq!(err.offset, 7);
        assert!(err.reason.contains("UTF-8"), "{err:?}");
        assert!(cols.is_empty());
        let ok = Row {
            key: Some(Bytes::from("k")),
            ..row
        };
        cols.push(&ok).expect("utf-8 key");
        assert_eq!(cols.finish().expect("batch").0.num_rows(), 1);
    }

    fn json_row(offset: i64, value: &str) -> Row {
        Row {
            offset,
            timestamp_ms: 5,
            key: None,
            value: Some(Bytes::from(value.to_owned())),
            headers: Vec::new(),
        }
    }

    #[test]
    fn json_values_become_typed_columns_and_misfits_are_rejected() {
        let sample = [
            r#"{"n":1,"user":{"id":7,"tags":["a"]},"note":null}"#,
            r#"{"n":2,"user":{"id":8,"tags":[]},"price":1.5}"#,
        ];
        let schema = infer_value_schema(sample.iter().map(|s| s.as_bytes())).expect("infer");
        let names: Vec<&str> = schema.fields().iter().map(|f| f.name().as_str()).collect();
        // serde_json objects iterate keys in order, so fields come sorted
        // within each object, in first-seen order across objects.
        assert_eq!(names, vec!["n", "note", "user", "price"]);
        assert_eq!(schema.field(0).data_type(), &DataType::Int64);
        assert_eq!(
            schema.field(1).data_type(),
            &DataType::Utf8,
            "null-only field"
        );

        let mut cols = Columns::new(KeyFormat::Raw, ValueFormat::Json(schema.clone()));
        let inputs = [
            (10, sample[0]),
            (11, "not json"),
            (12, r#"{"n":"three"}"#),
            (13, sample[1]),
            (14, r#"{"n":4,"surprise":true}"#),
            (15, "[1,2]"),
        ];
        let mut rejected: Vec<i64> = Vec::new();
        for (o, v) in inputs {
            if let Err(r) = cols.push(&json_row(o, v)) {
                rejected.push(r.offset);
            }
        }
        assert_eq!(rejected, vec![11, 15], "not JSON objects");
        let (batch, misfits) = cols.finish().expect("finish");
        let misfit: Vec<i64> = misfits.iter().map(|r| r.offset).collect();
        assert_eq!(misfit, vec![12, 14], "wrong type; field not in the schema");
        assert_eq!(batch.num_rows(), 2);
        let offsets = batch
            .column(0)
            .as_any()
            .downcast_ref::<Int64Array>()
            .expect("offsets");
        assert_eq!(offsets.values(), &[10, 13]);
        let value = batch
            .column(3)
            .as_any()
            .downcast_ref::<StructArray>()
            .expect("struct value");
        let n = value
            .column_by_name("n")
            .and_then(|c| c.as_any().downcast_ref::<Int64Array>())
            .expect("n");
        assert_eq!(n.values(), &[1, 2]);
    }
}
