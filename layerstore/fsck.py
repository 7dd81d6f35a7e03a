"""`pybuild fsck`: re-hash every blob and check every reference.

Reports problems (exit 1) and notes (harmless leftovers of interrupted
writes, which prune removes); changes nothing.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from layerstore import jsonlimits, reachability
from layerstore.errors import PybuildError
from layerstore.store import Store


@dataclass
class FsckReport:
    blobs_checked: int = 0
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def clean(self) -> bool:
        return not self.problems


def fsck(store: Store) -> FsckReport:
    report = FsckReport()
    for name in ("oci-layout", "index.json"):
        try:
            jsonlimits.read(store.root / name, name, max_bytes=64 << 20)
        except (OSError, ValueError) as exc:
            report.problems.append(f"{name}: unreadable: {exc}")
    for digest in store.blobs.digests():
        report.blobs_checked += 1
        actual = store.blobs.rehash(digest)
        if actual != digest:
            report.problems.append(f"blob {digest} is corrupt (its content hashes to {actual})")
    try:
        roots = reachability.all_roots(store)
    except PybuildError as exc:
        report.problems.append(str(exc))
        return report
    reach = reachability.walk(store, roots)
    report.problems += reach.problems
    for chain in store.snapshots.chain_ids():
        if chain not in reach.chains:
            report.notes.append(f"snapshot {chain} is used by no image (prune removes it)")
    partial = len(store.blobs.stale_ingests()) + len(store.snapshots.leftovers())
    if partial:
        report.notes.append(f"{partial} leftover partial writes (prune removes them)")
    return report
