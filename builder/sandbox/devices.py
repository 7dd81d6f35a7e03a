"""Which device nodes a container may use: docker's default rules, as cgroup-v1 lines
or as an eBPF device program for cgroup v2.

Default containers keep CAP_MKNOD, so a device cgroup is what stops them from
creating and opening host devices: deny everything, allow mknod of any node
and read/write/mknod of exactly the harmless ones (runc's and moby's list).
A privileged container is allowed every device.

Rules are allow rules only; whatever no rule allows is denied.
"""

from __future__ import annotations

import ctypes
import os
import struct
from dataclasses import dataclass


@dataclass(frozen=True)
class DeviceRule:
    """Allow `access` (a subset of "rwm") to devices of `type` ("c", "b" or "a" for
    both) with this major and minor number; None stands for `*` (any)."""

    type: str
    major: int | None
    minor: int | None
    access: str

    def v1(self) -> str:
        """The line for devices.allow (or devices.deny)."""
        if self.type == "a":
            return "a"  # the kernel takes "a" alone as every device, any access
        n = lambda v: "*" if v is None else str(v)  # noqa: E731
        return f"{self.type} {n(self.major)}:{n(self.minor)} {self.access}"


DEFAULT_RULES: tuple[DeviceRule, ...] = (
    DeviceRule("c", None, None, "m"),
    DeviceRule("b", None, None, "m"),
    DeviceRule("c", 1, 3, "rwm"),      # /dev/null
    DeviceRule("c", 1, 5, "rwm"),      # /dev/zero
    DeviceRule("c", 1, 7, "rwm"),      # /dev/full
    DeviceRule("c", 1, 8, "rwm"),      # /dev/random
    DeviceRule("c", 1, 9, "rwm"),      # /dev/urandom
    DeviceRule("c", 5, 0, "rwm"),      # /dev/tty
    DeviceRule("c", 5, 1, "rwm"),      # /dev/console
    DeviceRule("c", 5, 2, "rwm"),      # /dev/ptmx
    DeviceRule("c", 136, None, "rwm"),  # /dev/pts/*
    DeviceRule("c", 10, 200, "rwm"),   # /dev/net/tun
)

ALLOW_ALL: tuple[DeviceRule, ...] = (DeviceRule("a", None, None, "rwm"),)


def rules_for(privileged: bool) -> tuple[DeviceRule, ...]:
    return ALLOW_ALL if privileged else DEFAULT_RULES


def v1_lines(rules: tuple[DeviceRule, ...]) -> list[str]:
    """What to write to devices.allow, one write per line, after "a" to devices.deny."""
    return [r.v1() for r in rules]


# ----- cgroup v2: a BPF_PROG_TYPE_CGROUP_DEVICE program ----------------------------------
#
# The program sees struct bpf_cgroup_dev_ctx { u32 access_type; u32 major; u32 minor; }
# with access_type = (access << 16) | type, and returns 1 to allow, 0 to deny (EPERM).

DEVCG_DEV_BLOCK, DEVCG_DEV_CHAR = 1, 2
DEVCG_ACC_MKNOD, DEVCG_ACC_READ, DEVCG_ACC_WRITE = 1, 2, 4
_TYPES = {"b": DEVCG_DEV_BLOCK, "c": DEVCG_DEV_CHAR}
_ACCESS = {"m": DEVCG_ACC_MKNOD, "r": DEVCG_ACC_READ, "w": DEVCG_ACC_WRITE}
_ALL_ACCESS = DEVCG_ACC_MKNOD | DEVCG_ACC_READ | DEVCG_ACC_WRITE

# opcodes (linux/bpf_common.h, linux/bpf.h)
_LDX_MEM_W = 0x61      # BPF_LDX | BPF_MEM | BPF_W:  dst = *(u32 *)(src + off)
_ALU64_MOV_X = 0xBF    # dst = src
_ALU64_MOV_K = 0xB7    # dst = imm
_ALU32_AND_K = 0x54    # dst = (u32)(dst & imm)
_ALU32_RSH_K = 0x74    # dst = (u32)(dst >> imm)
_JMP_JNE_K = 0x55      # if dst != imm: pc += off
_JMP_JSET_K = 0x45     # if dst & imm: pc += off
_JMP_EXIT = 0x95

R0, R1, R2, R3, R4, R5 = range(6)


def _insn(code: int, dst: int = 0, src: int = 0, off: int = 0, imm: int = 0) -> bytes:
    """struct bpf_insn { u8 code; u8 dst_reg:4, src_reg:4; s16 off; s32 imm; } (little endian)."""
    return struct.pack("<BBhi", code, (src << 4) | dst, off, imm)


def bpf_program(rules: tuple[DeviceRule, ...]) -> bytes:
    """The device program for these allow rules, as an array of struct bpf_insn."""
    prog = [
        _insn(_LDX_MEM_W, R2, R1, 0),          # r2 = access_type
        _insn(_ALU64_MOV_X, R3, R2),            # r3 = access_type
        _insn(_ALU32_AND_K, R2, imm=0xFFFF),    # r2 = type
        _insn(_ALU32_RSH_K, R3, imm=16),        # r3 = access
        _insn(_LDX_MEM_W, R4, R1, 4),          # r4 = major
        _insn(_LDX_MEM_W, R5, R1, 8),          # r5 = minor
    ]
    for rule in rules:
        acc = 0
        for ch in rule.access:
            acc |= _ACCESS[ch]
        # each test jumps past the end of this rule's block when it does not match
        tests: list[tuple[int, int, int]] = []     # (code, register, imm)
        if rule.type != "a":
            tests.append((_JMP_JNE_K, R2, _TYPES[rule.type]))
        if acc != _ALL_ACCESS:
            tests.append((_JMP_JSET_K, R3, _ALL_ACCESS & ~acc))  # asks for more than allowed
        if rule.major is not None:
            tests.append((_JMP_JNE_K, R4, rule.major))
        if rule.minor is not None:
            tests.append((_JMP_JNE_K, R5, rule.minor))
        n = len(tests) + 2
        for i, (code, reg, imm) in enumerate(tests):
            prog.append(_insn(code, reg, off=n - i - 1, imm=imm))
        prog += [_insn(_ALU64_MOV_K, R0, imm=1), _insn(_JMP_EXIT)]
        if not tests:
            return b"".join(prog)  # allows everything: what follows would be unreachable
    prog += [_insn(_ALU64_MOV_K, R0, imm=0), _insn(_JMP_EXIT)]
    return b"".join(prog)


_SYS_BPF = {"x86_64": 321, "aarch64": 280}
BPF_PROG_LOAD = 5
BPF_PROG_ATTACH = 8
BPF_PROG_TYPE_CGROUP_DEVICE = 15
BPF_CGROUP_DEVICE = 6
BPF_F_ALLOW_MULTI = 2   # like runc: programs attached above ours still apply too


def _bpf(cmd: int, attr: ctypes.Array, what: str) -> int:
    from .libc import _syscall  # loaded with the sandbox already

    nr = _SYS_BPF.get(os.uname().machine)
    if nr is None:
        raise OSError(38, f"{what}: no bpf syscall number for {os.uname().machine}")
    ret = _syscall(nr, ctypes.c_int(cmd), attr, ctypes.c_uint(len(attr)))
    if ret < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")
    return ret


def _load(insns: bytes, log: bool) -> int:
    code = ctypes.create_string_buffer(insns, len(insns))
    license = ctypes.create_string_buffer(b"GPL")
    logbuf = ctypes.create_string_buffer(16384 if log else 1)
    # union bpf_attr, BPF_PROG_LOAD part up to expected_attach_type
    attr = ctypes.create_string_buffer(struct.pack(
        "<IIQQIIQII16sII",
        BPF_PROG_TYPE_CGROUP_DEVICE, len(insns) // 8, ctypes.addressof(code),
        ctypes.addressof(license), 1 if log else 0, len(logbuf) if log else 0,
        ctypes.addressof(logbuf) if log else 0, 0, 0, b"pybuild_devices", 0, BPF_CGROUP_DEVICE), 72)
    try:
        return _bpf(BPF_PROG_LOAD, attr, "load device program")
    except OSError as e:
        text = logbuf.value.decode(errors="replace").strip().splitlines()
        if log and text:
            raise OSError(e.errno, f"{e.strerror} (verifier: {text[-1]})") from None
        raise


def attach(cgroup_dir: str, rules: tuple[DeviceRule, ...]) -> None:
    """Load the rules' program and attach it to a cgroup-v2 directory; it is released
    with the cgroup, so removing the directory removes the program too."""
    insns = bpf_program(rules)
    try:
        prog = _load(insns, False)
    except OSError as e:
        if e.errno != 13 and e.errno != 22:  # EACCES/EINVAL: the verifier says why
            raise
        prog = _load(insns, True)
    try:
        dfd = os.open(cgroup_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            attr = ctypes.create_string_buffer(
                struct.pack("<IIIII", dfd, prog, BPF_CGROUP_DEVICE, BPF_F_ALLOW_MULTI, 0), 20)
            _bpf(BPF_PROG_ATTACH, attr, f"attach device program to {cgroup_dir}")
        finally:
            os.close(dfd)
    finally:
        os.close(prog)
