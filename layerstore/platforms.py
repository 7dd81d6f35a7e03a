"""The host's platform in OCI terms, and matching platforms in an index."""

from __future__ import annotations

import os
import re

from layerstore.errors import PybuildError
from layerstore.model import Platform

# containerd's platforms.Parse/Normalize, which docker and BuildKit use: the operating
# systems and architectures Go knows, the spellings uname and Debian use, and the
# default variants (arm is v7, arm64's v8 and amd64's v1 are implied and dropped)
KNOWN_OS = frozenset({"aix", "android", "darwin", "dragonfly", "freebsd", "hurd", "illumos",
                      "ios", "js", "linux", "nacl", "netbsd", "openbsd", "plan9", "solaris",
                      "wasip1", "windows", "zos"})
KNOWN_ARCH = frozenset({"386", "amd64", "amd64p32", "arm", "armbe", "arm64", "arm64be",
                        "loong64", "mips", "mipsle", "mips64", "mips64le", "mips64p32",
                        "mips64p32le", "ppc", "ppc64", "ppc64le", "riscv", "riscv64", "s390",
                        "s390x", "sparc", "sparc64", "wasm"})
_ARCH_SPELLINGS = {"i386": "386", "i686": "386", "x86_64": "amd64", "x86-64": "amd64",
                   "aarch64": "arm64", "armhf": "arm", "armel": "arm", "armv7l": "arm",
                   "armv6l": "arm"}
_IMPLIED_VARIANT = {"armhf": "v7", "armel": "v6", "armv7l": "v7", "armv6l": "v6"}
_PART = re.compile(r"[a-z0-9_.-]{1,32}\Z")


def normalize(os_name: str, arch: str, variant: str | None) -> Platform:
    """containerd's Normalize: one spelling per platform, so that `linux/aarch64`,
    `linux/arm64` and `linux/arm64/v8` are one cache key, one memo key, one index entry."""
    os_name = os_name.lower()
    raw = arch.lower()
    variant = (variant or _IMPLIED_VARIANT.get(raw, "")).lower()
    arch = _ARCH_SPELLINGS.get(raw, raw)
    if arch == "amd64" and variant == "v1":
        variant = ""
    elif arch == "arm64" and variant in ("8", "v8", "v8.0"):
        variant = ""
    elif arch == "arm64" and variant in ("9", "9.0", "v9.0"):
        variant = "v9"
    elif arch == "arm64" and variant in ("8.1", "8.2", "8.3", "8.4", "8.5", "8.6", "8.7", "8.8",
                                         "8.9"):
        variant = "v" + variant
    elif arch == "arm":
        variant = {"": "v7", "5": "v5", "6": "v6", "7": "v7", "8": "v8"}.get(variant, variant)
    return Platform(os=os_name, architecture=arch, variant=variant or None)


def host_platform() -> Platform:
    machine = os.uname().machine
    return normalize("linux", machine, None)


def parse_platform(text: str) -> Platform:
    """`linux/amd64`, `linux/arm/v7`, `arm64` (this host's OS) -> a normalized Platform;
    a clear error for anything containerd's parser would refuse, and for an architecture
    or OS Go does not know (an image for `foo/bar` could never run anywhere)."""
    shown = text.strip()[:80]
    parts = text.strip().lower().split("/")
    if not 1 <= len(parts) <= 3 or not all(_PART.match(p) for p in parts):
        raise PybuildError(f"invalid platform {shown!r}: expected os/arch[/variant] "
                           "(linux/amd64, linux/arm64, linux/arm/v7)")
    if len(parts) == 1:
        # containerd: a lone word is an OS (with this host's arch) or an architecture
        word = parts[0]
        if word in KNOWN_OS:
            return normalize(word, host_platform().architecture, host_platform().variant)
        parts = ["linux", word]
    os_name, arch = parts[0], parts[1]
    if os_name not in KNOWN_OS:
        raise PybuildError(f"invalid platform {shown!r}: unknown operating system {os_name!r} "
                           "(expected os/arch[/variant], e.g. linux/arm64)")
    if _ARCH_SPELLINGS.get(arch, arch) not in KNOWN_ARCH:
        raise PybuildError(f"invalid platform {shown!r}: unknown architecture {arch!r} "
                           "(amd64, arm64, arm/v7, 386, ppc64le, riscv64, s390x, ...)")
    return normalize(os_name, arch, parts[2] if len(parts) == 3 else None)


def same(a: Platform, b: Platform) -> bool:
    """The same platform once both are normalized (an image's config may say arm64/v8)."""
    na = normalize(a.os, a.architecture, a.variant)
    nb = normalize(b.os, b.architecture, b.variant)
    return (na.os, na.architecture, na.variant) == (nb.os, nb.architecture, nb.variant)


def matches(want: Platform, have: Platform | None) -> bool:
    if have is None:
        return False
    w = normalize(want.os, want.architecture, want.variant)
    h = normalize(have.os, have.architecture, have.variant)
    if w.os != h.os or w.architecture != h.architecture:
        return False
    # a side that leaves the variant out takes any (an index entry of arm64 without one)
    return not (w.variant and h.variant and w.variant != h.variant)


def platform_option(text: str, what: str = "--platform") -> str:
    """A command line's --platform, checked and normalized before any work (the one
    spelling reaches the memo key, the cache keys and TARGETPLATFORM). pybuild's sandbox
    runs Linux images only."""
    try:
        p = parse_platform(text)
    except PybuildError as exc:
        raise PybuildError(f"{what}: {exc}") from None
    if p.os != "linux":
        raise PybuildError(f"{what} {text}: pybuild builds and runs linux images only")
    return str(p)


def of_config(config) -> str | None:
    """The normalized platform an image config says it is for (None when it does not say)."""
    if not getattr(config, "architecture", None):
        return None
    return str(normalize(config.os or "linux", config.architecture, config.variant))


def platform_list(text: str, what: str = "--platform") -> list[str]:
    """`--platform linux/amd64,linux/arm64`: each checked and normalized, in the order
    given, a platform named twice (`linux/arm64,linux/aarch64`) built once."""
    out: list[str] = []
    for part in text.split(","):
        if not part.strip():
            raise PybuildError(f"{what} {text!r}: an empty platform in the list")
        p = platform_option(part.strip(), what)
        if p not in out:
            out.append(p)
    if len(out) > 32:
        raise PybuildError(f"{what}: {len(out)} platforms; at most 32 in one build")
    return out
