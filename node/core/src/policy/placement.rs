//! Which peers receive a snapshot: distinct failure domains first, lowest
//! round-trip time second. Plain functions over data, tested without a
//! network.

use std::time::Duration;

/// A peer that could hold a replica.
#[derive(Clone, Debug, PartialEq)]
pub struct Candidate {
    /// Peer name.
    pub name: String,
    /// Failure-domain label ("" = unlabelled, treated as its own domain).
    pub domain: String,
    /// Measured round-trip time; `None` when unreachable.
    pub rtt: Option<Duration>,
    /// Already holds earlier snapshots of this source (so it already has
    /// most of the data): preferred over other peers of its domain.
    pub holds: bool,
}

fn domain_key(c: &Candidate) -> String {
    if c.domain.is_empty() { format!("\u{0}node:{}", c.name) } else { c.domain.clone() }
}

/// Reachable candidates in order of preference: first one peer of each
/// failure domain other than our own (nearest domain first), then one of our
/// own domain, then everyone else by RTT. Within a domain, a peer that
/// already holds this source's earlier snapshots comes first (placement is
/// sticky, so an incremental backup sends only new data), then the nearest.
/// The first
/// `factor` entries are the placement; the rest are fallbacks, in order,
/// for when a chosen peer fails during the transfer.
pub fn rank(own_domain: &str, cands: &[Candidate]) -> Vec<Candidate> {
    let mut reachable: Vec<&Candidate> = cands.iter().filter(|c| c.rtt.is_some()).collect();
    reachable.sort_by(|a, b| b.holds.cmp(&a.holds).then(a.rtt.cmp(&b.rtt)).then(a.name.cmp(&b.name)));
    let mut out: Vec<Candidate> = Vec::new();
    let mut used = std::collections::HashSet::new();
    let own = if own_domain.is_empty() { None } else { Some(own_domain.to_string()) };
    for pass in 0..3 {
        for c in &reachable {
            if out.iter().any(|o| o.name == c.name) {
                continue;
            }
            let d = domain_key(c);
            let ok = match pass {
                0 => !used.contains(&d) && Some(&d) != own.as_ref(),
                1 => !used.contains(&d),
                _ => true,
            };
            if ok {
                used.insert(d);
                out.push((*c).clone());
            }
        }
    }
    out
}

/// Whether a set of peers covers `n` distinct failure domains.
pub fn distinct_domains(chosen: &[Candidate]) -> usize {
    chosen.iter().map(domain_key).collect::<std::collections::HashSet<_>>().len()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(name: &str, domain: &str, rtt_us: Option<u64>) -> Candidate {
        Candidate { name: name.into(), domain: domain.into(), rtt: rtt_us.map(Duration::from_micros), holds: false }
    }

    #[test]
    fn distinct_domains_before_rtt() {
        let cands = [c("b", "rack-1", Some(100)), c("c", "rack-1", Some(50)), c("d", "rack-2", Some(900))];
        let r = rank("rack-0", &cands);
        let names: Vec<&str> = r.iter().map(|x| x.name.as_str()).collect();
        // nearest of rack-1 (c), then rack-2 (d) although b is nearer
        assert_eq!(&names[..2], &["c", "d"]);
        assert_eq!(names[2], "b");
        assert_eq!(distinct_domains(&r[..2]), 2);
    }

    #[test]
    fn own_domain_last_and_unreachable_excluded() {
        let cands = [c("b", "rack-0", Some(10)), c("c", "rack-1", Some(500)), c("d", "rack-2", None)];
        let r = rank("rack-0", &cands);
        let names: Vec<&str> = r.iter().map(|x| x.name.as_str()).collect();
        assert_eq!(names, vec!["c", "b"]);
    }

    #[test]
    fn sticky_within_a_domain() {
        let mut b = c("b", "rack-1", Some(100));
        b.holds = true;
        let cands = [b, c("c", "rack-1", Some(50)), c("d", "rack-2", Some(70))];
        let r = rank("rack-0", &cands);
        let names: Vec<&str> = r.iter().map(|x| x.name.as_str()).collect();
        assert_eq!(&names[..2], &["b", "d"], "the peer holding earlier snapshots keeps its place");
        assert_eq!(distinct_domains(&r[..2]), 2);
    }

    #[test]
    fn unlabelled_peers_are_their_own_domains() {
        let cands = [c("b", "", Some(30)), c("c", "", Some(20))];
        let r = rank("", &cands);
        assert_eq!(r.iter().map(|x| x.name.as_str()).collect::<Vec<_>>(), vec!["c", "b"]);
        assert_eq!(distinct_domains(&r), 2);
    }

    #[test]
    fn same_domain_fills_when_domains_run_out() {
        let cands = [c("b", "r1", Some(30)), c("c", "r1", Some(20)), c("d", "r1", Some(10))];
        let r = rank("r0", &cands);
        assert_eq!(r.iter().map(|x| x.name.as_str()).collect::<Vec<_>>(), vec!["d", "c", "b"]);
        assert_eq!(distinct_domains(&r[..2]), 1);
    }
}
