"""`pull`: registry -> store, keeping manifests byte for byte (so digests hold).

Order matters for crash safety: blobs first (each verified in ingest), then
manifests, then the index, and the ref last; an interrupted pull leaves only
verified blobs and resumable partials behind.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from layerstore import mediatypes as mt
from layerstore import reference
from layerstore.errors import DigestMismatch, InvalidImage, LocalIOError, NotFound
from layerstore.model import (Descriptor, Index, Manifest, NotAnImage, Platform, check_image,
                              parse_manifest_or_index)
from layerstore.registry import open_client
from layerstore.registry.client import MAX_MANIFEST, Options, RegistryClient
from layerstore.registry.progress import Quiet, Reporter
from layerstore.store import Store


@dataclass
class PullResult:
    name: str                        # the ref written into the store
    top: Descriptor                  # what it points at (manifest or index)
    manifests: list[Descriptor] = field(default_factory=list)   # platform manifests stored
    fetched: int = 0                 # blob bytes moved over the network
    skipped: int = 0                 # blobs already in the store


MAX_BLOB_SIZE = 2 ** 53 - 1      # no real blob is larger; JSON readers lose precision beyond
MAX_MANIFESTS_TOTAL = 64 << 20   # of one --all-platforms pull, held in memory until stored


def _parse(data: bytes, content_type: str | None, what: str) -> Manifest | Index:
    """A manifest or index as a registry served it, refused unless it is plainly one
    image or an index of some.

    What a document is (ambiguous ones: CVE-2021-41190; a Content-Type that
    contradicts the document; an index of nothing; an artifact) is model.py's
    call, shared with `load` and `run`. Here: sizes must be possible, since
    they drive what is downloaded."""
    obj = parse_manifest_or_index(data, content_type or None, what=what)
    if isinstance(obj, Index):
        for i, m in enumerate(obj.manifests):
            if m.size > MAX_MANIFEST:
                raise InvalidImage(f"{what}: manifest {i}: size {m.size} is out of range "
                                   f"(a manifest is at most {MAX_MANIFEST} bytes)")
        return obj
    check_image(obj, what)
    for label, blob in [("config", obj.config),
                        *((f"layer {i}", l) for i, l in enumerate(obj.layers))]:
        if blob.size > MAX_BLOB_SIZE:
            raise InvalidImage(f"{what}: {label}: size {blob.size} is out of range")
    return obj


def _is_attestation(desc: Descriptor) -> bool:
    """An index entry buildx adds for provenance/SBOM (platform unknown/unknown)."""
    kind = (desc.annotations or {}).get("vnd.docker.reference.type")
    return kind == "attestation-manifest"


def _fetch_manifest(client: RegistryClient, repo: str, desc: Descriptor) -> tuple[bytes, Manifest | Index]:
    data, mtype, digest = client.get_manifest(repo, desc.digest)
    if len(data) != desc.size:
        raise InvalidImage(f"manifest {desc.digest}: {len(data)} bytes, index says {desc.size}")
    return data, _parse(data, mtype or desc.media_type, what=f"manifest {desc.digest}")


def pull(store: Store, name: str, *, platform: Platform | None = None,
         all_platforms: bool = False, options: Options | None = None,
         progress: Reporter | None = None) -> PullResult:
    """Pull `name` (tag or digest) into `store`; returns what was stored.

    The store's gc lock is held (shared) from the first blob to the ref: until
    the ref names them, the blobs already fetched are unreachable, and a
    concurrent `prune` would delete them under the pull, which would then
    write a ref to an image that is not all there."""
    ref = reference.parse(name)
    options = options or Options()
    progress = progress or Quiet()
    with store.writing():
        return _pull(store, ref, platform, all_platforms, options, progress)


def _pull(store: Store, ref: reference.Reference, platform: Platform | None,
          all_platforms: bool, options: Options, progress: Reporter) -> PullResult:
    repo = ref.path
    with open_client(ref.domain, options) as client, progress:
        data, mtype, digest = client.get_manifest(repo, ref.digest or ref.tag or "latest")
        top_obj = _parse(data, mtype or None, what=f"manifest of {ref.familiar}")
        top = Descriptor(media_type=top_obj.media_type, digest=digest, size=len(data))
        manifests: list[tuple[Descriptor, bytes, Manifest]] = []
        if isinstance(top_obj, Index):
            try:
                chosen = ([m for m in top_obj.manifests if m.media_type not in mt.INDEXES]
                          if all_platforms else [store.select(top_obj, platform)])
            except NotFound as exc:
                raise NotFound(f"{ref.familiar}: {exc}") from None
            if not chosen:
                raise InvalidImage(f"{ref.familiar}: index lists no image manifests")
            total = sum(d.size for d in chosen)     # each is checked against its size
            if total > MAX_MANIFESTS_TOTAL:
                raise InvalidImage(f"{ref.familiar}: the index's manifests add up to {total} "
                                   f"bytes, more than the {MAX_MANIFESTS_TOTAL} a pull holds")
            for desc in chosen:
                if all_platforms and _is_attestation(desc):
                    continue    # buildx's provenance/SBOM entries: not an image to store
                try:
                    mdata, obj = _fetch_manifest(client, repo, desc)
                except NotAnImage:
                    if all_platforms:
                        continue    # an artifact beside the images: the images still pull
                    raise
                if not isinstance(obj, Manifest):
                    raise InvalidImage(f"{ref.familiar}: nested index {desc.digest} not supported")
                manifests.append((desc, mdata, obj))
            if not manifests:
                raise InvalidImage(f"{ref.familiar}: index lists no image manifests")
        else:
            manifests.append((top, data, top_obj))

        wanted: dict[str, Descriptor] = {}
        for _desc, _data, m in manifests:
            for blob in [m.config, *m.layers]:
                wanted.setdefault(blob.digest, blob)
        result = PullResult(name="", top=top, manifests=[d for d, _, _ in manifests])
        missing = []
        for blob in wanted.values():
            if store.blobs.has(blob.digest):
                result.skipped += 1
                progress.task(f"{blob.digest[7:19]}", blob.size).finish("already in the store")
            else:
                missing.append(blob)
        result.fetched = _download(client, repo, missing, store, options, progress)

        for desc, mdata, _m in manifests:
            if desc is not top:
                store.blobs.put(mdata, desc.digest)
        store.blobs.put(data, digest)
        if ref.digest:
            if ref.digest != digest:
                raise DigestMismatch(ref.digest, digest, what=f"manifest of {ref.familiar}")
            full = str(ref.with_digest(digest))
            store.refs.set(full, top)
        else:
            full = store.tag(str(ref), top)
        result.name = full
        progress.note(f"{ref.familiar}: pulled {digest}")
        return result


def _download(client: RegistryClient, repo: str, blobs: list[Descriptor], store: Store,
              options: Options, progress: Reporter) -> int:
    """Fetch blobs in parallel (bounded); the first failure cancels the rest."""
    if not blobs:
        return 0

    def one(desc: Descriptor) -> int:
        task = progress.task(desc.digest[7:19], desc.size)
        n = client.fetch_blob(repo, desc, store.blobs, progress=task.advance)
        task.finish("done")
        return n

    # largest first, so a big layer does not start last and finish alone
    order = sorted(blobs, key=lambda d: -d.size)
    workers = max(1, min(options.max_concurrent, len(order)))
    if workers == 1:
        return sum(one(d) for d in order)
    try:
        with ThreadPoolExecutor(workers, thread_name_prefix="pull") as pool:
            futures = [pool.submit(one, d) for d in order]
            total = 0
            try:
                for f in futures:
                    total += f.result()
            except BaseException:
                client.cancel()
                for f in futures:
                    f.cancel()
                raise
            return total
    except LocalIOError:
        # the disk is full (or read-only): the transfers cancelled beside the one that
        # hit it keep their resumable partials, which hold the very space that is
        # missing. Once every worker is done, drop them.
        for d in order:
            store.blobs.drop_partial(d.digest)
        raise
