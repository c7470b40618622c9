#!/usr/bin/env python3
"""Local backup benchmark: omesh next to restic, borg, rustic and rsync.

One command builds omesh in release mode, prepares the data sets and runs,
for every tool on the same data in the same run:

  1. first backup
  2. backup after a change (the datagen "day of changes", or linux 6.1 -> 6.12)
  3. unchanged re-backup
  4. restore of the latest snapshot onto a freshly made ext4 file system
     (a loop device, as on a replacement server), timed until the data is
     on disk (restore + sync), then compared with the source

It records wall time, CPU time (user+sys), peak RSS of the tool's process
tree, and the repository size after each step, and prints a Markdown table
(and writes JSON next to it). Page caches are dropped before every measured
step when running as root, so every tool reads from disk.

Usage:
  tools/bench/local.py [--work DIR] [--dataset gen|kernel|all] [--small]
                       [--tools omesh,restic,borg,rustic,rsync]

Needs: restic, borg, rsync (Debian packages), rustic (cargo install
rustic-rs), linux-source-6.1 and linux-source-6.12 (Debian packages) for
the kernel data set. Not run in CI.
"""

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PASSWORD = "omesh-benchmark-password"


def sh(cmd, **kw):
    print("+", " ".join(map(str, cmd)), file=sys.stderr)
    return subprocess.run(list(map(str, cmd)), check=True, **kw)


def drop_caches():
    if os.geteuid() == 0:
        subprocess.run(["sync"], check=False)
        try:
            Path("/proc/sys/vm/drop_caches").write_text("3\n")
        except OSError:
            pass


def measure(cmd, env=None, cwd=None):
    """Run cmd; return (wall s, cpu s, peak RSS MiB) of its process."""
    drop_caches()
    full_env = dict(os.environ)
    full_env.update(env or {})
    t0 = time.monotonic()
    p = subprocess.Popen(list(map(str, cmd)), env=full_env, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, ru = os.wait4(p.pid, 0)
    wall = time.monotonic() - t0
    err = p.stderr.read().decode(errors="replace")
    code = os.waitstatus_to_exitcode(status)
    if code != 0:
        raise SystemExit(f"{cmd[0]} failed ({code}): {' '.join(map(str, cmd))}\n{err[-3000:]}")
    return wall, ru.ru_utime + ru.ru_stime, ru.ru_maxrss / 1024.0


def du(path):
    total = 0
    for dirpath, _, files in os.walk(path):
        for f in files:
            try:
                total += os.lstat(os.path.join(dirpath, f)).st_size
            except OSError:
                pass
    return total


class Tool:
    name = ""

    def __init__(self, work):
        self.repo = work / "repos" / self.name
        self.env = {}

    def reset(self):
        if self.repo.exists():
            shutil.rmtree(self.repo)
        self.repo.parent.mkdir(parents=True, exist_ok=True)


class Omesh(Tool):
    name = "omesh"

    def __init__(self, work, binary):
        super().__init__(work)
        self.bin = binary

    def init(self):
        sh([self.bin, "init", "--store", self.repo, "--source", "bench"], stdout=subprocess.DEVNULL)

    def backup(self, src):
        return [self.bin, "backup", "--store", self.repo, src]

    def restore(self, target):
        return [self.bin, "restore", "--store", self.repo, "latest", "--target", target]

    def restored_path(self, target, src):
        return target / Path(src).relative_to("/")


class Restic(Tool):
    name = "restic"

    def __init__(self, work):
        super().__init__(work)
        self.env = {"RESTIC_PASSWORD": PASSWORD, "RESTIC_CACHE_DIR": str(work / "cache" / "restic")}

    def init(self):
        sh(["restic", "init", "--repo", self.repo, "--repository-version", "2"], env={**os.environ, **self.env}, stdout=subprocess.DEVNULL)

    def backup(self, src):
        return ["restic", "--repo", self.repo, "backup", "--compression", "auto", src]

    def restore(self, target):
        return ["restic", "--repo", self.repo, "restore", "latest", "--target", target]

    def restored_path(self, target, src):
        return target / Path(src).relative_to("/")


class Rustic(Tool):
    name = "rustic"

    def __init__(self, work):
        super().__init__(work)
        self.env = {"RUSTIC_PASSWORD": PASSWORD, "RUSTIC_CACHE_DIR": str(work / "cache" / "rustic"), "RUSTIC_NO_PROGRESS": "true"}

    def init(self):
        sh(["rustic", "-r", self.repo, "init"], env={**os.environ, **self.env}, stdout=subprocess.DEVNULL)

    def backup(self, src):
        return ["rustic", "-r", self.repo, "backup", src]

    def restore(self, target):
        return ["rustic", "-r", self.repo, "restore", "latest", target]

    def restored_path(self, target, src):
        return target / Path(src).relative_to("/")


class Borg(Tool):
    name = "borg"

    def __init__(self, work):
        super().__init__(work)
        self.env = {"BORG_PASSPHRASE": PASSWORD, "BORG_BASE_DIR": str(work / "cache" / "borg")}
        self.n = 0

    def init(self):
        sh(["borg", "init", "--encryption=repokey-blake2", self.repo], env={**os.environ, **self.env}, stdout=subprocess.DEVNULL)

    def backup(self, src):
        self.n += 1
        return ["borg", "create", "--compression", "zstd,3", f"{self.repo}::a{self.n}", src]

    def restore(self, target):
        target.mkdir(parents=True, exist_ok=True)
        self.cwd = target
        return ["borg", "extract", f"{self.repo}::a{self.n}"]

    def restored_path(self, target, src):
        return target / Path(src).relative_to("/")


class Rsync(Tool):
    name = "rsync"

    def init(self):
        self.repo.mkdir(parents=True)

    def backup(self, src):
        return ["rsync", "-aHAX", "--delete", f"{src}/", f"{self.repo}/copy/"]

    def restore(self, target):
        return ["rsync", "-aHAX", f"{self.repo}/copy/", f"{target}/"]

    def restored_path(self, target, src):
        return target


class FreshFs:
    """A new ext4 file system on a loop device, mounted at `mnt`."""

    def __init__(self, work, size_bytes):
        self.img = work / "restore-fs.img"
        self.mnt = work / "restore-mnt"
        self.mnt.mkdir(parents=True, exist_ok=True)
        if self.img.exists():
            self.img.unlink()
        with open(self.img, "wb") as f:
            f.truncate(int(size_bytes))
        sh(["mkfs.ext4", "-q", "-F", self.img])
        sh(["mount", "-o", "loop", self.img, self.mnt])

    def close(self):
        subprocess.run(["umount", str(self.mnt)], check=False)
        self.img.unlink(missing_ok=True)


def same_tree(a, b):
    r = subprocess.run(["diff", "-rq", "--no-dereference", str(a), str(b)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    return r.returncode == 0


def prepare_gen(work, small):
    d = work / "data" / "gen"
    if d.exists():
        shutil.rmtree(d)
    args = [ROOT / "target/release/omesh-datagen", "tree", d]
    if small:
        args += ["--small", "3000", "--medium", "300", "--large", "2"]
    sh(args)
    return d


def mutate_gen(d):
    sh([ROOT / "target/release/omesh-datagen", "mutate", d, "--seed", "2"])


def kernel_tree(version, work):
    tarball = Path(f"/usr/src/linux-source-{version}.tar.xz")
    if not tarball.exists():
        raise SystemExit(f"{tarball} missing: apt-get install linux-source-{version}")
    out = work / "data" / f"linux-{version}"
    if not out.exists():
        out.mkdir(parents=True)
        sh(["tar", "-xJf", tarball, "-C", out, "--strip-components=1"])
    return out


def run_dataset(label, src, change, tools, work, results):
    for t in tools:
        t.reset()
        t.init()
    phases = [("first backup", None), ("after change", change), ("unchanged", None)]
    for phase, prep in phases:
        if prep:
            prep()
        for t in tools:
            wall, cpu, rss = measure(t.backup(src), env=t.env)
            results.append({"dataset": label, "tool": t.name, "phase": phase, "wall_s": wall, "cpu_s": cpu, "rss_mib": rss, "repo_bytes": du(t.repo)})
    for t in tools:
        fs = FreshFs(work, du(src) * 1.6 + (1 << 30))
        try:
            target = fs.mnt / "r"
            target.mkdir(parents=True)
            t.cwd = None
            cmd = t.restore(target)
            # timed until the restored data is durable: restore, then sync
            wrapped = ["sh", "-c", '"$@" && sync', "restore"] + [str(c) for c in cmd]
            wall, cpu, rss = measure(wrapped, env=t.env, cwd=getattr(t, "cwd", None))
            ok = same_tree(src, t.restored_path(target, src))
            results.append({"dataset": label, "tool": t.name, "phase": "restore", "wall_s": wall, "cpu_s": cpu, "rss_mib": rss, "repo_bytes": du(t.repo), "identical": ok})
        finally:
            fs.close()


def table(results, data_bytes):
    lines = ["| data | tool | phase | wall s | MB/s | CPU s | peak RSS MiB | repo MiB |", "|---|---|---|---:|---:|---:|---:|---:|"]
    for r in results:
        size = data_bytes.get(r["dataset"], 0)
        mbps = size / r["wall_s"] / 1e6 if r["phase"] in ("first backup", "restore") and r["wall_s"] > 0 else None
        ident = "" if r.get("identical", True) else " (NOT IDENTICAL)"
        lines.append(
            f"| {r['dataset']} | {r['tool']} | {r['phase']}{ident} | {r['wall_s']:.2f} | {'' if mbps is None else f'{mbps:.0f}'} | {r['cpu_s']:.2f} | {r['rss_mib']:.0f} | {r['repo_bytes'] / 2**20:.0f} |"
        )
    return "\n".join(lines)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", default="/var/tmp/omesh-bench")
    ap.add_argument("--dataset", default="all", choices=["gen", "kernel", "all"])
    ap.add_argument("--small", action="store_true", help="a small generated data set, for trying the harness")
    ap.add_argument("--tools", default="omesh,restic,borg,rustic,rsync")
    args = ap.parse_args()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    sh(["cargo", "build", "--release", "-p", "omesh", "-p", "omesh-tools"], cwd=ROOT)
    omesh_bin = ROOT / "target/release/omesh"
    names = args.tools.split(",")
    all_tools = {"omesh": lambda: Omesh(work, omesh_bin), "restic": lambda: Restic(work), "borg": lambda: Borg(work), "rustic": lambda: Rustic(work), "rsync": lambda: Rsync(work)}
    tools = [all_tools[n]() for n in names]
    results = []
    data_bytes = {}
    if args.dataset in ("gen", "all"):
        d = prepare_gen(work, args.small)
        data_bytes["gen"] = du(d)
        run_dataset("gen", d, lambda: mutate_gen(d), tools, work, results)
    if args.dataset in ("kernel", "all"):
        k1 = kernel_tree("6.1", work)
        k2 = kernel_tree("6.12", work)
        src = work / "data" / "kernel"
        if src.exists():
            shutil.rmtree(src)
        sh(["cp", "-a", k1, src])
        data_bytes["kernel"] = du(src)
        run_dataset("kernel", src, lambda: sh(["rsync", "-a", "--delete", f"{k2}/", f"{src}/"]), tools, work, results)
    versions = {}
    for cmd in (["restic", "version"], ["borg", "--version"], ["rustic", "--version"], ["rsync", "--version"], [str(omesh_bin), "--version"]):
        try:
            versions[cmd[0].split("/")[-1]] = subprocess.run(cmd, capture_output=True, text=True).stdout.splitlines()[0]
        except (OSError, IndexError):
            pass
    machine = f"{platform.node()}: {os.cpu_count()} cores, {os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / 2**30:.0f} GiB RAM, {platform.platform()}"
    md = table(results, data_bytes)
    print(f"\nMachine: {machine}\nVersions: {json.dumps(versions)}\nData: " + ", ".join(f"{k} {v / 2**20:.0f} MiB" for k, v in data_bytes.items()) + "\n\n" + md)
    (work / "results.json").write_text(json.dumps({"machine": machine, "versions": versions, "data_bytes": data_bytes, "results": results}, indent=2))


if __name__ == "__main__":
    main()
