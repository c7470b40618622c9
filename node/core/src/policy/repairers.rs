//! Who adds a replica of an under-replicated snapshot: a plain function of
//! what a node sees, so every node computes the same list from the same
//! view and only the nodes on it pull (a snapshot is not copied by everyone
//! at once). A node that sees differently (a partition) may copy one
//! replica too many; it never removes one.

use std::collections::HashSet;

/// A node of the mesh as one node sees it.
#[derive(Clone, Debug, PartialEq)]
pub struct Member {
    /// Node name.
    pub name: String,
    /// Failure domain ("" = its own).
    pub domain: String,
    /// Reachable now.
    pub reachable: bool,
}

fn domain_key(name: &str, domain: &str) -> String {
    if domain.is_empty() { format!("\u{0}node:{name}") } else { domain.to_string() }
}

fn rendezvous(seed: &str, node: &str) -> [u8; 32] {
    *blake3::hash(format!("{seed}\0{node}").as_bytes()).as_bytes()
}

/// The nodes that should add a replica of a snapshot of `source` held by
/// `holders`, so that it has `factor` replicas (the source's own copy does
/// not count) in `factor` distinct failure domains where the mesh has them.
/// Candidates in a new failure domain come first, the source's own domain
/// last; ties are broken by a hash of (source, node), so the same node
/// repairs all of a source's snapshots and pulls mostly deduplicated data.
pub fn repairers(source: &str, holders: &[String], members: &[Member], factor: usize) -> Vec<String> {
    let dom = |n: &str| {
        let d = members.iter().find(|m| m.name == n).map(|m| m.domain.as_str()).unwrap_or("");
        domain_key(n, d)
    };
    let source_domain = dom(source);
    let replicas: Vec<&String> = holders.iter().filter(|h| h.as_str() != source).collect();
    let mut domains: HashSet<String> = replicas.iter().map(|h| dom(h)).collect();
    let mut count = replicas.len();
    if count >= factor && domains.len() >= factor {
        return vec![];
    }
    let mut cands: Vec<&Member> =
        members.iter().filter(|m| m.reachable && m.name != source && !holders.contains(&m.name)).collect();
    cands.sort_by_key(|m| {
        let d = domain_key(&m.name, &m.domain);
        let rank = if d == source_domain {
            2
        } else if domains.contains(&d) {
            1
        } else {
            0
        };
        (rank, rendezvous(source, &m.name))
    });
    let mut picks: Vec<String> = Vec::new();
    // first: new failure domains
    for m in &cands {
        if domains.len() >= factor {
            break;
        }
        let d = domain_key(&m.name, &m.domain);
        if d != source_domain && !domains.contains(&d) {
            domains.insert(d);
            picks.push(m.name.clone());
            count += 1;
        }
    }
    // then: enough replicas, whatever their domain
    for m in &cands {
        if count >= factor {
            break;
        }
        if !picks.contains(&m.name) {
            picks.push(m.name.clone());
            count += 1;
        }
    }
    picks
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(name: &str, domain: &str, up: bool) -> Member {
        Member { name: name.into(), domain: domain.into(), reachable: up }
    }

    fn h(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn fully_replicated_needs_nothing() {
        let ms = [m("a", "r0", true), m("b", "r1", true), m("c", "r2", true), m("d", "r3", true)];
        assert!(repairers("a", &h(&["a", "b", "c"]), &ms, 2).is_empty());
    }

    #[test]
    fn a_returning_peer_is_chosen_for_the_missing_replica() {
        // factor 3: b and d got it while c was down; now c is back
        let ms = [m("a", "r0", false), m("b", "r1", true), m("c", "r2", true), m("d", "r3", true)];
        assert_eq!(repairers("a", &h(&["b", "d"]), &ms, 3), vec!["c".to_string()]);
        // while c is still down nobody can add a third domain
        let ms2 = [m("a", "r0", true), m("b", "r1", true), m("c", "r2", false), m("d", "r3", true)];
        assert!(repairers("a", &h(&["a", "b", "d"]), &ms2, 3).is_empty());
    }

    #[test]
    fn new_domains_first_and_the_source_domain_last() {
        let ms = [m("a", "r0", true), m("a2", "r0", true), m("b", "r1", true), m("b2", "r1", true), m("c", "r2", true)];
        // held only by b (r1): the second replica goes to r2, not r1 or r0
        assert_eq!(repairers("a", &h(&["a", "b"]), &ms, 2), vec!["c".to_string()]);
        // factor 4 with three domains: r2, then a second r1 node before r0
        let p = repairers("a", &h(&["b"]), &ms, 4);
        assert_eq!(p.len(), 3);
        assert_eq!(p[0], "c");
        assert!(p[1..].contains(&"b2".to_string()) && p[1..].contains(&"a2".to_string()));
        assert_eq!(p[2], "a2", "the source's own domain is the last resort: {p:?}");
    }

    #[test]
    fn everyone_computes_the_same_repairer() {
        let ms = [m("a", "", true), m("b", "", true), m("c", "", true), m("d", "", true), m("e", "", true)];
        let p1 = repairers("a", &h(&["b"]), &ms, 2);
        let mut shuffled = ms.to_vec();
        shuffled.reverse();
        assert_eq!(p1, repairers("a", &h(&["b"]), &shuffled, 2));
        assert_eq!(p1.len(), 1);
        // and the choice is per source: another source may pick another node
        let picks: HashSet<String> = ["a", "x", "y", "z", "w"]
            .iter()
            .filter_map(|s| {
                let ms2: Vec<Member> = ms.iter().cloned().chain([m(s, "", true)]).collect();
                repairers(s, &h(&[]), &ms2, 1).into_iter().next()
            })
            .collect();
        assert!(picks.len() > 1, "rendezvous hashing spreads sources: {picks:?}");
    }

    #[test]
    fn same_domain_fills_when_domains_run_out() {
        let ms = [m("a", "r0", true), m("b", "r1", true), m("c", "r1", true)];
        assert_eq!(repairers("a", &h(&["b"]), &ms, 2), vec!["c".to_string()]);
    }
}
