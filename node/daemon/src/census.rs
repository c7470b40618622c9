//! Who holds which snapshot: one census of this node's stores and every
//! reachable replica target, the single answer that mesh sync, the
//! snapshot listing, status, restore and scrub heal consume.

use crate::replica::{HolderKind, Listed, ReplicaTarget, Scope};
use crate::runtime::{NodeRuntime, Probe};
use omesh_core::store::Store;
use omesh_proto::ObjectId;
use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::sync::Arc;
use std::time::Duration;

/// One holder of a snapshot.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Holder {
    /// This node, a peer or a bucket.
    pub kind: HolderKind,
    /// Its failure domain.
    pub domain: String,
    /// When it stored the snapshot (ns since the epoch; 0 when it cannot
    /// tell).
    pub stored_ns: i64,
}

/// One snapshot and its holders.
#[derive(Clone, Debug, Default)]
pub struct Holding {
    /// The sealed record (this node's copy when it has one, else the first
    /// holder's that supplied one).
    pub record: Option<Vec<u8>>,
    /// Holder name → holder.
    pub holders: BTreeMap<String, Holder>,
}

/// Which snapshots the census covers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CensusScope {
    /// One source's.
    Source(String),
    /// Every source's.
    All,
}

/// Which targets to ask.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Targets {
    /// Every peer and bucket.
    All,
    /// None: this node's stores only.
    None,
    /// Only the buckets.
    Buckets,
    /// Only this peer or bucket.
    Only(String),
}

/// How this node's own stores are read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Local {
    /// Not at all.
    Skip,
    /// Through the node's store registry (the daemon, or a CLI run without
    /// one).
    Registry,
    /// Opened read-only beside a running daemon (restores); the store is
    /// kept in [`Census::local_store`].
    ReadOnly,
}

/// What to gather.
#[derive(Clone, Debug)]
pub struct CensusOptions {
    /// Snapshots of which sources.
    pub scope: CensusScope,
    /// Targets to ask.
    pub targets: Targets,
    /// Local stores.
    pub local: Local,
    /// Read a record from a bucket when no one else supplied it.
    pub records: bool,
}

/// The census.
pub struct Census {
    /// (source, snapshot) → its holders.
    pub snapshots: BTreeMap<(String, ObjectId), Holding>,
    /// Holders whose listing succeeded, this node included: what they do
    /// not list, they do not hold.
    pub listed: HashSet<String>,
    /// Targets that could not be asked (unreachable, or their listing
    /// failed).
    pub unreachable: Vec<String>,
    /// Why each of [`Census::unreachable`] could not be asked.
    pub why_unreachable: Vec<(String, String)>,
    /// Every target asked, with its probe.
    pub probes: Vec<Probe>,
    /// The source's store opened read-only ([`Local::ReadOnly`]).
    pub local_store: Option<Arc<Store>>,
    /// Peers whose latest proof-of-holding check failed: what they list
    /// does not count as a replica until a check passes.
    pub failed_checks: std::collections::HashMap<String, crate::state::HoldingCheck>,
}

impl Census {
    /// "NAME: why; NAME: why" of the targets that could not be asked.
    pub fn unreachable_summary(&self) -> String {
        self.why_unreachable.iter().map(|(n, e)| format!("{n}: {e}")).collect::<Vec<_>>().join("; ")
    }

    /// Gather the census for `opts` from `rt`'s view of the mesh.
    pub async fn gather(rt: &NodeRuntime, opts: &CensusOptions) -> Census {
        let me = rt.cfg.name.clone();
        let wanted = |p: &Probe| match &opts.targets {
            Targets::All => true,
            Targets::None => false,
            Targets::Buckets => p.kind == HolderKind::S3,
            Targets::Only(n) => *n == p.name,
        };
        let probes: Vec<Probe> = if opts.targets == Targets::None {
            Vec::new()
        } else {
            rt.probe_targets().await.into_iter().filter(|p| wanted(p)).collect()
        };
        let mut census = Census {
            snapshots: BTreeMap::new(),
            listed: HashSet::new(),
            unreachable: probes.iter().filter(|p| p.result.is_err()).map(|p| p.name.clone()).collect(),
            why_unreachable: probes
                .iter()
                .filter_map(|p| p.result.as_ref().err().map(|e| (p.name.clone(), e.clone())))
                .collect(),
            probes,
            local_store: None,
            failed_checks: Default::default(),
        };
        if let Some(st) = rt.state.clone() {
            census.failed_checks = tokio::task::spawn_blocking(move || {
                st.checks().unwrap_or_default().into_iter().filter(|(_, c)| !c.ok).collect()
            })
            .await
            .unwrap_or_default();
        }
        let source = match &opts.scope {
            CensusScope::Source(s) => Some(s.clone()),
            CensusScope::All => None,
        };
        // peers first (their listings name every source they hold)
        let peers: Vec<(Arc<dyn ReplicaTarget>, Duration)> = census
            .probes
            .iter()
            .filter(|p| p.kind == HolderKind::Peer)
            .filter_map(|p| p.reachable().map(|(t, d)| (t.clone(), d)))
            .collect();
        let scope = match &source {
            Some(s) => Scope::Source(s),
            None => Scope::All { known: &[] },
        };
        let lists = futures::future::join_all(peers.iter().map(|(t, _)| async move { (t, t.list(scope).await) })).await;
        for (t, l) in lists {
            census.absorb(t.as_ref(), l);
        }
        census.gather_local(rt, &me, source.as_deref(), opts.local).await;
        // buckets: asked about the sources known so far (they cannot list
        // namespaces), and never supplying records unless asked to
        let known: Vec<String> = match &source {
            Some(s) => vec![s.clone()],
            None => census
                .snapshots
                .keys()
                .map(|(s, _)| s.clone())
                .chain([me.clone()])
                .collect::<BTreeSet<_>>()
                .into_iter()
                .collect(),
        };
        let buckets: Vec<Arc<dyn ReplicaTarget>> = census
            .probes
            .iter()
            .filter(|p| p.kind == HolderKind::S3)
            .filter_map(|p| p.reachable().map(|(t, _)| t.clone()))
            .collect();
        for t in buckets {
            let l = t.list(Scope::All { known: &known }).await;
            census.absorb(t.as_ref(), l);
            if opts.records {
                census.fill_records(t.as_ref()).await;
            }
        }
        census
    }

    fn absorb(&mut self, t: &dyn ReplicaTarget, l: Result<Vec<Listed>, crate::replica::TargetError>) {
        match l {
            Ok(items) => {
                self.listed.insert(t.name().to_string());
                for e in items {
                    let h = self.snapshots.entry((e.source, e.id)).or_default();
                    if h.record.is_none() {
                        h.record = e.record;
                    }
                    h.holders.insert(
                        t.name().to_string(),
                        Holder { kind: t.kind(), domain: t.domain().to_string(), stored_ns: e.stored_ns },
                    );
                }
            }
            Err(e) => {
                tracing::warn!(target = %t.name(), error = %e, "cannot list the snapshots it holds; its replicas are not counted");
                self.unreachable.push(t.name().to_string());
                self.why_unreachable.push((t.name().to_string(), e.to_string()));
            }
        }
    }

    /// This node's stores: every snapshot they hold, with this node's own
    /// copy of its record (read off the async workers).
    async fn gather_local(&mut self, rt: &NodeRuntime, me: &str, source: Option<&str>, local: Local) {
        type Found = Vec<(String, ObjectId, i64, Option<Vec<u8>>)>;
        let stores = rt.stores.clone();
        let layout = rt.cfg.layout();
        let source = source.map(String::from);
        let r = tokio::task::spawn_blocking(move || -> (Found, Option<Arc<Store>>) {
            let mut found = Vec::new();
            let read = |name: &str, s: &Store, found: &mut Found| {
                for id in s.snapshot_ids().unwrap_or_default() {
                    found.push((name.to_string(), id, s.snapshot_stored_ns(&id), s.read_snapshot_record(&id).ok()));
                }
            };
            match local {
                Local::Skip => (found, None),
                Local::Registry => {
                    let names = match &source {
                        Some(s) => vec![s.clone()],
                        None => stores.source_names(),
                    };
                    for n in names {
                        match stores.get(&n, false) {
                            Ok(Some(s)) => read(&n, &s.store, &mut found),
                            Ok(None) => {}
                            Err(e) => tracing::warn!(source = %n, error = %e, "cannot open a store on this node"),
                        }
                    }
                    (found, None)
                }
                Local::ReadOnly => {
                    let Some(n) = source else { return (found, None) };
                    match omesh_net::mesh::stores::open_source_read(&layout, &n) {
                        Ok(Some(s)) => {
                            read(&n, &s, &mut found);
                            (found, Some(Arc::new(s)))
                        }
                        Ok(None) => (found, None),
                        Err(e) => {
                            tracing::warn!(source = %n, error = %e, "cannot open the local store; using replicas only");
                            (found, None)
                        }
                    }
                }
            }
        })
        .await;
        let (found, store) = r.unwrap_or_default();
        self.local_store = store;
        if local != Local::Skip {
            self.listed.insert(me.to_string());
        }
        for (src, id, stored_ns, record) in found {
            let h = self.snapshots.entry((src, id)).or_default();
            // this node's own copy wins over what any peer listed
            if record.is_some() {
                h.record = record;
            }
            h.holders
                .insert(me.to_string(), Holder { kind: HolderKind::Local, domain: rt.cfg.domain.clone(), stored_ns });
        }
    }

    /// Read from `t` the records no one else supplied.
    async fn fill_records(&mut self, t: &dyn ReplicaTarget) {
        for ((source, id), h) in self.snapshots.iter_mut() {
            if h.record.is_some() || !h.holders.contains_key(t.name()) {
                continue;
            }
            match t.record(source, id).await {
                Ok(r) => h.record = Some(r),
                Err(e) => {
                    tracing::warn!(target = %t.name(), snapshot = %id.short(), error = %e, "cannot read a snapshot record")
                }
            }
        }
    }

    /// Reachable targets, nearest first.
    pub fn reachable(&self) -> Vec<(Arc<dyn ReplicaTarget>, Duration)> {
        let mut v: Vec<(Arc<dyn ReplicaTarget>, Duration)> =
            self.probes.iter().filter_map(|p| p.reachable().map(|(t, d)| (t.clone(), d))).collect();
        v.sort_by_key(|x| x.1);
        v
    }

    /// The reachable target named `name`.
    pub fn target(&self, name: &str) -> Option<(Arc<dyn ReplicaTarget>, Duration)> {
        self.probes.iter().find(|p| p.name == name).and_then(|p| p.reachable().map(|(t, d)| (t.clone(), d)))
    }
}
