//! CreateAcls, DescribeAcls and DeleteAcls: the ACL bindings of the
//! metadata store, as Kafka's admin clients manage them (the gate checks
//! ALTER or DESCRIBE on the cluster first). Without `--authorizer acl` they
//! answer SECURITY_DISABLED, as Kafka does without an authorizer. A change
//! applies on this broker at once and on the others within
//! [`crate::authz::REFRESH_INTERVAL`].

use std::collections::BTreeMap;

use kafka_protocol::messages::create_acls_response::AclCreationResult;
use kafka_protocol::messages::delete_acls_response::{
    DeleteAclsFilterResult, DeleteAclsMatchingAcl,
};
use kafka_protocol::messages::describe_acls_response::{AclDescription, DescribeAclsResource};
use kafka_protocol::messages::{
    CreateAclsRequest, CreateAclsResponse, DeleteAclsRequest, DeleteAclsResponse,
    DescribeAclsRequest, DescribeAclsResponse,
};
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::ResponseError;
use tributary_meta::rules::acl::{check_binding, matches, operation, pattern, permission};
use tributary_meta::{AclBinding, AclFilter};
use tributary_runtime::Chain;

use super::str_bytes;
use crate::error::meta_error_code;
use crate::Broker;

const DISABLED: &str = "no authorizer is configured (start the broker with --authorizer acl)";

fn disabled() -> (i16, Option<StrBytes>) {
    (
        ResponseError::SecurityDisabled.code(),
        Some(StrBytes::from_static_str(DISABLED)),
    )
}

/// Apply a change here now (the other brokers poll).
async fn reload(broker: &Broker) {
    if let Err(e) = broker.authz.refresh().await {
        tracing::warn!(error = %Chain(&e), "reloading ACLs after a change failed; the refresh task retries");
    }
}

pub async fn create(broker: &Broker, req: CreateAclsRequest) -> CreateAclsResponse {
    if !broker.authz.enabled() {
        let (code, message) = disabled();
        return CreateAclsResponse::default().with_results(
            req.creations
                .iter()
                .map(|_| {
                    AclCreationResult::default()
                        .with_error_code(code)
                        .with_error_message(message.clone())
                })
                .collect(),
        );
    }
    let mut valid = Vec::new();
    let mut outcome: Vec<Result<(), (i16, String)>> = Vec::with_capacity(req.creations.len());
    for c in req.creations {
        let binding = AclBinding {
            resource_type: c.resource_type,
            resource_name: c.resource_name.to_string(),
            pattern_type: c.resource_pattern_type,
            principal: c.principal.to_string(),
            host: c.host.to_string(),
            operation: c.operation,
            permission: c.permission_type,
        };
        match check_binding(&binding) {
            Ok(()) => {
                valid.push(binding);
                outcome.push(Ok(()));
            }
            Err(why) => outcome.push(Err((ResponseError::InvalidRequest.code(), why))),
        }
    }
    if !valid.is_empty() {
        if let Err(e) = broker.security.create_acls(&valid).await {
            tracing::warn!(error = %Chain(&e), "CreateAcls: storing the bindings failed");
            let failed = (meta_error_code(&e), e.to_string());
            for o in outcome.iter_mut().filter(|o| o.is_ok()) {
                *o = Err(failed.clone());
            }
        } else {
            tracing::info!(bindings = ?valid, "ACLs created");
            reload(broker).await;
        }
    }
    CreateAclsResponse::default().with_results(
        outcome
            .into_iter()
            .map(|o| match o {
                Ok(()) => AclCreationResult::default(),
                Err((code, why)) => AclCreationResult::default()
                    .with_error_code(code)
                    .with_error_message(Some(str_bytes(&why))),
            })
            .collect(),
    )
}

/// A filter as the store takes it; `Err`: the request's codes are not
/// ones a filter may hold.
#[allow(clippy::too_many_arguments)]
fn filter(
    resource_type: i8,
    name: Option<&StrBytes>,
    pattern_type: i8,
    principal: Option<&StrBytes>,
    host: Option<&StrBytes>,
    op: i8,
    perm: i8,
) -> Result<AclFilter, String> {
    if !(1..=7).contains(&resource_type) {
        return Err(format!("unknown resource type {resource_type}"));
    }
    if !(pattern::ANY..=pattern::PREFIXED).contains(&pattern_type) {
        return Err(format!("unknown pattern type {pattern_type}"));
    }
    if !(operation::ANY..=operation::DESCRIBE_TOKENS).contains(&op) {
        return Err(format!("unknown operation {op}"));
    }
    if !(permission::ANY..=permission::ALLOW).contains(&perm) {
        return Err(format!("unknown permission type {perm}"));
    }
    Ok(AclFilter {
        resource_type,
        resource_name: name.map(|s| s.to_string()),
        pattern_type,
        principal: principal.map(|s| s.to_string()),
        host: host.map(|s| s.to_string()),
        operation: op,
        permission: perm,
    })
}

/// [`filter`] of a DescribeAcls request or a DeleteAcls filter (the two
/// Kafka types have the same fields).
macro_rules! filter_of {
    ($r:expr) => {
        filter(
            $r.resource_type_filter,
            $r.resource_name_filter.as_ref(),
            $r.pattern_type_filter,
            $r.principal_filter.as_ref(),
            $r.host_filter.as_ref(),
            $r.operation,
            $r.permission_type,
        )
    };
}

pub async fn describe(broker: &Broker, req: DescribeAclsRequest) -> DescribeAclsResponse {
    let refuse = |code: i16, message: String| {
        DescribeAclsResponse::default()
            .with_error_code(code)
            .with_error_message(Some(str_bytes(&message)))
    };
    if !broker.authz.enabled() {
        return refuse(ResponseError::SecurityDisabled.code(), DISABLED.into());
    }
    let f = match filter_of!(req) {
        Ok(f) => f,
        Err(why) => return refuse(ResponseError::InvalidRequest.code(), why),
    };
    let all = match broker.security.list_acls().await {
        Ok(all) => all,
        Err(e) => return refuse(meta_error_code(&e), e.to_string()),
    };
    let mut by_resource: BTreeMap<(i8, String, i8), Vec<AclDescription>> = BTreeMap::new();
    for b in all.into_iter().filter(|b| matches(&f, b)) {
        by_resource
            .entry((b.resource_type, b.resource_name, b.pattern_type))
            .or_default()
            .push(
                AclDescription::default()
                    .with_principal(str_bytes(&b.principal))
                    .with_host(str_bytes(&b.host))
                    .with_operation(b.operation)
                    .with_permission_type(b.permission),
            );
    }
    DescribeAclsResponse::default().with_resources(
        by_resource
            .into_iter()
            .map(|((resource_type, name, pattern_type), acls)| {
                DescribeAclsResource::default()
                    .with_resource_type(resource_type)
                    .with_resource_name(str_bytes(&name))
                    .with_pattern_type(pattern_type)
                    .with_acls(acls)
            })
            .collect(),
    )
}

pub async fn delete(broker: &Broker, req: DeleteAclsRequest) -> DeleteAclsResponse {
    let refuse = |code: i16, message: &str| {
        DeleteAclsFilterResult::default()
            .with_error_code(code)
            .with_error_message(Some(str_bytes(message)))
    };
    let mut results = Vec::with_capacity(req.filters.len());
    let mut changed = false;
    for r in &req.filters {
        if !broker.authz.enabled() {
            results.push(refuse(ResponseError::SecurityDisabled.code(), DISABLED));
            continue;
        }
        let f = match filter_of!(r) {
            Ok(f) => f,
            Err(why) => {
                results.push(refuse(ResponseError::InvalidRequest.code(), &why));
                continue;
            }
        };
        match broker.security.delete_acls(&f).await {
            Ok(removed) => {
                changed |= !removed.is_empty();
                if !removed.is_empty() {
                    tracing::info!(bindings = ?removed, "ACLs deleted");
                }
                results.push(
                    DeleteAclsFilterResult::default().with_matching_acls(
                        removed
                            .into_iter()
                            .map(|b| {
                                DeleteAclsMatchingAcl::default()
                                    .with_resource_type(b.resource_type)
                                    .with_resource_name(str_bytes(&b.resource_name))
                                    .with_pattern_type(b.pattern_type)
                                    .with_principal(str_bytes(&b.principal))
                                    .with_host(str_bytes(&b.host))
                                    .with_operation(b.operation)
                                    .with_permission_type(b.permission)
                            })
                            .collect(),
                    ),
                );
            }
            Err(e) => {
                tracing::warn!(error = %Chain(&e), "DeleteAcls failed");
                results.push(refuse(meta_error_code(&e), &e.to_string()));
            }
        }
    }
    if changed {
        reload(broker).await;
    }
    DeleteAclsResponse::default().with_filter_results(results)
}
