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

pub mod tls;

use omesh_core::units::ByteSize;
use omesh_proto::frame::{self, FrameError, LEN_PREFIX_BYTES};
use omesh_proto::record::{self, HEADER_BYTES, RecordHeader};
use quinn::{RecvStream, SendStream, VarInt};
use serde::Deserialize;
use serde::{Serialize, de::DeserializeOwned};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
pub use tls::{PeerIdentity, TlsConfig, TlsMaterial, peer_identity};

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

/// QUIC transport parameters from the `[transport]` settings.
pub fn transport_config(t: &TransportConfig) -> quinn::TransportConfig {
    let mut c = quinn::TransportConfig::default();
    let v = |n: u64| VarInt::from_u64(n).unwrap_or(VarInt::MAX);
    c.stream_receive_window(v(t.stream_receive_window.0));
    c.receive_window(v(t.receive_window.0));
    c.send_window(t.send_window.0);
    c.max_concurrent_bidi_streams(VarInt::from_u32(256));
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
    let mut ep = quinn::Endpoint::new(quinn::EndpointConfig::default(), server, socket, runtime)
        .map_err(|source| TransportError::Io { context: format!("starting QUIC on {bind}"), source })?;
    ep.set_default_client_config(client_config(tls, t)?);
    Ok(ep)
}

/// A framed-read failure, with the close code it maps to.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// The stream ended or broke.
    #[error("stream: {0}")]
    Stream(String),
    /// Frame or record above its limit.
    #[error("{0}")]
    TooLarge(String),
    /// Undecodable bytes.
    #[error("{0}")]
    Malformed(String),
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

fn stream_err(e: quinn::ReadExactError) -> ReadError {
    ReadError::Stream(e.to_string())
}

/// Write one frame.
pub async fn write_frame<T: Serialize>(send: &mut SendStream, msg: &T) -> Result<(), quinn::WriteError> {
    send.write_all(&frame::encode(msg)).await
}

/// Read one frame, refusing a length above `max` before reading its body.
pub async fn read_frame<T: DeserializeOwned>(recv: &mut RecvStream, max: u32) -> Result<T, ReadError> {
    let mut prefix = [0u8; LEN_PREFIX_BYTES];
    recv.read_exact(&mut prefix).await.map_err(stream_err)?;
    let len = frame::body_len(prefix, max).map_err(|e| match e {
        FrameError::TooLarge { .. } => ReadError::TooLarge(e.to_string()),
        other => ReadError::Malformed(other.to_string()),
    })?;
    let mut body = vec![0u8; len];
    recv.read_exact(&mut body).await.map_err(stream_err)?;
    frame::decode_body(&body).map_err(|e| ReadError::Malformed(e.to_string()))
}

/// Read one object record (header first, limits checked, then the rest)
/// and verify its check hash.
pub async fn read_record(recv: &mut RecvStream) -> Result<(RecordHeader, Vec<u8>), ReadError> {
    let mut buf = vec![0u8; HEADER_BYTES];
    recv.read_exact(&mut buf).await.map_err(stream_err)?;
    let header = RecordHeader::parse(&buf).map_err(|e| match e {
        record::RecordError::TooManyLinks(_) | record::RecordError::BodyTooLarge(_) => {
            ReadError::TooLarge(e.to_string())
        }
        other => ReadError::Malformed(other.to_string()),
    })?;
    let total = header.record_len() as usize;
    buf.resize(total, 0);
    recv.read_exact(&mut buf[HEADER_BYTES..]).await.map_err(stream_err)?;
    record::verify_check(&buf).map_err(|e| ReadError::Malformed(format!("record {}: {e}", header.id.short())))?;
    Ok((header, buf))
}
