"""`pybuild build` vs `buildah bud --layers`, side by side on the same contexts.

For each context: cold build (--no-cache), fully cached rebuild, and a rebuild
after one context file changed; runs interleaved (pybuild, buildah, pybuild,
...), printing median and min-max of N runs and the ratio pybuild/buildah.

Contexts: the hello, multistage, cache-mount and debian-python samples (the last
runs apt-get against apt's mirror: its cold figures are mostly network), a RUN that
writes ~500 MB in ~20k files, and a COPY of a 1 GB / 50k-file context (sizes scale
with --scale). Both tools start from the same busybox (and debootstrap'd Debian) base.

    python3 bench/bench_build.py [--runs 5] [--scale 1.0] [--only hello,...]
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
SAMPLES = REPO / "sample-images"


def sh(cmd: list[str], env: dict | None = None, check: bool = True) -> float:
    t = time.perf_counter()
    p = subprocess.run(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    took = time.perf_counter() - t
    if check and p.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed:\n{p.stderr.decode()[-2000:]}")
    return took


class Tools:
    def __init__(self, work: Path) -> None:
        self.work = work
        self.store = work / "pybuild-store"
        self.broot = work / "buildah-root"
        self.brunroot = work / "buildah-runroot"
        self.env = dict(os.environ, PYBUILD_ROOT=str(self.store))
        self.env.pop("PYTHONDONTWRITEBYTECODE", None)   # as installed: bytecode is cached

    def pybuild(self, ctx: Path, tag: str, *extra: str) -> float:
        # the interpreter directly: a pyenv shim in front of the `pybuild` script adds ~0.3 s
        return sh([sys.executable, "-m", "builder", "build", "--progress", "quiet", "-t", tag,
                   *extra, str(ctx)], self.env)

    def buildah(self, ctx: Path, tag: str, *extra: str) -> float:
        return sh(["buildah", "--root", str(self.broot), "--runroot", str(self.brunroot),
                   "--storage-driver", "overlay", "bud", "--runtime", "runc", "--layers",
                   "--network", "host", "--quiet", "-t", tag, *extra, str(ctx)])

    def cleanup(self) -> None:
        base = ["buildah", "--root", str(self.broot), "--runroot", str(self.brunroot),
                "--storage-driver", "overlay"]
        subprocess.run(base + ["rm", "-a"], capture_output=True)
        subprocess.run(base + ["rmi", "-a", "-f"], capture_output=True)
        with open("/proc/self/mountinfo") as f:
            points = [l.split()[4] for l in f if l.split()[4].startswith(str(self.work))]
        for p in sorted(points, key=len, reverse=True):
            subprocess.run(["umount", "-l", p], capture_output=True)


def make_base(tools: Tools) -> None:
    ctx = tools.work / "busybox-ctx"
    subprocess.run(["sh", str(SAMPLES / "busybox" / "mkrootfs.sh"), str(ctx / "rootfs")], check=True,
                   capture_output=True)
    subprocess.run(["tar", "-C", str(ctx / "rootfs"), "--numeric-owner", "-cf",
                    str(ctx / "rootfs.tar"), "."], check=True)
    shutil.rmtree(ctx / "rootfs")
    shutil.copy(SAMPLES / "busybox" / "Dockerfile", ctx / "Dockerfile")
    tools.pybuild(ctx, "busybox")
    tools.buildah(ctx, "busybox")


def make_debian_base(tools: Tools) -> None:
    """debian-base for both tools from one debootstrap tarball (make-base.sh caches it)."""
    subprocess.run(["sh", str(SAMPLES / "debian-python" / "make-base.sh")], check=True,
                   env=tools.env, stdout=subprocess.DEVNULL)
    ctx = tools.work / "debian-base-ctx"
    ctx.mkdir()
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "pybuild"
    shutil.copy(cache / "debian-bookworm-minbase.tar", ctx / "rootfs.tar")
    (ctx / "Dockerfile").write_text('FROM scratch\nADD rootfs.tar /\nCMD ["bash"]\n')
    tools.buildah(ctx, "debian-base")


def big_run_context(work: Path, scale: float) -> tuple[Path, Path]:
    files = max(10, int(20000 * scale))
    size_kb = 25   # 20k x 25 KiB ~ 500 MB
    ctx = work / "bigrun"
    ctx.mkdir()
    (ctx / "Dockerfile").write_text(
        "FROM busybox\n"
        "COPY seed.txt /seed.txt\n"
        f"RUN mkdir /data && cd /data && i=0; while [ $i -lt {files} ]; do "
        f"head -c {size_kb * 1024} /dev/urandom > f$i; i=$((i+1)); done\n"
        "CMD [\"ls\", \"/data\"]\n")
    (ctx / "seed.txt").write_text("seed 0\n")
    return ctx, ctx / "seed.txt"


def big_copy_context(work: Path, scale: float) -> tuple[Path, Path]:
    files = max(10, int(50000 * scale))
    size = 20 * 1024    # 50k x 20 KiB ~ 1 GB
    ctx = work / "bigcopy"
    (ctx / "tree").mkdir(parents=True)
    (ctx / "Dockerfile").write_text("FROM busybox\nCOPY tree /tree\nCMD [\"ls\", \"/tree\"]\n")
    for i in range(files):
        d = ctx / "tree" / f"d{i // 500:03d}"
        if i % 500 == 0:
            d.mkdir()
        (d / f"f{i}").write_bytes(os.urandom(size))
    return ctx, ctx / "tree" / "d000" / "f0"


def copy_sample(work: Path, name: str) -> tuple[Path, Path]:
    dst = work / name
    shutil.copytree(SAMPLES / name, dst)
    changed = {"hello": dst / "hello.sh", "multistage": dst / "src" / "greet.in",
               "cache-mount": dst / "Dockerfile", "debian-python": dst / "app.py"}[name]
    return dst, changed


def touch_content(path: Path, n: int) -> None:
    if path.name == "Dockerfile":
        path.write_text(path.read_text().rstrip("\n").rsplit("\n# run", 1)[0] + f"\n# run {n}\n")
    elif path.suffix in (".sh", ".in", ".txt", ".py"):
        path.write_text(path.read_text().split("\n# run")[0].rstrip("\n") + f"\n# run {n}\n")
    else:
        path.write_bytes(os.urandom(path.stat().st_size))


def fmt(xs: list[float]) -> str:
    return f"{statistics.median(xs):7.2f}s ({min(xs):.2f}-{max(xs):.2f})"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--scale", type=float, default=1.0, help="size factor for the big contexts")
    ap.add_argument("--only", default="hello,multistage,cache-mount,debian-python,bigrun,bigcopy")
    args = ap.parse_args()
    for tool in ("buildah", "pybuild"):
        if shutil.which(tool) is None:
            sys.exit(f"{tool} is not installed")
    work = Path(tempfile.mkdtemp(prefix="bench-build-", dir="/var/tmp"))
    tools = Tools(work)
    try:
        make_base(tools)
        print(f"runs={args.runs} scale={args.scale}; median (min-max); ratio = pybuild/buildah")
        print(f"{'context':12} {'scenario':14} {'pybuild':>24} {'buildah':>24} {'ratio':>6}")
        for name in args.only.split(","):
            if name == "bigrun":
                ctx, changed = big_run_context(work, args.scale)
            elif name == "bigcopy":
                ctx, changed = big_copy_context(work, args.scale)
            else:
                if name == "debian-python":
                    make_debian_base(tools)
                ctx, changed = copy_sample(work, name)
            results: dict[str, dict[str, list[float]]] = {}
            counter = 0
            for _ in range(args.runs):
                for tool in ("pybuild", "buildah"):
                    run = tools.pybuild if tool == "pybuild" else tools.buildah
                    r = results.setdefault(tool, {"cold": [], "cached": [], "one-changed": []})
                    r["cold"].append(run(ctx, f"bench-{name}", "--no-cache"))
                    r["cached"].append(run(ctx, f"bench-{name}"))
                    counter += 1
                    touch_content(changed, counter)
                    r["one-changed"].append(run(ctx, f"bench-{name}"))
            for scenario in ("cold", "cached", "one-changed"):
                p, b = results["pybuild"][scenario], results["buildah"][scenario]
                ratio = statistics.median(p) / statistics.median(b)
                print(f"{name:12} {scenario:14} {fmt(p):>24} {fmt(b):>24} {ratio:6.2f}", flush=True)
    finally:
        tools.cleanup()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
