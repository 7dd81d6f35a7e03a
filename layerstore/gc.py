"""`pybuild prune`: remove what nothing can reach any more.

Runs under the store's gc lock, exclusive, so that a concurrent load, pull,
import or build (which hold it shared while their blobs are still unnamed)
finishes first.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterable

from layerstore import reachability
from layerstore.store import Store


@dataclass
class PruneReport:
    untagged_images: int = 0
    blobs: int = 0
    snapshots: int = 0
    partial_files: int = 0
    reclaimed: int = 0


def prune(store: Store, all_unused: bool = False,
          untagged: Iterable[str] | None = None) -> PruneReport:
    """Unreachable blobs and snapshots, leftovers of interrupted writes and of killed
    builds, and dangling (untagged) images, as `docker image prune`. With all_unused,
    also snapshots that no container uses (they are re-made from blobs). `untagged`:
    the dangling images (digests) to drop, None for all."""
    with store.collecting():
        return collect(store, all_unused=all_unused, untagged=untagged)


def collect(store: Store, *, all_unused: bool = False, untagged: Iterable[str] | None = None,
            keep_blobs: Iterable[str] = (), snapshots: Iterable[str] = (),
            before: Callable[[], None] | None = None) -> PruneReport:
    """The collector itself, for a caller that holds `store.collecting()` (prune, the
    storage budget, which decides under the same lock what goes).

    `untagged`: the untagged refs (digests) to drop, None for all of them; `keep_blobs`:
    blobs kept even when nothing reaches them (what the command that just ran used);
    `snapshots`: chain IDs removed besides the unreachable ones (re-made from blobs when
    needed); `before` runs first (a caller forgetting build cache records, whose roots
    file the reachability walk reads)."""
    report = PruneReport()
    if before is not None:
        before()
    drop = None if untagged is None else set(untagged)
    for name, desc in store.refs.entries():
        if not name and (drop is None or desc.digest in drop) and \
                store.refs.remove_untagged(desc.digest):
            report.untagged_images += 1
    keep = reachability.walk(store, reachability.all_roots(store))
    in_use = set(keep.chains) if not all_unused else _chains_in_use(store)
    in_use -= set(snapshots)
    kept_blobs = keep.blobs | set(keep_blobs)
    for digest in list(store.blobs.digests()):
        if digest not in kept_blobs:
            report.reclaimed += store.blobs.size(digest)
            store.blobs.delete(digest)
            report.blobs += 1
    for chain in store.snapshots.chain_ids():
        if chain not in in_use:
            store.snapshots.remove(chain)
            report.snapshots += 1
    for path in store.blobs.stale_ingests():
        try:
            report.reclaimed += path.lstat().st_size
        except FileNotFoundError:
            continue
        path.unlink(missing_ok=True)
        report.partial_files += 1
    # work dirs, snapshot temp dirs and ROOT/tmp entries of processes that are gone
    # (a SIGKILLed build's upper can be gigabytes: a CI runner's disk must not leak)
    count, freed = store.snapshots.reclaim(everything=True)
    report.partial_files += count
    report.reclaimed += freed
    return report


def _chains_in_use(store: Store) -> set[str]:
    from layerstore.model import Descriptor

    roots = [Descriptor("", d, store.blobs.size(d))
             for d in reachability.extra_roots(store) if store.blobs.has(d)]
    return reachability.walk(store, roots).chains
