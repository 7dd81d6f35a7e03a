"""Foreground containers: stdio attached, signals forwarded, a pty when -t.

Without -t the container inherits our stdin (or /dev/null without -i),
stdout and stderr. With -t the sandbox gives us a pty master: we copy our
terminal's window size to it (again on every SIGWINCH), put our terminal in
raw mode, and pump bytes both ways until the container side closes.
"""

from __future__ import annotations

import fcntl
import os
import selectors
import signal
import struct
import termios
import tty
from contextlib import contextmanager
from typing import Iterator

from builder.sandbox import Container, Result

from .create import Prepared
from .lifecycle import finish, launch
from .logs import LOG_NAME, LogWriter, copy_streams, output_pipes, ready_chunks, write_all

FORWARDED = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT, signal.SIGUSR1,
             signal.SIGUSR2)


def terminal_size(fd: int) -> tuple[int, int] | None:
    """(rows, cols) of the terminal on `fd`, or None when it is not one."""
    try:
        rows, cols, _, _ = struct.unpack(
            "HHHH", fcntl.ioctl(fd, termios.TIOCGWINSZ, struct.pack("HHHH", 0, 0, 0, 0)))
    except OSError:
        return None
    return (rows, cols) if rows and cols else None


def copy_winsize(src_fd: int, dst_fd: int) -> None:
    try:
        size = fcntl.ioctl(src_fd, termios.TIOCGWINSZ, struct.pack("HHHH", 0, 0, 0, 0))
        fcntl.ioctl(dst_fd, termios.TIOCSWINSZ, size)
    except OSError:
        pass


@contextmanager
def stdin_from_devnull(enabled: bool) -> Iterator[None]:
    """Without -i the container reads /dev/null, as docker's does."""
    if not enabled:
        yield
        return
    saved = os.dup(0)
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.close(null)
    try:
        yield
    finally:
        os.dup2(saved, 0)
        os.close(saved)


@contextmanager
def forwarding(target) -> Iterator[None]:
    """Deliver the usual signals to `target(sig)` instead of dying of them."""
    old = {}
    for s in FORWARDED:
        old[s] = signal.signal(s, lambda signum, frame: target(signum))
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)


@contextmanager
def raw_terminal(fd: int) -> Iterator[None]:
    if not os.isatty(fd):
        yield
        return
    saved = termios.tcgetattr(fd)
    tty.setraw(fd)
    try:
        yield
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)


def pump_pty(master: int, interactive: bool, out_fd: int = 1, in_fd: int = 0,
             log: LogWriter | None = None) -> None:
    """Copy master -> out_fd (and to the log), and in_fd -> master with -i, until the
    slave side closes."""
    with selectors.DefaultSelector() as sel:
        sel.register(master, selectors.EVENT_READ)
        if interactive:
            sel.register(in_fd, selectors.EVENT_READ)
        while True:
            for fd, data in ready_chunks(sel):
                if fd == master:
                    if not data:
                        return
                    write_all(out_fd, data)
                    if log is not None:
                        log.write("stdout", data)
                elif data:
                    write_all(master, data)
                else:
                    sel.unregister(in_fd)  # our stdin ended; send EOF (^D) to the pty
                    try:
                        os.write(master, b"\x04")
                    except OSError:
                        pass


def run_foreground(p: Prepared, interactive: bool, use_tty: bool) -> Result:
    """Run a prepared container attached to our stdio; returns its Result.

    A container that is kept (no --rm) also gets its output logged, as docker's
    attached containers do: stdout/stderr then go through pipes we copy from."""
    log = None if p.state.auto_remove else LogWriter(p.dir / LOG_NAME, p.state.log_max_size,
                                                     p.state.log_max_files)
    p.spec.stdio = "pty" if use_tty else "inherit"
    if use_tty:
        p.spec.pty_size = terminal_size(0 if os.isatty(0) else 1)
    streams: dict[int, str] = {}
    with stdin_from_devnull(not interactive and not use_tty):
        if log is not None and not use_tty:
            with output_pipes() as streams:
                c = launch(p)
        else:
            c = launch(p)
    try:
        with forwarding(c.kill):
            if use_tty:
                result = _attached_tty(c, interactive, log)
            else:
                copy_streams(streams, log, {"stdout": 1, "stderr": 2})
                result = c.wait()
    except BaseException:
        c.teardown()
        finish(p.containers, p.state, None, error="pybuild run was interrupted", code=137)
        raise
    finally:
        for fd in streams:
            os.close(fd)
        if log is not None:
            log.close()
    finish(p.containers, p.state, result)
    return result


def _attached_tty(c: Container, interactive: bool, log: LogWriter | None) -> Result:
    master = c.stdout
    assert master is not None
    copy_winsize(0 if os.isatty(0) else 1, master)
    old = signal.signal(signal.SIGWINCH, lambda s, f: copy_winsize(0 if os.isatty(0) else 1, master))
    try:
        with raw_terminal(0) if interactive else _nothing():
            pump_pty(master, interactive, log=log)
    finally:
        signal.signal(signal.SIGWINCH, old)
    return c.wait()


@contextmanager
def _nothing() -> Iterator[None]:
    yield


def attach_running(containers, ref: str) -> int:
    """`pybuild attach`: the output a detached container writes from now on (read from its
    log as the supervisor records it), until it exits; its exit code. Signals we get go
    to the container, as docker's --sig-proxy does."""
    from .errors import RunError
    from .lifecycle import _signal, is_running
    from .logs import follow_log, render

    st = containers.find(ref)
    if not is_running(st):
        raise RunError(f"cannot attach to stopped container {st.name}: start it first")
    cdir = containers.path(st.id)
    try:
        offset = os.stat(cdir / LOG_NAME).st_size   # records are appended whole
    except FileNotFoundError:
        offset = 0

    def running() -> bool:
        cur = containers.try_load(st.id)
        return cur is not None and is_running(cur)
    with forwarding(lambda sig: _signal(st, sig)):
        for e in follow_log(cdir, running, offset):
            render(e, False)
    cur = containers.try_load(st.id)
    return cur.exit_code or 0 if cur is not None and cur.exit_code is not None else 0
