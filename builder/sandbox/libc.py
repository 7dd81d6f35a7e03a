"""Thin ctypes wrappers for the Linux calls Python 3.11 lacks (x86_64 numbers).

Every wrapper checks the return value and raises OSError with the errno and
the object at fault, so a failed mount names its target instead of failing
silently later.
"""

from __future__ import annotations

import ctypes
import os

# the calls whose numbers every architecture shares live in layerstore.syscalls (the
# snapshotter and the path resolver need them too): one wrapper of each
from layerstore.syscalls import (AT_EMPTY_PATH, AT_FDCWD, AT_RECURSIVE, FSCONFIG_CMD_CREATE,  # noqa: F401
                                 FSCONFIG_SET_FLAG, FSCONFIG_SET_STRING, FSMOUNT_CLOEXEC,
                                 FSOPEN_CLOEXEC, MNT_DETACH, MOUNT_ATTR_RDONLY,
                                 MOVE_MOUNT_F_EMPTY_PATH, MS_BIND, MS_MOVE, MS_NOATIME,
                                 MS_NODEV, MS_NODIRATIME, MS_NOEXEC, MS_NOSUID, MS_PRIVATE,
                                 MS_RDONLY, MS_REC, MS_RELATIME, MS_REMOUNT, MS_STRICTATIME,
                                 OPEN_TREE_CLOEXEC, OPEN_TREE_CLONE, SYS_close_range, _b, check,
                                 fsconfig, fsmount, fsopen, make_readonly, mount, move_mount_fd,
                                 open_tree, setns, umount2, unshare)

_libc = ctypes.CDLL(None, use_errno=True)
_syscall = _libc.syscall
_syscall.restype = ctypes.c_long

if os.uname().machine not in ("x86_64", "AMD64"):  # pragma: no cover - host is x86_64
    raise ImportError("builder.sandbox: syscall numbers are only defined for x86_64")

SYS_capget = 125
SYS_capset = 126
SYS_pivot_root = 155
SYS_seccomp = 317

CLONE_NEWNS = 0x00020000
CLONE_NEWCGROUP = 0x02000000
CLONE_NEWUTS = 0x04000000
CLONE_NEWIPC = 0x08000000
CLONE_NEWUSER = 0x10000000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000

AT_SETATTR_RECURSIVE = AT_RECURSIVE

PR_SET_PDEATHSIG = 1
PR_GET_DUMPABLE = 3
PR_SET_DUMPABLE = 4
PR_SET_KEEPCAPS = 8
PR_CAPBSET_DROP = 24
PR_SET_NO_NEW_PRIVS = 38
PR_CAP_AMBIENT = 47
PR_CAP_AMBIENT_RAISE = 2
PR_CAP_AMBIENT_CLEAR_ALL = 4
SECCOMP_SET_MODE_FILTER = 1
CLOSE_RANGE_CLOEXEC = 4


_check = check


def dgram_socket() -> int:
    """An AF_INET datagram socket fd, for interface ioctls (no `socket` import: the
    container child may no longer be able to read Python's own files)."""
    return _check(_libc.socket(2, 2 | 0o2000000, 0), "socket(AF_INET, SOCK_DGRAM)")


def clearenv() -> None:
    """clearenv(3): libc's environ emptied (os.environ is Python's copy, apart)."""
    _check(_libc.clearenv(), "clearenv")


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
