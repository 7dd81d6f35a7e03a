"""Errors of `pybuild run` and friends: pybuild's own failures exit 125, as docker's do."""

from __future__ import annotations

from layerstore.errors import NotFound, PybuildError


class RunError(PybuildError):
    """Bad input or a failed set-up of a container: one line, exit status 125."""

    exit_code = 125


class NoSuchContainer(NotFound):
    exit_code = 125

    def __init__(self, name: str) -> None:
        super().__init__(f"no such container: {name}")
