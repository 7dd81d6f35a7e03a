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
execve, so it is set again after every such change.
"""

from __future__ import annotations

import errno
import os
import signal
from typing import NoReturn

from . import caps as capmod
from . import libc, users


def nondumpable() -> None:
    """PR_SET_DUMPABLE 0: ptrace and /proc/<pid>/{exe,fd,root,mem,...} then need
    CAP_SYS_PTRACE in the user namespace our memory was created in (the host's)."""
    libc.prctl(libc.PR_SET_DUMPABLE, 0)


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


def drop_privileges(ids: users.Ids, keep: int, bpf: bytes | None, no_new_privs: bool) -> None:
    """runc's order: seccomp early only without no_new_privs; bounding set, user, caps."""
    if bpf is not None and not no_new_privs:
        libc.seccomp_load(bpf)
    capmod.drop_bounding(keep)
    libc.prctl(libc.PR_SET_KEEPCAPS, 1)
    os.setgroups(ids.groups)
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
    drop_privileges(ids, keep, bpf, no_new_privs)
    if init:
        _run_init(path, argv, env, report_fd)
    _exec(path, argv, env, report_fd)


def _exec(path: str, argv: list[str], env: dict[str, str], report_fd: int) -> NoReturn:
    try:
        os.execve(path, argv, env)
    except OSError as e:
        code = 126 if e.errno in (errno.EACCES, errno.ENOEXEC, errno.EPERM) else 127
        send(report_fd, f"E {code} exec {argv[0]}: {e.strerror}")
        os._exit(code)


def _run_init(path: str, argv: list[str], env: dict[str, str], report_fd: int) -> NoReturn:
    """A tiny init: start the command, forward signals to it, reap every orphan. It stays
    Python, and so non-dumpable, for the container's whole life."""
    pid = os.fork()
    if pid == 0:
        _exec(path, argv, env, report_fd)
    os.close(report_fd)

    def forward(signum, frame):
        try:
            os.kill(pid, signum)
        except ProcessLookupError:
            pass
    for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGQUIT, signal.SIGUSR1,
              signal.SIGUSR2, signal.SIGWINCH):
        signal.signal(s, forward)
    while True:
        try:
            done, status = os.wait()
        except ChildProcessError:
            os._exit(0)
        if done == pid:
            os._exit(os.waitstatus_to_exitcode(status) if os.WIFEXITED(status)
                     else 128 + os.WTERMSIG(status))
