//! Kafka's ACL model, as plain data and decisions (no database): a binding
//! grants or denies one principal, from one host, one operation on the
//! resources a pattern names. Which bindings a filter selects (DescribeAcls,
//! DeleteAcls) and whether a request is allowed are decided here, once, for
//! every backend and every broker.
//!
//! Codes are Kafka's own (`AclResourceType`, `PatternType`, `AclOperation`,
//! `AclPermissionType`), so bindings go to and from the wire unchanged.

/// Kafka's `ResourceType`.
pub mod resource {
    pub const ANY: i8 = 1;
    pub const TOPIC: i8 = 2;
    pub const GROUP: i8 = 3;
    pub const CLUSTER: i8 = 4;
    pub const TRANSACTIONAL_ID: i8 = 5;
    pub const DELEGATION_TOKEN: i8 = 6;
    pub const USER: i8 = 7;
}

/// Kafka's `PatternType`.
pub mod pattern {
    pub const ANY: i8 = 1;
    /// Filters only: literal, prefixed or wildcard bindings that match a name.
    pub const MATCH: i8 = 2;
    pub const LITERAL: i8 = 3;
    pub const PREFIXED: i8 = 4;
}

/// Kafka's `AclOperation`.
pub mod operation {
    pub const ANY: i8 = 1;
    pub const ALL: i8 = 2;
    pub const READ: i8 = 3;
    pub const WRITE: i8 = 4;
    pub const CREATE: i8 = 5;
    pub const DELETE: i8 = 6;
    pub const ALTER: i8 = 7;
    pub const DESCRIBE: i8 = 8;
    pub const CLUSTER_ACTION: i8 = 9;
    pub const DESCRIBE_CONFIGS: i8 = 10;
    pub const ALTER_CONFIGS: i8 = 11;
    pub const IDEMPOTENT_WRITE: i8 = 12;
    pub const CREATE_TOKENS: i8 = 13;
    pub const DESCRIBE_TOKENS: i8 = 14;
}

/// Kafka's `AclPermissionType`.
pub mod permission {
    pub const ANY: i8 = 1;
    pub const DENY: i8 = 2;
    pub const ALLOW: i8 = 3;
}

/// The name of the cluster resource, and the wildcard of names, principals
/// and hosts.
pub const CLUSTER_NAME: &str = "kafka-cluster";
pub const WILDCARD: &str = "*";

/// One ACL.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct AclBinding {
    pub resource_type: i8,
    pub resource_name: String,
    pub pattern_type: i8,
    /// `User:alice`, or `User:*` for everyone.
    pub principal: String,
    /// A client address, or `*`.
    pub host: String,
    pub operation: i8,
    pub permission: i8,
}

/// What DescribeAcls and DeleteAcls select: each `None` field matches any.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct AclFilter {
    /// `ANY` matches every type.
    pub resource_type: i8,
    pub resource_name: Option<String>,
    /// `ANY`, `MATCH`, `LITERAL` or `PREFIXED`.
    pub pattern_type: i8,
    pub principal: Option<String>,
    pub host: Option<String>,
    /// `ANY` matches every operation.
    pub operation: i8,
    /// `ANY` matches both.
    pub permission: i8,
}

/// Why a binding cannot be stored (CreateAcls answers INVALID_REQUEST).
pub fn check_binding(b: &AclBinding) -> Result<(), String> {
    let known_type = matches!(
        b.resource_type,
        resource::TOPIC
            | resource::GROUP
            | resource::CLUSTER
            | resource::TRANSACTIONAL_ID
            | resource::DELEGATION_TOKEN
            | resource::USER
    );
    if !known_type {
        return Err(format!(
            "resource type {} cannot be granted",
            b.resource_type
        ));
    }
    if !matches!(b.pattern_type, pattern::LITERAL | pattern::PREFIXED) {
        return Err("an ACL's pattern type must be LITERAL or PREFIXED".into());
    }
    if b.resource_name.is_empty() {
        return Err("an ACL needs a resource name".into());
    }
    if b.resource_type == resource::CLUSTER && b.resource_name != CLUSTER_NAME {
        return Err(format!("the cluster resource is named {CLUSTER_NAME}"));
    }
    if !(operation::ALL..=operation::DESCRIBE_TOKENS).contains(&b.operation) {
        return Err(format!("operation {} cannot be granted", b.operation));
    }
    if !matches!(b.permission, permission::ALLOW | permission::DENY) {
        return Err("an ACL's permission must be ALLOW or DENY".into());
    }
    if !b.principal.contains(':') {
        return Err(format!(
            "principal {:?} is not TYPE:NAME (e.g. User:alice)",
            b.principal
        ));
    }
    if b.host.is_empty() {
        return Err("an ACL needs a host (or *)".into());
    }
    for s in [&b.resource_name, &b.principal, &b.host] {
        if s.len() > 1024 {
            return Err("an ACL field is longer than 1024 bytes".into());
        }
    }
    Ok(())
}

/// Whether `filter` selects `b`.
pub fn matches(filter: &AclFilter, b: &AclBinding) -> bool {
    let field = |want: &Option<String>, have: &str| want.as_deref().is_none_or(|w| w == have);
    let code = |want: i8, have: i8| want == resource::ANY || want == have;
    let name = match filter.pattern_type {
        pattern::ANY => field(&filter.resource_name, &b.resource_name),
        pattern::MATCH => match &filter.resource_name {
            None => true,
            Some(n) => names_resource(b, n),
        },
        p => p == b.pattern_type && field(&filter.resource_name, &b.resource_name),
    };
    code(filter.resource_type, b.resource_type)
        && name
        && field(&filter.principal, &b.principal)
        && field(&filter.host, &b.host)
        && code(filter.operation, b.operation)
        && code(filter.permission, b.permission)
}

/// Whether `b`'s pattern covers the resource named `name` (of its type).
pub fn names_resource(b: &AclBinding, name: &str) -> bool {
    match b.pattern_type {
        pattern::LITERAL => b.resource_name == name || b.resource_name == WILDCARD,
        pattern::PREFIXED => name.starts_with(&b.resource_name),
        _ => false,
    }
}

/// Whether `b` grants (or denies) `op`: itself, `ALL`, or for DESCRIBE any
/// of READ/WRITE/DELETE/ALTER and for DESCRIBE_CONFIGS ALTER_CONFIGS, as
/// Kafka implies them (implication only widens ALLOW: a DENY of READ does
/// not deny DESCRIBE).
fn covers(b: &AclBinding, op: i8) -> bool {
    if b.operation == op || b.operation == operation::ALL {
        return true;
    }
    if b.permission != permission::ALLOW {
        return false;
    }
    match op {
        operation::DESCRIBE => matches!(
            b.operation,
            operation::READ | operation::WRITE | operation::DELETE | operation::ALTER
        ),
        operation::DESCRIBE_CONFIGS => b.operation == operation::ALTER_CONFIGS,
        _ => false,
    }
}

/// One request's question: may `principal`, from `host`, do `op` on the
/// resource `(resource_type, name)`?
#[derive(Debug, Clone, Copy)]
pub struct Access<'a> {
    pub principal: &'a str,
    pub host: &'a str,
    pub op: i8,
    pub resource_type: i8,
    pub name: &'a str,
}

/// Kafka's decision over `acls`: a matching DENY wins; else a matching
/// ALLOW allows; else, when no ACL at all names the resource,
/// `allow_if_none` decides (`allow.everyone.if.no.acl.found`).
pub fn decide(acls: &[AclBinding], access: Access<'_>, allow_if_none: bool) -> bool {
    let mut named = false;
    let mut allowed = false;
    for b in acls {
        if b.resource_type != access.resource_type || !names_resource(b, access.name) {
            continue;
        }
        named = true;
        let principal = b.principal == access.principal || b.principal == "User:*";
        let host = b.host == WILDCARD || b.host == access.host;
        if !(principal && host && covers(b, access.op)) {
            continue;
        }
        if b.permission == permission::DENY {
            return false;
        }
        allowed = true;
    }
    allowed || (!named && allow_if_none)
}

/// Whether `principal`, from `host`, may do `op` on *some* resource of
/// `resource_type` (Kafka's `authorizeByResourceType`, which lets an
/// idempotent producer in with WRITE on any topic): an ALLOW binding that
/// no DENY of the same principal covers whole (a literal `*`, or a prefix
/// of its name). With `allow_if_none`, also when no DENY applies at all.
pub fn allows_some(
    acls: &[AclBinding],
    principal: &str,
    host: &str,
    op: i8,
    resource_type: i8,
    allow_if_none: bool,
) -> bool {
    let applies = |b: &&AclBinding| {
        b.resource_type == resource_type
            && (b.principal == principal || b.principal == "User:*")
            && (b.host == WILDCARD || b.host == host)
            && covers(b, op)
    };
    let denies: Vec<&AclBinding> = acls
        .iter()
        .filter(applies)
        .filter(|b| b.permission == permission::DENY)
        .collect();
    let covered = |allow: &AclBinding| {
        denies.iter().any(|d| {
            (d.pattern_type == pattern::LITERAL && d.resource_name == WILDCARD)
                || (d.pattern_type == pattern::PREFIXED
                    && allow.resource_name.starts_with(&d.resource_name))
                || (d.pattern_type == pattern::LITERAL
                    && allow.pattern_type == pattern::LITERAL
                    && d.resource_name == allow.resource_name)
        })
    };
    let granted = acls
        .iter()
        .filter(applies)
        .any(|b| b.permission == permission::ALLOW && !covered(b));
    granted || (allow_if_none && denies.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn acl(t: i8, name: &str, p: i8, who: &str, op: i8, perm: i8) -> AclBinding {
        AclBinding {
            resource_type: t,
            resource_name: name.into(),
            pattern_type: p,
            principal: who.into(),
            host: WILDCARD.into(),
            operation: op,
            permission: perm,
        }
    }

    fn may(acls: &[AclBinding], who: &str, op: i8, t: i8, name: &str) -> bool {
        let access = Access {
            principal: who,
            host: "10.0.0.1",
            op,
            resource_type: t,
            name,
        };
        decide(acls, access, false)
    }

    #[test]
    fn deny_wins_prefixes_wildcards_and_implied_describe() {
        use operation::*;
        use permission::*;
        use resource::*;
        let acls = vec![
            acl(
                TOPIC,
                "orders-",
                pattern::PREFIXED,
                "User:alice",
                WRITE,
                ALLOW,
            ),
            acl(
                TOPIC,
                "orders-secret",
                pattern::LITERAL,
                "User:alice",
                ALL,
                DENY,
            ),
            acl(TOPIC, "*", pattern::LITERAL, "User:*", READ, ALLOW),
            acl(GROUP, "app", pattern::LITERAL, "User:alice", READ, ALLOW),
        ];
        assert!(may(&acls, "User:alice", WRITE, TOPIC, "orders-eu"));
        assert!(
            may(&acls, "User:alice", DESCRIBE, TOPIC, "orders-eu"),
            "WRITE implies DESCRIBE"
        );
        assert!(
            !may(&acls, "User:alice", WRITE, TOPIC, "orders-secret"),
            "deny wins"
        );
        assert!(
            !may(&acls, "User:alice", READ, TOPIC, "orders-secret"),
            "deny ALL wins over the wildcard READ"
        );
        assert!(
            may(&acls, "User:bob", READ, TOPIC, "anything"),
            "wildcard name and principal"
        );
        assert!(!may(&acls, "User:bob", WRITE, TOPIC, "orders-eu"));
        assert!(may(&acls, "User:alice", READ, GROUP, "app"));
        assert!(!may(&acls, "User:alice", READ, GROUP, "app2"));
        assert!(
            !may(&acls, "User:alice", ALTER, CLUSTER, CLUSTER_NAME),
            "nothing named, default deny"
        );
        let open = Access {
            principal: "User:x",
            host: "h",
            op: ALTER,
            resource_type: CLUSTER,
            name: CLUSTER_NAME,
        };
        assert!(decide(&acls, open, true), "allow.everyone.if.no.acl.found");
        // Host-bound bindings.
        let mut from_host = acl(GROUP, "g", pattern::LITERAL, "User:alice", READ, ALLOW);
        from_host.host = "10.0.0.9".into();
        assert!(!may(&[from_host], "User:alice", READ, GROUP, "g"));
    }

    #[test]
    fn filters_select_as_kafka_does() {
        use operation::*;
        use permission::*;
        use resource::*;
        let lit = acl(TOPIC, "orders", pattern::LITERAL, "User:alice", READ, ALLOW);
        let pre = acl(TOPIC, "ord", pattern::PREFIXED, "User:bob", WRITE, DENY);
        let all = AclFilter {
            resource_type: resource::ANY,
            pattern_type: pattern::ANY,
            operation: operation::ANY,
            permission: permission::ANY,
            ..AclFilter::default()
        };
        assert!(matches(&all, &lit) && matches(&all, &pre));
        let by_match = AclFilter {
            resource_name: Some("orders".into()),
            pattern_type: pattern::MATCH,
            ..all.clone()
        };
        assert!(matches(&by_match, &lit) && matches(&by_match, &pre));
        let literal_only = AclFilter {
            resource_name: Some("orders".into()),
            pattern_type: pattern::LITERAL,
            ..all.clone()
        };
        assert!(matches(&literal_only, &lit) && !matches(&literal_only, &pre));
        let bob_denies = AclFilter {
            principal: Some("User:bob".into()),
            permission: DENY,
            ..all.clone()
        };
        assert!(!matches(&bob_denies, &lit) && matches(&bob_denies, &pre));
        let groups = AclFilter {
            resource_type: GROUP,
            ..all
        };
        assert!(!matches(&groups, &lit));
    }

    #[test]
    fn some_resource_of_a_type() {
        use operation::*;
        use permission::*;
        use resource::*;
        let some = |acls: &[AclBinding], who: &str| {
            allows_some(acls, who, "10.0.0.1", WRITE, TOPIC, false)
        };
        let write_orders = acl(TOPIC, "orders", pattern::LITERAL, "User:a", WRITE, ALLOW);
        assert!(some(std::slice::from_ref(&write_orders), "User:a"));
        assert!(!some(std::slice::from_ref(&write_orders), "User:b"));
        let read_only = acl(TOPIC, "orders", pattern::LITERAL, "User:a", READ, ALLOW);
        assert!(!some(&[read_only], "User:a"), "READ does not imply WRITE");
        let deny_all = acl(TOPIC, "*", pattern::LITERAL, "User:a", WRITE, DENY);
        assert!(!some(&[write_orders.clone(), deny_all], "User:a"));
        let deny_prefix = acl(TOPIC, "ord", pattern::PREFIXED, "User:a", ALL, DENY);
        assert!(!some(&[write_orders.clone(), deny_prefix], "User:a"));
        let deny_other = acl(TOPIC, "x", pattern::LITERAL, "User:a", WRITE, DENY);
        assert!(some(&[write_orders, deny_other], "User:a"));
        assert!(allows_some(&[], "User:a", "h", WRITE, TOPIC, true));
    }

    #[test]
    fn bad_bindings_are_named() {
        use operation::*;
        use permission::*;
        use resource::*;
        let ok = acl(TOPIC, "t", pattern::LITERAL, "User:a", READ, ALLOW);
        assert!(check_binding(&ok).is_ok());
        for bad in [
            AclBinding {
                resource_type: resource::ANY,
                ..ok.clone()
            },
            AclBinding {
                pattern_type: pattern::MATCH,
                ..ok.clone()
            },
            AclBinding {
                resource_name: String::new(),
                ..ok.clone()
            },
            AclBinding {
                resource_type: CLUSTER,
                resource_name: "x".into(),
                ..ok.clone()
            },
            AclBinding {
                operation: operation::ANY,
                ..ok.clone()
            },
            AclBinding {
                permission: permission::ANY,
                ..ok.clone()
            },
            AclBinding {
                principal: "alice".into(),
                ..ok.clone()
            },
            AclBinding {
                host: String::new(),
                ..ok.clone()
            },
        ] {
            assert!(check_binding(&bad).is_err(), "{bad:?}");
        }
    }
}
