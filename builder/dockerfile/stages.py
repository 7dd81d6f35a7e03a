"""The stage graph: ARG scoping, expansion, stage dependencies and pruning.

This is the meaning BuildKit gives a parsed Dockerfile before it builds
anything: ARGs before the first FROM are global and usable only in FROM
lines (a stage re-declares them to use them), build args override defaults,
the platform ARGs are predefined, ENV wins over ARG, stages depend on each
other through `FROM <stage>`, `COPY --from` and `RUN --mount=from=`, and only
the stages the target needs are built.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace

from .document import Dockerfile
from .errors import DockerfileError, ExpansionError
from .expand import ShellLex
from .instructions import (STAGE_NAME, Add, Arg, Copy, Env, Expose, From, Instruction, OnBuild, Run,
                           checksum_problem)

PROXY_ARGS = ("HTTP_PROXY", "http_proxy", "HTTPS_PROXY", "https_proxy", "FTP_PROXY", "ftp_proxy",
              "NO_PROXY", "no_proxy", "ALL_PROXY", "all_proxy")
PLATFORM_ARGS = ("TARGETPLATFORM", "TARGETOS", "TARGETARCH", "TARGETVARIANT",
                 "BUILDPLATFORM", "BUILDOS", "BUILDARCH", "BUILDVARIANT")

# docker's own Dockerfile frontend images (any version, channel or digest): pybuild's
# built-in frontend is what they are
_KNOWN_FRONTEND = re.compile(r"(?:(?:docker\.io|registry-1\.docker\.io)/)?docker/dockerfile"
                             r"(?:-upstream)?(?::[\w][\w.-]{0,127})?(?:@sha256:[0-9a-f]{64})?\Z",
                             re.ASCII)
_PORT_SPEC = re.compile(r"(?:(?:\[[0-9A-Fa-f:.]*\]|[0-9.]*):(?:[0-9]*(?:-[0-9]*)?):)?"
                        r"([0-9]+)(?:-([0-9]+))?(?:/(?:tcp|udp|sctp))?\Z", re.IGNORECASE)


@dataclass(frozen=True)
class Platform:
    os: str
    arch: str
    variant: str = ""

    @classmethod
    def parse(cls, text: str) -> Platform:
        """containerd's parse and normalization, in layerstore.platforms (one of each):
        `linux/aarch64` and `linux/arm64/v8` are `linux/arm64`; `foo/bar` is an error."""
        from layerstore.errors import PybuildError
        from layerstore.platforms import parse_platform

        try:
            p = parse_platform(text)
        except PybuildError as exc:
            raise DockerfileError(str(exc), "platform") from None
        return cls(p.os, p.architecture, p.variant or "")

    @classmethod
    def host(cls) -> Platform:
        from layerstore.platforms import host_platform

        p = host_platform()
        return cls(p.os, p.architecture, p.variant or "")

    def __str__(self) -> str:
        return f"{self.os}/{self.arch}" + (f"/{self.variant}" if self.variant else "")


@dataclass
class Base:
    """What a stage starts from: an image reference, another stage, or nothing."""

    kind: str                      # "image" | "stage" | "scratch"
    ref: str                       # the expanded FROM word
    stage: int | None = None       # index when kind == "stage"


@dataclass
class Stage:
    index: int
    name: str | None
    base: Base
    from_: From                            # the expanded FROM instruction
    platform: str | None = None            # expanded --platform, if given
    instructions: list[Instruction] = field(default_factory=list)   # expanded, without FROM
    triggers: list[Instruction] = field(default_factory=list)       # ONBUILD of a stage base, replayed first
    onbuild: list[OnBuild] = field(default_factory=list)            # triggers this stage records
    depends_on: list[int] = field(default_factory=list)             # stage indexes
    images: list[str] = field(default_factory=list)                 # other images it reads (COPY --from)
    args: dict[str, str] = field(default_factory=dict)              # ARG values in scope at the end
    env: dict[str, str] = field(default_factory=dict)               # ENV set by this stage (and stage bases)

    @property
    def label(self) -> str:
        return self.name if self.name else str(self.index)


@dataclass
class StageGraph:
    stages: list[Stage]
    target: int
    order: list[int]                         # stages the target needs, dependencies first
    meta_args: dict[str, str | None]
    build_args: dict[str, str]
    target_platform: Platform
    build_platform: Platform
    warnings: list[str] = field(default_factory=list)

    def needed(self) -> list[Stage]:
        return [self.stages[i] for i in self.order]

    def proxy_env(self) -> dict[str, str]:
        """Proxy build args: RUN sees them without an ARG line (and they stay out of the image)."""
        return {k: v for k, v in self.build_args.items() if k in PROXY_ARGS}

    def stage(self, name_or_index: str | int) -> Stage:
        if isinstance(name_or_index, int) or (str(name_or_index).isascii() and str(name_or_index).isdigit()):
            return self.stages[int(name_or_index)]
        for s in self.stages:
            if s.name == str(name_or_index).lower():
                return s
        raise KeyError(name_or_index)


def platform_args(target: Platform, build: Platform) -> dict[str, str]:
    return {"TARGETPLATFORM": str(target), "TARGETOS": target.os, "TARGETARCH": target.arch,
            "TARGETVARIANT": target.variant, "BUILDPLATFORM": str(build), "BUILDOS": build.os,
            "BUILDARCH": build.arch, "BUILDVARIANT": build.variant}


class _Planner:
    def __init__(self, df: Dockerfile, build_args: Mapping[str, str], target_platform: Platform,
                 build_platform: Platform, lint: bool = False) -> None:
        self.df = df
        self.build_args = dict(build_args)
        self.lex = ShellLex(df.escape)
        self.platform = platform_args(target_platform, build_platform)
        self.declared: set[str] = set()
        self.warnings: list[str] = []
        self.lint = lint
        self.bad_refs: list[tuple[int, Instruction, str]] = []   # (stage, where, message)

    def fail(self, ins: Instruction, message: str) -> DockerfileError:
        return DockerfileError(message, self.df.filename, ins.line, ins.column,
                               self.df.source_line(ins.line))

    def expander(self, ins: Instruction, env: Mapping[str, str]):
        def expand(word: str) -> str:
            try:
                return self.lex.process_word(word, env)
            except ExpansionError as exc:
                raise self.fail(ins, exc.message) from None
        return expand

    def check_port(self, ins: Instruction, spec: str) -> None:
        """EXPOSE [ip:[hostport]:]port[-port][/tcp|udp|sctp], as docker's nat.ParsePortSpec."""
        m = _PORT_SPEC.match(spec)
        ok = m is not None
        if m:
            low, high = int(m.group(1)), int(m.group(2) or m.group(1))
            ok = low <= high <= 65535
        if not ok:
            raise self.fail(ins, f'invalid port "{spec}" in EXPOSE: expected PORT[-PORT][/tcp|udp|sctp]')

    def check_image(self, stage: Stage, ins: Instruction, ref: str, what: str) -> None:
        """An image named by FROM or --from is a valid reference (or an image ID), known
        before any step runs: `FROM Busybox` failed at its step, after the steps of the
        stages before it, as "not found locally, and pulling it failed". Noted here,
        reported once the stages the target needs are known (see `plan`)."""
        from layerstore import reference
        from layerstore.errors import InvalidReference

        hexid = ref[len("sha256:"):] if ref.startswith("sha256:") else ref
        if 3 <= len(hexid) <= 64 and all(c in "0123456789abcdef" for c in hexid):
            return        # an image ID (prefix), as the store resolves it
        try:
            reference.parse(ref)
        except InvalidReference as exc:
            self.bad_refs.append((stage.index, ins, f"{what} {ref}: {exc}"))

    def check_syntax(self) -> None:
        """`# syntax=` names a frontend image BuildKit would fetch and run; pybuild has
        one frontend, built in. A name other than docker's own Dockerfile frontend is
        warned about (as docker warns when it cannot fetch one), and the build goes on."""
        d = self.df.directives.get("syntax")
        if d is None or _KNOWN_FRONTEND.match(d.value.strip()):
            return
        shown = d.value.strip()[:80]
        self.warnings.append(f"{self.df.filename}:{d.line}: unknown frontend '# syntax={shown}': "
                             "pybuild cannot fetch frontends and builds with its built-in "
                             "Dockerfile frontend")

    def arg_value(self, ins: Instruction, name: str, default: str | None, env: Mapping[str, str],
                  inherited: Mapping[str, str | None]) -> str | None:
        self.declared.add(name)
        if name in self.build_args:
            return self.build_args[name]
        if default is not None:
            return self.expander(ins, env)(default)
        if name in inherited and inherited[name] is not None:
            return inherited[name]
        return self.platform.get(name)

    def plan(self, target: str | None) -> StageGraph:
        meta: dict[str, str | None] = {}
        groups: list[tuple[From, list[Instruction]]] = []
        for ins in self.df.instructions:
            if isinstance(ins, From):
                groups.append((ins, []))
            elif not groups:
                assert isinstance(ins, Arg)
                scope = {**self.platform, **{k: v for k, v in meta.items() if v is not None}}
                for decl in ins.args:
                    meta[decl.name] = self.arg_value(ins, decl.name, decl.default, scope, {})
                    scope = {**scope, **({decl.name: meta[decl.name]} if meta[decl.name] is not None else {})}
            else:
                groups[-1][1].append(ins)
        if not groups:
            raise DockerfileError("no build stage in Dockerfile (it has no FROM)", self.df.filename, 1, 1)
        self.check_syntax()
        meta_env = {**self.platform, **{k: v for k, v in meta.items() if v is not None}}

        stages: list[Stage] = []
        for index, (frm, _) in enumerate(groups):
            expand = self.expander(frm, meta_env)
            image = expand(frm.image)
            if not image:
                raise self.fail(frm, f'base name ({frm.image}) should not be blank')
            platform = expand(frm.platform) if frm.platform is not None else None
            if platform:
                try:
                    Platform.parse(platform)
                except DockerfileError as exc:
                    raise self.fail(frm, f"FROM --platform: {exc.message}") from None
            if frm.name and not STAGE_NAME.match(frm.name):
                self.warnings.append(f"{self.df.filename}:{frm.line}: stage name {frm.name!r} is not valid for "
                                     "BuildKit (use lower-case letters, digits, '-', '_' and '.')")
            stages.append(Stage(index, frm.name, Base("image", image),
                                replace(frm, image=image, platform=platform), platform))
        by_name: dict[str, int] = {}
        for s in stages:
            if s.name and s.name in by_name:
                self.warnings.append(f"{self.df.filename}:{s.from_.line}: duplicate stage name {s.name!r}; "
                                     f"references mean the first one (line {stages[by_name[s.name]].from_.line})")
            elif s.name:
                by_name[s.name] = s.index
        for s in stages:
            ref = s.base.ref
            j = by_name.get(ref.lower())
            if ref.lower() == "scratch":
                s.base = Base("scratch", ref)
            elif j is not None and j != s.index:
                s.base = Base("stage", ref, j)
                s.depends_on.append(j)
            else:
                self.check_image(s, s.from_, ref, "FROM")

        for s in self._base_order(stages):
            self._plan_stage(s, groups[s.index][1], stages, by_name, meta)
        self._check_cycles(stages)

        if target is None:
            target_index = len(stages) - 1
        else:
            t = by_name.get(target.lower())
            if t is None:
                raise DockerfileError(f'target stage "{target}" could not be found', self.df.filename)
            target_index = t
        order = self._needed(stages, target_index)
        # an invalid image name in a stage the build needs stops it before any step (as
        # BuildKit's "failed to parse stage name"); elsewhere, and when only linting (the
        # build args that would make it valid may be missing), it is a warning
        needed = set(order)
        for index, ins, message in sorted(self.bad_refs, key=lambda b: b[1].line):
            if index in needed and not self.lint:
                raise self.fail(ins, message)
            self.warnings.append(f"{self.df.filename}:{ins.line}: {message}")
        unused = sorted(k for k in self.build_args
                        if k not in self.declared and k not in PROXY_ARGS and k not in PLATFORM_ARGS)
        if unused:
            self.warnings.append(f"one or more build-args {unused} were not consumed".replace("'", ""))
        return StageGraph(stages, target_index, order, meta, self.build_args,
                          _platform(self.platform, "TARGET"), _platform(self.platform, "BUILD"),
                          self.warnings)

    def _base_order(self, stages: list[Stage]) -> list[Stage]:
        """Stages ordered so that a stage base is planned before the stages built on it.

        Walked without recursion: a Dockerfile of thousands of chained stages must get a
        plan or an error, not a RecursionError (the same in the walks below)."""
        out: list[Stage] = []
        state: dict[int, int] = {}
        for s in stages:
            chain: list[Stage] = []
            cur = s
            while state.get(cur.index) != 2:
                if state.get(cur.index) == 1:
                    names = " -> ".join(c.label for c in chain[chain.index(cur):] + [cur])
                    raise self.fail(cur.from_, f"circular dependency detected on stage: "
                                               f"{cur.label} ({names})")
                state[cur.index] = 1
                chain.append(cur)
                if cur.base.kind != "stage":
                    break
                cur = stages[cur.base.stage]
            for c in reversed(chain):
                state[c.index] = 2
                out.append(c)
        return out

    def _plan_stage(self, stage: Stage, body: list[Instruction], stages: list[Stage],
                    by_name: dict[str, int], meta: dict[str, str | None]) -> None:
        env: dict[str, str] = {}
        triggers: list[Instruction] = []
        if stage.base.kind == "stage":
            base = stages[stage.base.stage]
            env.update(base.env)
            triggers = [t.trigger for t in base.onbuild]
        args: dict[str, str | None] = {}

        def scope() -> dict[str, str]:
            return {**{k: v for k, v in args.items() if v is not None}, **env}

        for replayed, ins in [*((True, t) for t in triggers), *((False, b) for b in body)]:
            if isinstance(ins, Arg):
                for decl in ins.args:
                    args[decl.name] = self.arg_value(ins, decl.name, decl.default, scope(), meta)
                expanded: Instruction = replace(ins, args=[replace(d, default=args[d.name]) for d in ins.args])
            elif isinstance(ins, Env):
                expanded = ins.expand(self.expander(ins, scope()))
                for k, v in expanded.pairs:
                    env[k] = v
            elif isinstance(ins, OnBuild):
                expanded = ins
                stage.onbuild.append(ins)
            else:
                expanded = ins.expand(self.expander(ins, scope()))
                if isinstance(expanded, Expose):
                    for port in expanded.ports:
                        self.check_port(expanded, port)
                if isinstance(expanded, Add):
                    problem = checksum_problem(expanded.checksum, expanded.sources)
                    if problem:     # an error in a stage the build needs, as a bad FROM
                        self.bad_refs.append((stage.index, expanded, problem))
            for ref in _stage_refs(expanded):
                self._add_ref(stage, expanded, ref, stages, by_name)
            (stage.triggers if replayed else stage.instructions).append(expanded)
        stage.args = {k: v for k, v in args.items() if v is not None}
        stage.env = env

    def _add_ref(self, stage: Stage, ins: Instruction, ref: str, stages: list[Stage],
                 by_name: dict[str, int]) -> None:
        if ref.isascii() and ref.isdigit():
            j = int(ref)
            if j >= len(stages):
                raise self.fail(ins, f"invalid stage index {ref}: the Dockerfile has {len(stages)} stages")
            if j == stage.index:
                raise self.fail(ins, f"stage {stage.label} cannot copy from itself")
        else:
            j = by_name.get(ref.lower())
        if j is None:
            self.check_image(stage, ins, ref, "--from")
            if ref not in stage.images:
                stage.images.append(ref)
        elif j == stage.index:
            raise self.fail(ins, f"circular dependency detected on stage: {stage.label}")
        elif j not in stage.depends_on:
            stage.depends_on.append(j)

    def _check_cycles(self, stages: list[Stage]) -> None:
        state: dict[int, int] = {}
        for s in stages:
            if state.get(s.index) == 2:
                continue
            chain = [s.index]
            state[s.index] = 1
            todo = [iter(stages[s.index].depends_on)]
            while todo:
                for j in todo[-1]:
                    if state.get(j) == 2:
                        continue
                    if state.get(j) == 1:
                        loop = chain[chain.index(j):] + [j]
                        names = " -> ".join(stages[k].label for k in loop)
                        raise self.fail(stages[j].from_, f"circular dependency detected on stage: "
                                                         f"{stages[j].label} ({names})")
                    state[j] = 1
                    chain.append(j)
                    todo.append(iter(stages[j].depends_on))
                    break
                else:
                    todo.pop()
                    state[chain.pop()] = 2

    @staticmethod
    def _needed(stages: list[Stage], target: int) -> list[int]:
        """The stages `target` needs, dependencies first (a post-order walk)."""
        order: list[int] = []
        seen = {target}
        todo = [(target, iter(sorted(stages[target].depends_on)))]
        while todo:
            i, deps = todo[-1]
            for j in deps:
                if j not in seen:
                    seen.add(j)
                    todo.append((j, iter(sorted(stages[j].depends_on))))
                    break
            else:
                todo.pop()
                order.append(i)
        return order


def _stage_refs(ins: Instruction) -> list[str]:
    if isinstance(ins, Copy) and ins.from_:
        return [ins.from_]
    if isinstance(ins, Run):
        return [m.from_ for m in ins.mounts if m.from_]
    return []


def _platform(args: Mapping[str, str], prefix: str) -> Platform:
    return Platform(args[prefix + "OS"], args[prefix + "ARCH"], args[prefix + "VARIANT"])


def plan_stages(dockerfile: Dockerfile, build_args: Mapping[str, str] | None = None,
                target: str | None = None, platform: str | Platform | None = None,
                build_platform: str | Platform | None = None, lint: bool = False) -> StageGraph:
    """Resolve ARGs, expand words, link stages and prune to `target` (default: the last stage).
    `lint` (pybuild check): an invalid image name is a warning, not an error."""
    host = Platform.host()
    build = build_platform if isinstance(build_platform, Platform) else (
        Platform.parse(build_platform) if build_platform else host)
    tgt = platform if isinstance(platform, Platform) else (Platform.parse(platform) if platform else build)
    return _Planner(dockerfile, build_args or {}, tgt, build, lint).plan(target)


def replay_onbuild(triggers: list[str], escape: str = "\\", filename: str = "ONBUILD") -> list[Instruction]:
    """Parse the ONBUILD triggers stored in a base image's config, to run them first."""
    from .document import parse_dockerfile

    if not triggers:
        return []
    text = "FROM scratch\n" + "\n".join(t.replace("\n", " ") for t in triggers) + "\n"
    df = parse_dockerfile(text, filename)
    out = df.instructions[1:]
    for ins in out:
        if isinstance(ins, (From, OnBuild)):
            raise DockerfileError(f"{ins.keyword} isn't allowed as an ONBUILD trigger", filename, ins.line - 1)
    return out
