//! `[notify]`: tell someone. A watcher looks at the node's own state every
//! `check_secs` (the same conditions as deploy/prometheus/omesh-rules.yml)
//! and sends each event to the configured webhooks (JSON, optionally
//! signed with HMAC-SHA256, retried with backoff, each attempt time-limited)
//! and commands (the JSON on stdin, time-limited). The same event for the
//! same subject is sent at most once per `min_interval_secs`, so a dead peer
//! does not page every minute. Webhook addresses are subject to the
//! residency policy like every other destination.

use crate::config::{NotifyConfig, Webhook};
use crate::runtime::NodeRuntime;
use serde::Serialize;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// The JSON every target receives (docs/config.md, `[notify]`).
#[derive(Clone, Debug, Serialize)]
pub struct Event {
    /// Schema version of this body.
    pub json_version: u32,
    /// What happened (`rpo_missed`, `backup_failed`, …).
    pub event: String,
    /// `critical` or `warning`.
    pub severity: &'static str,
    /// The node that sends it.
    pub node: String,
    /// What it is about (a schedule, a peer, the node).
    pub subject: String,
    /// When it was noticed (RFC 3339).
    pub time: String,
    /// For a person.
    pub message: String,
    /// Earlier events of the same kind and subject not sent (rate limit).
    pub suppressed: u64,
}

/// What the watcher saw last time (counters only move up).
#[derive(Default)]
struct Seen {
    counters: HashMap<String, u64>,
}

impl Seen {
    /// How much `key` grew since the last look (0 the first time: the
    /// counters start with the process).
    fn grew(&mut self, key: &str, now: u64) -> u64 {
        let before = self.counters.insert(key.to_string(), now);
        before.map_or(0, |b| now.saturating_sub(b))
    }
}

/// Rate limit per (event, subject).
struct Limiter {
    every: Duration,
    last: HashMap<(String, String), (Instant, u64)>,
}

impl Limiter {
    /// Whether to send now; else count it as suppressed.
    fn admit(&mut self, event: &str, subject: &str) -> Option<u64> {
        let now = Instant::now();
        match self.last.get_mut(&(event.to_string(), subject.to_string())) {
            Some((t, n)) if now.duration_since(*t) < self.every => {
                *n += 1;
                None
            }
            Some((t, n)) => {
                let s = *n;
                *t = now;
                *n = 0;
                Some(s)
            }
            None => {
                self.last.insert((event.to_string(), subject.to_string()), (now, 0));
                Some(0)
            }
        }
    }
}

/// Conditions true now, as (event, severity, subject, message).
fn look(rt: &NodeRuntime, seen: &mut Seen) -> Vec<(&'static str, &'static str, String, String)> {
    use crate::metrics::{label, labels2};
    let m = &rt.metrics;
    let mut out = Vec::new();
    let now = omesh_core::time::now().as_second() as f64;
    for sched in &rt.cfg.schedules {
        let name = &sched.cfg.name;
        if let Some(rpo) = sched.cfg.rpo_secs {
            let last = m.backup_last_success.get_or_create(&label("schedule", name)).get();
            if last > 0.0 && now - last > rpo as f64 {
                out.push((
                    "rpo_missed",
                    "critical",
                    name.clone(),
                    format!(
                        "schedule {name}: the newest protected snapshot is {} s old, past its RPO of {rpo} s; `omesh status` says why",
                        (now - last) as u64
                    ),
                ));
            }
        }
    }
    for sched in rt.cfg.schedules.iter().map(|s| s.cfg.name.as_str()).chain(["manual"]) {
        for (result, event, sev) in
            [("failed", "backup_failed", "critical"), ("unprotected", "backup_unprotected", "warning")]
        {
            let n = m.backups.get_or_create(&labels2("schedule", sched, "result", result)).get();
            if seen.grew(&format!("backups/{sched}/{result}"), n) > 0 {
                out.push((
                    event,
                    sev,
                    sched.to_string(),
                    format!(
                        "a backup of schedule {sched} was {result}; `omesh status` and `journalctl -u omesh` say why"
                    ),
                ));
            }
        }
    }
    for t in rt.cfg.peers.iter().map(|p| p.name.as_str()) {
        // its last probe failed (up is also 0 before the first probe)
        if m.peer_up.get_or_create(&label("peer", t)).get() == 0
            && m.peer_probe_failures.get_or_create(&label("peer", t)).get() > 0
        {
            out.push((
                "peer_unreachable",
                "warning",
                t.to_string(),
                format!("replica holder {t} does not answer; `omesh status` shows its error"),
            ));
        }
        if m.holding_check_failed.get_or_create(&label("peer", t)).get() == 1 {
            out.push((
                "holding_check_failed",
                "critical",
                t.to_string(),
                format!("{t} failed its proof-of-holding check: its replicas no longer count"),
            ));
        }
    }
    let damaged = seen.grew("scrub_damaged", m.scrub_damaged.get());
    let repaired = seen.grew("scrub_repaired", m.scrub_repaired.get());
    if damaged > 0 {
        let (event, sev) =
            if damaged > repaired { ("scrub_unrepaired", "critical") } else { ("scrub_damage", "warning") };
        out.push((
            event,
            sev,
            rt.cfg.name.clone(),
            format!("scrub found {damaged} damaged objects, {repaired} repaired from replicas; check the disk"),
        ));
    }
    let refused = rt.residency.refusals.load(std::sync::atomic::Ordering::Relaxed);
    let more = seen.grew("residency", refused);
    if more > 0 {
        out.push((
            "residency_refusal",
            "critical",
            rt.cfg.name.clone(),
            format!("the residency boundary refused {more} connections or destinations; the daemon's log names them"),
        ));
    }
    let left = rt.tls.not_after - now as i64;
    if left < omesh_net::transport::tls::CERT_RENEW_DAYS * 86400 {
        out.push((
            "certificate_expiring",
            "warning",
            rt.cfg.name.clone(),
            format!(
                "this node's certificate expires in {} days; renew: `omesh cert request`, `ca sign`, `cert install`",
                left / 86400
            ),
        ));
    }
    if rt.tls.crl_status().is_stale(omesh_core::time::now_ns()) {
        out.push((
            "crl_stale",
            "warning",
            rt.cfg.name.clone(),
            "the certificate revocation list is past its next update; re-sign it (`omesh ca crl`) and copy it here"
                .into(),
        ));
    }
    out
}

/// Watch and send until cancelled.
pub async fn run(rt: Arc<NodeRuntime>, cancel: CancellationToken) {
    let cfg = rt.cfg.notify.clone();
    let mut seen = Seen::default();
    let mut limiter = Limiter { every: Duration::from_secs(cfg.min_interval_secs), last: HashMap::new() };
    // each https webhook's TLS settings once (the system roots are files)
    let hooks: Vec<Arc<Hook>> = {
        let list = cfg.webhooks.clone();
        tokio::task::spawn_blocking(move || list.into_iter().map(|w| Arc::new(Hook::new(w))).collect())
            .await
            .unwrap_or_default()
    };
    let mut tick = tokio::time::interval(Duration::from_secs(cfg.check_secs.max(1)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tick.tick() => {}
        }
        for (event, severity, subject, message) in look(&rt, &mut seen) {
            let Some(suppressed) = limiter.admit(event, &subject) else {
                rt.metrics.notifications.get_or_create(&crate::metrics::label("result", "suppressed")).inc();
                continue;
            };
            let ev = Event {
                json_version: 1,
                event: event.into(),
                severity,
                node: rt.cfg.name.clone(),
                subject,
                time: omesh_core::time::rfc3339(omesh_core::time::now()),
                message,
                suppressed,
            };
            tracing::info!(event = %ev.event, subject = %ev.subject, "notifying");
            // each target on its own task: a slow one delays no other
            for h in &hooks {
                tokio::spawn(send_webhook(rt.clone(), h.clone(), ev.clone()));
            }
            for c in &cfg.commands {
                tokio::spawn(run_command(
                    rt.clone(),
                    c.command.clone(),
                    Duration::from_secs(c.timeout_secs),
                    ev.clone(),
                ));
            }
        }
    }
}

fn count(rt: &NodeRuntime, result: &str) {
    rt.metrics.notifications.get_or_create(&crate::metrics::label("result", result)).inc();
}

/// A webhook and, for an https URL, its TLS client settings (or why they
/// could not be made: every send then fails with that reason).
struct Hook {
    w: Webhook,
    tls: Option<Result<Arc<rustls::ClientConfig>, String>>,
}

impl Hook {
    /// Blocking: reads the system's and `ca_bundle`'s certificates.
    fn new(w: Webhook) -> Hook {
        let https = w.url.parse::<hyper::Uri>().is_ok_and(|u| u.scheme_str() == Some("https"));
        let tls = https.then(|| client_tls(&w));
        Hook { w, tls }
    }
}

/// POST the event, retrying with backoff (1, 2, 4, … s) up to `attempts`.
async fn send_webhook(rt: Arc<NodeRuntime>, hook: Arc<Hook>, ev: Event) {
    let w = &hook.w;
    let body = serde_json::to_vec(&ev).expect("serializes");
    // read at every event: the secret may be rotated while the daemon runs
    let signature = match &w.secret_file {
        Some(p) => match tokio::fs::read(p).await {
            Ok(secret) => {
                let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, trim(&secret));
                Some(format!("sha256={}", hex::encode(ring::hmac::sign(&key, &body).as_ref())))
            }
            Err(e) => {
                tracing::warn!(url = %w.url, file = %p.display(), error = %e, "cannot read the webhook's secret_file; not sending unsigned");
                count(&rt, "failed");
                return;
            }
        },
        None => None,
    };
    let mut backoff = Duration::from_secs(1);
    for attempt in 1..=w.attempts.max(1) {
        let r = tokio::time::timeout(
            Duration::from_secs(w.timeout_secs),
            post(&rt, &hook, &body, signature.as_deref(), &ev.event),
        )
        .await;
        let err = match r {
            Ok(Ok(())) => {
                count(&rt, "sent");
                return;
            }
            Ok(Err(e)) => e,
            Err(_) => format!("no answer within {} s", w.timeout_secs),
        };
        if attempt == w.attempts.max(1) {
            tracing::warn!(url = %w.url, event = %ev.event, attempts = attempt, error = %err, "notification not delivered");
            count(&rt, "failed");
            return;
        }
        tracing::info!(url = %w.url, event = %ev.event, attempt, error = %err, "notification failed; retrying");
        count(&rt, "retried");
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(60));
    }
}

fn trim(b: &[u8]) -> &[u8] {
    let end = b.iter().rposition(|c| !c.is_ascii_whitespace()).map_or(0, |i| i + 1);
    &b[..end]
}

/// One POST over HTTP/1.1 (TLS for https, against the system roots and
/// `ca_bundle`); every resolved address passes the residency check first.
async fn post(rt: &NodeRuntime, hook: &Hook, body: &[u8], signature: Option<&str>, event: &str) -> Result<(), String> {
    let w = &hook.w;
    use http_body_util::Full;
    let url: hyper::Uri = w.url.parse().map_err(|e| format!("{e}"))?;
    let https = hook.tls.is_some();
    let host = url.host().ok_or("no host")?.trim_matches(['[', ']']).to_string();
    let port = url.port_u16().unwrap_or(if https { 443 } else { 80 });
    let addrs: Vec<std::net::SocketAddr> = tokio::net::lookup_host((host.as_str(), port))
        .await
        .map_err(|e| format!("cannot resolve {host}: {e}"))?
        .collect();
    let addr = *addrs.first().ok_or_else(|| format!("{host} resolves to nothing"))?;
    if let Some(check) = &rt.outbound_check {
        for a in &addrs {
            check(&format!("webhook {}", w.url), *a)?;
        }
    }
    let tcp = tokio::net::TcpStream::connect(addr).await.map_err(|e| format!("{addr}: {e}"))?;
    let req = hyper::Request::post(url.path_and_query().map(|p| p.as_str()).unwrap_or("/"))
        .header(hyper::header::HOST, url.authority().map(|a| a.as_str()).unwrap_or(&host))
        .header(hyper::header::CONTENT_TYPE, "application/json")
        .header(hyper::header::USER_AGENT, concat!("omesh/", env!("CARGO_PKG_VERSION")))
        .header("x-omesh-event", event);
    let req = match signature {
        Some(s) => req.header("x-omesh-signature", s),
        None => req,
    }
    .body(Full::new(hyper::body::Bytes::copy_from_slice(body)))
    .map_err(|e| e.to_string())?;
    let status = if let Some(tls) = &hook.tls {
        let cfg = tls.clone()?;
        let name = rustls::pki_types::ServerName::try_from(host.clone()).map_err(|e| e.to_string())?;
        let tls = tokio_rustls::TlsConnector::from(cfg).connect(name, tcp).await.map_err(|e| format!("TLS: {e}"))?;
        exchange(tls, req).await?
    } else {
        exchange(tcp, req).await?
    };
    if status.is_success() { Ok(()) } else { Err(format!("answered {status}")) }
}

async fn exchange<S>(
    io: S,
    req: hyper::Request<http_body_util::Full<hyper::body::Bytes>>,
) -> Result<hyper::StatusCode, String>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (mut send, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(io)).await.map_err(|e| e.to_string())?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    let resp = send.send_request(req).await.map_err(|e| e.to_string())?;
    Ok(resp.status())
}

fn client_tls(w: &Webhook) -> Result<Arc<rustls::ClientConfig>, String> {
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls_native_certs::load_native_certs().certs {
        let _ = roots.add(c);
    }
    if let Some(p) = &w.ca_bundle {
        for c in rustls::pki_types::CertificateDer::pem_file_iter(p).map_err(|e| format!("{}: {e}", p.display()))? {
            roots.add(c.map_err(|e| format!("{}: {e}", p.display()))?).map_err(|e| format!("{}: {e}", p.display()))?;
        }
    }
    let cfg = rustls::ClientConfig::builder_with_provider(omesh_net::transport::tls::provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(cfg))
}

/// Run a command hook with the event as JSON on stdin and in the
/// environment (OMESH_EVENT, OMESH_SEVERITY, OMESH_SUBJECT); killed after
/// `timeout`.
async fn run_command(rt: Arc<NodeRuntime>, command: Vec<String>, timeout: Duration, ev: Event) {
    use tokio::io::AsyncWriteExt;
    let Some((prog, args)) = command.split_first() else { return };
    let mut c = tokio::process::Command::new(prog);
    c.args(args)
        .env("OMESH_EVENT", &ev.event)
        .env("OMESH_SEVERITY", ev.severity)
        .env("OMESH_SUBJECT", &ev.subject)
        .env("OMESH_NODE", &ev.node)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true);
    let mut child = match c.spawn() {
        Ok(ch) => ch,
        Err(e) => {
            tracing::warn!(command = %prog, error = %e, "cannot run the notification command");
            count(&rt, "failed");
            return;
        }
    };
    let body = serde_json::to_vec(&ev).expect("serializes");
    if let Some(mut stdin) = child.stdin.take() {
        let _ = stdin.write_all(&body).await;
    }
    match tokio::time::timeout(timeout, child.wait_with_output()).await {
        Ok(Ok(out)) if out.status.success() => count(&rt, "sent"),
        Ok(Ok(out)) => {
            let err = String::from_utf8_lossy(&out.stderr);
            tracing::warn!(command = %prog, status = %out.status, stderr = %err.trim(), "notification command failed");
            count(&rt, "failed");
        }
        Ok(Err(e)) => {
            tracing::warn!(command = %prog, error = %e, "notification command failed");
            count(&rt, "failed");
        }
        Err(_) => {
            // the child is killed when its handle drops (kill_on_drop)
            tracing::warn!(command = %prog, timeout_secs = timeout.as_secs(), "notification command timed out; killed");
            count(&rt, "failed");
        }
    }
}

impl NotifyConfig {
    /// Whether anything is configured.
    pub fn is_active(&self) -> bool {
        !self.webhooks.is_empty() || !self.commands.is_empty()
    }
}
