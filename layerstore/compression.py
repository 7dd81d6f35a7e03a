"""Compression of layer blobs: detect by magic, stream readers and writers.

Layers are written as gzip (default, what every registry and runtime reads)
or zstd, and read in any of gzip, zstd, bzip2, xz or plain tar.  Writers
compress on all cores yet stay deterministic: gzip is deflated in fixed-size
blocks by a thread pool (the pigz scheme: each block primed with the previous
32 KiB, joined with sync flushes into one gzip member), zstd uses zstd's own
worker threads, whose output does not depend on how many there are.
"""

from __future__ import annotations

import os
import queue
import struct
import threading
import zlib
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from typing import BinaryIO, Iterator, Protocol

from layerstore.errors import PybuildError

GZIP, ZSTD, NONE, BZIP2, XZ = "gzip", "zstd", "none", "bzip2", "xz"
WRITABLE = (GZIP, ZSTD, NONE)

MEDIA_TYPES = {
    NONE: "application/vnd.oci.image.layer.v1.tar",
    GZIP: "application/vnd.oci.image.layer.v1.tar+gzip",
    ZSTD: "application/vnd.oci.image.layer.v1.tar+zstd",
}

_MAGIC = (
    (b"\x1f\x8b", GZIP),
    (b"\x28\xb5\x2f\xfd", ZSTD),
    (b"BZh", BZIP2),
    (b"\xfd7zXZ\x00", XZ),
)
MAGIC_LEN = 6
CHUNK = 1 << 20
_GZIP_BLOCK = 1 << 20
_WINDOW = 32768
# zlib level 4: measured on a 2-core machine, half the time of level 6 for 2-4%
# larger blobs (a Debian package layer, Python's stdlib); level 1 would be 3x faster
# but 5-14% larger. Blob digests depend on it.
GZIP_LEVEL = 4
ZSTD_LEVEL = 3
XZ_MEMLIMIT = 256 << 20


class UnsupportedCompression(PybuildError, ValueError):
    """An unknown compression name or a level it does not have."""


class Compressor(Protocol):
    """What write_layer feeds: bytes in; close() finishes without closing `out`."""

    def write(self, data: bytes) -> None: ...

    def close(self) -> None: ...

    def abort(self) -> None:
        """Releases resources without finishing the stream (after an error)."""


def media_type(compression: str) -> str:
    try:
        return MEDIA_TYPES[compression]
    except KeyError:
        raise UnsupportedCompression(f"unknown layer compression {compression!r} (use gzip, zstd or none)") from None


def detect(head: bytes) -> str:
    """Name of the compression whose magic `head` starts with, else "none"."""
    for magic, name in _MAGIC:
        if head.startswith(magic):
            return name
    # a zstd stream may open with a skippable frame (magic 0x184D2A5?, little-endian), as
    # containerd's detection knows; zstd:chunked layers carry such frames
    if len(head) >= 4 and int.from_bytes(head[:4], "little") & 0xFFFFFFF0 == 0x184D2A50:
        return ZSTD
    return NONE


# -- writers ----------------------------------------------------------------


class _PlainWriter:
    def __init__(self, out: BinaryIO) -> None:
        self.write = out.write

    def close(self) -> None:
        pass

    abort = close


def _deflate_block(block: bytes, zdict: bytes, level: int, last: bool) -> bytes:
    """One pigz-style block: raw deflate primed with the preceding window."""
    comp = zlib.compressobj(level, zlib.DEFLATED, -15, 8, zlib.Z_DEFAULT_STRATEGY, zdict) if zdict \
        else zlib.compressobj(level, zlib.DEFLATED, -15)
    return comp.compress(block) + comp.flush(zlib.Z_FINISH if last else zlib.Z_SYNC_FLUSH)


class ParallelGzipWriter:
    """One gzip member deflated block-wise in threads (zlib drops the GIL).

    Block boundaries depend only on the byte offset, so the output is the same
    for any number of threads.  The header carries mtime 0 and no file name.
    """

    def __init__(self, out: BinaryIO, level: int = 6, threads: int | None = None,
                 block_size: int = _GZIP_BLOCK) -> None:
        self._out = out
        self._level = level
        self._block = block_size
        workers = threads or os.cpu_count() or 1
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="gzip")
        self._limit = 2 * workers
        self._pending: deque[Future[bytes]] = deque()
        self._buf = bytearray()
        self._window = b""
        self._crc = 0
        self._size = 0
        xfl = 2 if level == 9 else 4 if level == 1 else 0
        out.write(b"\x1f\x8b\x08\x00\x00\x00\x00\x00" + bytes((xfl, 255)))

    def write(self, data: bytes) -> None:
        self._buf += data
        if len(self._buf) >= self._block:
            view = memoryview(self._buf)
            cut = len(view) - len(view) % self._block
            for start in range(0, cut, self._block):
                self._submit(bytes(view[start:start + self._block]), last=False)
            rest = bytes(view[cut:])
            view.release()
            self._buf = bytearray(rest)

    def _submit(self, block: bytes, last: bool) -> None:
        self._crc = zlib.crc32(block, self._crc)
        self._size += len(block)
        self._pending.append(self._pool.submit(_deflate_block, block, self._window, self._level, last))
        self._window = block[-_WINDOW:]
        while len(self._pending) > self._limit:
            self._out.write(self._pending.popleft().result())

    def close(self) -> None:
        try:
            self._submit(bytes(self._buf), last=True)
            while self._pending:
                self._out.write(self._pending.popleft().result())
            self._out.write(struct.pack("<II", self._crc, self._size & 0xFFFFFFFF))
        finally:
            self.abort()

    def abort(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)


class _ZstdWriter:
    def __init__(self, out: BinaryIO, level: int) -> None:
        import zstandard

        cctx = zstandard.ZstdCompressor(level=level, threads=-1)
        self._writer = cctx.stream_writer(out, closefd=False)
        self.write = self._writer.write

    def close(self) -> None:
        self._writer.close()

    def abort(self) -> None:
        pass  # the context and its threads go with the object; `out` gets no frame end


def open_writer(out: BinaryIO, compression: str = GZIP, level: int | None = None) -> Compressor:
    """A compressing writer into `out` (which stays open and owned by the caller)."""
    media_type(compression)
    if compression == GZIP:
        if level is not None and not 0 <= level <= 9:
            raise UnsupportedCompression(f"gzip compression level {level} is not in 0..9")
        return ParallelGzipWriter(out, GZIP_LEVEL if level is None else level)
    if compression == ZSTD:
        if level is not None and not -7 <= level <= 22:
            raise UnsupportedCompression(f"zstd compression level {level} is not in -7..22")
        return _ZstdWriter(out, ZSTD_LEVEL if level is None else level)
    return _PlainWriter(out)


# -- readers ----------------------------------------------------------------


class _Prepended:
    """A read()-able stream that first returns bytes already taken from `raw`."""

    def __init__(self, head: bytes, raw: BinaryIO) -> None:
        self._head = head
        self._raw = raw

    def read(self, n: int = -1) -> bytes:
        if self._head:
            if n < 0:
                data, self._head = self._head + self._raw.read(), b""
                return data
            data, self._head = self._head[:n], self._head[n:]
            return data
        return self._raw.read(n)

    read1 = read

    def readable(self) -> bool:
        return True


def _read_head(stream: BinaryIO) -> bytes:
    head = b""
    while len(head) < MAGIC_LEN:
        more = stream.read(MAGIC_LEN - len(head))
        if not more:
            break
        head += more
    return head


class _GzipReader:
    """Multi-member gzip decoded straight with zlib, in large pieces.

    gzip.GzipFile hands out 8 KiB at a time; this returns up to `n` bytes per
    call and what it decoded before a truncation or corruption is found.
    zlib checks each member's CRC and length.
    """

    def __init__(self, raw: _Prepended) -> None:
        self._raw = raw
        self._d = zlib.decompressobj(31)
        self._input = b""
        self._end = False

    def read(self, n: int = -1) -> bytes:
        if n is None or n < 0:
            parts = []
            while piece := self.read(CHUNK * 4):
                parts.append(piece)
            return b"".join(parts)
        while not self._end:
            if self._d.eof:  # the next member, if any, starts in the unused data
                self._input = self._d.unused_data or self._raw.read(CHUNK)
                if not self._input:
                    self._end = True
                    break
                self._d = zlib.decompressobj(31)
            data = self._input or self._raw.read(CHUNK)
            if not data:
                raise EOFError("compressed stream ended before the end of the gzip member")
            out = self._d.decompress(data, n)
            self._input = self._d.unconsumed_tail
            if out:
                return out
        return b""

    read1 = read

    def readable(self) -> bool:
        return True


def open_reader(stream: BinaryIO) -> tuple[str, BinaryIO]:
    """(compression, decompressing reader) for a stream, detected by magic."""
    head = _read_head(stream)
    kind = detect(head)
    raw = _Prepended(head, stream)
    if kind == GZIP:
        return kind, _GzipReader(raw)  # type: ignore[return-value]
    if kind == ZSTD:
        import zstandard

        return kind, zstandard.ZstdDecompressor().stream_reader(raw, read_size=CHUNK, read_across_frames=True)
    if kind == BZIP2:
        import bz2

        return kind, bz2.BZ2File(raw)  # type: ignore[arg-type]
    if kind == XZ:
        import _compression
        import io
        import lzma

        # an xz header names its dictionary size, and liblzma allocates it up front:
        # a hostile layer asking for 4 GiB gets an error instead (xz -9 needs 64 MiB)
        reader = _compression.DecompressReader(raw, lzma.LZMADecompressor,
                                               trailing_error=lzma.LZMAError, memlimit=XZ_MEMLIMIT)
        return kind, io.BufferedReader(reader, CHUNK)  # type: ignore[arg-type]
    return kind, raw  # type: ignore[return-value]


class CorruptStream(Exception):
    """The compressed stream is truncated or corrupt (the caller names the entry)."""


class ChunkPump:
    """Decompresses and hashes in a background thread, handing over chunks.

    Overlaps decompression and hashing (both drop the GIL) with the consumer's
    file writing.  Iterating yields chunks until the end of the stream; a
    decoder error is raised from the iterator as CorruptStream.
    """

    def __init__(self, reader: BinaryIO, hasher, chunk: int = 4 * CHUNK, depth: int = 4) -> None:
        self.size = 0
        self._reader = reader
        self._hasher = hasher
        self._chunk = chunk
        self._queue: queue.Queue[bytes | BaseException | None] = queue.Queue(depth)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="layer-read", daemon=True)
        self._thread.start()

    def _put(self, item: bytes | BaseException | None) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _run(self) -> None:
        read = getattr(self._reader, "read1", self._reader.read)  # partial data before an error
        try:
            while not self._stop.is_set():
                data = read(self._chunk)
                if not data:
                    break
                self._hasher.update(data)
                self.size += len(data)
                if not self._put(data):
                    return
            self._put(None)
        except Exception as exc:  # handed to the consumer, which names the entry
            self._put(exc)

    def __iter__(self) -> Iterator[bytes]:
        while True:
            item = self._queue.get()
            if item is None:
                return
            if isinstance(item, PybuildError):
                raise item  # e.g. the blob reader's own DigestMismatch: not the decoder's business
            if isinstance(item, BaseException):
                raise CorruptStream(str(item) or type(item).__name__) from item
            yield item

    def close(self) -> None:
        """Stops the thread (also when the consumer gave up early)."""
        self._stop.set()
        self._thread.join()
