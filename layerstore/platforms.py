"""The host's platform in OCI terms, and matching platforms in an index."""

from __future__ import annotations

import os

from layerstore.errors import PybuildError
from layerstore.model import Platform

_ARCH = {"x86_64": ("amd64", None), "amd64": ("amd64", None), "aarch64": ("arm64", "v8"),
         "arm64": ("arm64", "v8"), "armv7l": ("arm", "v7"), "armv6l": ("arm", "v6"),
         "i686": ("386", None), "i386": ("386", None), "ppc64le": ("ppc64le", None),
         "s390x": ("s390x", None), "riscv64": ("riscv64", None)}


def host_platform() -> Platform:
    machine = os.uname().machine
    arch, variant = _ARCH.get(machine, (machine, None))
    return Platform(os="linux", architecture=arch, variant=variant)


def parse_platform(text: str) -> Platform:
    """`linux/amd64`, `linux/arm/v7`, `linux/arm64/v8` -> Platform."""
    parts = text.strip().lower().split("/")
    if len(parts) not in (2, 3) or not all(parts):
        raise PybuildError(f"invalid platform {text!r}: expected os/arch[/variant]")
    return Platform(os=parts[0], architecture=parts[1],
                    variant=parts[2] if len(parts) == 3 else None)


def matches(want: Platform, have: Platform | None) -> bool:
    if have is None:
        return False
    if want.os != have.os or want.architecture != have.architecture:
        return False
    if want.variant and have.variant and want.variant != have.variant:
        # arm64's v8 is implied when a side leaves it out
        return False
    return True
