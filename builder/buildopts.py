"""What a `pybuild build` was asked to do, before anything heavy is imported.

The options, the build-arg parsing and where the Dockerfile is live here so that
the CLI and the whole-build memo (builder/buildmemo.py) can use them without
loading the Dockerfile frontend or the solver.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from builder.keyvalues import env_pairs
from layerstore.errors import PybuildError

if TYPE_CHECKING:
    from builder.steps.mounts import Secret


@dataclass
class BuildOptions:
    context: Path | None
    dockerfile: Path | None = None
    dockerfile_text: bytes | None = None
    tags: list[str] = field(default_factory=list)
    build_args: dict[str, str] = field(default_factory=dict)
    target: str | None = None
    no_cache: bool = False
    pull: bool = False
    network: str = "default"
    platform: str | None = None
    labels: dict[str, str] = field(default_factory=dict)
    annotations: dict[str, str] = field(default_factory=dict)
    secrets: dict[str, Secret] = field(default_factory=dict)
    build_contexts: dict[str, Path] = field(default_factory=dict)
    compression: str = "gzip"
    source_date_epoch: int | None = None
    squash: bool = False
    jobs: int = 4


def parse_build_args(items: Iterable[str]) -> dict[str, str]:
    """`K=V` pairs; a bare `K` takes its value from the environment, as docker does."""
    return env_pairs(items, os.environ, lambda item: PybuildError(
        f"--build-arg: invalid build arg {item!r}: expected KEY=VALUE"))


def locate_dockerfile(context: Path | None, dockerfile: Path | None) -> Path | None:
    """-f wins; otherwise CONTEXT/Dockerfile, then CONTEXT/Containerfile (None: neither
    given, the Dockerfile comes from stdin)."""
    if dockerfile is not None or context is None:
        return dockerfile
    for name in ("Dockerfile", "Containerfile"):
        if (context / name).is_file():
            return context / name
    return context / "Dockerfile"
