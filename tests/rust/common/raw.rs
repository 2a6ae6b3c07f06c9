//! A blocking Kafka client that speaks raw frames, for tests that need an
//! API or an answer librdkafka does not expose (ACLs, exact error codes),
//! with SASL/PLAIN login.

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use bytes::{Buf, Bytes};
use kafka_protocol::messages::{
    ResponseHeader, SaslAuthenticateRequest, SaslAuthenticateResponse, SaslHandshakeRequest,
};
use kafka_protocol::protocol::{Decodable, HeaderVersion, Request, StrBytes};

use super::encode_request;

/// Bound on every read and write.
pub(crate) const IO_TIMEOUT: Duration = Duration::from_secs(30);

/// One connection.
pub(crate) struct Raw {
    stream: TcpStream,
    next_correlation: i32,
}

impl Raw {
    pub(crate) fn connect(addr: SocketAddr) -> Result<Self> {
        let stream = TcpStream::connect_timeout(&addr, IO_TIMEOUT).context("connect")?;
        stream.set_read_timeout(Some(IO_TIMEOUT))?;
        stream.set_write_timeout(Some(IO_TIMEOUT))?;
        stream.set_nodelay(true)?;
        Ok(Raw {
            stream,
            next_correlation: 1,
        })
    }

    /// Connect and log in with SASL/PLAIN (SaslHandshake v1,
    /// SaslAuthenticate v2).
    pub(crate) fn login(addr: SocketAddr, user: &str, password: &str) -> Result<Self> {
        let mut conn = Raw::connect(addr)?;
        let auth = conn.plain_login(user, password)?;
        ensure!(
            auth.error_code == 0,
            "SaslAuthenticate as {user}: error {} {:?}",
            auth.error_code,
            auth.error_message
        );
        Ok(conn)
    }

    /// SaslHandshake v1 (PLAIN) and SaslAuthenticate v2 as `user` on this
    /// connection (a first login or a re-authentication): the answer.
    pub(crate) fn plain_login(
        &mut self,
        user: &str,
        password: &str,
    ) -> Result<SaslAuthenticateResponse> {
        let hello = self.call(
            &SaslHandshakeRequest::default().with_mechanism(StrBytes::from_static_str("PLAIN")),
            1,
        )?;
        ensure!(
            hello.error_code == 0,
            "SaslHandshake: error {}",
            hello.error_code
        );
        self.call(
            &SaslAuthenticateRequest::default()
                .with_auth_bytes(Bytes::from(format!("\0{user}\0{password}"))),
            2,
        )
    }

    /// Send `request` as `version` without waiting; its correlation id.
    pub(crate) fn send<R: Request>(&mut self, request: &R, version: i16) -> Result<i32> {
        let correlation = self.next_correlation;
        self.next_correlation += 1;
        let frame = encode_request(request, version, correlation, "raw-test")?;
        let len = i32::try_from(frame.len()).context("frame too long")?;
        self.stream.write_all(&len.to_be_bytes())?;
        self.stream.write_all(&frame)?;
        Ok(correlation)
    }

    /// The next response frame (header and body); an error if the broker
    /// closed the connection.
    pub(crate) fn next_frame(&mut self) -> Result<Bytes> {
        self.read_frame()?
            .context("the broker closed the connection instead of answering")
    }

    /// Send `request` as `version` and decode its answer.
    pub(crate) fn call<R: Request>(&mut self, request: &R, version: i16) -> Result<R::Response> {
        let correlation = self.send(request, version)?;
        let mut body = self.read_frame()?.with_context(|| {
            format!("connection closed instead of answering api key {}", R::KEY)
        })?;
        let header = ResponseHeader::decode(&mut body, R::Response::header_version(version))?;
        ensure!(
            header.correlation_id == correlation,
            "correlation id {} for request {correlation}",
            header.correlation_id
        );
        let response = R::Response::decode(&mut body, version).context("decode response")?;
        ensure!(
            !body.has_remaining(),
            "{} bytes left after decoding api key {} v{version}",
            body.len(),
            R::KEY
        );
        Ok(response)
    }

    /// One response frame, or `None` if the broker closed the connection.
    fn read_frame(&mut self) -> Result<Option<Bytes>> {
        let mut len = [0u8; 4];
        match self.stream.read_exact(&mut len) {
            Ok(()) => {}
            Err(e)
                if matches!(
                    e.kind(),
                    ErrorKind::UnexpectedEof | ErrorKind::ConnectionReset | ErrorKind::BrokenPipe
                ) =>
            {
                return Ok(None)
            }
            Err(e) => return Err(e).context("read frame length"),
        }
        let len = usize::try_from(i32::from_be_bytes(len)).context("negative frame length")?;
        ensure!(len <= 64 * 1024 * 1024, "response frame of {len} bytes");
        let mut body = vec![0u8; len];
        self.stream
            .read_exact(&mut body)
            .context("read frame body")?;
        Ok(Some(Bytes::from(body)))
    }
}
