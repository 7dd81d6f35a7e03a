"""RUN: one command in the sandbox over the stage's layers, writes into a fresh upper dir.

The environment is the image's Env plus the build args in scope (not
persisted); the user, working directory and shell are the stage's. Mount
targets and the stubs the sandbox needs (/etc/hosts, /proc, ...) that did not
exist in the image are removed from the upper dir afterwards so they never
reach the layer, as docker does (layerstore.snapshots.remove_stubs, which
never follows a symlink the step planted). Secrets are bind-mounted files or env
values given only to the process: never in the layer, history or cache key.
`RunOp` is the solver's op for a RUN step: its cache key, then (on a miss) the
mounts prepared (builder/steps/mounts.py), the command run by `execute` below
and the upper committed.
"""

from __future__ import annotations

import dataclasses
import fcntl
import hashlib
import json
import os
import selectors
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from builder.buildopts import check_network, check_security
from builder.cache import step_key
from builder.context import Context
from builder.dockerfile import instructions as ins
from builder.runner.options import rlimit_values
from builder.steps import copy as copystep
from builder.steps import meta
from builder.steps import mounts as mountstep
from builder.steps.base import BuildError, DependencyFailed, Op, State, StepContext
from layerstore import resolver, snapshots
from layerstore.errors import PybuildError
from layerstore.snapshots import MountPlan

# what the sandbox may have to create (it also reports each stub it made)
STUBS = ("/etc/hosts", "/etc/resolv.conf", "/etc/hostname", "/proc", "/sys", "/dev",
         "/run/secrets")


class StepFailed(PybuildError):
    """A RUN step's command failed; carries its exit code."""

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.command_exit = exit_code
        self.docker_line = f"ERROR: failed to solve: {message}"


@dataclass
class RunJob:
    plan: MountPlan                      # the snapshotter's prepared upper over the layers
    argv: list[str]
    env: dict[str, str]
    cwd: str
    user: str
    network: str = "default"             # default (private namespace)|none|host
    binds: list = field(default_factory=list)      # sandbox BindMount/TmpfsMount
    locks: list = field(default_factory=list)   # Paths to lock, or locks already held
    state_dir: Path | None = None
    input: bytes | None = None
    shared_net: BuildNetwork | None = None   # the build's held bridge, for network default
    platform: str | None = None          # the image's platform (foreign: run under qemu-user)
    extra_hosts: list[tuple[str, str]] = field(default_factory=list)   # build --add-host
    shm_size: int | None = None                                         # build --shm-size
    rlimits: list = field(default_factory=list)   # (RLIMIT_*, soft, hard): build --ulimit
    seccomp_cache: Path | None = None    # ROOT/cache/seccomp: compiled filters, as `run` keeps them


class BuildNetwork:
    """The default network of one build's RUN steps, as docker build's: each step in a network
    namespace of its own, on a bridge with NAT to the outside. Never the host's: there a step
    keeps CAP_NET_RAW, sniffs the host's loopback traffic and reaches every service bound to
    127.0.0.1. The bridge is held from the first such step to `close` (the end of the build),
    so a step only adds and removes its veth."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._hold = None        # builder.sandbox.network.BridgeHold, from the first step on

    def config(self):
        from builder.sandbox import NetworkConfig
        from builder.sandbox.netbackend import backend

        if backend() == "user":   # no bridge to hold: each step gets its own slirp4netns
            return NetworkConfig(mode="private")
        from builder.sandbox.network import BridgeHold

        with self._lock:
            if self._hold is None:
                hold = BridgeHold(NetworkConfig(mode="private"))
                hold.start()
                self._hold = hold
            return self._hold.network()

    def close(self) -> None:
        with self._lock:
            hold, self._hold = self._hold, None
        if hold is not None:
            hold.close()


def _network(mode: str, shared: BuildNetwork | None = None):
    from builder.sandbox import NetworkConfig

    if mode == "host":   # an entitlement (--allow network.host), checked by the solver
        return NetworkConfig(mode="host")
    if mode == "none":
        return NetworkConfig(mode="none")
    return shared.config() if shared is not None else NetworkConfig(mode="private")


def execute(job: RunJob, on_output: Callable[[bytes], None],
            running: dict | None = None, cancelled: threading.Event | None = None) -> int:
    """Run the job, streaming output lines to `on_output`; returns the exit code. The
    mount targets and stubs the image did not have are gone from the upper dir then.
    `cancelled` (with `running`): set by a Ctrl-C that kills what `running` holds."""
    from builder.sandbox import OverlayRoot, SandboxSpec, start

    plan = job.plan
    assert plan.upper is not None and plan.work is not None
    spec = SandboxSpec(root=OverlayRoot(lowers=list(plan.lowers), upper=plan.upper,
                                        work=plan.work, volatile=plan.volatile),
                       argv=job.argv, env=job.env, cwd=job.cwd or "/", user=job.user or "0",
                       mounts=list(job.binds), network=_network(job.network, job.shared_net),
                       stdio="pipe", input=job.input or b"", state_dir=job.state_dir,
                       platform=job.platform, extra_hosts=list(job.extra_hosts),
                       shm_size=job.shm_size, rlimits=list(job.rlimits),
                       cache_dir=job.seccomp_cache)
    # named after the step's work dir (containers/build-<hex>): its cgroups show as
    # pybuild-build-<hex>, and when a SIGKILL takes the build and its monitor alike, the
    # next build that reclaims the dead work dir removes them by that name
    spec.id = job.state_dir.parent.name if job.state_dir else "build-" + spec.id[:32]
    held = []
    try:
        for lock in job.locks:   # a path to lock now, or a lock already held (private)
            if isinstance(lock, Path):
                f = open(lock, "a+")
                fcntl.flock(f, fcntl.LOCK_EX)
                lock = f
            held.append(lock)
        c = start(spec)
        try:
            if running is not None:
                running[id(c)] = c   # so an interrupted build can kill it
            # a Ctrl-C while the container was starting found nothing to kill (the step's
            # line was out, its container not yet in `running`), and the step then ran its
            # whole course with the build waiting for it: registered first, checked after,
            # so one of the two sides always sees the other
            if cancelled is not None and cancelled.is_set():
                c.kill()
            _pump(c, on_output)
            result = c.wait()
        finally:
            if running is not None:
                running.pop(id(c), None)
            c.teardown()
    finally:
        for f in held:
            f.close()
    # the sandbox removed the stubs it reported; these are the ones we know of ourselves
    targets = [m.dst for m in job.binds if isinstance(getattr(m, "dst", None), str)]
    snapshots.remove_stubs(plan.upper, [*targets, *STUBS], plan.lowers)
    if result.message:
        on_output(f"{result.message}\n".encode())
    return result.exit_code


# a step that prints 400 MB without a newline made the build hold it all and copy it
# again for every chunk (quadratic: still running after ten minutes); longer lines are
# cut into pieces of this size, as a terminal would wrap them
MAX_OUTPUT_LINE = 64 << 10


def _pump(c, on_output: Callable[[bytes], None]) -> None:
    fds = [fd for fd in (c.stdout, c.stderr) if fd is not None]
    pending = {fd: bytearray() for fd in fds}
    with selectors.DefaultSelector() as sel:
        for fd in fds:
            sel.register(fd, selectors.EVENT_READ)
        while pending:
            for key, _ in sel.select():
                fd = key.fd
                try:
                    chunk = os.read(fd, 65536)
                except OSError:
                    chunk = b""
                buf = pending[fd]
                if not chunk:
                    if buf:
                        on_output(bytes(buf) + b"\n")
                    sel.unregister(fd)
                    del pending[fd]
                    continue
                buf += chunk
                start = 0
                while (nl := buf.find(b"\n", start)) >= 0:
                    while nl + 1 - start > MAX_OUTPUT_LINE:
                        on_output(bytes(buf[start:start + MAX_OUTPUT_LINE]) + b"\n")
                        start += MAX_OUTPUT_LINE
                    on_output(bytes(buf[start:nl + 1]))
                    start = nl + 1
                while len(buf) - start >= MAX_OUTPUT_LINE:
                    on_output(bytes(buf[start:start + MAX_OUTPUT_LINE]) + b"\n")
                    start += MAX_OUTPUT_LINE
                del buf[:start]


def check_entitlements(steps: list, opts, filename: str) -> None:
    """The entitlements RUN steps need (host network: granted by --allow; insecure:
    never), checked for every step of the graph before the first one runs."""
    for i in steps:
        if isinstance(i, ins.Run):
            if i.network == "host":
                check_network("host", opts.allow, f"{filename}:{i.line}: RUN --network=host")
            check_security(i.security, f"{filename}:{i.line}: RUN --security=insecure")


class RunOp(Op):
    """The RUN op. Its key covers the command as run (argv after the stage's SHELL,
    heredoc scripts), the mounts as written, the network it runs on, the build args in
    scope (they are its environment) and the content its bind mounts show (context
    sources hashed, another stage's key). Secrets and cache-mount contents are not
    inputs, as in BuildKit."""

    def __init__(self, i: ins.Run) -> None:
        self.i = i
        self._bind_sources: dict[int, tuple[copystep.Selection, str]] = {}

    def cache_key(self, ctx: StepContext) -> str:
        i, b = self.i, ctx.services
        cfg = ctx.state.config.config
        shell = list(cfg.Shell or meta.DEFAULT_SHELL)
        pipes: list[tuple[str, str]] = []
        if i.heredocs:
            cmdline = i.command[0] if i.command else ""
            h0 = i.heredocs[0]
            simple = len(i.heredocs) == 1 and cmdline.strip().lstrip("0123456789").startswith("<<") \
                and len(cmdline.split()) == 1
            if simple and h0.body().startswith("#!"):
                # the name becomes a file of ours on the host: one component, nothing
                # else (`RUN <<../../../etc/cron.d/x` wrote that file as root)
                if h0.name in ("", ".", "..") or "/" in h0.name or "\0" in h0.name:
                    raise BuildError(f"heredoc name {h0.name!r} cannot name the script of a "
                                     "RUN step (use a plain word)")
                pipes.append((h0.name, h0.body()))
                argv = [f"/dev/pipes/{h0.name}"]
            elif simple:
                argv = shell + [h0.body()]
            else:
                full = cmdline
                for h in i.heredocs:
                    full += "\n" + h.content + h.name
                argv = shell + [full]
        elif i.prepend_shell:
            argv = shell + [" ".join(i.command)]
        else:
            argv = list(i.command)
        used_args = dict(ctx.args)
        env = dict(used_args)
        env.update(cfg.env_dict())
        mounts_key = [dataclasses.asdict(m) for m in i.mounts]
        for m in mounts_key:
            m.pop("raw", None)
        inputs = self._mount_inputs(ctx)
        # RUN --network=default takes the build's mode, as BuildKit's; host is an entitlement
        network = i.network if i.network not in (None, "default") else b.opts.network
        check_network(network, b.opts.allow, f"{ctx.filename}:{i.line}: RUN --network=host"
                      if i.network == "host" else "--network host (every RUN step)")
        check_security(i.security, f"{ctx.filename}:{i.line}: RUN --security=insecure")
        # keyed by what the step ran on: a result made on the host's network (before the
        # default became a private namespace) is not reused as a sandboxed one
        net_key = "private" if network == "default" else network
        # build --add-host/--shm-size are the step's as BuildKit's (its ExecOp carries the
        # extra hosts and a /dev/shm tmpfs mount), and --ulimit is part of what the step ran
        # under (BuildKit keys it too): keyed, but only when given, so the keys of every
        # other build stay what they were
        sandbox = {k: v for k, v in (("hosts", [list(h) for h in b.opts.add_hosts]),
                                     ("shm", b.opts.shm_size)) if v}
        limits = [[u.name, u.soft, u.hard] for u in b.opts.ulimits]
        key = step_key(ctx.state.key, json.dumps([argv, mounts_key, net_key, pipes]
                                                 + ([sandbox] if sandbox else [])
                                                 + ([limits] if limits else [])),
                       used_args, inputs)
        self.cache_ids = mountstep.cache_ids(i.mounts, cfg.WorkingDir or "/")
        self.platform = str(ctx.state.config.platform)
        if self.cache_ids:    # used by the build, hit or not: --cache-to ...,cache-mounts=true
            with b.counter_lock:
                b.mount_ids.setdefault(self.platform, set()).update(self.cache_ids)
        self.argv, self.env, self.pipes = argv, env, pipes
        self.used_args, self.network = used_args, network
        return key

    def execute(self, ctx: StepContext, key: str) -> State:
        b = ctx.services
        cfg = ctx.state.config.config
        b.restore_mounts(self.cache_ids, self.platform)    # --cache-from: warm what is cold here
        # volatile: the upper is committed through the store's fsynced ingest, so the
        # overlay's own syncs (and the flush on unmount) only cost time
        ws = b.workspace(ctx.state, volatile=True)
        try:
            binds, locks, targets = self._mounts(ctx, ws.dir, self.env)
            if self.pipes:
                pd = ws.dir / "pipes"
                pd.mkdir()
                with resolver.rooted(pd) as pfd:
                    for name, body in self.pipes:
                        fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
                                     | os.O_CLOEXEC, 0o755, dir_fd=pfd)
                        with open(fd, "wb") as f:
                            f.write(body.encode("utf-8", "surrogateescape"))
                            os.fchmod(f.fileno(), 0o755)
                from builder.sandbox import BindMount

                binds.append(BindMount(pd, "/dev/pipes", readonly=True))
            n = ctx.n

            def out(line: bytes) -> None:
                b.progress.output(n, line)    # which keeps the tail the failure report shows
            from layerstore.platforms import of_config

            job = RunJob(ws.plan, self.argv, self.env,
                         cfg.WorkingDir or "/", cfg.User or "0", self.network, binds, locks,
                         state_dir=ws.dir / "state", shared_net=b.network,
                         platform=of_config(ctx.state.config),
                         extra_hosts=list(b.opts.add_hosts), shm_size=b.opts.shm_size,
                         rlimits=rlimit_values(b.opts.ulimits),
                         seccomp_cache=b.store.root / "cache" / "seccomp")
            if b.failed.is_set():
                raise DependencyFailed("build cancelled")
            code = execute(job, out, b.running, b.interrupted)
            if code != 0:
                # BuildKit's words (the command quoted as Go's %q would); where it failed
                # and its last lines are the solver's report (build.py, progress.frame)
                process = json.dumps(" ".join(self.argv), ensure_ascii=False)
                raise StepFailed(f"process {process} did not complete successfully: "
                                 f"exit code: {code}", code)
            created_by = meta.run_created_by(self.argv, self.used_args)
            return b.commit_upper(ctx.state, ws.upper, created_by, key)
        finally:
            ws.release()

    def _mount_inputs(self, ctx: StepContext) -> str:
        """Content of bind mounts from the context or other stages (their keys). The
        context sources selected and hashed here are what `_mounts` shows the step."""
        parts = []
        b = ctx.services
        self._bind_sources = {}
        for k, m in enumerate(self.i.mounts):
            if m.type == "bind":
                if m.from_ and m.from_ not in b.opts.build_contexts:
                    parts.append("stage " + ctx.source_state(m.from_).key)
                else:
                    sel = self._bind_selection(ctx, m)
                    with b.hash_lock:
                        parts.append(copystep.digest_selection(sel, b.hashes))
                    self._bind_sources[k] = (sel, parts[-1])
        return hashlib.sha256("\n".join(parts).encode()).hexdigest()

    def _bind_selection(self, ctx: StepContext, m) -> copystep.Selection:
        context = self._bind_context(ctx, m.from_)
        if context.root is None:
            raise mountstep.MountError("RUN --mount=type=bind: no build context")
        src = m.source or "."
        try:
            return copystep.select_sources([src], copystep.SourceTree.of_context(context))
        except copystep.CopyError:
            raise mountstep.MountError(f"RUN --mount=type=bind,source={src}: not found "
                                       f"in the build {context.name}") from None

    @staticmethod
    def _bind_context(ctx: StepContext, name: str | None) -> Context:
        if name:
            context = Context.open(ctx.services.opts.build_contexts[name])
            context.name = f"context {name!r}"
            return context
        return ctx.context

    def _mounts(self, ctx: StepContext, ws: Path, env: dict[str, str]):
        b = ctx.services

        def stage_tree(ref: str, dest: Path) -> Path:
            """A flat copy of another stage's or image's rootfs for a bind mount."""
            from layerstore.layer_apply import apply_layer

            st = ctx.source_state(ref)
            dest.mkdir()
            for layer, diff_id in zip(st.layers, st.config.diff_ids):
                with b.open_layer(layer) as f:
                    apply_layer(f, dest, mode="flat", expected_diff_id=diff_id)
            return dest

        def context_view(k: int, m, dest: Path) -> Path:
            """A copy of a context source: never the host directory itself, which holds
            what .dockerignore hides. Read-only ones are shared by every step of the build
            that mounts the same content; `rw` gets a copy of its own."""
            known = self._bind_sources.get(k)
            sel, digest = known if known else (self._bind_selection(ctx, m), None)
            if digest is not None and m.readonly is not False:
                return b.context_view(sel, digest)
            copystep.materialize(sel, dest.parent, dest.name)
            return dest
        return mountstep.prepare(self.i.mounts, ws, env, secrets=b.opts.secrets,
                                 cache_dir=b.store.root / "cache" / "mounts",
                                 contexts=b.opts.build_contexts,
                                 context_view=context_view, stage_tree=stage_tree,
                                 cwd=ctx.state.config.config.WorkingDir or "/")
