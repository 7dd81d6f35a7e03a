"""docker's --sysctl: which keys a container may set, and setting them from inside it.

Only sysctls that live in one of the container's own namespaces may be set (the
list runc and docker allow): anything else would change the host for every other
process. A net.* key needs a network namespace of its own, an IPC key an IPC
namespace, kernel.domainname a UTS namespace; kernel.hostname is --hostname's.

Values are written by the container's PID 1 once its namespaces and network exist,
through an fd of the /proc/sys of the proc it mounted itself (opened before the
read-only remount), resolved beneath it with no symlink followed: never through a
host path, and a key cannot name anything outside /proc/sys.
"""

from __future__ import annotations

import os
import re

from layerstore import resolver

from .spec import SandboxError

IPC_KEYS = ("kernel.msgmax", "kernel.msgmnb", "kernel.msgmni", "kernel.sem", "kernel.shmall",
            "kernel.shmmax", "kernel.shmmni", "kernel.shm_rmid_forced")
# one name of /proc/sys/...: interface names may hold dots (eth0.100), '-', '@', ':'
_NAME = re.compile(r"^[A-Za-z0-9_@:+-][A-Za-z0-9_.@:+-]{0,63}\Z")
MAX_DEPTH = 10
MAX_VALUE = 4096


def components(key: str) -> list[str]:
    """The path of `key` under /proc/sys: dotted (net.ipv4.ip_forward) or, as runc
    also takes it, with slashes (net/ipv4/conf/eth0.100/forwarding)."""
    names = key.split("/") if "/" in key else key.split(".")
    if not 2 <= len(names) <= MAX_DEPTH or not all(
            _NAME.match(n) and n not in (".", "..") and ".." not in n for n in names):
        raise SandboxError(f"invalid sysctl {key!r}: not a sysctl name", 125)
    return names


def check(key: str, value: str, network: str, ipc: str, uts: str) -> list[str]:
    """Refuse a key that is malformed or not in a namespace of the container's own."""
    names = components(key)
    dotted = ".".join(names)
    if "\0" in value or "\n" in value or len(value) > MAX_VALUE:
        raise SandboxError(f"invalid sysctl {key}={value[:40]!r}: the value must be one line "
                           f"of at most {MAX_VALUE} bytes", 125)
    if dotted == "kernel.hostname":
        raise SandboxError("sysctl kernel.hostname is not allowed: use --hostname", 125)
    if dotted.startswith("net."):
        if network == "host":
            raise SandboxError(f"sysctl {key!r} is not allowed in the host's network "
                               "namespace (--network host)", 125)
        return names
    if dotted in IPC_KEYS or dotted.startswith("fs.mqueue."):
        if ipc == "host":
            raise SandboxError(f"sysctl {key!r} is not allowed in the host's IPC namespace "
                               "(--ipc host)", 125)
        return names
    if dotted == "kernel.domainname":
        if uts == "host":
            raise SandboxError(f"sysctl {key!r} is not allowed in the host's UTS namespace "
                               "(--uts host)", 125)
        return names
    raise SandboxError(f"sysctl {key!r} is not in a separate kernel namespace: setting it "
                       "would change the host (allowed: net.*, kernel.shm*, kernel.msg*, "
                       "kernel.sem, fs.mqueue.*, kernel.domainname)", 125)


def open_proc_sys(proc_dir: str) -> int:
    """An fd of /proc/sys in the proc just mounted at `proc_dir` (no container process
    has run yet, so nothing there can have been swapped)."""
    proc = os.open(proc_dir, os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        return os.open("sys", os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC,
                       dir_fd=proc)
    finally:
        os.close(proc)


def apply(sys_fd: int, values: dict[str, str]) -> None:
    """Write each value, in the namespaces of the calling process (the container's)."""
    for key, value in values.items():
        names = components(key)
        try:
            fd = resolver.resolve(sys_fd, "/".join(names), policy=resolver.NO_SYMLINKS,
                                  flags=os.O_WRONLY | os.O_NOCTTY)
        except FileNotFoundError:
            raise SandboxError(f"sysctl {key!r}: no such key in the container", 125) from None
        except resolver.PathEscape as e:
            raise SandboxError(f"sysctl {key!r}: {e}", 125) from None
        except OSError as e:
            raise SandboxError(f"sysctl {key!r}: {e.strerror or e}", 125) from None
        try:
            os.write(fd, value.encode())
        except OSError as e:
            raise SandboxError(f"sysctl {key}={value}: {e.strerror}", 125) from None
        finally:
            os.close(fd)
