"""The store is private (CVE-2021-41091 class): no other host user can read, open or
execute anything below ROOT, though images hold setuid binaries, device nodes and 1777
dirs, and cache records hold build-arg values; an older, open store is tightened by
the next command; containers (USER 1000, volumes, cache mounts) still work."""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

import pytest

from conftest import CLI, require_tool

NOBODY = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]
SECRET = "build-arg-value-4f1c9e"

# Run as uid 65534: every path that can be stat'ed, opened or executed is reported.
PROBE = r"""
import json, os, subprocess, sys
paths = json.load(sys.stdin)
reached = []
try:
    os.listdir(os.path.dirname(paths[0].split("/store/")[0] + "/store/"))
    reached.append("listdir ROOT")
except OSError:
    pass
for p in paths:
    for what, attempt in (("lstat", lambda: os.lstat(p)),
                          ("open", lambda: os.close(os.open(p, os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW))),
                          ("path", lambda: os.close(os.open(p, os.O_PATH | os.O_NOFOLLOW))),
                          ("exec", lambda: subprocess.run([p, "id", "-u"], capture_output=True,
                                                          stdin=subprocess.DEVNULL, timeout=10)
                                   if p.endswith("/idbin") else os.lstat("/nonexistent"))):
        try:
            attempt()
        except OSError:
            continue
        reached.append(f"{what} {p}")
print(json.dumps(reached))
"""


@pytest.fixture
def open_base():
    """A directory every user can traverse (pytest's own tmp dirs are 0700, which would
    hide an open store and make the test pass for the wrong reason)."""
    base = Path(tempfile.mkdtemp(prefix="pybuild-private-", dir="/tmp"))
    os.chmod(base, 0o755)
    yield base
    shutil.rmtree(base, ignore_errors=True)


def _all_paths(root: Path) -> list[str]:
    """Everything below ROOT (ROOT itself may be seen, not entered)."""
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        out += [os.path.join(dirpath, n) for n in dirnames + filenames]
    return out


def _reachable_by_nobody(paths: list[str]) -> list[str]:
    require_tool("setpriv")
    p = subprocess.run([*NOBODY, sys.executable, "-c", PROBE], input=json.dumps(paths),
                       capture_output=True, text=True, check=True, timeout=120)
    return json.loads(p.stdout)


def test_store_unreachable_by_other_users(open_base, busybox_rootfs, tmp_path):
    cli = CLI(open_base / "store")
    tar = tmp_path / "busybox.tar"
    with tarfile.open(tar, "w") as t:
        t.add(busybox_rootfs, arcname=".")
    cli("import", tar, "busybox")
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    shutil.copy(busybox_rootfs / "bin" / "busybox", ctx / "idbin")
    (ctx / "Dockerfile").write_text(
        "FROM busybox\n"
        "ARG SECRETARG\n"
        "COPY --chmod=4755 idbin /idbin\n"
        "RUN mknod /nullnode c 1 3 && mkdir -m 1777 /pub && echo $SECRETARG >/dev/null\n"
        "USER 1000\n"
        "RUN --mount=type=cache,target=/c,uid=1000 id -u > /pub/uid && touch /c/mine\n")
    cli("build", "--progress", "quiet", "-t", "hostile", "--build-arg", f"SECRETARG={SECRET}", ctx)
    root = cli.root
    # the image's hostile content really is in the store, where an open store shows it
    paths = _all_paths(root)
    setuid = [p for p in paths if p.endswith("/idbin") and os.lstat(p).st_mode & stat.S_ISUID]
    devices = [p for p in paths if p.endswith("/nullnode") and stat.S_ISCHR(os.lstat(p).st_mode)]
    sticky = [p for p in paths if p.endswith("/pub") and os.lstat(p).st_mode & 0o1777 == 0o1777]
    records = [p for p in paths if "/cache/entries/" in p and os.path.isfile(p)
               and SECRET.encode() in Path(p).read_bytes()]
    assert setuid and devices and sticky and records
    # containers still work below a private root: USER 1000, a volume, the cache mount
    p = cli("run", "--rm", "--network", "none", "-v", "pubvol:/pub", "hostile", "sh", "-c",
            "id -u; cat /pub/uid; touch /pub/f && ls /pub")
    assert p.stdout.split() == ["1000", "1000", "f", "uid"], p.stderr
    paths = _all_paths(root)
    assert any("/volumes/pubvol/_data/f" in p for p in paths)
    assert _reachable_by_nobody(paths) == []
    assert stat.S_IMODE(os.stat(root).st_mode) == 0o700


def test_old_open_store_is_tightened_on_open(open_base, tmp_path):
    cli = CLI(open_base / "store")
    (tmp_path / "rootfs" / "bin").mkdir(parents=True)
    (tmp_path / "rootfs" / "bin" / "tool").write_text("x")
    tar = tmp_path / "r.tar"
    with tarfile.open(tar, "w") as t:
        t.add(tmp_path / "rootfs", arcname=".")
    cli("import", tar, "small")
    root = cli.root
    # what an older pybuild left: everything 0755/0644
    loosened = [root, *(p for p in root.iterdir())]
    for sub in ("blobs/sha256", "volumes", "tmp"):
        (root / sub).mkdir(exist_ok=True)
        loosened.append(root / sub)
    for p in loosened:
        os.chmod(p, 0o755 if p.is_dir() else 0o644)
    assert _reachable_by_nobody([str(root / "index.json")]) != []
    cli("images")
    for p in loosened:
        mode = stat.S_IMODE(os.lstat(p).st_mode)
        if p.is_dir():
            assert mode == 0o700, p
        elif p.name in ("index.json", "oci-layout", "lock", "gc.lock"):
            assert mode == 0o600, p
    assert _reachable_by_nobody(_all_paths(root)) == []
