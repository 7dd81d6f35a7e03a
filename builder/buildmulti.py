"""`build --platform linux/amd64,linux/arm64`: one build per platform, then one OCI image
index naming each platform's manifest, tagged and pushed as docker buildx does.

Each platform is a whole build of its own (its own cache keys: the platform is in them
through the base image chosen from an index, FROM scratch and TARGETPLATFORM), so a stage
`FROM --platform=$BUILDPLATFORM` runs natively once per target with that target's
TARGETARCH, as with buildx. Foreign platforms' RUN steps run under qemu-user
(sandbox/binfmt.py). The per-platform images are not left as dangling images: the index
holds them.

The platforms build at once, up to --jobs of them, each in a thread of its own, into one
progress (steps numbered once, labels prefixed with the platform as BuildKit's:
`#5 [linux/arm64 2/3] RUN uname -m`). The main thread only waits, so it is the one Ctrl-C
reaches: it cancels every platform's build (PlatformGroup.cancel -> Builder.interrupt);
a platform that fails cancels the others the same way, and its error is the build's.

What the builds share in the store, and what keeps them apart:
* blobs: written under unique ingest names, checked, renamed into place (a race renames
  identical bytes);
* snapshots: one unpack per layer in this process (SnapshotStore.ensure's per-chain
  lock); across processes the first rename wins;
* index.json (tags, untagged roots): every update under the store's flock (ROOT/lock);
* build cache records: one file per key, written atomically (unique temp, rename);
  ROOT/cache/roots (listed and written whole) and --cache-to exports (which merge into
  what the ref holds) are written by one platform at a time (`finishing`); the
  context-hash table is one object for all (`hashes`, under `hash_lock`);
* a base image: one resolve-or-pull per (image, platform) at a time (`pulling`);
* RUN steps' bridge: one BuildNetwork held for every platform.
"""

from __future__ import annotations

import contextlib
import dataclasses
import threading

from layerstore import mediatypes as mt
from layerstore.errors import PybuildError
from layerstore.model import Descriptor, Index, Platform

# outputs a multi-platform result can go to: the store (and a registry), or an OCI archive
# of the index; a docker-archive holds one platform, local/tar one filesystem
MULTI_OUTPUTS = ("image", "registry", "oci")


@dataclasses.dataclass
class MultiResult:
    index: Descriptor
    names: list[str]
    results: list          # BuildResult of each platform, in the order asked
    steps: int
    cached: int
    warnings: list[str]


def check_output(out: dict[str, str]) -> None:
    if out["type"] not in MULTI_OUTPUTS:
        raise PybuildError(f"--output type={out['type']}: holds one platform; a build for "
                           "several platforms goes to the store, a registry or type=oci")


class PlatformGroup:
    """What the per-platform builds of one `build --platform a,b` share: the step
    numbering and progress, the cancel, the RUN steps' bridge, and the locks that keep
    them from racing on the store's shared files (see the module doc)."""

    def __init__(self, store, progress) -> None:
        from builder.steps import copy as copystep
        from builder.steps.run import BuildNetwork

        self.progress = progress
        self.lock = threading.Lock()
        self.counter = 0
        self.totals: dict[str, int] = {}
        self.cancelled = threading.Event()
        self.builders: list = []
        self.network = BuildNetwork()
        self.hashes = copystep.FileHashes(store.root / "cache" / "context-hashes.json")
        self.hash_lock = threading.Lock()
        self.finishing = threading.Lock()
        self._pulls: dict[tuple, threading.Lock] = {}
        self._pulled: set[tuple] = set()
        # the work dirs of builds that were killed (no live process holds their lock):
        # once, before any platform's build makes its own
        from builder.sandbox.cgroups import remove_left

        store.snapshots.reclaim(reclaimed=remove_left)

    def next_step(self) -> int:
        with self.lock:
            self.counter += 1
            return self.counter

    def expect(self, platform: str, total: int) -> None:
        """Each platform's step count (a retry without --cache-from says it again)."""
        with self.lock:
            self.totals[platform] = total
            self.progress.expect(sum(self.totals.values()))

    def join(self, builder) -> None:
        with self.lock:
            self.builders.append(builder)
        if self.cancelled.is_set():       # registered first, checked after: never missed
            builder.interrupt()

    def leave(self, builder) -> None:
        with self.lock:
            if builder in self.builders:
                self.builders.remove(builder)

    def cancel(self) -> None:
        """Ctrl-C, or a platform failed: every platform's build stops."""
        self.cancelled.set()
        with self.lock:
            builders = list(self.builders)
        for b in builders:
            b.interrupt()

    @contextlib.contextmanager
    def pulling(self, key: tuple):
        """One resolve-or-pull of `key` at a time; yields whether it is the first."""
        with self.lock:
            lock = self._pulls.setdefault(key, threading.Lock())
        with lock:
            with self.lock:
                first = key not in self._pulled
                self._pulled.add(key)
            yield first

    def close(self) -> None:
        self.network.close()


def build_platforms(store, opts, platforms: list[str], progress, used=None) -> MultiResult:
    """Build `opts` once per platform, up to `opts.jobs` at once, into one `progress`,
    then write and tag the index. Raises the first failing platform's error (the others
    cancelled), or KeyboardInterrupt once every build has stopped after a Ctrl-C."""
    import concurrent.futures as cf

    from builder.build import build

    group = PlatformGroup(store, progress)
    futures: list[cf.Future] = []
    interrupted = False
    error: BaseException | None = None
    try:
        with cf.ThreadPoolExecutor(max_workers=max(1, min(opts.jobs, len(platforms))),
                                   thread_name_prefix="platform") as pool:
            try:
                for p in platforms:
                    one = dataclasses.replace(opts, platform=p, tags=[])
                    futures.append(pool.submit(build, store, one, progress, group))
            except KeyboardInterrupt:
                interrupted = True
                group.cancel()
            pending = set(futures)
            while pending:
                try:
                    if interrupted:
                        for f in pending:
                            f.cancel()     # queued behind --jobs: never starts
                    done, pending = cf.wait(pending, return_when=cf.FIRST_EXCEPTION)
                    failed = [f for f in futures if f in done and not f.cancelled()
                              and f.exception() is not None]
                    if failed and not group.cancelled.is_set():
                        # the first to fail is the build's error; the others stop
                        error = failed[0].exception()
                        group.cancel()
                        for f in pending:
                            f.cancel()
                except KeyboardInterrupt:
                    # the main thread's: every platform stops, and we wait for their
                    # threads to tear down what they made (a second Ctrl-C too)
                    interrupted = True
                    group.cancel()
    finally:
        group.close()
    if interrupted:
        raise KeyboardInterrupt
    if error is not None:
        raise error
    results = [f.result() for f in futures]
    if used is not None:
        from builder.storage import note_build

        for r in results:
            note_build(used, r)
    manifests = []
    for r in results:
        cfg = store.read_config(store.read_manifest(r.manifest))
        manifests.append(Descriptor(r.manifest.media_type, r.manifest.digest, r.manifest.size,
                                    platform=Platform(cfg.os or "linux", cfg.architecture,
                                                      cfg.variant)))
    index = Index(manifests=manifests, media_type=mt.OCI_INDEX)
    top = store.put_json(index.to_bytes(), mt.OCI_INDEX)
    names = [store.tag(t, top) for t in opts.tags]
    if not names:
        store.refs.add_untagged(top)
    for r in results:       # reachable through the index now: not dangling images
        store.refs.remove_untagged(r.manifest.digest)
    warnings = [w for r in results for w in r.warnings]
    return MultiResult(top, names, results, sum(r.steps for r in results),
                       sum(r.cached for r in results), list(dict.fromkeys(warnings)))
