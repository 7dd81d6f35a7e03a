"""Per-container cgroups beneath our own, on cgroup v2, v1 or a hybrid of both.

Each controller is used from v2 when our v2 cgroup offers it, else from its
v1 hierarchy. A container gets `pybuild-<id>` only beneath the cgroup this
process is in (read from /proc/self/cgroup) and it is removed afterwards.
"""

from __future__ import annotations

import errno
import os
import time
from dataclasses import dataclass, field
from functools import lru_cache

from .spec import Limits, SandboxError

PREFIX = "pybuild-"


@dataclass(frozen=True)
class Hierarchy:
    version: int          # 1 or 2
    base: str             # directory of the cgroup we run in, in this hierarchy


@lru_cache(maxsize=1)
def _mounts() -> tuple[dict[str, tuple[str, str]], tuple[str, str] | None]:
    """v1 controller -> (mount root, mount point); v2 (mount root, mount point)."""
    v1: dict[str, tuple[str, str]] = {}
    v2 = None
    with open("/proc/self/mountinfo") as f:
        for line in f:
            left, _, right = line.partition(" - ")
            parts, rparts = left.split(), right.split()
            if len(rparts) < 3:
                continue
            root, point = parts[3], parts[4].replace("\\040", " ")
            if rparts[0] == "cgroup2" and v2 is None:
                v2 = (root, point)
            elif rparts[0] == "cgroup":
                for opt in rparts[2].split(","):
                    v1.setdefault(opt, (root, point))
    return v1, v2


def _join(mount: tuple[str, str], path: str) -> str:
    root, point = mount
    if root != "/" and path.startswith(root):
        path = path[len(root):]
    return os.path.join(point, path.lstrip("/"))


def hierarchies() -> dict[str, Hierarchy]:
    """Where each of memory, pids and cpu can be controlled for our children."""
    v1, v2 = _mounts()
    own_v1: dict[str, str] = {}
    own_v2 = None
    with open("/proc/self/cgroup") as f:
        for line in f:
            hid, ctrls, path = line.rstrip("\n").split(":", 2)
            if hid == "0" and not ctrls:
                own_v2 = path
            for c in ctrls.split(","):
                own_v1[c] = path
    out: dict[str, Hierarchy] = {}
    v2_avail: set[str] = set()
    v2_dir = _join(v2, own_v2) if v2 and own_v2 is not None else None
    if v2_dir:
        try:
            with open(os.path.join(v2_dir, "cgroup.controllers")) as f:
                v2_avail = set(f.read().split())
        except OSError:
            pass
    for c in ("memory", "pids", "cpu"):
        if v2_dir and c in v2_avail:
            out[c] = Hierarchy(2, v2_dir)
        elif c in v1 and c in own_v1:
            out[c] = Hierarchy(1, _join(v1[c], own_v1[c]))
    return out


def _write(path: str, value: str) -> None:
    with open(path, "w") as f:
        f.write(value)


def _read(path: str) -> str:
    try:
        with open(path) as f:
            return f.read()
    except OSError:
        return ""


@dataclass
class Cgroups:
    """The cgroup directories of one container, one per distinct hierarchy."""

    container_id: str
    limits: Limits
    dirs: dict[str, str] = field(default_factory=dict)      # controller -> directory
    created: list[str] = field(default_factory=list)

    def create(self) -> None:
        lim = self.limits
        wanted = {"memory", "pids"}
        if lim.cpus is not None or lim.cpu_weight is not None:
            wanted.add("cpu")
        hs = hierarchies()
        for c, need in (("memory", lim.memory), ("pids", lim.pids),
                        ("cpu", lim.cpus or lim.cpu_weight)):
            if need is not None and c not in hs:
                raise SandboxError(f"cgroup controller {c} is not available to this process; "
                                   f"cannot apply the {c} limit")
        required = {c for c, v in (("memory", lim.memory), ("pids", lim.pids),
                                    ("cpu", lim.cpus or lim.cpu_weight)) if v is not None}
        try:
            for c in sorted(wanted & hs.keys()):
                h = hs[c]
                d = os.path.join(h.base, PREFIX + self.container_id)
                try:
                    if h.version == 2:
                        self._enable_v2(h.base, c)
                    if d not in self.created:
                        os.mkdir(d, 0o755)
                        self.created.append(d)
                except OSError:
                    if c in required:
                        raise
                    continue  # only for accounting: do without it rather than fail
                self.dirs[c] = d
            self._apply(hs)
        except OSError as e:
            self.remove()
            raise SandboxError(f"cgroup set-up for container {self.container_id}: {e}") from None

    @staticmethod
    def _enable_v2(base: str, controller: str) -> None:
        if controller in _read(os.path.join(base, "cgroup.subtree_control")).split():
            return
        try:
            _write(os.path.join(base, "cgroup.subtree_control"), "+" + controller)
        except OSError as e:
            raise OSError(e.errno, f"cannot enable {controller} in {base} (a cgroup v2 "
                          "with processes of its own cannot delegate controllers)") from None

    def _apply(self, hs: dict[str, Hierarchy]) -> None:
        lim = self.limits
        if lim.memory is not None:
            d = self.dirs["memory"]
            swap = lim.memory_swap if lim.memory_swap is not None else 2 * lim.memory
            if hs["memory"].version == 2:
                _write(f"{d}/memory.max", str(lim.memory))
                if os.path.exists(f"{d}/memory.swap.max"):
                    _write(f"{d}/memory.swap.max", "max" if swap == -1 else str(swap - lim.memory))
            else:
                _write(f"{d}/memory.limit_in_bytes", str(lim.memory))
                if os.path.exists(f"{d}/memory.memsw.limit_in_bytes"):
                    _write(f"{d}/memory.memsw.limit_in_bytes", str(swap))
        if lim.pids is not None:
            _write(f"{self.dirs['pids']}/pids.max", str(lim.pids))
        if "cpu" in self.dirs:
            d, v2 = self.dirs["cpu"], hs["cpu"].version == 2
            period = 100000
            if lim.cpus is not None:
                quota = max(1000, int(lim.cpus * period))
                if v2:
                    _write(f"{d}/cpu.max", f"{quota} {period}")
                else:
                    _write(f"{d}/cpu.cfs_period_us", str(period))
                    _write(f"{d}/cpu.cfs_quota_us", str(quota))
            if lim.cpu_weight is not None:
                if v2:
                    _write(f"{d}/cpu.weight", str(lim.cpu_weight))
                else:
                    shares = 2 + (lim.cpu_weight - 1) * 262142 // 9999
                    _write(f"{d}/cpu.shares", str(shares))

    def add(self, pid: int) -> None:
        """Move `pid` into every cgroup of the container."""
        for d in dict.fromkeys(self.dirs.values()):
            try:
                _write(os.path.join(d, "cgroup.procs"), str(pid))
            except OSError as e:
                raise SandboxError(f"cgroup {d}: cannot add process {pid}: {e.strerror}") from None

    def oom_kills(self) -> int:
        d = self.dirs.get("memory")
        if d is None:
            return 0
        text = _read(f"{d}/memory.events") or _read(f"{d}/memory.oom_control")
        for line in text.splitlines():
            key, _, val = line.partition(" ")
            if key == "oom_kill":
                return int(val)
        return 0

    def remove(self, wait: float = 2.0) -> None:
        """rmdir our cgroups; tasks still exiting may keep one busy for a moment."""
        deadline = time.monotonic() + wait
        for d in list(reversed(self.created)):
            while True:
                try:
                    os.rmdir(d)
                    break
                except FileNotFoundError:
                    break
                except OSError as e:
                    if e.errno != errno.EBUSY or time.monotonic() > deadline:
                        raise SandboxError(f"cannot remove cgroup {d}: {e.strerror}") from None
                    self._kill_all(d)
                    time.sleep(0.005)
            self.created.remove(d)
        self.dirs.clear()

    @staticmethod
    def _kill_all(d: str) -> None:
        for pid in _read(os.path.join(d, "cgroup.procs")).split():
            try:
                os.kill(int(pid), 9)
            except ProcessLookupError:
                pass
