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
import tarfile
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, Iterator

from layerstore import digest as dg
from layerstore import mediatypes as mt
from layerstore import reference
from layerstore.atomic import fsync_dir
from layerstore.errors import InvalidImage, PybuildError
from layerstore.model import (Descriptor, ImageConfig, Index, Manifest, canonical_json,
                              parse_manifest_or_index)
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


class _Archive:
    """Random access to the members of an archive tar, following its
    internal symlinks (only ever to other members, never to the disk)."""

    def __init__(self, tar: tarfile.TarFile) -> None:
        self.tar = tar
        self.members: dict[str, tarfile.TarInfo] = {}
        for m in tar.getmembers():
            self.members[posixpath.normpath(m.name.lstrip("/")).lstrip("./") or "."] = m

    def lookup(self, name: str) -> tarfile.TarInfo:
        path = posixpath.normpath(name.lstrip("/"))
        for _ in range(16):
            m = self.members.get(path)
            if m is None:
                raise BadArchive(f"archive member {name!r} is missing")
            if m.issym():
                path = posixpath.normpath(posixpath.join(posixpath.dirname(path), m.linkname))
                if path.startswith("../") or path == "..":
                    raise BadArchive(f"archive member {name!r} links outside the archive")
                continue
            if m.islnk():
                path = posixpath.normpath(m.linkname.lstrip("/"))
                continue
            if not m.isfile():
                raise BadArchive(f"archive member {name!r} is not a file")
            return m
        raise BadArchive(f"archive member {name!r}: too many levels of links")

    def has(self, name: str) -> bool:
        return posixpath.normpath(name) in self.members

    def open(self, name: str) -> BinaryIO:
        f = self.tar.extractfile(self.lookup(name))
        assert f is not None
        return f  # type: ignore[return-value]

    def read(self, name: str, limit: int = 64 << 20) -> bytes:
        m = self.lookup(name)
        if m.size > limit:
            raise BadArchive(f"archive member {name!r} is too large ({m.size} bytes)")
        return self.open(name).read()


def load(store: Store, source: Path | None, stdin: BinaryIO | None = None) -> Loaded:
    """Load every image of an archive file (or stdin) into the store."""
    with store.writing():
        if source is None:
            with tempfile.TemporaryFile(dir=store.blobs.ingest_dir) as spool:
                shutil.copyfileobj(stdin, spool, CHUNK)  # type: ignore[arg-type]
                spool.seek(0)
                return _load_file(store, spool, "<stdin>")
        try:
            f = open(source, "rb")
        except FileNotFoundError:
            raise PybuildError(f"{source}: no such file") from None
        with f:
            return _load_file(store, f, str(source))


def _load_file(store: Store, f: BinaryIO, label: str) -> Loaded:
    try:
        tar = tarfile.open(fileobj=f, mode="r:*")
    except (tarfile.TarError, EOFError, OSError) as exc:
        raise BadArchive(f"{label}: not a tar archive: {exc}") from None
    with tar:
        try:
            archive = _Archive(tar)
        except (tarfile.TarError, EOFError) as exc:
            raise BadArchive(f"{label}: corrupt archive: {exc}") from None
        if archive.has("index.json") and archive.has("oci-layout"):
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


def _ingest_tree(store: Store, archive: _Archive, desc: Descriptor, label: str) -> None:
    """A manifest or index and everything under it; an index's platforms that
    the archive does not carry are skipped, as other tools write such layouts."""
    name = f"blobs/sha256/{dg.hex_of(desc.digest)}"
    data = archive.read(name)
    if dg.of_bytes(data) != desc.digest:
        raise BadArchive(f"{label}: {name} does not match its digest")
    obj = parse_manifest_or_index(data, desc.media_type, what=f"{label}: {desc.digest}")
    if isinstance(obj, Index):
        for child in obj.manifests:
            if archive.has(f"blobs/sha256/{dg.hex_of(child.digest)}"):
                _ingest_tree(store, archive, child, label)
    else:
        for blob in [obj.config, *obj.layers]:
            _ingest_member(store, archive, blob.digest, blob.size)
    store.put_json(data, desc.media_type)


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
    try:
        index = Index.from_json(json.loads(archive.read("index.json")), what=f"{label}: index.json")
    except ValueError as exc:
        raise BadArchive(f"{label}: index.json: {exc}") from None
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
            result.untagged.append(store.load_image(target).id)
    return result


def _diff_id_of(store: Store, digest: str) -> tuple[str, str]:
    """(compression, diff ID) of a stored layer blob."""
    from layerstore.compression import open_reader

    with store.blobs.open(digest) as raw:
        kind, reader = open_reader(raw)
        if kind == "none":
            return kind, digest
        h = hashlib.sha256()
        while chunk := reader.read(CHUNK):
            h.update(chunk)
        return kind, "sha256:" + h.hexdigest()


def _load_docker(store: Store, archive: _Archive, label: str) -> Loaded:
    try:
        entries = json.loads(archive.read("manifest.json"))
    except ValueError as exc:
        raise BadArchive(f"{label}: manifest.json: {exc}") from None
    if not isinstance(entries, list):
        raise BadArchive(f"{label}: manifest.json must be a list")
    result = Loaded()
    for n, entry in enumerate(entries):
        where = f"{label}: manifest.json entry {n}"
        try:
            config_bytes = archive.read(entry["Config"])
            layer_names = list(entry.get("Layers") or [])
        except (KeyError, TypeError):
            raise BadArchive(f"{where}: needs Config and Layers") from None
        config = ImageConfig.from_bytes(config_bytes, what=f"{where}: config")
        if len(config.diff_ids) != len(layer_names):
            raise InvalidImage(f"{where}: {len(layer_names)} layers but "
                               f"{len(config.diff_ids)} diff IDs in the config")
        layers = []
        for i, (member, diff_id) in enumerate(zip(layer_names, config.diff_ids)):
            with archive.open(member) as src:
                info = store.blobs.ingest(src)
            kind, actual = _diff_id_of(store, info.digest)
            if actual != diff_id:
                raise BadArchive(f"{where}: layer {i} ({member}) has diff ID {actual}, "
                                 f"the config says {diff_id}")
            media = {"none": mt.OCI_LAYER, "gzip": mt.OCI_LAYER_GZIP,
                     "zstd": mt.OCI_LAYER_ZSTD}.get(kind)
            if media is None:
                raise BadArchive(f"{where}: layer {member} is {kind}-compressed")
            layers.append(Descriptor(media, info.digest, info.size))
        cfg = store.put_json(config_bytes, mt.OCI_CONFIG)
        manifest = Manifest(config=cfg, layers=layers)
        top = store.put_json(manifest.to_bytes(), mt.OCI_MANIFEST)
        tags = [t for t in (entry.get("RepoTags") or []) if isinstance(t, str)]
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
