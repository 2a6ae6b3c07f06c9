//! Fetch, ListOffsets, Produce and ApiVersions/Metadata semantics over raw
//! TCP with `kafka-protocol` request/response structs (DESIGN.md "Read path"
//! and "Traps other Kafka-compatible brokers fell into"):
//!
//! - a fetch offset inside a batch returns that whole batch (base offsets
//!   patched, CRCs valid) and what follows;
//! - a response is filled across partitions, and the response and partition
//!   byte limits hold, except that the first batch is always returned whole;
//! - a fetch answers as soon as `min_bytes` is met, and a fetch parked at the
//!   high watermark is woken by a commit;
//! - OFFSET_OUT_OF_RANGE and UNKNOWN_TOPIC_OR_PARTITION per partition;
//! - one corrupt partition in a produce does not fail the other; acks=0 gets
//!   no answer; pipelined produces keep their order;
//! - ApiVersions v3 and Metadata omit default-valued tagged fields, and every
//!   advertised API version is one `kafka-protocol` can decode.
//!
//! Every test starts its own broker. Times are only bounded from above, and
//! generously (the machine is shared).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use crate::common::raw::Raw;
use crate::common::*;
use anyhow::{bail, ensure, Context, Result};
use bytes::{Buf, Bytes, BytesMut};
use kafka_protocol::messages::api_versions_response::ApiVersionsResponse;
use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
use kafka_protocol::messages::fetch_response::PartitionData;
use kafka_protocol::messages::list_offsets_request::{ListOffsetsPartition, ListOffsetsTopic};
use kafka_protocol::messages::list_offsets_response::ListOffsetsPartitionResponse;
use kafka_protocol::messages::metadata_request::MetadataRequestTopic;
use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
use kafka_protocol::messages::produce_response::PartitionProduceResponse;
use kafka_protocol::messages::{
    ApiKey, ApiVersionsRequest, BrokerId, FetchRequest, ListOffsetsRequest, MetadataRequest,
    MetadataResponse, ProduceRequest, ProduceResponse, ResponseHeader, TopicName,
};
use kafka_protocol::protocol::{Decodable, Encodable, HeaderVersion, Request, StrBytes};
use kafka_protocol::records::{Record, RecordBatchDecoder};

/// Generous upper bound for "answers promptly" (the machine is shared).
const PROMPT: Duration = Duration::from_secs(8);
const MIB: i32 = 1024 * 1024;

const NONE: i16 = 0;
const OFFSET_OUT_OF_RANGE: i16 = 1;
const CORRUPT_MESSAGE: i16 = 2;
const UNKNOWN_TOPIC_OR_PARTITION: i16 = 3;

const EARLIEST: i64 = -2;
const LATEST: i64 = -1;

// ------------------------------------------------------------------ scenarios

/// Starts a broker, creates `topics` (name, partitions) with rdkafka, and
/// runs the blocking raw-protocol `check` against it.
async fn scenario(topics: &[(&str, i32)], check: fn(SocketAddr) -> Result<()>) -> Result<()> {
    let broker = start_broker(&[])?;
    run_test(&broker, async {
        let bootstrap = broker.bootstrap();
        for (name, partitions) in topics {
            create_topic(&bootstrap, name, *partitions).await?;
        }
        let addr = broker.addr();
        tokio::task::block_in_place(|| check(addr))
    })
    .await
}

// 1. ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn fetch_offset_inside_batch_returns_whole_batch() -> Result<()> {
    scenario(&[("inside", 1)], inside_batch).await
}

fn inside_batch(addr: SocketAddr) -> Result<()> {
    let mut conn = Conn::connect(addr)?;
    let first: Vec<String> = (0..10).map(|i| format!("first-{i}")).collect();
    let second: Vec<String> = (0..5).map(|i| format!("second-{i}")).collect();
    let answer = conn.produce_one("inside", 0, record_batch(&first)?)?;
    ensure!(
        answer.error_code == NONE && answer.base_offset == 0,
        "first batch answered {answer:?}"
    );
    let answer = conn.produce_one("inside", 0, record_batch(&second)?)?;
    ensure!(
        answer.error_code == NONE && answer.base_offset == 10,
        "second batch answered {answer:?}"
    );

    for offset in [4, 0, 9] {
        let part = conn.fetch_one("inside", 0, offset, MIB, MIB)?;
        ensure!(
            part.error_code == NONE,
            "fetch at {offset}: error {}",
            part.error_code
        );
        ensure!(
            part.high_watermark == 15,
            "high watermark {}",
            part.high_watermark
        );
        let fetched = split_fetched(&part)?;
        ensure!(
            fetched.partial_tail == 0,
            "trailing partial batch at offset {offset}"
        );
        let bases: Vec<i64> = fetched.batches.iter().map(|b| b.base_offset).collect();
        ensure!(
            bases == [0, 10],
            "fetch at offset {offset}: batch base offsets {bases:?}, expected [0, 10] \
             (the batch containing the offset must come back whole)"
        );
        let (offsets, values) = fetched.offsets_and_values();
        ensure!(
            offsets == (0..15).collect::<Vec<i64>>(),
            "record offsets {offsets:?}"
        );
        let expected: Vec<&str> = first.iter().chain(&second).map(String::as_str).collect();
        ensure!(values == expected, "values {values:?}");
    }

    // At offset 10 the first batch is no longer needed.
    let part = conn.fetch_one("inside", 0, 12, MIB, MIB)?;
    let bases: Vec<i64> = split_fetched(&part)?
        .batches
        .iter()
        .map(|b| b.base_offset)
        .collect();
    ensure!(
        bases == [10],
        "fetch at offset 12: batch base offsets {bases:?}"
    );
    Ok(())
}

// 2. ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn fetch_fills_response_across_partitions() -> Result<()> {
    scenario(&[("across", 3)], across_partitions).await
}

fn across_partitions(addr: SocketAddr) -> Result<()> {
    let mut conn = Conn::connect(addr)?;
    for p in 0..3 {
        // ~100 KB per partition: 100 records of 1000 bytes.
        let values: Vec<String> = (0..100)
            .map(|i| format!("p{p}-{i:04}-{}", "x".repeat(990)))
            .collect();
        let answer = conn.produce_one("across", p, record_batch(&values)?)?;
        ensure!(
            answer.error_code == NONE,
            "produce to partition {p}: {answer:?}"
        );
    }
    let started = Instant::now();
    let response = conn.fetch(
        &[("across", &[(0, 0), (1, 0), (2, 0)])],
        MIB,
        10 * MIB,
        1,
        5_000,
    )?;
    let elapsed = started.elapsed();
    for p in 0..3 {
        let part = partition_of(&response, "across", p)?;
        ensure!(
            part.error_code == NONE,
            "partition {p}: error {}",
            part.error_code
        );
        let (offsets, values) = split_fetched(part)?.offsets_and_values();
        ensure!(
            offsets.len() == 100,
            "partition {p}: {} records in one response with partition_max_bytes 1 MiB and \
             max_bytes 10 MiB, expected all 100 (the response must be filled across partitions)",
            offsets.len()
        );
        ensure!(
            values.iter().all(|v| v.starts_with(&format!("p{p}-"))),
            "partition {p} holds records of another partition"
        );
    }
    ensure!(elapsed < PROMPT, "fetch with data present took {elapsed:?}");
    Ok(())
}

// 3. ---------------------------------------------------------------------------

/// Three partitions with five batches of ten ~100-byte records each.
const LIMITS_TOPIC: &str = "limits";

fn fill_limits_topic(conn: &mut Conn) -> Result<usize> {
    let mut batch_len = 0;
    for p in 0..3 {
        for b in 0..5 {
            let values: Vec<String> = (0..10)
                .map(|i| format!("p{p}-b{b}-r{i}-{}", "y".repeat(90)))
                .collect();
            let bytes = record_batch(&values)?;
            batch_len = batch_len.max(bytes.len());
            let answer = conn.produce_one(LIMITS_TOPIC, p, bytes)?;
            ensure!(
                answer.error_code == NONE && answer.base_offset == i64::from(b) * 10,
                "produce p{p} b{b}: {answer:?}"
            );
        }
    }
    Ok(batch_len)
}

fn all_three(offset: i64) -> [(i32, i64); 3] {
    [(0, offset), (1, offset), (2, offset)]
}

#[tokio::test(flavor = "multi_thread")]
async fn fetch_max_bytes_smaller_than_one_batch() -> Result<()> {
    scenario(&[(LIMITS_TOPIC, 3)], max_bytes_smaller_than_batch).await
}

fn max_bytes_smaller_than_batch(addr: SocketAddr) -> Result<()> {
    let mut conn = Conn::connect(addr)?;
    let batch_len = fill_limits_topic(&mut conn)?;
    ensure!(batch_len > 200, "test batches are only {batch_len} bytes");

    // max_bytes far below one batch: exactly one whole batch, from the first
    // partition, and nothing from the others.
    let response = conn.fetch(&[(LIMITS_TOPIC, &all_three(0))], MIB, 100, 1, 1_000)?;
    let counts = batch_counts(&response, LIMITS_TOPIC)?;
    ensure!(
        counts == [(0, 1), (1, 0), (2, 0)],
        "max_bytes=100: whole batches per partition {counts:?}, expected one from partition 0 only"
    );

    // The first partition is empty (at its high watermark): the first
    // non-empty one gets the one batch.
    let response = conn.fetch(
        &[(LIMITS_TOPIC, &[(0, 50), (1, 0), (2, 0)])],
        MIB,
        100,
        1,
        1_000,
    )?;
    let counts = batch_counts(&response, LIMITS_TOPIC)?;
    ensure!(
        counts == [(0, 0), (1, 1), (2, 0)],
        "max_bytes=100 with partition 0 at its end: whole batches per partition {counts:?}, \
         expected one from partition 1 only"
    );

    // partition_max_bytes below one batch, first partition: one whole batch.
    let part = conn.fetch_one(LIMITS_TOPIC, 0, 0, 100, MIB)?;
    let fetched = split_fetched(&part)?;
    ensure!(
        fetched.batches.len() == 1 && fetched.batches[0].base_offset == 0,
        "partition_max_bytes=100: {} whole batches, expected exactly the first",
        fetched.batches.len()
    );
    // The same from inside a batch.
    let part = conn.fetch_one(LIMITS_TOPIC, 0, 23, 100, MIB)?;
    let bases: Vec<i64> = split_fetched(&part)?
        .batches
        .iter()
        .map(|b| b.base_offset)
        .collect();
    ensure!(
        bases == [20],
        "partition_max_bytes=100 at offset 23: batches {bases:?}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn fetch_partition_max_bytes_limits_each_partition() -> Result<()> {
    scenario(&[(LIMITS_TOPIC, 3)], partition_max_bytes_limits).await
}

fn partition_max_bytes_limits(addr: SocketAddr) -> Result<()> {
    let mut conn = Conn::connect(addr)?;
    let batch_len = fill_limits_topic(&mut conn)?;
    // Room for three and a half batches per partition.
    let limit = i32::try_from(batch_len * 7 / 2)?;
    let response = conn.fetch(&[(LIMITS_TOPIC, &all_three(0))], limit, 10 * MIB, 1, 1_000)?;
    for p in 0..3 {
        let part = partition_of(&response, LIMITS_TOPIC, p)?;
        let len = part.records.as_ref().map_or(0, Bytes::len);
        let fetched = split_fetched(part)?;
        ensure!(
            fetched.batches.len() == 3 && len <= limit as usize,
            "partition {p} with partition_max_bytes={limit} (3.5 batches): {} whole batches, \
             {len} bytes; expected 3 batches within the limit",
            fetched.batches.len()
        );
    }
    Ok(())
}

/// Kafka (KIP-74) lets only the first batch of the first non-empty
/// partition exceed the limits; every later partition is cut at
/// min(partition_max_bytes, what is left of max_bytes), so the response
/// never exceeds max_bytes unless its first batch alone does. (Kafka may cut
/// through a batch; clients drop a trailing partial batch.)
#[tokio::test(flavor = "multi_thread")]
async fn fetch_limits_bind_after_the_first_batch() -> Result<()> {
    scenario(&[(LIMITS_TOPIC, 3)], limits_after_first_batch).await
}

fn limits_after_first_batch(addr: SocketAddr) -> Result<()> {
    let mut conn = Conn::connect(addr)?;
    let batch_len = fill_limits_topic(&mut conn)?;
    let mut failures = Vec::new();

    // max_bytes for two and a half batches across three partitions.
    let max_bytes = i32::try_from(batch_len * 5 / 2)?;
    let response = conn.fetch(&[(LIMITS_TOPIC, &all_three(0))], MIB, max_bytes, 1, 1_000)?;
    let total = record_bytes(&response);
    let counts = batch_counts(&response, LIMITS_TOPIC)?;
    if total > max_bytes as usize {
        failures.push(format!(
            "max_bytes={max_bytes} (2.5 batches of {batch_len} B) over 3 partitions: response \
             holds {total} record bytes, whole batches per partition {counts:?}"
        ));
    }

    // partition_max_bytes below one batch: only the first partition may
    // return a whole batch.
    let response = conn.fetch(&[(LIMITS_TOPIC, &all_three(0))], 100, 10 * MIB, 1, 1_000)?;
    let counts = batch_counts(&response, LIMITS_TOPIC)?;
    for p in 1..3 {
        let len = partition_of(&response, LIMITS_TOPIC, p)?
            .records
            .as_ref()
            .map_or(0, Bytes::len);
        if len > 100 {
            failures.push(format!(
                "partition_max_bytes=100: partition {p} (not the first) returned {len} bytes, \
                 whole batches per partition {counts:?}"
            ));
        }
    }
    ensure!(failures.is_empty(), "{}", failures.join("\n"));
    Ok(())
}

// 4. ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn fetch_min_bytes_and_long_poll() -> Result<()> {
    scenario(&[("wait", 1)], min_bytes_and_long_poll).await
}

fn min_bytes_and_long_poll(addr: SocketAddr) -> Result<()> {
    let mut conn = Conn::connect(addr)?;
    let answer = conn.produce_one("wait", 0, record_batch(&["w-0"])?)?;
    ensure!(
        answer.error_code == NONE && answer.base_offset == 0,
        "{answer:?}"
    );

    // Data present, min_bytes=1: answered at once, not after max_wait (the
    // trap: waiting about half of fetch.wait.max.ms anyway).
    let started = Instant::now();
    let response = conn.fetch(&[("wait", &[(0, 0)])], MIB, MIB, 1, 20_000)?;
    let elapsed = started.elapsed();
    let (_, values) = split_fetched(partition_of(&response, "wait", 0)?)?.offsets_and_values();
    ensure!(
        values == ["w-0"],
        "fetch with data present returned {values:?}"
    );
    ensure!(
        elapsed < PROMPT,
        "fetch with data present and max_wait 20 s took {elapsed:?}"
    );

    // min_bytes not reachable: after max_wait, what there is.
    let response = conn.fetch(&[("wait", &[(0, 0)])], MIB, MIB, MIB, 300)?;
    let (_, values) = split_fetched(partition_of(&response, "wait", 0)?)?.offsets_and_values();
    ensure!(
        values == ["w-0"],
        "fetch with unmet min_bytes returned {values:?}"
    );

    // At the high watermark: empty after max_wait, no error.
    let started = Instant::now();
    let response = conn.fetch(&[("wait", &[(0, 1)])], MIB, MIB, 1, 300)?;
    let elapsed = started.elapsed();
    let part = partition_of(&response, "wait", 0)?;
    ensure!(
        part.error_code == NONE && part.high_watermark == 1,
        "fetch at the high watermark: error {} high watermark {}",
        part.error_code,
        part.high_watermark
    );
    ensure!(
        part.records.as_ref().is_none_or(Bytes::is_empty),
        "fetch at the high watermark returned {} bytes",
        part.records.as_ref().map_or(0, Bytes::len)
    );
    ensure!(
        elapsed < PROMPT,
        "fetch with max_wait 300 ms took {elapsed:?}"
    );

    // Parked at the high watermark, woken by a produce on another connection.
    let producer = std::thread::spawn(move || -> Result<PartitionProduceResponse> {
        std::thread::sleep(Duration::from_millis(500));
        let mut other = Conn::connect(addr)?;
        other.produce_one("wait", 0, record_batch(&["w-1"])?)
    });
    let started = Instant::now();
    let response = conn.fetch(&[("wait", &[(0, 1)])], MIB, MIB, 1, 10_000)?;
    let elapsed = started.elapsed();
    let answer = producer
        .join()
        .map_err(|_| anyhow::anyhow!("producer thread panicked"))??;
    ensure!(
        answer.error_code == NONE && answer.base_offset == 1,
        "{answer:?}"
    );
    let part = partition_of(&response, "wait", 0)?;
    let (offsets, values) = split_fetched(part)?.offsets_and_values();
    ensure!(
        offsets == [1] && values == ["w-1"],
        "parked fetch (max_wait 10 s) returned offsets {offsets:?} values {values:?} after \
         {elapsed:?}, error {} high watermark {}; expected the record produced meanwhile",
        part.error_code,
        part.high_watermark
    );
    ensure!(
        elapsed < PROMPT,
        "parked fetch woken only after {elapsed:?}"
    );
    Ok(())
}

// 5. ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn fetch_offset_out_of_range() -> Result<()> {
    scenario(&[("range", 1)], offset_out_of_range).await
}

fn offset_out_of_range(addr: SocketAddr) -> Result<()> {
    let mut conn = Conn::connect(addr)?;
    let answer = conn.produce_one("range", 0, record_batch(&["a", "b", "c"])?)?;
    ensure!(answer.error_code == NONE, "{answer:?}");

    for offset in [3 + 5, -1, -5] {
        // A long max_wait: an error must be answered at once, not parked.
        let started = Instant::now();
        let response = conn.fetch(&[("range", &[(0, offset)])], MIB, MIB, 1, 10_000)?;
        let elapsed = started.elapsed();
        let part = partition_of(&response, "range", 0)?;
        ensure!(
            part.error_code == OFFSET_OUT_OF_RANGE,
            "fetch at {offset}: error {}, expected OFFSET_OUT_OF_RANGE",
            part.error_code
        );
        ensure!(
            part.high_watermark == 3,
            "fetch at {offset}: high watermark {} in the OFFSET_OUT_OF_RANGE answer, expected 3",
            part.high_watermark
        );
        ensure!(
            part.records.as_ref().is_none_or(Bytes::is_empty),
            "fetch at {offset}: records in an error answer"
        );
        ensure!(
            elapsed < PROMPT,
            "fetch at {offset} answered after {elapsed:?}"
        );
    }

    // One partition out of range does not spoil another in the same request.
    let response = conn.fetch(
        &[("range", &[(0, 100)]), ("no-such-fetch-topic", &[(0, 0)])],
        MIB,
        MIB,
        1,
        100,
    )?;
    let bad = partition_of(&response, "no-such-fetch-topic", 0)?;
    ensure!(
        bad.error_code == UNKNOWN_TOPIC_OR_PARTITION,
        "fetch of an unknown topic: error {}",
        bad.error_code
    );
    let response = conn.fetch(
        &[("range", &[(0, 100)]), ("range", &[(0, 0)])],
        MIB,
        MIB,
        1,
        100,
    );
    // Duplicate partitions are the client's mistake; the broker may answer
    // either way, but must answer.
    response.context("fetch listing a partition twice got no answer")?;
    Ok(())
}

// 6. ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn list_offsets_earliest_latest_and_unknown_topic() -> Result<()> {
    scenario(&[("lo-empty", 1), ("lo-full", 2)], list_offsets).await
}

fn list_offsets(addr: SocketAddr) -> Result<()> {
    let mut conn = Conn::connect(addr)?;
    let values: Vec<String> = (0..7).map(|i| format!("lo-{i}")).collect();
    let answer = conn.produce_one("lo-full", 0, record_batch(&values)?)?;
    ensure!(answer.error_code == NONE, "{answer:?}");

    let (lo, hi) = conn.version_range(ApiKey::ListOffsets)?;
    for version in [lo.max(1), hi.min(6)] {
        for (timestamp, full_p0) in [(EARLIEST, 0), (LATEST, 7)] {
            let request = ListOffsetsRequest::default()
                .with_replica_id(BrokerId(-1))
                .with_topics(vec![
                    list_topic("lo-empty", &[0], timestamp),
                    list_topic("no-such-lo-topic", &[0, 1], timestamp),
                    list_topic("lo-full", &[0, 1], timestamp),
                ]);
            let response = conn.call(&request, version)?;
            let mut got: BTreeMap<(String, i32), ListOffsetsPartitionResponse> = BTreeMap::new();
            for t in response.topics {
                for p in t.partitions {
                    got.insert((t.name.0.to_string(), p.partition_index), p);
                }
            }
            let what = format!("ListOffsets v{version} timestamp {timestamp}");
            for (topic, partition, offset) in [
                ("lo-empty", 0, 0),
                ("lo-full", 0, full_p0),
                ("lo-full", 1, 0),
            ] {
                let p = got
                    .get(&(topic.to_owned(), partition))
                    .with_context(|| format!("{what}: no answer for {topic}/{partition}"))?;
                ensure!(
                    p.error_code == NONE && p.offset == offset,
                    "{what}: {topic}/{partition} answered error {} offset {}, expected offset {offset}",
                    p.error_code,
                    p.offset
                );
            }
            for partition in [0, 1] {
                let p = got
                    .get(&("no-such-lo-topic".to_owned(), partition))
                    .with_context(|| {
                        format!("{what}: no answer for the unknown topic/{partition}")
                    })?;
                ensure!(
                    p.error_code == UNKNOWN_TOPIC_OR_PARTITION,
                    "{what}: unknown topic partition {partition} answered error {}",
                    p.error_code
                );
            }
        }
    }
    Ok(())
}

fn list_topic(name: &str, partitions: &[i32], timestamp: i64) -> ListOffsetsTopic {
    ListOffsetsTopic::default()
        .with_name(topic_name(name))
        .with_partitions(
            partitions
                .iter()
                .map(|&p| {
                    ListOffsetsPartition::default()
                        .with_partition_index(p)
                        .with_current_leader_epoch(-1)
                        .with_timestamp(timestamp)
                })
                .collect(),
        )
}

// 7. ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn produce_bad_crc_fails_only_its_partition() -> Result<()> {
    scenario(&[("crc", 2)], bad_crc_one_partition).await
}

fn bad_crc_one_partition(addr: SocketAddr) -> Result<()> {
    let mut conn = Conn::connect(addr)?;
    let good = record_batch(&["good-0", "good-1", "good-2"])?;
    let mut corrupt = BytesMut::from(&record_batch(&["bad-0", "bad-1"])?[..]);
    // Batch header: baseOffset(8) length(4) leaderEpoch(4) magic(1) crc(4).
    corrupt[18] ^= 0x5A;
    let request = produce_request(1, "crc", vec![(0, good), (1, corrupt.freeze())]);
    let version = conn.version(ApiKey::Produce, 3, 11)?;
    let response = conn.call(&request, version)?;
    let parts = produce_partitions(&response);
    let good = parts.get(&0).context("no answer for the good partition")?;
    let bad = parts
        .get(&1)
        .context("no answer for the corrupt partition")?;
    ensure!(
        good.error_code == NONE && good.base_offset == 0,
        "good partition answered error {} base offset {}",
        good.error_code,
        good.base_offset
    );
    ensure!(
        bad.error_code == CORRUPT_MESSAGE,
        "corrupt partition answered error {}, expected CORRUPT_MESSAGE",
        bad.error_code
    );

    let response = conn.fetch(&[("crc", &[(0, 0), (1, 0)])], MIB, MIB, 1, 500)?;
    let p0 = partition_of(&response, "crc", 0)?;
    let (offsets, values) = split_fetched(p0)?.offsets_and_values();
    ensure!(
        offsets == [0, 1, 2] && values == ["good-0", "good-1", "good-2"] && p0.high_watermark == 3,
        "good partition holds offsets {offsets:?} values {values:?} high watermark {}",
        p0.high_watermark
    );
    let p1 = partition_of(&response, "crc", 1)?;
    ensure!(
        p1.error_code == NONE
            && p1.high_watermark == 0
            && p1.records.as_ref().is_none_or(Bytes::is_empty),
        "corrupt partition: error {} high watermark {} {} bytes",
        p1.error_code,
        p1.high_watermark,
        p1.records.as_ref().map_or(0, Bytes::len)
    );
    Ok(())
}

// 8. ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn produce_acks_zero_gets_no_answer() -> Result<()> {
    scenario(&[("acks0", 1)], acks_zero).await
}

fn acks_zero(addr: SocketAddr) -> Result<()> {
    let mut conn = Conn::connect(addr)?;
    let version = conn.version(ApiKey::Produce, 3, 11)?;
    let request = produce_request(0, "acks0", vec![(0, record_batch(&["z-0", "z-1"])?)]);
    let produce_id = conn.send(&request, version)?;
    let versions_id = conn.send(&ApiVersionsRequest::default(), 0)?;
    let mut frame = conn.raw.next_frame()?;
    let id = frame.get_i32();
    ensure!(
        id == versions_id,
        "first answer after an acks=0 produce (id {produce_id}) and ApiVersions (id \
         {versions_id}) has correlation id {id}"
    );
    let response = ApiVersionsResponse::decode(&mut frame, 0).context("decode ApiVersions")?;
    ensure!(
        response.error_code == NONE,
        "ApiVersions error {}",
        response.error_code
    );

    // The records become readable.
    let end = Instant::now() + Duration::from_secs(10);
    loop {
        let part = conn.fetch_one("acks0", 0, 0, MIB, MIB)?;
        let (offsets, values) = split_fetched(&part)?.offsets_and_values();
        if !offsets.is_empty() {
            ensure!(
                offsets == [0, 1] && values == ["z-0", "z-1"],
                "acks=0 records read back as offsets {offsets:?} values {values:?}"
            );
            break;
        }
        ensure!(
            Instant::now() < end,
            "acks=0 records not readable after 10 s"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // The connection is still in step.
    conn.call(&ApiVersionsRequest::default(), 0)?;
    Ok(())
}

// 9. ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn produce_pipelined_answers_in_order() -> Result<()> {
    scenario(&[("pipeline", 1)], pipelined_produce).await
}

fn pipelined_produce(addr: SocketAddr) -> Result<()> {
    const N: i64 = 20;
    let mut conn = Conn::connect(addr)?;
    let version = conn.version(ApiKey::Produce, 3, 11)?;
    let mut ids = Vec::new();
    for i in 0..N {
        let values = [format!("pipe-{i}-a"), format!("pipe-{i}-b")];
        let request = produce_request(-1, "pipeline", vec![(0, record_batch(&values)?)]);
        ids.push(conn.send(&request, version)?);
    }
    let mut bases = Vec::new();
    for (i, &expected) in ids.iter().enumerate() {
        let mut frame = conn.raw.next_frame()?;
        let header = ResponseHeader::decode(&mut frame, ProduceResponse::header_version(version))?;
        ensure!(
            header.correlation_id == expected,
            "response {i} has correlation id {}, expected {expected}",
            header.correlation_id
        );
        let response = ProduceResponse::decode(&mut frame, version)?;
        let parts = produce_partitions(&response);
        let p = parts.get(&0).context("no partition 0 in produce answer")?;
        ensure!(p.error_code == NONE, "request {i}: error {}", p.error_code);
        bases.push(p.base_offset);
    }
    let expected: Vec<i64> = (0..N).map(|i| i * 2).collect();
    ensure!(
        bases == expected,
        "base offsets of pipelined produces {bases:?}, expected {expected:?} (request order)"
    );
    let part = conn.fetch_one("pipeline", 0, 0, MIB, MIB)?;
    let (offsets, values) = split_fetched(&part)?.offsets_and_values();
    ensure!(
        offsets == (0..2 * N).collect::<Vec<_>>(),
        "offsets {offsets:?}"
    );
    let expected: Vec<String> = (0..N)
        .flat_map(|i| [format!("pipe-{i}-a"), format!("pipe-{i}-b")])
        .collect();
    ensure!(values == expected, "values {values:?}");
    Ok(())
}

// 10. --------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn api_versions_and_metadata_encoding() -> Result<()> {
    scenario(&[("meta-enc", 2)], versions_and_metadata).await
}

fn versions_and_metadata(addr: SocketAddr) -> Result<()> {
    let mut conn = Conn::connect(addr)?;

    // ApiVersions v3 by hand: header v0 (correlation id only), then
    // error_code, compact array of (key, min, max, tag count), throttle,
    // and one tag count byte, 0 (default-valued tagged fields omitted).
    let id = conn.send(
        &ApiVersionsRequest::default()
            .with_client_software_name(StrBytes::from_static_str("fetch-semantics"))
            .with_client_software_version(StrBytes::from_static_str("1.0")),
        3,
    )?;
    let raw = conn.raw.next_frame()?;
    let mut body = raw.clone();
    ensure!(
        body.len() > 4 + 2 + 1 + 4,
        "ApiVersions v3 answer of {} bytes",
        body.len()
    );
    ensure!(body.get_i32() == id, "ApiVersions v3 correlation id");
    let error = body.get_i16();
    ensure!(error == NONE, "ApiVersions v3 error {error}");
    let count = read_uvarint(&mut body)?
        .checked_sub(1)
        .context("null api_keys")?;
    let mut advertised = Vec::new();
    for _ in 0..count {
        ensure!(
            body.remaining() >= 7,
            "ApiVersions v3 answer truncated in api_keys"
        );
        let (key, min, max) = (body.get_i16(), body.get_i16(), body.get_i16());
        let tags = read_uvarint(&mut body)?;
        ensure!(
            tags == 0,
            "api key {key} entry carries {tags} tagged fields"
        );
        advertised.push((key, min, max));
    }
    ensure!(
        body.remaining() >= 5,
        "ApiVersions v3 answer truncated after api_keys"
    );
    let _throttle = body.get_i32();
    ensure!(
        body.as_ref() == [0u8],
        "ApiVersions v3 body must end with a single 0x00 tagged-field count (librdkafka < 2.2 \
         cannot parse written default tagged fields); trailing bytes are {:02x?}",
        body.as_ref()
    );
    // And kafka-protocol reads the same thing.
    let mut body = raw.slice(4..);
    let decoded = ApiVersionsResponse::decode(&mut body, 3)?;
    ensure!(
        !body.has_remaining(),
        "bytes left after decoding ApiVersions v3"
    );
    ensure!(
        decoded.api_keys.len() == advertised.len(),
        "api key count differs"
    );

    // Every advertised range is one kafka-protocol knows.
    ensure!(!advertised.is_empty(), "no APIs advertised");
    for &(key, min, max) in &advertised {
        let api = ApiKey::try_from(key)
            .map_err(|()| anyhow::anyhow!("advertised api key {key} unknown to kafka-protocol"))?;
        let known = api.valid_versions();
        ensure!(
            min <= max && known.min <= min && max <= known.max,
            "{api:?} advertised {min}..={max}, kafka-protocol decodes {}..={}",
            known.min,
            known.max
        );
    }
    for (key, must) in [
        (ApiKey::Produce, 3),
        (ApiKey::Fetch, 4),
        (ApiKey::ListOffsets, 1),
        (ApiKey::Metadata, 12),
        (ApiKey::ApiVersions, 3),
    ] {
        ensure!(
            advertised
                .iter()
                .any(|&(k, lo, hi)| k == key as i16 && (lo..=hi).contains(&must)),
            "{key:?} v{must} not advertised"
        );
    }

    // Every advertised ApiVersions version answers and decodes.
    let (lo, hi) = conn.version_range(ApiKey::ApiVersions)?;
    for version in lo..=hi {
        let response = conn.call(
            &ApiVersionsRequest::default()
                .with_client_software_name(StrBytes::from_static_str("fetch-semantics"))
                .with_client_software_version(StrBytes::from_static_str("1.0")),
            version,
        )?;
        ensure!(response.error_code == NONE, "ApiVersions v{version} error");
    }

    // Metadata v12 and v1: decodes, names the topic with its partitions, and
    // re-encoding the decoded answer gives the same bytes (kafka-protocol
    // writes no default-valued tagged field, so neither may the broker).
    for version in [12, 1] {
        let topics = vec![MetadataRequestTopic::default().with_name(Some(topic_name("meta-enc")))];
        let mut request = MetadataRequest::default().with_topics(Some(topics));
        if version >= 4 {
            request.allow_auto_topic_creation = false;
        }
        let id = conn.send(&request, version)?;
        let raw = conn.raw.next_frame()?;
        let header_version = MetadataResponse::header_version(version);
        let mut body = raw.clone();
        let header = ResponseHeader::decode(&mut body, header_version)?;
        ensure!(
            header.correlation_id == id,
            "Metadata v{version} correlation id"
        );
        let response = MetadataResponse::decode(&mut body, version)
            .with_context(|| format!("decode Metadata v{version}"))?;
        ensure!(
            !body.has_remaining(),
            "{} bytes left after Metadata v{version}",
            body.len()
        );
        ensure!(
            !response.brokers.is_empty(),
            "Metadata v{version}: no brokers"
        );
        let topic = response
            .topics
            .iter()
            .find(|t| t.name.as_ref().is_some_and(|n| n.0.as_str() == "meta-enc"))
            .with_context(|| format!("Metadata v{version}: topic missing"))?;
        ensure!(
            topic.error_code == NONE && topic.partitions.len() == 2,
            "Metadata v{version}: topic error {} with {} partitions",
            topic.error_code,
            topic.partitions.len()
        );
        if version >= 10 {
            ensure!(
                !topic.topic_id.is_nil(),
                "Metadata v{version}: nil topic id"
            );
        }
        let mut again = BytesMut::new();
        header.encode(&mut again, header_version)?;
        response.encode(&mut again, version)?;
        ensure!(
            again.as_ref() == raw.as_ref(),
            "Metadata v{version} answer is not canonically encoded:\n broker {:02x?}\n canonical {:02x?}",
            raw.as_ref(),
            again.as_ref()
        );
    }
    Ok(())
}

fn read_uvarint(buf: &mut Bytes) -> Result<u32> {
    let mut value = 0u32;
    for shift in (0..35).step_by(7) {
        ensure!(buf.has_remaining(), "truncated varint");
        let byte = buf.get_u8();
        value |= u32::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return Ok(value);
        }
    }
    bail!("varint too long")
}

// ------------------------------------------------------------ record batches

/// One complete batch from a fetch answer.
struct FetchedBatch {
    base_offset: i64,
    records: Vec<Record>,
}

struct Fetched {
    batches: Vec<FetchedBatch>,
    /// Bytes of a trailing partial batch (Kafka may cut one at a limit).
    partial_tail: usize,
}

impl Fetched {
    fn offsets_and_values(&self) -> (Vec<i64>, Vec<String>) {
        self.batches
            .iter()
            .flat_map(|b| &b.records)
            .map(|r| {
                let value = r.value.as_deref().unwrap_or_default();
                (r.offset, String::from_utf8_lossy(value).into_owned())
            })
            .unzip()
    }
}

/// Splits a partition's records into batches by their length field and
/// decodes each one with kafka-protocol (which checks the CRC).
fn split_fetched(part: &PartitionData) -> Result<Fetched> {
    let records = part.records.clone().unwrap_or_default();
    let mut batches = Vec::new();
    let mut pos = 0usize;
    while pos < records.len() {
        let rest = &records[pos..];
        if rest.len() < 12 {
            break;
        }
        let length = i32::from_be_bytes(rest[8..12].try_into()?);
        let total = 12 + usize::try_from(length).context("negative batch length")?;
        if rest.len() < total {
            break;
        }
        let base_offset = i64::from_be_bytes(rest[..8].try_into()?);
        let mut one = records.slice(pos..pos + total);
        let set = RecordBatchDecoder::decode(&mut one).with_context(|| {
            format!("decode fetched batch at base offset {base_offset} (bad CRC?)")
        })?;
        ensure!(
            !one.has_remaining(),
            "batch at {base_offset} longer than decoded"
        );
        if let Some(first) = set.records.first() {
            ensure!(
                first.offset >= base_offset,
                "batch base offset {base_offset} but first record at {}",
                first.offset
            );
        }
        batches.push(FetchedBatch {
            base_offset,
            records: set.records,
        });
        pos += total;
    }
    Ok(Fetched {
        batches,
        partial_tail: records.len() - pos,
    })
}

fn partition_of<'a>(
    response: &'a kafka_protocol::messages::FetchResponse,
    topic: &str,
    partition: i32,
) -> Result<&'a PartitionData> {
    response
        .responses
        .iter()
        .filter(|t| t.topic.0.as_str() == topic)
        .flat_map(|t| &t.partitions)
        .find(|p| p.partition_index == partition)
        .with_context(|| format!("fetch answer has no {topic}/{partition}"))
}

/// (partition, number of whole batches) for every partition of `topic`.
fn batch_counts(
    response: &kafka_protocol::messages::FetchResponse,
    topic: &str,
) -> Result<Vec<(i32, usize)>> {
    let mut out = Vec::new();
    for t in response
        .responses
        .iter()
        .filter(|t| t.topic.0.as_str() == topic)
    {
        for p in &t.partitions {
            ensure!(
                p.error_code == NONE,
                "{topic}/{}: error {}",
                p.partition_index,
                p.error_code
            );
            out.push((p.partition_index, split_fetched(p)?.batches.len()));
        }
    }
    out.sort_unstable();
    Ok(out)
}

fn record_bytes(response: &kafka_protocol::messages::FetchResponse) -> usize {
    response
        .responses
        .iter()
        .flat_map(|t| &t.partitions)
        .map(|p| p.records.as_ref().map_or(0, Bytes::len))
        .sum()
}

fn produce_request(acks: i16, topic: &str, partitions: Vec<(i32, Bytes)>) -> ProduceRequest {
    ProduceRequest::default()
        .with_acks(acks)
        .with_timeout_ms(15_000)
        .with_topic_data(vec![TopicProduceData::default()
            .with_name(topic_name(topic))
            .with_partition_data(
                partitions
                    .into_iter()
                    .map(|(index, records)| {
                        PartitionProduceData::default()
                            .with_index(index)
                            .with_records(Some(records))
                    })
                    .collect(),
            )])
}

fn produce_partitions(response: &ProduceResponse) -> BTreeMap<i32, PartitionProduceResponse> {
    response
        .responses
        .iter()
        .flat_map(|t| &t.partition_responses)
        .map(|p| (p.index, p.clone()))
        .collect()
}

fn topic_name(name: &str) -> TopicName {
    TopicName(StrBytes::from_string(name.to_owned()))
}

// ---------------------------------------------------------------- raw client

/// One raw-protocol connection that knows the broker's advertised versions.
struct Conn {
    raw: Raw,
    versions: BTreeMap<i16, (i16, i16)>,
}

impl Conn {
    fn connect(addr: SocketAddr) -> Result<Self> {
        let mut conn = Conn {
            raw: Raw::connect(addr)?,
            versions: BTreeMap::new(),
        };
        let response = conn.call(&ApiVersionsRequest::default(), 0)?;
        ensure!(
            response.error_code == NONE,
            "ApiVersions error {}",
            response.error_code
        );
        conn.versions = response
            .api_keys
            .iter()
            .map(|k| (k.api_key, (k.min_version, k.max_version)))
            .collect();
        Ok(conn)
    }

    fn version_range(&self, key: ApiKey) -> Result<(i16, i16)> {
        self.versions
            .get(&(key as i16))
            .copied()
            .with_context(|| format!("broker does not advertise {key:?}"))
    }

    /// The highest advertised version of `key` within `[lo, hi]`.
    fn version(&self, key: ApiKey, lo: i16, hi: i16) -> Result<i16> {
        let (min, max) = self.version_range(key)?;
        let version = max.min(hi);
        ensure!(
            version >= lo.max(min),
            "{key:?}: broker supports {min}..={max}, test needs {lo}..={hi}"
        );
        Ok(version)
    }

    /// Send a request without waiting; returns its correlation id.
    fn send<R: Request>(&mut self, request: &R, version: i16) -> Result<i32> {
        self.raw.send(request, version)
    }

    fn call<R: Request>(&mut self, request: &R, version: i16) -> Result<R::Response> {
        self.raw.call(request, version)
    }

    fn produce_one(
        &mut self,
        topic: &str,
        partition: i32,
        records: Bytes,
    ) -> Result<PartitionProduceResponse> {
        let version = self.version(ApiKey::Produce, 3, 11)?;
        let response = self.call(
            &produce_request(-1, topic, vec![(partition, records)]),
            version,
        )?;
        let parts = produce_partitions(&response);
        match (parts.len(), parts.get(&partition)) {
            (1, Some(one)) => Ok(one.clone()),
            _ => bail!("produce to {topic}/{partition} answered {parts:?}"),
        }
    }

    /// Fetch `(topic, [(partition, offset)])` at the highest Fetch version.
    fn fetch(
        &mut self,
        topics: &[(&str, &[(i32, i64)])],
        partition_max_bytes: i32,
        max_bytes: i32,
        min_bytes: i32,
        max_wait_ms: i32,
    ) -> Result<kafka_protocol::messages::FetchResponse> {
        let version = self.version(ApiKey::Fetch, 4, 12)?;
        let request = FetchRequest::default()
            .with_replica_id(BrokerId(-1))
            .with_max_wait_ms(max_wait_ms)
            .with_min_bytes(min_bytes)
            .with_max_bytes(max_bytes)
            .with_isolation_level(0)
            .with_topics(
                topics
                    .iter()
                    .map(|(name, partitions)| {
                        FetchTopic::default()
                            .with_topic(topic_name(name))
                            .with_partitions(
                                partitions
                                    .iter()
                                    .map(|&(partition, offset)| {
                                        FetchPartition::default()
                                            .with_partition(partition)
                                            .with_current_leader_epoch(-1)
                                            .with_fetch_offset(offset)
                                            .with_log_start_offset(-1)
                                            .with_partition_max_bytes(partition_max_bytes)
                                    })
                                    .collect(),
                            )
                    })
                    .collect(),
            );
        let response = self.call(&request, version)?;
        ensure!(
            response.error_code == NONE,
            "fetch top-level error {}",
            response.error_code
        );
        Ok(response)
    }

    fn fetch_one(
        &mut self,
        topic: &str,
        partition: i32,
        offset: i64,
        partition_max_bytes: i32,
        max_bytes: i32,
    ) -> Result<PartitionData> {
        let response = self.fetch(
            &[(topic, &[(partition, offset)])],
            partition_max_bytes,
            max_bytes,
            1,
            100,
        )?;
        Ok(partition_of(&response, topic, partition)?.clone())
    }
}
