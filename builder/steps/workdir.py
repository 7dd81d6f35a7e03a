"""WORKDIR: the config's working directory, and the directory itself when the image
lacks it (made as docker does: owned by the stage's USER when the image can resolve
it, by root otherwise), written through the path resolver in a fresh upper. Only
a step that changed the tree makes a layer; otherwise it is config-only."""

from __future__ import annotations

import os

from builder.cache import step_key
from builder.dockerfile import instructions as ins
from builder.rootview import in_overlay
from builder.steps import copy as copystep
from builder.steps import meta
from builder.steps.base import Op, State, StepContext, canonical, clone
from layerstore.errors import PybuildError


class WorkdirOp(Op):
    def __init__(self, i: ins.Workdir) -> None:
        self.i = i

    def cache_key(self, ctx: StepContext) -> str:
        return step_key(ctx.state.key, canonical(self.i), {})

    def execute(self, ctx: StepContext, key: str) -> State:
        b, state = ctx.services, ctx.state
        cfg = clone(state.config)
        cfg.config = meta.apply(self.i, cfg.config)
        path = cfg.config.WorkingDir or "/"
        ws = b.workspace(state)
        try:
            job = copystep.CopyJob("WORKDIR", path, None, None, workdir_only=True,
                                   chown=state.config.config.User or None)
            try:
                in_overlay([ws.plan], copystep.copy_into, job, scratch=ws.dir)
            except PybuildError:
                job.chown = None  # USER not resolvable yet (created later): docker makes it root-owned
                in_overlay([ws.plan], copystep.copy_into, job, scratch=ws.dir)
            if any(os.scandir(ws.upper)):
                tmp_state = State(cfg, state.layers, state.key)
                # it made a layer: BuildKit's text (`WORKDIR /app`), not a `#(nop)` that
                # says the step did nothing to the tree
                return b.commit_upper(tmp_state, ws.upper, f"WORKDIR {path}", key)
            return b.meta_state(state, cfg, meta.created_by(self.i), key)
        finally:
            ws.release()
