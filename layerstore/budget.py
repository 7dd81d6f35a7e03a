"""A bounded store: who keeps what, and what `--max-storage` prunes to stay under it.

A Ledger lists, for every blob and snapshot on disk, the roots that keep it: the
tagged images, each dangling image, the images of containers, each build cache
record (given by the caller: the build cache is the builder's) and what the
command that just ran used. Releasing a root frees exactly the items no other root
holds, so the bytes a prune would free are known before anything is deleted, each
blob and snapshot counted once however many images share it.

`enforce` runs under the store's gc lock, exclusive (no build or pull is writing
unnamed blobs meanwhile): it measures the store as du does, and when it is over
the limit it releases, in order and only until the store fits,

1. build cache records, least recently used first;
2. dangling images, oldest first;
3. snapshots (re-made from their blobs when next needed);

never a tagged image, the image of a container (existing or running: its
snapshots stay too, they may be mounted), nor what the command used. Then the
one collector (layerstore.gc.collect) removes what nothing holds, and the store
is measured again. When what must stay is alone more than the limit, the report
says so: a warning, never an error.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Callable, Hashable, Iterable

from layerstore import reachability, workdirs
from layerstore.model import Descriptor
from layerstore.snapshots import TMP_PREFIX, WORK_PREFIX
from layerstore.usage import StoreUsage, measure

ROUNDS = 3      # a re-measure still over the limit (estimates are per file) prunes again


@dataclass
class CacheRecord:
    """A build cache record as the store sees it: its key, when it was last used (epoch
    seconds), the manifest that keeps its layers (None: a step that made none), and the
    bytes its own file takes."""

    key: str
    last_used: float
    manifest: str | None
    size: int


@dataclass
class InUse:
    """What the command that just ran used: never pruned by it."""

    manifests: set[str] = field(default_factory=set)   # images (manifests or indexes)
    blobs: set[str] = field(default_factory=set)
    keys: set[str] = field(default_factory=set)        # build cache record keys


@dataclass
class BudgetReport:
    limit: int
    before: int
    after: int
    records: int = 0
    images: int = 0
    snapshots: int = 0
    blobs: int = 0

    @property
    def freed(self) -> int:
        return max(0, self.before - self.after)

    @property
    def over(self) -> bool:
        """What must stay takes more than the limit on its own."""
        return self.after > self.limit

    @property
    def pruned(self) -> bool:
        return bool(self.records or self.images or self.snapshots or self.blobs
                    or self.after < self.before)


Root = Hashable        # ("tagged",), ("dangling", digest), ("cache", key), ...


class Ledger:
    """For each blob and snapshot on disk, the roots holding it (see the module doc)."""

    def __init__(self, store, usage: StoreUsage) -> None:
        self.store = store
        self.usage = usage
        self.blobs: dict[str, set[Root]] = {d: set() for d in usage.blobs}
        self.chains: dict[str, set[Root]] = {c: set() for c in usage.snapshots}
        self.held: dict[Root, tuple[set[str], set[str]]] = {}

    def descriptor(self, digest: str) -> Descriptor | None:
        """A root descriptor for a bare manifest/index digest, if that blob is here."""
        size = self.usage.blob_sizes.get(digest)
        return None if size is None else Descriptor("", digest, size)

    def hold(self, root: Root, descs: Iterable[Descriptor | None],
             blobs: Iterable[str] = ()) -> tuple[set[str], set[str]]:
        """`root` keeps what the images `descs` reach and the blobs `blobs`."""
        reach = reachability.walk(self.store, [d for d in descs if d is not None])
        b = {d for d in reach.blobs | set(blobs) if d in self.blobs}
        c = {x for x in reach.chains if x in self.chains}
        old_b, old_c = self.held.get(root, (set(), set()))
        b, c = b | old_b, c | old_c
        self.held[root] = (b, c)
        for d in b:
            self.blobs[d].add(root)
        for x in c:
            self.chains[x].add(root)
        return b, c

    def release(self, root: Root, sizes: bool = False) -> int:
        """Drop `root`; the bytes of what no other root holds any more (blobs at their
        content size with `sizes`, else what they take on disk)."""
        b, c = self.held.pop(root, (set(), set()))
        bmap = self.usage.blob_sizes if sizes else self.usage.blobs
        freed = 0
        for d in b:
            self.blobs[d].discard(root)
            if not self.blobs[d]:
                freed += bmap[d]
        for x in c:
            self.chains[x].discard(root)
            if not self.chains[x]:
                freed += self.usage.snapshots[x]
        return freed

    def size_of(self, blobs: Iterable[str], chains: Iterable[str], sizes: bool = False) -> int:
        """Bytes of these blobs and snapshots (blob content sizes with `sizes`, else what
        they take on disk)."""
        bmap = self.usage.blob_sizes if sizes else self.usage.blobs
        return sum(bmap[d] for d in blobs) + sum(self.usage.snapshots[x] for x in chains)

    def unheld(self) -> int:
        """Bytes of the blobs and snapshots no root holds (the collector's anyway)."""
        return self.size_of([d for d, h in self.blobs.items() if not h],
                            [x for x, h in self.chains.items() if not h])

    def only(self, pred: Callable[[Root], bool], sizes: bool = False) -> tuple[set[str], set[str]]:
        """The blobs and snapshots held, and only by roots for which `pred` holds."""
        return ({d for d, h in self.blobs.items() if h and all(pred(r) for r in h)},
                {x for x, h in self.chains.items() if h and all(pred(r) for r in h)})

    def any(self, pred: Callable[[Root], bool]) -> tuple[set[str], set[str]]:
        """The blobs and snapshots held by at least one root for which `pred` holds."""
        return ({d for d, h in self.blobs.items() if any(pred(r) for r in h)},
                {x for x, h in self.chains.items() if any(pred(r) for r in h)})


def ledger_for(store, usage: StoreUsage, records: list[CacheRecord],
               in_use: InUse | None = None) -> Ledger:
    """Every root of the store: ("tagged", name), ("dangling", digest), ("container",
    digest), ("cache", key) and ("used",)."""
    led = Ledger(store, usage)
    for name, desc in store.refs.entries():
        led.hold(("tagged", name) if name else ("dangling", desc.digest), [desc])
    for digest in reachability.container_images(store):
        led.hold(("container", digest), [led.descriptor(digest)])
    for r in records:
        led.hold(("cache", r.key), [led.descriptor(r.manifest)] if r.manifest else [])
    if in_use is not None:
        led.hold(("used",), [led.descriptor(d) for d in in_use.manifests], in_use.blobs)
    return led


@dataclass
class Plan:
    records: list[str] = field(default_factory=list)
    images: list[str] = field(default_factory=list)
    snapshots: list[str] = field(default_factory=list)
    keep_blobs: set[str] = field(default_factory=set)
    estimate: int = 0          # bytes the plan frees, leftovers and unheld items included
    exhausted: bool = False    # nothing else may go

    @property
    def empty(self) -> bool:
        return not (self.records or self.images or self.snapshots)


def plan(store, usage: StoreUsage, limit: int, records: list[CacheRecord],
         in_use: InUse) -> Plan:
    """What to release, in the module doc's order, until the store fits `limit`."""
    led = ledger_for(store, usage, records, in_use)
    kept = lambda r: r[0] in ("container", "used") or (is_cache(r) and r[1] in in_use.keys)
    _, protected_chains = led.any(kept)
    p = Plan(keep_blobs=set(led.held.get(("used",), (set(), set()))[0]))
    need = usage.total - limit
    freed = led.unheld() + scratch_garbage(store, usage)
    for r in sorted(records, key=lambda r: (r.last_used, r.key)):
        if freed >= need:
            break
        if r.key in in_use.keys:
            continue
        freed += r.size + led.release(("cache", r.key))
        p.records.append(r.key)
    pinned = set(reachability.container_images(store)) | in_use.manifests
    for root in [r for r in led.held if r[0] == "dangling"]:      # index.json order: oldest first
        if freed >= need:
            break
        if led.held[root][0] & pinned:
            continue               # the image of a container, or of this command
        freed += led.release(root)
        p.images.append(root[1])
    for chain in sorted(led.chains, key=lambda c: (_mtime(store, c), c)):
        if freed >= need:
            break
        if chain in protected_chains or not led.chains[chain]:
            continue               # mounted by a container, used now, or going anyway
        freed += usage.snapshots[chain]
        p.snapshots.append(chain)
    p.estimate = freed
    p.exhausted = freed < need
    return p


def _mtime(store, chain: str) -> float:
    try:
        return os.lstat(store.snapshots.path(chain)).st_mtime
    except OSError:
        return 0.0


def scratch_garbage(store, usage: StoreUsage) -> int:
    """Bytes of leftovers the collector reclaims: stale ingests, work and temp dirs of
    processes that are gone."""
    stale = {p.name for p in store.blobs.stale_ingests()}
    total = 0
    for key, size in usage.scratch.items():
        area, _, name = key.partition("/")
        if area == "ingest":
            dead = name in stale
        elif area == "tmp":
            dead = not workdirs.owner_alive(store.root / "tmp" / name)
        else:
            dead = name.startswith(TMP_PREFIX) and \
                not workdirs.owner_alive(store.snapshots.dir / name)
        total += size if dead else 0
    for name, size in usage.containers.items():
        if name.startswith(WORK_PREFIX) and not workdirs.owner_alive(store.snapshots.work_dir / name):
            total += size
    return total


def enforce(store, limit: int, *, records: Callable[[], list[CacheRecord]],
            forget: Callable[[list[str], list[CacheRecord]], None],
            in_use: InUse | None = None) -> BudgetReport:
    """Prune the store until it takes at most `limit` bytes (see the module doc).

    `records()` lists the build cache records; `forget(keys, records)` deletes those
    records (and rewrites the cache's roots from the rest): called under the gc lock,
    before the collector walks what is still reachable."""
    from layerstore import gc

    in_use = in_use or InUse()
    with store.collecting():
        usage = measure(store)
        report = BudgetReport(limit, usage.total, usage.total)
        for _ in range(ROUNDS):
            if usage.total <= limit:
                break
            recs = records()
            p = plan(store, usage, limit, recs, in_use)
            if p.empty and p.estimate == 0:
                break              # nothing at all may go
            doomed = p.records
            r = gc.collect(store, untagged=p.images, keep_blobs=p.keep_blobs,
                           snapshots=p.snapshots,
                           before=(lambda: forget(doomed, recs)) if doomed else None)
            report.records += len(p.records)
            report.images += r.untagged_images
            report.snapshots += r.snapshots
            report.blobs += r.blobs
            usage = measure(store)
            if p.exhausted:
                break
        report.after = usage.total
    return report


ENV = "PYBUILD_MAX_STORAGE"


def limit_for(root, flag: str | None) -> int | None:
    """The storage limit in force: `--max-storage`, else $PYBUILD_MAX_STORAGE, else the
    store's `max-storage` setting; None for no limit (`none` at any level says so).
    A bad value is a one-line error, raised before the command does any work."""
    from layerstore import settings

    if flag is not None:
        return settings.parse_limit(flag, "--max-storage")
    env = os.environ.get(ENV, "").strip()
    if env:
        return settings.parse_limit(env, ENV)
    value = settings.get(root, "max-storage")
    return value if isinstance(value, int) else None


def is_cache(root: Root) -> bool:
    return root[0] == "cache"


def cache_size(led: Ledger) -> int:
    """The build cache as `system df` shows it: everything under ROOT/cache but what the
    cache mounts hold, and the blobs (at their content size) and snapshots that only
    build cache records hold."""
    return sum(led.usage.cache.values()) + led.size_of(*led.only(is_cache), sizes=True)


def trim_cache(store, records: list[CacheRecord], keep_bytes: int,
               doomed: Iterable[str] = ()) -> list[str]:
    """The keys to forget (`doomed` first, then the least recently used) so that the build
    cache (cache_size) is at most `keep_bytes` (`prune --keep-storage`, docker's
    `builder prune`): a record frees its file and what only it holds, every layer of it."""
    led = ledger_for(store, measure(store), records)
    out = list(dict.fromkeys(doomed))
    for key in out:
        led.release(("cache", key))
    gone = set(out)
    size = cache_size(led) - sum(r.size for r in records if r.key in gone)
    for r in sorted(records, key=lambda r: (r.last_used, r.key)):
        if size <= keep_bytes:
            break
        if r.key in gone:
            continue
        size -= r.size + led.release(("cache", r.key), sizes=True)
        out.append(r.key)
    return out
