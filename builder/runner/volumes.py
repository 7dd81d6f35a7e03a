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
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from layerstore.atomic import atomic_write
from layerstore.resolver import remove_tree
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
        self.dir.mkdir(mode=0o700, parents=True, exist_ok=True)
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
        remove_tree(vol.path)     # the container's tree: deep, read-only dirs, links

    def prune(self, in_use: set[str], all_volumes: bool = False,
              select: Callable[[Volume], bool] | None = None) -> list[str]:
        """Remove unused anonymous volumes (all unused with all_volumes), as docker does;
        only those `select` accepts, when given."""
        gone = []
        for vol in self.list():
            if vol.name not in in_use and (vol.anonymous or all_volumes) and \
                    (select is None or select(vol)):
                remove_tree(vol.path)
                gone.append(vol.name)
        return gone


def copy_up(lowers: list[Path], target: str, dest: Path) -> None:
    """Fill an empty volume from the image (docker's copy-up): what the container's
    root shows at `target`, merged from the lowers (bottom first) as overlayfs merges
    them: the topmost entry of each name, whiteouts and opaque dirs honoured.

    The image is hostile input: a device node is recreated as a node, never opened (a
    `b 8 0` under a VOLUME path would otherwise copy the host's disk into the volume,
    and `c 1 9` would never end); no symlink is followed; every entry is reached from
    directory fds (layerstore.resolver), in the snapshots and in the volume alike
    (another container may share the volume and race us)."""
    from layerstore import resolver
    from layerstore.merged import merged_dirs

    dfd = os.open(dest, _DIR)
    try:
        if next(iter(os.scandir(dfd)), None) is not None:
            return
        layers = [resolver.open_root(lower) for lower in reversed(lowers)]   # top first
        try:
            names = image_path(layers, target)
            holders = merged_dirs(layers, names) if names is not None else []
            if holders:
                top = resolver.lstat(holders[0], "/".join(names), policy=resolver.NO_SYMLINKS)
                assert top is not None
                _VolumeCopy(dfd).directory(holders, names, dfd, top)
        finally:
            for fd in layers:
                os.close(fd)
    finally:
        os.close(dfd)


_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_MAXSYMLINKS = 40         # the kernel's limit on links followed in one lookup


def image_path(layers: list[int], target: str) -> list[str] | None:
    """The names of `target` in the image (snapshot roots `layers`, top first) with the
    image's symlinks followed as the container's kernel will follow them when the volume
    is mounted there: inside the image's root (`..` stops at /, an absolute link starts
    again from /). None for a symlink loop. Only the merged view is read: no host path
    is ever followed."""
    from layerstore import resolver
    from layerstore.merged import merged_entry

    todo = resolver.components(target)
    done: list[str] = []
    links = 0
    while todo:
        name = todo.pop(0)
        if name == "..":
            if done:
                done.pop()
            continue
        shown = merged_entry(layers, [*done, name])
        if shown is None or not stat.S_ISLNK(shown[1].st_mode):
            done.append(name)
            continue
        links += 1
        if links > _MAXSYMLINKS:
            return None
        text = resolver.readlink(shown[0], "/".join([*done, name]), policy=resolver.NO_SYMLINKS)
        if text.startswith("/"):
            done = []
        todo = resolver.components(text) + todo
    return done


@dataclass
class _VolumeCopy:
    root: int                                   # the volume's _data, open
    links: dict[tuple[int, int], str] = field(default_factory=dict)   # inode -> path copied to
    rel: list[str] = field(default_factory=list)

    def directory(self, holders: list[int], names: list[str], dest: int,
                  st: os.stat_result) -> None:
        """The merged directory `names` of `holders` into the open directory `dest`."""
        from layerstore import resolver
        from layerstore.merged import merged_level

        seen: set[str] = set()
        for layer in holders:
            sfd = resolver.resolve(layer, "/".join(names), policy=resolver.NO_SYMLINKS, flags=_DIR)
            try:
                listing = sorted(e.name for e in os.scandir(sfd))
            finally:
                os.close(sfd)
            for name in listing:
                if name in seen:
                    continue
                seen.add(name)
                shown, below = merged_level(holders, "/".join([*names, name]))
                if shown is not None:
                    self.entry(shown[0], below, [*names, name], shown[1], dest)
        _set_meta(dest, st)

    def entry(self, lfd: int, below: list[int], sub: list[str], st: os.stat_result,
              dest: int) -> None:
        from layerstore import resolver
        from layerstore.layer_apply import copy_data, copy_xattrs

        name, path = sub[-1], "/".join(sub)
        self.rel.append(name)
        try:
            if stat.S_ISDIR(st.st_mode):
                os.mkdir(name, 0o700, dir_fd=dest)
                nfd = os.open(name, _DIR, dir_fd=dest)
                try:
                    self.directory(below, sub, nfd, st)
                finally:
                    os.close(nfd)
                return
            if stat.S_ISREG(st.st_mode):
                first = self.links.get((st.st_dev, st.st_ino)) if st.st_nlink > 1 else None
                if first is not None:      # another name of a file already copied: link it
                    with resolver.parent_of(self.root, first, policy=resolver.NO_SYMLINKS) as (pfd, leaf):
                        os.link(leaf, name, src_dir_fd=pfd, dst_dir_fd=dest, follow_symlinks=False)
                    return
                src = resolver.resolve(lfd, path, policy=resolver.NO_SYMLINKS, follow=False,
                                       flags=os.O_RDONLY)
                try:
                    out = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
                                  | os.O_CLOEXEC, 0o600, dir_fd=dest)
                    try:
                        copy_data(src, out, st.st_size)
                        os.fchown(out, st.st_uid, st.st_gid)   # before chmod: chown drops setuid
                        os.fchmod(out, stat.S_IMODE(st.st_mode))
                        copy_xattrs(src, out)
                        os.utime(out, ns=(st.st_atime_ns, st.st_mtime_ns))
                    finally:
                        os.close(out)
                finally:
                    os.close(src)
                if st.st_nlink > 1:
                    self.links[(st.st_dev, st.st_ino)] = "/".join(self.rel)
                return
            if stat.S_ISLNK(st.st_mode):
                os.symlink(resolver.readlink(lfd, path, policy=resolver.NO_SYMLINKS), name,
                           dir_fd=dest)
                os.chown(name, st.st_uid, st.st_gid, dir_fd=dest, follow_symlinks=False)
            elif stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode) or stat.S_ISFIFO(st.st_mode):
                os.mknod(name, stat.S_IFMT(st.st_mode) | 0o600, st.st_rdev, dir_fd=dest)
                _node_owner_and_mode(dest, name, st)
            else:
                return                                  # a socket: nothing to copy
            os.utime(name, ns=(st.st_atime_ns, st.st_mtime_ns), dir_fd=dest,
                     follow_symlinks=False)
        finally:
            self.rel.pop()


def _node_owner_and_mode(dest: int, name: str, st: os.stat_result) -> None:
    """chown and chmod the node just made, never what replaced it: a container sharing
    the volume may swap it for a symlink, and chmod(2) by name follows one (to a host
    file, at a mode the image chose). So: an O_PATH fd of the entry (O_NOFOLLOW),
    checked to be the node, changed through its /proc/self/fd link (fchmod and fchown
    refuse O_PATH fds); owner first, as chown clears the set-id bits."""
    fd = os.open(name, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dest)
    try:
        now = os.fstat(fd)
        if stat.S_IFMT(now.st_mode) != stat.S_IFMT(st.st_mode) or now.st_rdev != st.st_rdev:
            raise RunError(f"volume copy-up: {name!r} was replaced while it was being copied")
        os.chown(f"/proc/self/fd/{fd}", st.st_uid, st.st_gid)
        os.chmod(f"/proc/self/fd/{fd}", stat.S_IMODE(st.st_mode))
    finally:
        os.close(fd)


def _set_meta(fd: int, st: os.stat_result) -> None:
    os.fchown(fd, st.st_uid, st.st_gid)
    os.fchmod(fd, stat.S_IMODE(st.st_mode))
    os.utime(fd, ns=(st.st_atime_ns, st.st_mtime_ns))
