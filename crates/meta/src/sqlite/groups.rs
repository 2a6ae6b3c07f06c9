//! [`GroupStore`] for [`SqliteStore`]: coordinator claims (fenced by
//! [`crate::rules::groups`]), saved membership and committed offsets.

use async_trait::async_trait;
use rusqlite::{params, OptionalExtension};

use super::conn::SqliteStore;
use super::rows::now_ms;
use crate::rules::groups::{check_claim, fenced};
use crate::{CommittedOffset, GroupClaim, GroupStore, Result};

#[async_trait]
impl GroupStore for SqliteStore {
    async fn claim_group(&self, group: &str, node_id: i32) -> Result<GroupClaim> {
        let group = group.to_owned();
        self.write("claim_group", move |tx| {
            let epoch: i64 = tx.query_row(
                "INSERT INTO group_coordinators (group_id, node_id, epoch, last_active_ms) \
                 VALUES (?1, ?2, (SELECT floor FROM group_epoch_floor) + 1, ?3) \
                 ON CONFLICT (group_id) DO UPDATE SET node_id = excluded.node_id, \
                 epoch = group_coordinators.epoch + 1, last_active_ms = excluded.last_active_ms \
                 RETURNING epoch",
                params![group, node_id, now_ms()],
                |r| r.get(0),
            )?;
            Ok(GroupClaim { node_id, epoch })
        })
        .await
    }

    async fn save_group(&self, group: &str, claim: GroupClaim, state: &[u8]) -> Result<()> {
        let group = group.to_owned();
        let state = state.to_vec();
        self.write("save_group", move |tx| {
            let saved = tx.execute(
                "UPDATE group_coordinators SET state = ?4, \
                 last_active_ms = MAX(last_active_ms, ?5) \
                 WHERE group_id = ?1 AND node_id = ?2 AND epoch = ?3",
                params![group, claim.node_id, claim.epoch, state, now_ms()],
            )?;
            if saved != 1 {
                return Err(fenced(&group, claim).into());
            }
            Ok(())
        })
        .await
    }

    async fn load_group(&self, group: &str) -> Result<Option<Vec<u8>>> {
        let group = group.to_owned();
        self.read("load_group", move |tx| {
            Ok(tx
                .prepare_cached("SELECT state FROM group_coordinators WHERE group_id = ?1")?
                .query_row([&group], |r| r.get::<_, Option<Vec<u8>>>(0))
                .optional()?
                .flatten())
        })
        .await
    }

    async fn touch_groups(&self, groups: &[String], now_ms: i64) -> Result<()> {
        if groups.is_empty() {
            return Ok(());
        }
        let groups = groups.to_vec();
        self.write("touch_groups", move |tx| {
            let mut stmt = tx.prepare_cached(
                "UPDATE group_coordinators SET last_active_ms = MAX(last_active_ms, ?2) \
                 WHERE group_id = ?1",
            )?;
            for g in &groups {
                stmt.execute(params![g, now_ms])?;
            }
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
        let group = group.to_owned();
        let offsets = offsets.to_vec();
        self.write("commit_offsets", move |tx| {
            if let Some(claim) = claim {
                let current: Option<(i32, i64)> = tx
                    .query_row(
                        "SELECT node_id, epoch FROM group_coordinators WHERE group_id = ?1",
                        params![group],
                        |r| Ok((r.get(0)?, r.get(1)?)),
                    )
                    .optional()?;
                check_claim(&group, claim, current)?;
            }
            let mut stmt = tx.prepare_cached(
                "INSERT INTO group_offsets (group_id, topic, partition_index, committed_offset, \
                 leader_epoch, metadata, commit_timestamp_ms) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7) \
                 ON CONFLICT (group_id, topic, partition_index) DO UPDATE SET \
                 committed_offset = excluded.committed_offset, \
                 leader_epoch = excluded.leader_epoch, metadata = excluded.metadata, \
                 commit_timestamp_ms = excluded.commit_timestamp_ms",
            )?;
            for o in &offsets {
                stmt.execute(params![
                    group,
                    o.topic,
                    o.partition,
                    o.offset,
                    o.leader_epoch,
                    o.metadata,
                    o.commit_timestamp_ms
                ])?;
            }
            Ok(())
        })
        .await
    }

    async fn fetch_offsets(
        &self,
        group: &str,
        topics: Option<&[String]>,
    ) -> Result<Vec<CommittedOffset>> {
        let group = group.to_owned();
        let topics = topics.map(|t| {
            let mut t = t.to_vec();
            t.sort();
            t.dedup();
            t
        });
        self.read("fetch_offsets", move |tx| {
            let row = |r: &rusqlite::Row<'_>| {
                Ok(CommittedOffset {
                    topic: r.get(0)?,
                    partition: r.get(1)?,
                    offset: r.get(2)?,
                    leader_epoch: r.get(3)?,
                    metadata: r.get(4)?,
                    commit_timestamp_ms: r.get(5)?,
                })
            };
            const COLUMNS: &str = "SELECT topic, partition_index, committed_offset, \
                                   leader_epoch, metadata, commit_timestamp_ms FROM group_offsets";
            let mut out = Vec::new();
            match topics {
                None => {
                    let mut stmt = tx.prepare_cached(&format!(
                        "{COLUMNS} WHERE group_id = ?1 ORDER BY topic, partition_index"
                    ))?;
                    for o in stmt.query_map([&group], row)? {
                        out.push(o?);
                    }
                }
                Some(topics) => {
                    let mut stmt = tx.prepare_cached(&format!(
                        "{COLUMNS} WHERE group_id = ?1 AND topic = ?2 ORDER BY partition_index"
                    ))?;
                    for topic in &topics {
                        for o in stmt.query_map(params![group, topic], row)? {
                            out.push(o?);
                        }
                    }
                }
            }
            Ok(out)
        })
        .await
    }

    async fn list_groups(&self) -> Result<Vec<String>> {
        self.read("list_groups", |tx| {
            Ok(tx
                .prepare_cached("SELECT DISTINCT group_id FROM group_offsets ORDER BY group_id")?
                .query_map([], |r| r.get(0))?
                .collect::<rusqlite::Result<Vec<_>>>()?)
        })
        .await
    }

    async fn delete_group(&self, group: &str) -> Result<()> {
        let group = group.to_owned();
        self.write("delete_group", move |tx| {
            tx.prepare_cached("DELETE FROM group_offsets WHERE group_id = ?1")?
                .execute([&group])?;
            tx.prepare_cached("UPDATE group_coordinators SET state = NULL WHERE group_id = ?1")?
                .execute([&group])?;
            Ok(())
        })
        .await
    }

    async fn delete_offsets(&self, group: &str, partitions: &[(String, i32)]) -> Result<()> {
        let group = group.to_owned();
        let partitions = partitions.to_vec();
        self.write("delete_offsets", move |tx| {
            let mut stmt = tx.prepare_cached(
                "DELETE FROM group_offsets \
                 WHERE group_id = ?1 AND topic = ?2 AND partition_index = ?3",
            )?;
            for (topic, partition) in &partitions {
                stmt.execute(params![group, topic, partition])?;
            }
            Ok(())
        })
        .await
    }
}
