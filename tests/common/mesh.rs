//! A site of real `omesh node run` daemons, each a separate process on its
//! own 127.0.0.x address, with a real CA and certificates.

use super::{Run, cmd, s};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};

/// One node's files and address.
#[derive(Clone, Debug)]
pub struct NodeSpec {
    pub name: String,
    pub ip: String,
    pub port: u16,
    pub domain: String,
    pub dir: PathBuf,
    /// Network namespace the node's processes run in (lab tests).
    pub netns: Option<String>,
}

impl NodeSpec {
    pub fn config(&self) -> PathBuf {
        self.dir.join("omesh.toml")
    }
    pub fn data(&self) -> PathBuf {
        self.dir.join("data")
    }
    pub fn addr(&self) -> String {
        format!("{}:{}", self.ip, self.port)
    }
}

/// A site: CA plus nodes.
pub struct Site {
    pub root: PathBuf,
    pub ca: PathBuf,
    pub nodes: Vec<NodeSpec>,
    /// Extra environment for every omesh process (e.g. S3 credentials).
    pub env: Vec<(String, String)>,
}

/// A free UDP port on `ip` (bound and released; the daemon binds it next).
pub fn free_port(ip: &str) -> u16 {
    std::net::UdpSocket::bind(format!("{ip}:0")).unwrap().local_addr().unwrap().port()
}

impl Site {
    /// Create a CA and certificates for `nodes` (name, domain); node i gets
    /// address 127.0.0.(i+first_ip).
    pub fn new(root: &Path, nodes: &[(&str, &str)]) -> Site {
        let ca = root.join("ca");
        omesh_net::ca::init(&ca, "test-site", 400).unwrap();
        let first = 2 + (std::process::id() % 50) as usize * 4;
        let nodes: Vec<NodeSpec> = nodes
            .iter()
            .enumerate()
            .map(|(i, (n, d))| {
                let ip = format!("127.0.{}.{}", (first + i) / 250, 1 + (first + i) % 250);
                let dir = root.join(n);
                // long enough not to count as expiring (30 days)
                omesh_net::ca::issue(&ca, n, &dir.join("tls"), 90).unwrap();
                NodeSpec { name: n.to_string(), port: free_port(&ip), ip, domain: d.to_string(), dir, netns: None }
            })
            .collect();
        let site = Site { root: root.into(), ca, nodes, env: Vec::new() };
        for n in &site.nodes {
            site.write_config(
                &n.name,
                &site.nodes.iter().filter(|p| p.name != n.name).map(|p| p.name.clone()).collect::<Vec<_>>(),
                2,
                "",
            );
        }
        site
    }

    pub fn node(&self, name: &str) -> &NodeSpec {
        self.nodes.iter().find(|n| n.name == name).unwrap()
    }

    /// (Re)write a node's config with the given peers and factor; `extra`
    /// is appended (more TOML).
    pub fn write_config(&self, name: &str, peers: &[String], factor: usize, extra: &str) {
        let n = self.node(name);
        let mut t = format!(
            "name = \"{}\"\ndata_dir = \"{}\"\nlisten = \"{}\"\ndomain = \"{}\"\n[tls]\nca = \"{}\"\ncert = \"{}\"\nkey = \"{}\"\ncrl = \"{}\"\n[replication]\nfactor = {factor}\n",
            n.name,
            s(&n.data()),
            n.addr(),
            n.domain,
            s(&n.dir.join("tls/ca.pem")),
            s(&n.dir.join("tls/node.pem")),
            s(&n.dir.join("tls/node.key")),
            s(&n.dir.join("tls/crl.pem")),
        );
        t.push_str(extra);
        // background jobs stay off unless a test turns them on: each test
        // triggers what it checks (`omesh sync`, `omesh gc`, ...) itself
        for (section, quiet) in [
            ("[sync]", "[sync]\nat_start = false\ninterval_secs = 0\n"),
            ("[scrub]", "[scrub]\nenabled = false\n"),
            ("[maintenance]", "[maintenance]\ncron = \"\"\n"),
        ] {
            if !extra.contains(section) {
                t.push_str(quiet);
            }
        }
        for p in peers {
            let p = self.node(p);
            t.push_str(&format!(
                "[[peer]]\nname = \"{}\"\naddress = \"{}\"\ndomain = \"{}\"\n",
                p.name,
                p.addr(),
                p.domain
            ));
        }
        std::fs::write(n.config(), t).unwrap();
    }

    /// Run `omesh ARGS --config <node's config>`.
    pub fn omesh(&self, name: &str, args: &[&str]) -> Run {
        self.command(name, args).output().unwrap().into()
    }

    /// The command `omesh ARGS --config <node's config>`, with the site's environment.
    pub fn command(&self, name: &str, args: &[&str]) -> std::process::Command {
        let n = self.node(name);
        let mut c = match &n.netns {
            None => cmd(),
            Some(ns) => {
                let mut c = std::process::Command::new("ip");
                c.args(["netns", "exec", ns]).arg(super::bin());
                for (k, _) in std::env::vars() {
                    if k.starts_with("OMESH_") || k.starts_with("AWS_") {
                        c.env_remove(k);
                    }
                }
                c.env("RUST_LOG", "warn");
                c
            }
        };
        // the config goes before a `--` (after it, words are a command's)
        let cut = args.iter().position(|a| *a == "--").unwrap_or(args.len());
        c.args(&args[..cut]).arg("--config").arg(n.config()).args(&args[cut..]);
        for (k, v) in &self.env {
            c.env(k, v);
        }
        c
    }

    /// Start a node's daemon; returns once it listens.
    pub fn start(&self, name: &str) -> Daemon {
        self.start_with_env(name, &[])
    }

    /// Start with extra environment (e.g. OMESH_FAILPOINT).
    pub fn start_with_env(&self, name: &str, env: &[(&str, &str)]) -> Daemon {
        let mut c = self.command(name, &["node", "run"]);
        for (k, v) in env {
            c.env(k, v);
        }
        Self::start_command(name, c)
    }

    /// Start `c` (a `node run` command, perhaps wrapped, e.g. in `unshare`);
    /// returns once the daemon listens.
    pub fn start_command(name: &str, mut c: std::process::Command) -> Daemon {
        c.stdout(Stdio::piped()).stderr(Stdio::inherit());
        let mut child = c.spawn().unwrap();
        // readiness: the daemon prints its listen line once serving
        let out = child.stdout.take().unwrap();
        let mut line = String::new();
        BufReader::new(out).read_line(&mut line).unwrap();
        assert!(line.contains("listening on"), "daemon {name} did not start: {line:?}");
        Daemon { child: Some(child), name: name.into() }
    }
}

/// A daemon process; SIGKILLed and reaped on drop.
pub struct Daemon {
    child: Option<Child>,
    pub name: String,
}

impl Daemon {
    pub fn pid(&self) -> u32 {
        self.child.as_ref().unwrap().id()
    }
    /// SIGKILL and wait.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
    /// Wait for the process to exit on its own; returns its status.
    pub fn wait(&mut self) -> std::process::ExitStatus {
        self.child.take().unwrap().wait().unwrap()
    }
    /// Exit status if the process has exited (does not block).
    pub fn try_wait(&mut self) -> Option<std::process::ExitStatus> {
        let st = self.child.as_mut()?.try_wait().ok()??;
        self.child = None;
        Some(st)
    }
    /// SIGTERM and wait for an orderly exit.
    pub fn stop(&mut self) -> std::process::ExitStatus {
        let c = self.child.take().unwrap();
        rustix::process::kill_process(
            rustix::process::Pid::from_raw(c.id() as i32).unwrap(),
            rustix::process::Signal::TERM,
        )
        .unwrap();
        let mut c = c;
        c.wait().unwrap()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Snapshot ids stored for `source` on a node (on disk).
pub fn stored_snapshots(node: &NodeSpec, source: &str) -> Vec<String> {
    let d = node.data().join("sources").join(source).join("snapshots");
    let mut v: Vec<String> = std::fs::read_dir(d)
        .map(|rd| rd.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect())
        .unwrap_or_default();
    v.sort();
    v
}

/// A source srv-a whose snapshots go to two holders (srv-b, srv-c, factor
/// 2), and a brand-new srv-e configured with those holders only. Daemons
/// started: (a, b, c); srv-e runs none.
pub fn source_two_holders_and_a_new_node(root: &Path) -> (Site, Daemon, Daemon, Daemon) {
    let site = Site::new(root, &[("srv-a", "r0"), ("srv-b", "r1"), ("srv-c", "r2"), ("srv-e", "r3")]);
    for (n, peers) in [("srv-a", ["srv-b", "srv-c"]), ("srv-b", ["srv-a", "srv-c"]), ("srv-c", ["srv-a", "srv-b"])] {
        site.write_config(n, &peers.map(String::from), 2, "");
    }
    site.write_config("srv-e", &["srv-b".into(), "srv-c".into()], 2, "");
    let b = site.start("srv-b");
    let c = site.start("srv-c");
    let a = site.start("srv-a");
    (site, a, b, c)
}
