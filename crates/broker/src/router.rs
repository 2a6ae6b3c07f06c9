//! The only dispatcher: one table ([`api_table`]) maps each API key to its
//! version range, its metric name and its handler. The same table answers
//! ApiVersions, so the broker never advertises an API or version it does not
//! handle, and every request is counted under its API's name
//! (`tributary_requests_total{api=...}`). The connection only frames bytes;
//! it knows no API by name. Before its handler, every request passes the
//! authorization gate ([`crate::authz::gate`]).
//!
//! A handler answers in one phase ([`Answer::Now`]) or two
//! ([`Answer::Later`]): the first phase runs before the connection reads
//! the next request (so it sees requests in order: Produce queues its
//! batches there), the second may overlap later requests (Produce waits for
//! its commits). Answers are still written in request order.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::time::Instant;

use kafka_protocol::messages::api_versions_response::ApiVersion;
use kafka_protocol::messages::{ApiKey, ApiVersionsResponse, RequestKind, ResponseKind};
use kafka_protocol::ResponseError;

use crate::authz::gate::{gate, Gate, Patch};
use crate::context::RequestContext;
use crate::{apis, Broker};

/// The second phase of a two-phase answer. `None`: no answer is sent
/// (acks=0 produce).
pub type Later = Pin<Box<dyn Future<Output = Option<ResponseKind>> + Send>>;

/// What a handler's first phase returns.
pub enum Answer {
    /// The answer; `None` sends none.
    Now(Option<Box<ResponseKind>>),
    /// The answer comes when this future ends; later requests may run
    /// meanwhile.
    Later(Later),
    /// The answer, and then the connection closes (a failed
    /// authentication).
    Last(Option<Box<ResponseKind>>),
    /// The request cannot be answered (its body is not the API the frame
    /// named, or it is not allowed before authentication): the connection
    /// closes.
    Close,
}

impl std::fmt::Debug for Answer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Now(r) => f.debug_tuple("Now").field(r).finish(),
            Self::Later(_) => f.write_str("Later(..)"),
            Self::Last(r) => f.debug_tuple("Last").field(r).finish(),
            Self::Close => f.write_str("Close"),
        }
    }
}

type Handler =
    fn(Arc<Broker>, RequestContext, RequestKind) -> Pin<Box<dyn Future<Output = Answer> + Send>>;

/// One supported API: key, version range, metric name and handler.
pub struct Route {
    pub key: ApiKey,
    pub min: i16,
    pub max: i16,
    /// Its name in metrics (`Produce`, `JoinGroup`, ...).
    pub name: &'static str,
    handler: Handler,
}

impl std::fmt::Debug for Route {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Route")
            .field("key", &self.key)
            .field("min", &self.min)
            .field("max", &self.max)
            .finish_non_exhaustive()
    }
}

/// A table entry whose handler answers in one phase: `$body` is the
/// response of the API's own type, given the broker `$b`, the context
/// `$ctx`, the decoded request `$r` and the version `$v`.
macro_rules! route {
    ($key:ident, $min:literal ..= $max:literal, |$b:ident, $ctx:ident, $r:ident, $v:ident| $body:expr) => {
        Route {
            key: ApiKey::$key,
            min: $min,
            max: $max,
            name: stringify!($key),
            handler: |$b, $ctx, request| {
                Box::pin(async move {
                    let RequestKind::$key($r) = request else {
                        return Answer::Close;
                    };
                    let $v = $ctx.version;
                    Answer::Now(Some(Box::new(ResponseKind::$key($body))))
                })
            },
        }
    };
}

/// Every supported API, sorted by key. Built once: it is consulted for
/// every request.
pub fn api_table() -> &'static [Route] {
    static TABLE: OnceLock<Vec<Route>> = OnceLock::new();
    TABLE.get_or_init(|| {
        let mut all = vec![
            Route {
                key: ApiKey::Produce,
                min: 3,
                max: 11,
                name: "Produce",
                handler: |b, ctx, request| {
                    Box::pin(async move {
                        let RequestKind::Produce(r) = request else {
                            return Answer::Close;
                        };
                        let pending = apis::produce::submit(&b, r, ctx.version).await;
                        Answer::Later(Box::pin(
                            async move { pending.await.map(ResponseKind::Produce) },
                        ))
                    })
                },
            },
            route!(Fetch, 4..=12, |b, ctx, r, v| {
                apis::fetch::handle(&b, r, v, &ctx).await
            }),
            route!(ListOffsets, 1..=7, |b, ctx, r, v| {
                apis::list_offsets::handle(&b, r, v).await
            }),
            route!(Metadata, 0..=12, |b, ctx, r, v| {
                apis::metadata::handle(&b, r, v, &ctx).await
            }),
            route!(DescribeTopicPartitions, 0..=0, |b, ctx, r, v| {
                apis::describe_topic_partitions::handle(&b, r, v, &ctx).await
            }),
            route!(OffsetForLeaderEpoch, 2..=4, |b, ctx, r, v| {
                apis::offset_for_leader_epoch::handle(&b, r, v).await
            }),
            route!(ApiVersions, 0..=4, |_b, ctx, _r, _v| api_versions()),
            route!(SaslHandshake, 0..=1, |b, ctx, r, v| {
                apis::sasl_handshake::handle(&b, r, v, &ctx)
            }),
            Route {
                key: ApiKey::SaslAuthenticate,
                min: 0,
                max: 2,
                name: "SaslAuthenticate",
                handler: |b, ctx, request| {
                    Box::pin(async move {
                        let RequestKind::SaslAuthenticate(r) = request else {
                            return Answer::Close;
                        };
                        apis::sasl_authenticate::handle(&b, r, &ctx).await
                    })
                },
            },
            route!(FindCoordinator, 0..=4, |b, ctx, r, v| {
                apis::find_coordinator::handle(&b, r, v, &ctx)
            }),
            route!(CreateTopics, 2..=7, |b, ctx, r, v| {
                apis::create_topics::handle(&b, r, v).await
            }),
            route!(DeleteTopics, 1..=6, |b, ctx, r, v| {
                apis::delete_topics::handle(&b, r, v).await
            }),
            route!(CreatePartitions, 0..=3, |b, ctx, r, v| {
                apis::create_partitions::handle(&b, r, v).await
            }),
            route!(DescribeConfigs, 1..=4, |b, ctx, r, v| {
                apis::describe_configs::handle(&b, r, v).await
            }),
            route!(AlterConfigs, 0..=2, |b, ctx, r, v| {
                apis::alter_configs::handle(&b, r, v).await
            }),
            route!(IncrementalAlterConfigs, 0..=1, |b, ctx, r, v| {
                apis::incremental_alter_configs::handle(&b, r, v).await
            }),
            route!(DescribeCluster, 0..=1, |b, ctx, r, v| {
                apis::describe_cluster::handle(&b, r, v, &ctx)
            }),
            route!(InitProducerId, 0..=4, |b, ctx, r, v| {
                apis::init_producer_id::handle(&b, r, v).await
            }),
            route!(DeleteRecords, 0..=2, |b, ctx, r, v| {
                apis::delete_records::handle(&b, r, v).await
            }),
            route!(CreateAcls, 1..=3, |b, _ctx, r, _v| apis::acls::create(
                &b, r
            )
            .await),
            route!(DescribeAcls, 1..=3, |b, _ctx, r, _v| {
                apis::acls::describe(&b, r).await
            }),
            route!(DeleteAcls, 1..=3, |b, _ctx, r, _v| apis::acls::delete(
                &b, r
            )
            .await),
            route!(DescribeUserScramCredentials, 0..=0, |b, _ctx, r, _v| {
                apis::scram_credentials::describe(&b, r).await
            }),
            route!(AlterUserScramCredentials, 0..=0, |b, _ctx, r, _v| {
                apis::scram_credentials::alter(&b, r).await
            }),
            // The transaction APIs (TxnOffsetCommit goes to the group
            // coordinator).
            route!(AddPartitionsToTxn, 0..=4, |b, ctx, r, v| {
                apis::transactions::add_partitions(&b, r, v).await
            }),
            route!(AddOffsetsToTxn, 0..=4, |b, ctx, r, v| {
                apis::transactions::add_offsets(&b, r, v).await
            }),
            route!(EndTxn, 0..=4, |b, ctx, r, v| apis::transactions::end_txn(
                &b, r, v
            )
            .await),
            route!(TxnOffsetCommit, 0..=4, |b, ctx, r, v| {
                b.groups.txn_offset_commit(r, v).await
            }),
            route!(DescribeTransactions, 0..=0, |b, _ctx, r, _v| {
                apis::transactions::describe(&b, r).await
            }),
            route!(DescribeProducers, 0..=0, |b, _ctx, r, _v| {
                apis::transactions::describe_producers(&b, r).await
            }),
            route!(ListTransactions, 0..=1, |b, ctx, r, v| {
                apis::transactions::list(&b, r, v).await
            }),
            // The group APIs: thin adapters to the coordinator.
            route!(JoinGroup, 0..=9, |b, ctx, r, v| {
                let host = ctx.peer.ip().to_string();
                b.groups.join_group(r, v, &ctx.client_id, &host).await
            }),
            route!(SyncGroup, 0..=5, |b, ctx, r, v| b
                .groups
                .sync_group(r, v)
                .await),
            route!(Heartbeat, 0..=4, |b, ctx, r, v| b
                .groups
                .heartbeat(r, v)
                .await),
            route!(LeaveGroup, 0..=5, |b, ctx, r, v| b
                .groups
                .leave_group(r, v)
                .await),
            route!(OffsetCommit, 2..=9, |b, ctx, r, v| {
                b.groups.offset_commit(r, v).await
            }),
            route!(OffsetFetch, 1..=9, |b, ctx, r, v| b
                .groups
                .offset_fetch(r, v)
                .await),
            route!(OffsetDelete, 0..=0, |b, ctx, r, v| {
                b.groups.offset_delete(r, v).await
            }),
            route!(ListGroups, 0..=5, |b, ctx, r, v| b
                .groups
                .list_groups(r, v)
                .await),
            route!(DescribeGroups, 0..=5, |b, ctx, r, v| {
                b.groups.describe_groups(r, v).await
            }),
            route!(DeleteGroups, 0..=2, |b, ctx, r, v| {
                b.groups.delete_groups(r, v).await
            }),
            route!(ConsumerGroupHeartbeat, 0..=1, |b, ctx, r, v| {
                let host = ctx.peer.ip().to_string();
                b.groups
                    .consumer_group_heartbeat(r, v, &ctx.client_id, &host)
                    .await
            }),
            route!(ConsumerGroupDescribe, 0..=1, |b, ctx, r, v| {
                b.groups.consumer_group_describe(r, v).await
            }),
        ];
        all.sort_by_key(|s| s.key as i16);
        all
    })
}

/// The route of `key`, if the broker serves it.
fn route(key: ApiKey) -> Option<&'static Route> {
    api_table().iter().find(|r| r.key == key)
}

/// Whether `version` of `key` is handled.
pub fn is_supported(key: ApiKey, version: i16) -> bool {
    route(key).is_some_and(|r| (r.min..=r.max).contains(&version))
}

/// The ApiVersions answer listing [`api_table`].
pub fn api_versions() -> ApiVersionsResponse {
    ApiVersionsResponse::default().with_api_keys(
        api_table()
            .iter()
            .map(|s| {
                ApiVersion::default()
                    .with_api_key(s.key as i16)
                    .with_min_version(s.min)
                    .with_max_version(s.max)
            })
            .collect(),
    )
}

/// The v0 answer to an ApiVersions request of a version we do not speak:
/// UNSUPPORTED_VERSION plus our table, so the client can retry.
pub fn api_versions_unsupported() -> ApiVersionsResponse {
    api_versions().with_error_code(ResponseError::UnsupportedVersion.code())
}

/// Run one request's first phase (see the module docs). Counts the request
/// and its time, until its answer is ready, under its API's name.
pub async fn dispatch(broker: Arc<Broker>, ctx: RequestContext, request: RequestKind) -> Answer {
    let Some(route) = route(ctx.api_key).filter(|r| (r.min..=r.max).contains(&ctx.version)) else {
        tracing::error!(api = ?ctx.api_key, version = ctx.version, "request reached the router without a handler");
        return Answer::Close;
    };
    // A SASL listener serves nothing but the handshake until the client
    // has authenticated (Kafka closes the connection too).
    if !ctx.session.admitted()
        && !matches!(
            ctx.api_key,
            ApiKey::ApiVersions | ApiKey::SaslHandshake | ApiKey::SaslAuthenticate
        )
    {
        tracing::info!(api = ?ctx.api_key, peer = %ctx.peer, "request before SASL authentication; closing connection");
        metrics::counter!("tributary_unauthenticated_requests_total", "api" => route.name)
            .increment(1);
        return Answer::Close;
    }
    let started = Instant::now();
    let (request, patch) = match gate(&broker, &ctx, route.name, request).await {
        Gate::Pass(request, patch) => (request, patch),
        Gate::Answer(resp) => {
            observe(route.name, started);
            return Answer::Now(Some(resp));
        }
        Gate::Close => return Answer::Close,
    };
    let patched = |mut resp: Box<ResponseKind>, patch: Option<Patch>| {
        if let Some(patch) = patch {
            patch(&mut resp);
        }
        resp
    };
    match (route.handler)(broker, ctx, request).await {
        Answer::Now(resp) => {
            observe(route.name, started);
            Answer::Now(resp.map(|r| patched(r, patch)))
        }
        Answer::Last(resp) => {
            observe(route.name, started);
            Answer::Last(resp.map(|r| patched(r, patch)))
        }
        Answer::Later(pending) => Answer::Later(Box::pin(async move {
            let resp = pending.await;
            observe(route.name, started);
            resp.map(|r| *patched(Box::new(r), patch))
        })),
        Answer::Close => Answer::Close,
    }
}

/// Count one answered request of `api` and its time since `started`.
fn observe(api: &'static str, started: Instant) {
    metrics::counter!("tributary_requests_total", "api" => api).increment(1);
    metrics::histogram!("tributary_request_duration_seconds", "api" => api)
        .record(started.elapsed().as_secs_f64());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_has_no_duplicates_and_valid_ranges() {
        let table = api_table();
        for (i, s) in table.iter().enumerate() {
            assert!(s.min <= s.max, "{s:?}");
            assert!(
                table[i + 1..].iter().all(|o| o.key != s.key),
                "duplicate {s:?}"
            );
            assert_eq!(s.name, format!("{:?}", s.key), "metric name of {s:?}");
        }
        assert!(is_supported(ApiKey::ApiVersions, 3));
        assert!(!is_supported(ApiKey::ApiVersions, 99));
        assert!(is_supported(ApiKey::SaslHandshake, 0));
        assert!(is_supported(ApiKey::EndTxn, 0));
        assert!(
            !is_supported(ApiKey::EndTxn, 5),
            "transaction version 2 is not offered"
        );
    }

    #[test]
    fn every_routed_api_has_an_authorization_rule() {
        for route in api_table() {
            assert!(
                crate::authz::gate::has_rule(route.key),
                "{} has no authorization rule",
                route.name
            );
        }
    }
}
