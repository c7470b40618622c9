//! Retention: which snapshots to keep, with restic's `forget` semantics,
//! behind a retention lock. A plain function over (id, time) pairs and
//! `now`.
//!
//! - `keep_last N`: the N most recent.
//! - `keep_hourly/daily/weekly/monthly/yearly N`: walking from the newest,
//!   the most recent snapshot of each of the last N hours (days, ISO weeks,
//!   months, years) that have snapshots.
//! - `keep_within D`: every snapshot less than D older than the newest one.
//! - A snapshot is kept if any rule keeps it; with no rule at all, nothing
//!   is forgotten.
//! - The **retention lock**: nothing younger than `lock` (measured from
//!   `now`) is ever forgotten, whatever the policy says. It comes from the
//!   node's own configuration; no request from another node can change it.
//!
//! A storing peer cannot read another source's snapshot records, so it
//! applies the policy to the times it committed them.

use crate::time::{self, SignedDuration, Timestamp};
use omesh_proto::ObjectId;
use serde::{Deserialize, Serialize};

/// `[retention]` in the node config (also `omesh forget` flags).
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RetentionPolicy {
    /// Keep the N most recent.
    #[serde(default)]
    pub keep_last: Option<u32>,
    /// Keep one per hour for N hours.
    #[serde(default)]
    pub keep_hourly: Option<u32>,
    /// Keep one per day for N days.
    #[serde(default)]
    pub keep_daily: Option<u32>,
    /// Keep one per week for N weeks.
    #[serde(default)]
    pub keep_weekly: Option<u32>,
    /// Keep one per month for N months.
    #[serde(default)]
    pub keep_monthly: Option<u32>,
    /// Keep one per year for N years.
    #[serde(default)]
    pub keep_yearly: Option<u32>,
    /// Keep everything within this duration of the newest ("7d", "36h").
    #[serde(default)]
    pub keep_within: Option<RetentionDuration>,
    /// Retention lock: never forget anything younger than this ("30d").
    #[serde(default)]
    pub lock: Option<RetentionDuration>,
    /// Honour a source's request to forget one of its snapshots here (only
    /// outside the lock). Off by default: a compromised source then cannot
    /// shorten its history on this node at all.
    #[serde(default)]
    pub honor_source_deletes: bool,
    /// What the rules count within: "paths" (default: each backup set, by
    /// its paths, has its own `keep_last` and so on), "paths,tags", or
    /// "none" (all of a source's snapshots together).
    #[serde(default)]
    pub group_by: GroupBy,
}

/// What retention groups a source's snapshots by, as restic's
/// `--group-by` (the host is the source itself: each source is apart
/// anyway).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum GroupBy {
    /// All snapshots of a source are one group.
    None,
    /// One group per set of paths.
    #[default]
    Paths,
    /// One group per set of paths and tags.
    PathsTags,
}

impl GroupBy {
    /// Parse "none", "paths", "paths,tags" (or "tags,paths").
    pub fn parse(s: &str) -> Result<Self, String> {
        let mut parts: Vec<&str> = s.split(',').map(str::trim).filter(|p| !p.is_empty()).collect();
        parts.sort();
        parts.dedup();
        match parts.as_slice() {
            ["none"] | [] => Ok(GroupBy::None),
            ["paths"] => Ok(GroupBy::Paths),
            ["paths", "tags"] => Ok(GroupBy::PathsTags),
            _ => Err(format!("{s:?} is not a grouping: use \"paths\" (the default), \"paths,tags\" or \"none\"")),
        }
    }

    /// The group a snapshot with these retention groups falls in: "all"
    /// when not grouping, "ungrouped" for a record made before snapshots
    /// carried groups, else the group's id (32 hex digits).
    pub fn group_of(self, g: Option<&omesh_proto::RetentionGroups>) -> String {
        match (self, g) {
            (GroupBy::None, _) => "all".into(),
            (_, None) => "ungrouped".into(),
            (GroupBy::Paths, Some(g)) => hex::encode(g.paths),
            (GroupBy::PathsTags, Some(g)) => hex::encode(g.paths_tags),
        }
    }
}

impl std::fmt::Display for GroupBy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            GroupBy::None => "none",
            GroupBy::Paths => "paths",
            GroupBy::PathsTags => "paths,tags",
        })
    }
}

impl<'de> Deserialize<'de> for GroupBy {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        GroupBy::parse(&String::deserialize(d)?).map_err(serde::de::Error::custom)
    }
}

impl Serialize for GroupBy {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// A duration in the retention settings: parsed once, when the
/// configuration (or the command line) is read, and shown as written.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RetentionDuration {
    text: String,
    value: SignedDuration,
}

impl RetentionDuration {
    /// Parse (see [`parse_duration`]).
    pub fn parse(s: &str) -> Result<Self, String> {
        Ok(RetentionDuration { text: s.trim().to_string(), value: parse_duration(s)? })
    }

    /// The duration.
    pub fn value(&self) -> SignedDuration {
        self.value
    }
}

impl std::fmt::Display for RetentionDuration {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.text)
    }
}

impl<'de> Deserialize<'de> for RetentionDuration {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        RetentionDuration::parse(&s).map_err(serde::de::Error::custom)
    }
}

impl Serialize for RetentionDuration {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.text)
    }
}

/// Parse a duration with jiff's friendly format: a number and a unit,
/// several allowed ("30d", "36h", "2w", "1y", "1w 3d", "90 days"); `y` is
/// 365 days (retention must mean the same on every node, whatever the
/// calendar); a bare number is days; months are refused (not a fixed
/// length).
pub fn parse_duration(s: &str) -> Result<SignedDuration, String> {
    let t = s.trim();
    let examples = "examples: 30d, 36h, 2w, 1y";
    let span: jiff::Span = if !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit()) {
        let n: i64 = t.parse().map_err(|_| format!("{s:?} is too large a duration"))?;
        jiff::Span::new().try_days(n).map_err(|e| format!("{s:?}: {e}"))?
    } else {
        t.parse().map_err(|_| format!("{s:?} is not a duration ({examples})"))?
    };
    if span.get_months() != 0 {
        return Err(format!("{s:?}: months are not a fixed length; give days instead (e.g. 30d)"));
    }
    if span.is_negative() {
        return Err(format!("{s:?}: a duration must not be negative"));
    }
    let years = span.get_years() as i64;
    let rest =
        span.years(0).to_duration(jiff::SpanRelativeTo::days_are_24_hours()).map_err(|e| format!("{s:?}: {e}"))?;
    rest.checked_add(SignedDuration::from_hours(24 * 365 * years))
        .ok_or_else(|| format!("{s:?} is too large a duration"))
}

impl RetentionPolicy {
    /// Whether any keep rule is set.
    /// A zero count or a zero `keep_within` is no rule at all (as in
    /// restic): `keep_last = 0` alone must not forget everything.
    pub fn has_rules(&self) -> bool {
        [self.keep_last, self.keep_hourly, self.keep_daily, self.keep_weekly, self.keep_monthly, self.keep_yearly]
            .into_iter()
            .any(|n| rule(n).is_some())
            || self.within().is_some()
    }

    fn within(&self) -> Option<SignedDuration> {
        self.keep_within.as_ref().map(RetentionDuration::value).filter(|d| d.is_positive())
    }
}

/// A count rule: 0 means unset.
fn rule(n: Option<u32>) -> Option<u32> {
    n.filter(|n| *n > 0)
}

/// The verdict for one snapshot.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Decision {
    /// Snapshot.
    pub id: ObjectId,
    /// Its time.
    #[serde(serialize_with = "ser_time")]
    pub time: Timestamp,
    /// Keep it?
    pub keep: bool,
    /// Why (the rules that keep it, or why it goes).
    pub reasons: Vec<String>,
}

fn ser_time<S: serde::Serializer>(t: &Timestamp, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&time::rfc3339(*t))
}

/// Decide for every snapshot of a source, each within its group
/// ([`RetentionPolicy::group_by`]): (group, verdict) pairs, by group.
pub fn decide_grouped(
    snaps: &[(ObjectId, Timestamp, Option<omesh_proto::RetentionGroups>)],
    policy: &RetentionPolicy,
    now: Timestamp,
) -> Vec<(String, Decision)> {
    let mut groups: std::collections::BTreeMap<String, Vec<(ObjectId, Timestamp)>> = Default::default();
    for (id, t, g) in snaps {
        groups.entry(policy.group_by.group_of(g.as_ref())).or_default().push((*id, *t));
    }
    groups.into_iter().flat_map(|(g, s)| decide(&s, policy, now).into_iter().map(move |d| (g.clone(), d))).collect()
}

/// Decide for every snapshot of one group. `now` is the reference for the
/// lock; rules are relative to the newest snapshot, as in restic.
pub fn decide(snaps: &[(ObjectId, Timestamp)], policy: &RetentionPolicy, now: Timestamp) -> Vec<Decision> {
    let mut sorted: Vec<(ObjectId, Timestamp)> = snaps.to_vec();
    sorted.sort_by(|a, b| b.1.cmp(&a.1).then(b.0.cmp(&a.0)));
    let newest = sorted.first().map(|s| s.1);
    let within = policy.within();
    let lock = policy.lock.as_ref().map(RetentionDuration::value);
    // periods in UTC, so every node groups alike
    type Key = fn(&jiff::civil::DateTime) -> i64;
    let buckets: [(&str, Option<u32>, Key); 5] = [
        ("hourly", rule(policy.keep_hourly), |t| {
            (t.year() as i64 * 10000 + t.day_of_year() as i64) * 100 + t.hour() as i64
        }),
        ("daily", rule(policy.keep_daily), |t| t.year() as i64 * 1000 + t.day_of_year() as i64),
        ("weekly", rule(policy.keep_weekly), |t| {
            let w = t.date().iso_week_date();
            w.year() as i64 * 100 + w.week() as i64
        }),
        ("monthly", rule(policy.keep_monthly), |t| t.year() as i64 * 100 + t.month() as i64),
        ("yearly", rule(policy.keep_yearly), |t| t.year() as i64),
    ];
    let mut remaining: Vec<Option<u32>> = buckets.iter().map(|b| b.1).collect();
    let mut last_key: Vec<Option<i64>> = vec![None; buckets.len()];
    let mut out = Vec::with_capacity(sorted.len());
    for (i, (id, time)) in sorted.iter().enumerate() {
        let mut reasons = Vec::new();
        if let Some(n) = rule(policy.keep_last)
            && (i as u32) < n
        {
            reasons.push(format!("last {n}"));
        }
        for (b, (name, _, key)) in buckets.iter().enumerate() {
            if let Some(left) = remaining[b] {
                let k = key(&time.to_zoned(jiff::tz::TimeZone::UTC).datetime());
                if left > 0 && last_key[b] != Some(k) {
                    reasons.push(format!("{name} {}", buckets[b].1.unwrap_or(0) - left + 1));
                    remaining[b] = Some(left - 1);
                    last_key[b] = Some(k);
                }
            }
        }
        if let (Some(w), Some(n)) = (within, newest)
            && *time > time::minus(n, w)
        {
            reasons.push(format!(
                "within {} of the newest",
                policy.keep_within.as_ref().map(|d| d.to_string()).unwrap_or_default()
            ));
        }
        let mut keep = !reasons.is_empty() || !policy.has_rules();
        if !policy.has_rules() {
            reasons.push("no retention rules".into());
        }
        if let Some(l) = lock
            && now.duration_since(*time) < l
            && !keep
        {
            keep = true;
            reasons.push(format!(
                "retention lock: younger than {}",
                policy.lock.as_ref().map(|d| d.to_string()).unwrap_or_default()
            ));
        }
        if !keep {
            reasons.push("no rule keeps it".into());
        }
        out.push(Decision { id: *id, time: *time, keep, reasons });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    fn snaps(times: &[&str]) -> Vec<(ObjectId, Timestamp)> {
        times.iter().enumerate().map(|(i, s)| (ObjectId([i as u8 + 1; 32]), t(s))).collect()
    }

    fn kept(d: &[Decision]) -> Vec<String> {
        let mut v: Vec<String> =
            d.iter().filter(|x| x.keep).map(|x| x.time.strftime("%m-%d %H:%M").to_string()).collect();
        v.sort();
        v
    }

    #[test]
    fn each_group_has_its_own_keep_last_and_none_puts_them_together() {
        let g = |b: u8| Some(omesh_proto::RetentionGroups { paths: [b; 16], paths_tags: [b; 16] });
        let s: Vec<(ObjectId, Timestamp, Option<omesh_proto::RetentionGroups>)> = vec![
            (ObjectId([1; 32]), t("2026-01-01T00:00:00Z"), g(1)),
            (ObjectId([2; 32]), t("2026-01-02T00:00:00Z"), g(1)),
            // an ad-hoc backup of other paths, the newest of all
            (ObjectId([3; 32]), t("2026-01-03T00:00:00Z"), g(2)),
            (ObjectId([4; 32]), t("2025-12-01T00:00:00Z"), None),
        ];
        let mut p = RetentionPolicy { keep_last: Some(1), ..Default::default() };
        let now = t("2026-02-01T00:00:00Z");
        let kept = |d: &[(String, Decision)]| {
            let mut v: Vec<u8> = d.iter().filter(|(_, x)| x.keep).map(|(_, x)| x.id.0[0]).collect();
            v.sort();
            v
        };
        let d = decide_grouped(&s, &p, now);
        assert_eq!(kept(&d), vec![2, 3, 4], "the newest of each group, the ungrouped one apart");
        assert!(d.iter().any(|(g, x)| x.id.0[0] == 4 && g == "ungrouped"));
        p.group_by = GroupBy::None;
        let d = decide_grouped(&s, &p, now);
        assert_eq!(kept(&d), vec![3]);
        assert!(d.iter().all(|(g, _)| g == "all"));
        assert_eq!(GroupBy::parse("tags, paths").unwrap(), GroupBy::PathsTags);
        assert!(GroupBy::parse("host").unwrap_err().contains("\"paths\""));
    }

    #[test]
    fn zero_counts_are_no_rules() {
        let s = snaps(&["2026-01-01T00:00:00Z", "2026-01-02T00:00:00Z", "2026-01-03T00:00:00Z"]);
        let p = RetentionPolicy {
            keep_last: Some(0),
            keep_daily: Some(0),
            keep_within: Some(RetentionDuration::parse("0d").unwrap()),
            ..Default::default()
        };
        assert!(!p.has_rules());
        let d = decide(&s, &p, t("2026-02-01T00:00:00Z"));
        assert!(d.iter().all(|x| x.keep), "{d:?}");
        // a zero next to a real rule: only the real rule counts
        let p = RetentionPolicy { keep_last: Some(0), keep_daily: Some(1), ..Default::default() };
        assert_eq!(kept(&decide(&s, &p, t("2026-02-01T00:00:00Z"))), ["01-03 00:00"]);
    }

    #[test]
    fn restic_daily_and_last() {
        // two snapshots a day for four days
        let s = snaps(&[
            "2026-11-20T01:00:00Z",
            "2026-11-20T13:00:00Z",
            "2026-11-21T01:00:00Z",
            "2026-11-21T13:00:00Z",
            "2026-11-22T01:00:00Z",
            "2026-11-22T13:00:00Z",
            "2026-11-23T01:00:00Z",
            "2026-11-23T13:00:00Z",
        ]);
        let now = t("2026-12-30T00:00:00Z");
        let p = RetentionPolicy { keep_daily: Some(3), ..Default::default() };
        assert_eq!(kept(&decide(&s, &p, now)), vec!["11-21 13:00", "11-22 13:00", "11-23 13:00"]);
        let p = RetentionPolicy { keep_daily: Some(2), keep_last: Some(3), ..Default::default() };
        assert_eq!(kept(&decide(&s, &p, now)), vec!["11-22 13:00", "11-23 01:00", "11-23 13:00"]);
    }

    #[test]
    fn weekly_monthly_yearly_and_within() {
        let s = snaps(&[
            "2024-06-01T00:00:00Z",
            "2025-03-01T00:00:00Z",
            "2025-12-01T00:00:00Z",
            "2026-11-02T00:00:00Z",
            "2026-11-16T00:00:00Z",
            "2026-11-23T00:00:00Z",
        ]);
        let now = t("2027-06-01T00:00:00Z");
        let p = RetentionPolicy { keep_yearly: Some(2), ..Default::default() };
        assert_eq!(kept(&decide(&s, &p, now)), vec!["11-23 00:00", "12-01 00:00"]);
        let p = RetentionPolicy { keep_monthly: Some(2), ..Default::default() };
        assert_eq!(kept(&decide(&s, &p, now)), vec!["11-23 00:00", "12-01 00:00"]);
        let p = RetentionPolicy { keep_weekly: Some(2), ..Default::default() };
        assert_eq!(kept(&decide(&s, &p, now)), vec!["11-16 00:00", "11-23 00:00"]);
        let p = RetentionPolicy { keep_within: Some(RetentionDuration::parse("10d").unwrap()), ..Default::default() };
        assert_eq!(kept(&decide(&s, &p, now)), vec!["11-16 00:00", "11-23 00:00"]);
    }

    #[test]
    fn the_lock_keeps_young_snapshots_whatever_the_policy() {
        let s = snaps(&["2026-11-01T00:00:00Z", "2026-11-20T00:00:00Z", "2026-11-24T00:00:00Z"]);
        let now = t("2026-11-25T00:00:00Z");
        let p = RetentionPolicy {
            keep_last: Some(1),
            lock: Some(RetentionDuration::parse("7d").unwrap()),
            ..Default::default()
        };
        let d = decide(&s, &p, now);
        assert_eq!(kept(&d), vec!["11-20 00:00", "11-24 00:00"]);
        let locked = d.iter().find(|x| x.time == t("2026-11-20T00:00:00Z")).unwrap();
        assert!(locked.reasons.iter().any(|r| r.contains("retention lock")), "{locked:?}");
        let gone = d.iter().find(|x| !x.keep).unwrap();
        assert_eq!(gone.reasons, vec!["no rule keeps it".to_string()]);
    }

    #[test]
    fn no_rules_keeps_everything() {
        let s = snaps(&["2020-01-01T00:00:00Z"]);
        assert!(decide(&s, &RetentionPolicy::default(), t("2026-01-01T00:00:00Z"))[0].keep);
        assert!(parse_duration("3x").is_err());
        assert_eq!(parse_duration("2w").unwrap(), SignedDuration::from_hours(14 * 24));
        assert_eq!(parse_duration("30").unwrap(), SignedDuration::from_hours(30 * 24));
        assert_eq!(parse_duration("1y").unwrap(), SignedDuration::from_hours(365 * 24));
        assert_eq!(parse_duration("36h").unwrap(), SignedDuration::from_hours(36));
        assert_eq!(parse_duration("15m").unwrap(), SignedDuration::from_mins(15));
        assert_eq!(parse_duration("1w 3d").unwrap(), SignedDuration::from_hours(10 * 24));
        assert!(parse_duration("2mo").unwrap_err().contains("months"));
        assert!(parse_duration("-3d").is_err());
        assert_eq!(parse_duration("90 days").unwrap(), SignedDuration::from_hours(90 * 24));
        assert_eq!(parse_duration("1.5h").unwrap(), SignedDuration::from_mins(90));
    }
}
