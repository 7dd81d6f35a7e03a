"""The one path resolver for untrusted trees: image rootfs, upper dirs, snapshots, the
build context.

Every tree that an image, a layer, a build context or a running container
could have shaped is entered through a directory fd of its root, and every
path inside it is resolved from that fd by the kernel (openat2 with
RESOLVE_IN_ROOT / RESOLVE_BENEATH / RESOLVE_NO_SYMLINKS) or, on kernels
without openat2, by a walk that opens one component at a time with
O_NOFOLLOW and expands symlinks itself. No host path is ever joined with a
path from such a tree: a symlink planted in it (`/etc -> /host/etc`,
`x -> ../../..`) can never lead an open, a mkdir, an unlink or a chmod out of
its root, also when it is swapped in between two calls (each call starts from
an fd, not from a path string).

Three policies, one per kind of tree:

* IN_ROOT: symlinks resolve as if the root were "/" (an image's rootfs, seen
  the way its container sees it: COPY destinations, /etc/passwd lookups);
* BENEATH: symlinks are followed while they stay below the root; an absolute
  one or a `..` that climbs out is an error (the build context);
* NO_SYMLINKS: no symlink anywhere on the path (upper dirs and snapshots,
  where an entry is taken literally: stub removal, layer application);
* ONE_MOUNT: IN_ROOT, and the path may not cross into another mount below the
  root (`pybuild cp` in a container's filesystem: its /proc, /sys, /dev, volumes
  and bind mounts are not the container's rootfs; a host-side write through the
  container's /proc/sys would reach the host's sysctls).

Errors: PathEscape (a PybuildError) when the policy forbids the path, else
OSError with the kernel's errno (ENOENT, ENOTDIR, ELOOP, ...).
"""

from __future__ import annotations

import errno
import os
import stat
from collections import deque
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

from layerstore import syscalls
from layerstore.errors import PybuildError

IN_ROOT = "in-root"
BENEATH = "beneath"
NO_SYMLINKS = "no-symlinks"
ONE_MOUNT = "in-root-one-mount"

MAX_HOPS = 40          # the kernel's own symlink limit (MAXSYMLINKS)

# openat2 where the kernel has it; tests switch it off to exercise the walk
USE_OPENAT2 = True

_RESOLVE = {
    IN_ROOT: syscalls.RESOLVE_IN_ROOT | syscalls.RESOLVE_NO_MAGICLINKS,
    BENEATH: syscalls.RESOLVE_BENEATH | syscalls.RESOLVE_NO_MAGICLINKS,
    NO_SYMLINKS: syscalls.RESOLVE_BENEATH | syscalls.RESOLVE_NO_SYMLINKS,
    ONE_MOUNT: syscalls.RESOLVE_IN_ROOT | syscalls.RESOLVE_NO_MAGICLINKS | syscalls.RESOLVE_NO_XDEV,
}
_PATH = os.O_PATH | os.O_CLOEXEC
_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC


class PathEscape(PybuildError):
    """A path inside an untrusted tree that its policy does not allow (leaves the root,
    or goes through a symlink where none may be)."""


def _show(path: str | bytes) -> str:
    return os.fsdecode(path) if path else "/"


def components(path: str | bytes) -> list[str]:
    """The names of `path` relative to a root ("" and "." dropped; ".." kept)."""
    text = os.fsdecode(path)
    if "\0" in text:
        raise PathEscape(f"{text!r}: NUL byte in path")
    return [p for p in text.split("/") if p and p != "."]


def open_root(path: str | os.PathLike) -> int:
    """An O_PATH fd of a trusted host directory, to resolve paths inside it from."""
    return os.open(path, _PATH | os.O_DIRECTORY)


@contextmanager
def rooted(path: str | os.PathLike) -> Iterator[int]:
    fd = open_root(path)
    try:
        yield fd
    finally:
        os.close(fd)


def _use_openat2() -> bool:
    return USE_OPENAT2 and syscalls.openat2_available()


def resolve(root_fd: int, path: str | bytes, *, policy: str = IN_ROOT, follow: bool = True,
            flags: int = os.O_PATH, mode: int = 0) -> int:
    """Open `path` inside the tree at `root_fd` with `flags` (close-on-exec added).

    `follow=False` opens a final symlink itself (O_PATH) or fails with ELOOP (other
    flags), as O_NOFOLLOW does. O_CREAT is not supported here: create entries with
    `parent()` and the *at calls."""
    if policy not in _RESOLVE:
        raise ValueError(f"unknown resolver policy {policy!r}")
    if flags & os.O_CREAT:
        raise ValueError("resolve() does not create; use parent() and the *at calls")
    names = components(path)
    flags |= os.O_CLOEXEC | (0 if follow else os.O_NOFOLLOW)
    if _use_openat2():
        try:
            return syscalls.openat2(root_fd, "/".join(names) or ".", flags, mode, _RESOLVE[policy])
        except OSError as e:
            if e.errno == errno.EXDEV or (e.errno == errno.ELOOP and policy == NO_SYMLINKS
                                          and _has_link(root_fd, names, follow)):
                raise PathEscape(_escape_message(path, policy)) from None
            raise OSError(e.errno, os.strerror(e.errno), _show(path)) from None
    return _walk(root_fd, names, path, policy, follow, flags, mode)


def _has_link(root_fd: int, names: list[str], follow: bool) -> bool:
    """Whether an ELOOP under NO_SYMLINKS came from a symlink on the path (the policy)
    rather than from O_NOFOLLOW meeting a final symlink (the caller's own flag)."""
    if not follow:
        try:
            fd = syscalls.openat2(root_fd, "/".join(names[:-1]) or ".", _PATH,
                                  0, _RESOLVE[NO_SYMLINKS])
            os.close(fd)
        except OSError:
            return True
        return False
    return True


def _escape_message(path: str | bytes, policy: str) -> str:
    if policy == NO_SYMLINKS:
        return f"{_show(path)}: goes through a symbolic link"
    if policy == ONE_MOUNT:
        return f"{_show(path)}: is on another mount (/proc, /sys, /dev, a volume or a bind mount)"
    return f"{_show(path)}: leaves its root directory"


def _walk(root_fd: int, names: list[str], path: str | bytes, policy: str, follow: bool,
          flags: int, mode: int, seen: "Trace | None" = None) -> int:
    """The openat2 semantics, one component at a time with O_NOFOLLOW. `seen` (when
    given) collects where the walk ended and the symlinks it followed on the way."""
    stack = [os.dup(root_fd)]           # fds from the root down to the current directory
    where: list[str] = []               # the names of stack[1:], from the root down
    todo = deque(names)
    hops = 0
    # ONE_MOUNT: a directory on another device is another mount (the walk's stand-in for
    # RESOLVE_NO_XDEV; non-directories are not compared: overlayfs may report the
    # underlying file system's device for them)
    root_dev = os.fstat(root_fd).st_dev if policy == ONE_MOUNT else None
    try:
        while todo:
            name = todo.popleft()
            if name == "..":
                if len(stack) == 1:
                    if policy not in (IN_ROOT, ONE_MOUNT):
                        raise PathEscape(_escape_message(path, policy))
                    continue                # IN_ROOT: ".." of the root is the root
                os.close(stack.pop())
                where.pop()
                continue
            last = not todo
            try:
                fd = os.open(name, _PATH | os.O_NOFOLLOW, dir_fd=stack[-1])
            except OSError as e:
                raise OSError(e.errno, os.strerror(e.errno), _show(path)) from None
            st = os.fstat(fd)
            if root_dev is not None and stat.S_ISDIR(st.st_mode) and st.st_dev != root_dev:
                os.close(fd)
                raise PathEscape(_escape_message(path, policy))
            if stat.S_ISLNK(st.st_mode) and (follow or not last):
                try:
                    target = os.readlink("", dir_fd=fd)
                finally:
                    os.close(fd)
                if policy == NO_SYMLINKS:
                    raise PathEscape(_escape_message(path, policy))
                if seen is not None:
                    seen.links.append("/".join(where + [name]))
                hops += 1
                if hops > MAX_HOPS:
                    raise OSError(errno.ELOOP, os.strerror(errno.ELOOP), _show(path))
                if target.startswith("/"):
                    if policy == BENEATH:
                        raise PathEscape(_escape_message(path, policy))
                    while len(stack) > 1:
                        os.close(stack.pop())
                    where.clear()
                if not target:
                    raise OSError(errno.ENOENT, os.strerror(errno.ENOENT), _show(path))
                todo.extendleft(reversed(components(target)))
                continue
            if last:
                if seen is not None:
                    seen.names = where + [name]
                try:
                    return _reopen(fd, st, name, stack[-1], flags, mode, path)
                finally:
                    os.close(fd)
            if not stat.S_ISDIR(st.st_mode):
                os.close(fd)
                raise OSError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), _show(path))
            stack.append(fd)
            where.append(name)
        # the path ended on a directory we hold (the root, or after "..")
        if seen is not None:
            seen.names = list(where)
        return os.open(".", flags & ~os.O_NOFOLLOW, mode, dir_fd=stack[-1])
    finally:
        for fd in stack:
            os.close(fd)


@dataclass
class Trace:
    """Where a path leads inside a tree: `names`, the entry's own path from the root
    (no symlink, no ".." left in it), and `links`, the path of every symlink followed
    on the way (each spelled the same way), in the order they were met."""

    names: list[str] = field(default_factory=list)
    links: list[str] = field(default_factory=list)

    @property
    def path(self) -> str:
        return "/".join(self.names)


def trace(root_fd: int, path: str | bytes, *, policy: str = IN_ROOT, follow: bool = True) -> Trace:
    """Resolve `path` as resolve() does and say where it led and through which symlinks.

    For callers that must judge the real location, not the spelling: the build
    context, where `.dockerignore` hides files however they are reached (`link ->
    secret.txt`). Open the result with policy NO_SYMLINKS: the kernel then refuses it
    if a symlink was swapped in meanwhile. Always the O_NOFOLLOW walk (openat2 does not
    report the way it went); errors as resolve()."""
    if policy not in _RESOLVE:
        raise ValueError(f"unknown resolver policy {policy!r}")
    seen = Trace()
    flags = _PATH | (0 if follow else os.O_NOFOLLOW)
    os.close(_walk(root_fd, components(path), path, policy, follow, flags, 0, seen))
    return seen


def _reopen(fd: int, st: os.stat_result, name: str, parent_fd: int, flags: int, mode: int,
            path: str | bytes) -> int:
    """The final component opened with the caller's flags, and it must still be the
    entry we looked at (a swap in between is an ENOENT-like race, never an escape)."""
    if flags & os.O_PATH:
        return os.dup(fd) if not (flags & os.O_DIRECTORY and not stat.S_ISDIR(st.st_mode)) \
            else _raise(errno.ENOTDIR, path)
    if stat.S_ISLNK(st.st_mode):
        _raise(errno.ELOOP, path)
    new = os.open(name, flags | os.O_NOFOLLOW, mode, dir_fd=parent_fd)
    now = os.fstat(new)
    if (now.st_dev, now.st_ino) != (st.st_dev, st.st_ino):
        os.close(new)
        _raise(errno.ESTALE, path)
    return new


def _raise(code: int, path: str | bytes):
    raise OSError(code, os.strerror(code), _show(path))


def parent(root_fd: int, path: str | bytes, *, policy: str = IN_ROOT) -> tuple[int, str]:
    """(fd of the directory holding `path`'s last name, that name), for the *at calls
    that create, replace or remove an entry. The name itself is never followed. The
    directory fd is a real O_RDONLY one (usable with scandir, fchmod, fsetxattr)."""
    names = components(path)
    if not names or names[-1] == "..":
        raise OSError(errno.EINVAL, "not an entry of a directory", _show(path))
    dfd = resolve(root_fd, "/".join(names[:-1]), policy=policy, flags=_DIR)
    return dfd, names[-1]


@contextmanager
def parent_of(root_fd: int, path: str | bytes, *, policy: str = IN_ROOT) -> Iterator[tuple[int, str]]:
    dfd, name = parent(root_fd, path, policy=policy)
    try:
        yield dfd, name
    finally:
        os.close(dfd)


def lstat(root_fd: int, path: str | bytes, *, policy: str = IN_ROOT) -> os.stat_result | None:
    """The entry's own stat (a final symlink not followed); None when it does not exist."""
    if not components(path):
        return os.fstat(root_fd)
    try:
        with parent_of(root_fd, path, policy=policy) as (dfd, name):
            return os.stat(name, dir_fd=dfd, follow_symlinks=False)
    except (FileNotFoundError, NotADirectoryError):
        return None


def stat_in(root_fd: int, path: str | bytes, *, policy: str = IN_ROOT) -> os.stat_result | None:
    """stat of what `path` leads to (symlinks followed per policy); None if nothing."""
    try:
        fd = resolve(root_fd, path, policy=policy)
    except (FileNotFoundError, NotADirectoryError):
        return None
    try:
        return os.fstat(fd)
    finally:
        os.close(fd)


def readlink(root_fd: int, path: str | bytes, *, policy: str = IN_ROOT) -> str:
    fd = resolve(root_fd, path, policy=policy, follow=False)
    try:
        return os.readlink("", dir_fd=fd)
    finally:
        os.close(fd)


def makedirs(root_fd: int, path: str | bytes, *, policy: str = IN_ROOT, mode: int = 0o755,
             uid: int | None = None, gid: int | None = None,
             created: list[str] | None = None, follow_dangling: bool = True,
             _depth: int = 0) -> int:
    """mkdir -p of `path` inside the tree; returns an O_RDONLY fd of the directory.

    New directories get `mode` exactly (umask ignored) and, when given, uid:gid.
    A dangling symlink on the way is followed and its target created, inside the
    root, as docker's MkdirAll does; with follow_dangling=False it is an error
    (FileExistsError) instead: on the host, whoever can plant a link where the path
    is missing would otherwise choose where root creates a directory.
    `created` collects the paths made."""
    names = components(path)
    if _depth > MAX_HOPS:
        _raise(errno.ELOOP, path)
    if not names:
        return os.open(".", _DIR, dir_fd=root_fd)
    done: list[str] = []
    fd = os.open(".", _DIR, dir_fd=root_fd)
    try:
        for name in names:
            done.append(name)
            sub = "/".join(done)
            try:
                nfd = resolve(root_fd, sub, policy=policy, flags=_DIR)
            except FileNotFoundError:
                nfd = None
            if nfd is None:
                with parent_of(root_fd, sub, policy=policy) as (dfd, leaf):
                    try:
                        os.mkdir(leaf, mode, dir_fd=dfd)
                    except FileExistsError:
                        st = os.stat(leaf, dir_fd=dfd, follow_symlinks=False)
                        if (not stat.S_ISLNK(st.st_mode) or policy == NO_SYMLINKS
                                or not follow_dangling):
                            raise
                        # a dangling symlink: create what it points at (inside the root)
                        target = os.readlink(leaf, dir_fd=dfd)
                        base = "" if target.startswith("/") else "/".join(done[:-1])
                        os.close(makedirs(root_fd, f"{base}/{target}", policy=policy, mode=mode,
                                          uid=uid, gid=gid, created=created, _depth=_depth + 1))
                    else:
                        _fix_new_dir(dfd, leaf, mode, uid, gid)
                        if created is not None:
                            created.append("/" + sub)
                nfd = resolve(root_fd, sub, policy=policy, flags=_DIR)
            os.close(fd)
            fd = nfd
        return fd
    except BaseException:
        os.close(fd)
        raise


def _fix_new_dir(dfd: int, name: str, mode: int, uid: int | None, gid: int | None) -> None:
    """Mode and owner of a directory we just made, through an fd of it (never a path)."""
    fd = os.open(name, _DIR | os.O_NOFOLLOW, dir_fd=dfd)
    try:
        if uid is not None or gid is not None:
            os.fchown(fd, -1 if uid is None else uid, -1 if gid is None else gid)
        os.fchmod(fd, mode)
    finally:
        os.close(fd)


def remove_tree(path: Path) -> None:
    """Remove `path` and all below it: the resolver's fd walk (no symlink followed, no
    recursion however deep a RUN step nested its directories, 0555 dirs coped with)."""
    path = Path(path).absolute()
    try:
        parent = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except FileNotFoundError:
        return
    try:
        remove_tree_at(parent, path.name)
    finally:
        os.close(parent)


def remove_tree_at(dfd: int, name: str) -> None:
    """Remove the entry `name` of directory `dfd` and, for a directory, all below it,
    never following a symlink (an fd walk), also through read-only directories (layers
    may hold 0555 ones)."""
    try:
        st = os.stat(name, dir_fd=dfd, follow_symlinks=False)
    except FileNotFoundError:
        return
    if not stat.S_ISDIR(st.st_mode):
        os.unlink(name, dir_fd=dfd)
        return
    try:
        _remove_dir(dfd, name)
    except PermissionError:      # without CAP_DAC_OVERRIDE: a 0555 directory of a layer
        _make_writable(dfd, name)
        _remove_dir(dfd, name)


_HELD = 32      # directory fds held at once while removing a tree


def _remove_dir(dfd: int, name: str) -> None:
    """Remove directory dfd/name and all below it, with a loop (shutil.rmtree recursed
    once per level: a RUN step that nests 1200 directories made it raise RecursionError,
    left its work dir behind, and every later build died reclaiming it) and at most
    _HELD fds: a directory deeper than that is first renamed up into the tree's top, by
    dir fd and name, and removed from there."""
    top = os.open(name, _DIR | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dfd)
    frames: list[list] = [[dfd, name, top, None]]     # parent fd, name, fd, subdirs left
    moved = 0
    try:
        while frames:
            frame = frames[-1]
            parent, nm, fd, subdirs = frame
            if subdirs is None:
                subdirs = frame[3] = []
                with os.scandir(fd) as it:
                    for e in it:
                        if e.is_dir(follow_symlinks=False):
                            subdirs.append(e.name)
                        else:
                            os.unlink(e.name, dir_fd=fd)
            if subdirs and len(frames) >= _HELD:
                while subdirs:            # up into the top, under a name of ours
                    sub = subdirs.pop()
                    while True:
                        moved += 1
                        new = f".pybuild-rm-{moved}"
                        try:
                            os.rename(sub, new, src_dir_fd=fd, dst_dir_fd=top)
                            break
                        except FileNotFoundError:
                            break
                        except OSError as exc:
                            if exc.errno not in (errno.EEXIST, errno.ENOTEMPTY, errno.ENOTDIR,
                                                 errno.EISDIR):
                                raise
                    frames[0][3].append(new)
                continue
            if subdirs:
                sub = subdirs.pop()
                try:
                    child = os.open(sub, _DIR | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=fd)
                except FileNotFoundError:
                    continue
                frames.append([fd, sub, child, None])
                continue
            frames.pop()
            os.close(fd)
            os.rmdir(nm, dir_fd=parent)
    finally:
        for frame in frames:
            os.close(frame[2])


def _make_writable(dfd: int, name: str) -> None:
    """u+rwx on every directory of the tree `name` (fd walk, no symlink followed)."""
    try:
        top = os.open(name, _DIR | os.O_NOFOLLOW, dir_fd=dfd)
    except OSError:
        return
    todo = [top]
    while todo:
        fd = todo.pop()
        try:
            st = os.fstat(fd)
            if st.st_mode & 0o700 != 0o700:
                os.fchmod(fd, stat.S_IMODE(st.st_mode) | 0o700)
            for e in os.scandir(fd):
                if e.is_dir(follow_symlinks=False):
                    try:
                        todo.append(os.open(e.name, _DIR | os.O_NOFOLLOW, dir_fd=fd))
                    except OSError:
                        pass
        except OSError:
            pass
        finally:
            os.close(fd)


def tree_usage_at(dfd: int, name: str, seen: set[tuple[int, int]] | None = None,
                  measure: Callable[[os.stat_result, set], int] | None = None) -> int:
    """Bytes the entry `name` of directory `dfd` and everything below it take on disk, as
    `du -sx -B1` counts them: allocated blocks, directories included, an inode with
    several hard links once (per `seen`, shared across calls to count a store once), no
    symlink followed, nothing on another file system (a mount point is skipped).

    A loop, not recursion (a RUN step may nest thousands of directories), holding at most
    _HELD directory fds: the frames above the window are closed and reopened through
    `..` of their child on the way back up, checked by inode; a tree moved meanwhile (a
    running container renaming its own dirs) ends the walk early, never leaves it.
    `measure` replaces `allocated` (e.g. `content`: docker's file-size sum)."""
    if seen is None:
        seen = set()
    allocated = measure or _allocated
    try:
        st = os.stat(name, dir_fd=dfd, follow_symlinks=False)
    except FileNotFoundError:
        return 0
    total = allocated(st, seen)
    if not stat.S_ISDIR(st.st_mode):
        return total
    dev = st.st_dev
    try:
        top = os.open(name, _DIR | os.O_NOFOLLOW, dir_fd=dfd)
    except OSError:
        return total
    frames: list[list] = [[top, st.st_ino, None]]      # fd (-1: closed), inode, subdirs left
    try:
        while frames:
            frame = frames[-1]
            fd, _ino, subdirs = frame
            if subdirs is None:
                subdirs = frame[2] = []
                try:
                    with os.scandir(fd) as it:
                        for e in it:
                            try:
                                est = e.stat(follow_symlinks=False)
                            except OSError:
                                continue
                            if est.st_dev != dev:
                                continue              # a mount point: as du -x
                            total += allocated(est, seen)
                            if stat.S_ISDIR(est.st_mode):
                                subdirs.append((e.name, est.st_ino))
                except OSError:
                    pass
            if subdirs:
                sub, ino = subdirs.pop()
                try:
                    child = os.open(sub, _DIR | os.O_NOFOLLOW, dir_fd=fd)
                except OSError:
                    continue
                cst = os.fstat(child)
                if (cst.st_dev, cst.st_ino) != (dev, ino):
                    os.close(child)                   # swapped since it was listed
                    continue
                frames.append([child, ino, None])
                if len(frames) > _HELD:
                    far = frames[-_HELD - 1]
                    if far[0] >= 0:
                        os.close(far[0])
                        far[0] = -1
                continue
            frames.pop()
            if frames and frames[-1][0] < 0:
                parent_fd = -1
                try:
                    parent_fd = os.open("..", _DIR | os.O_NOFOLLOW, dir_fd=fd)
                    pst = os.fstat(parent_fd)
                except OSError:
                    pst = None
                if pst is None or (pst.st_dev, pst.st_ino) != (dev, frames[-1][1]):
                    if parent_fd >= 0:
                        os.close(parent_fd)
                    os.close(fd)
                    frames.clear()                    # moved under us: stop here
                    break
                frames[-1][0] = parent_fd
            os.close(fd)
    finally:
        for frame in frames:
            if frame[0] >= 0:
                os.close(frame[0])
    return total


def allocated(st: os.stat_result, seen: set[tuple[int, int]]) -> int:
    """st's blocks in bytes, or 0 for an inode with several links already in `seen`."""
    return _allocated(st, seen)


def content(st: os.stat_result, seen: set[tuple[int, int]]) -> int:
    """st's length for what is not a directory (docker's SizeRw: the bytes of the files,
    symlinks' targets), each inode with several links once."""
    if stat.S_ISDIR(st.st_mode):
        return 0
    if st.st_nlink > 1:
        ident = (st.st_dev, st.st_ino)
        if ident in seen:
            return 0
        seen.add(ident)
    return st.st_size


def _allocated(st: os.stat_result, seen: set[tuple[int, int]]) -> int:
    if st.st_nlink > 1 and not stat.S_ISDIR(st.st_mode):
        ident = (st.st_dev, st.st_ino)
        if ident in seen:
            return 0
        seen.add(ident)
    return st.st_blocks * 512
