//! [`TopicStore`] for [`SqliteStore`]: topics, partitions and their configs.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use async_trait::async_trait;
use rusqlite::{params, Connection, Transaction};
use uuid::Uuid;

use super::conn::SqliteStore;
use super::error::Step;
use super::rows::{
    load_configs, mark_dead_if_unused, now_ms, require_topic, topic_by_id, topic_by_name,
    topic_id_from_row,
};
use crate::{MetaError, Result, TopicMeta, TopicStore};

fn insert_partitions(conn: &Connection, id: Uuid, from: i32, to: i32) -> rusqlite::Result<()> {
    let mut stmt = conn.prepare_cached(
        "INSERT INTO partitions (topic_id, partition_index, log_start_offset, next_offset, \
         max_timestamp) VALUES (?1, ?2, 0, 0, ?3)",
    )?;
    for p in from..to {
        stmt.execute(params![id.as_bytes(), p, i64::MIN])?;
    }
    Ok(())
}

fn delete_topic_tx(tx: &Transaction<'_>, name: &str) -> Step<Vec<String>> {
    let topic = require_topic(tx, name)?;
    let id = topic.id.as_bytes();
    let keys = tx
        .prepare_cached("SELECT segment_key FROM index_entries WHERE topic_id = ?1")?
        .query_map([id], |r| r.get::<_, String>(0))?
        .collect::<rusqlite::Result<BTreeSet<_>>>()?;
    for sql in [
        "DELETE FROM producer_batches WHERE topic_id = ?1",
        "DELETE FROM producer_state WHERE topic_id = ?1",
        "DELETE FROM index_entries WHERE topic_id = ?1",
        "DELETE FROM partitions WHERE topic_id = ?1",
        "DELETE FROM topic_configs WHERE topic_id = ?1",
        "DELETE FROM topics WHERE id = ?1",
    ] {
        tx.prepare_cached(sql)?.execute([id])?;
    }
    // As Kafka does, committed offsets of the deleted partitions go too, in
    // the same transaction, so a re-created topic never inherits them.
    tx.prepare_cached("DELETE FROM group_offsets WHERE topic = ?1")?
        .execute([&topic.name])?;
    // The segment rows stay (dead) until the janitor has deleted the objects
    // and forgets them: readers may still be mid-GET.
    Ok(mark_dead_if_unused(
        tx,
        keys.iter().map(String::as_str),
        now_ms(),
    )?)
}

#[async_trait]
impl TopicStore for SqliteStore {
    async fn create_topic(
        &self,
        name: &str,
        partitions: i32,
        configs: BTreeMap<String, String>,
    ) -> Result<TopicMeta> {
        if partitions < 1 {
            return Err(MetaError::InvalidPartitions {
                requested: partitions,
                current: 0,
            });
        }
        let name = name.to_owned();
        self.write("create_topic", move |tx| {
            let id = Uuid::new_v4();
            let inserted = tx
                .prepare_cached(
                    "INSERT INTO topics (id, name, partitions) VALUES (?1, ?2, ?3) \
                     ON CONFLICT (name) DO NOTHING",
                )?
                .execute(params![id.as_bytes(), name, partitions])?;
            if inserted == 0 {
                return Err(MetaError::TopicExists(name).into());
            }
            insert_partitions(tx, id, 0, partitions)?;
            let mut stmt = tx.prepare_cached(
                "INSERT INTO topic_configs (topic_id, key, value) VALUES (?1, ?2, ?3)",
            )?;
            for (k, v) in &configs {
                stmt.execute(params![id.as_bytes(), k, v])?;
            }
            Ok(TopicMeta {
                id,
                name,
                partitions,
                configs,
            })
        })
        .await
    }

    async fn delete_topic(&self, name: &str) -> Result<Vec<String>> {
        let name = name.to_owned();
        self.write("delete_topic", move |tx| delete_topic_tx(tx, &name))
            .await
    }

    async fn get_topic(&self, name: &str) -> Result<Option<TopicMeta>> {
        let name = name.to_owned();
        self.read("get_topic", move |tx| Ok(topic_by_name(tx, &name)?))
            .await
    }

    async fn get_topic_by_id(&self, id: Uuid) -> Result<Option<TopicMeta>> {
        self.read("get_topic_by_id", move |tx| Ok(topic_by_id(tx, id)?))
            .await
    }

    async fn list_topics(&self) -> Result<Vec<TopicMeta>> {
        self.read("list_topics", |tx| {
            let mut configs: HashMap<Uuid, BTreeMap<String, String>> = HashMap::new();
            let mut stmt = tx.prepare_cached("SELECT topic_id, key, value FROM topic_configs")?;
            let rows = stmt.query_map([], |r| {
                Ok((topic_id_from_row(r, 0)?, r.get::<_, String>(1)?, r.get(2)?))
            })?;
            for row in rows {
                let (id, k, v) = row?;
                configs.entry(id).or_default().insert(k, v);
            }
            let mut stmt =
                tx.prepare_cached("SELECT id, name, partitions FROM topics ORDER BY name")?;
            let topics = stmt
                .query_map([], |r| {
                    let id = topic_id_from_row(r, 0)?;
                    Ok(TopicMeta {
                        id,
                        name: r.get(1)?,
                        partitions: r.get(2)?,
                        configs: configs.remove(&id).unwrap_or_default(),
                    })
                })?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            Ok(topics)
        })
        .await
    }

    async fn create_partitions(&self, name: &str, total: i32) -> Result<TopicMeta> {
        let name = name.to_owned();
        self.write("create_partitions", move |tx| {
            let mut topic = require_topic(tx, &name)?;
            if total <= topic.partitions {
                return Err(MetaError::InvalidPartitions {
                    requested: total,
                    current: topic.partitions,
                }
                .into());
            }
            insert_partitions(tx, topic.id, topic.partitions, total)?;
            tx.prepare_cached("UPDATE topics SET partitions = ?2 WHERE id = ?1")?
                .execute(params![topic.id.as_bytes(), total])?;
            topic.partitions = total;
            Ok(topic)
        })
        .await
    }

    async fn alter_topic_configs(
        &self,
        name: &str,
        changes: BTreeMap<String, Option<String>>,
    ) -> Result<TopicMeta> {
        let name = name.to_owned();
        self.write("alter_topic_configs", move |tx| {
            let mut topic = require_topic(tx, &name)?;
            let id = topic.id.as_bytes();
            for (k, v) in &changes {
                match v {
                    Some(v) => {
                        tx.prepare_cached(
                            "INSERT INTO topic_configs (topic_id, key, value) VALUES (?1, ?2, ?3) \
                             ON CONFLICT (topic_id, key) DO UPDATE SET value = excluded.value",
                        )?
                        .execute(params![id, k, v])?;
                    }
                    None => {
                        tx.prepare_cached(
                            "DELETE FROM topic_configs WHERE topic_id = ?1 AND key = ?2",
                        )?
                        .execute(params![id, k])?;
                    }
                }
            }
            topic.configs = load_configs(tx, topic.id)?;
            Ok(topic)
        })
        .await
    }
}
