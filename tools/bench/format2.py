#!/usr/bin/env python3
"""What authenticity costs: omesh before and after a change, same data, same run.

Builds omesh in release mode at two revisions (each in its own worktree and
target directory under /var/cache/omesh-bench), then, alternating between
the two binaries for --rounds rounds so that drift on the machine hits both
alike, measures:

  1. first backup of the generated data set into a new local store
  2. restore of that snapshot into an empty directory (timed until sync)
  3. replication: a 1 GiB random file, backed up locally first, then pushed
     to a peer on loopback by the next `backup --config` (throughput from
     the replica report: record bytes sent / seconds)

Page caches are dropped before every measured step (run as root). Besides
wall-clock throughput it records the CPU seconds (user + system, from
getrusage of the waited-for children) that backup and restore spent: on a
shared 2-core machine wall time drifts by up to 20% between runs of the
same binary, CPU time far less, so a small cost shows there first. Prints
Markdown tables of medians (and every run) and writes JSON next to them.

Usage:
  sudo tools/bench/format2.py --before REV [--after REV] [--rounds N] [--work DIR]

Not run in CI.
"""

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tools/bench"))
import mesh  # noqa: E402  (Node, sh, drop_caches, free_port, random_file, gen_data)

CACHE = Path("/var/cache/omesh-bench")


def build(rev):
    """Release binaries of `rev` (a commit); returns the target directory."""
    sha = subprocess.run(["git", "-C", ROOT, "rev-parse", "--short", rev], check=True, capture_output=True, text=True).stdout.strip()
    src = CACHE / f"src-{sha}"
    target = CACHE / f"target-{sha}"
    if not src.exists():
        mesh.sh(["git", "-C", ROOT, "worktree", "add", "-f", src, sha])
    env = dict(os.environ, CARGO_TARGET_DIR=str(target))
    mesh.sh(["cargo", "build", "--release", "--locked", "-p", "omesh", "-p", "omesh-tools"], cwd=src, env=env)
    return sha, target / "release"


def cpu_s():
    """User + system CPU seconds of every child waited for so far."""
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def tree_bytes(d):
    return sum(p.stat().st_size for p in Path(d).rglob("*") if p.is_file() and not p.is_symlink())


def one_round(binary, work, data, data_bytes, bulk):
    mesh.OMESH = binary
    out = {}
    store = work / "store"
    shutil.rmtree(store, ignore_errors=True)
    mesh.sh([binary, "init", "--store", store], stdout=subprocess.DEVNULL)
    mesh.drop_caches()
    t, c = time.monotonic(), cpu_s()
    snap = json.loads(subprocess.run([binary, "backup", "--store", store, data, "--json"], check=True, capture_output=True, text=True).stdout)["snapshot"]
    out["backup_s"] = time.monotonic() - t
    out["backup_cpu_s"] = cpu_s() - c
    out["backup_mbs"] = data_bytes / out["backup_s"] / 1e6
    target = work / "restore"
    shutil.rmtree(target, ignore_errors=True)
    mesh.drop_caches()
    t, c = time.monotonic(), cpu_s()
    mesh.sh([binary, "restore", "--store", store, snap, "--target", target], stdout=subprocess.DEVNULL)
    out["restore_cpu_s"] = cpu_s() - c
    subprocess.run(["sync"], check=True)
    out["restore_s"] = time.monotonic() - t
    out["restore_mbs"] = data_bytes / out["restore_s"] / 1e6
    shutil.rmtree(target, ignore_errors=True)
    shutil.rmtree(store, ignore_errors=True)
    # replication to a peer on loopback
    rep = work / "mesh"
    shutil.rmtree(rep, ignore_errors=True)
    rep.mkdir(parents=True)
    ca = rep / "ca"
    mesh.sh([binary, "ca", "init", "--dir", ca, "--site", "bench"], stdout=subprocess.DEVNULL)
    a = mesh.Node(rep, "a", "127.0.0.1", mesh.free_port(), ca)
    b = mesh.Node(rep, "b", "127.0.0.3", mesh.free_port("127.0.0.3"), ca)
    a.config([b])
    b.config([a])
    a.run("backup", bulk.parent, "--json", ok=(0, 3, 6))  # 6: no peer up yet, as intended
    b.start()
    try:
        mesh.drop_caches()
        r = json.loads(a.run("backup", bulk.parent, "--json"))
        x = [x for x in r["replicas"] if x["ok"]][0]
        out["replicate_mbs"] = x["bytes_sent"] / x["seconds"] / 1e6
    finally:
        b.stop()
    shutil.rmtree(rep, ignore_errors=True)
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--before", required=True)
    ap.add_argument("--after", default="HEAD")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--work", default="/var/tmp/omesh-format2")
    a = ap.parse_args()
    work = Path(a.work)
    work.mkdir(parents=True, exist_ok=True)
    (sha_b, bin_b), (sha_a, bin_a) = build(a.before), build(a.after)
    # the data set, from the newer datagen (the generator is unchanged)
    d = work / "data"
    if not d.exists():
        mesh.sh([bin_a / "omesh-datagen", "tree", d], stdout=subprocess.DEVNULL)
    data_bytes = tree_bytes(d)
    bulk = mesh.random_file(work / "bulk" / "random.bin", 1024)
    runs = {sha_b: [], sha_a: []}
    for i in range(a.rounds):
        for sha, b in ((sha_b, bin_b), (sha_a, bin_a)):
            r = one_round(b / "omesh", work, d, data_bytes, bulk)
            print(f"round {i + 1} {sha}: {r}", file=sys.stderr)
            runs[sha].append(r)
    print(f"data: {data_bytes / 2**20:.0f} MiB generated tree; replication: 1 GiB random file; {a.rounds} rounds, alternating")
    med = {}

    def table(title, keys, digits):
        print(f"\n| {title} | before ({sha_b}) | after ({sha_a}) | change |")
        print("|---|---:|---:|---:|")
        for k, name in keys:
            mb = statistics.median(r[k] for r in runs[sha_b])
            ma = statistics.median(r[k] for r in runs[sha_a])
            med[k] = (mb, ma)
            print(f"| {name} | {mb:.{digits}f} | {ma:.{digits}f} | {100 * (ma - mb) / mb:+.1f}% |")

    table("measure", [("backup_mbs", "first backup MB/s"), ("restore_mbs", "restore MB/s"), ("replicate_mbs", "replication MB/s")], 0)
    table("CPU seconds (user + system)", [("backup_cpu_s", "first backup"), ("restore_cpu_s", "restore")], 2)
    print("\nevery run (MB/s, backup / restore / replication):")
    for sha in (sha_b, sha_a):
        print(f"- {sha}: " + "; ".join(f"{r['backup_mbs']:.0f} / {r['restore_mbs']:.0f} / {r['replicate_mbs']:.0f}" for r in runs[sha]))
    print("every run (CPU s, backup / restore):")
    for sha in (sha_b, sha_a):
        print(f"- {sha}: " + "; ".join(f"{r['backup_cpu_s']:.2f} / {r['restore_cpu_s']:.2f}" for r in runs[sha]))
    (work / "format2.json").write_text(json.dumps({"runs": runs, "medians": med}, indent=1))


if __name__ == "__main__":
    main()
