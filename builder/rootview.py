"""Work on an image's merged filesystem without a container.

COPY, ADD and WORKDIR must see the stage's rootfs as the union of its layers
(is the destination a directory? who is `app` in /etc/passwd?) and write
their changes into a fresh upper dir. `in_overlay` forks a child that
unshares its mount namespace, mounts the snapshotter's mount plans there
(layerstore.snapshots: the one writer of overlay options) and calls a
function: every mount vanishes with the child, even if it is killed.
Paths inside such a root are resolved by layerstore/resolver.py (IN_ROOT, the
way the container would), so no symlink in an image leads a write to the host.
"""

from __future__ import annotations

import os
import pickle
import posixpath
import tempfile
import traceback
from pathlib import Path
from typing import Any, Callable

from layerstore import snapshots
from layerstore.errors import PybuildError
from layerstore.snapshots import MountPlan


class RootError(PybuildError):
    """A path in an image cannot be resolved or written safely."""


def in_overlay(plans: list[MountPlan], fn: Callable[..., Any], *args: Any, scratch: Path) -> Any:
    """Run `fn(mountpoints, *args)` in a child with `plans` mounted; returns its result.
    The mount points are made in `scratch` (a work dir of this process).

    A PybuildError raised by `fn` is re-raised here with its message.
    """
    from builder.sandbox import libc

    mnt_base = Path(tempfile.mkdtemp(prefix="view-", dir=scratch))
    points = []
    for i, _ in enumerate(plans):
        p = mnt_base / str(i)
        p.mkdir()
        points.append(str(p))
    r, w = os.pipe()
    parent = os.getpid()
    pid = os.fork()
    if pid == 0:  # child
        os.close(r)
        code = 0
        try:
            libc.prctl(1, 9)  # PR_SET_PDEATHSIG SIGKILL
            if os.getppid() != parent:   # died before that: we would hold its work dir
                os._exit(1)
            # made before our own namespace: a fuse-overlayfs daemon (rootless) must not
            # live in the namespace its mount is attached in, or it would keep it alive
            trees = [snapshots.open_mount(plan) for plan in plans]
            libc.unshare(libc.CLONE_NEWNS)
            libc.mount(None, "/", None, libc.MS_REC | libc.MS_PRIVATE)
            for plan, point, tree in zip(plans, points, trees):
                if tree is None:
                    snapshots.mount(plan, point)
                else:
                    libc.move_mount_fd(tree, point)
                    os.close(tree)
            out = ("ok", fn(points, *args))
        except PybuildError as exc:
            out, code = ("err", (type(exc).__name__, str(exc))), 1
        except BaseException as exc:  # noqa: BLE001 - reported to the parent
            # one line, as every error (the child's traceback stays on the exception)
            out, code = ("err", ("RootError", f"{type(exc).__name__}: {exc}",
                                 traceback.format_exc())), 1
        try:
            data = pickle.dumps(out)
        except Exception as exc:  # noqa: BLE001
            data = pickle.dumps(("err", ("RootError", f"unpicklable result: {exc}")))
        view = memoryview(data)
        while view:
            view = view[os.write(w, view):]
        os.close(w)
        os._exit(code)
    os.close(w)
    chunks = []
    try:
        while True:
            b = os.read(r, 1 << 20)
            if not b:
                break
            chunks.append(b)
    finally:
        os.close(r)
        os.waitpid(pid, 0)
        for p in points:
            try:
                os.rmdir(p)
            except OSError:
                pass
        try:
            os.rmdir(mnt_base)
        except OSError:
            pass
    if not chunks:
        raise RootError("file operation on the image's filesystem died without a result")
    kind, value = pickle.loads(b"".join(chunks))
    if kind == "err":
        if len(value) > 2:       # not a PybuildError: its first line, the rest kept aside
            err = RootError((value[1].splitlines() or ["failed"])[0])
            err.detail = value[2]
            raise err
        raise RootError(value[1])
    return value


def normalize_dest(path: str, workdir: str) -> str:
    """A destination made absolute against WORKDIR, keeping a trailing slash."""
    trailing = path.endswith("/") or path in (".", "./") or path.endswith("/.")
    full = path if path.startswith("/") else posixpath.join(workdir or "/", path)
    full = posixpath.normpath(full)
    if trailing and full != "/":
        full += "/"
    return full
