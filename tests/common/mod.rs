//! Shared test harness: run the real `omesh` binary, build test trees,
//! compare trees byte-for-byte and attribute-for-attribute.

#![allow(dead_code)]

pub mod garage;
pub mod mesh;
pub mod tree;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

/// Path of the omesh binary built for this test run.
pub fn bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_omesh"))
}

/// A command for the omesh binary with a clean environment: no inherited
/// OMESH_* settings, no AWS variables, logs at warn.
pub fn cmd() -> Command {
    let mut c = Command::new(bin());
    clean_env(&mut c);
    c.stdin(Stdio::null());
    c
}

/// Remove inherited OMESH_*, AWS_* and RUST_LOG from `c`; logs at warn
/// (also for a wrapper such as `unshare` that execs omesh).
pub fn clean_env(c: &mut Command) {
    for (k, _) in std::env::vars() {
        if k.starts_with("OMESH_") || k.starts_with("AWS_") || k == "RUST_LOG" {
            c.env_remove(k);
        }
    }
    c.env("RUST_LOG", "warn");
}

/// Run the shell command `line` on a pseudo-terminal (script(1)), as a
/// person at a terminal would, and return everything it drew; panics when
/// it fails.
pub fn on_a_terminal(line: &str) -> String {
    let mut c = Command::new("script");
    clean_env(&mut c);
    let out = c.args(["-qec", line, "/dev/null"]).env("TERM", "xterm").output().unwrap();
    let drawn = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "{line}: {drawn}");
    drawn
}

/// Result of running omesh.
#[derive(Debug)]
pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    /// The `--json` answer: one object that starts with `json_version` (1)
    /// and `command` (docs/cli.md, "JSON output").
    #[track_caller]
    pub fn json(&self) -> serde_json::Value {
        let v: serde_json::Value = serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("stdout is not JSON ({e}):\n{}\nstderr:\n{}", self.stdout, self.stderr));
        let keys: Vec<&String> = v.as_object().map(|m| m.keys().take(2).collect()).unwrap_or_default();
        assert_eq!(keys, ["json_version", "command"], "not the JSON envelope: {v}");
        assert_eq!(v["json_version"], 1, "{v}");
        v
    }
    /// The list a list command answers (`snapshots`, `ls`, `residency
    /// report`): the envelope's one other field.
    #[track_caller]
    pub fn json_list(&self) -> serde_json::Value {
        let v = self.json();
        let rest: Vec<(&String, &serde_json::Value)> = v.as_object().unwrap().iter().skip(2).collect();
        assert!(rest.len() == 1 && rest[0].1.is_array(), "not a list answer: {v}");
        rest[0].1.clone()
    }
    #[track_caller]
    pub fn ok(self) -> Self {
        assert_eq!(self.code, 0, "omesh failed:\nstdout:\n{}\nstderr:\n{}", self.stdout, self.stderr);
        self
    }
    #[track_caller]
    pub fn code(self, want: i32) -> Self {
        assert_eq!(self.code, want, "unexpected exit code:\nstdout:\n{}\nstderr:\n{}", self.stdout, self.stderr);
        self
    }
}

impl From<Output> for Run {
    fn from(o: Output) -> Self {
        Run {
            code: o.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
        }
    }
}

/// Run omesh with arguments.
pub fn omesh<I, S>(args: I) -> Run
where
    I: IntoIterator<Item = S>,
    S: AsRef<std::ffi::OsStr>,
{
    cmd().args(args).output().expect("omesh runs").into()
}

/// Alter one byte of `record`'s body (`at` bytes before its check hash,
/// XOR `mask`) and recompute the check hash, as anyone can: the record still
/// passes its check but no longer matches the seal it was stored with.
pub fn alter_keeping_check(record: &mut [u8], at: usize, mask: u8) {
    let n = record.len() - omesh_proto::record::CHECK_BYTES;
    record[n - at] ^= mask;
    let check = blake3::hash(&record[..n]);
    record[n..].copy_from_slice(&check.as_bytes()[..omesh_proto::record::CHECK_BYTES]);
}

/// Create a store with small chunks and packs so tests exercise many
/// objects and packs on little data.
pub fn init_small(store: &Path) {
    omesh([
        "init",
        "--store",
        s(store),
        "--source",
        "test-src",
        "--chunk-sizes",
        "4096,16384,65536",
        "--pack-size-bytes",
        "262144",
    ])
    .ok();
}

/// Path as &str.
pub fn s(p: &Path) -> &str {
    p.to_str().expect("utf-8 test path")
}

/// Back up and return the snapshot id.
pub fn backup(store: &Path, paths: &[&Path]) -> serde_json::Value {
    let mut args = vec!["backup".to_string(), "--store".into(), s(store).into(), "--json".into()];
    args.extend(paths.iter().map(|p| s(p).to_string()));
    omesh(&args).ok().json()
}

/// Total size of all pack files in a store.
pub fn store_bytes(store: &Path) -> u64 {
    let mut n = 0;
    for d in std::fs::read_dir(store.join("packs")).unwrap().flatten() {
        for f in std::fs::read_dir(d.path()).unwrap().flatten() {
            n += f.metadata().unwrap().len();
        }
    }
    n
}

/// All pack files.
pub fn packs(store: &Path) -> Vec<PathBuf> {
    let mut v = Vec::new();
    for d in std::fs::read_dir(store.join("packs")).unwrap().flatten() {
        for f in std::fs::read_dir(d.path()).unwrap().flatten() {
            v.push(f.path());
        }
    }
    v.sort();
    v
}

/// The restored copy of `src` below `target` (restore recreates full paths).
pub fn restored(target: &Path, src: &Path) -> PathBuf {
    target.join(src.strip_prefix("/").unwrap())
}

/// A tmpfs mounted for a test (as root), unmounted on drop.
pub struct Mounted(PathBuf);

impl Mounted {
    /// Mount a tmpfs of `size` (mount(8)'s syntax: "4m") at `dir`.
    pub fn tmpfs(dir: &Path, size: &str) -> Mounted {
        std::fs::create_dir_all(dir).unwrap();
        let st = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "omesh-test"])
            .arg(dir)
            .status()
            .unwrap();
        assert!(st.success(), "mounting a tmpfs at {} (tests run as root)", dir.display());
        Mounted(dir.to_path_buf())
    }

    /// Change its size (mount -o remount).
    pub fn resize(&self, size: &str) {
        let st = Command::new("mount").args(["-o", &format!("remount,size={size}")]).arg(&self.0).status().unwrap();
        assert!(st.success(), "resizing the tmpfs at {}", self.0.display());
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// A child process (a server a test started) killed and reaped on drop.
pub struct Killed(pub std::process::Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
