"""Per-container cgroups beneath our own, on cgroup v2, v1 or a hybrid of both.

Each controller is used from v2 when our v2 cgroup offers it, else from its
v1 hierarchy. A container gets `pybuild-<id>` only beneath the cgroup this
process is in (read from /proc/self/cgroup) and it is removed afterwards.

Every container also gets device rules (devices.py): in the v1 `devices`
controller when it is mounted, else as a BPF device program attached to the
container's v2 cgroup (which needs no controller enabled; reached through a
mount of our own when no cgroup file system is mounted here). A container that
keeps CAP_MKNOD is not started without them; user-namespace ones get none.
"""

from __future__ import annotations

import errno
import re
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import lru_cache

from layerstore.userns import in_user_namespace

from . import devices as devmod
from .spec import Limits, SandboxError

PREFIX = "pybuild-"
_ID_SAFE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")

# Where device rules go: None picks the v1 devices controller when mounted, else v2;
# 1 or 2 forces that one (tests use 2 to run the BPF path on a hybrid host).
DEVICES_VERSION: int | None = None

# A cgroup-v2 path in a mount of our own that no namespace sees, for when no cgroup
# file system is mounted here (`ip netns exec` mounts a fresh /sys): see _real().
DETACHED = "cgroup2:"


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


def hierarchies(devices_version: int | None = None) -> dict[str, Hierarchy]:
    """Where each of memory, pids and cpu can be controlled for our children, and under
    "devices" where their device rules go (v1 controller, or v2 for a BPF program;
    `devices_version` forces one of them)."""
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
    # the freezer (pause): v2's cgroup.freeze is in every non-root cgroup without any
    # controller, and lets SIGKILL through to frozen tasks; v1's freezer does not
    if v2_dir:
        out["freezer"] = Hierarchy(2, v2_dir)
    elif "freezer" in v1 and "freezer" in own_v1:
        out["freezer"] = Hierarchy(1, _join(v1["freezer"], own_v1["freezer"]))
    if devices_version != 2 and "devices" in v1 and "devices" in own_v1:
        out["devices"] = Hierarchy(1, _join(v1["devices"], own_v1["devices"]))
    elif devices_version != 1 and v2_dir:
        out["devices"] = Hierarchy(2, v2_dir)
    elif devices_version != 1 and v2 is None and own_v2 is not None:
        out["devices"] = Hierarchy(2, DETACHED + own_v2)
    return out


def of_container(pid: int, container_id: str) -> list[str]:
    """The cgroup directories of a running container, for `exec` (which may run beneath
    another cgroup than the process that started it); see by_controller."""
    return list(dict.fromkeys(by_controller(pid, container_id).values()))


def by_controller(pid: int, container_id: str) -> dict[str, str]:
    """{v1 controller or "unified": directory} of a running container: read from its
    PID 1's /proc/<pid>/cgroup, the kernel's own record, keeping each path only up to
    the component named for the container (pybuild-<id>), so a sub-cgroup that a
    privileged container made for itself is not where we go."""
    v1, v2 = _mounts()
    name = PREFIX + container_id
    with open(f"/proc/{pid}/cgroup") as f:
        text = f.read(1 << 16)
    out: dict[str, str] = {}
    for line in text.splitlines():
        hid, _, rest = line.partition(":")
        ctrls, _, path = rest.partition(":")
        parts = path.split("/")
        if name not in parts or ".." in parts:
            continue
        path = "/".join(parts[:parts.index(name) + 1])
        if hid == "0" and not ctrls:
            out["unified"] = _join(v2, path) if v2 else DETACHED + path
            continue
        for c in ctrls.split(","):
            if c in v1:
                out[c] = _join(v1[c], path)
    return out


@contextmanager
def _real(path: str) -> Iterator[str]:
    """A usable path for `path`; a DETACHED one goes through a fresh cgroup2 mount that
    is attached nowhere and goes away when its fd is closed (so there is nothing to
    unmount, also for a process that did not create it)."""
    if not path.startswith(DETACHED):
        yield path
        return
    from . import libc

    fs = libc.fsopen("cgroup2")
    try:
        libc.fsconfig(fs, libc.FSCONFIG_CMD_CREATE)
        mnt = libc.fsmount(fs)
    finally:
        os.close(fs)
    try:
        yield f"/proc/self/fd/{mnt}/" + path[len(DETACHED):].lstrip("/")
    finally:
        os.close(mnt)


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
    privileged: bool = False     # all devices allowed; else devices.DEFAULT_RULES
    userns: bool = False         # in a user namespace mknod is impossible: no device rules
    devices: tuple = ()          # devices.DeviceRule of each --device, beside the defaults
    freezer: bool = False        # also a freezer cgroup (pause/unpause)
    dirs: dict[str, str] = field(default_factory=dict)      # controller -> directory
    created: list[str] = field(default_factory=list)

    def create(self) -> None:
        lim = self.limits
        wanted = {"memory", "pids"} | ({"freezer"} if self.freezer else set())
        if lim.cpus is not None or lim.cpu_weight is not None:
            wanted.add("cpu")
        hs = hierarchies(DEVICES_VERSION)
        rootless = in_user_namespace()
        if rootless:
            # only a subtree delegated to the user (systemd's Delegate=) is ours to write;
            # the rest belongs to host root, whom our namespace does not map
            hs = {c: h for c, h in hs.items() if os.access(h.base, os.W_OK)}
        for c, need in (("memory", lim.memory), ("pids", lim.pids),
                        ("cpu", lim.cpus or lim.cpu_weight)):
            if need is not None and c not in hs:
                if rootless:
                    raise SandboxError(
                        f"rootless: no cgroup delegated to this user holds the {c} controller, "
                        f"so the {c} limit cannot be enforced (run pybuild in a delegated "
                        "cgroup v2 subtree, e.g. `systemd-run --user --scope -p Delegate=yes`)")
                raise SandboxError(f"cgroup controller {c} is not available to this process; "
                                   f"cannot apply the {c} limit")
        required = {c for c, v in (("memory", lim.memory), ("pids", lim.pids),
                                    ("cpu", lim.cpus or lim.cpu_weight)) if v is not None}
        try:
            for c in sorted(wanted & hs.keys()):
                h = hs[c]
                d = os.path.join(h.base, PREFIX + self.container_id)
                try:
                    if h.version == 2 and c != "freezer":
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
            self._devices(hs.get("devices"))
        except OSError as e:
            self.remove()
            raise SandboxError(f"cgroup set-up for container {self.container_id}: {e}") from None
        except BaseException:
            self.remove()
            raise

    def _devices(self, h: Hierarchy | None) -> None:
        """Apply the device rules in `h`; without them a container that keeps CAP_MKNOD
        could create and open any host device, so that is an error unless it is
        privileged (allowed everything anyway). In a user namespace there are none: it
        cannot mknod, and its monitor could not remove the cgroup if our caller died."""
        if self.userns:
            return
        rules = devmod.rules_for(self.privileged)
        if not self.privileged:
            rules += tuple(self.devices)
        try:
            if h is None:
                raise OSError(errno.ENOENT, "neither a v1 devices controller nor cgroup v2 "
                              "is mounted")
            try:
                self.dirs["devices"] = self._device_cgroup(h, rules)
            except OSError:
                if h.version == 2 or DEVICES_VERSION == 1:
                    raise
                v2 = hierarchies(2).get("devices")  # e.g. a read-only v1 hierarchy
                if v2 is None or v2.version != 2:
                    raise
                self.dirs["devices"] = self._device_cgroup(v2, rules)
        except OSError as e:
            if self.privileged:
                return
            why = f"{e.strerror}: {e.filename}" if e.filename else (e.strerror or str(e))
            raise SandboxError(f"cannot apply device rules to container {self.container_id} "
                               f"({why}); refusing to run it with CAP_MKNOD unconfined "
                               "(needs write access to the devices cgroup or cgroup v2, "
                               "or a user namespace)") from None

    def _device_cgroup(self, h: Hierarchy, rules: tuple[devmod.DeviceRule, ...]) -> str:
        d = os.path.join(h.base, PREFIX + self.container_id)
        with _real(d) as real:
            if d not in self.created:
                os.mkdir(real, 0o755)
                self.created.append(d)  # removed with the others, also on failure
            if h.version == 1:
                self._devices_v1(real, rules)
            else:
                devmod.attach(real, rules)
        return d

    def _devices_v1(self, d: str, rules: tuple[devmod.DeviceRule, ...]) -> None:
        # a new v1 devices cgroup starts with its parent's rules: deny all, then allow.
        # An allow the parent lacks fails with EPERM and would change nothing: skip it.
        if rules != devmod.ALLOW_ALL:
            _write(f"{d}/devices.deny", "a")
        fd = os.open(f"{d}/devices.allow", os.O_WRONLY | os.O_CLOEXEC)
        try:
            for line in devmod.v1_lines(rules):
                try:
                    os.write(fd, line.encode())
                except PermissionError:
                    pass
        finally:
            os.close(fd)

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
                with _real(d) as real:
                    _write(os.path.join(real, "cgroup.procs"), str(pid))
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
            try:
                with _real(d) as real:
                    while True:
                        try:
                            os.rmdir(real)
                            break
                        except FileNotFoundError:
                            break
                        except OSError as e:
                            if e.errno != errno.EBUSY or time.monotonic() > deadline:
                                raise
                            self._kill_all(real)
                            time.sleep(0.005)
            except OSError as e:
                raise SandboxError(f"cannot remove cgroup {d}: {e.strerror}") from None
            self.created.remove(d)
        self.dirs.clear()

    @staticmethod
    def _kill_all(d: str) -> None:
        for pid in _read(os.path.join(d, "cgroup.procs")).split():
            try:
                os.kill(int(pid), 9)
            except ProcessLookupError:
                pass
        thaw(d)   # a paused container's tasks die only once thawed (v1 freezer)


def thaw(d: str) -> None:
    """Unfreeze cgroup `d` (v2 or v1 freezer); nothing when it has no freezer file."""
    for name, value in (("cgroup.freeze", "0"), ("freezer.state", "THAWED")):
        try:
            _write(os.path.join(d, name), value)
        except OSError:
            pass


def freeze(d: str, on: bool, timeout: float = 5.0) -> None:
    """Freeze (pause) or thaw every task of cgroup `d` and wait until the kernel says so."""
    with _real(d) as real:
        v2 = os.path.exists(os.path.join(real, "cgroup.freeze"))
        if v2:
            _write(os.path.join(real, "cgroup.freeze"), "1" if on else "0")
        else:
            _write(os.path.join(real, "freezer.state"), "FROZEN" if on else "THAWED")
        deadline = time.monotonic() + timeout
        while frozen(real) != on:
            if time.monotonic() > deadline:
                raise SandboxError(f"cgroup {d}: the freezer did not "
                                   f"{'freeze' if on else 'thaw'} within {timeout:g}s")
            time.sleep(0.005)


def frozen(d: str) -> bool:
    """Whether the kernel reports cgroup `d` frozen (v2 cgroup.events, v1 freezer.state)."""
    with _real(d) as real:
        events = _read(os.path.join(real, "cgroup.events"))
        if events:
            return "frozen 1" in events.splitlines()
        return _read(os.path.join(real, "freezer.state")).strip() == "FROZEN"


def remove_left(container_id: str) -> None:
    """Remove the cgroups of a container whose owner died with its monitor (a SIGKILL to
    the whole process group): nobody else would, and each run leaked one. Called only
    for ids whose owner is known to be gone (its work dir lock was free); a process still
    in them is a leftover of that dead build and is killed."""
    if not _ID_SAFE.fullmatch(container_id):
        return
    for h in hierarchies(DEVICES_VERSION).values():
        try:
            with _real(os.path.join(h.base, PREFIX + container_id)) as real:
                for _ in range(200):
                    try:
                        os.rmdir(real)
                        break
                    except OSError as e:
                        if e.errno != errno.EBUSY:
                            break
                        Cgroups._kill_all(real)
                        time.sleep(0.005)
        except OSError:
            continue        # not there (never made, or removed meanwhile)
