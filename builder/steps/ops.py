"""Which op executes an instruction: one op per step kind (see builder/steps/base.py)."""

from __future__ import annotations

from builder.dockerfile import instructions as ins
from builder.steps.base import Op
from builder.steps.copyop import CopyOp
from builder.steps.meta import MetaOp
from builder.steps.run import RunOp
from builder.steps.workdir import WorkdirOp


def op_for(i: ins.Instruction) -> Op:
    if isinstance(i, ins.Run):
        return RunOp(i)
    if isinstance(i, (ins.Copy, ins.Add)):
        return CopyOp(i)
    if isinstance(i, ins.Workdir):
        return WorkdirOp(i)
    return MetaOp(i)
