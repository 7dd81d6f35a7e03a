#!/usr/bin/env python3
"""Start-to-exit latency of `true` in a busybox container, three ways, interleaved:

    pybuild run --rm --network none IMG true
    runc run ID            on the bundle `pybuild bundle IMG DIR true` wrote
    buildah run --network none CTR true   (buildah from an oci-archive of the image)

and, as floors for pybuild, the same interpreter doing nothing (`python -c pass`)
and only importing the command line (`python -c "import builder.cli"`, with
pybuild's PYTHONPATH): what is left above them is pybuild's own work.

Prints median and min-max of N runs (default 20) and the ratios to runc.
Everything lives in a temporary directory that is removed at the end.

    python3 bench/bench_run.py [-n 20] [--keep-pyc]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def timed(argv: list[str], cwd: Path | None = None, env: dict | None = None) -> float:
    t0 = time.perf_counter()
    p = subprocess.run(argv, cwd=cwd, env=env, stdin=subprocess.DEVNULL,
                       stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    dt = time.perf_counter() - t0
    if p.returncode != 0:
        sys.exit(f"{' '.join(argv)} failed ({p.returncode}): {p.stderr.decode(errors='replace')}")
    return dt


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-n", type=int, default=20)
    ap.add_argument("--keep-pyc", action="store_true",
                    help="let Python write .pyc files (PYTHONDONTWRITEBYTECODE unset)")
    args = ap.parse_args()
    for tool in ("runc", "buildah"):
        if shutil.which(tool) is None:
            sys.exit(f"{tool} is not installed: run scripts/setup.sh")
    work = Path(tempfile.mkdtemp(prefix="bench-run-"))
    env = dict(os.environ, PYTHONPATH=str(REPO))
    if args.keep_pyc:
        env.pop("PYTHONDONTWRITEBYTECODE", None)
    pb = [sys.executable, "-m", "builder", "--root", str(work / "store")]
    bh = ["buildah", "--root", str(work / "buildah"), "--runroot", str(work / "buildah-run")]
    ctr = None
    try:
        subprocess.run(["sh", str(REPO / "sample-images/busybox/mkrootfs.sh"), str(work / "rootfs")],
                       check=True, stdout=subprocess.DEVNULL)
        subprocess.run(["tar", "-C", str(work / "rootfs"), "-cf", str(work / "bb.tar"), "."], check=True)
        subprocess.run([*pb, "import", str(work / "bb.tar"), "busybox"], check=True, env=env,
                       stdout=subprocess.DEVNULL)
        subprocess.run([*pb, "bundle", "busybox", str(work / "bundle"), "true"], check=True, env=env,
                       stdout=subprocess.DEVNULL)
        subprocess.run([*pb, "save", "--format", "oci", "-o", str(work / "bb-oci.tar"), "busybox"],
                       check=True, env=env)
        ctr = subprocess.run([*bh, "from", "--pull-never", f"oci-archive:{work / 'bb-oci.tar'}"],
                             check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1]
        cmds = {
            "pybuild run": lambda i: timed([*pb, "run", "--rm", "--network", "none", "busybox", "true"],
                                           env=env),
            "runc run": lambda i: timed(["runc", "run", f"bench-{os.getpid()}-{i}"], cwd=work / "bundle"),
            "buildah run": lambda i: timed([*bh, "run", "--network", "none", ctr, "true"]),
        }
        floors = {  # what pybuild run cannot go below: interpreter start, importing the CLI
            "python -c pass": lambda i: timed([sys.executable, "-c", "pass"], env=env),
            "import cli": lambda i: timed([sys.executable, "-c", "import builder.cli"], env=env),
        }
        cmds.update(floors)
        for f in cmds.values():  # warm-up: snapshots unpacked, caches filled
            f(-1)
        times: dict[str, list[float]] = {k: [] for k in cmds}
        for i in range(args.n):
            for name, f in cmds.items():
                times[name].append(f(i))
        base = statistics.median(times["runc run"])
        print(f"start-to-exit of `true`, {args.n} runs each, interleaved "
              f"({'with' if args.keep_pyc else 'without'} .pyc caching)")
        print(f"{'':14} {'median':>9} {'min':>9} {'max':>9} {'vs runc':>8}")
        for name, ts in times.items():
            if name == next(iter(floors)):
                print("floors (same interpreter and PYTHONPATH as pybuild run):")
            med = statistics.median(ts)
            print(f"{name:14} {med * 1000:8.1f}ms {min(ts) * 1000:8.1f}ms {max(ts) * 1000:8.1f}ms "
                  f"{med / base:7.2f}x")
    finally:
        if ctr:
            subprocess.run([*bh, "rm", ctr], capture_output=True)
            subprocess.run([*bh, "rmi", "-a", "-f"], capture_output=True)
        subprocess.run(["umount", "-R", str(work / "buildah" / "overlay")], capture_output=True)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
