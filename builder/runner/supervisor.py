"""Detached containers (-d): a small supervisor process owns the container.

The CLI forks; the child starts a new session and forks again, so the
supervisor is re-parented away from the CLI and survives it. The supervisor
points its stdio at /dev/null (so whoever captured the CLI's output is not
held open), starts the container through the sandbox with stdout/stderr on
pipes (or a pty with -t), reports "ok" or the start error to the CLI over a
pipe, then copies output into the size-capped, rotated log until the
container ends, records the exit status and, with --rm, removes it.
The sandbox kills the container if the supervisor dies (PDEATHSIG).
"""

from __future__ import annotations

import os
import signal
import traceback

from builder.sandbox import SandboxError

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
        log = LogWriter(p.dir / LOG_NAME, st.log_max_size, st.log_max_files)
        streams: dict[int, str] = {}
        if st.tty:
            p.spec.stdio = "pty"
            c = _start(p, report_fd)
            streams[c.stdout] = "stdout"
        else:
            p.spec.stdio = "inherit"
            with output_pipes() as streams:
                c = _start(p, report_fd)
        copy_streams(streams, log)
        result = c.wait()
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


class _Reported(Exception):
    pass


def _start(p: Prepared, report_fd: int):
    try:
        c = launch(p)
    except SandboxError as e:
        os.write(report_fd, f"err {e.exit_code} {e}".encode())
        raise _Reported() from None
    except Exception as e:
        os.write(report_fd, f"err 125 {e}".encode())
        raise _Reported() from None
    os.write(report_fd, b"ok")
    os.close(report_fd)
    return c
