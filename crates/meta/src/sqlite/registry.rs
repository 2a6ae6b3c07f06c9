//! [`BrokerRegistry`] for [`SqliteStore`]: the `brokers` table (schema v3).
//!
//! A heartbeat reads the node id's row and upserts it inside one `BEGIN
//! IMMEDIATE` transaction, so the check that no other live broker holds the
//! id and the write that claims it cannot interleave with another writer.
//! The table is one row per broker, so listing live brokers walks the
//! primary key (already in node id order) and filters.

use async_trait::async_trait;
use rusqlite::{params, OptionalExtension};

use super::conn::SqliteStore;
use crate::rules::registry::{decode_listeners, encode_listeners, live_cutoff, may_claim};
use crate::{BrokerInfo, BrokerRegistry, Result};

#[async_trait]
impl BrokerRegistry for SqliteStore {
    /// One machine: the store's clock (the system's, or a simulation's).
    async fn clock_ms(&self) -> Result<i64> {
        Ok(self.clock().now_ms())
    }

    async fn heartbeat_broker(&self, info: &BrokerInfo, now_ms: i64, ttl_ms: i64) -> Result<()> {
        let info = info.clone();
        let cutoff = live_cutoff(now_ms, ttl_ms);
        self.write("heartbeat_broker", move |tx| {
            let held: Option<(String, i32, i64)> = tx
                .prepare_cached("SELECT host, port, last_seen_ms FROM brokers WHERE node_id = ?1")?
                .query_row([info.node_id], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
                .optional()?;
            may_claim(
                &info,
                held.as_ref()
                    .map(|(host, port, seen)| (host.as_str(), *port, *seen)),
                cutoff,
            )?;
            tx.prepare_cached(
                "INSERT INTO brokers (node_id, host, port, rack, last_seen_ms, listeners) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6) \
                 ON CONFLICT (node_id) DO UPDATE SET host = excluded.host, \
                     port = excluded.port, rack = excluded.rack, \
                     last_seen_ms = excluded.last_seen_ms, listeners = excluded.listeners",
            )?
            .execute(params![
                info.node_id,
                info.host,
                info.port,
                info.rack,
                now_ms,
                encode_listeners(&info.listeners)
            ])?;
            Ok(())
        })
        .await
    }

    async fn live_brokers(&self, now_ms: i64, ttl_ms: i64) -> Result<Vec<BrokerInfo>> {
        let cutoff = live_cutoff(now_ms, ttl_ms);
        self.read("live_brokers", move |tx| {
            let mut stmt = tx.prepare_cached(
                "SELECT node_id, host, port, rack, listeners FROM brokers \
                 WHERE last_seen_ms >= ?1 ORDER BY node_id",
            )?;
            let rows = stmt.query_map([cutoff], |r| {
                Ok(BrokerInfo {
                    node_id: r.get(0)?,
                    host: r.get(1)?,
                    port: r.get(2)?,
                    rack: r.get(3)?,
                    listeners: decode_listeners(&r.get::<_, String>(4)?),
                })
            })?;
            Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
        })
        .await
    }

    async fn deregister_broker(&self, node_id: i32) -> Result<()> {
        self.write("deregister_broker", move |tx| {
            tx.prepare_cached("DELETE FROM brokers WHERE node_id = ?1")?
                .execute([node_id])?;
            Ok(())
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use rusqlite::Connection;

    use super::*;
    use crate::sqlite::schema::MIGRATIONS;
    use crate::TopicStore;

    /// A v2 database (before the registry) gains the `brokers` table and
    /// keeps its data.
    #[tokio::test]
    async fn migration_from_v2_adds_registry() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("v2.db");
        {
            let conn = Connection::open(&path).expect("open v2");
            conn.execute_batch(MIGRATIONS[0]).expect("v1 schema");
            conn.execute_batch(MIGRATIONS[1]).expect("v2 schema");
            conn.execute_batch(
                "CREATE TABLE schema_version (version INTEGER NOT NULL);
                 INSERT INTO schema_version (version) VALUES (2);
                 INSERT INTO topics (id, name, partitions)
                     VALUES (x'000102030405060708090a0b0c0d0e0f', 't', 0);",
            )
            .expect("v2 data");
        }
        let store = SqliteStore::open(&path).await.expect("migrate");
        assert!(store.get_topic("t").await.expect("get").is_some());
        let me = BrokerInfo {
            node_id: 5,
            host: "h".into(),
            port: 1,
            rack: Some("r".into()),
            listeners: Vec::new(),
        };
        store.heartbeat_broker(&me, 100, 10).await.expect("beat");
        assert_eq!(store.live_brokers(110, 10).await.expect("live"), vec![me]);
    }

    /// Extreme clocks and ttls neither overflow nor fail.
    #[tokio::test]
    async fn extreme_arguments_saturate() {
        let store = SqliteStore::open_in_memory().await.expect("open");
        let me = BrokerInfo {
            node_id: i32::MIN,
            host: String::new(),
            port: 0,
            rack: None,
            listeners: Vec::new(),
        };
        store
            .heartbeat_broker(&me, i64::MIN, i64::MAX)
            .await
            .expect("beat");
        assert_eq!(
            store.live_brokers(i64::MIN, i64::MAX).await.expect("live"),
            vec![me.clone()]
        );
        assert!(store
            .live_brokers(i64::MAX, 0)
            .await
            .expect("live")
            .is_empty());
        store.deregister_broker(i32::MIN).await.expect("deregister");
        assert!(store
            .live_brokers(i64::MIN, i64::MAX)
            .await
            .expect("live")
            .is_empty());
    }
}
