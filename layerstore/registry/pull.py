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
from layerstore.errors import DigestMismatch, InvalidImage, NotFound
from layerstore.model import Descriptor, Index, Manifest, Platform, parse_manifest_or_index
from layerstore.registry import open_client
from layerstore.registry.client import Options, RegistryClient
from layerstore.registry.progress import Quiet, Reporter
from layerstore.store import Store


@dataclass
class PullResult:
    name: str                        # the ref written into the store
    top: Descriptor                  # what it points at (manifest or index)
    manifests: list[Descriptor] = field(default_factory=list)   # platform manifests stored
    fetched: int = 0                 # blob bytes moved over the network
    skipped: int = 0                 # blobs already in the store


def _fetch_manifest(client: RegistryClient, repo: str, desc: Descriptor) -> tuple[bytes, Manifest | Index]:
    data, _mtype, digest = client.get_manifest(repo, desc.digest)
    if len(data) != desc.size:
        raise InvalidImage(f"manifest {desc.digest}: {len(data)} bytes, index says {desc.size}")
    return data, parse_manifest_or_index(data, desc.media_type, what=f"manifest {desc.digest}")


def pull(store: Store, name: str, *, platform: Platform | None = None,
         all_platforms: bool = False, options: Options | None = None,
         progress: Reporter | None = None) -> PullResult:
    """Pull `name` (tag or digest) into `store`; returns what was stored."""
    ref = reference.parse(name)
    options = options or Options()
    progress = progress or Quiet()
    repo = ref.path
    with open_client(ref.domain, options) as client, progress:
        data, mtype, digest = client.get_manifest(repo, ref.digest or ref.tag or "latest")
        top_obj = parse_manifest_or_index(data, mtype or None, what=f"manifest of {ref.familiar}")
        top = Descriptor(media_type=top_obj.media_type, digest=digest, size=len(data))
        manifests: list[tuple[Descriptor, bytes, Manifest]] = []
        if isinstance(top_obj, Index):
            try:
                chosen = ([m for m in top_obj.manifests if m.media_type not in mt.INDEXES]
                          if all_platforms else [store.select(top_obj, platform)])
            except NotFound as exc:
                raise NotFound(f"{ref.familiar}: {exc}") from None
            for desc in chosen:
                mdata, obj = _fetch_manifest(client, repo, desc)
                if not isinstance(obj, Manifest):
                    raise InvalidImage(f"{ref.familiar}: nested index {desc.digest} not supported")
                manifests.append((desc, mdata, obj))
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


def ensure_image(store: Store, name: str, *, platform: Platform | None = None,
                 options: Options | None = None, progress: Reporter | None = None):
    """The store's image for `name`, pulled first if missing (what FROM needs)."""
    try:
        return store.resolve(name, platform)
    except NotFound:
        pass
    result = pull(store, name, platform=platform, options=options, progress=progress)
    return store.resolve(result.name, platform)
