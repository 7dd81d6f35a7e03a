"""Every sample image builds, and the result runs both with `pybuild run` and,
independently, through `pybuild save --format oci` -> `umoci unpack` -> `runc run`."""

from __future__ import annotations

import json
import secrets
import subprocess
import tarfile
from pathlib import Path

import pytest

from buildpeer import steps, umoci_unpack
from conftest import REPO, require_tool

SAMPLES = REPO / "sample-images"
EXPECT = {
    "hello": "Hello from pybuild (built on x86_64, running as nobody)\n",
    "multistage": "hello, world (greet 1.2.3, built in a separate stage)\n",
}


@pytest.fixture
def base(pybuild, store_root):
    subprocess.run(["sh", str(SAMPLES / "busybox" / "make-image.sh")], check=True,
                   env={"PYBUILD_ROOT": str(store_root), "PATH": _path()}, capture_output=True)
    return pybuild


def _path() -> str:
    import os
    return os.environ["PATH"]


def _runc(pybuild, tmp_path: Path, image: str) -> str:
    require_tool("runc")
    archive = tmp_path / f"{image}.tar"
    pybuild("save", "--format", "oci", "-o", archive, image)
    layout = tmp_path / f"{image}-oci"
    layout.mkdir()
    with tarfile.open(archive) as t:
        t.extractall(layout)
    ref = json.loads((layout / "index.json").read_text())["manifests"][0]["annotations"][
        "org.opencontainers.image.ref.name"]
    bundle = tmp_path / f"{image}-bundle"
    umoci_unpack(layout, ref, bundle)
    cfg = json.loads((bundle / "config.json").read_text())
    cfg["process"]["terminal"] = False
    (bundle / "config.json").write_text(json.dumps(cfg))
    cid = f"pybuild-test-{secrets.token_hex(4)}"
    try:
        p = subprocess.run(["runc", "run", "-b", str(bundle), cid], capture_output=True, text=True,
                           timeout=60, stdin=subprocess.DEVNULL)
    finally:
        subprocess.run(["runc", "delete", "-f", cid], capture_output=True)
    assert p.returncode == 0, p.stderr
    return p.stdout


@pytest.mark.parametrize("name", ["hello", "multistage"])
def test_sample_builds_and_runs(base, tmp_path, name):
    base("build", "--progress", "plain", "-t", name, SAMPLES / name)
    assert base("run", "--rm", name).stdout == EXPECT[name]
    assert _runc(base, tmp_path, name) == EXPECT[name]
    again = base("build", "--progress", "plain", "-t", name, SAMPLES / name)
    assert set(steps(again.stderr).values()) <= {"CACHED", "DONE"}
    assert "CACHED" in steps(again.stderr).values()


def test_cache_mount_sample_is_warm_the_second_time(base, tmp_path, store_root):
    first = base("build", "--progress", "plain", "-t", "cache-mount", SAMPLES / "cache-mount")
    assert "cache: cold" in first.stderr
    second = base("build", "--progress", "plain", "--no-cache", "-t", "cache-mount",
                  SAMPLES / "cache-mount")
    assert "cache: warm" in second.stderr
    out = base("run", "--rm", "cache-mount").stdout
    assert len(out.strip()) == 16
    assert _runc(base, tmp_path, "cache-mount") == out


@pytest.mark.slow
def test_debian_python_sample(pybuild, store_root, tmp_path):
    """debootstrap (from apt's mirror, tarball cached in ~/.cache/pybuild) + apt-get in RUN."""
    require_tool("debootstrap")
    subprocess.run(["sh", str(SAMPLES / "debian-python" / "make-base.sh")], check=True,
                   env={"PYBUILD_ROOT": str(store_root), "PATH": _path(),
                        "HOME": str(Path.home())}, capture_output=True, timeout=900)
    pybuild("build", "--progress", "plain", "-t", "debian-python", SAMPLES / "debian-python",
            timeout=900)
    out = pybuild("run", "--rm", "debian-python").stdout
    assert out.startswith("hello from Python 3.11")
    assert _runc(pybuild, tmp_path, "debian-python") == out


def test_busybox_base_sample(base, tmp_path):
    assert base("run", "--rm", "busybox", "echo", "base ok").stdout == "base ok\n"
    history = base("history", "--no-trunc", "busybox").stdout
    assert 'CMD ["sh"]' in history and "ADD file:" in history
    assert _runc(base, tmp_path, "busybox") == ""   # CMD sh with no input: exits at once, status 0
