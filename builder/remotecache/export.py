"""`--cache-to`: write a build's cache records to a registry or a directory.

Order is what keeps readers safe: every layer blob first (skipped when there,
mounted from another repository of the same registry when one is known to hold it,
uploaded otherwise), then the cache-mount artifacts, then the record list, and the
manifest last, in one step (builder/remotecache/targets.py). A layer the build took
from a cache source without downloading it is fetched only when the export target
has no other way to get it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from builder.remotecache import records as rec
from builder.remotecache.spec import CacheSpec
from builder.remotecache.targets import Opener, Provide, Sent, open_backend
from layerstore import mediatypes as mt
from layerstore.model import Descriptor


@dataclass
class Exported:
    spec: CacheSpec
    digest: str             # of the cache manifest
    records: int
    layers: list[Descriptor]
    sent: Sent


def export(spec: CacheSpec, records: list[rec.Record], *, provide: Provide, opener: Opener,
           origins: dict[str, str], options=None, created: str | None = None,
           mounts: list[dict] = (), mount_blobs: Callable[[Descriptor], list[Descriptor]]
           | None = None, read_local: Callable[[Descriptor], bytes] | None = None,
           platform: str | None = None) -> Exported:
    """Write `records` (and the cache-mount artifacts `mounts`, packed in the store:
    `mount_blobs(manifest)` lists each one's blobs, `read_local` reads its manifest)
    to `spec`'s location. With `platform` (the platform these records were built for),
    the records and mounts of OTHER platforms already at the location are kept: one ref
    serves every platform of a multi-platform build, or of per-platform CI jobs (buildx
    keeps only the last one: docker/buildx#1044)."""
    from layerstore import digest as dg

    backend = open_backend(spec, options)
    try:
        if platform is not None:
            kept, kept_mounts = _other_platforms(spec, backend, platform)
            mine = {r.key for r in records}
            records = list(records) + [r for r in kept if r.key not in mine]
            mounts = list(mounts) + kept_mounts
        data, layers = rec.encode(records, list(mounts))
        sent = backend.put_blobs(layers, provide, opener, origins)
        for m in mounts:
            desc = Descriptor.from_json(m["manifest"])
            assert mount_blobs is not None and read_local is not None
            extra = backend.put_blobs(mount_blobs(desc), provide, opener, origins)
            sent.uploaded += extra.uploaded
            sent.existing += extra.existing
            sent.uploaded_bytes += extra.uploaded_bytes
            backend.put_artifact(read_local(desc), mt.OCI_MANIFEST)
        config = backend.put_bytes(data, rec.CACHE_CONFIG_TYPE, origins)
        manifest = rec.manifest(config, layers, created).to_bytes()
        backend.put_manifest(manifest, mt.OCI_MANIFEST)
    finally:
        backend.close()
    return Exported(spec, dg.of_bytes(manifest), len({r.key for r in records}), layers, sent)


def _other_platforms(spec: CacheSpec, backend, platform: str) -> tuple[list[rec.Record],
                                                                        list[dict]]:
    """The records and cache-mount entries at the export location that were built for
    another platform than `platform`. Nothing when there is no export yet, or when it
    cannot be read (it is replaced then, as before). Each kept record passed the same
    checks an import makes, and names only layers its manifest lists (already there)."""
    from builder.remotecache.importer import _load
    from layerstore.errors import PybuildError
    from layerstore.platforms import normalize, of_config, parse_platform

    try:
        src = _load(spec, backend, None, lambda index, want: index.manifests[0])
    except PybuildError:
        return [], []
    if src.inline:
        return [], []
    kept = []
    for r in src.records.values():
        try:
            theirs = of_config(rec.check(r))
        except PybuildError:
            continue
        if theirs is not None and theirs != platform:
            kept.append(r)
    want = parse_platform(platform)
    mounts = []
    for m in src.mounts:
        try:
            p = parse_platform(str(m.get("platform", "")))
        except PybuildError:
            continue
        if normalize(p.os, p.architecture, p.variant) != want:
            mounts.append(m)
    return kept, mounts
