"""Container records under ROOT/containers/<id>/: upper/, work/, sandbox/, state.json.

state.json carries `"image": "<manifest digest>"`, which the store's prune treats
as a root, and whatever `ps`, `stop`, `exec` and `inspect` need. A record is
written atomically (temp + rename); changes go under a per-container flock.
"""

from __future__ import annotations

import fcntl
import json
import os
import secrets
import shutil
import signal
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Iterator

from layerstore.atomic import atomic_write
from layerstore.humanize import rfc3339_now

from .errors import NoSuchContainer, RunError


@dataclass
class ContainerState:
    """What is known about one container; written to state.json."""

    id: str
    name: str
    image: str                        # manifest digest (a GC root)
    image_name: str
    image_id: str                     # config digest
    created: str
    argv: list[str]
    env: dict[str, str]
    cwd: str
    user: str
    hostname: str
    status: str = "created"           # created | running | exited
    pid: int = 0                      # host PID of the container's PID 1
    pid_start: str = ""               # its start time (clock ticks), to detect PID reuse
    owner_pid: int = 0                # the CLI or supervisor that waits for it
    owner_start: str = ""
    detached: bool = False
    tty: bool = False
    auto_remove: bool = False
    exit_code: int | None = None
    oom_killed: bool = False
    error: str = ""
    started_at: str = ""
    finished_at: str = ""
    stop_signal: int = int(signal.SIGTERM)
    stop_timeout: int = 10
    cap_add: list[str] = field(default_factory=list)
    cap_drop: list[str] = field(default_factory=list)
    seccomp: str | None = None
    no_new_privs: bool = True
    privileged: bool = False
    read_only: bool = False
    network: str = "private"
    ip: str | None = None
    ports: list[str] = field(default_factory=list)         # "0.0.0.0:8080->80/tcp"
    mounts: list[dict] = field(default_factory=list)       # inspect's Mounts
    anon_volumes: list[str] = field(default_factory=list)
    labels: dict[str, str] = field(default_factory=dict)
    limits: dict = field(default_factory=dict)
    log_max_size: int = 10 << 20
    log_max_files: int = 3

    @classmethod
    def from_json(cls, data: dict) -> "ContainerState":
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


def proc_start_time(pid: int) -> str:
    """Field 22 of /proc/PID/stat, or "" when the process is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            text = f.read()
    except OSError:
        return ""
    return text.rsplit(")", 1)[1].split()[19]


def alive(pid: int, start: str) -> bool:
    return pid > 0 and bool(start) and proc_start_time(pid) == start


@dataclass
class Containers:
    """The containers directory of one store."""

    root: Path                        # the store root

    @property
    def dir(self) -> Path:
        return self.root / "containers"

    def path(self, cid: str) -> Path:
        return self.dir / cid

    def new_id(self) -> str:
        while True:
            cid = secrets.token_hex(32)
            if not cid[:12].isdigit() and not self.path(cid).exists():
                return cid

    @contextmanager
    def _global_lock(self) -> Iterator[None]:
        self.dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.dir / ".lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    @contextmanager
    def locked(self, cid: str) -> Iterator[None]:
        """Hold the container's own lock while reading-modifying-writing its state."""
        fd = os.open(self.path(cid) / "lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def create(self, state: ContainerState) -> Path:
        """Make the container's directory and first record; the name must be free."""
        with self._global_lock():
            if state.name:
                for other in self.all():
                    if other.name == state.name:
                        raise RunError(f"container name {state.name!r} is already in use by "
                                       f"container {other.id[:12]}")
            else:
                state.name = self._generated_name()
            d = self.path(state.id)
            d.mkdir(mode=0o700)
            for sub in ("upper", "work", "sandbox"):
                (d / sub).mkdir(mode=0o755)
            self.save(state)
        return d

    def _generated_name(self) -> str:
        taken = {c.name for c in self.all()}
        adjectives = ("brave", "calm", "eager", "fond", "keen", "quiet", "sharp", "wise")
        nouns = ("ada", "curie", "hopper", "lovelace", "noether", "ritchie", "turing", "wirth")
        while True:
            name = f"{secrets.choice(adjectives)}_{secrets.choice(nouns)}_{secrets.token_hex(2)}"
            if name not in taken:
                return name

    def save(self, state: ContainerState) -> None:
        data = json.dumps(asdict(state), indent=1, sort_keys=True).encode()
        atomic_write(self.path(state.id) / "state.json", data, 0o600)

    def load(self, cid: str) -> ContainerState:
        try:
            data = json.loads((self.path(cid) / "state.json").read_text())
        except FileNotFoundError:
            raise NoSuchContainer(cid) from None
        except (OSError, ValueError) as e:
            raise RunError(f"container {cid[:12]}: unreadable state.json: {e}") from None
        return self.refresh(ContainerState.from_json(data))

    def try_load(self, cid: str) -> ContainerState | None:
        """The record, or None when the container is gone or its record unreadable."""
        try:
            return self.load(cid)
        except (NoSuchContainer, RunError):
            return None

    def refresh(self, st: ContainerState) -> ContainerState:
        """A running record whose owner died without recording an exit is exited."""
        if st.status == "running" and not alive(st.owner_pid, st.owner_start):
            st.status = "exited"
            if st.exit_code is None:
                st.exit_code = 255 if not st.error else st.exit_code
                st.error = st.error or "the process that owned the container died"
        return st

    def all(self) -> list[ContainerState]:
        out = []
        if not self.dir.is_dir():
            return out
        for entry in sorted(os.listdir(self.dir)):
            if not entry.startswith("."):
                st = self.try_load(entry)
                if st is not None:
                    out.append(st)
        return out

    def find(self, ref: str) -> ContainerState:
        """By full id, unique id prefix or name, as docker resolves them."""
        if not ref:
            raise NoSuchContainer(ref)
        everything = self.all()
        for c in everything:
            if c.id == ref or c.name == ref.lstrip("/"):
                return c
        matches = [c for c in everything if c.id.startswith(ref)]
        if len(matches) == 1:
            return matches[0]
        if len(matches) > 1:
            raise RunError(f"{ref}: ambiguous container ID prefix ({len(matches)} match)")
        raise NoSuchContainer(ref)

    def remove_dir(self, cid: str) -> None:
        """Delete everything of the container on disk (no mounts of ours live on the host)."""
        d = self.path(cid)
        if not d.exists():
            return
        shutil.rmtree(d, onerror=_force_rm)
        if d.exists():
            raise RunError(f"container {cid[:12]}: cannot remove {d}")

    def now(self) -> str:
        return rfc3339_now()


def _force_rm(func, path, exc_info) -> None:
    """Overlay work dirs may hold a d--------- 'work' dir: make it writable and retry."""
    try:
        os.chmod(os.path.dirname(path), 0o700)
        if os.path.isdir(path) and not os.path.islink(path):
            os.chmod(path, 0o700)
            shutil.rmtree(path, ignore_errors=True)
        else:
            os.unlink(path)
    except OSError:
        pass
