//! Maps each API key to its handler. The same table answers ApiVersions, so
//! the broker never advertises an API or version it does not handle.

use kafka_protocol::messages::api_versions_response::ApiVersion;
use kafka_protocol::messages::{ApiKey, ApiVersionsResponse, RequestKind, ResponseKind};
use kafka_protocol::ResponseError;

use crate::connection::RequestContext;
use crate::{apis, groups, Broker};

/// One supported API and its version range.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ApiSpec {
    pub key: ApiKey,
    pub min: i16,
    pub max: i16,
}

const fn spec(key: ApiKey, min: i16, max: i16) -> ApiSpec {
    ApiSpec { key, min, max }
}

/// APIs served outside the group coordinator.
pub const BROKER_APIS: &[ApiSpec] = &[
    spec(ApiKey::Produce, 3, 11),
    spec(ApiKey::Fetch, 4, 12),
    spec(ApiKey::ListOffsets, 1, 6),
    spec(ApiKey::Metadata, 0, 12),
    spec(ApiKey::FindCoordinator, 0, 4),
    spec(ApiKey::ApiVersions, 0, 4),
    spec(ApiKey::CreateTopics, 2, 7),
    spec(ApiKey::DeleteTopics, 1, 6),
    spec(ApiKey::InitProducerId, 0, 4),
    spec(ApiKey::DescribeConfigs, 1, 4),
    spec(ApiKey::CreatePartitions, 0, 3),
    spec(ApiKey::DescribeCluster, 0, 1),
    spec(ApiKey::DeleteRecords, 0, 2),
    spec(ApiKey::AlterConfigs, 0, 2),
    spec(ApiKey::IncrementalAlterConfigs, 0, 1),
];

/// Every supported API: the broker's and the group coordinator's.
/// Built once: it is consulted for every request.
pub fn api_table() -> &'static [ApiSpec] {
    static TABLE: std::sync::OnceLock<Vec<ApiSpec>> = std::sync::OnceLock::new();
    TABLE.get_or_init(|| {
        let mut all: Vec<ApiSpec> = BROKER_APIS.to_vec();
        all.extend(
            groups::SUPPORTED
                .iter()
                .filter_map(|&(key, min, max)| Some(spec(ApiKey::try_from(key).ok()?, min, max))),
        );
        all.sort_by_key(|s| s.key as i16);
        all
    })
}

/// Whether `version` of `key` is handled.
pub fn is_supported(key: ApiKey, version: i16) -> bool {
    api_table()
        .iter()
        .any(|s| s.key == key && (s.min..=s.max).contains(&version))
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

/// Run one request. `None` means no response is sent (acks=0 produce).
pub async fn handle(
    broker: &Broker,
    ctx: &RequestContext,
    request: RequestKind,
    version: i16,
) -> Option<ResponseKind> {
    let api = api_name(&request);
    let started = std::time::Instant::now();
    let resp = handle_inner(broker, ctx, request, version).await;
    observe(api, started);
    resp
}

/// Count one answered request of `api` and its time since `started`.
pub fn observe(api: &'static str, started: std::time::Instant) {
    metrics::counter!("tributary_requests_total", "api" => api).increment(1);
    metrics::histogram!("tributary_request_duration_seconds", "api" => api)
        .record(started.elapsed().as_secs_f64());
}

/// The API's name in metrics (`Produce`, `Fetch`, ...).
fn api_name(request: &RequestKind) -> &'static str {
    match request {
        RequestKind::Produce(_) => "Produce",
        RequestKind::Fetch(_) => "Fetch",
        RequestKind::ListOffsets(_) => "ListOffsets",
        RequestKind::Metadata(_) => "Metadata",
        RequestKind::ApiVersions(_) => "ApiVersions",
        RequestKind::OffsetCommit(_) => "OffsetCommit",
        RequestKind::OffsetFetch(_) => "OffsetFetch",
        RequestKind::FindCoordinator(_) => "FindCoordinator",
        RequestKind::JoinGroup(_) => "JoinGroup",
        RequestKind::SyncGroup(_) => "SyncGroup",
        RequestKind::Heartbeat(_) => "Heartbeat",
        RequestKind::LeaveGroup(_) => "LeaveGroup",
        _ => "Other",
    }
}

async fn handle_inner(
    broker: &Broker,
    ctx: &RequestContext,
    request: RequestKind,
    version: i16,
) -> Option<ResponseKind> {
    let g = &broker.groups;
    let resp = match request {
        RequestKind::ApiVersions(_) => ResponseKind::ApiVersions(api_versions()),
        RequestKind::Metadata(r) => {
            ResponseKind::Metadata(apis::metadata::handle(broker, r, version, &ctx.client_id).await)
        }
        RequestKind::Produce(r) => {
            return apis::produce::submit(broker, r, version)
                .await
                .await
                .map(ResponseKind::Produce)
        }
        RequestKind::Fetch(r) => ResponseKind::Fetch(apis::fetch::handle(broker, r, version).await),
        RequestKind::ListOffsets(r) => {
            ResponseKind::ListOffsets(apis::list_offsets::handle(broker, r, version).await)
        }
        RequestKind::FindCoordinator(r) => {
            ResponseKind::FindCoordinator(apis::find_coordinator::handle(broker, r, version))
        }
        RequestKind::CreateTopics(r) => {
            ResponseKind::CreateTopics(apis::admin::create_topics(broker, r, version).await)
        }
        RequestKind::DeleteTopics(r) => {
            ResponseKind::DeleteTopics(apis::admin::delete_topics(broker, r, version).await)
        }
        RequestKind::CreatePartitions(r) => {
            ResponseKind::CreatePartitions(apis::admin::create_partitions(broker, r, version).await)
        }
        RequestKind::DescribeConfigs(r) => {
            ResponseKind::DescribeConfigs(apis::admin::describe_configs(broker, r, version).await)
        }
        RequestKind::DescribeCluster(r) => {
            ResponseKind::DescribeCluster(apis::admin::describe_cluster(broker, r, version))
        }
        RequestKind::InitProducerId(r) => {
            ResponseKind::InitProducerId(apis::init_producer_id::handle(broker, r, version).await)
        }
        RequestKind::DeleteRecords(r) => {
            ResponseKind::DeleteRecords(apis::delete_records::handle(broker, r, version).await)
        }
        RequestKind::AlterConfigs(r) => {
            ResponseKind::AlterConfigs(apis::alter_configs::alter_configs(broker, r, version).await)
        }
        RequestKind::IncrementalAlterConfigs(r) => ResponseKind::IncrementalAlterConfigs(
            apis::alter_configs::incremental_alter_configs(broker, r, version).await,
        ),
        RequestKind::JoinGroup(r) => ResponseKind::JoinGroup(
            g.join_group(r, version, &ctx.client_id, &ctx.peer.ip().to_string())
                .await,
        ),
        RequestKind::SyncGroup(r) => ResponseKind::SyncGroup(g.sync_group(r, version).await),
        RequestKind::Heartbeat(r) => ResponseKind::Heartbeat(g.heartbeat(r, version).await),
        RequestKind::LeaveGroup(r) => ResponseKind::LeaveGroup(g.leave_group(r, version).await),
        RequestKind::OffsetCommit(r) => {
            ResponseKind::OffsetCommit(g.offset_commit(r, version).await)
        }
        RequestKind::OffsetFetch(r) => ResponseKind::OffsetFetch(g.offset_fetch(r, version).await),
        RequestKind::ListGroups(r) => ResponseKind::ListGroups(g.list_groups(r, version).await),
        RequestKind::DescribeGroups(r) => {
            ResponseKind::DescribeGroups(g.describe_groups(r, version).await)
        }
        RequestKind::DeleteGroups(r) => {
            ResponseKind::DeleteGroups(g.delete_groups(r, version).await)
        }
        RequestKind::OffsetDelete(r) => {
            ResponseKind::OffsetDelete(g.offset_delete(r, version).await)
        }
        other => {
            // is_supported() lets only the APIs above through.
            tracing::error!(request = ?std::mem::discriminant(&other), "request reached the router without a handler");
            return None;
        }
    };
    Some(resp)
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
        }
        assert!(is_supported(ApiKey::ApiVersions, 3));
        assert!(!is_supported(ApiKey::ApiVersions, 99));
        assert!(!is_supported(ApiKey::SaslHandshake, 0));
    }
}
