"""`pybuild cp` and `pybuild export`: files between a container and the host, as tars.

As docker does it, a copy is a tar of the source, rebased to the name it gets at the
destination, unpacked into the destination directory. Both halves work by fds:

* the tar is written by the layer codec's fd walk (layer_diff._Differ: no symlink
  followed, a listed entry that changes type meanwhile is an error, device nodes
  never opened) from an fd of the source entry;
* it is unpacked by the layer applier (layer_apply, flat, `.wh.*` names kept literal)
  into an fd of the destination directory: every entry created with O_EXCL|O_NOFOLLOW
  relative to its parent's fd, an existing symlink replaced, never written through.

Container-side paths are resolved from the container's root fd (fsview) with the
resolver's ONE_MOUNT policy: a symlink the container planted (`/target -> /etc`,
swapped in while cp runs) resolves inside the container, and nothing crosses into
the host or the container's /proc, /sys, /dev (CVE-2018-15664, CVE-2019-14271:
docker followed such links as root on the host, and ran a library of the
container). A path under a volume or bind mount (by our record) is resolved the
same way inside the mount's source directory (ContainerFS.route).

Owners: into the container, files are root's (-a: the source's uid/gid); out of it,
the caller's (-a: the container's), and a plain copy out drops setuid/setgid bits:
a container's setuid-root binary does not become one on the host by `cp`.
"""

from __future__ import annotations

import os
import stat
import sys
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Callable

from layerstore import resolver
from layerstore.errors import BadLayer
from layerstore.layer_tar import BLK, CHR, FIFO, REG, SYM, ZERO_BLOCK, build_header, padding

from .fsview import ContainerFS, FsError

_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC
_POLICY = resolver.ONE_MOUNT


def split_arg(arg: str) -> tuple[str | None, str]:
    """docker's `CONTAINER:PATH` or a local path (one that starts with / or . never
    names a container; `./a:b` is the local file a:b)."""
    if arg == "-" or arg.startswith(("/", ".")) or ":" not in arg:
        return None, arg
    name, _, path = arg.partition(":")
    return name, path


@dataclass
class Source:
    """The entry to copy: an O_PATH fd of it (or of what it links to, with -L), its stat,
    and its link text when it is a symlink copied as one."""

    fd: int
    st: os.stat_result
    contents: bool          # `dir/.`: the directory's contents, not the directory
    shown: str

    def close(self) -> None:
        os.close(self.fd)


class _Sink:
    def __init__(self, out: BinaryIO) -> None:
        self.out = out

    def add(self, data: bytes) -> None:
        self.out.write(data)


def write_tar(src: Source, arcname: bytes, out: BinaryIO, *, devices: bool,
              one_fs: bool) -> None:
    """The tar of `src`, its entries named `arcname` and below; an empty arcname: a
    directory's contents only, bare names (`cp dir/. existing-dir`)."""
    from layerstore.layer_diff import _Differ

    sink = _Sink(out)
    d = _Differ(sink, None, overlay=False, devices=devices, root=src.shown.encode(),
                one_fs=one_fs)
    st = src.st
    fmt = stat.S_IFMT(st.st_mode)
    common = dict(mode=st.st_mode & 0o7777, uid=st.st_uid, gid=st.st_gid,
                  mtime=st.st_mtime_ns // 1_000_000_000)
    if fmt == stat.S_IFDIR:
        dfd = os.open(f"/proc/self/fd/{src.fd}", _DIR)
        try:
            d.walk(dfd, root_entry=bool(arcname), prefix=arcname)
        finally:
            os.close(dfd)
    elif fmt == stat.S_IFLNK:
        sink.add(build_header(arcname, SYM, linkname=os.fsencode(os.readlink("", dir_fd=src.fd)), **common))
    elif fmt == stat.S_IFREG:
        # reopened through our own O_PATH fd: the very inode we looked at
        fd = os.open(f"/proc/self/fd/{src.fd}", os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        try:
            sink.add(build_header(arcname, REG, size=st.st_size, **common))
            left = st.st_size
            while left:
                data = os.read(fd, min(left, 1 << 20))
                if not data:
                    raise FsError(f"{src.shown}: shrank while being copied")
                sink.add(data)
                left -= len(data)
            sink.add(bytes(padding(st.st_size)))
        finally:
            os.close(fd)
    elif fmt == stat.S_IFIFO:
        sink.add(build_header(arcname, FIFO, **common))
    elif fmt in (stat.S_IFCHR, stat.S_IFBLK) and devices:
        sink.add(build_header(arcname, CHR if fmt == stat.S_IFCHR else BLK,
                              devmajor=os.major(st.st_rdev), devminor=os.minor(st.st_rdev),
                              **common))
    else:
        raise FsError(f"{src.shown}: a {'device node' if fmt in (stat.S_IFCHR, stat.S_IFBLK) else 'socket'}"
                      " is not copied")
    sink.add(ZERO_BLOCK * 2)
    out.flush()


def unpack(stream: BinaryIO, dir_fd: int, adjust: Callable, devices: bool = True) -> None:
    """Unpack a tar into the directory `dir_fd` (the applier never leaves it)."""
    from layerstore.layer_apply import apply_layer

    try:
        apply_layer(stream, Path(f"/proc/self/fd/{dir_fd}"), mode="flat", whiteouts=False,
                    adjust=adjust, devices=devices)
    except BadLayer as e:
        raise FsError(str(e).replace("layer entry", "entry", 1)) from None


def _piped(produce: Callable[[BinaryIO], None], consume: Callable[[BinaryIO], None]) -> None:
    """produce(w) in a thread, writing a tar into a pipe that consume(r) reads; the
    producer's error wins (the consumer then only saw a truncated tar)."""
    r, w = os.pipe()
    rf, wf = os.fdopen(r, "rb"), os.fdopen(w, "wb")
    errors: list[BaseException] = []

    def run() -> None:
        try:
            produce(wf)
        except BrokenPipeError:
            pass
        except BaseException as e:    # re-raised below, in the caller's thread
            errors.append(e)
        finally:
            try:
                wf.close()
            except OSError:
                pass

    t = threading.Thread(target=run, name="cp-tar", daemon=True)
    t.start()
    failed: BaseException | None = None
    try:
        consume(rf)
    except BaseException as e:
        failed = e
    finally:
        rf.close()
        t.join()
    if errors:
        raise errors[0]
    if failed is not None:
        raise failed


def _owner(uid: int, gid: int, strip_setid: bool) -> Callable:
    def adjust(h) -> None:
        h.uid, h.gid = uid, gid
        if strip_setid:
            h.mode &= ~0o6000
    return adjust


def _keep(strip_setid: bool) -> Callable:
    def adjust(h) -> None:
        if strip_setid:
            h.mode &= ~0o6000
    return adjust


def _base(path: str) -> str:
    names = resolver.components(path)
    return names[-1] if names else "."


# --- container -> host -----------------------------------------------------------------

def _container_source(root: int, inner: str, path: str, follow: bool, ref: str) -> Source:
    contents = path.endswith("/.") or path in (".", "/")
    want_dir = contents or path.endswith("/")
    try:
        fd = resolver.resolve(root, inner, policy=_POLICY, follow=follow or want_dir)
    except (FileNotFoundError, NotADirectoryError):
        raise FsError(f"Could not find the file {path} in container {ref}") from None
    st = os.fstat(fd)
    if want_dir and not stat.S_ISDIR(st.st_mode):
        os.close(fd)
        raise FsError(f"{path}: not a directory")
    return Source(fd, st, contents and stat.S_ISDIR(st.st_mode), path)


def copy_out(cfs: ContainerFS, ref: str, path: str, dest: str, *, archive: bool,
             follow: bool, stdout: BinaryIO | None = None) -> None:
    """CONTAINER:path -> dest (a host path, or "-" for a tar on stdout)."""
    with cfs.route(path, write=False) as (root, inner):
        src = _container_source(root, inner, path, follow, ref)
    try:
        base = _base(path).encode()
        if dest == "-":
            out = stdout or sys.stdout.buffer
            write_tar(src, b"." if src.contents else base, out, devices=True, one_fs=True)
            return
        target, arcname = _host_target(src, dest)
        adjust = _keep(not archive) if archive else _owner(os.geteuid(), os.getegid(), True)
        try:
            _piped(lambda w: write_tar(src, arcname, w, devices=False, one_fs=True),
                   lambda r: unpack(r, target, adjust, devices=False))
        finally:
            os.close(target)
    finally:
        src.close()


def _host_target(src: Source, dest: str) -> tuple[int, bytes]:
    """(fd of the host directory to unpack into, the name the source gets there)."""
    is_dir = stat.S_ISDIR(src.st.st_mode)
    try:
        dst = os.stat(dest)
    except FileNotFoundError:
        dst = None
    except NotADirectoryError:
        raise FsError(f"{dest}: a parent of the destination is not a directory") from None
    if dst is not None and stat.S_ISDIR(dst.st_mode):
        return os.open(dest, _DIR), (b"" if src.contents else _base(src.shown).encode())
    if dst is not None:
        if is_dir:
            raise FsError(f"cannot copy a directory to a file: {dest}")
    elif dest.endswith("/") and not is_dir:
        raise FsError(f"destination directory {dest} must exist")
    parent = os.path.dirname(dest.rstrip("/")) or "."
    try:
        fd = os.open(parent, _DIR)
    except (FileNotFoundError, NotADirectoryError):
        raise FsError(f"{parent}: no such directory") from None
    return fd, os.path.basename(dest.rstrip("/")).encode()


# --- host -> container -----------------------------------------------------------------

def _host_source(path: str, follow: bool) -> Source:
    contents = path.endswith("/.") or path == "."
    want_dir = contents or path.endswith("/")
    flags = os.O_PATH | os.O_CLOEXEC | (0 if follow or want_dir else os.O_NOFOLLOW)
    try:
        fd = os.open(path, flags)
    except FileNotFoundError:
        raise FsError(f"{path}: no such file or directory") from None
    st = os.fstat(fd)
    if want_dir and not stat.S_ISDIR(st.st_mode):
        os.close(fd)
        raise FsError(f"{path}: not a directory")
    return Source(fd, st, contents and stat.S_ISDIR(st.st_mode), path)


def copy_in(cfs: ContainerFS, ref: str, src_path: str, path: str, *, archive: bool,
            follow: bool, stdin: BinaryIO | None = None) -> None:
    """src_path (host, or "-" for a tar on stdin) -> CONTAINER:path."""
    adjust = _keep(False) if archive else _owner(0, 0, False)
    if src_path == "-":
        with cfs.route(path, write=True) as (root, inner):
            target = _container_dir(root, inner, path, ref)
        try:
            unpack(stdin or sys.stdin.buffer, target, adjust)
        finally:
            os.close(target)
        return
    src = _host_source(src_path, follow)
    try:
        with cfs.route(path, write=True) as (root, inner):
            target, arcname = _container_target(root, inner, src, path, ref)
        try:
            _piped(lambda w: write_tar(src, arcname, w, devices=True, one_fs=False),
                   lambda r: unpack(r, target, adjust))
        finally:
            os.close(target)
    finally:
        src.close()


def _container_dir(root: int, inner: str, path: str, ref: str) -> int:
    try:
        return resolver.resolve(root, inner, policy=_POLICY, flags=_DIR)
    except FileNotFoundError:
        raise FsError(f"Could not find the file {path} in container {ref}") from None
    except NotADirectoryError:
        raise FsError(f"{path}: destination must be a directory") from None


def _container_target(root: int, inner: str, src: Source, path: str,
                      ref: str) -> tuple[int, bytes]:
    is_dir = stat.S_ISDIR(src.st.st_mode)
    dst = resolver.stat_in(root, inner, policy=_POLICY)
    if dst is not None and stat.S_ISDIR(dst.st_mode):
        return (_container_dir(root, inner, path, ref),
                b"" if src.contents else _base(src.shown).encode())
    if dst is not None:
        if is_dir:
            raise FsError(f"cannot copy a directory to a file: {path}")
    elif path.endswith("/") and not is_dir:
        raise FsError(f"destination directory {path} must exist")
    names = resolver.components(inner)
    if not names or names[-1] == "..":
        raise FsError(f"{path}: invalid destination")
    try:
        dfd, name = resolver.parent(root, inner, policy=_POLICY)
    except (FileNotFoundError, NotADirectoryError):
        raise FsError(f"Could not find the file {os.path.dirname(path.rstrip('/')) or '/'} "
                      f"in container {ref}") from None
    return dfd, name.encode()


# --- export ----------------------------------------------------------------------------

def export(cfs: ContainerFS, out: BinaryIO) -> None:
    """The container's flattened filesystem (the merged view: no whiteouts, no layers),
    its mounts left out as empty directories, as docker export writes it."""
    from layerstore.layer_diff import _Differ

    d = _Differ(_Sink(out), None, overlay=False, devices=True, root=b"/", one_fs=True)
    dfd = os.open(f"/proc/self/fd/{cfs.fd}", _DIR)
    try:
        d.walk(dfd)
    finally:
        os.close(dfd)
    out.write(ZERO_BLOCK * 2)
    out.flush()
