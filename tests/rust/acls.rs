//! ACLs (issue 14): with `--authorizer acl`, a super user creates topics and
//! grants with the Kafka admin APIs (CreateAcls, DescribeAcls, DeleteAcls);
//! a user produces and consumes in a group it is allowed, and is refused,
//! promptly and with Kafka's error codes, on a topic and a group it is not;
//! listings leave out what it may not describe; an anonymous client on the
//! plaintext listener gets nothing; a deleted grant takes access away.

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use crate::common::raw::Raw;
use crate::common::*;
use anyhow::{ensure, Context, Result};
use kafka_protocol::messages::create_acls_request::AclCreation;
use kafka_protocol::messages::create_topics_request::CreatableTopic;
use kafka_protocol::messages::delete_acls_request::DeleteAclsFilter;
use kafka_protocol::messages::list_offsets_request::{ListOffsetsPartition, ListOffsetsTopic};
use kafka_protocol::messages::metadata_request::MetadataRequestTopic;
use kafka_protocol::messages::{
    BrokerId, CreateAclsRequest, CreateTopicsRequest, DeleteAclsRequest, DescribeAclsRequest,
    ListOffsetsRequest, MetadataRequest, TopicName,
};
use kafka_protocol::protocol::StrBytes;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::Message;
use tributary_cli::config::Settings;
use tributary_cli::node::{Launch, Node};

pub(crate) const ADMIN: (&str, &str) = ("admin", "admin-secret");
pub(crate) const ALICE: (&str, &str) = ("alice", "alice-secret");

const TOPIC_DENIED: i16 = 29;
const CLUSTER_DENIED: i16 = 31;

// Kafka's codes (AclResourceType, PatternType, AclOperation, permission).
pub(crate) const TOPIC: i8 = 2;
pub(crate) const GROUP: i8 = 3;
pub(crate) const LITERAL: i8 = 3;
pub(crate) const PREFIXED: i8 = 4;
pub(crate) const READ: i8 = 3;
pub(crate) const WRITE: i8 = 4;
pub(crate) const DESCRIBE: i8 = 8;
const ANY: i8 = 1;
const ALLOW: i8 = 3;

fn s(v: &str) -> StrBytes {
    StrBytes::from_string(v.to_owned())
}

/// A broker with a plaintext and a SASL_PLAINTEXT listener, the ACL
/// authorizer, `User:admin` as super user, and `extra` flags.
pub(crate) async fn start_secured(dir: &Path, extra: &[&str]) -> Result<Node> {
    let mut flags = vec![
        "--listeners",
        "PLAINTEXT://127.0.0.1:0,SASL_PLAINTEXT://127.0.0.1:0",
        "--sasl-mechanisms",
        "PLAIN,SCRAM-SHA-512",
        "--authorizer",
        "acl",
        "--super-users",
        "User:admin",
        "--data-dir",
        dir.to_str().context("utf-8 dir")?,
        "--flush-interval-ms",
        "10",
    ];
    flags.extend_from_slice(extra);
    Node::start(Settings::from_flags(flags)?, Launch::default()).await
}

/// A raw call on a multi-threaded test runtime (the broker may run on it).
pub(crate) fn blocking<T>(f: impl FnOnce() -> Result<T>) -> Result<T> {
    tokio::task::block_in_place(f)
}

pub(crate) fn grant(
    resource_type: i8,
    name: &str,
    pattern: i8,
    principal: &str,
    operation: i8,
) -> AclCreation {
    AclCreation::default()
        .with_resource_type(resource_type)
        .with_resource_name(s(name))
        .with_resource_pattern_type(pattern)
        .with_principal(s(principal))
        .with_host(s("*"))
        .with_operation(operation)
        .with_permission_type(ALLOW)
}

/// CreateAcls; the error code of each creation.
pub(crate) fn create_acls(conn: &mut Raw, acls: Vec<AclCreation>) -> Result<Vec<i16>> {
    let answer = conn.call(&CreateAclsRequest::default().with_creations(acls), 2)?;
    Ok(answer.results.iter().map(|r| r.error_code).collect())
}

/// DeleteAcls of every binding of `principal`; how many went.
pub(crate) fn delete_acls_of(conn: &mut Raw, principal: &str) -> Result<usize> {
    let filter = DeleteAclsFilter::default()
        .with_resource_type_filter(ANY)
        .with_resource_name_filter(None)
        .with_pattern_type_filter(ANY)
        .with_principal_filter(Some(s(principal)))
        .with_host_filter(None)
        .with_operation(ANY)
        .with_permission_type(ANY);
    let answer = conn.call(&DeleteAclsRequest::default().with_filters(vec![filter]), 2)?;
    let result = answer.filter_results.first().context("one filter result")?;
    ensure!(
        result.error_code == 0,
        "DeleteAcls: error {}",
        result.error_code
    );
    Ok(result.matching_acls.len())
}

pub(crate) fn create_topic_raw(conn: &mut Raw, name: &str, partitions: i32) -> Result<()> {
    let request = CreateTopicsRequest::default()
        .with_timeout_ms(10_000)
        .with_topics(vec![CreatableTopic::default()
            .with_name(TopicName(s(name)))
            .with_num_partitions(partitions)
            .with_replication_factor(1)]);
    let answer = conn.call(&request, 5)?;
    let code = answer.topics.first().context("one topic")?.error_code;
    ensure!(code == 0, "CreateTopics {name}: error {code}");
    Ok(())
}

/// ListOffsets (latest) of partition 0 of `topic`: its error code.
pub(crate) fn list_offsets_code(conn: &mut Raw, topic: &str) -> Result<i16> {
    let request = ListOffsetsRequest::default()
        .with_replica_id(BrokerId(-1))
        .with_topics(vec![ListOffsetsTopic::default()
            .with_name(TopicName(s(topic)))
            .with_partitions(vec![ListOffsetsPartition::default()
                .with_partition_index(0)
                .with_timestamp(-1)])]);
    let answer = conn.call(&request, 5)?;
    Ok(answer
        .topics
        .first()
        .and_then(|t| t.partitions.first())
        .context("one partition")?
        .error_code)
}

/// Metadata: (topic, error code) of each listed topic; `None` lists all.
fn metadata(conn: &mut Raw, topics: Option<&[&str]>) -> Result<Vec<(String, i16)>> {
    let request = MetadataRequest::default()
        .with_topics(topics.map(|t| {
            t.iter()
                .map(|n| MetadataRequestTopic::default().with_name(Some(TopicName(s(n)))))
                .collect()
        }))
        .with_allow_auto_topic_creation(true);
    let answer = conn.call(&request, 9)?;
    let mut out: Vec<(String, i16)> = answer
        .topics
        .iter()
        .map(|t| {
            (
                t.name.as_ref().map(|n| n.0.to_string()).unwrap_or_default(),
                t.error_code,
            )
        })
        .collect();
    out.sort();
    Ok(out)
}

fn listener(node: &Node, name: &str) -> Result<SocketAddr> {
    node.listener_addr(name)
        .with_context(|| format!("no {name} listener"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn acls_decide_what_each_principal_may_do() -> Result<()> {
    tokio::time::timeout(TEST_TIMEOUT, async {
        let dir = tempfile::tempdir()?;
        add_user(dir.path(), ADMIN.0, ADMIN.1, &[])?;
        add_user(dir.path(), ALICE.0, ALICE.1, &[])?;
        let node = start_secured(dir.path(), &["--metrics-listen", "127.0.0.1:0"]).await?;
        let sasl = listener(&node, "SASL_PLAINTEXT")?;
        let plain = listener(&node, "PLAINTEXT")?;
        let result = body(sasl, plain, &node).await;
        node.shutdown().await;
        result
    })
    .await
    .context("test timed out")?
}

async fn body(sasl: SocketAddr, plain: SocketAddr, node: &Node) -> Result<()> {
    let mut admin = blocking(|| Raw::login(sasl, ADMIN.0, ADMIN.1))?;
    let mut alice = blocking(|| Raw::login(sasl, ALICE.0, ALICE.1))?;
    blocking(|| {
        create_topic_raw(&mut admin, "app-orders", 2)?;
        create_topic_raw(&mut admin, "secret", 1)
    })?;

    // Before any grant alice sees nothing and may change nothing.
    blocking(|| {
        ensure!(metadata(&mut alice, None)?.is_empty(), "alice sees topics");
        let refused = create_acls(
            &mut alice,
            vec![grant(TOPIC, "*", LITERAL, "User:alice", READ)],
        )?;
        ensure!(
            refused == [CLUSTER_DENIED],
            "alice granted herself: {refused:?}"
        );
        ensure!(list_offsets_code(&mut alice, "app-orders")? == TOPIC_DENIED);
        Ok(())
    })?;

    // The super user grants topic access and a group prefix.
    blocking(|| {
        let codes = create_acls(
            &mut admin,
            vec![
                grant(TOPIC, "app-orders", LITERAL, "User:alice", WRITE),
                grant(TOPIC, "app-orders", LITERAL, "User:alice", READ),
                grant(GROUP, "app-", PREFIXED, "User:alice", READ),
            ],
        )?;
        ensure!(codes == [0, 0, 0], "CreateAcls: {codes:?}");
        let described = admin.call(
            &DescribeAclsRequest::default()
                .with_resource_type_filter(ANY)
                .with_resource_name_filter(None)
                .with_pattern_type_filter(ANY)
                .with_principal_filter(None)
                .with_host_filter(None)
                .with_operation(ANY)
                .with_permission_type(ANY),
            2,
        )?;
        ensure!(described.error_code == 0);
        let bindings: usize = described.resources.iter().map(|r| r.acls.len()).sum();
        ensure!(
            described.resources.len() == 2 && bindings == 3,
            "DescribeAcls: {:?}",
            described.resources
        );
        // Listings hold only what alice may describe (READ/WRITE imply
        // DESCRIBE); a named topic she may not see, or one she would
        // auto-create without CREATE, is TOPIC_AUTHORIZATION_FAILED.
        let all = metadata(&mut alice, None)?;
        ensure!(
            all == [("app-orders".into(), 0)],
            "alice's listing: {all:?}"
        );
        let named = metadata(&mut alice, Some(&["secret", "brand-new"]))?;
        ensure!(
            named
                == [
                    ("brand-new".into(), TOPIC_DENIED),
                    ("secret".into(), TOPIC_DENIED)
                ],
            "named: {named:?}"
        );
        let admins = metadata(&mut admin, None)?;
        ensure!(
            !admins.iter().any(|(n, _)| n == "brand-new"),
            "a refused auto-creation created the topic"
        );
        Ok(())
    })?;

    // librdkafka as alice: produce and consume in an allowed group.
    let alice_config = sasl_config(&sasl.to_string(), "PLAIN", ALICE.0, ALICE.1);
    round_trip(&alice_config, "app-orders", 50).await?;

    // A topic she may not write: refused promptly with Kafka's code.
    let producer: FutureProducer = alice_config
        .clone()
        .set("message.timeout.ms", "20000")
        .create()?;
    let started = Instant::now();
    let sent = producer
        .send(
            FutureRecord::to("secret").key("k").payload("v"),
            Duration::from_secs(20),
        )
        .await;
    match sent {
        Err((KafkaError::MessageProduction(RDKafkaErrorCode::TopicAuthorizationFailed), _)) => {}
        other => anyhow::bail!("produce to secret: {:?}", other.map(|_| ())),
    }
    ensure!(
        started.elapsed() < Duration::from_secs(15),
        "the refusal took {:?}",
        started.elapsed()
    );

    // A group she may not use: GROUP_AUTHORIZATION_FAILED.
    let consumer: StreamConsumer = alice_config
        .clone()
        .set("group.id", "other-group")
        .set("auto.offset.reset", "earliest")
        .create()?;
    consumer.subscribe(&["app-orders"])?;
    let polled = tokio::time::timeout(OP_TIMEOUT, consumer.recv()).await;
    match polled {
        Ok(Err(KafkaError::MessageConsumption(RDKafkaErrorCode::GroupAuthorizationFailed)))
        | Ok(Err(KafkaError::MessageConsumptionFatal(
            RDKafkaErrorCode::GroupAuthorizationFailed,
        ))) => {}
        Ok(Ok(m)) => anyhow::bail!("consumed in a refused group: offset {}", m.offset()),
        other => anyhow::bail!(
            "consumer in a refused group: {:?}",
            other.map(|r| r.map(|_| ()))
        ),
    }
    drop(consumer);

    // An anonymous client on the plaintext listener sees nothing.
    blocking(|| {
        let mut anonymous = Raw::connect(plain)?;
        ensure!(metadata(&mut anonymous, None)?.is_empty());
        ensure!(list_offsets_code(&mut anonymous, "app-orders")? == TOPIC_DENIED);
        Ok(())
    })?;

    // Denials are counted by API.
    let port = node.admin_addr().context("admin endpoint")?.port();
    let (_, metrics) = http_get(port, "/metrics")?;
    // (librdkafka learns of the refusals from Metadata and FindCoordinator
    // and sends no Produce or JoinGroup.)
    for api in ["Metadata", "ListOffsets", "CreateAcls", "FindCoordinator"] {
        let line = format!("tributary_authorization_denials_total{{api=\"{api}\"}}");
        ensure!(metrics.contains(&line), "no {line} in /metrics");
    }

    // Deleting the grants takes access away at once on this broker.
    blocking(|| {
        ensure!(delete_acls_of(&mut admin, "User:alice")? == 3);
        ensure!(list_offsets_code(&mut alice, "app-orders")? == TOPIC_DENIED);
        ensure!(metadata(&mut alice, None)?.is_empty());
        Ok(())
    })
}
