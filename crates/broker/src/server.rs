//! The accept loops, one per listener: connection limits (broker-wide and
//! per client address, over all listeners), the TLS handshake of `SSL` and
//! `SASL_SSL` listeners (bounded in time), one task per connection, and a
//! drain on shutdown: stop accepting, release
//! what is parked (group joins and syncs are answered NOT_COORDINATOR,
//! parked fetches answer with what they have), let connections answer what
//! they have read (a client that does not take its answers gets 3 s), then
//! flush the segment writer.
//!
//! The loop never stops accepting: a connection over a limit is accepted and
//! closed at once, so a refused client learns it at once instead of waiting
//! in the listen backlog, and the backlog never fills up.

use std::collections::HashMap;
use std::future::Future;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, PoisonError};
use tributary_runtime::Chain;

use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn};

use crate::context::{ConnectionInfo, ANONYMOUS};
use crate::listener::SecurityProtocol;
use crate::sasl::Session;
use crate::tls::{self, TlsContext};
use crate::{connection, Broker};

/// A bound listener, ready to accept.
#[derive(Debug)]
pub struct Bound {
    pub listener: TcpListener,
    pub protocol: SecurityProtocol,
    /// For `SSL` and `SASL_SSL` listeners.
    pub tls: Option<Arc<TlsContext>>,
}

/// Serve Kafka clients on every listener until `shutdown` completes.
pub async fn run(listeners: Vec<Bound>, broker: Arc<Broker>, shutdown: impl Future<Output = ()>) {
    let cancel = CancellationToken::new();
    let accepting = CancellationToken::new();
    let tracker = TaskTracker::new();
    let limits = Limits::new(
        broker.config.max_connections.max(1),
        broker.config.max_connections_per_ip.max(1),
    );
    let mut loops = Vec::new();
    for bound in listeners {
        loops.push(tokio::spawn(accept_loop(
            bound,
            broker.clone(),
            limits.clone(),
            tracker.clone(),
            cancel.clone(),
            accepting.clone(),
        )));
    }
    shutdown.await;
    accepting.cancel();
    for l in loops {
        let _ = l.await;
    }
    info!("shutting down: draining connections");
    broker.draining.cancel();
    broker.groups.shutdown();
    cancel.cancel();
    tracker.close();
    tracker.wait().await;
    broker.writer.shutdown().await;
    info!("shutdown complete");
}

/// Accept on one listener until `accepting` is cancelled.
async fn accept_loop(
    bound: Bound,
    broker: Arc<Broker>,
    limits: Arc<Limits>,
    tracker: TaskTracker,
    cancel: CancellationToken,
    accepting: CancellationToken,
) {
    let listener_name = bound.protocol.name();
    let sasl = bound.protocol.sasl();
    loop {
        let accepted = tokio::select! {
            a = bound.listener.accept() => a,
            () = accepting.cancelled() => return,
        };
        match accepted {
            Ok((stream, peer)) => {
                let Some(permit) = limits.admit(peer.ip()) else {
                    metrics::counter!("tributary_connections_refused_total").increment(1);
                    debug!(%peer, "connection limit reached; closing new connection");
                    drop(stream);
                    continue;
                };
                let broker = broker.clone();
                let cancel = cancel.clone();
                let tls = bound.tls.clone();
                tracker.spawn(async move {
                    metrics::gauge!("tributary_connections").increment(1.0);
                    let _ = stream.set_nodelay(true);
                    let conn = ConnectionInfo {
                        peer,
                        listener: listener_name,
                        session: Session::new(sasl, Arc::from(ANONYMOUS)),
                    };
                    match tls {
                        None => connection::serve(stream.into_split(), conn, broker, cancel).await,
                        Some(tls) => serve_tls(stream, conn, &tls, broker, cancel).await,
                    }
                    metrics::gauge!("tributary_connections").decrement(1.0);
                    drop(permit);
                });
            }
            Err(e) => {
                warn!(error = %Chain(&e), "accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
        }
    }
}

/// Complete the TLS handshake (within [`tls::HANDSHAKE_TIMEOUT`]), take the
/// principal from the client certificate, then serve the connection.
async fn serve_tls(
    stream: TcpStream,
    conn: ConnectionInfo,
    tls: &TlsContext,
    broker: Arc<Broker>,
    cancel: CancellationToken,
) {
    let peer = conn.peer;
    let handshake = tokio::time::timeout(tls::HANDSHAKE_TIMEOUT, tls.acceptor().accept(stream));
    let stream = tokio::select! {
        r = handshake => match r {
            Ok(Ok(stream)) => stream,
            Ok(Err(e)) => {
                metrics::counter!("tributary_tls_handshake_failures_total").increment(1);
                debug!(%peer, error = %e, "TLS handshake failed; closing connection");
                return;
            }
            Err(_) => {
                metrics::counter!("tributary_tls_handshake_failures_total").increment(1);
                debug!(%peer, "TLS handshake not done within {:?}; closing connection", tls::HANDSHAKE_TIMEOUT);
                return;
            }
        },
        () = cancel.cancelled() => return,
    };
    if let Some(principal) = tls::principal_of(stream.get_ref().1) {
        // A certificate names the client; SASL, when required, replaces it.
        conn.session
            .authenticated_by_certificate(Arc::from(principal));
    }
    connection::serve(tokio::io::split(stream), conn, broker, cancel).await;
}

/// Open connections, in all and per client address (entries of addresses
/// with no connection left are removed, so the map stays bounded).
struct Limits {
    max: usize,
    max_per_ip: usize,
    open: Mutex<(usize, HashMap<IpAddr, usize>)>,
}

/// One admitted connection; frees its place when dropped.
struct Permit {
    limits: Arc<Limits>,
    ip: IpAddr,
}

impl Limits {
    fn new(max: usize, max_per_ip: usize) -> Arc<Self> {
        Arc::new(Self {
            max,
            max_per_ip,
            open: Mutex::new((0, HashMap::new())),
        })
    }

    /// A place for a connection from `ip`, or `None` if a limit is reached.
    fn admit(self: &Arc<Self>, ip: IpAddr) -> Option<Permit> {
        let mut open = self.open.lock().unwrap_or_else(PoisonError::into_inner);
        let (total, per_ip) = &mut *open;
        let mine = per_ip.get(&ip).copied().unwrap_or(0);
        if *total >= self.max || mine >= self.max_per_ip {
            return None;
        }
        *total += 1;
        per_ip.insert(ip, mine + 1);
        Some(Permit {
            limits: self.clone(),
            ip,
        })
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        let mut open = self
            .limits
            .open
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let (total, per_ip) = &mut *open;
        *total -= 1;
        if let Some(n) = per_ip.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                per_ip.remove(&self.ip);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_hold_per_address_and_in_all_and_forget_closed_addresses() {
        let limits = Limits::new(3, 2);
        let a: IpAddr = "10.0.0.1".parse().expect("ip");
        let b: IpAddr = "10.0.0.2".parse().expect("ip");
        let a1 = limits.admit(a).expect("first from a");
        let a2 = limits.admit(a).expect("second from a");
        assert!(
            limits.admit(a).is_none(),
            "third from a is over the per-address limit"
        );
        let b1 = limits.admit(b).expect("first from b");
        assert!(limits.admit(b).is_none(), "over the broker-wide limit");
        drop((a1, a2));
        assert!(limits.admit(b).is_some());
        drop(b1);
        let open = limits.open.lock().expect("lock");
        assert!(
            open.1.is_empty() && open.0 == 0,
            "no entry left: {:?}",
            open.1
        );
    }
}
