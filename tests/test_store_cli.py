"""The store commands as a user types them: images, tag, rmi, inspect,
history, import, prune, fsck, and their one-line errors."""

from __future__ import annotations

import io
import json
import os
import tarfile
from pathlib import Path

import pytest

from layerstore.store import Store


def make_tar(path: Path, files: dict[str, bytes]) -> Path:
    with tarfile.open(path, "w") as tar:
        dirs = sorted({str(Path(n).parent) for n in files} - {"."})
        for d in dirs:  # explicit entries: an implied parent would get "now" as mtime
            info = tarfile.TarInfo(d)
            info.type = tarfile.DIRTYPE
            info.mode = 0o755
            tar.addfile(info)
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mode = 0o644
            tar.addfile(info, io.BytesIO(data))
    return path


@pytest.fixture
def small(pybuild, tmp_path):
    tarball = make_tar(tmp_path / "small.tar", {"hello.txt": b"hi\n", "etc/x": b"x"})
    image_id = pybuild("import", tarball, "example.com/team/small:1").stdout.strip()
    return image_id


def test_images_tag_rmi(pybuild, small):
    out = pybuild("images").stdout.splitlines()
    assert out[0].split() == ["REPOSITORY", "TAG", "IMAGE", "ID", "CREATED", "SIZE"]
    assert out[1].split()[:3] == ["example.com/team/small", "1", small[7:19]]
    pybuild("tag", "example.com/team/small:1", "other")
    names = {tuple(l.split()[:2]) for l in pybuild("images").stdout.splitlines()[1:]}
    assert names == {("example.com/team/small", "1"), ("other", "latest")}
    assert pybuild("images", "-q").stdout.split() == [small[7:19]]
    # removing by ID with two names needs --force, as in docker
    err = pybuild("rmi", small[7:19], check=False)
    assert err.returncode == 1 and "must be forced" in err.stderr
    assert pybuild("rmi", "other").stdout.strip() == "Untagged: other:latest"
    assert pybuild("rmi", small[7:19]).stdout.strip() == "Untagged: example.com/team/small:1"
    assert pybuild("images").stdout.splitlines()[1:] == []


def test_inspect_and_history(pybuild, small):
    doc = json.loads(pybuild("inspect", "example.com/team/small:1").stdout)[0]
    assert doc["Id"] == small
    assert doc["RepoTags"] == ["example.com/team/small:1"]
    assert doc["RootFS"]["Type"] == "layers" and len(doc["RootFS"]["Layers"]) == 1
    hist = pybuild("history", "example.com/team/small:1").stdout.splitlines()
    assert hist[0].split() == ["IMAGE", "CREATED", "CREATED", "BY", "SIZE", "COMMENT"]
    assert hist[1].startswith(small[7:19]) and "Imported from" in hist[1]
    full = pybuild("history", "--no-trunc", small).stdout.splitlines()[1]
    assert full.startswith(small)


def test_import_with_message_and_platform(pybuild, tmp_path):
    tarball = make_tar(tmp_path / "t.tar", {"a": b"1"})
    pybuild("import", "--message", "hand made", "--platform", "linux/arm64", tarball, "m")
    doc = json.loads(pybuild("inspect", "m").stdout)[0]
    assert doc["Architecture"] == "arm64"
    assert json.loads(pybuild("history", "--format", "json", "m").stdout)["Comment"] == "hand made"


def test_import_from_stdin_same_layer_twice(pybuild, tmp_path):
    tarball = make_tar(tmp_path / "t.tar", {"a": b"1", "b/c": b"2"})
    first = json.loads(pybuild("inspect", pybuild("import", tarball, "one").stdout.strip()).stdout)
    second_id = pybuild("import", "-", "two", input=tarball.read_bytes()).stdout.decode().strip()
    second = json.loads(pybuild("inspect", second_id).stdout)
    assert first[0]["RootFS"] == second[0]["RootFS"]


@pytest.mark.parametrize("args,message", [
    (("inspect", "nosuch"), "nosuch: no such image or container"),
    (("history", "Bad/Name"), "no such image"),
    (("tag", "nosuch", "x"), "no such image"),
    (("import", "/nonexistent.tar", "x"), "/nonexistent.tar: no such file"),
    (("rmi", "nosuch"), "no such image"),
    (("load", "-i", "/nonexistent.tar"), "no such file"),
    (("import", "--platform", "linux/bar", "/dev/null", "x"), "unknown architecture"),
])
def test_errors_are_one_line(pybuild, args, message):
    proc = pybuild(*args, check=False)
    assert proc.returncode != 0
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("pybuild: error: ") and message in lines[0]


def test_tag_invalid_reference(pybuild, small):
    proc = pybuild("tag", small, "UPPER:case", check=False)
    assert proc.returncode == 1 and "must be lowercase" in proc.stderr


def test_root_from_environment(tmp_path, small, store_root):
    import subprocess
    import sys
    env = dict(os.environ, PYBUILD_ROOT=str(store_root))
    out = subprocess.run([sys.executable, "-m", "builder", "images", "-q"], env=env,
                         capture_output=True, text=True, check=True,
                         cwd=Path(__file__).parent.parent).stdout
    assert out.split() == [small[7:19]]


def test_fsck_finds_corrupt_and_missing_blobs(pybuild, small, store_root):
    assert pybuild("fsck").stdout.strip().endswith("clean")
    store = Store.open(store_root)
    img = store.resolve("example.com/team/small:1")
    layer = store.blobs.path(img.manifest.layers[0].digest)
    data = bytearray(layer.read_bytes())
    data[len(data) // 2] ^= 0xFF
    os.chmod(layer, 0o644)
    layer.write_bytes(bytes(data))
    proc = pybuild("fsck", check=False)
    assert proc.returncode == 1
    assert f"blob {img.manifest.layers[0].digest} is corrupt" in proc.stdout
    store.blobs.path(img.id).unlink()
    proc = pybuild("fsck", check=False)
    assert f"blob {img.id} is missing" in proc.stdout


def test_prune_keeps_reachable_removes_unreachable(pybuild, small, tmp_path, store_root):
    other = make_tar(tmp_path / "o.tar", {"only-here": b"zzz"})
    other_id = pybuild("import", other, "gone").stdout.strip()
    store = Store.open(store_root)
    doomed = set(store.resolve("gone").manifest.layers[0].digest for _ in [0]) | {other_id}
    before = set(store.blobs.digests())
    pybuild("rmi", "gone")
    out = pybuild("prune").stdout
    assert "Total reclaimed space" in out
    after = set(store.blobs.digests())
    assert doomed <= before and not (doomed & after)
    assert pybuild("fsck").returncode == 0
    assert pybuild("inspect", "example.com/team/small:1").returncode == 0
    # an untagged image (loaded without a name) is dangling: prune removes it
    archive = tmp_path / "a.tar"
    pybuild("save", "example.com/team/small:1", "-o", archive)
    pybuild("rmi", "example.com/team/small:1")
    loaded = pybuild("load", "-i", archive).stdout
    assert "Loaded image: example.com/team/small:1" in loaded
    pybuild("rmi", "example.com/team/small:1")
    pybuild("prune")
    assert list(Store.open(store_root).blobs.digests()) == []
    assert Store.open(store_root).snapshots.chain_ids() == []


def test_hostile_import_leaves_nothing(pybuild, tmp_path, store_root):
    evil = tmp_path / "evil.tar"
    with tarfile.open(evil, "w") as tar:
        info = tarfile.TarInfo("../../escape")
        info.size = 1
        tar.addfile(info, io.BytesIO(b"x"))
    proc = pybuild("import", evil, "evil", check=False)
    assert proc.returncode == 1 and "../../escape" in proc.stderr
    assert not (tmp_path / "escape").exists() and not (store_root.parent / "escape").exists()
    store = Store.open(store_root)
    assert list(store.blobs.digests()) == [] and store.snapshots.leftovers() == []
    assert store.refs.entries() == []


def test_untagged_image_by_id(pybuild, tmp_path):
    tarball = make_tar(tmp_path / "u.tar", {"u": b"untagged"})
    image_id = pybuild("import", tarball).stdout.strip()
    row = pybuild("images").stdout.splitlines()[1].split()
    assert row[:3] == ["<none>", "<none>", image_id[7:19]]
    doc = json.loads(pybuild("inspect", image_id).stdout)[0]
    assert doc["Id"] == image_id and doc["RepoTags"] == []
    assert pybuild("history", image_id[7:15]).stdout.splitlines()[1].startswith(image_id[7:19])
    pybuild("prune")
    assert pybuild("images").stdout.splitlines()[1:] == []
