#!/usr/bin/env python3
"""Registry push/pull speed: pybuild against `skopeo copy`, same local registry.

Two images, both in a pybuild store (which is an OCI layout, so skopeo reads
the very same blobs):
  big:   1 layer of 500 MB (incompressible, uncompressed tar)
  small: 200 layers of ~50 kB gzip each
Four cases, each run interleaved (pybuild, then skopeo, repeated):
  push  store -> docker://REG/<fresh repo>      (a fresh repo per run: every blob uploads)
  pull  docker://REG/... -> empty store / empty OCI dir
Prints median and min-max wall time (CLI process included) and the ratio
pybuild/skopeo; under 1.00x means pybuild is faster. Target (issue 7): <= 1.00x.

    python3 bench/bench_registry.py [--runs 5] [--mb 500] [--layers 200] [--workdir DIR]
"""

from __future__ import annotations

import argparse
import io
import os
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))

from layerstore import mediatypes as mt  # noqa: E402
from layerstore.model import Descriptor, ImageConfig  # noqa: E402
from layerstore.store import Store  # noqa: E402
from test_registry_helpers import Registry, make_image, random_files  # noqa: E402


class _Random(io.RawIOBase):
    """`size` random bytes, read in chunks (so 500 MB never sit in memory)."""

    def __init__(self, size: int) -> None:
        self.left = size

    def readable(self) -> bool:
        return True

    def readinto(self, buf) -> int:
        n = min(len(buf), self.left)
        buf[:n] = os.urandom(n)
        self.left -= n
        return n


def big_image(store: Store, name: str, mb: int) -> None:
    """One uncompressed tar layer holding one `mb` MB file, streamed into ingest."""
    import hashlib

    class Hashing:
        def __init__(self, w) -> None:
            self.w, self.h = w, hashlib.sha256()

        def write(self, data) -> int:
            self.h.update(data)
            return self.w.write(data)

    with store.blobs.writer() as w:
        out = Hashing(w)
        with tarfile.open(fileobj=out, mode="w|", format=tarfile.PAX_FORMAT) as tar:
            info = tarfile.TarInfo("big.bin")
            info.size, info.mtime = mb * 1_000_000, 1700000000
            tar.addfile(info, io.BufferedReader(_Random(info.size), 1 << 20))
        diff_id = "sha256:" + out.h.hexdigest()
        blob = w.commit()
    config = ImageConfig(architecture="amd64", os="linux", diff_ids=[diff_id])
    store.tag(name, store.commit_image(config, [Descriptor(mt.OCI_LAYER, blob.digest, blob.size)]))


def timed(cmd: list[str]) -> float:
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    took = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{proc.stderr}")
    return took


def summary(label: str, times: list[float], size: int) -> str:
    med = statistics.median(times)
    return (f"{label:<26} median {med:7.3f}s  (min {min(times):.3f} max {max(times):.3f})  "
            f"{size / med / 1e6:8.1f} MB/s")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--mb", type=int, default=500)
    ap.add_argument("--layers", type=int, default=200)
    ap.add_argument("--workdir", type=Path, default=None)
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-registry-", dir=args.workdir or "/var/tmp"))
    pybuild = [sys.executable, "-m", "builder"]
    skopeo = ["skopeo", "--insecure-policy", "copy", "-q"]
    reg = None
    try:
        (work / "registry").mkdir()
        reg = Registry(work / "registry")
        src = Store.open(work / "src")
        t = time.perf_counter()
        big_image(src, "bench/big:1", args.mb)
        make_image(src, "bench/small:1",
                   [random_files(1, 50_000, 1000 + i) for i in range(args.layers)])
        print(f"images made in {time.perf_counter() - t:.1f}s; {args.runs} interleaved runs, "
              "a fresh registry for each\n")
        sizes = {name: src.resolve(f"bench/{name}:1").size for name in ("big", "small")}
        results: dict[tuple[str, str, str], list[float]] = {}
        n = 0
        for run in range(args.runs):
            for name in ("big", "small"):
                ref = f"docker.io/bench/{name}:1"
                for tool in ("pybuild", "skopeo"):
                    n += 1
                    # a fresh registry each time: nothing to skip or mount (skopeo's
                    # blob-info cache remembers blobs by registry host:port)
                    reg.stop()
                    shutil.rmtree(work / "registry")
                    (work / "registry").mkdir()
                    reg = Registry(work / "registry")
                    dest = f"{reg.host}/{tool}-{name}-{run}/img:1"
                    if tool == "pybuild":
                        push = [*pybuild, "--root", str(src.root), "push", "-q",
                                f"bench/{name}:1", dest]
                    else:
                        push = [*skopeo, "--dest-tls-verify=false", f"oci:{src.root}:{ref}",
                                f"docker://{dest}"]
                    results.setdefault(("push", name, tool), []).append(timed(push))
                    out = work / f"pull-{n}"
                    if tool == "pybuild":
                        pull = [*pybuild, "--root", str(out), "pull", "-q", dest]
                    else:
                        pull = [*skopeo, "--src-tls-verify=false", f"docker://{dest}",
                                f"oci:{out}:img"]
                    results.setdefault(("pull", name, tool), []).append(timed(pull))
                    shutil.rmtree(out)
        for op in ("push", "pull"):
            for name in ("big", "small"):
                label = f"{op} {name} ({sizes[name] / 1e6:.0f} MB)"
                ours, peer = results[(op, name, "pybuild")], results[(op, name, "skopeo")]
                print(summary(f"{label} pybuild", ours, sizes[name]))
                print(summary(f"{label} skopeo", peer, sizes[name]))
                print(f"{'':<26} ratio pybuild/skopeo {statistics.median(ours) / statistics.median(peer):5.2f}x"
                      "  (target <= 1.00x)\n")
    finally:
        if reg is not None:
            reg.stop()
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
