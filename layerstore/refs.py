"""Refs kept in ROOT/index.json, so the store root is itself an OCI layout.

Each entry of index.json's `manifests` is a descriptor annotated with
`org.opencontainers.image.ref.name` = the normalized reference, so that
`skopeo inspect oci:ROOT:REF` finds it. Updates are read-modify-write under
the store lock and replace the file atomically.
"""

from __future__ import annotations

from pathlib import Path

from layerstore import jsonlimits
from layerstore import mediatypes as mt
from layerstore import reference
from layerstore.atomic import atomic_write
from layerstore.errors import InvalidImage, InvalidReference, NotFound
from layerstore.locking import file_lock
from layerstore.model import Descriptor, canonical_json

REF_NAME, IMAGE_NAME = mt.REF_NAME, mt.IMAGE_NAME
LAYOUT = b'{"imageLayoutVersion":"1.0.0"}'
INDEX_LIMIT = 64 << 20     # some 150 000 refs


class RefIndex:
    def __init__(self, root: Path) -> None:
        self.path = root / "index.json"
        self.lock_path = root / "lock"

    def init(self) -> None:
        layout = self.path.parent / "oci-layout"
        if not layout.exists():
            atomic_write(layout, LAYOUT, 0o600)
        if not self.path.exists():
            with file_lock(self.lock_path):
                if not self.path.exists():
                    self._write([])

    def _read(self) -> list[Descriptor]:
        try:
            obj = jsonlimits.read_object(self.path, max_bytes=INDEX_LIMIT)
        except FileNotFoundError:
            return []
        except jsonlimits.InvalidJSON as exc:
            raise InvalidImage(str(exc)) from None
        entries = obj.get("manifests") or []
        if not isinstance(entries, list):
            raise InvalidImage(f"{self.path}: 'manifests' must be a list")
        return [Descriptor.from_json(m, f"{self.path}: entry {i}") for i, m in enumerate(entries)]

    def _write(self, entries: list[Descriptor]) -> None:
        entries = sorted(entries, key=lambda d: (d.annotations or {}).get(REF_NAME, ""))
        doc = {"schemaVersion": 2, "mediaType": mt.OCI_INDEX,
               "manifests": [d.to_json() for d in entries]}
        atomic_write(self.path, canonical_json(doc), 0o600)

    def list(self) -> list[tuple[str, Descriptor]]:
        """(ref name, descriptor) for every named entry."""
        out = []
        for d in self._read():
            name = _name(d)
            if name:
                out.append((name, d))
        return out

    def entries(self) -> list[tuple[str, Descriptor]]:
        """Every entry; untagged (dangling) images have the name "", and so do entries
        whose ref.name is not a reference of ours (kept, and kept alive by prune)."""
        return [(_name(d), d) for d in self._read()]

    def add_untagged(self, target: Descriptor) -> None:
        """Keep an image with no name (as docker keeps dangling images)."""
        entry = Descriptor(media_type=target.media_type, digest=target.digest, size=target.size)
        with file_lock(self.lock_path):
            entries = self._read()
            if not any(d.digest == target.digest for d in entries):
                entries.append(entry)
                self._write(entries)

    def remove_untagged(self, digest: str) -> bool:
        """Drop the untagged entries of `digest`; whether there were any."""
        with file_lock(self.lock_path):
            entries = self._read()
            keep = [d for d in entries if (d.annotations or {}).get(REF_NAME) or d.digest != digest]
            if len(keep) != len(entries):
                self._write(keep)
                return True
            return False

    def get(self, name: str) -> Descriptor:
        for ref, d in self.list():
            if ref == name:
                return d
        raise NotFound(f"{name}: no such image in the store")

    def find(self, name: str) -> Descriptor | None:
        try:
            return self.get(name)
        except NotFound:
            return None

    def set(self, name: str, target: Descriptor) -> None:
        """Point `name` at `target` (replacing what it named before)."""
        entry = Descriptor(media_type=target.media_type, digest=target.digest, size=target.size,
                           platform=target.platform,
                           annotations={REF_NAME: name, IMAGE_NAME: name})
        with file_lock(self.lock_path):
            entries = [d for d in self._read() if not _replaced_by(d, name, target)]
            entries.append(entry)
            self._write(entries)

    def delete(self, name: str) -> Descriptor:
        with file_lock(self.lock_path):
            entries = self._read()
            keep = [d for d in entries if (d.annotations or {}).get(REF_NAME) != name]
            if len(keep) == len(entries):
                raise NotFound(f"{name}: no such image in the store")
            gone = next(d for d in entries if (d.annotations or {}).get(REF_NAME) == name)
            self._write(keep)
            return gone


def _name(entry: Descriptor) -> str:
    """The entry's ref name when it is a normalized reference, as every name pybuild
    writes is; "" otherwise. index.json is an OCI layout that other tools write too
    (skopeo `oci:ROOT:mytag` names an entry "mytag"), or that was edited by hand: a name
    such as "../../x" must not reach code that parses names or makes paths of them, nor
    make every image unlistable."""
    name = (entry.annotations or {}).get(REF_NAME, "")
    if not isinstance(name, str) or not name:
        return ""
    try:
        return name if reference.normalize(name) == name else ""
    except InvalidReference:
        return ""


def _replaced_by(entry: Descriptor, name: str, target: Descriptor) -> bool:
    """An entry of that name, or an untagged entry of the image now being named."""
    ref = (entry.annotations or {}).get(REF_NAME)
    return ref == name if ref is not None else entry.digest == target.digest
