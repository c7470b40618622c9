//! The node configuration file (TOML). The reference is `docs/config.md`;
//! `deploy/` has examples. Unknown keys are errors, so a typo is caught at
//! start instead of silently ignored; every error names the file and key.

use omesh_core::policy::{bandwidth, retention, schedule};
pub use omesh_core::store::gc::GcConfig;
pub use omesh_core::store::scrub::ScrubConfig;
pub use omesh_core::units::{ByteSize, FreeFloor};
pub use omesh_net::transport::{TlsConfig, TransportConfig};
use omesh_proto::msg::valid_name;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// `[replication]`
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReplicationConfig {
    /// Replicas (peers that acknowledge a snapshot) for it to count as protected.
    #[serde(default = "default_factor")]
    pub factor: usize,
    /// Parallel upload streams per peer.
    #[serde(default = "default_streams")]
    pub streams_per_peer: usize,
    /// Records per upload stream (batch).
    #[serde(default = "default_batch")]
    pub batch_bytes: ByteSize,
}

fn default_factor() -> usize {
    2
}
fn default_streams() -> usize {
    4
}
fn default_batch() -> ByteSize {
    ByteSize(8 << 20)
}

impl Default for ReplicationConfig {
    fn default() -> Self {
        ReplicationConfig {
            factor: default_factor(),
            streams_per_peer: default_streams(),
            batch_bytes: default_batch(),
        }
    }
}

pub use omesh_net::mesh::server::AcceptFrom;

/// `[storage]`
#[derive(Clone, Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct StorageConfig {
    /// Most bytes one source may store here (0 = unlimited); a `[[peer]]`
    /// may override it.
    #[serde(default)]
    pub quota: ByteSize,
    /// Who may store replicas here.
    #[serde(default)]
    pub accept_from: AcceptFrom,
    /// Free space that writes from peers (and mesh repairs) always leave
    /// on this node's disk: a size or a percentage (default "5%").
    #[serde(default)]
    pub min_free: FreeFloor,
}

/// `[backup]`: what `omesh backup --config` backs up without arguments.
#[derive(Clone, Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct BackupConfig {
    /// Paths to back up.
    #[serde(default)]
    pub paths: Vec<PathBuf>,
    /// Exclude patterns.
    #[serde(default)]
    pub exclude: Vec<String>,
    /// Skip directories holding an entry of one of these names.
    #[serde(default)]
    pub exclude_if_present: Vec<String>,
    /// Skip directories holding a valid CACHEDIR.TAG.
    #[serde(default)]
    pub exclude_caches: bool,
    /// Stay on one file system.
    #[serde(default)]
    pub one_file_system: bool,
    /// zstd level for new stores.
    #[serde(default)]
    pub compression: Option<i32>,
}

/// `[hooks]`: shell commands run by the daemon (as its user) around every
/// backup it takes, scheduled or asked for; a `[[schedule]]`'s own `pre` and
/// `post` replace them for that schedule.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HooksConfig {
    /// Before; a failure aborts the backup.
    #[serde(default)]
    pub pre: Option<String>,
    /// After, always.
    #[serde(default)]
    pub post: Option<String>,
    /// Time limit of each, seconds (default 300).
    #[serde(default)]
    pub timeout_secs: Option<u64>,
}

impl HooksConfig {
    /// The hooks of a backup: `pre`/`post` (a schedule's own) or these.
    pub fn for_backup(&self, pre: Option<&String>, post: Option<&String>) -> omesh_core::backup::hook::Hooks {
        omesh_core::backup::hook::Hooks {
            pre: pre.or(self.pre.as_ref()).cloned(),
            post: post.or(self.post.as_ref()).cloned(),
            timeout: std::time::Duration::from_secs(self.timeout_secs.unwrap_or(300)),
        }
    }
}

/// `[[peer]]`
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PeerConfig {
    /// The peer's node name (must match its certificate).
    pub name: String,
    /// host:port on the local network.
    pub address: String,
    /// Failure-domain label (rack, room, building).
    #[serde(default)]
    pub domain: String,
    /// Quota for this peer's data on this node (overrides `[storage] quota`).
    #[serde(default)]
    pub quota: Option<ByteSize>,
    /// Free-space floor for this peer's writes (overrides `[storage]
    /// min_free`).
    #[serde(default)]
    pub min_free: Option<FreeFloor>,
}

pub use omesh_s3::S3Config;

/// `[sync]`: mesh sync (anti-entropy).
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SyncConfig {
    /// Seconds between syncs (0: only at start and on `omesh sync`).
    #[serde(default = "d_sync_interval")]
    pub interval_secs: u64,
    /// Sync when the daemon starts (a node coming back repairs at once).
    #[serde(default = "d_true")]
    pub at_start: bool,
}

fn d_sync_interval() -> u64 {
    3600
}
fn d_true() -> bool {
    true
}

impl Default for SyncConfig {
    fn default() -> Self {
        SyncConfig { interval_secs: d_sync_interval(), at_start: true }
    }
}

/// `[maintenance]`: when retention and garbage collection run.
#[derive(Clone, Debug, Deserialize)]
#[serde(try_from = "MaintenanceToml")]
pub struct MaintenanceConfig {
    /// Cron expression ("" disables; default 03:15 every day).
    pub cron: String,
    /// IANA time zone of `cron` (default UTC).
    pub timezone: Option<String>,
    /// The compiled schedule (`None`: disabled).
    pub schedule: Option<schedule::Schedule>,
}

/// `[maintenance]` as written.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct MaintenanceToml {
    #[serde(default = "d_maint_cron")]
    cron: String,
    #[serde(default)]
    timezone: Option<String>,
}

fn d_maint_cron() -> String {
    "15 3 * * *".into()
}

impl TryFrom<MaintenanceToml> for MaintenanceConfig {
    type Error = String;
    fn try_from(t: MaintenanceToml) -> Result<Self, String> {
        let schedule = if t.cron.trim().is_empty() {
            None
        } else {
            Some(
                schedule::Schedule::new(schedule::ScheduleConfig {
                    name: "maintenance".into(),
                    cron: Some(t.cron.clone()),
                    timezone: t.timezone.clone(),
                    interval_secs: None,
                    jitter_secs: 0,
                    paths: vec![],
                    rpo_secs: None,
                    pre: None,
                    post: None,
                })
                .map_err(|e| e.replace("[[schedule]] \"maintenance\"", "[maintenance]"))?,
            )
        };
        Ok(MaintenanceConfig { cron: t.cron, timezone: t.timezone, schedule })
    }
}

impl Default for MaintenanceConfig {
    fn default() -> Self {
        MaintenanceConfig::try_from(MaintenanceToml { cron: d_maint_cron(), timezone: None })
            .expect("the default maintenance cron expression is valid")
    }
}

/// `[metrics]`
#[derive(Clone, Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct MetricsConfig {
    /// Address for the Prometheus endpoint (`GET /metrics`), e.g.
    /// "127.0.0.1:9464". Absent: no endpoint.
    #[serde(default)]
    pub listen: Option<String>,
}

/// `[notify]`: webhooks and commands told about the events the alert
/// rules cover (services/notify.rs).
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NotifyConfig {
    /// How often the node looks at its state (seconds).
    #[serde(default = "d_notify_check")]
    pub check_secs: u64,
    /// The same event about the same subject at most this often (seconds).
    #[serde(default = "d_notify_interval")]
    pub min_interval_secs: u64,
    /// `[[notify.webhook]]`
    #[serde(default, rename = "webhook")]
    pub webhooks: Vec<Webhook>,
    /// `[[notify.command]]`
    #[serde(default, rename = "command")]
    pub commands: Vec<NotifyCommand>,
}

impl Default for NotifyConfig {
    fn default() -> Self {
        NotifyConfig {
            check_secs: d_notify_check(),
            min_interval_secs: d_notify_interval(),
            webhooks: vec![],
            commands: vec![],
        }
    }
}

fn d_notify_check() -> u64 {
    30
}
fn d_notify_interval() -> u64 {
    3600
}
fn d_webhook_timeout() -> u64 {
    10
}
fn d_webhook_attempts() -> u32 {
    5
}
fn d_command_timeout() -> u64 {
    30
}

/// `[[notify.webhook]]`: an HTTP(S) endpoint that gets each event as a
/// JSON POST.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Webhook {
    /// `http://` or `https://` URL.
    pub url: String,
    /// A file holding a shared secret: the body is signed with HMAC-SHA256
    /// in `X-Omesh-Signature: sha256=HEX`.
    #[serde(default)]
    pub secret_file: Option<PathBuf>,
    /// Extra CA certificates (PEM) for an https URL.
    #[serde(default)]
    pub ca_bundle: Option<PathBuf>,
    /// Seconds one attempt may take.
    #[serde(default = "d_webhook_timeout")]
    pub timeout_secs: u64,
    /// Attempts in all (backoff 1, 2, 4, … s between them).
    #[serde(default = "d_webhook_attempts")]
    pub attempts: u32,
}

/// `[[notify.command]]`: a program run with each event as JSON on stdin.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NotifyCommand {
    /// Program and arguments (no shell).
    pub command: Vec<String>,
    /// Seconds it may run before it is killed.
    #[serde(default = "d_command_timeout")]
    pub timeout_secs: u64,
}

/// What a configuration reload (SIGHUP, `systemctl reload omesh`) did.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct ReloadReport {
    /// When (RFC 3339).
    pub time: String,
    /// Settings now in force.
    pub applied: Vec<String>,
    /// Settings that changed in the file but take effect only at the next
    /// start (`systemctl restart omesh`).
    pub restart_needed: Vec<String>,
    /// Why the file was not used (the settings in force stay).
    pub error: Option<String>,
}

impl NodeConfig {
    /// The sections (top-level keys) whose text differs between `self` (in
    /// force) and `new` (the file now), as the file spells them:
    /// (applied live, need a restart). Only `[bandwidth]` applies live (the
    /// CRL is re-read anyway).
    pub fn reload_diff(&self, new: &NodeConfig) -> (Vec<String>, Vec<String>) {
        let keys: std::collections::BTreeSet<&String> = self.raw.keys().chain(new.raw.keys()).collect();
        let (mut live, mut restart) = (Vec::new(), Vec::new());
        for k in keys.into_iter().filter(|k| self.raw.get(*k) != new.raw.get(*k)) {
            let name = match self.raw.get(k).or(new.raw.get(k)) {
                Some(toml::Value::Table(_)) => format!("[{k}]"),
                Some(toml::Value::Array(a)) if a.iter().all(toml::Value::is_table) => format!("[[{k}]]"),
                _ => k.clone(),
            };
            if k == "bandwidth" { live.push(name) } else { restart.push(name) }
        }
        (live, restart)
    }
}

/// The whole node configuration.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeConfig {
    /// This node's name (must match its certificate).
    pub name: String,
    /// Where stores and state live.
    pub data_dir: PathBuf,
    /// QUIC listen address on the local network (host:port).
    pub listen: String,
    /// This node's failure domain.
    #[serde(default)]
    pub domain: String,
    /// Certificates.
    pub tls: TlsConfig,
    /// Replication.
    #[serde(default)]
    pub replication: ReplicationConfig,
    /// Storage for other nodes.
    #[serde(default)]
    pub storage: StorageConfig,
    /// Default backup set.
    #[serde(default)]
    pub backup: BackupConfig,
    /// Commands the daemon runs around every backup it takes.
    #[serde(default)]
    pub hooks: HooksConfig,
    /// QUIC tuning.
    #[serde(default)]
    pub transport: TransportConfig,
    /// Peers.
    #[serde(default, rename = "peer")]
    pub peers: Vec<PeerConfig>,
    /// S3 targets.
    #[serde(default, rename = "s3")]
    pub s3: Vec<S3Config>,
    /// Residency boundary.
    #[serde(default)]
    pub residency: omesh_net::residency::ResidencyConfig,
    /// Backup schedules run by the daemon.
    #[serde(default, rename = "schedule")]
    pub schedules: Vec<schedule::Schedule>,
    /// Retention policy and lock, applied to every store on this node.
    #[serde(default)]
    pub retention: retention::RetentionPolicy,
    /// Mesh sync (anti-entropy).
    #[serde(default)]
    pub sync: SyncConfig,
    /// When retention and garbage collection run.
    #[serde(default)]
    pub maintenance: MaintenanceConfig,
    /// Garbage collection.
    #[serde(default)]
    pub gc: GcConfig,
    /// Scrub.
    #[serde(default)]
    pub scrub: ScrubConfig,
    /// Bandwidth limits.
    #[serde(default)]
    pub bandwidth: bandwidth::BandwidthConfig,
    /// Prometheus endpoint.
    #[serde(default)]
    pub metrics: MetricsConfig,
    /// Notifications.
    #[serde(default)]
    pub notify: NotifyConfig,
    /// Where the file was read from (for messages).
    #[serde(skip)]
    pub path: PathBuf,
    /// The file as read, before defaults (what a reload compares).
    #[serde(skip)]
    pub raw: toml::Table,
}

/// Validate the lifecycle sections.
fn validate_lifecycle(cfg: &NodeConfig) -> Result<(), String> {
    let mut names = std::collections::HashSet::new();
    for s in &cfg.schedules {
        let s = &s.cfg;
        if !names.insert(s.name.as_str()) {
            return Err(format!("[[schedule]] {:?} is listed twice", s.name));
        }
        if s.paths.is_empty() && cfg.backup.paths.is_empty() {
            return Err(format!(
                "[[schedule]] {:?} has no paths and [backup] paths is empty: nothing to back up",
                s.name
            ));
        }
    }
    bandwidth::Limiter::compile(&cfg.bandwidth)?;
    for l in &cfg.bandwidth.peer {
        if !cfg.peers.iter().any(|p| p.name == l.name) && !cfg.s3.iter().any(|b| b.name == l.name) {
            return Err(format!(
                "[[bandwidth.peer]] name = {:?} is not a [[peer]] or [[s3]] target of this node; \
                 use one of their names (the limit would apply to nothing)",
                l.name
            ));
        }
    }
    if !(0.0..=1.0).contains(&cfg.gc.repack_unused) {
        return Err(format!("[gc] repack_unused = {} must be between 0 and 1", cfg.gc.repack_unused));
    }
    if !(0.0..=1.0).contains(&cfg.gc.max_unused) {
        return Err(format!("[gc] max_unused = {} must be between 0 and 1 (0.02 is 2%)", cfg.gc.max_unused));
    }
    if let Some(l) = &cfg.metrics.listen
        && !l.contains(':')
    {
        return Err(format!("[metrics] listen = {l:?} needs a port (address:port)"));
    }
    Ok(())
}

/// A configuration problem, naming the file and setting.
#[derive(Debug, thiserror::Error)]
#[error("{path}: {message}")]
pub struct ConfigError {
    /// Config file.
    pub path: PathBuf,
    /// What is wrong and what to do.
    pub message: String,
}

impl NodeConfig {
    /// Read and validate a config file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let err = |message: String| ConfigError { path: path.to_path_buf(), message };
        let text = std::fs::read_to_string(path).map_err(|e| err(format!("cannot read the config file: {e}")))?;
        let mut c: NodeConfig = toml::from_str(&text).map_err(|e| err(e.to_string().trim().to_string()))?;
        c.raw = text.parse().map_err(|e: toml::de::Error| err(e.to_string().trim().to_string()))?;
        c.path = path.to_path_buf();
        let base = path.parent().unwrap_or(Path::new("."));
        // relative paths are relative to the config file
        for p in [&mut c.data_dir, &mut c.tls.ca, &mut c.tls.cert, &mut c.tls.key] {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        }
        if let Some(crl) = &mut c.tls.crl
            && crl.is_relative()
        {
            *crl = base.join(&*crl);
        }
        for w in &mut c.notify.webhooks {
            for p in [&mut w.secret_file, &mut w.ca_bundle].into_iter().flatten() {
                if p.is_relative() {
                    *p = base.join(&*p);
                }
            }
        }
        for t in &mut c.s3 {
            if let Some(ca) = &mut t.ca_bundle
                && ca.is_relative()
            {
                *ca = base.join(&*ca);
            }
        }
        c.settle().map_err(err)?;
        c.validate().map_err(err)?;
        Ok(c)
    }

    /// Settings given in a short form, made explicit (before validation).
    fn settle(&mut self) -> Result<(), String> {
        for t in &mut self.s3 {
            t.settle()?;
        }
        Ok(())
    }

    /// Parse from a string (tests, demo).
    pub fn from_toml(text: &str, path: &Path) -> Result<Self, ConfigError> {
        let mut c: NodeConfig =
            toml::from_str(text).map_err(|e| ConfigError { path: path.into(), message: e.to_string() })?;
        c.path = path.to_path_buf();
        c.settle().map_err(|message| ConfigError { path: path.into(), message })?;
        c.validate().map_err(|message| ConfigError { path: path.into(), message })?;
        Ok(c)
    }

    fn validate(&self) -> Result<(), String> {
        if !valid_name(&self.name) {
            return Err(format!(
                "name = {:?}: node names are 1-64 characters of letters, digits, '.', '-', '_'",
                self.name
            ));
        }
        if self.replication.factor == 0 {
            return Err("[replication] factor must be at least 1".into());
        }
        if self.replication.factor > self.peers.len() + self.s3.len() {
            return Err(format!(
                "[replication] factor = {} but only {} [[peer]] and {} [[s3]] targets are configured; add targets or lower the factor",
                self.replication.factor,
                self.peers.len(),
                self.s3.len()
            ));
        }
        for t in &self.s3 {
            if !valid_name(&t.name) || self.peers.iter().any(|p| p.name == t.name) || t.name == self.name {
                return Err(format!("[[s3]] name = {:?} must be a valid name distinct from every node", t.name));
            }
            if !t.prefix.is_empty() && !t.prefix.ends_with('/') {
                return Err(format!("[[s3]] {:?}: prefix {:?} must end with '/'", t.name, t.prefix));
            }
            if t.part_size.0 < 5 << 20 {
                return Err(format!("[[s3]] {:?}: part_size must be at least 5 MiB (an S3 rule)", t.name));
            }
            // what the SDK's endpoint rules refuse or get wrong, refused here
            t.addressing()?;
        }
        for w in &self.notify.webhooks {
            let ok = w.url.parse::<hyper::Uri>().ok().filter(|u| {
                matches!(u.scheme_str(), Some("http" | "https")) && u.host().is_some_and(|h| !h.is_empty())
            });
            if ok.is_none() {
                return Err(format!(
                    "[[notify.webhook]] url = {:?} is not an http:// or https:// URL with a host",
                    w.url
                ));
            }
            if !(1..=20).contains(&w.attempts) || w.timeout_secs == 0 {
                return Err(format!(
                    "[[notify.webhook]] {:?}: attempts must be 1 to 20 and timeout_secs at least 1",
                    w.url
                ));
            }
        }
        for c in &self.notify.commands {
            if c.command.is_empty() || c.command[0].is_empty() || c.timeout_secs == 0 {
                return Err(
                    "[[notify.command]] needs command = [\"PROGRAM\", \"ARG\", …] and timeout_secs of at least 1"
                        .into(),
                );
            }
        }
        if self.notify.check_secs == 0 {
            return Err("[notify] check_secs must be at least 1".into());
        }
        let mut seen = std::collections::HashSet::new();
        for p in &self.peers {
            if !valid_name(&p.name) {
                return Err(format!("[[peer]] name = {:?} is not a valid node name", p.name));
            }
            if p.name == self.name {
                return Err(format!("[[peer]] {:?} is this node itself", p.name));
            }
            if !seen.insert(&p.name) {
                return Err(format!("[[peer]] {:?} is listed twice", p.name));
            }
            if !p.address.contains(':') {
                return Err(format!("[[peer]] {:?}: address {:?} needs a port (host:port)", p.name, p.address));
            }
        }
        if !self.listen.contains(':') {
            return Err(format!("listen = {:?} needs a port (address:port)", self.listen));
        }
        match (&self.tls.crl, self.tls.no_crl) {
            (None, false) => {
                return Err("[tls] crl is not set: a revoked node's certificate would stay valid until it expires; \
                     copy the site CA's crl.pem (written by `omesh ca init` and every `omesh ca revoke`) to this node \
                     and set crl = \"PATH\", or set no_crl = true to run without revocation"
                    .into());
            }
            (Some(p), true) => {
                return Err(format!("[tls] sets both crl = {:?} and no_crl = true; keep one", p.display().to_string()));
            }
            _ => {}
        }
        validate_lifecycle(self)?;
        Ok(())
    }

    /// Peer by name.
    pub fn peer(&self, name: &str) -> Option<&PeerConfig> {
        self.peers.iter().find(|p| p.name == name)
    }

    /// Quota for `source` on this node (0 = unlimited).
    pub fn quota_for(&self, source: &str) -> u64 {
        self.peer(source).and_then(|p| p.quota).unwrap_or(self.storage.quota).0
    }

    /// What writes of `source` may use on this node: its quota and the
    /// free-space floor (this node's own data is never refused by them,
    /// as its backups are not).
    pub fn allowance_for(&self, source: &str) -> omesh_net::mesh::Allowance {
        if source == self.name {
            return omesh_net::mesh::Allowance { quota: 0, min_free: FreeFloor::Bytes(0) };
        }
        omesh_net::mesh::Allowance {
            quota: self.quota_for(source),
            min_free: self.peer(source).and_then(|p| p.min_free).unwrap_or(self.storage.min_free),
        }
    }

    /// The options of a backup asked for with these command-line values:
    /// the config's paths when none are given (and no stream, which
    /// replaces them), its excludes and settings joined with the
    /// request's, its `[hooks]`.
    #[allow(clippy::too_many_arguments)]
    pub fn backup_options(
        &self,
        paths: Vec<PathBuf>,
        (exclude, if_present, caches): (Vec<String>, Vec<String>, bool),
        one_file_system: bool,
        image: Option<PathBuf>,
        tags: Vec<String>,
        parent: omesh_core::backup::ParentChoice,
        stream: Option<omesh_core::backup::stream::StreamInput>,
    ) -> omesh_core::backup::BackupOptions {
        let mut excludes = self.backup.exclude.clone();
        excludes.extend(exclude);
        let mut exclude_if_present = self.backup.exclude_if_present.clone();
        exclude_if_present.extend(if_present);
        omesh_core::backup::BackupOptions {
            paths: match (&stream, &image) {
                (Some(_), _) => Vec::new(),
                (None, None) if paths.is_empty() => self.backup.paths.clone(),
                _ => paths,
            },
            stdin: stream,
            image,
            excludes,
            exclude_if_present,
            exclude_caches: caches || self.backup.exclude_caches,
            hooks: self.hooks.for_backup(None, None),
            one_file_system: one_file_system || self.backup.one_file_system,
            parent,
            tags,
            ..Default::default()
        }
    }

    /// Directory of a source's store on this node.
    pub fn source_dir(&self, source: &str) -> PathBuf {
        self.layout().source_dir(source)
    }

    /// Key file of a source on this node.
    pub fn key_path(&self, source: &str) -> PathBuf {
        self.layout().key_path(source)
    }

    /// Where this node keeps its stores and keys.
    pub fn layout(&self) -> omesh_net::mesh::StoreLayout {
        omesh_net::mesh::StoreLayout {
            node: self.name.clone(),
            data_dir: self.data_dir.clone(),
            compression: self.backup.compression,
        }
    }

    /// What this node allows when serving peers.
    pub fn serve_policy(&self) -> omesh_net::mesh::server::ServePolicy {
        omesh_net::mesh::server::ServePolicy {
            node: self.name.clone(),
            accept_from: self.storage.accept_from,
            peers: self
                .peers
                .iter()
                .map(|p| {
                    let terms =
                        omesh_net::mesh::server::PeerTerms { quota: p.quota.map(|q| q.0), min_free: p.min_free };
                    (p.name.clone(), terms)
                })
                .collect(),
            default_quota: self.storage.quota.0,
            min_free: self.storage.min_free,
            retention: self.retention.clone(),
        }
    }

    /// Every destination this node sends data to, for the residency check.
    pub fn destinations(&self) -> Vec<omesh_net::residency::Destination> {
        use omesh_net::residency::Destination;
        let peers =
            self.peers.iter().map(|p| Destination { kind: "peer", name: p.name.clone(), endpoint: p.address.clone() });
        // the host the SDK really connects to (its endpoint rules), not `endpoint`
        let s3 = self.s3.iter().map(|t| Destination {
            kind: "s3",
            name: t.name.clone(),
            // (checked when the file loaded; a failure here leaves no host to allow)
            endpoint: t.addressing().map(|a| a.url).unwrap_or_default(),
        });
        // webhooks are destinations like any other: the boundary applies
        let hooks = self.notify.webhooks.iter().map(|w| Destination {
            kind: "notify",
            name: w.url.clone(),
            endpoint: w.url.clone(),
        });
        peers.chain(s3).chain(hooks).collect()
    }

    /// S3 target by name.
    pub fn s3_target(&self, name: &str) -> Option<&S3Config> {
        self.s3.iter().find(|t| t.name == name)
    }

    /// Control socket path.
    pub fn control_socket(&self) -> PathBuf {
        self.data_dir.join("control.sock")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: &str = r#"
name = "srv-a"
data_dir = "/var/lib/omesh"
listen = "10.0.0.11:7443"
[tls]
ca = "/etc/omesh/ca.pem"
cert = "/etc/omesh/node.pem"
key = "/etc/omesh/node.key"
crl = "/etc/omesh/crl.pem"
[replication]
factor = 2
[[peer]]
name = "srv-b"
address = "10.0.0.12:7443"
domain = "rack-1"
[[peer]]
name = "srv-c"
address = "10.0.0.13:7443"
domain = "rack-2"
quota = "2 TiB"
"#;

    #[test]
    fn parses_the_documented_example() {
        let c = NodeConfig::from_toml(BASE, Path::new("x.toml")).unwrap();
        assert_eq!(c.peers.len(), 2);
        assert_eq!(c.quota_for("srv-c"), 2 << 40);
        assert_eq!(c.quota_for("srv-b"), 0);
        assert_eq!(c.transport.stream_receive_window.0, 16 << 20);
    }

    #[test]
    fn errors_name_the_setting() {
        let e = NodeConfig::from_toml(&BASE.replace("factor = 2", "factor = 5"), Path::new("x.toml")).unwrap_err();
        assert!(e.message.contains("factor = 5"), "{e}");
        let e = NodeConfig::from_toml(&format!("{BASE}\nlisten_typo = 1\n"), Path::new("x.toml")).unwrap_err();
        assert!(e.to_string().contains("listen_typo"), "{e}");
        let e = NodeConfig::from_toml(&BASE.replace("10.0.0.12:7443", "10.0.0.12"), Path::new("x.toml")).unwrap_err();
        assert!(e.message.contains("needs a port"), "{e}");
        // a limit for a peer that does not exist would limit nothing
        let t = format!("{BASE}\n[[bandwidth.peer]]\nname = \"srv-x\"\nlimit = \"100 Mbit/s\"\n");
        let e = NodeConfig::from_toml(&t, Path::new("x.toml")).unwrap_err();
        assert!(e.message.contains("\"srv-x\"") && e.message.contains("[[peer]]"), "{e}");
        let ok = t.replace("srv-x", "srv-b");
        NodeConfig::from_toml(&ok, Path::new("x.toml")).unwrap();
        // a CIDR with host bits set is a typo, not a network
        let t = format!("{BASE}\n[residency]\nallowed_networks = [\"10.0.0.5/8\"]\n");
        let e = NodeConfig::from_toml(&t, Path::new("x.toml")).unwrap_err();
        assert!(e.to_string().contains("10.0.0.0/8") && e.to_string().contains("host bits"), "{e}");
    }
}
