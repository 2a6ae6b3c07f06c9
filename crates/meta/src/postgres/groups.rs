//! [`GroupStore`] for [`PostgresStore`]: coordinator claims (fenced by
//! [`crate::rules::groups`]), saved membership and committed offsets.

use async_trait::async_trait;

use super::conn::PostgresStore;
use super::error::Fail;
use super::sql::{begin_write, execute, query};
use crate::rules::groups::fenced;
use crate::{CommittedOffset, GroupClaim, GroupStore, Result};

#[async_trait]
impl GroupStore for PostgresStore {
    async fn claim_group(&self, group: &str, node_id: i32) -> Result<GroupClaim> {
        self.run("claim_group", move || async move {
            let client = self.client().await?;
            let row = client
                .query_one(
                    "INSERT INTO group_coordinators (group_id, node_id, epoch, last_active_ms) \
                     VALUES ($1, $2, (SELECT floor FROM group_epoch_floor) + 1, \
                     (extract(epoch FROM clock_timestamp()) * 1000)::bigint) \
                     ON CONFLICT (group_id) DO UPDATE SET node_id = excluded.node_id, \
                     epoch = group_coordinators.epoch + 1, \
                     last_active_ms = excluded.last_active_ms RETURNING epoch",
                    &[&group, &node_id],
                )
                .await?;
            Ok(GroupClaim {
                node_id,
                epoch: row.try_get(0)?,
            })
        })
        .await
    }

    async fn save_group(&self, group: &str, claim: GroupClaim, state: &[u8]) -> Result<()> {
        self.run("save_group", move || async move {
            let client = self.client().await?;
            let saved = execute(
                &client,
                "UPDATE group_coordinators SET state = $4, \
                 last_active_ms = GREATEST(last_active_ms, \
                 (extract(epoch FROM clock_timestamp()) * 1000)::bigint) \
                 WHERE group_id = $1 AND node_id = $2 AND epoch = $3",
                &[&group, &claim.node_id, &claim.epoch, &state],
            )
            .await?;
            if saved != 1 {
                return Err(fenced(group, claim).into());
            }
            Ok(())
        })
        .await
    }

    async fn load_group(&self, group: &str) -> Result<Option<Vec<u8>>> {
        self.run("load_group", move || async move {
            let client = self.client().await?;
            let row = client
                .query_opt(
                    "SELECT state FROM group_coordinators WHERE group_id = $1",
                    &[&group],
                )
                .await?;
            Ok(match row {
                Some(row) => row.try_get::<_, Option<Vec<u8>>>(0)?,
                None => None,
            })
        })
        .await
    }

    async fn touch_groups(&self, groups: &[String], now_ms: i64) -> Result<()> {
        if groups.is_empty() {
            return Ok(());
        }
        self.run("touch_groups", move || async move {
            let client = self.client().await?;
            execute(
                &client,
                "UPDATE group_coordinators SET last_active_ms = GREATEST(last_active_ms, $2) \
                 WHERE group_id = ANY($1)",
                &[&groups, &now_ms],
            )
            .await?;
            Ok(())
        })
        .await
    }

    async fn commit_offsets(
        &self,
        group: &str,
        claim: Option<GroupClaim>,
        offsets: &[CommittedOffset],
    ) -> Result<()> {
        if offsets.is_empty() && claim.is_none() {
            return Ok(());
        }
        self.run("commit_offsets", move || async move {
            let mut client = self.client().await?;
            let tx = begin_write(&mut client).await?;
            if let Some(claim) = claim {
                // Touching the claim row locks it until this transaction
                // ends, so a newer claim waits for this commit and every
                // commit after that claim sees it.
                let held = tx
                    .execute(
                        "UPDATE group_coordinators SET epoch = epoch \
                         WHERE group_id = $1 AND node_id = $2 AND epoch = $3",
                        &[&group, &claim.node_id, &claim.epoch],
                    )
                    .await?;
                if held != 1 {
                    return Err(fenced(group, claim).into());
                }
            }
            let stmt = tx
                .prepare_cached(
                    "INSERT INTO group_offsets (group_id, topic, partition_index, \
                     committed_offset, leader_epoch, metadata, commit_timestamp_ms) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7) \
                     ON CONFLICT (group_id, topic, partition_index) DO UPDATE SET \
                     committed_offset = excluded.committed_offset, \
                     leader_epoch = excluded.leader_epoch, metadata = excluded.metadata, \
                     commit_timestamp_ms = excluded.commit_timestamp_ms",
                )
                .await?;
            // Pipelined; the server runs them in order, so the last of
            // several offsets for one partition wins.
            let stmt = &stmt;
            let tx_ref = &tx;
            let upserts = offsets.iter().map(|o| async move {
                tx_ref
                    .execute(
                        stmt,
                        &[
                            &group,
                            &o.topic,
                            &o.partition,
                            &o.offset,
                            &o.leader_epoch,
                            &o.metadata,
                            &o.commit_timestamp_ms,
                        ],
                    )
                    .await?;
                Ok::<_, Fail>(())
            });
            futures::future::try_join_all(upserts).await?;
            tx.commit().await?;
            Ok(())
        })
        .await
    }

    async fn fetch_offsets(
        &self,
        group: &str,
        topics: Option<&[String]>,
    ) -> Result<Vec<CommittedOffset>> {
        const COLUMNS: &str = "SELECT topic, partition_index, committed_offset, \
                               leader_epoch, metadata, commit_timestamp_ms FROM group_offsets";
        if topics.is_some_and(<[String]>::is_empty) {
            return Ok(Vec::new());
        }
        let topics = topics.map(<[String]>::to_vec);
        let topics = &topics;
        self.run("fetch_offsets", move || async move {
            let client = self.client().await?;
            let rows = match topics {
                None => {
                    query(
                        &client,
                        &format!("{COLUMNS} WHERE group_id = $1 ORDER BY topic, partition_index"),
                        &[&group],
                    )
                    .await?
                }
                Some(topics) => {
                    query(
                        &client,
                        &format!(
                            "{COLUMNS} WHERE group_id = $1 AND topic = ANY($2) \
                             ORDER BY topic, partition_index"
                        ),
                        &[&group, topics],
                    )
                    .await?
                }
            };
            rows.iter()
                .map(|r| {
                    Ok(CommittedOffset {
                        topic: r.try_get(0)?,
                        partition: r.try_get(1)?,
                        offset: r.try_get(2)?,
                        leader_epoch: r.try_get(3)?,
                        metadata: r.try_get(4)?,
                        commit_timestamp_ms: r.try_get(5)?,
                    })
                })
                .collect()
        })
        .await
    }

    async fn list_groups(&self) -> Result<Vec<String>> {
        self.text_column(
            "list_groups",
            "SELECT DISTINCT group_id FROM group_offsets ORDER BY group_id",
        )
        .await
    }

    async fn delete_group(&self, group: &str) -> Result<()> {
        self.run("delete_group", move || async move {
            let client = self.client().await?;
            execute(
                &client,
                "DELETE FROM group_offsets WHERE group_id = $1",
                &[&group],
            )
            .await?;
            execute(
                &client,
                "UPDATE group_coordinators SET state = NULL WHERE group_id = $1",
                &[&group],
            )
            .await?;
            Ok(())
        })
        .await
    }

    async fn delete_offsets(&self, group: &str, partitions: &[(String, i32)]) -> Result<()> {
        if partitions.is_empty() {
            return Ok(());
        }
        let (topics, indexes): (Vec<String>, Vec<i32>) = partitions.iter().cloned().unzip();
        let (topics, indexes) = (&topics, &indexes);
        self.run("delete_offsets", move || async move {
            let client = self.client().await?;
            execute(
                &client,
                "DELETE FROM group_offsets WHERE group_id = $1 AND (topic, partition_index) IN \
                 (SELECT k.t, k.i FROM unnest($2::TEXT[], $3::INTEGER[]) AS k (t, i))",
                &[&group, topics, indexes],
            )
            .await?;
            Ok(())
        })
        .await
    }
}
