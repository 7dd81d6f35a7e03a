"""RUN: one command in the sandbox over the stage's layers, writes into a fresh upper dir.

The environment is the image's Env plus the build args in scope (not
persisted); the user, working directory and shell are the stage's. Mount
targets and the stubs the sandbox needs (/etc/hosts, /proc, ...) that did not
exist in the image are removed from the upper dir afterwards so they never
reach the layer, as docker does (layerstore.snapshots.remove_stubs, which
never follows a symlink the step planted). Secrets are bind-mounted files or env
values given only to the process: never in the layer, history or cache key.
"""

from __future__ import annotations

import collections
import fcntl
import os
import selectors
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from layerstore import snapshots
from layerstore.errors import PybuildError
from layerstore.snapshots import MountPlan

# what the sandbox may have to create (it also reports each stub it made)
STUBS = ("/etc/hosts", "/etc/resolv.conf", "/etc/hostname", "/proc", "/sys", "/dev",
         "/run/secrets")


class StepFailed(PybuildError):
    """A RUN step's command failed; carries its exit code and output tail."""

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.command_exit = exit_code


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
            running: dict | None = None) -> int:
    """Run the job, streaming output lines to `on_output`; returns the exit code. The
    mount targets and stubs the image did not have are gone from the upper dir then."""
    from builder.sandbox import OverlayRoot, SandboxSpec, start

    plan = job.plan
    assert plan.upper is not None and plan.work is not None
    spec = SandboxSpec(root=OverlayRoot(lowers=list(plan.lowers), upper=plan.upper,
                                        work=plan.work, volatile=plan.volatile),
                       argv=job.argv, env=job.env, cwd=job.cwd or "/", user=job.user or "0",
                       mounts=list(job.binds), network=_network(job.network, job.shared_net),
                       stdio="pipe", input=job.input or b"", state_dir=job.state_dir)
    spec.id = "build-" + spec.id[:32]   # cgroups show as pybuild-build-<id>
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


class Tail:
    """The last lines of a step's output, for the error message."""

    def __init__(self, n: int = 10) -> None:
        self.lines: collections.deque[str] = collections.deque(maxlen=n)

    def add(self, line: bytes) -> None:
        self.lines.append(line.decode("utf-8", "replace").rstrip("\n"))

    def text(self) -> str:
        return "\n".join(self.lines)
