"""Capability names, docker's default set, and applying a set in runc's order."""

from __future__ import annotations

from . import libc
from .spec import DEFAULT_CAPS, SandboxError

CAP_NUMBERS = {
    "CAP_CHOWN": 0, "CAP_DAC_OVERRIDE": 1, "CAP_DAC_READ_SEARCH": 2, "CAP_FOWNER": 3,
    "CAP_FSETID": 4, "CAP_KILL": 5, "CAP_SETGID": 6, "CAP_SETUID": 7, "CAP_SETPCAP": 8,
    "CAP_LINUX_IMMUTABLE": 9, "CAP_NET_BIND_SERVICE": 10, "CAP_NET_BROADCAST": 11,
    "CAP_NET_ADMIN": 12, "CAP_NET_RAW": 13, "CAP_IPC_LOCK": 14, "CAP_IPC_OWNER": 15,
    "CAP_SYS_MODULE": 16, "CAP_SYS_RAWIO": 17, "CAP_SYS_CHROOT": 18, "CAP_SYS_PTRACE": 19,
    "CAP_SYS_PACCT": 20, "CAP_SYS_ADMIN": 21, "CAP_SYS_BOOT": 22, "CAP_SYS_NICE": 23,
    "CAP_SYS_RESOURCE": 24, "CAP_SYS_TIME": 25, "CAP_SYS_TTY_CONFIG": 26, "CAP_MKNOD": 27,
    "CAP_LEASE": 28, "CAP_AUDIT_WRITE": 29, "CAP_AUDIT_CONTROL": 30, "CAP_SETFCAP": 31,
    "CAP_MAC_OVERRIDE": 32, "CAP_MAC_ADMIN": 33, "CAP_SYSLOG": 34, "CAP_WAKE_ALARM": 35,
    "CAP_BLOCK_SUSPEND": 36, "CAP_AUDIT_READ": 37, "CAP_PERFMON": 38, "CAP_BPF": 39,
    "CAP_CHECKPOINT_RESTORE": 40,
}


def last_cap() -> int:
    try:
        with open("/proc/sys/kernel/cap_last_cap") as f:
            return int(f.read())
    except OSError:
        return max(CAP_NUMBERS.values())


def _norm(name: str) -> str:
    n = name.strip().upper()
    n = n if n.startswith("CAP_") else "CAP_" + n
    if n != "CAP_ALL" and n not in CAP_NUMBERS:
        raise SandboxError(f"sandbox spec: unknown capability {name!r}")
    return n


def resolve(cap_add: list[str], cap_drop: list[str]) -> frozenset[str]:
    """docker's rule: start from the default set, drop (ALL empties it), then add."""
    add = {_norm(c) for c in cap_add}
    drop = {_norm(c) for c in cap_drop}
    caps = set() if "CAP_ALL" in drop else set(DEFAULT_CAPS) - drop
    caps |= set(CAP_NUMBERS) if "CAP_ALL" in add else add - {"CAP_ALL"}
    return frozenset(caps)


def mask(caps: frozenset[str]) -> int:
    m = 0
    for c in caps:
        m |= 1 << CAP_NUMBERS[c]
    return m


def drop_bounding(keep: int) -> None:
    """Remove every capability not in `keep` from the bounding set (needs CAP_SETPCAP)."""
    for n in range(last_cap() + 1):
        if not keep & (1 << n):
            libc.prctl(libc.PR_CAPBSET_DROP, n)


def apply(keep: int) -> None:
    """Set effective/permitted to `keep`, inheritable and ambient empty."""
    libc.capset(keep, keep, 0)
    libc.prctl(libc.PR_CAP_AMBIENT, libc.PR_CAP_AMBIENT_CLEAR_ALL)
