//! Issue #16 at the protocol level, with raw frames (answers librdkafka does
//! not show): Kafka's internal topic names are never created or written;
//! per-record produce errors (`record_errors`) for keyless records in a
//! compacted topic and for timestamps out of the topic's bounds;
//! ListOffsets max-timestamp (-3) and the found record's own timestamp;
//! every Kafka topic config accepted on CreateTopics, with types, docs and
//! synonyms in DescribeConfigs; `compression.type` recompressing; fetch
//! sessions (KIP-227) opened, continued and refused.

use anyhow::{ensure, Result};
use bytes::Bytes;
use kafka_protocol::messages::create_topics_request::{CreatableTopic, CreatableTopicConfig};
use kafka_protocol::messages::describe_configs_request::DescribeConfigsResource;
use kafka_protocol::messages::list_offsets_request::{ListOffsetsPartition, ListOffsetsTopic};
use kafka_protocol::messages::metadata_request::MetadataRequestTopic;
use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
use kafka_protocol::messages::produce_response::PartitionProduceResponse;
use kafka_protocol::messages::*;
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::records::{
    Compression, Record, RecordBatchEncoder, RecordEncodeOptions, TimestampType,
};
use kafka_protocol::ResponseError;

use crate::common::raw::Raw;
use crate::common::*;

fn s(v: &str) -> StrBytes {
    StrBytes::from_string(v.to_owned())
}

fn now_ms() -> Result<i64> {
    Ok(i64::try_from(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)?
            .as_millis(),
    )?)
}

/// One batch of (key, timestamp) records, zstd-compressed (the rules read
/// through compression).
fn batch(records: &[(Option<&str>, i64)]) -> Result<Bytes> {
    encoded(records, Compression::Zstd)
}

fn encoded(records: &[(Option<&str>, i64)], compression: Compression) -> Result<Bytes> {
    let records: Vec<Record> = records
        .iter()
        .enumerate()
        .map(|(i, (key, timestamp))| Record {
            transactional: false,
            control: false,
            delete_horizon: false,
            partition_leader_epoch: -1,
            producer_id: -1,
            producer_epoch: -1,
            timestamp_type: TimestampType::Creation,
            offset: i as i64,
            sequence: i as i32 - 1,
            timestamp: *timestamp,
            key: key.map(|k| Bytes::copy_from_slice(k.as_bytes())),
            value: Some(Bytes::from(format!("value-{i}"))),
            headers: Default::default(),
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
    )?;
    Ok(buf.freeze())
}

fn produce(conn: &mut Raw, topic: &str, records: Bytes) -> Result<PartitionProduceResponse> {
    let request = ProduceRequest::default()
        .with_acks(-1)
        .with_timeout_ms(10_000)
        .with_topic_data(vec![TopicProduceData::default()
            .with_name(TopicName(s(topic)))
            .with_partition_data(vec![PartitionProduceData::default()
                .with_index(0)
                .with_records(Some(records))])]);
    let mut answer = conn.call(&request, 9)?;
    Ok(answer.responses.remove(0).partition_responses.remove(0))
}

fn create(conn: &mut Raw, topic: &str, configs: &[(&str, &str)]) -> Result<(i16, Option<String>)> {
    let request = CreateTopicsRequest::default()
        .with_timeout_ms(10_000)
        .with_topics(vec![CreatableTopic::default()
            .with_name(TopicName(s(topic)))
            .with_num_partitions(1)
            .with_replication_factor(-1)
            .with_configs(
                configs
                    .iter()
                    .map(|(k, v)| {
                        CreatableTopicConfig::default()
                            .with_name(s(k))
                            .with_value(Some(s(v)))
                    })
                    .collect(),
            )]);
    let answer = conn.call(&request, 7)?;
    let t = &answer.topics[0];
    Ok((
        t.error_code,
        t.error_message.as_ref().map(|m| m.to_string()),
    ))
}

/// ListOffsets of partition 0 at `timestamp`: (error, offset, timestamp).
fn list_offsets(
    conn: &mut Raw,
    topic: &str,
    timestamp: i64,
    version: i16,
) -> Result<(i16, i64, i64)> {
    let request = ListOffsetsRequest::default()
        .with_replica_id(BrokerId(-1))
        .with_topics(vec![ListOffsetsTopic::default()
            .with_name(TopicName(s(topic)))
            .with_partitions(vec![ListOffsetsPartition::default()
                .with_partition_index(0)
                .with_timestamp(timestamp)])]);
    let answer = conn.call(&request, version)?;
    let p = &answer.topics[0].partitions[0];
    Ok((p.error_code, p.offset, p.timestamp))
}

#[tokio::test(flavor = "multi_thread")]
async fn kafka_semantics_at_the_protocol_level() -> Result<()> {
    let broker = start_broker(&[])?;
    run_test(&broker, async {
        tokio::task::block_in_place(|| {
            internal_topics(&broker)?;
            per_record_errors(&broker)?;
            list_offsets_by_time(&broker)?;
            topic_compression(&broker)?;
            fetch_sessions(&broker)?;
            leader_epochs_and_topic_partitions(&broker)?;
            every_topic_config(&broker)
        })
    })
    .await
}

fn internal_topics(broker: &BrokerProcess) -> Result<()> {
    let mut conn = Raw::connect(broker.addr())?;
    for name in ["__consumer_offsets", "__transaction_state"] {
        let (code, msg) = create(&mut conn, name, &[])?;
        ensure!(
            code == ResponseError::InvalidRequest.code(),
            "CreateTopics {name}: {code} {msg:?}"
        );
        let metadata = conn.call(
            &MetadataRequest::default()
                .with_topics(Some(vec![
                    MetadataRequestTopic::default().with_name(Some(TopicName(s(name))))
                ]))
                .with_allow_auto_topic_creation(true),
            12,
        )?;
        let code = metadata.topics[0].error_code;
        ensure!(
            code == ResponseError::UnknownTopicOrPartition.code(),
            "Metadata {name} with auto-creation: {code}"
        );
        let answer = produce(&mut conn, name, batch(&[(Some("k"), now_ms()?)])?)?;
        ensure!(
            answer.error_code == ResponseError::InvalidTopicException.code(),
            "Produce {name}: {answer:?}"
        );
    }
    let all = conn.call(&MetadataRequest::default().with_topics(None), 12)?;
    ensure!(
        all.topics
            .iter()
            .all(|t| !t.name.as_ref().is_some_and(|n| n.0.starts_with("__c"))),
        "an internal topic exists: {:?}",
        all.topics.iter().map(|t| &t.name).collect::<Vec<_>>()
    );
    Ok(())
}

fn per_record_errors(broker: &BrokerProcess) -> Result<()> {
    let mut conn = Raw::connect(broker.addr())?;
    let now = now_ms()?;

    let compacted = "semantics-compacted";
    let (code, msg) = create(&mut conn, compacted, &[("cleanup.policy", "compact")])?;
    ensure!(code == 0, "create {compacted}: {code} {msg:?}");
    let answer = produce(
        &mut conn,
        compacted,
        batch(&[(Some("a"), now), (None, now), (Some("b"), now), (None, now)])?,
    )?;
    ensure!(
        answer.error_code == ResponseError::InvalidRecord.code(),
        "keyless records in a compacted topic: {answer:?}"
    );
    let indexes: Vec<i32> = answer.record_errors.iter().map(|e| e.batch_index).collect();
    ensure!(
        indexes == [1, 3],
        "record_errors {:?}",
        answer.record_errors
    );
    ensure!(
        answer.record_errors[0]
            .batch_index_error_message
            .as_ref()
            .is_some_and(|m| m.contains("without key")),
        "{:?}",
        answer.record_errors
    );
    // Nothing of the refused batch was appended; keyed records are.
    let (_, end, _) = list_offsets(&mut conn, compacted, -1, 7)?;
    ensure!(end == 0, "refused records were appended: end {end}");
    let answer = produce(&mut conn, compacted, batch(&[(Some("a"), now)])?)?;
    ensure!(answer.error_code == 0, "{answer:?}");

    // Kafka 4's default bound: an hour ahead of the broker's clock.
    let plain = "semantics-timestamps";
    let (code, msg) = create(
        &mut conn,
        plain,
        &[("message.timestamp.before.max.ms", "86400000")],
    )?;
    ensure!(code == 0, "create {plain}: {code} {msg:?}");
    let far_ahead = now + 2 * 3_600_000;
    let long_ago = now - 2 * 86_400_000;
    let answer = produce(
        &mut conn,
        plain,
        batch(&[(None, now), (None, far_ahead), (None, long_ago)])?,
    )?;
    ensure!(
        answer.error_code == ResponseError::InvalidTimestamp.code(),
        "timestamps out of bounds: {answer:?}"
    );
    let indexes: Vec<i32> = answer.record_errors.iter().map(|e| e.batch_index).collect();
    ensure!(
        indexes == [1, 2],
        "record_errors {:?}",
        answer.record_errors
    );
    Ok(())
}

fn list_offsets_by_time(broker: &BrokerProcess) -> Result<()> {
    let mut conn = Raw::connect(broker.addr())?;
    let topic = "semantics-max-timestamp";
    let (code, msg) = create(&mut conn, topic, &[])?;
    ensure!(code == 0, "create {topic}: {code} {msg:?}");
    let (code, offset, ts) = list_offsets(&mut conn, topic, -3, 7)?;
    ensure!(
        (code, offset, ts) == (0, -1, -1),
        "max-timestamp of an empty partition: {code} {offset} {ts}"
    );
    // Timestamps out of order, the largest twice: the first holder wins.
    let base = now_ms()? - 60_000;
    let stamps = [base + 10, base + 50, base + 20, base + 50, base + 30];
    for chunk in [&stamps[..2], &stamps[2..]] {
        let records: Vec<(Option<&str>, i64)> = chunk.iter().map(|t| (Some("k"), *t)).collect();
        let answer = produce(&mut conn, topic, batch(&records)?)?;
        ensure!(answer.error_code == 0, "{answer:?}");
    }
    let (code, offset, ts) = list_offsets(&mut conn, topic, -3, 7)?;
    ensure!(
        (code, offset, ts) == (0, 1, base + 50),
        "max-timestamp: {code} offset {offset} ts {ts}"
    );
    // Before v7 the broker does not know -3.
    let (code, _, _) = list_offsets(&mut conn, topic, -3, 6)?;
    ensure!(code != 0, "ListOffsets v6 answered -3");
    // By timestamp: the first record at or after it, with its own
    // timestamp (not the batch's largest).
    let (code, offset, ts) = list_offsets(&mut conn, topic, base + 15, 7)?;
    ensure!(
        (code, offset, ts) == (0, 1, base + 50),
        "by timestamp base+15: {code} {offset} {ts}"
    );
    let (code, offset, ts) = list_offsets(&mut conn, topic, base + 21, 7)?;
    ensure!(
        (code, offset, ts) == (0, 1, base + 50),
        "by timestamp base+21: {code} {offset} {ts}"
    );
    let (code, offset, ts) = list_offsets(&mut conn, topic, base + 5, 7)?;
    ensure!(
        (code, offset, ts) == (0, 0, base + 10),
        "by timestamp base+5: {code} {offset} {ts}"
    );
    Ok(())
}

/// A topic's `compression.type` is what is stored: an uncompressed batch
/// comes back gzip-compressed, its records unchanged.
fn topic_compression(broker: &BrokerProcess) -> Result<()> {
    use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
    let mut conn = Raw::connect(broker.addr())?;
    let topic = "semantics-gzip";
    let (code, msg) = create(&mut conn, topic, &[("compression.type", "gzip")])?;
    ensure!(code == 0, "create {topic}: {code} {msg:?}");
    let now = now_ms()?;
    let sent = encoded(&[(Some("a"), now), (Some("b"), now)], Compression::None)?;
    let answer = produce(&mut conn, topic, sent)?;
    ensure!(answer.error_code == 0, "{answer:?}");
    let request = FetchRequest::default()
        .with_replica_id(BrokerId(-1))
        .with_max_wait_ms(0)
        .with_min_bytes(1)
        .with_max_bytes(1 << 20)
        .with_topics(vec![FetchTopic::default()
            .with_topic(TopicName(s(topic)))
            .with_partitions(vec![FetchPartition::default()
                .with_partition(0)
                .with_fetch_offset(0)
                .with_partition_max_bytes(1 << 20)])]);
    let answer = conn.call(&request, 11)?;
    let mut records = answer.responses[0].partitions[0]
        .records
        .clone()
        .unwrap_or_default();
    ensure!(records.len() > 61, "fetched {} bytes", records.len());
    let codec = records[22] & 0x07;
    ensure!(
        codec == 1,
        "stored codec {codec}, the topic asks for gzip (1)"
    );
    let decoded = kafka_protocol::records::RecordBatchDecoder::decode(&mut records)?;
    let keys: Vec<_> = decoded
        .records
        .iter()
        .map(|r| r.key.clone().unwrap_or_default())
        .collect();
    ensure!(keys == [Bytes::from("a"), Bytes::from("b")], "{keys:?}");
    Ok(())
}

/// KIP-227 at the protocol level: a full fetch with epoch 0 opens a
/// session; an incremental fetch with nothing new answers no partition; a
/// wrong epoch or an unknown id is refused with Kafka's error codes.
fn fetch_sessions(broker: &BrokerProcess) -> Result<()> {
    use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
    let mut conn = Raw::connect(broker.addr())?;
    let topic = "semantics-gzip"; // two records, from topic_compression
    let fetch = |conn: &mut Raw, id: i32, epoch: i32, with_partition: bool| {
        let mut request = FetchRequest::default()
            .with_replica_id(BrokerId(-1))
            .with_max_wait_ms(0)
            .with_min_bytes(1)
            .with_max_bytes(1 << 20)
            .with_session_id(id)
            .with_session_epoch(epoch);
        if with_partition {
            request.topics = vec![FetchTopic::default()
                .with_topic(TopicName(s(topic)))
                .with_partitions(vec![FetchPartition::default()
                    .with_partition(0)
                    .with_fetch_offset(2)
                    .with_partition_max_bytes(1 << 20)])];
        }
        conn.call(&request, 12)
    };
    let opened = fetch(&mut conn, 0, 0, true)?;
    ensure!(
        opened.error_code == 0 && opened.session_id > 0,
        "epoch 0 opens a session: error {} id {}",
        opened.error_code,
        opened.session_id
    );
    let id = opened.session_id;
    ensure!(
        opened.responses.len() == 1,
        "a full answer names the partition"
    );
    let quiet = fetch(&mut conn, id, 1, false)?;
    ensure!(
        quiet.error_code == 0 && quiet.session_id == id && quiet.responses.is_empty(),
        "nothing new: {quiet:?}"
    );
    let again = fetch(&mut conn, id, 1, false)?;
    ensure!(
        again.error_code == 71,
        "a repeated epoch: {}",
        again.error_code
    );
    let unknown = fetch(&mut conn, id.wrapping_add(1), 1, false)?;
    ensure!(
        unknown.error_code == 70,
        "an unknown session: {}",
        unknown.error_code
    );
    let closed = fetch(&mut conn, id, -1, true)?;
    ensure!(
        closed.error_code == 0 && closed.session_id == 0,
        "closing: {closed:?}"
    );
    Ok(())
}

/// OffsetForLeaderEpoch agrees with the one leader epoch Metadata reports
/// (the current epoch ends at the log end; a newer one is unknown; a stale
/// or future current epoch is fenced or unknown), and DescribeTopicPartitions
/// pages a topic's partitions with a cursor, with Metadata's leaders.
fn leader_epochs_and_topic_partitions(broker: &BrokerProcess) -> Result<()> {
    use kafka_protocol::messages::describe_topic_partitions_request::{Cursor, TopicRequest};
    use kafka_protocol::messages::offset_for_leader_epoch_request::{
        OffsetForLeaderPartition, OffsetForLeaderTopic,
    };
    let mut conn = Raw::connect(broker.addr())?;
    let topic = "semantics-max-timestamp"; // five records
    let metadata = conn.call(
        &MetadataRequest::default().with_topics(Some(vec![
            MetadataRequestTopic::default().with_name(Some(TopicName(s(topic))))
        ])),
        12,
    )?;
    let epoch = metadata.topics[0].partitions[0].leader_epoch;
    let leader = metadata.topics[0].partitions[0].leader_id;
    let ask = |conn: &mut Raw, current: i32, wanted: i32| -> Result<(i16, i32, i64)> {
        let answer = conn.call(
            &OffsetForLeaderEpochRequest::default()
                .with_replica_id(BrokerId(-1))
                .with_topics(vec![OffsetForLeaderTopic::default()
                    .with_topic(TopicName(s(topic)))
                    .with_partitions(vec![OffsetForLeaderPartition::default()
                        .with_partition(0)
                        .with_current_leader_epoch(current)
                        .with_leader_epoch(wanted)])]),
            4,
        )?;
        let p = &answer.topics[0].partitions[0];
        Ok((p.error_code, p.leader_epoch, p.end_offset))
    };
    let found = ask(&mut conn, epoch, epoch)?;
    ensure!(
        found == (0, epoch, 5),
        "the current epoch ends at the log end: {found:?}"
    );
    let found = ask(&mut conn, -1, epoch + 1)?;
    ensure!(found == (0, -1, -1), "a newer epoch is unknown: {found:?}");
    let found = ask(&mut conn, epoch + 1, epoch)?;
    ensure!(
        found.0 == 75,
        "a future current epoch: UNKNOWN_LEADER_EPOCH, got {found:?}"
    );

    // Two topics of one partition and an unknown one, a partition a page.
    let (code, msg) = create(&mut conn, "semantics-paged", &[])?;
    ensure!(code == 0, "{code} {msg:?}");
    let request = |cursor: Option<Cursor>| {
        DescribeTopicPartitionsRequest::default()
            .with_topics(vec![
                TopicRequest::default().with_name(TopicName(s("semantics-paged"))),
                TopicRequest::default().with_name(TopicName(s(topic))),
                TopicRequest::default().with_name(TopicName(s("semantics-no-such-topic"))),
            ])
            .with_response_partition_limit(1)
            .with_cursor(cursor)
    };
    let mut pages = Vec::new();
    let mut cursor = None;
    for _ in 0..5 {
        let answer = conn.call(&request(cursor), 0)?;
        for t in &answer.topics {
            let name = t.name.as_ref().map(|n| n.to_string()).unwrap_or_default();
            if t.error_code != 0 {
                pages.push((name.clone(), -1, t.error_code));
            }
            for p in &t.partitions {
                ensure!(p.leader_id == leader && p.leader_epoch == epoch, "{p:?}");
                pages.push((name.clone(), p.partition_index, 0));
            }
        }
        cursor = answer.next_cursor.map(|c| {
            Cursor::default()
                .with_topic_name(c.topic_name)
                .with_partition_index(c.partition_index)
        });
        if cursor.is_none() {
            break;
        }
    }
    let want: Vec<(String, i32, i16)> = vec![
        ("semantics-max-timestamp".into(), 0, 0),
        ("semantics-no-such-topic".into(), -1, 3),
        ("semantics-paged".into(), 0, 0),
    ];
    ensure!(pages == want, "pages {pages:?}");
    Ok(())
}

/// Every topic config Kafka 4 defines, each set to a valid non-default
/// value, plus the removed ones Kafka 3.x still took.
const ALL_CONFIGS: &[(&str, &str)] = &[
    ("cleanup.policy", "compact,delete"),
    ("compression.gzip.level", "5"),
    ("compression.lz4.level", "10"),
    ("compression.type", "zstd"),
    ("compression.zstd.level", "7"),
    ("delete.retention.ms", "3600000"),
    ("file.delete.delay.ms", "30000"),
    ("flush.messages", "1000"),
    ("flush.ms", "1000"),
    ("follower.replication.throttled.replicas", "*"),
    ("index.interval.bytes", "8192"),
    ("leader.replication.throttled.replicas", "0:0"),
    ("local.retention.bytes", "-2"),
    ("local.retention.ms", "-2"),
    ("max.compaction.lag.ms", "86400000"),
    ("max.message.bytes", "2000000"),
    ("message.downconversion.enable", "false"),
    ("message.format.version", "2.8"),
    ("message.timestamp.after.max.ms", "7200000"),
    ("message.timestamp.before.max.ms", "86400000"),
    ("message.timestamp.difference.max.ms", "86400000"),
    ("message.timestamp.type", "CreateTime"),
    ("min.cleanable.dirty.ratio", "0.25"),
    ("min.compaction.lag.ms", "1000"),
    ("min.insync.replicas", "2"),
    ("preallocate", "true"),
    ("remote.log.copy.disable", "false"),
    ("remote.log.delete.on.disable", "false"),
    ("remote.storage.enable", "false"),
    ("retention.bytes", "1073741824"),
    ("retention.ms", "86400000"),
    ("segment.bytes", "104857600"),
    ("segment.index.bytes", "1048576"),
    ("segment.jitter.ms", "1000"),
    ("segment.ms", "3600000"),
    ("unclean.leader.election.enable", "false"),
];

fn every_topic_config(broker: &BrokerProcess) -> Result<()> {
    let mut conn = Raw::connect(broker.addr())?;
    let topic = "semantics-all-configs";
    let (code, msg) = create(&mut conn, topic, ALL_CONFIGS)?;
    ensure!(code == 0, "create with every config: {code} {msg:?}");
    let (code, msg) = create(
        &mut conn,
        "semantics-bad-ratio",
        &[("min.cleanable.dirty.ratio", "2")],
    )?;
    ensure!(
        code == ResponseError::InvalidConfig.code()
            && msg
                .as_deref()
                .is_some_and(|m| m.contains("min.cleanable.dirty.ratio")),
        "a ratio of 2: {code} {msg:?}"
    );

    let answer = conn.call(
        &DescribeConfigsRequest::default()
            .with_include_synonyms(true)
            .with_include_documentation(true)
            .with_resources(vec![DescribeConfigsResource::default()
                .with_resource_type(2)
                .with_resource_name(s(topic))
                .with_configuration_keys(None)]),
        4,
    )?;
    let result = &answer.results[0];
    ensure!(
        result.error_code == 0,
        "DescribeConfigs: {}",
        result.error_code
    );
    for (name, value) in ALL_CONFIGS {
        let entry = result
            .configs
            .iter()
            .find(|c| c.name.as_str() == *name)
            .ok_or_else(|| anyhow::anyhow!("{name} missing from DescribeConfigs"))?;
        ensure!(
            entry.value.as_deref() == Some(*value),
            "{name}: {:?}, set {value}",
            entry.value
        );
        ensure!(
            entry.config_source == 1,
            "{name} source {}",
            entry.config_source
        );
        ensure!(!entry.read_only, "{name} is read-only");
        ensure!(entry.config_type != 0, "{name} has no type");
        ensure!(entry.documentation.is_some(), "{name} has no documentation");
        ensure!(
            entry.synonyms.len() == 2 && entry.synonyms[1].source == 5,
            "{name} synonyms {:?}",
            entry.synonyms
        );
    }
    let retention = result
        .configs
        .iter()
        .find(|c| c.name.as_str() == "retention.ms")
        .map(|c| (c.config_type, c.synonyms[1].name.to_string()));
    ensure!(
        retention == Some((5, "log.retention.ms".to_owned())),
        "retention.ms is a LONG defaulted by log.retention.ms: {retention:?}"
    );
    Ok(())
}
