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
_OPAQUE_XATTRS = (b"trusted.overlay.opaque", b"user.overlay.opaque")
_SKIPPED_XATTR_PREFIXES = (b"trusted.overlay.", b"user.overlay.")
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


class _Differ:
    def __init__(self, sink: _TarSink, clamp: int | None, overlay: bool) -> None:
        self.sink = sink
        self.clamp = clamp
        self.overlay = overlay
        self.links: dict[tuple[int, int], bytes] = {}

    def mtime(self, st: os.stat_result) -> int:
        seconds = st.st_mtime_ns // 1_000_000_000
        return self.clamp if self.clamp is not None and seconds > self.clamp else seconds

    def walk(self, root: bytes) -> None:
        """Every entry below `root`, each directory's children right after it. A stack,
        not recursion: a RUN step can nest directories far deeper than Python's stack."""
        stack = [(iter(self.listing(root)), b"")]
        while stack:
            entries, prefix = stack[-1]
            item = next(entries, None)
            if item is None:
                stack.pop()
                continue
            entry, st = item
            if len(stack) > MAX_DEPTH:
                raise LayerSourceError(f"{os.fsdecode(prefix[:200])}...: nested deeper than "
                                       f"{MAX_DEPTH} levels, more than a layer may hold")
            name = prefix + entry.name
            try:
                if self.entry(entry.path, name, st):
                    stack.append((iter(self.listing(entry.path)), name + b"/"))
            except FileNotFoundError:
                raise LayerSourceError(f"{os.fsdecode(entry.path)}: vanished while writing the layer") from None

    def listing(self, dirpath: bytes) -> list[tuple[os.DirEntry, os.stat_result]]:
        """A directory's entries, sorted by the name each gets in the tar (a whiteout by
        its .wh. name)."""
        try:
            with os.scandir(dirpath) as it:
                listed = [(e, e.stat(follow_symlinks=False)) for e in it]
        except FileNotFoundError as exc:
            raise LayerSourceError(f"{os.fsdecode(exc.filename or dirpath)}: vanished while writing the layer") from None
        except OSError as exc:
            raise LayerSourceError(f"{os.fsdecode(dirpath)}: cannot list: {exc.strerror}") from None
        listed.sort(key=lambda es: WHITEOUT_PREFIX + es[0].name if self.is_whiteout(es[1]) else es[0].name)
        return listed

    def is_whiteout(self, st: os.stat_result) -> bool:
        return self.overlay and stat.S_ISCHR(st.st_mode) and st.st_rdev == 0

    def entry(self, path: bytes, name: bytes, st: os.stat_result) -> bool:
        """Writes one entry; True for a directory whose children come next."""
        fmt = stat.S_IFMT(st.st_mode)
        common = dict(mode=st.st_mode & 0o7777, uid=st.st_uid, gid=st.st_gid, mtime=self.mtime(st))
        add = self.sink.add
        if fmt == stat.S_IFDIR:
            xattrs, opaque = _xattrs(path, overlay=self.overlay)
            add(build_header(name + b"/", DIR, xattrs=xattrs, **common))
            if opaque and self.overlay:
                add(build_header(name + b"/" + OPAQUE_MARKER, REG))
            return True
        if self.is_whiteout(st):
            head, _, base = name.rpartition(b"/")
            add(build_header((head + b"/" if head else b"") + WHITEOUT_PREFIX + base, REG))
            return False
        if fmt == stat.S_IFSOCK:
            return False  # sockets do not survive a tar round trip; docker skips them too
        if st.st_nlink > 1:
            key = (st.st_dev, st.st_ino)
            first = self.links.get(key)
            if first is not None:
                add(build_header(name, LNK, linkname=first, **common))
                return False
            self.links[key] = name
        if fmt == stat.S_IFREG:
            self.regular(path, name, st, common)
        elif fmt == stat.S_IFLNK:
            xattrs, _ = _xattrs(path, overlay=self.overlay)
            add(build_header(name, SYM, linkname=os.readlink(path), xattrs=xattrs, **common))
        elif fmt in (stat.S_IFCHR, stat.S_IFBLK):
            xattrs, _ = _xattrs(path, overlay=self.overlay)
            add(build_header(name, CHR if fmt == stat.S_IFCHR else BLK, devmajor=os.major(st.st_rdev),
                             devminor=os.minor(st.st_rdev), xattrs=xattrs, **common))
        elif fmt == stat.S_IFIFO:
            xattrs, _ = _xattrs(path, overlay=self.overlay)
            add(build_header(name, FIFO, xattrs=xattrs, **common))
        return False

    def regular(self, path: bytes, name: bytes, st: os.stat_result, common: dict) -> None:
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError as exc:
            raise LayerSourceError(f"{os.fsdecode(path)}: cannot open: {exc.strerror}") from None
        try:
            xattrs, _ = _xattrs(path, fd, self.overlay)
            size = st.st_size
            self.sink.add(build_header(name, REG, size=size, xattrs=xattrs, **common))
            left = size
            while left:
                data = os.read(fd, min(left, _FLUSH))
                if not data:
                    raise LayerSourceError(f"{os.fsdecode(path)}: shrank while writing the layer")
                self.sink.add(data)
                left -= len(data)
            self.sink.add(bytes(padding(size)))
        finally:
            os.close(fd)


def write_layer(src: Path, out: BinaryIO, *, compression: str = "gzip", source_date_epoch: int | None = None,
                overlay: bool = True, level: int | None = None) -> LayerStats:
    """Streams the tar of directory `src` compressed into `out`; returns its diff ID.

    With overlay=True `src` is an overlay upper dir: 0/0 char devices become
    `.wh.NAME` whiteouts and opaque dirs get a `.wh..wh..opq` marker.  The root
    itself is not an entry.  `out` stays open (the caller owns it).
    """
    media = comp.media_type(compression)
    root = os.fsencode(src)
    if not os.path.isdir(root):
        raise LayerSourceError(f"{src}: not a directory")
    writer = comp.open_writer(out, compression, level)
    sink = _TarSink(writer)
    try:
        _Differ(sink, source_date_epoch, overlay).walk(root)
        sink.add(ZERO_BLOCK * 2)
        sink.finish()
    except BaseException:
        sink.stop()
        writer.abort()
        raise
    writer.close()
    return LayerStats(diff_id=sink.digest(), uncompressed_size=sink.size, media_type=media)
