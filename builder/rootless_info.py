"""What `pybuild info` says about rootless mode: whether this process runs in a user
namespace, the id ranges mapped into it (or that would be), which overlay and network
it uses, whether a cgroup v2 subtree is delegated, and what is missing.

Only reads: /proc/self/{uid_map,gid_map,cgroup,mountinfo}, /etc/subuid, /etc/subgid, PATH;
the id maps and subordinate ranges through builder.rootless and layerstore.userns.
"""

from __future__ import annotations

import os
import platform
import pwd
import shutil
from dataclasses import dataclass, field

# The user-mode network of rootless containers (builder/sandbox/usernet.py): slirp4netns
# only, no pasta fallback (see there why).
NETWORK_HELPER = "slirp4netns"
TUN = "/dev/net/tun"
ID_HELPERS = ("newuidmap", "newgidmap")
HELPER_PATH = "/usr/bin:/bin:/usr/sbin:/sbin"     # where builder.rootless looks for them
NATIVE_OVERLAY_KERNEL = (5, 11)


@dataclass(frozen=True)
class RootlessInfo:
    rootless: bool                         # not the initial user namespace, or not uid 0
    in_user_namespace: bool
    user: str                              # the host user pybuild acts for
    uid_map: list[tuple[int, int, int]]    # (inside, outside, count): mapped or to be mapped
    gid_map: list[tuple[int, int, int]]
    overlay: str                           # "native", "fuse-overlayfs" or "none"
    network: str                           # "bridge", "slirp4netns" or "none"
    cgroup_delegated: list[str]            # controllers we may limit with
    missing: list[str] = field(default_factory=list)


def _map(which: str) -> list[tuple[int, int, int]]:
    from layerstore.userns import id_map

    try:
        return id_map(which)
    except (OSError, ValueError):
        return []


def host_uid() -> int:
    """The host uid this process acts for: the outside id of inside uid 0 in a user
    namespace (pybuild maps its user to root there), else our own."""
    from layerstore.userns import in_user_namespace

    if in_user_namespace():
        for inside, outside, _count in _map("uid"):
            if inside == 0:
                return outside
    return os.getuid()


def _user_name(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


def planned_map(own: int, ranges: list[tuple[int, int]]) -> list[tuple[int, int, int]]:
    """The map rootless mode would write (the user as 0, its subordinate ranges from 1)."""
    from builder.rootless import id_map

    return [(r.inside, r.outside, r.count) for r in id_map(own, ranges)]


def kernel_at_least(version: tuple[int, int]) -> bool:
    try:
        parts = platform.release().split("-")[0].split(".")
        return (int(parts[0]), int(parts[1])) >= version
    except (ValueError, IndexError):
        return False


def overlay_kind(rootless: bool, in_ns: bool) -> str:
    """What the snapshotter mounts: native overlayfs, or in a user namespace where the
    kernel refuses it (before 5.11) fuse-overlayfs; "none" when that is missing too."""
    if in_ns:
        from layerstore.snapshots import overlay_driver

        kind = overlay_driver()
    elif rootless:
        kind = "native" if kernel_at_least(NATIVE_OVERLAY_KERNEL) else "fuse-overlayfs"
    else:
        return "native"
    if kind == "fuse-overlayfs" and not shutil.which(kind, path=HELPER_PATH):
        return "none"
    return kind


def network_kind(rootless: bool) -> str:
    if not rootless:
        return "bridge"
    return NETWORK_HELPER if shutil.which(NETWORK_HELPER) else "none"


def delegated_controllers() -> list[str]:
    """Of memory, pids and cpu, those whose cgroup (v2 or v1, as the sandbox picks them) we
    may write: all of them as root; rootless only a subtree delegated to the user
    (systemd's Delegate=yes), the rest belongs to host root, unmapped in our namespace."""
    from builder.sandbox.cgroups import hierarchies

    try:
        hs = hierarchies()
    except OSError:
        return []
    return sorted(c for c in ("cpu", "memory", "pids")
                  if c in hs and os.access(hs[c].base, os.W_OK))


def probe() -> RootlessInfo:
    from builder.rootless import subordinate_ranges
    from layerstore.userns import in_user_namespace

    in_ns = in_user_namespace()
    rootless = in_ns or os.geteuid() != 0
    uid = host_uid()
    user = _user_name(uid)
    missing: list[str] = []
    if rootless:
        subuids = subordinate_ranges("/etc/subuid", user, uid)
        subgids = subordinate_ranges("/etc/subgid", user, uid)
        if not subuids:
            missing.append(f"no /etc/subuid range for {user}: one uid only (files of other "
                           "uids in images become root's)")
        if not subgids:
            missing.append(f"no /etc/subgid range for {user}: one gid only")
        for helper in ID_HELPERS:
            if (subuids or subgids) and not shutil.which(helper, path=HELPER_PATH):
                missing.append(f"{helper} not found (Debian package uidmap): one id only")
    if in_ns or not rootless:
        uid_map, gid_map = _map("uid"), _map("gid")
    else:
        uid_map = planned_map(uid, subuids)
        gid_map = planned_map(os.getgid(), subgids)
    overlay = overlay_kind(rootless, in_ns)
    if overlay == "none":
        missing.append(f"kernel {platform.release()} refuses overlayfs in a user namespace "
                       "and fuse-overlayfs is not installed (Debian package fuse-overlayfs)")
    elif overlay == "fuse-overlayfs" and not os.access("/dev/fuse", os.R_OK | os.W_OK):
        missing.append("/dev/fuse is not read-writable for you (udev makes it 0666): "
                       "fuse-overlayfs cannot mount")
    network = network_kind(rootless)
    if network == "none":
        missing.append("slirp4netns not found (Debian package slirp4netns): containers get "
                       "no private network")
    elif rootless and not os.access(TUN, os.R_OK | os.W_OK):
        missing.append(f"{TUN} is not read-writable for this user: slirp4netns cannot "
                       "make the containers' network")
    delegated = delegated_controllers()
    if rootless and len(delegated) < 3:
        missing.append("no delegated cgroup v2 subtree: --memory, --pids-limit, --cpus "
                       "are refused" if not delegated else
                       f"only {', '.join(delegated)} delegated: limits of the others are refused")
    return RootlessInfo(rootless, in_ns, user, uid_map, gid_map, overlay, network,
                        delegated, missing)


def format_map(m: list[tuple[int, int, int]]) -> str:
    return ", ".join(f"{i}->{o} ({c})" for i, o, c in m) or "none"
