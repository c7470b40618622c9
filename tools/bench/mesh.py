#!/usr/bin/env python3
"""Mesh benchmarks (run as root; not in CI).

1. backup to one peer over loopback QUIC vs the same backup into a local
   store only (target: within 1.25x);
2. bulk object transfer between two nodes on loopback next to iperf3 TCP
   on the same loopback, in the same run;
3. restore from 2 peers vs 1 peer, each peer's LNI shaped to 1 Gbit/s with
   tc in the network-namespace lab (target: at least 1.8x faster from 2).

Usage: tools/bench/mesh.py [--work DIR] [--small]
Needs: iperf3 (Debian), iproute2, the omesh release build (built here).
"""

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
OMESH = ROOT / "target/release/omesh"
LAB = ROOT / "tools/lab/lab"


def sh(cmd, **kw):
    print("+", " ".join(map(str, cmd)), file=sys.stderr)
    return subprocess.run(list(map(str, cmd)), check=True, **kw)


def drop_caches():
    subprocess.run(["sync"])
    Path("/proc/sys/vm/drop_caches").write_text("3\n")


def free_port(ip="127.0.0.1"):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind((ip, 0))
    p = s.getsockname()[1]
    s.close()
    return p


class Node:
    def __init__(self, work, name, ip, port, ca, netns=None):
        self.name, self.ip, self.port, self.netns = name, ip, port, netns
        self.dir = work / name
        self.proc = None
        sh([OMESH, "ca", "issue", "--dir", ca, "--node", name, "--out", self.dir / "tls"], stdout=subprocess.DEVNULL)

    def config(self, peers, factor=1, extra=""):
        t = f'name = "{self.name}"\ndata_dir = "{self.dir}/data"\nlisten = "{self.ip}:{self.port}"\ndomain = "d-{self.name}"\n'
        t += f'[tls]\nca = "{self.dir}/tls/ca.pem"\ncert = "{self.dir}/tls/node.pem"\nkey = "{self.dir}/tls/node.key"\ncrl = "{self.dir}/tls/crl.pem"\n'
        t += f"[replication]\nfactor = {factor}\n{extra}\n"
        for p in peers:
            t += f'[[peer]]\nname = "{p.name}"\naddress = "{p.ip}:{p.port}"\ndomain = "d-{p.name}"\n'
        (self.dir / "omesh.toml").write_text(t)

    def cmd(self, *args):
        base = [] if self.netns is None else ["ip", "netns", "exec", self.netns]
        return base + [str(OMESH)] + [str(a) for a in args] + ["--config", str(self.dir / "omesh.toml")]

    def run(self, *args, ok=(0, 3)):
        r = subprocess.run(self.cmd(*args), capture_output=True, text=True)
        if r.returncode not in ok:
            raise SystemExit(f"{self.name}: {args} failed ({r.returncode}): {r.stderr[-2000:]}")
        return r.stdout

    def start(self):
        self.proc = subprocess.Popen(self.cmd("node", "run"), stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        line = self.proc.stdout.readline()
        assert "listening on" in line, line

    def stop(self):
        if self.proc:
            self.proc.kill()
            self.proc.wait()
            self.proc = None


def gen_data(work, small):
    d = work / "data"
    if not d.exists():
        args = [ROOT / "target/release/omesh-datagen", "tree", d]
        if small:
            args += ["--small", "3000", "--medium", "300", "--large", "2"]
        sh(args, stdout=subprocess.DEVNULL)
    return d


def random_file(path, mib):
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "wb") as f:
            for _ in range(mib):
                f.write(os.urandom(1 << 20))
    return path


def bench_backup_vs_local(work, data):
    ca = work / "ca1"
    sh([OMESH, "ca", "init", "--dir", ca, "--site", "bench"], stdout=subprocess.DEVNULL)
    a = Node(work, "a", "127.0.0.1", free_port(), ca)
    b = Node(work, "b", "127.0.0.2", free_port("127.0.0.2"), ca)
    a.config([b])
    b.config([a])
    b.start()
    try:
        store = work / "local-store"
        sh([OMESH, "init", "--store", store], stdout=subprocess.DEVNULL)
        drop_caches()
        t = time.monotonic()
        sh([OMESH, "backup", "--store", store, data], stdout=subprocess.DEVNULL)
        local = time.monotonic() - t
        drop_caches()
        t = time.monotonic()
        rep = json.loads(a.run("backup", data, "--json"))
        mesh = time.monotonic() - t
        assert rep["protected"], rep
        sent = sum(r["bytes_sent"] for r in rep["replicas"] if r["ok"])
        return {"local_s": local, "mesh_s": mesh, "ratio": mesh / local, "bytes_sent": sent}
    finally:
        b.stop()


def bench_bulk(work):
    ca = work / "ca2"
    sh([OMESH, "ca", "init", "--dir", ca, "--site", "bench"], stdout=subprocess.DEVNULL)
    a = Node(work, "bulk-a", "127.0.0.1", free_port(), ca)
    b = Node(work, "bulk-b", "127.0.0.3", free_port("127.0.0.3"), ca)
    a.config([b], extra="[storage]\n")
    b.config([a])
    f = random_file(work / "bulk" / "random.bin", 2048)
    # back up locally first (no peer up), then time only the transfer
    a.run("backup", f.parent, "--json", ok=(0, 3, 6))  # 6: not replicated yet, as intended
    b.start()
    try:
        rep = json.loads(a.run("backup", f.parent, "--json"))
        r = [x for x in rep["replicas"] if x["ok"]][0]
        quic_gbps = r["bytes_sent"] * 8 / r["seconds"] / 1e9
    finally:
        b.stop()
    srv = subprocess.Popen(["iperf3", "-s", "-1", "-B", "127.0.0.1", "-p", "5299"], stdout=subprocess.DEVNULL)
    time.sleep(0.5)  # benchmark harness only: iperf3 has no readiness signal
    out = json.loads(subprocess.run(["iperf3", "-c", "127.0.0.1", "-p", "5299", "-t", "8", "-J"], capture_output=True, text=True).stdout)
    srv.wait()
    tcp_gbps = out["end"]["sum_received"]["bits_per_second"] / 1e9
    return {"quic_gbps": quic_gbps, "iperf3_tcp_gbps": tcp_gbps, "ratio": quic_gbps / tcp_gbps, "bytes": r["bytes_sent"], "seconds": r["seconds"]}


def bench_restore_2_vs_1(work, mib, rate):
    prefix = "omb"
    data = random_file(work / "restore-src" / "random.bin", mib)
    work = work / f"restore-{rate}"
    work.mkdir(parents=True, exist_ok=True)
    sh([LAB, "up", "--prefix", prefix, "--servers", "4", "--shape", "--lni-rate", rate], stdout=subprocess.DEVNULL)
    try:
        ca = work / "ca3"
        sh([OMESH, "ca", "init", "--dir", ca, "--site", "bench"], stdout=subprocess.DEVNULL)
        n = [Node(work, f"s{i}", f"10.20.0.{10 + i}", 7443, ca, netns=f"{prefix}s{i}") for i in (1, 2, 3)]
        n[0].config([n[1], n[2]], factor=2)
        n[1].config([n[0]])
        n[2].config([n[0]])
        # s1 backs up to s2 and s3: both hold everything
        n[1].start()
        n[2].start()
        rep = json.loads(n[0].run("backup", data.parent, "--json"))
        assert rep["protected"], rep
        n[0].run("key", "export", "--out", work / "s1.key")
        # a new server in s4 restores, from s2 only, then from s2 and s3;
        # every LNI sends at most `rate`
        results = {}
        for label, peers in (("1 peer", [n[1]]), ("2 peers", [n[1], n[2]])):
            r = Node(work, f"r{len(peers)}", "10.20.0.14", 7443, ca, netns=f"{prefix}s4")
            r.config(peers)
            r.run("key", "import", work / "s1.key")
            target = work / f"target-{len(peers)}"
            shutil.rmtree(target, ignore_errors=True)
            drop_caches()
            t = time.monotonic()
            out = json.loads(r.run("restore", "latest", "--source", "s1", "--target", target, "--json"))
            secs = time.monotonic() - t
            results[label] = {"seconds": secs, "mbit_s": mib * 8 * 1.048576 / secs, "sources": out.get("sources")}
            shutil.rmtree(target, ignore_errors=True)
        for x in n:
            x.stop()
        results["speedup"] = results["1 peer"]["seconds"] / results["2 peers"]["seconds"]
        return results
    finally:
        subprocess.run([LAB, "down", "--prefix", prefix])


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", default="/var/tmp/omesh-bench-mesh")
    ap.add_argument("--small", action="store_true")
    ap.add_argument("--skip", default="", help="comma list of: backup,bulk,restore")
    a = ap.parse_args()
    work = Path(a.work)
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    sh(["cargo", "build", "--release", "-p", "omesh", "-p", "omesh-tools"], cwd=ROOT)
    skip = set(a.skip.split(","))
    res = {}
    if "backup" not in skip:
        res["backup_to_one_peer_vs_local"] = bench_backup_vs_local(work, gen_data(work, a.small))
        print(json.dumps(res["backup_to_one_peer_vs_local"]), flush=True)
    if "bulk" not in skip:
        res["bulk_transfer_vs_iperf3"] = bench_bulk(work)
        print(json.dumps(res["bulk_transfer_vs_iperf3"]), flush=True)
    if "restore" not in skip:
        for rate in ("1gbit", "250mbit"):
            res[f"restore_2_vs_1_peers_{rate}"] = bench_restore_2_vs_1(work, 256 if a.small else 1024, rate)
            print(json.dumps(res[f"restore_2_vs_1_peers_{rate}"]), flush=True)
    print(json.dumps(res, indent=2))
    (work / "results.json").write_text(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
