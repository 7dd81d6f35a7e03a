"""Starting a prepared container, recording its exit, and the commands on records:
stop, kill, rm, wait, container prune.

Whoever calls `sandbox.start` (the foreground CLI or the detached supervisor)
owns the container: it records the exit status and, with --rm, removes it.
Other commands only send signals to the container's PID 1 and read records.
"""

from __future__ import annotations

import os
import signal
import sys
import time
from typing import TYPE_CHECKING, Callable

from layerstore.errors import PybuildError

from .containers import Containers, ContainerState, alive, proc_start_time
from .errors import RunError
from .options import rlimit_values

if TYPE_CHECKING:
    # ps, inspect, logs, stop, kill and wait import this module for the record commands:
    # the sandbox (and create, which imports it) are imported where a container starts
    from builder.sandbox import Container, Result

    from .create import Prepared


def launch(p: Prepared) -> Container:
    """sandbox.start under the container's rlimits, then record it as running.

    A container that cannot start is recorded as exited with docker's code
    (125/126/127) -- or removed with --rm -- and the error is raised."""
    from builder.sandbox import SandboxError, start

    st = p.state
    try:
        p.spec.rlimits = rlimit_values(p.ulimits)    # set in the container, before exec
        c = start(p.spec)
    except SandboxError as e:
        finish(p.containers, st, None, error=str(e), code=e.exit_code)
        raise
    except PybuildError as e:  # e.g. a published port in use: pybuild's own error, 125
        finish(p.containers, st, None, error=str(e), code=125)
        raise RunError(str(e)) from None
    except BaseException as e:
        finish(p.containers, st, None, error=str(e) or type(e).__name__, code=125)
        raise
    with p.containers.locked(st.id):
        _renamed(p.containers, st)
        st.status = "running"
        st.exit_code, st.error, st.oom_killed = None, "", False
        st.pid, st.pid_start = c.pid, proc_start_time(c.pid)
        st.owner_pid, st.owner_start = os.getpid(), proc_start_time(os.getpid())
        st.started_at = p.containers.now()
        st.ip = c.ip
        p.containers.save(st)
    return c


def finish(containers: Containers, st: ContainerState, result: Result | None,
           error: str = "", code: int | None = None) -> None:
    """Record the exit; with --rm remove the container and its anonymous volumes. The
    container is no longer ours afterwards (see Containers.owned)."""
    try:
        if st.auto_remove:
            from .create import discard

            _renamed(containers, st)
            discard(containers, st)
            return
        if not containers.path(st.id).is_dir():
            return  # removed meanwhile (rm -f)
        with containers.locked(st.id):
            _renamed(containers, st)
            st.status = "exited"
            st.exit_code = result.exit_code if result is not None else code
            st.oom_killed = bool(result and result.oom_killed)
            st.error = error or (result.message or "" if result else "")
            st.finished_at = containers.now()
            st.pid = 0
            containers.save(st)
    finally:
        containers.disown(st.id)


def _renamed(containers: Containers, st: ContainerState) -> None:
    """Take a `rename` done while we held the record in memory (we write it whole)."""
    cur = containers.try_load(st.id)
    if cur is not None:
        st.name = cur.name


def is_running(st: ContainerState) -> bool:
    return st.status == "running" and alive(st.owner_pid, st.owner_start)


def is_active(st: ContainerState) -> bool:
    """Running, or waiting in its supervisor to be restarted (docker counts both as up)."""
    return st.status in ("running", "restarting") and alive(st.owner_pid, st.owner_start)


def _signal(st: ContainerState, sig: int) -> None:
    if not alive(st.pid, st.pid_start):
        return
    try:
        os.kill(st.pid, sig)
    except ProcessLookupError:
        pass


def _gone(containers: Containers, st: ContainerState) -> bool:
    """The container's PID 1 is dead and its owner has finished with it."""
    if alive(st.pid, st.pid_start):
        return False
    cur = containers.try_load(st.id)
    return cur is None or cur.status not in ("running", "restarting")   # None: removed (--rm)


def _wait_gone(containers: Containers, st: ContainerState, timeout: float | None) -> bool:
    deadline = None if timeout is None else time.monotonic() + timeout
    delay = 0.005
    while not _gone(containers, st):
        if deadline is not None and time.monotonic() >= deadline:
            return False
        time.sleep(delay)
        delay = min(delay * 2, 0.1)
    return True


def stop(containers: Containers, ref: str, timeout: int | None = None,
         sig: int | None = None) -> ContainerState:
    """The stop signal, then SIGKILL after the timeout (docker's default 10 s). No restart
    policy starts the container again afterwards."""
    from .pause import thaw

    st = containers.find(ref)
    if not is_active(st):
        return st
    st = _no_more_restarts(containers, st)
    thaw(st)     # as docker: a paused container is unfrozen, then gets the signal
    _signal(st, sig or st.stop_signal)
    wait_s = st.stop_timeout if timeout is None else timeout
    if not _wait_gone(containers, st, None if wait_s < 0 else wait_s):  # -1: wait for ever
        _signal(st, signal.SIGKILL)
        _wait_gone(containers, st, 30)
    return st


def kill(containers: Containers, ref: str, sig: int = signal.SIGKILL) -> ContainerState:
    st = containers.find(ref)
    if not is_running(st):
        raise RunError(f"container {st.id[:12]} is not running")
    if sig in (signal.SIGKILL, st.stop_signal):   # docker's ExitOnNext: no restart after it
        st = _no_more_restarts(containers, st)
    _signal(st, sig)
    return st


def _no_more_restarts(containers: Containers, st: ContainerState) -> ContainerState:
    """Tell the supervisor not to restart the container; the record as it is now (a
    restart may have changed the pid since `st` was read)."""
    from .restart import request_stop

    request_stop(containers.path(st.id))
    return containers.try_load(st.id) or st


def remove(containers: Containers, ref: str, force: bool = False,
           volumes: bool = False) -> ContainerState:
    st = containers.find(ref)
    if is_active(st):
        if not force:
            raise RunError(f"cannot remove {'running' if is_running(st) else 'restarting'} "
                           f"container {st.id[:12]}: stop it first or use -f")
        st = _no_more_restarts(containers, st)
        from .pause import thaw

        thaw(st)     # v1's freezer holds even SIGKILLed tasks until thawed
        _signal(st, signal.SIGKILL)
        _wait_gone(containers, st, 30)
        if st.auto_remove:
            _wait_removed(containers, st.id, 10)
    if volumes:
        from .create import discard

        discard(containers, st)
    else:
        containers.remove_dir(st.id, st.name)
    return st


def _wait_removed(containers: Containers, cid: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while containers.path(cid).exists() and time.monotonic() < deadline:
        time.sleep(0.02)


def wait(containers: Containers, ref: str) -> int:
    """Block until the container exits; its exit code (docker's `wait`)."""
    st = containers.find(ref)
    _wait_gone(containers, st, None)
    cur = containers.try_load(st.id)
    return cur.exit_code or 0 if cur is not None else 0


def prune(containers: Containers,
          select: Callable[[ContainerState], bool] | None = None) -> list[str]:
    """Remove stopped containers (those `select` accepts, when given)."""
    gone = []
    for st in containers.all():
        if not is_active(st) and (select is None or select(st)):
            containers.remove_dir(st.id, st.name)
            gone.append(st.id)
    return gone


def report(result: Result) -> int:
    """Say why the container ended abnormally (OOM, timeout); its exit code."""
    if result.message:
        print(f"pybuild: {result.message}", file=sys.stderr)
    return result.exit_code
