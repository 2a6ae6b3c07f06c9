//! Fetch: read every requested partition (filling the response across
//! partitions up to the partition and response byte limits, always at least
//! one whole batch), answer at once when `min_bytes` is met, otherwise park
//! until a commit lands or `max_wait_ms` passes.
//!
//! A parked fetch costs little: it wakes only on commits to its own
//! partitions (or on commits of other brokers, whose partitions are not
//! known), decides whether `min_bytes` is met from index sizes before
//! copying any record, and `min_bytes` is capped at what one answer may
//! hold (`fetch_max_bytes`), `max_wait_ms` at 30 s.
//!
//! Incremental fetch sessions (KIP-227) are kept by
//! [`crate::fetch_sessions`]: an incremental fetch is read as the session's
//! whole partition set and answered with only the partitions that have
//! news. The session's partitions are authorized on every fetch, as the
//! request's are (ACLs may have changed since they were added).

use std::collections::HashMap;
use std::time::Duration;
use tributary_runtime::Chain;

use kafka_protocol::messages::fetch_response::{
    AbortedTransaction, FetchableTopicResponse, PartitionData,
};
use kafka_protocol::messages::{BrokerId, FetchRequest, FetchResponse, ProducerId};
use tokio::time::{sleep_until, Instant};
use tributary_storage::{Isolation, PartitionKey, PartitionWatch, ReadError};

use kafka_protocol::ResponseError;
use tributary_meta::rules::acl::{operation, resource};
use tributary_meta::PartitionOffsets;

use crate::context::RequestContext;
use crate::error::read_error_code;
use crate::fetch_sessions::Begin;
use crate::Broker;

/// Longest a fetch is parked, whatever the client asks.
const MAX_WAIT: Duration = Duration::from_secs(30);

/// Poll interval of a parked fetch while other brokers' commits are pushed.
const LISTENING_POLL: Duration = Duration::from_secs(2);

pub async fn handle(
    broker: &Broker,
    req: FetchRequest,
    version: i16,
    ctx: &RequestContext,
) -> FetchResponse {
    let resp = match broker.fetch_sessions.begin(&req, version, &ctx.principal) {
        Begin::Sessionless => park_and_read(broker, &req).await,
        Begin::Create => {
            let resp = park_and_read(broker, &req).await;
            let id = broker.fetch_sessions.create(&req, &resp, &ctx.principal);
            resp.with_session_id(id)
        }
        Begin::Incremental { id, request } => {
            let (request, denied) = authorized(broker, *request, ctx);
            let mut resp = park_and_read(broker, &request).await;
            resp.responses.extend(denied);
            broker.fetch_sessions.finish(id, resp)
        }
        Begin::Refuse(code) => FetchResponse::default().with_error_code(code),
    };
    let (sessions, partitions) = broker.fetch_sessions.sizes();
    metrics::gauge!("tributary_fetch_sessions").set(sessions as f64);
    metrics::gauge!("tributary_fetch_session_partitions").set(partitions as f64);
    count_served(&resp);
    resp
}

/// The session's partitions READ is allowed on, and an error answer for
/// each of the others (the gate checked only those the request named).
fn authorized(
    broker: &Broker,
    mut req: FetchRequest,
    ctx: &RequestContext,
) -> (FetchRequest, Vec<FetchableTopicResponse>) {
    if !broker.authz.enabled() {
        return (req, Vec::new());
    }
    let host = ctx.peer.ip().to_string();
    let (allowed, denied): (Vec<_>, Vec<_>) = req.topics.into_iter().partition(|t| {
        broker.authz.allows(
            &ctx.principal,
            &host,
            operation::READ,
            resource::TOPIC,
            &t.topic.0,
        )
    });
    req.topics = allowed;
    let denied = denied
        .into_iter()
        .map(|t| {
            FetchableTopicResponse::default()
                .with_topic(t.topic)
                .with_partitions(
                    t.partitions
                        .iter()
                        .map(|p| {
                            PartitionData::default()
                                .with_partition_index(p.partition)
                                .with_error_code(ResponseError::TopicAuthorizationFailed.code())
                                .with_high_watermark(-1)
                        })
                        .collect(),
                )
        })
        .collect();
    (req, denied)
}

/// Count the records and bytes of the response actually sent (reads a
/// parked fetch discarded are not counted).
fn count_served(resp: &FetchResponse) {
    for t in &resp.responses {
        let name = t.topic.0.as_str();
        let (mut bytes, mut records) = (0u64, 0u64);
        for p in &t.partitions {
            if let Some(r) = &p.records {
                bytes += r.len() as u64;
                records += tributary_protocol::count_records(r);
            }
        }
        if bytes > 0 {
            metrics::counter!("tributary_fetch_bytes_total", "topic" => name.to_owned())
                .increment(bytes);
            metrics::counter!("tributary_fetch_records_total", "topic" => name.to_owned())
                .increment(records);
        }
    }
}

async fn park_and_read(broker: &Broker, req: &FetchRequest) -> FetchResponse {
    let wait = Duration::from_millis(req.max_wait_ms.max(0) as u64).min(MAX_WAIT);
    let deadline = Instant::now() + wait;
    // More than one answer may hold can never be met.
    let min_bytes = i64::from(req.min_bytes.max(1)).min(answer_limit(broker, req).max(1));
    let mut commits = broker.watermarks.subscribe();
    let watch = broker
        .watermarks
        .watch_partitions(&partitions(broker, req).await);
    loop {
        commits.borrow_and_update();
        // Sizes first: a fetch waiting for more than is there copies nothing.
        let enough = min_bytes <= 1
            || Instant::now() >= deadline
            || match available(broker, req).await {
                Some(bytes) => bytes >= min_bytes,
                None => true, // an error: the read answers it
            };
        if !enough {
            if !park(broker, &watch, &mut commits, deadline).await {
                return read_all(broker, req).await.0;
            }
            continue;
        }
        let (resp, bytes, errors) = read_all(broker, req).await;
        // The answer being built counts against the request-memory budget
        // while this fetch holds it (then the encoded answer does, until
        // it is written).
        let _building = broker
            .request_memory
            .reserve_now(usize::try_from(bytes).unwrap_or(0));
        if bytes >= min_bytes || errors || Instant::now() >= deadline {
            return resp;
        }
        drop(resp);
        if !park(broker, &watch, &mut commits, deadline).await {
            return read_all(broker, req).await.0;
        }
    }
}

/// Wait for a commit that may concern this fetch. False when the deadline
/// passed (or the broker is going away): the caller answers with one last
/// read, so data committed just now is not missed.
async fn park(
    broker: &Broker,
    watch: &PartitionWatch,
    commits: &mut tokio::sync::watch::Receiver<u64>,
    deadline: Instant,
) -> bool {
    // Commits by this broker to the fetch's partitions wake it at once; so
    // do other brokers' commits while the store pushes them (LISTEN/NOTIFY),
    // with a slow poll as a safety net; otherwise they are seen by polling.
    let poll = broker.config.fetch_poll_interval.map(|p| {
        if broker.watermarks.remote_listening() {
            p.max(LISTENING_POLL)
        } else {
            p
        }
    });
    tokio::select! {
        _ = watch.changed() => true,
        changed = commits.changed() => changed.is_ok(),
        _ = tokio::time::sleep(poll.unwrap_or(MAX_WAIT)), if poll.is_some() => true,
        _ = sleep_until(deadline) => false,
        _ = broker.draining.cancelled() => false,
    }
}

/// Most record bytes one answer to `req` may hold.
fn answer_limit(broker: &Broker, req: &FetchRequest) -> i64 {
    let cap = i64::try_from(broker.config.fetch_max_bytes).unwrap_or(i64::MAX);
    if req.max_bytes > 0 {
        i64::from(req.max_bytes).min(cap)
    } else {
        cap
    }
}

/// The requested partitions that exist, for commit wake-ups.
async fn partitions(broker: &Broker, req: &FetchRequest) -> Vec<PartitionKey> {
    let mut out = Vec::new();
    for t in &req.topics {
        let topic = broker.topics.get(t.topic.0.as_str()).await;
        for p in &t.partitions {
            if let Ok(topic) = super::partition_topic(&topic, p.partition) {
                out.push((topic.id, p.partition));
            }
        }
    }
    out
}

/// The offsets of every requested partition that exists, from one
/// metadata call (empty if it fails: the per-partition reads then answer
/// the error).
async fn offsets_of(
    broker: &Broker,
    req: &FetchRequest,
) -> HashMap<PartitionKey, PartitionOffsets> {
    let keys = partitions(broker, req).await;
    match broker.log.partition_offsets_many(&keys).await {
        Ok(list) => keys
            .into_iter()
            .zip(list)
            .filter_map(|(k, o)| Some((k, o?)))
            .collect(),
        Err(_) => HashMap::new(),
    }
}

/// Whether a fetch at `offset` is at the end of what it may read: nothing
/// to read, and nothing to look up further.
fn caught_up(offsets: Option<&PartitionOffsets>, offset: i64, isolation: Isolation) -> bool {
    offsets.is_some_and(|o| offset == isolation.end(o) && offset >= o.log_start_offset)
}

/// Record bytes a read of every partition could return within the limits,
/// from index sizes only; `None` if a partition has an error.
async fn available(broker: &Broker, req: &FetchRequest) -> Option<i64> {
    let mut budget = answer_limit(broker, req);
    let mut total = 0i64;
    let isolation = Isolation::from_level(req.isolation_level);
    let known = offsets_of(broker, req).await;
    for t in &req.topics {
        let topic = broker.topics.get(t.topic.0.as_str()).await;
        for p in &t.partitions {
            let topic = super::partition_topic(&topic, p.partition).ok()?;
            if caught_up(
                known.get(&(topic.id, p.partition)),
                p.fetch_offset,
                isolation,
            ) {
                continue;
            }
            let limit = i64::from(p.partition_max_bytes.max(0)).min(budget);
            if limit <= 0 {
                continue;
            }
            let n = broker
                .fetcher
                .available_bytes(
                    topic.id,
                    p.partition,
                    p.fetch_offset,
                    limit as u64,
                    Isolation::from_level(req.isolation_level),
                )
                .await
                .ok()?;
            let n = i64::try_from(n).unwrap_or(i64::MAX);
            total += n;
            budget -= n;
        }
    }
    Some(total)
}

/// Read all partitions once: the response, bytes of records in it, and
/// whether any partition had an error.
async fn read_all(broker: &Broker, req: &FetchRequest) -> (FetchResponse, i64, bool) {
    // The client's limit, capped by the broker's `fetch_max_bytes`.
    let mut budget = answer_limit(broker, req);
    let mut total = 0i64;
    let mut errors = false;
    let mut topics = Vec::with_capacity(req.topics.len());
    let isolation = Isolation::from_level(req.isolation_level);
    let known = offsets_of(broker, req).await;
    for t in &req.topics {
        let name = t.topic.0.as_str();
        let topic = broker.topics.get(name).await;
        let mut parts = Vec::with_capacity(t.partitions.len());
        for p in &t.partitions {
            let base = PartitionData::default()
                .with_partition_index(p.partition)
                .with_high_watermark(-1)
                .with_last_stable_offset(-1)
                .with_log_start_offset(-1)
                .with_preferred_read_replica(BrokerId(-1));
            let topic = match super::partition_topic(&topic, p.partition) {
                Ok(topic) => topic,
                Err(code) => {
                    errors = true;
                    parts.push(base.with_error_code(code));
                    continue;
                }
            };
            let offsets = known.get(&(topic.id, p.partition));
            if let (true, Some(o)) = (caught_up(offsets, p.fetch_offset, isolation), offsets) {
                // Nothing new: answer from the offsets already read.
                parts.push(
                    base.with_high_watermark(o.next_offset)
                        .with_last_stable_offset(o.last_stable_offset)
                        .with_log_start_offset(o.log_start_offset)
                        .with_aborted_transactions(
                            (isolation == Isolation::ReadCommitted).then(Vec::new),
                        )
                        .with_records(Some(Default::default())),
                );
                continue;
            }
            let limit = (p.partition_max_bytes.max(0) as i64).min(budget);
            // Only the response's first batch may exceed the limits.
            if limit <= 0 && total > 0 {
                parts.push(base.with_records(Some(Default::default())));
                continue;
            }
            match broker
                .fetcher
                .read(
                    topic.id,
                    p.partition,
                    p.fetch_offset,
                    limit.max(0) as usize,
                    total == 0,
                    Isolation::from_level(req.isolation_level),
                )
                .await
            {
                Ok(read) => {
                    let n = read.records.len() as i64;
                    total += n;
                    budget -= n;
                    let aborted = read.aborted.map(|list| {
                        list.into_iter()
                            .map(|a| {
                                AbortedTransaction::default()
                                    .with_producer_id(ProducerId(a.producer_id))
                                    .with_first_offset(a.first_offset)
                            })
                            .collect()
                    });
                    parts.push(
                        base.with_high_watermark(read.offsets.next_offset)
                            .with_last_stable_offset(read.offsets.last_stable_offset)
                            .with_log_start_offset(read.offsets.log_start_offset)
                            .with_aborted_transactions(aborted)
                            .with_records(Some(read.records)),
                    );
                }
                Err(e) => {
                    errors = true;
                    if !matches!(e, ReadError::OffsetOutOfRange { .. }) {
                        tracing::warn!(topic = name, partition = p.partition, error = %Chain(&e), "fetch read failed");
                    }
                    let mut part = base.with_error_code(read_error_code(&e));
                    if let ReadError::OffsetOutOfRange {
                        log_start,
                        high_watermark,
                        ..
                    } = e
                    {
                        part = part
                            .with_high_watermark(high_watermark)
                            .with_last_stable_offset(high_watermark)
                            .with_log_start_offset(log_start);
                    }
                    parts.push(part);
                }
            }
        }
        topics.push(
            FetchableTopicResponse::default()
                .with_topic(t.topic.clone())
                .with_topic_id(t.topic_id)
                .with_partitions(parts),
        );
    }
    (
        FetchResponse::default()
            .with_session_id(0)
            .with_responses(topics),
        total,
        errors,
    )
}
