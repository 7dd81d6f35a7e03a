"""An image's size as docker shows it: the uncompressed bytes of its layers.

docker's `images` SIZE (and inspect's Size) is the unpacked content, the same
for one image whether it was built, pulled, loaded or pushed and pulled again
with another compression. The stored blobs are compressed (and their size
depends on how), so each layer's uncompressed length is measured once, by
decompressing its blob, and kept in ROOT/cache/layer-sizes.json under its diff
ID. A diff ID is the digest of exactly those uncompressed bytes, so the record
can never go stale; it is written only after the stream hashed to that diff ID
(a corrupt blob gets its compressed size for this listing and no record). A
hostile or broken file costs at most a wrong figure: it is read bounded and its
keys are checked hex.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

from layerstore import jsonlimits
from layerstore.atomic import atomic_write

SIZES_FILE = Path("cache") / "layer-sizes.json"
MAX_RECORDS = 200_000          # ~20 MB of JSON at most; beyond it nothing new is kept
_HEX = re.compile(r"[0-9a-f]{64}")
_CHUNK = 1 << 20


class LayerSizes:
    """diff ID -> uncompressed size, for one store; `save()` writes what was learnt."""

    def __init__(self, store) -> None:
        self.store = store
        self.path = Path(store.root) / SIZES_FILE
        self.known = _read(self.path)
        self.dirty = False

    def layer(self, diff_id: str, blob_digest: str, blob_size: int) -> int:
        hexpart = diff_id.removeprefix("sha256:")
        if hexpart in self.known:
            return self.known[hexpart]
        size, ok = _measure(self.store, blob_digest, diff_id)
        if not ok:
            return blob_size
        if len(self.known) < MAX_RECORDS:
            self.known[hexpart] = size
            self.dirty = True
        return size

    def image(self, img) -> int:
        """Sum over the image's layers (its compressed size if the diff IDs do not pair
        up with the layers: InvalidImage is someone else's to report)."""
        layers, diff_ids = img.manifest.layers, img.config.diff_ids
        if len(layers) != len(diff_ids):
            return sum(l.size for l in layers)
        return sum(self.layer(d, l.digest, l.size) for d, l in zip(diff_ids, layers))

    def save(self) -> None:
        """Best effort: a store whose cache/ cannot be written measures again next time."""
        if not self.dirty:
            return
        try:
            self.path.parent.mkdir(mode=0o700, exist_ok=True)
            atomic_write(self.path, json.dumps({"version": 1, "sizes": self.known},
                                               sort_keys=True).encode(), 0o600)
            self.dirty = False
        except OSError:
            pass


def image_size(store, img) -> int:
    sizes = LayerSizes(store)
    try:
        return sizes.image(img)
    finally:
        sizes.save()


def _measure(store, blob_digest: str, diff_id: str) -> tuple[int, bool]:
    """(uncompressed length, whether it hashed to diff_id)."""
    from layerstore.compression import open_reader

    algo, _, want = diff_id.partition(":")
    if algo != "sha256" or not _HEX.fullmatch(want):
        return 0, False
    h = hashlib.sha256()
    size = 0
    try:
        with store.blobs.open(blob_digest) as raw:
            _kind, reader = open_reader(raw)
            while True:
                chunk = reader.read(_CHUNK)
                if not chunk:
                    break
                size += len(chunk)
                h.update(chunk)
    except Exception:  # noqa: BLE001 -- any corrupt stream: no figure, no record
        return 0, False
    return size, h.hexdigest() == want


def _read(path: Path) -> dict[str, int]:
    try:
        doc = jsonlimits.read_object(path, max_bytes=32 << 20)
    except (OSError, ValueError, Exception):  # noqa: BLE001 -- unreadable: measure again
        return {}
    raw = doc.get("sizes") if doc.get("version") == 1 else None
    out: dict[str, int] = {}
    if isinstance(raw, dict):
        for k, v in raw.items():
            if _HEX.fullmatch(k) and type(v) is int and v >= 0:
                out[k] = v
            if len(out) >= MAX_RECORDS:
                break
    return out
