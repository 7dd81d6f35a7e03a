"""The one path from run options to a running container: `run` is `create` + `start`.

`create` prepares the container (record, directory, volumes, the sandbox spec kept in
spec.json); `start` makes this process its owner (the directory lock), then runs it
attached (the CLI waits, as `run` without -d and `start -a`) or under a detached
supervisor (`run -d`, `start`, `restart`). A container that has exited starts again
from its kept spec, with its upper dir (its files) as it left them.
"""

from __future__ import annotations

import time
from pathlib import Path

from layerstore.store import Store

from .containers import Containers, ContainerState
from .create import Prepared, load_prepared, prepare
from .errors import NoSuchContainer, RunError
from .options import RunOptions, check_container_name


def create(root: Path, opts: RunOptions, awaits_start: bool = False) -> Prepared:
    if opts.name:
        opts.name = check_container_name(opts.name)
    if opts.cidfile:        # docker refuses an existing one before anything is made
        from . import cidfile

        cidfile.check(opts.cidfile)
    p = prepare(Store.open(root), opts, awaits_start)
    if opts.cidfile:
        try:
            cidfile.write(opts.cidfile, p.state.id)
        except RunError:
            from .create import discard

            discard(p.containers, p.state)
            raise
    return p


def start_prepared(p: Prepared, *, detach: bool, interactive: bool = False) -> int:
    """Run a container this process owns: 0 once it runs detached, else its exit code."""
    if p.state.detached != detach:
        with p.containers.locked(p.state.id):
            p.state.detached = detach
            p.containers.save(p.state)
    if detach:
        from .supervisor import launch_detached

        try:
            launch_detached(p)
        finally:
            p.containers.disown(p.state.id)   # the supervisor holds it now
        return 0
    from .attach import run_foreground
    from .lifecycle import report

    return report(run_foreground(p, interactive, p.state.tty))


def start(containers: Containers, ref: str, attach: bool = False,
          interactive: bool = False) -> tuple[ContainerState, int]:
    """docker start: a running container is left alone; (its record, exit code or 0)."""
    from .lifecycle import is_running

    st = containers.find(ref)
    deadline = time.monotonic() + 5
    while not containers.try_own(st.id):
        # the owner recorded the exit and is closing its lock, or another start is
        # launching it: wait until we own it or it runs
        cur = containers.try_load(st.id)
        if cur is None:
            raise NoSuchContainer(ref)
        if is_running(cur):
            return cur, 0
        if time.monotonic() > deadline:
            raise RunError(f"container {st.name or st.id[:12]} is being started or stopped "
                           "by another command")
        time.sleep(0.02)
    try:
        st = containers.find(st.id)        # as recorded now that nobody else can change it
        if is_running(st):
            containers.disown(st.id)
            return st, 0
        p = load_prepared(containers, st)
    except BaseException:
        containers.disown(st.id)
        raise
    return st, start_prepared(p, detach=not (attach or interactive), interactive=interactive)
