"""`save` and `load`: image archives in OCI layout and docker-archive form.

save writes an OCI image layout tar (what `skopeo copy oci-archive:` and
umoci read) or a docker-archive tar (manifest.json + config + uncompressed
layer tars, what `docker load` and `skopeo docker-archive:` read). load takes
either, auto-detected, including gzip-compressed archives and the symlinked
layer entries that buildah and skopeo write. Every blob is ingested with its
digest checked; names are set only after all of an image's blobs are in.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import posixpath
import shutil
import stat
import tarfile
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, Iterator

from layerstore import digest as dg
from layerstore import jsonlimits
from layerstore import mediatypes as mt
from layerstore import reference
from layerstore.atomic import fsync_dir
from layerstore.errors import InvalidImage, NotFound, PybuildError
from layerstore.layer_tar import (CONT, DIR, LNK, REG, SYM, HeaderError, TarTruncated,
                                  read_entries)
from layerstore.model import (CONFIG_LIMIT, MANIFEST_LIMIT, MAX_LAYERS, Descriptor, ImageConfig, Index,
                              Manifest, NotAnImage, canonical_json, check_config, check_image,
                              image_problem, load_object, parse_manifest_or_index)
from layerstore.refs import IMAGE_NAME, LAYOUT, REF_NAME
from layerstore.store import Image, Store

CHUNK = 1 << 20


class BadArchive(PybuildError):
    """An archive that is neither a readable OCI layout nor a docker-archive."""


# --- save -----------------------------------------------------------------


@dataclass
class _Saved:
    image: Image
    names: list[str]


def _resolve_all(store: Store, names: list[str]) -> list[_Saved]:
    saved: list[_Saved] = []
    for name in names:
        img = store.resolve(name)
        try:
            as_ref = str(reference.parse(name))
            chosen = [as_ref] if as_ref in img.names else img.names
        except PybuildError:
            chosen = img.names
        saved.append(_Saved(img, chosen))
    return saved


def _blob_member(tar: tarfile.TarFile, name: str, size: int, stream: BinaryIO) -> None:
    info = tarfile.TarInfo(name)
    info.size = size
    info.mode = 0o444
    tar.addfile(info, stream)


def _bytes_member(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    _blob_member(tar, name, len(data), io.BytesIO(data))


def _dir_member(tar: tarfile.TarFile, name: str) -> None:
    info = tarfile.TarInfo(name)
    info.type = tarfile.DIRTYPE
    info.mode = 0o755
    tar.addfile(info)


def _image_blobs(store: Store, img: Image) -> tuple[Descriptor, list[str]]:
    """The descriptor to list in index.json and every blob it needs.

    An index is saved whole when all its platforms are here, else only the
    manifest of this platform (a layout must not point at missing blobs)."""
    if img.top.digest != img.descriptor.digest:
        index = store.read_manifest(img.top)
        needed = [img.top.digest]
        complete = True
        for m in index.manifests:  # type: ignore[union-attr]
            try:
                child = store.read_manifest(m)
            except PybuildError:
                complete = False
                break
            if not isinstance(child, Manifest):  # a nested index: save the one platform
                complete = False
                break
            if isinstance(child, Manifest):
                blobs = [child.config.digest] + [l.digest for l in child.layers]
                if not all(store.blobs.has(b) for b in blobs):
                    complete = False
                    break
                needed += [m.digest] + blobs
        if complete:
            return img.top, needed
    m = img.manifest
    return img.descriptor, [img.descriptor.digest, m.config.digest] + [l.digest for l in m.layers]


def _atomic_output(path: Path):
    """A temp file beside `path`; renamed over it only when writing succeeded."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent or ".")
    return os.fdopen(fd, "wb"), Path(tmp)


def save(store: Store, names: list[str], output: Path | None, fmt: str = "oci",
         stdout: BinaryIO | None = None) -> None:
    """Write the images `names` into one archive at `output` (or stdout)."""
    saved = _resolve_all(store, names)
    if output is None:
        _write_archive(store, saved, fmt, stdout)  # type: ignore[arg-type]
        return
    f, tmp = _atomic_output(output)
    try:
        with f:
            _write_archive(store, saved, fmt, f)
            f.flush()
            os.fsync(f.fileno())
        os.rename(tmp, output)
        fsync_dir(Path(output).absolute().parent)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _write_archive(store: Store, saved: list[_Saved], fmt: str, out: BinaryIO) -> None:
    with tarfile.open(fileobj=out, mode="w|", format=tarfile.PAX_FORMAT) as tar:
        if fmt == "oci":
            _write_oci(store, saved, tar)
        elif fmt == "docker":
            _write_docker(store, saved, tar)
        else:
            raise PybuildError(f"unknown archive format {fmt!r}: use oci or docker")


def _write_oci(store: Store, saved: list[_Saved], tar: tarfile.TarFile) -> None:
    entries: list[dict] = []
    blobs: list[str] = []
    for item in saved:
        top, needed = _image_blobs(store, item.image)
        for b in needed:
            if b not in blobs:
                blobs.append(b)
        for name in item.names or [""]:
            d = Descriptor(top.media_type or mt.OCI_MANIFEST, top.digest, top.size,
                           annotations={REF_NAME: name, IMAGE_NAME: name} if name else None)
            entries.append(d.to_json())
    _bytes_member(tar, "oci-layout", LAYOUT)
    _bytes_member(tar, "index.json", canonical_json(
        {"schemaVersion": 2, "mediaType": mt.OCI_INDEX, "manifests": entries}))
    _dir_member(tar, "blobs")
    _dir_member(tar, "blobs/sha256")
    for b in blobs:
        with store.blobs.open(b) as f:
            _blob_member(tar, f"blobs/sha256/{dg.hex_of(b)}", store.blobs.size(b), f)


def _write_docker(store: Store, saved: list[_Saved], tar: tarfile.TarFile) -> None:
    from layerstore.compression import open_reader

    manifest_json = []
    repositories: dict[str, dict[str, str]] = {}
    written: set[str] = set()
    for item in saved:
        img = item.image
        check_config(img.manifest, img.config, f"image {img.id[7:19]}")   # zip() would drop layers
        config_name = f"{dg.hex_of(img.id)}.json"
        if config_name not in written:
            _bytes_member(tar, config_name, store.blobs.read(img.id))
            written.add(config_name)
        layer_names = []
        for layer, diff_id in zip(img.manifest.layers, img.config.diff_ids):
            name = f"{dg.hex_of(diff_id)}.tar"
            layer_names.append(name)
            if name in written:
                continue
            with store.blobs.open(layer.digest) as raw, \
                    tempfile.TemporaryFile(dir=store.blobs.ingest_dir) as spool:
                _kind, reader = open_reader(raw)
                shutil.copyfileobj(reader, spool, CHUNK)
                size = spool.tell()
                spool.seek(0)
                _blob_member(tar, name, size, spool)
            written.add(name)
        tags = []
        for n in item.names:
            ref = reference.parse(n, default_tag=False)
            if ref.tag:
                tags.append(ref.familiar)
                if layer_names:
                    repositories.setdefault(ref.familiar_repository, {})[ref.tag] = \
                        dg.hex_of(img.config.diff_ids[-1])
        manifest_json.append({"Config": config_name, "RepoTags": tags or None,
                              "Layers": layer_names})
    _bytes_member(tar, "manifest.json", json.dumps(manifest_json).encode())
    _bytes_member(tar, "repositories", json.dumps(repositories).encode())


# --- load -----------------------------------------------------------------


@dataclass
class Loaded:
    names: list[str] = field(default_factory=list)
    untagged: list[str] = field(default_factory=list)   # image IDs loaded without a name


@dataclass
class _Member:
    name: str
    kind: bytes          # a layer_tar type flag
    offset: int          # of the data in the (uncompressed) archive file
    size: int
    linkname: str


class _Window:
    """Read-only view of one member's bytes (pread: members never share a position)."""

    def __init__(self, fd: int, offset: int, size: int) -> None:
        self._fd, self._pos, self._end = fd, offset, offset + size

    def read(self, n: int = -1) -> bytes:
        left = self._end - self._pos
        n = left if n is None or n < 0 else min(n, left)
        parts = []
        while n > 0:
            data = os.pread(self._fd, min(n, CHUNK * 4), self._pos)
            if not data:
                raise BadArchive("archive truncated inside a member")
            parts.append(data)
            self._pos += len(data)
            n -= len(data)
        return b"".join(parts)

    read1 = read

    def readable(self) -> bool:
        return True

    def close(self) -> None:
        pass

    def __enter__(self) -> "_Window":
        return self

    def __exit__(self, *exc) -> None:
        pass


def _shown(name: object) -> str:
    """A member name from manifest.json for a message: quoted, cut short."""
    text = repr(name)
    return text[:200] + "..." if len(text) > 200 else text


def _norm(name: str) -> str | None:
    """A member name relative to the archive's top, or None if it climbs out of it."""
    path = posixpath.normpath(name.lstrip("/")) if name else "."
    if path == ".." or path.startswith("../"):
        return None
    return path


class _FileSource:
    """The archive file as read_entries reads it: pread at an offset, skips are free
    (a member's data is never read while scanning)."""

    def __init__(self, fd: int, total: int) -> None:
        self.fd, self.total, self.offset = fd, total, 0

    def read(self, size: int) -> bytes:
        if self.offset >= self.total:
            return b""
        self.skip(size)
        data = os.pread(self.fd, size, self.offset - size)
        if len(data) != size:
            raise TarTruncated("the archive shrank while being read")
        return data

    def skip(self, size: int) -> None:
        if self.offset + size > self.total:
            raise TarTruncated("a member runs past the end of the archive")
        self.offset += size


class _SpoolSource:
    """A stream (stdin, a pipe, a decompressing reader) as read_entries reads it, each
    byte copied into `spool` (a temp file under ROOT/ingest) on the way, so that the
    spool ends where the archive does: /dev/zero is an empty archive, not a full disk."""

    def __init__(self, reader: BinaryIO, spool: int, label: str) -> None:
        self.reader, self.spool, self.label, self.offset = reader, spool, label, 0

    def _pull(self, size: int) -> bytes:
        try:
            return self.reader.read(size)
        except PybuildError:
            raise
        except Exception as exc:  # zlib.error, EOFError, LZMAError, ZstdError, OSError ...
            raise BadArchive(f"{self.label}: corrupt compressed archive: "
                             f"{exc or type(exc).__name__}") from None

    def _take(self, size: int, keep: bool) -> bytes:
        parts, left = [], size
        while left:
            data = self._pull(min(left, CHUNK))
            if not data:
                if left == size and keep:
                    return b""
                raise TarTruncated("the archive ends inside a member")
            view = memoryview(data)
            while view:
                view = view[os.write(self.spool, view):]
            left -= len(data)
            if keep:
                parts.append(data)
        self.offset += size
        return b"".join(parts)

    def read(self, size: int) -> bytes:
        return self._take(size, keep=True)

    def skip(self, size: int) -> None:
        self._take(size, keep=False)


class _Archive:
    """Random access to the members of an (uncompressed, seekable) archive tar,
    following its internal symlinks only to other members, never to the disk.

    The headers are read by layer_tar.read_entries, the one tar reader, rather than
    by `tarfile`, so every limit is ours: extended headers of at most 1 MiB (a PAX
    "bomb" is refused, not read into memory), at most _MAX_MEMBERS members, every
    member's data inside the file."""

    _MAX_MEMBERS = 200_000

    def __init__(self, fd: int, label: str, source: _FileSource | _SpoolSource,
                 kind: str = "none") -> None:
        """`fd`: the file the members' data is read from (the archive or its spool),
        once `source` (over the same bytes, decompressed from `kind`) is indexed."""
        self.fd = fd
        self.label = label
        self.kind = kind
        self.members: dict[str, _Member] = {}
        self._scan(source)

    def _scan(self, source: _FileSource | _SpoolSource) -> None:
        count = 0
        # the end of the file between members ends the archive, as tar and docker take it
        try:
            for h in read_entries(source, eof_ok=True):
                count += 1
                if count > self._MAX_MEMBERS:
                    raise BadArchive(f"{self.label}: more than {self._MAX_MEMBERS} members")
                key = _norm(os.fsdecode(h.name))
                if key is not None and h.typeflag in (REG, CONT, SYM, LNK, DIR):
                    self.members[key] = _Member(key, REG if h.typeflag == CONT else h.typeflag,
                                                h.offset, h.size, os.fsdecode(h.linkname))
        except TarTruncated as exc:
            if count == 0:      # not even one whole header: a short text file, not a tar
                what = "not a tar archive" if self.kind == "none" else \
                    f"corrupt or truncated {self.kind} archive, or not a tar archive"
                raise BadArchive(f"{self.label}: {what} (shorter than one tar header)") from None
            raise BadArchive(f"{self.label}: truncated: {exc}") from None
        except HeaderError as exc:
            # deflate finds damage late (the CRC comes last): garbage decoded from a damaged
            # stream reaches the tar reader first
            what = "not a tar archive" if self.kind == "none" else \
                f"corrupt {self.kind} archive, or not a tar archive"
            detail = str(exc)
            if count == 0 and exc.offset == 0 and detail.startswith(("bad ", "header checksum")) \
                    and not detail.startswith("bad PAX"):
                # the first "header" is a text file's first line: its bytes (a Python repr)
                # tell nothing
                raise BadArchive(f"{self.label}: {what}") from None
            raise BadArchive(f"{self.label}: {what} (offset {exc.offset}): {exc}") from None
        if count == 0 and source.offset == 0:
            raise BadArchive(f"{self.label}: empty, not an archive")

    def _path(self, name: object) -> str:
        if not isinstance(name, str) or not name:
            raise BadArchive(f"{self.label}: invalid archive member name {_shown(name)}")
        path = _norm(name)
        if name.startswith("/") or path is None or "\0" in name:
            raise BadArchive(f"{self.label}: archive member {_shown(name)} points outside the archive")
        return path

    def lookup(self, name: object) -> _Member:
        path = self._path(name)
        for _ in range(16):
            m = self.members.get(path)
            if m is None:
                raise BadArchive(f"{self.label}: archive member {_shown(name)} is missing")
            if m.kind == SYM:
                target = None if m.linkname.startswith("/") else \
                    _norm(posixpath.join(posixpath.dirname(path), m.linkname))
                if target is None:
                    raise BadArchive(f"{self.label}: archive member {_shown(name)} links outside the archive")
                path = target
                continue
            if m.kind == LNK:
                target = _norm(m.linkname)
                if target is None:
                    raise BadArchive(f"{self.label}: archive member {_shown(name)} links outside the archive")
                path = target
                continue
            if m.kind != REG:
                raise BadArchive(f"{self.label}: archive member {_shown(name)} is not a file")
            return m
        raise BadArchive(f"{self.label}: archive member {_shown(name)}: too many levels of links")

    def has(self, name: str) -> bool:
        path = _norm(name)
        return path is not None and path in self.members

    def open(self, name: object) -> _Window:
        m = self.lookup(name)
        return _Window(self.fd, m.offset, m.size)

    def read(self, name: object, limit: int = MANIFEST_LIMIT) -> bytes:
        m = self.lookup(name)
        if m.size > limit:
            raise BadArchive(f"{self.label}: archive member {_shown(name)} is too large ({m.size} bytes)")
        return _Window(self.fd, m.offset, m.size).read()


def load(store: Store, source: Path | None, stdin: BinaryIO | None = None) -> Loaded:
    """Load every image of an archive file (or stdin) into the store."""
    label = "<stdin>" if source is None else str(source)
    with store.writing(), tempfile.TemporaryFile(dir=store.blobs.ingest_dir) as spool:
        if source is None:
            return _load_file(store, _open_archive(stdin, spool, label, seekable=False), label)
        try:
            f = open(source, "rb")
        except FileNotFoundError:
            raise PybuildError(f"{source}: no such file") from None
        except IsADirectoryError:
            raise PybuildError(f"{source}: is a directory, not an archive") from None
        with f:
            return _load_file(store, _open_archive(f, spool, label, seekable=True), label)


def _open_archive(src: BinaryIO, spool: BinaryIO, label: str, seekable: bool) -> _Archive:
    """The archive's members: read in place when `src` is an uncompressed regular file,
    else decompressed (or copied) into `spool`, a temp file under ROOT/ingest, as far
    as the archive goes."""
    from layerstore.compression import open_reader

    try:
        kind, reader = open_reader(src)
        if kind == "none" and seekable and stat.S_ISREG(os.fstat(src.fileno()).st_mode):
            fd = src.fileno()
            return _Archive(fd, label, _FileSource(fd, os.fstat(fd).st_size))
    except PybuildError:
        raise
    except Exception as exc:  # zlib.error, EOFError, LZMAError, ZstdError, OSError ...
        raise BadArchive(f"{label}: corrupt compressed archive: {exc or type(exc).__name__}") from None
    return _Archive(spool.fileno(), label, _SpoolSource(reader, spool.fileno(), label), kind)


_LAYOUT_VERSION = "1.0.0"


def _layout_version(archive: _Archive, label: str) -> str:
    """The oci-layout's imageLayoutVersion ("" when it names none)."""
    try:
        layout = jsonlimits.loads(archive.read("oci-layout", 64 << 10), f"{label}: oci-layout")
    except jsonlimits.InvalidJSON as exc:
        raise BadArchive(str(exc)) from None
    version = layout.get("imageLayoutVersion") if isinstance(layout, dict) else None
    if version is None:
        return ""
    if version != _LAYOUT_VERSION:
        # as containerd: a layout of another version may mean anything
        raise BadArchive(f"{label}: oci-layout: unsupported image layout version "
                         f"{str(version)[:40]!r} (this reads {_LAYOUT_VERSION})")
    return version


def _load_file(store: Store, archive: _Archive, label: str) -> Loaded:
    if archive.has("index.json") and archive.has("oci-layout") and _layout_version(archive, label):
        return _load_oci(store, archive, label)
    if archive.has("manifest.json"):
        return _load_docker(store, archive, label)
    raise BadArchive(f"{label}: neither an OCI layout (index.json, oci-layout) nor a "
                     "docker archive (manifest.json)")


def _ingest_member(store: Store, archive: _Archive, digest: str, size: int | None) -> None:
    if store.blobs.has(digest):
        return
    name = f"blobs/sha256/{dg.hex_of(digest)}"
    with archive.open(name) as src, store.blobs.writer(expected=digest, size=size) as w:
        w.copy_from(src)
        w.commit()


_MAX_NESTING = 4   # index -> index -> manifest is the deepest anyone writes


def _ingest_tree(store: Store, archive: _Archive, desc: Descriptor, label: str,
                 depth: int = 0, seen: dict[str, int] | None = None,
                 diff_ids: dict[str, str] | None = None) -> int:
    """A manifest or index and everything under it; an index's platforms that
    the archive does not carry are skipped, as other tools write such layouts.
    Returns how many image manifests it holds: an artifact below an index (an
    attestation) is kept with it, but alone it is not an image and is refused.
    `seen`: documents already taken (an index listing one manifest 50 000 times,
    nested twice, must not mean 2.5 billion visits). `diff_ids`: layer blob -> the
    diff ID it hashed to, each layer decompressed once."""
    if depth > _MAX_NESTING:
        raise BadArchive(f"{label}: indexes nested more than {_MAX_NESTING} deep")
    seen = {} if seen is None else seen
    diff_ids = {} if diff_ids is None else diff_ids
    if desc.digest in seen and depth:
        return seen[desc.digest]
    name = f"blobs/sha256/{dg.hex_of(desc.digest)}"
    data = archive.read(name, MANIFEST_LIMIT)
    if dg.of_bytes(data) != desc.digest:
        raise BadArchive(f"{label}: {name} does not match its digest")
    what = f"{label}: {desc.digest}"
    obj = parse_manifest_or_index(data, desc.media_type, what=what)
    images = 0
    if isinstance(obj, Index):
        for child in obj.manifests:
            if archive.has(f"blobs/sha256/{dg.hex_of(child.digest)}"):
                images += _ingest_tree(store, archive, child, label, depth + 1, seen, diff_ids)
        if not images:
            raise NotAnImage(f"{what}: the index holds no image that the archive carries")
    else:
        images = int(image_problem(obj) is None)
        if depth == 0 or images:    # an artifact below an index (an attestation) is kept
            check_image(obj, what)
        for blob in [obj.config, *obj.layers]:
            _ingest_member(store, archive, blob.digest, blob.size)
        if images:
            # as docker load: an image whose config is no config, names more or fewer diff
            # IDs than it has layers, or whose layers are not what it says, is refused
            # now rather than loaded and failing at `run`
            config = store.read_config(obj)
            check_config(obj, config, what)
            for i, (layer, diff_id) in enumerate(zip(obj.layers, config.diff_ids)):
                if layer.digest not in diff_ids:
                    diff_ids[layer.digest] = diff_id_of(store, layer.digest, f"{what}: layer {i}")[1]
                if diff_ids[layer.digest] != diff_id:
                    raise BadArchive(f"{what}: layer {i} ({layer.digest}) has diff ID "
                                     f"{diff_ids[layer.digest]}, the config says {diff_id}")
    store.put_json(data, desc.media_type)
    seen[desc.digest] = images
    return images


def _oci_name(annotations: dict[str, str] | None) -> str | None:
    """containerd's full-name annotation, else ref.name when it is a name
    (not a bare tag such as "latest", which names no repository)."""
    ann = annotations or {}
    for key in (IMAGE_NAME, REF_NAME):
        value = ann.get(key)
        if value and ("/" in value or ":" in value or key == IMAGE_NAME):
            try:
                return str(reference.parse(value))
            except PybuildError:
                continue
    return None


def _load_oci(store: Store, archive: _Archive, label: str) -> Loaded:
    what = f"{label}: index.json"
    index = Index.from_json(load_object(archive.read("index.json", MANIFEST_LIMIT), what),
                            what=what)
    result = Loaded()
    for desc in index.manifests:
        _ingest_tree(store, archive, desc, label)
        name = _oci_name(desc.annotations)
        target = Descriptor(desc.media_type, desc.digest, desc.size, platform=desc.platform)
        if name:
            store.tag(name, target)
            result.names.append(name)
        else:
            store.refs.add_untagged(target)
            try:
                result.untagged.append(store.load_image(target).id)
            except NotFound:      # an index without this host's platform
                result.untagged.append(desc.digest)
    return result


def diff_id_of(store: Store, digest: str, where: str) -> tuple[str, str]:
    """(compression, diff ID) of a stored layer blob."""
    from layerstore.compression import open_reader

    with store.blobs.open(digest) as raw:
        try:
            kind, reader = open_reader(raw)
            if kind == "none":
                return kind, digest
            h = hashlib.sha256()
            while chunk := reader.read(CHUNK):
                h.update(chunk)
        except PybuildError:
            raise
        except Exception as exc:  # zlib.error, EOFError, LZMAError, ZstdError ...
            raise BadArchive(f"{where}: corrupt compressed layer: "
                             f"{exc or type(exc).__name__}") from None
        return kind, "sha256:" + h.hexdigest()


def _load_docker(store: Store, archive: _Archive, label: str) -> Loaded:
    try:
        entries = jsonlimits.loads(archive.read("manifest.json", MANIFEST_LIMIT),
                                   f"{label}: manifest.json")
    except jsonlimits.InvalidJSON as exc:
        raise BadArchive(str(exc)) from None
    if not isinstance(entries, list) or not entries:
        raise BadArchive(f"{label}: manifest.json must be a non-empty list")
    result = Loaded()
    taken: dict[str, tuple[Descriptor, str]] = {}  # member -> (blob, diff ID): each read once
    for n, entry in enumerate(entries):
        where = f"{label}: manifest.json entry {n}"
        if not isinstance(entry, dict) or not isinstance(entry.get("Config"), str):
            raise BadArchive(f"{where}: needs Config and Layers")
        layer_names = entry.get("Layers") or []
        tags = entry.get("RepoTags") or []
        if not isinstance(layer_names, list) or not all(isinstance(l, str) for l in layer_names):
            raise BadArchive(f"{where}: Layers must be a list of member names")
        if not isinstance(tags, list) or not all(isinstance(t, str) for t in tags):
            raise BadArchive(f"{where}: RepoTags must be a list of names")
        config_bytes = archive.read(entry["Config"], CONFIG_LIMIT)
        config = ImageConfig.from_bytes(config_bytes, what=f"{where}: config")
        if len(config.diff_ids) != len(layer_names):
            raise InvalidImage(f"{where}: {len(layer_names)} layers but "
                               f"{len(config.diff_ids)} diff IDs in the config")
        if len(layer_names) > MAX_LAYERS:
            raise InvalidImage(f"{where}: {len(layer_names)} layers, more than the "
                               f"{MAX_LAYERS} an overlay mount can stack")
        layers = []
        for i, (member, diff_id) in enumerate(zip(layer_names, config.diff_ids)):
            if member not in taken:
                with archive.open(member) as src:
                    info = store.blobs.ingest(src)
                kind, actual = diff_id_of(store, info.digest, f"{where}: layer {i} ({member})")
                media = {"none": mt.OCI_LAYER, "gzip": mt.OCI_LAYER_GZIP,
                         "zstd": mt.OCI_LAYER_ZSTD}.get(kind)
                if media is None:
                    raise BadArchive(f"{where}: layer {member} is {kind}-compressed")
                taken[member] = (Descriptor(media, info.digest, info.size), actual)
            blob, actual = taken[member]
            if actual != diff_id:
                raise BadArchive(f"{where}: layer {i} ({member}) has diff ID {actual}, "
                                 f"the config says {diff_id}")
            layers.append(blob)
        cfg = store.put_json(config_bytes, mt.OCI_CONFIG)
        manifest = Manifest(config=cfg, layers=layers)
        top = store.put_json(manifest.to_bytes(), mt.OCI_MANIFEST)
        named = False
        for t in tags:
            try:
                result.names.append(store.tag(t, top))
                named = True
            except PybuildError:
                continue
        if not named:
            store.refs.add_untagged(top)
            result.untagged.append(cfg.digest)
    return result


def iter_names(loaded: Loaded) -> Iterator[str]:
    for name in loaded.names:
        yield "Loaded image: " + reference.parse(name).familiar
    for image_id in loaded.untagged:
        yield "Loaded image ID: " + image_id
