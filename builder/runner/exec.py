"""`pybuild exec`: run one more process inside a running container.

The sandbox has no exec entry point yet, so this joins a running container
with the sandbox's own pieces: a child of ours moves into the container's
cgroups, then setns(2)s into its ipc, uts, net, cgroup, pid and (last) mount
namespaces and forks, so the grandchild is inside the container's PID
namespace and root. The grandchild resolves the user against the
container's /etc/passwd, then drops privileges exactly as the container's
PID 1 did (same capability set, seccomp profile and no_new_privs) and execs.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import os
import signal
import stat
import struct
import termios
from pathlib import Path

from builder.sandbox import DirRoot, SandboxError, SandboxSpec
from builder.sandbox import caps as capmod
from builder.sandbox import libc, rootfs, seccomp, users
from builder.sandbox.cgroups import PREFIX, hierarchies
from builder.sandbox.container import drop_privileges
from builder.sandbox.spec import DEFAULT_PATH

from .attach import copy_winsize, forwarding, pump_pty, raw_terminal
from .containers import Containers, ContainerState, alive
from .create import seccomp_cache
from .errors import RunError
from .lifecycle import is_running
from .options import parse_env

NAMESPACES = ("ipc", "uts", "net", "cgroup", "pid", "mnt")   # mnt last: it changes our root
_libc = ctypes.CDLL(None, use_errno=True)


def setns(fd: int, what: str) -> None:
    if _libc.setns(ctypes.c_int(fd), ctypes.c_int(0)) < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"setns {what}: {os.strerror(err)}")


def cgroup_dirs(container_id: str) -> list[str]:
    """The container's cgroup directories (the sandbox names them pybuild-<id>)."""
    dirs = {os.path.join(h.base, PREFIX + container_id) for h in hierarchies().values()}
    return sorted(d for d in dirs if os.path.isdir(d))


TIOCSPTLCK = 0x40045431
TIOCGPTPEER = 0x5441


def container_pty(pid: int) -> tuple[int, int]:
    """A pty pair from the container's own devpts instance, so `tty` inside names it
    (/dev/pts/N); a host pty when that fails. Both ends are close-on-exec."""
    try:
        master = os.open(f"/proc/{pid}/root/dev/ptmx", os.O_RDWR | os.O_NOCTTY | os.O_CLOEXEC)
    except OSError:
        return _host_pty()
    try:
        st = os.fstat(master)
        if not stat.S_ISCHR(st.st_mode) or os.major(st.st_rdev) != 5 or os.minor(st.st_rdev) != 2:
            raise OSError(errno.ENOTTY, "not a ptmx")
        fcntl.ioctl(master, TIOCSPTLCK, struct.pack("i", 0))
        slave = fcntl.ioctl(master, TIOCGPTPEER, os.O_RDWR | os.O_NOCTTY | os.O_CLOEXEC)
        return master, slave
    except OSError:
        os.close(master)
        return _host_pty()


def _host_pty() -> tuple[int, int]:
    master, slave = os.openpty()
    os.set_inheritable(master, False)
    os.set_inheritable(slave, False)
    return master, slave


def _send(fd: int, msg: str) -> None:
    try:
        os.write(fd, (msg.replace("\n", " ") + "\n").encode(errors="replace"))
    except OSError:
        pass


def exec_in(containers: Containers, ref: str, argv: list[str], *, interactive: bool = False,
            use_tty: bool = False, env: list[str] | None = None, user: str | None = None,
            workdir: str | None = None, detach: bool = False) -> int:
    """Run argv in the container; its exit code (0 at once with detach)."""
    st = containers.find(ref)
    if not is_running(st) or not alive(st.pid, st.pid_start):
        raise RunError(f"container {st.id[:12]} is not running")
    if workdir is not None and not workdir.startswith("/"):
        raise RunError(f"the working directory {workdir!r} is invalid: it must be an absolute path")
    capset = capmod.resolve(st.cap_add, st.cap_drop)
    bpf = seccomp.bpf_for(st.seccomp, capset, seccomp_cache(containers.root))
    full_env = dict(st.env)
    full_env.update(parse_env(env or [], dict(os.environ)))
    ns_fds = []
    try:
        for ns in NAMESPACES:
            ns_fds.append((os.open(f"/proc/{st.pid}/ns/{ns}", os.O_RDONLY | os.O_CLOEXEC), ns))
    except OSError as e:
        for fd, _ in ns_fds:
            os.close(fd)
        raise RunError(f"container {st.id[:12]}: cannot open its namespaces: {e.strerror}") from None
    master = slave = -1
    if use_tty:
        master, slave = container_pty(st.pid)
        copy_winsize(0 if os.isatty(0) else 1, master)
        stdio = [slave, slave, slave]
    elif detach:
        null = os.open(os.devnull, os.O_RDWR | os.O_CLOEXEC)
        stdio = [null, null, null]
    else:
        stdio = [0 if interactive else os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC), 1, 2]
    msg_r, msg_w = os.pipe2(os.O_CLOEXEC)
    job = _Exec(st, argv, full_env, user or st.user, workdir or st.cwd, capset, bpf, use_tty)
    pid = os.fork()
    if pid == 0:
        job.joiner(ns_fds, stdio, msg_r, msg_w, detach)
    os.close(msg_w)
    for fd, _ in ns_fds:
        os.close(fd)
    for fd in set(stdio):
        if fd > 2:
            os.close(fd)
    try:
        inner = _read_reply(msg_r)
    except BaseException:
        os.waitpid(pid, 0)
        if master >= 0:
            os.close(master)
        raise
    if detach:
        return 0

    def forward(sig: int) -> None:
        try:
            os.kill(inner, sig)
        except ProcessLookupError:
            pass
    with forwarding(forward):
        if use_tty:
            with raw_terminal(0) if interactive else _null_ctx():
                pump_pty(master, interactive)
            os.close(master)
        _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status) if os.WIFEXITED(status) else 128 + os.WTERMSIG(status)


class _null_ctx:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def _read_reply(fd: int) -> int:
    """'P <host pid>' then EOF once exec'd; 'E <code> <message>' when it failed."""
    with os.fdopen(fd, "rb") as f:
        lines = f.read().decode(errors="replace").splitlines()
    pid = 0
    for line in lines:
        if line.startswith("P "):
            pid = int(line.split()[1])
        elif line.startswith("E "):
            code, _, text = line[2:].partition(" ")
            raise SandboxError(text, int(code) if code.isdigit() else 125)
    if not pid:
        raise RunError("exec: the process joining the container died unexpectedly")
    return pid


class _Exec:
    """What the forked children need; their code runs after fork and never returns."""

    def __init__(self, st: ContainerState, argv: list[str], env: dict[str, str], user: str,
                 cwd: str, capset: frozenset[str], bpf: bytes | None, use_tty: bool) -> None:
        self.st, self.argv, self.env, self.user, self.cwd = st, argv, env, user, cwd
        self.capset, self.bpf, self.use_tty = capset, bpf, use_tty

    def joiner(self, ns_fds: list[tuple[int, str]], stdio: list[int], msg_r: int, msg_w: int,
               detach: bool) -> None:
        code = 125
        try:
            os.close(msg_r)
            if not detach:
                libc.prctl(libc.PR_SET_PDEATHSIG, signal.SIGKILL)
            for d in cgroup_dirs(self.st.id):
                with open(os.path.join(d, "cgroup.procs"), "w") as f:
                    f.write(str(os.getpid()))
            for fd, ns in ns_fds:
                setns(fd, ns)
                os.close(fd)
            pid = os.fork()
            if pid == 0:
                self.inner(stdio, msg_w)
            _send(msg_w, f"P {pid}")
            os.close(msg_w)
            for fd in set(stdio):
                if fd > 2:
                    os.close(fd)
            _, status = os.waitpid(pid, 0)
            code = os.waitstatus_to_exitcode(status) if os.WIFEXITED(status) \
                else 128 + os.WTERMSIG(status)
        except BaseException as e:
            _send(msg_w, f"E 125 exec into container {self.st.id[:12]}: {e}")
        finally:
            os._exit(code)

    def inner(self, stdio: list[int], msg_w: int) -> None:
        try:
            libc.prctl(libc.PR_SET_PDEATHSIG, signal.SIGKILL)
            for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT, signal.SIGPIPE):
                signal.signal(s, signal.SIG_DFL)
            os.setsid()
            ids = users.resolve(self.user)
            env = dict(self.env)
            env.setdefault("PATH", DEFAULT_PATH)
            env.setdefault("HOSTNAME", self.st.hostname)
            env.setdefault("HOME", ids.home)
            try:
                os.chdir(self.cwd)
            except OSError as e:
                raise SandboxError(f"chdir to {self.cwd}: {e.strerror}", 126) from None
            path = rootfs.find_executable(self.argv[0], env["PATH"])
            for i, fd in enumerate(stdio):
                os.dup2(fd, i, inheritable=True)
            if self.use_tty:
                fcntl.ioctl(0, termios.TIOCSCTTY, 0)
            spec = SandboxSpec(root=DirRoot(Path("/")), argv=self.argv,
                               no_new_privs=self.st.no_new_privs)
            drop_privileges(spec, ids, capmod.mask(self.capset), self.bpf)
            os.execve(path, self.argv, env)
        except SandboxError as e:
            _send(msg_w, f"E {e.exit_code} {e}")
            os._exit(e.exit_code)
        except OSError as e:
            code = 126 if e.errno in (errno.EACCES, errno.ENOEXEC, errno.EPERM) else 127
            _send(msg_w, f"E {code} exec {self.argv[0]}: {e.strerror}")
            os._exit(code)
        except BaseException as e:
            _send(msg_w, f"E 125 exec set-up: {e!r}")
            os._exit(125)
