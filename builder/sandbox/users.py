"""Resolve `user` (name, uid, name:group, uid:gid) against the rootfs's own files.

Called inside the container after pivot_root, so /etc/passwd is the image's
and no symlink in it can point at the host's.
"""

from __future__ import annotations

from dataclasses import dataclass

from .spec import SandboxError


@dataclass
class Ids:
    uid: int
    gid: int
    groups: list[int]
    home: str


def _read(path: str) -> list[list[str]]:
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return [line.rstrip("\n").split(":") for line in f if line.strip() and not line.startswith("#")]
    except OSError:
        return []


def _int(s: str) -> int | None:
    return int(s) if s.isdigit() else None


def resolve(user: str, passwd: str = "/etc/passwd", group: str = "/etc/group") -> Ids:
    name, _, grp = user.partition(":")
    if not name:
        raise SandboxError(f"user {user!r}: empty user name")
    users = [u for u in _read(passwd) if len(u) >= 7]
    entry = next((u for u in users if u[0] == name), None)
    if entry is None and _int(name) is not None:
        entry = next((u for u in users if _int(u[2]) == int(name)), None)
    if entry is not None:
        uid, gid, home, uname = int(entry[2]), int(entry[3]), entry[5] or "/", entry[0]
    elif _int(name) is not None:
        uid, gid, home, uname = int(name), 0, "/", None
    else:
        raise SandboxError(f"user {name!r}: no such user in the container's {passwd}", 125)
    groups_db = [g for g in _read(group) if len(g) >= 4]
    if grp:
        ge = next((g for g in groups_db if g[0] == grp), None)
        if ge is not None:
            gid = int(ge[2])
        elif _int(grp) is not None:
            gid = int(grp)
        else:
            raise SandboxError(f"user {user!r}: no such group {grp!r} in the container's {group}")
        supp = [gid]
    else:
        supp = [gid] + [int(g[2]) for g in groups_db
                        if uname is not None and uname in g[3].split(",") and _int(g[2]) is not None]
    if uid >= 1 << 32 or gid >= 1 << 32:
        raise SandboxError(f"user {user!r}: id out of range")
    return Ids(uid, gid, sorted(set(supp)), home)
