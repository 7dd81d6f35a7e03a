"""Compare two directory trees the way the acceptance tests define "equal":
type, mode, owner, content and link target of every path."""

from __future__ import annotations

import hashlib
import os
import stat
from pathlib import Path


def describe(root: Path, ignore: tuple[str, ...] = ()) -> dict[str, tuple]:
    out: dict[str, tuple] = {}
    root = Path(root)
    for dirpath, dirs, files in os.walk(root):
        for name in dirs + files:
            full = os.path.join(dirpath, name)
            rel = os.path.relpath(full, root)
            if rel in ignore or rel.split("/")[0] in ignore:
                continue
            st = os.lstat(full)
            kind = stat.S_IFMT(st.st_mode)
            detail: object = None
            if stat.S_ISREG(st.st_mode):
                with open(full, "rb") as f:
                    detail = hashlib.sha256(f.read()).hexdigest()
            elif stat.S_ISLNK(st.st_mode):
                detail = os.readlink(full)
            elif stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode):
                detail = (os.major(st.st_rdev), os.minor(st.st_rdev))
            mode = None if stat.S_ISLNK(st.st_mode) else stat.S_IMODE(st.st_mode)
            out[rel] = (kind, mode, st.st_uid, st.st_gid, detail)
    return out


def diff_trees(a: Path, b: Path, ignore: tuple[str, ...] = ()) -> list[str]:
    """Human-readable differences; empty when the trees are equal."""
    da, db = describe(a, ignore), describe(b, ignore)
    problems = []
    for path in sorted(set(da) | set(db)):
        if path not in da:
            problems.append(f"only in {b}: {path}")
        elif path not in db:
            problems.append(f"only in {a}: {path}")
        elif da[path] != db[path]:
            problems.append(f"{path}: {da[path]} != {db[path]}")
    return problems
