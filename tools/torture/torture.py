#!/usr/bin/env python3
"""omesh torture suite: kill loops, bit rot, disk full, concurrency and
frozen peers against real omesh processes, with counts of what was injected,
detected, repaired and lost.

Every experiment keeps a manifest (path -> size, sha256) of the tree each
acknowledged snapshot was taken of, and checks after every injected fault
that the store opens and verifies and that every acknowledged snapshot is
still listed; restores are compared byte for byte with the manifest.
A snapshot is *acknowledged* when the command that made it exited with its
success code and printed its id (and, for a peer, when the backup report
lists that peer as ok).

Experiments (--only NAME,NAME…; all by default):
  local-kills    SIGKILL `omesh backup --store` at random instants, and at
                 the commit points (failpoints) of the write protocol
  daemon-kills   SIGKILL a receiving peer's daemon at a random instant of a
                 replication, restart it, `omesh sync`; every peer holds
                 every snapshot it acknowledged
  flips          flip one byte in each of several packs of a peer's
                 replica (and truncate one), `omesh scrub` on that peer:
                 injected = detected = repaired, then the replica verifies
  disk-full      a local store and a receiving peer on small file systems
                 (ext4 on a loop device, and tmpfs) that fill mid-backup; nothing acknowledged is lost, the
                 store verifies, and it works again once enlarged (root)
  concurrency    backup + forget + gc + scrub at once through one daemon
  freeze         SIGSTOP a peer in the middle of a replication and of a
                 restore: the commands end, and after SIGCONT sync repairs
  crash-replay   record a backup's writes and fsyncs (LD_PRELOAD shim,
                 crashlog.c, built with gcc) and rebuild the store as a
                 power cut after every operation (and, at every fsync,
                 with only what was fsynced) could leave it:
                 every state opens, verifies, keeps what was acknowledged
                 (--replay-mib sets the backup's size)

Usage:
  tools/torture/torture.py [--omesh PATH] [--seed N] [--iterations N]
                           [--budget SECS] [--only LIST] [--work DIR]
                           [--replay-mib N] [--json]

`--iterations` scales every experiment (1 = the short CI run); `--budget`
stops each experiment's loop once its share of the time is spent (the
current iteration and the final checks still run). The omesh binary must
be a debug build (the failpoints); default: target/debug/omesh, or
$CARGO_TARGET_DIR/debug/omesh. Exit code 0 when nothing failed and nothing
was lost, 1 otherwise; the figures are printed (JSON with --json).
"""

import argparse
import functools
import hashlib
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
# a backup that has not ended after this long is a hang (a failure), not slowness
HANG = 300


def default_omesh():
    t = os.environ.get("CARGO_TARGET_DIR")
    for p in ([Path(t) / "debug/omesh"] if t else []) + [ROOT / "target/debug/omesh"]:
        if p.exists():
            return p
    return ROOT / "target/debug/omesh"


def clean_env(extra=None):
    env = {k: v for k, v in os.environ.items() if not (k.startswith("OMESH_") or k.startswith("AWS_") or k == "RUST_LOG")}
    env["RUST_LOG"] = "warn"
    env.update(extra or {})
    return env


class Failures:
    def __init__(self, name):
        self.name = name
        self.items = []

    def add(self, what):
        print(f"  FAIL [{self.name}] {what}", file=sys.stderr)
        self.items.append(what)


class Tree:
    """A source tree that changes between backups, with the manifest of
    every version."""

    def __init__(self, root, rng, files=40, size=48_000):
        self.root, self.rng, self.size = Path(root), rng, size
        self.n = 0
        (self.root / "d").mkdir(parents=True, exist_ok=True)
        for _ in range(files):
            self._write(self._new_name())

    def _new_name(self):
        self.n += 1
        return self.root / "d" / f"f{self.n:05}.bin"

    def _write(self, p):
        # compressible and incompressible parts, as real data has
        size = self.rng.randint(self.size // 4, self.size * 2)
        raw = self.rng.randbytes(size // 2)
        p.write_bytes(raw + bytes(self.rng.choice(b"abcdefgh") for _ in range(64)) * (size // 128))

    def files(self):
        return sorted(p for p in (self.root / "d").iterdir() if p.is_file())

    def mutate(self, big=False):
        files = self.files()
        for p in self.rng.sample(files, max(1, len(files) // 6)):
            self._write(p)
        if len(files) > 10:
            self.rng.choice(files).unlink()
        for _ in range(8 if big else 1):
            self._write(self._new_name())

    def manifest(self):
        return manifest(self.root)


def manifest(root):
    root = Path(root)
    m = {}
    for p in sorted(root.rglob("*")):
        if p.is_file():
            m[str(p.relative_to(root))] = (p.stat().st_size, hashlib.sha256(p.read_bytes()).hexdigest())
    return m


class Omesh:
    def __init__(self, bin):
        self.bin = str(bin)

    def cmd(self, args):
        return [self.bin] + [str(a) for a in args]

    def run(self, args, env=None, timeout=HANG):
        try:
            r = subprocess.run(self.cmd(args), capture_output=True, text=True, env=clean_env(env), timeout=timeout)
        except subprocess.TimeoutExpired:
            return subprocess.CompletedProcess(args, -1, "", f"did not end within {timeout} s")
        return r

    def popen(self, args, env=None, stderr=subprocess.PIPE):
        return subprocess.Popen(self.cmd(args), stdout=subprocess.PIPE, stderr=stderr, text=True, env=clean_env(env))


def jsonof(r):
    try:
        return json.loads(r.stdout)
    except (json.JSONDecodeError, TypeError):
        return None


def wait(p, timeout=HANG):
    try:
        out, err = p.communicate(timeout=timeout)
        return p.returncode, out, err, False
    except subprocess.TimeoutExpired:
        p.kill()
        out, err = p.communicate()
        return p.returncode, out, err, True


def restored_manifest(target, src):
    return manifest(Path(target) / Path(src).relative_to("/"))


# ---------------------------------------------------------------- local kills

COMMIT_POINTS = [
    "pack.append",
    "pack.before_rename",
    "pack.after_rename",
    "index.after_commit",
    "backup.before_commit",
    "snapshot.before_write",
    "snapshot.after_write",
]


def check_local_store(om, store, acked, fails, rng, work, label, restore_all=False):
    r = om.run(["verify", "--store", store, "--read-data"])
    if r.returncode != 0:
        fails.add(f"{label}: verify exit {r.returncode}: {r.stderr.strip()[-400:]}")
    r = om.run(["snapshots", "--store", store, "--json"])
    listed = {s["id"] for s in (jsonof(r) or {}).get("snapshots", [])}
    lost = [s for s in acked if s not in listed]
    for s in lost:
        fails.add(f"{label}: acknowledged snapshot {s} is gone")
    ids = list(acked) if restore_all else rng.sample(sorted(acked), min(2, len(acked)))
    for sid in ids:
        target = work / "restore"
        shutil.rmtree(target, ignore_errors=True)
        r = om.run(["restore", "--store", store, sid, "--target", target])
        if r.returncode != 0:
            fails.add(f"{label}: restore {sid} exit {r.returncode}: {r.stderr.strip()[-400:]}")
        elif restored_manifest(target, acked[sid][0]) != acked[sid][1]:
            fails.add(f"{label}: restore {sid} differs from the tree it was taken of")
        shutil.rmtree(target, ignore_errors=True)
    return len(lost)


def local_kills(om, work, rng, iters, deadline):
    fails = Failures("local-kills")
    store, src = work / "store", work / "src"
    om.run(["init", "--store", store, "--source", "t", "--chunk-sizes", "4096,16384,65536", "--pack-size-bytes", "262144"])
    tree = Tree(src, rng)
    acked = {}  # id -> (src, manifest)
    r = om.run(["backup", "--store", store, src, "--json"])
    acked[jsonof(r)["snapshot"]] = (src, tree.manifest())
    t0 = time.monotonic()
    om.run(["backup", "--store", store, src, "--json", "--parent", "none"])
    one = time.monotonic() - t0
    kills = at_points = finished = 0
    lost = 0
    i = 0
    while i < iters and time.monotonic() < deadline:
        i += 1
        tree.mutate(big=rng.random() < 0.3)
        m = tree.manifest()
        env = None
        if rng.random() < 0.35:
            env = {"OMESH_FAILPOINT": f"{rng.choice(COMMIT_POINTS)}:{rng.randint(1, 3)}"}
        args = ["backup", "--store", store, src, "--json"]
        if rng.random() < 0.2:
            args += ["--parent", "none"]
        p = om.popen(args, env)
        if env is None:
            try:
                p.wait(timeout=rng.uniform(0, one * 1.3))
            except subprocess.TimeoutExpired:
                p.send_signal(signal.SIGKILL)
                kills += 1
        rc, out, err, hung = wait(p)
        if hung:
            fails.add(f"iteration {i}: backup did not end")
        if rc == -signal.SIGKILL and env is not None:
            at_points += 1
        if rc in (0, 3):
            finished += 1
            try:
                acked[json.loads(out)["snapshot"]] = (src, m)
            except (json.JSONDecodeError, KeyError):
                fails.add(f"iteration {i}: backup exit {rc} without a snapshot id: {out[-200:]}")
        elif rc not in (-signal.SIGKILL,):
            fails.add(f"iteration {i}: backup exit {rc}: {err.strip()[-300:]}")
        lost += check_local_store(om, store, acked, fails, rng, work, f"iteration {i}")
    # the orphans of killed runs go, and nothing acknowledged with them
    r = om.run(["gc", "--store", store, "--json"])
    if r.returncode != 0:
        fails.add(f"gc after the kills: exit {r.returncode}: {r.stderr.strip()[-300:]}")
    lost += check_local_store(om, store, acked, fails, rng, work, "after gc", restore_all=True)
    return {
        "iterations": i,
        "random_kills": kills,
        "kills_at_commit_points": at_points,
        "backups_finished": finished,
        "acknowledged": len(acked),
        "lost": lost,
    }, fails


# ---------------------------------------------------------------- mesh site


def free_port(ip):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind((ip, 0))
    p = s.getsockname()[1]
    s.close()
    return p


class Node:
    def __init__(self, om, work, name, ip, ca):
        self.om, self.name, self.ip = om, name, ip
        self.port = free_port(ip)
        self.dir = work / name
        self.data = self.dir / "data"
        self.proc = None
        r = om.run(["ca", "issue", "--dir", ca, "--node", name, "--out", self.dir / "tls"])
        assert r.returncode == 0, r.stderr

    def config(self, peers, factor=1, extra=""):
        t = f'name = "{self.name}"\ndata_dir = "{self.data}"\nlisten = "{self.ip}:{self.port}"\ndomain = "d-{self.name}"\n'
        t += f'[tls]\nca = "{self.dir}/tls/ca.pem"\ncert = "{self.dir}/tls/node.pem"\nkey = "{self.dir}/tls/node.key"\ncrl = "{self.dir}/tls/crl.pem"\n'
        t += f"[replication]\nfactor = {factor}\n{extra}\n"
        for p in peers:
            t += f'[[peer]]\nname = "{p.name}"\naddress = "{p.ip}:{p.port}"\ndomain = "d-{p.name}"\n'
        self.dir.mkdir(parents=True, exist_ok=True)
        (self.dir / "omesh.toml").write_text(t)

    def run(self, *args, env=None, timeout=HANG):
        return self.om.run(list(args) + ["--config", self.dir / "omesh.toml"], env=env, timeout=timeout)

    def popen(self, *args, env=None):
        return self.om.popen(list(args) + ["--config", self.dir / "omesh.toml"], env=env)

    def start(self):
        # the daemon's log goes to a file (a closed pipe would fail its writes)
        log = self.dir / "daemon.log"
        with open(log, "a") as f:
            self.proc = self.om.popen(["node", "run", "--config", self.dir / "omesh.toml"], stderr=f)
        line = self.proc.stdout.readline()
        if "listening on" not in line:
            self.proc.kill()
            self.proc.wait()
            raise SystemExit(f"{self.name} did not start: {line} {log.read_text()[-500:]}")

    def kill(self):
        if self.proc:
            self.proc.kill()
            self.proc.wait()
            self.proc = None

    def held(self, source):
        d = self.data / "sources" / source / "snapshots"
        return {p.name for p in d.iterdir()} if d.exists() else set()


def site(om, work, names, ips):
    ca = work / "ca"
    r = om.run(["ca", "init", "--dir", ca, "--site", "torture"])
    assert r.returncode == 0, r.stderr
    return [Node(om, work, n, ip, ca) for n, ip in zip(names, ips)]


def three_nodes(om, work, factor):
    """Source a (no daemon) replicating to b and c, whose daemons run."""
    a, b, c = site(om, work, ["a", "b", "c"], ["127.0.0.1", "127.0.0.2", "127.0.0.3"])
    a.config([b, c], factor=factor)
    b.config([a, c])
    c.config([a, b])
    b.start()
    c.start()
    return a, b, c


def record_backup(rep, m, src, acked, held_by):
    sid = rep["snapshot"]
    acked[sid] = (src, m)
    for x in rep.get("replicas", []):
        if x["ok"]:
            held_by.setdefault(x["peer"], set()).add(sid)
    return sid


def check_peers(peers, source, held_by, fails, label, read_data=False):
    lost = 0
    for p in peers:
        have = p.held(source)
        for sid in sorted(held_by.get(p.name, ())):
            if sid not in have:
                fails.add(f"{label}: {p.name} acknowledged {sid} and no longer holds it")
                lost += 1
        if read_data and have:
            r = p.run("verify", "--source", source, "--read-data")
            if r.returncode != 0:
                fails.add(f"{label}: verify of {p.name}'s replica of {source}: exit {r.returncode}: {r.stderr.strip()[-400:]}")
    return lost


def restore_from(src_node, peer, sid, acked, work, fails, label):
    target = work / "restore"
    shutil.rmtree(target, ignore_errors=True)
    r = src_node.run("restore", sid, "--target", target, "--from", peer.name)
    ok = r.returncode == 0 and restored_manifest(target, acked[sid][0]) == acked[sid][1]
    if not ok:
        fails.add(f"{label}: restore {sid} from {peer.name}: exit {r.returncode}: {r.stderr.strip()[-400:]}")
    shutil.rmtree(target, ignore_errors=True)
    return ok


def daemon_kills(om, work, rng, iters, deadline):
    fails = Failures("daemon-kills")
    a, b, c = three_nodes(om, work, factor=2)
    src = work / "src"
    tree = Tree(src, rng, files=30)
    acked, held_by = {}, {}
    kills = lost = 0
    try:
        r = a.run("backup", src, "--json")
        record_backup(jsonof(r), tree.manifest(), src, acked, held_by)
        t0 = time.monotonic()
        a.run("backup", src, "--json")
        one = time.monotonic() - t0
        i = 0
        while i < iters and time.monotonic() < deadline:
            i += 1
            tree.mutate(big=True)
            m = tree.manifest()
            victim = rng.choice([b, c])
            p = a.popen("backup", src, "--json")
            try:
                p.wait(timeout=rng.uniform(0, one))
            except subprocess.TimeoutExpired:
                pass
            victim.kill()
            kills += 1
            rc, out, err, hung = wait(p)
            if hung:
                fails.add(f"iteration {i}: backup did not end with {victim.name} dead")
            if rc in (0, 6):
                record_backup(json.loads(out), m, src, acked, held_by)
            else:
                fails.add(f"iteration {i}: backup exit {rc}: {err.strip()[-300:]}")
            victim.start()
            r = a.run("sync", "--json")
            if r.returncode != 0:
                fails.add(f"iteration {i}: sync after restarting {victim.name}: exit {r.returncode}: {r.stderr.strip()[-300:]}")
            lost += check_peers([b, c], "a", held_by, fails, f"iteration {i}", read_data=(i % 3 == 0))
        lost += check_peers([b, c], "a", held_by, fails, "final", read_data=True)
        for peer in (b, c):
            mine = sorted(held_by.get(peer.name, ()))
            for sid in rng.sample(mine, min(2, len(mine))):
                restore_from(a, peer, sid, acked, work, fails, "final")
    finally:
        b.kill()
        c.kill()
    return {"iterations": i, "daemon_kills": kills, "acknowledged": len(acked), "lost": lost}, fails


# ---------------------------------------------------------------- flips


def replica_packs(node, source):
    return sorted(p for p in (node.data / "sources" / source / "packs").rglob("*") if p.is_file())


def flips(om, work, rng, iters, deadline):
    fails = Failures("flips")
    a, b = site(om, work, ["a", "b"], ["127.0.0.1", "127.0.0.2"])
    a.config([b], factor=1)
    # scrub retires each damaged pack to trash/ and deletes it once GC's
    # grace period is over: with none, every scrub leaves trash/ empty
    # (hundreds of rewritten packs a minute would otherwise fill the disk)
    b.config([a], extra="[gc]\ngrace_secs = 0\n")
    src = work / "src"
    tree = Tree(src, rng, files=60)
    acked, held_by = {}, {}
    injected = detected = repaired = truncations = 0
    trash = b.data / "sources" / "a" / "trash"
    lost = 0
    # the source's daemon serves the good copies scrub on b fetches
    b.start()
    a.start()
    try:
        i = 0
        while i < iters and time.monotonic() < deadline:
            i += 1
            tree.mutate(big=True)
            r = a.run("backup", src, "--json")
            if r.returncode != 0:
                fails.add(f"iteration {i}: backup exit {r.returncode}: {r.stderr.strip()[-300:]}")
                continue
            sid = record_backup(jsonof(r), tree.manifest(), src, acked, held_by)
            packs = replica_packs(b, "a")
            # one byte in each of several packs (never the magic): each
            # damages exactly one record
            chosen = rng.sample(packs, min(len(packs), rng.randint(1, 40)))
            for pk in chosen:
                data = bytearray(pk.read_bytes())
                off = rng.randrange(16, len(data))
                data[off] ^= 1 << rng.randrange(8)
                pk.write_bytes(bytes(data))
            injected += len(chosen)
            # and sometimes cut the end off another
            rest = [p for p in packs if p not in chosen]
            cut = None
            if rest and rng.random() < 0.3:
                cut = rng.choice(rest)
                size = cut.stat().st_size
                os.truncate(cut, rng.randrange(size // 2, size - 1))
                truncations += 1
            r = b.run("scrub", "--json", "--rate", "unlimited")
            rep = jsonof(r) or {}
            damaged = sum(len(s.get("damaged", [])) for s in rep.get("stores", []))
            n_rep = len(rep.get("repaired", []))
            if r.returncode != 0 or rep.get("unrepaired"):
                fails.add(f"iteration {i}: scrub exit {r.returncode}, unrepaired {rep.get('unrepaired')}: {r.stderr.strip()[-300:]}")
            detected += damaged
            repaired += n_rep
            if cut is None and damaged != len(chosen):
                fails.add(f"iteration {i}: {len(chosen)} records damaged, scrub found {damaged}")
            if cut is not None and damaged < len(chosen) + 1:
                fails.add(f"iteration {i}: {len(chosen)} records flipped and a pack truncated, scrub found {damaged}")
            if n_rep != damaged:
                fails.add(f"iteration {i}: scrub found {damaged}, repaired {n_rep}")
            left = [p.name for p in trash.glob("*")] if trash.exists() else []
            if left:
                fails.add(f"iteration {i}: scrub left {len(left)} retired packs in trash/ with no grace period")
            lost += check_peers([b], "a", held_by, fails, f"iteration {i}", read_data=True)
            restore_from(a, b, sid, acked, work, fails, f"iteration {i}")
    finally:
        a.kill()
        b.kill()
    return {
        "iterations": i,
        "records_flipped": injected,
        "packs_truncated": truncations,
        "damaged_records_found": detected,
        "repaired": repaired,
        "lost": lost,
    }, fails


# ---------------------------------------------------------------- disk full


class Tmpfs:
    def __init__(self, path, size):
        self.path = Path(path)
        self.path.mkdir(parents=True, exist_ok=True)
        subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(self.path)], check=True)

    def resize(self, size):
        subprocess.run(["mount", "-o", f"remount,size={size}", str(self.path)], check=True)

    def close(self):
        subprocess.run(["umount", "-l", str(self.path)])


class LoopExt4:
    """A small ext4 file system in an image on a loop device (no reserved
    blocks), grown online by `resize`."""

    def __init__(self, path, size):
        self.path = Path(path)
        self.path.mkdir(parents=True, exist_ok=True)
        self.image = self.path.parent / (self.path.name + ".ext4")
        subprocess.run(["truncate", "-s", size.upper(), str(self.image)], check=True)
        subprocess.run(["mkfs.ext4", "-q", "-F", "-m", "0", str(self.image)], check=True)
        self.dev = subprocess.run(["losetup", "-f", "--show", str(self.image)], check=True, capture_output=True, text=True).stdout.strip()
        subprocess.run(["mount", self.dev, str(self.path)], check=True)
        # an empty data directory, as a fresh disk mounted for omesh
        shutil.rmtree(self.path / "lost+found", ignore_errors=True)

    def resize(self, size):
        # offline: the kernel refuses to grow so small a file system online
        # (nothing may hold files on it: the caller stops the daemon)
        subprocess.run(["umount", str(self.path)], check=True)
        subprocess.run(["truncate", "-s", size.upper(), str(self.image)], check=True)
        subprocess.run(["losetup", "-c", self.dev], check=True)
        subprocess.run(["e2fsck", "-f", "-y", self.dev], capture_output=True)
        subprocess.run(["resize2fs", self.dev], check=True, capture_output=True)
        subprocess.run(["mount", self.dev, str(self.path)], check=True)

    def close(self):
        subprocess.run(["umount", "-l", str(self.path)])
        subprocess.run(["losetup", "-d", self.dev])


def small_fs(kind, path, size):
    return LoopExt4(path, size) if kind == "ext4" else Tmpfs(path, size)


def disk_full(om, work, rng, iters, deadline):
    fails = Failures("disk-full")
    if os.geteuid() != 0:
        fails.add("needs root (tmpfs and loop-device mounts)")
        return {"skipped": "not root"}, fails
    local_runs = peer_runs = refused = peer_refused = lost = 0
    kinds = ["ext4", "tmpfs"] if shutil.which("mkfs.ext4") else ["tmpfs"]
    i = 0
    while i < iters and time.monotonic() < deadline:
        i += 1
        for kind in kinds:
            # a local store that fills in the middle of its second backup
            w = work / f"local{i}-{kind}"
            fs = small_fs(kind, w / "mnt", "4m")
            try:
                store = w / "mnt" / "store"
                om.run(["init", "--store", store, "--source", "t", "--pack-size-bytes", "262144"])
                src = w / "src"
                tree = Tree(src, rng, files=20)
                acked = {}
                r = om.run(["backup", "--store", store, src, "--json"])
                if r.returncode == 0:
                    acked[jsonof(r)["snapshot"]] = (src, tree.manifest())
                for _ in range(30):
                    tree.mutate(big=True)
                    tree.mutate(big=True)
                    m = tree.manifest()
                    r = om.run(["backup", "--store", store, src, "--json"])
                    if r.returncode == 0:
                        acked[jsonof(r)["snapshot"]] = (src, m)
                    elif "no space" in r.stderr.lower() or "full" in r.stderr.lower():
                        refused += 1
                        break
                    else:
                        fails.add(f"local run {i} ({kind}): backup exit {r.returncode} without naming the full disk: {r.stderr.strip()[-300:]}")
                        break
                else:
                    fails.add(f"local run {i} ({kind}): the disk never filled (the run tested nothing)")
                local_runs += 1
                lost += check_local_store(om, store, acked, fails, rng, w, f"local run {i} ({kind}) (full)")
                fs.resize("64m")
                tree.mutate()
                m = tree.manifest()
                r = om.run(["backup", "--store", store, src, "--json"])
                if r.returncode != 0:
                    fails.add(f"local run {i} ({kind}): backup after enlarging: exit {r.returncode}: {r.stderr.strip()[-300:]}")
                else:
                    acked[jsonof(r)["snapshot"]] = (src, m)
                lost += check_local_store(om, store, acked, fails, rng, w, f"local run {i} ({kind}) (enlarged)")
            finally:
                fs.close()
                shutil.rmtree(w, ignore_errors=True)
            # a receiving peer whose data directory fills
            w = work / f"peer{i}-{kind}"
            w.mkdir(parents=True)
            a, b = site(om, w, ["a", "b"], ["127.0.0.1", "127.0.0.2"])
            fs = small_fs(kind, b.data, "4m")
            a.config([b], factor=1)
            b.config([a])
            b.start()
            a.start()
            try:
                src = w / "src"
                tree = Tree(src, rng, files=20)
                acked, held_by = {}, {}
                for _ in range(30):
                    tree.mutate(big=True)
                    tree.mutate(big=True)
                    r = a.run("backup", src, "--json")
                    if r.returncode in (0, 6):
                        record_backup(jsonof(r), tree.manifest(), src, acked, held_by)
                    else:
                        fails.add(f"peer run {i} ({kind}): backup exit {r.returncode}: {r.stderr.strip()[-300:]}")
                    if r.returncode == 6:
                        peer_refused += 1
                        break
                else:
                    fails.add(f"peer run {i} ({kind}): the peer's disk never filled (the run tested nothing)")
                peer_runs += 1
                lost += check_peers([b], "a", held_by, fails, f"peer run {i} ({kind}) (full)", read_data=True)
                b.kill()
                fs.resize("128m")
                b.start()
                # the holder pulls what it is missing (a's sync leaves it to b)
                bad = False
                for n in (b, a):
                    r = n.run("sync", "--json")
                    if r.returncode != 0:
                        bad = True
                        fails.add(f"peer run {i} ({kind}): sync on {n.name} after enlarging: exit {r.returncode}: {r.stderr.strip()[-300:]}")
                if not bad:
                    # now b holds every snapshot of a
                    held_by.setdefault("b", set()).update(acked)
                lost += check_peers([b], "a", held_by, fails, f"peer run {i} ({kind}) (enlarged)", read_data=True)
                for sid in rng.sample(sorted(acked), min(2, len(acked))):
                    restore_from(a, b, sid, acked, w, fails, f"peer run {i} ({kind})")
            finally:
                a.kill()
                b.kill()
                fs.close()
                shutil.rmtree(w, ignore_errors=True)
    return {"file_systems": kinds, "local_runs": local_runs, "peer_runs": peer_runs, "local_disk_full": refused, "peer_disk_full": peer_refused, "lost": lost}, fails


# ---------------------------------------------------------------- concurrency


def concurrency(om, work, rng, iters, deadline):
    fails = Failures("concurrency")
    a, b = site(om, work, ["a", "b"], ["127.0.0.1", "127.0.0.2"])
    lifecycle = "[retention]\nkeep_last = 2\n[gc]\ngrace_secs = 0\n"
    a.config([b], factor=1, extra=lifecycle)
    b.config([a])
    src = work / "src"
    tree = Tree(src, rng, files=40)
    acked, held_by = {}, {}
    lost = rounds = 0
    b.start()
    a.start()
    try:
        r = a.run("backup", src, "--json")
        record_backup(jsonof(r), tree.manifest(), src, acked, held_by)
        while rounds < iters and time.monotonic() < deadline:
            rounds += 1
            tree.mutate(big=True)
            m = tree.manifest()
            procs = {name: a.popen(*args) for name, args in (
                ("backup", ["backup", src, "--json"]),
                ("forget", ["forget", "--json"]),
                ("gc", ["gc", "--json"]),
                ("scrub", ["scrub", "--json", "--rate", "unlimited"]),
            )}
            for name, p in procs.items():
                rc, out, err, hung = wait(p)
                if hung:
                    fails.add(f"round {rounds}: {name} did not end")
                elif name == "backup" and rc == 0:
                    record_backup(json.loads(out), m, src, acked, held_by)
                elif name == "scrub" and rc == 1 and "already" in err:
                    pass  # one scrub at a time: it says so instead of waiting
                elif rc != 0:
                    fails.add(f"round {rounds}: {name} exit {rc}: {err.strip()[-300:]}")
            r = a.run("snapshots", "--json")
            listed = {s["id"] for s in (jsonof(r) or {}).get("snapshots", [])}
            newest = list(acked)[-1]
            if newest not in listed:
                fails.add(f"round {rounds}: the newest acknowledged snapshot {newest} is gone")
                lost += 1
            r = a.run("verify", "--read-data")
            if r.returncode != 0:
                fails.add(f"round {rounds}: verify exit {r.returncode}: {r.stderr.strip()[-300:]}")
        newest = list(acked)[-1]
        target = work / "restore"
        r = a.run("restore", newest, "--target", target)
        if r.returncode != 0 or restored_manifest(target, src) != acked[newest][1]:
            fails.add(f"final: restore of {newest} exit {r.returncode}: {r.stderr.strip()[-300:]}")
    finally:
        a.kill()
        b.kill()
    return {"rounds": rounds, "acknowledged": len(acked), "lost": lost}, fails


# ---------------------------------------------------------------- freeze


def freeze(om, work, rng, iters, deadline):
    fails = Failures("freeze")
    a, b, c = three_nodes(om, work, factor=1)
    src = work / "src"
    tree = Tree(src, rng, files=40)
    acked, held_by = {}, {}
    lost = frozen = 0
    i = 0
    try:
        r = a.run("backup", src, "--json")
        record_backup(jsonof(r), tree.manifest(), src, acked, held_by)
        t0 = time.monotonic()
        a.run("backup", src, "--json")
        one = time.monotonic() - t0
        while i < iters and time.monotonic() < deadline:
            i += 1
            tree.mutate(big=True)
            m = tree.manifest()
            victim = rng.choice([b, c])
            p = a.popen("backup", src, "--json")
            try:
                p.wait(timeout=rng.uniform(0, one))
            except subprocess.TimeoutExpired:
                pass
            os.kill(victim.proc.pid, signal.SIGSTOP)
            frozen += 1
            rc, out, err, hung = wait(p)
            if hung:
                fails.add(f"iteration {i}: backup did not end with {victim.name} frozen")
            elif rc in (0, 6):
                record_backup(json.loads(out), m, src, acked, held_by)
            else:
                fails.add(f"iteration {i}: backup exit {rc} with {victim.name} frozen: {err.strip()[-300:]}")
            # a restore from the frozen peer ends and names it
            sid = list(acked)[-1]
            target = work / "restore"
            shutil.rmtree(target, ignore_errors=True)
            r = a.run("restore", sid, "--target", target, "--from", victim.name)
            if r.returncode == -1:
                fails.add(f"iteration {i}: restore from the frozen {victim.name} did not end")
            elif r.returncode != 0 and victim.name not in r.stderr:
                fails.add(f"iteration {i}: restore from the frozen {victim.name} failed without naming it: {r.stderr.strip()[-300:]}")
            shutil.rmtree(target, ignore_errors=True)
            os.kill(victim.proc.pid, signal.SIGCONT)
            r = a.run("sync", "--json")
            if r.returncode != 0:
                fails.add(f"iteration {i}: sync after thawing {victim.name}: exit {r.returncode}: {r.stderr.strip()[-300:]}")
            lost += check_peers([b, c], "a", held_by, fails, f"iteration {i}")
        lost += check_peers([b, c], "a", held_by, fails, "final", read_data=True)
        sid = list(acked)[-1]
        for peer in (b, c):
            if sid in peer.held("a"):
                restore_from(a, peer, sid, acked, work, fails, "final")
    finally:
        for n in (b, c):
            if n.proc:
                os.kill(n.proc.pid, signal.SIGCONT)
            n.kill()
    return {"iterations": i, "peers_frozen": frozen, "acknowledged": len(acked), "lost": lost}, fails

# ---------------------------------------------------------------- crash replay


def parse_log(path):
    """The operations tools/torture/crashlog.c recorded, in order."""
    data = Path(path).read_bytes()
    ops, i = [], 0
    while i < len(data):
        j = data.index(b"\n", i)
        parts = data[i:j].decode().split(" ")
        i = j + 1
        if parts[0] == "W":
            n = int(parts[3])
            ops.append(("W", int(parts[1]), int(parts[2]), data[i:i + n]))
            i += n
        elif parts[0] == "O":
            ops.append(("O", int(parts[1]), parts[2], parts[3]))
        elif parts[0] in ("T",):
            ops.append(("T", int(parts[1]), int(parts[2])))
        elif parts[0] == "S":
            ops.append(("S", int(parts[1])))
        elif parts[0] in ("R", "L"):
            ops.append((parts[0], parts[1], parts[2]))
        elif parts[0] in ("U", "M", "D"):
            ops.append((parts[0], parts[1]))
        elif parts[0] == "P":
            ops.append(("P",))
        else:
            ops.append(("X", " ".join(parts[1:])))
    return ops


class CrashModel:
    """Files as a power cut could leave them. Metadata (creates, renames,
    links, unlinks, mkdirs) reaches the disk in order, all of it up to the
    last fsync of anything (a journal commit, as on ext4 and XFS); a file's
    data (writes, truncations) only up to the last fsync of that file.
    `state(c, minimal=False)` is everything up to operation c (the most a
    crash can keep); `minimal=True` keeps only what was made durable."""

    def __init__(self, ops, root, base):
        self.ops, self.root, self.base = ops, root, Path(base)
        # handle -> inode, replaying the opens (needed in both modes)
        self.inode_of, nxt, names = {}, 0, {}
        for p in self.base.rglob("*"):
            if p.is_file():
                nxt += 1
                names[str(p.relative_to(self.base))] = nxt
        self.base_names = dict(names)
        self.first_new = nxt + 1
        # data op k on inode i is durable once a later S on i came
        self.durable_at = {}
        self.creates = {}
        last_data = {}
        for k, op in enumerate(ops):
            if op[0] == "O":
                rel = self.rel(op[3])
                if op[2] == "f":
                    if rel not in names:
                        nxt += 1
                        names[rel] = nxt
                        self.creates[k] = nxt
                    self.inode_of[op[1]] = names[rel]
                else:
                    self.inode_of[op[1]] = None
            elif op[0] == "R":
                a, b = self.rel(op[1]), self.rel(op[2])
                if a in names:
                    names[b] = names.pop(a)
            elif op[0] == "L":
                a, b = self.rel(op[1]), self.rel(op[2])
                if a in names:
                    names[b] = names[a]
            elif op[0] == "U":
                names.pop(self.rel(op[1]), None)
            elif op[0] in ("W", "T"):
                last_data.setdefault(self.inode_of[op[1]], []).append(k)
            elif op[0] == "S":
                ino = self.inode_of.get(op[1])
                for d in last_data.pop(ino, []):
                    self.durable_at[d] = k
        self.syncs = [k for k, op in enumerate(ops) if op[0] == "S"]
        self.acked_at = next((k for k, op in enumerate(ops) if op[0] == "P"), None)
        self.unmodelled = [op[1] for op in ops if op[0] == "X"]

    def rel(self, p):
        return str(Path(p).relative_to(self.root)) if p != str(self.root) else "."

    def state(self, c, minimal=False):
        names = dict(self.base_names)
        dirs = {str(p.relative_to(self.base)) for p in self.base.rglob("*") if p.is_dir()}
        data = {}  # inode -> bytearray (absent: as in the base)
        base_path = {i: self.base / n for n, i in self.base_names.items()}
        meta_to = c
        if minimal:
            meta_to = max([k for k in self.syncs if k <= c], default=-1)

        def content(i):
            if i not in data:
                data[i] = bytearray(base_path[i].read_bytes()) if i in base_path else bytearray()
            return data[i]

        for k, op in enumerate(self.ops[: c + 1]):
            t = op[0]
            if t in ("W", "T"):
                if minimal and self.durable_at.get(k, c + 1) > c:
                    continue
                buf = content(self.inode_of[op[1]])
                if t == "W":
                    off, b = op[2], op[3]
                    if len(buf) < off:
                        buf.extend(bytes(off - len(buf)))
                    buf[off:off + len(b)] = b
                else:
                    del buf[op[2]:]
                    if len(buf) < op[2]:
                        buf.extend(bytes(op[2] - len(buf)))
                continue
            if k > meta_to:
                continue
            if t == "O" and k in self.creates:
                names[self.rel(op[3])] = self.creates[k]
            elif t == "R":
                a, b = self.rel(op[1]), self.rel(op[2])
                if a in names:
                    names[b] = names.pop(a)
            elif t == "L":
                a, b = self.rel(op[1]), self.rel(op[2])
                if a in names:
                    names[b] = names[a]
            elif t == "U":
                names.pop(self.rel(op[1]), None)
            elif t == "M":
                dirs.add(self.rel(op[1]))
            elif t == "D":
                dirs.discard(self.rel(op[1]))
        return names, dirs, data, base_path

    def materialize(self, c, dest, minimal=False):
        names, dirs, data, base_path = self.state(c, minimal)
        shutil.rmtree(dest, ignore_errors=True)
        dest.mkdir(parents=True)
        for d in sorted(dirs):
            (dest / d).mkdir(parents=True, exist_ok=True)
        for n, i in names.items():
            p = dest / n
            p.parent.mkdir(parents=True, exist_ok=True)
            if i in data:
                p.write_bytes(bytes(data[i]))
            elif i in base_path:
                shutil.copyfile(base_path[i], p)
            else:
                p.write_bytes(b"")
            # modes as the store made them: the base's, private for new files
            if i in base_path:
                shutil.copymode(base_path[i], p)
            else:
                p.chmod(0o600)


def build_shim(work):
    so = work / "crashlog.so"
    r = subprocess.run(["gcc", "-O2", "-shared", "-fPIC", "-o", str(so), str(ROOT / "tools/torture/crashlog.c"), "-ldl", "-lpthread"],
                       capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError(f"cannot build the write-logging shim: {r.stderr[-500:]}")
    return so


def crash_replay(om, work, rng, iters, deadline, mib=None):
    """Record a backup's writes and fsyncs, rebuild the store as a power cut
    at every fsync (and at random writes between them) could leave it, most
    and least kept, and check every such state opens, verifies and keeps
    every acknowledged snapshot. A mutant replay that drops the fsyncs of
    new packs must fail: it shows the checker can see a missing fsync."""
    fails = Failures("crash-replay")
    so = build_shim(work)
    size = (mib or 2 * iters) << 20
    store, src = work / "store", work / "src"
    om.run(["init", "--store", store, "--source", "t", "--chunk-sizes", "4096,16384,65536", "--pack-size-bytes", str(max(262144, size // 6))])
    tree = Tree(src, rng, files=max(20, size // 60_000), size=48_000)
    r = om.run(["backup", "--store", store, src, "--json"])
    first = jsonof(r)["snapshot"]
    for _ in range(4):
        tree.mutate(big=True)
    base = work / "base"
    shutil.copytree(store, base)
    log = work / "writes.log"
    r = om.run(["backup", "--store", store, src, "--json"],
               env={"LD_PRELOAD": str(so), "CRASHLOG_ROOT": str(store), "CRASHLOG_OUT": str(log)})
    if r.returncode != 0:
        fails.add(f"the recorded backup failed: exit {r.returncode}: {r.stderr[-300:]}")
        return {}, fails
    second = jsonof(r)["snapshot"]
    ops = parse_log(log)
    model = CrashModel(ops, str(store), base)
    if model.unmodelled:
        fails.add(f"the backup made calls the replay cannot model: {sorted(set(model.unmodelled))}")
    if model.acked_at is None:
        fails.add("the recorded backup never answered (no write to stdout)")
    syncs = model.syncs
    # and after every operation between them (a crash in the middle of
    # writing), sampled when the log is very long
    between = list(range(len(ops))) if len(ops) <= 5000 else sorted(rng.sample(range(len(ops)), 5000))
    points = [(c, True) for c in syncs] + [(c, False) for c in sorted(set(syncs + between + [len(ops) - 1]))]
    checked = failed = 0
    dest = work / "state"

    def check(c, minimal, mutant=None):
        m = mutant or model
        m.materialize(c, dest, minimal)
        want = [first] + ([second] if m.acked_at is not None and c >= m.acked_at else [])
        v = om.run(["verify", "--store", dest, "--read-data"])
        listed = {x["id"] for x in (jsonof(om.run(["snapshots", "--store", dest, "--json"])) or {}).get("snapshots", [])}
        missing = [x for x in want if x not in listed]
        return v.returncode == 0 and not missing, f"exit {v.returncode} {v.stderr.strip()[-200:]} missing {missing}"

    for c, minimal in points:
        if time.monotonic() > deadline:
            break
        ok, why = check(c, minimal)
        checked += 1
        if not ok:
            failed += 1
            fails.add(f"crash after operation {c}/{len(ops)} ({'only what was fsynced' if minimal else 'everything written'}): {why}")
    # the mutant: new packs never fsynced
    pack_handles = {op[1] for op in ops if op[0] == "O" and op[3].endswith(".pack-tmp")}
    mutant = CrashModel([op for op in ops if not (op[0] == "S" and op[1] in pack_handles)], str(store), base)
    mutant_failing, mutant_example = 0, None
    for c in mutant.syncs:
        ok, why = check(c, True, mutant)
        if not ok:
            mutant_failing += 1
            mutant_example = mutant_example or why
    if pack_handles and mutant_failing == 0:
        fails.add("a replay without the packs' fsyncs found nothing wrong: the checker cannot see a missing fsync")
    shutil.rmtree(dest, ignore_errors=True)
    return {
        "backup_bytes": sum(p.stat().st_size for p in src.rglob("*") if p.is_file()),
        "operations": len(ops),
        "fsyncs": len(syncs),
        "states_checked": checked,
        "states_failed": failed,
        "mutant_states_failing": mutant_failing,
        "mutant_example": mutant_example,
        "lost": failed,
    }, fails


EXPERIMENTS = {
    # name: (function, iterations at --iterations 1)
    "local-kills": (local_kills, 12),
    "daemon-kills": (daemon_kills, 4),
    "flips": (flips, 3),
    "disk-full": (disk_full, 1),
    "concurrency": (concurrency, 3),
    "freeze": (freeze, 2),
    "crash-replay": (crash_replay, 2),
}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--omesh", type=Path, default=default_omesh())
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--iterations", type=int, default=1, help="scale of every experiment (1: the short CI run)")
    ap.add_argument("--budget", type=float, default=3600, help="seconds for the whole run")
    ap.add_argument("--only", default=",".join(EXPERIMENTS))
    ap.add_argument("--work", type=Path, default=None, help="working directory (default: a fresh temporary one)")
    ap.add_argument("--replay-mib", type=int, default=None, help="size of the crash-replay backup (default: 2 MiB per iteration)")
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    if not a.omesh.exists():
        ap.error(f"no omesh binary at {a.omesh}: build it (cargo build) or pass --omesh PATH")
    names = [n for n in a.only.split(",") if n]
    unknown = [n for n in names if n not in EXPERIMENTS]
    if unknown:
        ap.error(f"unknown experiment {', '.join(unknown)}; the experiments are {', '.join(EXPERIMENTS)}")
    om = Omesh(a.omesh.resolve())
    base = a.work or Path(tempfile.mkdtemp(prefix="omesh-torture-"))
    start = time.monotonic()
    results, failed = {}, []
    for k, name in enumerate(names):
        fn, n = EXPERIMENTS[name]
        if name == "crash-replay" and a.replay_mib:
            fn = functools.partial(crash_replay, mib=a.replay_mib)
        share = (a.budget - (time.monotonic() - start)) / (len(names) - k)
        work = base / name
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir(parents=True)
        rng = random.Random(f"{a.seed}:{name}")
        print(f"== {name}: {n * a.iterations} iterations, {share:.0f} s (seed {a.seed})", file=sys.stderr)
        t = time.monotonic()
        try:
            res, fails = fn(om, work, rng, n * a.iterations, time.monotonic() + share)
        except Exception as e:  # a broken experiment is a failure, not a pass
            res, fails = {}, Failures(name)
            fails.add(f"the experiment itself failed: {e!r}")
        res["seconds"] = round(time.monotonic() - t, 1)
        res["failures"] = fails.items
        results[name] = res
        failed += fails.items
        if not fails.items:
            shutil.rmtree(work, ignore_errors=True)
    summary = {"seed": a.seed, "iterations": a.iterations, "omesh": str(a.omesh), "experiments": results,
               "failures": len(failed), "lost": sum(r.get("lost", 0) for r in results.values())}
    if a.json:
        print(json.dumps(summary, indent=2))
    else:
        for name, r in results.items():
            figures = ", ".join(f"{k} {v}" for k, v in r.items() if k != "failures")
            print(f"{name}: {figures}, failures {len(r['failures'])}")
        print(f"total: {summary['failures']} failures, {summary['lost']} acknowledged snapshots lost")
    if not failed and a.work is None:
        shutil.rmtree(base, ignore_errors=True)
    sys.exit(1 if failed or summary["lost"] else 0)


if __name__ == "__main__":
    main()
