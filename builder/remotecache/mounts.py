"""Cache mounts that travel: RUN --mount=type=cache directories as OCI artifacts.

A cache mount (ROOT/cache/mounts/<hash of its id>, builder/steps/mounts.py) is
packed as one OCI artifact manifest: artifactType
`application/vnd.pybuild.cache.mount.v1`, config the OCI empty descriptor, one
tar+gzip layer of the directory (its own owner and mode as a `./` entry, then
its content: sorted names, numeric owners, mtimes kept; device nodes and
sockets left out), annotation `dev.pybuild.cache.mount.id`. The same directory
packs to the same bytes, so an unchanged cache exports the same digests.

An artifact read back comes from a registry or a directory anyone may have
written: the manifest is checked (kind, one layer, bounded sizes, the id it
is for) before its layer is fetched, and the layer goes through the one layer
applier (flat, no device nodes, bounded uncompressed size) into a fresh work
dir beside the cache dirs, which takes the cache dir's name only if that is
still absent or empty: a cache a build made here is never overwritten, and a
failed or killed restore leaves no half-filled cache (only a work dir that the
next restore reclaims).

Packing reads a tree another build's `sharing=shared` step may be writing at
that moment: the layer writer walks it by directory fds and refuses an entry
that is no longer what was listed, so a directory swapped for a symlink never
brings host files into an artifact.

Known limits: a file named `.wh.*` in a cache does not travel (the flat applier
reads it as a whiteout); filling an *empty* cache dir replaces it by rename, so
a `sharing=shared` step of a concurrent build that has that empty dir mounted
at that instant keeps writing into the replaced one (its writes are lost to
the cache, as with any cache eviction).

RC (builder/remotecache) calls `collect` when exporting with
`cache-mounts=true` and `restore` before the first step that mounts an id.
"""

from __future__ import annotations

import errno
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

from builder.steps.mounts import cache_lock, cache_path
from layerstore import digest as dg
from layerstore import mediatypes as mt
from layerstore import workdirs
from layerstore.errors import PybuildError
from layerstore.layer_apply import FLAT, apply_layer
from layerstore.layer_diff import LayerSourceError
from layerstore.locking import file_lock
from layerstore.model import Descriptor, Manifest, Platform, parse_manifest_or_index
from layerstore.platforms import matches, parse_platform

ARTIFACT_TYPE = "application/vnd.pybuild.cache.mount.v1"
ID_ANNOTATION = "dev.pybuild.cache.mount.id"
EMPTY_MEDIA_TYPE = "application/vnd.oci.empty.v1+json"
EMPTY_DATA = b"{}"
EMPTY_DIGEST = dg.of_bytes(EMPTY_DATA)
EMPTY_DESCRIPTOR = Descriptor(EMPTY_MEDIA_TYPE, EMPTY_DIGEST, len(EMPTY_DATA),
                              extra={"data": "e30="})      # base64 of "{}", as the spec has it

# Limits for what a cache source hands us. An artifact manifest is a few hundred
# bytes; a pip/npm/apt cache is rarely beyond a few GB: a descriptor claiming more
# is refused before anything is downloaded, and a layer that inflates beyond
# MAX_UNPACKED_SIZE (a gzip bomb) is stopped while it is applied.
MAX_MANIFEST_SIZE = 64 << 10
MAX_LAYER_SIZE = 8 << 30
MAX_UNPACKED_SIZE = 32 << 30
MAX_ID_LENGTH = 4096
MAX_ENTRIES = 1024
LAYER_TYPES = (mt.OCI_LAYER, mt.OCI_LAYER_GZIP, mt.OCI_LAYER_ZSTD)
RESTORE_PREFIX = ".restore-"

FetchBlob = Callable[[Descriptor], None]
Warn = Callable[[str], None]


class CacheMountError(PybuildError):
    """A cache mount artifact that is not one, or cannot be restored."""


def _stderr(message: str) -> None:
    print(f"pybuild: warning: {message}", file=sys.stderr)


def mounts_dir(store) -> Path:
    """ROOT/cache/mounts: where RUN --mount=type=cache directories live."""
    return store.root / "cache" / "mounts"


def _platform_text(platform: Platform | str) -> str:
    return str(parse_platform(platform) if isinstance(platform, str) else platform)


def _show(cid: str) -> str:
    return repr(cid[:200] + ("..." if len(cid) > 200 else ""))


# --- pack ------------------------------------------------------------------------

def pack(store, mount_id: str, platform: Platform | str, cache_dir: Path, *,
         compression: str = "gzip") -> Descriptor:
    """The artifact of the directory `cache_dir` (cache mount `mount_id`, built for
    `platform`) written into the store's blobs (through ingest: digests verified);
    returns the manifest's descriptor (with its artifactType). The caller holds the
    cache dir's lock (`collect` does) so a `sharing=locked` step does not change
    it meanwhile, and keeps `store.writing()` until the blobs are uploaded."""
    _platform_text(platform)       # the entry names it; the artifact itself does not
    with store.writing():
        layer, _diff_id = store.commit_layer(Path(cache_dir), compression=compression,
                                             overlay=False, root_entry=True, devices=False)
        store.blobs.put(EMPTY_DATA, EMPTY_DIGEST)
        manifest = Manifest(config=EMPTY_DESCRIPTOR, layers=[layer],
                            annotations={ID_ANNOTATION: mount_id},
                            extra={"artifactType": ARTIFACT_TYPE})
        desc = store.put_json(manifest.to_bytes(), mt.OCI_MANIFEST)
    desc.extra = {"artifactType": ARTIFACT_TYPE}
    return desc


def artifact_blobs(store, manifest_desc: Descriptor) -> list[Descriptor]:
    """The blobs a mount artifact refers to (config, then layer), for an exporter to
    upload before the manifest itself. Reads a manifest `pack` wrote."""
    manifest = _read_manifest(store, manifest_desc, None)
    return [manifest.config, *manifest.layers]


def collect(store, mount_ids_used: Iterable[str], platform: Platform | str, *,
            compression: str = "gzip", warn: Warn | None = None,
            carried: Iterable[tuple[object, FetchBlob]] = (),
            providers: dict[str, FetchBlob] | None = None) -> list[dict]:
    """The `mounts` entries of a cache export for the cache mount ids a build used
    (for `platform`): `{"id", "platform", "manifest": <descriptor JSON>}`, sorted by
    id. Upload `artifact_blobs(store, desc)` and then the manifest, by digest, before
    the cache manifest names them.

    An id whose directory is here and not empty is packed into the store's blobs. One
    that is absent or empty here (its steps were all cache hits, so nothing restored
    it) is carried over from the cache sources: `carried` holds, per --cache-from
    source in order, its `mounts` entries and its fetch_blob (as `restore` takes
    them). The first entry for the id and platform whose manifest passes the checks
    is kept: the manifest is fetched into the store (a few hundred bytes) but the
    layer is not: `providers[layer digest]` is set to that source's fetch_blob, for
    the exporter to call only when the export target lacks the layer. Without this,
    a fully cached build exporting to the ref it imported from would drop the warm
    caches the next builder needs.

    A directory that a concurrent build changes while it is packed is carried over
    (or left out) with a warning; nothing here fails the export. Hold
    `store.writing()` from this call until the upload is done, so a concurrent prune
    cannot collect the still unnamed blobs."""
    warn = warn or _stderr
    text = _platform_text(platform)
    parent = mounts_dir(store)
    sources = _carried_entries(carried, warn)
    entries = []
    for cid in sorted(set(mount_ids_used)):
        d = cache_path(parent, cid)
        if _state(d) == "full":
            try:
                with file_lock(cache_lock(d)):
                    desc = pack(store, cid, text, d, compression=compression) \
                        if _state(d) == "full" else None
            except (LayerSourceError, OSError) as exc:
                detail = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
                warn(f"cache mount {_show(cid)} not exported: {detail}")
                desc = None
            if desc is not None:
                entries.append({"id": cid, "platform": text, "manifest": desc.to_json()})
                continue
        desc = _carry(store, cid, parse_platform(text), sources, providers, warn)
        if desc is not None:
            entries.append({"id": cid, "platform": text, "manifest": desc.to_json()})
    return entries


def _carried_entries(carried: Iterable[tuple[object, FetchBlob]], warn: Warn
                     ) -> list[tuple[list[MountEntry], FetchBlob]]:
    out = []
    for entries, fetch in carried:
        try:
            out.append((parse_entries(entries), fetch))
        except CacheMountError as exc:
            warn(f"cache mounts of a cache source not carried over: {exc}")
    return out


def _carry(store, cid: str, want: Platform, sources, providers: dict[str, FetchBlob] | None,
           warn: Warn) -> Descriptor | None:
    for entries, fetch in sources:
        for e in entries:
            if e.id != cid or not matches(want, parse_platform(e.platform)):
                continue
            try:
                with store.writing():
                    manifest = _read_manifest(store, e.manifest, cid, fetch)
                    store.blobs.put(EMPTY_DATA, EMPTY_DIGEST)
            except (PybuildError, OSError) as exc:
                detail = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
                warn(f"cache mount {_show(cid)} not carried over from the cache source: "
                     f"{detail}")
                break       # this source's entry for the id is bad: try the next source
            if providers is not None:
                providers.setdefault(manifest.layers[0].digest, fetch)
            return Descriptor(mt.OCI_MANIFEST, e.manifest.digest, e.manifest.size,
                              extra={"artifactType": ARTIFACT_TYPE})
    return None


# --- unpack ----------------------------------------------------------------------

def _state(d: Path) -> str:
    """"absent", "empty" or "full" (a non-empty dir, or anything that is no dir: it is
    left alone)."""
    try:
        fd = os.open(d, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        return "absent"
    except OSError:
        return "full"
    try:
        with os.scandir(fd) as it:
            return "full" if next(it, None) is not None else "empty"
    finally:
        os.close(fd)


def _check_descriptor(desc: Descriptor, what: str) -> None:
    if desc.media_type != mt.OCI_MANIFEST:
        raise CacheMountError(f"{what}: media type {desc.media_type!r} is not an OCI manifest")
    if desc.size > MAX_MANIFEST_SIZE:
        raise CacheMountError(f"{what}: manifest of {desc.size} bytes is larger than the "
                              f"{MAX_MANIFEST_SIZE} a cache mount artifact may have")


def _read_manifest(store, desc: Descriptor, mount_id: str | None,
                   fetch_blob: FetchBlob | None = None) -> Manifest:
    """The checked manifest of a cache mount artifact (fetched first when missing)."""
    what = f"cache mount artifact {desc.digest}"
    _check_descriptor(desc, what)
    if fetch_blob is not None and not store.blobs.has(desc.digest):
        fetch_blob(desc)
    data = store.blobs.read(desc.digest, limit=MAX_MANIFEST_SIZE)
    manifest = parse_manifest_or_index(data, mt.OCI_MANIFEST, what=what)
    if not isinstance(manifest, Manifest) or manifest.media_type != mt.OCI_MANIFEST:
        raise CacheMountError(f"{what}: not an OCI image manifest")
    kind = manifest.extra.get("artifactType")
    if kind != ARTIFACT_TYPE:
        raise CacheMountError(f"{what}: artifactType {kind!r} is not {ARTIFACT_TYPE}")
    cfg = manifest.config
    if cfg.media_type != EMPTY_MEDIA_TYPE or cfg.digest != EMPTY_DIGEST:
        raise CacheMountError(f"{what}: config is not the OCI empty descriptor")
    if len(manifest.layers) != 1:
        raise CacheMountError(f"{what}: {len(manifest.layers)} layers, not one")
    layer = manifest.layers[0]
    if layer.media_type not in LAYER_TYPES:
        raise CacheMountError(f"{what}: layer media type {layer.media_type!r} is not a tar")
    if layer.urls:
        raise CacheMountError(f"{what}: layer names foreign URLs")
    if layer.size > MAX_LAYER_SIZE:
        raise CacheMountError(f"{what}: layer of {layer.size} bytes is larger than the "
                              f"{MAX_LAYER_SIZE} a cache mount may have")
    named = (manifest.annotations or {}).get(ID_ANNOTATION)
    if mount_id is not None and named != mount_id:
        raise CacheMountError(f"{what}: it is for cache mount {_show(named or '')}, "
                              f"not {_show(mount_id)}")
    return manifest


def unpack(store, manifest_desc: Descriptor, cache_dir_parent: Path, mount_id: str, *,
           fetch_blob: FetchBlob | None = None) -> Path:
    """Fill the cache dir of `mount_id` under `cache_dir_parent` (ROOT/cache/mounts)
    from the artifact `manifest_desc`, if that dir is absent or empty; returns the
    cache dir's path. The manifest is checked before its layer is fetched
    (`fetch_blob`, when a blob is not in the store yet); the layer is applied by the
    one applier into a fresh work dir, then renamed into place under the cache dir's
    lock (the one `sharing=locked` steps hold), only if the dir is still absent or
    empty then (a concurrent build may have filled it, or have it mounted). Raises a
    PybuildError (one line) for a bad artifact; nothing is left behind then."""
    parent = Path(cache_dir_parent)
    _fill(store, manifest_desc, parent, mount_id, fetch_blob)
    return cache_path(parent, mount_id)


def _fill(store, manifest_desc: Descriptor, parent: Path, mount_id: str,
          fetch_blob: FetchBlob | None) -> bool:
    """unpack(); True when the artifact's tree took the cache dir's place."""
    with store.writing():   # a concurrent prune must not take the fetched, unnamed blobs
        return _fill_held(store, manifest_desc, parent, mount_id, fetch_blob)


def _fill_held(store, manifest_desc: Descriptor, parent: Path, mount_id: str,
               fetch_blob: FetchBlob | None) -> bool:
    manifest = _read_manifest(store, manifest_desc, mount_id, fetch_blob)
    layer = manifest.layers[0]
    d = cache_path(parent, mount_id)
    if _state(d) == "full":
        return False
    if fetch_blob is not None and not store.blobs.has(layer.digest):
        fetch_blob(layer)
    if store.blobs.size(layer.digest) != layer.size:
        raise CacheMountError(f"cache mount artifact {manifest_desc.digest}: layer "
                              f"{layer.digest} is not of the size its manifest says")
    parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    with file_lock(cache_lock(d)):
        if _state(d) == "full":
            return False
        wd = workdirs.create(parent, RESTORE_PREFIX, mode=0o755)
        try:
            with store.blobs.open(layer.digest, verify=True) as f:
                apply_layer(f, wd.path, mode=FLAT, devices=False, max_size=MAX_UNPACKED_SIZE)
            if _state(d) != "full":
                try:
                    # atomic, and over an empty dir too; ENOTEMPTY/EBUSY: another build
                    # filled it or has it mounted right now: theirs stays
                    os.rename(wd.path, d)
                except OSError as exc:
                    if exc.errno not in (errno.ENOTEMPTY, errno.EEXIST, errno.EBUSY,
                                         errno.ENOTDIR, errno.EISDIR):
                        raise
                else:
                    wd.disown()
                    return True
        finally:
            wd.release()    # a no-op once disowned
    return False


# --- restore ---------------------------------------------------------------------

@dataclass(frozen=True)
class MountEntry:
    id: str
    platform: str
    manifest: Descriptor


def parse_entries(entries: object, what: str = "cache mounts") -> list[MountEntry]:
    """The `mounts` list of a cache config (outside input) as checked entries; an
    entry's "manifest" may be descriptor JSON or a Descriptor already."""
    if not isinstance(entries, list):
        raise CacheMountError(f"{what}: expected a list")
    if len(entries) > MAX_ENTRIES:
        raise CacheMountError(f"{what}: {len(entries)} entries, more than {MAX_ENTRIES}")
    out = []
    for i, e in enumerate(entries):
        where = f"{what}: entry {i}"
        if not isinstance(e, dict):
            raise CacheMountError(f"{where}: expected an object")
        cid, plat = e.get("id"), e.get("platform")
        if not isinstance(cid, str) or not cid or len(cid) > MAX_ID_LENGTH or "\0" in cid:
            raise CacheMountError(f"{where}: invalid id")
        if not isinstance(plat, str):
            raise CacheMountError(f"{where}: invalid platform")
        try:
            text = str(parse_platform(plat))
            desc = e.get("manifest")
            if not isinstance(desc, Descriptor):     # as decoded already, or still JSON
                desc = Descriptor.from_json(desc, f"{where}: manifest")
        except PybuildError as exc:
            raise CacheMountError(str(exc)) from None
        _check_descriptor(desc, where)
        out.append(MountEntry(cid, text, desc))
    return out


def restore(store, entries: object, fetch_blob: FetchBlob, *,
            ids: Iterable[str] | None = None, platform: Platform | str | None = None,
            warn: Warn | None = None) -> list[str]:
    """Fill the absent or empty cache dirs of `ids` (every id, when None) from the
    `mounts` entries of a cache config, for `platform` (every platform, when None;
    the first entry of an id wins); returns the ids filled from the artifacts (not
    those a concurrent build filled meanwhile).

    `fetch_blob(desc)` is the importer's: it puts the blob `desc` names into the
    store's blobs through ingest (digest and size checked) from the registry or
    layout the entries came from, or raises a PybuildError. It is called only for
    blobs not in the store yet, and for a layer only when its manifest passed the
    checks and the cache dir still needs it.

    Anything wrong with an entry, an artifact or a fetch is a warning (`warn`,
    default stderr) and that cache stays cold: never a build failure."""
    warn = warn or _stderr
    try:
        parsed = parse_entries(entries)
    except CacheMountError as exc:
        warn(f"cache mounts of the cache source ignored: {exc}")
        return []
    wanted = set(ids) if ids is not None else None
    want = parse_platform(_platform_text(platform)) if platform is not None else None
    parent = mounts_dir(store)
    workdirs.reclaim(parent, (RESTORE_PREFIX,), measure=False)   # left by killed restores
    done: list[str] = []
    seen: set[str] = set()
    for e in parsed:
        if e.id in seen or (wanted is not None and e.id not in wanted):
            continue
        if want is not None and not matches(want, parse_platform(e.platform)):
            continue
        seen.add(e.id)
        d = cache_path(parent, e.id)
        if _state(d) == "full":
            continue
        try:
            if _fill(store, e.manifest, parent, e.id, fetch_blob):
                done.append(e.id)
        except (PybuildError, OSError) as exc:
            detail = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
            warn(f"cache mount {_show(e.id)} not restored from the cache source: {detail}")
    return done


def is_restorable(d: Path) -> bool:
    """Whether the cache dir `d` would be filled by a restore (absent or empty)."""
    return _state(d) != "full"

