"""Content-addressed blobs: ROOT/blobs/sha256/<hex>, written only via ingest.

Bytes are hashed while they are written into ROOT/ingest/, fsynced, checked
against the expected digest and size, and only then renamed into blobs/, so a
blob that is visible is always whole and correct. Concurrent ingests of the
same content are safe: the loser's rename replaces identical bytes.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import os
import stat
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Iterator

from layerstore import digest as dg
from layerstore.atomic import fsync_dir
from layerstore.errors import DigestMismatch, LocalIOError, NotFound, PybuildError

CHUNK = 1 << 20


class SizeMismatch(PybuildError):
    """Content longer or shorter than its descriptor said."""


@dataclass(frozen=True)
class BlobInfo:
    digest: str
    size: int


class BlobWriter:
    """A file being ingested; `commit()` verifies it and makes it a blob.

    With `resume=True` and an expected digest, the partial file is named after
    that digest and kept when the writer is abandoned, so an interrupted
    download can continue from `offset` (e.g. with an HTTP Range request).
    """

    def __init__(self, store: "BlobStore", expected: str | None, size: int | None,
                 resume: bool) -> None:
        self._store = store
        self.expected = dg.validate(expected) if expected else None
        self.expected_size = size
        self._hash = hashlib.sha256()
        self.offset = 0
        self._keep_partial = False
        self._committed = False
        fd = -1
        if resume and self.expected:
            path = store.ingest_dir / f"{dg.hex_of(self.expected)}.partial"
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)  # another process resumes it; write our own copy
                fd = -1
            else:
                self._keep_partial = True
                self._resume_from(fd)
        if fd < 0:
            path = store.ingest_dir / f"{uuid.uuid4().hex}.tmp"
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
            fcntl.flock(fd, fcntl.LOCK_EX)  # tells prune the file is in use
        self.path = path
        self._file = os.fdopen(fd, "r+b", buffering=0)
        self._file.seek(self.offset)

    def _resume_from(self, fd: int) -> None:
        limit = self.expected_size
        while True:
            chunk = os.read(fd, CHUNK)
            if not chunk:
                break
            self._hash.update(chunk)
            self.offset += len(chunk)
        if limit is not None and self.offset > limit:
            os.ftruncate(fd, 0)
            self._hash = hashlib.sha256()
            self.offset = 0

    def write(self, data: bytes | bytearray | memoryview) -> int:
        self._hash.update(data)
        try:
            # an unbuffered write may write less than asked (a disk filling up takes part
            # of the chunk): what was hashed must be exactly what is on disk
            view = memoryview(data).cast("B")
            while view:
                n = self._file.write(view)
                if not n:
                    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
                view = view[n:]
        except OSError as exc:
            # the disk, not the data: say where (ENOSPC had no path and a pull retried
            # it as a broken transfer), and keep no partial that holds the space
            self._keep_partial = False
            raise LocalIOError(exc, self.path) from None
        self.offset += len(data)
        if self.expected_size is not None and self.offset > self.expected_size:
            name = self.expected or "being ingested"
            raise SizeMismatch(f"blob {name}: more than the declared {self.expected_size} bytes")
        return len(data)

    def copy_from(self, stream: BinaryIO) -> None:
        while True:
            chunk = stream.read(CHUNK)
            if not chunk:
                return
            self.write(chunk)

    @property
    def digest(self) -> str:
        return "sha256:" + self._hash.hexdigest()

    def commit(self) -> BlobInfo:
        """Verify, fsync and publish; on mismatch nothing is left behind."""
        actual = self.digest
        try:
            if self.expected_size is not None and self.offset != self.expected_size:
                raise SizeMismatch(f"blob {self.expected or actual}: got {self.offset} bytes, "
                                   f"expected {self.expected_size}")
            if self.expected and actual != self.expected:
                raise DigestMismatch(self.expected, actual)
            try:
                self._file.flush()
                os.fsync(self._file.fileno())
                self._file.close()
                final = self._store.path(actual)
                os.rename(self.path, final)
                fsync_dir(final.parent)
            except OSError as exc:
                raise LocalIOError(exc, exc.filename or self.path) from None
        except BaseException:
            self._keep_partial = False
            self.abort()
            raise
        self._committed = True
        return BlobInfo(actual, self.offset)

    def abort(self) -> None:
        if self._committed:
            return
        if not self._file.closed:
            if self._keep_partial:
                self._file.flush()
                os.fsync(self._file.fileno())
            self._file.close()
        if not self._keep_partial:
            try:
                os.unlink(self.path)
            except FileNotFoundError:
                pass

    def __enter__(self) -> "BlobWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None or not self._committed:
            self.abort()


class VerifyingReader:
    """Reads a blob and raises DigestMismatch at EOF if its bytes are wrong."""

    def __init__(self, f: BinaryIO, expected: str) -> None:
        self._f = f
        self._hash = hashlib.sha256()
        self._expected = expected
        self._checked = False

    def read(self, n: int = -1) -> bytes:
        data = self._f.read(n)
        self._hash.update(data)
        if (not data or n is None or n < 0) and not self._checked:
            self._checked = True
            actual = "sha256:" + self._hash.hexdigest()
            if actual != self._expected:
                raise DigestMismatch(self._expected, actual, what=f"blob {self._expected}")
        return data

    def readinto(self, buf) -> int:
        data = self.read(len(buf))
        buf[: len(data)] = data
        return len(data)

    def readable(self) -> bool:
        return True

    def close(self) -> None:
        self._f.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class BlobStore:
    """blobs/sha256/ plus the ingest/ area that feeds it."""

    def __init__(self, root: Path) -> None:
        self.dir = root / "blobs" / "sha256"
        self.ingest_dir = root / "ingest"

    def init(self) -> None:
        self.dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.ingest_dir.mkdir(mode=0o700, parents=True, exist_ok=True)

    def path(self, digest: str) -> Path:
        return self.dir / dg.hex_of(digest)

    # Nothing in blobs/ is followed: a symlink or anything else that is not a plain file
    # there (planted by hand, or by a tool writing the layout) is no blob.

    def has(self, digest: str) -> bool:
        try:
            return stat.S_ISREG(os.lstat(self.path(digest)).st_mode)
        except FileNotFoundError:
            return False

    def size(self, digest: str) -> int:
        try:
            st = os.lstat(self.path(digest))
        except FileNotFoundError:
            st = None
        if st is None or not stat.S_ISREG(st.st_mode):
            raise NotFound(f"blob {digest} not found in the store")
        return st.st_size

    def writer(self, expected: str | None = None, size: int | None = None,
               resume: bool = False) -> BlobWriter:
        return BlobWriter(self, expected, size, resume)

    def drop_partial(self, digest: str) -> None:
        """Remove the resumable partial of `digest`, unless a writer holds it (another
        pull resuming it now)."""
        path = self.ingest_dir / f"{dg.hex_of(dg.validate(digest))}.partial"
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except (FileNotFoundError, OSError):
            return
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            os.unlink(path)
        except (BlockingIOError, FileNotFoundError):
            pass
        finally:
            os.close(fd)

    def ingest(self, stream: BinaryIO, expected: str | None = None,
               size: int | None = None) -> BlobInfo:
        with self.writer(expected, size) as w:
            w.copy_from(stream)
            return w.commit()

    def put(self, data: bytes, expected: str | None = None) -> BlobInfo:
        if expected is None or not self.has(expected):
            with self.writer(expected, len(data)) as w:
                w.write(data)
                return w.commit()
        return BlobInfo(expected, len(data))

    def open(self, digest: str, verify: bool = False) -> BinaryIO:
        try:
            # O_NONBLOCK: a FIFO in its place must not hang the open (no effect on a file)
            fd = os.open(self.path(digest), os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError as exc:
            if exc.errno not in (errno.ENOENT, errno.ELOOP):
                raise
            raise NotFound(f"blob {digest} not found in the store") from None
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            raise NotFound(f"blob {digest} not found in the store")
        f = os.fdopen(fd, "rb")
        return VerifyingReader(f, digest) if verify else f  # type: ignore[return-value]

    def read(self, digest: str, verify: bool = True, limit: int | None = None) -> bytes:
        """The whole blob; with `limit`, a blob larger than that is refused unread (a
        descriptor may name any blob as a "manifest" or "config")."""
        with self.open(digest) as f:
            if limit is not None:
                size = os.fstat(f.fileno()).st_size
                if size > limit:
                    raise SizeMismatch(f"blob {digest}: {size} bytes, more than the {limit} "
                                       "a document of this kind may have")
            data = f.read()
        if verify and dg.of_bytes(data) != digest:
            raise DigestMismatch(digest, dg.of_bytes(data), what=f"blob {digest}")
        return data

    def delete(self, digest: str) -> None:
        try:
            os.unlink(self.path(digest))
        except FileNotFoundError:
            pass

    def digests(self) -> Iterator[str]:
        if not self.dir.is_dir():
            return
        for entry in os.scandir(self.dir):
            if len(entry.name) == 64 and entry.is_file(follow_symlinks=False):
                yield "sha256:" + entry.name

    def stale_ingests(self) -> list[Path]:
        """Ingest files no live writer holds (left by a crash or a kill)."""
        out = []
        if not self.ingest_dir.is_dir():
            return out
        for entry in os.scandir(self.ingest_dir):
            if entry.is_dir(follow_symlinks=False):
                continue                # not ours: ingest only ever holds files
            try:
                # never follow or block: a symlink or FIFO here is no live writer's file
                fd = os.open(entry.path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
            except FileNotFoundError:
                continue
            except OSError:
                out.append(Path(entry.path))
                continue
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                out.append(Path(entry.path))
            except BlockingIOError:
                pass
            finally:
                os.close(fd)
        return out

    def rehash(self, digest: str) -> str:
        h = hashlib.sha256()
        with self.open(digest) as f:
            while chunk := f.read(CHUNK):
                h.update(chunk)
        return "sha256:" + h.hexdigest()
