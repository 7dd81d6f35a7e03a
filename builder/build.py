"""The build solver: Dockerfile + context -> image in the store.

`build(store, options)` parses and plans the Dockerfile with the frontend
(builder.dockerfile), then builds the stages the target needs, independent
ones in parallel (bounded by `jobs`). Each step is expanded in its stage's
scope and handed to its op (builder/steps/ops.py `op_for`: MetaOp in
steps/meta.py, WorkdirOp in steps/workdir.py, CopyOp in steps/copyop.py, RunOp
in steps/run.py). The op gives the step's content key (parent state, step as
expanded, build args it uses, checksums of its inputs); a key found in the
local cache, then in each --cache-from source (`Builder.cached`), reuses that
state without running anything; a miss executes the op, which records the
result through the Builder's services (`workspace`, `commit_upper`,
`meta_state`, ...; the `Services` protocol of steps/base.py). The solver holds
no step-specific logic: it keeps the stage graph (waiting for --from stages),
the caches (local and remote), progress, the output image and --cache-to.
Nothing is tagged until every stage succeeded.
"""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
import dataclasses
import hashlib
import threading
from dataclasses import dataclass, field
from pathlib import Path

from builder.buildopts import BuildOptions, check_network, locate_dockerfile, read_dockerfile
from builder.cache import BuildCache
from builder.context import Context
from builder.dockerfile import instructions as ins
from builder.dockerfile.document import parse_dockerfile
from builder.dockerfile.errors import DockerfileError, ExpansionError
from builder.dockerfile.expand import ShellLex
from builder.dockerfile.stages import Stage, StageGraph, plan_stages, replay_onbuild
from builder.progress import Progress, source_excerpt
from builder.rootview import in_overlay
from builder.steps import copy as copystep
from builder.steps import download
from builder.steps import meta
from builder.steps import mounts as mountstep
from builder.steps import run as runstep
from builder.steps.base import BuildError, DependencyFailed, State, StepContext, clone
from builder.steps.ops import op_for
from layerstore import digest as dg
from layerstore import reference, snapshots, workdirs
from layerstore.errors import InvalidReference, PybuildError
from layerstore.humanize import rfc3339_now
from layerstore.model import CONFIG_LIMIT, ContainerConfig, Descriptor, History, ImageConfig
from layerstore.resolver import remove_tree


class RemoteCacheFailed(BuildError):
    """A --cache-from source failed after it gave hits: a layer of a hit cannot be
    fetched or does not match its diff ID. `build` starts again without the sources."""


def _check_entitlements(stages: list[Stage], opts: BuildOptions, filename: str) -> None:
    """Refuse the whole build when a step it would run needs an entitlement not granted
    (host network) or one pybuild never grants (security.insecure), as BuildKit validates
    the graph before solving. ONBUILD triggers of a base image, known only once it is
    here, are checked before the first of them runs."""
    check_network(opts.network, opts.allow, "--network host (every RUN step)")
    for stage in stages:
        runstep.check_entitlements([*stage.triggers, *stage.instructions], opts, filename)


def _wait(fut: cf.Future):
    try:
        return fut.result()
    except BaseException as exc:  # noqa: BLE001 - reported by the stage that failed
        raise DependencyFailed(str(exc)) from None


@dataclass
class BuildResult:
    image_id: str
    manifest: Descriptor
    names: list[str]
    steps: int = 0
    cached: int = 0
    warnings: list[str] = field(default_factory=list)
    memo: dict | None = None  # what builder/buildmemo.py needs to answer this build again
    origins: dict[str, str] = field(default_factory=dict)  # blob digest -> "domain/repo" holding it
    # what the build used ({"blobs": [...], "entries": [...]}): a --max-storage prune keeps it
    used: dict = field(default_factory=dict)


def _bounded(cfg: ImageConfig) -> ImageConfig:
    """A config the store will read back: one past its limit (150 LABELs of 120 KB each,
    expanded from one ARG) was written, tagged, and then "not found" by every command."""
    cfg.raw = None
    size = len(cfg.to_bytes())
    if size > CONFIG_LIMIT:
        raise BuildError(f"the image config would be {size} bytes, more than the "
                         f"{CONFIG_LIMIT} an image may have (ENV, LABEL and history too large)")
    return cfg


class Builder:
    def __init__(self, store, opts: BuildOptions, progress: Progress, group=None) -> None:
        self.store = store
        self.opts = opts
        self.progress = progress
        # the other platforms' builds of one `--platform a,b` build (builder/buildmulti.py
        # PlatformGroup): one step numbering, one progress, one cancel, the store's
        # shared files written by one at a time
        self.group = group
        self.cache = BuildCache(store.root)
        self._scratch: workdirs.WorkDir | None = None
        self.counter = 0
        self.counter_lock = threading.Lock()
        self.steps_run = 0
        self.steps_cached = 0
        if group is None:
            # the work dirs of builds that were killed: no live process holds their lock
            from builder.sandbox.cgroups import remove_left

            store.snapshots.reclaim(reclaimed=remove_left)
            self.hashes = copystep.FileHashes(store.root / "cache" / "context-hashes.json")
            self.hash_lock = threading.Lock()
        else:
            # one table for every platform: each saving its own copy lost the others'
            self.hashes, self.hash_lock = group.hashes, group.hash_lock
        self.failed = threading.Event()
        # Ctrl-C: the running steps' containers are killed, and one whose container is
        # still starting kills it as soon as it has one (see RunOp.execute)
        self.interrupted = threading.Event()
        self.source_text = ""     # the Dockerfile, for the failing step's excerpt
        self.running: dict = {}   # containers of RUN steps in progress, by id()
        self.results: dict[int, cf.Future] = {}    # each stage's, once submitted
        self.new_roots = False    # a step made a layer: ROOT/cache/roots must be rewritten
        self.base_counts: dict[int, int] = {}
        # for the whole-build memo: what this build depended on and showed
        self.keys_used: list[str] = []
        self.blobs_used: set[str] = set()
        self.bases: list[tuple[str, str]] = []     # (ref name in index.json or "", digest)
        self.shown: list[tuple[int, str, str, bool]] = []   # (n, label, text, is FROM)
        self.volatile = False     # an input the memo cannot vouch for (ADD <url>, ID lookup)
        self.views: dict[str, Path] = {}    # shared read-only context views, by content
        self.views_lock = threading.Lock()
        # remote build cache (builder/remotecache): the --cache-from sources, asked after
        # the local cache; the hits they gave (key -> state, whether it adds a layer),
        # written to the local cache once their blobs are here; each stage's states and
        # the stage it starts from, for --cache-to; the cache mounts steps used
        self.remote = None
        if opts.cache_from and not opts.no_cache:
            from builder.remotecache.importer import Sources
            from layerstore.platforms import parse_platform

            self.remote = Sources(opts.cache_from, store.blobs, options=opts.registry_options,
                                  platform=parse_platform(opts.platform) if opts.platform
                                  else None, select=store.select, warn=self.warn)
        self.remote_hits: dict[str, tuple[State, bool]] = {}
        self.stage_states: dict[int, list[State]] = {}
        self.stage_parents: dict[int, int | None] = {}
        self.mount_ids: dict[str, set[str]] = {}    # platform -> cache mount ids
        self.mount_providers: dict = {}   # layer digest -> fetch, of carried mount artifacts
        self.cache_warnings: list[str] = []

    def release(self) -> None:
        """Remove this build's scratch dir (step work dirs go with their steps)."""
        with self.counter_lock:
            scratch, self._scratch = self._scratch, None
        if scratch is not None:
            scratch.release()

    # --- plan ---------------------------------------------------------------

    def load(self) -> tuple[StageGraph, object, Context]:
        o = self.opts
        if o.dockerfile_text is not None:
            text, name = o.dockerfile_text, "Dockerfile"
            df_path = None
        else:
            df_path = locate_dockerfile(o.context, o.dockerfile)
            assert df_path is not None
            text = read_dockerfile(o.context, df_path)
            name = Path(df_path).name
        self.source_text = text.decode("utf-8", "replace") if isinstance(text, bytes) else text
        df = parse_dockerfile(text, name)
        graph = plan_stages(df, o.build_args, o.target, o.platform)
        ctx = Context.open(o.context, df_path)
        return graph, df, ctx

    # --- helpers ------------------------------------------------------------

    def next_step(self) -> int:
        if self.group is not None:      # `#5` is one step of one platform, never two
            return self.group.next_step()
        with self.counter_lock:
            self.counter += 1
            return self.counter

    def lowers(self, state: State) -> list[Path]:
        """The state's layers as snapshots (each unpacked once): lowers, bottom first."""
        layers, diff_ids = state.layers, state.config.diff_ids
        if len(layers) != len(diff_ids):
            raise BuildError(f"image has {len(layers)} layers but {len(diff_ids)} diff IDs")
        try:
            return self.store.snapshots.chain(diff_ids, lambda i: self.open_layer(layers[i]))
        except RemoteCacheFailed:
            raise
        except PybuildError as exc:
            # a layer a cache source gave that does not unpack to its diff ID
            if self.remote is not None and any(l.digest in self.remote.fetched_digests
                                               for l in layers):
                raise RemoteCacheFailed(f"a build cache layer is not what its record says: "
                                        f"{str(exc).splitlines()[0]}") from None
            raise

    # --- remote build cache (builder/remotecache) ------------------------------

    def warn(self, message: str) -> None:
        with self.counter_lock:
            if message not in self.cache_warnings:
                self.cache_warnings.append(message)

    def open_layer(self, desc: Descriptor):
        """A layer blob of a state, fetched first if a remote cache hit left it remote."""
        self.ensure_local([desc])
        return self.store.blobs.open(desc.digest)

    def ensure_local(self, layers: list[Descriptor], diff_ids: list[str] | None = None) -> None:
        """Fetch the layers a remote cache hit left in its source: a miss is about to
        unpack them or build on them, or the output needs their bytes. With `diff_ids`
        (the output's), each fetched layer is checked against its diff ID here, since
        nothing unpacks it: an image whose config lies about its layers never lands."""
        if self.remote is None:
            return
        todo = [(i, d) for i, d in enumerate(layers) if not self.store.blobs.has(d.digest)
                and self.remote.can_fetch(d.digest)]
        if diff_ids is not None:    # fetched earlier in this build, not unpacked since
            todo += [(i, d) for i, d in enumerate(layers)
                     if d.digest in self.remote.fetched_digests and (i, d) not in todo]

        def one(i: int, desc: Descriptor) -> None:
            try:
                self.remote.fetch(desc)
                if diff_ids is None:
                    return
                from layerstore.archive import diff_id_of

                _, actual = diff_id_of(self.store, desc.digest, f"layer {desc.digest}")
            except PybuildError as exc:
                raise RemoteCacheFailed(str(exc).splitlines()[0]) from None
            if actual != diff_ids[i]:
                raise RemoteCacheFailed(f"layer {desc.digest} of a build cache hit has "
                                        f"diff ID {actual}, its record says {diff_ids[i]}")
        if len(todo) <= 1:
            for i, desc in todo:
                one(i, desc)
            return
        # several at once, as a pull does (the output's layers of a fully cached build)
        with cf.ThreadPoolExecutor(min(len(todo), 6), thread_name_prefix="cache-fetch") as pool:
            for f in [pool.submit(one, i, d) for i, d in todo]:
                f.result()

    def stage_records(self, target: int, mode: str) -> list:
        """The cache records to export: the states of the steps this build ran or hit,
        for mode=min on the path to the final image (the target stage and the stages
        it starts FROM), for mode=max in every stage."""
        from builder.remotecache.records import Record

        if mode == "max":
            indexes = sorted(self.stage_states)
        else:
            indexes, idx = [], target
            while idx is not None and idx not in indexes:
                indexes.append(idx)
                idx = self.stage_parents.get(idx)
        out = []
        for idx in indexes:
            for st in self.stage_states.get(idx, []):
                out.append(Record(st.key, clone(st.config).to_bytes(), list(st.layers)))
        return out

    def export_cache(self, result: BuildResult, target: int) -> None:
        """Every --cache-to but inline (which rides in the image, see finish()). A
        failed export fails the build unless it says ignore-error=true."""
        origins = dict(self.remote.origins()) if self.remote is not None else {}
        created = rfc3339_now(self.opts.source_date_epoch) \
            if self.opts.source_date_epoch is not None else None
        for spec in self.opts.cache_to:
            if spec.type == "inline":
                continue
            # imported here: it pulls in the registry client (requests) that most builds
            # never use
            from builder.remotecache.export import export

            try:
                mounts = self.mount_entries() if spec.cache_mounts else []
                done = export(spec, self.stage_records(target, spec.mode),
                              provide=self.provide_blob,
                              opener=lambda d: self.store.blobs.open(d.digest),
                              origins=origins, options=self.opts.registry_options,
                              created=created, mounts=mounts, mount_blobs=self.mount_blobs,
                              read_local=lambda d: self.store.blobs.read(d.digest),
                              platform=self._platform_text())
            except RemoteCacheFailed:
                raise
            except (PybuildError, OSError) as exc:
                text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
                if isinstance(exc, OSError) and exc.strerror:
                    text = f"{exc.strerror}: {exc.filename}" if exc.filename else exc.strerror
                if not spec.ignore_error:
                    raise BuildError(f"--cache-to {spec.name}: export failed: {text}") from None
                self.warn(f"--cache-to {spec.name}: export failed (ignore-error=true): {text}")
                continue
            s = done.sent
            self.progress.note(f"exported cache to {spec.name}: {done.records} records, "
                               f"{len(done.layers)} layers ({s.uploaded} uploaded, "
                               f"{s.mounted} mounted, {s.existing} already there), "
                               f"manifest {done.digest}")
            if spec.origin:
                for layer in done.layers:
                    origins.setdefault(layer.digest, spec.origin)
                    result.origins.setdefault(layer.digest, spec.origin)

    def _platform_text(self) -> str:
        """The normalized platform this build's target was built for."""
        from layerstore.platforms import host_platform, parse_platform

        return str(parse_platform(self.opts.platform) if self.opts.platform
                   else host_platform())

    def mount_entries(self) -> list[dict]:
        """The cache-mount artifacts of the mounts this build's RUN steps used
        (builder/remotecache/mounts.py packs them into the store)."""
        from builder.remotecache import mounts

        # ids whose dirs are not here (their steps all hit) keep the sources' artifacts:
        # their layers are fetched only if the export target lacks them (provide_blob)
        carried = []
        if self.remote is not None:
            for src, entries in self.remote.mount_sources():
                carried.append((entries, lambda d, src=src: src.backend.fetch_blob(
                    d, self.store.blobs)))
        out: list[dict] = []
        for platform, ids in sorted(self.mount_ids.items()):
            out += mounts.collect(self.store, ids, platform, compression=self.opts.compression,
                                  warn=self.warn, carried=carried,
                                  providers=self.mount_providers)
        return out

    def provide_blob(self, desc: Descriptor) -> None:
        """A blob an export uploads, made local first: a layer a remote hit left in its
        source, or the layer of a cache-mount artifact carried over from a source."""
        fetch = self.mount_providers.get(desc.digest)
        if fetch is not None and not self.store.blobs.has(desc.digest):
            fetch(desc)
        else:
            self.ensure_local([desc])

    def mount_blobs(self, desc: Descriptor) -> list[Descriptor]:
        from builder.remotecache import mounts

        return mounts.artifact_blobs(self.store, desc)

    def restore_mounts(self, ids: list[str], platform: str) -> None:
        """Before a step mounts cache `ids`: fill the ones absent or empty here from
        the first cache source that carries them (--cache-from)."""
        if self.remote is None or not ids:
            return
        from builder.remotecache import mounts

        parent = mounts.mounts_dir(self.store)
        wanted = [i for i in ids if mounts.is_restorable(mountstep.cache_path(parent, i))]
        if not wanted:
            return
        for src, entries in self.remote.mount_sources():
            def fetch(desc: Descriptor, src=src) -> None:
                src.backend.fetch_blob(desc, self.store.blobs)
            mounts.restore(self.store, entries, fetch, ids=wanted, platform=platform,
                           warn=self.warn)

    def keep_remote_hits(self) -> None:
        """Remote cache hits whose blobs are all here now go into the local cache, so
        the next build on this machine hits them locally."""
        for key, (st, adds_layer) in sorted(self.remote_hits.items()):
            if not all(self.store.blobs.has(l.digest) for l in st.layers):
                continue
            manifest = self.store.commit_image(clone(st.config), list(st.layers)).digest \
                if adds_layer else None
            self.cache.put(key, clone(st.config), list(st.layers), manifest)
            self.new_roots = self.new_roots or adds_layer

    @property
    def scratch(self) -> Path:
        """This build's own scratch dir, ROOT/tmp/build-<hex> (ADD downloads), made on
        first use; owned as a step's work dir is, so a killed build's is reclaimed."""
        with self.counter_lock:
            if self._scratch is None:
                self._scratch = workdirs.create(self.store.root / "tmp", snapshots.WORK_PREFIX)
            return self._scratch.path

    def context_view(self, sel, digest: str) -> Path:
        """A read-only bind mount's copy of context content, made once per build and
        content (2000 files / 40 MB took ~0.4 s and its space again for every RUN step).
        It lives in this build's scratch dir; the steps only ever see it read-only."""
        key = f"{digest}-{int(sel.items[0].is_dir)}"
        with self.views_lock:
            view = self.views.get(key)
            if view is None:
                parent = self.scratch / "views"
                parent.mkdir(mode=0o700, exist_ok=True)
                try:
                    copystep.materialize(sel, parent, key)
                except BaseException:
                    remove_tree(parent / key)     # a context file changed meanwhile
                    raise
                view = self.views[key] = parent / key
            return view

    def now(self) -> str:
        return rfc3339_now(self.opts.source_date_epoch)

    def workspace(self, state: State, volatile: bool = False) -> snapshots.Workspace:
        """The snapshotter's prepare: a fresh upper over `state`'s layers, in a work dir
        (ROOT/containers/build-<hex>) that this process owns until `release`."""
        return self.store.snapshots.prepare(self.lowers(state), volatile=volatile)

    def commit_upper(self, state: State, upper: Path, created_by: str, key: str,
                     comment: str | None = None) -> State:
        self.ensure_local(state.layers)   # the new state's manifest names them all
        layer, diff_id = self.store.commit_layer(upper, compression=self.opts.compression,
                                                 overlay=True,
                                                 source_date_epoch=self.opts.source_date_epoch)
        cfg = clone(state.config)
        created = self.now()
        cfg.created = created
        cfg.diff_ids = list(cfg.diff_ids) + [diff_id]
        cfg.history = list(cfg.history) + [History(created=created, created_by=created_by,
                                                   author=cfg.author, comment=comment)]
        layers = list(state.layers) + [layer]
        _bounded(cfg)
        self.blobs_used.update(l.digest for l in layers)
        # the upper becomes the new layer's snapshot: no unpacking of the blob again
        self.store.snapshots.commit(upper, dg.chain_ids(cfg.diff_ids)[-1])
        manifest = self.store.commit_image(clone(cfg), layers)
        new = State(cfg, layers, key, manifest.digest)
        self.cache.put(key, cfg, layers, manifest.digest)
        self.new_roots = True
        return new

    def meta_state(self, state: State, cfg: ImageConfig, created_by: str, key: str) -> State:
        created = self.now()
        cfg.created = created
        cfg.history = list(cfg.history) + [History(created=created, created_by=created_by,
                                                   author=cfg.author, empty_layer=True)]
        new = State(_bounded(cfg), list(state.layers), key, None)
        self.cache.put(key, cfg, new.layers, None)
        return new

    def cached(self, key: str, parent: State | None = None, use: bool = True) -> State | None:
        """`use`: False for a stage --no-cache-filter names (its steps run again)."""
        self.keys_used.append(key)  # every step asks here first, hit or not
        if self.opts.no_cache or not use:
            return None
        e = self.cache.get(key, self.store, None if parent is None else
                           (parent.layers, parent.config.diff_ids))
        if e is None:
            return self.remote_cached(key, parent)
        self.blobs_used.update(l.digest for l in e.layers)
        return State(e.config, e.layers, key, e.manifest)

    def remote_cached(self, key: str, parent: State | None) -> State | None:
        """Each --cache-from source in order. The state's layers may stay remote."""
        if self.remote is None:
            return None
        hit = self.remote.lookup(key, None if parent is None else
                                 (parent.layers, parent.config.diff_ids))
        if hit is None:
            return None
        cfg, layers = hit
        st = State(cfg, layers, key, None)
        adds_layer = parent is not None and len(layers) > len(parent.layers)
        with self.counter_lock:
            self.remote_hits[key] = (st, adds_layer)
        self.blobs_used.update(l.digest for l in layers)
        return st

    # --- stages -------------------------------------------------------------

    def base_state(self, stage: Stage, results: dict[int, cf.Future]) -> tuple[State, list]:
        """The state a stage starts from and ONBUILD triggers to replay."""
        base = stage.base
        if base.kind == "stage":
            st: State = _wait(results[base.stage])
            cfg = clone(st.config)
            triggers = []
            if cfg.config.OnBuild:
                cfg.config = dataclasses.replace(cfg.config, OnBuild=None)
            return State(cfg, list(st.layers), st.key, st.manifest), triggers
        if base.kind == "scratch":
            from layerstore.platforms import host_platform, parse_platform

            plat = parse_platform(stage.platform or self.opts.platform) \
                if (stage.platform or self.opts.platform) else host_platform()
            cfg = ImageConfig(architecture=plat.architecture, os=plat.os, variant=plat.variant,
                              config=ContainerConfig(Env=[meta.PATH_ENTRY]))
            # layers are stored compressed: the compression is part of every key below
            key = hashlib.sha256(f"scratch {plat} {self.opts.compression}".encode()).hexdigest()
            return State(cfg, [], key), []
        image = self.resolve_image(base.ref, stage.platform)
        cfg = clone(image.config)
        # an image built with --cache-to type=inline: its records are not the new one's
        from builder.remotecache.records import INLINE_FIELD
        cfg.extra.pop(INLINE_FIELD, None)
        triggers = list(cfg.config.OnBuild or [])
        if triggers:
            cfg.config = dataclasses.replace(cfg.config, OnBuild=None)
        if not cfg.config.Env or not any(e.startswith("PATH=") for e in cfg.config.Env):
            # BuildKit makes sure PATH is always set, appending the default
            cfg.config = dataclasses.replace(cfg.config, Env=list(cfg.config.Env or []) + [meta.PATH_ENTRY])
        key = hashlib.sha256(f"image {image.descriptor.digest} {self.opts.compression}".encode()
                             ).hexdigest()
        return State(cfg, list(image.manifest.layers), key), triggers

    def resolve_image(self, ref: str, platform: str | None = None):
        from layerstore.platforms import parse_platform
        from layerstore.registry import ensure_image

        plat = parse_platform(platform or self.opts.platform) if (platform or self.opts.platform) else None
        policy = "always" if self.opts.pull else "missing"
        if self.group is None:
            return self._noted(ref, ensure_image(self.store, ref, platform=plat, policy=policy))
        # two platforms' builds FROM the same image and platform (a stage FROM
        # --platform=$BUILDPLATFORM): one pulls it, the other then finds it here
        with self.group.pulling((ref, str(plat), policy)) as first:
            if self.interrupted.is_set():
                raise BuildError("build cancelled")
            return self._noted(ref, ensure_image(self.store, ref, platform=plat,
                                                 policy=policy if first else "missing"))

    def _noted(self, ref: str, image):
        """Remember how `ref` resolved, so the memo can tell whether it still would."""
        try:
            name = str(reference.parse(ref))
        except InvalidReference:
            name = ""
        by_name = self.store.refs.find(name) if name else None
        if by_name is not None and by_name.digest == image.top.digest:
            self.bases.append((name, image.top.digest))
        elif "@" in name:
            self.bases.append(("", image.top.digest))   # by digest: immutable
        else:
            self.volatile = True                        # by image ID (prefix)
        self.blobs_used.update(l.digest for l in image.manifest.layers)
        return image

    def build_stage(self, stage: Stage, graph: StageGraph, df, ctx: Context,
                    results: dict[int, cf.Future]) -> State:
        total = 1 + len(stage.instructions)
        # BuildKit's labels: `[2/7]`, the stage's name first only when there are several
        # (`[builder 2/7]`, `[stage-1 2/7]`), numbers padded to the total's width
        label = (stage.name or f"stage-{stage.index}") if len(graph.stages) > 1 else ""
        if self.group is not None:
            label = f"{self.platform_label(stage)} {label}".rstrip()
        n = self.next_step()
        text = f"FROM {stage.from_.image}" + (f" AS {stage.name}" if stage.name else "")
        first = _position(label, 1, total)
        self.progress.start(n, first, text)
        self.shown.append((n, first, text, True))
        fut = results.get(base.stage) if (base := stage.base).kind == "stage" else None
        try:
            with self.waiting_for(n, fut):
                state, triggers = self.base_state(stage, results)
        except BaseException:
            if self.interrupted.is_set():
                self.progress.cancel(n)     # its pull stopped by Ctrl-C
            raise
        # layers that came from an image (not built here): --squash keeps them as they are
        self.base_counts[stage.index] = (self.base_counts.get(base.stage, 0) if base.kind == "stage"
                                         else len(state.layers))
        self.progress.done(n)
        runner = _StageRunner(self, stage, graph, df, ctx, results, state, label, total)
        self.stage_parents[stage.index] = base.stage if base.kind == "stage" else None
        self.stage_states[stage.index] = runner.history
        for t in stage.triggers:
            runner.step(t, raw=t, trigger=True)
        if triggers:
            # a base image's triggers are reported at the FROM line that brought them
            replayed = [dataclasses.replace(t, line=stage.from_.line)
                        for t in _replay(triggers, df.escape)]
            # known only now that the base is here: checked before any of them runs
            runstep.check_entitlements(replayed, self.opts, df.filename)
            for t in replayed:
                runner.step(t, raw=t, trigger=True)
        runner.args = {}
        raws = self.raw_bodies[stage.index]
        for k, (planned, raw) in enumerate(zip(stage.instructions, raws)):
            if self.failed.is_set():
                raise DependencyFailed("build cancelled: another stage failed")
            runner.step(planned, raw=raw, position=k + 2)
        return runner.state

    def platform_label(self, stage: Stage) -> str:
        """BuildKit's label prefix in a multi-platform build: the platform the stage runs
        as, and the target after `->` when that differs (`FROM --platform=$BUILDPLATFORM`:
        `linux/amd64->arm64`)."""
        from layerstore.platforms import host_platform, parse_platform

        target = parse_platform(self.opts.platform) if self.opts.platform else host_platform()
        runs = parse_platform(stage.platform) if stage.platform else target
        if str(runs) == str(target):
            return str(runs)
        if runs.os == target.os:
            return f"{runs}->{str(target).split('/', 1)[1]}"
        return f"{runs}->{target}"

    def interrupt(self) -> None:
        """Ctrl-C (or, in a multi-platform build, another platform failing): queued
        stages never start, running containers are killed, pulls stop; each step's
        thread then tears down what it made and shows CANCELED."""
        self.interrupted.set()
        self.failed.set()
        for f in list(self.results.values()):
            f.cancel()
        for c in list(self.running.values()):
            c.kill()
        from layerstore.registry.client import cancel_all

        cancel_all()     # a pull under way (FROM, --cache-from) stops too

    @contextlib.contextmanager
    def waiting_for(self, n: int, fut: cf.Future | None):
        """Step `n` waits for another stage's result: shown as waiting, not running."""
        waits = fut is not None and not fut.done()
        if waits:
            self.progress.waiting(n)
        try:
            yield
        finally:
            if waits:
                self.progress.waiting(n, False)

    # --- whole build --------------------------------------------------------

    def run(self) -> BuildResult:
        graph, df, ctx = self.load()
        self.raw_bodies = _raw_bodies(df)
        needed = graph.needed()
        total = sum(1 + len(s.triggers) + len(s.instructions) for s in needed)
        if self.group is not None:
            self.group.expect(self._platform_text(), total)
        else:
            self.progress.expect(total)
        _check_entitlements(needed, self.opts, df.filename)   # before any step runs
        results = self.results
        if self.interrupted.is_set():     # cancelled before it began: no step starts
            raise BuildError("build cancelled")
        with self.store.writing():
            with cf.ThreadPoolExecutor(max_workers=max(1, self.opts.jobs)) as pool:
                for s in needed:
                    results[s.index] = pool.submit(self._guarded, s, graph, df, ctx, results)
                errors = []
                try:
                    for s in needed:
                        try:
                            results[s.index].result()
                        except Exception as exc:  # noqa: BLE001 - first real error reported
                            self.failed.set()
                            errors.append(exc)
                except KeyboardInterrupt:
                    # Ctrl-C: stop queued steps, kill running containers; their threads
                    # tear down what they made before the pool lets us go
                    self.interrupt()
                    raise
            if errors:
                real = [e for e in errors if not isinstance(e, DependencyFailed) and not (
                    isinstance(e, BuildError) and str(e).startswith("build cancelled"))]
                raise (real or errors)[0]
            final: State = results[graph.target].result()
            # several platforms: one at a time from here (their --cache-to exports merge
            # into one ref, and ROOT/cache/roots is listed and written whole)
            with self.group.finishing if self.group is not None else contextlib.nullcontext():
                with self.hash_lock:
                    self.hashes.save()
                inline = self.stage_records(graph.target, "min") \
                    if any(s.type == "inline" for s in self.opts.cache_to) else None
                result = self.finish(final, self.base_counts.get(graph.target, 0), inline)
                self.export_cache(result, graph.target)
                self.keep_remote_hits()
                if self.new_roots or not (self.cache.dir / "roots").exists():
                    self.cache.write_roots()
        result.warnings = list(graph.warnings) + self.cache_warnings
        if self.cache_warnings:
            self.volatile = True    # the memo would repeat them for ever: no record
        if self.remote is not None:
            for digest, origin in self.remote.origins().items():
                result.origins.setdefault(digest, origin)
        result.used = {"blobs": sorted(self.blobs_used | {l.digest for l in final.layers}),
                       "entries": list(dict.fromkeys(self.keys_used))}
        if not self.volatile:
            self.blobs_used.update(l.digest for l in final.layers)
            result.memo = {"bases": sorted(set(self.bases)), "entries": list(dict.fromkeys(self.keys_used)),
                           "blobs": sorted(self.blobs_used), "steps": sorted(self.shown)}
        return result

    def _guarded(self, stage, graph, df, ctx, results):
        try:
            return self.build_stage(stage, graph, df, ctx, results)
        except BaseException:
            self.failed.set()
            raise

    def finish(self, final: State, base_count: int = 0, inline: list | None = None) -> BuildResult:
        from builder.remotecache.records import INLINE_FIELD, inline_records

        cfg = clone(final.config)
        cfg.extra.pop(INLINE_FIELD, None)
        layers = list(final.layers)
        # the output: the final image's layers, and only those
        self.ensure_local(layers, list(cfg.diff_ids))
        if self.opts.labels:
            labels = dict(cfg.config.Labels or {})
            labels.update(self.opts.labels)
            cfg.config = dataclasses.replace(cfg.config, Labels=labels)
        if self.opts.squash and len(layers) - base_count > 1:
            cfg, layers = self.squash(cfg, layers, base_count)
        _bounded(cfg)
        if inline is not None:
            # --cache-to type=inline: the final chain's records ride in the config
            doc = inline_records(inline, layers)
            if doc is not None:
                cfg.extra[INLINE_FIELD] = doc
                cfg.raw = None
                size = len(cfg.to_bytes())
                if size > CONFIG_LIMIT:
                    del cfg.extra[INLINE_FIELD]
                    cfg.raw = None
                    self.warn(f"--cache-to type=inline: the records would make the image config "
                              f"{size} bytes, more than {CONFIG_LIMIT}: exported without them")
        manifest = self.store.commit_image(cfg, layers, annotations=self.opts.annotations or None)
        names = []
        for t in self.opts.tags:
            names.append(self.store.tag(t, manifest))
        if not names:
            self.store.refs.add_untagged(manifest)
        image_id = self.store.read_manifest(manifest).config.digest
        return BuildResult(image_id, manifest, names, self.steps_run, self.steps_cached)

    def squash(self, cfg: ImageConfig, layers: list[Descriptor],
               base_count: int) -> tuple[ImageConfig, list[Descriptor]]:
        """Merge the layers this build made into one; the base image's layers stay.

        The new layers are applied, in order, onto an overlay of the base: the
        overlay's upper dir is then exactly their combined change, whiteouts included.
        """
        self.ensure_local(layers)
        base = State(cfg, layers[:base_count], "")
        base.config = dataclasses.replace(cfg, diff_ids=cfg.diff_ids[:base_count])
        ws = self.workspace(base)
        try:
            blobs = [(str(self.store.blobs.path(l.digest)), d)
                     for l, d in zip(layers[base_count:], cfg.diff_ids[base_count:])]
            in_overlay([ws.plan], _apply_blobs, blobs, scratch=ws.dir)
            layer, diff_id = self.store.commit_layer(ws.upper, compression=self.opts.compression,
                                                     overlay=True,
                                                     source_date_epoch=self.opts.source_date_epoch)
        finally:
            ws.release()
        cfg.diff_ids = cfg.diff_ids[:base_count] + [diff_id]
        # history: the base's entries as they were, the build's as empty but the last
        hist, seen = [], 0
        for h in cfg.history:
            if not h.empty_layer and seen < base_count:
                seen += 1
                hist.append(h)
            else:
                hist.append(dataclasses.replace(h, empty_layer=True))
        if hist:
            hist[-1].empty_layer = False
        cfg.history = hist
        return cfg, layers[:base_count] + [layer]


def _position(label: str, position: int, total: int) -> str:
    number = f"{position:>{len(str(total))}}/{total}"
    return f"{label} {number}" if label else number


def _apply_blobs(points: list[str], blobs: list[tuple[str, str]]) -> None:
    """(In the overlay child) apply layer blobs onto the merged view, as a flat tree."""
    from layerstore.layer_apply import apply_layer

    for path, diff_id in blobs:
        with open(path, "rb") as f:
            apply_layer(f, Path(points[0]), mode="flat", expected_diff_id=diff_id)


def _replay(triggers: list[str], escape: str) -> list[ins.Instruction]:
    """Parse a base image's ONBUILD triggers (kept with their heredoc bodies)."""
    if not any("\n" in t for t in triggers):
        return replay_onbuild(triggers, escape)
    esc = f"# escape={escape}\n" if escape != "\\" else ""
    df = parse_dockerfile(esc + "FROM scratch\n" + "\n".join(triggers) + "\n", "ONBUILD")
    out = df.instructions[1:]
    for i in out:
        if isinstance(i, (ins.From, ins.OnBuild)):
            raise DockerfileError(f"{i.keyword} isn't allowed as an ONBUILD trigger", "ONBUILD")
    return out


def _raw_bodies(df) -> list[list[ins.Instruction]]:
    """The unexpanded instructions of each stage, in file order (FROM excluded)."""
    bodies: list[list[ins.Instruction]] = []
    for i in df.instructions:
        if isinstance(i, ins.From):
            bodies.append([])
        elif bodies:
            bodies[-1].append(i)
    return bodies


class _StageRunner:
    """Runs one stage's steps in order, keeping its state, args in scope and flags."""

    def __init__(self, b: Builder, stage: Stage, graph: StageGraph, df, ctx: Context,
                 results: dict[int, cf.Future], state: State, label: str, total: int) -> None:
        self.b = b
        self.stage = stage
        self.graph = graph
        self.df = df
        self.results = results
        self.label = label
        self.total = total
        self.lex = ShellLex(df.escape)
        self.history: list[State] = []     # the state after each step, in order
        # what the stage's ops see: its state, args in scope and flags, and the build's
        # services (the Builder); never this runner
        self.step_ctx = StepContext(state, b, ctx, df.filename, df.escape, self._source_state)
        skip = b.opts.no_cache_filter
        self.use_cache = not (stage.name in skip or str(stage.index) in skip) if skip else True

    @property
    def state(self) -> State:
        return self.step_ctx.state

    @state.setter
    def state(self, value: State) -> None:
        self.step_ctx.state = value

    @property
    def args(self) -> dict[str, str]:
        return self.step_ctx.args

    @args.setter
    def args(self, value: dict[str, str]) -> None:
        self.step_ctx.args = value

    # expansion with the live image env (the planner cannot know a base image's ENV)
    def scope(self) -> dict[str, str]:
        return self.step_ctx.scope()

    def expand(self, raw: ins.Instruction) -> ins.Instruction:
        env = self.scope()

        def fn(word: str) -> str:
            try:
                return self.lex.process_word(word, env)
            except ExpansionError as exc:
                raise DockerfileError(exc.message, self.df.filename, raw.line, raw.column,
                                      self.df.source_line(raw.line)) from None
        return raw.expand(fn)

    def step(self, planned: ins.Instruction, raw: ins.Instruction, position: int = 0,
             trigger: bool = False) -> None:
        before = self.state.key
        self._step(planned, raw, position, trigger)
        if self.state.key != before:
            self.history.append(self.state)    # ran or hit: a cache record to export

    def _step(self, planned: ins.Instruction, raw: ins.Instruction, position: int = 0,
              trigger: bool = False) -> None:
        if isinstance(planned, ins.Arg):
            for d in planned.args:
                if d.default is not None:
                    self.args[d.name] = d.default
            i: ins.Instruction = planned
        else:
            i = self.expand(raw)
        b = self.b
        n = b.next_step()
        where = _position(self.label, position, self.total) if position else \
            f"{self.label} ONBUILD".lstrip()
        text = download.redact_text(" ".join(i.original.split()) if i.original else i.keyword)
        b.progress.start(n, where, text)
        b.shown.append((n, where, text, False))
        try:
            self._dispatch(i, n)
        except BaseException as exc:
            if b.interrupted.is_set():
                b.progress.cancel(n)     # killed by Ctrl-C: not a failure of its own
                raise
            loc = f"{self.df.filename}:{raw.line}" if raw.line else self.df.filename
            if isinstance(exc, OSError) and not isinstance(exc, PybuildError):
                # the host's disk (ENOSPC, EROFS, EACCES): one line that says where
                where = exc.filename or f"the store at {b.store.root}"
                exc = BuildError(f"{exc.strerror or exc}: {where}")
            if not isinstance(exc, PybuildError) or isinstance(exc, DependencyFailed):
                raise
            b.progress.error(n, str(exc).splitlines()[0])
            if isinstance(exc, (DockerfileError, RemoteCacheFailed)):
                raise
            if not isinstance(exc, runstep.StepFailed):
                exc = BuildError(f"{loc}: {i.keyword}: {exc}")
            # BuildKit's report, printed once the progress view is gone: the step's
            # framed log, then the Dockerfile excerpt with the step's lines marked
            last = raw.end_line if position and raw.end_line >= raw.line else raw.line
            exc.step_report = b.progress.frame(n) + (source_excerpt(
                self.df.filename, b.source_text, raw.line, last) if raw.line else "")
            raise exc from None

    def _dispatch(self, i: ins.Instruction, n: int) -> None:
        """The step's op gives its key; a hit (the local cache, then each --cache-from
        source: Builder.cached) moves the state on without running anything; a miss
        executes the op, which records its result in the local cache."""
        op = op_for(i)
        self.step_ctx.n = n
        try:
            key = op.cache_key(self.step_ctx)
            hit = self.b.cached(key, self.state, self.use_cache)
            if hit is not None:
                self.state = hit
                self.b.steps_cached += 1
                self.b.progress.cached(n)
                return
            self.state = op.execute(self.step_ctx, key)
            self.b.steps_run += 1
            self.b.progress.done(n)
        finally:
            op.release()

    # --- sources of --from= (COPY) and --mount=from= (RUN) ---------------------

    def _source_state(self, ref: str) -> State:
        g = self.graph
        idx = None
        if ref.isascii() and ref.isdigit() and int(ref) < len(g.stages):
            idx = int(ref)
        else:
            for s in g.stages:
                if s.name == ref.lower():
                    idx = s.index
                    break
        if idx is not None:
            fut = self.results[self._orderable(ref, idx)]
            with self.b.waiting_for(self.step_ctx.n, fut):
                return _wait(fut)
        if ref in self.b.opts.build_contexts:
            raise BuildError(f"--from={ref}: a named build context is a directory; "
                             "use it with COPY --from or RUN --mount=from=")
        image = self.b.resolve_image(ref)
        return State(image.config, list(image.manifest.layers),
                     hashlib.sha256(f"image {image.descriptor.digest}".encode()).hexdigest())

    def _orderable(self, ref: str, idx: int) -> int:
        """A stage this one may wait for. The planner checked every reference the
        Dockerfile spells; a base image's ONBUILD trigger or ENV can name a stage only at
        run time (`ONBUILD COPY --from=0` in a base: its own stage), and waiting for
        ourselves, for a stage not built, or for one queued behind us (the pool is
        FIFO: whatever was queued before us has started) would hang the build for ever."""
        order = self.graph.order
        me = self.stage.index
        if idx == me:
            raise BuildError(f"--from={ref}: circular dependency detected on stage: "
                             f"{self.stage.label} (it would copy from itself)")
        if idx not in self.results or order.index(idx) > order.index(me):
            other = self.graph.stages[idx].label
            raise BuildError(f"--from={ref}: stage {other} is not built before stage "
                             f"{self.stage.label}; only the base image names it (ONBUILD or "
                             "ENV), which cannot order the build: name it in the Dockerfile")
        return idx


def build(store, opts: BuildOptions, progress: Progress | None = None,
          group=None) -> BuildResult:
    """Build per `opts` into `store`; raises PybuildError (BuildError, DockerfileError, ...).

    A --cache-from source that fails after it gave hits (a layer it lists cannot be
    fetched, or is not what its record says) is a warning: the build starts again
    without the sources; what it made meanwhile is in the local cache already.

    `group` (builder/buildmulti.py PlatformGroup): this is one platform of several,
    built in a thread of its own; the group cancels it (`Builder.interrupt`) when the
    main thread gets Ctrl-C or another platform fails."""
    progress = progress or Progress("quiet")
    try:
        return _build(store, opts, progress, group)
    except RemoteCacheFailed as exc:
        if not opts.cache_from or (group is not None and group.cancelled.is_set()):
            raise
        message = f"build cache source failed: {exc}; built again without --cache-from"
        progress.note("a build cache source failed: building again without --cache-from")
        result = _build(store, dataclasses.replace(opts, cache_from=[]), progress, group)
        result.warnings.insert(0, message)
        result.memo = None      # the memo would repeat the warning for ever
        return result


def _build(store, opts: BuildOptions, progress: Progress, group=None) -> BuildResult:
    if group is not None and group.cancelled.is_set():
        raise BuildError("build cancelled")    # queued behind --jobs, started as it failed
    b = Builder(store, opts, progress, group)
    # RUN steps' bridge: held from the first to the end (of every platform's build)
    b.network = group.network if group is not None else runstep.BuildNetwork()
    try:
        if group is not None:
            group.join(b)      # cancelled already: interrupted at once
        return b.run()
    finally:
        if group is not None:
            group.leave(b)
        else:
            b.network.close()
        b.release()
        if b.remote is not None:
            b.remote.close()
