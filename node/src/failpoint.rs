//! Crash injection for tests.
//!
//! `OMESH_FAILPOINT=NAME:N` makes the process SIGKILL itself the N-th time
//! it reaches the named point (see the calls to [`hit`]). The crash tests use
//! it to stop a real `omesh backup` at exact instants of the write protocol,
//! which timing-based killing cannot reach reliably. `NAME:N:stop` sends
//! SIGSTOP instead, so a test can change the world (stop a server) while the
//! process is frozen at that instant and then let it continue with SIGCONT.
//! Without the variable, [`hit`] is a relaxed atomic load.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, OnceLock};

static ARMED: AtomicBool = AtomicBool::new(true);
static SPEC: OnceLock<Option<(String, u64, bool)>> = OnceLock::new();
static COUNTS: Mutex<Option<HashMap<&'static str, u64>>> = Mutex::new(None);

fn spec() -> &'static Option<(String, u64, bool)> {
    SPEC.get_or_init(|| {
        let v = std::env::var("OMESH_FAILPOINT").ok()?;
        let (v, stop) = match v.strip_suffix(":stop") {
            Some(x) => (x.to_string(), true),
            None => (v, false),
        };
        let (name, n) = v.rsplit_once(':')?;
        let n: u64 = n.parse().ok()?;
        Some((name.to_string(), n, stop))
    })
}

/// Mark that execution reached point `name`.
pub fn hit(name: &'static str) {
    if !ARMED.load(Ordering::Relaxed) {
        return;
    }
    let Some((want, n, stop)) = spec() else {
        ARMED.store(false, Ordering::Relaxed);
        return;
    };
    if want != name {
        return;
    }
    let mut g = COUNTS.lock().unwrap_or_else(|e| e.into_inner());
    let c = g.get_or_insert_with(HashMap::new).entry(name).or_insert(0);
    *c += 1;
    if *c == *n && *stop {
        eprintln!("omesh: failpoint {name}:{n} reached, stopping self");
        drop(g);
        let _ = rustix::process::kill_process(rustix::process::getpid(), rustix::process::Signal::STOP);
        return;
    }
    if *c == *n {
        eprintln!("omesh: failpoint {name}:{n} reached, killing self");
        let _ = rustix::process::kill_process(rustix::process::getpid(), rustix::process::Signal::KILL);
        // SIGKILL cannot be caught; make sure we never continue.
        std::process::abort();
    }
}
