//! A real Garage S3 server on loopback for the S3 tests: one node,
//! replication factor 1, sqlite metadata, a key and a bucket made with its
//! own CLI. Killed on drop.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

pub struct Garage {
    child: Option<Child>,
    pub dir: PathBuf,
    pub endpoint: String,
    pub key_id: String,
    pub secret: String,
    pub bucket: String,
    config: PathBuf,
    netns: Option<String>,
}

fn port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn garage_cmd(config: &Path, netns: Option<&str>) -> Command {
    let garage = which_garage();
    let mut c = match netns {
        None => Command::new(garage),
        Some(ns) => {
            let mut c = Command::new("ip");
            c.args(["netns", "exec", ns]).arg(garage);
            c
        }
    };
    c.arg("-c").arg(config);
    c.env_remove("RUST_LOG");
    c
}

/// Absolute path of the garage binary (`ip netns exec` has its own PATH).
fn which_garage() -> PathBuf {
    std::env::var_os("PATH")
        .and_then(|p| std::env::split_paths(&p).map(|d| d.join("garage")).find(|p| p.exists()))
        .unwrap_or_else(|| PathBuf::from("garage"))
}

fn cli(config: &Path, netns: Option<&str>, args: &[&str]) -> String {
    let out = garage_cmd(config, netns)
        .args(args)
        .output()
        .expect("garage is installed (`cargo install garage --version 2.5.0`)");
    assert!(out.status.success(), "garage {args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn field<'a>(text: &'a str, name: &str) -> &'a str {
    text.lines().find_map(|l| l.strip_prefix(name)).map(|v| v.trim()).unwrap_or_else(|| panic!("no {name:?} in {text}"))
}

impl Garage {
    /// Start a fresh server with a bucket `backups` and a key for it.
    pub fn start(dir: &Path) -> Garage {
        Self::start_in(dir, None, "127.0.0.1")
    }

    /// Start inside a network namespace, listening on `ip`.
    pub fn start_in(dir: &Path, netns: Option<&str>, ip: &str) -> Garage {
        std::fs::create_dir_all(dir).unwrap();
        let (rpc, s3, admin) = if netns.is_some() { (3901, 3900, 3903) } else { (port(), port(), port()) };
        let mut secret = [0u8; 32];
        getrandom::fill(&mut secret).unwrap();
        let config = dir.join("garage.toml");
        std::fs::write(
            &config,
            format!(
                "metadata_dir = \"{0}/meta\"\ndata_dir = \"{0}/data\"\ndb_engine = \"sqlite\"\nreplication_factor = 1\n\
                 rpc_bind_addr = \"{ip}:{rpc}\"\nrpc_public_addr = \"{ip}:{rpc}\"\nrpc_secret = \"{1}\"\n\
                 [s3_api]\ns3_region = \"garage\"\napi_bind_addr = \"{ip}:{s3}\"\nroot_domain = \".s3.garage.localhost\"\n\
                 [admin]\napi_bind_addr = \"{ip}:{admin}\"\n",
                dir.display(),
                hex::encode(secret)
            ),
        )
        .unwrap();
        let mut g = Garage {
            child: None,
            dir: dir.into(),
            endpoint: format!("http://{ip}:{s3}"),
            key_id: String::new(),
            secret: String::new(),
            bucket: "backups".into(),
            config,
            netns: netns.map(String::from),
        };
        g.run_server();
        let ns = g.netns.clone();
        let ns = ns.as_deref();
        let id = cli(&g.config, ns, &["node", "id", "-q"]);
        let id = id.trim().split('@').next().unwrap().to_string();
        cli(&g.config, ns, &["layout", "assign", "-z", "dc1", "-c", "10G", &id]);
        cli(&g.config, ns, &["layout", "apply", "--version", "1"]);
        let key = cli(&g.config, ns, &["key", "create", "omesh-test"]);
        g.key_id = field(&key, "Key ID:").to_string();
        g.secret = field(&key, "Secret key:").to_string();
        cli(&g.config, ns, &["bucket", "create", "backups"]);
        cli(&g.config, ns, &["bucket", "allow", "--read", "--write", "--owner", "backups", "--key", "omesh-test"]);
        g
    }

    /// Start the server process and wait until its S3 API listens (it
    /// says so on its log).
    fn run_server(&mut self) {
        let mut child = garage_cmd(&self.config, self.netns.as_deref())
            .arg("server")
            .env("RUST_LOG", "garage=info")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let err = child.stderr.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut tx = Some(tx);
            for line in BufReader::new(err).lines().map_while(Result::ok) {
                if line.contains("S3 API server listening")
                    && let Some(t) = tx.take()
                {
                    let _ = t.send(());
                }
            }
        });
        rx.recv_timeout(std::time::Duration::from_secs(60)).expect("garage did not start");
        self.child = Some(child);
    }

    /// SIGKILL the server (data stays).
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Start it again on the same data.
    pub fn restart(&mut self) {
        self.kill();
        self.run_server();
    }

    /// Environment for omesh processes: credentials only.
    pub fn env(&self) -> Vec<(String, String)> {
        vec![("AWS_ACCESS_KEY_ID".into(), self.key_id.clone()), ("AWS_SECRET_ACCESS_KEY".into(), self.secret.clone())]
    }

    /// An `[[s3]]` section for this server.
    pub fn toml(&self, name: &str, extra: &str) -> String {
        format!(
            "[[s3]]\nname = \"{name}\"\nendpoint = \"{}\"\nbucket = \"{}\"\nregion = \"garage\"\npath_style = true\nprefix = \"site-1/\"\n{extra}\n",
            self.endpoint, self.bucket
        )
    }

    /// (objects, bytes) under a key prefix, through the S3 API.
    pub fn usage(&self, prefix: &str) -> (u64, u64) {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async {
            let creds = aws_sdk_s3::config::Credentials::new(&self.key_id, &self.secret, None, None, "test");
            let conf = aws_sdk_s3::config::Builder::new()
                .behavior_version(aws_sdk_s3::config::BehaviorVersion::latest())
                .region(aws_sdk_s3::config::Region::new("garage"))
                .endpoint_url(&self.endpoint)
                .force_path_style(true)
                .credentials_provider(creds)
                .http_client(aws_smithy_http_client::Builder::new().build_http())
                .build();
            let c = aws_sdk_s3::Client::from_conf(conf);
            let (mut n, mut b, mut token) = (0, 0, None);
            loop {
                let r = c
                    .list_objects_v2()
                    .bucket(&self.bucket)
                    .prefix(prefix)
                    .set_continuation_token(token.take())
                    .send()
                    .await
                    .unwrap();
                for o in r.contents() {
                    n += 1;
                    b += o.size().unwrap_or(0) as u64;
                }
                match r.next_continuation_token() {
                    Some(t) => token = Some(t.to_string()),
                    None => return (n, b),
                }
            }
        })
    }
}

impl Drop for Garage {
    fn drop(&mut self) {
        self.kill();
    }
}
