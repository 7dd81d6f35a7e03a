"""Container logs: JSON lines ({"log", "stream", "time"}, docker's json-file format)
in ROOT/containers/<id>/container.log, rotated to .1, .2, ... at a size cap.

Bytes that are not UTF-8 survive the round trip (surrogate escapes in JSON).
"""

from __future__ import annotations

import json
import os
import re
import selectors
import sys
import time
from collections import deque
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Callable, Iterator

from layerstore.humanize import rfc3339_now

LOG_NAME = "container.log"


@dataclass
class LogWriter:
    path: Path
    max_size: int = 10 << 20
    max_files: int = 3
    _partial: dict[str, bytes] = field(default_factory=dict)
    _fd: int = -1
    _size: int = 0

    def __post_init__(self) -> None:
        self._open()

    def _open(self) -> None:
        self._fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
        self._size = os.fstat(self._fd).st_size

    def _rotate(self) -> None:
        os.close(self._fd)
        if self.max_files <= 1:
            os.truncate(self.path, 0)
        else:
            for n in range(self.max_files - 1, 0, -1):
                src = self.path if n == 1 else self.path.with_name(f"{LOG_NAME}.{n - 1}")
                if src.exists():
                    os.replace(src, self.path.with_name(f"{LOG_NAME}.{n}"))
        self._open()

    def write(self, stream: str, data: bytes) -> None:
        """Record whole lines; a trailing partial line waits for more (or for close)."""
        buf = self._partial.get(stream, b"") + data
        *lines, rest = buf.split(b"\n")
        pieces = [ln + b"\n" for ln in lines]
        if len(rest) > 16384:  # a very long line without newline is written in pieces
            pieces.append(rest)
            rest = b""
        self._partial[stream] = rest
        self._emit(stream, pieces)

    def _emit(self, stream: str, pieces: list[bytes]) -> None:
        now = rfc3339_now()
        for piece in pieces:
            rec = json.dumps({"log": piece.decode("utf-8", "surrogateescape"), "stream": stream,
                              "time": now}) + "\n"
            data = rec.encode("utf-8", "surrogatepass")
            if self._size and self._size + len(data) > self.max_size:
                self._rotate()
            os.write(self._fd, data)
            self._size += len(data)

    def close(self) -> None:
        for stream, rest in self._partial.items():
            if rest:
                self._emit(stream, [rest])
        self._partial.clear()
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


@contextmanager
def output_pipes() -> Iterator[dict[int, str]]:
    """Point our fds 1 and 2 at fresh pipes while a container is started (it inherits
    them); yields {read end: stream name}. Our own 1 and 2 are restored afterwards."""
    out_r, out_w = os.pipe2(os.O_CLOEXEC)
    err_r, err_w = os.pipe2(os.O_CLOEXEC)
    saved = (os.dup(1), os.dup(2))
    os.dup2(out_w, 1)
    os.dup2(err_w, 2)
    os.close(out_w)
    os.close(err_w)
    try:
        yield {out_r: "stdout", err_r: "stderr"}
    finally:
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        os.close(saved[0])
        os.close(saved[1])


def copy_streams(streams: dict[int, str], log: LogWriter | None,
                 tee: dict[str, int] | None = None) -> None:
    """Copy output fds (stream name each) into the log, and to `tee[stream]` when given,
    until every one of them is closed (EOF, or EIO from a pty whose slave side closed)."""
    with selectors.DefaultSelector() as sel:
        for fd in streams:
            sel.register(fd, selectors.EVENT_READ)
        open_fds = set(streams)
        while open_fds:
            for fd, data in ready_chunks(sel):
                if not data:
                    sel.unregister(fd)
                    open_fds.discard(fd)
                    continue
                name = streams[fd]
                if log is not None:
                    log.write(name, data)
                if tee and name in tee:
                    write_all(tee[name], data)


def ready_chunks(sel: selectors.BaseSelector) -> Iterator[tuple[int, bytes]]:
    """(fd, bytes read) for each fd `sel` finds ready; b"" at EOF or EIO (a pty whose
    slave side is closed everywhere)."""
    try:
        events = sel.select()
    except InterruptedError:
        return
    for key, _ in events:
        try:
            data = os.read(key.fd, 65536)
        except InterruptedError:
            continue
        except OSError:
            data = b""
        yield key.fd, data


def write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        try:
            view = view[os.write(fd, view):]
        except InterruptedError:
            continue
        except BrokenPipeError:
            return


@dataclass
class Entry:
    stream: str
    data: bytes
    time: str


def _parse(line: bytes) -> Entry | None:
    try:
        rec = json.loads(line.decode("utf-8", "surrogatepass"))
        return Entry(rec["stream"], rec["log"].encode("utf-8", "surrogateescape"), rec["time"])
    except (ValueError, KeyError, UnicodeError):
        return None


def log_files(cdir: Path) -> list[Path]:
    """Oldest first."""
    rotated = sorted((p for p in cdir.glob(LOG_NAME + ".*") if p.suffix[1:].isdigit()),
                     key=lambda p: -int(p.suffix[1:]))
    base = cdir / LOG_NAME
    return rotated + ([base] if base.exists() else [])


def read_entries(cdir: Path, tail: int | None = None) -> tuple[list[Entry], int]:
    """Every (or the last `tail`) entry; plus how far the current file was read."""
    entries: deque[Entry] = deque(maxlen=tail)
    offset = 0
    for path in log_files(cdir):
        with open(path, "rb") as f:
            data = f.read()
        complete = data[:data.rfind(b"\n") + 1]
        for line in complete.splitlines():
            e = _parse(line)
            if e is not None:
                entries.append(e)
        if path.name == LOG_NAME:
            offset = len(complete)
    return list(entries), offset


def follow_log(cdir: Path, running: Callable[[], bool], offset: int = 0) -> Iterator[Entry]:
    """Entries of the current log file from `offset` on, until the container has
    stopped and everything is drained; follows rotations."""
    path = cdir / LOG_NAME
    f = None
    ino = None
    buf = b""
    try:
        while True:
            active = running()
            if f is None and path.exists():
                f = open(path, "rb")
                ino = os.fstat(f.fileno()).st_ino
                f.seek(offset)
            chunk = f.read() if f else b""
            if chunk:
                buf += chunk
                *lines, buf = buf.split(b"\n")
                for line in lines:
                    e = _parse(line)
                    if e is not None:
                        yield e
                continue
            try:
                moved = os.stat(path).st_ino != ino
            except FileNotFoundError:
                moved = False
            if f is not None and moved:  # rotated: the new file is read from its start
                f.close()
                f, offset, buf = None, 0, b""
                continue
            if not active:
                return
            time.sleep(0.05)
    finally:
        if f:
            f.close()


def render(entry: Entry, timestamps: bool) -> None:
    out = sys.stdout.buffer if entry.stream == "stdout" else sys.stderr.buffer
    if timestamps:   # docker prints RFC 3339 with nanoseconds; we record microseconds
        stamp = entry.time
        if len(stamp) == 27 and stamp[19] == "." and stamp.endswith("Z"):
            stamp = stamp[:-1] + "000Z"
        out.write(stamp.encode() + b" ")
    out.write(entry.data)
    out.flush()


_DURATION = re.compile(r"(?:(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h))+")
_UNIT = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1, "m": 60, "h": 3600}


def parse_log_time(text: str, what: str, now: datetime | None = None) -> datetime:
    """docker's --since/--until: RFC 3339 (date, date and time, with or without zone),
    a Unix timestamp (seconds[.fraction]), or a Go duration (10m, 1h30m) before now."""
    from layerstore.humanize import parse_time

    from .errors import RunError

    now = now or datetime.now(timezone.utc)
    t = text.strip()
    if _DURATION.fullmatch(t):
        secs = sum(float(n) * _UNIT[u] for n, u in re.findall(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h)", t))
        return now - timedelta(seconds=secs)
    if re.fullmatch(r"\d+(\.\d{1,9})?", t):
        return datetime.fromtimestamp(float(t), timezone.utc)
    dt = parse_time(t + "T00:00:00Z" if re.fullmatch(r"\d{4}-\d\d-\d\d", t) else t)
    if dt is None:
        raise RunError(f"invalid {what} {text!r}: expected an RFC 3339 time, a Unix timestamp "
                       "or a duration such as 10m")
    return dt


def _within(entry: Entry, since: datetime | None, until: datetime | None) -> bool:
    from layerstore.humanize import parse_time

    if since is None and until is None:
        return True
    t = parse_time(entry.time)
    if t is None:
        return False
    return (since is None or t >= since) and (until is None or t <= until)


def show(containers, ref: str, follow: bool, tail: str, timestamps: bool,
         since: str | None = None, until: str | None = None) -> None:
    """`pybuild logs`: the recorded output, then (with -f) new output until the end."""
    from .errors import RunError
    from .lifecycle import is_running

    st = containers.find(ref)
    if tail == "all":
        n = None
    elif tail.isdigit():
        n = int(tail)
    else:
        raise RunError(f"invalid --tail {tail!r}: expected a number or all")
    t_since = parse_log_time(since, "--since") if since else None
    t_until = parse_log_time(until, "--until") if until else None
    cdir = containers.path(st.id)
    entries, offset = read_entries(cdir, None if t_since or t_until else n)
    entries = [e for e in entries if _within(e, t_since, t_until)]
    if n is not None:
        entries = entries[len(entries) - n:] if n else []
    for e in entries:
        render(e, timestamps)
    if not follow or (t_until is not None and t_until <= datetime.now(timezone.utc)):
        return

    def running() -> bool:
        cur = containers.try_load(st.id)
        return cur is not None and is_running(cur)
    for e in follow_log(cdir, running, offset):
        if t_until is not None and datetime.now(timezone.utc) > t_until:
            return
        if _within(e, t_since, t_until):
            render(e, timestamps)
