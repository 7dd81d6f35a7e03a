"""What the RUN network costs a build: 20 `RUN true` steps, per network mode.

Builds one context (FROM busybox + 20 distinct `RUN true` steps) with --no-cache
under each variant, interleaved (variant 1, 2, ..., 1, 2, ...), and prints the
median and min-max of N runs, the ratio to the first variant and the cost per
RUN step over the host-network variant of the same tree.

Variants of the working tree: `--network host --allow network.host`, the default
(a private network namespace on the build bridge, NAT to the outside) and
`--network none`. With --before DIR (a checkout of an older commit, e.g.
`git worktree add /tmp/old a84a80a`), that tree's default is measured too (before
issue 11 it was the host's network). Each tree gets its own store; everything
lives in a temporary directory under /var/tmp that is removed at the end.

    python3 bench/bench_build_network.py [--runs 7] [--steps 20] [--before DIR]
"""

from __future__ import annotations

import argparse
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


class Tree:
    """One checkout of pybuild with its own store."""

    def __init__(self, src: Path, store: Path) -> None:
        self.src = src
        self.env = dict(os.environ, PYTHONPATH=str(src))
        self.env.pop("PYTHONDONTWRITEBYTECODE", None)   # as installed: bytecode is cached
        self.base = [sys.executable, "-m", "builder", "--root", str(store)]

    def build(self, ctx: Path, *extra: str) -> float:
        return timed([*self.base, "build", "--progress", "quiet", *extra, str(ctx)], self.env)


def busybox_context(work: Path) -> Path:
    ctx = work / "busybox-ctx"
    subprocess.run(["sh", str(SAMPLES / "busybox" / "mkrootfs.sh"), str(ctx / "rootfs")],
                   check=True, capture_output=True)
    subprocess.run(["tar", "-C", str(ctx / "rootfs"), "--numeric-owner", "-cf",
                    str(ctx / "rootfs.tar"), "."], check=True)
    shutil.rmtree(ctx / "rootfs")
    shutil.copy(SAMPLES / "busybox" / "Dockerfile", ctx / "Dockerfile")
    return ctx


def steps_context(work: Path, steps: int) -> Path:
    ctx = work / "steps"
    ctx.mkdir()
    # distinct commands, so that no step is the cache hit of another
    body = "".join(f"RUN true {i}\n" for i in range(steps))
    (ctx / "Dockerfile").write_text("FROM busybox\n" + body)
    return ctx


def fmt(xs: list[float]) -> str:
    return f"{statistics.median(xs):6.2f}s ({min(xs):.2f}-{max(xs):.2f})"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=7)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--before", type=Path, help="an older checkout to measure its default too")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-netbuild-", dir="/var/tmp"))
    try:
        now = Tree(REPO, work / "store-now")
        variants: list[tuple[str, Tree, list[str]]] = [
            ("host", now, ["--network", "host", "--allow", "network.host"]),
            ("default (private)", now, []),
            ("none", now, ["--network", "none"]),
        ]
        if args.before is not None:
            before = Tree(args.before.resolve(), work / "store-before")
            variants.insert(0, ("before: default (host)", before, []))
        base = busybox_context(work)
        for tree in {id(t): t for _, t, _ in variants}.values():
            tree.build(base, "-t", "busybox")
        ctx = steps_context(work, args.steps)
        for _, tree, extra in variants:   # warm-up: bytecode, seccomp cache, bridge module
            tree.build(ctx, "--no-cache", *extra)
        times: dict[str, list[float]] = {label: [] for label, _, _ in variants}
        for _ in range(args.runs):
            for label, tree, extra in variants:
                times[label].append(tree.build(ctx, "--no-cache", *extra))
        host = statistics.median(times["host"])
        first = statistics.median(times[variants[0][0]])
        print(f"{args.steps} x `RUN true`, --no-cache; runs={args.runs}; median (min-max); "
              f"ratio to {variants[0][0]!r}; per step: (median - host's median) / {args.steps}")
        print(f"{'variant':24} {'build':>22} {'ratio':>6} {'per step':>9}")
        for label, _, _ in variants:
            med = statistics.median(times[label])
            per = (med - host) / args.steps * 1000
            print(f"{label:24} {fmt(times[label]):>22} {med / first:6.2f} {per:+7.1f}ms")
    finally:
        unmount_under(work)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
