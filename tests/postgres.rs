//! The PostgreSQL recipes of docs/hooks.md against a real PostgreSQL
//! server (Debian's `postgresql`, installed by .ci/run): a logical dump
//! through `--stdin-from-command -- pg_dump`, restored with pg_restore into
//! a new database; a physical, file-level backup through
//! `--stdin-from-command -- pg_basebackup -Ft -D -` (PostgreSQL's own
//! pg_backup_start/stop, with the WAL it needs), restored into a new data
//! directory and started. The server listens only on a Unix socket in the
//! test's directory.

use crate::common::{init_small, omesh, s};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

fn pg_bin(tool: &str) -> PathBuf {
    let mut versions: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .expect("PostgreSQL is not installed (/usr/lib/postgresql missing): .ci/run installs Debian's postgresql")
        .flatten()
        .map(|e| e.path().join("bin"))
        .filter(|b| b.join("initdb").exists())
        .collect();
    versions.sort();
    versions.pop().expect("no PostgreSQL server binaries under /usr/lib/postgresql/*/bin").join(tool)
}

/// `argv` run as the postgres user (the server refuses to run as root).
fn as_postgres(argv: &[&str]) -> Command {
    let mut c = Command::new("runuser");
    c.args(["-u", "postgres", "--"]).args(argv);
    c
}

fn run_ok(mut c: Command) -> String {
    let out = c.output().unwrap();
    assert!(
        out.status.success(),
        "{c:?} failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A PostgreSQL server on a data directory, stopped when dropped.
struct Server {
    data: PathBuf,
    socket: PathBuf,
}

impl Server {
    fn start(data: &Path, socket: &Path) -> Server {
        let opts = format!("-k {} -c listen_addresses='' -c port=5432", s(socket));
        let log = data.with_extension("log");
        run_ok(as_postgres(&[s(&pg_bin("pg_ctl")), "-D", s(data), "-l", s(&log), "-o", &opts, "-w", "start"]));
        Server { data: data.into(), socket: socket.into() }
    }

    fn sql(&self, db: &str, q: &str) -> String {
        run_ok(as_postgres(&[
            s(&pg_bin("psql")),
            "-h",
            s(&self.socket),
            "-d",
            db,
            "-XAtq",
            "-v",
            "ON_ERROR_STOP=1",
            "-c",
            q,
        ]))
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = as_postgres(&[s(&pg_bin("pg_ctl")), "-D", s(&self.data), "-m", "fast", "-w", "stop"]).output();
    }
}

/// What the test compares: the table's row count and a digest of its rows.
const DIGEST: &str = "select count(*) || ' ' || md5(string_agg(id || ':' || note, ',' order by id)) from orders";

#[test]
fn the_postgresql_recipes_back_up_a_real_database_consistently_and_restore_it() {
    // the postgres user must reach the directories: a world-traversable root
    let t = tempfile::Builder::new().prefix("omesh-pg-").tempdir().unwrap();
    std::fs::set_permissions(t.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let (pgroot, store) = (t.path().join("pg"), t.path().join("store"));
    std::fs::create_dir(&pgroot).unwrap();
    run_ok({
        let mut c = Command::new("chown");
        c.args(["postgres:postgres", s(&pgroot)]);
        c
    });
    let (data, socket) = (pgroot.join("data"), pgroot.clone());
    run_ok(as_postgres(&[s(&pg_bin("initdb")), "-D", s(&data), "-A", "trust", "-U", "postgres", "--no-sync"]));
    let pg = Server::start(&data, &socket);
    pg.sql("postgres", "create database shop");
    pg.sql(
        "shop",
        "create table orders (id int primary key, note text); \
         insert into orders select g, repeat(md5(g::text), 1 + g % 7) from generate_series(1, 20000) g",
    );
    let want = pg.sql("shop", DIGEST);
    init_small(&store);

    // 1. logical: pg_dump's custom format as the snapshot's one file
    let dump = |db: &str| {
        let pg_dump = pg_bin("pg_dump");
        let mut c = crate::common::cmd();
        c.args(["backup", "--store", s(&store), "--json", "--tag", "pg_dump", "--stdin-filename", "shop.dump"])
            .args(["--stdin-from-command", "--", "runuser", "-u", "postgres", "--", s(&pg_dump)])
            .args(["-h", s(&socket), "-Fc", db]);
        crate::common::Run::from(c.output().unwrap())
    };
    let r = dump("shop").ok().json();
    assert!(r["bytes"].as_u64().unwrap() > 10_000, "{r}");
    // the database changes after the dump; the restore must show the dump's state
    pg.sql("shop", "update orders set note = 'changed' where id % 10 = 0");
    // a dump that fails (no such database) saves nothing
    let bad = dump("no_such_db");
    assert_eq!(bad.code, 1, "{}", bad.stderr);
    assert!(bad.stderr.contains("no snapshot was saved"), "{}", bad.stderr);
    let list = omesh(["snapshots", "--store", s(&store), "--json"]).ok().json_list();
    assert_eq!(list.as_array().unwrap().len(), 1, "{list}");
    let dumped = pgroot.join("shop.dump");
    omesh(["dump", "--store", s(&store), "latest", "/shop.dump", "-o", s(&dumped)]).ok();
    std::fs::set_permissions(&dumped, std::fs::Permissions::from_mode(0o644)).unwrap();
    pg.sql("postgres", "create database shop_restored");
    run_ok(as_postgres(&[s(&pg_bin("pg_restore")), "-h", s(&socket), "-d", "shop_restored", s(&dumped)]));
    assert_eq!(pg.sql("shop_restored", DIGEST), want, "the restored database is the dumped one");

    // 2. physical: pg_basebackup's tar (base and the WAL it needs) as one file
    let at_backup = pg.sql("shop", DIGEST);
    assert_ne!(at_backup, want);
    omesh([
        "backup",
        "--store",
        s(&store),
        "--tag",
        "basebackup",
        "--stdin-filename",
        "base.tar",
        "--stdin-from-command",
        "--",
        "runuser",
        "-u",
        "postgres",
        "--",
        s(&pg_bin("pg_basebackup")),
        "-h",
        s(&socket),
        "-D",
        "-",
        "-Ft",
        "-X",
        "fetch",
        "--checkpoint=fast",
    ])
    .ok();
    pg.sql("shop", "delete from orders where id > 100");
    drop(pg);
    // restore onto a new data directory and start a server on it
    let tar = pgroot.join("base.tar");
    omesh(["dump", "--store", s(&store), "latest", "/base.tar", "-o", s(&tar), "--tag", "basebackup"]).ok();
    std::fs::set_permissions(&tar, std::fs::Permissions::from_mode(0o644)).unwrap();
    let data2 = pgroot.join("data2");
    run_ok(as_postgres(&["mkdir", "-m", "0700", s(&data2)]));
    run_ok(as_postgres(&["tar", "-xf", s(&tar), "-C", s(&data2)]));
    let pg2 = Server::start(&data2, &socket);
    assert_eq!(pg2.sql("shop", DIGEST), at_backup, "the restored cluster is the one backed up");
}
