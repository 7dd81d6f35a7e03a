"""`pybuild run` and the container lifecycle: image config + flags -> sandbox spec,
container records under ROOT/containers/, detached supervision, logs, exec,
named volumes and OCI runtime bundles. Everything runs through builder.sandbox.
"""

from __future__ import annotations

from pathlib import Path

from .containers import Containers, ContainerState
from .errors import NoSuchContainer, RunError
from .options import RunOptions


def run(root: Path, opts: RunOptions) -> tuple[int, str | None]:
    """Create and start a container: (exit code, id to print for -d)."""
    from .start import create, start_prepared

    p = create(root, opts)
    code = start_prepared(p, detach=opts.detach, interactive=opts.interactive)
    return code, p.state.id if opts.detach else None


__all__ = ["Containers", "ContainerState", "NoSuchContainer", "RunError", "RunOptions", "run"]
