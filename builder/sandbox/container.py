"""Starting, waiting for and tearing down one container.

Three processes, so that nothing outlives us and every exit path cleans up:

    caller (P) ──fork──> monitor (A) ──fork──> container PID 1 (B) ──exec──> command
                           unshares pid          unshares mnt/uts/ipc/net,
                           (+user) ns            later cgroup ns; sets up the
                                                 root, drops privileges, execs

A opens the root filesystem and every host path with the caller's
credentials, then unshares the PID (and user) namespace so that its child B
is PID 1. B's host PID is the one A's fork() returned, never one reported
from inside; A and B are non-dumpable until B's execve (finalize.py). A only
waits: it reports B's wait status to P, and when P dies (PR_SET_PDEATHSIG)
it kills B, whose death empties the PID namespace and with
it the mount namespace, and removes the cgroups and state. B dies with A.
P places B in the cgroups and wires the network while B builds its mounts.
"""

from __future__ import annotations

import fcntl
import gc
import os
import resource
import selectors
import signal
import socket
import struct
import tempfile
import termios
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from layerstore.resolver import remove_tree
from layerstore.userns import in_user_namespace

from . import caps as capmod
from . import libc, native, rootfs, seccomp, sysctls, users
from .cgroups import Cgroups
from .finalize import close_all_but as _close_all_but
from .finalize import finalize, nondumpable
from .finalize import send as _send
from .spec import DEFAULT_PATH, Result, SandboxError, SandboxSpec

if TYPE_CHECKING:
    from .netbackend import ContainerNetwork

_FORWARDED = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


class _ParentGone(BaseException):
    pass


@dataclass
class _Pipes:
    ctl_r: int = -1    # A -> P: "U" (user ns ready), "P <B's pid from fork>", "X <status>"
    ctl_w: int = -1
    exec_r: int = -1   # B -> P: "S <stub>", "E <code> <message>"; EOF when exec'd
    exec_w: int = -1
    go_a_r: int = -1   # P -> A: id maps written; then: B's pidfd is taken, reap at will
    go_a_w: int = -1
    go_b_r: int = -1   # P -> B: in the cgroups, network attached
    go_b_w: int = -1

    @classmethod
    def make(cls) -> "_Pipes":
        p = cls()
        p.ctl_r, p.ctl_w = os.pipe2(os.O_CLOEXEC)
        p.exec_r, p.exec_w = os.pipe2(os.O_CLOEXEC)
        p.go_a_r, p.go_a_w = os.pipe2(os.O_CLOEXEC)
        p.go_b_r, p.go_b_w = os.pipe2(os.O_CLOEXEC)
        return p


def _close(*fds: int) -> None:
    for fd in fds:
        if fd is not None and fd >= 0:
            try:
                os.close(fd)
            except OSError:
                pass


def _read_line(fd: int) -> str | None:
    """One '\\n'-terminated message from a pipe (writers send whole lines atomically)."""
    buf = b""
    while not buf.endswith(b"\n"):
        try:
            chunk = os.read(fd, 1)
        except InterruptedError:
            continue
        if not chunk:
            return buf.decode(errors="replace") or None
        buf += chunk
    return buf[:-1].decode(errors="replace")


def _etc_files(spec: SandboxSpec, state: Path, hostname: str, ip: str | None = None,
               nameserver: str | None = None) -> None:
    hosts = "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n"
    if spec.network.mode == "host":
        try:
            hosts = Path("/etc/hosts").read_text()
        except OSError:
            pass
    hosts += "".join(f"{_host_address(spec, addr)}\t{name}\n" for name, addr in spec.extra_hosts)
    if ip:
        hosts += f"{ip}\t{hostname}\n"
    try:
        resolv = Path("/etc/resolv.conf").read_text()
    except OSError:
        resolv = ""
    if spec.network.mode == "private":
        lines = [ln for ln in resolv.splitlines()
                 if not (ln.split()[:1] == ["nameserver"] and ln.split()[1:2]
                         and ln.split()[1].startswith(("127.", "::1")))]
        if nameserver:   # a user-mode network's resolver, which forwards to the host's
            lines = [ln for ln in lines if ln.split()[:1] != ["nameserver"]]
            lines.append(f"nameserver {nameserver}")
        if not any(ln.startswith("nameserver") for ln in lines):
            lines += ["nameserver 8.8.8.8", "nameserver 8.8.4.4"]
        resolv = "\n".join(lines) + "\n"
    resolv = _resolv_overrides(spec, resolv)
    for name, text in (("hosts", hosts), ("resolv.conf", resolv), ("hostname", hostname + "\n")):
        path = state / name
        # rewrite in place: the child may already hold this inode as a bind source
        with open(path, "r+" if path.exists() else "w") as f:
            f.write(text)
            f.truncate()
        os.chmod(path, 0o644)


def _host_address(spec: SandboxSpec, addr: str) -> str:
    """--add-host NAME:host-gateway is the bridge's address, as docker's is docker0's (the
    default bridge's also when the container itself is on another network)."""
    if addr != "host-gateway":
        return addr
    from .netconfig import NetworkConfig

    net = spec.network if spec.network.mode == "private" else NetworkConfig(mode="private")
    return str(net.gateway())


def _resolv_overrides(spec: SandboxSpec, resolv: str) -> str:
    """docker's --dns, --dns-search and --dns-option each replace the lines of their kind
    (`--dns-search .` leaves no search line)."""
    if not (spec.dns or spec.dns_search or spec.dns_options):
        return resolv
    kinds = {"nameserver": spec.dns, "search": spec.dns_search, "options": spec.dns_options}
    lines = [ln for ln in resolv.splitlines()
             if not (ln.split()[:1] and ln.split()[0] in kinds and kinds[ln.split()[0]])
             and not (spec.dns_search and ln.split()[:1] == ["domain"])]
    lines += [f"nameserver {ip}" for ip in spec.dns]
    search = [d for d in spec.dns_search if d != "."]
    if search:
        lines.append("search " + " ".join(search))
    if spec.dns_options:
        lines.append("options " + " ".join(spec.dns_options))
    return "\n".join(lines) + "\n"


@dataclass
class Container:
    """A started container; `wait()` collects it, `teardown()` removes what it used."""

    spec: SandboxSpec
    id: str
    pid: int                               # host PID of the container's PID 1
    state_dir: Path
    stdin: int | None = None               # pipe mode: write end of the command's stdin
    stdout: int | None = None              # pipe mode: read ends; pty mode: the master
    stderr: int | None = None
    _monitor: int = -1
    _ctl: int = -1
    _pidfd: int = -1
    _cgroups: Cgroups | None = None
    _net: ContainerNetwork | None = None
    _own_state: bool = True
    _result: Result | None = None
    _status: int | None = None
    _torn_down: bool = False
    _lock: threading.Lock = field(default_factory=threading.Lock)
    ip: str | None = None
    _stubs: list[str] = field(default_factory=list)
    started: float = field(default_factory=time.monotonic)

    def kill(self, sig: int = signal.SIGKILL) -> None:
        """Signal the container's PID 1 (through a pidfd: never a recycled PID)."""
        if self._pidfd >= 0:
            try:
                signal.pidfd_send_signal(self._pidfd, sig)
            except ProcessLookupError:
                pass

    def wait(self, timeout: float | None = None) -> Result:
        """Wait for the command, then tear down. The spec's timeout counts from start;
        `timeout` here counts from now; either one kills the container when it runs out."""
        if self._result is not None:
            return self._result
        ends = [t for t in (timeout is not None and time.monotonic() + timeout,
                            self.spec.timeout is not None and self.started + self.spec.timeout)
                if t is not False]
        out, err = bytearray(), bytearray()
        streams = {fd: buf for fd, buf in ((self.stdout, out), (self.stderr, err)) if fd is not None}
        timed_out = False
        deadline = min(ends) if ends else None
        status_line = None
        with selectors.DefaultSelector() as sel:
            sel.register(self._ctl, selectors.EVENT_READ)
            for fd in streams:
                sel.register(fd, selectors.EVENT_READ)
            ctl_open = True
            while ctl_open or streams:
                left = None if deadline is None else max(0.0, deadline - time.monotonic())
                if not ctl_open:
                    left = 2.0 if left is None else min(left, 2.0)  # stragglers holding a pipe
                events = sel.select(left)
                if not events:
                    if not ctl_open:
                        break
                    if deadline is not None and time.monotonic() >= deadline and not timed_out:
                        timed_out = True
                        self.kill(signal.SIGKILL)
                        deadline = None
                    continue
                for key, _ in events:
                    fd = key.fd
                    if fd == self._ctl:
                        line = _read_line(fd)
                        if line is None:
                            ctl_open = False
                            sel.unregister(fd)
                        elif line.startswith("X "):
                            status_line = line
                        continue
                    try:
                        chunk = os.read(fd, 65536)
                    except OSError:  # EIO: pty slave closed
                        chunk = b""
                    if chunk:
                        streams[fd] += chunk
                    else:
                        sel.unregister(fd)
                        del streams[fd]
        self._reap_monitor()
        status = int(status_line.split()[1]) if status_line else self._status or 0
        result = self._result_from(status, timed_out)
        if self.stdout is not None:
            result.stdout = bytes(out)
        if self.stderr is not None:
            result.stderr = bytes(err)
        self.teardown()
        self._result = result
        return result

    def _reap_monitor(self) -> None:
        if self._monitor > 0:
            try:
                _, st = os.waitpid(self._monitor, 0)
                if self._status is None:
                    self._status = st
            except ChildProcessError:
                pass
            self._monitor = -1

    def _result_from(self, status: int, timed_out: bool) -> Result:
        self._status = status
        if os.WIFSIGNALED(status):
            sig = os.WTERMSIG(status)
            res = Result(exit_code=128 + sig, signal=sig)
        else:
            res = Result(exit_code=os.WEXITSTATUS(status))
        res.timed_out = timed_out
        if self._cgroups is not None and self._cgroups.oom_kills() > 0:
            res.oom_killed = True
            lim = self.spec.limits.memory
            limit = f" (limit {_human(lim)})" if lim else ""
            if res.exit_code == 137:
                res.message = f"container was killed: out of memory{limit}"
            else:
                res.message = f"a process in the container was killed: out of memory{limit}"
        elif timed_out:
            res.message = "container was killed: timeout" + (
                f" after {self.spec.timeout:g}s" if self.spec.timeout is not None else "")
        return res

    def teardown(self) -> None:
        """Kill whatever is left and remove cgroups, network and state; idempotent."""
        with self._lock:
            if self._torn_down:
                return
            self._torn_down = True
        errors = []
        if self._monitor > 0:
            self.kill(signal.SIGKILL)
            self._reap_monitor()
        _close(self._ctl, self.stdin, self.stdout, self.stderr, self._pidfd)
        self._ctl = self._pidfd = -1
        self.stdin = self.stdout = self.stderr = None
        if self._net is not None:
            try:
                self._net.teardown()
            except Exception as e:  # keep tearing down the rest
                errors.append(str(e))
        if self._cgroups is not None:
            try:
                self._cgroups.remove()
            except SandboxError as e:
                errors.append(str(e))
        _remove_state(self.state_dir, self._own_state)
        rootfs.remove_stubs(self.spec, self._stubs)
        if errors:
            raise SandboxError(f"teardown of container {self.id}: " + "; ".join(errors))

    def __enter__(self) -> "Container":
        return self

    def __exit__(self, *exc) -> None:
        self.teardown()


def _human(n: int) -> str:
    for unit, size in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n % size == 0:
            return f"{n // size}{unit}"
    return f"{n}B"


def _remove_state(state: Path, own: bool) -> None:
    if own:
        try:
            remove_tree(state)
        except OSError:
            pass
        return
    for name in ("hosts", "resolv.conf", "hostname"):
        try:
            os.unlink(state / name)
        except FileNotFoundError:
            pass
    try:
        os.rmdir(state / "rootfs")
    except OSError:
        pass


def start(spec: SandboxSpec) -> Container:
    """Start the spec's command in a new container and return once it has exec'd.

    Raises SandboxError (with exit_code 125/126/127 like docker) when the
    container cannot be set up or the command cannot be executed; nothing of
    it is left behind then.
    """
    spec.validate()
    if spec.platform is not None:
        from builder.sandbox import binfmt

        binfmt.ensure(spec.platform)
    capset = capmod.resolve(spec.cap_add, spec.cap_drop)
    bpf = seccomp.bpf_for(spec.seccomp, capset, spec.cache_dir)
    # in the host's UTS namespace the name is the host's (and never set from inside)
    hostname = socket.gethostname() if spec.uts == "host" else spec.hostname or spec.id[:12]
    own_state = spec.state_dir is None
    state = Path(spec.state_dir) if spec.state_dir else Path(
        tempfile.mkdtemp(prefix=f"pybuild-{spec.id[:12]}-"))
    state.mkdir(parents=True, exist_ok=True)
    os.chmod(state, 0o711)
    (state / "rootfs").mkdir(exist_ok=True)
    _etc_files(spec, state, hostname)
    cg = Cgroups(spec.id, spec.limits, spec.privileged, _userns(spec),
                 devices=_device_rules(spec), freezer=spec.freezer)
    net = None
    if spec.network.mode == "private":
        from .netbackend import network_for

        net = network_for(spec.network, spec.id, state)
    c = Container(spec, spec.id, -1, state, _cgroups=cg, _net=net, _own_state=own_state)
    child_stdio: list[int] = []
    pipes = _Pipes()
    try:
        cg.create()
        child_stdio = _stdio(spec, c)
        pipes = _Pipes.make()
        pid = os.fork()
        if pid == 0:
            _monitor_main(spec, pipes, child_stdio, capset, bpf, hostname, state, cg)
        c._monitor, c._ctl = pid, pipes.ctl_r
        _close(pipes.ctl_w, pipes.exec_w, pipes.go_a_r, pipes.go_b_r, *child_stdio)
        pipes.ctl_r = -1
        if spec.userns is not None:
            line = _read_line(c._ctl)
            if line != "U":
                raise _child_error(line, pipes.exec_r, spec.argv[0])
            _write_id_maps(pid, spec)
            _go(pipes.go_a_w)
        # B's host PID as A's fork() returned it: nothing in the container can forge it
        line = _read_line(c._ctl)
        if line is None or not line.startswith("P "):
            raise _child_error(line, pipes.exec_r, spec.argv[0])
        c.pid = int(line.split()[1])
        # A does not reap B before this go, so the PID cannot have been reused yet
        c._pidfd = os.pidfd_open(c.pid)
        _go(pipes.go_a_w)
        line = _read_line(pipes.exec_r)
        if line != "N":
            raise _child_error(line, pipes.exec_r, spec.argv[0])
        if net is not None:
            c.ip = net.attach(c.pid)
            _etc_files(spec, state, hostname, c.ip, net.nameserver)
        cg.add(c.pid)
        _go(pipes.go_b_w)
        while True:
            line = _read_line(pipes.exec_r)  # EOF: the command was exec'd
            if line is None:
                break
            if not line.startswith("S "):
                raise _child_error(line, -1, spec.argv[0])
            c._stubs.append(bytes.fromhex(line[2:]).decode("utf-8", "surrogateescape"))
        if spec.stdio == "pipe":
            _feed_stdin(c, spec.input or b"")
        return c
    except BaseException as exc:
        child_msg = None
        if c._monitor > 0 and pipes.exec_r >= 0 and not isinstance(exc, SandboxError | KeyboardInterrupt):
            c.kill(signal.SIGKILL)
        if c._monitor > 0 and pipes.exec_r >= 0:
            try:
                os.kill(c._monitor, signal.SIGKILL)
            except ProcessLookupError:
                pass
            child_msg = _read_line(pipes.exec_r)  # the child's own reason, if it gave one
        try:
            c.teardown()
        except SandboxError:
            pass
        if child_msg and child_msg.startswith("E ") and not isinstance(exc, KeyboardInterrupt):
            raise _child_error(child_msg, -1, spec.argv[0]) from None
        raise
    finally:
        _close(pipes.exec_r, pipes.go_a_w, pipes.go_b_w)


def _device_rules(spec: SandboxSpec) -> tuple:
    """--device: each given node allowed with its access, beside docker's defaults."""
    from .devices import DeviceRule

    return tuple(DeviceRule(d.type, d.major, d.minor, d.access) for d in spec.devices)


def _go(fd: int) -> None:
    """Let a child continue; if it already died, its message follows on the exec pipe."""
    try:
        os.write(fd, b"g")
    except BrokenPipeError:
        pass


def _child_error(line: str | None, more_fd: int, name: str = "") -> SandboxError:
    if line and line.startswith("E "):
        code, _, msg = line[2:].partition(" ")
        return SandboxError(native.explain(msg, name), int(code) if code.isdigit() else 125)
    if more_fd >= 0:
        nxt = _read_line(more_fd)
        if nxt and nxt.startswith("E "):
            return _child_error(nxt, -1, name)
    return SandboxError(f"container set-up failed unexpectedly ({line or 'no message'})")


def _feed_stdin(c: Container, data: bytes) -> None:
    """Write stdin from a thread so a command that reads slowly cannot block us."""
    fd = c.stdin
    c.stdin = None

    def feed() -> None:
        try:
            view = memoryview(data)
            while view:
                n = os.write(fd, view)
                view = view[n:]
        except OSError:
            pass
        finally:
            os.close(fd)
    if data:
        threading.Thread(target=feed, daemon=True).start()
    else:
        os.close(fd)


def _stdio(spec: SandboxSpec, c: Container) -> list[int]:
    """Parent ends go on the Container; returns the child's fds for 0, 1, 2."""
    if spec.stdio == "pipe":
        in_r, in_w = os.pipe2(os.O_CLOEXEC)
        out_r, out_w = os.pipe2(os.O_CLOEXEC)
        err_r, err_w = os.pipe2(os.O_CLOEXEC)
        c.stdin, c.stdout, c.stderr = in_w, out_r, err_r
        return [in_r, out_w, err_w]
    if spec.stdio == "pty":
        master, slave = os.openpty()
        os.set_inheritable(master, False)
        if spec.pty_size:  # sized before the command runs: it may ask at once
            rows, cols = spec.pty_size
            fcntl.ioctl(master, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))
        c.stdout = master
        return [slave, slave, slave]
    return []


def _userns(spec: SandboxSpec) -> bool:
    """Whether the container lives in a user namespace: one of its own, or the rootless
    caller's (then no mknod, no device cgroup, and sysfs only for a network of its own)."""
    return spec.userns is not None or in_user_namespace()


def _write_id_maps(pid: int, spec: SandboxSpec) -> None:
    u = spec.userns
    assert u is not None
    try:
        with open(f"/proc/{pid}/uid_map", "w") as f:
            f.write(f"0 {u.host_uid} {u.size}\n")
        with open(f"/proc/{pid}/gid_map", "w") as f:
            f.write(f"0 {u.host_gid} {u.size}\n")
    except OSError as e:
        raise SandboxError(f"user namespace: cannot map 0 to {u.host_uid}+{u.size}: {e.strerror}")


# ----- monitor (A) ---------------------------------------------------------------------------

def _monitor_main(spec: SandboxSpec, p: _Pipes, stdio: list[int], capset: frozenset[str],
                  bpf: bytes | None, hostname: str, state: Path, cg: Cgroups) -> None:
    """Runs in the forked monitor; never returns."""
    code = 1
    # no collection from here on: a dead object of the caller's (a socket a pull left for
    # the collector) would close its fd number, which we close and reuse for a mount tree
    gc.disable()
    try:
        nondumpable()   # inherited by B through fork
        parent = os.getppid()

        def gone(signum, frame):
            raise _ParentGone()
        signal.signal(signal.SIGTERM, gone)
        for s in (signal.SIGINT, signal.SIGHUP, signal.SIGQUIT):
            signal.signal(s, signal.SIG_IGN)
        libc.prctl(libc.PR_SET_PDEATHSIG, signal.SIGTERM)
        if os.getppid() != parent:
            raise _ParentGone()
        _close(p.ctl_r, p.exec_r, p.go_a_w, p.go_b_w)
        _close_all_but({p.ctl_w, p.exec_w, p.go_a_r, p.go_b_r, *stdio})
        userns = spec.userns is not None
        net_host = spec.network.mode == "host"
        try:
            root_fd = rootfs.open_root(spec)
            tty = os.ttyname(stdio[0]) if spec.stdio == "pty" else None
            detached = rootfs.detach_sources(spec, str(state), _userns(spec), net_host, tty)
        except OSError as e:
            _send(p.exec_w, f"E 125 root filesystem: {e}")
            os._exit(1)
        # --pid host: B is an ordinary host process (its strays die with the cgroup)
        new_pid = libc.CLONE_NEWPID if spec.pid != "host" else 0
        if new_pid or userns:
            libc.unshare(new_pid | (libc.CLONE_NEWUSER if userns else 0))
        nondumpable()   # a new user namespace means new credentials
        if userns:
            _send(p.ctl_w, "U")
            if os.read(p.go_a_r, 1) != b"g":
                os._exit(1)
        pid = os.fork()
        if pid == 0:
            _container_main(spec, p, stdio, capset, bpf, hostname, state, root_fd, detached)
        _send(p.ctl_w, f"P {pid}")
        _close(p.exec_w, p.go_b_r, *stdio)
        _close(root_fd, *[fd for fd, *_ in detached.binds], *[fd for fd, _ in detached.etc],
               *[fd for fd, _ in detached.devices], detached.sys_fd, detached.console,
               detached.shm if detached.shm is not None else -1)
        try:
            os.read(p.go_a_r, 1)   # P holds B's pidfd now (or gave up: EOF)
            _close(p.go_a_r)
            while True:
                try:
                    _, status = os.waitpid(pid, 0)
                    break
                except ChildProcessError:
                    status = 0
                    break
            _send(p.ctl_w, f"X {status}")
            code = 0
        except _ParentGone:
            _orphaned_cleanup(pid, cg, state, spec)
    except _ParentGone:
        _orphaned_cleanup(None, cg, state, spec)
    except BaseException as e:  # report, never return into the caller's stack
        _send(p.exec_w, f"E 125 container monitor: {e}")
    finally:
        os._exit(code)


def _orphaned_cleanup(pid: int | None, cg: Cgroups, state: Path, spec: SandboxSpec) -> None:
    """Our caller died: kill the container and remove what it used."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    if pid is not None:
        try:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
        except (ProcessLookupError, ChildProcessError):
            pass
    try:
        cg.remove()
    except Exception:
        pass
    if spec.network.mode == "private":
        try:
            from .netbackend import network_for

            network_for(spec.network, spec.id, state).teardown()
        except Exception:
            pass
    _remove_state(state, spec.state_dir is None)


# ----- container PID 1 (B) -------------------------------------------------------------------

def _container_main(spec: SandboxSpec, p: _Pipes, stdio: list[int], capset: frozenset[str],
                    bpf: bytes | None, hostname: str, state: Path, root_fd: int,
                    detached: rootfs.Detached) -> None:
    """Runs as PID 1 of the new PID namespace; execs the command or reports why not."""
    try:
        libc.prctl(libc.PR_SET_PDEATHSIG, signal.SIGKILL)
        for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGQUIT, signal.SIGPIPE):
            signal.signal(s, signal.SIG_DFL)
        _close(p.ctl_w, p.go_a_r)
        if spec.userns is not None:
            # become the namespace's root: host ids of the mapped range, not host root
            os.setresgid(0, 0, 0)
            os.setgroups([0])
            os.setresuid(0, 0, 0)
            nondumpable()   # new credentials reset it
        os.setsid()
        flags = libc.CLONE_NEWNS
        if spec.uts != "host":
            flags |= libc.CLONE_NEWUTS
        if spec.ipc != "host":
            flags |= libc.CLONE_NEWIPC
        if spec.network.mode != "host":
            flags |= libc.CLONE_NEWNET
        libc.unshare(flags)
        # a sync point, not a report: the caller wires the network and cgroups only once our
        # namespaces exist (the pid it uses came from the monitor's fork, never from here)
        os.write(p.exec_w, b"N\n")
        if spec.network.mode != "host":
            rootfs.loopback_up()
        os.umask(0)
        libc.mount(None, "/", None, libc.MS_REC | libc.MS_PRIVATE)
        target = str(state / "rootfs")
        rootfs.mount_root(spec, root_fd, target, str(state))
        rootfs.mount_kernel_fs(target, detached)
        # kept open past the read-only remount of /proc/sys, for --sysctl below
        sys_fd = sysctls.open_proc_sys(target + "/proc") if spec.sysctls else -1
        rootfs.pivot(target)
        rootfs.populate(spec, detached)
        for stub in rootfs.STUBS:
            os.write(p.exec_w, b"S " + os.fsencode(stub).hex().encode() + b"\n")
        if os.read(p.go_b_r, 1) != b"g":
            os._exit(1)
        _close(p.go_b_r)
        if sys_fd >= 0:   # now that the network is attached: net.ipv4.conf.eth0.* exist
            sysctls.apply(sys_fd, spec.sysctls)
            _close(sys_fd)
        libc.unshare(libc.CLONE_NEWCGROUP)
        if spec.uts != "host":
            libc.sethostname(hostname)
        ids = users.resolve(spec.user, extra_groups=spec.group_add)
        env = dict(spec.env)
        env.setdefault("PATH", DEFAULT_PATH)
        env.setdefault("HOSTNAME", hostname)
        env.setdefault("HOME", ids.home)
        if not os.path.isdir(spec.cwd):
            os.makedirs(spec.cwd, 0o755, exist_ok=True)  # kept, as docker keeps WORKDIR
        os.chdir(spec.cwd)
        path = rootfs.find_executable(spec.argv[0], env["PATH"])
        for res, soft, hard in spec.rlimits:
            try:
                resource.setrlimit(res, (soft, hard))
            except (ValueError, OSError) as e:
                name = next((n[7:].lower() for n in dir(resource)
                             if n.startswith("RLIMIT_") and getattr(resource, n) == res), res)
                shown = ":".join("unlimited" if v == resource.RLIM_INFINITY else str(v)
                                 for v in (soft, hard))
                raise SandboxError(f"cannot set --ulimit {name}={shown}: {e}") from None
        if stdio:
            for i, fd in enumerate(stdio):
                os.dup2(fd, i, inheritable=True)
            if spec.stdio == "pty":
                fcntl.ioctl(0, termios.TIOCSCTTY, 0)
            _close(*{fd for fd in stdio if fd > 2})
        finalize(path, spec.argv, env, ids, capmod.mask(capset), bpf, spec.no_new_privs,
                 p.exec_w, init=spec.init)
    except SandboxError as e:
        _send(p.exec_w, f"E {e.exit_code} {e}")
        os._exit(e.exit_code)
    except OSError as e:
        _send(p.exec_w, f"E 125 container set-up: {e}")
        os._exit(125)
    except BaseException as e:
        _send(p.exec_w, f"E 125 container set-up: {e!r}")
        os._exit(125)
    os._exit(125)


def run(spec: SandboxSpec) -> Result:
    """Run the spec's command to completion; SIGINT/SIGTERM/SIGHUP sent to us while it
    runs are forwarded to it (when called from the main thread)."""
    box: list[Container] = []
    pending: list[int] = []
    old = {}
    if threading.current_thread() is threading.main_thread():
        def forward(signum, frame):
            if box:
                box[0].kill(signum)
            else:
                pending.append(signum)
        for s in _FORWARDED:
            old[s] = signal.signal(s, forward)
    try:
        c = start(spec)
        box.append(c)
        try:
            for s in pending:
                c.kill(s)
            return c.wait()
        finally:
            c.teardown()
    finally:
        for s, h in old.items():
            signal.signal(s, h)
