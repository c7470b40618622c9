//! The node's own bookkeeping (`data_dir/state.redb`): where each of our
//! snapshots was placed and when (the audit trail), and what we last saw of
//! each peer. Only the process running the node (the daemon, or a CLI
//! command when no daemon runs) opens it.

use redb::{ReadableDatabase, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};
use std::path::Path;

type Table = TableDefinition<'static, &'static str, &'static [u8]>;
const PLACEMENTS: TableDefinition<&str, &[u8]> = TableDefinition::new("placements");
const PEERS: TableDefinition<&str, &[u8]> = TableDefinition::new("peers");
const RUNS: TableDefinition<&str, &[u8]> = TableDefinition::new("runs");
const CHECKS: TableDefinition<&str, &[u8]> = TableDefinition::new("holding_checks");

/// The latest proof-of-holding check of one peer: records of one of our
/// snapshots it lists, fetched from it and verified with our key.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct HoldingCheck {
    /// When (ns since epoch).
    pub time_ns: i64,
    /// The snapshot checked (hex id).
    pub snapshot: String,
    /// Records fetched and verified.
    pub records: u64,
    /// Whether every record came back and verified.
    pub ok: bool,
    /// What was wrong (empty when ok).
    pub detail: String,
}

/// History of one kind of run ("backup/NAME", "sync", "maintenance",
/// "scrub").
#[derive(Clone, Debug, Serialize, Deserialize, Default, PartialEq)]
pub struct RunRecord {
    /// Last start (ns since epoch).
    pub last_start_ns: i64,
    /// Last end.
    pub last_end_ns: i64,
    /// Last successful end.
    pub last_ok_ns: i64,
    /// Error of the last run, if it failed.
    pub last_error: Option<String>,
    /// Runs.
    pub runs: u64,
    /// Failed runs.
    pub failures: u64,
    /// Summary of the last run.
    #[serde(default)]
    pub detail: serde_json::Value,
}

/// One replica placement of a snapshot.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Placement {
    /// Peer node name, or S3 target name.
    pub node: String,
    /// Peer or bucket.
    pub kind: crate::replica::HolderKind,
    /// Address data was sent to (peer socket address, or S3 endpoint/bucket).
    pub address: String,
    /// SHA-256 of the peer certificate (empty for S3).
    pub cert_sha256: String,
    /// When the replica was acknowledged (ns since epoch).
    pub time_ns: i64,
    /// Objects sent for it.
    pub objects_sent: u64,
    /// Bytes sent for it.
    pub bytes_sent: u64,
}

/// What we last saw of a peer.
#[derive(Clone, Debug, Serialize, Deserialize, Default, PartialEq)]
pub struct PeerSeen {
    /// Last successful contact (ns since epoch).
    pub last_contact_ns: i64,
    /// Last RTT (µs).
    pub rtt_us: u64,
    /// Address.
    pub address: String,
    /// Certificate fingerprint.
    pub cert_sha256: String,
    /// Transfer rate last measured to or from it (bytes/s; 0 = unknown).
    #[serde(default)]
    pub throughput_bps: u64,
}

/// State database errors.
#[derive(Debug, thiserror::Error)]
#[error("node state {path}: {message}")]
pub struct StateError {
    /// file
    pub path: String,
    /// cause
    pub message: String,
}

/// The state database.
pub struct State {
    db: redb::Database,
    path: String,
}

impl State {
    /// Open or create.
    pub fn open(path: &Path) -> Result<Self, StateError> {
        let p = path.display().to_string();
        let err = |e: &dyn std::fmt::Display| StateError {
            path: p.clone(),
            message: if e.to_string().contains("already open") {
                "in use by another omesh process (is the daemon running? then use it through its control socket)".into()
            } else {
                e.to_string()
            },
        };
        let db = redb::Builder::new().set_cache_size(8 << 20).create(path).map_err(|e| err(&e))?;
        let tx = db.begin_write().map_err(|e| err(&e))?;
        {
            tx.open_table(PLACEMENTS).map_err(|e| err(&e))?;
            tx.open_table(PEERS).map_err(|e| err(&e))?;
            tx.open_table(RUNS).map_err(|e| err(&e))?;
            tx.open_table(CHECKS).map_err(|e| err(&e))?;
        }
        tx.commit().map_err(|e| err(&e))?;
        Ok(State { db, path: p })
    }

    fn e(&self, x: impl std::fmt::Display) -> StateError {
        StateError { path: self.path.clone(), message: x.to_string() }
    }

    /// Record a placement of `snap` of `source`.
    pub fn add_placement(&self, source: &str, snap: &str, p: Placement) -> Result<(), StateError> {
        let key = format!("{source}/{snap}");
        let tx = self.db.begin_write().map_err(|x| self.e(x))?;
        {
            let mut t = tx.open_table(PLACEMENTS).map_err(|x| self.e(x))?;
            let mut v: Vec<Placement> = t
                .get(key.as_str())
                .map_err(|x| self.e(x))?
                .and_then(|g| serde_json::from_slice(g.value()).ok())
                .unwrap_or_default();
            v.retain(|o| o.node != p.node);
            v.push(p);
            let bytes = serde_json::to_vec(&v).expect("serializes");
            t.insert(key.as_str(), bytes.as_slice()).map_err(|x| self.e(x))?;
        }
        tx.commit().map_err(|x| self.e(x))
    }

    /// Placements of every snapshot of `source`: snapshot hex id → list.
    pub fn placements(&self, source: &str) -> Result<std::collections::HashMap<String, Vec<Placement>>, StateError> {
        let tx = self.db.begin_read().map_err(|x| self.e(x))?;
        let t = tx.open_table(PLACEMENTS).map_err(|x| self.e(x))?;
        let prefix = format!("{source}/");
        let mut out = std::collections::HashMap::new();
        for r in t.iter().map_err(|x| self.e(x))? {
            let (k, v) = r.map_err(|x| self.e(x))?;
            if let Some(snap) = k.value().strip_prefix(&prefix) {
                out.insert(snap.to_string(), serde_json::from_slice(v.value()).unwrap_or_default());
            }
        }
        Ok(out)
    }

    /// Remember a successful contact.
    pub fn peer_seen(&self, name: &str, seen: &PeerSeen) -> Result<(), StateError> {
        self.put_json(PEERS, name, seen)
    }

    /// Record a measured transfer rate to or from a peer.
    pub fn peer_throughput(&self, name: &str, bps: u64) -> Result<(), StateError> {
        let mut all = self.peers()?;
        let mut seen = all.remove(name).unwrap_or_default();
        seen.throughput_bps = bps;
        self.peer_seen(name, &seen)
    }

    /// A run of `key` started at `ns`.
    pub fn run_started(&self, key: &str, ns: i64) -> Result<(), StateError> {
        self.update_run(key, |r| {
            r.last_start_ns = ns;
            r.runs += 1;
        })
    }

    /// A run of `key` ended at `ns`.
    pub fn run_finished(
        &self,
        key: &str,
        ns: i64,
        result: Result<serde_json::Value, String>,
    ) -> Result<(), StateError> {
        self.update_run(key, |r| {
            r.last_end_ns = ns;
            match result {
                Ok(d) => {
                    r.last_ok_ns = ns;
                    r.last_error = None;
                    r.detail = d;
                }
                Err(e) => {
                    r.failures += 1;
                    r.last_error = Some(e);
                }
            }
        })
    }

    fn update_run(&self, key: &str, f: impl FnOnce(&mut RunRecord)) -> Result<(), StateError> {
        let tx = self.db.begin_write().map_err(|x| self.e(x))?;
        {
            let mut t = tx.open_table(RUNS).map_err(|x| self.e(x))?;
            let mut r: RunRecord = t
                .get(key)
                .map_err(|x| self.e(x))?
                .and_then(|g| serde_json::from_slice(g.value()).ok())
                .unwrap_or_default();
            f(&mut r);
            let b = serde_json::to_vec(&r).expect("serializes");
            t.insert(key, b.as_slice()).map_err(|x| self.e(x))?;
        }
        tx.commit().map_err(|x| self.e(x))
    }

    /// Every run history.
    pub fn runs(&self) -> Result<std::collections::BTreeMap<String, RunRecord>, StateError> {
        let tx = self.db.begin_read().map_err(|x| self.e(x))?;
        let t = tx.open_table(RUNS).map_err(|x| self.e(x))?;
        let mut out = std::collections::BTreeMap::new();
        for r in t.iter().map_err(|x| self.e(x))? {
            let (k, v) = r.map_err(|x| self.e(x))?;
            out.insert(k.value().to_string(), serde_json::from_slice(v.value()).unwrap_or_default());
        }
        Ok(out)
    }

    /// Record the latest holding check of a peer.
    pub fn set_check(&self, peer: &str, c: &HoldingCheck) -> Result<(), StateError> {
        self.put_json(CHECKS, peer, c)
    }

    /// The latest holding check of each peer.
    pub fn checks(&self) -> Result<std::collections::HashMap<String, HoldingCheck>, StateError> {
        self.all_json(CHECKS)
    }

    /// Store `v` as JSON under `key`.
    fn put_json<T: Serialize>(&self, table: Table, key: &str, v: &T) -> Result<(), StateError> {
        let tx = self.db.begin_write().map_err(|x| self.e(x))?;
        {
            let mut t = tx.open_table(table).map_err(|x| self.e(x))?;
            let b = serde_json::to_vec(v).expect("serializes");
            t.insert(key, b.as_slice()).map_err(|x| self.e(x))?;
        }
        tx.commit().map_err(|x| self.e(x))
    }

    /// Every value of a JSON table (entries that no longer parse are skipped).
    fn all_json<T: serde::de::DeserializeOwned>(
        &self,
        table: Table,
    ) -> Result<std::collections::HashMap<String, T>, StateError> {
        let tx = self.db.begin_read().map_err(|x| self.e(x))?;
        let t = tx.open_table(table).map_err(|x| self.e(x))?;
        let mut out = std::collections::HashMap::new();
        for r in t.iter().map_err(|x| self.e(x))? {
            let (k, v) = r.map_err(|x| self.e(x))?;
            if let Ok(c) = serde_json::from_slice(v.value()) {
                out.insert(k.value().to_string(), c);
            }
        }
        Ok(out)
    }

    /// Last contact with each peer.
    pub fn peers(&self) -> Result<std::collections::HashMap<String, PeerSeen>, StateError> {
        let tx = self.db.begin_read().map_err(|x| self.e(x))?;
        let t = tx.open_table(PEERS).map_err(|x| self.e(x))?;
        let mut out = std::collections::HashMap::new();
        for r in t.iter().map_err(|x| self.e(x))? {
            let (k, v) = r.map_err(|x| self.e(x))?;
            out.insert(k.value().to_string(), serde_json::from_slice(v.value()).unwrap_or_default());
        }
        Ok(out)
    }
}
