//! [`TopicStore`] for [`PostgresStore`]: topics, partitions and their configs.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use async_trait::async_trait;
use deadpool_postgres::Transaction;
use uuid::Uuid;

use super::conn::PostgresStore;
use super::error::{Fail, Step};
use super::rows::{load_configs, load_topic, mark_dead_if_unused, topic_by_id, topic_by_name};
use super::sql::{begin_read, begin_write, execute, now_ms, query};
use crate::{MetaError, Result, TopicMeta, TopicStore};

/// The topic, its row locked until the transaction ends, or
/// [`MetaError::UnknownTopic`].
async fn lock_topic(tx: &Transaction<'_>, name: &str) -> Step<TopicMeta> {
    load_topic(
        tx,
        "SELECT id, name, partitions FROM topics WHERE name = $1 FOR UPDATE",
        &name,
    )
    .await?
    .ok_or_else(|| MetaError::UnknownTopic(name.to_owned()).into())
}

async fn insert_partitions(tx: &Transaction<'_>, id: Uuid, from: i32, to: i32) -> Step<()> {
    let stmt = tx
        .prepare_cached(
            "INSERT INTO partitions (topic_id, partition_index, log_start_offset, next_offset, \
             max_timestamp) VALUES ($1, $2, 0, 0, $3)",
        )
        .await?;
    let stmt = &stmt;
    let inserts = (from..to).map(|p| async move {
        tx.execute(stmt, &[&id, &p, &i64::MIN]).await?;
        Ok::<_, Fail>(())
    });
    futures::future::try_join_all(inserts).await?;
    Ok(())
}

async fn delete_topic_tx(tx: &Transaction<'_>, name: &str) -> Step<Vec<String>> {
    let topic = lock_topic(tx, name).await?;
    let id = topic.id;
    // Same lock order as commits: partition rows sorted.
    query(
        tx,
        "SELECT partition_index FROM partitions WHERE topic_id = $1 \
         ORDER BY partition_index FOR UPDATE",
        &[&id],
    )
    .await?;
    let keys = query(
        tx,
        "SELECT DISTINCT segment_key FROM index_entries WHERE topic_id = $1",
        &[&id],
    )
    .await?
    .iter()
    .map(|r| r.try_get::<_, String>(0))
    .collect::<std::result::Result<BTreeSet<_>, _>>()?;
    for sql in [
        "DELETE FROM producer_batches WHERE topic_id = $1",
        "DELETE FROM producer_state WHERE topic_id = $1",
        "DELETE FROM index_entries WHERE topic_id = $1",
        "DELETE FROM partitions WHERE topic_id = $1",
        "DELETE FROM topic_configs WHERE topic_id = $1",
        "DELETE FROM topics WHERE id = $1",
    ] {
        execute(tx, sql, &[&id]).await?;
    }
    // As Kafka does, committed offsets of the deleted partitions go too, in
    // the same transaction, so a re-created topic never inherits them.
    execute(tx, "DELETE FROM group_offsets WHERE topic = $1", &[&name]).await?;
    // The segment rows stay (dead) until the janitor has deleted the objects
    // and forgets them: readers may still be mid-GET.
    mark_dead_if_unused(tx, keys.iter().map(String::as_str), now_ms()).await
}

#[async_trait]
impl TopicStore for PostgresStore {
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
        let configs = &configs;
        self.run("create_topic", move || async move {
            let mut client = self.client().await?;
            let tx = begin_write(&mut client).await?;
            let id = Uuid::new_v4();
            let inserted = execute(
                &tx,
                "INSERT INTO topics (id, name, partitions) VALUES ($1, $2, $3) \
                 ON CONFLICT (name) DO NOTHING",
                &[&id, &name, &partitions],
            )
            .await?;
            if inserted == 0 {
                return Err(MetaError::TopicExists(name.to_owned()).into());
            }
            insert_partitions(&tx, id, 0, partitions).await?;
            for (k, v) in configs {
                execute(
                    &tx,
                    "INSERT INTO topic_configs (topic_id, key, value) VALUES ($1, $2, $3)",
                    &[&id, k, v],
                )
                .await?;
            }
            tx.commit().await?;
            Ok(TopicMeta {
                id,
                name: name.to_owned(),
                partitions,
                configs: configs.clone(),
            })
        })
        .await
    }

    async fn delete_topic(&self, name: &str) -> Result<Vec<String>> {
        self.run("delete_topic", move || async move {
            let mut client = self.client().await?;
            let tx = begin_write(&mut client).await?;
            let dead = delete_topic_tx(&tx, name).await?;
            tx.commit().await?;
            Ok(dead)
        })
        .await
    }

    async fn get_topic(&self, name: &str) -> Result<Option<TopicMeta>> {
        self.run("get_topic", move || async move {
            let mut client = self.client().await?;
            let tx = begin_read(&mut client).await?;
            let topic = topic_by_name(&tx, name).await?;
            tx.commit().await?;
            Ok(topic)
        })
        .await
    }

    async fn get_topic_by_id(&self, id: Uuid) -> Result<Option<TopicMeta>> {
        self.run("get_topic_by_id", move || async move {
            let mut client = self.client().await?;
            let tx = begin_read(&mut client).await?;
            let topic = topic_by_id(&tx, id).await?;
            tx.commit().await?;
            Ok(topic)
        })
        .await
    }

    async fn list_topics(&self) -> Result<Vec<TopicMeta>> {
        self.run("list_topics", move || async move {
            let mut client = self.client().await?;
            let tx = begin_read(&mut client).await?;
            let mut configs: HashMap<Uuid, BTreeMap<String, String>> = HashMap::new();
            for r in query(&tx, "SELECT topic_id, key, value FROM topic_configs", &[]).await? {
                configs
                    .entry(r.try_get(0)?)
                    .or_default()
                    .insert(r.try_get(1)?, r.try_get(2)?);
            }
            let rows = query(
                &tx,
                "SELECT id, name, partitions FROM topics ORDER BY name",
                &[],
            )
            .await?;
            tx.commit().await?;
            rows.iter()
                .map(|r| {
                    let id: Uuid = r.try_get(0)?;
                    Ok(TopicMeta {
                        id,
                        name: r.try_get(1)?,
                        partitions: r.try_get(2)?,
                        configs: configs.remove(&id).unwrap_or_default(),
                    })
                })
                .collect()
        })
        .await
    }

    async fn create_partitions(&self, name: &str, total: i32) -> Result<TopicMeta> {
        self.run("create_partitions", move || async move {
            let mut client = self.client().await?;
            let tx = begin_write(&mut client).await?;
            let mut topic = lock_topic(&tx, name).await?;
            if total <= topic.partitions {
                return Err(MetaError::InvalidPartitions {
                    requested: total,
                    current: topic.partitions,
                }
                .into());
            }
            insert_partitions(&tx, topic.id, topic.partitions, total).await?;
            execute(
                &tx,
                "UPDATE topics SET partitions = $2 WHERE id = $1",
                &[&topic.id, &total],
            )
            .await?;
            tx.commit().await?;
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
        let changes = &changes;
        self.run("alter_topic_configs", move || async move {
            let mut client = self.client().await?;
            let tx = begin_write(&mut client).await?;
            let mut topic = lock_topic(&tx, name).await?;
            for (k, v) in changes {
                match v {
                    Some(v) => {
                        execute(
                            &tx,
                            "INSERT INTO topic_configs (topic_id, key, value) VALUES ($1, $2, $3) \
                             ON CONFLICT (topic_id, key) DO UPDATE SET value = excluded.value",
                            &[&topic.id, k, v],
                        )
                        .await?;
                    }
                    None => {
                        execute(
                            &tx,
                            "DELETE FROM topic_configs WHERE topic_id = $1 AND key = $2",
                            &[&topic.id, k],
                        )
                        .await?;
                    }
                }
            }
            topic.configs = load_configs(&tx, topic.id).await?;
            tx.commit().await?;
            Ok(topic)
        })
        .await
    }
}
