"""The build cache: step key -> resulting image state, under ROOT/cache/.

A key is a sha256 over the parent state's key, the step as expanded, the
build args it uses and the content of its inputs; it never contains a store
path or a time, so the same computation could later be shared through a
registry (--cache-to/--cache-from). An entry holds the state itself (config
bytes and layer descriptors) and, for steps that made a layer, a manifest
digest; ROOT/cache/roots lists those manifests so `prune` keeps their blobs.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import stat
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from layerstore import digest as dg
from layerstore import jsonlimits
from layerstore.atomic import atomic_write
from layerstore.errors import PybuildError
from layerstore.model import CONFIG_LIMIT, Descriptor, ImageConfig

if TYPE_CHECKING:
    from layerstore.budget import CacheRecord


_HEX_KEY = re.compile(r"[0-9a-f]{64}")



def step_key(parent: str, step: str, args: dict[str, str], inputs: str = "") -> str:
    doc = json.dumps({"parent": parent, "step": step, "args": sorted(args.items()),
                      "inputs": inputs}, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(doc.encode()).hexdigest()


@dataclass
class Entry:
    config: ImageConfig
    layers: list[Descriptor]
    manifest: str | None


class BuildCache:
    def __init__(self, root: Path) -> None:
        self.dir = Path(root) / "cache"
        self.entries = self.dir / "entries"

    def _path(self, key: str) -> Path:
        return self.entries / key[:2] / f"{key}.json"

    def has(self, key: str) -> bool:
        """Whether a record for `key` exists (not whether it holds: get() checks that)."""
        return _HEX_KEY.fullmatch(key) is not None and self._path(key).is_file()

    def touch(self, key: str) -> None:
        """Mark `key` used now, as a hit does (`prune` forgets the least recently used)."""
        try:
            os.utime(self._path(key))
        except FileNotFoundError:
            pass

    def get(self, key: str, store, parent: tuple[list[Descriptor], list[str]] | None = None
            ) -> Entry | None:
        """The entry for `key` if all its layer blobs are still in the store and it holds
        together. An entry is input read back from disk: one that does not (torn, edited,
        from another version) is a miss, never a state to build on. A layer-making step's
        entry must agree with its manifest blob (content-addressed, so checked on read):
        same config bytes, same layers; every entry must keep `parent`'s layers and
        diff IDs (the state its key was made from) and add at most one."""
        try:  # a record that does not read back as one is a miss, not a crash
            doc = jsonlimits.read_object(self._path(key), max_bytes=CONFIG_LIMIT * 2)
            raw_layers = doc.get("layers", [])
            config = doc.get("config")
            manifest = doc.get("manifest")
            if not isinstance(raw_layers, list) or not isinstance(config, str):
                return None
            if manifest is not None and not (isinstance(manifest, str) and dg.is_digest(manifest)):
                return None
            layers = [Descriptor.from_json(d) for d in raw_layers]
            if not all(store.blobs.has(l.digest) for l in layers):
                return None
            cfg = ImageConfig.from_bytes(config.encode())
            if len(cfg.diff_ids) != len(layers):
                return None
            if parent is not None:
                p_layers, p_diff_ids = parent
                extra = len(layers) - len(p_layers)
                if extra not in (0, 1) or [l.digest for l in layers[:len(p_layers)]] != \
                        [l.digest for l in p_layers] or cfg.diff_ids[:len(p_diff_ids)] != list(p_diff_ids):
                    return None
            if manifest is not None:
                m = store.read_manifest(Descriptor(media_type="", digest=manifest, size=0))
                if getattr(m, "config", None) is None or \
                        m.config.digest != dg.of_bytes(config.encode()) or \
                        [l.digest for l in m.layers] != [l.digest for l in layers]:
                    return None
        except (OSError, ValueError, TypeError, AttributeError, PybuildError):
            return None
        try:
            os.utime(self._path(key))  # last use, for `prune --filter until=`
        except OSError:
            pass
        return Entry(cfg, layers, doc.get("manifest"))

    def put(self, key: str, config: ImageConfig, layers: list[Descriptor],
            manifest: str | None) -> None:
        path = self._path(key)
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        config.raw = None
        doc = {"config": config.to_bytes().decode(), "layers": [l.to_json() for l in layers],
               "manifest": manifest, "created": time.time()}
        atomic_write(path, json.dumps(doc).encode(), 0o600)  # may hold build-arg values

    def write_roots(self, records: "list[CacheRecord] | None" = None) -> None:
        """Rewrite ROOT/cache/roots: the manifest digest of every layer-making entry (of
        `records` when the caller has just listed them)."""
        if records is None:
            records = self.records()
        digests = {r.manifest for r in records if r.manifest}
        self.dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        atomic_write(self.dir / "roots", "".join(f"{d}\n" for d in sorted(digests)).encode(), 0o600)

    def records(self) -> "list[CacheRecord]":
        """Every record on disk, as the store's budget sees it: key, last use, the manifest
        keeping its layers, the bytes its file takes. A record that does not read back
        is listed with no manifest: it keeps nothing, and pruning it frees its file."""
        from layerstore.budget import CacheRecord

        out = []
        if not self.entries.is_dir():
            return out
        for sub in os.scandir(self.entries):
            if not (len(sub.name) == 2 and sub.is_dir(follow_symlinks=False)):
                continue
            for e in os.scandir(sub.path):
                key = e.name[:-len(".json")]
                if not (e.name.endswith(".json") and _HEX_KEY.fullmatch(key)
                        and key.startswith(sub.name)):
                    continue
                try:
                    st = e.stat(follow_symlinks=False)
                except OSError:
                    continue
                if not stat.S_ISREG(st.st_mode):
                    continue
                manifest = None
                try:
                    m = jsonlimits.read_object(e.path, max_bytes=CONFIG_LIMIT * 2).get("manifest")
                    manifest = m if isinstance(m, str) and dg.is_digest(m) else None
                except (OSError, ValueError):
                    pass
                out.append(CacheRecord(key, st.st_mtime, manifest, st.st_blocks * 512))
        return out

    def forget(self, keys: list[str], records: "list[CacheRecord] | None" = None,
               tidy: bool = False) -> int:
        """Delete the records `keys`, then rewrite the roots from the others (`records`:
        the listing the keys were chosen from). `tidy`: also remove the prefix dirs left
        empty, for a caller holding the gc lock (a build putting a record meanwhile would
        lose its dir between mkdir and write)."""
        doomed = set(keys)
        n = 0
        for key in doomed:
            try:
                os.unlink(self._path(key))
                n += 1
            except FileNotFoundError:
                continue
            if tidy:
                try:
                    os.rmdir(self._path(key).parent)
                except OSError:
                    pass        # still holds records
        rest = None if records is None else [r for r in records if r.key not in doomed]
        self.write_roots(rest)
        return n

    def prune(self, until: float | None = None, keep_bytes: int | None = None,
              store=None) -> int:
        """Forget entries last used before `until` (epoch seconds), then the least recently
        used ones until the build cache takes at most `keep_bytes`: the records' files and
        the blobs and snapshots that only records keep (layers shared with an image cost
        the cache nothing; every layer of a record counts, not just its last). Returns how
        many; `prune` then frees the blobs no root names any more."""
        recs = self.records()
        doomed = [r.key for r in recs if until is not None and r.last_used < until]
        if keep_bytes is not None:
            from layerstore.budget import trim_cache
            from layerstore.store import Store

            store = store if store is not None else Store(self.dir.parent)
            doomed = trim_cache(store, recs, keep_bytes, doomed)
        removed = self.forget(doomed, recs)
        if removed:
            from builder.buildmemo import BuildMemo

            BuildMemo(self.dir.parent).forget()
        return removed

    def clear_mounts(self) -> int:
        """Remove every RUN --mount=type=cache directory (`prune --cache-mounts`)."""
        from layerstore.resolver import remove_tree

        mounts = self.dir / "mounts"
        n = 0
        if mounts.is_dir():
            for e in os.scandir(mounts):
                remove_tree(Path(e.path))
                n += 1
        return n


@dataclass
class PruneSummary:
    store: object             # layerstore.gc.PruneReport
    cache_entries: int = 0
    cache_mounts: int = 0


_DURATION = re.compile(r"(\d+(?:\.\d+)?)(h|m|s|ms)")


def parse_until(text: str, now: float | None = None) -> float:
    """docker's `until` filter: a Go duration (24h, 1h30m) before now, a Unix
    timestamp, or an RFC 3339 time; returns epoch seconds."""
    from layerstore.errors import PybuildError
    from layerstore.humanize import parse_time

    now = time.time() if now is None else now
    t = text.strip()
    if re.fullmatch(r"(\d+(?:\.\d+)?(h|m|s|ms))+", t):
        scale = {"h": 3600, "m": 60, "s": 1, "ms": 0.001}
        return now - sum(float(n) * scale[u] for n, u in _DURATION.findall(t))
    if re.fullmatch(r"\d+(\.\d+)?", t):
        return float(t)
    parsed = parse_time(t)
    if parsed is None:
        raise PybuildError(f"invalid until filter {text!r}: expected a duration such as 24h, "
                           "a Unix timestamp or an RFC 3339 time")
    return parsed.timestamp()


def prune_store(store, *, all_unused: bool = False, until: float | None = None,
                keep_bytes: int | None = None, cache_mounts: bool = False,
                filters=None) -> PruneSummary:
    """`pybuild prune`: first the build cache policy (entries older than `until`,
    or beyond `keep_bytes`; every entry with all_unused), then the store's gc,
    which frees the blobs the forgotten entries alone kept. `filters`
    (builder.filters.Filters) with label / label! keys: only the dangling images
    whose labels pass are dropped (docker's `image prune --filter label=`).
    The report's `reclaimed` is the store's disk usage before less after
    (layerstore.usage.Freed): snapshots, partial writes and cache included."""
    from layerstore.gc import prune
    from layerstore.usage import Freed

    cache = BuildCache(store.root)
    summary = PruneSummary(store=None)
    if all_unused:
        until = time.time() + 1
    untagged = None
    if filters is not None and ("label" in filters or "label!" in filters):
        from builder.filters import dangling_images

        untagged = dangling_images(store, filters)
    with Freed(store.root) as freed:
        if until is not None or keep_bytes is not None:
            summary.cache_entries = cache.prune(until=until, keep_bytes=keep_bytes, store=store)
        if cache_mounts:
            summary.cache_mounts = cache.clear_mounts()
        summary.store = prune(store, all_unused=all_unused, untagged=untagged)
    summary.store.reclaimed = freed.bytes
    return summary
