//! One client connection: reads length-prefixed request frames, runs each
//! request in its own task (so a slow produce does not hold up the next
//! request, and a panicking handler fails alone), and writes the answers back
//! in request order, as Kafka clients require.
//!
//! Frames that cannot be a Kafka request (negative or oversized length,
//! truncated header, unknown API key, unsupported version other than
//! ApiVersions) close the connection, as Apache Kafka does.

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use kafka_protocol::messages::{ApiKey, RequestHeader, RequestKind, ResponseHeader, ResponseKind};
use kafka_protocol::protocol::Encodable;
use tokio::io::{AsyncReadExt, AsyncWriteExt, BufReader, BufWriter};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info_span, warn, Instrument};

use tributary_protocol::request;

use crate::{apis, router, Broker};

/// Who sent a request.
#[derive(Debug, Clone)]
pub struct RequestContext {
    pub client_id: String,
    pub peer: SocketAddr,
    pub correlation_id: i32,
}

type Pending = oneshot::Receiver<Option<Bytes>>;

/// Longest a request frame may take to arrive once its length is read.
const FRAME_BODY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(60);

/// Serve one connection until the client closes it, it misbehaves, or
/// `shutdown` fires (then in-flight requests are still answered).
pub async fn serve(
    stream: TcpStream,
    peer: SocketAddr,
    broker: Arc<Broker>,
    shutdown: CancellationToken,
) {
    let _ = stream.set_nodelay(true);
    let (rd, wr) = stream.into_split();
    let (tx, rx) = mpsc::channel::<Pending>(broker.config.max_inflight_per_connection.max(1));
    let writer = tokio::spawn(write_responses(wr, rx, peer));
    let mut reader = BufReader::with_capacity(64 * 1024, rd);
    loop {
        let len = tokio::select! {
            r = reader.read_i32() => match r {
                Ok(len) => len,
                Err(_) => break, // closed by the client
            },
            _ = shutdown.cancelled() => break,
        };
        if len < 8 || len as usize > broker.config.max_request_bytes {
            warn!(%peer, len, max = broker.config.max_request_bytes, "bad request frame length; closing connection");
            break;
        }
        // Wait for room in the broker's request-memory budget before taking
        // the frame off the socket.
        let permit = tokio::select! {
            r = broker.request_memory.reserve(len as usize) => r,
            _ = shutdown.cancelled() => break,
        };
        let mut buf = vec![0u8; len as usize];
        // The frame holds its share of the budget while it arrives: a client
        // that announces a frame and stalls is cut off, not waited for.
        tokio::select! {
            r = tokio::time::timeout(FRAME_BODY_TIMEOUT, reader.read_exact(&mut buf)) => match r {
                Ok(Ok(_)) => {}
                Ok(Err(e)) => {
                    debug!(%peer, error = %e, "truncated request frame; closing connection");
                    break;
                }
                Err(_) => {
                    warn!(%peer, len, "request frame not received within {FRAME_BODY_TIMEOUT:?}; closing connection");
                    break;
                }
            },
            _ = shutdown.cancelled() => break,
        }
        let frame = Bytes::from(buf);
        match prepare(&broker, frame, peer) {
            Ok(Prepared::Immediate(bytes)) => {
                let (otx, orx) = oneshot::channel();
                let _ = otx.send(Some(bytes));
                drop(permit);
                if tx.send(orx).await.is_err() {
                    break;
                }
            }
            Ok(Prepared::Run {
                api_key,
                version,
                header,
                request,
            }) => {
                let (otx, orx) = oneshot::channel();
                // Reserve this request's place in the answer order first.
                if tx.send(orx).await.is_err() {
                    break;
                }
                let ctx = RequestContext {
                    client_id: header
                        .client_id
                        .as_ref()
                        .map(|s| s.to_string())
                        .unwrap_or_default(),
                    peer,
                    correlation_id: header.correlation_id,
                };
                let span = info_span!("request", api = ?api_key, version, correlation_id = header.correlation_id, client = %ctx.client_id);
                let answer = Answer {
                    to: otx,
                    memory: permit,
                };
                if !run_request(&broker, ctx, api_key, version, *request, answer, span).await {
                    break;
                }
            }
            Err(reason) => {
                warn!(%peer, %reason, "bad request; closing connection");
                break;
            }
        }
    }
    drop(tx);
    if let Err(e) = writer.await {
        warn!(%peer, error = %e, "connection writer ended abnormally");
    }
}

/// Where a request's answer goes. Holds the request's share of the
/// broker's request-memory budget until the answer is sent (dropped with it).
struct Answer {
    to: oneshot::Sender<Option<Bytes>>,
    memory: crate::memory::Reservation,
}

/// Run one request. Produce is split: its batches are queued here, in request
/// order (so pipelined produces keep their order), and only the wait for the
/// commit runs concurrently with later requests. Every other request runs to
/// completion before the next is read, as Apache Kafka does per connection.
/// Handlers run in their own task, so a panic fails only that request (and
/// closes this connection). Returns false when the connection must close.
async fn run_request(
    broker: &Arc<Broker>,
    ctx: RequestContext,
    api_key: ApiKey,
    version: i16,
    request: RequestKind,
    answer: Answer,
    span: tracing::Span,
) -> bool {
    let correlation_id = ctx.correlation_id;
    // Destructured so the closure owns the reservation itself (a closure
    // naming only `answer.to` would capture just that field, and the
    // reservation would be dropped when this function returns, before a
    // produce is answered).
    let Answer { to, memory } = answer;
    let reply = move |resp: Option<ResponseKind>| {
        let _held_until_answered = memory;
        let bytes = match resp {
            Some(resp) => match encode_response(api_key, version, correlation_id, &resp) {
                Ok(b) => Some(b),
                Err(e) => {
                    error!(error = %e, "cannot encode response; closing connection");
                    return; // dropping `to` closes the connection
                }
            },
            None => None,
        };
        let _ = to.send(bytes);
    };
    let broker = broker.clone();
    match request {
        RequestKind::Produce(req) => {
            let started = std::time::Instant::now();
            // The task yields the still-pending second phase on purpose.
            #[allow(clippy::async_yields_async)]
            let queued = tokio::spawn(
                async move { apis::produce::submit(&broker, req, version).await }
                    .instrument(span.clone()),
            )
            .await;
            match queued {
                Ok(pending) => {
                    tokio::spawn(
                        async move {
                            let resp = pending.await;
                            router::observe("Produce", started);
                            reply(resp.map(ResponseKind::Produce))
                        }
                        .instrument(span),
                    );
                    true
                }
                Err(e) => {
                    error!(error = %e, "produce handler failed");
                    false
                }
            }
        }
        other => {
            let done = tokio::spawn(
                async move { reply(router::handle(&broker, &ctx, other, version).await) }
                    .instrument(span),
            )
            .await;
            if let Err(e) = done {
                error!(error = %e, "request handler failed");
                return false;
            }
            true
        }
    }
}

enum Prepared {
    /// Answer already known (ApiVersions with an unsupported version).
    Immediate(Bytes),
    Run {
        api_key: ApiKey,
        version: i16,
        header: RequestHeader,
        request: Box<RequestKind>,
    },
}

fn prepare(broker: &Broker, frame: Bytes, peer: SocketAddr) -> Result<Prepared, String> {
    // serve() only passes frames of at least 8 bytes.
    let prefix = request::frame_prefix(&frame).ok_or("request frame shorter than its prefix")?;
    let (raw_key, version) = (prefix.api_key, prefix.version);
    let api_key = ApiKey::try_from(raw_key).map_err(|_| format!("unknown api key {raw_key}"))?;
    if !router::is_supported(api_key, version) {
        if api_key == ApiKey::ApiVersions {
            debug!(%peer, version, "unsupported ApiVersions version; answering with v0");
            let resp = router::api_versions_unsupported();
            return encode_response(
                api_key,
                0,
                prefix.correlation_id,
                &ResponseKind::ApiVersions(resp),
            )
            .map(Prepared::Immediate);
        }
        return Err(format!(
            "unsupported version api={api_key:?} version={version}"
        ));
    }
    let (header, request) =
        request::decode_request(frame, api_key, version).map_err(|e| e.to_string())?;
    let _ = broker;
    Ok(Prepared::Run {
        api_key,
        version,
        header,
        request: Box::new(request),
    })
}

/// Frame a response: length, header, body.
pub fn encode_response(
    api_key: ApiKey,
    version: i16,
    correlation_id: i32,
    resp: &ResponseKind,
) -> Result<Bytes, String> {
    // A fetch answer is mostly record bytes: size the buffer for all of it
    // so they are copied once, not again at every growth.
    let body = match resp {
        ResponseKind::Fetch(f) => f.compute_size(version).unwrap_or(0),
        _ => 0,
    };
    let mut buf = BytesMut::with_capacity(256 + body);
    buf.put_i32(0);
    let header = ResponseHeader::default().with_correlation_id(correlation_id);
    header
        .encode(&mut buf, api_key.response_header_version(version))
        .map_err(|e| e.to_string())?;
    resp.encode(&mut buf, version).map_err(|e| e.to_string())?;
    let len = (buf.len() - 4) as i32;
    buf[..4].copy_from_slice(&len.to_be_bytes());
    Ok(buf.freeze())
}

/// Write answers in request order. Buffered output is flushed whenever the
/// writer is about to wait (for the next request or for an answer that is
/// not ready yet), so an answer never sits in the buffer while later,
/// slower requests are pending.
async fn write_responses(
    wr: tokio::net::tcp::OwnedWriteHalf,
    mut rx: mpsc::Receiver<Pending>,
    peer: SocketAddr,
) {
    let mut out = BufWriter::with_capacity(64 * 1024, wr);
    loop {
        let mut pending = match rx.try_recv() {
            Ok(p) => p,
            Err(mpsc::error::TryRecvError::Empty) => {
                if out.flush().await.is_err() {
                    break;
                }
                match rx.recv().await {
                    Some(p) => p,
                    None => break,
                }
            }
            Err(mpsc::error::TryRecvError::Disconnected) => break,
        };
        let answer = match pending.try_recv() {
            Ok(a) => Ok(a),
            Err(oneshot::error::TryRecvError::Empty) => {
                if out.flush().await.is_err() {
                    break;
                }
                pending.await.map_err(|_| ())
            }
            Err(oneshot::error::TryRecvError::Closed) => Err(()),
        };
        match answer {
            Ok(Some(bytes)) => {
                if out.write_all(bytes.chunk()).await.is_err() {
                    break;
                }
            }
            Ok(None) => {} // acks=0: no answer
            Err(_) => {
                warn!(%peer, "request failed without an answer; closing connection");
                break;
            }
        }
    }
    let _ = out.flush().await;
    let _ = out.shutdown().await;
}
