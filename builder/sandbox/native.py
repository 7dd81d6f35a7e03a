"""The two programs the sandbox runs inside containers instead of Python: x86_64 machine
code executed from sealed memfds, so that no process in a container is ever an image
of the host's Python interpreter once the container's command runs.

Why: /proc/<pid>/exe of a process names the binary it executes. A Python process of
ours inside a container is the host's interpreter: the precondition of CVE-2019-5736,
and an `execve("/proc/self/exe")` -- or a script starting `#!/proc/self/exe`, which the
kernel resolves against the process that executes it -- would run that host binary in
the container, dumpable, for it to open and keep. Non-dumpable does not stop a container
granted CAP_SYS_PTRACE either (that capability is held in the host's user namespace), and
Python's memory holds the caller's command line and environment. So:

* EXEC_CODE, the exec trampoline: the last step of both entry points. Python prepares
  everything and drops privileges, then executes this with argv = ["pybuild-exec",
  <report fd>, <path>, <argv[0]>, ...] and the command's environment; it marks the
  report fd close-on-exec and executes <path> with the rest. `/proc/self/exe` then names
  this sealed memfd, not the host's Python. A failed execve is written to the report fd
  as `E <126|127> errno <NNN>` (explain() makes a message of it) and exits with that code.
* INIT_CODE, the init of `--init` containers (PID 1 for the container's whole life):
  the caller forks the command, then executes this with every signal blocked (the mask
  survives execve, so a signal sent to PID 1 in between waits for us) and argv =
  ["pybuild-init", "<the command's pid>"]. It waits for signals: SIGCHLD reaps every
  exited child (orphans reparented to PID 1 too); any other signal is forwarded to the
  command; when the command is reaped it exits with its status (128 + N when signal N
  killed it).

Both exit 125 on a bad argv. The bytes are INIT_ASM and EXEC_ASM assembled by GNU as
(tests/test_sandbox_native.py checks that they still are); the ELF headers are added here.
"""

from __future__ import annotations

import fcntl
import os
import re
import struct

from layerstore.humanize import quoted

INIT_ASM = r"""
    .text
    .globl _start
_start:
    mov    (%rsp), %rcx            # argc
    cmp    $2, %rcx
    jb     fail
    mov    16(%rsp), %rsi          # argv[1]: the command's pid, in decimal
    xor    %r12d, %r12d
parse:
    movzbl (%rsi), %eax
    test   %eax, %eax
    jz     parsed
    sub    $48, %eax
    cmp    $9, %eax
    ja     fail
    imul   $10, %r12, %r12
    add    %rax, %r12
    inc    %rsi
    jmp    parse
parsed:
    test   %r12, %r12
    jz     fail
    sub    $160, %rsp              # siginfo at 0, sigset at 128, wait status at 136
    movq   $-1, 128(%rsp)          # every signal (they are all blocked already)
wait_signal:
    mov    $128, %eax              # rt_sigtimedwait(&set, &info, NULL, 8)
    lea    128(%rsp), %rdi
    mov    %rsp, %rsi
    xor    %edx, %edx
    mov    $8, %r10d
    syscall
    test   %rax, %rax
    js     wait_signal
    cmp    $17, %eax               # SIGCHLD: reap
    je     reap
    mov    %eax, %esi              # anything else: kill(command, signal)
    mov    %r12d, %edi
    mov    $62, %eax
    syscall
    jmp    wait_signal
reap:
    mov    $-1, %edi               # wait4(-1, &status, WNOHANG, NULL)
    lea    136(%rsp), %rsi
    mov    $1, %edx
    xor    %r10d, %r10d
    mov    $61, %eax
    syscall
    test   %rax, %rax
    jle    wait_signal             # none left to reap now
    cmp    %r12, %rax
    jne    reap                    # an orphan: reap on
    mov    136(%rsp), %eax         # the command: leave with its status
    mov    %eax, %edi
    and    $127, %edi
    jz     exited
    add    $128, %edi
    jmp    leave
exited:
    shr    $8, %eax
    movzbl %al, %edi
leave:
    mov    $231, %eax              # exit_group
    syscall
fail:
    mov    $125, %edi
    jmp    leave
"""

INIT_CODE = bytes.fromhex(
    "488b0c244883f9020f82be000000488b7424104531e40fb60685c0741883e83083f8090f87a30000"
    "004d6be40a4901c448ffc6ebe14d85e40f848e0000004881eca000000048c7842480000000ffffff"
    "ffb880000000488dbc24800000004889e631d241ba080000000f054885c078e183f811740e89c644"
    "89e7b83e0000000f05ebcebfffffffff488db42488000000ba010000004531d2b83d0000000f0548"
    "85c07ead4c39e075da8b84248800000089c783e77f740881c780000000eb06c1e8080fb6f8b8e700"
    "00000f05bf7d000000ebf2")

EXEC_ASM = r"""
    .text
    .globl _start
_start:
    mov    (%rsp), %rbx            # argc
    cmp    $4, %rbx
    jb     fail
    mov    16(%rsp), %rsi          # argv[1]: the report fd, in decimal
    xor    %r13d, %r13d
parse:
    movzbl (%rsi), %eax
    test   %eax, %eax
    jz     parsed
    sub    $48, %eax
    cmp    $9, %eax
    ja     fail
    imul   $10, %r13, %r13
    add    %rax, %r13
    inc    %rsi
    jmp    parse
parsed:
    mov    $72, %eax               # fcntl(fd, F_SETFD, FD_CLOEXEC): not for the command
    mov    %r13d, %edi
    mov    $2, %esi
    mov    $1, %edx
    syscall
    test   %rax, %rax
    jns    run
    mov    $3, %eax                # a profile refused fcntl: close(fd), or give up
    mov    %r13d, %edi
    syscall
    test   %rax, %rax
    js     fail
    mov    $-1, %r13d              # no report then (write fails), only the exit status
run:
    mov    24(%rsp), %rdi          # execve(argv[2], &argv[3], envp)
    lea    32(%rsp), %rsi
    lea    16(%rsp,%rbx,8), %rdx
    mov    $59, %eax
    syscall
    neg    %rax                    # it returned: rax = -errno
    mov    %rax, %r14
    mov    $127, %r15d
    cmp    $1, %r14                # EPERM, ENOEXEC, EACCES: 126 as docker
    je     denied
    cmp    $8, %r14
    je     denied
    cmp    $13, %r14
    jne    report
denied:
    mov    $126, %r15d
report:
    sub    $32, %rsp               # "E 12X errno NNN\n"
    movl   $0x32312045, (%rsp)     # "E 12"
    lea    -72(%r15), %eax         # '6' or '7'
    mov    %al, 4(%rsp)
    movl   $0x72726520, 5(%rsp)    # " err"
    movl   $0x20206f6e, 9(%rsp)    # "no  "
    mov    %r14, %rax              # errno as three digits at 12..14, then "\n"
    mov    $10, %ecx
    lea    15(%rsp), %rdi
    movb   $10, 15(%rsp)           # "\n" after three digits at 12..14
    mov    $3, %r8d
digit:
    xor    %edx, %edx
    div    %rcx
    add    $48, %edx
    dec    %rdi
    mov    %dl, (%rdi)
    dec    %r8d
    jnz    digit
    mov    $1, %eax                # write(fd, buf, 16)
    mov    %r13d, %edi
    mov    %rsp, %rsi
    mov    $16, %edx
    syscall
    mov    %r15d, %edi
leave:
    mov    $231, %eax              # exit_group
    syscall
fail:
    mov    $125, %edi
    jmp    leave
"""

EXEC_CODE = bytes.fromhex(
    "488b1c244883fb040f82fc000000488b7424104531ed0fb60685c0741883e83083f8090f87e10000"
    "004d6bed0a4901c548ffc6ebe1b8480000004489efbe02000000ba010000000f054885c07919b803"
    "0000004489ef0f054885c00f88a900000041bdffffffff488b7c2418488d742420488d54dc10b83b"
    "0000000f0548f7d84989c641bf7f0000004983fe01740c4983fe0874064983fe0d750641bf7e0000"
    "004883ec20c7042445203132418d47b888442404c744240520657272c74424096e6f20204c89f0b9"
    "0a000000488d7c240fc644240f0a41b80300000031d248f7f183c23048ffcf881741ffc875eeb801"
    "0000004489ef4889e6ba100000000f054489ffb8e70000000f05bf7d000000ebf2")

_BASE = 0x400000
_EHDR, _PHDR = 64, 56
_PT_LOAD, _PT_GNU_STACK = 1, 0x6474E551
_MFD_EXEC = 0x10          # Linux 6.3: say so, or vm.memfd_noexec=1 makes it non-executable


def elf(code: bytes) -> bytes:
    """A static ELF64 executable: the headers, then `code` (loaded read+execute)."""
    start = _EHDR + 2 * _PHDR
    size = start + len(code)
    ident = b"\x7fELF" + bytes([2, 1, 1, 0]) + bytes(8)       # 64-bit, little endian, SysV
    header = struct.pack("<16sHHIQQQIHHHHHH", ident, 2, 62, 1, _BASE + start, _EHDR, 0, 0,
                         _EHDR, _PHDR, 2, 64, 0, 0)           # ET_EXEC, EM_X86_64
    load = struct.pack("<IIQQQQQQ", _PT_LOAD, 5, 0, _BASE, _BASE, size, size, 0x1000)
    stack = struct.pack("<IIQQQQQQ", _PT_GNU_STACK, 6, 0, 0, 0, 0, 0, 16)
    return header + load + stack + code


def memfd(code: bytes, name: str) -> int:
    """`code` as an executable in an anonymous, sealed memory file (close-on-exec): what
    /proc/<pid>/exe names while it runs. No host file is involved, and the seals make it
    immutable (a container that may open it for writing cannot change it)."""
    flags = os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING
    try:
        fd = os.memfd_create(name, flags | _MFD_EXEC)
    except OSError:     # EINVAL before Linux 6.3, which has no MFD_EXEC
        fd = os.memfd_create(name, flags)
    try:
        data = memoryview(elf(code))
        while data:
            data = data[os.write(fd, data):]
        os.fchmod(fd, 0o555)
        fcntl.fcntl(fd, fcntl.F_ADD_SEALS, fcntl.F_SEAL_SEAL | fcntl.F_SEAL_SHRINK
                    | fcntl.F_SEAL_GROW | fcntl.F_SEAL_WRITE)
    except BaseException:
        os.close(fd)
        raise
    return fd


_ERRNO = re.compile(r"errno (\d{3})")


def explain(message: str, name: str) -> str:
    """The exec trampoline's `errno NNN` as the message the Python side would have given."""
    m = _ERRNO.fullmatch(message.strip())
    if m is None:
        return message
    return f"exec {quoted(name)}: {os.strerror(int(m.group(1)))}"
