"""A container's filesystem as the host may touch it: one directory fd of its root.

`cp`, `export` (and `diff`/`commit` for the lowers) work from that fd only, through
the path resolver with policy ONE_MOUNT (symlinks resolve as inside the container,
nothing leads out of its rootfs or into another mount). Where the fd comes from:

* a running container: /proc/<pid>/root of the PID 1 our own record names (the pid
  our supervisor got from the sandbox, never one the container reported), opened
  between a pidfd and a start-time check, so a reused pid cannot hand us another
  process's root. It is the container's merged overlay, as the container sees it;
* a stopped (or created) container: its overlay (image snapshots + its upper dir)
  mounted again by the snapshotter as a detached mount (fsmount: attached nowhere,
  gone with its last fd), or, on kernels without the new mount API, mounted on a
  work dir of ours in a private mount namespace of this (short-lived) process.

Writes go through the overlay in both cases (copy-up and whiteouts stay the
kernel's business); nothing ever runs inside the container.
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

from layerstore import resolver
from layerstore.errors import PybuildError
from layerstore.store import Image, Store

from .containers import Containers, ContainerState, alive
from .errors import RunError
from .lifecycle import is_running

_ROOT_FLAGS = os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC


class FsError(PybuildError):
    """cp/diff/commit/export could not do what was asked (exit 1, as docker's)."""


@dataclass
class ContainerFS:
    """The root fd of a container's filesystem and what our record says of it."""

    fd: int
    state: ContainerState
    running: bool
    mounts: list[dict] = field(default_factory=list)    # inspect's Mounts, from our record

    @contextmanager
    def route(self, path: str, write: bool) -> Iterator[tuple[int, str]]:
        """(root fd, path below it) for a container path: the container's root, or, for a
        path under one of its volumes or bind mounts (by our own record, never by what
        the container shows), the mount's source directory on the host, as docker's cp
        writes through them. A symlink inside a volume then resolves within the volume
        (docker: within the container); nothing leads out of it either way. tmpfs
        mounts exist only inside a running container: refused."""
        names = resolver.components(path)
        best: dict | None = None
        for m in self.mounts:
            d = resolver.components(m.get("Destination", ""))
            if d and names[:len(d)] == d and (
                    best is None or len(d) > len(resolver.components(best["Destination"]))):
                best = m
        if best is None:
            yield self.fd, path
            return
        dest = best["Destination"]
        if best.get("Type") not in ("volume", "bind") or not best.get("Source"):
            raise FsError(f"{path}: is on the container's {best.get('Type')} mount at {dest}, "
                          "which the host cannot reach")
        if write and not best.get("RW", True):
            raise FsError(f"{path}: mounted volume is marked read-only ({dest})")
        try:
            fd = os.open(best["Source"], _ROOT_FLAGS)
        except NotADirectoryError:
            raise FsError(f"{path}: is the container's bind mount of a file at {dest}; "
                          "pybuild cp does not replace bind-mounted files") from None
        except OSError as e:
            raise FsError(f"{path}: the source of the container's mount at {dest} is gone: "
                          f"{e.strerror}") from None
        try:
            yield fd, "/" + "/".join(names[len(resolver.components(dest)):])
        finally:
            os.close(fd)


def container_image(store: Store, st: ContainerState) -> Image:
    """The image a container was created from (its manifest digest, a GC root)."""
    from layerstore.model import Descriptor

    from layerstore.errors import NotFound

    try:
        size = store.blobs.size(st.image)
    except (OSError, ValueError, NotFound):
        raise RunError(f"container {st.id[:12]}: its image {st.image[:19]} is no longer "
                       "in the store") from None
    obj = store.read_manifest(Descriptor("", st.image, size))
    return store.load_image(Descriptor(obj.media_type, st.image, size), [])


def lowers_of(store: Store, containers: Containers, st: ContainerState) -> list[Path]:
    """The container's lower dirs, bottom first (as `create` mounted them)."""
    lowers = store.snapshot_chain(container_image(store, st))
    if not lowers:
        lowers = [containers.path(st.id) / "empty"]
    return lowers


@contextmanager
def opened(store: Store, containers: Containers, ref: str) -> Iterator[ContainerFS]:
    st = containers.find(ref)
    mounts = [m for m in st.mounts if isinstance(m, dict) and m.get("Destination")]
    if is_running(st):
        fd = _running_root(st)
        try:
            yield ContainerFS(fd, st, True, mounts)
        finally:
            os.close(fd)
        return
    with _stopped_root(store, containers, st) as fd:
        yield ContainerFS(fd, st, False, mounts)


def _running_root(st: ContainerState) -> int:
    gone = RunError(f"container {st.id[:12]} stopped while being opened; try again")
    try:
        pidfd = os.pidfd_open(st.pid)
    except (ProcessLookupError, ValueError, OSError):
        raise gone from None
    try:
        if not alive(st.pid, st.pid_start):
            raise gone
        try:
            fd = os.open(f"/proc/{st.pid}/root", _ROOT_FLAGS)
        except OSError:
            raise gone from None
        # still the same process (its pid could not be reused while it lives): the root
        # we opened is the container's, not a newcomer's that got the pid
        if not alive(st.pid, st.pid_start):
            os.close(fd)
            raise gone
        return fd
    finally:
        os.close(pidfd)


@contextmanager
def _stopped_root(store: Store, containers: Containers, st: ContainerState) -> Iterator[int]:
    from layerstore import snapshots

    cdir = containers.path(st.id)
    for sub in ("upper", "work"):
        if not (cdir / sub).is_dir() or (cdir / sub).is_symlink():
            raise RunError(f"container {st.id[:12]}: its {sub} dir is missing")
    plan = snapshots.MountPlan(lowers_of(store, containers, st), cdir / "upper", cdir / "work")
    with containers.locked(st.id):
        cur = containers.load(st.id)
        if is_running(cur):
            raise RunError(f"container {st.id[:12]} started meanwhile; try again")
        mfd = snapshots.open_mount(plan)
        if mfd is not None:
            try:
                yield mfd
            finally:
                os.close(mfd)
            return
        with _legacy_mount(store, plan) as fd:
            yield fd


@contextmanager
def _legacy_mount(store: Store, plan) -> Iterator[int]:
    """mount(2) on a work dir of ours, in a mount namespace private to this process
    (it dies with it; the mount never shows on the host)."""
    from layerstore import snapshots, syscalls, workdirs

    syscalls.unshare(0x00020000)       # CLONE_NEWNS
    syscalls.mount(None, "/", None, syscalls.MS_REC | syscalls.MS_PRIVATE)
    (store.root / "tmp").mkdir(mode=0o700, exist_ok=True)
    wd = workdirs.create(store.root / "tmp", "build-cp-")
    target = wd.path / "root"
    try:
        target.mkdir(mode=0o700)
        snapshots.mount(plan, str(target))
        try:
            fd = os.open(target, _ROOT_FLAGS | os.O_NOFOLLOW)
            try:
                yield fd
            finally:
                os.close(fd)
        finally:
            syscalls.umount2(str(target), syscalls.MNT_DETACH)
    finally:
        wd.release()
