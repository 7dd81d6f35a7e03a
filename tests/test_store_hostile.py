"""The store under hostile state and odd input: snapshot and blob entries that are not what
they should be, index.json written by other tools or by hand, deep trees and deep indexes.
Each must work or fail in one line, never follow a link out of the store, never hang."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import tarfile

import pytest

from conftest import CLI, REPO
from layerstore import digest as dg
from layerstore import fsck as fsck_mod
from layerstore import mediatypes as mt
from layerstore.errors import InvalidImage, NotFound
from layerstore.importer import import_rootfs
from layerstore.layer_apply import apply_layer
from layerstore.layer_diff import LayerSourceError, write_layer
from layerstore.model import Descriptor, Index, canonical_json
from layerstore.resolver import remove_tree
from layerstore.store import Store
from treecmp import describe_tree


def small_tar(**files: bytes) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as t:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(data), 0o644
            t.addfile(info, io.BytesIO(data))
    return buf.getvalue()


@pytest.fixture
def store(store_root) -> Store:
    s = Store.open(store_root)
    import_rootfs(s, io.BytesIO(small_tar(hello=b"world\n")), "img:1")
    return s


@pytest.fixture
def canary(tmp_path):
    c = tmp_path / "canary"
    (c / "sub").mkdir(parents=True)
    (c / "precious").write_text("precious")
    before = describe_tree(c)
    yield c
    assert describe_tree(c) == before


def run(store: Store, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    """The CLI in a subprocess (a hang is a failure, not a stuck test run)."""
    return subprocess.run([sys.executable, "-m", "builder", "--root", str(store.root), *args],
                           capture_output=True, text=True, timeout=timeout, cwd=REPO,
                           env=dict(os.environ, PYTHONPATH=str(REPO)))


def test_deep_trees_commit_or_fail_in_one_line(tmp_path):
    """A RUN step may nest directories 1000 deep: the layer writer recursed per level and
    died with RecursionError. Now a tree as deep as a layer may be (400 levels, what apply
    takes) round-trips, and a deeper one is refused by name."""
    def nest(root, depth):
        fd = os.open(root, os.O_RDONLY)
        for _ in range(depth):
            os.mkdir("d", dir_fd=fd)
            nfd = os.open("d", os.O_RDONLY, dir_fd=fd)
            os.close(fd)
            fd = nfd
        os.close(fd)

    ok, deep = tmp_path / "ok", tmp_path / "deep"
    ok.mkdir()
    deep.mkdir()
    nest(ok, 400)
    nest(deep, 600)
    blob = io.BytesIO()
    write_layer(ok, blob, compression="none")
    (tmp_path / "out").mkdir()
    apply_layer(io.BytesIO(blob.getvalue()), tmp_path / "out", mode="flat")
    assert os.path.isdir(tmp_path / "out" / "/".join(["d"] * 400))
    with pytest.raises(LayerSourceError) as info:
        write_layer(deep, io.BytesIO(), compression="none")
    assert "deeper than 400" in str(info.value) and "\n" not in str(info.value)
    # pytest's own clean-up of old temp dirs recurses per level: leave no deep tree behind
    for top in (ok, deep, tmp_path / "out"):
        remove_tree(top)


def test_digest_with_a_trailing_newline_is_no_digest():
    """re.match with "$" accepts "sha256:<hex>\\n": a digest names files in blobs/ and
    paths in registry URLs."""
    hexd = "a" * 64
    assert not dg.is_digest(f"sha256:{hexd}\n")
    with pytest.raises(dg.InvalidDigest):
        dg.validate(f"sha256:{hexd}\n")
    with pytest.raises(InvalidImage):
        Descriptor.from_json({"mediaType": mt.OCI_MANIFEST, "digest": f"sha256:{hexd}\n", "size": 1})


def test_snapshot_replaced_by_a_symlink_is_never_followed(store, canary):
    """A snapshot is mounted as an overlay lower dir, and a mount follows a symlink: one put
    in a snapshot's place was used as the image's root (`run` saw the canary), and
    `prune -a` failed on it."""
    img = store.resolve("img:1")
    (snap,) = store.snapshot_chain(img)
    os.rename(snap, snap.with_name("moved"))
    os.symlink(canary, snap)
    (again,) = store.snapshot_chain(img)
    assert again == snap and not snap.is_symlink() and os.listdir(snap) == ["hello"]
    os.unlink(snap.with_name("moved").joinpath("hello"))
    os.rmdir(snap.with_name("moved"))
    os.rename(snap, snap.with_name("moved"))
    os.symlink(canary, snap)
    p = run(store, "prune", "-a")
    assert p.returncode == 0, p.stderr
    assert not os.path.lexists(snap)


def test_blob_entries_that_are_not_files_are_no_blobs(store, canary):
    """blobs/ entries were opened following symlinks; a FIFO there or in ingest/ hung
    `prune` and `fsck` for ever (opened for reading, waiting for a writer)."""
    img = store.resolve("img:1")
    layer = img.manifest.layers[0].digest
    path = store.blobs.path(layer)
    real = canary.parent / "layer-blob"
    os.rename(path, real)
    os.symlink(real, path)              # a symlink to the right bytes, even
    assert not store.blobs.has(layer)
    with pytest.raises(NotFound):
        store.blobs.open(layer)
    os.unlink(path)
    os.mkfifo(path)
    with pytest.raises(NotFound):
        store.blobs.open(layer)
    os.unlink(path)
    os.rename(real, path)
    os.mkfifo(store.blobs.ingest_dir / "stuck.tmp")
    os.symlink(canary / "precious", store.blobs.ingest_dir / "link.tmp")
    p = run(store, "fsck", timeout=30)
    assert p.returncode == 0 and "leftover" in p.stdout, (p.stdout, p.stderr)
    p = run(store, "prune", timeout=30)
    assert p.returncode == 0, p.stderr
    assert os.listdir(store.blobs.ingest_dir) == []
    assert run(store, "fsck").returncode == 0


def test_foreign_and_hostile_ref_names_in_index_json(store):
    """index.json is an OCI layout other tools write ("mytag" from skopeo) or that is edited
    by hand: one entry named "../../etc/x" made `images` (and every listing) fail."""
    doc = json.loads((store.root / "index.json").read_bytes())
    entry = doc["manifests"][0]
    for name in ("../../etc/x", "mytag", "UPPER/case:1", "x" * 300):
        doc["manifests"].append({**entry, "annotations": {mt.REF_NAME: name, mt.IMAGE_NAME: name}})
    (store.root / "index.json").write_bytes(json.dumps(doc).encode())
    p = run(store, "images")
    assert p.returncode == 0 and "img" in p.stdout and "../" not in p.stdout, p.stderr
    assert run(store, "save", "--format", "docker", "-o", str(store.root.parent / "x.tar"),
               "img:1").returncode == 0
    p = run(store, "prune")
    assert p.returncode == 0 and "0 untagged images, 0 blobs" in p.stdout, (p.stdout, p.stderr)
    kept = json.loads((store.root / "index.json").read_bytes())["manifests"]
    assert len(kept) == 5                       # foreign entries stay, and so do their blobs
    assert fsck_mod.fsck(store).clean


def test_indexes_nested_a_thousand_deep_are_walked_whole(store):
    """prune and fsck walked indexes by recursion: deep in a chain, the RecursionError came
    out of json.loads as "nested too deeply", fsck called the store broken, and prune
    deleted the blobs below that point, which the chain still reached (data loss)."""
    top = store.refs.get("docker.io/library/img:1")
    for _ in range(1100):
        top = store.put_json(canonical_json(Index(manifests=[top]).to_json()), mt.OCI_INDEX)
    store.tag("deep:1", top)
    store.refs.delete("docker.io/library/img:1")      # only the chain keeps the image now
    report = fsck_mod.fsck(store)
    assert report.clean, report.problems
    from layerstore import gc
    assert gc.prune(store).blobs == 0
    assert len(list(store.blobs.digests())) == 1100 + 3


def test_a_directory_that_is_no_store_is_not_taken_over(tmp_path):
    """`--root /` (or $HOME, or /tmp) made that directory 0700 and filled it with the
    store's dirs: every other user of the host lost /. A non-empty directory without a
    store's marks is refused; an empty one, a store and an OCI layout are used."""
    home = tmp_path / "home"
    (home / "documents").mkdir(parents=True)
    (home / ".profile").write_text("x")
    os.chmod(home, 0o755)
    p = CLI(home)("images", check=False)
    assert p.returncode != 0 and "not a pybuild store" in p.stderr, p.stderr
    assert sorted(os.listdir(home)) == [".profile", "documents"]
    assert os.stat(home).st_mode & 0o777 == 0o755
    layout = tmp_path / "layout"
    layout.mkdir()
    (layout / "oci-layout").write_text('{"imageLayoutVersion":"1.0.0"}')
    assert CLI(layout)("images").returncode == 0
    assert CLI(tmp_path / "fresh")("volume", "create", "v").returncode == 0
    assert CLI(tmp_path / "fresh")("images").returncode == 0
