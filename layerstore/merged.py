"""What an overlay of snapshot dirs shows at a path, looked up without mounting it.

overlayfs merges the layers' directories top down: a whiteout (a 0/0 char device)
hides the name in every layer below, a file or symlink hides whatever the layers
below have at that name, and an opaque directory (trusted.overlay.opaque=y, user.overlay.opaque=y when rootless) hides
the directories below it. Layer copy-up (a hard link to a lower layer's file), volume
copy-up and stub removal all need that answer for snapshots on disk; this is the one
implementation of it. Each layer is walked through the path resolver without following
any symlink (a snapshot's entries are taken literally).
"""

from __future__ import annotations

import os
import stat
from typing import Sequence

from layerstore import resolver
from layerstore.userns import opaque_xattr

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


def is_opaque(layer_fd: int, path: bytes | str) -> bool:
    """Whether the dir `path` of a snapshot is opaque (hides the layers below it)."""
    try:
        fd = resolver.resolve(layer_fd, path, policy=resolver.NO_SYMLINKS, flags=_DIR_FLAGS)
    except (resolver.PathEscape, OSError):
        return False
    try:
        return os.getxattr(fd, opaque_xattr()) == b"y"
    except OSError:
        return False
    finally:
        os.close(fd)


def merged_level(candidates: Sequence[int], path: bytes | str
                 ) -> tuple[tuple[int, os.stat_result] | None, list[int]]:
    """One step of overlayfs's lookup. `candidates`: the layers (fds of snapshot roots,
    top first) whose directories merge into the parent of `path`. Returns what shows at
    `path` -- (fd of its layer, its lstat), or None when absent or whited out -- and,
    when that is a directory, the layers whose directories at `path` merge into it (down
    to the first opaque one; a file, symlink or whiteout in a layer hides all below).
    Each layer is walked by the resolver without following symlinks."""
    shown: tuple[int, os.stat_result] | None = None
    below: list[int] = []
    for fd in candidates:
        try:
            st = resolver.lstat(fd, path, policy=resolver.NO_SYMLINKS)
        except (resolver.PathEscape, OSError):
            st = None
        if st is None:
            continue
        if stat.S_ISCHR(st.st_mode) and st.st_rdev == 0:
            break  # a whiteout: nothing of this name here or below
        if shown is None:
            shown = (fd, st)
        if not stat.S_ISDIR(st.st_mode):
            break  # a file or symlink: hides whatever the layers below have
        below.append(fd)
        if is_opaque(fd, path):
            break
    return shown, below


def merged_entry(layers: Sequence[int], names: Sequence[bytes | str]
                 ) -> tuple[int, os.stat_result] | None:
    """What an overlay of the snapshot roots `layers` (fds, TOP FIRST) shows at `names`:
    (fd of the layer whose entry shows, its lstat), or None (absent, whited out, below
    an opaque dir or below a file or symlink of a higher layer). The one merged lookup
    over snapshots: layer copy-up, volume copy-up and stub removal ask it."""
    candidates: Sequence[int] = layers
    for depth in range(len(names)):
        path = "/".join(os.fsdecode(n) for n in names[:depth + 1])
        shown, candidates = merged_level(candidates, path)
        if shown is None or depth == len(names) - 1:
            return shown
        if not stat.S_ISDIR(shown[1].st_mode):
            return None
    return None


def merged_dirs(layers: Sequence[int], names: Sequence[bytes | str]) -> list[int]:
    """The layers (top first) whose directories at `names` make up the merged directory
    there; [] when the overlay shows no directory at `names`."""
    candidates: list[int] = list(layers)
    for depth in range(len(names)):
        path = "/".join(os.fsdecode(n) for n in names[:depth + 1])
        shown, candidates = merged_level(candidates, path)
        if shown is None or not stat.S_ISDIR(shown[1].st_mode):
            return []
    return candidates
