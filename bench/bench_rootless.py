"""Rootless vs rootful pybuild, side by side: `build --no-cache` of the hello and
multistage samples and `run --rm hello true`, interleaved (the order alternates each
round), printing median and min-max of N runs and the ratio rootless/rootful
(target: within 1.3x).

Both sides run the same interpreter (tests/rootless_env.py's venv of /usr/bin/python3)
and this repo's code, each with a fresh store holding the same busybox base; rootless runs
as tests/rootless_env.py's test user (created when absent, with subordinate ranges).
A warm-up round (not counted) starts the rootless keeper and fills the page cache.

    python3 bench/bench_rootless.py [--runs 5] [--only hello,multistage,run]
"""

from __future__ import annotations

import argparse
import compileall
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from benchlib import timed, unmount_under

REPO = Path(__file__).resolve().parent.parent
SAMPLES = REPO / "sample-images"
sys.path.insert(0, str(REPO / "tests"))

import rootless_env as rle  # noqa: E402


class Side:
    """One way of running pybuild: as root, or as the test user."""

    def __init__(self, name: str, store: Path, user: rle.TestUser | None, python: Path) -> None:
        self.name, self.store, self.user, self.python = name, store, user, python
        if user is None:
            self.env = {"PATH": rle.SYSTEM_PATH, "HOME": "/root", "LANG": "C.UTF-8",
                        "PYTHONPATH": str(REPO)}
        else:
            self.env = rle.user_env(user)
            self.env.pop("PYTHONDONTWRITEBYTECODE")    # as root: both read the same bytecode

    def argv(self, *args: str) -> list[str]:
        argv = [str(self.python), "-m", "builder", "--root", str(self.store), *args]
        return rle.as_user_argv(self.user, argv) if self.user else argv

    def time(self, *args: str) -> float:
        return timed(self.argv(*args), env=self.env)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--only", default="hello,multistage,run")
    ap.add_argument("--network", default=None,
                    help="pass --network MODE to build and run (default: their default)")
    args = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("run as root: it sets up the test user and the rootful side")
    only = args.only.split(",")
    session = rle.Session()
    python = session.python
    for package in ("builder", "layerstore"):
        compileall.compile_dir(str(REPO / package), quiet=2)
    work = session.workdir(session.user, "bench")
    rootful_dir = Path(tempfile.mkdtemp(prefix="pybuild-bench-rootful-"))
    try:
        tar = work / "busybox.tar"
        rootfs = rootful_dir / "rootfs"
        subprocess.run(["sh", str(SAMPLES / "busybox" / "mkrootfs.sh"), str(rootfs)],
                       check=True, capture_output=True)
        subprocess.run(["tar", "-C", str(rootfs), "--numeric-owner", "-cf", str(tar), "."],
                       check=True)
        shutil.rmtree(rootfs)
        os.chmod(tar, 0o644)
        sides = [Side("rootful", rootful_dir / "store", None, python),
                 Side("rootless", work / "store", session.user, python)]
        for side in sides:
            side.time("import", str(tar), "busybox", "--change", 'CMD ["sh"]')
        net = ["--network", args.network] if args.network else []
        cases = {
            "build hello": lambda s: s.time("build", *net, "--progress", "quiet", "--no-cache",
                                            "-t", "hello", str(SAMPLES / "hello")),
            "build multistage": lambda s: s.time("build", *net, "--progress", "quiet",
                                                 "--no-cache", "-t", "multistage",
                                                 str(SAMPLES / "multistage")),
            "run --rm hello true": lambda s: s.time("run", *net, "--rm", "hello", "true"),
        }
        keys = {"hello": "build hello", "multistage": "build multistage",
                "run": "run --rm hello true"}
        chosen = [keys[k] for k in only]
        if "run --rm hello true" in chosen and "build hello" not in chosen:
            for side in sides:
                side.time("build", *net, "--progress", "quiet", "-t", "hello",
                          str(SAMPLES / "hello"))
        figures: dict[tuple[str, str], list[float]] = {}
        for rnd in range(args.runs + 1):                  # round 0: warm-up
            for case in chosen:
                order = sides if rnd % 2 == 0 else sides[::-1]
                for side in order:
                    took = cases[case](side)
                    if rnd:
                        figures.setdefault((case, side.name), []).append(took)
        fmt = lambda xs: f"{statistics.median(xs):6.2f}s ({min(xs):.2f}-{max(xs):.2f})"  # noqa
        print(f"{'':22} {'rootful':>22} {'rootless':>22}  ratio   ({args.runs} runs, "
              f"median (min-max); target <= 1.30x; network: {args.network or 'default'})")
        for case in chosen:
            a, b = figures[(case, "rootful")], figures[(case, "rootless")]
            ratio = statistics.median(b) / statistics.median(a)
            print(f"{case:22} {fmt(a):>22} {fmt(b):>22}  {ratio:4.2f}x"
                  f"{'' if ratio <= 1.3 else '  (over target)'}")
    finally:
        unmount_under(rootful_dir)
        shutil.rmtree(rootful_dir, ignore_errors=True)
        problems = session.close()
        if problems:
            print("\n".join(problems), file=sys.stderr)


if __name__ == "__main__":
    main()
