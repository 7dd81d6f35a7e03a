"""`push`: store -> registry. Blobs, then config, then manifests, then the index.

Blobs the registry has are skipped (HEAD); blobs that some other repository of
the same registry has (known from the caller's `origins`, e.g. a registry build
cache, or from the store's refs) are mounted instead of uploaded; the rest are
uploaded in parallel. A blob the store does not hold (a layer a remote cache hit
never downloaded) can only be mounted. Manifests go up with the exact bytes in
the store, so the registry's digest is the store's digest.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import BinaryIO

from layerstore import reference
from layerstore.errors import InvalidImage, NotFound, PybuildError
from layerstore.model import Descriptor, Index, Manifest
from layerstore.registry import open_client
from layerstore.registry.client import Options, RegistryClient
from layerstore.registry.errors import RegistryError
from layerstore.registry.progress import Quiet, Reporter
from layerstore.store import Store


@dataclass
class PushResult:
    name: str            # destination reference as pushed
    digest: str          # of the top manifest or index
    uploaded: int = 0    # blobs uploaded
    mounted: int = 0     # blobs mounted from another repository
    existing: int = 0    # blobs the registry already had
    uploaded_bytes: int = 0   # blob bytes sent (what an upload cost; mounts cost none)


def _local_top(store: Store, name: str) -> tuple[Descriptor, list[str]]:
    """Descriptor of what `name` points at (index or manifest) in the store."""
    image = store.resolve(name)
    return image.top, image.names


def _mount_sources(store: Store, domain: str, repo: str) -> dict[str, str]:
    """blob digest -> another repository on `domain` it was pulled from or pushed to."""
    sources: dict[str, str] = {}
    for name, desc in store.refs.list():
        try:
            ref = reference.parse(name)
        except PybuildError:
            continue
        if ref.domain != domain or ref.path == repo:
            continue
        try:
            obj = store.read_manifest(desc)
            manifests = ([store.read_manifest(m) for m in obj.manifests if store.blobs.has(m.digest)]
                         if isinstance(obj, Index) else [obj])
        except PybuildError:
            continue
        for m in manifests:
            if isinstance(m, Manifest):
                for blob in [m.config, *m.layers]:
                    sources.setdefault(blob.digest, ref.path)
    return sources


@dataclass
class Sent:
    """What `upload_blobs` did, blob by blob."""

    uploaded: int = 0
    mounted: int = 0
    existing: int = 0
    uploaded_bytes: int = 0


def mount_candidates(domain: str, repo: str, *sources: dict[str, str] | None
                     ) -> dict[str, list[str]]:
    """blob digest -> repositories of `domain` (other than `repo`) to mount it from, in
    the order given. Each source maps digests to "domain/repo" (a build cache's origins);
    a registry mounts only between its own repositories, so other domains drop out."""
    out: dict[str, list[str]] = {}
    for source in sources:
        for digest, where in (source or {}).items():
            host, _, path = where.partition("/")
            if host == domain and path and path != repo and path not in out.get(digest, ()):
                out.setdefault(digest, []).append(path)
    return out


def push(store: Store, name: str, dest: str | None = None, *, options: Options | None = None,
         progress: Reporter | None = None, compression: str | None = None,
         force_compression: bool = False, origins: dict[str, str] | None = None) -> PushResult:
    """Push the image `name` from the store to `dest` (default: `name` itself).

    With `compression`, uncompressed layers are compressed that way before
    upload, and (with `force_compression`) differently compressed ones too.
    `origins` maps blob digests to "domain/repo" where they are known to be (a
    registry cache): those are mounted rather than uploaded when the domain is
    the destination's, and may be absent from the store."""
    with store.writing():    # re-encoded layers are unnamed blobs until the push ends
        return _push(store, name, dest, options or Options(), progress or Quiet(),
                     compression, force_compression, origins)


def _push(store: Store, name: str, dest: str | None, options: Options, progress: Reporter,
          compression: str | None, force_compression: bool,
          origins: dict[str, str] | None) -> PushResult:
    top, names = _local_top(store, name)
    target = dest or (name if names or ":" in name or "/" in name else None)
    if target is None:
        raise PybuildError(f"{name}: give a destination reference to push an image ID to")
    ref = reference.parse(target)
    if ref.digest:
        raise PybuildError(f"{target}: push to a tag, not a digest")
    repo = ref.path
    top_obj = store.read_manifest(top)
    manifests: list[tuple[Descriptor, Manifest]] = []
    if isinstance(top_obj, Index):
        for desc in top_obj.manifests:
            if not store.blobs.has(desc.digest):
                raise NotFound(f"{name}: index {top.digest} lists {desc.platform or desc.digest} "
                               "which is not in the store (pull it with --all-platforms)")
            obj = store.read_manifest(desc)
            if not isinstance(obj, Manifest):
                raise InvalidImage(f"{name}: nested index {desc.digest} not supported")
            manifests.append((desc, obj))
    else:
        manifests.append((top, top_obj))
    if compression:
        manifests, top, top_obj = _recompressed(store, manifests, top, top_obj, compression,
                                                force_compression)
    pushed_before = {d: f"{ref.domain}/{r}" for d, r in _mount_sources(store, ref.domain,
                                                                        repo).items()}
    mounts = mount_candidates(ref.domain, repo, origins, pushed_before)
    blobs: dict[str, Descriptor] = {}
    for _d, m in manifests:
        for blob in [*m.layers, m.config]:
            if not store.blobs.has(blob.digest) and blob.digest not in mounts:
                raise NotFound(f"{name}: blob {blob.digest} is not in the store")
            blobs.setdefault(blob.digest, blob)

    with open_client(ref.domain, options) as client, progress:
        result = PushResult(name=str(ref), digest=top.digest)
        sent = upload_blobs(client, repo, list(blobs.values()),
                            lambda d: store.blobs.open(d.digest), mounts=mounts,
                            uploadable=lambda d: store.blobs.has(d.digest), progress=progress,
                            max_concurrent=options.max_concurrent)
        result.uploaded, result.mounted = sent.uploaded, sent.mounted
        result.existing, result.uploaded_bytes = sent.existing, sent.uploaded_bytes
        for desc, m in manifests:
            if desc is not top:
                client.put_manifest(repo, desc.digest, m.to_bytes(), m.media_type)
        data = top_obj.to_bytes()
        digest = client.put_manifest(repo, ref.tag or "latest", data, top_obj.media_type)
        if digest != top.digest:
            raise InvalidImage(f"{name}: stored manifest bytes hash to {digest}, not {top.digest}")
        progress.note(f"{ref.familiar}: pushed {digest}")
        return result


def _recompressed(store: Store, manifests: list[tuple[Descriptor, Manifest]], top: Descriptor,
                  top_obj: Manifest | Index, target: str, force: bool):
    """Apply --compression: new manifests (and index) where a layer was re-encoded."""
    from layerstore import compression as comp
    from layerstore import digest as dg
    from layerstore.registry import recompress

    if target not in comp.WRITABLE:
        raise PybuildError(f"unknown compression {target!r} (use gzip, zstd or none)")
    out, replaced = [], {}
    for desc, m in manifests:
        new = recompress.manifest(store, m, target, force)
        if new is not m:
            replaced[desc.digest] = new
            data = new.to_bytes()
            desc = Descriptor(new.media_type, dg.of_bytes(data), len(data), platform=desc.platform)
        out.append((desc, new))
    if isinstance(top_obj, Index):
        top_obj = recompress.index(top_obj, replaced)
        data = top_obj.to_bytes()
        if replaced:
            top = store.put_json(data, top_obj.media_type)
    else:
        top, top_obj = out[0]
    return out, top, top_obj


def upload_blobs(client: RegistryClient, repo: str, blobs: list[Descriptor],
                 opener: Callable[[Descriptor], BinaryIO], *,
                 mounts: dict[str, list[str]] | None = None,
                 uploadable: Callable[[Descriptor], bool] = lambda d: True,
                 progress: Reporter | None = None, max_concurrent: int = 6) -> Sent:
    """The one way blobs go up (image push, build --push, a build cache export): skip
    what `repo` has (HEAD), mount what another repository of the registry has (`mounts`,
    from `mount_candidates`), upload the rest from `opener(desc)`, in parallel. A blob
    not `uploadable` (a cache hit whose layer was never downloaded) goes up by mount
    only; if every mount is refused, that is an error naming the blob."""
    mounts = mounts or {}
    progress = progress or Quiet()

    def one(desc: Descriptor) -> tuple[str, int]:
        task = progress.task(desc.digest[7:19], desc.size)
        if client.blob_exists(repo, desc.digest):
            task.finish("exists")
            return "existing", 0
        location = None
        tried = mounts.get(desc.digest, [])
        for source in tried:
            try:
                location = client.mount_blob(repo, desc.digest, source)
                if location is None:
                    task.finish(f"mounted from {source}")
                    return "mounted", 0
            except RegistryError:
                location = None   # not allowed to read the source: try the next, or upload
        if not uploadable(desc):
            raise NotFound(f"{client.host}/{repo}: blob {desc.digest} is not in the store and "
                           f"the registry refused to mount it from "
                           f"{' or '.join(tried) or 'anywhere'}")
        sent = [0]

        def advance(n: int) -> None:
            sent[0] += n
            task.advance(n)
        client.upload_blob(repo, desc, lambda: opener(desc), progress=advance, location=location)
        task.finish("pushed")
        return "uploaded", sent[0]

    result = Sent()
    order = sorted(blobs, key=lambda d: -d.size)
    if not order:
        return result
    with ThreadPoolExecutor(max(1, min(max_concurrent, len(order))),
                            thread_name_prefix="push") as pool:
        futures = [pool.submit(one, d) for d in order]
        try:
            for f in futures:
                kind, n = f.result()
                setattr(result, kind, getattr(result, kind) + 1)
                result.uploaded_bytes += n
        except BaseException:
            client.cancel()
            for f in futures:
                f.cancel()
            raise
    return result
