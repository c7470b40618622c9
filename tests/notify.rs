//! `[notify]` against a local HTTP receiver and a command hook, with a real
//! daemon: a dead peer and an unprotected backup are told once each (signed,
//! retried until the receiver, down at first, is back), repeats are
//! suppressed by the rate limit, and a hook that hangs is killed.

use crate::common::mesh::{Site, free_port};
use crate::common::{s, tree};
use crate::lifecycle::{sample, scrape, wait_until};
use std::io::{BufRead, BufReader, Read, Write};
use std::sync::{Arc, Mutex};
use std::time::Duration;

type Received = Arc<Mutex<Vec<(String, Vec<u8>)>>>;

/// Accept HTTP requests on `listener`, record (headers, body), answer 200.
fn receive(listener: std::net::TcpListener, got: Received) {
    std::thread::spawn(move || {
        for c in listener.incoming() {
            let Ok(mut c) = c else { continue };
            let mut r = BufReader::new(c.try_clone().unwrap());
            let mut head = String::new();
            loop {
                let mut l = String::new();
                if r.read_line(&mut l).unwrap_or(0) == 0 || l == "\r\n" {
                    break;
                }
                head.push_str(&l);
            }
            let len = head
                .lines()
                .find_map(|l| l.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().parse().unwrap()))
                .unwrap_or(0);
            let mut body = vec![0u8; len];
            if r.read_exact(&mut body).is_err() {
                continue;
            }
            got.lock().unwrap().push((head, body));
            let _ = c.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n");
        }
    });
}

fn events(got: &Received) -> Vec<serde_json::Value> {
    got.lock().unwrap().iter().map(|(_, b)| serde_json::from_slice(b).unwrap()).collect()
}

#[test]
fn a_dead_peer_and_an_unprotected_backup_are_notified_once_signed_and_retried_until_the_receiver_is_back() {
    let t = tempfile::tempdir().unwrap();
    let site = Site::new(t.path(), &[("a", "r0"), ("b", "r1")]);
    let src = t.path().join("src");
    tree::make_full(&src, false);
    let metrics = free_port("127.0.0.1");
    // the receiver's port, not listening yet: the first attempts fail
    let hook_port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let secret = t.path().join("notify.secret");
    std::fs::write(&secret, "s3cret-shared-with-the-receiver\n").unwrap();
    let log = t.path().join("events.jsonl");
    // b is never started: a's backup is unprotected, b unreachable
    site.write_config(
        "a",
        &["b".into()],
        1,
        &format!(
            "[[schedule]]\nname = \"often\"\ninterval_secs = 3600\npaths = [\"{}\"]\n[metrics]\nlisten = \"127.0.0.1:{metrics}\"\n\
             [notify]\ncheck_secs = 1\nmin_interval_secs = 3600\n\
             [[notify.webhook]]\nurl = \"http://127.0.0.1:{hook_port}/omesh\"\nsecret_file = \"{}\"\ntimeout_secs = 2\nattempts = 8\n\
             [[notify.command]]\ncommand = [\"sh\", \"-c\", \"cat >> {}; echo >> {}\"]\n\
             [[notify.command]]\ncommand = [\"sleep\", \"61.5\"]\ntimeout_secs = 1\n",
            s(&src),
            s(&secret),
            s(&log),
            s(&log)
        ),
    );
    let _a = site.start("a");
    let count = |result: &str| {
        sample(&scrape(metrics), &format!("omesh_notifications_total{{result=\"{result}\"}}")).unwrap_or(0.0)
    };
    wait_until("a webhook attempt to fail and be retried", Duration::from_secs(60), || count("retried") >= 1.0);
    let got: Received = Arc::default();
    receive(std::net::TcpListener::bind(("127.0.0.1", hook_port)).unwrap(), got.clone());
    wait_until("both events at the receiver", Duration::from_secs(60), || {
        let ev = events(&got);
        ev.iter().any(|e| e["event"] == "peer_unreachable") && ev.iter().any(|e| e["event"] == "backup_unprotected")
    });
    for (head, body) in got.lock().unwrap().iter() {
        let e: serde_json::Value = serde_json::from_slice(body).unwrap();
        assert_eq!((e["json_version"].as_u64(), e["node"].as_str()), (Some(1), Some("a")), "{e}");
        assert!(e["time"].is_string() && e["message"].is_string() && e["severity"].is_string(), "{e}");
        let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, b"s3cret-shared-with-the-receiver");
        let want = format!("x-omesh-signature: sha256={}", hex::encode(ring::hmac::sign(&key, body).as_ref()));
        assert!(head.to_ascii_lowercase().contains(&want), "unsigned or wrongly signed: {head}");
        assert!(head.starts_with("POST /omesh "), "{head}");
    }
    let ev = events(&got);
    let peer = ev.iter().find(|e| e["event"] == "peer_unreachable").unwrap();
    assert_eq!((peer["subject"].as_str(), peer["severity"].as_str()), (Some("b"), Some("warning")), "{peer}");
    // the command hook got the same events on stdin
    wait_until("the command hook's events", Duration::from_secs(30), || {
        std::fs::read_to_string(&log)
            .is_ok_and(|l| l.contains("\"peer_unreachable\"") && l.contains("\"backup_unprotected\""))
    });
    // b stays down, checked every second: repeats are suppressed, not sent
    wait_until("a suppressed repeat", Duration::from_secs(30), || count("suppressed") >= 2.0);
    let peer_events = events(&got).iter().filter(|e| e["event"] == "peer_unreachable").count();
    assert_eq!(peer_events, 1, "{:?}", events(&got));
    // the hook that hangs is killed after its timeout (once per event),
    // counted as failed, and leaves no process behind
    wait_until("the hanging hooks to be killed", Duration::from_secs(30), || count("failed") >= 2.0);
    let sleepers = std::process::Command::new("pgrep").args(["-f", "^sleep 61.5$"]).output().unwrap();
    assert!(String::from_utf8_lossy(&sleepers.stdout).trim().is_empty(), "a hook outlived its timeout");
}
