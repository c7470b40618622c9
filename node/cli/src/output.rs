//! Exit codes, error mapping and output helpers shared by the commands.

use omesh_core::store::{KeySource, StoreError};
use std::io::IsTerminal;

/// Process exit codes. Scripts rely on these values.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum ExitCode {
    /// Success.
    Ok = 0,
    /// The operation failed.
    Failed = 1,
    /// Wrong command line or configuration (fix it and rerun).
    Usage = 2,
    /// Backup finished and the snapshot was written, but some files or
    /// directories could not be read.
    Warnings = 3,
    /// Damage found: verify found damaged or missing data, or restore
    /// could not restore some files.
    Damage = 4,
    /// The store is in use by another process.
    Busy = 5,
    /// The snapshot was saved locally but fewer than `factor` peers
    /// acknowledged it: not yet protected against losing this server.
    Unprotected = 6,
}

impl From<ExitCode> for std::process::ExitCode {
    fn from(c: ExitCode) -> Self {
        std::process::ExitCode::from(c as u8)
    }
}

/// An error with the exit code it maps to.
#[derive(Debug)]
pub struct CliError {
    /// Exit code.
    pub code: ExitCode,
    /// The error.
    pub err: anyhow::Error,
}

impl CliError {
    /// Full message with causes.
    pub fn message(&self) -> String {
        let mut s = self.err.to_string();
        for c in self.err.chain().skip(1) {
            let cs = c.to_string();
            if !s.contains(&cs) {
                s.push_str(": ");
                s.push_str(&cs);
            }
        }
        s
    }
    /// A usage/configuration error.
    pub fn usage(msg: impl Into<String>) -> Self {
        CliError { code: ExitCode::Usage, err: anyhow::anyhow!(msg.into()) }
    }
    /// A failure.
    pub fn failed(msg: impl Into<String>) -> Self {
        CliError { code: ExitCode::Failed, err: anyhow::anyhow!(msg.into()) }
    }
    /// Another process holds what the command needs (and does not answer).
    pub fn busy(msg: impl Into<String>) -> Self {
        CliError { code: ExitCode::Busy, err: anyhow::anyhow!(msg.into()) }
    }
}

impl From<StoreError> for CliError {
    fn from(e: StoreError) -> Self {
        let code = match &e {
            StoreError::Locked { .. } => ExitCode::Busy,
            e if e.is_usage() => ExitCode::Usage,
            e if e.is_damage() => ExitCode::Damage,
            _ => ExitCode::Failed,
        };
        CliError { code, err: e.into() }
    }
}

impl From<omesh_core::browse::BrowseError> for CliError {
    fn from(e: omesh_core::browse::BrowseError) -> Self {
        use omesh_core::browse::BrowseError;
        let code = match &e {
            e if e.is_damage() => ExitCode::Damage,
            BrowseError::NotFound(_) => ExitCode::Usage,
            _ => ExitCode::Failed,
        };
        CliError { code, err: e.into() }
    }
}

impl From<omesh_core::snapshot::select::SelectError> for CliError {
    fn from(e: omesh_core::snapshot::select::SelectError) -> Self {
        CliError { code: ExitCode::Usage, err: e.into() }
    }
}

impl From<anyhow::Error> for CliError {
    fn from(err: anyhow::Error) -> Self {
        CliError { code: ExitCode::Failed, err }
    }
}

impl From<omesh_core::keyfile::KeyFileError> for CliError {
    fn from(e: omesh_core::keyfile::KeyFileError) -> Self {
        CliError { code: ExitCode::Usage, err: e.into() }
    }
}

/// Key source from `--key-file`.
pub fn key_source(key_file: &Option<std::path::PathBuf>) -> KeySource {
    match key_file {
        Some(p) => KeySource::File(p.clone()),
        None => KeySource::Default,
    }
}

/// The version of the schema of every `--json` output (docs/cli.md, "JSON
/// output"): raised when a field is renamed, removed or changes meaning,
/// not when one is added.
pub const JSON_VERSION: u32 = 1;

/// Print the `--json` answer of `command` ("snapshots", "ca list") on
/// stdout: one object that starts with `json_version` and `command`,
/// followed by the fields of `v` (an object).
pub fn print_json<T: serde::Serialize>(command: &str, v: &T) -> Result<(), CliError> {
    let fields = match serde_json::to_value(v).map_err(|e| CliError::failed(e.to_string()))? {
        serde_json::Value::Object(m) => m,
        other => unreachable!("the JSON answer of {command} is not an object: {other}"),
    };
    emit(command, fields)
}

/// [`print_json`] for an answer that is a list: its items go under `key`.
pub fn print_json_list<T: serde::Serialize>(command: &str, key: &str, items: &[T]) -> Result<(), CliError> {
    let list = serde_json::to_value(items).map_err(|e| CliError::failed(e.to_string()))?;
    emit(command, serde_json::Map::from_iter([(key.to_string(), list)]))
}

fn emit(command: &str, fields: serde_json::Map<String, serde_json::Value>) -> Result<(), CliError> {
    let mut out = serde_json::Map::new();
    out.insert("json_version".into(), JSON_VERSION.into());
    out.insert("command".into(), command.into());
    out.extend(fields);
    let s = serde_json::to_string_pretty(&out).map_err(|e| CliError::failed(e.to_string()))?;
    println!("{s}");
    Ok(())
}

/// Whether to draw progress bars (stderr is a terminal).
pub fn interactive() -> bool {
    std::io::stderr().is_terminal()
}

/// Human-readable byte count.
pub fn bytes(n: u64) -> String {
    const U: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut v = n as f64;
    let mut i = 0;
    while v >= 1024.0 && i < U.len() - 1 {
        v /= 1024.0;
        i += 1;
    }
    if i == 0 { format!("{n} B") } else { format!("{v:.1} {}", U[i]) }
}

/// A table for a terminal: every column as wide as its widest cell (a long
/// host name or time never shifts the columns after it); `right` marks the
/// columns aligned right (numbers). The last column is not padded.
pub fn table(headers: &[&str], right: &[bool], rows: &[Vec<String>]) -> String {
    let n = headers.len();
    let width = |i: usize| rows.iter().map(|r| r[i].chars().count()).chain([headers[i].len()]).max().unwrap_or(0);
    let widths: Vec<usize> = (0..n).map(width).collect();
    let line = |cells: &[String]| {
        let mut l = String::new();
        for (i, c) in cells.iter().enumerate() {
            if i > 0 {
                l.push_str("  ");
            }
            let pad = widths[i].saturating_sub(c.chars().count());
            if i + 1 == n && !right[i] {
                l.push_str(c);
            } else if right[i] {
                l.push_str(&" ".repeat(pad));
                l.push_str(c);
            } else {
                l.push_str(c);
                l.push_str(&" ".repeat(pad));
            }
        }
        l.trim_end().to_string()
    };
    let mut out = line(&headers.iter().map(|h| h.to_string()).collect::<Vec<_>>());
    for r in rows {
        out.push('\n');
        out.push_str(&line(r));
    }
    out
}

/// One progress line: "42% 1.2 GiB of 2.9 GiB, 310 MiB/s, ETA 0:05"
/// (`~` before an estimated total); without a total, what is done and the
/// rate.
pub fn progress_line(done: u64, total: u64, estimate: bool, elapsed: std::time::Duration) -> String {
    let rate = done as f64 / elapsed.as_secs_f64().max(0.001);
    let per_s = format!("{}/s", bytes(rate as u64));
    if total == 0 {
        return format!("{}, {per_s}", bytes(done));
    }
    let total = if estimate { total.max(done) } else { total };
    let pct = (done as f64 * 100.0 / total.max(1) as f64).min(100.0);
    let eta = match total.checked_sub(done) {
        Some(0) | None => "0:00".to_string(),
        Some(left) if rate > 0.0 => clock((left as f64 / rate) as u64),
        Some(_) => "--".to_string(),
    };
    format!("{pct:.0}% {} of {}{}, {per_s}, ETA {eta}", bytes(done), if estimate { "~" } else { "" }, bytes(total))
}

/// A path shortened to its last `max` characters ("…" in front).
pub fn tail(path: &str, max: usize) -> String {
    let n = path.chars().count();
    if n <= max { path.to_string() } else { format!("…{}", path.chars().skip(n - max + 1).collect::<String>()) }
}

/// Seconds as m:ss or h:mm:ss.
fn clock(s: u64) -> String {
    if s >= 3600 {
        format!("{}:{:02}:{:02}", s / 3600, s / 60 % 60, s % 60)
    } else {
        format!("{}:{:02}", s / 60, s % 60)
    }
}

/// Local time of a nanosecond timestamp.
pub fn time(ns: i64) -> String {
    omesh_core::time::local(ns)
}

/// A spinner/bar on stderr that shows `msg()` every 100 ms while `f` runs;
/// nothing when stderr is not a terminal.
pub fn with_progress<T>(msg: impl Fn() -> String + Send + Sync, f: impl FnOnce() -> T) -> T {
    if !interactive() {
        return f();
    }
    let pb = indicatif::ProgressBar::new_spinner();
    pb.set_style(indicatif::ProgressStyle::with_template("{spinner} {elapsed_precise} {msg}").expect("template"));
    let done = std::sync::atomic::AtomicBool::new(false);
    std::thread::scope(|s| {
        s.spawn(|| {
            while !done.load(std::sync::atomic::Ordering::Relaxed) {
                pb.set_message(msg());
                pb.tick();
                std::thread::park_timeout(std::time::Duration::from_millis(100));
            }
            pb.finish_and_clear();
        });
        let r = f();
        done.store(true, std::sync::atomic::Ordering::Relaxed);
        r
    })
}

#[cfg(test)]
mod progress_tests {
    use std::time::Duration;

    #[test]
    fn a_progress_line_has_percentage_rate_and_eta() {
        let l = super::progress_line(50 << 20, 200 << 20, false, Duration::from_secs(5));
        assert!(l.starts_with("25% ") && l.contains("of 200") && l.contains("/s") && l.ends_with("ETA 0:15"), "{l}");
        let l = super::progress_line(300 << 20, 200 << 20, true, Duration::from_secs(10));
        assert!(l.starts_with("100% ") && l.contains("of ~300"), "an estimate below what is done grows: {l}");
        let l = super::progress_line(1 << 20, 0, false, Duration::from_secs(1));
        assert!(!l.contains('%') && l.contains("/s"), "{l}");
        assert_eq!(super::clock(3725), "1:02:05");
        assert_eq!(super::tail("/var/lib/app/data.db", 10), "…p/data.db");
        assert_eq!(super::tail("/a", 10), "/a");
    }
}

#[cfg(test)]
mod table_tests {
    #[test]
    fn columns_are_as_wide_as_their_widest_cell() {
        let rows = vec![
            vec!["ab12".to_string(), "a-very-long-host-name.example".to_string(), "7".to_string(), "/x".to_string()],
            vec!["cd34".to_string(), "b".to_string(), "1234".to_string(), "/y /z".to_string()],
        ];
        let t = super::table(&["id", "host", "files", "paths"], &[false, false, true, false], &rows);
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines[0], "id    host                           files  paths");
        assert_eq!(lines[1], "ab12  a-very-long-host-name.example      7  /x");
        assert_eq!(lines[2], "cd34  b                               1234  /y /z");
    }
}
