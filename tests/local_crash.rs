//! A real `omesh backup` process killed with SIGKILL at many points of the
//! write protocol: the store always verifies, and the next run completes
//! reusing what was already durable.

use crate::common::{self, init_small, omesh, s, store_bytes, tree};
use std::os::unix::process::ExitStatusExt;

fn make(root: &std::path::Path) {
    for d in 0..4 {
        let dir = root.join(format!("d{d}"));
        std::fs::create_dir_all(&dir).unwrap();
        for f in 0..40 {
            std::fs::write(dir.join(format!("f{f}")), tree::data(40_000 + f * 1000, (d * 100 + f) as u64)).unwrap();
        }
    }
}

#[test]
fn sigkill_at_twenty_plus_points_never_corrupts_and_resumes() {
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("src");
    make(&src);
    // reference: size of a complete store for this data
    let full = t.path().join("full");
    init_small(&full);
    common::backup(&full, &[&src]);
    let full_bytes = store_bytes(&full);

    let points: Vec<(&str, u32)> = vec![
        ("pack.append", 1),
        ("pack.append", 2),
        ("pack.append", 10),
        ("pack.append", 50),
        ("pack.append", 100),
        ("pack.append", 200),
        ("pack.append", 300),
        ("pack.append", 390),
        ("pack.before_rename", 1),
        ("pack.before_rename", 3),
        ("pack.before_rename", 8),
        ("pack.before_rename", 15),
        ("pack.after_rename", 1),
        ("pack.after_rename", 4),
        ("pack.after_rename", 11),
        ("index.after_commit", 1),
        ("index.after_commit", 6),
        ("index.after_commit", 14),
        ("snapshot.before_write", 1),
        ("snapshot.after_write", 1),
    ];
    assert!(points.len() >= 20);
    let mut total_killed = 0;
    for (i, (name, n)) in points.iter().enumerate() {
        let store = t.path().join(format!("store{i}"));
        init_small(&store);
        let out = common::cmd()
            .args(["backup", "--store", s(&store), "--json", s(&src)])
            .env("OMESH_FAILPOINT", format!("{name}:{n}"))
            .output()
            .unwrap();
        assert_eq!(
            out.status.signal(),
            Some(9),
            "{name}:{n} was not reached (status {:?}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        total_killed += 1;
        // whatever instant it died at, the store verifies
        omesh(["verify", "--store", s(&store), "--read-data", "--json"]).ok();
        let durable = store_bytes(&store);
        let snaps = omesh(["snapshots", "--store", s(&store), "--json"]).ok().json_list();
        let expect_snap = *name == "snapshot.after_write";
        assert_eq!(
            snaps.as_array().unwrap().len(),
            expect_snap as usize,
            "{name}:{n}: snapshot visible = {}",
            !expect_snap
        );
        // the next run completes and reuses every durable object
        let b = common::backup(&store, &[&src]);
        let added = b["bytes_added"].as_u64().unwrap();
        assert!(
            added <= full_bytes.saturating_sub(durable) + 300_000,
            "{name}:{n}: rerun added {added} bytes although {durable} of {full_bytes} were already durable"
        );
        omesh(["verify", "--store", s(&store), "--read-data"]).ok();
        if i % 7 == 0 {
            let target = t.path().join(format!("r{i}"));
            omesh(["restore", "--store", s(&store), "latest", "--target", s(&target)]).ok();
            tree::assert_same(&src, &common::restored(&target, &src));
        }
    }
    assert!(total_killed >= 20);
}
