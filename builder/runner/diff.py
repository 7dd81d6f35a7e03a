"""`pybuild diff`: what a container changed, from its upper dir, as docker prints it.

`A /path` added, `C /path` changed, `D /path` deleted, sorted by path. The upper dir
is read by fds without following any symlink; what the image had at a path is
layerstore.merged's lookup over the image's snapshots (the one merged lookup). A
whiteout is a deletion; an opaque directory hides every entry of the lowers below
it that the upper does not have (each a deletion). A directory the image had is
changed when its mode or owner differ, it became opaque, or something below it
changed (as docker: its parents are listed with a change). The mount points and
stub files the sandbox made for a running container (/etc/hosts, /proc, ...: a
stopped one has them removed) are not changes, as docker's init layer hides them.
"""

from __future__ import annotations

import os
import stat
from contextlib import ExitStack
from typing import Iterator

from layerstore import resolver
from layerstore.merged import merged_dirs, merged_entry
from layerstore.userns import opaque_xattr
from layerstore.store import Store

from .containers import Containers, ContainerState
from .fsview import lowers_of

_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_MAX_DEPTH = 400


def _stub_paths(st: ContainerState) -> set[str]:
    from builder.steps.run import STUBS

    paths = set(STUBS) | {m.get("Destination", "") for m in st.mounts}
    return {"/" + "/".join(resolver.components(p)) for p in paths if p}


class _Walk:
    def __init__(self, lfds: list[int], stubs: set[str]) -> None:
        self.lfds = lfds            # the image's snapshots, top first
        self.stubs = stubs
        self.out: list[tuple[str, str]] = []
        self.skipped: set[str] = set()

    def is_stub(self, dfd: int, name: str, path: str, st: os.stat_result, low) -> bool:
        """A mount point or stub the sandbox made: named so, absent from the image, and
        empty (the sandbox's /dev with whatever it holds)."""
        if path not in self.stubs or low is not None:
            return False
        if stat.S_ISREG(st.st_mode):
            return st.st_size == 0
        if stat.S_ISDIR(st.st_mode):
            if path == "/dev":
                return True
            fd = os.open(name, _DIR, dir_fd=dfd)
            try:
                return next(iter(os.scandir(fd)), None) is None
            finally:
                os.close(fd)
        return False

    def walk(self, dfd: int, names: list[str], below_lower: bool) -> bool:
        """Record the changes below the upper's directory `dfd`; whether there were any."""
        if len(names) > _MAX_DEPTH:
            raise resolver.PathEscape("/" + "/".join(names[:20]) + "...: nested too deep")
        with os.scandir(dfd) as it:
            entries = sorted((e.name, e.stat(follow_symlinks=False)) for e in it)
        changed = False
        for name, st in entries:
            parts = names + [name]
            path = "/" + "/".join(parts)
            if stat.S_ISCHR(st.st_mode) and st.st_rdev == 0:
                self.out.append(("D", path))
                changed = True
                continue
            low = merged_entry(self.lfds, parts) if below_lower else None
            if self.is_stub(dfd, name, path, st, low):
                self.skipped.add(path)
                continue
            if not stat.S_ISDIR(st.st_mode):
                self.out.append(("A" if low is None else "C", path))
                changed = True
                continue
            fd = os.open(name, _DIR, dir_fd=dfd)
            try:
                now = os.fstat(fd)
                if (now.st_dev, now.st_ino) != (st.st_dev, st.st_ino):
                    continue                    # swapped meanwhile (a running container)
                try:
                    opaque = os.getxattr(fd, opaque_xattr()) == b"y"
                except OSError:
                    opaque = False
                mark = len(self.out)
                self.out.append(("", path))
                lower_dir = low is not None and stat.S_ISDIR(low[1].st_mode)
                below = self.walk(fd, parts, lower_dir and not opaque)
                if opaque and lower_dir:
                    below = self.hidden(fd, parts) or below
            finally:
                os.close(fd)
            if low is None:
                kind = "A"
            elif (below or opaque or not lower_dir
                  or (low[1].st_mode, low[1].st_uid, low[1].st_gid)
                  != (st.st_mode, st.st_uid, st.st_gid)):
                kind = "C"
            else:
                kind = ""
            self.out[mark] = (kind, path)
            changed = changed or bool(kind)
        return changed

    def hidden(self, fd: int, parts: list[str]) -> bool:
        """An opaque dir: what the image had in it and the upper does not is deleted."""
        have = set(os.listdir(fd))
        gone = False
        names: set[str] = set()
        for lfd in merged_dirs(self.lfds, parts):
            try:
                dfd = resolver.resolve(lfd, "/".join(parts), policy=resolver.NO_SYMLINKS,
                                       flags=_DIR)
            except (resolver.PathEscape, OSError):
                continue
            try:
                names.update(os.listdir(dfd))
            finally:
                os.close(dfd)
        for name in sorted(names - have):
            if merged_entry(self.lfds, parts + [name]) is not None:
                self.out.append(("D", "/" + "/".join(parts + [name])))
                gone = True
        return gone


def _walk_upper(store: Store, containers: Containers, st: ContainerState) -> _Walk:
    lowers = lowers_of(store, containers, st)
    with ExitStack() as stack:
        lfds = []
        for lower in reversed(lowers):
            fd = resolver.open_root(lower)
            stack.callback(os.close, fd)
            lfds.append(fd)
        w = _Walk(lfds, _stub_paths(st))
        ufd = os.open(containers.path(st.id) / "upper", _DIR)
        stack.callback(os.close, ufd)
        w.walk(ufd, [], True)
    return w


def changes(store: Store, containers: Containers, ref: str) -> list[tuple[str, str]]:
    """(kind, path) of every change, sorted by path as docker sorts them."""
    w = _walk_upper(store, containers, containers.find(ref))
    return sorted(((k, p) for k, p in w.out if k), key=lambda kp: kp[1])


def stubs_in_upper(store: Store, containers: Containers, st: ContainerState) -> set[str]:
    """The stubs a running container's upper holds (left out of a commit)."""
    return _walk_upper(store, containers, st).skipped


def lines(found: list[tuple[str, str]]) -> Iterator[str]:
    for kind, path in found:
        yield f"{kind} {path}"
