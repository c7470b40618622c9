//! Backup hooks: a command run before a backup (a failure aborts it, and
//! nothing is saved) and one after it (always, whatever the backup did),
//! each with a time limit, for application consistency: `pg_backup_start`
//! and `pg_backup_stop`, `fsfreeze --freeze` and `--unfreeze`.
//!
//! A hook is a shell command line (`sh -c`), run in its own process group
//! with stdin closed; on timeout the whole group is killed. It gets the
//! backup's facts in its environment: `OMESH_HOOK` (`pre` or `post`),
//! `OMESH_SOURCE`, `OMESH_PATHS` (one per line), and for `post`
//! `OMESH_RESULT` (`success`, `warnings` or `failed`), `OMESH_SNAPSHOT` (when
//! one was saved) and `OMESH_ERROR` (when it failed).

use std::io::Read;
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::time::Duration;

/// The most output kept from a hook for its error message and log.
const OUTPUT_TAIL: usize = 4096;

/// The hooks of one backup.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Hooks {
    /// Run before; a failure aborts the backup.
    pub pre: Option<String>,
    /// Run after, always.
    pub post: Option<String>,
    /// Time limit of each (0: the default, 300 s).
    pub timeout: Duration,
}

/// Default time limit of a hook.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(300);

/// What a hook is told.
#[derive(Clone, Debug, Default)]
pub struct HookEnv {
    /// Source (node) name.
    pub source: String,
    /// The backed-up paths.
    pub paths: Vec<String>,
    /// `post`: success, warnings or failed.
    pub result: Option<&'static str>,
    /// `post`: the snapshot saved, if any.
    pub snapshot: Option<String>,
    /// `post`: why the backup failed.
    pub error: Option<String>,
}

impl HookEnv {
    /// What the post hook is told after a backup that saved `snapshot`
    /// (with warnings or not), or failed with this message.
    pub fn after(self, outcome: Result<(&omesh_proto::ObjectId, bool), String>) -> Self {
        match outcome {
            Ok((id, warnings)) => HookEnv {
                result: Some(if warnings { "warnings" } else { "success" }),
                snapshot: Some(id.to_hex()),
                ..self
            },
            Err(e) => HookEnv { result: Some("failed"), error: Some(e), ..self },
        }
    }
}

fn tail(b: &[u8]) -> String {
    let s = String::from_utf8_lossy(&b[b.len().saturating_sub(OUTPUT_TAIL)..]);
    s.trim().to_string()
}

/// Run hook `command` as `phase` ("pre" or "post") with `env`, waiting at
/// most `timeout`. An error says what failed: the exit status, or the
/// time limit, and the end of what it wrote.
pub fn run(phase: &str, command: &str, timeout: Duration, env: &HookEnv) -> Result<(), String> {
    let timeout = if timeout.is_zero() { DEFAULT_TIMEOUT } else { timeout };
    let mut c = Command::new("sh");
    c.arg("-c")
        .arg(command)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .env("OMESH_HOOK", phase)
        .env("OMESH_SOURCE", &env.source)
        .env("OMESH_PATHS", env.paths.join("\n"))
        .process_group(0);
    for (k, v) in [
        ("OMESH_RESULT", env.result.map(str::to_string)),
        ("OMESH_SNAPSHOT", env.snapshot.clone()),
        ("OMESH_ERROR", env.error.clone()),
    ] {
        match v {
            Some(v) => c.env(k, v),
            None => c.env_remove(k),
        };
    }
    let mut child = c.spawn().map_err(|e| format!("{phase} hook {command:?} could not start: {e}"))?;
    let pid = child.id() as i32;
    // output is read on threads so a chatty hook cannot fill its pipe and stall
    let mut out = child.stdout.take().expect("piped");
    let mut err = child.stderr.take().expect("piped");
    let o = std::thread::spawn(move || {
        let mut b = Vec::new();
        let _ = out.read_to_end(&mut b);
        b
    });
    let e = std::thread::spawn(move || {
        let mut b = Vec::new();
        let _ = err.read_to_end(&mut b);
        b
    });
    let (tx, rx) = std::sync::mpsc::channel();
    let waiter = std::thread::spawn(move || {
        let _ = tx.send(child.wait());
    });
    let status = match rx.recv_timeout(timeout) {
        Ok(s) => Some(s.map_err(|e| format!("{phase} hook {command:?}: {e}"))?),
        Err(_) => {
            // the whole group: `sh -c` and whatever it started
            let _ = rustix::process::kill_process_group(
                rustix::process::Pid::from_raw(pid).expect("a child's pid is positive"),
                rustix::process::Signal::KILL,
            );
            None
        }
    };
    let _ = waiter.join();
    let (stdout, stderr) = (o.join().unwrap_or_default(), e.join().unwrap_or_default());
    let said = [tail(&stderr), tail(&stdout)].into_iter().filter(|s| !s.is_empty()).collect::<Vec<_>>().join(" / ");
    if !said.is_empty() {
        tracing::info!(hook = phase, output = %said, "backup hook output");
    }
    let said = if said.is_empty() { String::new() } else { format!(": {said}") };
    match status {
        None => {
            Err(format!("{phase} hook {command:?} did not finish within {} s and was killed{said}", timeout.as_secs()))
        }
        Some(s) if s.success() => Ok(()),
        Some(s) => Err(format!("{phase} hook {command:?} failed ({s}){said}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_hook_sees_the_backup_and_fails_times_out_or_succeeds_as_it_should() {
        let t = tempfile::tempdir().unwrap();
        let out = t.path().join("env");
        let env = HookEnv {
            source: "srv-a".into(),
            paths: vec!["/etc".into(), "/srv".into()],
            result: Some("success"),
            snapshot: Some("abcd".into()),
            error: None,
        };
        let cmd = format!(
            "printf '%s|%s|%s|%s|%s' \"$OMESH_HOOK\" \"$OMESH_SOURCE\" \"$OMESH_PATHS\" \"$OMESH_RESULT\" \"$OMESH_SNAPSHOT\" > {}",
            out.display()
        );
        run("post", &cmd, Duration::from_secs(10), &env).unwrap();
        assert_eq!(std::fs::read_to_string(&out).unwrap(), "post|srv-a|/etc\n/srv|success|abcd");
        let e = run("pre", "echo no database >&2; exit 3", Duration::from_secs(10), &env).unwrap_err();
        assert!(e.contains("pre hook") && e.contains("exit status: 3") && e.contains("no database"), "{e}");
        // a hook that hangs, with a child of its own: both killed at the limit
        let started = std::time::Instant::now();
        let e = run("pre", "sleep 600 & wait", Duration::from_millis(300), &env).unwrap_err();
        assert!(e.contains("did not finish within"), "{e}");
        assert!(started.elapsed() < Duration::from_secs(60), "the hook's group was not killed");
    }
}
