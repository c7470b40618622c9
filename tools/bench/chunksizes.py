#!/usr/bin/env python3
"""Measure omesh chunk-size candidates on the benchmark data.

For each MIN,AVG,MAX candidate: a fresh store, a first backup of the
generated tree, the datagen "day of changes", a second backup. Reports the
store size, how much the second backup added, the object count and the
first backup's time. The default sizes in node/core/src/chunker.rs were chosen
from this table (see BENCHMARKS.md, "Chunk size").

Usage: tools/bench/chunksizes.py [--work DIR] [--small]
"""

import argparse
import json
import os
import shutil
import subprocess
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CANDIDATES = [
    (64 << 10, 256 << 10, 1 << 20),
    (128 << 10, 512 << 10, 2 << 20),
    (256 << 10, 1 << 20, 4 << 20),
    (512 << 10, 2 << 20, 8 << 20),
]


def run(cmd):
    return subprocess.run(list(map(str, cmd)), check=True, capture_output=True, text=True).stdout


def du(p):
    return sum(os.lstat(os.path.join(d, f)).st_size for d, _, fs in os.walk(p) for f in fs)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--work", default="/var/tmp/omesh-chunks")
    ap.add_argument("--small", action="store_true")
    a = ap.parse_args()
    work = Path(a.work)
    work.mkdir(parents=True, exist_ok=True)
    subprocess.run(["cargo", "build", "--release", "-p", "omesh", "-p", "omesh-tools"], cwd=ROOT, check=True)
    omesh = ROOT / "target/release/omesh"
    gen = ROOT / "target/release/omesh-datagen"
    rows = []
    for mn, avg, mx in CANDIDATES:
        data = work / "data"
        if data.exists():
            shutil.rmtree(data)
        args = [gen, "tree", data] + (["--small", "3000", "--medium", "300", "--large", "2"] if a.small else [])
        run(args)
        store = work / "store"
        if store.exists():
            shutil.rmtree(store)
        run([omesh, "init", "--store", store, "--chunk-sizes", f"{mn},{avg},{mx}"])
        t0 = time.monotonic()
        b1 = json.loads(run([omesh, "backup", "--store", store, "--json", data]))
        t1 = time.monotonic() - t0
        touched = json.loads(run([gen, "mutate", data, "--seed", "2"]))["touched_bytes"]
        b2 = json.loads(run([omesh, "backup", "--store", store, "--json", data]))
        st = json.loads(run([omesh, "verify", "--store", store, "--json", "--read-data"]))
        rows.append({
            "sizes": f"{mn >> 10}K/{avg >> 10}K/{mx >> 10}K",
            "store_mib": du(store / "packs") / 2**20,
            "first_s": t1,
            "objects": st["objects_read"],
            "change_added_kib": b2["bytes_added"] / 1024,
            "touched_kib": touched / 1024,
        })
        print(rows[-1], flush=True)
    print("\n| min/avg/max | store MiB | objects | first backup s | added after change KiB (touched KiB) |")
    print("|---|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['sizes']} | {r['store_mib']:.1f} | {r['objects']} | {r['first_s']:.1f} | {r['change_added_kib']:.0f} ({r['touched_kib']:.0f}) |")


if __name__ == "__main__":
    main()
