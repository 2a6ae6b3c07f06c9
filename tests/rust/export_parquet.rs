//! Issue #5: `tributary export` replays a topic into Parquet while the broker
//! serves. Records produced by librdkafka (keys, headers, four codecs, four
//! partitions) come back one row each at their acknowledged offsets; a
//! second run writes nothing new; `--incremental` adds exactly the records
//! produced since; an export killed mid-way and run again leaves a complete,
//! duplicate-free set of files.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::common::*;
use anyhow::{bail, ensure, Context, Result};
use arrow_array::{
    Array, BinaryArray, Int64Array, ListArray, StringArray, StructArray, TimestampMillisecondArray,
};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

const TOPIC: &str = "history";
const PARTITIONS: i32 = 4;

/// One exported row: (partition, offset) → (value, key, header count, ts).
type Rows = BTreeMap<(i32, i64), (String, Option<Vec<u8>>, usize, i64)>;

/// Runs `tributary export` on the broker's data; returns its JSON summary.
fn export(broker: &BrokerProcess, to: &Path, extra: &[&str]) -> Result<serde_json::Value> {
    let out = Command::new(broker_bin())
        .arg("export")
        .arg("--data-dir")
        .arg(broker.data_dir())
        .args(["--topic", TOPIC, "--json"])
        .arg("--to")
        .arg(format!("file://{}", to.display()))
        .args(extra)
        .output()
        .context("run tributary export")?;
    if !out.status.success() {
        bail!(
            "export failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    serde_json::from_slice(&out.stdout).context("export summary is JSON")
}

/// Every row of every Parquet file under `dir`, failing on a duplicate.
fn read_rows(dir: &Path) -> Result<(Rows, usize)> {
    let mut rows = Rows::new();
    let mut files = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d)? {
            let path = entry?.path();
            if path.is_dir() {
                stack.push(path);
                continue;
            }
            if path.extension().and_then(|e| e.to_str()) != Some("parquet") {
                continue;
            }
            files += 1;
            // The partition is a Hive column of the path, not of the file.
            let partition: i32 = path
                .components()
                .find_map(|c| c.as_os_str().to_str()?.strip_prefix("partition="))
                .context("partition=P in the path")?
                .parse()?;
            let file = std::fs::File::open(&path)?;
            let reader = ParquetRecordBatchReaderBuilder::try_new(file)?.build()?;
            for batch in reader {
                let batch = batch?;
                let col = |name: &str| batch.column_by_name(name).context("column");
                let offsets = col("offset")?
                    .as_any()
                    .downcast_ref::<Int64Array>()
                    .context("offset type")?;
                let ts = col("timestamp")?
                    .as_any()
                    .downcast_ref::<TimestampMillisecondArray>()
                    .context("timestamp type")?;
                let keys = col("key")?
                    .as_any()
                    .downcast_ref::<BinaryArray>()
                    .context("key type")?;
                let values = col("value")?
                    .as_any()
                    .downcast_ref::<BinaryArray>()
                    .context("value type")?;
                let headers = col("headers")?
                    .as_any()
                    .downcast_ref::<ListArray>()
                    .context("headers type")?;
                for i in 0..batch.num_rows() {
                    let key = (!keys.is_null(i)).then(|| keys.value(i).to_vec());
                    let value = String::from_utf8(values.value(i).to_vec())?;
                    let row = (value, key, headers.value(i).len(), ts.value(i));
                    if rows.insert((partition, offsets.value(i)), row).is_some() {
                        bail!(
                            "{}/{} exported twice ({})",
                            partition,
                            offsets.value(i),
                            path.display()
                        );
                    }
                }
            }
        }
    }
    Ok((rows, files))
}

/// The exported rows are exactly the acknowledged records.
fn check_rows(rows: &Rows, acked: &HashMap<String, (i32, i64)>) -> Result<()> {
    ensure!(
        rows.len() == acked.len(),
        "{} rows exported, {} acknowledged",
        rows.len(),
        acked.len()
    );
    for ((p, o), (value, key, headers, ts)) in rows {
        ensure!(
            acked.get(value) == Some(&(*p, *o)),
            "{value} exported at {p}/{o}, acknowledged at {:?}",
            acked.get(value)
        );
        ensure!(key.is_some() && *headers == 2 && *ts > 0, "row {p}/{o}");
    }
    Ok(())
}

/// Produces values `range`, a quarter with each codec; returns value →
/// acknowledged (partition, offset).
async fn produce(
    bootstrap: &str,
    range: std::ops::Range<usize>,
) -> Result<HashMap<String, (i32, i64)>> {
    let mut acked = HashMap::new();
    let codecs = ["gzip", "snappy", "lz4", "zstd"];
    let quarter = range.len().div_ceil(codecs.len());
    for (q, codec) in codecs.iter().enumerate() {
        let start = range.start + q * quarter;
        let end = (start + quarter).min(range.end);
        let p = producer(bootstrap, &[("acks", "all"), ("compression.type", codec)])?;
        let records: Vec<Out> = (start..end)
            .map(|i| Out {
                key: format!("user-{}", i % 97),
                value: format!(r#"{{"n":{i},"user":{{"id":{},"tags":["a","b"]}}}}"#, i % 97),
                headers: vec![
                    ("source".into(), codec.to_string()),
                    ("seq".into(), i.to_string()),
                ],
                ..Out::default()
            })
            .collect();
        let values: Vec<String> = records.iter().map(|r| r.value.clone()).collect();
        for (v, d) in values
            .into_iter()
            .zip(produce_all(&p, TOPIC, records).await?)
        {
            acked.insert(v, (d.partition, d.offset));
        }
    }
    Ok(acked)
}

#[tokio::test(flavor = "multi_thread")]
async fn export_replays_history_into_parquet() -> Result<()> {
    let broker = start_broker_local(&[])?;
    run_test(&broker, async {
        let bootstrap = broker.bootstrap();
        create_topic(&bootstrap, TOPIC, PARTITIONS).await?;
        let mut acked = produce(&bootstrap, 0..20_000).await?;
        ensure!(acked.len() == 20_000);

        let out = tempfile::tempdir()?;
        let first = export(&broker, out.path(), &["--max-rows-per-file", "2000"])?;
        ensure!(first["records"] == 20_000, "{first}");
        let (rows, files) = read_rows(out.path())?;
        check_rows(&rows, &acked)?;
        ensure!(files as u64 == first["files_written"].as_u64().unwrap_or(0));

        // Same export again: same files, nothing rewritten.
        let listing = |dir: &Path| -> Result<Vec<(String, u64)>> {
            let mut v = Vec::new();
            let mut stack = vec![dir.to_path_buf()];
            while let Some(d) = stack.pop() {
                for e in std::fs::read_dir(&d)? {
                    let e = e?;
                    if e.path().is_dir() {
                        stack.push(e.path());
                    } else {
                        v.push((e.path().display().to_string(), e.metadata()?.len()));
                    }
                }
            }
            v.sort();
            Ok(v)
        };
        let before = listing(out.path())?;
        let again = export(&broker, out.path(), &["--max-rows-per-file", "2000"])?;
        ensure!(
            again["files_written"] == 0 && again["records"] == 0,
            "{again}"
        );
        ensure!(
            listing(out.path())? == before,
            "a second run changed the files"
        );

        // More data; --incremental adds exactly the new records.
        acked.extend(produce(&bootstrap, 20_000..23_000).await?);
        let inc = export(
            &broker,
            out.path(),
            &["--max-rows-per-file", "2000", "--incremental"],
        )?;
        ensure!(inc["records"] == 3_000, "{inc}");
        let (rows, _) = read_rows(out.path())?;
        check_rows(&rows, &acked)?;

        // A plain (non-incremental) run over the grown topic replaces the
        // partial tail files instead of duplicating them.
        let full = export(&broker, out.path(), &["--max-rows-per-file", "2000"])?;
        ensure!(full["files_replaced"].as_u64().unwrap_or(0) > 0, "{full}");
        let (rows, _) = read_rows(out.path())?;
        check_rows(&rows, &acked)?;

        // Killed mid-way, then run again: complete and duplicate-free.
        let killed = tempfile::tempdir()?;
        let mut child = Command::new(broker_bin())
            .arg("export")
            .arg("--data-dir")
            .arg(broker.data_dir())
            .args(["--topic", TOPIC, "--quiet", "--max-rows-per-file", "300"])
            .arg("--to")
            .arg(format!("file://{}", killed.path().display()))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?;
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        while listing(killed.path())?.is_empty() && std::time::Instant::now() < deadline {
            if child.try_wait()?.is_some() {
                break;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        let _ = child.kill();
        let status = child.wait()?;
        let (partial, _) = read_rows(killed.path())?;
        eprintln!(
            "export killed ({status}) with {} of {} rows written",
            partial.len(),
            acked.len()
        );
        export(&broker, killed.path(), &["--max-rows-per-file", "300"])?;
        let (rows, _) = read_rows(killed.path())?;
        check_rows(&rows, &acked)?;

        // JSON values: typed, nested columns; misfits go to error files.
        let bad = producer(&bootstrap, &[("acks", "all")])?;
        let misfits = produce_all(
            &bad,
            TOPIC,
            ["not json", r#"{"n":"text"}"#, r#"{"n":1,"surprise":true}"#].map(|v| Out {
                key: "bad".into(),
                value: v.into(),
                headers: vec![("a".into(), "b".into()), ("c".into(), "d".into())],
                ..Out::default()
            }),
        )
        .await?;
        let json_out = tempfile::tempdir()?;
        let js = export(
            &broker,
            json_out.path(),
            &["--value-format", "json", "--key-format", "string"],
        )?;
        ensure!(js["rejected"] == 3, "{js}");
        let mut rejected_offsets = Vec::new();
        let mut json_rows = 0usize;
        let mut stack = vec![json_out.path().to_path_buf()];
        while let Some(d) = stack.pop() {
            for e in std::fs::read_dir(&d)? {
                let path = e?.path();
                if path.is_dir() {
                    stack.push(path);
                } else if path.to_string_lossy().ends_with(".errors.jsonl") {
                    for line in std::fs::read_to_string(&path)?.lines() {
                        let v: serde_json::Value = serde_json::from_str(line)?;
                        rejected_offsets.push((v["partition"].as_i64(), v["offset"].as_i64()));
                    }
                } else if path.extension().and_then(|e| e.to_str()) == Some("parquet") {
                    let file = std::fs::File::open(&path)?;
                    for batch in ParquetRecordBatchReaderBuilder::try_new(file)?.build()? {
                        let batch = batch?;
                        json_rows += batch.num_rows();
                        let value = batch
                            .column_by_name("value")
                            .and_then(|c| c.as_any().downcast_ref::<StructArray>())
                            .context("value is a struct column")?;
                        let n = value
                            .column_by_name("n")
                            .and_then(|c| c.as_any().downcast_ref::<Int64Array>())
                            .context("value.n is int64")?;
                        let user = value
                            .column_by_name("user")
                            .and_then(|c| c.as_any().downcast_ref::<StructArray>())
                            .context("value.user is a struct")?;
                        ensure!(user.column_by_name("tags").is_some());
                        ensure!(n.null_count() == 0);
                        let keys = batch
                            .column_by_name("key")
                            .and_then(|c| c.as_any().downcast_ref::<StringArray>())
                            .context("key is a string column")?;
                        ensure!(keys.value(0).starts_with("user-"));
                    }
                }
            }
        }
        rejected_offsets.sort();
        let mut expected: Vec<(Option<i64>, Option<i64>)> = misfits
            .iter()
            .map(|d| (Some(i64::from(d.partition)), Some(d.offset)))
            .collect();
        expected.sort();
        ensure!(
            rejected_offsets == expected,
            "{rejected_offsets:?} vs {expected:?}"
        );
        ensure!(json_rows == acked.len(), "{json_rows} JSON rows");

        // Bad input: one line naming the problem.
        let data_dir = broker.data_dir().display().to_string();
        let cases: [(&[&str], &str); 5] = [
            (&["--topic", "nope"], "unknown topic nope"),
            (&["--topic", TOPIC, "--partitions", "9"], "no partition 9"),
            (
                &["--topic", TOPIC, "--from-offset", "999999"],
                "out of range",
            ),
            (&["--topic", TOPIC, "--from-time", "yesterday"], "RFC 3339"),
            (
                &["--topic", TOPIC, "--data-dir", "/nonexistent/tributary"],
                "no metadata store",
            ),
        ];
        for (args, says) in cases {
            let mut cmd = Command::new(broker_bin());
            cmd.arg("export");
            if !args.contains(&"--data-dir") {
                cmd.args(["--data-dir", data_dir.as_str()]);
            }
            let out = cmd
                .args(args)
                .arg("--to")
                .arg(format!("file://{}", out.path().display()))
                .env("RUST_BACKTRACE", "1")
                .output()?;
            let err = String::from_utf8_lossy(&out.stderr);
            ensure!(
                !out.status.success() && err.contains(says),
                "{args:?}: {err}"
            );
            ensure!(
                err.trim().lines().count() == 1,
                "{args:?}: not one line: {err}"
            );
        }
        ensure!(
            !Path::new("/nonexistent/tributary").exists(),
            "export created a data dir"
        );
        Ok(())
    })
    .await
}
