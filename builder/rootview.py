"""Work on an image's merged filesystem without a container.

COPY, ADD and WORKDIR must see the stage's rootfs as the union of its layers
(is the destination a directory? who is `app` in /etc/passwd?) and write
their changes into a fresh upper dir. `in_overlay` forks a child that
unshares its mount namespace, mounts the overlay(s) privately and calls a
function there: every mount vanishes with the child, even if it is killed.
`secure_join` resolves a path inside such a root the way the container
would, so no symlink in an image leads a write to the host.
"""

from __future__ import annotations

import os
import pickle
import posixpath
import stat
import tempfile
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from layerstore.errors import PybuildError


class RootError(PybuildError):
    """A path in an image cannot be resolved or written safely."""


@dataclass
class Tree:
    """One filesystem to mount: read-only `lowers` (bottom first) + optional upper."""

    lowers: list[Path]
    upper: Path | None = None
    work: Path | None = None


def secure_join(root: str, path: str, follow_last: bool = True) -> str:
    """`root/path` with every symlink resolved as if `root` were "/"."""
    parts = [p for p in path.split("/") if p and p != "."]
    resolved: list[str] = []
    hops = 0
    while parts:
        name = parts.pop(0)
        if name == "..":
            if resolved:
                resolved.pop()
            continue
        cand = os.path.join(root, *resolved, name)
        if not parts and not follow_last:
            resolved.append(name)
            break
        try:
            st = os.lstat(cand)
        except (FileNotFoundError, NotADirectoryError):
            resolved.append(name)
            continue
        if stat.S_ISLNK(st.st_mode):
            hops += 1
            if hops > 255:
                raise RootError(f"{path}: too many levels of symbolic links")
            target = os.readlink(cand)
            if target.startswith("/"):
                resolved = []
            parts = [p for p in target.split("/") if p and p != "."] + parts
            continue
        resolved.append(name)
    return os.path.join(root, *resolved) if resolved else root


def _mount_tree(tree: Tree, target: str, empty: Path) -> None:
    """Mount `tree` on `target` (in the caller's private mount namespace)."""
    from builder.sandbox import libc

    lowers = list(tree.lowers) or [empty]
    if tree.upper is None and len(lowers) == 1:
        libc.mount(str(lowers[0]), target, None, libc.MS_BIND)
        libc.mount(None, target, None, libc.MS_BIND | libc.MS_REMOUNT | libc.MS_RDONLY)
        return
    if tree.upper is None:
        lowers = lowers + [empty]  # a read-only overlay needs two lowers; `empty` adds nothing
    if libc.new_api_available():
        fd = libc.fsopen("overlay")
        try:
            # lowerdir+ appends each below the previous: give the top layer first
            for lower in reversed(lowers):
                libc.fsconfig(fd, libc.FSCONFIG_SET_STRING, "lowerdir+", str(lower))
            if tree.upper is not None:
                libc.fsconfig(fd, libc.FSCONFIG_SET_STRING, "upperdir", str(tree.upper))
                libc.fsconfig(fd, libc.FSCONFIG_SET_STRING, "workdir", str(tree.work))
            libc.fsconfig(fd, libc.FSCONFIG_CMD_CREATE)
            mfd = libc.fsmount(fd)
        finally:
            os.close(fd)
        libc.move_mount_fd(mfd, target)
        os.close(mfd)
        return
    opts = "lowerdir=" + ":".join(str(l) for l in reversed(lowers))
    if tree.upper is not None:
        opts += f",upperdir={tree.upper},workdir={tree.work}"
    libc.mount("overlay", target, "overlay", 0, opts)


def in_overlay(trees: list[Tree], fn: Callable[..., Any], *args: Any, scratch: Path) -> Any:
    """Run `fn(mountpoints, *args)` in a child with `trees` mounted; returns its result.

    A PybuildError raised by `fn` is re-raised here with its message.
    """
    from builder.sandbox import libc

    scratch.mkdir(parents=True, exist_ok=True)
    empty = scratch / "empty"
    empty.mkdir(exist_ok=True)
    mnt_base = Path(tempfile.mkdtemp(prefix="view-", dir=scratch))
    points = []
    for i, _ in enumerate(trees):
        p = mnt_base / str(i)
        p.mkdir()
        points.append(str(p))
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # child
        os.close(r)
        code = 0
        try:
            libc.prctl(1, 9)  # PR_SET_PDEATHSIG SIGKILL
            libc.unshare(libc.CLONE_NEWNS)
            libc.mount(None, "/", None, libc.MS_REC | libc.MS_PRIVATE)
            for tree, point in zip(trees, points):
                _mount_tree(tree, point, empty)
            out = ("ok", fn(points, *args))
        except PybuildError as exc:
            out, code = ("err", (type(exc).__name__, str(exc))), 1
        except BaseException as exc:  # noqa: BLE001 - reported to the parent
            out, code = ("err", ("RootError", f"{type(exc).__name__}: {exc}\n"
                                               f"{traceback.format_exc()}")), 1
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
