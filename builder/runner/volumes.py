"""Named and anonymous volumes: ROOT/volumes/<name>/_data plus meta.json.

A volume outlives its containers; an anonymous one (from the image's Volumes
or `-v /path`) is removed with a `--rm` container. A new, empty volume is
filled from the image's content at its target (docker's copy-up), read from
the topmost lower dir that has the path, never following a symlink.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import stat
from dataclasses import dataclass
from pathlib import Path

from layerstore.atomic import atomic_write
from layerstore.humanize import rfc3339_now

from .errors import RunError
from .options import check_volume_name


@dataclass
class Volume:
    name: str
    path: Path                 # ROOT/volumes/<name>
    created: str
    anonymous: bool
    labels: dict[str, str]

    @property
    def data(self) -> Path:
        return self.path / "_data"

    def inspect(self) -> dict:
        return {"Name": self.name, "Driver": "local", "Mountpoint": str(self.data),
                "CreatedAt": self.created, "Labels": self.labels, "Scope": "local",
                "Options": {}, "Anonymous": self.anonymous}


class Volumes:
    def __init__(self, root: Path) -> None:
        self.dir = Path(root) / "volumes"

    def get(self, name: str) -> Volume:
        check_volume_name(name)
        path = self.dir / name
        try:
            meta = json.loads((path / "meta.json").read_text())
        except FileNotFoundError:
            raise RunError(f"{name}: no such volume") from None
        except (OSError, ValueError) as e:
            raise RunError(f"volume {name}: unreadable meta.json: {e}") from None
        return Volume(name, path, meta.get("created", ""), bool(meta.get("anonymous")),
                      meta.get("labels") or {})

    def create(self, name: str | None = None, labels: dict[str, str] | None = None) -> Volume:
        """Create `name` (a random one when None); an existing named volume is returned as is."""
        anonymous = name is None
        name = secrets.token_hex(32) if name is None else check_volume_name(name)
        path = self.dir / name
        self.dir.mkdir(parents=True, exist_ok=True)
        try:
            path.mkdir(mode=0o700)
        except FileExistsError:
            if (path / "meta.json").exists():
                return self.get(name)
        (path / "_data").mkdir(mode=0o755, exist_ok=True)
        meta = {"created": rfc3339_now(), "anonymous": anonymous, "labels": labels or {}}
        atomic_write(path / "meta.json", json.dumps(meta).encode(), 0o600)
        return self.get(name)

    def list(self) -> list[Volume]:
        if not self.dir.is_dir():
            return []
        out = []
        for name in sorted(os.listdir(self.dir)):
            try:
                out.append(self.get(name))
            except RunError:
                continue
        return out

    def remove(self, name: str, in_use: set[str]) -> None:
        vol = self.get(name)
        if name in in_use:
            raise RunError(f"volume {name} is in use by a container")
        shutil.rmtree(vol.path)

    def prune(self, in_use: set[str], all_volumes: bool = False) -> list[str]:
        """Remove unused anonymous volumes (all unused with all_volumes), as docker does."""
        gone = []
        for vol in self.list():
            if vol.name not in in_use and (vol.anonymous or all_volumes):
                shutil.rmtree(vol.path)
                gone.append(vol.name)
        return gone


def _inside(base: Path, target: str) -> Path | None:
    """base/target when every component is a real directory (no symlink), else None."""
    cur = base
    for part in [p for p in target.split("/") if p and p != "."]:
        if part == "..":
            return None
        cur = cur / part
        try:
            st = os.lstat(cur)
        except OSError:
            return None
        if not stat.S_ISDIR(st.st_mode):
            return None
    return cur


def copy_up(lowers: list[Path], target: str, dest: Path) -> None:
    """Fill an empty volume from the image: the topmost lower holding `target` as a dir."""
    if any(dest.iterdir()):
        return
    for lower in reversed(lowers):
        src = _inside(lower, target)
        if src is None:
            continue
        st = os.lstat(src)
        os.chmod(dest, stat.S_IMODE(st.st_mode))
        os.chown(dest, st.st_uid, st.st_gid)
        for entry in os.listdir(src):
            s, d = src / entry, dest / entry
            if entry.startswith(".wh."):
                continue
            if s.is_symlink() or not s.is_dir():
                shutil.copy2(s, d, follow_symlinks=False)
            else:
                shutil.copytree(s, d, symlinks=True)
            _chown_tree(s, d)
        return


def _chown_tree(src: Path, dst: Path) -> None:
    for dirpath, dirnames, filenames in os.walk(src):
        rel = os.path.relpath(dirpath, src)
        for name in [".", *dirnames, *filenames]:
            s = os.path.join(dirpath, name) if name != "." else dirpath
            d = os.path.normpath(os.path.join(dst, rel, name)) if name != "." else \
                os.path.normpath(os.path.join(dst, rel))
            st = os.lstat(s)
            os.lchown(d, st.st_uid, st.st_gid)
