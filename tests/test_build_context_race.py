"""A layer holds exactly the bytes its cache key was computed from (issue 11, finding 5).

COPY hashes the context for the step's key, then copies. A context file flipped in
between used to be copied as it was *then*: the cache entry's layer held other bytes
than its key said, and a later build of a context holding the "good" file hit that
entry and got the "bad" bytes. The flip is made deterministic here by a hook that
runs right after the hashing pass (the window a concurrent writer would use).
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from buildpeer import import_busybox, pybuild_unpack
from conftest import REPO

GOOD = b"good bytes\n" * 1000
BAD = b"BAD BYTES!\n" * 1000

DRIVER = r'''
import os, sys
import builder.steps.copy as copystep

target, mode = sys.argv[1], sys.argv[2]
original = copystep.digest_selection


def flip():
    if mode == "inplace":              # same inode, new content
        with open(target, "r+b") as f:
            f.write(b"BAD BYTES!\n" * 1000)
    elif mode == "replace":            # a new inode renamed over the hashed one
        with open(target + ".new", "wb") as f:
            f.write(b"BAD BYTES!\n" * 1000)
        os.rename(target + ".new", target)
    elif mode == "remove":
        os.unlink(target)
    elif mode == "add":                # appears after hashing: not part of the key
        with open(os.path.join(os.path.dirname(target), "late.txt"), "wb") as f:
            f.write(b"BAD BYTES!\n")


def hooked(*args, **kwargs):
    out = original(*args, **kwargs)
    flip()
    return out


copystep.digest_selection = hooked
from builder.cli import main
main(prog_name="pybuild", args=sys.argv[3:])
'''


def _context(tmp_path):
    ctx = tmp_path / "ctx"
    data = ctx / "data"
    data.mkdir(parents=True)
    for k in range(50):
        (data / f"other{k}.txt").write_text(f"{k}\n")
    (data / "f.bin").write_bytes(GOOD)
    (ctx / "Dockerfile").write_text("FROM busybox\nCOPY data /data\n")
    return ctx, data / "f.bin"


@pytest.fixture
def bb(pybuild, busybox_rootfs, tmp_path):
    import_busybox(pybuild, busybox_rootfs, tmp_path)
    return pybuild


@pytest.mark.parametrize("mode", ["inplace", "replace", "remove", "add"])
def test_a_file_flipped_after_hashing_never_lands_under_the_key(bb, tmp_path, store_root, mode):
    ctx, target = _context(tmp_path)
    driver = tmp_path / "driver.py"
    driver.write_text(DRIVER)
    p = subprocess.run([sys.executable, str(driver), str(target), mode, "--root", str(store_root),
                        "build", "--progress", "plain", "-t", "race", str(ctx)],
                       capture_output=True, text=True, timeout=300,
                       env=dict(os.environ, PYTHONPATH=str(REPO)))
    assert "Traceback" not in p.stderr, p.stderr
    if mode == "add":
        # the late file was not hashed, so it is not copied: the layer is what the key says
        assert p.returncode == 0, p.stderr
        root = pybuild_unpack(bb, "race", tmp_path / "first")
        assert not (root / "data" / "late.txt").exists()
        assert (root / "data" / "f.bin").read_bytes() == GOOD
        return
    if p.returncode == 0:
        # acceptable only if the layer holds the bytes the key was computed from
        root = pybuild_unpack(bb, "race", tmp_path / "first")
        assert (root / "data" / "f.bin").read_bytes() == GOOD
    else:
        last = p.stderr.strip().splitlines()[-1]
        assert last.startswith("pybuild: error:") and "changed while it was being copied" in last
        assert "f.bin" in last
    # the context holds the good file again (a new inode, as another checkout would)
    target.unlink(missing_ok=True)
    target.write_bytes(GOOD)
    bb("build", "--progress", "plain", "-t", "again", ctx)
    root = pybuild_unpack(bb, "again", tmp_path / "second")
    assert (root / "data" / "f.bin").read_bytes() == GOOD


def test_hashing_refuses_a_file_changed_since_it_was_listed(tmp_path):
    from builder.context import Context
    from builder.steps.copy import (ContextChanged, FileHashes, SourceTree, digest_selection,
                                    select_sources)

    (tmp_path / "f").write_bytes(GOOD)
    ctx = Context.open(tmp_path)
    sel = select_sources(["f"], SourceTree.of_context(ctx))
    with open(tmp_path / "f", "r+b") as f:     # rewritten after the listing, same size
        f.write(BAD)
    with pytest.raises(ContextChanged, match="f changed while it was being copied"):
        digest_selection(sel, FileHashes(None))
