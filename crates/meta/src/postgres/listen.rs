//! Commit notifications between brokers over PostgreSQL `LISTEN`/`NOTIFY`.
//!
//! Every segment commit sends `pg_notify(COMMIT_CHANNEL, <store instance>)`
//! inside its transaction, so the notification goes out exactly when the
//! commit becomes visible (and never for a rolled-back one). Each store's
//! [`crate::BrokerRegistry::commit_feed`] runs one dedicated connection that
//! `LISTEN`s on the channel, skips its own store's notifications and bumps
//! a [`RemoteCommits`] watch; it reconnects with backoff when the connection
//! drops, and says so (`listening: false`) so callers fall back to polling.
//!
//! Databases that speak the PostgreSQL protocol without `NOTIFY` (CockroachDB,
//! some proxies) are detected at connect time by a probe; the store then
//! sends nothing and offers no feed, and brokers poll.

use std::time::Duration;

use async_trait::async_trait;
use futures::StreamExt;
use tokio::sync::watch;
use tokio_postgres::AsyncMessage;
use tokio_postgres_rustls::MakeRustlsConnect;
use tracing::{debug, info, warn};
use tributary_runtime::{Background, CancellationToken, Chain, Tick};

use crate::{CommitFeed, RemoteCommits};

/// The channel segment commits are announced on.
pub(super) const COMMIT_CHANNEL: &str = "tributary_commits";

/// Longest wait between reconnection attempts of the listener.
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// Start the listener task on a connection of its own (`config`, `tls`);
/// notifications from store `me` (this broker's) are skipped.
pub(super) fn spawn_commit_feed(
    config: tokio_postgres::Config,
    tls: MakeRustlsConnect,
    me: String,
) -> CommitFeed {
    let (tx, rx) = watch::channel(RemoteCommits::default());
    let listener = Listener {
        config,
        tls,
        me,
        tx,
        backoff: MIN_BACKOFF,
    };
    // Ends when the last receiver is dropped (the store is closed).
    drop(tributary_runtime::spawn(
        "commit-listener",
        listener,
        CancellationToken::new(),
    ));
    rx
}

/// Shortest wait before reconnecting.
const MIN_BACKOFF: Duration = Duration::from_millis(100);

/// The listening connection, reconnected with backoff while anyone reads
/// the feed.
struct Listener {
    config: tokio_postgres::Config,
    tls: MakeRustlsConnect,
    me: String,
    tx: watch::Sender<RemoteCommits>,
    backoff: Duration,
}

#[async_trait]
impl Background for Listener {
    type Event = ();

    /// One connection's life, then the wait before the next.
    async fn tick(&mut self) -> Tick {
        tokio::select! {
            () = self.tx.closed() => return Tick::Done,
            ended = listen_once(&self.config, self.tls.clone(), &self.me, &self.tx) => {
                self.tx.send_modify(|s| s.listening = false);
                match ended {
                    Ok(()) => self.backoff = MIN_BACKOFF,
                    Err(e) => warn!(error = %Chain(&e), "commit listener lost its connection; polling until it is back"),
                }
            }
        }
        let wait = self.backoff;
        self.backoff = (wait * 2).min(MAX_BACKOFF);
        Tick::In(wait)
    }

    /// Only the closing of the feed: nobody reads it any more.
    async fn event(&mut self) -> Option<()> {
        self.tx.closed().await;
        None
    }
}

/// One connection's life: connect, `LISTEN`, forward notifications until
/// the connection ends.
async fn listen_once(
    config: &tokio_postgres::Config,
    tls: MakeRustlsConnect,
    me: &str,
    tx: &watch::Sender<RemoteCommits>,
) -> Result<(), tokio_postgres::Error> {
    let (client, mut connection) = config.connect(tls).await?;
    // The connection must be driven for the LISTEN to complete, so its
    // messages go through a channel while the client talks.
    let (msg_tx, mut messages) = tokio::sync::mpsc::unbounded_channel();
    let driver = tokio::spawn(async move {
        let mut stream = futures::stream::poll_fn(move |cx| connection.poll_message(cx));
        while let Some(m) = stream.next().await {
            if msg_tx.send(m).is_err() {
                return Ok(());
            }
        }
        Ok::<(), tokio_postgres::Error>(())
    });
    client
        .batch_execute(&format!("LISTEN {COMMIT_CHANNEL}"))
        .await?;
    // Commits made while nobody listened are unknown: report one anyway so
    // parked fetches look again.
    tx.send_modify(|s| {
        s.listening = true;
        s.seen = s.seen.wrapping_add(1);
    });
    info!("listening for other brokers' commits (LISTEN {COMMIT_CHANNEL})");
    while let Some(m) = messages.recv().await {
        match m? {
            // Our own commits already woke this broker's fetches.
            AsyncMessage::Notification(n) if n.channel() == COMMIT_CHANNEL && n.payload() != me => {
                tx.send_modify(|s| s.seen = s.seen.wrapping_add(1));
            }
            AsyncMessage::Notice(n) => debug!(notice = %n.message(), "postgres notice"),
            _ => {}
        }
    }
    drop(client);
    match driver.await {
        Ok(r) => r,
        Err(e) => {
            warn!(error = %Chain(&e), "commit listener driver task failed");
            Ok(())
        }
    }
}
