"""Docker-format seccomp profiles compiled to BPF once, loaded in the child.

Compiling with libseccomp costs milliseconds, so the parent compiles a
profile for a capability set once and caches the BPF bytes; the child only
makes one seccomp(2) call right before exec.
"""

from __future__ import annotations

import json
import os
import platform
import tempfile
from functools import lru_cache
from pathlib import Path

import pyseccomp

from .spec import SandboxError

DEFAULT_PROFILE = Path(__file__).with_name("seccomp_default.json")

_OPS = {
    "SCMP_CMP_NE": pyseccomp.NE, "SCMP_CMP_LT": pyseccomp.LT, "SCMP_CMP_LE": pyseccomp.LE,
    "SCMP_CMP_EQ": pyseccomp.EQ, "SCMP_CMP_GE": pyseccomp.GE, "SCMP_CMP_GT": pyseccomp.GT,
    "SCMP_CMP_MASKED_EQ": pyseccomp.MASKED_EQ,
}
_ARCHES = {
    "SCMP_ARCH_X86_64": pyseccomp.Arch.X86_64, "SCMP_ARCH_X86": pyseccomp.Arch.X86,
    "SCMP_ARCH_X32": pyseccomp.Arch.X32, "SCMP_ARCH_AARCH64": pyseccomp.Arch.AARCH64,
    "SCMP_ARCH_ARM": pyseccomp.Arch.ARM,
}
# docker's arch names in includes/excludes, per native machine
_NATIVE = {"x86_64": ("amd64", "SCMP_ARCH_X86_64"), "aarch64": ("arm64", "SCMP_ARCH_AARCH64")}


def _action(name: str, errno_ret: int | None, where: str) -> int:
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
    rel = platform.release().split("-")[0]
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
        with open(path) as f:
            prof = json.load(f)
    except OSError as e:
        raise SandboxError(f"seccomp profile {path}: {e.strerror}") from None
    except json.JSONDecodeError as e:
        raise SandboxError(f"seccomp profile {path}:{e.lineno}:{e.colno}: {e.msg}") from None
    if not isinstance(prof, dict) or "defaultAction" not in prof:
        raise SandboxError(f"seccomp profile {path}: not a docker seccomp profile (no defaultAction)")
    return prof


def compile_profile(prof: dict, caps: frozenset[str], where: str) -> bytes:
    """BPF for `prof` as it applies to a process holding `caps`."""
    machine = platform.machine()
    arch, native = _NATIVE.get(machine, (machine, ""))
    f = pyseccomp.SyscallFilter(_action(prof["defaultAction"], prof.get("defaultErrnoRet"), where))
    for entry in prof.get("archMap") or []:
        if entry.get("architecture") == native:
            for sub in entry.get("subArchitectures") or []:
                if sub in _ARCHES and not f.exist_arch(_ARCHES[sub]):
                    f.add_arch(_ARCHES[sub])
    for n, rule in enumerate(prof.get("syscalls") or []):
        if not _applies(rule, caps, arch):
            continue
        names = rule.get("names") or ([rule["name"]] if rule.get("name") else [])
        action = _action(rule.get("action", ""), rule.get("errnoRet"), f"{where} syscalls[{n}]")
        args = []
        for a in rule.get("args") or []:
            if a.get("op") not in _OPS:
                raise SandboxError(f"seccomp profile {where} syscalls[{n}]: bad op {a.get('op')!r}")
            if a["op"] == "SCMP_CMP_MASKED_EQ":
                args.append(pyseccomp.Arg(a["index"], _OPS[a["op"]], a["value"], a.get("valueTwo", 0)))
            else:
                args.append(pyseccomp.Arg(a["index"], _OPS[a["op"]], a["value"]))
        # docker: several conditions on one argument are alternatives (separate rules)
        indexes = [a["index"] for a in rule.get("args") or []]
        groups = [[a] for a in args] if len(set(indexes)) < len(indexes) else [args]
        for name in names:
            for group in groups:
                try:
                    f.add_rule(action, name, *group)
                except (OSError, ValueError, RuntimeError):
                    pass  # a syscall this architecture does not have, as docker ignores it
    with tempfile.TemporaryFile() as tmp:
        f.export_bpf(tmp)
        tmp.seek(0)
        return tmp.read()


@lru_cache(maxsize=16)
def _compiled(path: str, mtime: float, caps: frozenset[str]) -> bytes:
    return compile_profile(load_profile(Path(path)), caps, path)


def bpf_for(setting: str | os.PathLike | None, caps: frozenset[str]) -> bytes | None:
    """BPF bytes for a spec's seccomp setting, or None for `unconfined`."""
    if setting == "unconfined":
        return None
    path = Path(setting) if setting is not None else DEFAULT_PROFILE
    try:
        mtime = path.stat().st_mtime
    except OSError as e:
        raise SandboxError(f"seccomp profile {path}: {e.strerror}") from None
    return _compiled(str(path.resolve()), mtime, caps)
