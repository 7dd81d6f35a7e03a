#!/usr/bin/env python3
"""Layer codec speed against the peer tools, on one ~500 MB / 20k-file tree.

Interleaved runs (ours, then the peer, repeated), median and min-max of each
and the ratio ours/peer:
  commit: write_layer gzip / zstd to a file   vs  tar -cf - | gzip / zstd -T0 > file
          (the peers at our default levels, layerstore.compression.GZIP_LEVEL/ZSTD_LEVEL)
  unpack: apply_layer flat into a fresh dir   vs  tar -xf (and umoci unpack, see below)
  pybuild --help wall time.
Targets (issue 2): zstd commit <= 1.3x tar|zstd -T0; gzip commit <= 1x tar|gzip;
unpack <= umoci unpack (of the same gzip layer, from a bare OCI layout).

Everything is made in a fresh directory (default: a new dir under /var/tmp)
and deleted at the end: this ext4 has no journal, and creating files right
after a mass delete crawls, so each unpack goes into a new directory.

    python3 bench/bench_layers.py [--runs 5] [--mb 500] [--files 20000] [--workdir DIR] [--keep]
"""

from __future__ import annotations

import argparse
import os
import random
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from layerstore.compression import GZIP_LEVEL, ZSTD_LEVEL  # noqa: E402
from layerstore.layer_apply import apply_layer  # noqa: E402
from layerstore.layer_diff import LayerStats, write_layer  # noqa: E402


def make_tree(root: Path, total_mb: int, files: int, seed: int = 42) -> tuple[int, int]:
    """A deterministic tree of mixed sizes: 90% small, 9.5% medium, 0.5% large files,
    3/4 compressible text, 1/4 random bytes, plus some symlinks and hardlinks."""
    rng = random.Random(seed)
    letters = b"etaoinshrdlucmfwypvbgkjqxz_/.0123456789"
    words = [bytes(rng.choice(letters[:20 + i % 19]) for _ in range(rng.randint(2, 12))) for i in range(3000)]
    text = b" ".join(rng.choice(words) for _ in range(4_000_000))[: 24 << 20]
    noise = rng.randbytes(24 << 20)
    sizes = []
    for _ in range(files):
        r = rng.random()
        sizes.append(rng.randint(0, 16 << 10) if r < 0.90 else
                     rng.randint(16 << 10, 256 << 10) if r < 0.995 else rng.randint(512 << 10, 2 << 20))
    scale = (total_mb << 20) / max(1, sum(sizes))
    sizes = [int(s * scale) for s in sizes]
    written = 0
    made: list[Path] = []
    for i, size in enumerate(sizes):
        d = root / f"d{i % 40:02d}" / f"s{(i // 40) % 25:02d}"
        if i < 1000:
            d.mkdir(parents=True, exist_ok=True)
        pool = noise if i % 4 == 0 else text
        start = rng.randrange(0, len(pool) - size) if size < len(pool) else 0
        p = d / f"file{i:05d}.dat"
        p.write_bytes(pool[start:start + size])
        made.append(p)
        written += size
        if i % 200 == 7:
            os.symlink(f"../../d00/s00/file{i:05d}.dat", d / f"link{i:05d}")
        if i % 500 == 11:
            os.link(made[i // 2], d / f"hard{i:05d}")
    return written, files


CPU: dict[str, list[float]] = {}


def _cpu() -> float:
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def timed(fn: Callable[[], object], label: str = "") -> float:
    """Wall seconds of fn(); its CPU seconds (all threads and children) go to CPU[label]."""
    c, t = _cpu(), time.perf_counter()
    fn()
    wall = time.perf_counter() - t
    CPU.setdefault(label, []).append(_cpu() - c)
    return wall


def sh(cmd: str) -> None:
    subprocess.run(["bash", "-o", "pipefail", "-c", cmd], check=True)


def oci_layout(blob: Path, media_type: str, diff_id: str, dest: Path) -> Path:
    """A pybuild store (itself an OCI layout) holding one image made of `blob`,
    tagged `bench`, which umoci reads directly."""
    from layerstore.model import Descriptor, ImageConfig
    from layerstore.store import Store

    store = Store.open(dest)
    with open(blob, "rb") as f:
        info = store.blobs.ingest(f)
    config = ImageConfig(architecture="amd64", os="linux", diff_ids=[diff_id])
    store.refs.set("bench", store.commit_image(config, [Descriptor(media_type, info.digest,
                                                                   info.size)]))
    return dest


def umoci_unpack(layout: Path, dest: Path) -> None:
    """`umoci unpack` of the layout's one image into dest (a bundle: dest/rootfs)."""
    subprocess.run(["umoci", "unpack", "--image", f"{layout}:bench", str(dest)], check=True,
                   stdout=subprocess.DEVNULL)


def summary(label: str, times: list[float]) -> str:
    cpu = CPU.get(label)
    return (f"{label:<30} median {statistics.median(times):7.3f}s  "
            f"min-max {min(times):7.3f}-{max(times):7.3f}s  (n={len(times)})"
            + (f"  cpu median {statistics.median(cpu):6.2f}s" if cpu else ""))


def ratio(ours: list[float], peer: list[float], target: str) -> str:
    return f"{'':<30} ratio ours/peer {statistics.median(ours) / statistics.median(peer):5.2f}x  (target {target})"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--mb", type=int, default=500)
    ap.add_argument("--files", type=int, default=20000)
    ap.add_argument("--workdir", type=Path, default=Path("/var/tmp"))
    ap.add_argument("--keep", action="store_true", help="do not delete the work dir")
    args = ap.parse_args()

    work = Path(tempfile.mkdtemp(prefix="bench-layers-", dir=args.workdir))
    try:
        tree = work / "tree"
        t = time.perf_counter()
        size, files = make_tree(tree, args.mb, args.files)
        print(f"tree: {size / 1e6:.0f} MB in {files} files at {tree} (made in {time.perf_counter() - t:.1f}s)")
        print(f"load average at start: {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs "
              "(wall times suffer when others run; cpu = user+sys of all threads and children)")
        sh(f"tar -cf - -C {tree} . | cat > /dev/null")  # warm the page cache

        res: dict[str, list[float]] = {k: [] for k in (
            "ours gzip", "tar | gzip", "ours zstd", "tar | zstd -T0", "ours unpack (gzip)", "tar -xzf",
            "ours unpack (zstd)", "tar -x --zstd", "umoci unpack", "python3 -m builder --help",
            "pybuild --help")}
        ours_gz, ours_zst = work / "ours.tar.gz", work / "ours.tar.zst"

        def commit(path: Path, compression: str) -> LayerStats:
            with open(path, "wb") as out:
                return write_layer(tree, out, compression=compression, overlay=False)

        def unpack(path: Path, dest: Path) -> None:
            dest.mkdir()
            with open(path, "rb") as f:
                apply_layer(f, dest, mode="flat")

        stats = commit(ours_gz, "gzip")
        layout = oci_layout(ours_gz, "application/vnd.oci.image.layer.v1.tar+gzip", stats.diff_id, work / "oci")
        env = dict(os.environ, PYTHONPATH=str(REPO))
        script = shutil.which("pybuild")
        fresh = iter(range(1_000_000))

        def peer_unpack(flags: str, blob: Path) -> None:
            dest = work / f"p{next(fresh)}"
            dest.mkdir()
            sh(f"tar {flags} {blob} -C {dest}")

        # groups measured back to back; within a group the order alternates run by run
        groups: list[list[tuple[str, Callable[[], object]]]] = [
            [("ours gzip", lambda: commit(ours_gz, "gzip")),
             ("tar | gzip", lambda: sh(f"tar -cf - -C {tree} . | gzip -{GZIP_LEVEL} > {work}/peer.tar.gz"))],
            [("ours zstd", lambda: commit(ours_zst, "zstd")),
             ("tar | zstd -T0", lambda: sh(f"tar -cf - -C {tree} . | zstd -q -{ZSTD_LEVEL} -T0 > {work}/peer.tar.zst"))],
            [("ours unpack (gzip)", lambda: unpack(ours_gz, work / f"u{next(fresh)}")),
             ("tar -xzf", lambda: peer_unpack("-xzf", ours_gz)),
             ("umoci unpack", lambda: umoci_unpack(layout, work / f"m{next(fresh)}"))],
            [("ours unpack (zstd)", lambda: unpack(ours_zst, work / f"u{next(fresh)}")),
             ("tar -x --zstd", lambda: peer_unpack("--zstd -xf", ours_zst))],
            [("python3 -m builder --help", lambda: subprocess.run(
                [sys.executable, "-m", "builder", "--help"], check=True, capture_output=True, env=env))]
            + ([("pybuild --help", lambda: subprocess.run([script, "--help"], check=True, capture_output=True,
                                                           env=env))] if script else []),
        ]
        for run in range(args.runs):
            for group in groups:
                for label, fn in (group if run % 2 == 0 else group[::-1]):
                    os.sync()  # no writeback of the previous step's output lands on this one
                    res[label].append(timed(fn, label))
            print(f"run {run + 1}/{args.runs} done (load {os.getloadavg()[0]:.1f})", flush=True)

        sizes = {p.name: p.stat().st_size for p in (ours_gz, ours_zst, work / "peer.tar.gz", work / "peer.tar.zst")}
        print("\nblob sizes: " + ", ".join(f"{k} {v / 1e6:.1f} MB" for k, v in sizes.items()))
        print()
        for ours, peer, target in (("ours gzip", "tar | gzip", "<= 1.0x"), ("ours zstd", "tar | zstd -T0", "<= 1.3x"),
                                   ("ours unpack (gzip)", "tar -xzf", "info; umoci is the target"),
                                   ("ours unpack (zstd)", "tar -x --zstd", "info")):
            print(summary(ours, res[ours]))
            print(summary(peer, res[peer]))
            print(ratio(res[ours], res[peer], target))
        if res["umoci unpack"]:
            print(summary("umoci unpack", res["umoci unpack"]))
            print(ratio(res["ours unpack (gzip)"], res["umoci unpack"], "<= 1.0x"))
        for label in ("python3 -m builder --help", "pybuild --help"):
            if res[label]:
                print(summary(label, res[label]) + "   (target < 0.150s)")
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
