//! QUIC transport: endpoints, tuning, and framed I/O on streams.
//!
//! One QUIC stream per request (see `omesh_proto::msg`). This module is the
//! edge where decoding errors become QUIC application close codes; above it,
//! code deals in typed requests and responses.
//!
//! Flow-control windows are sized for the bandwidth-delay product of a site
//! LAN with headroom: at 10 Gbit/s and 1 ms RTT the BDP is 1.25 MB, at
//! 25 Gbit/s and 2 ms 6.25 MB. A 16 MiB per-stream and 64 MiB per-connection
//! window keeps several parallel streams from ever stalling on credit,
//! while bounding what one peer can make us buffer (see docs/config.md).

pub mod filter;
pub mod tls;

use omesh_core::units::ByteSize;
use omesh_proto::frame::{self, FrameError, LEN_PREFIX_BYTES};
use omesh_proto::record::{self, HEADER_BYTES, RecordHeader, Seal};
use quinn::{RecvStream, SendStream, VarInt};
use serde::Deserialize;
use serde::{Serialize, de::DeserializeOwned};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
pub use tls::{PeerIdentity, TlsConfig, TlsMaterial, peer_identity, why_closed};

/// `[transport]`: QUIC tuning (see docs/config.md for the reasoning).
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TransportConfig {
    /// Per-stream receive window.
    #[serde(default = "d_stream_window")]
    pub stream_receive_window: ByteSize,
    /// Per-connection receive window.
    #[serde(default = "d_conn_window")]
    pub receive_window: ByteSize,
    /// Per-connection send window.
    #[serde(default = "d_conn_window")]
    pub send_window: ByteSize,
    /// Idle timeout.
    #[serde(default = "d_idle")]
    pub idle_timeout_secs: u64,
    /// Keep-alive interval.
    #[serde(default = "d_keepalive")]
    pub keep_alive_secs: u64,
    /// Connect timeout.
    #[serde(default = "d_connect")]
    pub connect_timeout_secs: u64,
    /// A single request (e.g. fetching one object during a restore) that
    /// takes longer fails over to another replica.
    #[serde(default = "d_request")]
    pub request_timeout_secs: u64,
}

fn d_stream_window() -> ByteSize {
    ByteSize(16 << 20)
}
fn d_conn_window() -> ByteSize {
    ByteSize(64 << 20)
}
fn d_idle() -> u64 {
    10
}
fn d_keepalive() -> u64 {
    2
}
fn d_request() -> u64 {
    15
}
fn d_connect() -> u64 {
    5
}

impl Default for TransportConfig {
    fn default() -> Self {
        TransportConfig {
            stream_receive_window: d_stream_window(),
            receive_window: d_conn_window(),
            send_window: d_conn_window(),
            idle_timeout_secs: d_idle(),
            keep_alive_secs: d_keepalive(),
            connect_timeout_secs: d_connect(),
            request_timeout_secs: d_request(),
        }
    }
}

/// Transport errors.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TransportError {
    /// TLS setup.
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
    /// Socket or endpoint.
    #[error("{context}: {source}")]
    Io {
        /// what we were doing
        context: String,
        /// cause
        source: std::io::Error,
    },
    /// Connecting failed.
    #[error("connecting to {peer} at {addr}: {message}")]
    Connect {
        /// peer name
        peer: String,
        /// address
        addr: String,
        /// cause
        message: String,
    },
    /// The stream or connection broke.
    #[error("connection to {peer}: {message}")]
    Stream {
        /// peer name
        peer: String,
        /// cause
        message: String,
    },
    /// The other side broke the protocol.
    #[error("{peer} violated the protocol: {message}")]
    Protocol {
        /// peer name
        peer: String,
        /// what was wrong
        message: String,
    },
}

/// Most requests (bidirectional streams) one connection may have open at
/// once; a client that opens more waits for stream credit.
pub const MAX_STREAMS_PER_CONNECTION: u32 = 64;

/// QUIC transport parameters from the `[transport]` settings.
pub fn transport_config(t: &TransportConfig) -> quinn::TransportConfig {
    let mut c = quinn::TransportConfig::default();
    let v = |n: u64| VarInt::from_u64(n).unwrap_or(VarInt::MAX);
    c.stream_receive_window(v(t.stream_receive_window.0));
    c.receive_window(v(t.receive_window.0));
    c.send_window(t.send_window.0);
    c.max_concurrent_bidi_streams(VarInt::from_u32(MAX_STREAMS_PER_CONNECTION));
    c.max_concurrent_uni_streams(VarInt::from_u32(0));
    c.keep_alive_interval(Some(Duration::from_secs(t.keep_alive_secs.max(1))));
    c.max_idle_timeout(Some(
        quinn::IdleTimeout::try_from(Duration::from_secs(t.idle_timeout_secs.max(2))).expect("idle timeout in range"),
    ));
    // LAN round trips are sub-millisecond; the default (333 ms) would make
    // the first loss-recovery timers absurdly slow
    c.initial_rtt(Duration::from_millis(10));
    c
}

fn quinn_tls_err(e: impl std::fmt::Display) -> TransportError {
    TransportError::Tls(tls::TlsError::Rustls(rustls::Error::General(e.to_string())))
}

/// The QUIC client config for the next connection: the TLS material's
/// current configs (a CRL change applies to the next connection).
pub fn client_config(tls: &TlsMaterial, t: &TransportConfig) -> Result<quinn::ClientConfig, TransportError> {
    let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls.client_config()).map_err(quinn_tls_err)?;
    let mut c = quinn::ClientConfig::new(Arc::new(crypto));
    c.transport_config(Arc::new(transport_config(t)));
    Ok(c)
}

/// The QUIC server config for the next incoming connection.
pub fn server_config(tls: &TlsMaterial, t: &TransportConfig) -> Result<quinn::ServerConfig, TransportError> {
    let crypto = quinn::crypto::rustls::QuicServerConfig::try_from(tls.server_config()).map_err(quinn_tls_err)?;
    let mut c = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    c.transport_config(Arc::new(transport_config(t)));
    // a connection stays on the address its handshake was checked from
    // (the residency policy judges addresses at accept time)
    c.migration(false);
    Ok(c)
}

/// Build a QUIC endpoint bound to `bind` that serves (when `serve`) and
/// connects, with mutual TLS from `tls`. The default configs are those of
/// start-up; connections made and accepted by a node use
/// [`client_config`] and [`server_config`] so a new CRL applies at once.
pub fn endpoint(
    bind: SocketAddr,
    tls: &TlsMaterial,
    t: &TransportConfig,
    serve: bool,
) -> Result<quinn::Endpoint, TransportError> {
    endpoint_filtered(bind, tls, t, serve, None)
}

/// [`endpoint`] whose socket passes only datagrams `filter` allows (the
/// residency policy: nothing, not even a QUIC Version Negotiation or a
/// stateless reset, goes to a refused address).
pub fn endpoint_filtered(
    bind: SocketAddr,
    tls: &TlsMaterial,
    t: &TransportConfig,
    serve: bool,
    filter: Option<filter::DatagramFilter>,
) -> Result<quinn::Endpoint, TransportError> {
    let socket = std::net::UdpSocket::bind(bind)
        .map_err(|source| TransportError::Io { context: format!("binding UDP {bind}"), source })?;
    // large socket buffers: bulk transfers on fast LANs drop packets with
    // the kernel defaults
    let s2 = socket2::SockRef::from(&socket);
    let _ = s2.set_recv_buffer_size(8 << 20);
    let _ = s2.set_send_buffer_size(8 << 20);
    let server = if serve { Some(server_config(tls, t)?) } else { None };
    let runtime = quinn::default_runtime().ok_or_else(|| TransportError::Io {
        context: "no async runtime".into(),
        source: std::io::Error::other("tokio runtime missing"),
    })?;
    let starting = |source| TransportError::Io { context: format!("starting QUIC on {bind}"), source };
    let mut socket = runtime.wrap_udp_socket(socket).map_err(starting)?;
    if let Some(f) = filter {
        socket = Arc::new(filter::FilteredSocket::new(socket, f));
    }
    let (reset, cid_key) = restart_keys(tls);
    let mut config = quinn::EndpointConfig::new(Arc::new(reset));
    config.cid_generator(move || Box::new(quinn_proto::HashedConnectionIdGenerator::from_key(cid_key)));
    let mut ep = quinn::Endpoint::new_with_abstract_socket(config, server, socket, runtime).map_err(starting)?;
    ep.set_default_client_config(client_config(tls, t)?);
    Ok(ep)
}

/// The keys of this node's QUIC stateless resets and of its connection
/// ids, derived from its TLS private key (HKDF-SHA256) so they are the same
/// after a restart: a peer still holding a connection to the previous
/// process sends a packet whose connection id the new process recognises
/// as its own and answers with a reset the peer can verify (RFC 9000
/// §10.3), so the peer drops that connection at once and connects again
/// instead of waiting out the idle timeout. With random keys per process
/// (quinn's default) the new process drops such packets unanswered. Only
/// the holder of the private key can derive either key.
fn restart_keys(tls: &TlsMaterial) -> (ring::hmac::Key, u64) {
    let salt = ring::hkdf::Salt::new(ring::hkdf::HKDF_SHA256, b"omesh QUIC restart keys");
    let prk = salt.extract(tls.key().secret_der());
    let okm =
        prk.expand(&[b"stateless reset v1"], ring::hmac::HMAC_SHA256).expect("an HMAC key is a valid HKDF length");
    let reset = ring::hmac::Key::from(okm);
    let mut cid = [0u8; 8];
    prk.expand(&[b"connection id v1"], CidKeyLen)
        .and_then(|okm| okm.fill(&mut cid))
        .expect("8 bytes are a valid HKDF length");
    (reset, u64::from_le_bytes(cid))
}

/// HKDF output length of the connection-id key.
struct CidKeyLen;

impl ring::hkdf::KeyType for CidKeyLen {
    fn len(&self) -> usize {
        8
    }
}

/// A framed-read failure, with the close code it maps to.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// The stream ended or broke, or stalled past its time limit.
    #[error("stream: {0}")]
    Stream(String),
    /// Frame or record above its limit.
    #[error("{0}")]
    TooLarge(String),
    /// Undecodable bytes.
    #[error("{0}")]
    Malformed(String),
    /// The peer's buffer budget stayed exhausted (its other streams hold
    /// it); the request may be retried.
    #[error("{0}")]
    Busy(String),
}

impl ReadError {
    /// QUIC application close code for this error.
    pub fn close_code(&self) -> u32 {
        match self {
            ReadError::TooLarge(_) => omesh_proto::msg::close::TOO_LARGE,
            _ => omesh_proto::msg::close::PROTOCOL_VIOLATION,
        }
    }
}

/// Bytes read from a stream at a time: a buffer grows with the bytes that
/// actually arrived, never with the length a header declared.
pub const READ_PIECE: usize = 64 << 10;

/// Bytes one peer may make this node hold in receive buffers at once (all
/// its connections and streams together): frames and records are counted
/// from the moment their length is known until the request that read them
/// is done with them.
pub const PEER_BUFFER_BYTES: usize = 64 << 20;

/// A peer's receive-buffer budget ([`PEER_BUFFER_BYTES`]), shared by all
/// its connections. Reading a frame or record first takes its declared
/// length from the budget (waiting at most the stall limit), so a peer that
/// declares huge lengths on many streams blocks only itself.
#[derive(Clone, Debug)]
pub struct Budget {
    sem: Arc<tokio::sync::Semaphore>,
    capacity: usize,
}

/// Bytes taken from a [`Budget`]; given back when dropped.
#[derive(Debug)]
pub struct Held(#[allow(dead_code)] Option<tokio::sync::OwnedSemaphorePermit>);

impl Budget {
    /// A budget of `bytes`.
    pub fn new(bytes: usize) -> Self {
        Budget { sem: Arc::new(tokio::sync::Semaphore::new(bytes)), capacity: bytes }
    }

    /// Bytes currently available.
    pub fn available(&self) -> usize {
        self.sem.available_permits()
    }

    /// Take `n` bytes, waiting at most `wait` for other requests to give
    /// theirs back.
    pub async fn take(&self, n: usize, wait: Duration) -> Result<Held, ReadError> {
        if n == 0 {
            return Ok(Held(None));
        }
        if n > self.capacity {
            return Err(ReadError::TooLarge(format!(
                "{n} bytes exceed this peer's buffer budget of {} bytes",
                self.capacity
            )));
        }
        let n32 = u32::try_from(n).map_err(|_| ReadError::TooLarge(format!("{n} bytes")))?;
        match tokio::time::timeout(wait, self.sem.clone().acquire_many_owned(n32)).await {
            Ok(Ok(p)) => Ok(Held(Some(p))),
            Ok(Err(_)) => Err(ReadError::Busy("buffer budget closed".into())),
            Err(_) => Err(ReadError::Busy(format!(
                "this peer's {} bytes of receive buffers stayed in use for {}s; retry later",
                self.capacity,
                wait.as_secs()
            ))),
        }
    }
}

/// How a server-side read is limited: the peer's budget, and how long any
/// one piece of a frame or record may take to arrive.
#[derive(Clone, Debug)]
pub struct ReadLimits {
    /// The peer's buffer budget.
    pub budget: Budget,
    /// Longest wait for the next piece of bytes (and for budget).
    pub stall: Duration,
}

fn stream_err(e: quinn::ReadExactError) -> ReadError {
    ReadError::Stream(e.to_string())
}

/// Append exactly `len` bytes from `recv` to `buf`, growing it piece by
/// piece as they arrive; each piece must arrive within `stall` (when set).
async fn read_growing(
    recv: &mut RecvStream,
    buf: &mut Vec<u8>,
    len: usize,
    stall: Option<Duration>,
) -> Result<(), ReadError> {
    let end = buf.len() + len;
    while buf.len() < end {
        let start = buf.len();
        let n = READ_PIECE.min(end - start);
        buf.resize(start + n, 0);
        let read = recv.read_exact(&mut buf[start..]);
        match stall {
            None => read.await.map_err(stream_err)?,
            Some(d) => tokio::time::timeout(d, read)
                .await
                .map_err(|_| ReadError::Stream(format!("no data for {}s", d.as_secs())))?
                .map_err(stream_err)?,
        }
    }
    Ok(())
}

/// Write one frame. A message too large for a frame is refused here (the
/// sender's bug, reported as an error rather than a panic).
pub async fn write_frame<T: Serialize>(send: &mut SendStream, msg: &T) -> Result<(), quinn::WriteError> {
    match frame::encode(msg) {
        Ok(f) => send.write_all(&f).await,
        Err(e) => {
            tracing::error!(error = %e, "message does not fit a frame; not sent");
            let _ = send.reset(VarInt::from_u32(omesh_proto::msg::close::TOO_LARGE));
            Err(quinn::WriteError::ClosedStream)
        }
    }
}

fn check_len(prefix: [u8; LEN_PREFIX_BYTES], max: u32) -> Result<usize, ReadError> {
    frame::body_len(prefix, max).map_err(|e| match e {
        FrameError::TooLarge { .. } => ReadError::TooLarge(e.to_string()),
        other => ReadError::Malformed(other.to_string()),
    })
}

/// Read one frame, refusing a length above `max` before reading its body;
/// the body buffer grows as bytes arrive.
pub async fn read_frame<T: DeserializeOwned>(recv: &mut RecvStream, max: u32) -> Result<T, ReadError> {
    let mut prefix = [0u8; LEN_PREFIX_BYTES];
    recv.read_exact(&mut prefix).await.map_err(stream_err)?;
    let len = check_len(prefix, max)?;
    let mut body = Vec::new();
    read_growing(recv, &mut body, len, None).await?;
    frame::decode_body(&body).map_err(|e| ReadError::Malformed(e.to_string()))
}

/// [`read_frame`] for a server: the frame's length is taken from the
/// peer's budget until the returned [`Held`] is dropped, and every piece
/// must arrive within the stall limit.
pub async fn read_frame_limited<T: DeserializeOwned>(
    recv: &mut RecvStream,
    max: u32,
    limits: &ReadLimits,
) -> Result<(T, Held), ReadError> {
    let mut prefix = Vec::with_capacity(LEN_PREFIX_BYTES);
    read_growing(recv, &mut prefix, LEN_PREFIX_BYTES, Some(limits.stall)).await?;
    let len = check_len(prefix[..].try_into().expect("4 bytes"), max)?;
    let held = limits.budget.take(len, limits.stall).await?;
    let mut body = Vec::new();
    read_growing(recv, &mut body, len, Some(limits.stall)).await?;
    let msg = frame::decode_body(&body).map_err(|e| ReadError::Malformed(e.to_string()))?;
    Ok((msg, held))
}

async fn read_record_inner(
    recv: &mut RecvStream,
    limits: Option<&ReadLimits>,
    stall: Option<Duration>,
) -> Result<(RecordHeader, Vec<u8>, Seal, Held), ReadError> {
    let stall = limits.map(|l| l.stall).or(stall);
    let mut buf = Vec::with_capacity(HEADER_BYTES);
    read_growing(recv, &mut buf, HEADER_BYTES, stall).await?;
    let header = RecordHeader::parse(&buf).map_err(|e| match e {
        record::RecordError::TooManyLinks(_) | record::RecordError::BodyTooLarge(_) => {
            ReadError::TooLarge(e.to_string())
        }
        other => ReadError::Malformed(other.to_string()),
    })?;
    let total = header.record_len() as usize;
    let held = match limits {
        Some(l) => l.budget.take(total, l.stall).await?,
        None => Held(None),
    };
    read_growing(recv, &mut buf, total - HEADER_BYTES, stall).await?;
    let seal =
        record::verify_check(&buf).map_err(|e| ReadError::Malformed(format!("record {}: {e}", header.id.short())))?;
    Ok((header, buf, seal, held))
}

/// Read one object record (header first, limits checked, then the rest as
/// it arrives, each piece within `stall` when set) and verify its check
/// hash.
pub async fn read_record(recv: &mut RecvStream, stall: Option<Duration>) -> Result<(RecordHeader, Vec<u8>), ReadError> {
    read_record_inner(recv, None, stall).await.map(|(h, b, _, _)| (h, b))
}

/// [`read_record`] for a server: the record's length is taken from the
/// peer's budget until the returned [`Held`] is dropped (after the record
/// is written), and every piece must arrive within the stall limit.
pub async fn read_record_limited(
    recv: &mut RecvStream,
    limits: &ReadLimits,
) -> Result<(RecordHeader, Vec<u8>, Seal, Held), ReadError> {
    read_record_inner(recv, Some(limits), None).await
}
