"""ctypes wrappers for the Linux calls the store needs and Python 3.11 lacks.

Only calls whose numbers are the same on every architecture live here (the
ones added since Linux 5.1 share one table: open_tree .. mount_setattr, and
openat2), plus mount(2)/umount2(2) through libc. builder.sandbox.libc
re-exports them beside its own architecture-specific calls, so there is one
wrapper of each.

Every wrapper checks the return value and raises OSError with the errno and
the object at fault.
"""

from __future__ import annotations

import ctypes
import errno
import os

_libc = ctypes.CDLL(None, use_errno=True)
_syscall = _libc.syscall
_syscall.restype = ctypes.c_long

# the unified numbers of syscalls added since Linux 5.1 (same on x86_64 and aarch64)
SYS_open_tree = 428
SYS_move_mount = 429
SYS_fsopen = 430
SYS_fsconfig = 431
SYS_fsmount = 432
SYS_close_range = 436
SYS_openat2 = 437
SYS_mount_setattr = 442

MS_RDONLY = 1
MS_NOSUID = 2
MS_NODEV = 4
MS_NOEXEC = 8
MS_REMOUNT = 32
MS_NOATIME = 1024
MS_NODIRATIME = 2048
MS_BIND = 4096
MS_MOVE = 8192
MS_REC = 16384
MS_PRIVATE = 1 << 18
MS_RELATIME = 1 << 21
MS_STRICTATIME = 1 << 24
MNT_DETACH = 2

OPEN_TREE_CLONE = 1
OPEN_TREE_CLOEXEC = os.O_CLOEXEC
AT_RECURSIVE = 0x8000
AT_EMPTY_PATH = 0x1000
AT_FDCWD = -100
MOVE_MOUNT_F_EMPTY_PATH = 4
FSOPEN_CLOEXEC = 1
FSMOUNT_CLOEXEC = 1
FSCONFIG_SET_FLAG = 0
FSCONFIG_SET_STRING = 1
FSCONFIG_CMD_CREATE = 6
MOUNT_ATTR_RDONLY = 1

RESOLVE_NO_XDEV = 0x01
RESOLVE_NO_MAGICLINKS = 0x02
RESOLVE_NO_SYMLINKS = 0x04
RESOLVE_BENEATH = 0x08
RESOLVE_IN_ROOT = 0x10


def check(ret: int, what: str) -> int:
    if ret < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")
    return ret


def _b(path: str | os.PathLike | None) -> bytes | None:
    return None if path is None else os.fsencode(path)


def mount(source: str | None, target: str, fstype: str | None, flags: int = 0,
          data: str | None = None) -> None:
    ret = _libc.mount(_b(source), _b(target), _b(fstype), ctypes.c_ulong(flags), _b(data))
    check(ret, f"mount {fstype or source or ''} on {target}")


def umount2(target: str, flags: int = 0) -> None:
    check(_libc.umount2(_b(target), ctypes.c_int(flags)), f"umount {target}")


def unshare(flags: int) -> None:
    check(_libc.unshare(ctypes.c_int(flags)), f"unshare({flags:#x})")


def setns(fd: int, nstype: int, what: str) -> None:
    """setns(2): `fd` is a namespace file, or a pidfd with CLONE_NEW* flags (Linux 5.8),
    which joins all of them at once, in the kernel's order (user namespace first)."""
    check(_libc.setns(ctypes.c_int(fd), ctypes.c_int(nstype)), f"setns {what}")


# --- new mount API: detached mount trees as file descriptors ---------------------------

def open_tree(path: str, flags: int, dir_fd: int = AT_FDCWD) -> int:
    return check(_syscall(SYS_open_tree, dir_fd, _b(path), ctypes.c_uint(flags)),
                 f"open_tree {path}")


def move_mount_fd(fd: int, target: str) -> None:
    check(_syscall(SYS_move_mount, fd, b"", AT_FDCWD, _b(target),
                   ctypes.c_uint(MOVE_MOUNT_F_EMPTY_PATH)), f"move_mount onto {target}")


def fsopen(fstype: str) -> int:
    return check(_syscall(SYS_fsopen, _b(fstype), ctypes.c_uint(FSOPEN_CLOEXEC)), f"fsopen {fstype}")


def fsconfig(fd: int, cmd: int, key: str | None = None, value: str | None = None) -> None:
    ret = _syscall(SYS_fsconfig, fd, ctypes.c_uint(cmd), _b(key), _b(value), 0)
    check(ret, f"fsconfig {key}={value}")


def fsmount(fd: int, attr_flags: int = 0) -> int:
    return check(_syscall(SYS_fsmount, fd, ctypes.c_uint(FSMOUNT_CLOEXEC),
                          ctypes.c_uint(attr_flags)), "fsmount")


class _MountAttr(ctypes.Structure):
    _fields_ = [("attr_set", ctypes.c_uint64), ("attr_clr", ctypes.c_uint64),
                ("propagation", ctypes.c_uint64), ("userns_fd", ctypes.c_uint64)]


def make_readonly(fd: int, what: str) -> None:
    """Make a detached mount tree read-only, every submount included."""
    attr = _MountAttr(MOUNT_ATTR_RDONLY, 0, 0, 0)
    check(_syscall(SYS_mount_setattr, fd, b"", ctypes.c_uint(AT_EMPTY_PATH | AT_RECURSIVE),
                   ctypes.byref(attr), ctypes.c_size_t(ctypes.sizeof(attr))), f"read-only {what}")


# --- openat2 ----------------------------------------------------------------------------

class _OpenHow(ctypes.Structure):
    _fields_ = [("flags", ctypes.c_uint64), ("mode", ctypes.c_uint64),
                ("resolve", ctypes.c_uint64)]


_openat2_state: list[bool | None] = [None]   # None: not probed yet


def openat2_available() -> bool:
    """True when this kernel has openat2(2) (Linux 5.6) and seccomp lets us use it."""
    if _openat2_state[0] is None:
        try:
            fd = openat2(AT_FDCWD, "/", os.O_PATH | os.O_CLOEXEC, 0, 0)
        except OSError as e:
            _openat2_state[0] = e.errno not in (errno.ENOSYS, errno.EPERM)
        else:
            os.close(fd)
            _openat2_state[0] = True
    return bool(_openat2_state[0])


def openat2(dir_fd: int, path: str | bytes, flags: int, mode: int, resolve: int) -> int:
    """openat2(2); retries EAGAIN (a concurrent rename raced a `..` lookup) a few times."""
    how = _OpenHow(flags, mode, resolve)
    raw = path if isinstance(path, bytes) else os.fsencode(path)
    for _ in range(64):
        ret = _syscall(SYS_openat2, ctypes.c_int(dir_fd), raw, ctypes.byref(how),
                       ctypes.c_size_t(ctypes.sizeof(how)))
        if ret >= 0:
            return ret
        err = ctypes.get_errno()
        if err != errno.EAGAIN:
            raise OSError(err, os.strerror(err), os.fsdecode(raw))
    raise OSError(errno.EAGAIN, os.strerror(errno.EAGAIN), os.fsdecode(raw))
