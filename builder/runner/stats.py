"""`pybuild stats`: docker's table from the cgroup files of each running container.

CPU % is the cgroup's CPU time over a wall-clock interval (both sampled by us), MEM
from the memory controller (less inactive page cache, as docker shows it), PIDS from
the pids controller, NET I/O from the container's network namespace as the kernel
reports it in /proc/<pid>/net/dev, BLOCK I/O from io.stat / blkio where the container
has one. All read on the host side."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass

from layerstore.humanize import bytes_size, human_size

from .cgroupview import dirs, pids, read
from .containers import ContainerState, alive
from .errors import RunError

HEAD = ("CONTAINER ID", "NAME", "CPU %", "MEM USAGE / LIMIT", "MEM %", "NET I/O",
        "BLOCK I/O", "PIDS")


@dataclass
class Sample:
    st: ContainerState
    when: float
    cpu_ns: int = 0
    mem: int = 0
    limit: int = 0
    net: tuple[int, int] = (0, 0)
    block: tuple[int, int] = (0, 0)
    pids: int = 0


def _int(text: str) -> int:
    text = text.strip()
    return int(text) if text.isdigit() else 0


def _keyed(text: str) -> dict[str, int]:
    out = {}
    for line in text.splitlines():
        k, _, v = line.partition(" ")
        if v.strip().isdigit():
            out[k] = int(v)
    return out


def _host_memory() -> int:
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) * 1024
    return 0


def _cpu_ns(found: dict[str, str], members: list[int]) -> int:
    if "unified" in found:
        usec = _keyed(read(found["unified"], "cpu.stat")).get("usage_usec")
        if usec is not None:
            return usec * 1000
    for c in ("cpuacct", "cpu"):
        if c in found and read(found[c], "cpuacct.usage").strip().isdigit():
            return int(read(found[c], "cpuacct.usage"))
    ticks = 0
    for pid in members:    # no accounting cgroup: the kernel's per-process times
        text = read(f"/proc/{pid}", "stat", 4096)
        fields = text.rsplit(")", 1)[-1].split()
        if len(fields) > 12:
            ticks += _int(fields[11]) + _int(fields[12])
    return ticks * 1_000_000_000 // os.sysconf("SC_CLK_TCK")


def _memory(found: dict[str, str]) -> tuple[int, int]:
    host = _host_memory()
    d = found.get("memory")
    if d is not None and read(d, "memory.usage_in_bytes"):          # v1
        usage = _int(read(d, "memory.usage_in_bytes"))
        usage -= _keyed(read(d, "memory.stat")).get("total_inactive_file", 0)
        limit = _int(read(d, "memory.limit_in_bytes")) or host
    else:
        d = found.get("unified")
        if d is None:
            return 0, host
        usage = _int(read(d, "memory.current"))
        usage -= _keyed(read(d, "memory.stat")).get("inactive_file", 0)
        limit = _int(read(d, "memory.max")) or host                 # "max": none
    return max(usage, 0), min(limit, host) if host else limit


def _net(st: ContainerState) -> tuple[int, int]:
    if st.network != "private":
        return 0, 0   # host: not the container's own; none: only lo
    rx = tx = 0
    for line in read(f"/proc/{st.pid}/net", "dev").splitlines()[2:]:
        name, _, rest = line.partition(":")
        fields = rest.split()
        if name.strip() != "lo" and len(fields) >= 9:
            rx += _int(fields[0])
            tx += _int(fields[8])
    return rx, tx


def _block(found: dict[str, str]) -> tuple[int, int]:
    r = w = 0
    if "unified" in found:
        for line in read(found["unified"], "io.stat").splitlines():
            for kv in line.split()[1:]:
                k, _, v = kv.partition("=")
                if k == "rbytes":
                    r += _int(v)
                elif k == "wbytes":
                    w += _int(v)
    if not (r or w) and "blkio" in found:
        for line in read(found["blkio"], "blkio.throttle.io_service_bytes").splitlines():
            f = line.split()
            if len(f) == 3 and f[1] in ("Read", "Write"):
                if f[1] == "Read":
                    r += _int(f[2])
                else:
                    w += _int(f[2])
    return r, w


def sample(st: ContainerState) -> Sample | None:
    """One reading, or None when the container is not running (any more)."""
    try:
        found = dirs(st)
    except RunError:
        return None
    members = pids(found)
    s = Sample(st, time.monotonic(), _cpu_ns(found, members))
    s.mem, s.limit = _memory(found)
    s.net = _net(st)
    s.block = _block(found)
    pd = found.get("pids") or found.get("unified")
    current = read(pd, "pids.current") if pd else ""
    s.pids = _int(current) if current.strip().isdigit() else len(members)
    if not alive(st.pid, st.pid_start):   # what we read may belong to a reused pid
        return None
    return s


def table(before: list[Sample], after: list[Sample], no_trunc: bool = False) -> str:
    prev = {s.st.id: s for s in before}
    rows = [HEAD]
    for s in after:
        p = prev.get(s.st.id)
        cpu = 0.0
        if p is not None and s.when > p.when:
            cpu = max(0, s.cpu_ns - p.cpu_ns) / ((s.when - p.when) * 1e9) * 100
        mem_pct = s.mem / s.limit * 100 if s.limit else 0.0
        rows.append((s.st.id if no_trunc else s.st.id[:12], s.st.name, f"{cpu:.2f}%",
                     f"{bytes_size(s.mem)} / {bytes_size(s.limit)}", f"{mem_pct:.2f}%",
                     f"{human_size(s.net[0])} / {human_size(s.net[1])}",
                     f"{human_size(s.block[0])} / {human_size(s.block[1])}", str(s.pids)))
    widths = [max(len(r[i]) for r in rows) for i in range(len(HEAD))]
    return "\n".join("   ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows)


def collect(states: list[ContainerState], interval: float = 0.5) -> str:
    """Two readings `interval` apart (CPU % needs two), as one table."""
    before = [s for s in map(sample, states) if s is not None]
    time.sleep(interval)
    after = [s for s in map(sample, states) if s is not None]
    return table(before, after)
