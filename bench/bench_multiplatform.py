"""A multi-platform build (linux/amd64 + linux/arm64 under qemu-user), pybuild beside buildah.

One Dockerfile FROM an amd64+arm64 busybox index, with a few RUN steps of shell work,
built with --no-cache for both platforms into one index (pybuild: `build --platform
linux/amd64,linux/arm64 -t multi`, once with --jobs 1 (the platforms one after the
other) and once with the default --jobs (at once); buildah: `bud --platform ...
--manifest multi`), interleaved (pybuild -j1, pybuild, buildah, ...). Prints the median
and min-max of N runs of each and the ratios to buildah and to pybuild --jobs 1. All
read the same base: buildah through the store's OCI layout (`FROM oci:STORE:bbmulti`).
Everything lives in a temporary directory under /var/tmp (fresh directories: this ext4
crawls after mass deletes) and is removed at the end.

    python3 bench/bench_multiplatform.py [--runs 5]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

from benchlib import timed, unmount_under

REPO = Path(__file__).resolve().parent.parent
MKROOTFS = REPO / "sample-images" / "busybox" / "mkrootfs.sh"
STEPS = ("RUN for i in $(seq 1 3000); do echo $i; done > /numbers && wc -l /numbers\n"
         "RUN uname -m > /arch && sha256sum /bin/busybox > /sum\n"
         "RUN mkdir -p /data && for i in $(seq 1 200); do echo $i > /data/f$i; done\n")


def make_base(work: Path, pybuild: list[str], env: dict[str, str]) -> None:
    """`bbmulti`: an index of the host's busybox and Debian's arm64 busybox-static."""
    for arch, name in ((None, "bbamd"), ("arm64", "bbarm")):
        root = work / f"rootfs-{name}"
        subprocess.run(["sh", str(MKROOTFS), str(root), *([arch] if arch else [])], check=True,
                       capture_output=True)
        tar = work / f"{name}.tar"
        with tarfile.open(tar, "w") as t:
            t.add(root, arcname=".")
        extra = ["--platform", f"linux/{arch}"] if arch else []
        subprocess.run([*pybuild, "import", *extra, str(tar), name], env=env, check=True,
                       capture_output=True)
    sys.path.insert(0, str(REPO))
    from layerstore import mediatypes as mt
    from layerstore.model import Descriptor, Index, Platform
    from layerstore.store import Store

    store = Store.open(Path(pybuild[pybuild.index("--root") + 1]))
    entries = []
    for name in ("bbamd", "bbarm"):
        img = store.resolve(name)
        entries.append(Descriptor(img.descriptor.media_type, img.descriptor.digest,
                                  img.descriptor.size, platform=Platform(
                                      img.config.os, img.config.architecture, img.config.variant)))
    store.tag("bbmulti", store.put_json(Index(manifests=entries).to_bytes(), mt.OCI_INDEX))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=5)
    args = ap.parse_args()
    for tool in ("buildah", "qemu-aarch64-static"):
        if shutil.which(tool) is None:
            sys.exit(f"{tool} is not installed: run scripts/setup.sh")
    work = Path(tempfile.mkdtemp(prefix="bench-multi-", dir="/var/tmp"))
    env = dict(os.environ, PYTHONPATH=str(REPO))
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    store = work / "store"
    pybuild = [sys.executable, "-m", "builder", "--root", str(store)]
    buildah = ["buildah", "--root", str(work / "buildah-root"), "--runroot",
               str(work / "buildah-run"), "--storage-driver", "overlay"]
    try:
        make_base(work, pybuild, env)
        ours, peer = work / "ctx-pybuild", work / "ctx-buildah"
        ours.mkdir()
        peer.mkdir()
        (ours / "Dockerfile").write_text("FROM bbmulti\n" + STEPS)
        (peer / "Dockerfile").write_text(
            f"FROM oci:{store}:docker.io/library/bbmulti:latest\n" + STEPS)
        plats = "linux/amd64,linux/arm64"
        run_ours = [*pybuild, "build", "--progress", "quiet", "--no-cache", "--network", "none",
                    "--platform", plats, "-t", "multi", str(ours)]
        run_seq = [*run_ours[:-1], "--jobs", "1", str(ours)]

        def run_peer() -> float:
            subprocess.run([*buildah, "manifest", "rm", "multi"], capture_output=True)
            return timed([*buildah, "bud", "--runtime", "runc", "--network", "none",
                          "--no-cache", "--platform", plats, "--manifest", "multi", str(peer)])

        timed(run_ours, env)   # warm-up: bytecode, seccomp cache, binfmt registration
        run_peer()
        times: dict[str, list[float]] = {"pybuild -j1": [], "pybuild": [], "buildah": []}
        for _ in range(args.runs):
            times["pybuild -j1"].append(timed(run_seq, env))
            times["pybuild"].append(timed(run_ours, env))
            times["buildah"].append(run_peer())
        peer_arches = sorted(m["platform"]["architecture"] for m in json.loads(subprocess.run(
            [*buildah, "manifest", "inspect", "multi"], capture_output=True, text=True,
            check=True).stdout)["manifests"])
        print(f"3 RUN steps x linux/amd64 + linux/arm64 (qemu-user), --no-cache, "
              f"runs={args.runs}, interleaved; both made an index of {peer_arches}")
        base = statistics.median(times["buildah"])
        seq = statistics.median(times["pybuild -j1"])
        for name, ts in times.items():
            med = statistics.median(ts)
            print(f"{name:11} {med:6.2f}s ({min(ts):.2f}-{max(ts):.2f})  "
                  f"{med / base:5.2f}x buildah  {med / seq:5.2f}x pybuild -j1")
    finally:
        subprocess.run([*buildah, "rm", "-a"], capture_output=True)
        subprocess.run([*buildah, "rmi", "-a", "-f"], capture_output=True)
        unmount_under(work)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
