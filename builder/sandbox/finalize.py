"""The one privilege-dropping finalize step that both entry points end in.

`start`'s container PID 1 and `exec`'s joining process run the same code from
here to execve, so an exec'd process ends exactly as privileged as the
container's own command (runc shares its finalizeNamespace the same way).

Until execve these processes are Python: the host's interpreter, holding our
control channels. They are non-dumpable from before they enter the container
until execve, so no process in the container can ptrace them or open their
/proc/<pid>/exe (the host binary: the precondition of CVE-2019-5736), fd/*,
root, cwd, environ or mem. The kernel resets the flag to fs.suid_dumpable
whenever effective ids, fs ids or capabilities change (commit_creds) and on
execve, so it is set again after every such change. Non-dumpable does not stop a
container granted CAP_SYS_PTRACE (held in the host's user namespace), so nothing
of ours stays Python in a container once its command runs: an `--init` container
gets a machine-code init, not an interpreter, as its PID 1, and every command is
executed through a machine-code trampoline (native.py), so /proc/self/exe never names
the host's Python inside a container.
"""

from __future__ import annotations

import ctypes
import errno
import os
import signal
from typing import NoReturn

from layerstore.humanize import quoted

from . import caps as capmod
from . import libc, native, users


def nondumpable() -> None:
    """PR_SET_DUMPABLE 0: ptrace and /proc/<pid>/{exe,fd,root,mem,...} then need
    CAP_SYS_PTRACE in the user namespace our memory was created in (the host's)."""
    libc.prctl(libc.PR_SET_DUMPABLE, 0)


def forget_caller(name: bytes = b"pybuild-exec") -> None:
    """Wipe the caller's command line and environment from this (forked) process.

    /proc/<pid>/cmdline is readable by every process that can see us, and environ by
    whoever may ptrace us (a container granted CAP_SYS_PTRACE may, non-dumpable or
    not): both are read from the memory execve filled in, whatever Python did since.
    Zero those areas (cmdline then reads as `name`) and drop libc's environ, which
    points into them; os.environ goes too. Only this process changes: the caller's
    memory is its own since fork."""
    with open("/proc/self/stat", "rb") as f:
        fields = f.read().rsplit(b")", 1)[1].split()
    # fields 48-51 of proc(5): arg_start, arg_end, env_start, env_end
    arg_start, arg_end, env_start, env_end = (int(v) for v in fields[45:49])
    libc.clearenv()
    os.environ.clear()
    for start, end in ((env_start, env_end), (arg_start, arg_end)):
        if 0 < start < end:
            ctypes.memset(start, 0, end - start)
    if arg_end - arg_start > len(name):
        ctypes.memmove(arg_start, name, len(name))


def send(fd: int, msg: str) -> None:
    """One line on a control pipe or socket (a single write: whole lines, never mixed)."""
    try:
        os.write(fd, (msg.replace("\n", " ")[:3000] + "\n").encode(errors="replace"))
    except OSError:
        pass


def close_all_but(keep: set[int]) -> None:
    """Close inherited fds (other containers' pipes too, when started from threads)."""
    lo = 3
    for fd in sorted(k for k in keep if k >= 3) + [1 << 20]:
        if fd > lo:
            os.closerange(lo, fd)
        lo = fd + 1


def _setgroups(groups: list[int]) -> None:
    """A rootless namespace that maps one gid only has setgroups denied (else dropping a
    group could grant what a negative group permission forbids): the groups stay as the
    user's login gave them, as with rootless podman. Anywhere else a refusal is an error."""
    try:
        os.setgroups(groups)
    except PermissionError:
        try:
            with open("/proc/self/setgroups", encoding="ascii") as f:
                denied = f.read(16).strip() == "deny"
        except OSError:
            denied = False
        if not denied:
            raise


def drop_privileges(ids: users.Ids, keep: int, bpf: bytes | None, no_new_privs: bool) -> None:
    """runc's order: seccomp early only without no_new_privs; bounding set, user, caps.

    The kernel installs a filter only for a caller with no_new_privs set or
    CAP_SYS_ADMIN in its user namespace (else a setuid binary could run under a
    filter its owner never agreed to). Without no_new_privs (docker's default) the
    filter therefore goes in first, while we still hold every capability; the
    syscalls that follow (prctl, setgroups, setres[ug]id, capset, close_range) are
    ones the profile must allow, as with runc. With no_new_privs it goes in last,
    as close to execve as possible, so that it filters nothing of ours."""
    if bpf is not None and not no_new_privs:
        libc.seccomp_load(bpf)
    capmod.drop_bounding(keep)
    libc.prctl(libc.PR_SET_KEEPCAPS, 1)
    _setgroups(ids.groups)
    os.setresgid(ids.gid, ids.gid, ids.gid)
    os.setresuid(ids.uid, ids.uid, ids.uid)
    libc.prctl(libc.PR_SET_KEEPCAPS, 0)
    capmod.apply(keep)
    nondumpable()       # the id and capability changes just reset it to fs.suid_dumpable
    os.umask(0o022)
    if no_new_privs:
        libc.prctl(libc.PR_SET_NO_NEW_PRIVS, 1)
    # nothing of ours (control pipes, the store, Python's files) survives execve
    libc.close_range_cloexec(3)
    if bpf is not None and no_new_privs:
        libc.seccomp_load(bpf)


def finalize(path: str, argv: list[str], env: dict[str, str], ids: users.Ids, keep: int,
             bpf: bytes | None, no_new_privs: bool, report_fd: int, init: bool = False) -> NoReturn:
    """Drop privileges and execve `path` (under a tiny reaping init with `init`); a
    failed execve is reported on `report_fd` as `E <code> <message>`."""
    exec_fd = native.memfd(native.EXEC_CODE, "pybuild-exec")
    init_fd = native.memfd(native.INIT_CODE, "pybuild-init") if init else -1
    drop_privileges(ids, keep, bpf, no_new_privs)
    if init:
        _run_init(init_fd, exec_fd, path, argv, env, report_fd)
    exec_command(exec_fd, path, argv, env, report_fd)


def exec_command(exec_fd: int, path: str, argv: list[str], env: dict[str, str],
                 report_fd: int) -> NoReturn:
    """The last step of both entry points, after drop_privileges: execve `path` through
    the exec trampoline `exec_fd` (native.memfd(native.EXEC_CODE)), so that the command
    is executed by a process whose /proc/self/exe is that sealed memfd, never the host's
    Python (a `#!/proc/self/exe` script would otherwise run the host's interpreter in the
    container). The trampoline reports a failed execve on `report_fd` (`E <code> errno
    <NNN>`, see native.explain) and closes it on the command's execve."""
    try:
        os.set_inheritable(report_fd, True)
        os.execve(exec_fd, ["pybuild-exec", str(report_fd), path, *argv], env)
    except OSError as e:   # the trampoline itself did not run (vm.memfd_noexec=2, E2BIG)
        code = 126 if e.errno in (errno.EACCES, errno.ENOEXEC, errno.EPERM) else 127
        send(report_fd, f"E {code} exec {quoted(argv[0])}: {e.strerror}")
        os._exit(code)


def _run_init(init_fd: int, exec_fd: int, path: str, argv: list[str], env: dict[str, str],
              report_fd: int) -> NoReturn:
    """Fork the command, then become the machine-code init (native.INIT_CODE) that reaps
    orphans and forwards signals to it. Every signal is blocked from before the fork
    until the init waits for them, so none sent to PID 1 meanwhile is lost; the command
    unblocks them again before its execve, and it waits for our execve (EOF on a
    close-on-exec pipe) before its own: until then PID 1 is still Python, the host's
    interpreter with the caller's command line, and no process of the container may
    look at it."""
    signal.pthread_sigmask(signal.SIG_BLOCK, signal.valid_signals())
    gate_r, gate_w = os.pipe2(os.O_CLOEXEC)
    pid = os.fork()
    if pid == 0:
        os.close(gate_w)
        while True:
            try:
                os.read(gate_r, 1)
                break
            except InterruptedError:
                continue
        os.close(gate_r)
        signal.pthread_sigmask(signal.SIG_SETMASK, [])
        exec_command(exec_fd, path, argv, env, report_fd)
    os.close(gate_r)
    try:
        os.execve(init_fd, ["pybuild-init", str(pid)], env)
    except OSError as e:  # e.g. vm.memfd_noexec=2 forbids executing memory files
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        send(report_fd, f"E 125 --init: cannot execute the init: {e.strerror}")
        os._exit(125)
