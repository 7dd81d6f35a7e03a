"""Typed instructions: what each Dockerfile keyword means, with its source span.

`to_instruction` turns a syntax-tree Node into one of the dataclasses below
and rejects what BuildKit rejects when it reads instructions (wrong argument
counts, unknown flags, bad stage names, SHELL not in JSON form, ...).  The
dataclasses hold the words as written; `expand` gives a copy with ARG/ENV
substitution applied to exactly the fields docker expands.
"""

from __future__ import annotations

import csv
import difflib
import re
from collections.abc import Callable
from dataclasses import dataclass, field, fields, replace
from typing import ClassVar

from .errors import DockerfileError
from .flags import FlagError, FlagSpec, parse_flags, spec
from .nodes import Heredoc, Node
from .parser import parse_heredoc

Expander = Callable[[str], str]

STAGE_NAME = re.compile(r"[a-z][a-z0-9\-_.]*\Z")
_HEREDOC_SOURCE = re.compile(r"[0-9]*<<-?")


@dataclass(kw_only=True)
class Instruction:
    """Common to all instructions: where it came from and how it was written.

    Subclasses that only name their keyword are plain subclasses of a
    dataclass (no decorator): same fields, and cheaper to import.
    """

    keyword: ClassVar[str] = ""
    line: int = 0
    column: int = 1
    end_line: int = 0
    original: str = ""
    flags: list[str] = field(default_factory=list)
    heredocs: list[Heredoc] = field(default_factory=list)

    def arguments(self) -> list[str]:
        """The arguments, as words, for display and JSON output."""
        return []

    def expand(self, expand: Expander) -> Instruction:
        """A copy with variables substituted where docker substitutes them."""
        return self

    def to_json(self) -> dict:
        return {"keyword": self.keyword, "flags": list(self.flags), "arguments": self.arguments(),
                "line": self.line, "end_line": self.end_line}


@dataclass(kw_only=True)
class From(Instruction):
    keyword: ClassVar[str] = "FROM"
    image: str
    name: str | None = None          # stage name, lower-cased as BuildKit does
    platform: str | None = None

    def arguments(self) -> list[str]:
        return [self.image] + (["AS", self.name] if self.name else [])


@dataclass(kw_only=True)
class Mount:
    """One `RUN --mount=...`: type bind (default), cache, tmpfs, secret or ssh."""

    type: str = "bind"
    source: str | None = None
    target: str | None = None
    from_: str | None = None
    readonly: bool | None = None
    id: str | None = None
    sharing: str | None = None
    mode: str | None = None
    uid: str | None = None
    gid: str | None = None
    required: bool | None = None
    env: str | None = None
    size: str | None = None
    options: dict[str, str] = field(default_factory=dict)   # anything else accepted (e.g. buildah's z)
    raw: str = ""


@dataclass(kw_only=True)
class _Command(Instruction):
    command: list[str] = field(default_factory=list)
    prepend_shell: bool = False       # shell form: run through SHELL

    def arguments(self) -> list[str]:
        return list(self.command)


@dataclass(kw_only=True)
class Run(_Command):
    keyword: ClassVar[str] = "RUN"
    mounts: list[Mount] = field(default_factory=list)
    network: str | None = None
    security: str | None = None

    def expand(self, expand: Expander) -> Run:
        if not self.mounts:
            return self
        return replace(self, mounts=[_expand_mount(m, expand) for m in self.mounts])


class Cmd(_Command):
    keyword: ClassVar[str] = "CMD"


class Entrypoint(_Command):
    keyword: ClassVar[str] = "ENTRYPOINT"


class Shell(_Command):
    keyword: ClassVar[str] = "SHELL"


@dataclass(kw_only=True)
class _Transfer(Instruction):
    sources: list[str] = field(default_factory=list)
    dest: str = ""
    chown: str | None = None
    chmod: str | None = None
    link: bool = False
    exclude: list[str] = field(default_factory=list)

    def arguments(self) -> list[str]:
        return [*self.sources, self.dest]

    def heredoc_sources(self) -> list[Heredoc]:
        """Sources given inline as heredocs (`COPY <<EOF /dest`)."""
        return list(self.heredocs)

    def _expand_common(self, expand: Expander) -> dict:
        names = {h.name for h in self.heredocs}
        srcs = [s if _is_heredoc_word(s, names) else expand(s) for s in self.sources]
        return dict(sources=srcs, dest=expand(self.dest),
                    chown=expand(self.chown) if self.chown is not None else None,
                    chmod=expand(self.chmod) if self.chmod is not None else None,
                    exclude=[expand(e) for e in self.exclude])


@dataclass(kw_only=True)
class Copy(_Transfer):
    keyword: ClassVar[str] = "COPY"
    from_: str | None = None
    parents: bool = False

    def expand(self, expand: Expander) -> Copy:
        return replace(self, from_=expand(self.from_) if self.from_ is not None else None,
                       **self._expand_common(expand))


_CHECKSUM = re.compile(r"(sha256|sha384|sha512):([0-9a-f]+)\Z")
_CHECKSUM_HEX = {"sha256": 64, "sha384": 96, "sha512": 128}


def checksum_problem(checksum: str | None, sources: list[str]) -> str | None:
    """What is wrong with ADD --checksum, as BuildKit takes it: a digest, and only for
    downloads (a local file or a git repository has nothing it could be checked against).
    Checked when the Dockerfile is planned, before any step runs (BuildKit fails while
    converting the Dockerfile)."""
    if checksum is None:
        return None
    m = _CHECKSUM.match(checksum)
    if not m or len(m.group(2)) != _CHECKSUM_HEX[m.group(1)]:
        return (f"ADD --checksum={checksum}: invalid checksum digest format "
                "(expected sha256:<64 hex digits>, sha384: or sha512:)")
    local = [s for s in sources if not s.startswith(("http://", "https://"))]
    if local:
        return f"ADD --checksum: checksum can't be specified for non-HTTP(S) sources ({local[0]})"
    return None


@dataclass(kw_only=True)
class Add(_Transfer):
    keyword: ClassVar[str] = "ADD"
    keep_git_dir: bool = False
    checksum: str | None = None
    unpack: bool | None = None

    def expand(self, expand: Expander) -> Add:
        return replace(self, checksum=expand(self.checksum) if self.checksum is not None else None,
                       **self._expand_common(expand))


@dataclass(kw_only=True)
class _Pairs(Instruction):
    pairs: list[tuple[str, str]] = field(default_factory=list)

    def arguments(self) -> list[str]:
        return [f"{k}={v}" for k, v in self.pairs]

    def expand(self, expand: Expander) -> _Pairs:
        return replace(self, pairs=[(expand(k), expand(v)) for k, v in self.pairs])


class Env(_Pairs):
    keyword: ClassVar[str] = "ENV"


class Label(_Pairs):
    keyword: ClassVar[str] = "LABEL"


@dataclass(kw_only=True)
class ArgDecl:
    name: str
    default: str | None = None


@dataclass(kw_only=True)
class Arg(Instruction):
    keyword: ClassVar[str] = "ARG"
    args: list[ArgDecl] = field(default_factory=list)

    def arguments(self) -> list[str]:
        return [a.name if a.default is None else f"{a.name}={a.default}" for a in self.args]


@dataclass(kw_only=True)
class Expose(Instruction):
    keyword: ClassVar[str] = "EXPOSE"
    ports: list[str] = field(default_factory=list)

    def arguments(self) -> list[str]:
        return list(self.ports)

    def expand(self, expand: Expander) -> Expose:
        ports: list[str] = []
        for p in self.ports:
            ports += expand(p).split()
        return replace(self, ports=ports)


@dataclass(kw_only=True)
class Volume(Instruction):
    keyword: ClassVar[str] = "VOLUME"
    paths: list[str] = field(default_factory=list)

    def arguments(self) -> list[str]:
        return list(self.paths)

    def expand(self, expand: Expander) -> Volume:
        return replace(self, paths=[expand(p) for p in self.paths])


@dataclass(kw_only=True)
class _Single(Instruction):
    value: str = ""
    expands: ClassVar[bool] = True

    def arguments(self) -> list[str]:
        return [self.value]

    def expand(self, expand: Expander) -> _Single:
        return replace(self, value=expand(self.value)) if self.expands else self


class User(_Single):
    keyword: ClassVar[str] = "USER"


class Workdir(_Single):
    keyword: ClassVar[str] = "WORKDIR"


class StopSignal(_Single):
    keyword: ClassVar[str] = "STOPSIGNAL"


class Maintainer(_Single):
    keyword: ClassVar[str] = "MAINTAINER"
    expands: ClassVar[bool] = False


@dataclass(kw_only=True)
class Healthcheck(Instruction):
    keyword: ClassVar[str] = "HEALTHCHECK"
    test: list[str] = field(default_factory=list)    # ["NONE"], ["CMD", ...] or ["CMD-SHELL", cmd]
    interval: float | None = None                   # seconds
    timeout: float | None = None
    start_period: float | None = None
    start_interval: float | None = None
    retries: int | None = None

    def arguments(self) -> list[str]:
        return list(self.test)


@dataclass(kw_only=True)
class OnBuild(Instruction):
    keyword: ClassVar[str] = "ONBUILD"
    trigger: Instruction
    expression: str = ""            # the trigger as written, stored in the image config

    def arguments(self) -> list[str]:
        return [self.expression]

    def to_json(self) -> dict:
        doc = super().to_json()
        doc["trigger"] = self.trigger.to_json()
        return doc


KEYWORDS = ("ADD", "ARG", "CMD", "COPY", "ENTRYPOINT", "ENV", "EXPOSE", "FROM", "HEALTHCHECK",
            "LABEL", "MAINTAINER", "ONBUILD", "RUN", "SHELL", "STOPSIGNAL", "USER", "VOLUME",
            "WORKDIR")

_FLAGS: dict[str, FlagSpec] = {
    "FROM": spec(strings="platform"),
    "RUN": spec(strings="network security", lists="mount"),
    "COPY": spec(strings="from chown chmod", lists="exclude", bools="link parents"),
    "ADD": spec(strings="chown chmod checksum", lists="exclude", bools="link keep-git-dir unpack parents"),
    "HEALTHCHECK": spec(strings="interval timeout start-period start-interval retries"),
}
_NETWORKS = ("default", "none", "host")
_SECURITY = ("sandbox", "insecure")
_MOUNT_TYPES = ("bind", "cache", "tmpfs", "secret", "ssh")
_MOUNT_KEYS = {
    "type": "type", "from": "from_", "source": "source", "src": "source", "target": "target",
    "dst": "target", "destination": "target", "id": "id", "sharing": "sharing", "mode": "mode",
    "uid": "uid", "gid": "gid", "env": "env", "size": "size",
}
_MOUNT_BOOLS = {"readonly": "readonly", "ro": "readonly", "readwrite": "readwrite", "rw": "readwrite",
                "required": "required"}
_MOUNT_EXTRA = ("bind-propagation", "bind-nonrecursive", "z", "Z", "relabel", "U", "chown")


class _Located(Exception):
    def __init__(self, message: str, needle: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.needle = needle


def to_instruction(node: Node, escape: str = "\\", filename: str = "Dockerfile",
                   lines: list[str] | None = None) -> Instruction:
    """Node -> typed Instruction; raises DockerfileError pointing at the problem.

    `escape` is accepted for callers that have it; words were already split
    by the parser, so the instruction layer does not need it.
    """
    try:
        return _build(node)
    except _Located as exc:
        column = node.column
        line_no = node.start_line
        src = lines[line_no - 1] if lines and 0 < line_no <= len(lines) else None
        if exc.needle and src is not None and exc.needle in src:
            column = src.index(exc.needle) + 1
        raise DockerfileError(exc.message, filename, line_no, column, src) from None


def _build(node: Node) -> Instruction:
    kw = node.name.upper()
    base = dict(line=node.start_line, column=node.column, end_line=node.end_line,
                original=node.original, flags=list(node.flags), heredocs=list(node.heredocs))
    if kw not in KEYWORDS:
        hint = difflib.get_close_matches(kw, KEYWORDS, n=1, cutoff=0.6)
        advice = f' (did you mean "{hint[0]}"?)' if hint else ""
        raise _Located(f'unknown instruction "{node.keyword}"{advice}')
    try:
        opts = parse_flags(node.flags, _FLAGS.get(kw, FlagSpec()), kw)
    except FlagError as exc:
        bad = next((f for f in node.flags if str(exc).find(f.split("=")[0][2:]) >= 0), None)
        raise _Located(str(exc), bad.split("=")[0] if bad else None) from None
    return _BUILDERS[kw](node, node.values, opts, base)


def _need(cond: bool, message: str, needle: str | None = None) -> None:
    if not cond:
        raise _Located(message, needle)


def _from(node, args, opts, base):
    _need(len(args) in (1, 3), "FROM requires either one or three arguments")
    name = None
    if len(args) == 3:
        _need(args[1].lower() == "as", "FROM requires either one or three arguments", args[1])
        name = args[2].lower()
        _need(bool(name) and not any(c.isspace() for c in name), f'invalid name for build stage: "{args[2]}"',
              args[2])
    return From(image=args[0], name=name, platform=opts.get("platform"), **base)


def _command(cls):
    def build(node, args, opts, base):
        return cls(command=list(args), prepend_shell=not node.json, **base)
    return build


def _run(node, args, opts, base):
    _need(bool(args) or bool(node.heredocs), "RUN requires at least one argument")
    network = opts.get("network")
    _need(network in (None, *_NETWORKS), f"network mode {network!r} not supported", "--network")
    security = opts.get("security")
    _need(security in (None, *_SECURITY), f"security mode {security!r} not supported", "--security")
    mounts = [_parse_mount(m) for m in opts.get("mount", [])]
    return Run(command=list(args), prepend_shell=not node.json, mounts=mounts, network=network,
               security=security, **base)


def _shell(node, args, opts, base):
    _need(node.json, "SHELL requires the arguments to be in JSON form")
    _need(bool(args), "SHELL requires at least one argument")
    return Shell(command=list(args), **base)


def _transfer(cls):
    def build(node, args, opts, base):
        if len(args) < 2:
            _need(False, f"{cls.keyword} requires at least two arguments, but only one was provided. "
                         "Destination could not be determined." if args else
                  f"{cls.keyword} requires at least two arguments")
        extra = dict(chown=opts.get("chown"), chmod=opts.get("chmod"), link=bool(opts.get("link")),
                     exclude=list(opts.get("exclude", [])))
        if cls is Copy:
            extra.update(from_=opts.get("from"), parents=bool(opts.get("parents")))
        else:
            extra.update(keep_git_dir=bool(opts.get("keep-git-dir")), checksum=opts.get("checksum"),
                         unpack=opts.get("unpack"))
        return cls(sources=list(args[:-1]), dest=args[-1], **extra, **base)
    return build


def _pairs(cls):
    def build(node, args, opts, base):
        _need(bool(args), f"{cls.keyword} requires at least one argument")
        pairs = []
        for i in range(0, len(args) - 2, 3):
            key = args[i]
            _need(key != "", f"{cls.keyword} names can not be blank")
            pairs.append((key, args[i + 1]))
        return cls(pairs=pairs, **base)
    return build


def _arg(node, args, opts, base):
    _need(bool(args), "ARG requires at least one argument")
    decls = []
    for word in args:
        name, eq, default = word.partition("=")
        _need(name != "", "ARG names can not be blank")
        decls.append(ArgDecl(name=name, default=default if eq else None))
    return Arg(args=decls, **base)


def _expose(node, args, opts, base):
    _need(bool(args), "EXPOSE requires at least one argument")
    return Expose(ports=list(args), **base)


def _volume(node, args, opts, base):
    _need(bool(args), "VOLUME requires at least one argument")
    for v in args:
        _need(v.strip() != "", "VOLUME specified can not be an empty string")
    return Volume(paths=list(args), **base)


def _single(cls):
    def build(node, args, opts, base):
        _need(len(args) == 1, f"{cls.keyword} requires exactly one argument")
        return cls(value=args[0], **base)
    return build


def _healthcheck(node, args, opts, base):
    _need(bool(args), "HEALTHCHECK requires at least one argument")
    typ = args[0].upper()
    if typ == "NONE":
        _need(len(args) == 1 and not node.flags, "HEALTHCHECK NONE takes no arguments")
        return Healthcheck(test=["NONE"], **base)
    _need(typ == "CMD", f'Unknown type "{args[0]}" in HEALTHCHECK (try CMD)', args[0])
    cmd = args[1:]
    _need(bool(cmd), "Missing command after HEALTHCHECK CMD")
    test = ["CMD", *cmd] if node.json else ["CMD-SHELL", cmd[0]]
    durations = {}
    for name in ("interval", "timeout", "start-period", "start-interval"):
        if name in opts:
            durations[name.replace("-", "_")] = _duration(name, str(opts[name]))
    retries = None
    if "retries" in opts:
        try:
            retries = int(str(opts["retries"]))
        except ValueError:
            raise _Located(f'invalid value for --retries: "{opts["retries"]}"', "--retries") from None
        _need(retries >= 0, f"--retries cannot be negative ({retries})", "--retries")
        # BuildKit parses it as an int32; a bigger one would not fit docker's config
        _need(retries < 1 << 31, f'invalid value for --retries: "{opts["retries"]}" is out of range',
              "--retries")
    return Healthcheck(test=test, retries=retries, **durations, **base)


def _duration(name: str, text: str) -> float:
    from layerstore.humanize import parse_go_duration

    try:
        seconds = parse_go_duration(text)
    except ValueError as e:          # Go's time.Duration (int64 nanoseconds) overflows too
        why = " is out of range" if "range" in str(e) else ""
        raise _Located(f'invalid duration for --{name}: "{text}"{why}', f"--{name}") from None
    if 0 < seconds < 0.001:
        raise _Located(f'Interval "{name}" cannot be less than 1ms', f"--{name}")
    return seconds


def _onbuild(node, args, opts, base):
    sub = node.sub
    _need(sub is not None, "ONBUILD requires at least one argument")
    kw = sub.name.upper()
    _need(kw != "ONBUILD", "Chaining ONBUILD via `ONBUILD ONBUILD` isn't allowed")
    _need(kw not in ("FROM", "MAINTAINER"), f"{kw} isn't allowed as an ONBUILD trigger")
    sub_node = replace(sub, start_line=node.start_line, end_line=node.end_line, column=node.column,
                       original=sub.original, heredocs=list(node.heredocs))
    trigger = _build(sub_node)
    expression = node.original.split(None, 1)[1] if len(node.original.split(None, 1)) > 1 else ""
    return OnBuild(trigger=trigger, expression=expression.strip(), **base)


_BUILDERS = {
    "FROM": _from, "RUN": _run, "CMD": _command(Cmd), "ENTRYPOINT": _command(Entrypoint),
    "SHELL": _shell, "COPY": _transfer(Copy), "ADD": _transfer(Add), "ENV": _pairs(Env),
    "LABEL": _pairs(Label), "ARG": _arg, "EXPOSE": _expose, "VOLUME": _volume,
    "USER": _single(User), "WORKDIR": _single(Workdir), "STOPSIGNAL": _single(StopSignal),
    "MAINTAINER": _single(Maintainer), "HEALTHCHECK": _healthcheck, "ONBUILD": _onbuild,
}


def _parse_mount(value: str) -> Mount:
    try:
        fields_ = next(csv.reader([value]))
    except (csv.Error, StopIteration):
        raise _Located(f"invalid mount {value!r}", "--mount") from None
    mount = Mount(raw=value)
    seen_type = False
    for item in fields_:
        key, eq, val = item.partition("=")
        key_l = key.strip().lower()
        if key_l in _MOUNT_BOOLS:
            flag = True if not eq else val.strip().lower() in ("true", "1", "")
            if eq and val.strip().lower() not in ("true", "false", "1", "0", ""):
                raise _Located(f"invalid value for {key}: {val}", "--mount")
            if _MOUNT_BOOLS[key_l] == "readwrite":
                mount.readonly = not flag
            else:
                setattr(mount, _MOUNT_BOOLS[key_l], flag)
        elif key_l in _MOUNT_KEYS and eq:
            setattr(mount, _MOUNT_KEYS[key_l], val)
            seen_type |= key_l == "type"
        elif key.strip() in _MOUNT_EXTRA:
            mount.options[key.strip()] = val
        else:
            raise _Located(f"unexpected key '{key}' in '{item}'", "--mount")
    _need(mount.type in _MOUNT_TYPES, f'unsupported mount type "{mount.type}"', "--mount")
    if mount.sharing is not None:
        _need(mount.sharing in ("shared", "private", "locked"),
              f'unsupported sharing value "{mount.sharing}"', "--mount")
    return mount


def _expand_mount(mount: Mount, expand: Expander) -> Mount:
    changes = {}
    for f in fields(mount):
        value = getattr(mount, f.name)
        if isinstance(value, str) and f.name not in ("raw", "type"):
            changes[f.name] = expand(value)
    return replace(mount, **changes)


def _is_heredoc_word(word: str, names: set[str]) -> bool:
    """A COPY/ADD source that names one of the instruction's heredocs (`<<EOF`)."""
    if not names or not _HEREDOC_SOURCE.match(word):
        return False
    try:
        doc = parse_heredoc(word)
    except DockerfileError:
        return False
    return doc is not None and doc.name in names
