"""A comparable description of a directory tree, for checking unpacks.

Two trees are equal for image purposes when every path has the same type,
mode, owner, content (or link target / device number), xattrs and the same
hardlink grouping; `describe_tree` renders exactly that, so tests can compare
our unpack with another tool's by ==. `diff_dirs` compares two directories on
what the acceptance tests name: type, mode, owner, content and link target.
"""

from __future__ import annotations

import hashlib
import os
import stat
from pathlib import Path

_HIDDEN_XATTRS = (b"trusted.overlay.", b"user.overlay.")


def _xattrs(path: bytes) -> dict[bytes, bytes]:
    try:
        names = os.listxattr(path, follow_symlinks=False)
    except OSError:
        return {}
    out = {}
    for name in names:
        key = name.encode("utf-8", "surrogateescape")
        if not key.startswith(_HIDDEN_XATTRS):
            out[key] = os.getxattr(path, name, follow_symlinks=False)
    return out


def describe_tree(root: Path | str, *, mtimes: bool = True, xattrs: bool = True,
                  hardlinks: bool = True) -> dict[str, tuple]:
    """{relative path: (type, mode, uid, gid, payload, mtime s, xattrs, hardlink group)} below root.

    payload is the sha256 of a file, a symlink's target or a device's (major,
    minor); the hardlink group is the first path (in sorted order) sharing the
    inode, or None.  The root itself is not described.
    """
    base = os.fsencode(root)
    found: dict[bytes, os.stat_result] = {}
    for dirpath, dirnames, filenames in os.walk(base):
        for name in dirnames + filenames:
            path = os.path.join(dirpath, name)
            found[os.path.relpath(path, base)] = os.lstat(path)
    groups: dict[tuple[int, int], bytes] = {}
    members: dict[tuple[int, int], int] = {}
    for rel in sorted(found):
        st = found[rel]
        if not stat.S_ISDIR(st.st_mode):
            key = (st.st_dev, st.st_ino)
            groups.setdefault(key, rel)
            members[key] = members.get(key, 0) + 1
    out: dict[str, tuple] = {}
    for rel in sorted(found):
        st = found[rel]
        path = os.path.join(base, rel)
        kind = stat.S_IFMT(st.st_mode)
        payload: object = None
        if kind == stat.S_IFREG:
            with open(path, "rb") as f:
                payload = hashlib.file_digest(f, "sha256").hexdigest()
        elif kind == stat.S_IFLNK:
            payload = os.readlink(path)
        elif kind in (stat.S_IFCHR, stat.S_IFBLK):
            payload = (os.major(st.st_rdev), os.minor(st.st_rdev))
        ino = (st.st_dev, st.st_ino)
        group = groups[ino] if hardlinks and not stat.S_ISDIR(st.st_mode) and members[ino] > 1 \
            else None
        out[os.fsdecode(rel)] = (
            stat.filemode(st.st_mode)[0], st.st_mode & 0o7777 if kind != stat.S_IFLNK else 0o777,
            st.st_uid, st.st_gid, payload, st.st_mtime_ns // 1_000_000_000 if mtimes else None,
            tuple(sorted(_xattrs(path).items())) if xattrs else (), group and os.fsdecode(group))
    return out


def diff_trees(a: dict[str, tuple], b: dict[str, tuple]) -> list[str]:
    """Human-readable differences between two describe_tree results (empty if equal)."""
    lines = []
    for key in sorted(set(a) | set(b)):
        if a.get(key) != b.get(key):
            lines.append(f"{key}: {a.get(key)} != {b.get(key)}")
    return lines


def diff_dirs(a: Path, b: Path, ignore: tuple[str, ...] = ()) -> list[str]:
    """Differences in type, mode, owner, content and link target; empty when equal."""
    def view(root: Path) -> dict[str, tuple]:
        tree = describe_tree(root, mtimes=False, xattrs=False, hardlinks=False)
        return {k: v for k, v in tree.items() if k not in ignore and k.split("/")[0] not in ignore}

    return diff_trees(view(a), view(b))
