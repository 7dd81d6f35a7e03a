"""Thin ctypes wrappers for the Linux calls Python 3.11 lacks (x86_64 numbers).

Every wrapper checks the return value and raises OSError with the errno and
the object at fault, so a failed mount names its target instead of failing
silently later.
"""

from __future__ import annotations

import ctypes
import os

_libc = ctypes.CDLL(None, use_errno=True)
_syscall = _libc.syscall
_syscall.restype = ctypes.c_long

if os.uname().machine not in ("x86_64", "AMD64"):  # pragma: no cover - host is x86_64
    raise ImportError("builder.sandbox: syscall numbers are only defined for x86_64")

SYS_capget = 125
SYS_capset = 126
SYS_pivot_root = 155
SYS_seccomp = 317
SYS_open_tree = 428
SYS_move_mount = 429
SYS_fsopen = 430
SYS_fsconfig = 431
SYS_fsmount = 432
SYS_close_range = 436
SYS_mount_setattr = 442

CLONE_NEWNS = 0x00020000
CLONE_NEWCGROUP = 0x02000000
CLONE_NEWUTS = 0x04000000
CLONE_NEWIPC = 0x08000000
CLONE_NEWUSER = 0x10000000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000

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
AT_SETATTR_RECURSIVE = AT_RECURSIVE

PR_SET_PDEATHSIG = 1
PR_SET_KEEPCAPS = 8
PR_CAPBSET_DROP = 24
PR_SET_NO_NEW_PRIVS = 38
PR_CAP_AMBIENT = 47
PR_CAP_AMBIENT_RAISE = 2
PR_CAP_AMBIENT_CLEAR_ALL = 4
SECCOMP_SET_MODE_FILTER = 1
CLOSE_RANGE_CLOEXEC = 4


def _check(ret: int, what: str) -> int:
    if ret < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")
    return ret


def _b(path: str | os.PathLike | None) -> bytes | None:
    return None if path is None else os.fsencode(path)


def dgram_socket() -> int:
    """An AF_INET datagram socket fd, for interface ioctls (no `socket` import: the
    container child may no longer be able to read Python's own files)."""
    return _check(_libc.socket(2, 2 | 0o2000000, 0), "socket(AF_INET, SOCK_DGRAM)")


def unshare(flags: int) -> None:
    _check(_libc.unshare(ctypes.c_int(flags)), f"unshare({flags:#x})")


def mount(source: str | None, target: str, fstype: str | None, flags: int = 0,
          data: str | None = None) -> None:
    ret = _libc.mount(_b(source), _b(target), _b(fstype), ctypes.c_ulong(flags), _b(data))
    _check(ret, f"mount {fstype or source or ''} on {target}")


def umount2(target: str, flags: int = 0) -> None:
    _check(_libc.umount2(_b(target), ctypes.c_int(flags)), f"umount {target}")


def pivot_root(new_root: str, put_old: str) -> None:
    _check(_syscall(SYS_pivot_root, _b(new_root), _b(put_old)), f"pivot_root {new_root}")


def sethostname(name: str) -> None:
    raw = name.encode()
    _check(_libc.sethostname(raw, ctypes.c_size_t(len(raw))), f"sethostname {name}")


def prctl(option: int, arg2: int = 0, arg3: int = 0, arg4: int = 0, arg5: int = 0) -> int:
    return _check(_libc.prctl(ctypes.c_int(option), ctypes.c_ulong(arg2), ctypes.c_ulong(arg3),
                              ctypes.c_ulong(arg4), ctypes.c_ulong(arg5)), f"prctl({option})")


class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapData(ctypes.Structure):
    _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32),
                ("inheritable", ctypes.c_uint32)]


_LINUX_CAPABILITY_VERSION_3 = 0x20080522


def capset(effective: int, permitted: int, inheritable: int) -> None:
    """Set this thread's capability sets (64-bit masks)."""
    hdr = _CapHeader(_LINUX_CAPABILITY_VERSION_3, 0)
    data = (_CapData * 2)()
    for i, shift in enumerate((0, 32)):
        data[i].effective = (effective >> shift) & 0xFFFFFFFF
        data[i].permitted = (permitted >> shift) & 0xFFFFFFFF
        data[i].inheritable = (inheritable >> shift) & 0xFFFFFFFF
    _check(_syscall(SYS_capset, ctypes.byref(hdr), data), "capset")


def close_range_cloexec(first: int) -> None:
    """Mark every fd >= first close-on-exec, so exec leaves only stdio behind."""
    _check(_syscall(SYS_close_range, ctypes.c_uint(first), ctypes.c_uint(0xFFFFFFFF),
                    ctypes.c_uint(CLOSE_RANGE_CLOEXEC)), "close_range")


class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]


def seccomp_load(bpf: bytes) -> None:
    """Install a classic-BPF seccomp program (struct sock_filter array, 8 bytes each)."""
    buf = ctypes.create_string_buffer(bpf, len(bpf))
    prog = _SockFprog(len(bpf) // 8, ctypes.cast(buf, ctypes.c_void_p))
    _check(_syscall(SYS_seccomp, SECCOMP_SET_MODE_FILTER, 0, ctypes.byref(prog)), "seccomp")


# New mount API: detached mount trees as file descriptors.

def open_tree(path: str, flags: int) -> int:
    return _check(_syscall(SYS_open_tree, AT_FDCWD, _b(path), ctypes.c_uint(flags)),
                  f"open_tree {path}")


def move_mount_fd(fd: int, target: str) -> None:
    _check(_syscall(SYS_move_mount, fd, b"", AT_FDCWD, _b(target),
                    ctypes.c_uint(MOVE_MOUNT_F_EMPTY_PATH)), f"move_mount onto {target}")


def fsopen(fstype: str) -> int:
    return _check(_syscall(SYS_fsopen, _b(fstype), ctypes.c_uint(FSOPEN_CLOEXEC)), f"fsopen {fstype}")


def fsconfig(fd: int, cmd: int, key: str | None = None, value: str | None = None) -> None:
    ret = _syscall(SYS_fsconfig, fd, ctypes.c_uint(cmd), _b(key), _b(value), 0)
    _check(ret, f"fsconfig {key}={value}")


def fsmount(fd: int, attr_flags: int = 0) -> int:
    return _check(_syscall(SYS_fsmount, fd, ctypes.c_uint(FSMOUNT_CLOEXEC),
                           ctypes.c_uint(attr_flags)), "fsmount")


def new_api_available() -> bool:
    """True when fsopen and overlay's `lowerdir+` key (Linux 6.8) can be used."""
    try:
        fd = fsopen("overlay")
    except OSError:
        return False
    try:
        fsconfig(fd, FSCONFIG_SET_STRING, "lowerdir+", "/")
        return True
    except OSError:
        return False
    finally:
        os.close(fd)


class _MountAttr(ctypes.Structure):
    _fields_ = [("attr_set", ctypes.c_uint64), ("attr_clr", ctypes.c_uint64),
                ("propagation", ctypes.c_uint64), ("userns_fd", ctypes.c_uint64)]


def make_readonly(fd: int, what: str) -> None:
    """Make a detached mount tree read-only, every submount included."""
    attr = _MountAttr(MOUNT_ATTR_RDONLY, 0, 0, 0)
    _check(_syscall(SYS_mount_setattr, fd, b"", ctypes.c_uint(AT_EMPTY_PATH | AT_RECURSIVE),
                    ctypes.byref(attr), ctypes.c_size_t(ctypes.sizeof(attr))), f"read-only {what}")
