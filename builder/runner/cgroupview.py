"""A running container's cgroups as the host sees them, for pause, top and stats.

The directories come from the kernel's /proc/<pid>/cgroup of the container's PID 1
(cut at the component named for the container: sandbox.cgroups.by_controller), read
between two checks that the PID still is that process (its start time), so a PID
reused meanwhile is never followed. Pids listed come from the cgroup's own
cgroup.procs, as the kernel reports them to us, never from inside the container.
"""

from __future__ import annotations

import os

from .containers import ContainerState, alive
from .errors import RunError

MAX_PIDS = 1 << 16
MAX_DIRS = 1024


def not_running(st: ContainerState) -> RunError:
    return RunError(f"container {st.name or st.id[:12]} is not running")


def dirs(st: ContainerState) -> dict[str, str]:
    """{controller or "unified": directory}; RunError when the container is not running."""
    from builder.sandbox.cgroups import by_controller

    if not alive(st.pid, st.pid_start):
        raise not_running(st)
    try:
        out = by_controller(st.pid, st.id)
    except OSError:
        out = {}
    if not alive(st.pid, st.pid_start):
        raise not_running(st)
    if not out:
        from layerstore.userns import in_user_namespace

        if in_user_namespace():
            raise RunError(f"container {st.name or st.id[:12]} has no cgroup: rootless "
                           "pybuild without a cgroup delegated to the user makes none, and "
                           "pause, top and stats read the container's cgroup")
        raise not_running(st)
    return out


def freezer_dir(found: dict[str, str]) -> str | None:
    """The cgroup where this container can be frozen: v2 when it has one, else v1's."""
    d = found.get("unified")
    if d is not None and os.path.exists(os.path.join(d, "cgroup.freeze")):
        return d
    return found.get("freezer")


def read(d: str, name: str, limit: int = 1 << 16) -> str:
    try:
        with open(os.path.join(d, name), "rb") as f:
            return f.read(limit).decode("ascii", "replace")
    except OSError:
        return ""


def pids(found: dict[str, str]) -> list[int]:
    """Every process of the container, sub-cgroups included (bounded)."""
    d = found.get("unified") or found.get("pids") or found.get("memory") \
        or next(iter(found.values()))
    out: list[int] = []
    seen = 0
    for top, subdirs, _ in os.walk(d):
        seen += 1
        if seen > MAX_DIRS:
            break
        for word in read(top, "cgroup.procs", 1 << 20).split():
            if word.isdigit():
                out.append(int(word))
        if len(out) > MAX_PIDS:
            break
    return sorted(set(out))[:MAX_PIDS]


def member_pids(st: ContainerState) -> list[int]:
    """The container's processes: its cgroup's, or, rootless without a cgroup, those in
    the PID namespace of its PID 1 (the kernel's namespace inode, read between two checks
    that PID 1 is still that process)."""
    from layerstore.userns import in_user_namespace

    if not in_user_namespace():
        return pids(dirs(st))
    try:
        return pids(dirs(st))
    except RunError:
        if not alive(st.pid, st.pid_start):
            raise
    try:
        ns = os.stat(f"/proc/{st.pid}/ns/pid").st_ino
    except OSError:
        raise not_running(st) from None
    out = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                if os.stat(f"/proc/{name}/ns/pid").st_ino == ns:
                    out.append(int(name))
            except OSError:
                continue
    if not alive(st.pid, st.pid_start):
        raise not_running(st)
    return sorted(out)[:MAX_PIDS]
