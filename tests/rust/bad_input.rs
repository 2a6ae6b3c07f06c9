//! Malformed and invalid input over raw TCP (DESIGN.md invariant 5): bad
//! frames close the connection, bad requests get the Kafka error code for
//! the partition, and afterwards the same broker still serves real clients.
//!
//! The broker runs with `--auto-create-topics false` and
//! `--max-message-bytes 100000`.

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::time::Duration;

use crate::common::raw::Raw;
use crate::common::*;
use anyhow::{bail, ensure, Context, Result};
use bytes::{Buf, BufMut, Bytes, BytesMut};
use kafka_protocol::messages::api_versions_response::ApiVersionsResponse;
use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
use kafka_protocol::messages::produce_response::PartitionProduceResponse;
use kafka_protocol::messages::{
    ApiVersionsRequest, FetchRequest, ProduceRequest, RequestHeader, ResponseHeader, TopicName,
};
use kafka_protocol::protocol::{Decodable, Encodable, Request, StrBytes};
use rdkafka::consumer::Consumer;
use rdkafka::{Offset, TopicPartitionList};

const TOPIC: &str = "bad-input";
const MAX_MESSAGE_BYTES: usize = 100_000;
const IO_TIMEOUT: Duration = Duration::from_secs(15);

// Kafka error codes asserted below.
const OFFSET_OUT_OF_RANGE: i16 = 1;
const CORRUPT_MESSAGE: i16 = 2;
const UNKNOWN_TOPIC_OR_PARTITION: i16 = 3;
const MESSAGE_TOO_LARGE: i16 = 10;
const UNSUPPORTED_VERSION: i16 = 35;

const API_PRODUCE: i16 = 0;
const API_FETCH: i16 = 1;
const API_VERSIONS: i16 = 18;

#[tokio::test(flavor = "multi_thread")]
async fn bad_input() -> Result<()> {
    let max = MAX_MESSAGE_BYTES.to_string();
    let broker = start_broker(&["--auto-create-topics", "false", "--max-message-bytes", &max])?;
    run_test(&broker, body(&broker)).await
}

async fn body(broker: &BrokerProcess) -> Result<()> {
    let bootstrap = broker.bootstrap();
    create_topic(&bootstrap, TOPIC, 1).await?;
    let addr = broker.addr();
    tokio::task::block_in_place(|| raw_checks(addr))?;
    round_trip_after_abuse(&bootstrap).await
}

fn raw_checks(addr: SocketAddr) -> Result<()> {
    let versions = api_versions(addr).context("ApiVersions v0 on a fresh broker")?;
    let produce_version = pick_version(&versions, API_PRODUCE, 3, 12)?;
    let fetch_version = pick_version(&versions, API_FETCH, 4, 12)?;

    // 1. A truncated frame, then close: the broker drops the connection.
    {
        let mut conn = connect(addr)?;
        conn.write_all(&64i32.to_be_bytes())?;
        conn.write_all(&[0, 18, 0, 0, 0, 0, 0, 1, 0, 0])?;
        conn.shutdown(Shutdown::Write)?;
        expect_closed(&mut conn, "truncated frame")?;
    }
    api_versions(addr).context("broker alive after truncated frame")?;

    // 2. A frame claiming more than 100 MiB: closed without reading it.
    {
        let mut conn = connect(addr)?;
        conn.write_all(&(200 * 1024 * 1024i32).to_be_bytes())?;
        // Some of the promised bytes; the broker must not wait for the rest.
        let _ = conn.write_all(&[0u8; 1024]);
        expect_closed(&mut conn, "200 MiB frame length")?;
    }
    api_versions(addr).context("broker alive after oversized frame")?;

    // 3. A frame too short to hold a request header.
    {
        let mut conn = connect(addr)?;
        conn.write_all(&2i32.to_be_bytes())?;
        conn.write_all(&[0, 18])?;
        expect_closed_or_answered(&mut conn, None, "2-byte frame")?;
    }
    api_versions(addr).context("broker alive after short frame")?;

    // 4. Unknown api key 9999: connection closed or an error response.
    {
        let mut conn = connect(addr)?;
        let mut frame = BytesMut::new();
        RequestHeader::default()
            .with_request_api_key(9999)
            .with_request_api_version(0)
            .with_correlation_id(4242)
            .with_client_id(Some(StrBytes::from_static_str("bad-input")))
            .encode(&mut frame, 1)?;
        frame.put_slice(&[0, 0, 0, 0]);
        send_frame(&mut conn, &frame)?;
        expect_closed_or_answered(&mut conn, Some(4242), "api key 9999")?;
    }
    api_versions(addr).context("broker alive after unknown api key")?;

    // 5. ApiVersions v99: a v0 response body with UNSUPPORTED_VERSION, which
    //    still lists the ApiVersions versions so clients can downgrade.
    {
        let mut conn = connect(addr)?;
        let mut frame = BytesMut::new();
        RequestHeader::default()
            .with_request_api_key(API_VERSIONS)
            .with_request_api_version(99)
            .with_correlation_id(99)
            .with_client_id(Some(StrBytes::from_static_str("bad-input")))
            .encode(&mut frame, 2)?;
        ApiVersionsRequest::default()
            .with_client_software_name(StrBytes::from_static_str("bad-input"))
            .with_client_software_version(StrBytes::from_static_str("0.0.0"))
            .encode(&mut frame, 3)?;
        send_frame(&mut conn, &frame)?;
        let mut body = read_frame(&mut conn)?.context("no answer to ApiVersions v99")?;
        let header = ResponseHeader::decode(&mut body, 0)?;
        ensure!(
            header.correlation_id == 99,
            "correlation id {}",
            header.correlation_id
        );
        let response = ApiVersionsResponse::decode(&mut body, 0)
            .context("ApiVersions v99 answer is not a v0 response body")?;
        ensure!(
            response.error_code == UNSUPPORTED_VERSION,
            "ApiVersions v99 error_code {}, expected {UNSUPPORTED_VERSION}",
            response.error_code
        );
        ensure!(
            response.api_keys.iter().any(|k| k.api_key == API_VERSIONS),
            "UNSUPPORTED_VERSION answer does not list ApiVersions itself"
        );
    }

    let mut conn = Conn::connect(addr)?;

    // 6. A valid batch lands at offset 0 (baseline for the checks below).
    let good = record_batch(&[b"raw-0", b"raw-1", b"raw-2"])?;
    let answer = conn.produce(produce_version, TOPIC, 0, good)?;
    ensure!(
        answer.error_code == 0 && answer.base_offset == 0,
        "valid raw batch answered error {} base offset {}",
        answer.error_code,
        answer.base_offset
    );

    // 7. Bad CRC: CORRUPT_MESSAGE, nothing stored.
    let mut corrupt = BytesMut::from(&record_batch(&[b"corrupt"])?[..]);
    // Batch header: baseOffset(8) length(4) leaderEpoch(4) magic(1) crc(4).
    corrupt[17] ^= 0xFF;
    let answer = conn.produce(produce_version, TOPIC, 0, corrupt.freeze())?;
    ensure!(
        answer.error_code == CORRUPT_MESSAGE,
        "bad CRC answered error {}, expected {CORRUPT_MESSAGE}",
        answer.error_code
    );

    // 8. Larger than --max-message-bytes: MESSAGE_TOO_LARGE.
    let big_value: Vec<u8> = (0..MAX_MESSAGE_BYTES * 2)
        .map(|i| (i % 251) as u8)
        .collect();
    let answer = conn.produce(produce_version, TOPIC, 0, record_batch(&[&big_value])?)?;
    ensure!(
        answer.error_code == MESSAGE_TOO_LARGE,
        "oversized batch answered error {}, expected {MESSAGE_TOO_LARGE}",
        answer.error_code
    );

    // 9. Unknown topic (auto-create off) and unknown partition.
    let answer = conn.produce(produce_version, "no-such-topic", 0, record_batch(&[b"x"])?)?;
    ensure!(
        answer.error_code == UNKNOWN_TOPIC_OR_PARTITION,
        "unknown topic answered error {}, expected {UNKNOWN_TOPIC_OR_PARTITION}",
        answer.error_code
    );
    let answer = conn.produce(produce_version, TOPIC, 7, record_batch(&[b"x"])?)?;
    ensure!(
        answer.error_code == UNKNOWN_TOPIC_OR_PARTITION,
        "unknown partition answered error {}, expected {UNKNOWN_TOPIC_OR_PARTITION}",
        answer.error_code
    );

    // 10. Fetch beyond the end: OFFSET_OUT_OF_RANGE.
    let (error, high_watermark) = conn.fetch(fetch_version, TOPIC, 0, 1_000)?;
    ensure!(
        error == OFFSET_OUT_OF_RANGE,
        "fetch at 1000 answered error {error}, expected {OFFSET_OUT_OF_RANGE}"
    );
    // Only the valid batch was stored (when the broker reports a watermark).
    ensure!(
        high_watermark == 3 || high_watermark == -1,
        "high watermark {high_watermark} after 1 valid and 4 rejected batches"
    );
    let (error, high_watermark) = conn.fetch(fetch_version, TOPIC, 0, 0)?;
    ensure!(
        error == 0 && high_watermark == 3,
        "fetch at 0 answered error {error} high watermark {high_watermark}"
    );

    // The connection that carried the bad requests still works.
    let answer = conn.produce(produce_version, TOPIC, 0, record_batch(&[b"raw-3"])?)?;
    ensure!(
        answer.error_code == 0 && answer.base_offset == 3,
        "produce after rejected requests answered error {} base offset {}",
        answer.error_code,
        answer.base_offset
    );
    Ok(())
}

/// rdkafka still produces and consumes on the broker that took the abuse.
async fn round_trip_after_abuse(bootstrap: &str) -> Result<()> {
    let producer = producer(bootstrap, &[("acks", "all")])?;
    let outs = (0..10).map(|i| Out {
        partition: Some(0),
        key: format!("k{i}"),
        value: format!("rdkafka-{i}"),
        ..Out::default()
    });
    produce_all(&producer, TOPIC, outs).await?;

    let consumer = consumer(bootstrap, "bad-input-check", &[])?;
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(TOPIC, 0, Offset::Beginning)
        .context("assign")?;
    consumer.assign(&tpl).context("assign")?;
    let mut records = consume_n(&consumer, 14, Duration::from_secs(60)).await?;
    records.extend(drain_quiet(&consumer, Duration::from_secs(2)).await?);
    check_dense(&records, |_| 0)?;
    let values: Vec<&str> = records.iter().map(|r| r.value.as_str()).collect();
    let expected: Vec<String> = (0..4)
        .map(|i| format!("raw-{i}"))
        .chain((0..10).map(|i| format!("rdkafka-{i}")))
        .collect();
    ensure!(values == expected, "partition holds {values:?}");
    Ok(())
}

// ---------------------------------------------------------------- raw client

fn connect(addr: SocketAddr) -> Result<TcpStream> {
    let conn = TcpStream::connect_timeout(&addr, IO_TIMEOUT).context("connect")?;
    conn.set_read_timeout(Some(IO_TIMEOUT))?;
    conn.set_write_timeout(Some(IO_TIMEOUT))?;
    Ok(conn)
}

fn send_frame(conn: &mut TcpStream, payload: &[u8]) -> Result<()> {
    let len = i32::try_from(payload.len()).context("frame too long")?;
    conn.write_all(&len.to_be_bytes())?;
    conn.write_all(payload)?;
    Ok(())
}

/// One response frame, or `None` if the broker closed the connection.
fn read_frame(conn: &mut TcpStream) -> Result<Option<Bytes>> {
    let mut len = [0u8; 4];
    match conn.read_exact(&mut len) {
        Ok(()) => {}
        Err(e) if is_closed(&e) => return Ok(None),
        Err(e) => return Err(e).context("read frame length"),
    }
    let len = usize::try_from(i32::from_be_bytes(len)).context("negative frame length")?;
    ensure!(len <= 64 * 1024 * 1024, "response frame of {len} bytes");
    let mut body = vec![0u8; len];
    conn.read_exact(&mut body).context("read frame body")?;
    Ok(Some(Bytes::from(body)))
}

fn is_closed(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        ErrorKind::UnexpectedEof
            | ErrorKind::ConnectionReset
            | ErrorKind::ConnectionAborted
            | ErrorKind::BrokenPipe
    )
}

/// The broker closes the connection (EOF or reset) within the IO timeout.
fn expect_closed(conn: &mut TcpStream, what: &str) -> Result<()> {
    let mut buf = [0u8; 4096];
    match conn.read(&mut buf) {
        Ok(0) => Ok(()),
        Ok(n) => bail!("{what}: broker answered {n} bytes instead of closing"),
        Err(e) if is_closed(&e) => Ok(()),
        Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
            bail!("{what}: connection still open after {IO_TIMEOUT:?}")
        }
        Err(e) => Err(e).context(what.to_owned()),
    }
}

/// Either the connection is closed, or a response frame arrives (with the
/// given correlation id, if any).
fn expect_closed_or_answered(
    conn: &mut TcpStream,
    correlation: Option<i32>,
    what: &str,
) -> Result<()> {
    match read_frame(conn) {
        Ok(None) => Ok(()),
        Ok(Some(mut frame)) => {
            ensure!(frame.len() >= 4, "{what}: {}-byte response", frame.len());
            let id = frame.get_i32();
            if let Some(expected) = correlation {
                ensure!(id == expected, "{what}: answer has correlation id {id}");
            }
            Ok(())
        }
        Err(e) => Err(e).context(format!("{what}: neither closed nor answered")),
    }
}

fn api_versions(addr: SocketAddr) -> Result<ApiVersionsResponse> {
    let mut conn = Conn::connect(addr)?;
    let response = conn.call(&ApiVersionsRequest::default(), 0)?;
    ensure!(
        response.error_code == 0,
        "ApiVersions v0 error {}",
        response.error_code
    );
    Ok(response)
}

/// The highest version in `[lo, hi]` the broker advertises for `key`.
fn pick_version(versions: &ApiVersionsResponse, key: i16, lo: i16, hi: i16) -> Result<i16> {
    let api = versions
        .api_keys
        .iter()
        .find(|k| k.api_key == key)
        .with_context(|| format!("broker does not advertise api key {key}"))?;
    let version = api.max_version.min(hi);
    ensure!(
        version >= lo.max(api.min_version),
        "api key {key}: broker supports {}..={}, test needs {lo}..={hi}",
        api.min_version,
        api.max_version
    );
    Ok(version)
}

fn topic_name(name: &str) -> TopicName {
    TopicName(StrBytes::from_string(name.to_owned()))
}

struct Conn {
    raw: Raw,
}

impl Conn {
    fn connect(addr: SocketAddr) -> Result<Self> {
        Ok(Conn {
            raw: Raw::connect(addr)?,
        })
    }

    fn call<R: Request>(&mut self, request: &R, version: i16) -> Result<R::Response> {
        self.raw.call(request, version)
    }

    fn produce(
        &mut self,
        version: i16,
        topic: &str,
        partition: i32,
        records: Bytes,
    ) -> Result<PartitionProduceResponse> {
        let request = ProduceRequest::default()
            .with_acks(-1)
            .with_timeout_ms(10_000)
            .with_topic_data(vec![TopicProduceData::default()
                .with_name(topic_name(topic))
                .with_partition_data(vec![PartitionProduceData::default()
                    .with_index(partition)
                    .with_records(Some(records))])]);
        let response = self.call(&request, version)?;
        let partitions: Vec<PartitionProduceResponse> = response
            .responses
            .into_iter()
            .flat_map(|t| t.partition_responses)
            .collect();
        match partitions.as_slice() {
            [one] if one.index == partition => Ok(one.clone()),
            other => bail!("produce to {topic}/{partition} answered {other:?}"),
        }
    }

    /// (error code, high watermark) of one partition.
    fn fetch(
        &mut self,
        version: i16,
        topic: &str,
        partition: i32,
        offset: i64,
    ) -> Result<(i16, i64)> {
        let request = FetchRequest::default()
            .with_max_wait_ms(100)
            .with_min_bytes(1)
            .with_max_bytes(1024 * 1024)
            .with_topics(vec![FetchTopic::default()
                .with_topic(topic_name(topic))
                .with_partitions(vec![FetchPartition::default()
                    .with_partition(partition)
                    .with_fetch_offset(offset)
                    .with_partition_max_bytes(1024 * 1024)])]);
        let response = self.call(&request, version)?;
        ensure!(
            response.error_code == 0,
            "fetch top-level error {}",
            response.error_code
        );
        let partitions: Vec<_> = response
            .responses
            .into_iter()
            .flat_map(|t| t.partitions)
            .collect();
        match partitions.as_slice() {
            [one] if one.partition_index == partition => Ok((one.error_code, one.high_watermark)),
            other => bail!("fetch of {topic}/{partition} answered {other:?}"),
        }
    }
}
