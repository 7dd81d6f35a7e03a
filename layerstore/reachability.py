"""What the store must keep: everything reachable from index.json entries,
from running containers and from the build cache. Shared by prune and fsck."""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from layerstore import digest as dg
from layerstore import jsonlimits
from layerstore.errors import PybuildError
from layerstore.model import Descriptor, Index, Manifest, image_problem
from layerstore.store import Store


@dataclass
class Reachable:
    blobs: set[str] = field(default_factory=set)
    chains: set[str] = field(default_factory=set)
    problems: list[str] = field(default_factory=list)   # missing or unreadable objects


def extra_roots(store: Store) -> list[str]:
    """Manifest digests kept alive by containers (ROOT/containers/*/state.json
    `image`) and by the build cache (ROOT/cache/roots: one digest per line)."""
    roots = container_images(store)
    cache_roots = store.root / "cache" / "roots"
    if cache_roots.is_file():
        roots += [line.strip() for line in cache_roots.read_text().splitlines()
                  if dg.is_digest(line.strip())]
    return roots


def container_images(store: Store) -> list[str]:
    """The manifest digest of every container's image (ROOT/containers/*/state.json)."""
    roots: list[str] = []
    containers = store.root / "containers"
    if containers.is_dir():
        for entry in os.scandir(containers):
            try:
                state = jsonlimits.read(containers / entry.name / "state.json")
            except (OSError, ValueError):
                continue
            if isinstance(state, dict) and dg.is_digest(state.get("image", "")):
                roots.append(state["image"])
    return roots


def walk(store: Store, roots: list[Descriptor], verify: bool = False) -> Reachable:
    out = Reachable()
    seen: set[str] = set()
    # a stack, not recursion: indexes nested a thousand deep must not crash prune or fsck
    todo: list[tuple[Descriptor, str]] = []
    for desc in reversed(roots):
        name = (desc.annotations or {}).get("org.opencontainers.image.ref.name") or desc.digest
        todo.append((desc, name))
    while todo:
        desc, where = todo.pop()
        if desc.digest in seen:
            continue
        seen.add(desc.digest)
        if not store.blobs.has(desc.digest):
            out.problems.append(f"{where}: manifest {desc.digest} is missing")
            continue
        out.blobs.add(desc.digest)
        try:
            obj = store.read_manifest(desc)
        except PybuildError as exc:
            out.problems.append(f"{where}: {exc}")
            continue
        if isinstance(obj, Index):
            # an index may list platforms that were never pulled
            todo.extend((child, where) for child in reversed(obj.manifests)
                        if store.blobs.has(child.digest))
            continue
        _visit_manifest(store, obj, where, out)
    return out


def _visit_manifest(store: Store, m: Manifest, where: str, out: Reachable) -> None:
    for blob in [m.config, *m.layers]:
        if store.blobs.has(blob.digest):
            out.blobs.add(blob.digest)
        else:
            out.problems.append(f"{where}: blob {blob.digest} is missing")
    if image_problem(m):
        return  # an artifact kept beside the images of an index (an attestation): no snapshots
    try:
        config = store.read_config(m)
    except PybuildError as exc:
        out.problems.append(f"{where}: {exc}")
        return
    if len(config.diff_ids) != len(m.layers):
        out.problems.append(f"{where}: config {m.config.digest} has "
                            f"{len(config.diff_ids)} diff IDs for {len(m.layers)} layers")
    out.chains.update(dg.chain_ids(config.diff_ids))


def all_roots(store: Store) -> list[Descriptor]:
    roots = [d for _name, d in store.refs.entries()]
    for digest in extra_roots(store):
        if store.blobs.has(digest):
            roots.append(Descriptor("", digest, store.blobs.size(digest)))
    return roots
