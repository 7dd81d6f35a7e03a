"""Detached containers (-d): a small supervisor process owns the container.

The CLI forks; the child starts a new session and forks again, so the
supervisor is re-parented away from the CLI and survives it. The supervisor
points its stdio at /dev/null (so whoever captured the CLI's output is not
held open), starts the container through the sandbox with stdout/stderr on
pipes (or a pty with -t), reports "ok" or the start error to the CLI over a
pipe, then copies output into the size-capped, rotated log until the
container ends, records the exit status and, with --rm, removes it.
The sandbox kills the container if the supervisor dies (PDEATHSIG).

The supervisor is also what a daemon would be for the container: it restarts it
per --restart (restart.py) and runs its health checks (health.py, in a child of
its own, so that no thread shares the forks of sandbox starts).
"""

from __future__ import annotations

import os
import signal
import time
import traceback

from builder.sandbox import SandboxError

from . import health, restart
from .create import Prepared
from .errors import RunError
from .lifecycle import finish, launch
from .logs import LOG_NAME, LogWriter, copy_streams, output_pipes


def launch_detached(p: Prepared) -> None:
    """Start the supervisor; returns once the container runs, raises if it could not start."""
    r, w = os.pipe2(os.O_CLOEXEC)
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            os.close(r)
            os.setsid()
            if os.fork() == 0:
                _supervise(p, w)
            code = 0
        finally:
            os._exit(code)
    os.close(w)
    os.waitpid(pid, 0)
    with os.fdopen(r, "rb") as f:
        msg = f.read().decode(errors="replace")
    if msg.startswith("ok"):
        return
    kind, _, rest = msg.partition(" ")
    if kind == "err":
        code, _, text = rest.partition(" ")
        raise SandboxError(text, int(code) if code.isdigit() else 125)
    raise RunError(f"container {p.state.id[:12]}: the supervisor died before starting it")


def _null_stdio() -> None:
    null = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(null, fd)
    os.close(null)


def _supervise(p: Prepared, report_fd: int) -> None:
    """Runs in the supervisor; never returns."""
    code = 0
    try:
        for s in (signal.SIGINT, signal.SIGHUP, signal.SIGPIPE):
            signal.signal(s, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        _null_stdio()
        st = p.state
        restart.clear_stop(p.dir)
        log = LogWriter(p.dir / LOG_NAME, st.log_max_size, st.log_max_files)
        policy = restart.RestartPolicy(str(st.restart_policy.get("Name") or "no"),
                                       int(st.restart_policy.get("MaximumRetryCount") or 0))
        backoff = restart.Backoff()
        report: int | None = report_fd
        while True:
            started = time.monotonic()
            result = _run_once(p, log, report, started)
            report = None
            if not p.dir.is_dir() or not restart.should_restart(
                    policy, result.exit_code, st.restart_count, restart.stop_requested(p.dir)):
                break
            delay = backoff.next(time.monotonic() - started)
            with p.containers.locked(st.id):
                st.status, st.pid, st.pid_start = "restarting", 0, ""
                st.exit_code, st.oom_killed = result.exit_code, result.oom_killed
                st.finished_at = p.containers.now()
                st.restart_count += 1
                p.containers.save(st)
            if not _backoff(p, delay):
                break
        log.close()
        finish(p.containers, st, result)
    except _Reported:
        code = 1
    except BaseException:
        code = 1
        try:
            with open(p.dir / "supervisor.err", "a") as f:
                f.write(traceback.format_exc())
        except OSError:
            pass
    finally:
        os._exit(code)


def _run_once(p: Prepared, log: LogWriter, report_fd: int | None, started: float):
    """One run of the container: start it (a fresh sandbox on the same rootfs), run its
    health checker beside it, log its output; its Result."""
    streams: dict[int, str] = {}
    if p.state.tty:
        p.spec.stdio = "pty"
        c = _start(p, report_fd)
        streams[c.stdout] = "stdout"
    else:
        p.spec.stdio = "inherit"
        with output_pipes() as streams:
            c = _start(p, report_fd)
    if restart.stop_requested(p.dir):
        c.kill(p.state.stop_signal)   # a stop that came while we were restarting it
    checker = health.start_checker(p.containers, p.state, started)
    try:
        copy_streams(streams, log)
        result = c.wait()
    finally:
        if not p.state.tty:   # our pipes' read ends (the pty master is the sandbox's)
            for fd in streams:
                os.close(fd)
        health.stop_checker(checker)
    if checker is not None:
        health.mark_stopped(p.dir)
    return result


def _backoff(p: Prepared, delay: float) -> bool:
    """Wait before a restart; False when a stop (or removal) came meanwhile."""
    end = time.monotonic() + delay
    while True:
        if restart.stop_requested(p.dir) or not p.dir.is_dir():
            return False
        left = end - time.monotonic()
        if left <= 0:
            return True
        time.sleep(min(left, 0.05))


class _Reported(Exception):
    pass


def _start(p: Prepared, report_fd: int | None):
    """launch(); the first start tells the CLI how it went. A failed restart is recorded
    by launch (as exited, with docker's code) and ends the supervision."""
    try:
        c = launch(p)
    except SandboxError as e:
        if report_fd is not None:
            os.write(report_fd, f"err {e.exit_code} {e}".encode())
        raise _Reported() from None
    except Exception as e:
        if report_fd is not None:
            os.write(report_fd, f"err 125 {e}".encode())
        raise _Reported() from None
    if report_fd is not None:
        os.write(report_fd, b"ok")
        os.close(report_fd)
    return c
