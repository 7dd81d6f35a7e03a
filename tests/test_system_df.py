"""`pybuild system df`: docker's table (TYPE TOTAL ACTIVE SIZE RECLAIMABLE) for images,
containers, local volumes, the build cache and cache mounts; each blob and snapshot
counted once. Every figure is checked against an independent count: `du -sx -B1` for
directories, the manifests' own sizes for blobs, read straight from the store's files."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
from pathlib import Path

import pytest

from buildpeer import import_busybox

from layerstore.humanize import human_size


def du(*paths: Path) -> int:
    if not paths:
        return 0
    out = subprocess.run(["du", "-sx", "-B1", "-c", *map(str, paths)], check=True,
                         capture_output=True, text=True).stdout
    return int(out.splitlines()[-1].split()[0])


def _read(root: Path, digest: str) -> dict:
    return json.loads((root / "blobs" / "sha256" / digest.split(":")[1]).read_bytes())


def _items(root: Path, digest: str) -> tuple[set[str], set[str]]:
    """(blobs, chain IDs) an image reaches, read from the store's files by hand."""
    doc = _read(root, digest)
    if "manifests" in doc:
        b, c = {digest}, set()
        for m in doc["manifests"]:
            if (root / "blobs" / "sha256" / m["digest"].split(":")[1]).exists():
                mb, mc = _items(root, m["digest"])
                b, c = b | mb, c | mc
        return b, c
    blobs = {digest, doc["config"]["digest"], *(l["digest"] for l in doc["layers"])}
    chain, chains = None, set()
    for diff_id in _read(root, doc["config"]["digest"])["rootfs"]["diff_ids"]:
        chain = diff_id if chain is None else \
            "sha256:" + hashlib.sha256(f"{chain} {diff_id}".encode()).hexdigest()
        chains.add(chain)
    return blobs, chains


def _size(root: Path, blobs: set[str], chains: set[str]) -> int:
    """Blobs at their content size, snapshots as du counts them."""
    snaps = [root / "snapshots" / c.split(":")[1] for c in chains]
    return sum(os.lstat(root / "blobs" / "sha256" / b.split(":")[1]).st_size for b in blobs) + \
        du(*[s for s in snaps if s.is_dir()])


def _union(parts) -> tuple[set[str], set[str]]:
    b: set[str] = set()
    c: set[str] = set()
    for pb, pc in parts:
        b, c = b | pb, c | pc
    return b, c


@pytest.fixture
def populated(pybuild, busybox_rootfs, tmp_path, store_root):
    """busybox; `a` (with a cache mount) and `b` tagged; `c` built then untagged (its
    layer is the build cache's alone); one dangling image; an exited container of `a`
    with the volume vol1, and an unused volume vol2."""
    import_busybox(pybuild, busybox_rootfs, tmp_path)
    files = {
        "a": "FROM busybox\nCOPY data /data\n"
             "RUN --mount=type=cache,target=/c head -c 300000 /dev/urandom > /c/f && echo a > /y\n",
        "b": "FROM busybox\nCOPY data /data\n",
        "c": "FROM busybox\nCOPY data /data\nENV C=1\n",
        "": "FROM busybox\nCOPY data /data\nLABEL dangling=1\n",
    }
    for tag, text in files.items():
        ctx = tmp_path / f"ctx-{tag or 'none'}"
        ctx.mkdir()
        (ctx / "Dockerfile").write_text(text)
        (ctx / "data").write_bytes(os.urandom(400_000))
        pybuild("build", "-q", *(["-t", tag] if tag else []), ctx)
    pybuild("rmi", "c")
    pybuild("run", "--name", "ex", "--network", "none", "-v", "vol1:/vol", "a", "sh", "-c",
            "head -c 200000 /dev/urandom > /vol/v; echo x > /newfile")
    pybuild("volume", "create", "vol2")
    yield pybuild, store_root
    for c in pybuild("ps", "-aq", "--no-trunc", check=False).stdout.split():
        pybuild("rm", "-f", c, check=False)


def _containers(root: Path) -> dict[str, dict]:
    out = {}
    for d in (root / "containers").iterdir():
        if (d / "state.json").is_file():
            out[d.name] = json.loads((d / "state.json").read_text())
    return out


def _check_against_the_files(root: Path, du_, running: int) -> None:
    refs = json.loads((root / "index.json").read_text())["manifests"]
    tops = list(dict.fromkeys(m["digest"] for m in refs))
    images = {t: _items(root, t) for t in tops}
    conts = _containers(root)
    c_items = [_items(root, s["image"]) for s in conts.values()]
    active = [t for t in tops if any(s["image"] in images[t][0] for s in conts.values())]
    all_images = _union(images.values())
    img = du_.row("Images")
    assert img.total == len(tops) == 4
    assert img.active == len(active)
    assert img.size == _size(root, *all_images)
    act = _union(images[t] for t in active)
    assert img.reclaimable == img.size - _size(root, *act)
    # per image: its blobs and snapshots; what another image holds too is "shared"
    for row in du_.images:
        b, c = images[row.digest]
        assert row.size == _size(root, b, c)
        others = _union(images[t] for t in tops if t != row.digest)
        assert row.shared == _size(root, b & others[0], c & others[1])
        assert row.unique == row.size - row.shared
    # the build cache: everything under cache/ but the mounts' content, and what only the
    # records' manifests (cache/roots) reach
    roots = [l for l in (root / "cache" / "roots").read_text().split() if l]
    cache_items = _union(_items(root, d) for d in roots)
    kept_elsewhere = _union([all_images, *c_items])
    only = (cache_items[0] - kept_elsewhere[0], cache_items[1] - kept_elsewhere[1])
    assert only[0] and only[1]                   # `c`'s layer and its snapshot
    mounts = list((root / "cache" / "mounts").iterdir())
    bc = du_.row("Build Cache")
    assert bc.total == len(list((root / "cache" / "entries").glob("*/*.json")))
    assert bc.size == du(root / "cache") - du(*mounts) + _size(root, *only)
    assert bc.reclaimable == bc.size
    cm = du_.row("Cache Mounts")
    assert cm.total == len([m for m in mounts if m.is_dir()]) == 1
    assert cm.size == du(*mounts) > 300_000
    # containers: their directories, as du counts them; the running ones are active
    ct = du_.row("Containers")
    assert ct.total == len(conts) and ct.active == running
    assert ct.size == du(*[root / "containers" / i for i in conts])
    stopped = [i for i, s in conts.items() if s["status"] != "running"]
    assert ct.reclaimable == du(*[root / "containers" / i for i in stopped])
    vol = du_.row("Local Volumes")
    assert (vol.total, vol.active) == (2, 1)
    assert vol.size == du(root / "volumes" / "vol1", root / "volumes" / "vol2")
    assert vol.reclaimable == du(root / "volumes" / "vol2")
    assert du_.total == du(root)


def test_df_figures_match_du_and_the_manifests(populated):
    pybuild, root = populated
    from builder.storage import disk_usage
    from layerstore.store import Store

    _check_against_the_files(root, disk_usage(Store(root)), running=0)
    # `df -v` of an image: its stored layers, config, manifest and the snapshots of its
    # chain (`images` SIZE is the uncompressed content, layerstore.layersizes)
    rows = [json.loads(l) for l in pybuild("images", "--format", "json").stdout.splitlines()]
    a = next(r for r in rows if r["Repository"] == "a")
    verbose = json.loads(pybuild("system", "df", "-v", "--format", "json").stdout)
    va = next(i for i in verbose["Images"] if "docker.io/library/a:latest" in i["Names"])
    manifest = _read(root, a["Digest"])
    chains = _items(root, a["Digest"])[1]
    layers = sum(layer["size"] for layer in manifest["layers"])
    assert va["Size"] == layers + manifest["config"]["size"] + \
        os.lstat(root / "blobs" / "sha256" / a["Digest"].split(":")[1]).st_size + \
        du(*[root / "snapshots" / c.split(":")[1] for c in chains])


def test_df_table_and_json_render_the_same_figures(populated):
    pybuild, root = populated
    from builder.storage import disk_usage
    from layerstore.store import Store

    table = pybuild("system", "df").stdout.splitlines()
    lines = [json.loads(l) for l in pybuild("system", "df", "--format", "json").stdout.splitlines()]
    du_ = disk_usage(Store(root))        # nothing changed in between
    assert table[0].split() == ["TYPE", "TOTAL", "ACTIVE", "SIZE", "RECLAIMABLE"]
    assert [l["Type"] for l in lines] == ["Images", "Containers", "Local Volumes",
                                          "Build Cache", "Cache Mounts"]
    for line, obj, row in zip(table[1:], lines, du_.rows):
        assert sorted(obj) == ["Active", "Reclaimable", "Size", "TotalCount", "Type"]
        assert all(isinstance(v, str) for v in obj.values())
        assert obj["Size"] == human_size(row.size, 4) and obj["TotalCount"] == str(row.total)
        expect = human_size(row.reclaimable, 4)
        if row.type not in ("Build Cache", "Cache Mounts") and row.size:
            expect += f" ({row.reclaimable * 100 // row.size}%)"
        assert obj["Reclaimable"] == expect
        assert line.startswith(row.type) and line.rstrip().endswith(expect)
    assert lines[1]["Reclaimable"].endswith("(100%)")        # the container has exited
    verbose = pybuild("system", "df", "-v").stdout
    for title in ("Images space usage:", "Containers space usage:",
                  "Local Volumes space usage:", "Build cache usage: ", "Cache mounts usage: "):
        assert title in verbose
    a_line = next(l for l in verbose.splitlines() if l.startswith("a "))
    a_row = next(i for i in du_.images if "docker.io/library/a:latest" in i.names)
    assert human_size(a_row.size, 4) in a_line.split()
    assert a_line.split()[-1] == "1"                         # one container uses it
    vol1 = next(l for l in verbose.splitlines() if l.startswith("vol1 "))
    assert vol1.split()[1] == "1"


def test_a_running_container_is_active(populated):
    pybuild, root = populated
    from builder.storage import disk_usage
    from layerstore.store import Store

    cid = pybuild("run", "-d", "--network", "none", "b", "sleep", "300").stdout.strip()
    try:
        du_ = disk_usage(Store(root))
        assert du_.row("Containers").active == 1 and du_.row("Images").active == 2
        _check_against_the_files(root, du_, running=1)
        obj = json.loads(pybuild("system", "df", "--format", "json").stdout.splitlines()[1])
        assert obj["Active"] == "1" and obj["TotalCount"] == "2"
    finally:
        pybuild("rm", "-f", cid, check=False)
