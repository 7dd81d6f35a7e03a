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
import time
from dataclasses import dataclass
from pathlib import Path

from layerstore import digest as dg
from layerstore import jsonlimits
from layerstore.atomic import atomic_write
from layerstore.errors import PybuildError
from layerstore.model import CONFIG_LIMIT, Descriptor, ImageConfig


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

    def write_roots(self) -> None:
        """Rewrite ROOT/cache/roots: the manifest digest of every layer-making entry."""
        digests = set()
        if self.entries.is_dir():
            for sub in os.scandir(self.entries):
                if not sub.is_dir():
                    continue
                for e in os.scandir(sub.path):
                    if not e.name.endswith(".json"):
                        continue
                    try:
                        m = jsonlimits.read_object(e.path, max_bytes=CONFIG_LIMIT * 2).get("manifest")
                    except (OSError, ValueError):
                        continue
                    if isinstance(m, str) and dg.is_digest(m):
                        digests.add(m)
        self.dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        atomic_write(self.dir / "roots", "".join(f"{d}\n" for d in sorted(digests)).encode(), 0o600)

    def _entry_files(self) -> list[tuple[float, Path]]:
        out = []
        if self.entries.is_dir():
            for sub in os.scandir(self.entries):
                if sub.is_dir():
                    out += [(e.stat().st_mtime, Path(e.path)) for e in os.scandir(sub.path)
                            if e.name.endswith(".json")]
        return sorted(out)

    def prune(self, until: float | None = None, keep_bytes: int | None = None) -> int:
        """Forget entries last used before `until` (epoch seconds), then the least recently
        used ones until the layers they alone add fit in `keep_bytes`. Returns how many;
        `prune` then frees the blobs no root names any more."""
        files = self._entry_files()
        sizes: dict[Path, int] = {}
        for _, p in files:
            try:
                doc = jsonlimits.read_object(p, max_bytes=CONFIG_LIMIT * 2)
                sizes[p] = int(doc["layers"][-1]["size"]) if doc.get("manifest") and doc["layers"] else 0
            except (OSError, ValueError, KeyError, IndexError, TypeError):
                sizes[p] = 0
        total = sum(sizes.values())
        removed = 0
        for mtime, p in files:
            old = until is not None and mtime < until
            over = keep_bytes is not None and total > keep_bytes
            if old or over:
                p.unlink(missing_ok=True)
                total -= sizes[p]
                removed += 1
        if removed:
            from builder.buildmemo import BuildMemo

            BuildMemo(self.dir.parent).forget()
        self.write_roots()
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
                keep_bytes: int | None = None, cache_mounts: bool = False) -> PruneSummary:
    """`pybuild prune`: first the build cache policy (entries older than `until`,
    or beyond `keep_bytes`; every entry with all_unused), then the store's gc,
    which frees the blobs the forgotten entries alone kept."""
    from layerstore.gc import prune

    cache = BuildCache(store.root)
    summary = PruneSummary(store=None)
    if all_unused:
        until = time.time() + 1
    if until is not None or keep_bytes is not None:
        summary.cache_entries = cache.prune(until=until, keep_bytes=keep_bytes)
    if cache_mounts:
        summary.cache_mounts = cache.clear_mounts()
    summary.store = prune(store, all_unused=all_unused)
    return summary
