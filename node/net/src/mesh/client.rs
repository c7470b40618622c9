//! A connection to one peer and the requests this node makes over it.

use crate::transport::{self, PeerIdentity, ReadError, TransportError, read_frame, read_record, write_frame};
use omesh_proto::msg::{self, Capability, ErrorCode, Hello, PeerStatus, Request, Response, SnapshotEntry};
use omesh_proto::{MAX_FRAME_BYTES, ObjectId};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// A failed request.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// Network or TLS.
    #[error(transparent)]
    Transport(#[from] TransportError),
    /// The peer answered with an error.
    #[error("{peer} refused: {message} ({code:?})")]
    Remote {
        /// peer
        peer: String,
        /// kind
        code: ErrorCode,
        /// its message
        message: String,
        /// for Incomplete
        missing: Vec<ObjectId>,
    },
}

impl ClientError {
    /// Whether the connection itself is broken (try another peer).
    pub fn is_connection(&self) -> bool {
        matches!(self, ClientError::Transport(_))
    }
}

/// Resolve `host:port` to socket addresses.
pub async fn resolve(address: &str) -> Result<Vec<SocketAddr>, std::io::Error> {
    let v: Vec<SocketAddr> = tokio::net::lookup_host(address).await?.collect();
    if v.is_empty() {
        return Err(std::io::Error::other("no addresses"));
    }
    Ok(v)
}

/// An open, authenticated connection to a peer.
#[derive(Clone, Debug)]
pub struct PeerConn {
    /// Configured peer name (verified against its certificate).
    pub name: String,
    /// Address connected to.
    pub addr: SocketAddr,
    /// QUIC connection.
    pub conn: quinn::Connection,
    /// Verified identity.
    pub identity: PeerIdentity,
    /// The peer's handshake.
    pub hello: Hello,
    /// Bandwidth limits for replication and repair traffic (restores are
    /// never paced).
    pub limiter: Option<std::sync::Arc<omesh_core::policy::bandwidth::Limiter>>,
    /// Longest wait for an answer, and for each piece of a record being
    /// received (`[transport] request_timeout_secs`).
    pub request_timeout: Duration,
}

/// Default of [`PeerConn::request_timeout`].
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(15);

/// Longest a whole snapshot listing of one peer may take (all its pages).
pub const LIST_DEADLINE: Duration = Duration::from_secs(120);

/// Most snapshot entries accepted from one peer's listing (all sources).
pub const MAX_LISTED_ENTRIES: usize = 1 << 20;

/// Most record bytes accepted from one peer's listing (all sources).
pub const MAX_LISTED_BYTES: usize = 512 << 20;

/// Wait until `n` more bytes to or from `peer` fit within the limits.
pub async fn pace(l: &omesh_core::policy::bandwidth::Limiter, peer: &str, n: u64) {
    if let Some(until) = l.reserve(peer, n) {
        tokio::time::sleep_until(until.into()).await;
    }
}

/// Bytes written between two pacing decisions.
const PACE_PIECE: usize = 64 << 10;

/// Connect to `name` at one of `addrs`, verify its certificate carries
/// `name`, and exchange Hello.
pub async fn connect(
    endpoint: &quinn::Endpoint,
    config: &quinn::ClientConfig,
    me: &str,
    name: &str,
    addrs: &[SocketAddr],
    timeout: Duration,
) -> Result<PeerConn, TransportError> {
    let mut last = String::from("no address");
    for addr in addrs {
        let attempt = async {
            let connecting = endpoint.connect_with(config.clone(), *addr, name).map_err(|e| e.to_string())?;
            let conn = connecting.await.map_err(|e| transport::why_closed(&e))?;
            // a peer that refuses this node's certificate does so after the
            // handshake completed here: its TLS alert is the reason
            let closed = |e: &dyn std::fmt::Display| why_failed(&conn, e);
            let identity = transport::peer_identity(&conn).ok_or("peer certificate has no single node name")?;
            if identity.name != name {
                conn.close(msg::close::UNAUTHORIZED.into(), b"wrong name");
                return Err(format!("certificate is for {:?}, not {name:?}", identity.name));
            }
            let (mut send, mut recv) = conn.open_bi().await.map_err(|e| transport::why_closed(&e))?;
            write_frame(&mut send, &Request::Hello(super::server::hello(me))).await.map_err(|e| closed(&e))?;
            let _ = send.finish();
            let hello =
                match read_frame::<Response>(&mut recv, msg::MAX_HELLO_FRAME_BYTES).await.map_err(|e| closed(&e))? {
                    Response::Hello(h) if h.validate().is_err() => return Err("malformed handshake answer".into()),
                    Response::Hello(h) => h,
                    other => return Err(format!("unexpected handshake answer {other:?}")),
                };
            Ok::<_, String>(PeerConn {
                name: name.into(),
                addr: *addr,
                conn,
                identity,
                hello,
                limiter: None,
                request_timeout: DEFAULT_REQUEST_TIMEOUT,
            })
        };
        match tokio::time::timeout(timeout, attempt).await {
            Ok(Ok(c)) => return Ok(c),
            Ok(Err(e)) => last = e,
            Err(_) => last = format!("no answer within {}s", timeout.as_secs()),
        }
    }
    Err(TransportError::Connect {
        peer: name.into(),
        addr: addrs.iter().map(|a| a.to_string()).collect::<Vec<_>>().join(","),
        message: last,
    })
}

/// Why a stream of `conn` failed: the connection's close reason when it is
/// closed (a TLS refusal names its cause), else the stream's error `e`.
fn why_failed(conn: &quinn::Connection, e: &dyn std::fmt::Display) -> String {
    match conn.close_reason() {
        Some(r) => transport::why_closed(&r),
        None => e.to_string(),
    }
}

fn stream_err(peer: &str, e: impl std::fmt::Display) -> ClientError {
    ClientError::Transport(TransportError::Stream { peer: peer.into(), message: e.to_string() })
}

fn proto_err(peer: &str, e: impl std::fmt::Display) -> ClientError {
    ClientError::Transport(TransportError::Protocol { peer: peer.into(), message: e.to_string() })
}

impl PeerConn {
    fn read_err(&self, e: ReadError) -> ClientError {
        match e {
            ReadError::Stream(m) => self.broken(m),
            other => proto_err(&self.name, other),
        }
    }

    /// A stream failed: the connection's close reason when it is closed
    /// (a TLS refusal names its cause), else the stream's error.
    fn broken(&self, e: impl std::fmt::Display) -> ClientError {
        stream_err(&self.name, why_failed(&self.conn, &e))
    }

    fn check(&self, r: Response) -> Result<Response, ClientError> {
        if let Err(m) = r.validate() {
            return Err(proto_err(&self.name, m));
        }
        match r {
            Response::Error { code, message, missing } => {
                Err(ClientError::Remote { peer: self.name.clone(), code, message, missing })
            }
            other => Ok(other),
        }
    }

    async fn open(&self, req: &Request) -> Result<(quinn::SendStream, quinn::RecvStream), ClientError> {
        let (mut send, recv) = self.conn.open_bi().await.map_err(|e| self.broken(e))?;
        write_frame(&mut send, req).await.map_err(|e| self.broken(e))?;
        Ok((send, recv))
    }

    /// Wait at most `limit` for `f`.
    async fn within<T>(
        &self,
        limit: Duration,
        f: impl std::future::Future<Output = Result<T, ClientError>>,
    ) -> Result<T, ClientError> {
        match tokio::time::timeout(limit, f).await {
            Ok(r) => r,
            Err(_) => Err(stream_err(&self.name, format!("no answer within {}s", limit.as_secs()))),
        }
    }

    async fn simple(&self, req: &Request) -> Result<Response, ClientError> {
        self.within(self.request_timeout, async {
            let (mut send, mut recv) = self.open(req).await?;
            let _ = send.finish();
            let r = read_frame::<Response>(&mut recv, MAX_FRAME_BYTES).await.map_err(|e| self.read_err(e))?;
            self.check(r)
        })
        .await
    }

    /// Round-trip time of one Ping.
    pub async fn ping(&self) -> Result<Duration, ClientError> {
        let t = Instant::now();
        match self.simple(&Request::Ping { nonce: 7 }).await? {
            Response::Pong { nonce: 7 } => Ok(t.elapsed()),
            other => Err(proto_err(&self.name, format!("unexpected answer to Ping: {other:?}"))),
        }
    }

    /// Which of `ids` the peer holds durably for `source`.
    pub async fn have(&self, source: &str, ids: &[ObjectId]) -> Result<Vec<bool>, ClientError> {
        let mut out = Vec::with_capacity(ids.len());
        for chunk in ids.chunks(msg::MAX_HAVE_IDS) {
            match self.simple(&Request::Have { source: source.into(), ids: chunk.to_vec() }).await? {
                Response::Have { held } => out.extend((0..chunk.len()).map(|i| msg::bitmap_get(&held, i))),
                other => return Err(proto_err(&self.name, format!("unexpected answer to Have: {other:?}"))),
            }
        }
        Ok(out)
    }

    /// Send records for our own namespace; returns (new objects, bytes)
    /// once the peer reports them verified and durable.
    pub async fn put_objects(&self, source: &str, records: &[Vec<u8>]) -> Result<(u32, u64), ClientError> {
        let (mut send, mut recv) =
            self.open(&Request::PutObjects { source: source.into(), count: records.len() as u32 }).await?;
        for r in records {
            match &self.limiter {
                None => send.write_all(r).await.map_err(|e| stream_err(&self.name, e))?,
                Some(l) => {
                    for piece in r.chunks(PACE_PIECE) {
                        pace(l, &self.name, piece.len() as u64).await;
                        send.write_all(piece).await.map_err(|e| stream_err(&self.name, e))?;
                    }
                }
            }
        }
        let _ = send.finish();
        // the peer verifies and syncs everything before it answers
        let answer = self
            .within(self.request_timeout * 4, async {
                read_frame::<Response>(&mut recv, MAX_FRAME_BYTES).await.map_err(|e| self.read_err(e))
            })
            .await?;
        match self.check(answer)? {
            Response::Stored { new_objects, bytes, .. } => Ok((new_objects, bytes)),
            other => Err(proto_err(&self.name, format!("unexpected answer to PutObjects: {other:?}"))),
        }
    }

    /// Tell the peer which data key `source`'s snapshots are under (when
    /// it binds sources to keys; an older peer is not asked). A peer bound
    /// to another key refuses with `Forbidden`, naming both.
    pub async fn bind_key(&self, source: &str, key_id: &str) -> Result<(), ClientError> {
        if !self.hello.capabilities.contains(&Capability::KEY_BINDING) {
            return Ok(());
        }
        match self.simple(&Request::BindKey { source: source.into(), key_id: key_id.into() }).await? {
            Response::KeyBound { .. } => Ok(()),
            other => Err(proto_err(&self.name, format!("unexpected answer to BindKey: {other:?}"))),
        }
    }

    /// Commit a snapshot record. `Ok(true)` when newly stored.
    pub async fn put_snapshot(&self, source: &str, record: &[u8]) -> Result<bool, ClientError> {
        match self.simple(&Request::PutSnapshot { source: source.into(), record: record.to_vec() }).await? {
            Response::SnapshotCommitted { new, .. } => Ok(new),
            other => Err(proto_err(&self.name, format!("unexpected answer to PutSnapshot: {other:?}"))),
        }
    }

    /// All snapshots the peer holds, for one source or (source by source,
    /// from the peer's status) for all. Bounded: every page within the
    /// request timeout, the whole listing within [`LIST_DEADLINE`], at most
    /// [`MAX_LISTED_ENTRIES`] entries and [`MAX_LISTED_BYTES`] of records,
    /// and every page must move forward; a peer that breaks a bound gets an
    /// error naming it, never a hang.
    pub async fn list_snapshots(&self, source: Option<&str>) -> Result<Vec<SnapshotEntry>, ClientError> {
        self.within(LIST_DEADLINE, async {
            let names = match source {
                Some(s) => vec![s.to_string()],
                None => self.status().await?.sources.into_iter().map(|u| u.source).collect(),
            };
            let mut out: Vec<SnapshotEntry> = Vec::new();
            let mut bytes = 0usize;
            for name in names {
                if !msg::valid_name(&name) {
                    return Err(proto_err(&self.name, format!("listed an invalid source name {name:?}")));
                }
                self.list_source(&name, &mut out, &mut bytes).await?;
            }
            Ok(out)
        })
        .await
    }

    async fn list_source(
        &self,
        source: &str,
        out: &mut Vec<SnapshotEntry>,
        bytes: &mut usize,
    ) -> Result<(), ClientError> {
        let mut after: Option<ObjectId> = None;
        loop {
            let req = Request::ListSnapshots { source: Some(source.to_string()), after };
            let (items, more) = match self.simple(&req).await? {
                Response::Snapshots { items, more } => (items, more),
                other => return Err(proto_err(&self.name, format!("unexpected answer to ListSnapshots: {other:?}"))),
            };
            for e in items {
                if e.source != source || after.is_some_and(|a| e.id <= a) {
                    return Err(proto_err(
                        &self.name,
                        format!("listing of {source} is out of order or names another source ({})", e.source),
                    ));
                }
                after = Some(e.id);
                *bytes += e.record.len();
                out.push(e);
                if out.len() > MAX_LISTED_ENTRIES || *bytes > MAX_LISTED_BYTES {
                    return Err(proto_err(
                        &self.name,
                        format!(
                            "listed more than {MAX_LISTED_ENTRIES} snapshots or {MAX_LISTED_BYTES} bytes of records; refusing the rest"
                        ),
                    ));
                }
            }
            if !more {
                return Ok(());
            }
            if after.is_none() {
                return Err(proto_err(&self.name, "an empty listing page said more pages follow"));
            }
        }
    }

    /// Fetch records (verified check hash; the caller decrypts). Returns
    /// the records in request order of the held ids, and the ids missing.
    pub async fn get_objects(
        &self,
        source: &str,
        ids: &[ObjectId],
    ) -> Result<(Vec<Vec<u8>>, Vec<ObjectId>), ClientError> {
        self.get_objects_inner(source, ids, false).await
    }

    /// [`PeerConn::get_objects`] within the bandwidth limits (repair
    /// traffic).
    pub async fn fetch_objects(
        &self,
        source: &str,
        ids: &[ObjectId],
    ) -> Result<(Vec<Vec<u8>>, Vec<ObjectId>), ClientError> {
        self.get_objects_inner(source, ids, true).await
    }

    async fn get_objects_inner(
        &self,
        source: &str,
        ids: &[ObjectId],
        paced: bool,
    ) -> Result<(Vec<Vec<u8>>, Vec<ObjectId>), ClientError> {
        let (mut send, mut recv) = self.open(&Request::GetObjects { source: source.into(), ids: ids.to_vec() }).await?;
        let _ = send.finish();
        let answer = self
            .within(self.request_timeout, async {
                read_frame::<Response>(&mut recv, MAX_FRAME_BYTES).await.map_err(|e| self.read_err(e))
            })
            .await?;
        let (count, mut missing) = match self.check(answer)? {
            Response::Objects { count, missing } => (count, missing),
            other => return Err(proto_err(&self.name, format!("unexpected answer to GetObjects: {other:?}"))),
        };
        if count as usize > ids.len() {
            return Err(proto_err(&self.name, "more objects announced than requested"));
        }
        let mut out = Vec::with_capacity(count as usize);
        let held: Vec<&ObjectId> = ids.iter().filter(|i| !missing.contains(i)).collect();
        for i in 0..count as usize {
            let mut status = [0u8; 1];
            self.within(self.request_timeout, async {
                recv.read_exact(&mut status).await.map_err(|e| stream_err(&self.name, e))
            })
            .await?;
            if status[0] == 0 {
                if let Some(id) = held.get(i) {
                    missing.push(**id);
                }
                continue;
            }
            let (_, rec) = read_record(&mut recv, Some(self.request_timeout)).await.map_err(|e| self.read_err(e))?;
            if let (true, Some(l)) = (paced, &self.limiter) {
                pace(l, &self.name, rec.len() as u64).await;
            }
            out.push(rec);
        }
        Ok((out, missing))
    }

    /// One snapshot record.
    pub async fn get_snapshot(&self, source: &str, id: ObjectId) -> Result<Vec<u8>, ClientError> {
        match self.simple(&Request::GetSnapshot { source: source.into(), id }).await? {
            Response::Snapshot { record } => Ok(record),
            other => Err(proto_err(&self.name, format!("unexpected answer to GetSnapshot: {other:?}"))),
        }
    }

    /// Ask the peer to delete one of our snapshots. It refuses unless its
    /// own `[retention]` honours source deletes and the snapshot is older
    /// than its retention lock.
    pub async fn delete_snapshot(&self, source: &str, id: ObjectId) -> Result<(), ClientError> {
        match self.simple(&Request::DeleteSnapshot { source: source.into(), id }).await? {
            Response::Forgotten { .. } => Ok(()),
            other => Err(proto_err(&self.name, format!("unexpected answer to DeleteSnapshot: {other:?}"))),
        }
    }

    /// Storage summary.
    pub async fn status(&self) -> Result<PeerStatus, ClientError> {
        match self.simple(&Request::Status).await? {
            Response::Status(s) => Ok(s),
            other => Err(proto_err(&self.name, format!("unexpected answer to Status: {other:?}"))),
        }
    }
}
