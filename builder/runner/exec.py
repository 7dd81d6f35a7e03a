"""`pybuild exec`: run one more process inside a running container.

Plumbing only: find the container, turn the options into an ExecSpec, and
hand it to the sandbox's `exec` (which joins the namespaces, opens the pty
inside the container and drops privileges exactly as `start` does). Then pump
the terminal, forward signals through the pidfd the sandbox gives back (never
to a pid anything reported), and return the exit status from our own waitpid.
"""

from __future__ import annotations

import os
import signal

from builder.sandbox import ExecSpec, Process, exec as sandbox_exec

from .attach import copy_winsize, forwarding, pump_pty, raw_terminal, stdin_from_devnull, terminal_size
from .containers import Containers, ContainerState, alive
from .create import seccomp_cache, tty_env
from .errors import RunError
from .lifecycle import is_active, is_running
from .options import parse_env


def exec_in(containers: Containers, ref: str, argv: list[str], *, interactive: bool = False,
            use_tty: bool = False, env: list[str] | None = None, user: str | None = None,
            workdir: str | None = None, detach: bool = False) -> int:
    """Run argv in the container; its exit code (0 at once with detach)."""
    st = containers.find(ref)
    with stdin_from_devnull(not interactive and not use_tty and not detach):
        proc = start_process(containers, st, argv, use_tty=use_tty, env=env, user=user,
                             workdir=workdir, detach=detach)
    if detach:
        proc.close()
        return 0
    try:
        with forwarding(proc.signal):
            if proc.master is not None:
                master = proc.master
                old = signal.signal(signal.SIGWINCH,
                                    lambda s, f: copy_winsize(0 if os.isatty(0) else 1, master))
                try:
                    with raw_terminal(0) if interactive else _nothing():
                        pump_pty(master, interactive)
                finally:
                    signal.signal(signal.SIGWINCH, old)
            return proc.wait()
    finally:
        proc.close()


def start_process(containers: Containers, st: ContainerState, argv: list[str], *,
                  use_tty: bool = False, env: list[str] | None = None, user: str | None = None,
                  workdir: str | None = None, detach: bool = False) -> Process:
    """THE way into a running container (`exec` and the supervisor's health checks):
    argv started through the sandbox's exec with the container's user, environment,
    capabilities and seccomp profile, stdio our fds 0-2 (a pty with use_tty). The
    caller waits for the Process."""
    if st.status == "restarting" and is_active(st):
        raise RunError(f"container {st.id[:12]} is restarting, wait until the container is running")
    if not is_running(st):
        raise RunError(f"container {st.id[:12]} is not running")
    from .pause import is_paused

    if is_paused(st):   # its new process would join the frozen cgroup and hang there
        raise RunError(f"container {st.id[:12]} is paused, unpause the container before exec")
    if workdir is not None and not workdir.startswith("/"):
        raise RunError(f"the working directory {workdir!r} is invalid: it must be an absolute path")
    # the pidfd first, then the check that the PID is still the container's PID 1:
    # a PID reused after the check cannot redirect the pidfd
    try:
        target = os.pidfd_open(st.pid)
    except (ProcessLookupError, ValueError, OSError):
        raise RunError(f"container {st.id[:12]} is not running") from None
    try:
        if not alive(st.pid, st.pid_start):
            raise RunError(f"container {st.id[:12]} is not running")
        full_env = dict(st.env)
        full_env.update(parse_env(env or [], dict(os.environ)))
        spec = ExecSpec(container_id=st.id, argv=argv, env=tty_env(full_env, use_tty),
                        cwd=workdir or st.cwd, user=user or st.user, hostname=st.hostname,
                        group_add=list(st.host_config.get("GroupAdd") or []),
                        cap_add=st.cap_add,
                        cap_drop=st.cap_drop, seccomp=st.seccomp, no_new_privs=st.no_new_privs,
                        stdio="pty" if use_tty else "null" if detach else "inherit",
                        pty_size=terminal_size(0 if os.isatty(0) else 1) if use_tty else None,
                        detach=detach, cache_dir=seccomp_cache(containers.root))
        return sandbox_exec(spec, target)
    finally:
        os.close(target)


class _nothing:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False
