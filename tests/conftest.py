"""Shared fixtures: a busybox root filesystem, a fresh store, the CLI.

Tests use the real tools (skopeo, umoci, runc, buildah, docker-registry);
a missing tool is a failed test, never a skip, because the README's set-up
command installs them all.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SHARED = REPO.parent / "shared"
CORPUS = SHARED / "corpus"
MKROOTFS = REPO / "sample-images" / "busybox" / "mkrootfs.sh"
CALL_LOG = os.environ.get("PYBUILD_TEST_CALL_LOG")   # a file: log every CLI call's command and time


def pytest_configure(config) -> None:
    """Compile the package's bytecode once. Every test runs `python -m builder` in a
    subprocess; with PYTHONDONTWRITEBYTECODE set (as on the CI machines) each of those
    compiled every module from source again: ~80 ms of each of thousands of calls."""
    import compileall

    for package in ("builder", "layerstore"):
        compileall.compile_dir(str(REPO / package), quiet=2)


def require_tool(name: str) -> str:
    """Path of a peer tool; fails the test when it is not installed."""
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"{name} is not installed: run scripts/setup.sh")
    return path


def make_busybox_rootfs(dest: Path) -> Path:
    subprocess.run(["sh", str(MKROOTFS), str(dest)], check=True)
    return dest


@pytest.fixture(scope="session")
def busybox_rootfs(tmp_path_factory) -> Path:
    """A busybox rootfs shared by the session: treat it as read-only."""
    return make_busybox_rootfs(tmp_path_factory.mktemp("busybox") / "rootfs")


@pytest.fixture
def busybox_copy(tmp_path, busybox_rootfs) -> Path:
    """A private busybox rootfs a test may change: a real copy (owners, modes, symlinks) of
    the session's, ~20 ms where mkrootfs.sh takes ~1.5 s (a shell loop over 400 applets)."""
    dest = tmp_path / "rootfs"
    subprocess.run(["cp", "-a", "--", str(busybox_rootfs), str(dest)], check=True)
    return dest


@pytest.fixture
def store_root(tmp_path) -> Path:
    return tmp_path / "store"


class CLI:
    """Runs `pybuild --root ROOT ...` in a subprocess, as a user would."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def __call__(self, *args: str, input: bytes | str | None = None, check: bool = True,
                 env: dict[str, str] | None = None, timeout: float = 600) -> subprocess.CompletedProcess:
        cmd = [sys.executable, "-m", "builder", "--root", str(self.root), *map(str, args)]
        full_env = dict(os.environ, PYTHONPATH=str(REPO))
        if env:
            full_env.update(env)
        text = not isinstance(input, bytes)
        started = time.monotonic()
        proc = subprocess.run(cmd, input=input, capture_output=True, text=text, env=full_env,
                              timeout=timeout, cwd=REPO)
        if CALL_LOG:    # where the suite's time goes: one line per call (command, seconds)
            with open(CALL_LOG, "a") as log:
                log.write(f"{args[0] if args else '-'}\t{time.monotonic() - started:.3f}\n")
        if check and proc.returncode != 0:
            raise AssertionError(f"pybuild {' '.join(map(str, args))} exited {proc.returncode}:\n"
                                 f"{proc.stdout}\n{proc.stderr}")
        return proc


@pytest.fixture
def pybuild(store_root) -> CLI:
    return CLI(store_root)
