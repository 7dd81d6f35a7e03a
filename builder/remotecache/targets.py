"""Where a cache export lives: a registry repository or an OCI layout directory.

Both are content-addressed stores with one mutable name (a tag, or a ref name in
index.json). Writers put every blob first and move the name last, in one step (one
manifest PUT; one rename of index.json), so a reader sees the whole older export or
the whole newer one, never a mix, even with several builders writing at once. Blobs
are never deleted here: a concurrent reader may still need them.

Readers verify everything by digest (the registry client does; the directory's blobs
are hashed as they are copied into the store).
"""

from __future__ import annotations

import errno
import fcntl
import os
import secrets
import stat
from pathlib import Path
from typing import BinaryIO, Callable

from builder.remotecache.spec import CacheSpec
from layerstore import digest as dg
from layerstore import jsonlimits
from layerstore import mediatypes as mt
from layerstore.atomic import atomic_write, fsync_dir
from layerstore.blobs import CHUNK, BlobStore
from layerstore.errors import DigestMismatch, NotFound, PybuildError
from layerstore.model import MANIFEST_LIMIT, Descriptor, canonical_json
from layerstore.registry.push import Sent

Provide = Callable[[Descriptor], None]      # make a blob local (fetch it from its source)
Opener = Callable[[Descriptor], BinaryIO]   # open a local blob


class Backend:
    """One export or source location."""

    spec: CacheSpec

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def origin(self) -> str | None:
        return self.spec.origin

    def read_manifest(self) -> tuple[bytes, str, str]:
        """(bytes, media type, digest) of the named manifest; NotFound when there is none."""
        raise NotImplementedError

    def read_blob(self, desc: Descriptor, limit: int) -> bytes:
        raise NotImplementedError

    def fetch_blob(self, desc: Descriptor, blobs: BlobStore) -> None:
        raise NotImplementedError

    def has_blob(self, desc: Descriptor) -> bool:
        raise NotImplementedError

    def put_blobs(self, blobs: list[Descriptor], provide: Provide, opener: Opener,
                  origins: dict[str, str]) -> Sent:
        raise NotImplementedError

    def put_bytes(self, data: bytes, media_type: str,
                  origins: dict[str, str] | None = None) -> Descriptor:
        raise NotImplementedError

    def put_manifest(self, data: bytes, media_type: str) -> None:
        """The export's manifest under the spec's name: the last write of an export."""
        raise NotImplementedError

    def put_artifact(self, data: bytes, media_type: str) -> None:
        """A manifest stored by digest only (a cache-mount artifact)."""
        raise NotImplementedError

    def close(self) -> None:
        pass


def open_backend(spec: CacheSpec, options=None) -> Backend:
    if spec.type == "registry":
        return RegistryBackend(spec, options)
    if spec.type == "local":
        return LocalBackend(spec)
    raise PybuildError(f"{spec.name}: not a cache location")


# --- registry -----------------------------------------------------------------------


class RegistryBackend(Backend):
    def __init__(self, spec: CacheSpec, options=None) -> None:
        from layerstore.registry import open_client
        from layerstore.registry.client import Options

        assert spec.ref is not None
        self.spec = spec
        self.ref = spec.ref
        self.repo = spec.ref.path
        self.options = options or Options()
        self.client = open_client(spec.ref.domain, self.options)

    def read_manifest(self) -> tuple[bytes, str, str]:
        from layerstore.registry.errors import ManifestUnknown, NameUnknown

        try:
            return self.client.get_manifest(self.repo, self.ref.digest or self.ref.tag or "latest")
        except (ManifestUnknown, NameUnknown):
            raise NotFound(f"{self.name}: no such cache (not exported yet?)") from None

    def read_blob(self, desc: Descriptor, limit: int) -> bytes:
        return self.client.read_blob(self.repo, desc, limit)

    def fetch_blob(self, desc: Descriptor, blobs: BlobStore) -> None:
        if desc.media_type in mt.MANIFESTS:
            # pushed as a manifest (a cache-mount artifact): served by the manifests
            # endpoint, the registry client checks its digest
            data, _, _ = self.client.get_manifest(self.repo, desc.digest)
            if len(data) != desc.size:
                raise PybuildError(f"{self.name}: manifest {desc.digest}: {len(data)} bytes, "
                                   f"the descriptor says {desc.size}")
            blobs.put(data, desc.digest)
            return
        self.client.fetch_blob(self.repo, desc, blobs)

    def has_blob(self, desc: Descriptor) -> bool:
        return self.client.blob_exists(self.repo, desc.digest, for_push=False)

    def put_blobs(self, blobs: list[Descriptor], provide: Provide, opener: Opener,
                  origins: dict[str, str]) -> Sent:
        """Skip what the repository has, mount what another repository of the same
        registry has (`origins`: digest -> "domain/repo"), upload the rest: the push's
        one upload path; a blob is made local (`provide`) only when it must be uploaded."""
        from layerstore.registry.push import mount_candidates, upload_blobs

        def opened(desc: Descriptor) -> BinaryIO:
            provide(desc)
            return opener(desc)
        return upload_blobs(self.client, self.repo, blobs, opened,
                            mounts=mount_candidates(self.ref.domain, self.repo, origins),
                            max_concurrent=self.options.max_concurrent)

    def put_bytes(self, data: bytes, media_type: str,
                  origins: dict[str, str] | None = None) -> Descriptor:
        import io

        desc = Descriptor(media_type, dg.of_bytes(data), len(data))
        self.put_blobs([desc], lambda d: None, lambda d: io.BytesIO(data), origins or {})
        return desc

    def put_manifest(self, data: bytes, media_type: str) -> None:
        self.client.put_manifest(self.repo, self.ref.tag or "latest", data, media_type)

    def put_artifact(self, data: bytes, media_type: str) -> None:
        self.client.put_manifest(self.repo, dg.of_bytes(data), data, media_type)

    def close(self) -> None:
        self.client.close()


# --- OCI layout directory -------------------------------------------------------------


class LocalBackend(Backend):
    """An OCI image layout: oci-layout, blobs/sha256/<hex>, index.json naming the export
    by `org.opencontainers.image.ref.name` = the spec's tag. Blobs are written under a
    temporary name and renamed; index.json is rewritten (read, change, atomic rename)
    under an flock on the directory itself, so concurrent writers of other tags keep
    theirs."""

    def __init__(self, spec: CacheSpec) -> None:
        assert spec.path is not None
        self.spec = spec
        self.path = spec.path
        self.blob_dir = self.path / "blobs" / "sha256"

    def _blob(self, digest: str) -> Path:
        return self.blob_dir / dg.hex_of(dg.validate(digest))

    def _open(self, desc: Descriptor) -> BinaryIO:
        try:
            fd = os.open(self._blob(desc.digest),
                         os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError as exc:
            if exc.errno in (errno.ENOENT, errno.ELOOP, errno.ENOTDIR):
                raise NotFound(f"{self.name}: blob {desc.digest} is missing") from None
            raise PybuildError(f"{self.name}: blob {desc.digest}: {exc.strerror}") from None
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            raise NotFound(f"{self.name}: blob {desc.digest} is not a file")
        return os.fdopen(fd, "rb")

    def read_manifest(self) -> tuple[bytes, str, str]:
        try:
            index = jsonlimits.read_object(self.path / "index.json",
                                           f"{self.name}: index.json", max_bytes=MANIFEST_LIMIT)
        except FileNotFoundError:
            raise NotFound(f"{self.name}: no such cache (not exported yet?)") from None
        except OSError as exc:
            raise PybuildError(f"{self.name}: index.json: {exc.strerror}") from None
        manifests = index.get("manifests")
        if not isinstance(manifests, list):
            raise PybuildError(f"{self.name}: index.json lists no manifests")
        found = None
        for m in manifests:
            ann = m.get("annotations") if isinstance(m, dict) else None
            if isinstance(ann, dict) and ann.get(mt.REF_NAME) == self.spec.tag:
                found = m
        if found is None:
            raise NotFound(f"{self.name}: no cache tagged {self.spec.tag!r} in index.json")
        desc = Descriptor.from_json(found, f"{self.name}: index.json")
        return self.read_blob(desc, MANIFEST_LIMIT), desc.media_type, desc.digest

    def read_blob(self, desc: Descriptor, limit: int) -> bytes:
        if desc.size > limit:
            raise PybuildError(f"{self.name}: blob {desc.digest}: {desc.size} bytes, more than "
                               f"the {limit} allowed")
        with self._open(desc) as f:
            data = f.read(limit + 1)
        if len(data) != desc.size or dg.of_bytes(data) != desc.digest:
            raise DigestMismatch(desc.digest, dg.of_bytes(data),
                                 what=f"{self.name}: blob {desc.digest}")
        return data

    def fetch_blob(self, desc: Descriptor, blobs: BlobStore) -> None:
        with self._open(desc) as f:
            blobs.ingest(f, expected=desc.digest, size=desc.size)

    def has_blob(self, desc: Descriptor) -> bool:
        try:
            st = os.lstat(self._blob(desc.digest))
        except OSError:
            return False
        return stat.S_ISREG(st.st_mode) and st.st_size == desc.size

    def _ensure_layout(self) -> None:
        try:
            self.blob_dir.mkdir(parents=True, exist_ok=True)
            if not (self.path / "oci-layout").exists():
                atomic_write(self.path / "oci-layout",
                             canonical_json({"imageLayoutVersion": "1.0.0"}))
        except OSError as exc:
            raise PybuildError(f"{self.name}: cannot write the cache directory: "
                               f"{exc.strerror}") from None

    def _write(self, desc: Descriptor, src: BinaryIO) -> None:
        """A blob under a temporary name in blobs/sha256, then renamed: a reader never
        sees a partial one. What is copied is hashed on the way: a store blob that rotted
        on disk is not published under its old name."""
        import hashlib

        tmp = self.blob_dir / f".tmp-{dg.hex_of(desc.digest)[:16]}-{secrets.token_hex(6)}"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                     0o644)
        try:
            h = hashlib.sha256()
            with os.fdopen(fd, "wb") as out:
                while chunk := src.read(CHUNK):
                    h.update(chunk)
                    out.write(chunk)
                out.flush()
                os.fsync(out.fileno())
            if "sha256:" + h.hexdigest() != desc.digest:
                raise DigestMismatch(desc.digest, "sha256:" + h.hexdigest(),
                                     what=f"store blob {desc.digest}")
            os.rename(tmp, self._blob(desc.digest))
        except BaseException:
            try:
                os.unlink(tmp)
            except FileNotFoundError:
                pass
            raise

    def put_blobs(self, blobs: list[Descriptor], provide: Provide, opener: Opener,
                  origins: dict[str, str]) -> Sent:
        self._ensure_layout()
        sent = Sent()
        for desc in blobs:
            if self.has_blob(desc):
                sent.existing += 1
                continue
            provide(desc)
            with opener(desc) as src:
                self._write(desc, src)
            sent.uploaded += 1
            sent.uploaded_bytes += desc.size
        fsync_dir(self.blob_dir)
        return sent

    def put_bytes(self, data: bytes, media_type: str,
                  origins: dict[str, str] | None = None) -> Descriptor:
        import io

        self._ensure_layout()
        desc = Descriptor(media_type, dg.of_bytes(data), len(data))
        if not self.has_blob(desc):
            self._write(desc, io.BytesIO(data))
            fsync_dir(self.blob_dir)
        return desc

    def put_artifact(self, data: bytes, media_type: str) -> None:
        self.put_bytes(data, media_type)

    def put_manifest(self, data: bytes, media_type: str) -> None:
        desc = self.put_bytes(data, media_type)
        entry = desc.to_json()
        entry["annotations"] = {mt.REF_NAME: self.spec.tag}
        dfd = os.open(self.path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            fcntl.flock(dfd, fcntl.LOCK_EX)    # writers of other tags keep theirs
            try:
                index = jsonlimits.read_object(self.path / "index.json",
                                               max_bytes=MANIFEST_LIMIT)
                kept = [m for m in index.get("manifests", []) if isinstance(m, dict) and
                        (m.get("annotations") or {}).get(mt.REF_NAME) != self.spec.tag]
            except (OSError, ValueError, AttributeError):
                kept = []                    # none yet, or unreadable: ours replaces it
            doc = {"schemaVersion": 2, "mediaType": mt.OCI_INDEX, "manifests": kept + [entry]}
            atomic_write(self.path / "index.json", canonical_json(doc))
        except OSError as exc:
            raise PybuildError(f"{self.name}: cannot write index.json: {exc.strerror}") from None
        finally:
            os.close(dfd)
