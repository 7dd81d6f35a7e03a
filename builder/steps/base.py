"""What every op shares with the solver: the image state, the step context, the op shape.

An op is the code of one step kind (builder/steps/ops.py maps an instruction to
its op). The solver (builder/build.py) asks it `cache_key(ctx)`, looks the key
up in the local cache and then in each --cache-from source, and only on a miss
calls `execute(ctx, key)`, which returns the new state; `release()` runs after
either (an op may hold downloads or open trees between the two). An op never
imports the solver: what it needs of the build (the snapshotter's workspaces,
committing an upper or a config change, context hashes, progress output, the
remote cache's lazy layers) comes through `ctx.services`, a `Services` protocol
that the solver's Builder implements.

A cache key is persisted (cache/entries, remote caches): an op must compute
exactly what it computed before (tests/test_build_step_keys.py pins them).
"""

from __future__ import annotations

import copy
import dataclasses
import json
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Protocol

from builder.dockerfile import instructions as ins
from layerstore.errors import PybuildError
from layerstore.model import Descriptor, ImageConfig


class BuildError(PybuildError):
    """A step failed; the message names the step and why."""


class DependencyFailed(Exception):
    """A stage this one waits for failed (or the build was cancelled); that stage
    reports the error."""


@dataclass
class State:
    """An image state between steps: its config, its layers, and its cache key."""

    config: ImageConfig
    layers: list[Descriptor]
    key: str
    manifest: str | None = None


def clone(cfg: ImageConfig) -> ImageConfig:
    c = copy.deepcopy(cfg)
    c.raw = None
    return c


def canonical(i: ins.Instruction) -> str:
    """The step as expanded, without its position, for the cache key."""
    doc = {"keyword": i.keyword}
    for f in dataclasses.fields(i):
        if f.name in ("line", "column", "end_line"):
            continue
        v = getattr(i, f.name)
        doc[f.name] = _plain(v)
    return json.dumps(doc, sort_keys=True, default=str)


def _plain(v):
    if dataclasses.is_dataclass(v) and not isinstance(v, type):
        return {f.name: _plain(getattr(v, f.name)) for f in dataclasses.fields(v)}
    if isinstance(v, (list, tuple)):
        return [_plain(x) for x in v]
    if isinstance(v, dict):
        return {k: _plain(x) for k, x in v.items()}
    return v


class Services(Protocol):
    """The build's services an op may use (implemented by builder.build.Builder)."""

    store: object                 # layerstore Store: snapshots, root
    opts: object                  # builder.buildopts.BuildOptions
    progress: object              # builder.progress.Progress
    hashes: object                # builder.steps.copy.FileHashes (under hash_lock)
    hash_lock: threading.Lock
    counter_lock: threading.Lock
    failed: threading.Event       # another stage failed: do not start a process
    running: dict                 # containers of RUN steps in progress
    network: object               # builder.steps.run.BuildNetwork
    mount_ids: dict[str, set[str]]
    volatile: bool                # an input the whole-build memo cannot vouch for

    @property
    def scratch(self) -> Path: ...

    def lowers(self, state: State) -> list[Path]: ...

    def open_layer(self, desc: Descriptor): ...

    def workspace(self, state: State, volatile: bool = False): ...

    def commit_upper(self, state: State, upper: Path, created_by: str, key: str,
                     comment: str | None = None) -> State: ...

    def meta_state(self, state: State, cfg: ImageConfig, created_by: str, key: str) -> State: ...

    def context_view(self, sel, digest: str) -> Path: ...

    def restore_mounts(self, ids: list[str], platform: str) -> None: ...


@dataclass
class StepContext:
    """One stage's view for its ops: the state so far, the build args in scope and
    the stage's flags (the solver moves `state` on after each step), the step being
    run, and narrow handles on the rest of the build."""

    state: State
    services: Services
    context: object                            # builder.context.Context (the main one)
    filename: str                              # the Dockerfile's name, for messages
    escape: str                                # the Dockerfile's escape character
    source_state: Callable[[str], State]       # --from=/from= a stage or an image
    args: dict[str, str] = field(default_factory=dict)
    cmd_set: bool = False                      # a CMD came before (ENTRYPOINT keeps it)
    n: int = 0                                 # the step's number in the progress output

    def scope(self) -> dict[str, str]:
        """Expansion scope: args in scope under the live image env."""
        return {**self.args, **self.state.config.config.env_dict()}


class Op:
    """One step: `cache_key`, then (on a miss) `execute`; `release` after either."""

    def cache_key(self, ctx: StepContext) -> str:
        raise NotImplementedError

    def execute(self, ctx: StepContext, key: str) -> State:
        raise NotImplementedError

    def release(self) -> None:
        pass
