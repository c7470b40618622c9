//! `omesh residency report`: where every snapshot of this node went, from
//! its own records (the auditor's document).

use super::snapshots::rfc3339;
use crate::error::NodeError;
use crate::replica::HolderKind;
use serde::{Deserialize, Serialize};

/// One destination that acknowledged a replica.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ResidencyDestination {
    /// Peer or S3 target name.
    pub node: String,
    /// Peer or bucket.
    pub kind: HolderKind,
    /// Where the data went.
    pub address: String,
    /// The peer's certificate (empty for a bucket).
    pub cert_sha256: String,
    /// When (RFC 3339).
    pub time: String,
    /// Objects sent.
    pub objects_sent: u64,
    /// Bytes sent.
    pub bytes_sent: u64,
}

/// One snapshot and its destinations.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ResidencyRow {
    /// Source (this node).
    pub source: String,
    /// Snapshot id.
    pub snapshot: String,
    /// Every destination that acknowledged it.
    pub destinations: Vec<ResidencyDestination>,
}

/// Per snapshot of `source`, every destination that acknowledged a replica
/// at or after `since_ns` (reads the state database: blocking).
pub fn residency_report(
    state: &crate::state::State,
    source: &str,
    since_ns: i64,
) -> Result<Vec<ResidencyRow>, NodeError> {
    let mut all: Vec<(String, Vec<crate::state::Placement>)> = state.placements(source)?.into_iter().collect();
    all.sort_by(|a, b| a.0.cmp(&b.0));
    let mut rows = Vec::new();
    for (snap, ps) in all {
        let destinations: Vec<ResidencyDestination> = ps
            .into_iter()
            .filter(|p| p.time_ns >= since_ns)
            .map(|p| ResidencyDestination {
                node: p.node,
                kind: p.kind,
                address: p.address,
                cert_sha256: p.cert_sha256,
                time: rfc3339(p.time_ns),
                objects_sent: p.objects_sent,
                bytes_sent: p.bytes_sent,
            })
            .collect();
        if !destinations.is_empty() {
            rows.push(ResidencyRow { source: source.to_string(), snapshot: snap, destinations });
        }
    }
    Ok(rows)
}
