"""Container records under ROOT/containers/<id>/: upper/, work/, sandbox/, state.json.

state.json carries `"image": "<manifest digest>"`, which the store's prune treats
as a root, and whatever `ps`, `stop`, `exec` and `inspect` need. A record is
written atomically (temp + rename); changes go under a per-container flock.

The process that creates a container owns it until it has recorded its end (for
`-d`, the supervisor it forks inherits that): it holds an exclusive flock on the
container's directory, which the kernel drops however the owner dies. A `--rm`
container, or one never started, whose directory nobody holds any more was
orphaned by a SIGKILL: the next `ps`, `container prune` or run claiming its name
removes it with its anonymous volumes, as docker's daemon would have (otherwise its
upper dir, volumes and name stay for ever).
"""

from __future__ import annotations

import fcntl
import json
import os
import signal
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Iterator

from builder.procinfo import start_time
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
    no_new_privs: bool = False
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
    restart_policy: dict = field(default_factory=lambda: {"Name": "no", "MaximumRetryCount": 0})
    restart_count: int = 0
    healthcheck: dict | None = None                        # Config.Healthcheck (merged)
    health_shell: list[str] | None = None                  # the image's SHELL, for CMD-SHELL
    health: dict | None = None        # State.Health: from health.json (see health.py), not saved
    # inspect's HostConfig entries of --add-host, --dns*, --device, --ipc/--pid/--uts,
    # --sysctl, --shm-size, --group-add, in docker's names (GroupAdd: exec's processes too)
    host_config: dict = field(default_factory=dict)
    awaits_start: bool = False        # made by `create`: waits for `start`, owned by nobody

    @classmethod
    def from_json(cls, data: dict) -> "ContainerState":
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


proc_start_time = start_time


def alive(pid: int, start: str) -> bool:
    return pid > 0 and bool(start) and proc_start_time(pid) == start


_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


@dataclass
class Containers:
    """The containers directory of one store."""

    root: Path                        # the store root
    _owned: dict[str, int] = field(default_factory=dict, repr=False)   # id -> locked dir fd

    @property
    def dir(self) -> Path:
        return self.root / "containers"

    def path(self, cid: str) -> Path:
        return self.dir / cid

    def new_id(self) -> str:
        import secrets   # here, not at the top: ps, logs, stop... import this module (hmac, _hashlib)

        while True:
            cid = secrets.token_hex(32)
            if not cid[:12].isdigit() and not self.path(cid).exists():
                return cid

    @contextmanager
    def locked(self, cid: str) -> Iterator[None]:
        """Hold the container's own lock while reading-modifying-writing its state."""
        fd = os.open(self.path(cid) / "lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    @property
    def names(self) -> Path:
        return self.dir / ".names"

    def create(self, state: ContainerState) -> Path:
        """Make the container's directory and first record, claiming its name.

        Names live as symlinks name -> id in containers/.names, created with
        O_EXCL semantics, so two concurrent runs cannot take the same name."""
        self.names.mkdir(mode=0o700, parents=True, exist_ok=True)
        if state.name:
            self._claim(state.name, state.id)
        else:
            while True:
                state.name = self._generated_name()
                try:
                    os.symlink(state.id, self.names / state.name)
                    break
                except FileExistsError:
                    continue
        d = self.path(state.id)
        try:
            d.mkdir(mode=0o700)
            self._own(state.id)
            for sub in ("upper", "work", "sandbox"):
                (d / sub).mkdir(mode=0o755)
            self.save(state)
        except BaseException:
            self._release(state.name, state.id)
            from layerstore.resolver import remove_tree

            try:
                remove_tree(d)
            except OSError:
                pass
            self.disown(state.id)
            raise
        return d

    def _own(self, cid: str) -> None:
        """Hold the container's directory lock: it is ours until disown() or our death
        (forked children, the -d supervisor, share it; the sandbox's monitor closes it)."""
        fd = os.open(self.path(cid), _DIR)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BaseException:
            os.close(fd)
            raise
        self._owned[cid] = fd

    def try_own(self, cid: str) -> bool:
        """Become the owner of a container, to start it; False while another process
        owns it (it runs, is being started, or its last owner is still closing)."""
        try:
            self._own(cid)
        except BlockingIOError:
            return False
        return True

    def rename(self, st: ContainerState, new: str) -> None:
        """Claim `new` (as a run claims its name), record it, then free the old name."""
        if new == st.name:
            raise RunError(f"renaming container {st.name!r} with the same name as its "
                           "current name")
        with self.locked(st.id):
            cur = self.load(st.id)        # as recorded now (an exit may have been recorded)
            self._claim(new, st.id)
            old, cur.name = cur.name, new
            try:
                self.save(cur)
            except BaseException:
                self._release(new, st.id)
                raise
            self._release(old, st.id)
            st.name = new

    def disown(self, cid: str) -> None:
        """Let go of a container whose end is recorded (or that is removed)."""
        fd = self._owned.pop(cid, -1)
        if fd >= 0:
            os.close(fd)

    def owned(self, cid: str) -> bool:
        """Whether a live process owns the container (holds its directory lock)."""
        from layerstore import workdirs

        return workdirs.owner_alive(self.path(cid))

    def orphaned(self, st: ContainerState) -> bool:
        """A record nobody will finish: never started or --rm, and its owner is gone."""
        if st.status == "created" and st.awaits_start:
            return False
        return ((st.auto_remove or st.status == "created") and not self.owned(st.id)
                and not alive(st.owner_pid, st.owner_start))   # (records of older versions)

    def reclaim(self, st: ContainerState) -> bool:
        """Finish an orphaned record as its owner would have: remove a --rm container
        and its anonymous volumes, record one that never started as exited. Says
        whether the record is gone."""
        if not self.orphaned(st):
            return False
        try:
            if st.auto_remove:
                self.discard(st)
                return True
            with self.locked(st.id):
                st.status, st.pid = "exited", 0
                if st.exit_code is None:
                    st.exit_code = 255
                st.error = st.error or "the process that created the container died before it started"
                self.save(st)
        except (OSError, RunError):   # another command reclaiming it at the same time
            return not self.path(st.id).exists()
        return False

    def _claim(self, name: str, cid: str) -> None:
        link = self.names / name
        for _ in range(2):
            try:
                os.symlink(cid, link)
                return
            except FileExistsError:
                owner = self._owner(name)
                holder = self.try_load(owner) if owner is not None else None
                if holder is not None and not self.reclaim(holder):
                    raise RunError(f"container name {name!r} is already in use by "
                                   f"container {owner[:12]}") from None
                self._release(name, owner)  # a stale link: its container is gone
        raise RunError(f"container name {name!r} is already in use")

    def _owner(self, name: str) -> str | None:
        try:
            return os.readlink(self.names / name)
        except OSError:
            return None

    def _release(self, name: str, cid: str | None) -> None:
        if name and self._owner(name) == cid:
            try:
                os.unlink(self.names / name)
            except FileNotFoundError:
                pass

    @staticmethod
    def _generated_name() -> str:
        import secrets

        adjectives = ("brave", "calm", "eager", "fond", "keen", "quiet", "sharp", "wise")
        nouns = ("ada", "curie", "hopper", "lovelace", "noether", "ritchie", "turing", "wirth")
        return f"{secrets.choice(adjectives)}_{secrets.choice(nouns)}_{secrets.token_hex(3)}"

    def save(self, state: ContainerState) -> None:
        """Write-temp + rename, without fsync: this is runtime state (a crash ends the
        container anyway), and three fsyncs would double the cost of `run --rm true`."""
        path = self.path(state.id) / "state.json"
        tmp = path.with_name(f".state.{os.getpid()}.tmp")
        data = asdict(state)
        data.pop("health", None)
        with open(tmp, "w") as f:
            json.dump(data, f, indent=1, sort_keys=True)
        os.rename(tmp, path)

    def load(self, cid: str) -> ContainerState:
        try:
            data = json.loads((self.path(cid) / "state.json").read_text())
        except FileNotFoundError:
            raise NoSuchContainer(cid) from None
        except (OSError, ValueError) as e:
            raise RunError(f"container {cid[:12]}: unreadable state.json: {e}") from None
        st = ContainerState.from_json(data)
        if st.healthcheck:
            from .health import read as read_health

            st.health = read_health(self.path(cid))
        return self.refresh(st)

    def try_load(self, cid: str) -> ContainerState | None:
        """The record, or None when the container is gone or its record unreadable."""
        try:
            return self.load(cid)
        except (NoSuchContainer, RunError):
            return None

    def refresh(self, st: ContainerState) -> ContainerState:
        """A running record whose owner died without recording an exit is exited."""
        if st.status in ("running", "restarting") and not alive(st.owner_pid, st.owner_start):
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
                if st is not None and not self.reclaim(st):
                    out.append(st)
        return out

    def find(self, ref: str) -> ContainerState:
        """By full id, name or unique id prefix, as docker resolves them."""
        ref = ref.lstrip("/")
        if not ref or "/" in ref or ref.startswith("."):
            raise NoSuchContainer(ref)
        if (self.path(ref) / "state.json").exists():
            return self.load(ref)
        owner = self._owner(ref)
        if owner is not None and (self.path(owner) / "state.json").exists():
            return self.load(owner)
        try:
            entries = os.listdir(self.dir)
        except FileNotFoundError:
            entries = []
        matches = [e for e in entries if e.startswith(ref) and not e.startswith(".")]
        if len(matches) == 1:
            return self.load(matches[0])
        if len(matches) > 1:
            raise RunError(f"{ref}: ambiguous container ID prefix ({len(matches)} match)")
        raise NoSuchContainer(ref)

    def remove_dir(self, cid: str, name: str = "") -> None:
        """Delete everything of the container on disk (no mounts of ours live on the host)."""
        from layerstore import resolver

        self._release(name, cid)
        d = self.path(cid)
        if not d.exists():
            return
        try:
            pfd = os.open(self.dir, _DIR)
        except FileNotFoundError:
            return
        try:   # the upper dir is the container's writing: never follow a link in it
            resolver.remove_tree_at(pfd, cid)
        except OSError as e:
            raise RunError(f"container {cid[:12]}: cannot remove {d}: {e.strerror}") from None
        finally:
            os.close(pfd)

    def discard(self, st: ContainerState) -> None:
        """Remove a container's directory and its anonymous volumes; it is no longer ours."""
        from .volumes import Volumes

        try:
            self.remove_dir(st.id, st.name)
        finally:
            self.disown(st.id)
        vols = Volumes(self.root)
        for name in st.anon_volumes:
            try:
                vols.remove(name, set())
            except RunError:
                pass

    def now(self) -> str:
        return rfc3339_now()
