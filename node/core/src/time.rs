//! Time for the whole node: instants are `jiff::Timestamp`, spans of time
//! `jiff::SignedDuration`, and times are shown in one format everywhere.
//!
//! One crate for time (jiff, which also carries the time-zone database the
//! schedules need); the `time` crate remains only under the CA, because
//! rcgen's certificate validity is expressed in it.

pub use jiff::{SignedDuration, Timestamp};

/// Now.
pub fn now() -> Timestamp {
    Timestamp::now()
}

/// Nanoseconds since the epoch (saturating far outside ±292 years).
pub fn ns(t: Timestamp) -> i64 {
    i64::try_from(t.as_nanosecond()).unwrap_or(if t.as_nanosecond() < 0 { i64::MIN } else { i64::MAX })
}

/// Now, in nanoseconds since the epoch.
pub fn now_ns() -> i64 {
    ns(now())
}

/// The instant `ns` nanoseconds after the epoch (every `i64` is in range).
pub fn from_ns(ns: i64) -> Timestamp {
    Timestamp::from_nanosecond(ns as i128).unwrap_or(if ns < 0 { Timestamp::MIN } else { Timestamp::MAX })
}

/// The time a holder records for a snapshot: its signed creation time
/// (seconds since the epoch), never later than now.
pub fn signed_time_capped(created_secs: i64) -> std::time::SystemTime {
    let now = std::time::SystemTime::now();
    let t = if created_secs <= 0 {
        std::time::UNIX_EPOCH
    } else {
        std::time::UNIX_EPOCH + std::time::Duration::from_secs(created_secs as u64)
    };
    t.min(now)
}

/// `t + d`, saturating at the ends of time.
pub fn plus(t: Timestamp, d: SignedDuration) -> Timestamp {
    t.saturating_add(d).unwrap_or(if d.is_negative() { Timestamp::MIN } else { Timestamp::MAX })
}

/// `t - d`, saturating at the ends of time.
pub fn minus(t: Timestamp, d: SignedDuration) -> Timestamp {
    t.saturating_sub(d).unwrap_or(if d.is_negative() { Timestamp::MAX } else { Timestamp::MIN })
}

/// RFC 3339 in UTC with a `+00:00` offset and only the sub-second digits
/// needed (none, 3, 6 or 9): `2026-11-25T21:30:00.123+00:00`. Every time
/// omesh prints or stores as text has this form.
pub fn rfc3339(t: Timestamp) -> String {
    let nanos = t.subsec_nanosecond().rem_euclid(1_000_000_000);
    let base = t.strftime("%Y-%m-%dT%H:%M:%S").to_string();
    let frac = if nanos == 0 {
        String::new()
    } else if nanos % 1_000_000 == 0 {
        format!(".{:03}", nanos / 1_000_000)
    } else if nanos % 1000 == 0 {
        format!(".{:06}", nanos / 1000)
    } else {
        format!(".{nanos:09}")
    };
    format!("{base}{frac}+00:00")
}

/// [`rfc3339`] of nanoseconds since the epoch.
pub fn rfc3339_ns(ns: i64) -> String {
    rfc3339(from_ns(ns))
}

/// Parse an RFC 3339 time (any offset).
pub fn parse_rfc3339(s: &str) -> Option<Timestamp> {
    s.parse::<Timestamp>().ok()
}

/// `YYYY-MM-DD HH:MM:SS` in this machine's time zone (human output).
pub fn local(ns: i64) -> String {
    from_ns(ns).to_zoned(jiff::tz::TimeZone::system()).strftime("%Y-%m-%d %H:%M:%S").to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_has_one_form() {
        let t = |s: &str| s.parse::<Timestamp>().unwrap();
        assert_eq!(rfc3339(t("2026-11-25T21:30:00Z")), "2026-11-25T21:30:00+00:00");
        assert_eq!(rfc3339(t("2026-11-25T21:30:00.120Z")), "2026-11-25T21:30:00.120+00:00");
        assert_eq!(rfc3339(t("2026-11-25T21:30:00.000123Z")), "2026-11-25T21:30:00.000123+00:00");
        assert_eq!(rfc3339(t("2026-11-25T21:30:00.000000001Z")), "2026-11-25T21:30:00.000000001+00:00");
        assert_eq!(rfc3339(t("1969-12-31T23:59:59.5Z")), "1969-12-31T23:59:59.500+00:00");
        assert_eq!(rfc3339_ns(0), "1970-01-01T00:00:00+00:00");
        let n = now_ns();
        assert_eq!(ns(from_ns(n)), n);
        assert_eq!(parse_rfc3339(&rfc3339_ns(n)).map(ns), Some(n));
    }
}
