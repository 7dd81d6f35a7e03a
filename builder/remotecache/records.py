"""Cache records and the one format they travel in.

A record is a step's cache key (builder/cache.py `step_key`: machine-independent, it
never holds a path or a time) -> the state after the step: the image config bytes and
the descriptors of all its layers (the base image's too), as a local cache entry is.

An export (type=registry and type=local) is one OCI image manifest whose config is the
cache-config blob (CACHE_CONFIG_TYPE) and whose layers are every layer blob a record
names:

    {"version": 1,
     "records": [{"key": hex64, "config": "<image config JSON text>", "layers": [i, ...]}],
     "mounts": [{"id": ..., "platform": "linux/amd64", "manifest": <descriptor>}]}

`layers` index the manifest's layers. Records are sorted by key and layers listed in
first-use order, and the manifest carries no time unless SOURCE_DATE_EPOCH gives one:
the same records always make the same bytes, so the same manifest digest. Inline
records (type=inline) are the same record objects in the image config's INLINE_FIELD,
their `layers` indexing the image's own layers.

Everything read back is outside input: bounded (size, count, nesting through
layerstore/jsonlimits) and checked record by record. A record that does not hold
together is a miss, never a state to build on (`check`, `extends`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from layerstore import jsonlimits
from layerstore import mediatypes as mt
from layerstore.errors import PybuildError
from layerstore.model import (CONFIG_LIMIT, MAX_LAYERS, Descriptor, ImageConfig, Manifest,
                              canonical_json)

CACHE_CONFIG_TYPE = "application/vnd.pybuild.cache.config.v1+json"
INLINE_FIELD = "pybuild.cache.v1"
VERSION = 1
MAX_CONFIG_BLOB = 32 << 20     # the record list of one export, held in memory when read
MAX_RECORDS = 4096             # a 4096-step mode=max build; far beyond real Dockerfiles
MAX_MOUNTS = 256
MAX_BLOB_SIZE = 2 ** 53 - 1    # as a pull: beyond it JSON readers lose precision
_HEX64 = re.compile(r"[0-9a-f]{64}")


class CacheFormatError(PybuildError):
    """A cache export or inline record list that cannot be read at all."""


@dataclass
class Record:
    """One step's result, as exported: key, config bytes, all layers of the state."""

    key: str
    config: bytes
    layers: list[Descriptor]


@dataclass
class CacheConfig:
    """A record list as read back: records by key (configs still unparsed, checked on
    use), the mount artifacts, and how many records were dropped as malformed."""

    records: dict[str, Record] = field(default_factory=dict)
    mounts: list[dict] = field(default_factory=list)
    dropped: int = 0


def _plain(d: Descriptor) -> Descriptor:
    """A layer descriptor as exported: what identifies the blob, nothing else (the same
    layer named twice with different annotations must not make two exports differ)."""
    return Descriptor(d.media_type, d.digest, d.size)


def record_list(records: list[Record], layers: list[Descriptor],
                index: dict[str, int]) -> list[dict]:
    """The `records` member, sorted by key; `layers`/`index` (digest -> position) grow
    with every layer not seen yet, in first-use order."""
    by_key: dict[str, Record] = {}
    for r in records:
        by_key.setdefault(r.key, r)
    out = []
    for key in sorted(by_key):
        r = by_key[key]
        idx = []
        for layer in r.layers:
            if layer.digest not in index:
                index[layer.digest] = len(layers)
                layers.append(_plain(layer))
            idx.append(index[layer.digest])
        out.append({"key": key, "config": r.config.decode("utf-8"), "layers": idx})
    return out


def encode(records: list[Record], mounts: list[dict] = ()) -> tuple[bytes, list[Descriptor]]:
    """(cache-config blob bytes, the manifest's layers)."""
    layers: list[Descriptor] = []
    recs = record_list(records, layers, {})
    if len(recs) > MAX_RECORDS:
        raise CacheFormatError(f"{len(recs)} cache records, more than the {MAX_RECORDS} an "
                               "export may hold")
    doc = {"version": VERSION, "records": recs,
           "mounts": sorted(mounts, key=lambda m: (m["id"], m["platform"]))}
    data = canonical_json(doc)
    if len(data) > MAX_CONFIG_BLOB:
        raise CacheFormatError(f"the cache records take {len(data)} bytes, more than the "
                               f"{MAX_CONFIG_BLOB} an export may hold (use mode=min)")
    return data, layers


def manifest(config: Descriptor, layers: list[Descriptor], created: str | None = None) -> Manifest:
    """The export's OCI image manifest: no artifactType (ECR-safe), no time unless
    SOURCE_DATE_EPOCH gave one."""
    ann = {"org.opencontainers.image.created": created} if created else None
    return Manifest(config=config, layers=list(layers), media_type=mt.OCI_MANIFEST,
                    annotations=ann)


def inline_records(records: list[Record], image_layers: list[Descriptor]) -> dict | None:
    """The INLINE_FIELD value for an image with `image_layers`: the records whose layers
    are a prefix of the image's own (the others could not be fetched from the image)."""
    index = {l.digest: i for i, l in enumerate(image_layers)}
    keep = [r for r in records
            if [l.digest for l in r.layers] == [l.digest for l in image_layers[:len(r.layers)]]]
    if not keep:
        return None
    layers = [_plain(l) for l in image_layers]
    return {"version": VERSION, "records": record_list(keep, layers, dict(index))}


# --- reading ------------------------------------------------------------------------


def check_manifest(m: Manifest, what: str) -> None:
    """Sizes that drive downloads must be possible; layers must be layers we can apply."""
    if m.config.size > MAX_CONFIG_BLOB:
        raise CacheFormatError(f"{what}: the record list is {m.config.size} bytes, more than "
                               f"the {MAX_CONFIG_BLOB} allowed")
    for i, layer in enumerate(m.layers):
        if layer.size > MAX_BLOB_SIZE:
            raise CacheFormatError(f"{what}: layer {i}: size {layer.size} is out of range")


def decode(data: bytes, layers: list[Descriptor], what: str) -> CacheConfig:
    """A cache-config blob (already verified against its digest) read back."""
    try:
        doc = jsonlimits.loads(data, what, max_bytes=MAX_CONFIG_BLOB)
    except jsonlimits.InvalidJSON as exc:
        raise CacheFormatError(str(exc)) from None
    if not isinstance(doc, dict):
        raise CacheFormatError(f"{what}: expected a JSON object")
    out = records_from(doc, layers, what)
    mounts = doc.get("mounts", [])
    if not isinstance(mounts, list) or len(mounts) > MAX_MOUNTS:
        raise CacheFormatError(f"{what}: 'mounts' must be a list of at most {MAX_MOUNTS}")
    for m in mounts:
        try:
            if not (isinstance(m, dict) and isinstance(m.get("id"), str)
                    and isinstance(m.get("platform"), str)):
                raise ValueError
            m["manifest"] = Descriptor.from_json(m.get("manifest"), f"{what}: mount")
        except (ValueError, PybuildError):
            out.dropped += 1
            continue
        out.mounts.append(m)
    return out


def records_from(doc: dict, layers: list[Descriptor], what: str) -> CacheConfig:
    """The records of a parsed record list (an export's or an image's inline one)."""
    if doc.get("version") != VERSION:
        raise CacheFormatError(f"{what}: unsupported cache format version "
                               f"{str(doc.get('version'))[:20]!r}")
    raw = doc.get("records")
    if not isinstance(raw, list):
        raise CacheFormatError(f"{what}: 'records' must be a list")
    if len(raw) > MAX_RECORDS:
        raise CacheFormatError(f"{what}: {len(raw)} records, more than the {MAX_RECORDS} "
                               "allowed")
    out = CacheConfig()
    told_twice: set[str] = set()
    for r in raw:
        rec = _record(r, layers)
        if rec is None:
            out.dropped += 1
        elif rec.key in out.records or rec.key in told_twice:
            # a key told twice: neither answer is trusted
            out.dropped += 1 + (rec.key in out.records)
            out.records.pop(rec.key, None)
            told_twice.add(rec.key)
        else:
            out.records[rec.key] = rec
    return out


def _record(r, layers: list[Descriptor]) -> Record | None:
    if not isinstance(r, dict):
        return None
    key, config, idx = r.get("key"), r.get("config"), r.get("layers")
    if not (isinstance(key, str) and _HEX64.fullmatch(key)):
        return None
    if not isinstance(config, str) or len(config) > CONFIG_LIMIT:
        return None
    if not isinstance(idx, list) or len(idx) > MAX_LAYERS:
        return None
    if not all(isinstance(i, int) and not isinstance(i, bool) and 0 <= i < len(layers)
               for i in idx):
        return None
    return Record(key, config.encode("utf-8", "surrogatepass"), [layers[i] for i in idx])


def check(rec: Record, what: str = "") -> ImageConfig:
    """The record's config if the record holds together: the config parses (bounded),
    one diff ID per layer, every layer one we can apply. CacheFormatError otherwise (a
    miss). A layer's bytes are checked against its diff ID when it is unpacked."""
    label = f"{what}: record {rec.key[:12]}" if what else f"record {rec.key[:12]}"
    try:
        cfg = ImageConfig.from_bytes(rec.config, what=label)
    except PybuildError as exc:
        raise CacheFormatError(str(exc)) from None
    if len(cfg.diff_ids) != len(rec.layers):
        raise CacheFormatError(f"{label}: {len(rec.layers)} layers but {len(cfg.diff_ids)} "
                               "diff IDs")
    for layer in rec.layers:
        if layer.media_type not in mt.LAYERS:
            raise CacheFormatError(f"{label}: layer {layer.digest} has media type "
                                   f"{layer.media_type[:100]!r}, not an image layer")
    cfg.extra.pop(INLINE_FIELD, None)   # a state never carries records of its own
    cfg.raw = None
    return cfg


def extends(rec: Record, cfg: ImageConfig,
            parent: tuple[list[Descriptor], list[str]] | None) -> bool:
    """The parent rule of the local cache: the record keeps the parent state's layers
    and diff IDs and adds at most one. A record made on top of another result of an
    earlier step (one that ran again here and came out different) fails it."""
    if parent is None:
        return True
    p_layers, p_diff_ids = parent
    extra = len(rec.layers) - len(p_layers)
    if extra not in (0, 1) or len(p_diff_ids) != len(p_layers):
        return False
    if [l.digest for l in rec.layers[:len(p_layers)]] != [l.digest for l in p_layers]:
        return False
    return cfg.diff_ids[:len(p_diff_ids)] == list(p_diff_ids)
