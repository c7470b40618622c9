//! Backup schedules: cron expressions in a time zone with random jitter,
//! or a plain interval. Plain functions with `now` passed in.

use crate::time::{self, SignedDuration, Timestamp};
use serde::Deserialize;
use std::str::FromStr;

/// `[[schedule]]` in the node config.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScheduleConfig {
    /// Name (for logs, status and the run history).
    pub name: String,
    /// Cron expression (5 fields, or 6 with seconds first), e.g. "30 1 * * *".
    #[serde(default)]
    pub cron: Option<String>,
    /// IANA time zone of the cron expression (default UTC).
    #[serde(default)]
    pub timezone: Option<String>,
    /// Or: run every this many seconds (low-RPO sources).
    #[serde(default)]
    pub interval_secs: Option<u64>,
    /// Random delay added to each run, so a site's nodes do not all start at once.
    #[serde(default)]
    pub jitter_secs: u64,
    /// Paths (default: `[backup] paths`).
    #[serde(default)]
    pub paths: Vec<std::path::PathBuf>,
    /// The recovery point objective this schedule is meant to meet (status
    /// reports the achieved RPO against it).
    #[serde(default)]
    pub rpo_secs: Option<u64>,
    /// Shell command run before each of its backups (instead of `[hooks] pre`).
    #[serde(default)]
    pub pre: Option<String>,
    /// Shell command run after each (instead of `[hooks] post`).
    #[serde(default)]
    pub post: Option<String>,
}

/// A compiled schedule (compiled when the configuration is read).
#[derive(Clone, Debug, Deserialize)]
#[serde(try_from = "ScheduleConfig")]
pub struct Schedule {
    /// Settings.
    pub cfg: ScheduleConfig,
    cron: Option<croner::Cron>,
    tz: jiff::tz::TimeZone,
}

/// A time zone by IANA name (the tz database is built in, so a server
/// without tzdata still knows "Europe/Berlin").
pub fn time_zone(name: Option<&str>) -> Result<jiff::tz::TimeZone, String> {
    match name {
        None => Ok(jiff::tz::TimeZone::UTC),
        Some(t) => jiff::tz::TimeZone::get(t)
            .map_err(|_| format!("unknown time zone {t:?} (use an IANA name like \"Europe/Berlin\")")),
    }
}

fn to_zoned(t: Timestamp, tz: &jiff::tz::TimeZone) -> Option<jiff::Zoned> {
    Some(t.to_zoned(tz.clone()))
}

fn from_zoned(z: &jiff::Zoned) -> Option<Timestamp> {
    Some(z.timestamp())
}

impl TryFrom<ScheduleConfig> for Schedule {
    type Error = String;
    fn try_from(c: ScheduleConfig) -> Result<Self, String> {
        Schedule::new(c)
    }
}

impl Schedule {
    /// Compile; errors name the schedule and setting.
    pub fn new(cfg: ScheduleConfig) -> Result<Schedule, String> {
        let tz =
            time_zone(cfg.timezone.as_deref()).map_err(|e| format!("[[schedule]] {:?}: timezone: {e}", cfg.name))?;
        let cron = match (&cfg.cron, cfg.interval_secs) {
            (Some(c), None) => Some(
                croner::parser::CronParser::builder()
                    .seconds(croner::parser::Seconds::Optional)
                    .build()
                    .parse(c)
                    .map_err(|e| format!("[[schedule]] {:?}: cron {c:?}: {e}", cfg.name))?,
            ),
            (None, Some(0)) => return Err(format!("[[schedule]] {:?}: interval_secs must be positive", cfg.name)),
            (None, Some(_)) => None,
            _ => return Err(format!("[[schedule]] {:?}: set exactly one of `cron` and `interval_secs`", cfg.name)),
        };
        Ok(Schedule { cfg, cron, tz })
    }

    /// Jitter for the occurrence at `at`: deterministic per node, schedule
    /// and occurrence (so it is the same after a restart), spread over
    /// `jitter_secs`.
    fn jitter(&self, node: &str, at: Timestamp) -> SignedDuration {
        if self.cfg.jitter_secs == 0 {
            return SignedDuration::ZERO;
        }
        let h = blake3::hash(format!("{node}\0{}\0{}", self.cfg.name, at.as_second()).as_bytes());
        let v = u64::from_le_bytes(h.as_bytes()[..8].try_into().expect("8 bytes"));
        SignedDuration::from_secs((v % self.cfg.jitter_secs) as i64)
    }

    /// The scheduled occurrence (before jitter) strictly after `t`.
    fn next_occurrence(&self, t: Timestamp) -> Option<Timestamp> {
        match &self.cron {
            Some(c) => {
                let local = to_zoned(t, &self.tz)?;
                c.find_next_occurrence(&local, false).ok().and_then(|d| from_zoned(&d))
            }
            None => {
                let every = self.cfg.interval_secs.expect("interval") as i64;
                let k = t.as_second().div_euclid(every) + 1;
                Timestamp::from_second(k * every).ok()
            }
        }
    }

    /// The latest scheduled occurrence (before jitter) at or before `t`.
    fn previous_occurrence(&self, t: Timestamp) -> Option<Timestamp> {
        match &self.cron {
            Some(c) => {
                let local = to_zoned(t, &self.tz)?;
                c.find_previous_occurrence(&local, true).ok().and_then(|d| from_zoned(&d))
            }
            None => {
                let every = self.cfg.interval_secs.expect("interval") as i64;
                Timestamp::from_second(t.as_second().div_euclid(every) * every).ok()
            }
        }
    }

    /// When to run next, given the last run's start (if any) and `now`:
    /// a run missed while the node was down (its time passed after the last
    /// run) is due immediately; otherwise the next occurrence plus jitter.
    pub fn next_run(&self, node: &str, last_run: Option<Timestamp>, now: Timestamp) -> Timestamp {
        if let Some(prev) = self.previous_occurrence(now) {
            let due = time::plus(prev, self.jitter(node, prev));
            let missed = match last_run {
                Some(l) => l < prev,
                // never ran: only an interval schedule starts at once
                None => self.cron.is_none(),
            };
            if missed && due <= now {
                return now;
            }
            if missed && due > now {
                return due;
            }
        }
        let next = self.next_occurrence(now).unwrap_or(time::plus(now, SignedDuration::from_hours(365 * 24)));
        time::plus(next, self.jitter(node, next))
    }

    /// Human description.
    pub fn describe(&self) -> String {
        match (&self.cfg.cron, self.cfg.interval_secs) {
            (Some(c), _) => format!("cron {c:?} {}", self.tz.iana_name().unwrap_or("UTC")),
            (_, Some(s)) => format!("every {s}s"),
            _ => String::new(),
        }
    }
}

impl FromStr for Schedule {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Schedule::new(ScheduleConfig {
            name: "cli".into(),
            cron: Some(s.into()),
            timezone: None,
            interval_secs: None,
            jitter_secs: 0,
            paths: vec![],
            rpo_secs: None,
            pre: None,
            post: None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    fn sched(cron: Option<&str>, interval: Option<u64>, tz: Option<&str>, jitter: u64) -> Schedule {
        Schedule::new(ScheduleConfig {
            name: "nightly".into(),
            cron: cron.map(String::from),
            timezone: tz.map(String::from),
            interval_secs: interval,
            jitter_secs: jitter,
            paths: vec![],
            rpo_secs: None,
            pre: None,
            post: None,
        })
        .unwrap()
    }

    #[test]
    fn cron_in_a_time_zone() {
        // 01:30 in Berlin is 00:30 UTC in winter
        let s = sched(Some("30 1 * * *"), None, Some("Europe/Berlin"), 0);
        let now = t("2026-11-25T12:00:00Z");
        assert_eq!(s.next_run("n", Some(t("2026-11-25T00:30:00Z")), now), t("2026-11-26T00:30:00Z"));
        // summer time: 23:30 UTC the day before
        let now = t("2026-07-01T12:00:00Z");
        assert_eq!(s.next_run("n", Some(t("2026-06-30T23:30:00Z")), now), t("2026-07-01T23:30:00Z"));
    }

    #[test]
    fn a_missed_run_runs_at_start() {
        let s = sched(Some("30 1 * * *"), None, None, 0);
        // the node was down from before 01:30 until 09:00: run now
        let now = t("2026-11-25T09:00:00Z");
        assert_eq!(s.next_run("n", Some(t("2026-11-24T01:30:00Z")), now), now);
        // it ran at 01:30: next is tomorrow
        assert_eq!(s.next_run("n", Some(t("2026-11-25T01:30:05Z")), now), t("2026-11-26T01:30:00Z"));
    }

    #[test]
    fn jitter_is_bounded_and_stable() {
        let s = sched(Some("0 2 * * *"), None, None, 900);
        let now = t("2026-11-25T12:00:00Z");
        let a = s.next_run("srv-a", Some(now), now);
        let b = s.next_run("srv-b", Some(now), now);
        for x in [a, b] {
            assert!(x >= t("2026-11-26T02:00:00Z") && x < t("2026-11-26T02:15:00Z"), "{x}");
        }
        assert_eq!(a, s.next_run("srv-a", Some(now), now), "same after a restart");
        assert_ne!(a, b, "nodes are spread out");
    }

    #[test]
    fn intervals() {
        let s = sched(None, Some(900), None, 0);
        let now = t("2026-11-25T12:07:00Z");
        assert_eq!(s.next_run("n", None, now), now, "first run at once");
        assert_eq!(s.next_run("n", Some(t("2026-11-25T12:00:00Z")), now), t("2026-11-25T12:15:00Z"));
        assert_eq!(s.next_run("n", Some(t("2026-11-25T11:40:00Z")), now), now, "missed the 11:45 and 12:00 runs");
    }

    #[test]
    fn bad_settings_name_the_schedule() {
        let e = Schedule::new(ScheduleConfig {
            name: "x".into(),
            cron: Some("99 * * * *".into()),
            timezone: None,
            interval_secs: None,
            jitter_secs: 0,
            paths: vec![],
            rpo_secs: None,
            pre: None,
            post: None,
        })
        .unwrap_err();
        assert!(e.contains("\"x\"") && e.contains("cron"), "{e}");
        let e = Schedule::new(ScheduleConfig {
            name: "y".into(),
            cron: Some("0 1 * * *".into()),
            timezone: Some("Mars/Olympus".into()),
            interval_secs: None,
            jitter_secs: 0,
            paths: vec![],
            rpo_secs: None,
            pre: None,
            post: None,
        })
        .unwrap_err();
        assert!(e.contains("timezone"), "{e}");
        assert!(
            Schedule::new(ScheduleConfig {
                name: "z".into(),
                cron: None,
                timezone: None,
                interval_secs: None,
                jitter_secs: 0,
                paths: vec![],
                rpo_secs: None,
                pre: None,
                post: None
            })
            .is_err()
        );
    }
}
