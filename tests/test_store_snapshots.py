"""Snapshots: one per layer chain, shared, made atomically, safe when raced."""

from __future__ import annotations

import multiprocessing
import os
from pathlib import Path

from layerstore import digest as dg
from layerstore.humanize import rfc3339_now
from layerstore.model import ImageConfig
from layerstore.store import Store
from treecmp import diff_dirs


def _image(store: Store, dirs: list[Path], name: str):
    layers, diff_ids = [], []
    for d in dirs:
        desc, diff_id = store.commit_layer(d, overlay=False)
        layers.append(desc)
        diff_ids.append(diff_id)
    cfg = ImageConfig(architecture="amd64", os="linux", created=rfc3339_now(), diff_ids=diff_ids)
    store.tag(name, store.commit_image(cfg, layers))
    return store.resolve(name)


def _tree(path: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        (path / name).parent.mkdir(parents=True, exist_ok=True)
        (path / name).write_text(text)
    return path


def test_shared_prefix_and_chain_ids(store_root, tmp_path):
    store = Store.open(store_root)
    base = _tree(tmp_path / "base", {"etc/os": "base\n"})
    a = _tree(tmp_path / "a", {"a.txt": "a\n"})
    b = _tree(tmp_path / "b", {"b.txt": "b\n"})
    img_a = _image(store, [base, a], "a")
    img_b = _image(store, [base, b], "b")
    lowers_a = store.snapshot_chain(img_a)
    lowers_b = store.snapshot_chain(img_b)
    assert lowers_a[0] == lowers_b[0]                      # shared base snapshot
    assert lowers_a[1] != lowers_b[1]
    chains = dg.chain_ids(img_a.config.diff_ids)
    assert lowers_a == [store.snapshots.path(c) for c in chains]
    assert chains[0] == img_a.config.diff_ids[0]
    assert diff_dirs(base, lowers_a[0]) == []
    assert sorted(store.snapshots.chain_ids()) == sorted(
        {*dg.chain_ids(img_a.config.diff_ids), *dg.chain_ids(img_b.config.diff_ids)})


def _ensure(root: str, name: str) -> list[str]:
    store = Store.open(root)
    return [str(p) for p in store.snapshot_chain(store.resolve(name))]


def test_concurrent_creation(store_root, tmp_path):
    store = Store.open(store_root)
    dirs = []
    for n in range(3):
        d = tmp_path / f"l{n}"
        for i in range(200):
            _tree(d, {f"dir{i % 10}/file{i}": f"{n}-{i}\n" * 50})
        dirs.append(d)
    _image(store, dirs, "raced")
    with multiprocessing.get_context("fork").Pool(4) as pool:
        results = pool.starmap(_ensure, [(str(store_root), "raced")] * 8)
    assert all(r == results[0] for r in results)
    assert store.snapshots.leftovers() == []
    assert len(store.snapshots.chain_ids()) == 3
    for d, snap in zip(dirs, results[0]):
        assert diff_dirs(d, Path(snap)) == []


def test_half_made_snapshot_is_never_used(store_root, tmp_path):
    store = Store.open(store_root)
    img = _image(store, [_tree(tmp_path / "x", {"f": "1"})], "x")
    chain = dg.chain_ids(img.config.diff_ids)[0]
    # a crash mid-unpack leaves only a temp dir, which is not a snapshot
    leftover = store.snapshots.dir / f".tmp-{chain[7:23]}-deadbeef"
    leftover.mkdir()
    (leftover / "partial").write_text("half")
    assert not store.snapshots.has(chain)
    assert store.snapshots.chain_ids() == []
    path = store.snapshot_chain(img)[0]
    assert (path / "f").read_text() == "1" and not (path / "partial").exists()
    assert os.path.isdir(leftover)           # left for prune, never read
