//! One client connection: reads length-prefixed request frames, runs each
//! request in its own task (so a slow produce does not hold up the next
//! request, and a panicking handler fails alone), and writes the answers back
//! in request order, as Kafka clients require.
//!
//! Frames that cannot be a Kafka request (negative or oversized length,
//! truncated header, unknown API key, unsupported version other than
//! ApiVersions) close the connection, as Apache Kafka does.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use tributary_runtime::Chain;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use kafka_protocol::messages::{ApiKey, RequestHeader, RequestKind, ResponseHeader, ResponseKind};
use kafka_protocol::protocol::Encodable;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader, BufWriter};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, info_span, warn, Instrument};

use tributary_protocol::request;

use crate::apis;
use crate::context::{ConnectionInfo, RequestContext};
use crate::memory::{RequestMemory, Reservation};
use crate::router::{self, Answer};
use crate::Broker;

type Pending = oneshot::Receiver<Option<Outgoing>>;

/// An encoded answer, holding its size in the broker's request-memory budget
/// and in its connection's answer budget until it is written.
struct Outgoing {
    bytes: Bytes,
    _held: (Reservation, Reservation),
}

impl Outgoing {
    fn new(bytes: Bytes, broker: &Arc<RequestMemory>, connection: &Arc<RequestMemory>) -> Self {
        let held = (
            broker.reserve_now(bytes.len()),
            connection.reserve_now(bytes.len()),
        );
        Self { bytes, _held: held }
    }
}

/// Largest raw SASL token accepted (after a v0 SaslHandshake).
const MAX_RAW_TOKEN: i32 = 64 * 1024;

/// Longest a client of a SASL listener may take from connecting to being
/// authenticated.
pub const AUTHENTICATION_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// Longest a request frame may take to arrive once its length is read
/// (it also has to keep a minimum rate, see [`read_body`]).
const FRAME_BODY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(60);

/// Serve one connection (the halves of a TCP stream, or of a TLS stream
/// whose handshake is done) until the client closes it, it misbehaves, or
/// `shutdown` fires (then in-flight requests are still answered).
pub async fn serve<R, W>(
    (rd, wr): (R, W),
    conn: ConnectionInfo,
    broker: Arc<Broker>,
    shutdown: CancellationToken,
) where
    R: AsyncRead + Unpin + Send + 'static,
    W: AsyncWrite + Unpin + Send + 'static,
{
    let peer = conn.peer;
    let (tx, rx) = mpsc::channel::<Pending>(broker.config.max_inflight_per_connection.max(1));
    // Requests read and not yet answered (or written) on this connection.
    let unanswered = Arc::new(AtomicUsize::new(0));
    let writer = tokio::spawn(write_responses(wr, rx, peer, unanswered.clone()));
    let mut reader = BufReader::with_capacity(64 * 1024, rd);
    // Answers of this connection waiting to be written.
    let answers = RequestMemory::new(broker.config.max_queued_answer_bytes);
    let idle = broker.config.connections_max_idle;
    let auth_deadline = conn
        .session
        .required
        .then(|| tokio::time::Instant::now() + AUTHENTICATION_TIMEOUT);
    loop {
        let drained = tokio::select! {
            d = answers_drained(&answers, &broker.request_memory, idle) => d,
            _ = shutdown.cancelled() => break,
        };
        if !drained {
            warn!(%peer, "answers not read by the client for {idle:?}; closing connection");
            break;
        }
        // A SASL listener's client must authenticate within
        // AUTHENTICATION_TIMEOUT of connecting, however it spaces its
        // requests.
        // A login with a lifetime (KIP-368) that ends without a
        // re-authentication closes the connection.
        let unauthenticated = async {
            match (auth_deadline, conn.session.logged_in()) {
                (Some(deadline), false) => {
                    tokio::time::sleep_until(deadline).await;
                    "not authenticated within the 30 s allowed; closing connection"
                }
                (Some(_), true) => match conn.session.expires_at() {
                    Some(expiry) => {
                        tokio::time::sleep_until(expiry).await;
                        "SASL session expired without re-authentication (connections.max.reauth.ms); closing connection"
                    }
                    None => std::future::pending().await,
                },
                (None, _) => std::future::pending().await,
            }
        };
        let len = tokio::select! {
            why = unauthenticated => {
                info!(%peer, "{why}");
                break;
            }
            r = read_length(&mut reader, broker.config.connections_max_idle, &unanswered) => match r {
                Ok(len) => len,
                Err(reason) => {
                    debug!(%peer, %reason, "closing connection");
                    break;
                }
            },
            _ = shutdown.cancelled() => break,
        };
        if conn.session.raw_tokens() {
            // After a v0 SaslHandshake: a raw SASL token, answered with one
            // (or, refused, by closing the connection).
            if !(0..=MAX_RAW_TOKEN).contains(&len) {
                warn!(%peer, len, "bad SASL token length; closing connection");
                break;
            }
            let mut token = vec![0u8; len as usize];
            let read = tokio::select! {
                r = tokio::time::timeout(FRAME_BODY_TIMEOUT, reader.read_exact(&mut token)) => r,
                _ = shutdown.cancelled() => break,
            };
            if !matches!(read, Ok(Ok(_))) {
                break;
            }
            match apis::sasl_authenticate::step(&broker, &conn.session, peer, &token).await {
                apis::sasl_authenticate::Step::Reply(reply, _) => {
                    let mut framed = BytesMut::with_capacity(4 + reply.len());
                    framed.put_i32(reply.len() as i32);
                    framed.extend_from_slice(&reply);
                    let (otx, orx) = oneshot::channel();
                    let _ = otx.send(Some(Outgoing::new(
                        framed.freeze(),
                        &broker.request_memory,
                        &answers,
                    )));
                    unanswered.fetch_add(1, Ordering::AcqRel);
                    if tx.send(orx).await.is_err() {
                        break;
                    }
                    continue;
                }
                apis::sasl_authenticate::Step::Refused(..) => break,
            }
        }
        if len < 8 || len as usize > broker.config.max_request_bytes {
            warn!(%peer, len, max = broker.config.max_request_bytes, "bad request frame length; closing connection");
            break;
        }
        let (frame, permit) = tokio::select! {
            r = read_body(&mut reader, len as usize, &broker) => match r {
                Ok(read) => read,
                Err(reason) => {
                    warn!(%peer, len, %reason, "request frame not received; closing connection");
                    break;
                }
            },
            _ = shutdown.cancelled() => break,
        };
        match prepare(frame, peer) {
            Ok(Prepared::Immediate(bytes)) => {
                let (otx, orx) = oneshot::channel();
                let _ = otx.send(Some(Outgoing::new(bytes, &broker.request_memory, &answers)));
                drop(permit);
                unanswered.fetch_add(1, Ordering::AcqRel);
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
                unanswered.fetch_add(1, Ordering::AcqRel);
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
                    listener: conn.listener,
                    principal: conn.session.principal(),
                    session: conn.session.clone(),
                    correlation_id: header.correlation_id,
                    api_key,
                    version,
                };
                let span = info_span!("request", api = ?api_key, version, correlation_id = header.correlation_id, client = %ctx.client_id, principal = %ctx.principal, listener = ctx.listener);
                let to = AnswerSlot {
                    to: otx,
                    memory: permit,
                    answers: answers.clone(),
                };
                if !run_request(&broker, ctx, *request, to, span).await {
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
    // Answers already read are still written, but a client that does not
    // read them cannot keep the connection (and its answers) forever.
    let drain = if shutdown.is_cancelled() {
        SHUTDOWN_WRITE_DRAIN
    } else {
        idle
    };
    let abort = writer.abort_handle();
    match tokio::time::timeout(drain, writer).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => warn!(%peer, error = %Chain(&e), "connection writer ended abnormally"),
        Err(_) => {
            warn!(%peer, "answers not taken by the client within {drain:?}; dropping them");
            abort.abort();
        }
    }
}

/// Longest a connection's remaining answers may take to be written once the
/// broker is shutting down.
const SHUTDOWN_WRITE_DRAIN: std::time::Duration = std::time::Duration::from_secs(3);

/// Wait until this connection may read another request: its answers waiting
/// to be written are under its budget and, while the broker-wide budget is
/// full, it has none waiting (so a client that does not read its answers
/// stops being read, and holds at most its budget plus one answer). False
/// when that takes longer than `idle`.
async fn answers_drained(
    answers: &RequestMemory,
    broker: &RequestMemory,
    idle: std::time::Duration,
) -> bool {
    let deadline = tokio::time::Instant::now() + idle;
    loop {
        let mine = answers.freed();
        let all = broker.freed();
        tokio::pin!(mine, all);
        mine.as_mut().enable();
        all.as_mut().enable();
        let held = answers.used();
        if held < answers.budget() && (held == 0 || broker.used() < broker.budget()) {
            return true;
        }
        tokio::select! {
            _ = mine => {}
            _ = all => {}
            _ = tokio::time::sleep_until(deadline) => return false,
        }
    }
}

/// Read the next frame's length. Not cancel-safe (a partly read length is
/// lost), so a caller that cancels it closes the connection. Fails when the client closes
/// the connection, or when it sent nothing for `idle` while no request of
/// it was waiting for its answer (Kafka's `connections.max.idle.ms`).
async fn read_length<R: tokio::io::AsyncRead + Unpin>(
    reader: &mut R,
    idle: std::time::Duration,
    unanswered: &AtomicUsize,
) -> Result<i32, String> {
    let mut len = [0u8; 4];
    let mut got = 0;
    let mut idle_until = tokio::time::Instant::now() + idle;
    while got < 4 {
        tokio::select! {
            r = reader.read(&mut len[got..]) => match r {
                Ok(0) => return Err("closed by the client".into()),
                Ok(n) => got += n,
                Err(e) => return Err(format!("read failed: {e}")),
            },
            _ = tokio::time::sleep_until(idle_until) => {
                if unanswered.load(Ordering::Acquire) == 0 {
                    return Err(format!("idle for {idle:?} (connections_max_idle)"));
                }
                idle_until = tokio::time::Instant::now() + idle;
            }
        }
    }
    Ok(i32::from_be_bytes(len))
}

/// Length of one progress window of a frame body: each must bring
/// `request_min_bytes_per_sec` times its length in bytes (or the rest of the
/// frame), or the frame is dropped.
const RATE_WINDOW: std::time::Duration = std::time::Duration::from_secs(5);

/// Read a frame body of `len` bytes, counting it against the broker's
/// request-memory budget as it arrives (see [`crate::memory`]): a large frame
/// first waits for room, then reserves at most the budget's per-frame share
/// and grows its reservation with the bytes received. A frame must arrive
/// within [`FRAME_BODY_TIMEOUT`] and at `request_min_bytes_per_sec` per
/// [`RATE_WINDOW`], so a client cannot keep budget or a buffer by
/// trickling. `Err` says why the frame was given up.
async fn read_body<R: tokio::io::AsyncRead + Unpin>(
    reader: &mut R,
    len: usize,
    broker: &Broker,
) -> Result<(Bytes, crate::memory::Reservation), String> {
    let memory = &broker.request_memory;
    let mut permit = memory.reserve(len.min(memory.share())).await;
    let started = tokio::time::Instant::now();
    let deadline = started + FRAME_BODY_TIMEOUT;
    let min_per_window = broker
        .config
        .request_min_bytes_per_sec
        .saturating_mul(RATE_WINDOW.as_secs() as usize);
    let mut window_end = started + RATE_WINDOW;
    let mut window_start_len = 0usize;
    // Capacity only: pages are touched (and memory used) as bytes arrive.
    let mut buf: Vec<u8> = Vec::with_capacity(len);
    while buf.len() < len {
        let want = len - buf.len();
        let mut limited = (&mut buf).limit(want);
        let read = tokio::select! {
            r = reader.read_buf(&mut limited) => Some(r),
            _ = tokio::time::sleep_until(window_end.min(deadline)) => None,
        };
        match read {
            Some(Ok(0)) => return Err("connection closed mid-frame".into()),
            Some(Ok(_)) => permit.grow_to(buf.len()),
            Some(Err(e)) => return Err(format!("read failed: {e}")),
            None => {
                let now = tokio::time::Instant::now();
                if now >= deadline {
                    return Err(format!(
                        "frame incomplete after {FRAME_BODY_TIMEOUT:?} ({} of {len} bytes)",
                        buf.len()
                    ));
                }
                let got = buf.len() - window_start_len;
                if got < min_per_window.min(len - window_start_len) {
                    return Err(format!(
                        "frame arriving at {} bytes in {RATE_WINDOW:?}, under request_min_bytes_per_sec={} ({} of {len} bytes)",
                        got, broker.config.request_min_bytes_per_sec, buf.len()
                    ));
                }
                window_start_len = buf.len();
                window_end = now + RATE_WINDOW;
            }
        }
    }
    Ok((Bytes::from(buf), permit))
}

/// Where a request's answer goes. Holds the request's share of the
/// broker's request-memory budget until the answer is sent (dropped with it).
struct AnswerSlot {
    to: oneshot::Sender<Option<Outgoing>>,
    memory: Reservation,
    /// The connection's answer budget.
    answers: Arc<RequestMemory>,
}

/// Run one request through the router. Its first phase runs before the
/// next request is read (as Apache Kafka runs requests per connection); a
/// second phase ([`Answer::Later`], e.g. a produce waiting for its commits)
/// runs concurrently with later requests. Both run in their own tasks, so a
/// panic fails only that request (and closes this connection). Returns
/// false when the connection must close.
async fn run_request(
    broker: &Arc<Broker>,
    ctx: RequestContext,
    request: RequestKind,
    slot: AnswerSlot,
    span: tracing::Span,
) -> bool {
    let (api_key, version, correlation_id) = (ctx.api_key, ctx.version, ctx.correlation_id);
    // Destructured so the closure owns the reservation itself (a closure
    // naming only `slot.to` would capture just that field, and the
    // reservation would be dropped when this function returns, before a
    // two-phase request is answered).
    let AnswerSlot {
        to,
        memory,
        answers,
    } = slot;
    let budget = broker.request_memory.clone();
    let reply = move |resp: Option<ResponseKind>| {
        let _held_until_answered = memory;
        let bytes = match resp {
            Some(resp) => match encode_response(api_key, version, correlation_id, &resp) {
                Ok(b) => Some(Outgoing::new(b, &budget, &answers)),
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
    let first = tokio::spawn(
        async move {
            match router::dispatch(broker, ctx, request).await {
                Answer::Now(resp) => {
                    reply(resp.map(|r| *r));
                    Ok(None)
                }
                Answer::Later(pending) => Ok(Some((pending, reply))),
                Answer::Last(resp) => {
                    reply(resp.map(|r| *r));
                    Err(())
                }
                Answer::Close => Err(()),
            }
        }
        .instrument(span.clone()),
    )
    .await;
    match first {
        Ok(Ok(None)) => true,
        Ok(Ok(Some((pending, reply)))) => {
            tokio::spawn(async move { reply(pending.await) }.instrument(span));
            true
        }
        Ok(Err(())) => false,
        Err(e) => {
            error!(error = %Chain(&e), "request handler failed");
            false
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

fn prepare(frame: Bytes, peer: SocketAddr) -> Result<Prepared, String> {
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
async fn write_responses<W: AsyncWrite + Unpin>(
    wr: W,
    mut rx: mpsc::Receiver<Pending>,
    peer: SocketAddr,
    unanswered: Arc<AtomicUsize>,
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
        let written = match answer {
            Ok(Some(answer)) => out.write_all(answer.bytes.chunk()).await.is_ok(),
            Ok(None) => true, // acks=0: no answer
            Err(_) => {
                warn!(%peer, "request failed without an answer; closing connection");
                false
            }
        };
        unanswered.fetch_sub(1, Ordering::AcqRel);
        if !written {
            break;
        }
    }
    let _ = out.flush().await;
    let _ = out.shutdown().await;
}
