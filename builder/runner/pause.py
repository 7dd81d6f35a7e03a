"""`pause`/`unpause`: the cgroup freezer (v2 cgroup.freeze, else v1 freezer.state).

Paused is what the kernel says of the container's cgroup (cgroup.events / freezer.state),
so `ps` and `inspect` cannot disagree with the freezer."""

from __future__ import annotations

from .cgroupview import dirs, freezer_dir, not_running
from .containers import Containers, ContainerState
from .errors import RunError
from .lifecycle import is_running


def is_paused(st: ContainerState) -> bool:
    from builder.sandbox.cgroups import frozen

    if not is_running(st):
        return False
    try:
        d = freezer_dir(dirs(st))
    except RunError:
        return False
    return d is not None and frozen(d)


def _freezer(st: ContainerState) -> str:
    if not is_running(st):
        raise not_running(st)
    d = freezer_dir(dirs(st))
    if d is None:
        raise RunError(f"container {st.name}: no cgroup freezer is available to pause it")
    return d


def pause(containers: Containers, ref: str) -> ContainerState:
    from builder.sandbox.cgroups import freeze, frozen

    st = containers.find(ref)
    d = _freezer(st)
    if frozen(d):
        raise RunError(f"container {st.name} is already paused")
    freeze(d, True)
    return st


def unpause(containers: Containers, ref: str) -> ContainerState:
    from builder.sandbox.cgroups import freeze, frozen

    st = containers.find(ref)
    d = _freezer(st)
    if not frozen(d):
        raise RunError(f"container {st.name} is not paused")
    freeze(d, False)
    return st


def thaw(st: ContainerState) -> None:
    """Unfreeze a paused container (before it is signalled); nothing otherwise."""
    from builder.sandbox.cgroups import freeze, frozen

    try:
        d = freezer_dir(dirs(st))
        if d is not None and frozen(d):
            freeze(d, False)
    except (RunError, OSError):
        pass
