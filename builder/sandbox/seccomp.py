"""Docker-format seccomp profiles compiled to BPF once, loaded in the child.

Compiling with libseccomp costs milliseconds (and importing pyseccomp a few
more), so the parent compiles a profile for a capability set once: the BPF
bytes are kept in memory and, when the caller names a cache directory, on
disk as `<key>.bpf`, keyed by everything the result depends on (profile bytes,
capabilities, machine, kernel release, libseccomp and compiler versions).
A cache file is a sha256 of the program followed by the program; one that
does not check out is compiled again. The child only makes one seccomp(2)
call right before exec.
"""

from __future__ import annotations

import ctypes
import hashlib
import json
import os
from functools import lru_cache
from pathlib import Path

from .spec import SandboxError

DEFAULT_PROFILE = Path(__file__).with_name("seccomp_default.json")

# docker's arch names in includes/excludes, per native machine
_NATIVE = {"x86_64": ("amd64", "SCMP_ARCH_X86_64"), "aarch64": ("arm64", "SCMP_ARCH_AARCH64")}
_CMP_OPS = ("NE", "LT", "LE", "EQ", "GE", "GT", "MASKED_EQ")
_SUB_ARCHES = ("X86_64", "X86", "X32", "AARCH64", "ARM")


def _action(name: str, errno_ret: int | None, where: str) -> int:
    import pyseccomp

    if name == "SCMP_ACT_ALLOW":
        return pyseccomp.ALLOW
    if name == "SCMP_ACT_ERRNO":
        return pyseccomp.ERRNO(1 if errno_ret is None else errno_ret)
    if name in ("SCMP_ACT_KILL", "SCMP_ACT_KILL_THREAD"):
        return pyseccomp.KILL
    if name == "SCMP_ACT_KILL_PROCESS":
        return pyseccomp.KILL_PROCESS
    if name == "SCMP_ACT_TRAP":
        return pyseccomp.TRAP
    if name == "SCMP_ACT_LOG":
        return pyseccomp.LOG
    raise SandboxError(f"seccomp profile {where}: unsupported action {name!r}")


def _kernel() -> tuple[int, ...]:
    rel = os.uname().release.split("-")[0]
    return tuple(int(p) for p in rel.split(".")[:2] if p.isdigit())


def _applies(rule: dict, caps: frozenset[str], arch: str) -> bool:
    inc, exc = rule.get("includes") or {}, rule.get("excludes") or {}
    if inc.get("caps") and not set(inc["caps"]) <= caps:
        return False
    if inc.get("arches") and arch not in inc["arches"]:
        return False
    if inc.get("minKernel"):
        want = tuple(int(p) for p in str(inc["minKernel"]).split(".")[:2])
        if _kernel() < want:
            return False
    if exc.get("caps") and set(exc["caps"]) & caps:
        return False
    if exc.get("arches") and arch in exc["arches"]:
        return False
    return True


def load_profile(path: Path) -> dict:
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise SandboxError(f"seccomp profile {path}: {e.strerror}") from None
    return _parse_profile(data, path)


def _parse_profile(data: bytes, path: Path) -> dict:
    try:
        prof = json.loads(data)
    except json.JSONDecodeError as e:
        raise SandboxError(f"seccomp profile {path}:{e.lineno}:{e.colno}: {e.msg}") from None
    except ValueError as e:  # not UTF-8 at all
        raise SandboxError(f"seccomp profile {path}: {e}") from None
    if not isinstance(prof, dict) or "defaultAction" not in prof:
        raise SandboxError(f"seccomp profile {path}: not a docker seccomp profile (no defaultAction)")
    return prof


def compile_profile(prof: dict, caps: frozenset[str], where: str) -> bytes:
    """BPF for `prof` as it applies to a process holding `caps`."""
    import pyseccomp

    ops = {f"SCMP_CMP_{op}": getattr(pyseccomp, op) for op in _CMP_OPS}
    arches = {f"SCMP_ARCH_{a}": getattr(pyseccomp.Arch, a) for a in _SUB_ARCHES}
    machine = os.uname().machine
    arch, native = _NATIVE.get(machine, (machine, ""))
    f = pyseccomp.SyscallFilter(_action(prof["defaultAction"], prof.get("defaultErrnoRet"), where))
    for entry in prof.get("archMap") or []:
        if entry.get("architecture") == native:
            for sub in entry.get("subArchitectures") or []:
                if sub in arches and not f.exist_arch(arches[sub]):
                    f.add_arch(arches[sub])
    for n, rule in enumerate(prof.get("syscalls") or []):
        if not _applies(rule, caps, arch):
            continue
        names = rule.get("names") or ([rule["name"]] if rule.get("name") else [])
        action = _action(rule.get("action", ""), rule.get("errnoRet"), f"{where} syscalls[{n}]")
        args = []
        for a in rule.get("args") or []:
            if a.get("op") not in ops:
                raise SandboxError(f"seccomp profile {where} syscalls[{n}]: bad op {a.get('op')!r}")
            if a["op"] == "SCMP_CMP_MASKED_EQ":
                args.append(pyseccomp.Arg(a["index"], ops[a["op"]], a["value"], a.get("valueTwo", 0)))
            else:
                args.append(pyseccomp.Arg(a["index"], ops[a["op"]], a["value"]))
        # docker: several conditions on one argument are alternatives (separate rules)
        indexes = [a["index"] for a in rule.get("args") or []]
        groups = [[a] for a in args] if len(set(indexes)) < len(indexes) else [args]
        for name in names:
            for group in groups:
                try:
                    f.add_rule(action, name, *group)
                except (OSError, ValueError, RuntimeError):
                    pass  # a syscall this architecture does not have, as docker ignores it
    # an anonymous memory file: the filter never touches a disk (nor /tmp)
    with open(os.memfd_create("pybuild-seccomp", os.MFD_CLOEXEC), "w+b") as tmp:
        f.export_bpf(tmp)
        tmp.seek(0)
        return tmp.read()


class _Version(ctypes.Structure):
    _fields_ = [("major", ctypes.c_uint), ("minor", ctypes.c_uint), ("micro", ctypes.c_uint)]


@lru_cache(maxsize=1)
def _toolchain() -> str:
    """What else the BPF depends on: libseccomp's version, pyseccomp and this compiler."""
    try:
        lib = ctypes.CDLL("libseccomp.so.2")
        lib.seccomp_version.restype = ctypes.POINTER(_Version)
        v = lib.seccomp_version().contents
        libseccomp = f"{v.major}.{v.minor}.{v.micro}"
    except (OSError, AttributeError, ValueError):
        libseccomp = "?"
    from importlib.util import find_spec

    files = []
    for origin in (__file__, getattr(find_spec("pyseccomp"), "origin", None)):
        try:
            st = os.stat(origin)
            files.append(f"{origin}:{st.st_size}:{st.st_mtime_ns}")
        except (OSError, TypeError):
            files.append(f"{origin}:?")
    return ";".join([f"libseccomp {libseccomp}", *files])


def _cache_key(data: bytes, caps: frozenset[str]) -> str:
    u = os.uname()
    h = hashlib.sha256(data)
    h.update(json.dumps([sorted(caps), u.machine, u.release, _toolchain()]).encode())
    return h.hexdigest()


def _cache_read(path: Path) -> bytes | None:
    """The program in a cache file, or None when it is missing, short or corrupt."""
    try:
        with open(path, "rb") as f:
            blob = f.read()
    except OSError:
        return None
    digest, bpf = blob[:32], blob[32:]
    if not bpf or len(bpf) % 8 or hashlib.sha256(bpf).digest() != digest:
        return None
    return bpf


def _cache_write(path: Path, bpf: bytes) -> None:
    """Checksum + program, written atomically; only a cache: a read-only or full store
    still runs containers."""
    from layerstore.atomic import atomic_write

    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path, hashlib.sha256(bpf).digest() + bpf)
    except OSError:
        pass


@lru_cache(maxsize=16)
def _compiled(path: str, mtime_ns: int, size: int, caps: frozenset[str],
              cache_dir: Path | None) -> bytes:
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise SandboxError(f"seccomp profile {path}: {e.strerror}") from None
    cached = None
    if cache_dir is not None:
        cached = Path(cache_dir) / f"{_cache_key(data, caps)}.bpf"
        bpf = _cache_read(cached)
        if bpf is not None:
            return bpf
    bpf = compile_profile(_parse_profile(data, Path(path)), caps, path)
    if cached is not None:
        _cache_write(cached, bpf)
    return bpf


def bpf_for(setting: str | os.PathLike | None, caps: frozenset[str],
            cache_dir: Path | None = None) -> bytes | None:
    """BPF bytes for a spec's seccomp setting, or None for `unconfined`; compiled
    programs are kept in `cache_dir` when one is given."""
    if setting == "unconfined":
        return None
    path = Path(setting) if setting is not None else DEFAULT_PROFILE
    try:
        st = path.stat()
    except OSError as e:
        raise SandboxError(f"seccomp profile {path}: {e.strerror}") from None
    return _compiled(str(path.resolve()), st.st_mtime_ns, st.st_size, caps,
                     Path(cache_dir) if cache_dir is not None else None)
