"""docker's management groups (`image ls`, `container rm`, `builder prune`), `system prune`,
`image prune`, `info`/`system info`, `version`, and the empty-store hint."""

from __future__ import annotations

import json
import os
import tarfile

import pytest

from conftest import CLI


@pytest.fixture
def store(pybuild: CLI, busybox_rootfs, tmp_path) -> CLI:
    tar = tmp_path / "bb.tar"
    with tarfile.open(tar, "w") as t:
        t.add(busybox_rootfs, arcname=".")
    pybuild("import", tar, "busybox")
    yield pybuild
    ids = pybuild("ps", "-aq", "--no-trunc", check=False).stdout.split()
    if ids:
        pybuild("rm", "-f", *ids, check=False)


def _build(cli: CLI, tmp_path, tag: str | None, text: str) -> None:
    ctx = tmp_path / f"ctx-{tag or 'none'}-{abs(hash(text))}"
    ctx.mkdir()
    (ctx / "Dockerfile").write_text(text)
    cli("build", "--progress=plain", *(("-t", tag) if tag else ()), ctx)


def test_management_groups_name_the_same_commands(store: CLI):
    assert store("image", "ls").stdout.split()[:8] == store("images").stdout.split()[:8]
    assert store("image", "list", "-q").stdout == store("images", "-q").stdout
    store("run", "--network", "none", "--name", "c1", "busybox", "true")
    assert store("container", "ls", "-aq").stdout == store("ps", "-aq").stdout != ""
    assert store("container", "list", "-a").stdout.split()[:7] == store("ps", "-a").stdout.split()[:7]
    assert json.loads(store("container", "inspect", "c1").stdout)[0]["Name"].endswith("c1")
    store("image", "tag", "busybox", "bb2")
    assert "bb2" in store("image", "ls").stdout
    store("image", "rm", "bb2")
    assert "bb2" not in store("images").stdout
    store("container", "rm", "c1")
    assert store("ps", "-aq").stdout.strip() == ""
    # a word docker has no meaning for stays an error under the group
    p = store("image", "frobnicate", check=False)
    assert p.returncode == 2 and "No such command 'frobnicate'" in p.stderr
    assert store("builder", "prune").stdout.splitlines()[-1].startswith("Total reclaimed space:")
    assert "Usage: pybuild buildx build" in store("buildx", "build", "--help").stdout


def test_system_prune_removes_stopped_containers_dangling_images_and_cache(store: CLI,
                                                                          tmp_path):
    _build(store, tmp_path, "keep", "FROM busybox\nRUN echo kept > /k\n")
    _build(store, tmp_path, "gone", "FROM busybox\nRUN echo first > /g\n")
    _build(store, tmp_path, None, "FROM busybox\nRUN echo untagged > /g\n")  # dangles
    store("run", "--network", "none", "--name", "stopped", "busybox", "true")
    store("run", "-d", "--network", "none", "--name", "up", "keep", "sleep", "60")
    before = store("images", "-q").stdout.split()
    out = store("system", "prune", "-f").stdout
    assert "Deleted Containers:" in out and out.strip().splitlines()[-1].startswith(
        "Total reclaimed space: ") and not out.strip().endswith(" 0B"), out
    names = store("ps", "-a", "--format", "json").stdout if False else store("ps", "-a").stdout
    assert "stopped" not in names and "up" in names
    after = store("images", "-q").stdout.split()
    assert len(after) == len(before) - 1           # the dangling one went, tagged ones stay
    assert "keep" in store("images").stdout and "gone" in store("images").stdout
    # -a: every image no container was made from loses its names; the running one's stays
    out = store("system", "prune", "-af").stdout
    assert "untagged: gone:latest" in out and "untagged: busybox:latest" in out, out
    listed = store("images").stdout
    assert "keep" in listed and "gone" not in listed and "busybox" not in listed
    assert store("fsck").returncode == 0


def test_image_prune_keeps_build_cache_and_tagged_images(store: CLI, tmp_path):
    _build(store, tmp_path, None, "FROM busybox\nRUN echo 1 > /v\n")
    _build(store, tmp_path, "app", "FROM busybox\nRUN echo 2 > /v\n")
    assert len(store("images", "-q").stdout.split()) == 3
    out = store("image", "prune", "-f").stdout
    assert out.strip().splitlines()[-1].startswith("Total reclaimed space:")
    assert len(store("images", "-q").stdout.split()) == 2
    # the build cache survived: the same build is all cached
    again = store("build", "--progress=plain", "-t", "app", tmp_path / next(
        p.name for p in tmp_path.iterdir() if p.name.startswith("ctx-app") and
        "2" in (p / "Dockerfile").read_text()))
    assert "(0 steps run" in again.stderr.strip().splitlines()[-1], again.stderr


def test_info_and_system_info(store: CLI):
    text = store("info").stdout
    assert text == store("system", "info").stdout
    assert f" Docker Root Dir: {store.root}\n" in text and " Images: 1\n" in text
    assert " Storage Driver: overlay\n" in text and " Rootless: false" in text
    data = json.loads(store("info", "--format", "json").stdout)
    assert data["DockerRootDir"] == str(store.root) and data["Images"] == 1
    assert data["NCPU"] == os.cpu_count() and data["Containers"] == 0


def test_version(pybuild: CLI):
    from builder import VERSION

    out = pybuild("version").stdout
    assert out.startswith("Client:\n Version:") and f" Version:           {VERSION}\n" in out
    data = json.loads(pybuild("version", "--format", "{{json .}}").stdout)
    assert data["Client"]["Version"] == VERSION == data["Server"]["Version"]
    assert not (pybuild.root / "index.json").exists()   # version touches no store


def test_an_empty_store_names_itself_in_not_found(pybuild: CLI, tmp_path):
    pybuild("images")
    p = pybuild("history", "nosuch", check=False)
    assert p.returncode != 0 and str(pybuild.root) in p.stderr and "holds no images" in p.stderr
    assert "PYBUILD_ROOT" in p.stderr and len(p.stderr.strip().splitlines()) == 1


def test_image_prune_filters(store: CLI, tmp_path):
    """until= keeps what is newer; label= / label!= pick the dangling images that go;
    -a with the filters untags only the matching unused images."""
    _build(store, tmp_path, None, "FROM busybox\nLABEL keep=yes\nRUN echo 1 > /k\n")
    _build(store, tmp_path, None, "FROM busybox\nLABEL drop=yes\nRUN echo 2 > /d\n")
    assert len(store("images", "-q", "-f", "dangling=true").stdout.split()) == 2
    store("image", "prune", "-f", "--filter", "until=2000-01-01T00:00:00Z")
    assert len(store("images", "-q", "-f", "dangling=true").stdout.split()) == 2
    store("image", "prune", "-f", "--filter", "label=drop")
    left = store("images", "-q", "-f", "dangling=true").stdout.split()
    assert len(left) == 1
    assert json.loads(store("inspect", left[0]).stdout)[0]["Config"]["Labels"] == {"keep": "yes"}
    store("image", "prune", "-f", "--filter", "label!=keep")
    assert len(store("images", "-q", "-f", "dangling=true").stdout.split()) == 1
    p = store("image", "prune", "-f", "--filter", "colour=red", check=False)
    assert p.returncode == 1 and p.stderr.strip() == "pybuild: error: invalid filter 'colour'"
    # -a: busybox is unused, but newer than until=: kept
    out = store("image", "prune", "-a", "-f", "--filter", "until=2000-01-01T00:00:00Z").stdout
    assert "untagged" not in out and "busybox" in store("images").stdout
    assert "untagged: busybox:latest" in store("image", "prune", "-a", "-f").stdout
