"""A fresh CI runner's build: cold, from pybuild's registry cache, and buildah's.

Each run starts from an empty store (pybuild) or a fresh buildah root, holding only
the busybox base image (loaded untimed), as an ephemeral CI runner does. Timed:

    pybuild cold          build, nothing cached
    pybuild cache-from    build --cache-from REG/pybuild-cache (exported mode=max once)
    pybuild from+to       the same with --cache-to REG/pybuild-cache,mode=max (CI's usual pair)
    pybuild pull          pull of the final image: the floor a cached build is held to
                          ("within the time of pulling the final image + 1 s")
    buildah cold          bud --layers in a fresh root
    buildah cache         bud --layers --cache-to REG/buildah-cache --cache-from
                          REG/buildah-cache --tls-verify=false in a fresh root (the cache
                          filled by one untimed run first)

Runs are interleaved (every scenario once, then again); median and min-max of N
runs; ratio = pybuild from+to / buildah cache. One docker-registry on 127.0.0.1
(Debian's distribution) serves both tools.

Contexts: the hello and multistage samples, and "big": a build stage making
64 MB of random data of which 16 MB reach the final image beside a 16 MB RUN layer
of its own (sizes scale with --scale): the cached build must fetch the final
image's layers and nothing of the build stage.

    python3 bench/bench_remote_cache.py [--runs 5] [--scale 1.0] [--only hello,...]
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

from benchlib import unmount_under

REPO = Path(__file__).resolve().parent.parent
SAMPLES = REPO / "sample-images"
sys.path.insert(0, str(REPO / "tests"))

from test_registry_helpers import Registry  # noqa: E402  (Debian's docker-registry)


def run(cmd: list[str], env: dict | None = None, check: bool = True) -> float:
    t = time.perf_counter()
    p = subprocess.run(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    took = time.perf_counter() - t
    if check and p.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed:\n{p.stderr.decode()[-3000:]}")
    return took


class Bench:
    def __init__(self, work: Path, registry: Registry) -> None:
        self.work = work
        self.reg = registry.host
        self.base_oci = work / "busybox-oci.tar"
        self.base_docker = work / "busybox-docker.tar"
        self.n = 0

    # --- pybuild ---------------------------------------------------------------

    def pybuild(self, store: Path, *args: str, timed: bool = True) -> float:
        env = dict(os.environ, PYBUILD_ROOT=str(store))
        env.pop("PYTHONDONTWRITEBYTECODE", None)     # as installed: bytecode is cached
        return run([sys.executable, "-m", "builder", *args], env)

    def fresh_store(self) -> Path:
        self.n += 1
        store = self.work / f"store-{self.n}"
        self.pybuild(store, "load", "-i", str(self.base_oci))
        return store

    def drop(self, path: Path) -> None:
        unmount_under(path)
        shutil.rmtree(path, ignore_errors=True)

    def pybuild_build(self, ctx: Path, tag: str, *extra: str) -> float:
        store = self.fresh_store()
        try:
            return self.pybuild(store, "build", "--progress", "quiet", "-t", tag, *extra, str(ctx))
        finally:
            self.drop(store)

    def pybuild_pull(self, ref: str) -> float:
        store = self.fresh_store()
        try:
            return self.pybuild(store, "pull", "-q", ref)
        finally:
            self.drop(store)

    # --- buildah -----------------------------------------------------------------

    def buildah(self, root: Path, *args: str) -> float:
        return run(["buildah", "--root", str(root / "root"), "--runroot", str(root / "run"),
                    "--storage-driver", "overlay", *args])

    def buildah_build(self, ctx: Path, tag: str, *extra: str) -> float:
        self.n += 1
        root = self.work / f"buildah-{self.n}"
        try:
            self.buildah(root, "pull", "--quiet", f"docker-archive:{self.base_docker}")
            return self.buildah(root, "bud", "--runtime", "runc", "--layers", "--network", "host",
                                "--pull=never", "--quiet", "-t", tag, *extra, str(ctx))
        finally:
            subprocess.run(["buildah", "--root", str(root / "root"), "--runroot",
                            str(root / "run"), "--storage-driver", "overlay", "rmi", "-a", "-f"],
                           capture_output=True)
            self.drop(root)

    # --- setup -------------------------------------------------------------------

    def make_base(self) -> None:
        store = self.work / "base-store"
        env = dict(os.environ, PYBUILD_ROOT=str(store))
        subprocess.run(["sh", str(SAMPLES / "busybox" / "make-image.sh")], env=env, check=True,
                       capture_output=True)
        self.pybuild(store, "save", "-o", str(self.base_oci), "busybox")
        self.pybuild(store, "save", "--format", "docker", "-o", str(self.base_docker), "busybox")
        self.drop(store)


def big_context(work: Path, scale: float) -> Path:
    big, part = max(1, int(64 * scale)), max(1, int(16 * scale))
    ctx = work / "big"
    ctx.mkdir()
    (ctx / "Dockerfile").write_text(
        "FROM busybox AS build\n"
        f"RUN head -c {big}m /dev/urandom > /big.bin && head -c {part}m /big.bin > /part.bin\n"
        "RUN sha256sum /big.bin > /big.sum\n"
        "FROM busybox\n"
        "COPY --from=build /part.bin /big.sum /data/\n"
        f"RUN head -c {part}m /dev/urandom > /data/own.bin\n"
        'CMD ["ls", "-l", "/data"]\n')
    return ctx


def fmt(xs: list[float]) -> str:
    return f"{statistics.median(xs):6.2f}s ({min(xs):.2f}-{max(xs):.2f})"


SCENARIOS = ("pybuild cold", "pybuild cache-from", "pybuild from+to", "pybuild pull",
             "buildah cold", "buildah cache")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--scale", type=float, default=1.0, help="size factor of the big context")
    ap.add_argument("--only", default="hello,multistage,big")
    args = ap.parse_args()
    for tool in ("buildah", "docker-registry", "runc"):
        if shutil.which(tool) is None:
            sys.exit(f"{tool} is not installed")
    work = Path(tempfile.mkdtemp(prefix="bench-remote-cache-", dir="/var/tmp"))
    (work / "registry").mkdir()
    registry = Registry(work / "registry")
    bench = Bench(work, registry)
    try:
        bench.make_base()
        print(f"runs={args.runs} scale={args.scale}; median (min-max); every run from an empty "
              "store / fresh buildah root holding only busybox")
        print(f"{'context':10} {'scenario':20} {'time':>24}")
        for name in args.only.split(","):
            ctx = big_context(work, args.scale) if name == "big" else SAMPLES / name
            pcache = f"{registry.host}/pybuild-cache/{name}:main"
            bcache = f"{registry.host}/buildah-cache/{name}"
            image = f"{registry.host}/apps/{name}:1"
            # one untimed export each: the cache a previous CI run left
            seed = bench.fresh_store()
            bench.pybuild(seed, "build", "--progress", "quiet", "-t", image, "--cache-to",
                          f"type=registry,ref={pcache},mode=max", str(ctx))
            bench.pybuild(seed, "push", "-q", image)
            bench.drop(seed)
            bench.buildah_build(ctx, f"bench-{name}", "--cache-to", bcache, "--cache-from", bcache,
                                "--tls-verify=false")
            results: dict[str, list[float]] = {s: [] for s in SCENARIOS}
            for _ in range(args.runs):
                results["pybuild cold"].append(bench.pybuild_build(ctx, f"bench-{name}"))
                results["pybuild cache-from"].append(
                    bench.pybuild_build(ctx, f"bench-{name}", "--cache-from", pcache))
                results["pybuild from+to"].append(
                    bench.pybuild_build(ctx, f"bench-{name}", "--cache-from", pcache,
                                        "--cache-to", f"type=registry,ref={pcache},mode=max"))
                results["pybuild pull"].append(bench.pybuild_pull(image))
                results["buildah cold"].append(bench.buildah_build(ctx, f"bench-{name}"))
                results["buildah cache"].append(
                    bench.buildah_build(ctx, f"bench-{name}", "--cache-to", bcache,
                                        "--cache-from", bcache, "--tls-verify=false"))
            for s in SCENARIOS:
                print(f"{name:10} {s:20} {fmt(results[s]):>24}", flush=True)
            med = {s: statistics.median(v) for s, v in results.items()}
            print(f"{name:10} {'ratio':20} from+to/buildah cache "
                  f"{med['pybuild from+to'] / med['buildah cache']:.2f}, cache-from/cold "
                  f"{med['pybuild cache-from'] / med['pybuild cold']:.2f}, cache-from - pull "
                  f"{med['pybuild cache-from'] - med['pybuild pull']:+.2f}s", flush=True)
    finally:
        registry.stop()
        unmount_under(work)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
