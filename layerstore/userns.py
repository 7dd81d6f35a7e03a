"""Whether this process runs in a user namespace of its own (pybuild run by a plain user).

There the process is uid 0 with every capability, but only over what its namespace
owns: overlayfs must keep its markers in user.overlay.* xattrs (trusted.* needs
CAP_SYS_ADMIN in the initial namespace) and be mounted with `userxattr`, device nodes
cannot be made, and only the ids of the namespace's map can own a file.
"""

from __future__ import annotations

import functools

# the initial user namespace maps every id to itself
_INITIAL_MAP = [(0, 0, 4294967295)]


def id_map(which: str = "uid") -> list[tuple[int, int, int]]:
    """This process's (inside, outside, count) ranges of /proc/self/{uid,gid}_map."""
    with open(f"/proc/self/{which}_map", encoding="ascii") as f:
        text = f.read(1 << 16)    # the kernel allows 340 lines of at most 3 numbers
    return [tuple(int(n) for n in line.split()) for line in text.splitlines() if line.strip()]


@functools.cache
def in_user_namespace() -> bool:
    """True in a non-initial user namespace (rootless pybuild, or a test harness's)."""
    try:
        return id_map() != _INITIAL_MAP
    except OSError:
        return False


def mapped_ids(which: str = "uid") -> int:
    """How many ids this namespace maps (files may be owned by 0..N-1 only)."""
    return sum(count for _, _, count in id_map(which))


def opaque_xattr() -> str:
    """The xattr overlayfs reads to tell an opaque dir (with `userxattr` in a user ns)."""
    return "user.overlay.opaque" if in_user_namespace() else "trusted.overlay.opaque"
