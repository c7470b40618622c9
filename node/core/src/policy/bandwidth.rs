//! Bandwidth limits: a global limit and per-peer limits, each with
//! time-of-day windows ("unlimited 22:00-06:00, 200 Mbit/s during the
//! day"). They pace what this node sends when it replicates and what it
//! pulls when it repairs other nodes' replicas; restores run at full speed
//! (getting a server back is never throttled).
//!
//! Pacing is virtual scheduling: every send of `n` bytes is given the next
//! free slot of `n / rate` seconds and waits for the end of it, so over any
//! interval the bytes sent stay within the rate (no burst beyond one
//! piece), and windows take effect at the next piece.

use crate::time::Timestamp;
use serde::Deserialize;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A rate in bytes per second; `Rate(None)` is unlimited. Parsed from the
/// configuration once ([`Rate::parse`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Rate(pub Option<u64>);

impl Rate {
    /// No limit.
    pub const UNLIMITED: Rate = Rate(None);

    /// Parse "unlimited", "200 Mbit/s", "25 MB/s", "10 MiB/s", "1 Gbit/s"
    /// or a plain number of bytes per second.
    pub fn parse(s: &str) -> Result<Rate, String> {
        parse_rate(s).map(Rate)
    }

    /// Bytes per second, `None` when unlimited.
    pub fn bytes_per_sec(self) -> Option<u64> {
        self.0
    }
}

impl<'de> Deserialize<'de> for Rate {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Rate::parse(&String::deserialize(d)?).map_err(serde::de::Error::custom)
    }
}

/// A time of day, minutes after midnight (0..=1440), from "HH:MM".
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TimeOfDay(pub u32);

impl<'de> Deserialize<'de> for TimeOfDay {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        parse_hhmm(&String::deserialize(d)?).map(TimeOfDay).map_err(serde::de::Error::custom)
    }
}

fn parse_rate(s: &str) -> Result<Option<u64>, String> {
    let o = s.trim();
    let t = o.to_ascii_lowercase();
    if t == "unlimited" || t == "none" {
        return Ok(None);
    }
    let examples = "examples: \"200 Mbit/s\", \"25 MB/s\", \"unlimited\"";
    // "/s" or "ps" ends a unit; the case of a bare b/B is kept: "MB" is
    // bytes, while "Mb" and "Mbps" mean megabits to some tools and
    // megabytes to others (tc), so they are refused rather than guessed
    let body = if t.ends_with("/s") || t.ends_with("ps") { &o[..o.len() - 2] } else { o }.trim();
    let split = body.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(body.len());
    let (num, unit) = body.split_at(split);
    let n: f64 = num.parse().map_err(|_| format!("{s:?} is not a rate ({examples})"))?;
    let unit = unit.trim();
    let lower = unit.to_ascii_lowercase();
    // "KiB", "mib"...: binary prefixes are bytes whatever the case
    if unit.ends_with('b') && !lower.ends_with("bit") && !lower.ends_with("ib") {
        let prefix = &unit[..unit.len() - 1];
        return Err(format!(
            "{s:?}: {unit:?} is ambiguous (bits or bytes?); write \"{num} {prefix}bit/s\" for bits or \"{num} {}B/s\" for bytes",
            prefix.to_ascii_uppercase()
        ));
    }
    let bytes_per_unit: f64 = match lower.as_str() {
        "" | "b" => 1.0,
        "bit" => 1.0 / 8.0,
        "kbit" => 1e3 / 8.0,
        "mbit" => 1e6 / 8.0,
        "gbit" => 1e9 / 8.0,
        "kb" => 1e3,
        "mb" => 1e6,
        "gb" => 1e9,
        "kib" => 1024.0,
        "mib" => 1024.0 * 1024.0,
        "gib" => 1024.0 * 1024.0 * 1024.0,
        u => {
            return Err(format!(
                "{s:?}: unknown rate unit {u:?} (use bit, kbit, Mbit, Gbit, B, KB, MB, GB, KiB, MiB, GiB per second; {examples})"
            ));
        }
    };
    let r = (n * bytes_per_unit) as u64;
    if r == 0 {
        return Err(format!("{s:?}: a rate must be positive (or \"unlimited\")"));
    }
    Ok(Some(r))
}

/// `[[bandwidth.window]]`: a different limit between two times of day.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WindowConfig {
    /// Start "HH:MM" (local time in `[bandwidth] timezone`).
    pub from: TimeOfDay,
    /// End "HH:MM" (may be earlier than `from`: the window spans midnight).
    pub to: TimeOfDay,
    /// Limit inside the window.
    pub limit: Rate,
}

/// `[[bandwidth.peer]]`: a limit for one peer (or S3 target).
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PeerLimitConfig {
    /// Peer or S3 target name.
    pub name: String,
    /// Limit outside its windows.
    #[serde(default)]
    pub limit: Option<Rate>,
    /// Windows.
    #[serde(default)]
    pub window: Vec<WindowConfig>,
}

/// `[bandwidth]`
#[derive(Clone, Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct BandwidthConfig {
    /// IANA time zone of the windows (default UTC).
    #[serde(default)]
    pub timezone: Option<String>,
    /// Global limit outside its windows (default unlimited).
    #[serde(default)]
    pub limit: Option<Rate>,
    /// Global windows.
    #[serde(default)]
    pub window: Vec<WindowConfig>,
    /// Per-peer limits (apply in addition to the global one).
    #[serde(default)]
    pub peer: Vec<PeerLimitConfig>,
}

/// A limit that depends on the time of day.
#[derive(Clone, Debug, PartialEq)]
pub struct RatePlan {
    /// Outside every window.
    pub default: Rate,
    /// (from minute of day, to minute of day, rate); the first match wins.
    pub windows: Vec<(u32, u32, Rate)>,
}

fn hhmm(t: TimeOfDay) -> String {
    format!("{:02}:{:02}", t.0 / 60, t.0 % 60)
}

fn parse_hhmm(s: &str) -> Result<u32, String> {
    let (h, m) = s.trim().split_once(':').ok_or_else(|| format!("{s:?} is not a time of day (HH:MM)"))?;
    let (h, m): (u32, u32) = (
        h.parse().map_err(|_| format!("{s:?} is not a time of day (HH:MM)"))?,
        m.parse().map_err(|_| format!("{s:?} is not a time of day (HH:MM)"))?,
    );
    if h > 24 || m > 59 || (h == 24 && m != 0) {
        return Err(format!("{s:?} is not a time of day (00:00 to 24:00)"));
    }
    Ok(h * 60 + m)
}

impl RatePlan {
    /// Compile a limit and its windows; errors name the setting.
    pub fn new(what: &str, limit: Option<Rate>, windows: &[WindowConfig]) -> Result<RatePlan, String> {
        let mut w = Vec::new();
        for x in windows {
            if x.from == x.to {
                return Err(format!("{what} window {}-{} is empty", hhmm(x.from), hhmm(x.to)));
            }
            w.push((x.from.0, x.to.0, x.limit));
        }
        Ok(RatePlan { default: limit.unwrap_or_default(), windows: w })
    }

    /// The rate at a minute of the day (0..1440).
    pub fn rate_at(&self, minute: u32) -> Rate {
        for (from, to, r) in &self.windows {
            let inside = if from < to { minute >= *from && minute < *to } else { minute >= *from || minute < *to };
            if inside {
                return *r;
            }
        }
        self.default
    }

    /// Whether it never limits.
    pub fn is_unlimited(&self) -> bool {
        self.default.0.is_none() && self.windows.iter().all(|w| w.2.0.is_none())
    }
}

/// One paced flow (virtual scheduling).
struct Bucket {
    plan: RatePlan,
    next_free: std::sync::Mutex<Instant>,
}

impl Bucket {
    fn new(plan: RatePlan) -> Self {
        Bucket { plan, next_free: std::sync::Mutex::new(Instant::now()) }
    }

    /// Reserve `n` bytes at `rate`; returns when they may be considered sent.
    fn reserve(&self, n: u64, rate: Rate, now: Instant) -> Option<Instant> {
        let r = rate.0?;
        let mut g = self.next_free.lock().unwrap_or_else(|e| e.into_inner());
        let start = (*g).max(now);
        let done = start + Duration::from_secs_f64(n as f64 / r as f64);
        *g = done;
        Some(done)
    }
}

/// The node's limits. They can be replaced while the node runs (a
/// configuration reload): every flow paces by the limits in force when it
/// asks.
pub struct Limiter {
    plans: std::sync::RwLock<Arc<Plans>>,
}

struct Plans {
    tz: jiff::tz::TimeZone,
    global: Bucket,
    peers: HashMap<String, Bucket>,
    unlimited: bool,
}

impl std::fmt::Debug for Limiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let p = self.plans();
        write!(f, "Limiter(global {:?}, {} peers)", p.global.plan, p.peers.len())
    }
}

impl Plans {
    fn compile(cfg: &BandwidthConfig) -> Result<Plans, String> {
        let tz =
            super::schedule::time_zone(cfg.timezone.as_deref()).map_err(|e| format!("[bandwidth] timezone: {e}"))?;
        let global = RatePlan::new("[bandwidth]", cfg.limit, &cfg.window)?;
        let mut peers = HashMap::new();
        for p in &cfg.peer {
            let plan = RatePlan::new(&format!("[[bandwidth.peer]] {:?}", p.name), p.limit, &p.window)?;
            if peers.insert(p.name.clone(), Bucket::new(plan)).is_some() {
                return Err(format!("[[bandwidth.peer]] {:?} is listed twice", p.name));
            }
        }
        let unlimited = global.is_unlimited() && peers.values().all(|b| b.plan.is_unlimited());
        Ok(Plans { tz, global: Bucket::new(global), peers, unlimited })
    }

    fn minute(&self, t: Timestamp) -> u32 {
        let l = t.to_zoned(self.tz.clone());
        l.hour() as u32 * 60 + l.minute() as u32
    }

    fn rates_at(&self, peer: &str, t: Timestamp) -> (Rate, Rate) {
        let m = self.minute(t);
        (self.global.plan.rate_at(m), self.peers.get(peer).map(|b| b.plan.rate_at(m)).unwrap_or_default())
    }
}

impl Limiter {
    /// Compile `[bandwidth]`, limited or not (a node that may reload it).
    pub fn compile(cfg: &BandwidthConfig) -> Result<Limiter, String> {
        Ok(Limiter { plans: std::sync::RwLock::new(Arc::new(Plans::compile(cfg)?)) })
    }

    /// Replace the limits (a configuration reload); an invalid
    /// `[bandwidth]` leaves the limits in force unchanged.
    pub fn replace(&self, cfg: &BandwidthConfig) -> Result<(), String> {
        let p = Arc::new(Plans::compile(cfg)?);
        *self.plans.write().unwrap_or_else(|e| e.into_inner()) = p;
        Ok(())
    }

    fn plans(&self) -> Arc<Plans> {
        self.plans.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// The limits in force at `t` for `peer`: (global, peer).
    pub fn rates_at(&self, peer: &str, t: Timestamp) -> (Rate, Rate) {
        self.plans().rates_at(peer, t)
    }

    /// Reserve `n` more bytes to or from `peer` within the limits; returns
    /// the instant until which the caller must wait before sending more
    /// (`None`: no limit applies now). Async callers sleep until then,
    /// worker threads use [`Limiter::pace_blocking`].
    pub fn reserve(&self, peer: &str, n: u64) -> Option<Instant> {
        let p = self.plans();
        if p.unlimited {
            return None;
        }
        let (g, r) = p.rates_at(peer, crate::time::now());
        let now = Instant::now();
        let a = p.global.reserve(n, g, now);
        let b = p.peers.get(peer).and_then(|bk| bk.reserve(n, r, now));
        a.into_iter().chain(b).max()
    }

    /// Blocking variant for worker threads.
    pub fn pace_blocking(&self, peer: &str, n: u64) {
        if let Some(until) = self.reserve(peer, n) {
            std::thread::sleep(until.saturating_duration_since(Instant::now()));
        }
    }
}

/// A single paced flow at a fixed rate (scrub's read rate).
pub struct Pacer {
    bucket: Bucket,
    rate: Rate,
}

impl Pacer {
    /// At `rate` bytes per second.
    pub fn new(rate: Rate) -> Self {
        Pacer { bucket: Bucket::new(RatePlan { default: rate, windows: vec![] }), rate }
    }

    /// Block until `n` more bytes fit.
    pub fn pace_blocking(&self, n: u64) {
        if let Some(until) = self.bucket.reserve(n, self.rate, Instant::now()) {
            std::thread::sleep(until.saturating_duration_since(Instant::now()));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(s: &str) -> Rate {
        Rate::parse(s).unwrap()
    }

    fn w(from: &str, to: &str, limit: &str) -> WindowConfig {
        WindowConfig {
            from: TimeOfDay(parse_hhmm(from).unwrap()),
            to: TimeOfDay(parse_hhmm(to).unwrap()),
            limit: r(limit),
        }
    }

    #[test]
    fn rates_parse() {
        assert_eq!(parse_rate("200 Mbit/s").unwrap(), Some(25_000_000));
        assert_eq!(parse_rate("25MB/s").unwrap(), Some(25_000_000));
        assert_eq!(parse_rate("1 MiB/s").unwrap(), Some(1 << 20));
        assert_eq!(parse_rate("unlimited").unwrap(), None);
        assert_eq!(parse_rate("1000").unwrap(), Some(1000));
        assert!(parse_rate("fast").is_err());
        assert_eq!(parse_rate("100 MBps").unwrap(), Some(100_000_000));
        assert_eq!(parse_rate("100 mbit").unwrap(), Some(12_500_000));
        assert_eq!(parse_rate("2.5 GB").unwrap(), Some(2_500_000_000));
        assert_eq!(parse_rate("10 mib/s").unwrap(), Some(10 << 20));
        assert_eq!(parse_rate("16 MiB/S").unwrap(), Some(16 << 20));
        assert_eq!(parse_rate("100 MBPS").unwrap(), Some(100_000_000));
        assert_eq!(parse_rate("1 gib").unwrap(), Some(1 << 30));
        for ambiguous in ["100Mbps", "100 mbps", "100 Mb/s", "5 kb"] {
            let e = parse_rate(ambiguous).unwrap_err();
            assert!(e.contains("ambiguous") && e.contains("bit/s"), "{ambiguous}: {e}");
        }
        assert!(parse_rate("0 Mbit/s").is_err());
        assert!(parse_rate("5 parsecs/s").is_err());
    }

    #[test]
    fn windows_span_midnight_and_fall_back_to_the_default() {
        let p = RatePlan::new(
            "t",
            Some(r("200 Mbit/s")),
            &[w("22:00", "06:00", "unlimited"), w("12:00", "13:00", "1 Gbit/s")],
        )
        .unwrap();
        assert_eq!(p.rate_at(23 * 60), Rate(None));
        assert_eq!(p.rate_at(0), Rate(None));
        assert_eq!(p.rate_at(5 * 60 + 59), Rate(None));
        assert_eq!(p.rate_at(6 * 60), Rate(Some(25_000_000)));
        assert_eq!(p.rate_at(12 * 60 + 30), Rate(Some(125_000_000)));
        assert_eq!(p.rate_at(21 * 60 + 59), Rate(Some(25_000_000)));
        assert!(parse_hhmm("25:00").is_err());
        assert!(RatePlan::new("t", None, &[w("01:00", "01:00", "1")]).is_err());
    }

    #[test]
    fn limiter_uses_local_time_and_per_peer_limits() {
        let cfg = BandwidthConfig {
            timezone: Some("Europe/Berlin".into()),
            limit: Some(r("100 Mbit/s")),
            window: vec![w("22:00", "06:00", "unlimited")],
            peer: vec![PeerLimitConfig { name: "srv-c".into(), limit: Some(r("10 Mbit/s")), window: vec![] }],
        };
        let l = Limiter::compile(&cfg).unwrap();
        // 21:30 UTC in November is 22:30 in Berlin: inside the window
        let night: Timestamp = "2026-11-25T21:30:00Z".parse().unwrap();
        let day: Timestamp = "2026-11-25T10:00:00Z".parse().unwrap();
        assert_eq!(l.rates_at("srv-b", night), (Rate(None), Rate(None)));
        assert_eq!(l.rates_at("srv-b", day), (Rate(Some(12_500_000)), Rate(None)));
        assert_eq!(l.rates_at("srv-c", night), (Rate(None), Rate(Some(1_250_000))));
        assert!(Limiter::compile(&BandwidthConfig::default()).unwrap().reserve("srv-b", 1 << 30).is_none());
    }

    #[test]
    fn virtual_scheduling_spaces_reservations() {
        let b = Bucket::new(RatePlan { default: Rate(Some(1000)), windows: vec![] });
        let t0 = Instant::now();
        let a = b.reserve(500, Rate(Some(1000)), t0).unwrap();
        let c = b.reserve(500, Rate(Some(1000)), t0).unwrap();
        assert_eq!(a - t0, Duration::from_millis(500));
        assert_eq!(c - t0, Duration::from_millis(1000));
        // after an idle period no credit is carried over
        let later = t0 + Duration::from_secs(10);
        assert_eq!(b.reserve(1000, Rate(Some(1000)), later).unwrap() - later, Duration::from_secs(1));
        assert!(b.reserve(1000, Rate(None), later).is_none());
    }
}
