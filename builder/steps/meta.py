"""Config-only instructions: ENV, LABEL, EXPOSE, VOLUME, USER, WORKDIR, ENTRYPOINT,
CMD, SHELL, STOPSIGNAL, HEALTHCHECK, ONBUILD, MAINTAINER, ARG.

Each takes an already-expanded instruction and the image config and returns
the changed config, written the way docker writes it (Env as K=V in order of
first definition, ports as "80/tcp", healthcheck durations in nanoseconds).
`created_by` gives buildah's/docker's history text for the step. `MetaOp` is
the solver's op for these steps (WORKDIR's is builder/steps/workdir.py: it may
make a layer).
"""

from __future__ import annotations

import copy
import posixpath

from builder.cache import step_key
from builder.dockerfile import instructions as ins
from builder.sandbox.spec import DEFAULT_PATH
from builder.steps.base import Op, State, StepContext, canonical, clone
from layerstore.errors import PybuildError
from layerstore.model import ContainerConfig

DEFAULT_SHELL = ["/bin/sh", "-c"]
# the Env entry BuildKit gives an image without PATH: the sandbox's own default PATH
PATH_ENTRY = "PATH=" + DEFAULT_PATH
META = (ins.Env, ins.Label, ins.Expose, ins.Volume, ins.User, ins.Workdir, ins.Entrypoint,
        ins.Cmd, ins.Shell, ins.StopSignal, ins.Healthcheck, ins.OnBuild, ins.Maintainer, ins.Arg)


class MetaError(PybuildError):
    """An instruction value docker would reject (bad port, bad signal...)."""


def set_env(env: list[str] | None, key: str, value: str) -> list[str]:
    out = list(env or [])
    for i, item in enumerate(out):
        if item.partition("=")[0] == key:
            out[i] = f"{key}={value}"
            return out
    out.append(f"{key}={value}")
    return out


def _ports(spec: str) -> list[str]:
    port, _, proto = spec.partition("/")
    proto = (proto or "tcp").lower()
    if proto not in ("tcp", "udp", "sctp"):
        raise MetaError(f"EXPOSE {spec}: invalid protocol {proto!r}")
    if ":" in port:
        port = port.rsplit(":", 1)[1]
    lo, dash, hi = port.partition("-")
    try:
        a = int(lo)
        b = int(hi) if dash else a
    except ValueError:
        raise MetaError(f"EXPOSE {spec}: invalid port") from None
    if not (0 <= a <= 65535 and a <= b <= 65535):
        raise MetaError(f"EXPOSE {spec}: invalid port range")
    return [f"{p}/{proto}" for p in range(a, b + 1)]


def _command(c: ins._Command, shell: list[str] | None) -> list[str]:
    if c.prepend_shell:
        return list(shell or DEFAULT_SHELL) + [" ".join(c.command)]
    return list(c.command)


def _ns(seconds: float | None) -> int | None:
    return None if seconds is None else int(round(seconds * 1e9))


def resolve_workdir(current: str | None, path: str) -> str:
    base = current or "/"
    full = path if path.startswith("/") else posixpath.join(base, path)
    return posixpath.normpath(full) if full != "/" else "/"


def apply(i: ins.Instruction, cfg: ContainerConfig, *, cmd_set: bool = False) -> ContainerConfig:
    """A new ContainerConfig with instruction `i` applied (ARG/MAINTAINER leave it alone)."""
    c = copy.deepcopy(cfg)
    if isinstance(i, ins.Env):
        for k, v in i.pairs:
            c.Env = set_env(c.Env, k, v)
    elif isinstance(i, ins.Label):
        labels = dict(c.Labels or {})
        for k, v in i.pairs:
            labels[k] = v
        c.Labels = labels
    elif isinstance(i, ins.Expose):
        ports = dict(c.ExposedPorts or {})
        for p in i.ports:
            for q in _ports(p):
                ports[q] = {}
        c.ExposedPorts = dict(sorted(ports.items()))
    elif isinstance(i, ins.Volume):
        vols = dict(c.Volumes or {})
        for p in i.paths:
            if not p.strip():
                raise MetaError("VOLUME specified can not be an empty string")
            vols[p] = {}
        c.Volumes = vols
    elif isinstance(i, ins.User):
        c.User = i.value
    elif isinstance(i, ins.Workdir):
        c.WorkingDir = resolve_workdir(c.WorkingDir, i.value)
    elif isinstance(i, ins.Shell):
        c.Shell = list(i.command)
    elif isinstance(i, ins.Entrypoint):
        c.Entrypoint = _command(i, c.Shell) if (i.command or not i.prepend_shell) else None
        if i.prepend_shell and i.command == [""]:
            c.Entrypoint = None
        if not cmd_set:
            c.Cmd = None
    elif isinstance(i, ins.Cmd):
        c.Cmd = _command(i, c.Shell)
    elif isinstance(i, ins.StopSignal):
        _check_signal(i.value)
        c.StopSignal = i.value
    elif isinstance(i, ins.Healthcheck):
        if i.test == ["NONE"]:
            c.Healthcheck = {"Test": ["NONE"]}
        else:
            hc: dict = {"Test": list(i.test)}
            for key, val in (("Interval", _ns(i.interval)), ("Timeout", _ns(i.timeout)),
                             ("StartPeriod", _ns(i.start_period)),
                             ("StartInterval", _ns(i.start_interval)), ("Retries", i.retries)):
                if val:
                    hc[key] = val
            c.Healthcheck = hc
    elif isinstance(i, ins.OnBuild):
        c.OnBuild = list(c.OnBuild or []) + [onbuild_text(i)]
    return c


def onbuild_text(i: ins.OnBuild) -> str:
    """The trigger as stored in the config; heredoc bodies are kept (BuildKit does too)."""
    text = i.expression
    for h in i.heredocs or i.trigger.heredocs:
        text += "\n" + h.content + h.name
    return text


def _check_signal(value: str) -> None:
    import signal as sigmod

    v = value.upper()
    if v.isascii() and v.isdigit():
        # a signal number as moby's ParseSignal takes it: not 0, and an int64
        if not 0 < int(v) < 2 ** 63:
            raise MetaError(f"STOPSIGNAL: invalid signal {value!r}")
        return
    name = v if v.startswith("SIG") else "SIG" + v
    if not hasattr(sigmod.Signals, name) and not name.startswith("SIGRTM"):
        raise MetaError(f"STOPSIGNAL: invalid signal {value!r}")


def _text_after_keyword(i: ins.Instruction) -> str:
    parts = i.original.split(None, 1)
    return parts[1].strip() if len(parts) > 1 else ""


def created_by(i: ins.Instruction) -> str:
    """History text as buildah writes it for a config-only step."""
    if isinstance(i, ins.Arg):
        return "/bin/sh -c #(nop) ARG " + " ".join(a.name for a in i.args)
    text = _text_after_keyword(i)
    if isinstance(i, ins.OnBuild):
        text = onbuild_text(i)
    return f"/bin/sh -c #(nop) {i.keyword} {text}".rstrip()


def run_created_by(argv: list[str], used_args: dict[str, str]) -> str:
    """`|N K=V ... /bin/sh -c cmd`: docker's RUN history text with the build args used."""
    prefix = ""
    if used_args:
        prefix = f"|{len(used_args)} " + " ".join(f"{k}={v}" for k, v in sorted(used_args.items())) + " "
    return prefix + " ".join(argv)


class MetaOp(Op):
    """A config-only step (see META but WORKDIR): the config changes, no layer."""

    def __init__(self, i: ins.Instruction) -> None:
        self.i = i

    def cache_key(self, ctx: StepContext) -> str:
        i = self.i
        # an ARG's value reaches the key of every step that uses it, not the ARG step's own
        text = ("ARG " + " ".join(d.name for d in i.args)) if isinstance(i, ins.Arg) \
            else canonical(i)
        if isinstance(i, ins.Cmd):
            ctx.cmd_set = True
        return step_key(ctx.state.key, text, {})

    def execute(self, ctx: StepContext, key: str) -> State:
        i = self.i
        cfg = clone(ctx.state.config)
        if isinstance(i, ins.Maintainer):
            cfg.author = i.value
        else:
            cfg.config = apply(i, cfg.config, cmd_set=ctx.cmd_set and not isinstance(i, ins.Cmd))
        return ctx.services.meta_state(ctx.state, cfg, created_by(i), key)
