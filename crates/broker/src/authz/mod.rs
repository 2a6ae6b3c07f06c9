//! The authorizer: the ACL bindings of the metadata store, cached in every
//! broker and reloaded when their version moves (checked every
//! [`REFRESH_INTERVAL`]), and the one decision request handling asks
//! ([`Authorizer::allows`], deciding with [`tributary_meta::rules::acl`]).
//!
//! Off (the default), everything is allowed, as on a Kafka broker without
//! an authorizer. On (`--authorizer acl`), super users may do everything,
//! a matching DENY wins, a matching ALLOW allows, and a resource no binding
//! names is refused unless `allow.everyone.if.no.acl.found` is set. The
//! bindings must load once before the broker serves; afterwards a store
//! that does not answer leaves the last bindings in force.

pub mod gate;

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use async_trait::async_trait;
use tributary_meta::rules::acl::{allows_some, decide, Access};
use tributary_meta::{AclBinding, MetaError, SecurityStore};
use tributary_runtime::{Background, CancellationToken, Chain, TaskHandle, Tick};

/// How often the bindings' version is checked.
pub const REFRESH_INTERVAL: Duration = Duration::from_secs(2);

/// How requests are authorized.
#[derive(Debug, Clone, Default)]
pub struct AuthorizerConfig {
    /// Check ACLs (`--authorizer acl`); off: allow everything.
    pub enabled: bool,
    /// Principals allowed everything (`--super-users User:admin,...`).
    pub super_users: Vec<String>,
    /// Allow access to resources no binding names
    /// (`allow.everyone.if.no.acl.found`, default false).
    pub allow_if_no_acl: bool,
}

/// The cached bindings and the decision.
#[derive(Debug)]
pub struct Authorizer {
    config: AuthorizerConfig,
    store: Arc<dyn SecurityStore>,
    acls: RwLock<Arc<Vec<AclBinding>>>,
    /// The version the cached bindings are at (-1: never loaded).
    version: AtomicI64,
}

impl Authorizer {
    pub fn new(config: AuthorizerConfig, store: Arc<dyn SecurityStore>) -> Arc<Authorizer> {
        Arc::new(Authorizer {
            config,
            store,
            acls: RwLock::new(Arc::new(Vec::new())),
            version: AtomicI64::new(-1),
        })
    }

    /// Whether ACLs are checked at all.
    pub fn enabled(&self) -> bool {
        self.config.enabled
    }

    /// May `principal`, from `host`, do `op` on `(resource_type, name)`?
    pub fn allows(
        &self,
        principal: &str,
        host: &str,
        op: i8,
        resource_type: i8,
        name: &str,
    ) -> bool {
        if !self.config.enabled || self.config.super_users.iter().any(|s| s == principal) {
            return true;
        }
        let acls = self.acls.read().unwrap_or_else(|e| e.into_inner()).clone();
        decide(
            &acls,
            Access {
                principal,
                host,
                op,
                resource_type,
                name,
            },
            self.config.allow_if_no_acl,
        )
    }

    /// May `principal` do `op` on some resource of `resource_type`
    /// ([`allows_some`]: an idempotent producer with WRITE on any topic).
    pub fn allows_some(&self, principal: &str, host: &str, op: i8, resource_type: i8) -> bool {
        if !self.config.enabled || self.config.super_users.iter().any(|s| s == principal) {
            return true;
        }
        let acls = self.acls.read().unwrap_or_else(|e| e.into_inner()).clone();
        allows_some(
            &acls,
            principal,
            host,
            op,
            resource_type,
            self.config.allow_if_no_acl,
        )
    }

    /// Reload the bindings if their version moved. Returns whether it did.
    pub async fn refresh(&self) -> Result<bool, MetaError> {
        if !self.config.enabled {
            return Ok(false);
        }
        let version = self.store.acl_version().await?;
        if version == self.version.load(Ordering::Acquire) {
            return Ok(false);
        }
        let acls = self.store.list_acls().await?;
        tracing::debug!(version, bindings = acls.len(), "ACLs loaded");
        *self.acls.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(acls);
        self.version.store(version, Ordering::Release);
        Ok(true)
    }

    /// Check for changes every [`REFRESH_INTERVAL`] until `stop`.
    pub fn spawn_refresh(self: &Arc<Self>, stop: CancellationToken) -> TaskHandle {
        tributary_runtime::spawn("acl-refresh", Refresh(self.clone()), stop)
    }
}

struct Refresh(Arc<Authorizer>);

#[async_trait]
impl Background for Refresh {
    type Event = ();

    fn first(&self) -> Tick {
        Tick::In(REFRESH_INTERVAL)
    }

    async fn tick(&mut self) -> Tick {
        if let Err(e) = self.0.refresh().await {
            tracing::warn!(error = %Chain(&e), "reloading ACLs failed; the last ones stay in force");
        }
        Tick::In(REFRESH_INTERVAL)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tributary_meta::rules::acl::{operation, pattern, permission, resource};
    use tributary_meta::SqliteStore;

    #[tokio::test]
    async fn cached_bindings_follow_the_store() {
        let store = Arc::new(SqliteStore::open_in_memory().await.expect("store"));
        let config = AuthorizerConfig {
            enabled: true,
            super_users: vec!["User:admin".into()],
            allow_if_no_acl: false,
        };
        let authz = Authorizer::new(config, store.clone());
        assert!(authz.refresh().await.expect("load"));
        let read = |who: &str| authz.allows(who, "10.0.0.1", operation::READ, resource::TOPIC, "t");
        assert!(!read("User:alice"), "nothing granted, default deny");
        assert!(read("User:admin"), "super user");
        store
            .create_acls(&[AclBinding {
                resource_type: resource::TOPIC,
                resource_name: "t".into(),
                pattern_type: pattern::LITERAL,
                principal: "User:alice".into(),
                host: "*".into(),
                operation: operation::READ,
                permission: permission::ALLOW,
            }])
            .await
            .expect("grant");
        assert!(!read("User:alice"), "not before the refresh");
        assert!(authz.refresh().await.expect("reload"));
        assert!(read("User:alice"));
        assert!(
            !authz.refresh().await.expect("unchanged"),
            "no reload without a change"
        );

        let off = Authorizer::new(AuthorizerConfig::default(), store);
        assert!(off.allows(
            "User:x",
            "h",
            operation::ALTER,
            resource::CLUSTER,
            "kafka-cluster"
        ));
    }
}
