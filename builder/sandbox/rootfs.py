"""The container's filesystem, built inside the child's private mount namespace.

Host paths (lower dirs, bind sources, generated /etc files) are opened as
detached mount trees *before* pivot_root; every target is created and
mounted *after* it, when "/" is the container's root, so no symlink in the
image can lead a mount or a mkdir out of the rootfs.
"""

from __future__ import annotations

import errno
import fcntl
import os
import stat
import struct
from dataclasses import dataclass, field

from layerstore.userns import mapped_ids
from layerstore import snapshots
from layerstore.humanize import quoted

from . import libc
from .spec import (MASKED_PATHS, READONLY_PATHS, BindMount, DirRoot, OverlayRoot, SandboxError,
                   SandboxSpec, SecretMount, TmpfsMount)

_NOSUID_NODEV_NOEXEC = libc.MS_NOSUID | libc.MS_NODEV | libc.MS_NOEXEC
_DEVICES = (("null", 1, 3), ("zero", 1, 5), ("full", 1, 7), ("random", 1, 8),
            ("urandom", 1, 9), ("tty", 5, 0))
_DEV_LINKS = (("ptmx", "pts/ptmx"), ("fd", "/proc/self/fd"), ("stdin", "/proc/self/fd/0"),
              ("stdout", "/proc/self/fd/1"), ("stderr", "/proc/self/fd/2"), ("core", "/proc/kcore"))
_ETC_FILES = ("hosts", "resolv.conf", "hostname")
_ST_FLAGS = (libc.MS_RDONLY | libc.MS_NOSUID | libc.MS_NODEV | libc.MS_NOEXEC | libc.MS_NOATIME
             | libc.MS_NODIRATIME | libc.MS_RELATIME)


@dataclass
class Detached:
    """Mount trees opened from host paths before pivot_root, attached after it."""

    binds: list[tuple[int, BindMount, bool]] = field(default_factory=list)  # fd, mount, is_dir
    etc: list[tuple[int, str]] = field(default_factory=list)               # fd, /etc/<name>
    devices: list[tuple[int, str]] = field(default_factory=list)           # fd, /dev/<name>
    sys_fd: int | None = None
    console: int | None = None      # the pty slave, bound on /dev/console as docker does
    host_devices: list[tuple[str, int, int, int, int]] = field(default_factory=list)
    writable_sys: bool = False      # privileged: sysfs read-write
    shm: int | None = None          # --ipc host: the host's /dev/shm, bound on the container's


def _clone_tree(path: str, recursive: bool = True) -> int:
    flags = libc.OPEN_TREE_CLONE | libc.OPEN_TREE_CLOEXEC | (libc.AT_RECURSIVE if recursive else 0)
    return libc.open_tree(path, flags)


def _plan(root: OverlayRoot) -> snapshots.MountPlan:
    return snapshots.MountPlan(list(root.lowers), root.upper, root.work, volatile=root.volatile,
                               scratch=root.work.parent if root.work is not None else None)


def open_root(spec: SandboxSpec) -> int | None:
    """The root filesystem as a detached mount tree made with our host credentials,
    or None when this kernel needs the mount(2) fallback (done in the child)."""
    root = spec.root
    if isinstance(root, DirRoot):
        return _clone_tree(str(root.path))
    assert isinstance(root, OverlayRoot)
    return snapshots.open_mount(_plan(root))


def mount_root(spec: SandboxSpec, root_fd: int | None, target: str, state_dir: str) -> None:
    """Attach the root on `target`; without the new mount API, mount it here."""
    if root_fd is not None:
        libc.move_mount_fd(root_fd, target)
        os.close(root_fd)
    elif isinstance(spec.root, DirRoot):
        libc.mount(str(spec.root.path), target, None, libc.MS_BIND | libc.MS_REC)
    else:
        snapshots.mount(_plan(spec.root), target)


def detach_sources(spec: SandboxSpec, state_dir: str, userns: bool, net_host: bool,
                   tty: str | None = None) -> Detached:
    d = Detached()
    if tty is not None:
        d.console = _clone_tree(tty, False)
    for m in spec.mounts:
        if isinstance(m, BindMount):
            fd = _clone_tree(str(m.src))
            if m.readonly:
                libc.make_readonly(fd, str(m.src))
            d.binds.append((fd, m, os.path.isdir(m.src)))
    if spec.etc_files:
        # the caller's own mount at one of these paths wins, as in docker (`-v
        # /srv/hosts:/etc/hosts:ro` pins the names of a multi-service setup)
        taken = {os.path.normpath("/" + m.dst.lstrip("/")) for m in spec.mounts}
        for name in _ETC_FILES:
            if "/etc/" + name in taken:
                continue
            d.etc.append((_clone_tree(os.path.join(state_dir, name), False), "/etc/" + name))
    if spec.ipc == "host":
        d.shm = _clone_tree("/dev/shm")
    if spec.privileged:
        d.writable_sys = True
        if not userns:
            d.host_devices = host_devices()
    if userns:
        # mknod is not allowed in a user namespace: bind the host's nodes instead
        for name, _, _ in _DEVICES:
            d.devices.append((_clone_tree("/dev/" + name, False), "/dev/" + name))
        if net_host:
            # sysfs can only be mounted by the owner of the network namespace
            d.sys_fd = _clone_tree("/sys")
            libc.make_readonly(d.sys_fd, "/sys")
    return d


# not device trees of their own in a container (moby's HostDevices skips them too)
# (and the links every container gets: /dev/ptmx is pts/ptmx, not the host's node)
_HOST_DEV_SKIP = {"pts", "shm", "fd", "mqueue", ".lxc", ".lxd-mounts", ".udev", "console",
                  *(name for name, _ in _DEV_LINKS)}


def host_devices(top: str = "/dev") -> list[tuple[str, int, int, int, int]]:
    """(path under /dev, mode, rdev, uid, gid) of every character and block device of the
    host, for a privileged container (docker gives it all of them)."""
    out = []
    stack = [""]
    while stack:
        rel = stack.pop()
        try:
            entries = list(os.scandir(os.path.join(top, rel)))
        except OSError:
            continue
        for e in entries:
            if e.name in _HOST_DEV_SKIP:
                continue
            sub = f"{rel}/{e.name}" if rel else e.name
            st = e.stat(follow_symlinks=False)
            if stat.S_ISDIR(st.st_mode):
                stack.append(sub)
            elif stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode):
                out.append((sub, st.st_mode, st.st_rdev, st.st_uid, st.st_gid))
    return sorted(out)


# Mount points this child had to create in the rootfs ("stubs"), reported to the
# caller so it can remove them afterwards and a build's diff does not see them.
STUBS: list[str] = []


def _child_dir(target: str, name: str) -> str:
    """target/name as a real directory (created if missing); a symlink there is refused."""
    path = os.path.join(target, name)
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        os.mkdir(path, 0o755)
        STUBS.append("/" + name)
        return path
    if not stat.S_ISDIR(st.st_mode):
        raise SandboxError(f"root filesystem: /{name} is not a directory (a symlink?)")
    return path


def mount_kernel_fs(target: str, d: Detached) -> None:
    """/proc and /sys, mounted before pivot_root: in a user namespace the kernel only
    allows a new proc or sysfs while a fully visible one is still in the namespace."""
    libc.mount("proc", _child_dir(target, "proc"), "proc", _NOSUID_NODEV_NOEXEC)
    sys_dir = _child_dir(target, "sys")
    if d.sys_fd is not None:
        libc.move_mount_fd(d.sys_fd, sys_dir)
        os.close(d.sys_fd)
        d.sys_fd = None
    else:
        libc.mount("sysfs", sys_dir, "sysfs",
                   (0 if d.writable_sys else libc.MS_RDONLY) | _NOSUID_NODEV_NOEXEC)


def pivot(target: str) -> None:
    """Make `target` the root and detach the old one (runc's pivot_root(".", ".") idiom)."""
    os.chdir(target)
    libc.pivot_root(".", ".")
    libc.umount2(".", libc.MNT_DETACH)
    os.chdir("/")


def _mkdirs(path: str) -> None:
    """mkdir -p after pivot_root: symlinks on the way resolve inside the new root."""
    cur = "/"
    for part in os.path.realpath(path).strip("/").split("/"):
        if not part:
            continue
        cur = os.path.join(cur, part)
        if not os.path.isdir(cur):
            try:
                os.mkdir(cur, 0o755)
            except FileExistsError:
                where = "" if cur == path else f" ({quoted(cur)} on the way)"
                raise SandboxError(f"mount target {quoted(path)}{where} is not a directory, "
                                   "and a directory is to be mounted there") from None
            STUBS.append(cur)


def _touch(path: str) -> None:
    parent = os.path.realpath(os.path.dirname(path))
    _mkdirs(parent)
    path = os.path.join(parent, os.path.basename(path))
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        os.close(os.open(path, os.O_CREAT | os.O_WRONLY | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644))
        STUBS.append(path)
        return
    if stat.S_ISDIR(st.st_mode):
        raise SandboxError(f"mount target {path} is a directory, the source is a file")


# /proc files a mount may cover (runc's list: what lxcfs provides); nothing else in /proc
_PROC_MOUNTABLE = ("/proc/cpuinfo", "/proc/diskstats", "/proc/meminfo", "/proc/stat",
                   "/proc/swaps", "/proc/uptime", "/proc/loadavg", "/proc/slabinfo",
                   "/proc/net/dev", "/proc/sys/kernel/ns_last_pid")


def _target(path: str) -> str:
    """Where a mount requested at `path` lands, as docker resolves it: symlinks on the way
    followed inside the container's root (we are past pivot_root: none can lead out, and
    `..` stops at /). A symlink planted by the image may not lead into /proc (runc's
    rule): a mount there would hide or fake what the masks and read-only paths guard."""
    real = os.path.realpath(path)
    if (real == "/proc" or real.startswith("/proc/")) and real not in _PROC_MOUNTABLE:
        via = f" (through a symlink: {quoted(real)})" if real != os.path.normpath(path) else ""
        raise SandboxError(f"mount target {quoted(path)}{via} is inside /proc, where nothing "
                           "may be mounted")
    return real


def _attach(fd: int, target: str, is_dir: bool) -> None:
    try:
        target = _target(target)
        if is_dir:
            _mkdirs(target)
        else:
            _touch(target)
    except BaseException:
        os.close(fd)
        raise
    try:
        libc.move_mount_fd(fd, target)
    finally:
        os.close(fd)


def _remount_ro(path: str) -> None:
    """Bind `path` on itself and make it read-only, keeping its locked flags."""
    libc.mount(path, path, None, libc.MS_BIND | libc.MS_REC)
    flags = os.statvfs(path).f_flag & _ST_FLAGS
    libc.mount(None, path, None, libc.MS_BIND | libc.MS_REMOUNT | libc.MS_RDONLY | flags)


DEFAULT_SHM_SIZE = 64 << 20    # docker's


def _mount_dev(spec: SandboxSpec, d: Detached) -> None:
    _mkdirs("/dev")
    libc.mount("tmpfs", "/dev", "tmpfs", libc.MS_NOSUID | libc.MS_STRICTATIME,
               "mode=755,size=65536k")
    if d.devices:
        for fd, path in d.devices:
            _attach(fd, path, False)
    else:
        for name, major, minor in _DEVICES:
            os.mknod("/dev/" + name, 0o666 | stat.S_IFCHR, os.makedev(major, minor))
            os.chmod("/dev/" + name, 0o666)
    for rel, mode, rdev, uid, gid in d.host_devices:
        path = "/dev/" + rel
        if os.path.lexists(path):
            continue
        os.makedirs(os.path.dirname(path), 0o755, exist_ok=True)
        os.mknod(path, mode, rdev)
        os.chown(path, uid, gid)
        os.chmod(path, stat.S_IMODE(mode))
    # --ipc none: an IPC namespace of its own and no /dev/shm at all, as docker's
    for sub in ("pts", "mqueue") if spec.ipc == "none" else ("pts", "shm", "mqueue"):
        os.mkdir("/dev/" + sub, 0o755)
    # gid 5 (tty) owns the terminals, as in docker; a rootless namespace that maps only
    # the user's own gid has no gid 5, and devpts refuses an unmapped one (EINVAL)
    tty_gid = ",gid=5" if mapped_ids("gid") > 5 else ""
    libc.mount("devpts", "/dev/pts", "devpts", libc.MS_NOSUID | libc.MS_NOEXEC,
               "newinstance,ptmxmode=0666,mode=0620" + tty_gid)
    if d.shm is not None:
        libc.move_mount_fd(d.shm, "/dev/shm")
        os.close(d.shm)
        d.shm = None
    elif spec.ipc != "none":
        libc.mount("shm", "/dev/shm", "tmpfs", _NOSUID_NODEV_NOEXEC,
                   f"mode=1777,size={spec.shm_size or DEFAULT_SHM_SIZE}")
    libc.mount("mqueue", "/dev/mqueue", "mqueue", _NOSUID_NODEV_NOEXEC)
    for name, dest in _DEV_LINKS:
        os.symlink(dest, "/dev/" + name)
    if d.console is not None:
        _attach(d.console, "/dev/console", False)
        d.console = None


def _mask(path: str) -> None:
    try:
        st = os.stat(path)
    except OSError:
        return
    try:
        if stat.S_ISDIR(st.st_mode):
            libc.mount("tmpfs", path, "tmpfs", libc.MS_RDONLY | _NOSUID_NODEV_NOEXEC, "size=0")
        else:
            libc.mount("/dev/null", path, None, libc.MS_BIND)
    except OSError as e:
        if e.errno not in (errno.ENOENT, errno.ENOTDIR):
            raise


def _mount_secrets(secrets: list[SecretMount]) -> None:
    """Each secret as a read-only file bound from a tmpfs of this mount namespace.

    The bytes came with the spec, in memory: they are written only here, into a tmpfs
    that is mounted on a scratch point of our own /dev while no other process is in the
    container, and unmounted again once every file is bound, so it is reachable only
    through those binds and is freed with the namespace, even when we are SIGKILLed."""
    scratch = "/dev/.pybuild-secrets"
    os.mkdir(scratch, 0o700)
    pages = sum(-(-len(m.data) // 4096) for m in secrets) + 1
    libc.mount("tmpfs", scratch, "tmpfs", _NOSUID_NODEV_NOEXEC,
               f"mode=700,size={pages * 4096},nr_inodes={len(secrets) + 8}")
    try:
        for i, m in enumerate(secrets):
            src = f"{scratch}/{i}"
            fd = os.open(src, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
            try:
                view = memoryview(m.data)
                while view:
                    view = view[os.write(fd, view):]
                os.fchown(fd, m.uid, m.gid)
                os.fchmod(fd, m.mode)
            finally:
                os.close(fd)
            dst = _target(m.dst)
            _touch(dst)
            libc.mount(src, dst, None, libc.MS_BIND)
            libc.mount(None, dst, None, libc.MS_BIND | libc.MS_REMOUNT | libc.MS_RDONLY
                       | _NOSUID_NODEV_NOEXEC)
    finally:
        libc.umount2(scratch, libc.MNT_DETACH)
        os.rmdir(scratch)


def _make_devices(spec: SandboxSpec) -> None:
    """--device: a node of our own with the host device's type and numbers (the caller
    stat'ed it; the device cgroup allows just these). We are past pivot_root: the path
    resolves inside the container, and an existing entry there is not replaced."""
    for dev in spec.devices:
        path = _target(dev.path)
        _mkdirs(os.path.dirname(path))
        kind = stat.S_IFCHR if dev.type == "c" else stat.S_IFBLK
        try:
            os.mknod(path, kind | 0o600, os.makedev(dev.major, dev.minor))
        except FileExistsError:
            st = os.lstat(path)   # the same node already (--privileged made every one)
            if stat.S_IFMT(st.st_mode) != kind or st.st_rdev != os.makedev(dev.major, dev.minor):
                raise SandboxError(f"device {quoted(dev.path)}: something else already exists "
                                   "there in the container") from None
        fd = os.open(path, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC)
        try:
            os.chown(f"/proc/self/fd/{fd}", dev.uid, dev.gid)
            os.chmod(f"/proc/self/fd/{fd}", dev.mode & 0o7777)
        finally:
            os.close(fd)


def populate(spec: SandboxSpec, d: Detached) -> None:
    """Everything mounted after pivot_root: /dev, user mounts, /etc files, masks."""
    _mount_dev(spec, d)
    _make_devices(spec)
    for fd, m, is_dir in d.binds:
        _attach(fd, m.dst, is_dir)
    secrets = [m for m in spec.mounts if isinstance(m, SecretMount)]
    if secrets:
        _mount_secrets(secrets)
    for m in spec.mounts:
        if isinstance(m, TmpfsMount):
            dst = _target(m.dst)
            _mkdirs(dst)
            opts = f"mode={m.mode:o}" + (f",size={m.size}" if m.size else "")
            libc.mount("tmpfs", dst, "tmpfs", libc.MS_NOSUID | libc.MS_NODEV
                       | (libc.MS_NOEXEC if m.noexec else 0), opts)
    for fd, path in d.etc:
        try:
            _attach(fd, path, False)
        except OSError as e:
            # a user-namespaced root cannot create the mount point in a rootfs the
            # mapped range does not own, nor can anyone in a read-only mount over /etc
            # (`-v /dir:/etc:ro`): the container then keeps the files it has there
            if e.errno not in (errno.EACCES, errno.EPERM, errno.EROFS):
                raise
    if not spec.privileged:
        for path in MASKED_PATHS:
            _mask(path)
        for path in READONLY_PATHS:
            if os.path.exists(path):
                _remount_ro(path)
    if spec.root.readonly:
        libc.mount(None, "/", None, libc.MS_BIND | libc.MS_REMOUNT | libc.MS_RDONLY
                   | (os.statvfs("/").f_flag & _ST_FLAGS))


def loopback_up() -> None:
    """Bring `lo` up in our fresh network namespace (SIOCGIFFLAGS/SIOCSIFFLAGS)."""
    s = libc.dgram_socket()
    try:
        req = struct.pack("16sH14x", b"lo", 0)
        flags = struct.unpack("16sH14x", fcntl.ioctl(s, 0x8913, req))[1]
        fcntl.ioctl(s, 0x8914, struct.pack("16sH14x", b"lo", flags | 1))
    finally:
        os.close(s)


def find_executable(name: str, path_env: str) -> str:
    """Resolve argv[0] like execvp, inside the container, with docker's messages."""
    if "/" in name:
        if not os.path.exists(name):
            raise SandboxError(f"exec {quoted(name)}: no such file or directory", 127)
        return name
    for d in path_env.split(":"):
        cand = os.path.join(d or ".", name)
        if os.path.isfile(cand) and os.access(cand, os.X_OK):
            return cand
    raise SandboxError(f"exec {quoted(name)}: executable file not found in $PATH", 127)


def remove_stubs(spec: SandboxSpec, stubs: list[str]) -> None:
    """Delete the empty mount points we created, from the plain root or the upper dir
    (layerstore.snapshots.remove_stubs: resolved without following any symlink)."""
    root = spec.root
    if isinstance(root, DirRoot):
        snapshots.remove_stubs(root.path, stubs)
    else:
        snapshots.remove_stubs(root.upper, stubs, root.lowers)
