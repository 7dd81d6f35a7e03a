"""The store: blobs, refs, snapshots under one root, and images over them.

`Store.open(root)` creates the layout on first use. Everything that reads an
image goes through `resolve`, which accepts a reference, an image ID (config
digest, or a unique prefix of its hex) or a manifest digest.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

from layerstore import digest as dg
from layerstore import mediatypes as mt
from layerstore import reference
from layerstore.blobs import BlobStore
from layerstore.errors import InvalidImage, InvalidReference, NotFound, PlatformMismatch, PybuildError
from layerstore.locking import file_lock
from layerstore.model import (CONFIG_LIMIT, MANIFEST_LIMIT, Descriptor, ImageConfig, Index,
                              Manifest, Platform, check_image, parse_manifest_or_index)
from layerstore.platforms import host_platform, matches, normalize
from layerstore.refs import RefIndex
from layerstore.snapshots import SnapshotStore


@dataclass
class Image:
    """One platform's image: its manifest, config, and the names pointing at it."""

    descriptor: Descriptor          # of the manifest
    manifest: Manifest
    config: ImageConfig
    top: Descriptor                 # what the ref points at: this manifest or an index
    names: list[str] = field(default_factory=list)

    @property
    def id(self) -> str:
        """Docker's image ID: the config digest."""
        return self.manifest.config.digest

    @property
    def size(self) -> int:
        return sum(l.size for l in self.manifest.layers)


# Every directory below ROOT that holds image content or state. ROOT itself is 0700, so
# nothing below it is reachable by another host user (a setuid binary or a device node
# of an image in snapshots/, a private image's blobs, build args in cache records:
# CVE-2021-41091); each of these is 0700 as well, so a ROOT loosened by hand (or an
# old store) still keeps them closed. Checked on every open: a few syscalls, no walk.
PRIVATE_DIRS = ("blobs", "blobs/sha256", "ingest", "snapshots", "containers", "volumes",
                "cache", "tmp")
PRIVATE_FILES = ("index.json", "oci-layout", "lock", "gc.lock")


def _private_dir(parent: int, name: str) -> None:
    """mkdir `name` 0700 beneath the dir fd `parent` or tighten what is there (never
    following a symlink: only root writes here, but a planted link must not redirect
    the chmod)."""
    try:
        os.mkdir(name, 0o700, dir_fd=parent)
    except FileExistsError:
        pass
    fd = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC,
                 dir_fd=parent)
    try:
        if os.fstat(fd).st_mode & 0o077:
            os.fchmod(fd, 0o700)
    finally:
        os.close(fd)


# What a store (or an OCI layout to become one) has at its top, even one whose creation
# was interrupted, or that `volume create` started: the first dirs made, the layout files.
_STORE_MARKS = ("oci-layout", "index.json", "blobs", "ingest", "snapshots", "containers",
                "volumes", "lock", "gc.lock")


class NotAStore(PybuildError):
    """--root names a directory that holds something else than a store."""


def make_private(root: Path) -> None:
    """Create ROOT and its top-level dirs 0700, or tighten an existing (older) store.

    A non-empty directory that is no store is refused, not taken over: `--root /` or
    `PYBUILD_ROOT=$HOME` would make it 0700 (no other user could use / any more) and
    fill it with the store's dirs."""
    root.mkdir(mode=0o700, parents=True, exist_ok=True)
    rfd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        names = os.listdir(rfd)
        if names and not any(mark in names for mark in _STORE_MARKS):
            raise NotAStore(f"{root}: not a pybuild store, and not empty: refusing to use it "
                            "as one (it would be made private to root)")
        if os.fstat(rfd).st_mode & 0o077:
            os.fchmod(rfd, 0o700)
        for sub in PRIVATE_DIRS:
            _private_dir(rfd, sub)
        for name in PRIVATE_FILES:
            try:
                st = os.stat(name, dir_fd=rfd, follow_symlinks=False)
            except FileNotFoundError:
                continue
            if stat.S_ISREG(st.st_mode) and st.st_mode & 0o077:
                os.chmod(name, 0o600, dir_fd=rfd)
    finally:
        os.close(rfd)


class Store:
    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.blobs = BlobStore(self.root)
        self.refs = RefIndex(self.root)
        self.snapshots = SnapshotStore(self.root)

    @classmethod
    def open(cls, root: Path) -> "Store":
        store = cls(root)
        try:
            make_private(store.root)
        except OSError as exc:
            raise PybuildError(f"cannot create store at {root}: {exc.strerror}") from None
        store.blobs.init()
        store.snapshots.init()
        store.refs.init()
        return store

    def lock(self, shared: bool = False):
        return file_lock(self.root / "lock", shared=shared)

    def writing(self):
        """Held (shared) while blobs are written that no ref names yet, so a
        concurrent prune (which takes it exclusively) cannot collect them."""
        return file_lock(self.root / "gc.lock", shared=True)

    def collecting(self):
        return file_lock(self.root / "gc.lock", shared=False)

    # --- reading ----------------------------------------------------------

    def read_manifest(self, desc: Descriptor) -> Manifest | Index:
        data = self.blobs.read(desc.digest, limit=MANIFEST_LIMIT)
        return parse_manifest_or_index(data, desc.media_type, what=f"manifest {desc.digest}")

    def read_config(self, manifest: Manifest) -> ImageConfig:
        data = self.blobs.read(manifest.config.digest, limit=CONFIG_LIMIT)
        return ImageConfig.from_bytes(data, what=f"config {manifest.config.digest}")

    def select(self, index: Index, want: Platform | None = None) -> Descriptor:
        """The index entry for `want` (default: this host); the only one if just one."""
        want = want or host_platform()
        images = [m for m in index.manifests if m.media_type in mt.MANIFESTS or not m.media_type]
        for m in images:
            if matches(want, m.platform):
                return m
        if len(images) == 1 and images[0].platform is None:
            return images[0]
        have = ", ".join(str(m.platform) for m in images if m.platform) or "none"
        raise NotFound(f"no image for platform {want} in index (has: {have})")

    def load_image(self, top: Descriptor, names: list[str] | None = None,
                   platform: Platform | None = None) -> Image:
        obj = self.read_manifest(top)
        desc = top
        depth = 0
        while isinstance(obj, Index):
            depth += 1
            if depth > 4:
                raise InvalidImage(f"index {top.digest}: nested too deeply")
            desc = self.select(obj, platform)
            obj = self.read_manifest(desc)
        check_image(obj, f"manifest {desc.digest}")
        config = self.read_config(obj)
        if platform is not None and depth == 0 and config.architecture:
            # a single-platform image says its platform only in its config: an amd64
            # image handed out for an arm64 request is how an amd64 result got cached
            # and shipped as arm64
            have = Platform(os=config.os or "linux", architecture=config.architecture,
                            variant=config.variant)
            if not matches(platform, have):
                shown = (names or [top.digest])[0]
                raise PlatformMismatch(
                    f"image with reference {shown} was found but does not match the specified "
                    f"platform: wanted {platform}, actual: {normalize(have.os, have.architecture, have.variant)}")
        return Image(descriptor=desc, manifest=obj, config=config, top=top,
                     names=list(names or []))

    def images(self) -> Iterator[Image]:
        """Every image in index.json: one per name, and untagged ones with no names."""
        for name, desc in self.refs.entries():
            try:
                yield self.load_image(desc, [name] if name else [])
            except (NotFound, InvalidImage):
                continue  # one broken or foreign entry must not hide every other image

    def names_of(self, digest: str) -> list[str]:
        return [name for name, d in self.refs.list() if d.digest == digest]

    def resolve(self, name: str, platform: Platform | None = None) -> Image:
        """Find an image by reference, image ID (prefix) or manifest digest."""
        entries = self.refs.entries()
        candidate = name[len("sha256:"):] if name.startswith("sha256:") else name
        if 3 <= len(candidate) <= 64 and all(c in "0123456789abcdef" for c in candidate):
            found = self._by_id(entries, candidate, platform)
            if len(found) == 1:
                return found[0]
            if len(found) > 1:
                raise PybuildError(f"{name}: ambiguous image ID prefix "
                                   f"({len(found)} images match)")
        try:
            ref = reference.parse(name)
        except InvalidReference:
            raise self._missing(name, entries) from None
        full = str(ref)
        for ref_name, desc in entries:
            if ref_name == full:
                return self.load_image(desc, self.names_of(desc.digest), platform)
        if ref.digest:
            for ref_name, desc in entries:
                if desc.digest == ref.digest:
                    return self.load_image(desc, self.names_of(desc.digest), platform)
            if self.blobs.has(ref.digest):
                # the kind (manifest or index) is the document's own: nobody referred to it
                obj = self.read_manifest(Descriptor("", ref.digest, self.blobs.size(ref.digest)))
                desc = Descriptor(obj.media_type, ref.digest, self.blobs.size(ref.digest))
                return self.load_image(desc, [], platform)
        raise self._missing(ref.familiar, entries)

    def _missing(self, name: str, entries: list) -> NotFound:
        # an empty store usually means the wrong one (sudo's root store vs a user's
        # $XDG_DATA_HOME one, a CI job without PYBUILD_ROOT): say which store was asked
        if entries:
            return NotFound(f"{name}: no such image in the store")
        return NotFound(f"{name}: no such image in the store: {self.root} holds no images "
                        "(--root or PYBUILD_ROOT chooses the store)")

    def _by_id(self, entries: list[tuple[str, Descriptor]], prefix: str,
               platform: Platform | None) -> list[Image]:
        """Images whose ID (config digest) or manifest digest starts with `prefix`."""
        found: dict[str, Image] = {}
        for _name, desc in entries:
            try:
                img = self.load_image(desc, platform=platform)
            except (NotFound, InvalidImage):
                continue
            digests = (desc.digest[7:], img.descriptor.digest[7:], img.id[7:])
            if any(d.startswith(prefix) for d in digests) and img.descriptor.digest not in found:
                img.names = [n for n, d in entries
                             if n and d.digest in (img.top.digest, img.descriptor.digest)]
                found[img.descriptor.digest] = img
        return list(found.values())

    # --- writing ----------------------------------------------------------

    def put_json(self, data: bytes, media_type: str) -> Descriptor:
        info = self.blobs.put(data, dg.of_bytes(data))
        return Descriptor(media_type=media_type, digest=info.digest, size=info.size)

    def commit_image(self, config: ImageConfig, layers: list[Descriptor],
                     annotations: dict[str, str] | None = None) -> Descriptor:
        """Write config and manifest blobs; returns the manifest's descriptor."""
        if len(config.diff_ids) != len(layers):
            raise InvalidImage(f"image has {len(layers)} layers but {len(config.diff_ids)} diff IDs")
        for layer in layers:
            if not self.blobs.has(layer.digest):
                raise NotFound(f"layer {layer.digest} is not in the store")
        config.raw = None
        cfg = self.put_json(config.to_bytes(), mt.OCI_CONFIG)
        manifest = Manifest(config=cfg, layers=list(layers), annotations=annotations)
        return self.put_json(manifest.to_bytes(), mt.OCI_MANIFEST)

    def tag(self, name: str, target: Descriptor) -> str:
        """Point reference `name` at `target`; returns the normalized name."""
        ref = reference.parse(name)
        if ref.digest:
            raise InvalidReference(f"invalid tag {name!r}: a tag cannot contain a digest")
        full = str(ref)
        self.refs.set(full, target)
        return full

    def commit_layer(self, src: Path, *, compression: str = "gzip", overlay: bool = True,
                     source_date_epoch: int | None = None, root_entry: bool = False,
                     devices: bool = True,
                     exclude: frozenset[bytes] = frozenset()) -> tuple[Descriptor, str]:
        """Tar + compress the directory `src` into a blob: (descriptor, diff ID).
        root_entry, devices, exclude: as layer_diff.write_layer."""
        from layerstore.layer_diff import write_layer

        with self.blobs.writer() as w:
            stats = write_layer(Path(src), w, compression=compression, overlay=overlay,
                                source_date_epoch=source_date_epoch, root_entry=root_entry,
                                devices=devices, exclude=exclude)
            info = w.commit()
        return Descriptor(stats.media_type, info.digest, info.size), stats.diff_id

    def snapshot_chain(self, image: Image) -> list[Path]:
        """Unpack (once) every layer of `image`; returns its snapshots (the lower dirs of
        a mount plan), bottom first."""
        manifest, diff_ids = image.manifest, image.config.diff_ids
        if len(diff_ids) != len(manifest.layers):
            raise InvalidImage(f"image {image.id[7:19]}: {len(manifest.layers)} layers but "
                               f"{len(diff_ids)} diff IDs")
        with self.writing():  # a concurrent prune must not take a half-made snapshot
            return self.snapshots.chain(diff_ids, lambda i: self.blobs.open(manifest.layers[i].digest))

    def disk_usage(self) -> int:
        """Bytes ROOT takes on disk, as `du -sx -B1 ROOT` counts them (layerstore.usage)."""
        from layerstore.usage import measure

        return measure(self).total
