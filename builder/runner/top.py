"""`pybuild top`: the host's `ps` (default -ef, or the options given, as docker's
top), keeping the rows whose PID is in the container's cgroup -- pids the kernel
lists to us in cgroup.procs (rootless without a cgroup: in its PID namespace), not
anything the container says."""

from __future__ import annotations

import subprocess

from .cgroupview import member_pids, not_running
from .containers import Containers
from .errors import RunError
from .lifecycle import is_running

MAX_OUTPUT = 16 << 20


def top(containers: Containers, ref: str, ps_args: list[str]) -> list[list[str]]:
    """Rows of `ps` (header first) for the container's processes."""
    st = containers.find(ref)
    if not is_running(st):
        raise not_running(st)
    members = set(member_pids(st))
    try:
        proc = subprocess.run(["ps", *(ps_args or ["-ef"])], capture_output=True, timeout=20,
                              stdin=subprocess.DEVNULL)
    except FileNotFoundError:
        raise RunError("top needs the host's ps (procps)") from None
    except subprocess.TimeoutExpired:
        raise RunError("ps did not answer within 20s") from None
    if proc.returncode != 0:
        msg = proc.stderr.decode(errors="replace").strip().splitlines()
        raise RunError(f"ps {' '.join(ps_args)} failed: {msg[0] if msg else proc.returncode}")
    lines = proc.stdout[:MAX_OUTPUT].decode(errors="replace").splitlines()
    if not lines:
        return []
    header = lines[0].split()
    if "PID" not in header:
        raise RunError("couldn't find PID field in ps output")
    at = header.index("PID")
    rows = [header]
    for line in lines[1:]:
        fields = line.split(None, len(header) - 1)
        if len(fields) > at and fields[at].isdigit() and int(fields[at]) in members:
            rows.append(fields)
    return rows


def render(rows: list[list[str]]) -> str:
    """docker's tabwriter: columns at least 20 wide, 3 spaces of padding."""
    if not rows:
        return ""
    n = max(len(r) for r in rows)
    widths = [max(20, max(len(r[i]) for r in rows if i < len(r)) + 3) for i in range(n)]
    return "\n".join("".join(c.ljust(w) for c, w in zip(r[:-1], widths)) + r[-1] for r in rows)
