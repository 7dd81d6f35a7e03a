"""Crash safety and concurrency of the store: kill -9 at random moments,
several writers at once, and fsck clean afterwards every time."""

from __future__ import annotations

import io
import os
import random
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest

from conftest import REPO
from layerstore.humanize import rfc3339_now
from layerstore.model import History, ImageConfig
from layerstore.store import Store

LAYERS = 4
LAYER_MB = 60


def _random_tree(path: Path, seed: int, megabytes: int) -> None:
    rng = random.Random(seed)
    path.mkdir(parents=True)
    left = megabytes << 20
    i = 0
    while left > 0:
        size = min(left, rng.choice([4 << 10, 64 << 10, 1 << 20, 8 << 20]))
        sub = path / f"d{i % 7}"
        sub.mkdir(exist_ok=True)
        (sub / f"f{i}").write_bytes(os.urandom(size))
        left -= size
        i += 1


@pytest.fixture(scope="module")
def big_archive(tmp_path_factory) -> Path:
    """An OCI archive of a 4-layer, ~240 MB image."""
    base = tmp_path_factory.mktemp("big")
    store = Store.open(base / "store")
    layers, diff_ids = [], []
    for n in range(LAYERS):
        src = base / f"layer{n}"
        _random_tree(src, n, LAYER_MB)
        desc, diff_id = store.commit_layer(src, compression="none", overlay=False)
        layers.append(desc)
        diff_ids.append(diff_id)
    cfg = ImageConfig(architecture="amd64", os="linux", created=rfc3339_now(), diff_ids=diff_ids,
                      history=[History(created_by=f"layer {n}") for n in range(LAYERS)])
    store.tag("big:1", store.commit_image(cfg, layers))
    archive = base / "big.tar"
    subprocess.run([sys.executable, "-m", "builder", "--root", str(base / "store"), "save",
                    "big:1", "-o", str(archive)], check=True, cwd=REPO)
    return archive


def _cmd(root: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "builder", "--root", str(root), *args]


@pytest.mark.slow
def test_kill_load_at_random_moments(big_archive, tmp_path, pybuild, store_root):
    start = time.monotonic()
    pybuild("load", "-i", big_archive)
    full = time.monotonic() - start
    pybuild("rmi", "big:1")
    pybuild("prune")
    rng = random.Random(1234)
    for attempt in range(20):
        proc = subprocess.Popen(_cmd(store_root, "load", "-i", str(big_archive)), cwd=REPO,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(rng.uniform(0.05, full))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        check = pybuild("fsck", check=False)
        assert check.returncode == 0, f"attempt {attempt}: {check.stdout}"
        pybuild("load", "-i", big_archive)
        assert pybuild("fsck").returncode == 0
        pybuild("rmi", "big:1")
        if attempt % 5 == 4:
            pybuild("prune")
    store = Store.open(store_root)
    for digest in store.blobs.digests():
        assert store.blobs.rehash(digest) == digest


def _small_tar(path: Path, marker: str) -> Path:
    with tarfile.open(path, "w") as tar:
        for i in range(50):
            data = f"{marker}-{i}\n".encode() * 100
            info = tarfile.TarInfo(f"files/{marker}/{i}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def test_concurrent_loads_and_imports(tmp_path, pybuild, store_root):
    # two archives to load, made in a side store
    side = tmp_path / "side"
    archives = []
    for name in ("alpha", "beta"):
        subprocess.run(_cmd(side, "import", str(_small_tar(tmp_path / f"{name}.tar", name)),
                            name), check=True, cwd=REPO, capture_output=True)
        archives.append(tmp_path / f"{name}-archive.tar")
        subprocess.run(_cmd(side, "save", name, "-o", str(archives[-1])), check=True, cwd=REPO)
    jobs = [_cmd(store_root, "load", "-i", str(a)) for a in archives]
    jobs += [_cmd(store_root, "import", str(_small_tar(tmp_path / f"{n}.tar", n)), n)
             for n in ("gamma", "delta")]
    procs = [subprocess.Popen(j, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
             for j in jobs]
    results = [(p.wait(), p.stderr.read().decode()) for p in procs]
    assert [r[0] for r in results] == [0, 0, 0, 0], results
    names = {l.split()[0] for l in pybuild("images").stdout.splitlines()[1:]}
    assert names == {"alpha", "beta", "gamma", "delta"}
    assert pybuild("fsck").stdout.strip().endswith("clean")
