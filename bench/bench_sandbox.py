"""Start-to-exit latency of `true` in a container: pybuild's sandbox vs runc vs a bare
`unshare ... chroot` (the floor), on the same busybox bundle, interleaved.

    python bench/bench_sandbox.py [-n 20]

pybuild is timed the way pybuild uses it (a library call in a running process);
runc and unshare are timed as the commands a user would run.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from builder.sandbox import DirRoot, SandboxSpec, run  # noqa: E402


def make_bundle(dest: Path) -> Path:
    """An OCI bundle: busybox rootfs + `runc spec` config running `true` read-only."""
    subprocess.run(["sh", str(REPO / "sample-images/busybox/mkrootfs.sh"), str(dest / "rootfs")],
                   check=True)
    subprocess.run(["runc", "spec", "--bundle", str(dest)], check=True)
    cfg = json.loads((dest / "config.json").read_text())
    cfg["process"]["terminal"] = False
    cfg["process"]["args"] = ["true"]
    cfg["root"]["readonly"] = True
    (dest / "config.json").write_text(json.dumps(cfg))
    return dest


def timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("-n", type=int, default=20)
    args = ap.parse_args()
    for tool in ("runc", "unshare"):
        if shutil.which(tool) is None:
            sys.exit(f"bench_sandbox: {tool} is not installed")
    with tempfile.TemporaryDirectory(prefix="bench-sandbox-") as tmp:
        bundle = make_bundle(Path(tmp) / "bundle")
        root = bundle / "rootfs"
        state = Path(tmp) / "runc-state"

        def ours() -> None:
            r = run(SandboxSpec(root=DirRoot(root, readonly=True), argv=["true"], etc_files=True))
            assert r.exit_code == 0, r

        n = [0]

        def runc() -> None:
            n[0] += 1
            subprocess.run(["runc", "--root", str(state), "run", "-b", str(bundle),
                            f"bench-{os.getpid()}-{n[0]}"], check=True,
                           stdin=subprocess.DEVNULL)

        def floor() -> None:
            subprocess.run(["unshare", "-fmpiun", "--mount-proc", "chroot", str(root), "/bin/true"],
                           check=True)

        cases = {"pybuild sandbox": ours, "runc run": runc, "unshare+chroot": floor}
        for fn in cases.values():  # warm caches (seccomp BPF, page cache)
            fn()
        times: dict[str, list[float]] = {k: [] for k in cases}
        for _ in range(args.n):
            for name, fn in cases.items():
                times[name].append(timed(fn))
    med = {k: statistics.median(v) for k, v in times.items()}
    print(f"start-to-exit latency of `true`, {args.n} runs each, interleaved")
    print(f"{'':18} {'median':>9} {'min':>9} {'max':>9}")
    for k, v in times.items():
        print(f"{k:18} {med[k] * 1000:8.1f}ms {min(v) * 1000:8.1f}ms {max(v) * 1000:8.1f}ms")
    ratio = med["pybuild sandbox"] / med["runc run"]
    print(f"pybuild / runc = {ratio:.2f}x (target <= 1.5x); "
          f"pybuild / floor = {med['pybuild sandbox'] / med['unshare+chroot']:.2f}x")


if __name__ == "__main__":
    main()
