"""Whether this process runs in a user namespace other than the initial one (rootless mode)."""

from __future__ import annotations

import functools


@functools.cache
def in_user_namespace() -> bool:
    """False only for the initial user namespace's map, "0 0 4294967295"."""
    try:
        with open("/proc/self/uid_map") as fh:
            return fh.read().split() != ["0", "0", "4294967295"]
    except OSError:
        return False
