//! The Prometheus alerting rules of deploy/prometheus: promtool checks them
//! and runs their unit tests, and a real Prometheus server scraping a real
//! daemon turns the RPO alert firing once the schedule's protected snapshot
//! is older than its RPO.

use crate::common::mesh::{Site, free_port};
use crate::common::{Killed, s, tree};
use crate::lifecycle::{sample, scrape, wait_until};
use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn rules_dir() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../../deploy/prometheus"))
}

fn tool(name: &str) -> Command {
    let p = PathBuf::from("/usr/bin").join(name);
    assert!(p.exists(), "{name} is not installed: `apt-get install prometheus` (.ci/run does)");
    Command::new(p)
}

#[test]
fn the_alerting_rules_load_and_their_unit_tests_pass() {
    let out = tool("promtool").arg("check").arg("rules").arg(rules_dir().join("omesh-rules.yml")).output().unwrap();
    assert!(out.status.success(), "{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    let out =
        tool("promtool").args(["test", "rules", "omesh-rules.test.yml"]).current_dir(rules_dir()).output().unwrap();
    assert!(out.status.success(), "{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
}

/// `GET path` on 127.0.0.1:`port`: the body (None when nothing answers).
fn get(port: u16, path: &str) -> Option<String> {
    let mut c = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    c.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    write!(c, "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").ok()?;
    let mut s = String::new();
    c.read_to_string(&mut s).ok()?;
    let (head, body) = s.split_once("\r\n\r\n")?;
    head.starts_with("HTTP/1.1 200").then(|| body.to_string())
}

/// The state of alert `name` in Prometheus' /api/v1/alerts, with its labels.
fn alert(port: u16, name: &str) -> Option<serde_json::Value> {
    let body = get(port, "/api/v1/alerts")?;
    let v: serde_json::Value = serde_json::from_str(&body).ok()?;
    v["data"]["alerts"].as_array()?.iter().find(|a| a["labels"]["alertname"] == name).cloned()
}

#[test]
fn a_real_prometheus_fires_the_rpo_alert_once_the_last_protected_snapshot_is_older_than_the_rpo() {
    const RPO: u64 = 30;
    let t = tempfile::tempdir().unwrap();
    let site = Site::new(t.path(), &[("a", "r0"), ("b", "r1")]);
    let src = t.path().join("src");
    tree::make_full(&src, false);
    let port = free_port("127.0.0.1");
    // one protected backup at start, the next only in an hour: the RPO of
    // 30 s is missed 30 s after the first
    site.write_config(
        "a",
        &["b".into()],
        1,
        &format!(
            "[[schedule]]\nname = \"often\"\ninterval_secs = 3600\nrpo_secs = {RPO}\npaths = [\"{}\"]\n[metrics]\nlisten = \"127.0.0.1:{port}\"\n",
            s(&src)
        ),
    );
    site.write_config("b", &["a".into()], 1, "");
    let _b = site.start("b");
    let a = site.start("a");
    wait_until("the scheduled backup", Duration::from_secs(60), || {
        scrape(port).contains("omesh_backup_last_success_timestamp_seconds{schedule=\"often\"}")
    });
    let protected_at = Instant::now();

    let prom_port = free_port("127.0.0.1");
    let cfg = t.path().join("prometheus.yml");
    std::fs::write(
        &cfg,
        format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nrule_files:\n  - {}\nscrape_configs:\n  - job_name: omesh\n    static_configs:\n      - targets: ['127.0.0.1:{port}']\n",
            s(&rules_dir().join("omesh-rules.yml"))
        ),
    )
    .unwrap();
    let _prom = Killed(
        tool("prometheus")
            .arg(format!("--config.file={}", s(&cfg)))
            .arg(format!("--storage.tsdb.path={}", s(&t.path().join("tsdb"))))
            .arg(format!("--web.listen-address=127.0.0.1:{prom_port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    // Prometheus has scraped the daemon and evaluated the rules
    wait_until("Prometheus to scrape the daemon", Duration::from_secs(60), || {
        get(prom_port, "/api/v1/query?query=omesh_rpo_target_seconds")
            .is_some_and(|b| b.contains("\"schedule\":\"often\""))
    });
    let early = alert(prom_port, "OmeshRPOMissed");
    if protected_at.elapsed() < Duration::from_secs(RPO - 5) {
        assert!(early.is_none(), "the RPO alert fired within the RPO: {early:?}");
    }
    // and fires once the protected snapshot is older than the RPO
    let mut firing = serde_json::Value::Null;
    wait_until("the RPO alert to fire", Duration::from_secs(RPO + 90), || {
        firing = alert(prom_port, "OmeshRPOMissed").unwrap_or_default();
        firing["state"] == "firing"
    });
    assert!(protected_at.elapsed() >= Duration::from_secs(RPO - 2), "it fired too early: {firing}");
    assert_eq!(firing["labels"]["schedule"], "often", "{firing}");
    assert_eq!(firing["labels"]["severity"], "critical", "{firing}");
    assert_eq!(firing["labels"]["instance"], format!("127.0.0.1:{port}"), "{firing}");

    // the Grafana dashboard's queries run on this Prometheus, and they and
    // the rules name only metrics the daemon exports
    let exported: std::collections::BTreeSet<String> = scrape(port)
        .lines()
        .filter(|l| l.starts_with("omesh_"))
        .map(|l| l.split(['{', ' ']).next().unwrap().to_string())
        .collect();
    let dash: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(rules_dir().join("../grafana/omesh-dashboard.json")).unwrap())
            .unwrap();
    let mut exprs: Vec<String> = dash["panels"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|p| p["targets"].as_array().unwrap().iter().map(|t| t["expr"].as_str().unwrap().to_string()))
        .collect();
    assert!(exprs.len() >= 10, "{exprs:?}");
    for e in &exprs {
        let q = percent(&e.replace("$instance", ".*"));
        let body = get(prom_port, &format!("/api/v1/query?query={q}")).unwrap_or_default();
        assert!(body.contains("\"status\":\"success\""), "the dashboard query {e} fails: {body}");
    }
    exprs.push(std::fs::read_to_string(rules_dir().join("omesh-rules.yml")).unwrap());
    for e in &exprs {
        for name in e.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).filter(|w| w.starts_with("omesh_")) {
            assert!(exported.contains(name), "{name} is not a metric the daemon exports: {exported:?}");
        }
    }

    // a restarted daemon still knows when the schedule last succeeded (from
    // its state database), so the alert does not reset with the process
    let gauge = "omesh_backup_last_success_timestamp_seconds{schedule=\"often\"}";
    let before = sample(&scrape(port), gauge).unwrap();
    drop(a);
    let _a = site.start("a");
    assert_eq!(sample(&scrape(port), gauge), Some(before));
}

/// Percent-encode a query parameter.
fn percent(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}
