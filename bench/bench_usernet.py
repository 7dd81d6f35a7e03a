#!/usr/bin/env python3
"""The private network's two backends side by side: the bridge (veth + NAT, network.py) and
the user-mode stack of rootless mode (slirp4netns, usernet.py), chosen through
PYBUILD_NETWORK_BACKEND:

    pybuild run --rm IMG true                 start-to-exit, N runs interleaved (+ --network none)
    50 MB host -> container through -p 127.0.0.1:PORT:80, received by `nc -l -p 80 | wc -c`

Prints median and min-max. Runs in a network namespace of its own (`ip netns add`), with
its store in a temporary directory; both are removed at the end.

    python3 bench/bench_usernet.py [-n 7] [--mb 50] [--transfers 3]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchlib import timed, unmount_under  # noqa: E402

REPO = Path(__file__).resolve().parent.parent

CLIENT = r"""
import socket, sys, time
port, size = int(sys.argv[1]), int(sys.argv[2])
chunk = b"x" * (1 << 20)
s = socket.create_connection(("127.0.0.1", port))
t = time.perf_counter()
left = size
while left:
    n = s.send(chunk[:min(left, len(chunk))])
    left -= n
s.shutdown(socket.SHUT_WR)
while s.recv(65536):     # the container's nc closes once it has read everything
    pass
print(time.perf_counter() - t)
"""


def show(name: str, xs: list[float], unit: str, scale: float = 1.0) -> None:
    v = [x * scale for x in xs]
    print(f"  {name:<34} median {statistics.median(v):8.1f} {unit}   "
          f"(min {min(v):.1f}, max {max(v):.1f}, n={len(v)})")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-n", type=int, default=7, help="runs of `run --rm true` per backend")
    ap.add_argument("--mb", type=int, default=50, help="MB per transfer")
    ap.add_argument("--transfers", type=int, default=3, help="transfers per backend")
    args = ap.parse_args()
    for tool in ("ip", "slirp4netns", "iptables"):
        if shutil.which(tool) is None:
            sys.exit(f"{tool} is not installed")
    work = Path(tempfile.mkdtemp(prefix="bench-usernet-"))
    ns = f"pbbench{os.getpid()}"
    subprocess.run(["ip", "netns", "add", ns], check=True)
    base_env = dict(os.environ, PYTHONPATH=str(REPO))
    inns = ["ip", "netns", "exec", ns]
    pb = [*inns, sys.executable, "-m", "builder", "--root", str(work / "store")]

    def env(backend: str) -> dict[str, str]:
        return dict(base_env, PYBUILD_NETWORK_BACKEND=backend)

    try:
        subprocess.run([*inns, "ip", "link", "set", "lo", "up"], check=True)
        subprocess.run(["sh", str(REPO / "sample-images/busybox/mkrootfs.sh"),
                        str(work / "rootfs")], check=True, capture_output=True)
        with tarfile.open(work / "bb.tar", "w") as t:
            t.add(work / "rootfs", arcname=".")
        subprocess.run([*pb, "import", str(work / "bb.tar"), "busybox"], check=True,
                       env=base_env, capture_output=True)
        for backend in ("bridge", "user"):   # warm-up (the bridge's first set-up, page cache)
            timed([*pb, "run", "--rm", "busybox", "true"], env(backend))

        runs: dict[str, list[float]] = {"bridge": [], "user": [], "none": []}
        for _ in range(args.n):
            for backend in ("bridge", "user"):
                runs[backend].append(timed([*pb, "run", "--rm", "busybox", "true"], env(backend)))
            runs["none"].append(timed([*pb, "run", "--rm", "--network", "none", "busybox", "true"],
                                      base_env))
        print(f"pybuild run --rm busybox true ({args.n} runs each, interleaved)")
        show("private network, bridge", runs["bridge"], "ms", 1000)
        show("private network, user (slirp4netns)", runs["user"], "ms", 1000)
        show("--network none", runs["none"], "ms", 1000)
        print(f"  user / bridge: {statistics.median(runs['user']) / statistics.median(runs['bridge']):.2f}x")

        size = args.mb << 20
        rates: dict[str, list[float]] = {"bridge": [], "user": []}
        port = 18700
        for i in range(args.transfers):
            for backend in ("bridge", "user"):
                port += 1
                cid = subprocess.run(
                    [*pb, "run", "-d", "-p", f"127.0.0.1:{port}:80", "busybox", "sh", "-c",
                     "nc -l -p 80 | wc -c"], env=env(backend), check=True,
                    capture_output=True, text=True).stdout.strip()
                try:
                    time.sleep(1.0)   # nc listening (a slirp forward accepts before the guest does)
                    out = subprocess.run([*inns, sys.executable, "-c", CLIENT, str(port), str(size)],
                                         check=True, capture_output=True, text=True).stdout
                    secs = float(out)
                    subprocess.run([*pb, "wait", cid], env=base_env, check=True, capture_output=True)
                    got = subprocess.run([*pb, "logs", cid], env=base_env, check=True,
                                         capture_output=True, text=True).stdout.strip()
                    if got != str(size):
                        sys.exit(f"{backend}: the container received {got} bytes, not {size}")
                    rates[backend].append(args.mb / secs)
                finally:
                    subprocess.run([*pb, "rm", "-f", cid], env=base_env, capture_output=True)
        print(f"{args.mb} MB host -> container through a published port ({args.transfers} each)")
        show("bridge (DNAT)", rates["bridge"], "MB/s")
        show("user (slirp4netns hostfwd)", rates["user"], "MB/s")
    finally:
        unmount_under(work)
        subprocess.run(["ip", "netns", "del", ns], capture_output=True)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
