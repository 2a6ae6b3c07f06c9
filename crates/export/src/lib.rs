//! `tributary export`: replay a topic's history from the metadata store and
//! the segment objects straight into Parquet files (no Kafka protocol).
//!
//! Contract:
//! - One row per record: topic, partition, offset, timestamp (UTC), key,
//!   value, headers ([`rows::schema`]).
//! - Files are laid out Hive-style and named by their offset range
//!   ([`layout`]); boundaries are fixed multiples of `max_rows_per_file`, so
//!   the same export run twice names (and writes) the same files. A file that
//!   already exists with the same range is skipped; a file whose range
//!   overlaps a new one (the partial tail of an earlier export) is deleted
//!   once the new one is written, so the destination never holds a record
//!   twice after a run completes.
//! - Each file is written in one atomic step of the object store (a single
//!   PUT, or a multipart upload that appears only when completed; the local
//!   store writes a temporary file and renames it), so a killed export
//!   leaves complete files or none.
//! - The checkpoint (per partition, the offset after the last exported
//!   record) is written after the files; `incremental` starts from it.
//! - Memory is bounded by the row group size, not the topic size: records
//!   are decoded one index entry at a time and row groups are flushed as
//!   they fill.

pub mod layout;
pub mod rows;

use std::collections::BTreeMap;
use std::sync::Arc;

use futures::TryStreamExt;
use object_store::buffered::BufWriter;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};
use parquet::arrow::AsyncArrowWriter;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::metadata::KeyValue;
use parquet::file::properties::WriterProperties;
use thiserror::Error;
use tracing::{info, warn};
use tributary_meta::{AbortedTxn, LogStore, MetaError, Stores, TopicMeta, TopicStore};
use tributary_storage::{keys, Fetcher, ReadCache};

use arrow_schema::SchemaRef;
use layout::{
    checkpoint_path, errors_path, file_path, parse_file_name, partition_dir, plan_slot, slots,
    value_schema_path, Checkpoint, SlotAction,
};
use rows::{Columns, Rejected, Row};
pub use rows::{KeyFormat, ValueFormat};
use tributary_meta::IndexEntry;

/// Records per Arrow batch handed to the Parquet writer.
const BATCH_ROWS: usize = 8192;

/// Where an export starts, per partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Start {
    /// The partition's log start (or, with `incremental`, the checkpoint).
    #[default]
    Earliest,
    Offset(i64),
    /// The first record with a timestamp at or after this (ms since epoch).
    Time(i64),
}

/// Where an export ends (exclusive), per partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum End {
    /// The partition's high watermark when the export starts.
    #[default]
    Latest,
    /// Up to, not including, this offset.
    Offset(i64),
    /// Up to, not including, the first record at or after this time.
    Time(i64),
}

/// Parquet compression codec.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Codec {
    #[default]
    Zstd,
    Snappy,
    None,
}

/// What to export and how.
#[derive(Debug, Clone)]
pub struct ExportOptions {
    pub topic: String,
    /// `None`: every partition.
    pub partitions: Option<Vec<i32>>,
    pub from: Start,
    pub until: End,
    /// Continue each partition from the destination's checkpoint.
    pub incremental: bool,
    pub key_format: KeyFormat,
    /// Decode values as JSON objects into typed columns.
    pub value_json: bool,
    /// The JSON value schema; `None`: the destination's saved one, else
    /// inferred from a sample of `schema_sample` records.
    pub value_schema: Option<SchemaRef>,
    pub schema_sample: usize,
    pub codec: Codec,
    pub max_rows_per_file: i64,
    pub row_group_rows: usize,
}

impl ExportOptions {
    pub fn new(topic: impl Into<String>) -> Self {
        Self {
            topic: topic.into(),
            partitions: None,
            from: Start::Earliest,
            until: End::Latest,
            incremental: false,
            key_format: KeyFormat::Raw,
            value_json: false,
            value_schema: None,
            schema_sample: 10_000,
            codec: Codec::Zstd,
            max_rows_per_file: 1_000_000,
            row_group_rows: 128 * 1024,
        }
    }
}

/// Offsets `from..until` of one partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PartitionPlan {
    pub partition: i32,
    pub from: i64,
    pub until: i64,
}

impl PartitionPlan {
    pub fn records(&self) -> u64 {
        u64::try_from(self.until - self.from).unwrap_or(0)
    }
}

/// What an export did.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct Summary {
    pub topic: String,
    /// Records read in the exported ranges (written or rejected).
    pub records: u64,
    /// Records left out because they did not fit (see the `.errors.jsonl`
    /// file next to each Parquet file).
    pub rejected: u64,
    /// Bytes of stored batches read (compressed, as produced).
    pub source_bytes: u64,
    /// Bytes of Parquet written.
    pub output_bytes: u64,
    pub files_written: u64,
    /// Files already present with the same range (not rewritten).
    pub files_skipped: u64,
    /// Older files whose range a new file covers, deleted.
    pub files_replaced: u64,
    /// Per partition: (partition, from, until) exported.
    pub partitions: Vec<(i32, i64, i64)>,
}

/// Why an export failed.
#[derive(Debug, Error)]
pub enum ExportError {
    #[error("unknown topic {0}")]
    UnknownTopic(String),
    #[error("topic {topic} has no partition {partition} (it has {count})")]
    UnknownPartition {
        topic: String,
        partition: i32,
        count: i32,
    },
    #[error(
        "partition {partition}: offset {offset} is out of range (log start {log_start}, \
         high watermark {high_watermark})"
    )]
    OutOfRange {
        partition: i32,
        offset: i64,
        log_start: i64,
        high_watermark: i64,
    },
    #[error("metadata store: {0}")]
    Meta(#[from] MetaError),
    #[error("reading segment {key}: {source}")]
    Source {
        key: String,
        #[source]
        source: object_store::Error,
    },
    #[error("destination {path}: {source}")]
    Destination {
        path: String,
        #[source]
        source: object_store::Error,
    },
    #[error("partition {partition}: corrupt data near offset {offset}: {reason}")]
    Corrupt {
        partition: i32,
        offset: i64,
        reason: String,
    },
    #[error("partition {partition}: timestamp lookup failed: {cause}")]
    TimestampLookup {
        partition: i32,
        #[source]
        cause: tributary_storage::ReadError,
    },
    #[error("partition {partition}: offsets {from}..={to} are missing from the log")]
    Missing { partition: i32, from: i64, to: i64 },
    #[error("writing parquet {path}: {cause}")]
    Parquet {
        path: String,
        #[source]
        cause: Cause,
    },
    #[error("checkpoint {path}: {cause}")]
    Checkpoint {
        path: String,
        #[source]
        cause: Cause,
    },
}

/// The underlying error of a Parquet or checkpoint failure (Parquet, Arrow,
/// JSON or object-store), kept for the error chain.
pub type Cause = Box<dyn std::error::Error + Send + Sync>;

/// No value schema could be inferred from the sampled values.
#[derive(Debug, Error)]
#[error("cannot infer a schema: {0}")]
struct InferSchema(#[source] arrow_schema::ArrowError);

/// Reports progress: records done and source bytes read since the last call.
pub type Progress<'a> = &'a (dyn Fn(u64, u64) + Send + Sync);

/// Everything an export reads from and writes to.
#[derive(Debug)]
pub struct Exporter {
    topics: Arc<dyn TopicStore>,
    log: Arc<dyn LogStore>,
    source: Arc<dyn ObjectStore>,
    dest: Arc<dyn ObjectStore>,
}

impl Exporter {
    pub fn new(meta: &Stores, source: Arc<dyn ObjectStore>, dest: Arc<dyn ObjectStore>) -> Self {
        Self {
            topics: meta.topics.clone(),
            log: meta.log.clone(),
            source,
            dest,
        }
    }

    async fn topic(&self, name: &str) -> Result<TopicMeta, ExportError> {
        self.topics
            .get_topic(name)
            .await?
            .ok_or_else(|| ExportError::UnknownTopic(name.to_owned()))
    }

    /// The offsets each partition will export. Fails on an unknown topic or
    /// partition, or a start offset outside the log.
    pub async fn plan(&self, opts: &ExportOptions) -> Result<Vec<PartitionPlan>, ExportError> {
        let topic = self.topic(&opts.topic).await?;
        let partitions: Vec<i32> = match &opts.partitions {
            Some(ps) => ps.clone(),
            None => (0..topic.partitions).collect(),
        };
        let checkpoint = if opts.incremental {
            self.read_checkpoint(&opts.topic).await?
        } else {
            Checkpoint::default()
        };
        // Time lookups go through the same reader the broker uses.
        let fetcher = Fetcher::new(
            self.log.clone(),
            ReadCache::new(self.source.clone(), 8 << 20, 1 << 20),
        );
        let mut plans = Vec::with_capacity(partitions.len());
        for p in partitions {
            if p < 0 || p >= topic.partitions {
                return Err(ExportError::UnknownPartition {
                    topic: opts.topic.clone(),
                    partition: p,
                    count: topic.partitions,
                });
            }
            let offsets = self.log.partition_offsets(topic.id, p).await?;
            let (log_start, hw) = (offsets.log_start_offset, offsets.next_offset);
            let by_time = |ts: i64| {
                let fetcher = &fetcher;
                async move {
                    fetcher
                        .offset_for_timestamp(topic.id, p, ts)
                        .await
                        .map(|found| found.map_or(hw, |(o, _)| o))
                        .map_err(|cause| ExportError::TimestampLookup {
                            partition: p,
                            cause,
                        })
                }
            };
            let mut from = match opts.from {
                Start::Earliest => log_start,
                Start::Offset(o) => o,
                Start::Time(ts) => by_time(ts).await?,
            };
            if let Some(&next) = checkpoint.next_offsets.get(&p) {
                from = from.max(next);
            }
            if from < log_start {
                if opts.incremental && opts.from == Start::Earliest {
                    warn!(
                        partition = p,
                        checkpoint = from,
                        log_start,
                        "records after the checkpoint were deleted by retention; continuing from the log start"
                    );
                    from = log_start;
                } else {
                    return Err(ExportError::OutOfRange {
                        partition: p,
                        offset: from,
                        log_start,
                        high_watermark: hw,
                    });
                }
            }
            if from > hw {
                return Err(ExportError::OutOfRange {
                    partition: p,
                    offset: from,
                    log_start,
                    high_watermark: hw,
                });
            }
            // Records of a transaction still open are not decided yet: the
            // export stops at the last stable offset (a later incremental
            // run takes them, or skips them if they are aborted).
            let stable = offsets.last_stable_offset.min(hw);
            let until = match opts.until {
                End::Latest => stable,
                End::Offset(o) => o.min(stable),
                End::Time(ts) => by_time(ts).await?.min(stable),
            }
            .max(from);
            plans.push(PartitionPlan {
                partition: p,
                from,
                until,
            });
        }
        Ok(plans)
    }

    /// Run the export planned by [`Exporter::plan`].
    pub async fn run(
        &self,
        opts: &ExportOptions,
        plans: &[PartitionPlan],
        progress: Progress<'_>,
    ) -> Result<Summary, ExportError> {
        let topic = self.topic(&opts.topic).await?;
        let value_format = self.value_format(&topic, opts, plans).await?;
        let mut summary = Summary {
            topic: opts.topic.clone(),
            ..Summary::default()
        };
        for plan in plans {
            self.export_partition(&topic, opts, &value_format, plan, progress, &mut summary)
                .await?;
            summary
                .partitions
                .push((plan.partition, plan.from, plan.until));
        }
        self.write_checkpoint(&opts.topic, plans).await?;
        info!(
            topic = %opts.topic,
            records = summary.records,
            files_written = summary.files_written,
            files_skipped = summary.files_skipped,
            "export finished"
        );
        Ok(summary)
    }

    /// Raw values, or JSON with the given schema, else the one saved at the
    /// destination, else one inferred from a sample (and saved, before any
    /// file, so reruns and incremental runs use the same columns).
    async fn value_format(
        &self,
        topic: &TopicMeta,
        opts: &ExportOptions,
        plans: &[PartitionPlan],
    ) -> Result<ValueFormat, ExportError> {
        if !opts.value_json {
            return Ok(ValueFormat::Raw);
        }
        let path = value_schema_path(&topic.name);
        let err = |cause: Cause| ExportError::Checkpoint {
            path: path.to_string(),
            cause,
        };
        let saved: Option<SchemaRef> = match self.dest.get(&path).await {
            Ok(got) => {
                let bytes = got.bytes().await.map_err(|e| err(e.into()))?;
                Some(Arc::new(
                    serde_json::from_slice(&bytes).map_err(|e| err(e.into()))?,
                ))
            }
            Err(object_store::Error::NotFound { .. }) => None,
            Err(e) => return Err(err(e.into())),
        };
        let schema = match (&opts.value_schema, saved) {
            (Some(given), Some(saved)) if *given != saved => {
                warn!(path = %path, "--schema differs from the schema of earlier exports here; files will differ in columns");
                given.clone()
            }
            (Some(given), _) => given.clone(),
            (None, Some(saved)) => return Ok(ValueFormat::Json(saved)),
            (None, None) => {
                let sample = self.sample_values(topic, plans, opts.schema_sample).await?;
                rows::infer_value_schema(sample.iter().map(|b| b.as_ref()))
                    .map_err(|e| err(InferSchema(e).into()))?
            }
        };
        let body = serde_json::to_vec_pretty(schema.as_ref()).map_err(|e| err(e.into()))?;
        self.put_dest(&path, body).await?;
        Ok(ValueFormat::Json(schema))
    }

    /// Up to `limit` values from the start of the planned ranges, spread
    /// over the partitions.
    async fn sample_values(
        &self,
        topic: &TopicMeta,
        plans: &[PartitionPlan],
        limit: usize,
    ) -> Result<Vec<bytes::Bytes>, ExportError> {
        let per = (limit / plans.len().max(1)).max(1);
        let mut out = Vec::new();
        let mut rows = Vec::new();
        for plan in plans {
            let mut taken = 0;
            let mut reader =
                RangeReader::new(self, topic, plan.partition, plan.from, plan.until - 1);
            while taken < per {
                rows.clear();
                if reader.next_rows(&mut rows).await?.is_none() {
                    break;
                }
                for r in rows.drain(..).take(per - taken) {
                    taken += 1;
                    out.extend(r.value);
                }
            }
        }
        Ok(out)
    }

    async fn export_partition(
        &self,
        topic: &TopicMeta,
        opts: &ExportOptions,
        value_format: &ValueFormat,
        plan: &PartitionPlan,
        progress: Progress<'_>,
        summary: &mut Summary,
    ) -> Result<(), ExportError> {
        let dir = partition_dir(&topic.name, plan.partition);
        let existing: BTreeMap<(i64, i64), Path> = self
            .dest
            .list(Some(&dir))
            .try_filter_map(|m| async move {
                Ok(m.location
                    .filename()
                    .and_then(parse_file_name)
                    .map(|range| (range, m.location.clone())))
            })
            .try_collect()
            .await
            .map_err(|source| ExportError::Destination {
                path: dir.to_string(),
                source,
            })?;
        let ranges: Vec<(i64, i64)> = existing.keys().copied().collect();
        for (first, last) in slots(plan.from, plan.until, opts.max_rows_per_file) {
            let records = u64::try_from(last - first + 1).unwrap_or(0);
            let (written_range, remove) = match plan_slot(first, last, &ranges) {
                SlotAction::Covered { redundant } => {
                    summary.files_skipped += 1;
                    progress(records, 0);
                    (None, redundant)
                }
                SlotAction::Write { range, replaced } => (Some(range), replaced),
            };
            if let Some((a, b)) = written_range {
                let (rows, rejected, read, written) = self
                    .write_file(topic, opts, value_format, plan.partition, a, b, progress)
                    .await?;
                summary.records += rows;
                summary.rejected += rejected;
                summary.source_bytes += read;
                summary.output_bytes += written;
                summary.files_written += 1;
                // Offsets of the slot held by kept files were not read.
                progress(
                    records.saturating_sub(u64::try_from(b - a + 1).unwrap_or(0)),
                    0,
                );
            }
            // Only files whose every offset another file holds go.
            for range in remove {
                if let Some(path) = existing.get(&range) {
                    self.delete_if_present(path).await?;
                    self.delete_if_present(&errors_path(
                        &topic.name,
                        plan.partition,
                        range.0,
                        range.1,
                    ))
                    .await?;
                    summary.files_replaced += 1;
                }
            }
        }
        Ok(())
    }

    /// One whole object at the destination (a single PUT).
    async fn put_dest(&self, path: &Path, body: Vec<u8>) -> Result<(), ExportError> {
        self.dest
            .put(path, PutPayload::from(body))
            .await
            .map(|_| ())
            .map_err(|source| ExportError::Destination {
                path: path.to_string(),
                source,
            })
    }

    async fn delete_if_present(&self, path: &Path) -> Result<(), ExportError> {
        match self.dest.delete(path).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(source) => Err(ExportError::Destination {
                path: path.to_string(),
                source,
            }),
        }
    }

    /// Write offsets `first..=last` of a partition to their file (and the
    /// records that did not fit to its error file, first). Returns (records
    /// read, records rejected, source bytes read, bytes written).
    #[allow(clippy::too_many_arguments)]
    async fn write_file(
        &self,
        topic: &TopicMeta,
        opts: &ExportOptions,
        value_format: &ValueFormat,
        partition: i32,
        first: i64,
        last: i64,
        progress: Progress<'_>,
    ) -> Result<(u64, u64, u64, u64), ExportError> {
        let path = file_path(&topic.name, partition, first, last);
        let parquet_err = |cause: Cause| ExportError::Parquet {
            path: path.to_string(),
            cause,
        };
        let mut cols = Columns::new(opts.key_format, value_format.clone());
        let props = WriterProperties::builder()
            .set_compression(match opts.codec {
                Codec::Zstd => Compression::ZSTD(ZstdLevel::default()),
                Codec::Snappy => Compression::SNAPPY,
                Codec::None => Compression::UNCOMPRESSED,
            })
            .set_max_row_group_row_count(Some(opts.row_group_rows.max(1)))
            .set_max_row_group_bytes(Some(64 << 20))
            .set_key_value_metadata(Some(vec![
                KeyValue::new("tributary.topic".into(), topic.name.clone()),
                KeyValue::new("tributary.partition".into(), partition.to_string()),
                KeyValue::new("tributary.first_offset".into(), first.to_string()),
                KeyValue::new("tributary.last_offset".into(), last.to_string()),
            ]))
            .build();
        let out = BufWriter::with_capacity(self.dest.clone(), path.clone(), 8 << 20);
        let mut writer = AsyncArrowWriter::try_new(out, cols.schema().clone(), Some(props))
            .map_err(|e| parquet_err(e.into()))?;
        let mut rejected = Vec::new();
        let filled = self
            .fill(
                topic,
                partition,
                (first, last),
                &mut cols,
                &mut writer,
                &mut rejected,
                progress,
            )
            .await;
        let filled = match filled {
            Ok(v) => self
                .write_errors(&topic.name, partition, first, last, &rejected)
                .await
                .map(|()| v),
            Err(e) => Err(e),
        };
        let (rows, read) = match filled {
            Ok(v) => v,
            Err(e) => {
                // Nothing becomes visible: the upload is abandoned.
                let _ = writer.into_inner().abort().await;
                return Err(e);
            }
        };
        writer.close().await.map_err(|e| parquet_err(e.into()))?;
        let written = self
            .dest
            .head(&path)
            .await
            .map(|m| m.size)
            .map_err(|source| ExportError::Destination {
                path: path.to_string(),
                source,
            })?;
        Ok((rows, rejected.len() as u64, read, written))
    }

    /// The error file of a slot: one JSON line per rejected record. Written
    /// before the slot's Parquet file; removed if a rerun rejects nothing.
    async fn write_errors(
        &self,
        topic: &str,
        partition: i32,
        first: i64,
        last: i64,
        rejected: &[Rejected],
    ) -> Result<(), ExportError> {
        let path = errors_path(topic, partition, first, last);
        if rejected.is_empty() {
            return self.delete_if_present(&path).await;
        }
        let mut body = Vec::new();
        for r in rejected {
            let line = serde_json::json!({
                "topic": topic,
                "partition": partition,
                "offset": r.offset,
                "error": r.reason,
                "value": r.value.as_deref().map(String::from_utf8_lossy),
            });
            body.extend_from_slice(line.to_string().as_bytes());
            body.push(b'\n');
        }
        warn!(path = %path, records = rejected.len(), "records did not fit the value schema");
        self.put_dest(&path, body).await?;
        Ok(())
    }

    /// Decode the records `first..=last` into `writer`. Returns (records,
    /// source bytes read).
    #[allow(clippy::too_many_arguments)]
    async fn fill(
        &self,
        topic: &TopicMeta,
        partition: i32,
        (first, last): (i64, i64),
        cols: &mut Columns,
        writer: &mut AsyncArrowWriter<BufWriter>,
        rejected: &mut Vec<Rejected>,
        progress: Progress<'_>,
    ) -> Result<(u64, u64), ExportError> {
        let mut reader = RangeReader::new(self, topic, partition, first, last);
        let mut records = 0u64;
        let mut read = 0u64;
        let mut rows: Vec<Row> = Vec::new();
        loop {
            rows.clear();
            let Some(bytes) = reader.next_rows(&mut rows).await? else {
                break;
            };
            for row in &rows {
                if let Err(r) = cols.push(row) {
                    rejected.push(r);
                }
                if cols.len() >= BATCH_ROWS {
                    write_batch(cols, writer, rejected).await?;
                }
            }
            let n = rows.len() as u64;
            records += n;
            read += bytes;
            progress(n, bytes);
        }
        if !cols.is_empty() {
            write_batch(cols, writer, rejected).await?;
        }
        rejected.sort_by_key(|r| r.offset);
        Ok((records, read))
    }

    async fn read_checkpoint(&self, topic: &str) -> Result<Checkpoint, ExportError> {
        let path = checkpoint_path(topic);
        let err = |cause: Cause| ExportError::Checkpoint {
            path: path.to_string(),
            cause,
        };
        match self.dest.get(&path).await {
            Ok(got) => {
                let bytes = got.bytes().await.map_err(|e| err(e.into()))?;
                serde_json::from_slice(&bytes).map_err(|e| err(e.into()))
            }
            Err(object_store::Error::NotFound { .. }) => Ok(Checkpoint {
                topic: topic.to_owned(),
                ..Checkpoint::default()
            }),
            Err(e) => Err(err(e.into())),
        }
    }

    /// Record where each exported partition ended (never moving back).
    async fn write_checkpoint(
        &self,
        topic: &str,
        plans: &[PartitionPlan],
    ) -> Result<(), ExportError> {
        let mut checkpoint = self.read_checkpoint(topic).await?;
        checkpoint.topic = topic.to_owned();
        for plan in plans {
            // Only a run that continues from the checkpoint (or starts the
            // partition's first export) moves it: a one-off export further
            // on must not make `--incremental` skip what lies between.
            match checkpoint.next_offsets.get_mut(&plan.partition) {
                Some(next) if plan.from <= *next => *next = (*next).max(plan.until),
                Some(_) => {}
                None => {
                    checkpoint.next_offsets.insert(plan.partition, plan.until);
                }
            }
        }
        let path = checkpoint_path(topic);
        let body = serde_json::to_vec_pretty(&checkpoint).map_err(|e| ExportError::Checkpoint {
            path: path.to_string(),
            cause: e.into(),
        })?;
        self.put_dest(&path, body).await?;
        Ok(())
    }
}

async fn write_batch(
    cols: &mut Columns,
    writer: &mut AsyncArrowWriter<BufWriter>,
    rejected: &mut Vec<Rejected>,
) -> Result<(), ExportError> {
    let (batch, misfits) = cols.finish().map_err(|e| ExportError::Parquet {
        path: String::new(),
        cause: e.into(),
    })?;
    rejected.extend(misfits);
    writer
        .write(&batch)
        .await
        .map_err(|e| ExportError::Parquet {
            path: String::new(),
            cause: e.into(),
        })
}

/// Reads the records `first..=last` of a partition one index entry at a
/// time.
struct RangeReader<'a> {
    exporter: &'a Exporter,
    topic: &'a TopicMeta,
    partition: i32,
    next: i64,
    last: i64,
    page: std::collections::VecDeque<IndexEntry>,
    /// An object was missing once (compaction replaced the entry); the
    /// index is read again before giving up.
    missing_retry: bool,
    /// Aborted transactions of the range, read once at the first entry.
    aborted: Option<Vec<AbortedTxn>>,
}

impl<'a> RangeReader<'a> {
    fn new(
        exporter: &'a Exporter,
        topic: &'a TopicMeta,
        partition: i32,
        first: i64,
        last: i64,
    ) -> Self {
        Self {
            exporter,
            topic,
            partition,
            next: first,
            last,
            page: Default::default(),
            missing_retry: false,
            aborted: None,
        }
    }

    /// Append the next entry's records to `rows`; the source bytes read, or
    /// `None` once `last` is passed.
    async fn next_rows(&mut self, rows: &mut Vec<Row>) -> Result<Option<u64>, ExportError> {
        loop {
            if self.next > self.last {
                return Ok(None);
            }
            let Some(entry) = self.page.pop_front() else {
                let page = self
                    .exporter
                    .log
                    .index_entries(self.topic.id, self.partition, self.next, 64)
                    .await?;
                if page.is_empty() {
                    return Err(ExportError::Missing {
                        partition: self.partition,
                        from: self.next,
                        to: self.last,
                    });
                }
                self.page = page.into();
                continue;
            };
            if entry.last_offset < self.next {
                continue;
            }
            if entry.base_offset > self.next {
                return Err(ExportError::Missing {
                    partition: self.partition,
                    from: self.next,
                    to: entry.base_offset - 1,
                });
            }
            let range = entry.byte_start..entry.byte_start + entry.byte_len;
            let bytes = match self
                .exporter
                .source
                .get_range(&keys::path(&entry.segment_key), range)
                .await
            {
                Ok(b) => b,
                // Compaction replaced this entry and the janitor deleted the
                // object: read the index again, once.
                Err(object_store::Error::NotFound { .. }) if !self.missing_retry => {
                    self.missing_retry = true;
                    self.page.clear();
                    continue;
                }
                Err(source) => {
                    return Err(ExportError::Source {
                        key: entry.segment_key.clone(),
                        source,
                    })
                }
            };
            self.missing_retry = false;
            if self.aborted.is_none() {
                let aborted = self
                    .exporter
                    .log
                    .aborted_transactions(self.topic.id, self.partition, self.next, self.last)
                    .await?;
                self.aborted = Some(aborted);
            }
            let aborted = self.aborted.as_deref().unwrap_or_default();
            rows::decode_chunk(
                &bytes,
                entry.base_offset,
                self.next,
                self.last + 1,
                aborted,
                rows,
            )
            .map_err(|reason| ExportError::Corrupt {
                partition: self.partition,
                offset: entry.base_offset,
                reason,
            })?;
            self.next = entry.last_offset + 1;
            return Ok(Some(entry.byte_len));
        }
    }
}
