"""`--cache-from`: the sources the solver asks after its local cache misses.

A source is read once, on the first lookup of a build: its manifest and record list
(an export), or an image's manifest and config (inline records); no layer is read
then. A hit gives the state's config and layer descriptors; the layers stay where
they are until a later miss needs them unpacked or the output needs their bytes
(`fetch`), so a fully cached build answers from manifests alone.

A source that is missing, unreachable or not a cache is a warning and the build goes
on without it; a record that does not hold together (records.check, the parent rule)
or names a blob its source no longer has is a miss.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Callable

from builder.remotecache import records as rec
from builder.remotecache.spec import CacheSpec
from builder.remotecache.targets import Backend, open_backend
from layerstore import jsonlimits
from layerstore import mediatypes as mt
from layerstore.errors import PybuildError
from layerstore.model import (CONFIG_LIMIT, MANIFEST_LIMIT, Descriptor, ImageConfig, Index,
                              Manifest, Platform, parse_manifest_or_index)


class SourceError(PybuildError):
    """A cache source that cannot be used (the build goes on without it)."""


@dataclass
class Source:
    spec: CacheSpec
    backend: Backend
    digest: str                     # of the manifest read
    layers: list[Descriptor]        # every blob a record may name
    records: dict[str, rec.Record]
    mounts: list[dict] = field(default_factory=list)
    dropped: int = 0
    inline: bool = False
    config: Descriptor | None = None    # the record list's blob (an export's)

    @property
    def name(self) -> str:
        return self.spec.name


def load_source(spec: CacheSpec, options, platform: Platform | None, select) -> Source:
    """Read `spec`'s manifest and records. `select(index, platform)` picks an image
    index's entry (an inline cache of a multi-platform image)."""
    backend = open_backend(spec, options)
    try:
        return _load(spec, backend, platform, select)
    except BaseException:
        backend.close()
        raise


def _load(spec: CacheSpec, backend: Backend, platform, select) -> Source:
    # messages name the part; the caller's warning names the source
    data, media_type, digest = backend.read_manifest()
    obj = parse_manifest_or_index(data, media_type or None, what="manifest")
    if isinstance(obj, Index):
        desc = select(obj, platform)
        data = backend.read_blob(desc, MANIFEST_LIMIT)
        obj = parse_manifest_or_index(data, desc.media_type or None, what="manifest")
        digest = desc.digest
        if not isinstance(obj, Manifest):
            raise SourceError("a nested index is not a cache")
    kind = obj.config.media_type
    rec.check_manifest(obj, "manifest")
    if kind == rec.CACHE_CONFIG_TYPE:
        blob = backend.read_blob(obj.config, rec.MAX_CONFIG_BLOB)
        cc = rec.decode(blob, obj.layers, "record list")
        return Source(spec, backend, digest, list(obj.layers), cc.records, cc.mounts, cc.dropped,
                      config=obj.config)
    if kind in mt.CONFIGS:
        # an image: its inline records, which name the image's own layers
        blob = backend.read_blob(obj.config, CONFIG_LIMIT)
        try:
            config = jsonlimits.loads(blob, "image config", max_bytes=CONFIG_LIMIT)
        except jsonlimits.InvalidJSON as exc:
            raise SourceError(str(exc)) from None
        doc = config.get(rec.INLINE_FIELD) if isinstance(config, dict) else None
        if not isinstance(doc, dict):
            raise SourceError("the image carries no pybuild cache records (build it with "
                              "--cache-to type=inline)")
        cc = rec.records_from(doc, list(obj.layers), "inline records")
        return Source(spec, backend, digest, list(obj.layers), cc.records, [], cc.dropped,
                      inline=True)
    raise SourceError(f"not a pybuild build cache (its config is {kind[:100]!r})")


Warn = Callable[[str], None]


class Sources:
    """The --cache-from sources of one build, in order, read on first use.

    Thread-safe: stages are solved in parallel. Which source holds a blob is the first
    source that lists it; `fetch` tries the others when that one fails."""

    def __init__(self, specs: list[CacheSpec], blobs, *, options=None,
                 platform: Platform | None = None, select=None, warn: Warn) -> None:
        self.specs = specs
        self.blobs = blobs              # the store's BlobStore
        self.options = options
        self.platform = platform
        self.select = select
        self.warn = warn
        self.lock = threading.Lock()
        self._sources: list[Source] | None = None
        self.providers: dict[str, list[Source]] = {}
        self.present: dict[tuple[int, str], bool] = {}
        self.fetch_locks: dict[str, threading.Lock] = {}
        self.fetched = 0                # layer bytes brought in
        self.fetched_digests: set[str] = set()
        self.hits = 0
        self.warned_bad: set[int] = set()   # sources whose bad records were told once

    # --- reading the sources ----------------------------------------------------------

    def sources(self) -> list[Source]:
        with self.lock:
            if self._sources is None:
                self._sources = []
                for spec in self.specs:
                    try:
                        src = load_source(spec, self.options, self.platform, self.select)
                    except (PybuildError, OSError) as exc:
                        self.warn(f"cache source {spec.name}: {_line(exc)}; building without it")
                        continue
                    if src.dropped:
                        self.warn(f"cache source {spec.name}: {src.dropped} malformed records "
                                  "ignored")
                    self._sources.append(src)
                    for layer in src.layers:
                        self.providers.setdefault(layer.digest, []).append(src)
            return list(self._sources)

    def _drop(self, src: Source, exc: BaseException) -> None:
        with self.lock:
            if self._sources is not None and src in self._sources:
                self._sources.remove(src)
                self.warn(f"cache source {src.name}: {_line(exc)}; building without it")

    def _present(self, src: Source, desc: Descriptor) -> bool:
        """Whether some source still serves `desc` (HEAD; remembered). A source that
        lists a blob it has lost (a registry's gc, a pruned directory) must not give a
        hit whose bytes the build then cannot get."""
        for s in [src, *self.providers.get(desc.digest, [])]:
            k = (id(s), desc.digest)
            if k not in self.present:
                try:
                    self.present[k] = s.backend.has_blob(desc)
                except PybuildError as exc:      # unreachable now: no more hits from it
                    self._drop(s, exc)
                    self.present[k] = False
            if self.present[k]:
                return True
        return False

    # --- the solver's side ---------------------------------------------------------------

    def lookup(self, key: str, parent: tuple[list[Descriptor], list[str]] | None
               ) -> tuple[ImageConfig, list[Descriptor]] | None:
        for src in self.sources():
            r = src.records.get(key)
            if r is None:
                continue
            try:
                cfg = rec.check(r)
            except PybuildError as exc:
                with self.lock:
                    first = id(src) not in self.warned_bad
                    self.warned_bad.add(id(src))
                if first:     # one of many, often: told once per source
                    self.warn(f"cache source {src.name}: {_line(exc)}; record ignored (and "
                              "any other such record)")
                continue
            if not rec.extends(r, cfg, parent):
                continue          # made from another result of an earlier step: not ours
            missing = [l for l in r.layers if not self.blobs.has(l.digest)
                       and not self._present(src, l)]
            if missing:
                self.warn(f"cache source {src.name}: layer {missing[0].digest} of record "
                          f"{key[:12]} is missing; record ignored")
                continue
            with self.lock:
                self.hits += 1
            return cfg, list(r.layers)
        return None

    def can_fetch(self, digest: str) -> bool:
        return digest in self.providers

    def fetch(self, desc: Descriptor) -> None:
        """Bring layer `desc` into the store (verified by digest on the way in)."""
        with self.lock:
            lock = self.fetch_locks.setdefault(desc.digest, threading.Lock())
        with lock:
            if self.blobs.has(desc.digest):
                return
            last: BaseException | None = None
            for src in self.providers.get(desc.digest, []):
                try:
                    src.backend.fetch_blob(desc, self.blobs)
                except (PybuildError, OSError) as exc:
                    last = exc
                    continue
                with self.lock:
                    self.fetched += desc.size
                    self.fetched_digests.add(desc.digest)
                return
            where = ", ".join(s.name for s in self.providers.get(desc.digest, [])) or "no source"
            raise SourceError(f"layer {desc.digest} of a build cache hit cannot be fetched "
                              f"({where}): {_line(last) if last else 'not listed'}")

    def origins(self) -> dict[str, str]:
        """blob digest -> "domain/repo" of a registry source that holds it (its layers,
        and its record list: an export of the same records is the same blob)."""
        out: dict[str, str] = {}
        for src in self.sources():
            if src.spec.origin:
                for blob in [*src.layers, *([src.config] if src.config else [])]:
                    out.setdefault(blob.digest, src.spec.origin)
        return out

    def mount_sources(self) -> list[tuple[Source, list[dict]]]:
        """The cache-mount artifacts each source lists (records.decode checked their
        shape; builder/remotecache/mounts.py checks the rest), in source order."""
        return [(src, src.mounts) for src in self.sources() if src.mounts]

    def close(self) -> None:
        with self.lock:
            for src in self._sources or []:
                src.backend.close()


def _line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0][:500]
