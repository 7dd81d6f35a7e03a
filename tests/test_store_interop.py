"""The store against the real peers: skopeo, umoci and buildah."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import tarfile
from pathlib import Path

import pytest

from conftest import require_tool
from layerstore.store import Store
from layerstore.unpack import unpack_image
from treecmp import diff_dirs


def run(*cmd: str, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, check=True, capture_output=True, text=True, **kw)


@pytest.fixture
def imported(pybuild, busybox_rootfs, tmp_path):
    tarball = tmp_path / "rootfs.tar"
    with tarfile.open(tarball, "w") as tar:
        tar.add(busybox_rootfs, arcname=".")
    out = pybuild("import", tarball, "busybox", "--message", "from test").stdout.strip()
    assert out.startswith("sha256:")
    return out


def test_import_then_skopeo_inspect_store(pybuild, imported, store_root):
    require_tool("skopeo")
    info = json.loads(run("skopeo", "inspect",
                          f"oci:{store_root}:docker.io/library/busybox:latest").stdout)
    assert len(info["Layers"]) == 1
    cfg = json.loads(run("skopeo", "inspect", "--config",
                         f"oci:{store_root}:docker.io/library/busybox:latest").stdout)
    assert "sha256:" + hashlib.sha256(
        run("skopeo", "inspect", "--raw", "--config",
            f"oci:{store_root}:docker.io/library/busybox:latest").stdout.encode()
    ).hexdigest() == imported
    assert cfg["history"][0]["comment"] == "from test"


def test_umoci_reads_store_directly(pybuild, imported, store_root, tmp_path):
    require_tool("umoci")
    listed = run("umoci", "ls", "--layout", str(store_root)).stdout.split()
    assert "docker.io/library/busybox:latest" in listed


def test_save_oci_umoci_unpack_equals_input(pybuild, imported, busybox_rootfs, tmp_path):
    require_tool("umoci")
    archive = tmp_path / "out.tar"
    pybuild("save", "busybox", "-o", archive, "--format", "oci")
    layout = tmp_path / "layout"
    layout.mkdir()
    with tarfile.open(archive) as tar:
        tar.extractall(layout, filter="fully_trusted")
    bundle = tmp_path / "bundle"
    run("umoci", "unpack", "--image", f"{layout}:docker.io/library/busybox:latest", str(bundle))
    assert diff_dirs(busybox_rootfs, bundle / "rootfs", ignore=(".",)) == []


def test_save_docker_archive_read_by_skopeo(pybuild, imported, tmp_path):
    require_tool("skopeo")
    archive = tmp_path / "docker.tar"
    pybuild("save", "busybox", "-o", archive, "--format", "docker")
    info = json.loads(run("skopeo", "inspect", f"docker-archive:{archive}").stdout)
    assert len(info["Layers"]) == 1
    raw_config = subprocess.run(["skopeo", "inspect", "--raw", "--config",
                                 f"docker-archive:{archive}"], check=True,
                                capture_output=True).stdout
    assert "sha256:" + hashlib.sha256(raw_config).hexdigest() == imported
    dest = tmp_path / "copied"
    run("skopeo", "copy", f"docker-archive:{archive}", f"oci:{dest}:x")
    assert json.loads((dest / "index.json").read_text())["manifests"]


# --- buildah-made multi-layer image ------------------------------------------------

CONTAINERFILE = """\
FROM scratch
ADD rootfs.tar /
RUN rm /bin/vi && mkdir -p /opt/d && echo one > /opt/d/a && echo two > /opt/d/b
RUN rm -rf /opt/d && mkdir /opt/d && echo three > /opt/d/c && chmod 700 /opt/d
LABEL purpose=test
CMD ["/bin/sh"]
"""


@pytest.fixture(scope="module")
def buildah_archives(tmp_path_factory, busybox_rootfs):
    """oci-archive and docker-archive of a 3-layer image that deletes a file of a
    lower layer and replaces a whole directory, pushed by buildah."""
    require_tool("buildah")
    base = tmp_path_factory.mktemp("buildah")
    ctx = base / "ctx"
    ctx.mkdir()
    with tarfile.open(ctx / "rootfs.tar", "w") as tar:
        tar.add(busybox_rootfs, arcname=".")
    (ctx / "Containerfile").write_text(CONTAINERFILE)
    b = ["buildah", "--root", str(base / "storage"), "--runroot", str(base / "run"),
         "--storage-driver", "overlay"]
    try:
        run(*b, "bud", "--runtime", "runc", "--layers", "-t", "test/multi:v1", str(ctx))
        run(*b, "push", "test/multi:v1", f"oci-archive:{base}/oci.tar:test/multi:v1")
        run(*b, "push", "test/multi:v1", f"docker-archive:{base}/docker.tar:test/multi:v1")
        inspect = json.loads(run(*b, "inspect", "--type", "image", "test/multi:v1").stdout)
    finally:
        subprocess.run([*b, "rmi", "-a", "-f"], capture_output=True)
        subprocess.run(["umount", "-R", str(base / "storage" / "overlay")], capture_output=True)
        subprocess.run([*b, "rm", "-a"], capture_output=True)
        shutil.rmtree(base / "storage", ignore_errors=True)
    return {"oci": base / "oci.tar", "docker": base / "docker.tar",
            "history": inspect["OCIv1"]["history"]}


@pytest.mark.parametrize("kind", ["oci", "docker"])
def test_load_buildah_archive_history_and_unpack(pybuild, store_root, tmp_path, buildah_archives,
                                                 kind):
    require_tool("umoci")
    out = pybuild("load", "-i", buildah_archives[kind]).stdout
    assert "Loaded image: test/multi:v1" in out
    rows = [json.loads(line) for line in pybuild("history", "--format", "json",
                                                 "test/multi:v1").stdout.splitlines()]
    theirs = list(reversed(buildah_archives["history"]))
    assert [r["CreatedBy"] for r in rows] == [h.get("created_by", "") for h in theirs]
    assert [r["EmptyLayer"] for r in rows] == [bool(h.get("empty_layer")) for h in theirs]

    store = Store.open(store_root)
    ours = tmp_path / "ours"
    unpack_image(store, store.resolve("test/multi:v1"), ours)
    assert not (ours / "bin/vi").exists() and (ours / "bin/sh").exists()
    assert sorted(p.name for p in (ours / "opt/d").iterdir()) == ["c"]

    # umoci unpack of the same image, from the archive buildah wrote
    layout = tmp_path / "layout"
    if kind == "oci":
        layout.mkdir()
        with tarfile.open(buildah_archives["oci"]) as tar:
            tar.extractall(layout, filter="fully_trusted")
        image = f"{layout}:test/multi:v1"
    else:
        run("skopeo", "copy", f"docker-archive:{buildah_archives['docker']}", f"oci:{layout}:m")
        image = f"{layout}:m"
    bundle = tmp_path / "bundle"
    run("umoci", "unpack", "--image", image, str(bundle))
    assert diff_dirs(ours, bundle / "rootfs") == []
    assert Store.open(store_root) and pybuild("fsck").returncode == 0
