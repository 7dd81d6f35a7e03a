"""Health checks of detached containers: the image's HEALTHCHECK or `run --health-*`.

The supervisor forks one checker per run of the container. Every interval (the
start interval while the container is still starting inside its start period)
the checker runs the probe through `exec.start_process` -- the one way into a
container, with the container's user, capabilities and seccomp profile -- and
records docker's State.Health {Status, FailingStreak, Log (last 5)} in
health.json in the container's directory, written atomically. The checker is the
only writer while the container runs (the supervisor writes the last status once
the checker is dead); health.json is separate from state.json because the
supervisor rewrites that one from its own copy and would erase each new result.

The probe is the container's code: its output is untrusted. It is read with a
bound (docker's 4096 bytes, then "..."), kept only as text for inspect, never
parsed or executed; only the exit status counts. A probe that does not end by
its timeout is SIGKILLed through its pidfd and counts as a failure (-1).
"""

from __future__ import annotations

import json
import os
import selectors
import signal
import time
from dataclasses import dataclass
from pathlib import Path

from layerstore.humanize import parse_go_duration

from .errors import RunError

HEALTH_FILE = "health.json"
MAX_OUTPUT = 4096            # docker's maxOutputLen
MAX_LOG = 5                  # docker's maxLogEntries
_MAX_FILE = 1 << 20          # health.json: 5 entries of <= 4 KiB output, escaped
DEFAULTS = {"Interval": 30.0, "Timeout": 30.0, "StartPeriod": 0.0, "StartInterval": 5.0,
            "Retries": 3}
_NS = 1_000_000_000


@dataclass
class HealthFlags:
    """`run --health-*` / `--no-healthcheck` as given (durations in seconds)."""

    cmd: str | None = None
    interval: float = 0.0
    timeout: float = 0.0
    start_period: float = 0.0
    start_interval: float = 0.0
    retries: int = 0
    disabled: bool = False


def _flag_duration(name: str, text: str | None) -> float:
    if text is None:
        return 0.0
    negative = text.startswith("-")
    try:
        seconds = parse_go_duration(text.lstrip("+-"))
    except ValueError:
        raise RunError(f'invalid argument "{text}" for "--{name}" flag: time: invalid duration '
                       f'"{text}"') from None
    if negative and seconds:
        raise RunError(f"--{name} cannot be negative")
    if 0 < seconds < 0.001:
        label = name.removeprefix("health-").replace("-", " ").title().replace(" ", "")
        raise RunError(f"{label} in Healthcheck cannot be less than 1ms")
    return seconds


def parse_flags(cmd: str | None, interval: str | None, timeout: str | None,
                start_period: str | None, start_interval: str | None, retries: int | None,
                no_healthcheck: bool) -> HealthFlags | None:
    """docker's checks of the --health-* flags; None when none was given."""
    f = HealthFlags(cmd=cmd or None, interval=_flag_duration("health-interval", interval),
                    timeout=_flag_duration("health-timeout", timeout),
                    start_period=_flag_duration("health-start-period", start_period),
                    start_interval=_flag_duration("health-start-interval", start_interval),
                    retries=retries or 0, disabled=no_healthcheck)
    if f.retries < 0:
        raise RunError("--health-retries cannot be negative")
    given = bool(f.cmd or f.interval or f.timeout or f.start_period or f.start_interval
                 or f.retries)
    if no_healthcheck:
        if given:
            raise RunError("--no-healthcheck conflicts with --health-* options")
        return f
    return f if given else None


def merged_config(image: dict | None, flags: HealthFlags | None) -> dict | None:
    """Config.Healthcheck as docker's daemon merges it: a flag wins, an unset one (0,
    no command) falls back to the image's value."""
    if flags is None:
        return dict(image) if image else None
    if flags.disabled:
        return {"Test": ["NONE"]}
    out: dict = {"Test": ["CMD-SHELL", flags.cmd] if flags.cmd else []}
    for key, value in (("Interval", flags.interval), ("Timeout", flags.timeout),
                       ("StartPeriod", flags.start_period),
                       ("StartInterval", flags.start_interval)):
        out[key] = int(round(value * _NS))
    out["Retries"] = flags.retries
    for key, value in (image or {}).items():
        if not out.get(key):
            out[key] = value
    return {k: v for k, v in out.items() if v or k == "Test"}


def probe_argv(config: dict | None, shell: list[str] | None) -> list[str] | None:
    """The command a check runs, or None when there is no (usable) check."""
    test = list((config or {}).get("Test") or [])
    if not test or test[0] == "NONE":
        return None
    if test[0] == "CMD" and len(test) > 1:
        return test[1:]
    if test[0] == "CMD-SHELL" and len(test) > 1:
        return list(shell or ["/bin/sh", "-c"]) + test[1:]
    return None   # an unknown type: docker runs no monitor either


def go_duration_text(seconds: float) -> str:
    """Go's Duration.String() for the durations a timeout message shows: 1s, 1.5s, 1m30s,
    500ms."""
    if seconds < 1:
        return f"{seconds * 1000:g}ms"
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    text = f"{s:.9f}".rstrip("0").rstrip(".") + "s"
    if h:
        return f"{int(h)}h{int(m)}m{text}"
    return f"{int(m)}m{text}" if m else text


# -- health.json -----------------------------------------------------------------------

def read(container_dir: Path) -> dict | None:
    """The recorded State.Health, or None (no check, or not written yet)."""
    try:
        fd = os.open(container_dir / HEALTH_FILE, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        data = os.read(fd, _MAX_FILE + 1)
    finally:
        os.close(fd)
    if len(data) > _MAX_FILE:
        return None
    try:
        value = json.loads(data)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def write(container_dir: Path, health: dict) -> None:
    tmp = container_dir / f".health.{os.getpid()}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC,
                 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(health, f)
    os.rename(tmp, container_dir / HEALTH_FILE)


def mark_stopped(container_dir: Path) -> None:
    """After the run: docker shows the last health of a stopped container as unhealthy.
    Also drops the temp file of a checker killed in the middle of a write."""
    for name in os.listdir(container_dir):
        if name.startswith(".health.") and name.endswith(".tmp"):
            try:
                os.unlink(container_dir / name)
            except FileNotFoundError:
                pass
    health = read(container_dir)
    if health is not None:
        health["Status"] = "unhealthy"
        write(container_dir, health)


# -- the checker -----------------------------------------------------------------------

@dataclass
class Timing:
    interval: float
    timeout: float
    start_period: float
    start_interval: float
    retries: int

    @classmethod
    def of(cls, config: dict) -> "Timing":
        def seconds(key: str) -> float:
            v = config.get(key)
            return v / _NS if isinstance(v, int) and v > 0 else DEFAULTS[key]
        retries = config.get("Retries")
        return cls(seconds("Interval"), seconds("Timeout"), seconds("StartPeriod"),
                   seconds("StartInterval"),
                   retries if isinstance(retries, int) and retries > 0 else DEFAULTS["Retries"])


def start_checker(containers, st, started: float) -> int | None:
    """Fork the checker for this run of the container (its pid), or None without a check.
    `started` is time.monotonic() at the container's start."""
    argv = probe_argv(st.healthcheck, st.health_shell)
    if argv is None:
        return None
    cdir = containers.path(st.id)
    health = read(cdir) or {}
    # each start begins "starting" again with a clean streak; the log carries over
    write(cdir, {"Status": "starting", "FailingStreak": 0,
                 "Log": list(health.get("Log") or [])[-MAX_LOG:]})
    parent = os.getpid()
    pid = os.fork()
    if pid:
        return pid
    code = 0
    try:
        from builder.sandbox import libc

        libc.prctl(libc.PR_SET_PDEATHSIG, signal.SIGKILL)
        if os.getppid() != parent:
            os._exit(0)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        # nothing of the supervisor's: its container lock, pipes, pty and pidfds
        os.closerange(3, os.sysconf("SC_OPEN_MAX"))
        from .containers import Containers

        _check_loop(Containers(containers.root), st, argv, Timing.of(st.healthcheck), started)
    except BaseException:
        code = 1
    finally:
        os._exit(code)


def stop_checker(pid: int | None) -> None:
    if pid is None:
        return
    try:
        os.kill(pid, signal.SIGKILL)   # our own child, not reaped yet: the pid is still it
    except ProcessLookupError:
        pass
    os.waitpid(pid, 0)


def _check_loop(containers, st, argv: list[str], t: Timing, started: float) -> None:
    cdir = containers.path(st.id)
    health = read(cdir) or {"Status": "starting", "FailingStreak": 0, "Log": []}
    while True:
        in_start = time.monotonic() - started < t.start_period
        time.sleep(t.start_interval if in_start and health["Status"] == "starting"
                   else t.interval)
        began = time.monotonic()
        try:
            entry = probe(containers, st, argv, t.timeout)
        except RunError:
            return   # the container is gone; the supervisor records the rest
        log = list(health.get("Log") or [])
        health["Log"] = (log + [entry])[-MAX_LOG:]
        if entry["ExitCode"] == 0:
            health["Status"], health["FailingStreak"] = "healthy", 0
        elif not (health["Status"] == "starting" and began - started < t.start_period):
            # inside the start period a failure of a still-starting container does not count
            health["FailingStreak"] = int(health.get("FailingStreak") or 0) + 1
            if health["FailingStreak"] >= t.retries:
                health["Status"] = "unhealthy"
        write(cdir, health)


def probe(containers, st, argv: list[str], timeout: float) -> dict:
    """Run the check once: docker's log entry {Start, End, ExitCode, Output}."""
    from builder.sandbox import SandboxError

    from .exec import start_process

    start = containers.now()
    r, w = os.pipe2(os.O_CLOEXEC)
    saved = [os.dup(fd) for fd in (0, 1, 2)]
    null = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
    try:
        os.dup2(null, 0)
        os.dup2(w, 1)
        os.dup2(w, 2)
        try:
            proc = start_process(containers, st, argv)
        except SandboxError as e:   # e.g. the probe's executable is missing: 126/127
            return {"Start": start, "End": containers.now(), "ExitCode": e.exit_code,
                    "Output": _bounded(str(e).encode())}
    finally:
        for fd, old in zip((0, 1, 2), saved):
            os.dup2(old, fd)
            os.close(old)
        os.close(null)
        os.close(w)
    try:
        out, code = _collect(proc, r, timeout)
    finally:
        os.close(r)
        proc.close()
    if code is None:
        text = f"Health check exceeded timeout ({go_duration_text(timeout)})"
        return {"Start": start, "End": containers.now(), "ExitCode": -1, "Output": text}
    return {"Start": start, "End": containers.now(), "ExitCode": code, "Output": out}


def _collect(proc, r: int, timeout: float) -> tuple[str, int | None]:
    """Read the probe's output (bounded, the rest drained) until it exits or the timeout
    kills it; (output, exit code or None after a timeout)."""
    buf = bytearray()
    truncated = False
    deadline = time.monotonic() + timeout
    joiner = os.pidfd_open(proc.joiner)   # our own child, not yet reaped
    os.set_blocking(r, False)
    try:
        with selectors.DefaultSelector() as sel:
            sel.register(r, selectors.EVENT_READ)
            sel.register(joiner, selectors.EVENT_READ)
            pipe_open, exited = True, False
            while not exited:
                left = deadline - time.monotonic()
                if left <= 0:
                    proc.signal(signal.SIGKILL)
                    proc.wait()
                    return "", None
                for key, _ in sel.select(left):
                    if key.fd == joiner:
                        exited = True
                    elif pipe_open:
                        pipe_open, truncated = _drain(r, buf, truncated)
                        if not pipe_open:
                            sel.unregister(r)
            if pipe_open:   # what the probe wrote before it ended (not what stragglers write)
                _, truncated = _drain(r, buf, truncated)
            code = proc.wait()
    finally:
        os.close(joiner)
    return _bounded(bytes(buf), truncated), code


def _drain(r: int, buf: bytearray, truncated: bool) -> tuple[bool, bool]:
    """Read what is there, a bounded number of reads (a probe writing without end must
    not keep us from its deadline); (pipe still open, truncated)."""
    for _ in range(64):
        try:
            chunk = os.read(r, 65536)
        except BlockingIOError:
            return True, truncated
        if not chunk:
            return False, truncated
        keep = MAX_OUTPUT - len(buf)
        if keep > 0:
            buf += chunk[:keep]
        truncated = truncated or len(chunk) > keep
    return True, truncated


def _bounded(data: bytes, truncated: bool = False) -> str:
    if len(data) > MAX_OUTPUT:
        data, truncated = data[:MAX_OUTPUT], True
    return data.decode(errors="replace") + ("..." if truncated else "")
