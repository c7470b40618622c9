//! The residency boundary: where omesh may send data, enforced at every
//! connection and provable after the fact.
//!
//! ```toml
//! [residency]
//! allowed_networks = ["10.20.0.0/16"]    # peers and S3 endpoints must be here
//! forbidden_networks = ["10.99.0.0/16"]  # never (wins over allowed): e.g. the VPC behind the service link
//! bind = "10.20.0.11"                    # source address of all omesh traffic (the LNI)
//! ```
//!
//! - Outbound: every address a peer name or S3 endpoint resolves to is
//!   checked, at every connection (so an address change is caught too); one
//!   forbidden address refuses the destination, and the operation fails
//!   rather than sending anything elsewhere.
//! - Inbound: the remote address of every QUIC connection is checked before
//!   the TLS handshake is answered.
//! - Every refusal is logged with destination, address and rule, and counted.
//! - [`check_config`] shows, for every destination, the addresses, the source
//!   address and interface the kernel would use, and the verdict; the daemon
//!   refuses to start on a violation.

use serde::{Deserialize, Serialize};
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};

/// Hook deciding whether an outbound connection to (peer, address) is
/// allowed (the residency policy plugs in here).
pub type OutboundCheck = std::sync::Arc<dyn Fn(&str, SocketAddr) -> Result<(), String> + Send + Sync>;

/// Hook deciding whether an inbound connection from an address is allowed.
pub type InboundCheck = std::sync::Arc<dyn Fn(SocketAddr) -> Result<(), String> + Send + Sync>;

/// A destination a node's configuration names.
#[derive(Clone, Debug)]
pub struct Destination {
    /// "peer", "s3" or "notify" (a webhook).
    pub kind: &'static str,
    /// Its name in the configuration.
    pub name: String,
    /// `host:port`, or the URL the S3 client really connects to (the
    /// SDK's endpoint rules applied, see `S3Config::addressing`).
    pub endpoint: String,
}

/// An IP network (CIDR), matched with the `ipnet` crate. An IPv4 network
/// also matches the IPv4-mapped IPv6 form of its addresses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Net(ipnet::IpNet);

impl Net {
    /// Parse "10.0.0.0/8", "fd00::/8" or a single address.
    pub fn parse(s: &str) -> Result<Net, String> {
        let t = s.trim();
        if let Ok(n) = t.parse::<ipnet::IpNet>() {
            if n.trunc() != n {
                // "10.0.0.5/24" is a typo for an address or for 10.0.0.0/24:
                // say which network it would mean instead of guessing
                return Err(format!(
                    "{s:?} has host bits set; write the network as {} (or the single address as {})",
                    n.trunc(),
                    n.addr()
                ));
            }
            return Ok(Net(n));
        }
        if let Ok(a) = t.parse::<IpAddr>() {
            return Ok(Net(ipnet::IpNet::from(a)));
        }
        Err(match t.split_once('/') {
            Some((a, _)) if a.trim().parse::<IpAddr>().is_ok() => {
                let max = if a.contains(':') { 128 } else { 32 };
                format!("{s:?}: prefix length must be 0-{max}")
            }
            _ => format!("{s:?} is not an IP network (examples: 10.20.0.0/16, fd00::/8)"),
        })
    }

    /// Whether `ip` is in this network.
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = match (self.0, ip) {
            (ipnet::IpNet::V4(_), IpAddr::V6(v6)) => match v6.to_ipv4_mapped() {
                Some(v4) => IpAddr::V4(v4),
                None => return false,
            },
            _ => ip,
        };
        self.0.contains(&ip)
    }
}

impl<'de> Deserialize<'de> for Net {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Net::parse(&String::deserialize(d)?).map_err(serde::de::Error::custom)
    }
}

impl std::fmt::Display for Net {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.0.addr(), self.0.prefix_len())
    }
}

/// `[residency]` in the node config.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResidencyConfig {
    /// Networks peers and S3 endpoints may be in (empty: any).
    #[serde(default)]
    pub allowed_networks: Vec<Net>,
    /// Networks that are never allowed (win over allowed).
    #[serde(default)]
    pub forbidden_networks: Vec<Net>,
    /// Source address for all omesh traffic.
    #[serde(default)]
    pub bind: Option<IpAddr>,
}

/// The compiled policy.
#[derive(Debug, Default)]
pub struct Policy {
    allowed: Vec<Net>,
    forbidden: Vec<Net>,
    /// Source address.
    pub bind: Option<IpAddr>,
    /// Refusals since start.
    pub refusals: AtomicU64,
}

/// Why a destination is not allowed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Refusal {
    /// The address.
    pub address: IpAddr,
    /// The rule that refused it.
    pub rule: String,
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.address, self.rule)
    }
}

impl Policy {
    /// The policy of a `[residency]` section (its networks were parsed
    /// when the configuration was read).
    pub fn new(c: &ResidencyConfig) -> Policy {
        Policy {
            allowed: c.allowed_networks.clone(),
            forbidden: c.forbidden_networks.clone(),
            bind: c.bind,
            refusals: AtomicU64::new(0),
        }
    }

    /// Whether a policy is configured at all.
    pub fn is_active(&self) -> bool {
        !self.allowed.is_empty() || !self.forbidden.is_empty() || self.bind.is_some()
    }

    /// Verdict for one address (no side effects). An IPv4-mapped IPv6
    /// address is judged as its IPv4 address; an IPv6 address that embeds an
    /// IPv4 address for a translator or tunnel (NAT64 `64:ff9b::/96`, 6to4
    /// `2002::/16`, Teredo `2001::/32`, IPv4-compatible `::a.b.c.d`) passes
    /// only when both it and the IPv4 address it reaches pass.
    pub fn verdict(&self, ip: IpAddr) -> Result<String, Refusal> {
        let ip = canonical(ip);
        let own = self.word(ip, self.judge(ip))?;
        if let IpAddr::V6(v6) = ip
            && let Some((v4, how)) = embedded_ipv4(v6)
        {
            return match self.word(IpAddr::V4(v4), self.judge(IpAddr::V4(v4))) {
                Ok(why) => Ok(format!("{own}; the IPv4 address it embeds ({how}) {v4}: {why}")),
                Err(r) => Err(Refusal {
                    address: ip,
                    rule: format!("embeds ({how}) the IPv4 address {v4}, which {}", r.rule),
                }),
            };
        }
        Ok(own)
    }

    /// [`Policy::verdict`] without its wording: what the datagram filter
    /// asks for every packet, so it allocates nothing.
    pub fn allows(&self, ip: IpAddr) -> bool {
        let ip = canonical(ip);
        let ok = |a| !matches!(self.judge(a), Judged::Forbidden(_) | Judged::Outside);
        ok(ip)
            && match ip {
                IpAddr::V6(v6) => embedded_ipv4(v6).is_none_or(|(v4, _)| ok(IpAddr::V4(v4))),
                IpAddr::V4(_) => true,
            }
    }

    /// The rule that decides one address (its own form only).
    fn judge(&self, ip: IpAddr) -> Judged<'_> {
        if let Some(n) = self.forbidden.iter().find(|n| n.contains(ip)) {
            return Judged::Forbidden(n);
        }
        if self.allowed.is_empty() {
            return Judged::NoList;
        }
        match self.allowed.iter().find(|n| n.contains(ip)) {
            Some(n) => Judged::Allowed(n),
            None => Judged::Outside,
        }
    }

    fn word(&self, ip: IpAddr, j: Judged<'_>) -> Result<String, Refusal> {
        match j {
            Judged::Forbidden(n) => Err(Refusal {
                address: ip,
                rule: format!("is in forbidden network {n} ([residency] forbidden_networks)"),
            }),
            Judged::NoList => Ok("no allowed_networks configured".into()),
            Judged::Allowed(n) => Ok(format!("in allowed network {n}")),
            Judged::Outside => Err(Refusal {
                address: ip,
                rule: format!(
                    "is outside the allowed networks [{}] ([residency] allowed_networks)",
                    self.allowed.iter().map(|n| n.to_string()).collect::<Vec<_>>().join(", ")
                ),
            }),
        }
    }

    /// Enforce for a connection: refusals are logged and counted.
    pub fn enforce(&self, direction: &str, who: &str, ip: IpAddr) -> Result<(), String> {
        match self.verdict(ip) {
            Ok(_) => Ok(()),
            Err(r) => {
                self.refusals.fetch_add(1, Ordering::Relaxed);
                let msg = format!("refusing {direction} {who}: address {r}");
                tracing::error!(direction, destination = who, address = %ip, rule = %r.rule, "residency refusal");
                Err(msg)
            }
        }
    }
}

/// Which rule decides an address.
enum Judged<'a> {
    Forbidden(&'a Net),
    NoList,
    Allowed(&'a Net),
    Outside,
}

/// An IPv4-mapped IPv6 address as its IPv4 address.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// The IPv4 address an IPv6 address carries for a translator or tunnel,
/// and which form it is: NAT64 (`64:ff9b::/96`, RFC 6052), 6to4
/// (`2002::/16`, RFC 3056), Teredo (`2001::/32`, RFC 4380: the client's
/// address, obfuscated) and IPv4-compatible (`::a.b.c.d`, RFC 4291; not
/// `::` and `::1`). IPv4-mapped addresses are handled by the caller.
pub fn embedded_ipv4(ip: std::net::Ipv6Addr) -> Option<(std::net::Ipv4Addr, &'static str)> {
    let o = ip.octets();
    let seg = ip.segments();
    let v4 = |b: &[u8]| std::net::Ipv4Addr::new(b[0], b[1], b[2], b[3]);
    if seg[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
        return Some((v4(&o[12..16]), "NAT64"));
    }
    if seg[0] == 0x2002 {
        return Some((v4(&o[2..6]), "6to4"));
    }
    if seg[0] == 0x2001 && seg[1] == 0 {
        let c: Vec<u8> = o[12..16].iter().map(|b| b ^ 0xff).collect();
        return Some((v4(&c), "Teredo"));
    }
    if seg[..6] == [0; 6] && u32::from_be_bytes([o[12], o[13], o[14], o[15]]) > 1 {
        return Some((v4(&o[12..16]), "IPv4-compatible"));
    }
    None
}

/// One line of `omesh residency check`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct CheckLine {
    /// "peer", "s3" or "listen".
    pub kind: String,
    /// Destination name.
    pub name: String,
    /// Host as configured.
    pub host: String,
    /// One resolved address.
    pub address: String,
    /// Source address the kernel would use.
    pub source_address: Option<String>,
    /// Interface it would leave through.
    pub interface: Option<String>,
    /// Allowed?
    pub allowed: bool,
    /// Why.
    pub reason: String,
}

/// The source address and interface the kernel would use to reach `dst`
/// (a connected UDP socket sends nothing).
pub fn route_to(dst: SocketAddr, bind: Option<IpAddr>) -> Option<(IpAddr, Option<String>)> {
    let local: SocketAddr = match (bind, dst) {
        (Some(b), _) => SocketAddr::new(b, 0),
        (None, SocketAddr::V4(_)) => "0.0.0.0:0".parse().expect("valid"),
        (None, SocketAddr::V6(_)) => "[::]:0".parse().expect("valid"),
    };
    let s = std::net::UdpSocket::bind(local).ok()?;
    s.connect(dst).ok()?;
    let src = s.local_addr().ok()?.ip();
    let iface = nix::ifaddrs::getifaddrs().ok().and_then(|mut it| {
        it.find(|i| {
            i.address.as_ref().and_then(|a| {
                a.as_sockaddr_in()
                    .map(|s| IpAddr::V4(s.ip()))
                    .or_else(|| a.as_sockaddr_in6().map(|s| IpAddr::V6(s.ip())))
            }) == Some(src)
        })
        .map(|i| i.interface_name)
    });
    Some((src, iface))
}

/// Why a residency policy refuses `host` without looking it up: an AWS
/// Region's public S3 endpoint (`*.amazonaws.com` but not an S3 on Outposts
/// access point, `*.s3-outposts.*`) is outside any site by definition.
pub fn public_aws_s3_refusal(host: &str) -> Option<String> {
    let h = host.trim_end_matches('.').to_ascii_lowercase();
    ((h.ends_with(".amazonaws.com") || h.ends_with(".amazonaws.com.cn")) && !h.contains(".s3-outposts.")).then(|| {
        format!(
            "{host} is a public AWS S3 endpoint in a Region (objects would leave the site, over the service link): set endpoint to the site's S3 server, or outpost_access_point for S3 on Outposts"
        )
    })
}

/// Check every destination of node `node` (listening on `listen`) against
/// its policy.
pub async fn check_destinations(
    destinations: &[Destination],
    node: &str,
    listen: &str,
    metrics_listen: Option<&str>,
    policy: &Policy,
) -> Vec<CheckLine> {
    let mut out = Vec::new();
    let mut dests: Vec<(String, String, String, u16)> = Vec::new();
    for d in destinations {
        let (h, port) = omesh_core::addr::host_port(&d.endpoint);
        // a Region's public S3 endpoint is outside any site by definition
        // (S3 on Outposts hosts are on the rack): not even looked up
        if let Some(reason) = public_aws_s3_refusal(&h).filter(|_| policy.is_active()) {
            out.push(CheckLine {
                kind: d.kind.into(),
                name: d.name.clone(),
                host: h,
                address: String::new(),
                source_address: None,
                interface: None,
                allowed: false,
                reason,
            });
            continue;
        }
        dests.push((d.kind.into(), d.name.clone(), h, port));
    }
    for (kind, name, host, port) in dests {
        let port = if port == 0 { 443 } else { port };
        match tokio::net::lookup_host((host.as_str(), port)).await {
            Ok(addrs) => {
                for a in addrs {
                    // the kernel's own choice (no bind): with `bind` set, the
                    // route must leave from that address's interface too
                    let route = route_to(a, None);
                    let mut verdict = policy.verdict(a.ip());
                    if let (Ok(_), Some(b), Some((src, iface))) = (&verdict, policy.bind, &route)
                        && *src != b
                    {
                        verdict = Err(Refusal {
                            address: a.ip(),
                            rule: format!(
                                "the route to it leaves from {src}{}, not from bind = {b}; fix the routing table",
                                iface.as_deref().map(|i| format!(" ({i})")).unwrap_or_default()
                            ),
                        });
                    }
                    out.push(CheckLine {
                        kind: kind.clone(),
                        name: name.clone(),
                        host: host.clone(),
                        address: a.to_string(),
                        source_address: route.as_ref().map(|r| r.0.to_string()),
                        interface: route.and_then(|r| r.1),
                        allowed: verdict.is_ok(),
                        reason: match verdict {
                            Ok(r) => r,
                            Err(r) => r.to_string(),
                        },
                    });
                }
            }
            Err(e) => out.push(CheckLine {
                kind,
                name,
                host: host.clone(),
                address: String::new(),
                source_address: None,
                interface: None,
                allowed: false,
                reason: format!("cannot resolve {host}: {e}"),
            }),
        }
    }
    // the listen addresses (mesh, metrics) must be inside the boundary;
    // a metrics endpoint on loopback never crosses a network
    let listens = std::iter::once(("listen", listen)).chain(metrics_listen.map(|m| ("metrics", m)));
    for (kind, listen) in listens {
        let Ok(addrs) = tokio::net::lookup_host(listen).await else {
            out.push(CheckLine {
                kind: kind.into(),
                name: node.to_string(),
                host: listen.to_string(),
                address: String::new(),
                source_address: None,
                interface: None,
                allowed: false,
                reason: format!("cannot resolve {listen}"),
            });
            continue;
        };
        for a in addrs {
            let v = if a.ip().is_unspecified() && policy.is_active() {
                Err(Refusal {
                    address: a.ip(),
                    rule: format!(
                        "listens on every interface, including the service link; set {} to the LNI address{}",
                        if kind == "metrics" { "[metrics] listen" } else { "listen" },
                        if kind == "metrics" { " or to 127.0.0.1" } else { "" }
                    ),
                })
            } else if kind == "metrics" && a.ip().to_canonical().is_loopback() {
                Ok("loopback only: scrapers on this host, never across a network".into())
            } else {
                policy.verdict(a.ip())
            };
            out.push(CheckLine {
                kind: kind.into(),
                name: node.to_string(),
                host: listen.to_string(),
                address: a.to_string(),
                source_address: None,
                interface: None,
                allowed: v.is_ok(),
                reason: match v {
                    Ok(r) => r,
                    Err(r) => r.to_string(),
                },
            });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use std::net::Ipv6Addr;

    #[test]
    fn ipv6_forms_of_ipv4_addresses_do_not_escape_ipv4_rules() {
        let nets = |v: &[&str]| v.iter().map(|n| Net::parse(n).unwrap()).collect::<Vec<_>>();
        // the site: 10.0.0.0/8 and every global IPv6 address allowed, one
        // IPv4 subnet forbidden
        let p = Policy::new(&ResidencyConfig {
            allowed_networks: nets(&["10.0.0.0/8", "2000::/3", "64:ff9b::/96", "::/96"]),
            forbidden_networks: nets(&["10.9.0.0/16"]),
            bind: None,
        });
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        assert!(p.verdict(ip("10.1.2.3")).is_ok());
        assert!(p.verdict(ip("2001:db8::1")).is_ok(), "plain IPv6 in an allowed network");
        for outside in [
            "64:ff9b::808:808",                     // NAT64 of 8.8.8.8
            "2002:808:808::1",                      // 6to4 of 8.8.8.8
            "2001:0:4136:e378:8000:63bf:f7f7:f7f7", // Teredo client 8.8.8.8
            "::808:808",                            // IPv4-compatible 8.8.8.8
            "::ffff:8.8.8.8",                       // IPv4-mapped
        ] {
            let r = p.verdict(ip(outside));
            assert!(r.is_err(), "{outside} reaches 8.8.8.8 but was allowed: {r:?}");
        }
        let r = p.verdict(ip("64:ff9b::a09:1")).unwrap_err();
        assert!(r.rule.contains("NAT64") && r.rule.contains("10.9.0.1") && r.rule.contains("forbidden"), "{}", r.rule);
        assert!(p.verdict(ip("64:ff9b::a01:203")).is_ok(), "NAT64 of an allowed IPv4 address");
        assert!(p.verdict(ip("2002:a01:203::5")).is_ok(), "6to4 of an allowed IPv4 address");
        for a in
            ["10.1.2.3", "10.9.0.1", "8.8.8.8", "64:ff9b::808:808", "64:ff9b::a01:203", "2001:db8::1", "::ffff:8.8.8.8"]
        {
            assert_eq!(p.allows(ip(a)), p.verdict(ip(a)).is_ok(), "{a}");
        }
        assert_eq!(embedded_ipv4(Ipv6Addr::LOCALHOST), None);
        assert_eq!(embedded_ipv4(Ipv6Addr::UNSPECIFIED), None);
        assert_eq!(embedded_ipv4("fd00::808:808".parse().unwrap()), None);
    }

    use super::*;

    fn pol(a: &[&str], f: &[&str]) -> Policy {
        Policy::new(&ResidencyConfig {
            allowed_networks: a.iter().map(|s| Net::parse(s).unwrap()).collect(),
            forbidden_networks: f.iter().map(|s| Net::parse(s).unwrap()).collect(),
            bind: None,
        })
    }

    #[test]
    fn networks() {
        let n = Net::parse("10.20.0.0/16").unwrap();
        assert!(n.contains("10.20.3.4".parse().unwrap()));
        assert!(!n.contains("10.21.0.1".parse().unwrap()));
        assert!(n.contains("::ffff:10.20.0.1".parse().unwrap()), "v4-mapped v6 is the v4 address");
        assert!(Net::parse("fd00::/8").unwrap().contains("fd12::1".parse().unwrap()));
        assert!(Net::parse("10.0.0.0/33").is_err());
        assert!(Net::parse("ten").is_err());
        assert!(Net::parse("0.0.0.0/0").unwrap().contains("8.8.8.8".parse().unwrap()));
    }

    #[test]
    fn forbidden_wins_and_messages_name_the_rule() {
        let p = pol(&["10.0.0.0/8"], &["10.99.0.0/16"]);
        assert!(p.verdict("10.20.0.1".parse().unwrap()).is_ok());
        let r = p.verdict("10.99.1.1".parse().unwrap()).unwrap_err();
        assert!(r.rule.contains("forbidden network 10.99.0.0/16"), "{r}");
        let r = p.verdict("192.168.1.1".parse().unwrap()).unwrap_err();
        assert!(r.rule.contains("outside the allowed networks"), "{r}");
        assert!(p.enforce("connection to", "peer x", "192.168.1.1".parse().unwrap()).is_err());
        assert_eq!(p.refusals.load(Ordering::Relaxed), 1);
        assert!(pol(&[], &[]).verdict("8.8.8.8".parse().unwrap()).is_ok());
    }
}
