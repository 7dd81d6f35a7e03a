"""Work dirs under ROOT that prove their owner is alive.

A build's temporary dirs (ROOT/containers/build-*, ROOT/tmp/*, a snapshot
being unpacked in ROOT/snapshots/.tmp-*) outlive an owner that is SIGKILLed,
and nothing tells a later command whether the process that made one still uses
it: a pid written into it is no proof, pids are reused. So the owner holds an
exclusive flock on the directory itself for as long as it uses it, and the
kernel drops that lock when the owner dies, however it dies. `reclaim`
removes every such dir whose lock it can take: no live process owns it.

The lock lives on the open file description: a forked child inherits it (the
sandbox's monitor closes every fd it does not need; exec'd programs never see
it, the fd is close-on-exec).
"""

from __future__ import annotations

import errno
import fcntl
import os
import secrets
from pathlib import Path
from typing import Callable

from layerstore import resolver

_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


class WorkDir:
    """A directory this process owns (an exclusive flock on it, held until release)."""

    def __init__(self, path: Path, fd: int) -> None:
        self.path = path
        self._fd = fd

    def release(self) -> None:
        """Remove the directory and everything in it, then drop the lock."""
        if self._fd < 0:
            return
        try:
            _remove_if_same(self.path, self._fd)
        finally:
            self.disown()

    def disown(self) -> None:
        """Drop the lock and keep the directory (it was renamed into its final place)."""
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def __enter__(self) -> "WorkDir":
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def create(parent: Path, prefix: str, mode: int = 0o700) -> WorkDir:
    """A new directory `parent/<prefix><random hex>`, locked for this process's lifetime."""
    parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    for _ in range(100):
        path = parent / f"{prefix}{secrets.token_hex(8)}"
        try:
            os.mkdir(path, 0o700)
        except FileExistsError:
            continue
        fd = os.open(path, _DIR)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            # a reclaim took it between our mkdir and our lock: it removes it, we move on
            os.close(fd)
            continue
        if not _same(path, fd):       # ... or took, removed and released it meanwhile
            os.close(fd)
            continue
        os.fchmod(fd, mode)           # exactly `mode`, whatever the umask
        return WorkDir(path, fd)
    raise OSError(errno.EEXIST, f"cannot create a work dir in {parent}")


def _same(path: Path, fd: int) -> bool:
    try:
        st = os.stat(path, follow_symlinks=False)
    except FileNotFoundError:
        return False
    own = os.fstat(fd)
    return (st.st_dev, st.st_ino) == (own.st_dev, own.st_ino)


def _remove_if_same(path: Path, fd: int) -> None:
    """Remove `path` if it is still the directory `fd` holds (never a successor)."""
    try:
        pfd = os.open(path.parent, _DIR)
    except FileNotFoundError:
        return
    try:
        try:
            st = os.stat(path.name, dir_fd=pfd, follow_symlinks=False)
        except FileNotFoundError:
            return
        own = os.fstat(fd)
        if (st.st_dev, st.st_ino) == (own.st_dev, own.st_ino):
            resolver.remove_tree_at(pfd, path.name)
    finally:
        os.close(pfd)


def owner_alive(path: Path) -> bool:
    """Whether a live process holds the lock of the work dir `path`."""
    try:
        fd = os.open(path, _DIR)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


def reclaim(parent: Path, prefixes: tuple[str, ...] = ("",),
            measure: bool = True, reclaimed: Callable[[str], None] | None = None
            ) -> tuple[int, int]:
    """Remove the entries of `parent` named with one of `prefixes` that no live process
    owns; returns (how many, bytes freed, when `measure`). A directory is owned while a
    process holds its lock; a non-directory entry is never owned."""
    try:
        pfd = os.open(parent, _DIR)
    except (FileNotFoundError, NotADirectoryError):
        return 0, 0
    count = freed = 0
    try:
        names = [e.name for e in os.scandir(pfd) if e.name.startswith(prefixes)]
        for name in names:
            try:
                fd = os.open(name, _DIR, dir_fd=pfd)
            except OSError as e:
                if e.errno in (errno.ENOTDIR, errno.ELOOP):   # a stray file or symlink
                    freed += resolver.tree_usage_at(pfd, name) if measure else 0
                    _unlink_quietly(pfd, name)
                    count += 1
                continue
            try:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    continue                    # its owner is alive
                try:
                    st = os.stat(name, dir_fd=pfd, follow_symlinks=False)
                except FileNotFoundError:
                    continue                    # renamed into place by its owner
                own = os.fstat(fd)
                if (st.st_dev, st.st_ino) != (own.st_dev, own.st_ino):
                    continue
                freed += resolver.tree_usage_at(pfd, name) if measure else 0
                resolver.remove_tree_at(pfd, name)
                count += 1
                if reclaimed is not None:
                    reclaimed(name)     # what the dead owner held beside it (its cgroups)
            finally:
                os.close(fd)
    finally:
        os.close(pfd)
    return count, freed


def _unlink_quietly(dfd: int, name: str) -> None:
    try:
        os.unlink(name, dir_fd=dfd)
    except FileNotFoundError:
        pass
