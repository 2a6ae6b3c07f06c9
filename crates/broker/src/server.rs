//! The accept loop: a connection limit, one task per connection, and a drain
//! on shutdown (stop accepting, let connections answer what they have read,
//! then flush the segment writer).

use std::future::Future;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

use crate::{connection, Broker};

/// Serve Kafka clients on `listener` until `shutdown` completes.
pub async fn run(listener: TcpListener, broker: Arc<Broker>, shutdown: impl Future<Output = ()>) {
    let cancel = CancellationToken::new();
    let tracker = TaskTracker::new();
    let limit = Arc::new(Semaphore::new(broker.config.max_connections.max(1)));
    tokio::pin!(shutdown);
    loop {
        let permit = tokio::select! {
            p = limit.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => break,
            },
            _ = &mut shutdown => break,
        };
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = &mut shutdown => break,
        };
        match accepted {
            Ok((stream, peer)) => {
                let broker = broker.clone();
                let cancel = cancel.clone();
                tracker.spawn(async move {
                    metrics::gauge!("tributary_connections").increment(1.0);
                    connection::serve(stream, peer, broker, cancel).await;
                    metrics::gauge!("tributary_connections").decrement(1.0);
                    drop(permit);
                });
            }
            Err(e) => {
                warn!(error = %e, "accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
        }
    }
    info!("shutting down: draining connections");
    cancel.cancel();
    tracker.close();
    tracker.wait().await;
    broker.writer.shutdown().await;
    broker.groups.shutdown();
    info!("shutdown complete");
}
