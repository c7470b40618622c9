//! The object-graph walker: one state machine, no I/O, for every walk
//! over a snapshot's records by their clear links.
//!
//! A walk starts at a snapshot record's links and goes level by level:
//! the driver takes a batch of discovered ids ([`GraphWalk::next_batch`]),
//! finds out what each is (from the local store with [`resolve_local`], by
//! asking a peer which it holds, by fetching it), and tells the walker
//! ([`GraphWalk::visit`]); the walker discovers the links of every object
//! it is told to descend into. Every id is discovered once, so a walk
//! terminates on any graph, cyclic or not, after at most `limit` objects;
//! depth costs nothing (no recursion, the frontier lives on the heap or, for
//! garbage collection, on disk).
//!
//! Drivers: completeness checks before committing a replica
//! (`SourceStore::missing_below`), replication's `Have`-driven discovery,
//! mesh sync's repair, the S3 upload and verify, keyless `verify`, and the
//! garbage collector's mark (with its frontier in `gc.redb`, so a killed
//! mark resumes).

use super::error::{Result, StoreError};
use super::open::Store;
use omesh_proto::{ObjectId, ObjectKind, Seal};
use std::collections::{HashMap, HashSet, VecDeque};

/// What the driver found out about one discovered object.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Visit {
    /// An object of `kind` whose links are to be walked too (empty for
    /// blobs).
    Object {
        /// Its kind.
        kind: ObjectKind,
        /// Its links.
        links: Vec<ObjectId>,
        /// Their seals (format-2 records; empty for format 1).
        seals: Vec<Seal>,
    },
    /// Present, but its subtree is not walked (held by the peer, known
    /// complete, already marked).
    Skip,
    /// Not there.
    Missing,
}

/// Where discovered ids wait until they are resolved.
pub trait Frontier {
    /// Error of a persistent frontier.
    type Error;
    /// Record `id` as discovered; `false` if it was discovered before (it
    /// is then not walked again).
    fn discover(&mut self, id: ObjectId) -> std::result::Result<bool, Self::Error>;
    /// Remove and return up to `max` discovered ids that are not resolved
    /// yet (empty: the walk is done).
    fn take(&mut self, max: usize) -> std::result::Result<Vec<ObjectId>, Self::Error>;
}

/// A frontier in memory that hands out one level at a time: every id of a
/// batch has the same distance from the roots ([`MemFrontier::level`]).
#[derive(Default)]
pub struct MemFrontier {
    seen: HashSet<ObjectId>,
    current: VecDeque<ObjectId>,
    next: Vec<ObjectId>,
    level: usize,
}

impl MemFrontier {
    /// The level of the ids the last [`Frontier::take`] returned (0: the
    /// roots).
    pub fn level(&self) -> usize {
        self.level.saturating_sub(1)
    }

    /// Every id discovered so far.
    pub fn seen(&self) -> &HashSet<ObjectId> {
        &self.seen
    }
}

impl Frontier for MemFrontier {
    type Error = std::convert::Infallible;

    fn discover(&mut self, id: ObjectId) -> std::result::Result<bool, Self::Error> {
        if !self.seen.insert(id) {
            return Ok(false);
        }
        self.next.push(id);
        Ok(true)
    }

    fn take(&mut self, max: usize) -> std::result::Result<Vec<ObjectId>, Self::Error> {
        if self.current.is_empty() {
            if self.next.is_empty() {
                return Ok(Vec::new());
            }
            self.current = std::mem::take(&mut self.next).into();
            self.level += 1;
        }
        let n = max.min(self.current.len());
        Ok(self.current.drain(..n).collect())
    }
}

/// A walk went over its object limit (a graph far larger than any real
/// snapshot: refuse rather than run out of memory).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the object graph has more than {limit} objects; refusing to walk further")]
pub struct TooLarge {
    /// The limit.
    pub limit: u64,
}

/// A walk failed: the frontier's own error, or the limit.
#[derive(Debug, thiserror::Error)]
pub enum WalkError<E> {
    /// The frontier could not be read or written.
    #[error(transparent)]
    Frontier(E),
    /// Too many objects.
    #[error(transparent)]
    TooLarge(#[from] TooLarge),
}

/// Most objects one walk discovers by default: far above any real
/// snapshot (a billion objects), low enough that a hostile graph cannot
/// exhaust a node.
pub const DEFAULT_LIMIT: u64 = 1 << 30;

/// The walk state machine over a frontier.
pub struct GraphWalk<F: Frontier> {
    frontier: F,
    discovered: u64,
    limit: u64,
    /// A verifying walk: the seal each discovered object must have, as
    /// named by the (verified) parent that linked it first.
    seals: Option<HashMap<ObjectId, Seal>>,
    /// An object two parents name with different seals.
    conflict: Option<ObjectId>,
}

impl<F: Frontier> GraphWalk<F> {
    /// A walk over `frontier` (which may hold ids from an earlier,
    /// interrupted walk) that discovers at most `limit` objects.
    pub fn new(frontier: F, limit: u64) -> Self {
        GraphWalk { frontier, discovered: 0, limit, seals: None, conflict: None }
    }

    /// Make this a verifying walk: it remembers the seal each link names,
    /// so the driver can check every object against its parent's link
    /// ([`GraphWalk::expected_seal`]) before it trusts the object's links.
    pub fn verifying(mut self) -> Self {
        self.seals = Some(HashMap::new());
        self
    }

    /// Remember the seals `links` name (roots: the snapshot record's links).
    pub fn expect_seals(&mut self, links: &[ObjectId], seals: &[Seal]) {
        let Some(map) = self.seals.as_mut() else { return };
        for (l, s) in links.iter().zip(seals) {
            match map.get(l) {
                Some(prev) if prev != s => {
                    self.conflict.get_or_insert(*l);
                }
                Some(_) => {}
                None => {
                    map.insert(*l, *s);
                }
            }
        }
    }

    /// The seal `id` must have (verifying walks, format-2 parents).
    pub fn expected_seal(&self, id: &ObjectId) -> Option<Seal> {
        self.seals.as_ref().and_then(|m| m.get(id).copied())
    }

    /// An object that two verified parents name with different seals (no
    /// single record can satisfy both: the walk must fail).
    pub fn seal_conflict(&self) -> Option<ObjectId> {
        self.conflict
    }

    /// Discover `ids` (roots, or the links of an object).
    pub fn discover_all(&mut self, ids: &[ObjectId]) -> std::result::Result<(), WalkError<F::Error>> {
        for id in ids {
            if self.frontier.discover(*id).map_err(WalkError::Frontier)? {
                self.discovered += 1;
                if self.discovered > self.limit {
                    return Err(TooLarge { limit: self.limit }.into());
                }
            }
        }
        Ok(())
    }

    /// The next ids to resolve, at most `max` (empty: the walk is done).
    pub fn next_batch(&mut self, max: usize) -> std::result::Result<Vec<ObjectId>, WalkError<F::Error>> {
        self.frontier.take(max.max(1)).map_err(WalkError::Frontier)
    }

    /// Tell the walker what one id of the last batch is.
    pub fn visit(&mut self, visit: &Visit) -> std::result::Result<(), WalkError<F::Error>> {
        match visit {
            Visit::Object { links, seals, .. } => {
                self.expect_seals(links, seals);
                self.discover_all(links)
            }
            Visit::Skip | Visit::Missing => Ok(()),
        }
    }

    /// Objects discovered by this walk.
    pub fn discovered(&self) -> u64 {
        self.discovered
    }

    /// The frontier (its level, its seen set).
    pub fn frontier(&self) -> &F {
        &self.frontier
    }

    /// Give the frontier back (a persistent one is committed by its owner).
    pub fn into_frontier(self) -> F {
        self.frontier
    }
}

impl GraphWalk<MemFrontier> {
    /// A walk from `roots` in memory, with the default limit.
    pub fn from_roots(roots: &[ObjectId]) -> Self {
        let mut w = GraphWalk::new(MemFrontier::default(), DEFAULT_LIMIT);
        w.discover_all(roots).map_err(infallible).expect("roots are fewer than the limit");
        w
    }

    /// The next batch of an in-memory walk.
    pub fn next(&mut self, max: usize) -> Vec<ObjectId> {
        self.next_batch(max).map_err(infallible).expect("an in-memory frontier cannot fail")
    }
}

/// An in-memory walk's frontier never fails; only the limit can.
pub fn infallible(e: WalkError<std::convert::Infallible>) -> TooLarge {
    match e {
        WalkError::Frontier(never) => match never {},
        WalkError::TooLarge(t) => t,
    }
}

/// What object `id` is in `store`: missing, a blob, or a non-blob with the
/// links read from its record (check hash and seal verified, no key
/// needed).
///
/// With `expected` (a verifying walk under a format-2 parent), the record
/// held must be the one the parent names ([`StoreError::NotNamed`]), and
/// a format-1 record with links is refused there: its links carry no
/// seals, so what lies below it could not be verified.
pub fn resolve_local(store: &Store, id: &ObjectId, expected: Option<Seal>) -> Result<Visit> {
    let Some((_, loc)) = store.locate(id)? else { return Ok(Visit::Missing) };
    if let Some(exp) = expected
        && exp != loc.seal
    {
        return Err(StoreError::NotNamed { id: *id, expected: exp.short(), found: loc.seal.short() });
    }
    if loc.kind == ObjectKind::Blob {
        return Ok(Visit::Object { kind: ObjectKind::Blob, links: Vec::new(), seals: Vec::new() });
    }
    let raw = store.read_record(id)?;
    let (header, links, seals) = omesh_proto::record::sealed_links_of(&raw).map_err(|e| StoreError::Corrupt {
        id: *id,
        pack: String::new(),
        offset: loc.offset,
        reason: e.to_string(),
    })?;
    if expected.is_some() && header.format == omesh_proto::RecordFormat::V1 && !links.is_empty() {
        return Err(StoreError::Object(
            format!(
                "object {} is a format-1 {} below a format-2 snapshot: what it links cannot be verified",
                id.short(),
                loc.kind.name()
            ),
            true,
        ));
    }
    Ok(Visit::Object { kind: loc.kind, links, seals })
}

impl From<TooLarge> for StoreError {
    fn from(e: TooLarge) -> Self {
        StoreError::Object(e.to_string(), true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(i: u8) -> ObjectId {
        ObjectId([i; 32])
    }

    /// Drive a walk over a graph given as adjacency, returning the levels.
    fn walk(graph: &[(u8, &[u8])], roots: &[u8], batch: usize) -> Vec<(usize, ObjectId)> {
        let mut w = GraphWalk::from_roots(&roots.iter().map(|r| id(*r)).collect::<Vec<_>>());
        let mut out = Vec::new();
        loop {
            let b = w.next_batch(batch).unwrap();
            if b.is_empty() {
                return out;
            }
            let level = w.frontier().level();
            for x in b {
                out.push((level, x));
                let links = graph.iter().find(|(n, _)| id(*n) == x).map(|(_, l)| l.iter().map(|i| id(*i)).collect());
                let v = match links {
                    Some(links) => Visit::Object { kind: ObjectKind::Tree, links, seals: vec![] },
                    None => Visit::Missing,
                };
                w.visit(&v).unwrap();
            }
        }
    }

    #[test]
    fn levels_and_each_object_once() {
        // 1 -> 2, 3; 2 -> 4; 3 -> 4, 5 (4 is shared)
        let g: &[(u8, &[u8])] = &[(1, &[2, 3]), (2, &[4]), (3, &[4, 5]), (4, &[]), (5, &[])];
        let v = walk(g, &[1], 1);
        assert_eq!(v, vec![(0, id(1)), (1, id(2)), (1, id(3)), (2, id(4)), (2, id(5))]);
        // batch size changes nothing but the number of batches
        assert_eq!(walk(g, &[1], 100), v);
    }

    #[test]
    fn cycles_and_self_links_terminate() {
        let g: &[(u8, &[u8])] = &[(1, &[1, 2]), (2, &[3]), (3, &[1, 2])];
        let v = walk(g, &[1], 8);
        assert_eq!(v.len(), 3);
    }

    #[test]
    fn a_deep_chain_needs_no_stack() {
        let mut w = GraphWalk::from_roots(&[ObjectId([0; 32])]);
        let mut n = 0u64;
        loop {
            let b = w.next_batch(1).unwrap();
            if b.is_empty() {
                break;
            }
            n += 1;
            if n < 200_000 {
                let mut next = [0u8; 32];
                next[..8].copy_from_slice(&n.to_le_bytes());
                w.visit(&Visit::Object { kind: ObjectKind::Tree, links: vec![ObjectId(next)], seals: vec![] }).unwrap();
            }
        }
        assert_eq!(n, 200_000);
    }

    #[test]
    fn the_limit_stops_a_huge_graph() {
        let mut w = GraphWalk::new(MemFrontier::default(), 10);
        w.discover_all(&[id(0)]).unwrap();
        let _ = w.next_batch(1).unwrap();
        let links: Vec<ObjectId> = (1..=20).map(id).collect();
        assert_eq!(
            infallible(w.visit(&Visit::Object { kind: ObjectKind::Tree, links, seals: vec![] }).unwrap_err()).limit,
            10
        );
    }

    #[test]
    fn a_verifying_walk_remembers_the_first_seal_and_flags_a_second() {
        let mut w = GraphWalk::from_roots(&[id(1)]).verifying();
        w.expect_seals(&[id(1)], &[Seal([1; 32])]);
        assert_eq!(w.expected_seal(&id(1)), Some(Seal([1; 32])));
        let _ = w.next(8);
        let v = Visit::Object {
            kind: ObjectKind::Tree,
            links: vec![id(2), id(3)],
            seals: vec![Seal([2; 32]), Seal([3; 32])],
        };
        w.visit(&v).unwrap();
        assert_eq!(w.expected_seal(&id(3)), Some(Seal([3; 32])));
        assert_eq!(w.seal_conflict(), None);
        let other = Visit::Object { kind: ObjectKind::Tree, links: vec![id(3)], seals: vec![Seal([9; 32])] };
        w.visit(&other).unwrap();
        assert_eq!(w.expected_seal(&id(3)), Some(Seal([3; 32])), "the first verified parent's seal stays");
        assert_eq!(w.seal_conflict(), Some(id(3)));
        // a walk that does not verify keeps nothing
        let mut plain = GraphWalk::from_roots(&[id(1)]);
        plain.visit(&v).unwrap();
        assert_eq!(plain.expected_seal(&id(2)), None);
    }
}
