"""What a store takes on disk, part by part, as `du -sx -B1 ROOT` counts it.

One walk of ROOT by directory fds (layerstore.resolver.tree_usage_at: allocated
blocks, each hard-linked inode once, no symlink followed, no other file system),
split by what holds the bytes: each blob, each snapshot, each entry of
containers/, volumes/, cache/ and the scratch areas. The parts add up to the total
exactly, so `system df`, `--max-storage` and `du` agree.

Snapshots are immutable once renamed into place (read-only lower dirs), so the
size of each is kept in ROOT/cache/snapshot-sizes.json under the inode and ctime
of its directory, and not walked again: measuring after every build of a CI
runner must not cost a walk of every unpacked image (a million inodes). A
snapshot re-made under the same name has a new inode, and a stale or hostile
record costs only a wrong figure, never a path: names in it are checked hex.
"""

from __future__ import annotations

import json
import os
import re
import stat
from dataclasses import dataclass, field
from pathlib import Path

from layerstore import jsonlimits, resolver
from layerstore.atomic import atomic_write

SIZES_FILE = Path("cache") / "snapshot-sizes.json"
_HEX = re.compile(r"[0-9a-f]{64}")
_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


@dataclass
class StoreUsage:
    """Bytes on disk (allocated, as du counts them) of every part of a store; they add up
    to `total`. `blob_sizes` are the blobs' content sizes (what descriptors and `images`
    show); `blobs` what they take on disk."""

    total: int = 0
    blobs: dict[str, int] = field(default_factory=dict)          # digest -> bytes on disk
    blob_sizes: dict[str, int] = field(default_factory=dict)     # digest -> content bytes
    snapshots: dict[str, int] = field(default_factory=dict)      # chain ID -> bytes
    containers: dict[str, int] = field(default_factory=dict)     # entry of containers/
    volumes: dict[str, int] = field(default_factory=dict)        # entry of volumes/
    cache: dict[str, int] = field(default_factory=dict)          # entry of cache/ but mounts/
    cache_mounts: dict[str, int] = field(default_factory=dict)   # entry of cache/mounts/
    scratch: dict[str, int] = field(default_factory=dict)        # "tmp/x", "ingest/y", "snapshots/.tmp-z"
    other: int = 0        # the directories themselves, index.json, locks, settings, strays

    def parts(self) -> int:
        return (sum(self.blobs.values()) + sum(self.snapshots.values())
                + sum(self.containers.values()) + sum(self.volumes.values())
                + sum(self.cache.values()) + sum(self.cache_mounts.values())
                + sum(self.scratch.values()) + self.other)


def measure(store) -> StoreUsage:
    """Measure the store at `store.root` (see the module doc)."""
    root = Path(store.root)
    u = StoreUsage()
    seen: set[tuple[int, int]] = set()
    try:
        rfd = os.open(root, _DIR)
    except FileNotFoundError:
        return u
    try:
        rst = os.fstat(rfd)
        dev = rst.st_dev
        u.other += rst.st_blocks * 512
        known = _read_sizes(root)
        sizes: dict[str, list[int]] = {}
        names = _entries(rfd)
        # snapshots first: their sizes file is written before cache/ (which holds it) is
        # measured, so the figure is what du sees right after
        for e in sorted(names, key=lambda n: n != "snapshots"):
            est = _lstat(rfd, e)
            if est is None or est.st_dev != dev:
                continue
            if not stat.S_ISDIR(est.st_mode) or e not in _AREAS:
                u.other += resolver.tree_usage_at(rfd, e, seen)
                continue
            if e == "cache":
                u.cache["."] = est.st_blocks * 512      # the build cache's, all of it
            else:
                u.other += est.st_blocks * 512
            with _opened(rfd, e) as afd:
                if afd is None:
                    continue
                _AREAS[e](u, afd, dev, seen, known, sizes)
            if e == "snapshots" and sizes != known:
                _write_sizes(root, sizes)
        u.total = u.parts()
    finally:
        os.close(rfd)
    return u


def _entries(fd: int) -> list[str]:
    try:
        with os.scandir(fd) as it:
            return sorted(e.name for e in it)
    except OSError:
        return []


def _lstat(dfd: int, name: str) -> os.stat_result | None:
    try:
        return os.stat(name, dir_fd=dfd, follow_symlinks=False)
    except OSError:
        return None


class _opened:
    """An O_RDONLY fd of the real directory `name` of `dfd` (None if it is not one)."""

    def __init__(self, dfd: int, name: str) -> None:
        try:
            self.fd: int | None = os.open(name, _DIR, dir_fd=dfd)
        except OSError:
            self.fd = None

    def __enter__(self) -> int | None:
        return self.fd

    def __exit__(self, *exc) -> None:
        if self.fd is not None:
            os.close(self.fd)


def _blobs(u: StoreUsage, fd: int, dev: int, seen, known, sizes) -> None:
    for name in _entries(fd):
        st = _lstat(fd, name)
        if st is None or st.st_dev != dev:
            continue
        if name != "sha256" or not stat.S_ISDIR(st.st_mode):
            u.other += resolver.tree_usage_at(fd, name, seen)
            continue
        u.other += st.st_blocks * 512
        with _opened(fd, name) as sfd:
            if sfd is None:
                continue
            with os.scandir(sfd) as it:
                for e in it:
                    try:
                        est = e.stat(follow_symlinks=False)
                    except OSError:
                        continue
                    if _HEX.fullmatch(e.name) and stat.S_ISREG(est.st_mode):
                        digest = "sha256:" + e.name
                        u.blobs[digest] = resolver.allocated(est, seen)
                        u.blob_sizes[digest] = est.st_size
                    else:
                        u.other += resolver.tree_usage_at(sfd, e.name, seen)


def _snapshots(u: StoreUsage, fd: int, dev: int, seen, known, sizes) -> None:
    for name in _entries(fd):
        st = _lstat(fd, name)
        if st is None or st.st_dev != dev:
            continue
        if _HEX.fullmatch(name) and stat.S_ISDIR(st.st_mode):
            ident = [st.st_ino, st.st_ctime_ns]
            rec = known.get(name)
            if rec is not None and rec[:2] == ident:
                size = rec[2]
            else:
                size = resolver.tree_usage_at(fd, name, seen)
            sizes[name] = ident + [size]
            u.snapshots["sha256:" + name] = size
        else:
            u.scratch[f"snapshots/{name}"] = resolver.tree_usage_at(fd, name, seen)


def _each(attr: str, prefix: str | None = None):
    def walk(u: StoreUsage, fd: int, dev: int, seen, known, sizes) -> None:
        parts = getattr(u, attr)
        for name in _entries(fd):
            st = _lstat(fd, name)
            if st is None or st.st_dev != dev:
                continue
            parts[f"{prefix}/{name}" if prefix else name] = resolver.tree_usage_at(fd, name, seen)
    return walk


def _cache(u: StoreUsage, fd: int, dev: int, seen, known, sizes) -> None:
    for name in _entries(fd):
        st = _lstat(fd, name)
        if st is None or st.st_dev != dev:
            continue
        if name == "mounts" and stat.S_ISDIR(st.st_mode):
            u.cache["mounts"] = st.st_blocks * 512
            with _opened(fd, name) as mfd:
                if mfd is not None:
                    _each("cache_mounts")(u, mfd, dev, seen, known, sizes)
        else:
            u.cache[name] = resolver.tree_usage_at(fd, name, seen)


_AREAS = {"blobs": _blobs, "snapshots": _snapshots, "containers": _each("containers"),
          "volumes": _each("volumes"), "cache": _cache, "tmp": _each("scratch", "tmp"),
          "ingest": _each("scratch", "ingest")}


def _read_sizes(root: Path) -> dict[str, list[int]]:
    try:
        doc = jsonlimits.read_object(root / SIZES_FILE, max_bytes=16 << 20)
    except (OSError, ValueError):
        return {}
    out = {}
    raw = doc.get("sizes") if doc.get("version") == 1 else None
    if isinstance(raw, dict):
        for k, v in raw.items():
            if _HEX.fullmatch(k) and isinstance(v, list) and len(v) == 3 and \
                    all(type(x) is int and x >= 0 for x in v):
                out[k] = v
    return out


def _write_sizes(root: Path, sizes: dict[str, list[int]]) -> None:
    """Best effort: a store whose cache/ cannot be written is measured again next time."""
    path = root / SIZES_FILE
    try:
        path.parent.mkdir(mode=0o700, exist_ok=True)
        atomic_write(path, json.dumps({"version": 1, "sizes": sizes}, sort_keys=True).encode(),
                     0o600)
    except OSError:
        pass


STORE_AREAS = ("blobs", "snapshots", "cache", "cache_mounts", "scratch")


class Freed:
    """What a prune really took off the disk: the named parts of the store (StoreUsage
    field names) measured before and after, as du sees them -- snapshots, partial writes
    and build cache included, each hard-linked inode once. Only the parts the prune
    touches are compared, so a build writing elsewhere meanwhile does not count."""

    def __init__(self, root: str | os.PathLike, areas: tuple[str, ...] = STORE_AREAS) -> None:
        self.root = Path(root)
        self.areas = areas
        self.bytes = 0
        self._before = 0

    def _measure(self) -> int:
        class _At:
            root = self.root
        u = measure(_At)
        return sum(sum(getattr(u, a).values()) for a in self.areas)

    def __enter__(self) -> "Freed":
        self._before = self._measure()
        return self

    def __exit__(self, *exc) -> None:
        if exc[0] is None:
            self.bytes = max(0, self._before - self._measure())
