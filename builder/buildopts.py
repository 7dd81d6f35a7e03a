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
    network: str = "default"              # default (private namespace) | none | host
    allow: list[str] = field(default_factory=list)   # entitlements granted (network.host)
    platform: str | None = None
    labels: dict[str, str] = field(default_factory=dict)
    annotations: dict[str, str] = field(default_factory=dict)
    secrets: dict[str, Secret] = field(default_factory=dict)
    build_contexts: dict[str, Path] = field(default_factory=dict)
    compression: str = "gzip"
    source_date_epoch: int | None = None
    squash: bool = False
    jobs: int = 4
    # remote build cache (builder/remotecache): where records go and come from, and the
    # registry client's Options for them (None: the defaults)
    cache_to: list = field(default_factory=list)      # [remotecache.spec.CacheSpec]
    cache_from: list = field(default_factory=list)    # [remotecache.spec.CacheSpec]
    registry_options: object = None
    # every RUN step's sandbox, as docker build's --add-host and --shm-size (in the keys)
    add_hosts: list[tuple[str, str]] = field(default_factory=list)
    shm_size: int | None = None
    ulimits: list = field(default_factory=list)       # [runner.options.Ulimit]: RUN steps'
    no_cache_filter: list[str] = field(default_factory=list)   # stages never taken from cache


ENTITLEMENTS = ("network.host",)
NETWORK_HOST = "network.host"


class EntitlementError(PybuildError):
    """A build asked for a privilege it was not granted with --allow (as BuildKit's)."""


def parse_allow(items: Iterable[str]) -> list[str]:
    """`--allow` values (repeatable, comma-separated as buildx takes them), checked."""
    out: list[str] = []
    for item in items:
        for word in item.split(","):
            word = word.strip()
            if word == "security.insecure":
                raise EntitlementError("--allow security.insecure: not supported: pybuild has "
                                       "no insecure mode, every RUN step runs sandboxed")
            if word not in ENTITLEMENTS:
                raise EntitlementError(f"--allow {word!r}: invalid entitlement (pybuild grants "
                                       f"{', '.join(ENTITLEMENTS)})")
            if word not in out:
                out.append(word)
    return out


def check_network(mode: str, allow: Iterable[str], what: str) -> None:
    """Host networking is an entitlement, asked for twice: the mode and `--allow network.host`.

    A RUN step in the host's network namespace keeps CAP_NET_RAW there: it can sniff the
    host's loopback traffic and reach every service bound to 127.0.0.1."""
    if mode == "host" and NETWORK_HOST not in allow:
        raise EntitlementError(f"{NETWORK_HOST} is not allowed: {what} runs in the host's network "
                               f"namespace; pass --allow {NETWORK_HOST} to grant it")


def check_security(mode: str | None, what: str) -> None:
    """`RUN --security=insecure` asks for a step outside the sandbox (all capabilities,
    no seccomp, devices): BuildKit's `security.insecure` entitlement. pybuild never
    grants it, so such a step is refused before the build starts, as BuildKit refuses it
    without `--allow security.insecure`, instead of running sandboxed as if asked for
    nothing."""
    if mode == "insecure":
        raise EntitlementError(f"security.insecure is not allowed: {what} asks to run "
                               "outside the sandbox, and pybuild runs every RUN step sandboxed")


def parse_ulimits(items: Iterable[str]) -> list:
    """`--ulimit NAME=SOFT[:HARD]`, as `run --ulimit` reads it (one parser); a name given
    twice: the last wins, as docker's."""
    from builder.runner.options import parse_ulimit

    out = {}
    for item in items:
        u = parse_ulimit(item)
        out[u.name] = u
    return list(out.values())


def parse_no_cache_filter(items: Iterable[str]) -> list[str]:
    """`--no-cache-filter a,b` (repeatable): stage names or indexes, lowercased as stage
    names are; checked against the Dockerfile's stages by the solver."""
    out: list[str] = []
    for item in items:
        for word in item.split(","):
            word = word.strip().lower()
            if not word:
                raise PybuildError(f"--no-cache-filter {item!r}: empty stage name")
            if word not in out:
                out.append(word)
    return out


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


MAX_DOCKERFILE = 8 << 20     # far beyond any real one; the parser holds it in memory


def read_dockerfile(context: Path | None, path: Path) -> bytes:
    """The Dockerfile's bytes, bounded. One inside the build context is read through
    the path resolver from the context's root: a `Dockerfile -> /root/.ssh/id_rsa`
    planted in an untrusted context must not put host files into parse errors and
    build logs. One named by -f outside the context is the user's own choice."""
    import stat

    from layerstore import resolver

    flags = os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY
    try:
        rel = None
        if context is not None:
            base = os.path.abspath(context)
            full = os.path.abspath(path)
            if os.path.commonpath([base, full]) == base:
                rel = os.path.relpath(full, base)
        if rel is not None:
            with resolver.rooted(context) as root:
                fd = resolver.resolve(root, rel, policy=resolver.BENEATH, flags=flags)
        else:
            fd = os.open(path, flags)
    except resolver.PathEscape:
        raise PybuildError(f"{path}: the Dockerfile is a symbolic link that leads out of the "
                           "build context") from None
    except FileNotFoundError:
        raise PybuildError(f"{path}: cannot read the Dockerfile: no such file") from None
    except OSError as exc:
        raise PybuildError(f"{path}: cannot read the Dockerfile: {exc.strerror}") from None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise PybuildError(f"{path}: the Dockerfile is not a regular file")
    with open(fd, "rb") as f:
        data = f.read(MAX_DOCKERFILE + 1)
    if len(data) > MAX_DOCKERFILE:
        raise PybuildError(f"{path}: the Dockerfile is larger than {MAX_DOCKERFILE >> 20} MiB")
    return data
