"""Docker image references, parsed and normalized the way docker does.

`busybox` -> `docker.io/library/busybox:latest`; `localhost:5000/a/b:tag`;
`name@sha256:...`; `name:tag@sha256:...`. The first path component is a
registry when it contains `.` or `:` or is `localhost`.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass

from layerstore.errors import InvalidReference

DEFAULT_DOMAIN = "docker.io"
LEGACY_DOMAIN = "index.docker.io"
OFFICIAL_PREFIX = "library/"
DEFAULT_TAG = "latest"

_COMPONENT = re.compile(r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*")
_DOMAIN_COMPONENT = r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
_DOMAIN = re.compile(
    rf"(?:{_DOMAIN_COMPONENT}(?:\.{_DOMAIN_COMPONENT})*|\[[0-9a-fA-F:.]+\])(?::[0-9]+)?")
# re.ASCII: Go's \w (docker's grammar) is [0-9A-Za-z_]; Python's would let `busybox:täg`
# or Arabic digits through into URLs, ref names and file names
_TAG = re.compile(r"[\w][\w.-]{0,127}", re.ASCII)
_DIGEST = re.compile(r"[A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*:[0-9a-fA-F]{32,}")
_MAX_NAME = 255
_SHOWN = 80        # of a rejected reference quoted back in a message


def _shown(text: str) -> str:
    """A rejected reference, quoted: cut short, control characters as '?'."""
    cut = text[:_SHOWN] + ("..." if len(text) > _SHOWN else "")
    return repr("".join(ch if ch.isprintable() else "?" for ch in cut))


def _domain_problem(domain: str) -> str | None:
    """Why a registry host:port that matches the grammar still cannot be dialled."""
    host, port = domain, None
    if domain.startswith("["):
        host, _, rest = domain[1:].partition("]")
        port = rest[1:] if rest.startswith(":") else None
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            return f"bad IPv6 address {host!r}"
    elif ":" in domain:
        host, port = domain.rsplit(":", 1)
    if port is not None and not 0 < int(port) <= 65535:
        return f"port {port} out of range"
    return None


@dataclass(frozen=True)
class Reference:
    domain: str
    path: str
    tag: str | None = None
    digest: str | None = None

    @property
    def repository(self) -> str:
        """`docker.io/library/busybox`: the name without tag or digest."""
        return f"{self.domain}/{self.path}"

    @property
    def familiar_repository(self) -> str:
        """`busybox` for Docker Hub official images, as docker prints names."""
        if self.domain == DEFAULT_DOMAIN:
            path = self.path
            return path[len(OFFICIAL_PREFIX):] if path.startswith(OFFICIAL_PREFIX) else path
        return self.repository

    @property
    def familiar(self) -> str:
        return self._with_suffix(self.familiar_repository)

    def _with_suffix(self, name: str) -> str:
        if self.tag:
            name += f":{self.tag}"
        if self.digest:
            name += f"@{self.digest}"
        return name

    def with_tag(self, tag: str) -> "Reference":
        return Reference(self.domain, self.path, tag, None)

    def with_digest(self, digest: str) -> "Reference":
        return Reference(self.domain, self.path, None, digest)

    def __str__(self) -> str:
        return self._with_suffix(self.repository)


def check_domain(text: str) -> str:
    """`text` when it is a registry `host[:port]` a reference could name (so also a
    safe single file name: no '/', never '.' or '..'); InvalidReference otherwise."""
    if not isinstance(text, str) or not _DOMAIN.fullmatch(text):
        raise InvalidReference(f"invalid registry name {_shown(str(text))}: expected "
                               "host[:port]")
    problem = _domain_problem(text)
    if problem:
        raise InvalidReference(f"invalid registry name {_shown(text)}: {problem}")
    return text


def _split_domain(name: str) -> tuple[str, str]:
    first, sep, rest = name.partition("/")
    if sep and ("." in first or ":" in first or first == "localhost"):
        domain = first
        path = rest
    else:
        domain, path = DEFAULT_DOMAIN, name
    if domain == LEGACY_DOMAIN:
        domain = DEFAULT_DOMAIN
    if domain == DEFAULT_DOMAIN and "/" not in path:
        path = OFFICIAL_PREFIX + path
    return domain, path


def parse(text: str, default_tag: bool = True) -> Reference:
    """Parse and normalize a reference; tag `latest` is added when there is
    neither tag nor digest (unless default_tag is False)."""
    original = _shown(text)
    if not text:
        raise InvalidReference("invalid reference format: empty reference")
    if text != text.strip() or any(c.isspace() for c in text):
        raise InvalidReference(f"invalid reference format: {original} contains whitespace")
    name, digest = text, None
    if "@" in text:
        name, _, digest = text.partition("@")
        if not _DIGEST.fullmatch(digest):
            raise InvalidReference(f"invalid reference format: {original}: bad digest "
                                   f"{_shown(digest)}")
        algo, _, hexpart = digest.partition(":")
        if algo != "sha256":
            # the store names blobs by sha256 only: a sha512 reference could never be
            # verified against what it names, nor be found again
            raise InvalidReference(f"{original}: unsupported digest algorithm {algo[:20]!r}: "
                                   "only sha256 is supported")
        if not re.fullmatch(r"[0-9a-f]{64}", hexpart):
            raise InvalidReference(f"invalid reference format: {original}: "
                                   "sha256 digest must be 64 lowercase hex digits")
    tag = None
    slash = name.rfind("/")
    colon = name.rfind(":")
    if colon > slash:
        name, tag = name[:colon], name[colon + 1:]
        if not _TAG.fullmatch(tag):
            raise InvalidReference(f"invalid reference format: {original}: bad tag {_shown(tag)}")
    if not name:
        raise InvalidReference(f"invalid reference format: {original}: empty name")
    first, sep, _ = name.partition("/")
    explicit_domain = sep and ("." in first or ":" in first or first == "localhost")
    if explicit_domain and not _DOMAIN.fullmatch(first):
        raise InvalidReference(f"invalid reference format: {original}: bad registry "
                               f"{_shown(first)}")
    problem = _domain_problem(first) if explicit_domain else None
    if problem:
        raise InvalidReference(f"invalid reference format: {original}: bad registry "
                               f"{_shown(first)}: {problem}")
    domain, path = _split_domain(name)
    for component in path.split("/"):
        if not _COMPONENT.fullmatch(component):
            if component.lower() != component and _COMPONENT.fullmatch(component.lower()):
                raise InvalidReference(f"invalid reference format: repository name "
                                       f"{original} must be lowercase")
            raise InvalidReference(f"invalid reference format: {original}: "
                                   f"bad path component {_shown(component)}")
    if len(f"{domain}/{path}") > _MAX_NAME:
        raise InvalidReference(f"invalid reference format: {original}: name longer than "
                               f"{_MAX_NAME} characters")
    if tag is None and digest is None and default_tag:
        tag = DEFAULT_TAG
    return Reference(domain, path, tag, digest)


def normalize(text: str) -> str:
    return str(parse(text))
