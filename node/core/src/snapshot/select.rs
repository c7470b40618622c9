//! Choosing snapshots: the `--tag`, `--path`, `--host` and `--latest`
//! filters, and what a SNAPSHOT argument (an id, a unique prefix, or
//! `latest`) names among the chosen ones.

use super::SnapshotRecord;
use omesh_proto::ObjectId;

/// Snapshot filters, as restic has them.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct Filter {
    /// Each entry is a comma-separated set of tags a snapshot must all
    /// have; a snapshot matches when any entry matches (`--tag a,b --tag c`:
    /// a and b, or c).
    pub tags: Vec<String>,
    /// Backed-up paths a snapshot must all have (`--path /etc`).
    pub paths: Vec<String>,
    /// Host names; a snapshot matches when it was taken on any of them.
    pub hosts: Vec<String>,
    /// Keep only the newest N of what matched.
    pub latest: Option<usize>,
}

impl Filter {
    /// No filter at all.
    pub fn is_empty(&self) -> bool {
        self.tags.is_empty() && self.paths.is_empty() && self.hosts.is_empty() && self.latest.is_none()
    }

    /// Whether `r` passes the tag, path and host filters.
    pub fn matches(&self, r: &SnapshotRecord) -> bool {
        self.matches_fields(&r.tags, &r.paths, Some(&r.hostname))
    }

    /// [`Filter::matches`] of a snapshot's tags, paths and host (`None`:
    /// unknown here, as for a snapshot whose record this node cannot
    /// decrypt; it passes only a filter that names no host).
    pub fn matches_fields(&self, tags: &[String], paths: &[String], host: Option<&str>) -> bool {
        let tags_ok = self.tags.is_empty()
            || self.tags.iter().any(|set| {
                set.split(',').map(str::trim).filter(|t| !t.is_empty()).all(|t| tags.iter().any(|x| x == t))
            });
        let paths_ok = self.paths.iter().all(|p| {
            let p = p.trim_end_matches('/');
            paths.iter().any(|x| x.trim_end_matches('/') == p || (p.is_empty() && x == "/"))
        });
        let hosts_ok = self.hosts.is_empty() || host.is_some_and(|h| self.hosts.iter().any(|x| x == h));
        tags_ok && paths_ok && hosts_ok
    }

    /// The snapshots of `list` that pass, oldest first, the newest
    /// `latest` of them when that is set.
    pub fn apply(&self, list: Vec<(ObjectId, SnapshotRecord)>) -> Vec<(ObjectId, SnapshotRecord)> {
        let mut out: Vec<_> = list.into_iter().filter(|(_, r)| self.matches(r)).collect();
        out.sort_by_key(|(id, r)| (r.start_ns, *id));
        self.keep_latest(&mut out);
        out
    }

    /// Of `sorted` (oldest first), keep the newest `latest` when that is set.
    pub fn keep_latest<T>(&self, sorted: &mut Vec<T>) {
        if let Some(n) = self.latest {
            let skip = sorted.len().saturating_sub(n);
            sorted.drain(..skip);
        }
    }
}

/// Longest tag accepted.
pub const MAX_TAG_BYTES: usize = 256;

/// A change to snapshots' tags (`omesh tag`): replace them all, or add
/// and remove some. Tags keep their order; a tag is never listed twice.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct TagChange {
    /// Replace all tags with these (may be empty: no tags).
    pub set: Option<Vec<String>>,
    /// Add these.
    pub add: Vec<String>,
    /// Remove these.
    pub remove: Vec<String>,
}

impl TagChange {
    /// Check the change: something to do, valid tags, `set` alone.
    pub fn validate(&self) -> Result<(), String> {
        if self.set.is_none() && self.add.is_empty() && self.remove.is_empty() {
            return Err("nothing to change: give --set, --add or --remove".into());
        }
        if self.set.is_some() && !(self.add.is_empty() && self.remove.is_empty()) {
            return Err("--set replaces every tag; do not combine it with --add or --remove".into());
        }
        for t in self.set.iter().flatten().chain(&self.add).chain(&self.remove) {
            validate_tag(t)?;
        }
        Ok(())
    }

    /// The tags after the change.
    pub fn apply(&self, tags: &[String]) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        let base = self.set.as_deref().unwrap_or(tags);
        for t in base.iter().chain(&self.add) {
            if !self.remove.contains(t) && !out.contains(t) {
                out.push(t.clone());
            }
        }
        out
    }
}

/// A tag must be 1 to [`MAX_TAG_BYTES`] bytes, without commas (the filter
/// separator) or control characters.
pub fn validate_tag(t: &str) -> Result<(), String> {
    if t.is_empty() || t.len() > MAX_TAG_BYTES || t.contains(',') || t.chars().any(char::is_control) {
        return Err(format!("tag {t:?}: a tag is 1 to {MAX_TAG_BYTES} bytes without commas or control characters"));
    }
    Ok(())
}

/// A SNAPSHOT argument that names none or more than one snapshot.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SelectError {
    /// Nothing matches.
    #[error("no snapshot matches {spec:?}{filtered} (`omesh snapshots` lists them)")]
    NoMatch {
        /// what was asked
        spec: String,
        /// " among those the filters chose", when filters were given
        filtered: &'static str,
    },
    /// A prefix of several ids.
    #[error("{spec:?} is the prefix of several snapshots ({candidates}); give more of the id")]
    Ambiguous {
        /// what was asked
        spec: String,
        /// their short ids
        candidates: String,
    },
}

/// The snapshot `spec` names in `list`: `latest` is the newest; otherwise a
/// full id or a unique prefix of one. `filtered` says whether `list` was
/// narrowed by filters (for the message).
pub fn resolve(list: &[(ObjectId, SnapshotRecord)], spec: &str, filtered: bool) -> Result<ObjectId, SelectError> {
    let none = || SelectError::NoMatch {
        spec: spec.to_string(),
        filtered: if filtered { " among those the filters chose" } else { "" },
    };
    if spec == "latest" {
        return list.iter().max_by_key(|(id, r)| (r.start_ns, *id)).map(|(id, _)| *id).ok_or_else(none);
    }
    let s = spec.to_ascii_lowercase();
    let mut m: Vec<ObjectId> = list.iter().map(|(id, _)| *id).filter(|id| id.to_hex().starts_with(&s)).collect();
    m.dedup();
    match m.len() {
        0 => Err(none()),
        1 => Ok(m[0]),
        _ => {
            let mut c: Vec<String> = m.iter().map(|id| id.short()).collect();
            c.sort();
            Err(SelectError::Ambiguous { spec: spec.to_string(), candidates: c.join(", ") })
        }
    }
}

/// The snapshot `spec` names among those `filter` chooses of `list`.
pub fn pick(
    list: &[(ObjectId, SnapshotRecord)],
    spec: &str,
    filter: &Filter,
) -> Result<(ObjectId, SnapshotRecord), SelectError> {
    let chosen = filter.apply(list.to_vec());
    let id = resolve(&chosen, spec, !filter.is_empty())?;
    Ok(chosen.into_iter().find(|(i, _)| *i == id).expect("resolved among them"))
}

/// The snapshots `specs` name (default: every one `filter` chooses),
/// oldest first, each once.
pub fn choose(
    list: Vec<(ObjectId, SnapshotRecord)>,
    specs: &[String],
    filter: &Filter,
) -> Result<Vec<(ObjectId, SnapshotRecord)>, SelectError> {
    let mut chosen = if specs.is_empty() {
        filter.apply(list)
    } else {
        specs.iter().map(|s| pick(&list, s, filter)).collect::<Result<Vec<_>, _>>()?
    };
    chosen.sort_by_key(|(id, r)| (r.start_ns, *id));
    chosen.dedup_by_key(|(id, _)| *id);
    Ok(chosen)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::snapshot::SnapshotKind;

    fn rec(t: i64, host: &str, paths: &[&str], tags: &[&str]) -> SnapshotRecord {
        SnapshotRecord {
            source: "a".into(),
            hostname: host.into(),
            paths: paths.iter().map(|s| s.to_string()).collect(),
            kind: SnapshotKind::Files,
            tree: ObjectId::default(),
            parent: None,
            start_ns: t,
            end_ns: t,
            files: 0,
            dirs: 0,
            others: 0,
            bytes: 0,
            bytes_read: 0,
            bytes_added: 0,
            warnings: 0,
            tags: tags.iter().map(|s| s.to_string()).collect(),
            program: String::new(),
        }
    }

    fn id(b: u8) -> ObjectId {
        ObjectId([b; 32])
    }

    #[test]
    fn tags_within_an_entry_are_all_required_and_entries_are_alternatives() {
        let list = vec![
            (id(1), rec(1, "h1", &["/etc"], &["daily", "db"])),
            (id(2), rec(2, "h1", &["/etc"], &["daily"])),
            (id(3), rec(3, "h2", &["/srv", "/etc"], &["manual"])),
        ];
        let f = |tags: &[&str]| Filter { tags: tags.iter().map(|s| s.to_string()).collect(), ..Default::default() };
        let ids = |f: Filter| f.apply(list.clone()).into_iter().map(|(i, _)| i).collect::<Vec<_>>();
        assert_eq!(ids(f(&["daily,db"])), vec![id(1)]);
        assert_eq!(ids(f(&["daily"])), vec![id(1), id(2)]);
        assert_eq!(ids(f(&["db", "manual"])), vec![id(1), id(3)]);
        assert_eq!(ids(Filter { hosts: vec!["h2".into()], ..Default::default() }), vec![id(3)]);
        assert_eq!(ids(Filter { paths: vec!["/srv/".into(), "/etc".into()], ..Default::default() }), vec![id(3)]);
        assert_eq!(
            ids(Filter { paths: vec!["/etc".into()], latest: Some(2), ..Default::default() }),
            vec![id(2), id(3)]
        );
        assert_eq!(ids(Filter { latest: Some(0), ..Default::default() }), Vec::<ObjectId>::new());
    }

    #[test]
    fn a_snapshot_argument_names_one_snapshot_or_says_why_not() {
        let list = vec![(id(0xab), rec(5, "h", &["/"], &[])), (id(0xac), rec(9, "h", &["/"], &[]))];
        assert_eq!(resolve(&list, "latest", false), Ok(id(0xac)));
        assert_eq!(resolve(&list, "ABAB", false), Ok(id(0xab)));
        assert!(matches!(resolve(&list, "a", false), Err(SelectError::Ambiguous { .. })));
        let e = resolve(&list, "ff", true).unwrap_err().to_string();
        assert!(e.contains("among those the filters chose"), "{e}");
        assert!(resolve(&[], "latest", false).is_err());
    }

    #[test]
    fn a_tag_change_adds_removes_or_sets_and_never_repeats() {
        let tags = vec!["daily".to_string(), "db".to_string()];
        let c = TagChange { add: vec!["keep".into(), "db".into()], remove: vec!["daily".into()], set: None };
        assert_eq!(c.apply(&tags), vec!["db".to_string(), "keep".to_string()]);
        let c = TagChange { set: Some(vec!["x".into(), "x".into()]), ..Default::default() };
        assert_eq!(c.apply(&tags), vec!["x".to_string()]);
        assert_eq!(TagChange { set: Some(vec![]), ..Default::default() }.apply(&tags), Vec::<String>::new());
        assert!(TagChange::default().validate().is_err());
        assert!(TagChange { add: vec!["a,b".into()], ..Default::default() }.validate().is_err());
        assert!(TagChange { set: Some(vec![]), add: vec!["a".into()], ..Default::default() }.validate().is_err());
    }
}
