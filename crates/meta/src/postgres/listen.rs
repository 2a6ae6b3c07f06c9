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

use futures::StreamExt;
use tokio::sync::watch;
use tokio_postgres::AsyncMessage;
use tokio_postgres_rustls::MakeRustlsConnect;
use tracing::{debug, info, warn};

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
    tokio::spawn(async move {
        let mut backoff = Duration::from_millis(100);
        loop {
            tokio::select! {
                () = tx.closed() => return,
                ended = listen_once(&config, tls.clone(), &me, &tx) => {
                    tx.send_modify(|s| s.listening = false);
                    match ended {
                        Ok(()) => backoff = Duration::from_millis(100),
                        Err(e) => warn!(error = %e, "commit listener lost its connection; polling until it is back"),
                    }
                }
            }
            tokio::select! {
                () = tx.closed() => return,
                () = tokio::time::sleep(backoff) => {}
            }
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    });
    rx
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
            warn!(error = %e, "commit listener driver task failed");
            Ok(())
        }
    }
}
