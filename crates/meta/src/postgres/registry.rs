//! [`BrokerRegistry`] for [`PostgresStore`]: the `brokers` table (schema v2).
//!
//! A heartbeat claims or refreshes its node id with one `INSERT ... ON
//! CONFLICT (node_id) DO UPDATE ... WHERE` whose `WHERE` only lets the update
//! through for the same host:port or an expired holder. Postgres decides
//! such an upsert atomically against concurrent ones: when two brokers race
//! for a free id, the second waits for the first to commit and then
//! evaluates the `WHERE` against the committed row, so exactly one of them
//! gets the id. A refused upsert still locks the existing row, so the
//! follow-up read that names the holder in the error sees it unchanged.

use async_trait::async_trait;

use super::conn::PostgresStore;
use super::error::Step;
use super::listen::spawn_commit_feed;
use super::sql::{begin_write, execute, query, query_one, query_opt, SQL_NOW_MS};
use crate::rules::registry::{
    decode_listeners, encode_listeners, id_contended, id_in_use, live_cutoff,
};
use crate::{BrokerInfo, BrokerRegistry, CommitFeed, Result};

/// How often a refused heartbeat looks for the holder before giving up
/// (the holder can only vanish on databases that do not lock the row of a
/// refused upsert, and then only through a concurrent deregister).
const CLAIM_ATTEMPTS: usize = 3;

#[async_trait]
impl BrokerRegistry for PostgresStore {
    async fn clock_ms(&self) -> Result<i64> {
        self.run("clock_ms", move || async move {
            let client = self.client().await?;
            let row = query_one(&client, SQL_NOW_MS, &[]).await?;
            Ok(row.try_get::<_, i64>(0)?)
        })
        .await
    }

    async fn heartbeat_broker(&self, info: &BrokerInfo, now_ms: i64, ttl_ms: i64) -> Result<()> {
        let cutoff = live_cutoff(now_ms, ttl_ms);
        let listeners = encode_listeners(&info.listeners);
        let listeners = &listeners;
        self.run("heartbeat_broker", move || async move {
            let mut client = self.client().await?;
            let tx = begin_write(&mut client).await?;
            for _ in 0..CLAIM_ATTEMPTS {
                let claimed = query_opt(
                    &tx,
                    "INSERT INTO brokers (node_id, host, port, rack, last_seen_ms, listeners) \
                     VALUES ($1, $2, $3, $4, $5, $7) \
                     ON CONFLICT (node_id) DO UPDATE SET host = EXCLUDED.host, \
                         port = EXCLUDED.port, rack = EXCLUDED.rack, \
                         last_seen_ms = EXCLUDED.last_seen_ms, listeners = EXCLUDED.listeners \
                     WHERE (brokers.host = EXCLUDED.host AND brokers.port = EXCLUDED.port) \
                        OR brokers.last_seen_ms < $6 \
                     RETURNING node_id",
                    &[
                        &info.node_id,
                        &info.host,
                        &info.port,
                        &info.rack,
                        &now_ms,
                        &cutoff,
                        &listeners,
                    ],
                )
                .await?;
                if claimed.is_some() {
                    tx.commit().await?;
                    return Ok(());
                }
                let holder = query_opt(
                    &tx,
                    "SELECT host, port FROM brokers WHERE node_id = $1",
                    &[&info.node_id],
                )
                .await?;
                if let Some(row) = holder {
                    let host: String = row.try_get(0)?;
                    let port: i32 = row.try_get(1)?;
                    // Dropping `tx` rolls back; nothing was written.
                    return Err(id_in_use(info.node_id, &host, port).into());
                }
            }
            Err::<(), _>(id_contended(info.node_id).into())
        })
        .await
    }

    async fn live_brokers(&self, now_ms: i64, ttl_ms: i64) -> Result<Vec<BrokerInfo>> {
        let cutoff = live_cutoff(now_ms, ttl_ms);
        self.run("live_brokers", move || async move {
            let client = self.client().await?;
            query(
                &client,
                "SELECT node_id, host, port, rack, listeners FROM brokers \
                 WHERE last_seen_ms >= $1 ORDER BY node_id",
                &[&cutoff],
            )
            .await?
            .iter()
            .map(|r| -> Step<BrokerInfo> {
                Ok(BrokerInfo {
                    node_id: r.try_get(0)?,
                    host: r.try_get(1)?,
                    port: r.try_get(2)?,
                    rack: r.try_get(3)?,
                    listeners: decode_listeners(r.try_get(4)?),
                })
            })
            .collect()
        })
        .await
    }

    async fn deregister_broker(&self, node_id: i32) -> Result<()> {
        self.run("deregister_broker", move || async move {
            let client = self.client().await?;
            execute(
                &client,
                "DELETE FROM brokers WHERE node_id = $1",
                &[&node_id],
            )
            .await?;
            Ok(())
        })
        .await
    }

    fn commit_feed(&self) -> Option<CommitFeed> {
        self.notify.then(|| {
            spawn_commit_feed(
                self.listen_config.clone(),
                self.tls.clone(),
                self.instance.clone(),
            )
        })
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use tributary_testkit::PgServer;

    use super::*;
    use crate::MetaError;

    fn broker(node_id: i32, port: i32) -> BrokerInfo {
        BrokerInfo {
            node_id,
            host: "10.0.0.1".into(),
            port,
            rack: None,
            listeners: Vec::new(),
        }
    }

    /// Race `racers` heartbeats (each its own address, spread over two
    /// stores) for `node_id` at `now_ms`; returns the ports that won.
    async fn race(
        stores: &[Arc<PostgresStore>],
        node_id: i32,
        first_port: i32,
        now_ms: i64,
    ) -> Vec<i32> {
        const RACERS: i32 = 8;
        let mut tasks = Vec::new();
        for i in 0..RACERS {
            let store = Arc::clone(&stores[usize::try_from(i).expect("small") % stores.len()]);
            let info = broker(node_id, first_port + i);
            tasks.push(tokio::spawn(async move {
                let res = store.heartbeat_broker(&info, now_ms, 1_000).await;
                (info.port, res)
            }));
        }
        let mut won = Vec::new();
        for task in tasks {
            let (port, res) = task.await.expect("join");
            match res {
                Ok(()) => won.push(port),
                Err(MetaError::InvalidArgument(msg)) => assert!(
                    msg.contains(&format!(
                        "broker id {node_id} is already used by live broker 10.0.0.1:"
                    )),
                    "unexpected refusal: {msg}"
                ),
                Err(e) => panic!("heartbeat port={port} failed: {e}"),
            }
        }
        won
    }

    /// Brokers on two stores racing for one node id: exactly one gets it,
    /// both when the id is free and when its holder has expired.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn racing_brokers_get_one_id_once() {
        let server = PgServer::start()
            .unwrap_or_else(|e| panic!("cannot start PostgreSQL for the test: {e:#}"));
        let url = format!("{}?schema=registry_race", server.url());
        let mut stores = Vec::new();
        for _ in 0..2 {
            stores.push(Arc::new(
                PostgresStore::connect(&url)
                    .await
                    .unwrap_or_else(|e| panic!("connect {url}: {e}")),
            ));
        }

        let won = race(&stores, 7, 9000, 10_000).await;
        assert_eq!(won.len(), 1, "exactly one racer claims a free id: {won:?}");
        let live = stores[1].live_brokers(10_000, 1_000).await.expect("live");
        assert_eq!(live, vec![broker(7, won[0])]);

        // The holder expires; a new crowd races for the id.
        let won = race(&stores, 7, 9100, 20_000).await;
        assert_eq!(
            won.len(),
            1,
            "exactly one racer takes over an expired id: {won:?}"
        );
        let live = stores[0].live_brokers(20_000, 1_000).await.expect("live");
        assert_eq!(live, vec![broker(7, won[0])]);
    }
}
