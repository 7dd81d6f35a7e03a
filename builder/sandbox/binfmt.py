"""Foreign-architecture programs (RUN steps and containers of an arm64 image on an amd64
host): qemu-user-static, registered with the kernel's binfmt_misc.

The handler must carry the F (fix-binary) flag: the kernel then opens the emulator when
the handler is registered, in the host's mount namespace, so that it works inside the
sandbox's private root where /usr/bin/qemu-*-static does not exist (and where a file of
that name would be the image's, not ours). Without F the kernel would look the emulator
up by path in the container's root: a hostile image could plant its own "emulator" there
and have the kernel run it for every foreign binary. So a handler without F is refused.

pybuild registers the handler it needs when none is there, from the binfmt.d file
Debian's qemu-user-static ships (/usr/lib/binfmt.d/qemu-<arch>.conf: magic and mask of
that architecture's ELF header), adding F if the file lacks it.
"""

from __future__ import annotations

import errno
import os
from dataclasses import dataclass
from pathlib import Path

from layerstore.errors import PybuildError
from layerstore.model import Platform
from layerstore.platforms import host_platform, normalize, parse_platform

BINFMT_DIR = Path("/proc/sys/fs/binfmt_misc")
CONF_DIRS = (Path("/etc/binfmt.d"), Path("/run/binfmt.d"), Path("/usr/lib/binfmt.d"))
# OCI architecture -> qemu's name for it (qemu-<name>-static, binfmt.d/qemu-<name>.conf)
QEMU_NAMES = {"arm64": "aarch64", "arm": "arm", "386": "i386", "amd64": "x86_64",
              "ppc64le": "ppc64le", "s390x": "s390x", "riscv64": "riscv64",
              "mips64le": "mips64el", "loong64": "loongarch64"}
# architectures an x86_64 (or arm64) kernel runs without an emulator
_NATIVE_TOO = {"amd64": {"386"}, "arm64": set()}
_MAX_ENTRY = 4096     # a binfmt_misc entry or binfmt.d line is a few hundred bytes


class EmulationError(PybuildError):
    """A foreign-architecture image cannot run here, and what to do about it."""


@dataclass(frozen=True)
class Handler:
    name: str
    enabled: bool
    interpreter: str
    flags: str
    magic: str          # hex, as the kernel prints it


def needs_emulation(platform: Platform | str | None) -> bool:
    if platform is None:
        return False
    p = parse_platform(platform) if isinstance(platform, str) else normalize(
        platform.os, platform.architecture, platform.variant)
    host = host_platform()
    return p.architecture != host.architecture and \
        p.architecture not in _NATIVE_TOO.get(host.architecture, set())


def _read(path: Path) -> str:
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        return os.read(fd, _MAX_ENTRY).decode("utf-8", "replace")
    finally:
        os.close(fd)


def _mounted() -> bool:
    return (BINFMT_DIR / "register").exists()


def _mount() -> None:
    from layerstore import syscalls

    try:
        syscalls.mount("binfmt_misc", str(BINFMT_DIR), "binfmt_misc",
                       syscalls.MS_NOSUID | syscalls.MS_NODEV | syscalls.MS_NOEXEC)
    except OSError as exc:
        raise EmulationError(
            f"cannot mount binfmt_misc on {BINFMT_DIR} ({os.strerror(exc.errno or 0)}): "
            "running foreign-architecture images needs it (as root: "
            f"mount -t binfmt_misc binfmt_misc {BINFMT_DIR})") from None


def handler(name: str) -> Handler | None:
    """A registered handler's state, or None."""
    try:
        text = _read(BINFMT_DIR / name)
    except FileNotFoundError:
        return None
    fields: dict[str, str] = {}
    for line in text.splitlines():
        key, _, value = line.partition(" ")
        fields[key.rstrip(":")] = value.strip()
    return Handler(name=name, enabled=text.startswith("enabled"),
                   interpreter=fields.get("interpreter", ""), flags=fields.get("flags", ""),
                   magic=fields.get("magic", ""))


def _conf_line(qemu: str) -> str:
    for d in CONF_DIRS:
        path = d / f"qemu-{qemu}.conf"
        try:
            text = _read(path)
        except FileNotFoundError:
            continue
        for line in text.splitlines():
            if line.startswith(f":qemu-{qemu}:"):
                return line.strip()
    raise EmulationError(f"no emulator for {qemu}: install qemu-user-static "
                         "(apt-get install qemu-user-static; scripts/setup.sh does)")


def _with_fix_binary(line: str) -> str:
    """The binfmt.d line with F among its flags (the last field)."""
    head, sep, flags = line.rpartition(":")
    if not sep:
        raise EmulationError(f"malformed binfmt.d entry: {line[:120]!r}")
    return line if "F" in flags else f"{head}:{flags}F"


def _register(line: str) -> None:
    interpreter = line.split(":")[6] if line.count(":") >= 7 else ""
    if not interpreter or not os.path.exists(interpreter):
        raise EmulationError(f"the emulator {interpreter or '?'} is missing: install "
                             "qemu-user-static (scripts/setup.sh does)")
    fd = os.open(BINFMT_DIR / "register", os.O_WRONLY | os.O_CLOEXEC)
    try:
        os.write(fd, line.encode())
    except OSError as exc:
        if exc.errno != errno.EEXIST:      # another build registered it a moment ago
            raise EmulationError(f"cannot register {line.split(':')[1]} with binfmt_misc: "
                                 f"{os.strerror(exc.errno or 0)}") from None
    finally:
        os.close(fd)


def ensure(platform: Platform | str | None) -> None:
    """Make programs of `platform` runnable in a sandbox, or say clearly why not.
    Nothing to do for this host's own architecture."""
    if not needs_emulation(platform):
        return
    p = parse_platform(platform) if isinstance(platform, str) else platform
    qemu = QEMU_NAMES.get(p.architecture)
    if qemu is None:
        raise EmulationError(f"cannot run {p} images here: no emulator is known for "
                             f"{p.architecture}")
    if not _mounted():
        _mount()
    try:
        if _read(BINFMT_DIR / "status").strip() != "enabled":
            raise EmulationError(f"binfmt_misc is disabled ({BINFMT_DIR}/status): "
                                 f"enable it to run {p} images (echo 1 > {BINFMT_DIR}/status)")
    except FileNotFoundError:
        raise EmulationError(f"{BINFMT_DIR} is not binfmt_misc") from None
    h = handler(f"qemu-{qemu}")
    if h is None:
        _register(_with_fix_binary(_conf_line(qemu)))
        h = handler(f"qemu-{qemu}")
        if h is None:
            raise EmulationError(f"registering qemu-{qemu} with binfmt_misc did not take")
    if not h.enabled:
        raise EmulationError(f"the binfmt_misc handler qemu-{qemu} is disabled: enable it "
                             f"(echo 1 > {BINFMT_DIR}/qemu-{qemu}) to run {p} images")
    if "F" not in h.flags:
        raise EmulationError(
            f"the binfmt_misc handler qemu-{qemu} lacks the F (fix-binary) flag, so the "
            "kernel would look the emulator up inside the container: re-register it with F "
            f"(echo -1 > {BINFMT_DIR}/qemu-{qemu}; pybuild then registers its own)")
