"""Resolve `user` (name, uid, name:group, uid:gid) against the rootfs's own files.

Called inside the container after pivot_root, so /etc/passwd is the image's
and no symlink in it can point at the host's.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass

from .spec import SandboxError

# /etc/passwd and /etc/group come from the image: a fifo there would block `run` and
# `exec` for ever, a huge file would eat our memory. Real databases are far smaller.
MAX_DB = 8 << 20
MAX_GROUPS = 65536        # NGROUPS_MAX: setgroups refuses more


@dataclass
class Ids:
    uid: int
    gid: int
    groups: list[int]
    home: str


def _read(path: str, fields: int, ids: tuple[int, ...]) -> list[list[str]]:
    """The entries of a passwd/group file with at least `fields` fields whose id fields
    are numbers (libc skips malformed lines too); [] when there is no such file."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY)
    except OSError:
        return []
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise SandboxError(f"{path} in the container is not a regular file", 125)
        chunks, size = [], 0
        while chunk := os.read(fd, 1 << 16):
            size += len(chunk)
            if size > MAX_DB:
                raise SandboxError(f"{path} in the container is larger than {MAX_DB >> 20} MiB", 125)
            chunks.append(chunk)
    finally:
        os.close(fd)
    out = []
    for line in b"".join(chunks).decode("utf-8", "replace").splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        entry = line.split(":")
        if len(entry) >= fields and all(_int(entry[i]) is not None for i in ids):
            out.append(entry)
    return out


def _int(s: str) -> int | None:
    return int(s) if s.isdigit() and len(s) <= 10 else None


def resolve(user: str, passwd: str = "/etc/passwd", group: str = "/etc/group",
            extra_groups: list[str] | tuple[str, ...] = ()) -> Ids:
    """`extra_groups` (docker's --group-add): ids, or names looked up in the same file."""
    name, _, grp = user.partition(":")
    if not name:
        raise SandboxError(f"user {user!r}: empty user name")
    users = _read(passwd, 7, (2, 3))
    entry = next((u for u in users if u[0] == name), None)
    if entry is None and _int(name) is not None:
        entry = next((u for u in users if _int(u[2]) == int(name)), None)
    if entry is not None:
        uid, gid, home, uname = int(entry[2]), int(entry[3]), entry[5] or "/", entry[0]
    elif _int(name) is not None:
        uid, gid, home, uname = int(name), 0, "/", None
    else:
        raise SandboxError(f"user {name!r}: no such user in the container's {passwd}", 125)
    groups_db = _read(group, 4, (2,))
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
                        if uname is not None and uname in g[3].split(",")]
    for extra in extra_groups:
        ge = next((g for g in groups_db if g[0] == extra), None)
        if ge is not None:
            supp.append(int(ge[2]))
        elif _int(extra) is not None:
            supp.append(int(extra))
        else:
            raise SandboxError(f"--group-add {extra!r}: no such group in the container's {group}",
                               125)
    groups = sorted(set(supp))
    if max([uid, gid, *groups]) >= (1 << 32) - 1:
        raise SandboxError(f"user {user!r}: id out of range")
    if len(groups) > MAX_GROUPS:
        raise SandboxError(f"user {user!r}: member of more than {MAX_GROUPS} groups")
    return Ids(uid, gid, groups, home)
