//! Serving the mesh protocol: accept connections, authenticate, dispatch
//! one request per stream.
//!
//! Authorization: any node with a valid site certificate may ask what is
//! held, list snapshots and fetch (encrypted) objects; only a node writing
//! into its own namespace (its certificate name), and listed as a peer
//! unless `accept_from = "site"`, may store. Overwriting is never allowed;
//! a source's request to forget one of its snapshots is honoured only when
//! this node's `[retention]` allows it and the snapshot is older than the
//! retention lock. A malformed or oversized frame or record closes that
//! connection with a QUIC error code; other connections are unaffected.

use super::{Allowance, Counters, KeyBinding, SourceStore, Stores, WriteRefused};
use crate::residency::InboundCheck;
use crate::transport::{
    self, Budget, Held, PEER_BUFFER_BYTES, PeerIdentity, ReadError, ReadLimits, TransportConfig, read_frame,
    read_frame_limited, read_record_limited, write_frame,
};
use omesh_core::policy::retention::RetentionPolicy;
use omesh_core::store::forget::{DeleteRefusal, handle_delete_request};
use omesh_core::units::FreeFloor;
use omesh_proto::msg::{
    self, Capability, ErrorCode, Hello, MAX_LIST_PAGE_BYTES, MAX_LIST_SNAPSHOTS, MAX_STATUS_SOURCES, PeerStatus,
    Request, Response, SnapshotEntry, SourceUsage, close,
};
use omesh_proto::{MAX_FRAME_BYTES, ObjectId, ObjectKind, Record};
use quinn::{RecvStream, SendStream};
use serde::Deserialize;
use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

/// Who may store replicas on this node.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum AcceptFrom {
    /// Only nodes listed as `[[peer]]` (default).
    #[default]
    Peers,
    /// Any node with a valid site certificate.
    Site,
}

/// What a serving node allows, from its `[storage]`, `[[peer]]` and
/// `[retention]` settings.
#[derive(Clone, Debug)]
pub struct ServePolicy {
    /// This node's name.
    pub node: String,
    /// Who may store here.
    pub accept_from: AcceptFrom,
    /// Configured peers, each with its overrides.
    pub peers: HashMap<String, PeerTerms>,
    /// Most bytes one source may store here (0 = unlimited).
    pub default_quota: u64,
    /// Free space every write leaves on the disk (`[storage] min_free`).
    pub min_free: FreeFloor,
    /// Retention: whether and when a source may ask to forget a snapshot.
    pub retention: RetentionPolicy,
}

/// What a `[[peer]]` overrides of the `[storage]` defaults.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct PeerTerms {
    /// Quota (bytes).
    pub quota: Option<u64>,
    /// Free-space floor.
    pub min_free: Option<FreeFloor>,
}

impl ServePolicy {
    /// Quota for `source` here (0 = unlimited).
    pub fn quota_for(&self, source: &str) -> u64 {
        self.peers.get(source).and_then(|t| t.quota).unwrap_or(self.default_quota)
    }

    /// What writes for `source` may use here.
    pub fn allowance(&self, source: &str) -> Allowance {
        Allowance {
            quota: self.quota_for(source),
            min_free: self.peers.get(source).and_then(|t| t.min_free).unwrap_or(self.min_free),
        }
    }

    /// Whether `name` is a configured peer.
    pub fn is_peer(&self, name: &str) -> bool {
        self.peers.contains_key(name)
    }
}

/// Shared state of a serving node.
pub struct ServerCtx {
    /// What this node allows.
    pub policy: ServePolicy,
    /// QUIC tuning for accepted connections.
    pub transport: TransportConfig,
    /// Stores.
    pub stores: Arc<Stores>,
    /// Byte counters.
    pub counters: Arc<Counters>,
    /// Start time.
    pub started: Instant,
    /// Shutdown signal.
    pub cancel: CancellationToken,
    /// Inbound address policy (residency); returns an error message to refuse.
    pub inbound_check: Option<InboundCheck>,
    /// Certificates and the CRL: each connection is accepted with the
    /// current server config.
    pub tls: Arc<transport::TlsMaterial>,
    /// Open connections and buffer budget of each peer.
    pub peers: PeerLimits,
}

/// Most connections one peer (certificate name) may have open here at
/// once; a further one is closed with [`close::TOO_MANY`].
pub const MAX_CONNECTIONS_PER_PEER: usize = 4;

/// What each connected peer holds here: its open connections and its
/// receive-buffer budget ([`PEER_BUFFER_BYTES`] for all of them together).
#[derive(Default)]
pub struct PeerLimits {
    map: Mutex<HashMap<String, (usize, Budget)>>,
}

/// One registered connection of a peer; unregisters when dropped.
pub struct PeerSlot<'a> {
    limits: &'a PeerLimits,
    name: String,
    /// The peer's budget.
    pub budget: Budget,
}

impl PeerLimits {
    /// Register a connection of `name`; `None` when it has
    /// [`MAX_CONNECTIONS_PER_PEER`] open already.
    pub fn enter(&self, name: &str) -> Option<PeerSlot<'_>> {
        let mut m = self.map.lock().unwrap_or_else(|e| e.into_inner());
        let e = m.entry(name.to_string()).or_insert_with(|| (0, Budget::new(PEER_BUFFER_BYTES)));
        if e.0 >= MAX_CONNECTIONS_PER_PEER {
            return None;
        }
        e.0 += 1;
        Some(PeerSlot { limits: self, name: name.to_string(), budget: e.1.clone() })
    }

    /// Open connections of `name`.
    pub fn connections(&self, name: &str) -> usize {
        self.map.lock().unwrap_or_else(|e| e.into_inner()).get(name).map_or(0, |e| e.0)
    }
}

impl Drop for PeerSlot<'_> {
    fn drop(&mut self) {
        let mut m = self.limits.map.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(e) = m.get_mut(&self.name) {
            e.0 -= 1;
            if e.0 == 0 {
                m.remove(&self.name);
            }
        }
    }
}

/// Our handshake.
pub fn hello(name: &str) -> Hello {
    Hello {
        node: name.into(),
        software: format!("omesh {}", env!("CARGO_PKG_VERSION")),
        protocol: omesh_proto::PROTOCOL_VERSION,
        capabilities: vec![Capability::STORE, Capability::SERVE, Capability::KEY_BINDING],
    }
}

/// Most connections served at once (all peers together): a node beyond it
/// is refused until one closes.
pub const MAX_CONNECTIONS: usize = 256;

/// Accept connections until cancelled, then close the endpoint and wait
/// for every connection task. At most [`MAX_CONNECTIONS`] are served at
/// once; each connection's task holds one permit.
pub async fn serve(endpoint: quinn::Endpoint, ctx: Arc<ServerCtx>) {
    let mut tasks = JoinSet::new();
    let permits = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    loop {
        tokio::select! {
            _ = ctx.cancel.cancelled() => break,
            inc = endpoint.accept() => match inc {
                // nothing at all goes to an address outside the boundary,
                // not even a refusal
                Some(i) if refused_address(&ctx, &i) => i.ignore(),
                Some(i) => match permits.clone().try_acquire_owned() {
                    Ok(permit) => {
                        let ctx = ctx.clone();
                        tasks.spawn(async move {
                            handle_incoming(i, ctx).await;
                            drop(permit);
                        });
                    }
                    Err(_) => {
                        tracing::warn!(remote = %i.remote_address(), max = MAX_CONNECTIONS, "too many connections; refused");
                        i.refuse();
                    }
                },
                None => break,
            },
        }
        while tasks.try_join_next().is_some() {}
    }
    endpoint.close(close::SHUTDOWN.into(), b"node shutting down");
    tasks.abort_all();
    while tasks.join_next().await.is_some() {}
}

fn refused_address(ctx: &ServerCtx, inc: &quinn::Incoming) -> bool {
    let remote = inc.remote_address();
    match &ctx.inbound_check {
        Some(check) => match check(remote) {
            Ok(()) => false,
            Err(why) => {
                tracing::warn!(%remote, reason = %why, "refused inbound connection");
                true
            }
        },
        None => false,
    }
}

async fn handle_incoming(inc: quinn::Incoming, ctx: Arc<ServerCtx>) {
    let remote = inc.remote_address();
    ctx.tls.refresh_async().await;
    let config = match transport::server_config(&ctx.tls, &ctx.transport) {
        Ok(c) => Arc::new(c),
        Err(e) => {
            tracing::error!(%remote, error = %e, "cannot build the TLS configuration; connection refused");
            inc.refuse();
            return;
        }
    };
    let connecting = match inc.accept_with(config) {
        Ok(c) => c,
        Err(e) => {
            tracing::info!(%remote, error = %e, "connection refused");
            return;
        }
    };
    let conn = match connecting.await {
        Ok(c) => c,
        Err(e) => {
            // a refused certificate is an operator's business (a foreign or
            // revoked node, an expired certificate): warn, with the cause
            match &e {
                quinn::ConnectionError::TransportError(_) | quinn::ConnectionError::ConnectionClosed(_) => {
                    tracing::warn!(%remote, reason = %transport::why_closed(&e), "TLS handshake refused")
                }
                _ => tracing::info!(%remote, error = %e, "handshake did not complete"),
            }
            return;
        }
    };
    let Some(peer) = transport::peer_identity(&conn) else {
        conn.close(close::UNAUTHORIZED.into(), b"certificate has no single node name");
        return;
    };
    let Some(slot) = ctx.peers.enter(&peer.name) else {
        tracing::warn!(peer = %peer.name, %remote, max = MAX_CONNECTIONS_PER_PEER, "too many connections from this peer; closed");
        conn.close(close::TOO_MANY.into(), b"too many connections from this node");
        return;
    };
    tracing::debug!(%remote, peer = %peer.name, "connection accepted");
    // handshake stream
    let hs = tokio::time::timeout(Duration::from_secs(10), async {
        let (mut send, mut recv) = conn.accept_bi().await.map_err(|e| e.to_string())?;
        match read_frame::<Request>(&mut recv, msg::MAX_HELLO_FRAME_BYTES).await {
            Ok(Request::Hello(h)) if h.validate().is_err() => Err("malformed Hello".to_string()),
            Ok(Request::Hello(h)) if h.protocol == omesh_proto::PROTOCOL_VERSION => {
                write_frame(&mut send, &Response::Hello(hello(&ctx.policy.node))).await.map_err(|e| e.to_string())?;
                let _ = send.finish();
                Ok(h)
            }
            Ok(other) => Err(format!("expected Hello, got {other:?}")),
            Err(e) => Err(e.to_string()),
        }
    })
    .await;
    match hs {
        Ok(Ok(h)) => {
            // it is up: a node that found it unreachable may try it again now
            ctx.counters.saw_inbound(&peer.name);
            tracing::debug!(peer = %peer.name, software = %h.software, "handshake done")
        }
        Ok(Err(e)) => {
            tracing::warn!(peer = %peer.name, %remote, error = %e, "handshake failed");
            conn.close(close::HANDSHAKE.into(), b"handshake failed");
            return;
        }
        Err(_) => {
            conn.close(close::HANDSHAKE.into(), b"handshake timeout");
            return;
        }
    }
    let limits = ReadLimits {
        budget: slot.budget.clone(),
        stall: Duration::from_secs(ctx.transport.request_timeout_secs.max(1)),
    };
    let mut streams = JoinSet::new();
    let mut crl = ctx.tls.subscribe();
    // a CRL that came into force during the handshake
    if ctx.tls.is_revoked(&peer.serial) {
        conn.close(close::UNAUTHORIZED.into(), b"certificate revoked");
        return;
    }
    loop {
        tokio::select! {
            _ = ctx.cancel.cancelled() => {
                conn.close(close::SHUTDOWN.into(), b"node shutting down");
                break;
            }
            // a new CRL applies to this live connection too
            Ok(()) = crl.changed() => {
                if ctx.tls.is_revoked(&peer.serial) {
                    tracing::warn!(peer = %peer.name, %remote, "certificate revoked; closing its open connection");
                    conn.close(close::UNAUTHORIZED.into(), b"certificate revoked");
                    break;
                }
            }
            s = conn.accept_bi() => match s {
                Ok((send, recv)) => {
                    streams.spawn(handle_stream(send, recv, peer.clone(), conn.clone(), ctx.clone(), limits.clone()));
                }
                Err(_) => break,
            },
        }
        while streams.try_join_next().is_some() {}
    }
    streams.abort_all();
    while streams.join_next().await.is_some() {}
    drop(slot);
}

/// How a request ended badly.
enum Fail {
    /// Answer with an error response.
    Respond(ErrorCode, String, Vec<ObjectId>),
    /// Close the whole connection (protocol violation).
    Close(u32, String),
    /// The stream broke; nothing to answer.
    Gone,
}

impl From<ReadError> for Fail {
    fn from(e: ReadError) -> Self {
        match e {
            ReadError::Stream(_) => Fail::Gone,
            ReadError::Busy(m) => Fail::Respond(ErrorCode::Busy, m, vec![]),
            other => Fail::Close(other.close_code(), other.to_string()),
        }
    }
}

fn internal(e: impl std::fmt::Display) -> Fail {
    Fail::Respond(ErrorCode::Internal, e.to_string(), vec![])
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T, Fail> + Send + 'static) -> Result<T, Fail> {
    tokio::task::spawn_blocking(f).await.map_err(|e| internal(format!("worker failed: {e}")))?
}

async fn handle_stream(
    mut send: SendStream,
    mut recv: RecvStream,
    peer: PeerIdentity,
    conn: quinn::Connection,
    ctx: Arc<ServerCtx>,
    limits: ReadLimits,
) {
    // the request's bytes stay counted against the peer until it is
    // answered; a failed read ends like any failed request (busy: answered,
    // broken frame: the connection closed, broken stream: nothing)
    let _held;
    let result = match read_frame_limited::<Request>(&mut recv, MAX_FRAME_BYTES, &limits).await.map_err(Fail::from) {
        Err(f) => {
            if matches!(f, Fail::Respond(..)) {
                let _ = recv.stop(0u32.into());
            }
            Err(f)
        }
        Ok((req, held)) => {
            _held = held;
            match req.validate() {
                Err(m) => Err(Fail::Respond(ErrorCode::BadRequest, m, vec![])),
                Ok(()) => dispatch(req, &mut send, &mut recv, &peer, &ctx, &limits).await,
            }
        }
    };
    match result {
        Ok(()) => {}
        Err(Fail::Respond(code, message, missing)) => {
            tracing::info!(peer = %peer.name, ?code, %message, "request refused");
            let mut message = message;
            message.truncate(msg::MAX_MESSAGE_BYTES);
            let _ = write_frame(&mut send, &Response::Error { code, message, missing }).await;
        }
        Err(Fail::Close(code, message)) => {
            tracing::warn!(peer = %peer.name, code, %message, "closing connection: protocol violation");
            conn.close(code.into(), message.as_bytes());
            return;
        }
        Err(Fail::Gone) => return,
    }
    let _ = send.finish();
}

fn may_write(cfg: &ServePolicy, peer: &PeerIdentity, source: &str) -> Result<(), Fail> {
    if source != peer.name {
        return Err(Fail::Respond(
            ErrorCode::Forbidden,
            format!("{} may only store into its own namespace, not {source:?}", peer.name),
            vec![],
        ));
    }
    if source == cfg.node {
        return Err(Fail::Respond(
            ErrorCode::Forbidden,
            "a node cannot store into the namespace of the node it talks to".into(),
            vec![],
        ));
    }
    if cfg.accept_from == AcceptFrom::Peers && !cfg.is_peer(&peer.name) {
        return Err(Fail::Respond(
            ErrorCode::Forbidden,
            format!(
                "{} is not a [[peer]] of {}; add it there (or set [storage] accept_from = \"site\") to store its replicas",
                peer.name, cfg.node
            ),
            vec![],
        ));
    }
    Ok(())
}

async fn source_store(ctx: &Arc<ServerCtx>, source: &str, create: bool) -> Result<Option<Arc<SourceStore>>, Fail> {
    let stores = ctx.stores.clone();
    let source = source.to_string();
    blocking(move || stores.get(&source, create).map_err(internal)).await
}

async fn dispatch(
    req: Request,
    send: &mut SendStream,
    recv: &mut RecvStream,
    peer: &PeerIdentity,
    ctx: &Arc<ServerCtx>,
    limits: &ReadLimits,
) -> Result<(), Fail> {
    match req {
        Request::Hello(_) => Err(Fail::Close(close::PROTOCOL_VIOLATION, "Hello sent twice".into())),
        Request::Ping { nonce } => respond(send, &Response::Pong { nonce }).await,
        Request::Have { source, ids } => {
            let held = match source_store(ctx, &source, false).await? {
                None => vec![0u8; ids.len().div_ceil(8)],
                Some(s) => {
                    let present = blocking(move || s.store.durable_many(&ids).map_err(internal)).await?;
                    let mut bits = vec![0u8; present.len().div_ceil(8)];
                    for (i, p) in present.iter().enumerate() {
                        if *p {
                            msg::bitmap_set(&mut bits, i);
                        }
                    }
                    bits
                }
            };
            respond(send, &Response::Have { held }).await
        }
        Request::PutObjects { source, count } => put_objects(ctx, peer, &source, count, send, recv, limits).await,
        Request::PutSnapshot { source, record } => put_snapshot(ctx, peer, &source, record, send).await,
        Request::BindKey { source, key_id } => bind_key(ctx, peer, &source, key_id, send).await,
        Request::ListSnapshots { source, after } => list_snapshots(ctx, source, after, send).await,
        Request::GetObjects { source, ids } => get_objects(ctx, peer, &source, ids, send).await,
        Request::GetSnapshot { source, id } => {
            let Some(s) = source_store(ctx, &source, false).await? else {
                return Err(Fail::Respond(ErrorCode::NotFound, format!("no snapshots of {source} here"), vec![]));
            };
            let record = blocking(move || {
                s.store.read_snapshot_record(&id).map_err(|e| Fail::Respond(ErrorCode::NotFound, e.to_string(), vec![]))
            })
            .await?;
            respond(send, &Response::Snapshot { record }).await
        }
        Request::DeleteSnapshot { source, id } => {
            let Some(store) = source_store(ctx, &source, false).await? else {
                return Err(Fail::Respond(ErrorCode::NotFound, format!("no snapshots of {source} here"), vec![]));
            };
            let node = ctx.policy.node.clone();
            let retention = ctx.policy.retention.clone();
            let requester = peer.name.clone();
            let src = source.clone();
            let r = blocking(move || {
                Ok(handle_delete_request(
                    &node,
                    &retention,
                    &store.store,
                    &requester,
                    &src,
                    &id,
                    omesh_core::time::now(),
                ))
            })
            .await?;
            match r {
                Ok(()) => {
                    tracing::warn!(peer = %peer.name, %source, snapshot = %id.short(), "snapshot forgotten at its source's request (outside the retention lock)");
                    respond(send, &Response::Forgotten { id }).await
                }
                Err(refusal) => {
                    tracing::warn!(peer = %peer.name, %source, snapshot = %id.short(), reason = %refusal, "refused a request to delete a stored snapshot");
                    let code = match refusal {
                        DeleteRefusal::Forbidden(_) => ErrorCode::Forbidden,
                        DeleteRefusal::NotFound(_) => ErrorCode::NotFound,
                        DeleteRefusal::Internal(_) => ErrorCode::Internal,
                    };
                    Err(Fail::Respond(code, refusal.to_string(), vec![]))
                }
            }
        }
        Request::Status => {
            let stores = ctx.stores.clone();
            let policy = ctx.policy.clone();
            let sources = blocking(move || {
                let mut v = Vec::new();
                for name in stores.source_names().into_iter().take(MAX_STATUS_SOURCES) {
                    if let Ok(Some(s)) = stores.get(&name, false) {
                        v.push(SourceUsage {
                            bytes: s.store.bytes_stored().unwrap_or(0),
                            objects: s.store.object_count().unwrap_or(0),
                            snapshots: s.store.snapshot_ids().map(|x| x.len() as u64).unwrap_or(0),
                            quota_bytes: policy.quota_for(&name),
                            source: name,
                        });
                    }
                }
                Ok(v)
            })
            .await?;
            let st = PeerStatus {
                node: ctx.policy.node.clone(),
                software: hello(&ctx.policy.node).software,
                uptime_secs: ctx.started.elapsed().as_secs(),
                sources,
            };
            respond(send, &Response::Status(st)).await
        }
    }
}

async fn respond(send: &mut SendStream, r: &Response) -> Result<(), Fail> {
    write_frame(send, r).await.map_err(|_| Fail::Gone)
}

async fn put_objects(
    ctx: &Arc<ServerCtx>,
    peer: &PeerIdentity,
    source: &str,
    count: u32,
    send: &mut SendStream,
    recv: &mut RecvStream,
    limits: &ReadLimits,
) -> Result<(), Fail> {
    may_write(&ctx.policy, peer, source)?;
    let store = source_store(ctx, source, true).await?.expect("created");
    let allow = ctx.policy.allowance(source);
    let counters = ctx.counters.peer(&peer.name);
    // each record keeps its bytes counted against the peer's budget until
    // it is written; the writer admits each record against the quota and
    // the free-space floor at the moment it writes it, from one account
    // that parallel streams share
    let (tx, mut rx) = tokio::sync::mpsc::channel::<(ObjectId, ObjectKind, omesh_proto::Seal, Vec<u8>, Held)>(8);
    let writer_store = store.clone();
    let writer = tokio::task::spawn_blocking(move || -> Result<u32, WriteRefused> {
        let mark = writer_store.start_stream();
        let mut new = 0;
        while let Some((id, kind, seal, bytes, held)) = rx.blocking_recv() {
            if writer_store.write_record(id, kind, seal, &bytes, allow)? {
                new += 1;
            }
            drop((bytes, held));
        }
        // acknowledged only when durable and none of it was dropped
        writer_store.finish_stream(mark)?;
        Ok(new)
    });
    let mut bytes = 0u64;
    for _ in 0..count {
        let (header, rec, seal, held) = match read_record_limited(recv, limits).await {
            Ok(r) => r,
            Err(e) => {
                drop(tx);
                let _ = writer.await;
                return Err(e.into());
            }
        };
        bytes += rec.len() as u64;
        counters.bytes_received.fetch_add(rec.len() as u64, Ordering::Relaxed);
        counters.objects_received.fetch_add(1, Ordering::Relaxed);
        if tx.send((header.id, header.kind, seal, rec, held)).await.is_err() {
            // the writer stopped (refused or failed): its answer follows
            break;
        }
    }
    drop(tx);
    let new = match writer.await.map_err(internal)? {
        Ok(n) => n,
        Err(e) if matches!(e, WriteRefused::Quota { .. }) || e.disk_full() => {
            let _ = recv.stop(0u32.into());
            let fix = match e {
                WriteRefused::Quota { .. } => "raise `quota` for this peer there, or forget snapshots",
                _ => "free space there, or lower its [storage] min_free",
            };
            tracing::warn!(peer = %peer.name, %source, error = %e, "refused replicated records: {fix}");
            return Err(Fail::Respond(
                ErrorCode::QuotaExceeded,
                format!("{source} cannot store more on {}: {e}; {fix}", ctx.policy.node),
                vec![],
            ));
        }
        Err(e) => return Err(internal(e)),
    };
    respond(send, &Response::Stored { objects: count, new_objects: new, bytes }).await
}

async fn put_snapshot(
    ctx: &Arc<ServerCtx>,
    peer: &PeerIdentity,
    source: &str,
    record: Vec<u8>,
    send: &mut SendStream,
) -> Result<(), Fail> {
    may_write(&ctx.policy, peer, source)?;
    let (rec, used) = Record::decode(&record)
        .map_err(|e| Fail::Respond(ErrorCode::Corrupt, format!("snapshot record: {e}"), vec![]))?;
    if used != record.len() || rec.kind != ObjectKind::Snapshot {
        return Err(Fail::Respond(ErrorCode::BadRequest, "not a snapshot record".into(), vec![]));
    }
    // authenticity before anything is stored: signed by the source whose
    // namespace this is, with a site certificate
    let attested = match ctx.tls.attest_verifier().verify(&rec, source, std::time::SystemTime::now()) {
        Ok(a) => a,
        Err(e) => {
            ctx.counters.peer(&peer.name).forged_records.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            tracing::warn!(peer = %peer.name, %source, snapshot = %rec.id.short(), error = %e, "refused a snapshot record that its source did not sign");
            return Err(Fail::Respond(
                ErrorCode::Forbidden,
                format!("snapshot {} of {source}: {e}", rec.id.short()),
                vec![],
            ));
        }
    };
    let store = source_store(ctx, source, true).await?.expect("created");
    let id = rec.id;
    let links = (rec.links.clone(), rec.seals.clone());
    let src = source.to_string();
    let allow = ctx.policy.allowance(source);
    let node = ctx.policy.node.clone();
    let new = blocking(move || {
        omesh_core::failpoint::hit("replica.before_commit");
        let existing = store.store.snapshot_ids().map_err(internal)?;
        if existing.contains(&id) {
            let old = store.store.read_snapshot_record(&id).map_err(internal)?;
            if old == record {
                return Ok(false);
            }
            return Err(Fail::Respond(
                ErrorCode::Forbidden,
                format!("snapshot {} of {src} is already stored and is never overwritten", id.short()),
                vec![],
            ));
        }
        // no garbage collection sweep between the check and the commit
        let _commit = store.store.commit_guard();
        let missing = match store.missing_below(&links.0, &links.1, msg::MAX_HAVE_IDS) {
            Ok(m) => m,
            Err(e @ (omesh_core::store::StoreError::NotNamed { .. } | omesh_core::store::StoreError::Object(..))) => {
                return Err(Fail::Respond(
                    ErrorCode::Corrupt,
                    format!("snapshot {} of {src}: {e}", id.short()),
                    vec![],
                ));
            }
            Err(e) => return Err(internal(e)),
        };
        if !missing.is_empty() {
            return Err(Fail::Respond(
                ErrorCode::Incomplete,
                format!("snapshot {} of {src} references {} objects not stored here yet", id.short(), missing.len()),
                missing,
            ));
        }
        // snapshot records count toward the quota like any stored byte
        store.admit_snapshot(record.len() as u64, allow).map_err(|e| match e {
            WriteRefused::Store(e) => internal(e),
            e => Fail::Respond(ErrorCode::QuotaExceeded, format!("{src} cannot store more on {node}: {e}"), vec![]),
        })?;
        // its time here: the signed creation time, never later than now
        let t = omesh_core::time::signed_time_capped(attested.created);
        store.store.put_snapshot_record_at(&id, &record, t).map_err(internal)
    })
    .await?;
    if new {
        tracing::info!(peer = %peer.name, snapshot = %id.short(), "snapshot replica committed");
    }
    respond(send, &Response::SnapshotCommitted { id, new }).await
}

/// Bind the sender's namespace to its data key, or refuse a second key
/// (a rebuilt source that made a new key instead of importing its old one
/// would otherwise fork its history here into two keys).
async fn bind_key(
    ctx: &Arc<ServerCtx>,
    peer: &PeerIdentity,
    source: &str,
    key_id: String,
    send: &mut SendStream,
) -> Result<(), Fail> {
    may_write(&ctx.policy, peer, source)?;
    source_store(ctx, source, true).await?;
    let (stores, src, kid) = (ctx.stores.clone(), source.to_string(), key_id.clone());
    let bound = blocking(move || stores.layout().bind_key(&src, &kid, false).map_err(internal)).await?;
    let node = &ctx.policy.node;
    match bound {
        KeyBinding::New => {
            tracing::info!(peer = %peer.name, key = %key_id, "{source}'s snapshots are bound to its key here");
            respond(send, &Response::KeyBound { key_id, new: true }).await
        }
        KeyBinding::Same => respond(send, &Response::KeyBound { key_id, new: false }).await,
        KeyBinding::Other(bound) => {
            tracing::warn!(peer = %peer.name, key = %key_id, bound = %bound, "refused {source}'s snapshots under a new key: its snapshots here are under another key; accept it with `omesh key accept {source} {key_id}` on this node if {source} really starts a new history");
            Err(Fail::Respond(
                ErrorCode::Forbidden,
                format!(
                    "{node} holds {source}'s snapshots under key {bound}, not under this node's key {key_id}. \
                     If {source} was rebuilt, import its old key (`omesh key import --config FILE OLD.key`, \
                     while its own store is still unused) and back up again; to start a new history under \
                     key {key_id} instead, run `omesh key accept {source} {key_id} --config FILE` on {node}"
                ),
                vec![],
            ))
        }
    }
}

async fn list_snapshots(
    ctx: &Arc<ServerCtx>,
    source: Option<String>,
    after: Option<ObjectId>,
    send: &mut SendStream,
) -> Result<(), Fail> {
    let stores = ctx.stores.clone();
    let (items, more) = blocking(move || {
        let names = match source {
            Some(s) => vec![s],
            None => stores.source_names(),
        };
        let mut all: Vec<(String, ObjectId)> = Vec::new();
        for n in &names {
            if let Ok(Some(s)) = stores.get(n, false) {
                for id in s.store.snapshot_ids().unwrap_or_default() {
                    all.push((n.clone(), id));
                }
            }
        }
        all.sort();
        if let Some(a) = after {
            // `after` comes with a source (Request::validate)
            all.retain(|(_, id)| *id > a);
        }
        // a page is bounded by count and by bytes, so it always fits a frame
        let mut items = Vec::new();
        let mut page_bytes = 0usize;
        let mut more = false;
        for (n, id) in all {
            if items.len() == MAX_LIST_SNAPSHOTS {
                more = true;
                break;
            }
            let Ok(Some(s)) = stores.get(&n, false) else { continue };
            let record = match s.store.read_snapshot_record(&id) {
                Ok(r) if r.len() <= msg::MAX_SNAPSHOT_RECORD_BYTES => r,
                Ok(r) => {
                    tracing::error!(source = %n, snapshot = %id.short(), bytes = r.len(), "stored snapshot record is larger than any valid one; not listed");
                    continue;
                }
                Err(_) => continue,
            };
            let e = SnapshotEntry { stored_ns: s.store.snapshot_stored_ns(&id), source: n, id, record };
            if page_bytes + e.encoded_len_bound() > MAX_LIST_PAGE_BYTES && !items.is_empty() {
                more = true;
                break;
            }
            page_bytes += e.encoded_len_bound();
            items.push(e);
        }
        Ok((items, more))
    })
    .await?;
    respond(send, &Response::Snapshots { items, more }).await
}

async fn get_objects(
    ctx: &Arc<ServerCtx>,
    peer: &PeerIdentity,
    source: &str,
    ids: Vec<ObjectId>,
    send: &mut SendStream,
) -> Result<(), Fail> {
    let Some(store) = source_store(ctx, source, false).await? else {
        return respond(send, &Response::Objects { count: 0, missing: ids }).await;
    };
    let s = store.clone();
    let req = ids.clone();
    let present = blocking(move || s.store.durable_many(&req).map_err(internal)).await?;
    let (have, missing): (Vec<_>, Vec<_>) = ids.into_iter().zip(present).partition(|(_, p)| *p);
    let have: Vec<ObjectId> = have.into_iter().map(|x| x.0).collect();
    let missing: Vec<ObjectId> = missing.into_iter().map(|x| x.0).collect();
    respond(send, &Response::Objects { count: have.len() as u32, missing }).await?;
    // one record at a time (memory stays at one record), each preceded by a
    // status byte: 1 = the record follows, 0 = it turned out damaged here
    let counters = ctx.counters.peer(&peer.name);
    for id in have {
        let s = store.clone();
        let rec = blocking(move || Ok(s.store.read_record(&id))).await?;
        omesh_core::failpoint::hit("serve.object");
        match rec {
            Ok(r) => {
                send.write_all(&[1]).await.map_err(|_| Fail::Gone)?;
                send.write_all(&r).await.map_err(|_| Fail::Gone)?;
                counters.bytes_served.fetch_add(r.len() as u64, Ordering::Relaxed);
            }
            Err(e) => {
                tracing::error!(object = %id.short(), error = %e, "stored object is damaged; not serving it");
                send.write_all(&[0]).await.map_err(|_| Fail::Gone)?;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(accept_from: AcceptFrom) -> ServePolicy {
        ServePolicy {
            node: "srv-b".into(),
            accept_from,
            peers: HashMap::from([
                ("srv-a".to_string(), PeerTerms::default()),
                ("srv-c".to_string(), PeerTerms { quota: Some(1000), min_free: Some(FreeFloor::Bytes(0)) }),
            ]),
            default_quota: 5000,
            min_free: FreeFloor::default(),
            retention: RetentionPolicy::default(),
        }
    }

    fn id(name: &str) -> PeerIdentity {
        PeerIdentity { name: name.into(), fingerprint: String::new(), serial: vec![] }
    }

    fn forbidden(r: Result<(), Fail>) -> bool {
        matches!(r, Err(Fail::Respond(ErrorCode::Forbidden, _, _)))
    }

    #[test]
    fn a_peer_writes_only_into_its_own_namespace() {
        let p = policy(AcceptFrom::Peers);
        assert!(may_write(&p, &id("srv-a"), "srv-a").is_ok());
        // another source's namespace, whoever asks
        assert!(forbidden(may_write(&p, &id("srv-a"), "srv-c")));
        // the serving node's own namespace
        assert!(forbidden(may_write(&p, &id("srv-b"), "srv-b")));
    }

    #[test]
    fn only_listed_peers_store_unless_the_site_is_accepted() {
        let p = policy(AcceptFrom::Peers);
        assert!(forbidden(may_write(&p, &id("srv-x"), "srv-x")));
        let p = policy(AcceptFrom::Site);
        assert!(may_write(&p, &id("srv-x"), "srv-x").is_ok());
        // accepting the site still never opens another's namespace
        assert!(forbidden(may_write(&p, &id("srv-x"), "srv-a")));
    }

    #[test]
    fn a_peer_quota_overrides_the_default() {
        let p = policy(AcceptFrom::Site);
        assert_eq!(p.quota_for("srv-c"), 1000);
        assert_eq!(p.quota_for("srv-a"), 5000);
        assert_eq!(p.quota_for("srv-x"), 5000);
        assert_eq!(p.allowance("srv-c"), Allowance { quota: 1000, min_free: FreeFloor::Bytes(0) });
        assert_eq!(p.allowance("srv-a"), Allowance { quota: 5000, min_free: FreeFloor::Percent(5.0) });
    }
}
