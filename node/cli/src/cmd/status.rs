//! `omesh status`

use crate::meshmode as mesh;
use crate::output::{CliError, ExitCode, bytes, print_json};
use omesh_daemon::services::control::{ControlRequest, ControlResponse};
use std::path::PathBuf;

#[derive(clap::Args, Debug)]
pub struct StatusArgs {
    /// Node configuration file.
    #[arg(long, short = 'c', env = "OMESH_CONFIG", value_name = "FILE")]
    pub config: PathBuf,
    /// Print as JSON.
    #[arg(long)]
    pub json: bool,
}

pub fn run(a: StatusArgs) -> Result<ExitCode, CliError> {
    let cfg = mesh::load(&a.config)?;
    let resp = mesh::via_daemon_or_local(cfg, ControlRequest::Status, |rt| async move {
        omesh_daemon::views::status(&rt).await.map(|s| ControlResponse::Status(Box::new(s))).map_err(mesh::node_err)
    })?;
    let ControlResponse::Status(s) = resp else { return Err(mesh::unexpected(&resp)) };
    if a.json {
        print_json("status", &s)?;
        return Ok(ExitCode::Ok);
    }

    println!(
        "node {} (domain {:?}) {}",
        s.node,
        s.domain,
        if s.daemon { format!("daemon up {}s", s.uptime_secs) } else { "daemon not running".into() }
    );
    println!("{:<16} {:<22} {:<10} {:>9} {:>12}  last contact", "peer", "address", "domain", "rtt ms", "holds ours");
    for p in &s.peers {
        println!(
            "{:<16} {:<22} {:<10} {:>9} {:>12}  {}{}",
            p.name,
            p.address,
            p.domain,
            p.rtt_ms.map(|r| format!("{r:.2}")).unwrap_or_else(|| "DOWN".into()),
            p.holds_our_bytes.map(bytes).unwrap_or_default(),
            p.last_contact.clone().unwrap_or_else(|| "never".into()),
            p.error.as_ref().map(|e| format!("  ({e})")).unwrap_or_default()
        );
        if let Some(c) = p.holding_check.as_ref().filter(|c| !c.ok) {
            println!("  holding check FAILED {}: {} (its replicas do not count)", c.time, c.detail);
        }
        if p.forged_records > 0 {
            println!(
                "  sent {} forged or altered records since the daemon started (refused; see the daemon log for which)",
                p.forged_records
            );
        }
    }
    for t in &s.s3 {
        println!(
            "{:<16} {:<22} {:<10} {:>9} {:>12}  {}",
            t.name,
            "(S3)",
            t.domain,
            t.rtt_ms.map(|r| format!("{r:.2}")).unwrap_or_else(|| "DOWN".into()),
            t.holds_our_bytes.map(bytes).unwrap_or_default(),
            t.error.clone().unwrap_or_else(|| t.address.clone())
        );
    }
    println!("stored on this node:");
    for u in &s.stored_here {
        println!(
            "  {:<16} {:>12} in {} snapshots{}",
            u.source,
            bytes(u.bytes),
            u.snapshots,
            if u.quota_bytes > 0 { format!(" (quota {})", bytes(u.quota_bytes)) } else { String::new() }
        );
    }
    let dur = |secs: u64| {
        if secs >= 86400 {
            format!("{:.1}d", secs as f64 / 86400.0)
        } else if secs >= 3600 {
            format!("{:.1}h", secs as f64 / 3600.0)
        } else {
            format!("{secs}s")
        }
    };
    if let Some(p) = &s.protection {
        println!(
            "last backup {}; last fully replicated {} ({} ago){}; {} of {} replicas in {} failure domains",
            p.last_backup.clone().unwrap_or_else(|| "?".into()),
            p.last_protected_backup.clone().unwrap_or_else(|| "never".into()),
            p.achieved_rpo_secs.map(dur).unwrap_or_else(|| "-".into()),
            match (p.rpo_secs, p.rpo_met) {
                (Some(t), Some(true)) => format!(", RPO {} met", dur(t)),
                (Some(t), _) => format!(", RPO {} MISSED", dur(t)),
                _ => String::new(),
            },
            p.replicas,
            p.factor,
            p.replica_domains
        );
        match p.est_restore_secs {
            Some(e) => println!("estimated restore onto a new server: {} ({})", dur(e as u64), p.est_restore_basis),
            None => println!("estimated restore: unknown ({})", p.est_restore_basis),
        }
    } else {
        println!("no snapshot of {} yet", s.node);
    }
    for sc in &s.schedules {
        println!(
            "schedule {:<12} {:<28} last ok {}{}{}{}",
            sc.name,
            sc.when,
            sc.last_success.clone().unwrap_or_else(|| "never".into()),
            match (sc.rpo_secs, sc.rpo_met) {
                (Some(t), Some(true)) => format!(", RPO {} met", dur(t)),
                (Some(t), _) => format!(", RPO {} MISSED", dur(t)),
                _ => String::new(),
            },
            sc.next_run.as_ref().map(|n| format!(", next {n}")).unwrap_or_default(),
            sc.last_error.as_ref().map(|e| format!(", last run FAILED: {e}")).unwrap_or_default()
        );
    }
    for r in &s.maintenance {
        println!(
            "{:<11} last ok {}{}",
            r.job,
            r.last_success.clone().unwrap_or_else(|| "never".into()),
            r.last_error.as_ref().map(|e| format!(", last run FAILED: {e}")).unwrap_or_default()
        );
    }
    if let Some(c) = &s.certificate {
        if c.expiring {
            println!(
                "certificate {} EXPIRES {} ({} days): renew it: `omesh cert request`, `omesh ca sign` on the CA machine, `omesh cert install`",
                c.path, c.not_after, c.days_left
            );
        } else {
            println!("certificate {} valid until {} ({} days)", c.path, c.not_after, c.days_left);
        }
    }
    match &s.crl {
        Some(c) if c.stale => println!(
            "CRL {} is STALE (next update was {}): re-sign it with `omesh ca crl` and copy it here",
            c.path,
            c.next_update.clone().unwrap_or_default()
        ),
        Some(c) => println!(
            "CRL {} (number {}, {} revoked), next update {}",
            c.path,
            c.number.map(|n| n.to_string()).unwrap_or_else(|| "?".into()),
            c.revoked,
            c.next_update.clone().unwrap_or_else(|| "not given".into())
        ),
        None => println!("no CRL ([tls] no_crl = true): revoked certificates stay valid until they expire"),
    }
    if s.not_fully_replicated.is_empty() {
        println!("all {} snapshots of {} on this node have at least {} replicas", s.snapshots, s.node, s.factor);
    } else {
        println!("{} snapshots have fewer than {} replicas:", s.not_fully_replicated.len(), s.factor);
        for id in &s.not_fully_replicated {
            println!("  {}", &id[..8]);
        }
    }
    if s.snapshots_only_elsewhere > 0 {
        println!(
            "{} more snapshots of {} are only on peers or buckets (`omesh snapshots --config FILE` lists them)",
            s.snapshots_only_elsewhere, s.node
        );
    }
    Ok(ExitCode::Ok)
}
