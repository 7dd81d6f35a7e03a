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
import re
import stat
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


# A profile is outside input (--security-opt seccomp=FILE): read at most this much, and
# only from a regular file (a fifo would block `run` and every later `exec`). moby's
# default profile is 12 KiB.
MAX_PROFILE = 4 << 20
MAX_ERRNO = 4095          # the kernel's: SECCOMP_RET_ERRNO keeps 16 bits, errno.h ends here
BPF_MAXINSNS = 4096       # the kernel refuses longer filters (EINVAL at load)


def _read_profile(path: str | os.PathLike) -> bytes:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    except OSError as e:
        raise SandboxError(f"seccomp profile {path}: {e.strerror}") from None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise SandboxError(f"seccomp profile {path}: not a regular file")
        chunks, size = [], 0
        while chunk := os.read(fd, 1 << 16):
            size += len(chunk)
            if size > MAX_PROFILE:
                raise SandboxError(f"seccomp profile {path}: larger than {MAX_PROFILE >> 20} MiB")
            chunks.append(chunk)
    except OSError as e:
        raise SandboxError(f"seccomp profile {path}: {e.strerror}") from None
    finally:
        os.close(fd)
    return b"".join(chunks)


def load_profile(path: Path) -> dict:
    return _parse_profile(_read_profile(path), path)


def _parse_profile(data: bytes, path: Path) -> dict:
    """The profile, checked field by field: every value the compiler and the bundle
    writer use has the type and range they expect, or a one-line SandboxError says
    which one does not (a hostile profile must not end in a traceback)."""
    from layerstore import jsonlimits

    try:
        prof = jsonlimits.loads(data.removeprefix(b"\xef\xbb\xbf"), f"seccomp profile {path}",
                                max_bytes=MAX_PROFILE)
    except jsonlimits.InvalidJSON as e:
        bad = e.__context__
        if isinstance(bad, json.JSONDecodeError):
            raise SandboxError(f"seccomp profile {path}:{bad.lineno}:{bad.colno}: {bad.msg}") from None
        raise SandboxError(str(e)) from None
    if not isinstance(prof, dict) or "defaultAction" not in prof:
        raise SandboxError(f"seccomp profile {path}: not a docker seccomp profile (no defaultAction)")
    _Check(str(path)).profile(prof)
    return prof


class _Check:
    """Field checks of a docker seccomp profile; `where` names the file in messages."""

    def __init__(self, where: str) -> None:
        self.where = where

    def fail(self, field: str, want: str) -> None:
        raise SandboxError(f"seccomp profile {self.where}: {field} must be {want}")

    def string(self, value: object, field: str) -> None:
        if not isinstance(value, str):
            self.fail(field, "a string")

    def strings(self, value: object, field: str) -> None:
        if value is None:
            return
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            self.fail(field, "a list of strings")

    def integer(self, value: object, field: str, top: int) -> None:
        if value is None:
            return
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= top:
            self.fail(field, f"an integer from 0 to {top}")

    def mapping(self, value: object, field: str) -> dict:
        if value is None:
            return {}
        if not isinstance(value, dict):
            self.fail(field, "an object")
        return value

    def entries(self, value: object, field: str) -> list:
        if value is None:
            return []
        if not isinstance(value, list):
            self.fail(field, "a list")
        return value

    def profile(self, prof: dict) -> None:
        self.string(prof["defaultAction"], "defaultAction")
        self.integer(prof.get("defaultErrnoRet"), "defaultErrnoRet", MAX_ERRNO)
        self.strings(prof.get("architectures"), "architectures")
        for i, entry in enumerate(self.entries(prof.get("archMap"), "archMap")):
            entry = self.mapping(entry, f"archMap[{i}]")
            self.string(entry.get("architecture"), f"archMap[{i}].architecture")
            self.strings(entry.get("subArchitectures"), f"archMap[{i}].subArchitectures")
        for n, rule in enumerate(self.entries(prof.get("syscalls"), "syscalls")):
            self.rule(self.mapping(rule, f"syscalls[{n}]"), f"syscalls[{n}]")

    def rule(self, rule: dict, at: str) -> None:
        self.strings(rule.get("names"), f"{at}.names")
        if rule.get("name") is not None:
            self.string(rule["name"], f"{at}.name")
        self.string(rule.get("action"), f"{at}.action")
        self.integer(rule.get("errnoRet"), f"{at}.errnoRet", MAX_ERRNO)
        for key in ("includes", "excludes"):
            filt = self.mapping(rule.get(key), f"{at}.{key}")
            self.strings(filt.get("caps"), f"{at}.{key}.caps")
            self.strings(filt.get("arches"), f"{at}.{key}.arches")
            kernel = filt.get("minKernel")
            if kernel is not None and not (isinstance(kernel, str) and re.fullmatch(
                    r"[0-9]{1,4}\.[0-9]{1,4}(\.[0-9]{1,4})?", kernel)):
                self.fail(f"{at}.{key}.minKernel", 'a kernel version such as "5.8"')
        for i, arg in enumerate(self.entries(rule.get("args"), f"{at}.args")):
            arg = self.mapping(arg, f"{at}.args[{i}]")
            if arg.get("index") is None:
                self.fail(f"{at}.args[{i}].index", "given")
            self.integer(arg["index"], f"{at}.args[{i}].index", 5)
            self.integer(arg.get("value", 0), f"{at}.args[{i}].value", (1 << 64) - 1)
            self.integer(arg.get("valueTwo", 0), f"{at}.args[{i}].valueTwo", (1 << 64) - 1)
            if arg.get("op") not in {f"SCMP_CMP_{op}" for op in _CMP_OPS}:
                self.fail(f"{at}.args[{i}].op", "one of " + ", ".join(f"SCMP_CMP_{op}" for op in _CMP_OPS))


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
                args.append(pyseccomp.Arg(a["index"], ops[a["op"]], a.get("value", 0),
                                          a.get("valueTwo", 0)))
            else:
                args.append(pyseccomp.Arg(a["index"], ops[a["op"]], a.get("value", 0)))
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
        bpf = tmp.read()
    if len(bpf) // 8 > BPF_MAXINSNS:
        raise SandboxError(f"seccomp profile {where}: compiles to {len(bpf) // 8} BPF "
                           f"instructions, more than the kernel's limit of {BPF_MAXINSNS}")
    return bpf


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
    data = _read_profile(path)
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
