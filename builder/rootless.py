"""Rootless pybuild: a plain user's process becomes root of ONE user namespace of its own.

The namespace maps uid/gid 0 to the user and 1..N to the user's /etc/subuid and
/etc/subgid ranges (written by Debian's setuid newuidmap/newgidmap), so layers keep
their owners, `chown` in RUN works and no host id outside the user's own ranges ever
owns a file of the store. Once inside, the rest of pybuild runs as it does for root;
the kernel bounds it to what the namespace owns.

Every invocation of the same user joins the same namespace: a container started by
`run -d` lives in it, and a later `exec`, `stop` or `cp` must be able to join the
container's namespaces and signal processes of any of its uids, which a sibling
namespace could not. A keeper process holds the namespace (as podman's pause process
does) and exits on its own once no process is left in it. Each invocation then takes a
private mount namespace, so nothing it mounts outlives it or is seen by another.
"""

from __future__ import annotations

import fcntl
import os
import pwd
import shutil
import signal
import stat
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from builder.procinfo import start_time
from layerstore import syscalls
from layerstore.errors import PybuildError

CLONE_NEWUSER = 0x10000000
CLONE_NEWNS = 0x00020000
NS_GET_OWNER_UID = 0xB704
MAX_SUBID_FILE = 1 << 20       # /etc/subuid of a big site is KiBs; bound what we read
IDLE_CHECK = 2.0               # seconds between the keeper's "anyone left?" looks


class RootlessError(PybuildError):
    exit_code = 125


@dataclass(frozen=True)
class IdRange:
    inside: int
    outside: int
    count: int


def subordinate_ranges(path: str, user: str, uid: int) -> list[tuple[int, int]]:
    """(start, count) of each line of a subuid/subgid file naming `user` or `uid`."""
    try:
        with open(path, "rb") as f:
            text = f.read(MAX_SUBID_FILE).decode("utf-8", "replace")
    except FileNotFoundError:
        return []
    out = []
    for line in text.splitlines():
        parts = line.strip().split(":")
        if len(parts) != 3 or parts[0] not in (user, str(uid)):
            continue
        try:
            start, count = int(parts[1]), int(parts[2])
        except ValueError:
            continue
        if start > 0 and count > 0 and start + count <= 1 << 32:
            out.append((start, count))
    return out


def id_map(own: int, ranges: list[tuple[int, int]]) -> list[IdRange]:
    """0 -> the user's own id, then the subordinate ranges back to back from 1."""
    out = [IdRange(0, own, 1)]
    nxt = 1
    for start, count in ranges:
        if start <= own < start + count:    # never map our own id twice
            continue
        out.append(IdRange(nxt, start, count))
        nxt += count
    return out


def runtime_dir(root: Path) -> Path:
    """$XDG_RUNTIME_DIR/pybuild when that is ours and private, else ROOT/run."""
    xdg = os.environ.get("XDG_RUNTIME_DIR")
    if xdg:
        try:
            st = os.stat(xdg)
            if stat.S_ISDIR(st.st_mode) and st.st_uid == os.getuid() and not st.st_mode & 0o077:
                return Path(xdg) / "pybuild"
        except OSError:
            pass
    return root / "run"


def _private_dir(path: Path) -> None:
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    st = os.lstat(path)
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.getuid():
        raise RootlessError(f"{path}: not a directory of user {os.getuid()}")
    if st.st_mode & 0o077:
        os.chmod(path, 0o700)


def _namespace_of(pid: int, start: str) -> int | None:
    """An fd on the user namespace of our keeper `pid`, or None if that is not it:
    the pid file is ours, but a pid is reused, so the start time must match and the
    namespace must be one our uid owns, not the initial one."""
    try:
        fd = os.open(f"/proc/{pid}/ns/user", os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        import array

        owner = array.array("I", [0])
        fcntl.ioctl(fd, NS_GET_OWNER_UID, owner, True)
        if start_time(pid) == start and owner[0] == os.getuid() and os.fstat(fd).st_ino != \
                os.stat("/proc/self/ns/user").st_ino:
            return fd
    except OSError:
        pass
    os.close(fd)
    return None


def _read_pidfile(path: Path) -> tuple[int, str] | None:
    try:
        text = path.read_bytes()[:64].decode("ascii", "replace").split()
        return int(text[0]), text[1]
    except (OSError, ValueError, IndexError):
        return None


def _write_maps(pid: int, uids: list[IdRange], gids: list[IdRange]) -> None:
    """Through newuidmap/newgidmap for subordinate ranges; a single id (our own) we may
    map ourselves, once setgroups is denied (else dropping a group could grant access)."""
    for which, ranges, tool in (("uid", uids, "newuidmap"), ("gid", gids, "newgidmap")):
        if len(ranges) == 1:
            if which == "gid":
                with open(f"/proc/{pid}/setgroups", "w") as f:
                    f.write("deny")
            with open(f"/proc/{pid}/{which}_map", "w") as f:
                r = ranges[0]
                f.write(f"{r.inside} {r.outside} {r.count}\n")
            continue
        exe = shutil.which(tool, path="/usr/bin:/bin:/usr/sbin:/sbin")
        if exe is None:
            raise RootlessError(f"{tool} not found: install the uidmap package "
                                "(it maps your /etc/subuid and /etc/subgid ranges)")
        argv = [exe, str(pid)] + [str(n) for r in ranges for n in (r.inside, r.outside, r.count)]
        res = subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, timeout=30)
        if res.returncode != 0:
            why = res.stdout.decode("utf-8", "replace").strip().splitlines()[-1:] or ["failed"]
            raise RootlessError(f"{tool} {' '.join(argv[1:])}: {why[0]}")


def _keeper(ready_w: int, go_r: int, lock_path: str, pid_path: str) -> None:
    """The keeper (a grandchild, so no caller ever reaps it): makes the namespace, waits
    for its maps, then sleeps until nothing else is left in it."""
    code = 1
    try:
        os.setsid()
        for s in (signal.SIGINT, signal.SIGHUP, signal.SIGQUIT, signal.SIGPIPE):
            signal.signal(s, signal.SIG_IGN)
        syscalls.unshare(CLONE_NEWUSER)
        os.write(ready_w, f"{os.getpid()} {start_time(os.getpid())}\n".encode())
        os.close(ready_w)
        if os.read(go_r, 1) != b"g":
            os._exit(1)
        os.close(go_r)
        os.chdir("/")
        null = os.open(os.devnull, os.O_RDWR)
        for fd in (0, 1, 2):
            os.dup2(null, fd)
        os.closerange(3, 1 << 16)
        me = os.getpid()
        mine = os.stat("/proc/self/ns/user").st_ino
        while True:
            time.sleep(IDLE_CHECK)
            try:
                lock = os.open(lock_path, os.O_RDWR | os.O_CLOEXEC)
            except OSError:
                break         # our runtime dir is gone: nobody can find us any more
            try:
                try:
                    fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except OSError:
                    continue  # someone is joining right now
                if not _others_in(mine, me):
                    if _read_pidfile(Path(pid_path)) == (me, start_time(me)):
                        os.unlink(pid_path)
                    break
            finally:
                os.close(lock)
        code = 0
    finally:
        os._exit(code)


def _others_in(ns_ino: int, me: int) -> bool:
    for name in os.listdir("/proc"):
        if not name.isdigit() or int(name) == me:
            continue
        try:
            if os.stat(f"/proc/{name}/ns/user").st_ino == ns_ino:
                return True
        except OSError:
            continue   # gone, or not ours to look at
    return False


def _spawn_keeper(run: Path, uids: list[IdRange], gids: list[IdRange]) -> tuple[int, str]:
    ready_r, ready_w = os.pipe()
    go_r, go_w = os.pipe()
    middle = os.fork()
    if middle == 0:
        try:
            os.close(ready_r)
            os.close(go_w)
            if os.fork() == 0:
                _keeper(ready_w, go_r, str(run / "userns.lock"), str(run / "userns.pid"))
        finally:
            os._exit(0)
    os.close(ready_w)
    os.close(go_r)
    os.waitpid(middle, 0)
    try:
        line = b""
        while not line.endswith(b"\n"):
            chunk = os.read(ready_r, 64)
            if not chunk:
                raise RootlessError("cannot create a user namespace: "
                                    + _why_no_userns())
            line += chunk
        pid_s, start = line.decode().split()
        pid = int(pid_s)
        try:
            _write_maps(pid, uids, gids)
        except BaseException:
            os.kill(pid, signal.SIGKILL)
            raise
        os.write(go_w, b"g")
    finally:
        os.close(ready_r)
        os.close(go_w)
    tmp = run / f"userns.pid.{os.getpid()}"
    tmp.write_text(f"{pid} {start}\n")
    os.replace(tmp, run / "userns.pid")
    return pid, start


def _why_no_userns() -> str:
    for path, bad, fix in (("/proc/sys/kernel/unprivileged_userns_clone", "0",
                            "sysctl kernel.unprivileged_userns_clone=1"),
                           ("/proc/sys/user/max_user_namespaces", "0",
                            "sysctl user.max_user_namespaces=15000")):
        try:
            if Path(path).read_text().strip() == bad:
                return f"unprivileged user namespaces are disabled here ({fix} as root)"
        except OSError:
            pass
    return "the kernel refused unshare(CLONE_NEWUSER)"


def enter(root: Path) -> None:
    """Make this (single-threaded) process root of the user's namespace, in a private
    mount namespace. No-op for root and inside a namespace already."""
    if os.geteuid() == 0:
        return
    uid, gid = os.getuid(), os.getgid()
    try:
        name = pwd.getpwuid(uid).pw_name
    except KeyError:
        name = str(uid)
    uids = id_map(uid, subordinate_ranges("/etc/subuid", name, uid))
    gids = id_map(gid, subordinate_ranges("/etc/subgid", name, uid))
    run = runtime_dir(root)
    try:
        _private_dir(run)
        lock = os.open(run / "userns.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    except OSError as e:
        raise RootlessError(f"{run}: {e.strerror}") from None
    try:
        fcntl.flock(lock, fcntl.LOCK_SH)
        ns = None
        found = _read_pidfile(run / "userns.pid")
        if found is not None:
            ns = _namespace_of(*found)
        if ns is None:
            fcntl.flock(lock, fcntl.LOCK_EX)   # one creator at a time; look again
            found = _read_pidfile(run / "userns.pid")
            if found is not None:
                ns = _namespace_of(*found)
            if ns is None:
                ns = _namespace_of(*_spawn_keeper(run, uids, gids))
                if ns is None:
                    raise RootlessError("the user namespace keeper died at once")
        try:
            syscalls.setns(ns, CLONE_NEWUSER, "user namespace")
        except OSError as e:
            raise RootlessError(f"cannot join the user namespace: {e.strerror}") from None
        finally:
            os.close(ns)
    finally:
        os.close(lock)    # we are in the namespace now: the keeper sees us in its scan
    from layerstore.userns import in_user_namespace

    in_user_namespace.cache_clear()    # asked before we moved (an import may have asked)
    os.setresgid(0, 0, 0)
    if len(gids) > 1:
        os.setgroups([])
    os.setresuid(0, 0, 0)
    try:
        syscalls.unshare(CLONE_NEWNS)
        # nothing we mount reaches the host's namespace
        syscalls.mount(None, "/", None, syscalls.MS_REC | syscalls.MS_PRIVATE)
    except OSError as e:
        raise RootlessError(f"cannot make a private mount namespace: {e.strerror}") from None
    # Start again in here. A process keeps the user namespace its memory was exec'd in
    # (mm->user_ns): ours is still the initial one, so every process we fork (a sandbox
    # monitor, a container's PID 1 before its exec, both non-dumpable) would have /proc
    # entries that only initial-namespace root may open -- slirp4netns could not join the
    # container's network namespace. After the exec all of them belong to our namespace.
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(sys.executable, sys.orig_argv)
