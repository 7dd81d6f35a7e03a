"""RUN: one command in the sandbox over the stage's layers, writes into a fresh upper dir.

The environment is the image's Env plus the build args in scope (not
persisted); the user, working directory and shell are the stage's. Mount
targets and the stubs the sandbox needs (/etc/hosts, /proc, ...) that did not
exist in the image are removed from the upper dir afterwards so they never
reach the layer, as docker does. Secrets are bind-mounted files or env
values given only to the process: never in the layer, history or cache key.
"""

from __future__ import annotations

import collections
import fcntl
import os
import selectors
import shutil
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from layerstore.errors import PybuildError

STUBS = ("/etc/hosts", "/etc/resolv.conf", "/etc/hostname", "/proc", "/sys", "/dev",
         "/run/secrets")


class RunError(PybuildError):
    """A RUN step's command failed; carries its exit code and output tail."""

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.command_exit = exit_code


@dataclass
class RunJob:
    lowers: list[Path]
    upper: Path
    work: Path
    argv: list[str]
    env: dict[str, str]
    cwd: str
    user: str
    network: str = "default"             # default|none|host
    binds: list = field(default_factory=list)      # sandbox BindMount/TmpfsMount
    locks: list = field(default_factory=list)   # Paths to lock, or locks already held
    state_dir: Path | None = None
    input: bytes | None = None


def _network(mode: str):
    from builder.sandbox import NetworkConfig

    if mode in ("host", "default"):
        # the build's default network is the host's (buildah's and BuildKit's default)
        return NetworkConfig(mode="host")
    return NetworkConfig(mode="none")


def execute(job: RunJob, on_output: Callable[[bytes], None], empty: Path,
            running: dict | None = None) -> int:
    """Run the job, streaming output lines to `on_output`; returns the exit code."""
    from builder.sandbox import OverlayRoot, SandboxSpec, start

    lowers = job.lowers or [empty]
    # volatile: the upper is committed through the store's fsynced ingest, so the
    # overlay's own syncs (and the flush on unmount) only cost time
    spec = SandboxSpec(root=OverlayRoot(lowers=list(lowers), upper=job.upper, work=job.work,
                                        volatile=True),
                       argv=job.argv, env=job.env, cwd=job.cwd or "/", user=job.user or "0",
                       mounts=list(job.binds), network=_network(job.network), stdio="pipe",
                       input=job.input or b"", state_dir=job.state_dir)
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
    if result.message:
        on_output(f"{result.message}\n".encode())
    return result.exit_code


def _pump(c, on_output: Callable[[bytes], None]) -> None:
    fds = [fd for fd in (c.stdout, c.stderr) if fd is not None]
    pending = {fd: b"" for fd in fds}
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
                if not chunk:
                    if pending[fd]:
                        on_output(pending[fd] + b"\n")
                    sel.unregister(fd)
                    del pending[fd]
                    continue
                data = pending[fd] + chunk
                *lines, rest = data.split(b"\n")
                for line in lines:
                    on_output(line + b"\n")
                pending[fd] = rest


def _in_lowers(lowers: list[Path], rel: str) -> bool:
    return any(os.path.lexists(os.path.join(l, rel)) for l in lowers)


def clean_stubs(upper: Path, lowers: list[Path], targets: list[str]) -> None:
    """Remove mount points and sandbox stubs the image did not have from the upper dir."""
    for target in list(targets) + list(STUBS):
        rel = target.strip("/")
        while rel:
            p = upper / rel
            if not os.path.lexists(p) or _in_lowers(lowers, rel):
                break
            st = os.lstat(p)
            if stat.S_ISDIR(st.st_mode):
                if rel.strip("/") in ("proc", "sys", "dev", "run/secrets") or target.strip("/") == rel:
                    if any(os.scandir(p)) and rel not in ("dev",):
                        break
                    shutil.rmtree(p) if rel == "dev" else os.rmdir(p)
                elif any(os.scandir(p)):
                    break
                else:
                    os.rmdir(p)
            elif stat.S_ISREG(st.st_mode) and st.st_size == 0:
                os.unlink(p)
            else:
                break
            rel = os.path.dirname(rel)


class Tail:
    """The last lines of a step's output, for the error message."""

    def __init__(self, n: int = 10) -> None:
        self.lines: collections.deque[str] = collections.deque(maxlen=n)

    def add(self, line: bytes) -> None:
        self.lines.append(line.decode("utf-8", "replace").rstrip("\n"))

    def text(self) -> str:
        return "\n".join(self.lines)
