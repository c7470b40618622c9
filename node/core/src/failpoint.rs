//! Crash injection for tests.
//!
//! `OMESH_FAILPOINT=NAME:N` makes the process SIGKILL itself the N-th time
//! it reaches the named point (see the calls to [`hit`]). The crash tests use
//! it to stop a real `omesh backup` at exact instants of the write protocol,
//! which timing-based killing cannot reach reliably. `NAME:N:stop` sends
//! SIGSTOP instead, so a test can change the world (stop a server) while the
//! process is frozen at that instant and then let it continue with SIGCONT.
//! `NAME:N:wait=PATH` blocks only the thread that reached the point: it
//! creates `PATH.reached` and waits until `PATH` exists, so a test can make
//! the same process do something else at that instant (a garbage collection
//! while a backup is between writing its data and committing its snapshot).
//! `NAME:N:enospc` makes the N-th [`io_error`] at that point return "no
//! space left on device" (a disk that fills in the middle of a write).
//! Without the variable, [`hit`] is a relaxed atomic load; without the
//! `failpoints` cargo feature (release builds) it compiles to nothing and
//! the variable is ignored.

#![cfg_attr(not(feature = "failpoints"), allow(dead_code, unused_imports))]

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, OnceLock};

static ARMED: AtomicBool = AtomicBool::new(true);
static SPEC: OnceLock<Option<(String, u64, Action)>> = OnceLock::new();
static COUNTS: Mutex<Option<HashMap<&'static str, u64>>> = Mutex::new(None);

#[derive(Clone, Debug, PartialEq)]
enum Action {
    Kill,
    Stop,
    Wait(PathBuf),
    Enospc,
}

fn spec() -> &'static Option<(String, u64, Action)> {
    SPEC.get_or_init(|| {
        let v = std::env::var("OMESH_FAILPOINT").ok()?;
        let (v, action) = if let Some(x) = v.strip_suffix(":stop") {
            (x.to_string(), Action::Stop)
        } else if let Some(x) = v.strip_suffix(":enospc") {
            (x.to_string(), Action::Enospc)
        } else if let Some((x, p)) = v.split_once(":wait=") {
            (x.to_string(), Action::Wait(p.into()))
        } else {
            (v, Action::Kill)
        };
        let (name, n) = v.rsplit_once(':')?;
        let n: u64 = n.parse().ok()?;
        Some((name.to_string(), n, action))
    })
}

/// Mark that execution reached point `name` (nothing without the
/// `failpoints` feature).
#[cfg(not(feature = "failpoints"))]
#[inline(always)]
pub fn hit(_name: &'static str) {}

/// An I/O error to return at point `name`, when `OMESH_FAILPOINT` asks
/// for one here (`NAME:N:enospc`); `None` otherwise (always, without the
/// `failpoints` feature).
#[cfg(not(feature = "failpoints"))]
#[inline(always)]
pub fn io_error(_name: &'static str) -> Option<std::io::Error> {
    None
}

/// An I/O error to return at point `name` (`NAME:N:enospc`).
#[cfg(feature = "failpoints")]
pub fn io_error(name: &'static str) -> Option<std::io::Error> {
    match reached(name) {
        Some(Action::Enospc) => {
            eprintln!("omesh: failpoint {name} reached, failing the write with ENOSPC");
            Some(std::io::Error::from_raw_os_error(rustix::io::Errno::NOSPC.raw_os_error()))
        }
        Some(other) => {
            act(name, other);
            None
        }
        None => None,
    }
}

/// The action when this is the N-th time point `name` is reached.
#[cfg(feature = "failpoints")]
fn reached(name: &'static str) -> Option<Action> {
    if !ARMED.load(Ordering::Relaxed) {
        return None;
    }
    let Some((want, n, action)) = spec() else {
        ARMED.store(false, Ordering::Relaxed);
        return None;
    };
    if want != name {
        return None;
    }
    let mut g = COUNTS.lock().unwrap_or_else(|e| e.into_inner());
    let c = g.get_or_insert_with(HashMap::new).entry(name).or_insert(0);
    *c += 1;
    (*c == *n).then(|| action.clone())
}

/// Mark that execution reached point `name`.
#[cfg(feature = "failpoints")]
pub fn hit(name: &'static str) {
    if let Some(action) = reached(name) {
        act(name, action);
    }
}

#[cfg(feature = "failpoints")]
fn act(name: &'static str, action: Action) {
    let n = match spec() {
        Some((_, n, _)) => *n,
        None => 0,
    };
    match action {
        Action::Enospc => {
            eprintln!("omesh: failpoint {name}:{n} is an I/O failure point only; {name} is not one");
        }
        Action::Wait(p) => {
            eprintln!("omesh: failpoint {name}:{n} reached, waiting for {}", p.display());
            let mut reached = p.clone().into_os_string();
            reached.push(".reached");
            let _ = std::fs::write(&reached, b"");
            while !p.exists() {
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
        }
        Action::Stop => {
            eprintln!("omesh: failpoint {name}:{n} reached, stopping self");
            let _ = rustix::process::kill_process(rustix::process::getpid(), rustix::process::Signal::STOP);
        }
        Action::Kill => {
            eprintln!("omesh: failpoint {name}:{n} reached, killing self");
            let _ = rustix::process::kill_process(rustix::process::getpid(), rustix::process::Signal::KILL);
            // SIGKILL cannot be caught; make sure we never continue.
            std::process::abort();
        }
    }
}
