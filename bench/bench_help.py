"""How fast `pybuild --help` (and `pybuild version`) start, beside the peers' --help.

Interleaves, N times: `pybuild --help` through the installed console script (what a user
types), `python3 -m builder --help`, `pybuild version`, `buildah --help`, `skopeo --help`
and a bare `python3 -c pass` (the interpreter's own floor, with this machine's site
packages), and prints the median and min-max of each and the ratio to buildah's.
The issue's target: `pybuild --help` under 150 ms.

    python3 bench/bench_help.py [--runs 15]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
from pathlib import Path

from benchlib import timed

REPO = Path(__file__).resolve().parent.parent


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=15)
    args = ap.parse_args()
    env = dict(os.environ, PYTHONPATH=str(REPO))
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    script = Path(sys.executable).parent / "pybuild"   # the console script, not a shim
    variants: dict[str, list[str]] = {}
    for name, tool in (("buildah --help", "buildah"), ("skopeo --help", "skopeo")):
        path = shutil.which(tool)
        if path is None:
            sys.exit(f"{tool} is not installed: run scripts/setup.sh")
        variants[name] = [path, "--help"]
    if not script.exists():
        sys.exit(f"{script} is missing: run scripts/setup.sh (pip install -e .)")
    variants["pybuild --help"] = [str(script), "--help"]
    variants["python3 -m builder --help"] = [sys.executable, "-m", "builder", "--help"]
    variants["pybuild version"] = [str(script), "version"]
    variants["python3 -c pass"] = [sys.executable, "-c", "pass"]
    for argv in variants.values():                      # warm caches, compile bytecode
        timed(argv, env)
    times: dict[str, list[float]] = {k: [] for k in variants}
    for _ in range(args.runs):
        for name, argv in variants.items():
            times[name].append(timed(argv, env))
    base = statistics.median(times["buildah --help"])
    print(f"{'command':28} {'median':>9} {'min-max':>17} {'vs buildah':>10}   ({args.runs} runs, "
          "interleaved)")
    for name, ts in times.items():
        med = statistics.median(ts)
        print(f"{name:28} {med * 1000:7.1f}ms {min(ts) * 1000:7.1f}-{max(ts) * 1000:.1f}ms "
              f"{med / base:9.2f}x")


if __name__ == "__main__":
    main()
