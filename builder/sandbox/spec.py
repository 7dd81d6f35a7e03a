"""The plain description of one container, and what running it produced.

A spec knows nothing of images: the caller turns layers into lower dirs and
config into argv/env/user. Defaults are docker's, so a RUN step and
`pybuild run` give a user what they expect.
"""

from __future__ import annotations

import re
import secrets
from dataclasses import dataclass, field
from pathlib import Path

from layerstore.errors import PybuildError

from .netconfig import NetworkConfig

DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

# docker's default capability set (moby oci/caps/defaults.go).
DEFAULT_CAPS = (
    "CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_FSETID", "CAP_FOWNER", "CAP_MKNOD", "CAP_NET_RAW",
    "CAP_SETGID", "CAP_SETUID", "CAP_SETFCAP", "CAP_SETPCAP", "CAP_NET_BIND_SERVICE",
    "CAP_SYS_CHROOT", "CAP_KILL", "CAP_AUDIT_WRITE",
)

MASKED_PATHS = (
    "/proc/acpi", "/proc/asound", "/proc/interrupts", "/proc/kcore", "/proc/keys",
    "/proc/latency_stats", "/proc/sched_debug", "/proc/scsi", "/proc/timer_list",
    "/proc/timer_stats", "/sys/firmware", "/sys/devices/virtual/powercap",
)
READONLY_PATHS = ("/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger")

_ID = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9_.-]{0,63}\Z")
_HOSTNAME = re.compile(r"^[a-zA-Z0-9]([a-zA-Z0-9.-]{0,62})\Z")


class SandboxError(PybuildError):
    """The container could not be set up or its command could not be started."""

    def __init__(self, message: str, exit_code: int = 125) -> None:
        super().__init__(message)
        self.exit_code = exit_code


@dataclass
class OverlayRoot:
    """An overlay root: `lowers` listed bottom (base layer) first, writes go to `upper`."""

    lowers: list[Path]
    upper: Path
    work: Path
    readonly: bool = False
    # skip overlay's syncs (no fsync reaches the disk, and unmounting does not
    # flush): for throwaway uppers and for RUN steps whose upper is committed
    # through the store's own fsynced ingest
    volatile: bool = False


@dataclass
class DirRoot:
    """A plain directory used as the root filesystem in place (writes change it)."""

    path: Path
    readonly: bool = False


@dataclass
class BindMount:
    src: Path
    dst: str
    readonly: bool = True


@dataclass
class TmpfsMount:
    dst: str
    size: int | None = None  # bytes; None means the kernel default (half of RAM)
    mode: int = 0o1777
    noexec: bool = False


@dataclass
class SecretMount:
    """A read-only file holding `data` at `dst`, for RUN --mount=type=secret.

    The bytes never touch a disk: the container child writes them into a tmpfs it
    creates detached (attached at no path) inside its own mount namespace and binds
    the one file onto `dst`, so they vanish with the namespace, even when every
    process of ours is SIGKILLed, and the host never holds the file."""

    dst: str
    data: bytes = field(repr=False)
    mode: int = 0o400
    uid: int = 0
    gid: int = 0


@dataclass
class DeviceNode:
    """A host device given to the container (docker's --device): the caller stats the host
    node, the container gets a node of its own with the same type and numbers, and the
    device cgroup allows exactly this one with `access`."""

    path: str                 # in the container
    type: str                 # "c" (character) or "b" (block)
    major: int
    minor: int
    mode: int = 0o666         # permission bits of the node
    uid: int = 0
    gid: int = 0
    access: str = "rwm"
    host_path: str = ""       # what the user named, for inspect; the sandbox never opens it


@dataclass
class Limits:
    """cgroup limits; None means unlimited (no file written)."""

    memory: int | None = None         # bytes
    memory_swap: int | None = None    # memory + swap in bytes (docker's --memory-swap); -1 unlimited
    pids: int | None = None
    cpus: float | None = None         # CPU quota in CPUs (0.5 = half a CPU)
    cpu_weight: int | None = None     # 1..10000 (cgroup v2 scale; mapped to shares on v1)


@dataclass
class UserNamespace:
    """Map container uid/gid 0..size-1 to host_uid.. / host_gid.. (unprivileged)."""

    host_uid: int = 100000
    host_gid: int = 100000
    size: int = 65536


@dataclass
class SandboxSpec:
    root: OverlayRoot | DirRoot
    argv: list[str]
    env: dict[str, str] = field(default_factory=dict)
    cwd: str = "/"
    user: str = "0"                  # name, uid, name:group or uid:gid, resolved in the rootfs
    hostname: str | None = None      # default: the first 12 characters of the id
    mounts: list[BindMount | TmpfsMount | SecretMount] = field(default_factory=list)
    limits: Limits = field(default_factory=Limits)
    network: NetworkConfig = field(default_factory=NetworkConfig)
    cap_add: list[str] = field(default_factory=list)
    cap_drop: list[str] = field(default_factory=list)   # "ALL" drops every capability
    seccomp: str | Path | None = None   # None: docker's default; "unconfined"; or a JSON file
    no_new_privs: bool = False       # docker's default: setuid binaries work
    # docker's --privileged beyond caps and seccomp: no masked or read-only paths,
    # /sys writable, the host's devices in /dev
    privileged: bool = False
    init: bool = False               # run a tiny reaping init as PID 1
    freezer: bool = False            # in a freezer cgroup too, so it can be paused
    # (RLIMIT_* number, soft, hard) set in the container just before exec (RLIM_INFINITY
    # for unlimited): per container, never on the builder process, whose other threads
    # start other steps' containers meanwhile
    rlimits: list[tuple[int, int, int]] = field(default_factory=list)
    userns: UserNamespace | None = None
    stdio: str = "inherit"           # inherit | pipe | pty
    pty_size: tuple[int, int] | None = None   # (rows, cols) of a pty before the command starts
    input: bytes | None = None       # stdin for stdio="pipe" (None: empty)
    timeout: float | None = None     # seconds; the container is killed after it
    etc_files: bool = True           # bind generated /etc/hosts, resolv.conf, hostname
    state_dir: Path | None = None    # where hosts/resolv.conf and the root mount point live
    cache_dir: Path | None = None    # where compiled seccomp filters may be kept (None: memory only)
    # docker's --add-host, --dns, --dns-search, --dns-option: lines of the generated
    # /etc/hosts ("host-gateway" is the bridge's address) and resolv.conf
    extra_hosts: list[tuple[str, str]] = field(default_factory=list)
    dns: list[str] = field(default_factory=list)
    dns_search: list[str] = field(default_factory=list)
    dns_options: list[str] = field(default_factory=list)
    devices: list[DeviceNode] = field(default_factory=list)
    ipc: str = "private"             # private | host (no IPC namespace, the host's /dev/shm) | none
    pid: str = "private"             # private | host (no PID namespace: the host's processes)
    uts: str = "private"             # private | host (the host's name; never set from inside)
    sysctls: dict[str, str] = field(default_factory=dict)   # namespaced ones only (sysctls.py)
    shm_size: int | None = None      # bytes of /dev/shm; None: docker's 64 MiB
    group_add: list[str] = field(default_factory=list)      # supplementary groups, ids or names
    id: str = field(default_factory=lambda: secrets.token_hex(16))
    # the image's os/arch[/variant]; a foreign architecture runs through qemu-user
    # registered with binfmt_misc (sandbox/binfmt.py), under the same seccomp and caps
    platform: str | None = None

    def validate(self) -> None:
        """Raise SandboxError naming the field at fault."""
        if not self.argv:
            raise SandboxError("sandbox spec: argv is empty")
        if not _ID.match(self.id):
            raise SandboxError(f"sandbox spec: container id {self.id!r} is not [a-zA-Z0-9_.-]")
        if self.hostname is not None and not _HOSTNAME.match(self.hostname):
            raise SandboxError(f"sandbox spec: hostname {self.hostname!r} is not a valid host name")
        for i, arg in enumerate(self.argv):
            if "\0" in arg:
                raise SandboxError(f"sandbox spec: argv[{i}] contains a NUL byte")
        for key, value in self.env.items():
            if not key or "=" in key or "\0" in key or "\0" in value:
                raise SandboxError(f"sandbox spec: environment variable {key!r} is not valid")
        if self.stdio not in ("inherit", "pipe", "pty"):
            raise SandboxError(f"sandbox spec: stdio {self.stdio!r} is not inherit, pipe or pty")
        if not self.cwd.startswith("/"):
            raise SandboxError(f"sandbox spec: cwd {self.cwd!r} is not absolute")
        for m in self.mounts:
            if not m.dst.startswith("/"):
                raise SandboxError(f"sandbox spec: mount target {m.dst!r} is not absolute")
            if isinstance(m, BindMount) and not Path(m.src).exists():
                raise SandboxError(f"sandbox spec: bind mount source {m.src} does not exist")
            if isinstance(m, SecretMount) and (not 0 <= m.mode <= 0o7777 or not 0 <= m.uid < 1 << 32
                                               or not 0 <= m.gid < 1 << 32):
                raise SandboxError(f"sandbox spec: secret mount {m.dst}: bad mode, uid or gid")
        roots = self.root.lowers if isinstance(self.root, OverlayRoot) else [self.root.path]
        for d in roots:
            if not Path(d).is_dir():
                raise SandboxError(f"sandbox spec: root directory {d} does not exist")
        if isinstance(self.root, OverlayRoot):
            if not self.root.lowers:
                raise SandboxError("sandbox spec: overlay root has no lower directory")
            for d in (self.root.upper, self.root.work):
                if not Path(d).is_dir():
                    raise SandboxError(f"sandbox spec: overlay directory {d} does not exist")
        lim = self.limits
        for name in ("memory", "pids", "cpu_weight"):
            v = getattr(lim, name)
            if v is not None and v <= 0:
                raise SandboxError(f"sandbox spec: limit {name}={v} must be positive")
        if lim.cpus is not None and lim.cpus <= 0:
            raise SandboxError(f"sandbox spec: limit cpus={lim.cpus} must be positive")
        if lim.memory_swap not in (None, -1) and (lim.memory is None or lim.memory_swap < lim.memory):
            raise SandboxError("sandbox spec: memory_swap must be -1 or at least memory")
        if self.timeout is not None and self.timeout <= 0:
            raise SandboxError(f"sandbox spec: timeout {self.timeout} must be positive")
        self._validate_host_options()

    def _validate_host_options(self) -> None:
        from . import sysctls

        for kind in ("ipc", "pid", "uts"):
            allowed = ("private", "host", "none") if kind == "ipc" else ("private", "host")
            if getattr(self, kind) not in allowed:
                raise SandboxError(f"sandbox spec: {kind} mode {getattr(self, kind)!r} is not "
                                   + " or ".join(allowed))
        if self.userns is not None and (self.pid == "host" or self.devices):
            raise SandboxError("sandbox spec: the host's PID namespace and devices cannot be "
                               "given to a user-namespaced container")
        if self.uts == "host" and self.hostname is not None:
            raise SandboxError("sandbox spec: a hostname cannot be set in the host's UTS namespace")
        for name, addr in self.extra_hosts:
            if not name or any(c.isspace() or c == "\0" for c in name + addr) or not addr:
                raise SandboxError(f"sandbox spec: extra host {name!r} {addr!r} is not valid")
        for text in (*self.dns, *self.dns_search, *self.dns_options, *self.group_add):
            if not text or any(c.isspace() or c == "\0" for c in text):
                raise SandboxError(f"sandbox spec: {text!r} is not a valid DNS or group setting")
        for d in self.devices:
            if not d.path.startswith("/") or "\0" in d.path or d.type not in ("c", "b") \
                    or not d.access or set(d.access) - set("rwm") \
                    or not 0 <= d.major < 1 << 12 or not 0 <= d.minor < 1 << 20:
                raise SandboxError(f"sandbox spec: device {d.path!r} is not valid")
        for key, value in self.sysctls.items():
            sysctls.check(key, value, self.network.mode, self.ipc, self.uts)
        if self.shm_size is not None and self.shm_size <= 0:
            raise SandboxError(f"sandbox spec: shm size {self.shm_size} must be positive")


@dataclass
class ExecSpec:
    """One more process in a running container (the sandbox's `exec`), ending exactly as
    privileged as the container's own command: same capabilities, seccomp profile and
    no_new_privs. The container is named by a pidfd of its PID 1 (see `exec`)."""

    container_id: str                # names its cgroups (pybuild-<id>)
    argv: list[str]
    env: dict[str, str] = field(default_factory=dict)
    cwd: str = "/"
    user: str = "0"                  # resolved against the container's /etc/passwd
    hostname: str = ""               # HOSTNAME's default
    group_add: list[str] = field(default_factory=list)   # the container's --group-add
    cap_add: list[str] = field(default_factory=list)
    cap_drop: list[str] = field(default_factory=list)
    seccomp: str | Path | None = None
    no_new_privs: bool = False       # docker's default: setuid binaries work
    stdio: str = "inherit"           # inherit (our 0, 1, 2) | null | pty
    pty_size: tuple[int, int] | None = None
    detach: bool = False             # the joiner outlives us (no parent-death signal)
    cache_dir: Path | None = None    # compiled seccomp filters

    def validate(self) -> None:
        if not self.argv:
            raise SandboxError("exec spec: argv is empty")
        if not _ID.match(self.container_id):
            raise SandboxError(f"exec spec: container id {self.container_id!r} is not [a-zA-Z0-9_.-]")
        for i, arg in enumerate(self.argv):
            if "\0" in arg:
                raise SandboxError(f"exec spec: argv[{i}] contains a NUL byte")
        for key, value in self.env.items():
            if not key or "=" in key or "\0" in key or "\0" in value:
                raise SandboxError(f"exec spec: environment variable {key!r} is not valid")
        if self.stdio not in ("inherit", "null", "pty"):
            raise SandboxError(f"exec spec: stdio {self.stdio!r} is not inherit, null or pty")
        if not self.cwd.startswith("/"):
            raise SandboxError(f"exec spec: cwd {self.cwd!r} is not absolute")


@dataclass
class Result:
    exit_code: int                   # the command's status; 128+N for a death by signal N
    signal: int | None = None
    oom_killed: bool = False
    timed_out: bool = False
    message: str | None = None       # why the container ended abnormally, for the user
    stdout: bytes | None = None      # captured when stdio is pipe or pty
    stderr: bytes | None = None
