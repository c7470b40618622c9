#!/usr/bin/env python3
"""S3 benchmark: backup and restore through a Garage server on loopback,
next to `rclone copy` of the same data to the same server and restic's S3
backend, in the same run (not in CI).

Usage: tools/bench/s3.py [--work DIR] [--small]
Needs: garage (cargo install garage --version 2.5.0), rclone and restic
(Debian packages).
"""

import argparse
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
OMESH = ROOT / "target/release/omesh"


def sh(cmd, **kw):
    print("+", " ".join(map(str, cmd)), file=sys.stderr)
    return subprocess.run(list(map(str, cmd)), check=True, **kw)


def port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def du(p):
    return sum(os.lstat(os.path.join(d, f)).st_size for d, _, fs in os.walk(p) for f in fs)


def drop_caches():
    subprocess.run(["sync"])
    Path("/proc/sys/vm/drop_caches").write_text("3\n")


class Garage:
    def __init__(self, work):
        self.dir = work / "garage"
        self.dir.mkdir(parents=True)
        rpc, s3, admin = port(), port(), port()
        self.cfg = self.dir / "garage.toml"
        self.cfg.write_text(
            f'metadata_dir = "{self.dir}/meta"\ndata_dir = "{self.dir}/data"\ndb_engine = "sqlite"\nreplication_factor = 1\n'
            f'rpc_bind_addr = "127.0.0.1:{rpc}"\nrpc_public_addr = "127.0.0.1:{rpc}"\nrpc_secret = "{os.urandom(32).hex()}"\n'
            f'[s3_api]\ns3_region = "garage"\napi_bind_addr = "127.0.0.1:{s3}"\nroot_domain = ".s3.garage.localhost"\n'
            f'[admin]\napi_bind_addr = "127.0.0.1:{admin}"\n'
        )
        self.endpoint = f"http://127.0.0.1:{s3}"
        self.proc = subprocess.Popen(["garage", "-c", self.cfg, "server"], stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True, env={**os.environ, "RUST_LOG": "garage=info"})
        ready = threading.Event()

        def watch():
            for line in self.proc.stderr:
                if "S3 API server listening" in line:
                    ready.set()

        threading.Thread(target=watch, daemon=True).start()
        assert ready.wait(60), "garage did not start"
        node = self.cli("node", "id", "-q").strip().split("@")[0]
        self.cli("layout", "assign", "-z", "dc1", "-c", "100G", node)
        self.cli("layout", "apply", "--version", "1")
        key = self.cli("key", "create", "bench")
        self.key = re.search(r"Key ID:\s+(\S+)", key).group(1)
        self.secret = re.search(r"Secret key:\s+(\S+)", key).group(1)
        for b in ("omesh", "restic", "rclone"):
            self.cli("bucket", "create", b)
            self.cli("bucket", "allow", "--read", "--write", "--owner", b, "--key", "bench")

    def cli(self, *args):
        return subprocess.run(["garage", "-c", self.cfg, *args], check=True, capture_output=True, text=True).stdout

    def env(self):
        return {"AWS_ACCESS_KEY_ID": self.key, "AWS_SECRET_ACCESS_KEY": self.secret, "AWS_DEFAULT_REGION": "garage", "AWS_REGION": "garage"}

    def stop(self):
        self.proc.kill()
        self.proc.wait()


def timed(cmd, env):
    drop_caches()
    e = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    e.update(env)
    t = time.monotonic()
    r = subprocess.run(list(map(str, cmd)), env=e, capture_output=True, text=True)
    secs = time.monotonic() - t
    if r.returncode not in (0,):
        raise SystemExit(f"{cmd[0]} failed ({r.returncode}): {r.stderr[-2000:]}")
    return secs


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", default="/var/tmp/omesh-bench-s3")
    ap.add_argument("--small", action="store_true")
    a = ap.parse_args()
    work = Path(a.work)
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    sh(["cargo", "build", "--release", "-p", "omesh", "-p", "omesh-tools"], cwd=ROOT)
    data = work / "data"
    args = ["--small", "2000", "--medium", "200", "--large", "2"] if a.small else ["--small", "10000", "--medium", "1000", "--large", "6"]
    sh([ROOT / "target/release/omesh-datagen", "tree", data, *args], stdout=subprocess.DEVNULL)
    size = du(data)
    g = Garage(work)
    try:
        env = g.env()
        rows = []
        # omesh: a node whose only replica target is the bucket
        sh([OMESH, "ca", "init", "--dir", work / "ca", "--site", "bench"], stdout=subprocess.DEVNULL)
        for n in ("src", "new"):
            sh([OMESH, "ca", "issue", "--dir", work / "ca", "--node", n, "--out", work / n / "tls"], stdout=subprocess.DEVNULL)
            (work / n / "omesh.toml").write_text(
                f'name = "{n}"\ndata_dir = "{work / n}/data"\nlisten = "127.0.0.1:{port()}"\n'
                f'[tls]\nca = "{work / n}/tls/ca.pem"\ncert = "{work / n}/tls/node.pem"\nkey = "{work / n}/tls/node.key"\ncrl = "{work / n}/tls/crl.pem"\n'
                f'[replication]\nfactor = 1\n[[s3]]\nname = "garage"\nendpoint = "{g.endpoint}"\nbucket = "omesh"\nregion = "garage"\npath_style = true\n'
            )
        cfg = work / "src" / "omesh.toml"
        rows.append(("omesh", "backup (chunk, dedup, compress, encrypt, upload)", timed([OMESH, "backup", "--config", cfg, data], env)))
        sh([OMESH, "key", "export", "--config", cfg, "--out", work / "src.key"])
        sh([OMESH, "key", "import", work / "src.key", "--config", work / "new" / "omesh.toml"])
        rows.append(("omesh", "restore on a new node from the bucket", timed([OMESH, "restore", "--config", work / "new" / "omesh.toml", "--source", "src", "--from", "s3", "latest", "--target", work / "r-omesh"], env)))
        # rclone: plain copy of the files
        rc = {"RCLONE_CONFIG_G_TYPE": "s3", "RCLONE_CONFIG_G_PROVIDER": "Other", "RCLONE_CONFIG_G_ENDPOINT": g.endpoint, "RCLONE_CONFIG_G_ACCESS_KEY_ID": g.key, "RCLONE_CONFIG_G_SECRET_ACCESS_KEY": g.secret, "RCLONE_CONFIG_G_REGION": "garage", **env}
        rows.append(("rclone", "copy (no dedup, no encryption)", timed(["rclone", "copy", "--transfers", "8", data, "G:rclone/data"], rc)))
        rows.append(("rclone", "copy back", timed(["rclone", "copy", "--transfers", "8", "G:rclone/data", work / "r-rclone"], rc)))
        # restic: its S3 backend
        re_env = {"RESTIC_PASSWORD": "bench", "RESTIC_REPOSITORY": f"s3:{g.endpoint}/restic", "RESTIC_CACHE_DIR": str(work / "restic-cache"), **env}
        subprocess.run(["restic", "init", "--repository-version", "2"], env={**os.environ, **re_env}, check=True, capture_output=True)
        rows.append(("restic", "backup to S3", timed(["restic", "backup", data], re_env)))
        rows.append(("restic", "restore from S3", timed(["restic", "restore", "latest", "--target", work / "r-restic"], re_env)))
        print(f"\nData: {size / 2**20:.0f} MiB generated tree; Garage 2.5.0 on loopback\n")
        print("| tool | operation | seconds | MB/s |\n|---|---|---:|---:|")
        for tool, op, secs in rows:
            print(f"| {tool} | {op} | {secs:.2f} | {size / secs / 1e6:.0f} |")
        (work / "results.json").write_text(json.dumps({"bytes": size, "rows": rows}, indent=2))
    finally:
        g.stop()


if __name__ == "__main__":
    main()
