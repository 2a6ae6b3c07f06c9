//! Topic lookups for request handlers: name validation, a short-lived cache in
//! front of the metadata store, and auto-creation.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use moka::future::Cache;
use tributary_meta::{MetaError, TopicMeta, TopicStore};

/// Longest topic name Kafka accepts.
pub const MAX_TOPIC_NAME_LEN: usize = 249;

/// Why a topic name is invalid, or `None` if it is valid (Kafka's rules).
pub fn invalid_topic_name(name: &str) -> Option<&'static str> {
    if name.is_empty() {
        return Some("topic name is empty");
    }
    if name == "." || name == ".." {
        return Some("topic name cannot be '.' or '..'");
    }
    if name.len() > MAX_TOPIC_NAME_LEN {
        return Some("topic name is longer than 249 characters");
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_' || b == b'-')
    {
        return Some("topic name may only contain ASCII letters, digits, '.', '_' and '-'");
    }
    None
}

/// The names Kafka reserves for its own state (`Topic.isInternal`, plus the
/// KRaft log). Tributary keeps that state in the metadata store, so these are
/// never topics: they are not created, automatically or on request, and
/// clients cannot produce to them.
pub const INTERNAL_TOPICS: &[&str] = &[
    "__cluster_metadata",
    "__consumer_offsets",
    "__share_group_state",
    "__transaction_state",
];

/// Whether `name` is one of Kafka's internal topics.
pub fn is_internal_topic(name: &str) -> bool {
    INTERNAL_TOPICS.contains(&name)
}

/// Cache of topic metadata by name. Entries live briefly so that topics
/// created or deleted elsewhere show up soon.
#[derive(Debug, Clone)]
pub struct TopicCache {
    meta: Arc<dyn TopicStore>,
    by_name: Cache<String, Arc<TopicMeta>>,
}

impl TopicCache {
    pub fn new(meta: Arc<dyn TopicStore>) -> Self {
        Self {
            meta,
            by_name: Cache::builder()
                .max_capacity(100_000)
                .time_to_live(Duration::from_secs(2))
                .build(),
        }
    }

    /// Look a topic up (cached).
    pub async fn get(&self, name: &str) -> Result<Option<Arc<TopicMeta>>, MetaError> {
        if let Some(t) = self.by_name.get(name).await {
            return Ok(Some(t));
        }
        match self.meta.get_topic(name).await? {
            Some(t) => {
                let t = Arc::new(t);
                self.by_name.insert(name.to_string(), t.clone()).await;
                Ok(Some(t))
            }
            None => Ok(None),
        }
    }

    /// Look a topic up, creating it with `partitions` partitions if missing
    /// (never an internal topic: `None` then).
    pub async fn get_or_create(
        &self,
        name: &str,
        partitions: i32,
    ) -> Result<Option<Arc<TopicMeta>>, MetaError> {
        if let Some(t) = self.get(name).await? {
            return Ok(Some(t));
        }
        if is_internal_topic(name) {
            return Ok(None);
        }
        match self
            .meta
            .create_topic(name, partitions, BTreeMap::new())
            .await
        {
            Ok(t) => {
                tracing::info!(topic = name, partitions, "auto-created topic");
                let t = Arc::new(t);
                self.by_name.insert(name.to_string(), t.clone()).await;
                Ok(Some(t))
            }
            // Someone else created it first.
            Err(MetaError::TopicExists(_)) => self
                .get(name)
                .await?
                .ok_or_else(|| MetaError::UnknownTopic(name.to_string()))
                .map(Some),
            Err(e) => Err(e),
        }
    }

    /// Forget a cached topic (after create, delete or alter).
    pub async fn invalidate(&self, name: &str) {
        self.by_name.invalidate(name).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topic_name_rules() {
        assert_eq!(invalid_topic_name("orders.v1_x-2"), None);
        assert!(invalid_topic_name("").is_some());
        assert!(invalid_topic_name("..").is_some());
        assert!(invalid_topic_name("a b").is_some());
        assert!(invalid_topic_name("a/b").is_some());
        assert!(invalid_topic_name(&"x".repeat(250)).is_some());
        assert_eq!(invalid_topic_name(&"x".repeat(249)), None);
    }

    #[test]
    fn internal_names_are_kafkas_own() {
        assert!(is_internal_topic("__consumer_offsets"));
        assert!(is_internal_topic("__transaction_state"));
        // Other double-underscore names are ordinary topics (Debezium's
        // heartbeat topics, for one).
        assert!(!is_internal_topic("__debezium-heartbeat.db"));
        assert!(!is_internal_topic("consumer_offsets"));
    }
}
