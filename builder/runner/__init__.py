"""`pybuild run` and the container lifecycle: image config + flags -> sandbox spec,
container records under ROOT/containers/, detached supervision, logs, exec,
named volumes and OCI runtime bundles. Everything runs through builder.sandbox.
"""

from __future__ import annotations

from pathlib import Path

from layerstore.store import Store

from .containers import Containers, ContainerState
from .errors import NoSuchContainer, RunError
from .options import RunOptions


def run(root: Path, opts: RunOptions) -> tuple[int, str | None]:
    """Create and run a container: (exit code, id to print for -d)."""
    from .create import prepare

    if opts.name:
        from .options import check_container_name

        opts.name = check_container_name(opts.name)
    if opts.cidfile:
        from . import cidfile

        cidfile.check(opts.cidfile)
    p = prepare(Store.open(root), opts)
    if opts.cidfile:
        try:
            cidfile.write(opts.cidfile, p.state.id)
        except RunError:
            from .create import discard

            discard(p.containers, p.state)
            raise
    if opts.detach:
        from .supervisor import launch_detached

        launch_detached(p)
        return 0, p.state.id
    from .attach import run_foreground
    from .lifecycle import report

    return report(run_foreground(p, opts.interactive, opts.tty)), None


__all__ = ["Containers", "ContainerState", "NoSuchContainer", "RunError", "RunOptions", "run"]
