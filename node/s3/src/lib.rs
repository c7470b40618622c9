//! An S3-compatible bucket on site (S3 on Outposts, Ceph, MinIO, Garage) as
//! a replica target beside peers.
//!
//! Layout under `PREFIX/SOURCE/` (every object written once, never
//! overwritten, so several nodes can share a bucket and a versioned bucket
//! with a no-delete policy works unchanged):
//!
//! ```text
//! packs/hh/<digest>.pack   packs in the store's format (docs/store.md)
//! index/<digest>.idx       the pack's entries: id, kind, offset, length
//! snapshots/<id>           sealed snapshot record, written last
//! ```
//!
//! A snapshot object exists only after every pack holding its objects and
//! their index objects are stored, so a snapshot in the bucket is complete.
//! An interrupted upload leaves packs (maybe without index); the next run
//! indexes those packs from their own bytes and sends only what is missing.
//! The bucket cannot read anything: objects are sealed with the source key.

pub mod client;
pub mod config;
pub mod index;

use aws_sdk_s3::primitives::ByteStream;
use index::{IndexEntry, PackIndex};
use omesh_core::store::pack::{PackBuilder, parse_pack_name, scan_slice};
use omesh_core::store::walk::{GraphWalk, Visit, infallible, resolve_local};
use omesh_core::store::{Store, StoreError};
use omesh_proto::{ObjectId, ObjectKind};
use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

pub use client::S3Error;
pub use config::S3Config;

/// Where an object is in the bucket.
#[derive(Clone, Debug)]
pub struct BucketLoc {
    /// Pack digest.
    pub pack: [u8; 32],
    /// Offset in the pack.
    pub offset: u64,
    /// Record length.
    pub len: u32,
    /// Kind.
    pub kind: ObjectKind,
}

/// One configured bucket target.
pub struct S3Target {
    /// Settings.
    pub cfg: S3Config,
    client: aws_sdk_s3::Client,
    cache: PathBuf,
    /// Set when the residency policy forbids this endpoint: every request
    /// fails with this message and nothing is sent.
    pub blocked: Option<String>,
    /// `[bandwidth]` limits: uploads are paced like replication to a peer
    /// (keyed by the target's name for per-peer limits).
    pub limiter: Option<Arc<omesh_core::policy::bandwidth::Limiter>>,
    windows: WindowCache,
}

/// Bytes fetched per ranged read during restores: objects are read in
/// roughly the order they were packed, so one read serves the objects
/// that follow (one request per 4 MiB instead of one per object).
const WINDOW: u64 = 4 << 20;
/// Windows kept (bounds restore memory to ~96 MiB).
const WINDOWS_KEPT: usize = 24;

type WindowKey = (String, u64);
type WindowCell = Arc<tokio::sync::OnceCell<Arc<Vec<u8>>>>;

/// Recently read pack windows; concurrent readers of one window share a
/// single request.
#[derive(Default)]
struct WindowCache {
    cells: std::sync::Mutex<(std::collections::VecDeque<WindowKey>, HashMap<WindowKey, WindowCell>)>,
}

impl WindowCache {
    fn cell(&self, key: &WindowKey) -> WindowCell {
        let mut g = self.cells.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(c) = g.1.get(key) {
            return c.clone();
        }
        let c: WindowCell = Arc::default();
        g.1.insert(key.clone(), c.clone());
        g.0.push_back(key.clone());
        while g.0.len() > WINDOWS_KEPT {
            if let Some(old) = g.0.pop_front() {
                g.1.remove(&old);
            }
        }
        c
    }

    fn forget(&self, key: &WindowKey) {
        let mut g = self.cells.lock().unwrap_or_else(|e| e.into_inner());
        g.1.remove(key);
        g.0.retain(|k| k != key);
    }
}

impl std::fmt::Debug for S3Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "S3Target({})", self.cfg.name)
    }
}

/// Upload counters.
#[derive(Clone, Copy, Debug, Default, serde::Serialize)]
pub struct UploadStats {
    /// Objects sent.
    pub objects: u64,
    /// Record bytes sent.
    pub bytes: u64,
    /// Pack objects written.
    pub packs: u64,
    /// Orphan packs (from an interrupted run) indexed and reused.
    pub packs_recovered: u64,
}

impl S3Target {
    /// Build the client (no request is made).
    pub async fn new(cfg: S3Config, data_dir: &Path, resolver: Option<client::Resolver>) -> Result<Self, S3Error> {
        let client = client::build(&cfg, resolver).await?;
        let cache = data_dir.join("s3cache").join(&cfg.name);
        Ok(S3Target { cfg, client, cache, blocked: None, limiter: None, windows: WindowCache::default() })
    }

    /// "name (endpoint, bucket)" for messages.
    pub fn describe(&self) -> String {
        // the URL the SDK really uses (its endpoint rules), not `endpoint`
        let url = self.cfg.addressing().map(|a| a.url);
        let url = url.as_deref().unwrap_or_else(|_| self.cfg.endpoint.as_deref().unwrap_or("default endpoint"));
        format!("S3 target {:?} ({url}, bucket {})", self.cfg.name, self.cfg.bucket)
    }

    fn key(&self, source: &str, rel: &str) -> String {
        format!("{}{}/{}", self.cfg.prefix, source, rel)
    }

    fn err<E>(&self, op: &str, e: aws_sdk_s3::error::SdkError<E, aws_smithy_runtime_api::http::Response>) -> S3Error
    where
        E: aws_sdk_s3::error::ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    {
        client::map_err(&self.describe(), op, e)
    }

    /// Check the bucket answers; returns the round-trip time.
    pub async fn probe(&self) -> Result<Duration, S3Error> {
        if let Some(m) = &self.blocked {
            return Err(S3Error::Config(format!("residency: {m}")));
        }
        let t = Instant::now();
        self.client
            .head_bucket()
            .bucket(&self.cfg.bucket)
            .send()
            .await
            .map_err(|e| self.err("checking the bucket", e))?;
        Ok(t.elapsed())
    }

    async fn list(&self, prefix: &str) -> Result<Vec<(String, u64)>, S3Error> {
        Ok(self.list_detailed(prefix).await?.into_iter().map(|(k, n, _)| (k, n)).collect())
    }

    /// (key, size, last modified in ns since the epoch, 0 if unknown).
    async fn list_detailed(&self, prefix: &str) -> Result<Vec<(String, u64, i64)>, S3Error> {
        if let Some(m) = &self.blocked {
            return Err(S3Error::Config(format!("residency: {m}")));
        }
        let mut out = Vec::new();
        let mut token = None;
        loop {
            let r = self
                .client
                .list_objects_v2()
                .bucket(&self.cfg.bucket)
                .prefix(prefix)
                .set_continuation_token(token.take())
                .send()
                .await
                .map_err(|e| self.err("listing", e))?;
            for o in r.contents() {
                if let Some(k) = o.key() {
                    let modified = o
                        .last_modified()
                        .map(|t| t.secs().saturating_mul(1_000_000_000).saturating_add(t.subsec_nanos() as i64))
                        .unwrap_or(0);
                    out.push((k.to_string(), o.size().unwrap_or(0).max(0) as u64, modified));
                }
            }
            match r.next_continuation_token() {
                Some(t) if r.is_truncated() == Some(true) => token = Some(t.to_string()),
                _ => return Ok(out),
            }
        }
    }

    async fn exists(&self, key: &str) -> Result<bool, S3Error> {
        if let Some(m) = &self.blocked {
            return Err(S3Error::Config(format!("residency: {m}")));
        }
        match self.client.head_object().bucket(&self.cfg.bucket).key(key).send().await {
            Ok(_) => Ok(true),
            Err(aws_sdk_s3::error::SdkError::ServiceError(e)) if e.err().is_not_found() => Ok(false),
            Err(e) => Err(self.err("checking an object", e)),
        }
    }

    async fn get(&self, key: &str, range: Option<(u64, u64)>) -> Result<Vec<u8>, S3Error> {
        if let Some(m) = &self.blocked {
            return Err(S3Error::Config(format!("residency: {m}")));
        }
        let mut req = self.client.get_object().bucket(&self.cfg.bucket).key(key);
        if let Some((off, len)) = range {
            req = req.range(format!("bytes={}-{}", off, off + len - 1));
        }
        let r = req.send().await.map_err(|e| self.err("reading", e))?;
        let b = r
            .body
            .collect()
            .await
            .map_err(|e| S3Error::Transfer { target: self.describe(), message: e.to_string() })?;
        Ok(b.into_bytes().to_vec())
    }

    /// Wait until `n` more upload bytes fit within `[bandwidth]`.
    async fn pace(&self, n: usize) {
        if let Some(l) = &self.limiter
            && let Some(until) = l.reserve(&self.cfg.name, n as u64)
        {
            tokio::time::sleep_until(until.into()).await;
        }
    }

    /// Write `data` under `key` unless an object is already there.
    async fn put_once(&self, key: &str, data: Vec<u8>) -> Result<bool, S3Error> {
        if self.exists(key).await? {
            return Ok(false);
        }
        if data.len() as u64 > self.cfg.part_size.0 {
            return self.put_multipart(key, data).await.map(|_| true);
        }
        self.pace(data.len()).await;
        let mut req = self.client.put_object().bucket(&self.cfg.bucket).key(key).body(ByteStream::from(data));
        if let Some(sc) = &self.cfg.storage_class {
            req = req.storage_class(sc.as_str().into());
        }
        req.send().await.map_err(|e| self.err("writing", e))?;
        Ok(true)
    }

    async fn put_multipart(&self, key: &str, data: Vec<u8>) -> Result<(), S3Error> {
        use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart};
        let mut req = self.client.create_multipart_upload().bucket(&self.cfg.bucket).key(key);
        if let Some(sc) = &self.cfg.storage_class {
            req = req.storage_class(sc.as_str().into());
        }
        let up = req.send().await.map_err(|e| self.err("starting a multipart upload", e))?;
        let upload_id = up.upload_id().unwrap_or_default().to_string();
        let result = async {
            let mut parts = Vec::new();
            for (i, chunk) in data.chunks(self.cfg.part_size.0 as usize).enumerate() {
                let n = i as i32 + 1;
                self.pace(chunk.len()).await;
                let r = self
                    .client
                    .upload_part()
                    .bucket(&self.cfg.bucket)
                    .key(key)
                    .upload_id(&upload_id)
                    .part_number(n)
                    .body(ByteStream::from(chunk.to_vec()))
                    .send()
                    .await
                    .map_err(|e| self.err("uploading a part", e))?;
                parts.push(CompletedPart::builder().part_number(n).set_e_tag(r.e_tag().map(String::from)).build());
            }
            self.client
                .complete_multipart_upload()
                .bucket(&self.cfg.bucket)
                .key(key)
                .upload_id(&upload_id)
                .multipart_upload(CompletedMultipartUpload::builder().set_parts(Some(parts)).build())
                .send()
                .await
                .map_err(|e| self.err("completing a multipart upload", e))?;
            Ok(())
        }
        .await;
        if result.is_err() {
            let _ = self
                .client
                .abort_multipart_upload()
                .bucket(&self.cfg.bucket)
                .key(key)
                .upload_id(&upload_id)
                .send()
                .await;
        }
        result
    }

    /// Everything the bucket holds for `source`: object id → location.
    /// Index objects are cached under `data_dir/s3cache/`; packs without an
    /// index (an interrupted upload) are indexed from their own bytes.
    pub async fn held(&self, source: &str) -> Result<(HashMap<ObjectId, BucketLoc>, u64), S3Error> {
        let idx_prefix = self.key(source, "index/");
        let pack_prefix = self.key(source, "packs/");
        let indexes = self.list(&idx_prefix).await?;
        let packs = self.list(&pack_prefix).await?;
        let cache = self.cache.join(source);
        let _ = std::fs::create_dir_all(&cache);
        let mut map = HashMap::new();
        let mut indexed: HashSet<[u8; 32]> = HashSet::new();
        for (key, _) in &indexes {
            let Some(name) = key.strip_prefix(&idx_prefix).and_then(|n| n.strip_suffix(".idx")) else { continue };
            let Some(digest) = parse_pack_name(&format!("{name}.pack")) else { continue };
            let cached = cache.join(format!("{name}.idx"));
            let bytes = match std::fs::read(&cached) {
                Ok(b) => b,
                Err(_) => {
                    let b = self.get(key, None).await?;
                    let _ = std::fs::write(&cached, &b);
                    b
                }
            };
            let idx = match PackIndex::decode(&bytes) {
                Ok(i) => i,
                Err(e) => {
                    let _ = std::fs::remove_file(&cached);
                    tracing::warn!(target = %self.cfg.name, index = %key, error = %e, "damaged index object; re-indexing its pack");
                    continue;
                }
            };
            for e in idx.entries {
                map.entry(e.id).or_insert(BucketLoc {
                    pack: digest,
                    offset: e.offset as u64,
                    len: e.len,
                    kind: e.kind,
                });
            }
            indexed.insert(digest);
        }
        let mut recovered = 0;
        for (key, _) in &packs {
            let Some(name) = key.rsplit('/').next() else { continue };
            let Some(digest) = parse_pack_name(name) else { continue };
            if indexed.contains(&digest) {
                continue;
            }
            // a pack from an interrupted upload: index it from its bytes
            let data = self.get(key, None).await?;
            let idx = PackIndex::from_pack(&data, &digest).map_err(|e| S3Error::Damaged {
                target: self.describe(),
                what: key.clone(),
                reason: e,
            })?;
            let bytes = idx.encode();
            self.put_once(&self.key(source, &format!("index/{}.idx", hex::encode(digest))), bytes).await?;
            for e in idx.entries {
                map.entry(e.id).or_insert(BucketLoc {
                    pack: digest,
                    offset: e.offset as u64,
                    len: e.len,
                    kind: e.kind,
                });
            }
            recovered += 1;
            tracing::info!(target = %self.cfg.name, pack = %name, "indexed a pack left by an interrupted upload");
        }
        Ok((map, recovered))
    }

    /// Snapshot ids stored for `source`, each with the time the bucket
    /// stored it (ns; 0 if the server does not say). One listing, no reads.
    pub async fn snapshot_times(&self, source: &str) -> Result<Vec<(ObjectId, i64)>, S3Error> {
        let prefix = self.key(source, "snapshots/");
        Ok(self
            .list_detailed(&prefix)
            .await?
            .into_iter()
            .filter_map(|(key, _, t)| Some((ObjectId::from_hex(key.strip_prefix(&prefix)?).ok()?, t)))
            .collect())
    }

    /// One sealed snapshot record of `source`.
    pub async fn snapshot_record(&self, source: &str, id: &ObjectId) -> Result<Vec<u8>, S3Error> {
        self.get(&self.key(source, &format!("snapshots/{}", id.to_hex())), None).await
    }

    /// Snapshots stored for `source`: (id, sealed record). One request per
    /// snapshot: use [`Self::snapshot_times`] when the ids are enough.
    pub async fn list_snapshots(&self, source: &str) -> Result<Vec<(ObjectId, Vec<u8>)>, S3Error> {
        let mut out = Vec::new();
        for (id, _) in self.snapshot_times(source).await? {
            out.push((id, self.snapshot_record(source, &id).await?));
        }
        Ok(out)
    }

    /// One pack window (cached, shared by concurrent readers).
    async fn window(&self, key: &str, start: u64) -> Result<Arc<Vec<u8>>, S3Error> {
        let k = (key.to_string(), start);
        let cell = self.windows.cell(&k);
        let r = cell.get_or_try_init(|| async { self.get(key, Some((start, WINDOW))).await.map(Arc::new) }).await;
        if r.is_err() {
            self.windows.forget(&k);
        }
        r.cloned()
    }

    /// One object's record bytes, check hash verified. Read through the
    /// window cache: the pack's bytes around it are fetched once and serve
    /// the objects that follow.
    pub async fn get_record(&self, source: &str, id: &ObjectId, loc: &BucketLoc) -> Result<Vec<u8>, S3Error> {
        let key = self.pack_key(source, &loc.pack);
        let end = loc.offset + loc.len as u64;
        let mut b = Vec::with_capacity(loc.len as usize);
        let mut w = loc.offset / WINDOW * WINDOW;
        while w < end {
            let win = self.window(&key, w).await?;
            let from = loc.offset.max(w) - w;
            let to = (end.min(w + WINDOW) - w).min(win.len() as u64);
            if from >= to {
                break;
            }
            b.extend_from_slice(&win[from as usize..to as usize]);
            w += WINDOW;
        }
        let header = omesh_proto::RecordHeader::parse(&b).map_err(|e| S3Error::Damaged {
            target: self.describe(),
            what: key.clone(),
            reason: e.to_string(),
        })?;
        if header.id != *id || header.record_len() != b.len() as u64 || b.len() != loc.len as usize {
            return Err(S3Error::Damaged {
                target: self.describe(),
                what: key,
                reason: format!("record at {} is not object {}", loc.offset, id.short()),
            });
        }
        omesh_proto::record::verify_check(&b).map_err(|e| S3Error::Damaged {
            target: self.describe(),
            what: key,
            reason: e.to_string(),
        })?;
        Ok(b)
    }

    fn pack_key(&self, source: &str, digest: &[u8; 32]) -> String {
        let h = hex::encode(digest);
        self.key(source, &format!("packs/{}/{h}.pack", &h[..2]))
    }

    /// Upload snapshot `snap` of `source` from `store`: only the objects the
    /// bucket lacks, in packs, then their index objects, then the snapshot.
    pub async fn push_snapshot(
        self: &Arc<Self>,
        store: Arc<Store>,
        source: &str,
        snap: ObjectId,
    ) -> Result<UploadStats, S3Error> {
        let mut stats = UploadStats::default();
        let (held, recovered) = self.held(source).await?;
        stats.packs_recovered = recovered;
        let snap_key = self.key(source, &format!("snapshots/{}", snap.to_hex()));
        // every object of the snapshot (walking the local graph)
        let s = store.clone();
        let needed: Vec<ObjectId> = tokio::task::spawn_blocking(move || -> Result<Vec<ObjectId>, StoreError> {
            let record = s.read_snapshot_record(&snap)?;
            let (_, roots) =
                omesh_proto::record::links_of(&record).map_err(|e| StoreError::Object(e.to_string(), true))?;
            all_objects(&s, &roots)
        })
        .await
        .map_err(|e| S3Error::Local(e.to_string()))?
        .map_err(|e| S3Error::Local(e.to_string()))?;
        let missing: Vec<ObjectId> = needed.into_iter().filter(|id| !held.contains_key(id)).collect();
        // packs, a few uploads at a time
        let mut tasks = tokio::task::JoinSet::new();
        let mut i = 0;
        let target = self.cfg.pack_size.0;
        while i < missing.len() || !tasks.is_empty() {
            while tasks.len() < self.cfg.parallel_uploads.max(1) && i < missing.len() {
                let s = store.clone();
                let ids: Vec<ObjectId> = missing[i..].iter().take(65_536).copied().collect();
                let (pack, digest, entries, used) = tokio::task::spawn_blocking(move || build_pack(&s, &ids, target))
                    .await
                    .map_err(|e| S3Error::Local(e.to_string()))?
                    .map_err(|e| S3Error::Local(e.to_string()))?;
                i += used;
                let key = self.pack_key(source, &digest);
                let idx_key = self.key(source, &format!("index/{}.idx", hex::encode(digest)));
                let idx = PackIndex { entries }.encode();
                let n = used as u64;
                let bytes = pack.len() as u64;
                let this = self.clone();
                tasks.spawn(async move {
                    this.put_once(&key, pack).await?;
                    omesh_core::failpoint::hit("s3.pack_uploaded");
                    this.put_once(&idx_key, idx).await?;
                    Ok::<_, S3Error>((n, bytes))
                });
            }
            if let Some(r) = tasks.join_next().await {
                let (n, b) = r.map_err(|e| S3Error::Local(e.to_string()))??;
                stats.objects += n;
                stats.bytes += b;
                stats.packs += 1;
            }
        }
        // the snapshot last: its presence means everything is there
        let record = {
            let s = store.clone();
            tokio::task::spawn_blocking(move || s.read_snapshot_record(&snap))
                .await
                .map_err(|e| S3Error::Local(e.to_string()))?
                .map_err(|e| S3Error::Local(e.to_string()))?
        };
        omesh_core::failpoint::hit("s3.before_snapshot");
        self.put_once(&snap_key, record).await?;
        Ok(stats)
    }

    /// Check every pack's bytes (check hashes; with `keys` also decryption
    /// and ids) and every snapshot's completeness.
    pub async fn verify(
        &self,
        source: &str,
        keys: Option<Arc<omesh_core::crypto::Keys>>,
        read_data: bool,
    ) -> Result<omesh_core::verify::VerifyReport, S3Error> {
        use omesh_core::verify::{DamagedObject, DamagedSnapshot, VerifyReport};
        let mut rep = VerifyReport::default();
        let (held, _) = self.held(source).await?;
        let mut bad: HashSet<ObjectId> = HashSet::new();
        if read_data {
            let prefix = self.key(source, "packs/");
            for (key, _) in self.list(&prefix).await? {
                let data = self.get(&key, None).await?;
                rep.packs_read += 1;
                rep.bytes_read += data.len() as u64;
                let res = scan_bytes(&data);
                for p in &res.problems {
                    if let Some(id) = p.id {
                        bad.insert(id);
                    }
                    rep.damaged_objects.push(DamagedObject {
                        id: p.id.map(|i| i.to_hex()).unwrap_or_default(),
                        location: format!("{key} at offset {}", p.offset),
                        reason: p.reason.clone(),
                    });
                }
                for e in &res.entries {
                    rep.objects_read += 1;
                    if let Some(k) = &keys {
                        let raw = &data[e.offset as usize..e.offset as usize + e.len as usize];
                        if let Err(reason) = omesh_core::store::open_record(k, raw, &e.id, e.kind) {
                            bad.insert(e.id);
                            rep.damaged_objects.push(DamagedObject {
                                id: e.id.to_hex(),
                                location: format!("{key} at offset {}", e.offset),
                                reason,
                            });
                        }
                    }
                }
            }
        }
        // completeness: every object reachable from each snapshot is held
        for (id, record) in self.list_snapshots(source).await? {
            rep.snapshots += 1;
            let mut missing = Vec::new();
            let Ok((_, roots)) = omesh_proto::record::links_of(&record) else {
                rep.unreadable_snapshots.push(DamagedObject {
                    id: id.to_hex(),
                    location: "snapshot object".into(),
                    reason: "undecodable".into(),
                });
                continue;
            };
            let mut walk = GraphWalk::from_roots(&roots);
            loop {
                let batch = walk.next(4096);
                if batch.is_empty() {
                    break;
                }
                for o in batch {
                    match held.get(&o) {
                        None => missing.push(format!("object {} missing", o.short())),
                        Some(_) if bad.contains(&o) => missing.push(format!("object {} damaged", o.short())),
                        Some(loc) if loc.kind != ObjectKind::Blob => {
                            rep.trees += 1;
                            let raw = self.get_record(source, &o, loc).await?;
                            if let Ok((_, links, seals)) = omesh_proto::record::sealed_links_of(&raw) {
                                let v = Visit::Object { kind: loc.kind, links, seals };
                                walk.visit(&v).map_err(|e| S3Error::Local(infallible(e).to_string()))?;
                            }
                        }
                        Some(_) => {}
                    }
                }
            }
            if !missing.is_empty() {
                missing.truncate(100);
                rep.damaged_snapshots.push(DamagedSnapshot { snapshot: id.to_hex(), paths: missing });
            }
        }
        Ok(rep)
    }

    /// Bytes and snapshots stored for `source`.
    pub async fn usage(&self, source: &str) -> Result<(u64, u64), S3Error> {
        let packs = self.list(&self.key(source, "packs/")).await?;
        let snaps = self.list(&self.key(source, "snapshots/")).await?;
        Ok((packs.iter().map(|p| p.1).sum(), snaps.len() as u64))
    }
}

/// Every object reachable from `roots` in a local store, blobs and lists
/// first, trees after (deepest first), so an interrupted upload holds whole
/// subtrees rather than trees without their content.
pub fn all_objects(store: &Store, roots: &[ObjectId]) -> Result<Vec<ObjectId>, StoreError> {
    let mut blobs = Vec::new();
    let mut levels: Vec<Vec<ObjectId>> = Vec::new();
    let mut walk = GraphWalk::from_roots(roots);
    loop {
        let batch = walk.next(usize::MAX);
        if batch.is_empty() {
            break;
        }
        let mut level = Vec::new();
        for id in batch {
            let v = resolve_local(store, &id, None)?;
            match &v {
                Visit::Missing => return Err(StoreError::Missing(id, "needed for an upload")),
                Visit::Object { kind: ObjectKind::Blob, .. } => blobs.push(id),
                _ => level.push(id),
            }
            walk.visit(&v).map_err(infallible)?;
        }
        levels.push(level);
    }
    for l in levels.into_iter().rev() {
        blobs.extend(l);
    }
    Ok(blobs)
}

/// A pack object ready to upload: its bytes, digest, index entries, and
/// how many of the ids asked for it holds.
type BuiltPack = (Vec<u8>, [u8; 32], Vec<IndexEntry>, usize);

/// A pack of records for `ids` (from the front, up to `target` bytes).
fn build_pack(store: &Store, ids: &[ObjectId], target: u64) -> Result<BuiltPack, StoreError> {
    let mut pack = PackBuilder::new();
    let mut used = 0;
    for id in ids {
        let raw = store.read_record(id)?;
        let h = omesh_proto::RecordHeader::parse(&raw).map_err(|e| StoreError::Object(e.to_string(), true))?;
        // read_record checked the bytes against this seal
        let seal = store.locate(id)?.map(|(_, l)| l.seal).ok_or(StoreError::Missing(*id, "not in the index"))?;
        pack.append(*id, h.kind, seal, &raw);
        used += 1;
        if pack.len() >= target {
            break;
        }
    }
    let (bytes, digest, entries) = pack.finish();
    let entries =
        entries.iter().map(|e| IndexEntry { id: e.id, kind: e.kind, offset: e.offset as u32, len: e.len }).collect();
    Ok((bytes, digest, entries, used))
}

fn scan_bytes(data: &[u8]) -> omesh_core::store::pack::ScanResult {
    scan_slice(data, None, |_, _| {})
}
