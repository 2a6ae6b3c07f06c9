//! `tributary export`: flags, progress bar and summary around
//! [`tributary_export::Exporter`].

use std::io::IsTerminal;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use anyhow::{bail, Context};
use clap::{Args, ValueEnum};
use indicatif::{ProgressBar, ProgressState, ProgressStyle};
use tributary_export::{Codec, End, ExportOptions, Exporter, KeyFormat, Start, Summary};
use tributary_meta::{open_metadata, Stores};
use tributary_storage::{open_object_store_with, wrappers::RetryPolicy};

use crate::config::{ServeArgs, Settings, StoreArgs};

/// Flags of `tributary export`. The data is found as `serve` finds it.
#[derive(Args, Debug)]
pub struct ExportArgs {
    /// Topic to export.
    #[arg(long)]
    pub topic: String,
    /// Partitions to export, comma-separated [default: all].
    #[arg(long, value_delimiter = ',')]
    pub partitions: Option<Vec<i32>>,
    /// First offset to export [default: the log start].
    #[arg(long, conflicts_with = "from_time")]
    pub from_offset: Option<i64>,
    /// Export records with a timestamp at or after this RFC 3339 time.
    #[arg(long)]
    pub from_time: Option<String>,
    /// Stop before this offset (exclusive) [default: the high watermark].
    #[arg(long, conflicts_with = "until_time")]
    pub until_offset: Option<i64>,
    /// Stop before the first record at or after this RFC 3339 time.
    #[arg(long)]
    pub until_time: Option<String>,
    /// Destination: file:///dir or s3://bucket/prefix?endpoint=... (as --object-store).
    #[arg(long)]
    pub to: String,
    /// Continue each partition from the destination's checkpoint.
    #[arg(long)]
    pub incremental: bool,
    /// Type of the key column.
    #[arg(long, value_enum, default_value_t = KeyArg::Raw)]
    pub key_format: KeyArg,
    /// Type of the value column: raw bytes, or JSON objects decoded into
    /// typed, nested columns (records that do not fit go to an error file).
    #[arg(long, value_enum, default_value_t = ValueArg::Raw)]
    pub value_format: ValueArg,
    /// JSON value schema (an Arrow schema as JSON, like the `_value_schema.json`
    /// an export saves) [default: the destination's saved one, else inferred].
    #[arg(long)]
    pub schema: Option<PathBuf>,
    /// Records sampled to infer the JSON value schema.
    #[arg(long, default_value_t = 10_000)]
    pub schema_sample: usize,
    /// Parquet compression.
    #[arg(long, value_enum, default_value_t = CodecArg::Zstd)]
    pub compression: CodecArg,
    /// Offsets per file (files cover fixed multiples of this).
    #[arg(long, default_value_t = 1_000_000)]
    pub max_rows_per_file: i64,
    /// Rows per Parquet row group (sets the memory used).
    #[arg(long, default_value_t = 128 * 1024)]
    pub row_group_rows: usize,
    /// No progress bar and no summary line.
    #[arg(long, short)]
    pub quiet: bool,
    /// Print the summary as one JSON object on stdout.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub stores: StoreArgs,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum KeyArg {
    Raw,
    String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ValueArg {
    Raw,
    Json,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum CodecArg {
    Zstd,
    Snappy,
    None,
}

fn parse_time(flag: &str, value: &str) -> anyhow::Result<i64> {
    let t = chrono::DateTime::parse_from_rfc3339(value).with_context(|| {
        format!("--{flag} {value}: expected an RFC 3339 time like 2026-01-31T12:00:00Z")
    })?;
    Ok(t.timestamp_millis())
}

pub async fn run(args: ExportArgs) -> anyhow::Result<()> {
    if args.max_rows_per_file < 1 {
        bail!("--max-rows-per-file must be at least 1");
    }
    let settings = Settings::resolve(ServeArgs {
        stores: args.stores.clone(),
        ..ServeArgs::default()
    })?;
    let mut opts = ExportOptions::new(&args.topic);
    opts.partitions = args.partitions.clone();
    opts.from = match (args.from_offset, &args.from_time) {
        (Some(o), _) => Start::Offset(o),
        (None, Some(t)) => Start::Time(parse_time("from-time", t)?),
        (None, None) => Start::Earliest,
    };
    opts.until = match (args.until_offset, &args.until_time) {
        (Some(o), _) => End::Offset(o),
        (None, Some(t)) => End::Time(parse_time("until-time", t)?),
        (None, None) => End::Latest,
    };
    opts.incremental = args.incremental;
    opts.key_format = match args.key_format {
        KeyArg::Raw => KeyFormat::Raw,
        KeyArg::String => KeyFormat::String,
    };
    opts.value_json = args.value_format == ValueArg::Json;
    opts.schema_sample = args.schema_sample.max(1);
    if let Some(path) = &args.schema {
        if !opts.value_json {
            bail!("--schema needs --value-format json");
        }
        let text = std::fs::read(path)
            .with_context(|| format!("cannot read --schema {}", path.display()))?;
        let schema: arrow_schema::Schema = serde_json::from_slice(&text).with_context(|| {
            format!(
                "--schema {}: not an Arrow schema in JSON (see the _value_schema.json an export writes)",
                path.display()
            )
        })?;
        opts.value_schema = Some(Arc::new(schema));
    }
    opts.codec = match args.compression {
        CodecArg::Zstd => Codec::Zstd,
        CodecArg::Snappy => Codec::Snappy,
        CodecArg::None => Codec::None,
    };
    opts.max_rows_per_file = args.max_rows_per_file;
    opts.row_group_rows = args.row_group_rows;

    // Export reads existing data: never create an empty store by mistake.
    if let Some(path) = settings.metadata.strip_prefix("sqlite://") {
        if !std::path::Path::new(path).exists() {
            bail!(
                "no metadata store at {path}: point --data-dir (or --metadata) at a broker's data"
            );
        }
    }
    let meta = open_metadata(&settings.metadata)
        .await
        .with_context(|| format!("cannot open metadata store {}", settings.metadata))?;
    let source = open_object_store_with(&settings.object_store, None, RetryPolicy::default())
        .with_context(|| format!("cannot open object store {}", settings.object_store))?
        .store;
    let dest = open_object_store_with(&args.to, None, RetryPolicy::default())
        .with_context(|| format!("cannot open destination {}", args.to))?
        .store;
    let exporter = Exporter::new(&Stores::new(meta), source, dest);
    let plans = exporter.plan(&opts).await?;
    let total: u64 = plans.iter().map(|p| p.records()).sum();

    let bar = if args.quiet || args.json || !std::io::stderr().is_terminal() {
        ProgressBar::hidden()
    } else {
        ProgressBar::new(total)
    };
    let bytes = Arc::new(AtomicU64::new(0));
    let shown = bytes.clone();
    bar.set_style(
        ProgressStyle::with_template(
            "{spinner} {elapsed_precise} [{wide_bar}] {human_pos}/{human_len} records \
             {per_sec} {source_bytes} read, ETA {eta}",
        )
        .context("progress bar template")?
        .with_key(
            "source_bytes",
            move |_: &ProgressState, w: &mut dyn std::fmt::Write| {
                let _ = write!(
                    w,
                    "{}",
                    indicatif::HumanBytes(shown.load(Ordering::Relaxed))
                );
            },
        ),
    );
    let started = Instant::now();
    let progress = |records: u64, read: u64| {
        bytes.fetch_add(read, Ordering::Relaxed);
        bar.inc(records);
    };
    let summary = exporter.run(&opts, &plans, &progress).await;
    bar.finish_and_clear();
    let summary = summary?;
    report(&summary, started.elapsed().as_secs_f64(), &args)
}

fn report(s: &Summary, secs: f64, args: &ExportArgs) -> anyhow::Result<()> {
    if args.json {
        let mut v = serde_json::to_value(s).context("summary as JSON")?;
        if let Some(o) = v.as_object_mut() {
            o.insert("seconds".into(), serde_json::json!(secs));
        }
        println!("{v}");
    } else if !args.quiet {
        let secs = secs.max(1e-9);
        eprintln!(
            "exported {} records of {} ({} partitions, {} rejected) in {:.1} s: {:.0} records/s, \
             {:.1} MB/s of source data; {} files written, {} already there, {} replaced; {} of \
             Parquet from {} of segments",
            s.records,
            s.topic,
            s.partitions.len(),
            s.rejected,
            secs,
            s.records as f64 / secs,
            s.source_bytes as f64 / secs / 1e6,
            s.files_written,
            s.files_skipped,
            s.files_replaced,
            indicatif::HumanBytes(s.output_bytes),
            indicatif::HumanBytes(s.source_bytes),
        );
    }
    Ok(())
}

/// An error and its causes on one line, skipping causes whose text the
/// message before already contains (object_store nests its messages).
pub fn one_line(e: &anyhow::Error) -> String {
    tributary_runtime::chain(e.as_ref())
}
