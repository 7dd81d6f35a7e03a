"""The sandbox's second entry point, `exec`: one more process in a running container.

    caller (P) ──fork──> joiner (J) ──fork──> command (I) ──execve
                         non-dumpable; forgets   inside the container's PID
                         the caller's argv and   namespace: takes the pty as
                         environment; joins the  its terminal, execs
                         container's cgroups,
                         setns() into all its namespaces through a pidfd; opens
                         the pty in its mount ns; resolves user, cwd and
                         executable there; drops privileges exactly as the
                         container's PID 1 did (finalize.drop_privileges)

The container is hostile, so, as runc does:
- J and I are non-dumpable from before the setns until execve: nothing in the
  container can ptrace them or open /proc/<pid>/exe (the host's Python binary:
  the precondition of CVE-2019-5736), fd/* (our control socket) or root. J is not
  in the container's PID namespace at all, so it cannot even be named there.
- Everything privileged happens in J: it resolves the user, the working directory
  and the executable inside the container and drops its privileges (finalize's
  drop_privileges: capabilities, ids, no_new_privs, seccomp) *before* it forks I.
  I, the one process of ours the container can see, is never more privileged than
  the command it becomes: a container granted CAP_SYS_PTRACE (which overrides
  non-dumpable) that attaches to it in its short Python life gains nothing it did
  not have. J also wipes the caller's command line and environment from the memory
  the kernel shows as /proc/<pid>/cmdline and environ before it joins, so I carries
  neither (they held the host user's tokens and paths).
- No pid or message from inside is trusted. J takes a pidfd of I from its own
  fork() and passes it to P over a socketpair (SCM_RIGHTS); P signals only through
  it. The exit status is J's waitpid() of I, handed on as J's own exit status to
  P's waitpid(). The socket's other copies live only in J and I (non-dumpable),
  and close on I's execve.
- With a pty, J opens /dev/ptmx after setns(), inside the container's mount
  namespace, where an absolute symlink resolves against the container's root,
  never the host's (as following /proc/<pid>/root/dev/ptmx from the host does).
  O_PATH first, which opens nothing (no device, fifo or file of the container is
  opened by its path); only a real ptmx (char 5:2) is then reopened through the
  fd itself, and the peer comes from TIOCGPTPEER, not from a path. The master
  goes to P over the socket, as runc's console socket does. There is no host-pty
  fallback: a container whose /dev/ptmx is not a ptmx gets a clear error.
- After setns(CLONE_NEWNS) our root is the container's: J and I import nothing
  from then on (Python would look the module up in the container's files).
"""

from __future__ import annotations

import array
import fcntl
import gc
import os
import select
import signal
import socket
import stat
import struct
import termios
from dataclasses import dataclass

from layerstore.humanize import quoted

from . import caps as capmod
from . import cgroups as cgmod
from . import libc, native, rootfs, seccomp, users
from .finalize import close_all_but, drop_privileges, exec_command, forget_caller, nondumpable, send
from .spec import DEFAULT_PATH, ExecSpec, Limits, SandboxError

TIOCSPTLCK = 0x40045431
TIOCGPTPEER = 0x5441
_NAMESPACES = (libc.CLONE_NEWIPC | libc.CLONE_NEWUTS | libc.CLONE_NEWNET | libc.CLONE_NEWCGROUP
               | libc.CLONE_NEWPID | libc.CLONE_NEWNS)
_MAX_MESSAGE = 4096


@dataclass
class Process:
    """A command started by `exec`. `wait()` returns its exit code (128+N for signal N)."""

    joiner: int                 # our child J; its exit status is the command's
    pidfd: int = -1             # the command's, taken by J from its own fork
    master: int | None = None   # the pty master with stdio="pty"
    _code: int | None = None

    def signal(self, sig: int) -> None:
        if self.pidfd >= 0:
            try:
                signal.pidfd_send_signal(self.pidfd, sig)
            except ProcessLookupError:
                pass

    def wait(self) -> int:
        if self._code is None:
            _, status = os.waitpid(self.joiner, 0)
            self._code = _exit_code(status)
            self.close()
        return self._code

    def close(self) -> None:
        """Release our fds (the pty master too); the command runs on."""
        for fd in (self.pidfd, self.master):
            if fd is not None and fd >= 0:
                try:
                    os.close(fd)
                except OSError:
                    pass
        self.pidfd, self.master = -1, None


def _exit_code(status: int) -> int:
    return os.waitstatus_to_exitcode(status) if os.WIFEXITED(status) else 128 + os.WTERMSIG(status)


def exec(spec: ExecSpec, target: int) -> Process:  # noqa: A001 (named as in the design)
    """Start spec.argv inside the running container whose PID 1 the pidfd `target`
    names; return once it has exec'd (raise SandboxError, with docker's 125/126/127,
    when it could not be started). The caller owns the Process: wait() for it."""
    spec.validate()
    capset = capmod.resolve(spec.cap_add, spec.cap_drop)
    bpf = seccomp.bpf_for(spec.seccomp, capset, spec.cache_dir)
    pid = _pid_of(target)
    if pid is None or _exited(target):
        raise SandboxError(f"container {spec.container_id[:12]} is not running")
    flags = _NAMESPACES
    try:
        if os.stat(f"/proc/{pid}/ns/user").st_ino != os.stat("/proc/self/ns/user").st_ino:
            flags |= libc.CLONE_NEWUSER   # joining one's own user namespace is EINVAL
        cgroup_dirs = cgmod.of_container(pid, spec.container_id)
    except OSError:
        raise SandboxError(f"container {spec.container_id[:12]} is not running") from None
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC)
    null = os.open(os.devnull, os.O_RDWR | os.O_CLOEXEC) if spec.stdio == "null" or spec.detach else -1
    proc_fd = os.open("/proc", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        joiner = os.fork()
        if joiner == 0:
            try:
                ours.close()
                _Joiner(spec, capset, bpf, flags, cgroup_dirs, target, theirs, null, proc_fd).run()
            finally:
                os._exit(125)   # never back into the caller's stack
    finally:
        theirs.close()
        os.close(proc_fd)
        if null >= 0:
            os.close(null)
    proc = Process(joiner)
    try:
        _read_replies(ours, proc, spec)
    except BaseException:
        proc.signal(signal.SIGKILL)
        proc.close()
        try:
            os.kill(joiner, signal.SIGKILL)   # our own child, not yet reaped: no reuse
        except ProcessLookupError:
            pass
        os.waitpid(joiner, 0)
        raise
    finally:
        ours.close()
    return proc


def _pid_of(pidfd: int) -> int | None:
    """The PID a pidfd names, from the kernel's fdinfo (not from the process)."""
    try:
        with open(f"/proc/self/fdinfo/{pidfd}") as f:
            for line in f:
                if line.startswith("Pid:"):
                    pid = int(line.split()[1])
                    return pid if pid > 0 else None
    except (OSError, ValueError):
        pass
    return None


def _exited(pidfd: int) -> bool:
    return bool(select.select([pidfd], [], [], 0)[0])   # a pidfd is readable once it exits


def _read_replies(sock: socket.socket, proc: Process, spec: ExecSpec) -> None:
    """Until EOF (the command exec'd, or every copy died): `T` + pty master and `P` +
    the command's pidfd from J, `E <code> <message>` from J or I."""
    error = None
    while True:
        fds = array.array("i")
        msg, anc, _, _ = sock.recvmsg(_MAX_MESSAGE, socket.CMSG_SPACE(fds.itemsize * 2),
                                      socket.MSG_CMSG_CLOEXEC)
        for level, kind, data in anc:
            if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                fds.frombytes(data[:len(data) - len(data) % fds.itemsize])
        got = list(fds)
        if msg[:1] == b"T" and len(got) == 1 and proc.master is None:
            proc.master = got.pop()
        elif msg[:1] == b"P" and len(got) == 1 and proc.pidfd < 0:
            proc.pidfd = got.pop()
        elif msg[:2] == b"E " and error is None:
            code, _, text = msg[2:].decode(errors="replace").strip().partition(" ")
            error = SandboxError(native.explain(text, spec.argv[0]),
                                 int(code) if code.isdigit() else 125)
        for fd in got:
            os.close(fd)
        if not msg:
            break
    if error is not None:
        raise error
    if proc.pidfd < 0 or (spec.stdio == "pty" and proc.master is None):
        raise SandboxError(f"exec into container {spec.container_id[:12]}: the joining "
                           "process died unexpectedly")


class _Joiner:
    """J and I: forked children that never return."""

    def __init__(self, spec: ExecSpec, capset: frozenset[str], bpf: bytes | None, flags: int,
                 cgroup_dirs: list[str], target: int, sock: socket.socket, null: int,
                 proc_fd: int) -> None:
        self.spec, self.keep, self.bpf, self.flags = spec, capmod.mask(capset), bpf, flags
        self.cgroup_dirs, self.target, self.sock = cgroup_dirs, target, sock
        self.null, self.proc_fd = null, proc_fd

    def run(self) -> None:
        code = 125
        gc.disable()   # a dead object of P's must not close an fd number we reuse
        try:
            nondumpable()
            forget_caller()
            spec = self.spec
            if not spec.detach:
                libc.prctl(libc.PR_SET_PDEATHSIG, signal.SIGKILL)
            # the terminal's ^C reaches our whole process group: it is for the command
            # (P forwards it), J only waits and reports its status
            for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT):
                signal.signal(s, signal.SIG_IGN)
            if self.null >= 0:
                for i in range(3):
                    os.dup2(self.null, i)
            close_all_but({self.sock.fileno(), self.target, self.proc_fd})
            if self.cgroup_dirs:
                cg = cgmod.Cgroups(spec.container_id, Limits(),
                                   dirs={str(i): d for i, d in enumerate(self.cgroup_dirs)})
                cg.add(os.getpid())
            libc.setns(self.target, self.flags, f"into container {spec.container_id[:12]}")
            os.close(self.target)
            nondumpable()   # joining a user namespace commits new credentials
            slave = -1
            if spec.stdio == "pty":
                master, slave = self._pty()
                socket.send_fds(self.sock, [b"T"], [master])
                os.close(master)
            os.close(self.proc_fd)
            path, env, ids = self._resolve()
            exec_fd = native.memfd(native.EXEC_CODE, "pybuild-exec")
            drop_privileges(ids, self.keep, self.bpf, spec.no_new_privs)
            joiner = os.getpid()
            pid = os.fork()
            if pid == 0:
                self._command(exec_fd, path, env, slave, joiner)
            os.close(exec_fd)
            # I is our unreaped child: its PID cannot be reused before this pidfd exists
            pidfd = os.pidfd_open(pid)
            socket.send_fds(self.sock, [b"P"], [pidfd])
            os.close(pidfd)
            self.sock.close()
            if slave >= 0:
                os.close(slave)
            while True:
                try:
                    _, status = os.waitpid(pid, 0)
                    break
                except InterruptedError:
                    continue
            code = _exit_code(status)
        except SandboxError as e:
            send(self.sock.fileno(), f"E {e.exit_code} {e}")
        except OSError as e:
            send(self.sock.fileno(), f"E 125 exec into container {self.spec.container_id[:12]}: "
                 f"{e.strerror or e}")
        except BaseException as e:
            send(self.sock.fileno(), f"E 125 exec into container {self.spec.container_id[:12]}: {e}")
        finally:
            os._exit(code)

    def _resolve(self) -> tuple[str, dict[str, str], users.Ids]:
        """In J, inside the container's mount namespace, still privileged: the user's ids,
        the working directory (J's, inherited by I) and the executable's path."""
        spec = self.spec
        ids = users.resolve(spec.user, extra_groups=spec.group_add)
        env = dict(spec.env)
        env.setdefault("PATH", DEFAULT_PATH)
        env.setdefault("HOSTNAME", spec.hostname)
        env.setdefault("HOME", ids.home)
        try:
            os.chdir(spec.cwd)
        except OSError as e:
            raise SandboxError(f"chdir to {quoted(spec.cwd)}: {e.strerror}", 126) from None
        return rootfs.find_executable(spec.argv[0], env["PATH"]), env, ids

    def _pty(self) -> tuple[int, int]:
        """A pty pair of the container's own devpts, so `tty` inside names it (/dev/pts/N)."""
        try:
            ref = os.open("/dev/ptmx", os.O_PATH | os.O_CLOEXEC)   # resolved in the container
        except OSError as e:
            raise SandboxError(f"exec -t: the container has no /dev/ptmx: {e.strerror}") from None
        try:
            st = os.fstat(ref)
            if not stat.S_ISCHR(st.st_mode) or (os.major(st.st_rdev), os.minor(st.st_rdev)) != (5, 2):
                raise SandboxError("exec -t: the container's /dev/ptmx is not the pty "
                                   "multiplexer (character device 5:2)")
            # reopen the very inode through our own fd: /proc is the host's, opened before
            master = os.open(f"self/fd/{ref}", os.O_RDWR | os.O_NOCTTY | os.O_CLOEXEC,
                             dir_fd=self.proc_fd)
        except OSError as e:
            raise SandboxError(f"exec -t: cannot open the container's /dev/ptmx: {e.strerror}") from None
        finally:
            os.close(ref)
        try:
            fcntl.ioctl(master, TIOCSPTLCK, struct.pack("i", 0))
            slave = fcntl.ioctl(master, TIOCGPTPEER, os.O_RDWR | os.O_NOCTTY | os.O_CLOEXEC)
            if self.spec.pty_size:   # sized before the command runs: it may ask at once
                rows, cols = self.spec.pty_size
                fcntl.ioctl(master, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))
        except OSError as e:
            os.close(master)
            raise SandboxError(f"exec -t: the container's pty: {e.strerror}") from None
        return master, slave

    def _command(self, exec_fd: int, path: str, env: dict[str, str], slave: int,
                 joiner: int = 0) -> None:
        """I: in the container's PID namespace, as unprivileged as the command will be
        (J dropped everything before forking it); never returns."""
        spec = self.spec
        try:
            libc.prctl(libc.PR_SET_PDEATHSIG, signal.SIGKILL)
            # J died before that: our parent is not J (outside our PID namespace, 0; in a
            # container that shares the host's, --pid host, J's own pid)
            if os.getppid() not in (0, joiner):
                os._exit(125)
            for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT, signal.SIGPIPE):
                signal.signal(s, signal.SIG_DFL)
            os.setsid()
            if slave >= 0:
                for i in range(3):
                    os.dup2(slave, i, inheritable=True)
                fcntl.ioctl(0, termios.TIOCSCTTY, 0)
                os.close(slave)
            exec_command(exec_fd, path, spec.argv, env, self.sock.fileno())
        except OSError as e:
            send(self.sock.fileno(), f"E 126 exec {quoted(spec.argv[0])}: {e.strerror}")
            os._exit(126)
        except BaseException as e:
            send(self.sock.fileno(), f"E 125 exec set-up: {e!r}")
            os._exit(125)
