"""What `pybuild info` says about rootless mode: whether this process runs in a user
namespace, the id ranges mapped into it (or that would be), which overlay and user-mode
network it can use, whether a cgroup v2 subtree is delegated, and what is missing.

Only reads: /proc/self/{uid_map,gid_map,cgroup,mountinfo}, /etc/subuid, /etc/subgid, PATH.
"""

from __future__ import annotations

import os
import platform
import pwd
import shutil
from dataclasses import dataclass, field

# The helpers rootless mode runs, in the order it prefers them. pasta (Debian's passt) before
# slirp4netns: it needs no tap device setup of ours and forwards ports itself.
NETWORK_HELPERS = ("pasta", "slirp4netns")
ID_HELPERS = ("newuidmap", "newgidmap")
FUSE_OVERLAY = "fuse-overlayfs"
# Unprivileged overlayfs mounts inside a user namespace (with `userxattr`) came in 5.11.
NATIVE_OVERLAY_KERNEL = (5, 11)
INITIAL_MAP = [(0, 0, 4294967295)]


@dataclass(frozen=True)
class RootlessInfo:
    rootless: bool                         # not the initial user namespace, or not uid 0
    in_user_namespace: bool
    user: str                              # the host user pybuild acts for
    uid_map: list[tuple[int, int, int]]    # (inside, outside, count): mapped or to be mapped
    gid_map: list[tuple[int, int, int]]
    overlay: str                           # "native", "fuse-overlayfs" or "none"
    network: str                           # "bridge", "pasta", "slirp4netns" or "none"
    cgroup_delegated: bool
    missing: list[str] = field(default_factory=list)


def read_id_map(path: str = "/proc/self/uid_map") -> list[tuple[int, int, int]]:
    out = []
    try:
        with open(path) as f:
            for line in f.read(64 * 1024).splitlines():
                parts = line.split()
                if len(parts) == 3 and all(p.isdigit() for p in parts):
                    out.append((int(parts[0]), int(parts[1]), int(parts[2])))
    except OSError:
        pass
    return out


def in_user_namespace() -> bool:
    try:
        from layerstore.userns import in_user_namespace as probe
    except ImportError:     # before the rootless core: the same test, on the same file
        return read_id_map() not in ([], INITIAL_MAP)
    return probe()


def host_uid() -> int:
    """The host uid this process acts for: the outside id of inside uid 0 in a user
    namespace (pybuild maps its user to root there), else our own."""
    if in_user_namespace():
        for inside, outside, _count in read_id_map():
            if inside == 0:
                return outside
    return os.getuid()


def _user_name(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


def subordinate_ranges(user: str, uid: int, path: str) -> list[tuple[int, int]]:
    """(start, count) of `user` (by name or uid) in a /etc/subuid-style file."""
    out = []
    try:
        with open(path) as f:
            lines = f.read(1024 * 1024).splitlines()
    except OSError:
        return out
    for line in lines:
        parts = line.strip().split(":")
        if len(parts) == 3 and parts[0] in (user, str(uid)) \
                and parts[1].isdigit() and parts[2].isdigit() and int(parts[2]) > 0:
            out.append((int(parts[1]), int(parts[2])))
    return out


def planned_map(uid: int, ranges: list[tuple[int, int]]) -> list[tuple[int, int, int]]:
    """The map rootless mode writes: the user as 0, then its subordinate ranges from 1 on."""
    out, inside = [(0, uid, 1)], 1
    for start, count in ranges:
        out.append((inside, start, count))
        inside += count
    return out


def kernel_at_least(version: tuple[int, int]) -> bool:
    try:
        parts = platform.release().split("-")[0].split(".")
        return (int(parts[0]), int(parts[1])) >= version
    except (ValueError, IndexError):
        return False


def overlay_kind(rootless: bool) -> str:
    if not rootless or kernel_at_least(NATIVE_OVERLAY_KERNEL):
        return "native"
    return FUSE_OVERLAY if shutil.which(FUSE_OVERLAY) else "none"


def network_kind(rootless: bool) -> str:
    if not rootless:
        return "bridge"
    for helper in NETWORK_HELPERS:
        if shutil.which(helper):
            return helper
    return "none"


def own_cgroup_v2() -> str | None:
    """The directory of our cgroup in the v2 hierarchy, when one is mounted here."""
    path = None
    try:
        with open("/proc/self/cgroup") as f:
            for line in f.read(64 * 1024).splitlines():
                if line.startswith("0::"):
                    path = line[3:]
        if path is None:
            return None
        with open("/proc/self/mountinfo") as f:
            for line in f.read(1024 * 1024).splitlines():
                left, _, right = line.partition(" - ")
                parts = left.split()
                if right.split()[:1] == ["cgroup2"] and len(parts) > 4:
                    root, point = parts[3], parts[4].replace("\\040", " ")
                    if root != "/" and path.startswith(root):
                        path = path[len(root):]
                    return os.path.join(point, path.lstrip("/"))
    except OSError:
        return None
    return None


def cgroup_delegated() -> bool:
    """Whether we may make child cgroups and enable controllers in them: a writable
    cgroup.subtree_control in our v2 cgroup (a systemd user slice with Delegate=yes)."""
    base = own_cgroup_v2()
    return base is not None and os.access(os.path.join(base, "cgroup.subtree_control"),
                                          os.W_OK)


def probe() -> RootlessInfo:
    in_ns = in_user_namespace()
    rootless = in_ns or os.geteuid() != 0
    uid = host_uid()
    user = _user_name(uid)
    missing: list[str] = []
    if in_ns:
        uid_map, gid_map = read_id_map(), read_id_map("/proc/self/gid_map")
    elif rootless:
        subuids = subordinate_ranges(user, uid, "/etc/subuid")
        subgids = subordinate_ranges(user, uid, "/etc/subgid")
        gid = os.getgid()
        uid_map, gid_map = planned_map(uid, subuids), planned_map(gid, subgids)
        if not subuids:
            missing.append(f"no /etc/subuid range for {user}: one uid only")
        if not subgids:
            missing.append(f"no /etc/subgid range for {user}: one gid only")
        for helper in ID_HELPERS:
            if (subuids or subgids) and not shutil.which(helper):
                missing.append(f"{helper} not found (Debian package uidmap): one id only")
    else:
        uid_map, gid_map = read_id_map(), read_id_map("/proc/self/gid_map")
    if in_ns and sum(c for _i, _o, c in uid_map) <= 1:
        missing.append(f"only one uid mapped for {user} (no /etc/subuid range): "
                       "images that need other ids will not work")
    overlay = overlay_kind(rootless)
    if overlay == "none":
        missing.append("no overlay for a user namespace: kernel < 5.11 and no fuse-overlayfs")
    network = network_kind(rootless)
    if network == "none":
        missing.append("neither pasta (passt) nor slirp4netns: no network in containers")
    delegated = cgroup_delegated()
    if rootless and not delegated:
        missing.append("no delegated cgroup v2 subtree: --memory, --pids-limit, --cpus "
                       "are refused")
    return RootlessInfo(rootless, in_ns, user, uid_map, gid_map, overlay, network,
                        delegated, missing)


def format_map(m: list[tuple[int, int, int]]) -> str:
    return ", ".join(f"{i}->{o} ({c})" for i, o, c in m) or "none"
