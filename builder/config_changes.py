"""`pybuild import --change 'CMD ["sh"]'`: Dockerfile instructions applied to a config.

Each change is parsed by the Dockerfile frontend and applied with the very
meta handlers a build uses, so `--change` and a Dockerfile mean the same.
"""

from __future__ import annotations

from builder.dockerfile import instructions as ins
from builder.dockerfile.parser import parse_ast
from builder.dockerfile.expand import expand_word
from builder.steps import meta
from layerstore.errors import PybuildError
from layerstore.model import ContainerConfig

ALLOWED = (ins.Cmd, ins.Entrypoint, ins.Env, ins.Expose, ins.Label, ins.OnBuild, ins.StopSignal,
           ins.User, ins.Volume, ins.Workdir, ins.Healthcheck, ins.Shell)


def apply_changes(config: ContainerConfig, changes: list[str]) -> ContainerConfig:
    """Apply each change in order; a bad or disallowed change raises PybuildError."""
    cmd_set = False
    for n, change in enumerate(changes, 1):
        tree = parse_ast(change.strip() + "\n", filename=f"--change {n}")
        if len(tree.nodes) != 1:
            raise PybuildError(f"--change {change!r}: expected exactly one instruction")
        i = ins.to_instruction(tree.nodes[0], tree.escape, f"--change {n}", tree.lines)
        if not isinstance(i, ALLOWED):
            raise PybuildError(f"--change {change!r}: {i.keyword} is not allowed "
                               "(CMD, ENTRYPOINT, ENV, EXPOSE, LABEL, ONBUILD, STOPSIGNAL, USER, "
                               "VOLUME, WORKDIR, HEALTHCHECK, SHELL)")
        env = config.env_dict()
        i = i.expand(lambda w: expand_word(w, env, tree.escape))
        config = meta.apply(i, config, cmd_set=cmd_set)
        cmd_set = cmd_set or isinstance(i, ins.Cmd)
    return config
