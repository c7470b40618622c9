//! Byte and object counters per peer since start, also exported to
//! Prometheus (the daemon registers them in its registry).

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

/// A Prometheus label set.
pub type Labels = Vec<(String, String)>;

/// A monotonically increasing counter, also exported to Prometheus.
#[derive(Clone, Debug, Default)]
pub struct Count(prometheus_client::metrics::counter::Counter);

impl Count {
    /// Add `n`; returns the previous value.
    pub fn fetch_add(&self, n: u64, _: Ordering) -> u64 {
        self.0.inc_by(n)
    }
    /// Current value.
    pub fn load(&self, _: Ordering) -> u64 {
        self.0.get()
    }
}

type PeerFamily = prometheus_client::metrics::family::Family<Labels, prometheus_client::metrics::counter::Counter>;

/// Byte counters per peer since start.
#[derive(Default)]
pub struct Counters {
    map: Mutex<HashMap<String, Arc<PeerCounters>>>,
    /// bytes sent, bytes received, objects sent, objects received, bytes
    /// served, forged records
    families: [PeerFamily; 6],
    /// When each peer last completed a handshake to this node (it is up).
    inbound: Mutex<HashMap<String, std::time::Instant>>,
}

/// Counters for one peer.
#[derive(Default, Debug)]
pub struct PeerCounters {
    /// Record bytes we sent to it.
    pub bytes_sent: Count,
    /// Record bytes we received from it.
    pub bytes_received: Count,
    /// Objects sent.
    pub objects_sent: Count,
    /// Objects received.
    pub objects_received: Count,
    /// Bytes we served it (restores and repairs).
    pub bytes_served: Count,
    /// Records it sent that were refused as forged or altered (a bad
    /// signature, a snapshot under another source, a record that is not
    /// the one its parent's link names).
    pub forged_records: Count,
}

impl Counters {
    /// Counters of `peer`.
    pub fn peer(&self, peer: &str) -> Arc<PeerCounters> {
        let mut m = self.map.lock().expect("counters lock");
        if let Some(c) = m.get(peer) {
            return c.clone();
        }
        let l: Labels = vec![("peer".to_string(), peer.to_string())];
        let f = |i: usize| Count(self.families[i].get_or_create(&l).clone());
        let c = Arc::new(PeerCounters {
            bytes_sent: f(0),
            bytes_received: f(1),
            objects_sent: f(2),
            objects_received: f(3),
            bytes_served: f(4),
            forged_records: f(5),
        });
        m.insert(peer.to_string(), c.clone());
        c
    }

    /// `peer` just connected to this node (its handshake completed).
    pub fn saw_inbound(&self, peer: &str) {
        self.inbound.lock().expect("counters lock").insert(peer.to_string(), std::time::Instant::now());
    }

    /// Whether `peer` connected to this node after `t`.
    pub fn inbound_since(&self, peer: &str, t: std::time::Instant) -> bool {
        self.inbound.lock().expect("counters lock").get(peer).is_some_and(|s| *s > t)
    }

    /// Export to Prometheus.
    pub fn register(&self, r: &mut prometheus_client::registry::Registry) {
        let names = [
            ("peer_sent_bytes", "Record bytes sent to each peer (replication)"),
            ("peer_received_bytes", "Record bytes received from each peer (replicas stored, repairs pulled)"),
            ("peer_sent_objects", "Objects sent to each peer"),
            ("peer_received_objects", "Objects received from each peer"),
            ("peer_served_bytes", "Bytes served to each peer (restores and repairs)"),
            (
                "peer_forged_records",
                "Records from each peer refused as forged or altered (bad signature, wrong source, not the record its parent names)",
            ),
        ];
        for (i, (n, h)) in names.iter().enumerate() {
            r.register(*n, *h, self.families[i].clone());
        }
    }
    /// Snapshot of all counters as JSON.
    pub fn to_json(&self) -> serde_json::Value {
        let m = self.map.lock().expect("counters lock");
        let mut out = serde_json::Map::new();
        for (k, v) in m.iter() {
            out.insert(
                k.clone(),
                serde_json::json!({
                    "bytes_sent": v.bytes_sent.load(Ordering::Relaxed),
                    "bytes_received": v.bytes_received.load(Ordering::Relaxed),
                    "objects_sent": v.objects_sent.load(Ordering::Relaxed),
                    "objects_received": v.objects_received.load(Ordering::Relaxed),
                    "bytes_served": v.bytes_served.load(Ordering::Relaxed),
                    "forged_records": v.forged_records.load(Ordering::Relaxed),
                }),
            );
        }
        serde_json::Value::Object(out)
    }
}
