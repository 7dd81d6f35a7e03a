"""Directory -> layer tar: the diff half of the layer codec.

Streams a tree (usually an overlay upper dir) as a tar straight into a
compressing writer, hashing the uncompressed bytes on the way for the diff
ID; nothing is staged on disk.  The bytes depend only on the tree: entries in
component-wise byte order of their paths (parents before children), numeric
owners, no atime/ctime, mtimes optionally clamped to SOURCE_DATE_EPOCH, and
deterministic compression, so an identical tree gives an identical blob.
An opaque dir's `.wh..wh..opq` marker comes right after the dir, before its
children, so that appliers which clear the dir on seeing it keep them.
"""

from __future__ import annotations

import errno
import hashlib
import os
import queue
import stat
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from layerstore import compression as comp
from layerstore.errors import PybuildError
from layerstore.layer_tar import (BLK, CHR, DIR, FIFO, LNK, MAX_DEPTH, OPAQUE_MARKER, REG, SYM,
                                  WHITEOUT_PREFIX, ZERO_BLOCK, build_header, padding)

_FLUSH = 1 << 20
_DEPTH = 8  # pieces in flight between the walk and the hashing/compressing thread
# user.fuseoverlayfs.*: fuse-overlayfs's own marks (rootless, where overlayfs is refused)
_OPAQUE_XATTRS = (b"trusted.overlay.opaque", b"user.overlay.opaque",
                  b"user.fuseoverlayfs.opaque")
_SKIPPED_XATTR_PREFIXES = (b"trusted.overlay.", b"user.overlay.", b"user.fuseoverlayfs.")
# beside that xattr fuse-overlayfs leaves these in an opaque dir of its upper: the OCI
# marker as a plain file and a whiteout of ".opq"; the dir's xattr says it all
_FUSE_OPAQUE_LEFTOVERS = (OPAQUE_MARKER, b".wh..opq")
_UNSUPPORTED_OVERLAY = (b".overlay.metacopy", b".overlay.redirect")


class LayerSourceError(PybuildError):
    """The directory to snapshot cannot be read or changed while being read."""


@dataclass
class LayerStats:
    diff_id: str  # "sha256:<hex>" of the uncompressed tar
    uncompressed_size: int
    media_type: str  # application/vnd.oci.image.layer.v1.tar(+gzip|+zstd)


class _TarSink:
    """Collects tar bytes and hands ~1 MiB pieces to a thread that hashes and compresses.

    The walk (file reads, headers) thus overlaps with hashing and compression,
    which drop the GIL; `out` is only ever written from that one thread.
    """

    def __init__(self, writer: comp.Compressor) -> None:
        self._writer = writer
        self._hash = hashlib.sha256()
        self._buf = bytearray()
        self._queue: queue.Queue[bytearray | None] = queue.Queue(_DEPTH)
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="layer-write", daemon=True)
        self._thread.start()
        self.size = 0

    def _run(self) -> None:
        while (buf := self._queue.get()) is not None:
            if self._error is None:
                try:
                    self._hash.update(buf)
                    self._writer.write(buf)
                except BaseException as exc:  # re-raised in the walking thread
                    self._error = exc

    def add(self, data: bytes) -> None:
        self._buf += data
        if len(self._buf) >= _FLUSH:
            self._hand_over()

    def _hand_over(self) -> None:
        if self._error is not None:
            raise self._error
        if self._buf:
            self.size += len(self._buf)
            self._queue.put(self._buf)
            self._buf = bytearray()

    def finish(self) -> None:
        """Waits for everything added to be hashed and compressed (raising its error)."""
        self._hand_over()
        self.stop()
        if self._error is not None:
            raise self._error

    def stop(self) -> None:
        if self._thread.is_alive():
            self._queue.put(None)
            self._thread.join()

    def digest(self) -> str:
        return "sha256:" + self._hash.hexdigest()


def _xattrs(path: bytes, fd: int | None = None, overlay: bool = True) -> tuple[dict[bytes, bytes], bool]:
    """(xattrs to record, whether the dir is marked overlay-opaque).

    An upper dir from a mount with metacopy=on or redirect_dir=on holds
    entries whose data or contents live in the lower layers; a diff of it
    would silently lose them, so those are refused.
    """
    target: bytes | int = path if fd is None else fd
    try:
        names = os.listxattr(target, follow_symlinks=False) if fd is None else os.listxattr(fd)
    except OSError:
        return {}, False
    if not names:
        return {}, False
    found: dict[bytes, bytes] = {}
    opaque = False
    for name in sorted(n.encode("utf-8", "surrogateescape") for n in names):
        try:
            value = os.getxattr(target, name, follow_symlinks=False) if fd is None else os.getxattr(fd, name)
        except OSError:
            continue
        if name in _OPAQUE_XATTRS:
            opaque = opaque or value == b"y"
        elif overlay and name.endswith(_UNSUPPORTED_OVERLAY) and name.startswith(_SKIPPED_XATTR_PREFIXES):
            raise LayerSourceError(f"{os.fsdecode(path)}: overlay {name.decode()} entry (mounted with "
                                   "metacopy=on or redirect_dir=on?) cannot be written as a layer")
        elif not name.startswith(_SKIPPED_XATTR_PREFIXES):
            found[name] = value
    return found, opaque


_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
# O_NONBLOCK: a FIFO put in a file's place after the listing must not hang the open
_FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC


class _Differ:
    """The walk, by directory fds: every entry is opened or read relative to the fd of
    the directory it was listed in, never following a symlink. A tree that a process
    may still change while it is written (a cache mount a concurrent build's step uses)
    cannot swap a listed directory for a symlink and have the walk read the host's
    files into the layer (a path-based walk follows such a link in a parent); what no
    longer is what was listed is an error."""

    def __init__(self, sink: _TarSink, clamp: int | None, overlay: bool,
                 devices: bool = True, root: bytes = b"", one_fs: bool = False,
                 exclude: frozenset[bytes] = frozenset()) -> None:
        self.sink = sink
        # one_fs: a directory on another device (a mount point: /proc of a running
        # container) is written as an empty directory, never entered
        self.one_fs = one_fs
        self.dev = -1
        self.exclude = exclude      # names (as in the tar) left out with all below them
        self.clamp = clamp
        self.overlay = overlay
        self.devices = devices
        self.root = root        # for messages only
        self.links: dict[tuple[int, int], bytes] = {}

    def mtime(self, st: os.stat_result) -> int:
        seconds = st.st_mtime_ns // 1_000_000_000
        return self.clamp if self.clamp is not None and seconds > self.clamp else seconds

    def shown(self, name: bytes) -> str:
        return os.fsdecode(os.path.join(self.root, name) if name != b"." else self.root)

    def walk(self, root_fd: int, root_entry: bool = False, prefix: bytes = b"") -> None:
        """Every entry below the directory `root_fd` (and, with root_entry, that
        directory itself as `./`), each directory's children right after it. A stack,
        not recursion: a RUN step can nest directories far deeper than Python's stack;
        it holds one fd per level (MAX_DEPTH at most), as the applier does. `prefix`:
        the name the root directory has in the tar (its entries go below it)."""
        top = os.dup(root_fd)
        self.dev = os.fstat(top).st_dev
        if root_entry:
            self.directory(top, prefix or b".", os.fstat(top))
        stack = [(iter(self.listing(top, b"")), prefix + b"/" if prefix else b"", top)]
        try:
            while stack:
                entries, prefix, dfd = stack[-1]
                item = next(entries, None)
                if item is None:
                    stack.pop()
                    os.close(dfd)
                    continue
                base, st = item
                if len(stack) > MAX_DEPTH:
                    raise LayerSourceError(f"{self.shown(prefix[:200])}...: nested deeper than "
                                           f"{MAX_DEPTH} levels, more than a layer may hold")
                name = prefix + base
                if name in self.exclude:
                    continue
                try:
                    child = self.entry(dfd, base, name, st)
                except FileNotFoundError:
                    raise LayerSourceError(f"{self.shown(name)}: vanished while writing the layer") from None
                except OSError as exc:
                    if exc.errno in (errno.ELOOP, errno.ENOTDIR, errno.EINVAL):
                        raise LayerSourceError(f"{self.shown(name)}: changed while writing the "
                                               "layer") from None
                    raise
                if child is not None:
                    try:
                        stack.append((iter(self.listing(child, name)), name + b"/", child))
                    except BaseException:
                        os.close(child)
                        raise
        finally:
            for _entries, _prefix, dfd in stack:
                os.close(dfd)

    def listing(self, dfd: int, dirname: bytes) -> list[tuple[bytes, os.stat_result]]:
        """A directory's entries, sorted by the name each gets in the tar (a whiteout by
        its .wh. name)."""
        try:
            with os.scandir(dfd) as it:
                listed = [(os.fsencode(e.name), e.stat(follow_symlinks=False)) for e in it]
        except FileNotFoundError as exc:
            raise LayerSourceError(f"{self.shown(dirname or b'.')}: vanished while writing the layer") from None
        except OSError as exc:
            raise LayerSourceError(f"{self.shown(dirname or b'.')}: cannot list: {exc.strerror}") from None
        if self.overlay:
            listed = [(n, st) for n, st in listed if n not in _FUSE_OPAQUE_LEFTOVERS]
        listed.sort(key=lambda es: WHITEOUT_PREFIX + es[0] if self.is_whiteout(es[1]) else es[0])
        return listed

    def is_whiteout(self, st: os.stat_result) -> bool:
        return self.overlay and stat.S_ISCHR(st.st_mode) and st.st_rdev == 0

    @staticmethod
    def _at(dfd: int, base: bytes) -> bytes:
        """A path naming `base` in the directory `dfd` for the calls that take no dir fd
        (l*xattr): the magic link stands for the directory itself; the last component is
        not followed by the callers."""
        return b"/proc/self/fd/%d/" % dfd + base

    @staticmethod
    def _same(fd: int, st: os.stat_result) -> os.stat_result:
        now = os.fstat(fd)
        if (now.st_dev, now.st_ino) != (st.st_dev, st.st_ino) or \
                stat.S_IFMT(now.st_mode) != stat.S_IFMT(st.st_mode):
            raise OSError(errno.EINVAL, "replaced")
        return now

    def directory(self, fd: int, name: bytes, st: os.stat_result) -> None:
        common = dict(mode=st.st_mode & 0o7777, uid=st.st_uid, gid=st.st_gid, mtime=self.mtime(st))
        xattrs, opaque = _xattrs(self.root + b"/" + name, fd, overlay=self.overlay)
        self.sink.add(build_header(name + b"/", DIR, xattrs=xattrs, **common))
        if opaque and self.overlay:
            self.sink.add(build_header(name + b"/" + OPAQUE_MARKER, REG))

    def entry(self, dfd: int, base: bytes, name: bytes, st: os.stat_result) -> int | None:
        """Writes one entry; for a directory, returns its fd (its children come next)."""
        fmt = stat.S_IFMT(st.st_mode)
        common = dict(mode=st.st_mode & 0o7777, uid=st.st_uid, gid=st.st_gid, mtime=self.mtime(st))
        add = self.sink.add
        if fmt == stat.S_IFDIR:
            fd = os.open(base, _DIR_FLAGS, dir_fd=dfd)
            try:
                self._same(fd, st)
                self.directory(fd, name, st)
            except BaseException:
                os.close(fd)
                raise
            if self.one_fs and st.st_dev != self.dev:
                os.close(fd)
                return None
            return fd
        if self.is_whiteout(st):
            head, _, leaf = name.rpartition(b"/")
            add(build_header((head + b"/" if head else b"") + WHITEOUT_PREFIX + leaf, REG))
            return None
        if fmt == stat.S_IFSOCK:
            return None  # sockets do not survive a tar round trip; docker skips them too
        if fmt in (stat.S_IFCHR, stat.S_IFBLK) and not self.devices:
            return None  # a cache mount's archive: its importers refuse device nodes
        if st.st_nlink > 1:
            key = (st.st_dev, st.st_ino)
            first = self.links.get(key)
            if first is not None:
                add(build_header(name, LNK, linkname=first, **common))
                return None
            self.links[key] = name
        if fmt == stat.S_IFREG:
            self.regular(dfd, base, name, st, common)
            return None
        at = self._at(dfd, base)
        if fmt == stat.S_IFLNK:
            xattrs, _ = _xattrs(at, overlay=self.overlay)
            add(build_header(name, SYM, linkname=os.readlink(base, dir_fd=dfd), xattrs=xattrs, **common))
        elif fmt in (stat.S_IFCHR, stat.S_IFBLK):
            xattrs, _ = _xattrs(at, overlay=self.overlay)
            add(build_header(name, CHR if fmt == stat.S_IFCHR else BLK, devmajor=os.major(st.st_rdev),
                             devminor=os.minor(st.st_rdev), xattrs=xattrs, **common))
        elif fmt == stat.S_IFIFO:
            xattrs, _ = _xattrs(at, overlay=self.overlay)
            add(build_header(name, FIFO, xattrs=xattrs, **common))
        return None

    def regular(self, dfd: int, base: bytes, name: bytes, st: os.stat_result, common: dict) -> None:
        try:
            fd = os.open(base, _FILE_FLAGS, dir_fd=dfd)
        except FileNotFoundError:
            raise
        except OSError as exc:
            if exc.errno in (errno.ELOOP, errno.ENOTDIR):
                raise
            raise LayerSourceError(f"{self.shown(name)}: cannot open: {exc.strerror}") from None
        try:
            self._same(fd, st)
            xattrs, _ = _xattrs(self.root + b"/" + name, fd, self.overlay)
            size = st.st_size
            self.sink.add(build_header(name, REG, size=size, xattrs=xattrs, **common))
            left = size
            while left:
                data = os.read(fd, min(left, _FLUSH))
                if not data:
                    raise LayerSourceError(f"{self.shown(name)}: shrank while writing the layer")
                self.sink.add(data)
                left -= len(data)
            self.sink.add(bytes(padding(size)))
        finally:
            os.close(fd)


def write_layer(src: Path, out: BinaryIO, *, compression: str = "gzip", source_date_epoch: int | None = None,
                overlay: bool = True, level: int | None = None, root_entry: bool = False,
                devices: bool = True, exclude: frozenset[bytes] = frozenset()) -> LayerStats:
    """Streams the tar of directory `src` compressed into `out`; returns its diff ID.

    With overlay=True `src` is an overlay upper dir: 0/0 char devices become
    `.wh.NAME` whiteouts and opaque dirs get a `.wh..wh..opq` marker.  The root
    itself is not an entry, unless `root_entry` (a `./` entry first: a directory
    archived for itself, such as a cache mount, keeps its own owner and mode).
    devices=False leaves device nodes out; `exclude`: names left out (with all below
    them).  `out` stays open (the caller owns it).
    """
    media = comp.media_type(compression)
    root = os.fsencode(src)
    try:
        root_fd = os.open(root, _DIR_FLAGS)
    except OSError:
        raise LayerSourceError(f"{src}: not a directory") from None
    try:
        writer = comp.open_writer(out, compression, level)
        sink = _TarSink(writer)
        try:
            _Differ(sink, source_date_epoch, overlay, devices, root,
                    exclude=exclude).walk(root_fd, root_entry)
            sink.add(ZERO_BLOCK * 2)
            sink.finish()
        except BaseException:
            sink.stop()
            writer.abort()
            raise
        writer.close()
    finally:
        os.close(root_fd)
    return LayerStats(diff_id=sink.digest(), uncompressed_size=sink.size, media_type=media)
