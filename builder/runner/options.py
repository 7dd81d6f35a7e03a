"""Parsing the values of docker's run flags into plain objects, one clear error each.

Nothing here touches the store or the host, so every parser is unit-testable
and a bad flag fails before anything is created.
"""

from __future__ import annotations

import re
import signal
from dataclasses import dataclass, field
from pathlib import Path

from builder.keyvalues import env_pairs, fields, kv_map
from layerstore import humanize
from layerstore.errors import PybuildError

from .errors import RunError

_VOLUME_NAME = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9_.-]*\Z")
_CONTAINER_NAME = re.compile(r"^/?[a-zA-Z0-9][a-zA-Z0-9_.-]*\Z")
ULIMITS = {
    "core": "RLIMIT_CORE", "cpu": "RLIMIT_CPU", "data": "RLIMIT_DATA", "fsize": "RLIMIT_FSIZE",
    "locks": "RLIMIT_LOCKS", "memlock": "RLIMIT_MEMLOCK", "msgqueue": "RLIMIT_MSGQUEUE",
    "nice": "RLIMIT_NICE", "nofile": "RLIMIT_NOFILE", "nproc": "RLIMIT_NPROC",
    "rss": "RLIMIT_RSS", "rtprio": "RLIMIT_RTPRIO", "rttime": "RLIMIT_RTTIME",
    "sigpending": "RLIMIT_SIGPENDING", "stack": "RLIMIT_STACK",
}


@dataclass
class MountSpec:
    """One -v/--mount/--tmpfs request before volumes are looked up or created."""

    type: str                 # bind | volume | tmpfs
    target: str
    source: str = ""          # host path (bind), volume name ("" = anonymous), unused for tmpfs
    readonly: bool = False
    size: int | None = None   # tmpfs
    mode: int = 0o1777        # tmpfs
    noexec: bool = False      # tmpfs (docker's --tmpfs default; --mount type=tmpfs allows exec)
    create_source: bool = False   # bind from -v: a missing host dir is made (--mount: an error)


@dataclass
class PortSpec:
    host_ip: str
    host_port: int            # 0: pick a free one
    container_port: int
    proto: str = "tcp"


@dataclass
class Ulimit:
    name: str                 # docker's name, e.g. nofile
    soft: int
    hard: int


def rlimit_values(ulimits) -> list[tuple[int, int, int]]:
    """Ulimits as the sandbox spec's rlimits: (RLIMIT_*, soft, hard), -1 unlimited."""
    import resource

    def value(n: int) -> int:
        return resource.RLIM_INFINITY if n == -1 else n
    return [(getattr(resource, ULIMITS[u.name]), value(u.soft), value(u.hard)) for u in ulimits]


@dataclass
class RunOptions:
    """Everything `pybuild run` was told, as parsed values."""

    image: str
    command: list[str] = field(default_factory=list)
    name: str | None = None
    rm: bool = False
    detach: bool = False
    interactive: bool = False
    tty: bool = False
    env: list[str] = field(default_factory=list)          # K=V (K alone: from our env)
    env_files: list[Path] = field(default_factory=list)
    mounts: list[MountSpec] = field(default_factory=list)
    workdir: str | None = None
    user: str | None = None
    entrypoint: str | None = None                         # "" resets it
    init: bool = False
    hostname: str | None = None
    network: str = "private"
    ports: list[PortSpec] = field(default_factory=list)
    publish_all: bool = False
    memory: int | None = None
    memory_swap: int | None = None
    cpus: float | None = None
    pids_limit: int | None = None
    read_only: bool = False
    cap_add: list[str] = field(default_factory=list)
    cap_drop: list[str] = field(default_factory=list)
    seccomp: str | None = None                            # None: default profile
    no_new_privs: bool = False                            # docker: off unless asked
    privileged: bool = False
    ulimits: list[Ulimit] = field(default_factory=list)
    stop_signal: str | None = None
    stop_timeout: int | None = None
    pull: str = "missing"
    platform: str | None = None           # normalized os/arch[/variant] (--platform)
    labels: dict[str, str] = field(default_factory=dict)
    log_max_size: int = 10 << 20
    log_max_files: int = 3
    restart: object = None            # restart.RestartPolicy (None: "no"); see supervision.py
    health: object = None             # health.HealthFlags from --health-* (None: the image's)
    add_hosts: list[tuple[str, str]] = field(default_factory=list)   # (name, address)
    dns: list[str] = field(default_factory=list)
    dns_search: list[str] = field(default_factory=list)
    dns_options: list[str] = field(default_factory=list)
    devices: list = field(default_factory=list)           # builder.sandbox.DeviceNode
    ipc: str = "private"                                  # private | host | none
    pid: str = "private"                                  # private | host
    uts: str = "private"                                  # private | host
    cidfile: str | None = None
    sysctls: dict[str, str] = field(default_factory=dict)
    shm_size: int | None = None
    group_add: list[str] = field(default_factory=list)


def parse_log_opt(text: str, opts: RunOptions) -> None:
    """--log-opt max-size=10m | max-file=3 (docker's json-file options)."""
    key, eq, value = text.partition("=")
    if key == "max-size" and eq:
        opts.log_max_size = parse_size(value, "--log-opt max-size")
    elif key == "max-file" and value.isdigit() and int(value) >= 1:
        opts.log_max_files = int(value)
    else:
        raise RunError(f"invalid --log-opt {text!r}: supported are max-size=SIZE and max-file=N")


def parse_size(text: str, what: str) -> int:
    """docker's sizes: 64m, 1g, 512k, 1024 (bytes)."""
    try:
        value = humanize.parse_size(text)
    except ValueError:
        raise RunError(f"invalid {what} {text!r}: expected a size such as 64m or 1g") from None
    if value <= 0:
        raise RunError(f"invalid {what} {text!r}: must be positive")
    return value


def parse_memory_swap(text: str) -> int:
    return -1 if text.strip() == "-1" else parse_size(text, "--memory-swap")


def parse_cpus(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise RunError(f"invalid --cpus {text!r}: expected a number such as 0.5") from None
    if not value > 0 or value > 1024:
        raise RunError(f"invalid --cpus {text!r}: must be above 0")
    return value


def parse_pids(text: str) -> int | None:
    try:
        value = int(text)
    except ValueError:
        raise RunError(f"invalid --pids-limit {text!r}: expected an integer") from None
    if value in (0, -1):
        return None           # docker: 0 or -1 is unlimited
    if value < 0:
        raise RunError(f"invalid --pids-limit {text!r}: must be positive or -1")
    return value


def parse_signal(text: str) -> int:
    """SIGTERM, TERM or 15."""
    t = text.strip().upper()
    if t.isdigit():
        n = int(t)
        if 1 <= n < signal.NSIG:
            return n
    else:
        name = t if t.startswith("SIG") else "SIG" + t
        sig = getattr(signal.Signals, name, None) if name in signal.Signals.__members__ else None
        if sig is not None:
            return int(sig)
    raise RunError(f"invalid signal {text!r}")


def parse_env_file(path: Path) -> list[str]:
    """KEY=VALUE lines; '#' comments and blank lines skipped; KEY alone takes our env."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as e:
        raise RunError(f"--env-file {path}: {e.strerror}") from None
    except UnicodeDecodeError as e:
        raise RunError(f"--env-file {path}: not UTF-8 at byte {e.start}") from None
    out = []
    for n, line in enumerate(text.splitlines(), 1):
        s = line.lstrip()
        if not s or s.startswith("#"):
            continue
        key = s.split("=", 1)[0]
        if not key or any(c.isspace() for c in key):
            raise RunError(f"--env-file {path}:{n}:1: variable {key!r} contains whitespace or is empty")
        out.append(s)
    return out


def parse_env(items: list[str], host_env: dict[str, str]) -> dict[str, str]:
    """-e values in order; 'K' alone copies K from our environment when it is set."""
    return env_pairs(items, host_env,
                     lambda item: RunError(f"invalid environment variable {item!r}: empty name"))


def _check_target(target: str, spec: str) -> str:
    if not target.startswith("/"):
        raise RunError(f"invalid mount {spec!r}: target {target!r} is not an absolute path")
    if target.rstrip("/") == "":
        raise RunError(f"invalid mount {spec!r}: cannot mount over /")
    return target


def parse_volume(text: str) -> MountSpec:
    """-v SRC:DST[:OPTS] (SRC a host path or a volume name) or -v DST (anonymous volume)."""
    parts = text.split(":")
    if len(parts) == 1:
        return MountSpec("volume", _check_target(parts[0], text))
    if len(parts) > 3 or not parts[0] or not parts[1]:
        raise RunError(f"invalid volume specification {text!r}: expected SRC:DST[:ro|rw]")
    src, dst = parts[0], _check_target(parts[1], text)
    readonly = False
    for opt in (parts[2].split(",") if len(parts) == 3 else []):
        if opt == "ro":
            readonly = True
        elif opt in ("rw", "z", "Z", "private", "rprivate", "nocopy", ""):
            pass
        else:
            raise RunError(f"invalid volume specification {text!r}: unknown option {opt!r}")
    if src.startswith("/"):
        return MountSpec("bind", dst, src, readonly, create_source=True)
    if src.startswith("."):
        raise RunError(f"invalid volume specification {text!r}: a bind mount source must be "
                       "an absolute path")
    check_volume_name(src)
    return MountSpec("volume", dst, src, readonly)


def check_volume_name(name: str) -> str:
    if not _VOLUME_NAME.match(name) or len(name) > 255:
        raise RunError(f"invalid volume name {name!r}: only [a-zA-Z0-9][a-zA-Z0-9_.-] are allowed")
    return name


def check_container_name(name: str) -> str:
    if not _CONTAINER_NAME.match(name) or len(name) > 128:
        raise RunError(f"invalid container name {name!r}: only [a-zA-Z0-9][a-zA-Z0-9_.-] are allowed")
    return name.lstrip("/")


def parse_mount(text: str) -> MountSpec:
    """--mount type=bind|volume|tmpfs,source=..,target=..,readonly,tmpfs-size=..,tmpfs-mode=.."""
    kv = fields(text, "--mount", bare="true", error=RunError)
    kind = kv.pop("type", "volume")
    if kind not in ("bind", "volume", "tmpfs"):
        raise RunError(f"invalid --mount {text!r}: type {kind!r} is not bind, volume or tmpfs")
    src = kv.pop("source", None) or kv.pop("src", None) or ""
    dst = kv.pop("target", None) or kv.pop("destination", None) or kv.pop("dst", None)
    if not dst:
        raise RunError(f"invalid --mount {text!r}: target is required")
    ro_text = kv.pop("readonly", None) or kv.pop("ro", None)
    if ro_text not in (None, "true", "1", "false", "0"):
        raise RunError(f"invalid --mount {text!r}: readonly={ro_text!r} is not true or false")
    m = MountSpec(kind, _check_target(dst, text), src, ro_text in ("true", "1"))
    if kind == "tmpfs":
        if src:
            raise RunError(f"invalid --mount {text!r}: a tmpfs mount has no source")
        if "tmpfs-size" in kv:
            m.size = parse_size(kv.pop("tmpfs-size"), "tmpfs-size")
        if "tmpfs-mode" in kv:
            m.mode = _octal(kv.pop("tmpfs-mode"), text)
    elif kind == "bind":
        if not src.startswith("/"):
            raise RunError(f"invalid --mount {text!r}: bind source must be an absolute path")
    elif src:
        check_volume_name(src)
    kv.pop("bind-propagation", None)
    kv.pop("volume-nocopy", None)
    if kv:
        raise RunError(f"invalid --mount {text!r}: unknown field {next(iter(kv))!r}")
    return m


def _octal(text: str, spec: str) -> int:
    try:
        mode = int(text, 8)
    except ValueError:
        raise RunError(f"invalid mode {text!r} in {spec!r}: expected octal such as 1777") from None
    if not 0 <= mode <= 0o7777:
        raise RunError(f"invalid mode {text!r} in {spec!r}")
    return mode


def parse_tmpfs(text: str) -> MountSpec:
    """--tmpfs DST[:size=64m,mode=1777,exec,...]: noexec unless `exec` is given, as docker's."""
    dst, _, opts = text.partition(":")
    m = MountSpec("tmpfs", _check_target(dst, text), noexec=True)
    for opt in filter(None, opts.split(",")):
        key, _, value = opt.partition("=")
        if key == "size":
            m.size = parse_size(value, "tmpfs size")
        elif key == "mode":
            m.mode = _octal(value, text)
        elif key in ("exec", "noexec"):
            m.noexec = key == "noexec"
        elif key not in ("rw", "nosuid", "nodev"):  # the sandbox always mounts nosuid,nodev
            raise RunError(f"invalid --tmpfs {text!r}: unsupported option {key!r} "
                           "(supported: size, mode, rw, exec, noexec, nosuid, nodev)")
    return m


def _port(text: str, spec: str) -> int:
    if not text.isdigit() or not 1 <= int(text) <= 65535:
        raise RunError(f"invalid port specification {spec!r}: {text!r} is not a port in 1-65535")
    return int(text)


def parse_publish(text: str) -> PortSpec:
    """-p [HOSTIP:][HOSTPORT:]CPORT[/tcp|udp]"""
    body, _, proto = text.partition("/")
    proto = proto or "tcp"
    if proto not in ("tcp", "udp"):
        raise RunError(f"invalid port specification {text!r}: protocol {proto!r} is not tcp or udp")
    parts = body.rsplit(":", 2)
    if len(parts) == 1:
        return PortSpec("0.0.0.0", 0, _port(parts[0], text), proto)
    if len(parts) == 2:
        host_port = _port(parts[0], text) if parts[0] else 0
        return PortSpec("0.0.0.0", host_port, _port(parts[1], text), proto)
    ip = parts[0].strip("[]") or "0.0.0.0"
    if not re.match(r"^\d{1,3}(\.\d{1,3}){3}\Z", ip):
        raise RunError(f"invalid port specification {text!r}: {ip!r} is not an IPv4 address")
    host_port = _port(parts[1], text) if parts[1] else 0
    return PortSpec(ip, host_port, _port(parts[2], text), proto)


def parse_ulimit(text: str) -> Ulimit:
    """--ulimit nofile=1024[:2048]"""
    name, eq, value = text.partition("=")
    if not eq or name not in ULIMITS:
        raise RunError(f"invalid --ulimit {text!r}: expected NAME=SOFT[:HARD] with NAME one of "
                       + ", ".join(sorted(ULIMITS)))
    soft_s, _, hard_s = value.partition(":")
    try:
        soft = int(soft_s)
        hard = int(hard_s) if hard_s else soft
    except ValueError:
        raise RunError(f"invalid --ulimit {text!r}: limits must be integers") from None
    if soft > hard and hard != -1:
        raise RunError(f"invalid --ulimit {text!r}: soft limit {soft} exceeds hard limit {hard}")
    return Ulimit(name, soft, hard)


# strconv.ParseBool's spellings, which docker's --security-opt no-new-privileges=V takes
_BOOLS = {v: True for v in ("1", "t", "T", "true", "TRUE", "True")} | \
    {v: False for v in ("0", "f", "F", "false", "FALSE", "False")}


def parse_security_opt(text: str, opts: RunOptions) -> None:
    """seccomp=unconfined|FILE, no-new-privileges[=BOOL] (docker: off unless given; the
    old `:` separator, common in compose files, is taken too); others are refused."""
    # docker cuts at the first "=", else (the old form) at the first ":"
    key, eq, value = text.partition(":") if "=" not in text and \
        text.startswith(("seccomp", "no-new-privileges")) else text.partition("=")
    if key == "seccomp":
        if not value:
            raise RunError(f"invalid --security-opt {text!r}: seccomp needs unconfined or a file")
        if value != "unconfined" and not Path(value).is_file():
            why = "is not a regular file" if Path(value).exists() else "does not exist"
            raise RunError(f"invalid --security-opt {text!r}: seccomp profile {value} {why}")
        opts.seccomp = value if value == "unconfined" else str(Path(value).absolute())
    elif key == "no-new-privileges":
        if eq and value not in _BOOLS:
            raise RunError(f"invalid --security-opt {text!r}: expected true or false")
        opts.no_new_privs = _BOOLS[value] if eq else True
    else:
        raise RunError(f"invalid --security-opt {text!r}: supported are seccomp=unconfined|FILE "
                       "and no-new-privileges")


def parse_caps(names: tuple[str, ...] | list[str]) -> list[str]:
    """--cap-add/--cap-drop values, checked before anything is pulled or created: a
    misspelt capability is the user's typo, not a sandbox failure."""
    from builder.sandbox.caps import CAP_NUMBERS

    for name in names:
        n = name.strip().upper()
        if n not in ("ALL", "CAP_ALL") and (n if n.startswith("CAP_") else "CAP_" + n) \
                not in CAP_NUMBERS:
            raise RunError(f"unknown capability {name} (see `pybuild run --help`)")
    return list(names)


def parse_add_host(text: str, flag: str = "--add-host") -> tuple[str, str]:
    """NAME:IP or NAME=IP (docker 25+); IPv6 as [::1] or bare; IP `host-gateway`."""
    name, eq, addr = text.partition("=")
    if not eq:
        name, _, addr = text.partition(":")
    if addr.startswith("[") and addr.endswith("]"):
        addr = addr[1:-1]
    if not name or any(c.isspace() or c in "#\0" for c in name):
        raise RunError(f"invalid argument {text!r} for {flag}: expected NAME:IP")
    if addr != "host-gateway":
        import ipaddress

        try:
            addr = str(ipaddress.ip_address(addr))
        except ValueError:
            raise RunError(f"invalid argument {text!r} for {flag}: invalid IP address {addr!r} "
                           "(expected NAME:IP, NAME:[IPv6] or NAME:host-gateway)") from None
    return name, addr


def parse_dns(text: str) -> str:
    import ipaddress

    try:
        return str(ipaddress.ip_address(text.strip("[]")))
    except ValueError:
        raise RunError(f"invalid argument {text!r} for --dns: not an IP address") from None


def parse_dns_search(text: str) -> str:
    if text != "." and not re.match(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,252}\Z", text):
        raise RunError(f"invalid argument {text!r} for --dns-search: not a domain name")
    return text


def parse_dns_option(text: str) -> str:
    if not re.match(r"^[A-Za-z0-9_.:+-]{1,255}\Z", text):
        raise RunError(f"invalid argument {text!r} for --dns-option: expected e.g. ndots:2")
    return text


def parse_device(text: str):
    """--device HOST[:CONTAINER][:rwm]: the host path must be a device node itself (a
    symlink or regular file is refused); the container gets the same type and numbers."""
    import os
    import stat

    from builder.sandbox import DeviceNode

    parts = text.split(":")
    if len(parts) > 3 or not parts[0]:
        raise RunError(f"invalid argument {text!r} for --device: expected "
                       "HOST[:CONTAINER][:PERMISSIONS]")
    src, dst, perms = parts[0], parts[0], "rwm"
    if len(parts) == 3:
        dst, perms = parts[1], parts[2]
    elif len(parts) == 2:
        if parts[1] and set(parts[1]) <= set("rwm"):
            perms = parts[1]
        else:
            dst = parts[1]
    if not perms or set(perms) - set("rwm") or not dst.startswith("/") or "\0" in dst:
        raise RunError(f"invalid argument {text!r} for --device: the container path must be "
                       "absolute and the permissions a combination of r, w and m")
    try:
        st = os.lstat(src)
    except OSError as e:
        raise RunError(f"error gathering device information while adding custom device "
                       f"{src!r}: {e.strerror}") from None
    if stat.S_ISCHR(st.st_mode):
        kind = "c"
    elif stat.S_ISBLK(st.st_mode):
        kind = "b"
    else:
        what = "a symbolic link" if stat.S_ISLNK(st.st_mode) else "not a device node"
        raise RunError(f"error gathering device information while adding custom device "
                       f"{src!r}: {what}")
    return DeviceNode(os.path.normpath(dst), kind, os.major(st.st_rdev), os.minor(st.st_rdev),
                      stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid,
                      "".join(sorted(set(perms), key="rwm".index)), host_path=src)


def parse_namespace_mode(flag: str, text: str) -> str:
    """--ipc host|private|shareable|none, --pid host, --uts host ("" or private: our own)."""
    modes = {"": "private", "private": "private", "host": "host"}
    if flag == "--ipc":
        modes.update(shareable="private", none="none")
    mode = modes.get(text)
    if mode is None:
        raise RunError(f"invalid {flag} {text!r}: expected " + ", ".join(m for m in modes if m))
    return mode


def parse_sysctl(text: str) -> tuple[str, str]:
    key, eq, value = text.partition("=")
    if not eq or not key:
        raise RunError(f"invalid argument {text!r} for --sysctl: expected KEY=VALUE")
    return key, value


def parse_label_file(path: str | Path) -> list[str]:
    """docker's --label-file: KEY=VALUE lines, '#' comments and blank lines skipped."""
    try:
        with open(path, "rb") as f:
            data = f.read((1 << 20) + 1)
    except OSError as e:
        raise RunError(f"--label-file {path}: {e.strerror}") from None
    if len(data) > 1 << 20:
        raise RunError(f"--label-file {path}: larger than 1 MiB")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise RunError(f"--label-file {path}: not UTF-8 at byte {e.start}") from None
    out = []
    for line in text.splitlines():
        s = line.strip()
        if s and not s.startswith("#"):
            out.append(s)
    return out


def parse_group_add(text: str) -> str:
    if not re.match(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,255}\$?\Z", text):
        raise RunError(f"invalid argument {text!r} for --group-add: expected a group name or id")
    return text


def _host_options(opts: RunOptions, add_host, dns, dns_search, dns_option, device, ipc, pid,
                  uts, cidfile, label_file, sysctl, shm_size, group_add) -> None:
    """The flags that reach the host's resources: hosts/DNS, devices, namespaces, sysctls."""
    from builder.sandbox import SandboxError, sysctls

    opts.add_hosts = [parse_add_host(h) for h in add_host]
    opts.dns = [parse_dns(d) for d in dns]
    opts.dns_search = [parse_dns_search(d) for d in dns_search]
    opts.dns_options = [parse_dns_option(o) for o in dns_option]
    opts.devices = [parse_device(d) for d in device]
    opts.ipc = parse_namespace_mode("--ipc", ipc)
    opts.pid = parse_namespace_mode("--pid", pid)
    opts.uts = parse_namespace_mode("--uts", uts)
    if opts.uts == "host" and opts.hostname is not None:
        raise RunError("conflicting options: --hostname and --uts host")
    opts.cidfile = cidfile
    opts.sysctls = dict(parse_sysctl(s) for s in sysctl)
    for key, value in opts.sysctls.items():
        try:
            sysctls.check(key, value, opts.network, opts.ipc, opts.uts)
        except SandboxError as e:
            raise RunError(str(e)) from None
    if shm_size is not None:
        opts.shm_size = parse_size(shm_size, "--shm-size")
    opts.group_add = [parse_group_add(g) for g in group_add]
    from_files = [item for f in label_file for item in parse_label_file(f)]
    opts.labels.update(kv_map(from_files, "--label-file", error=RunError))


def build_options(image: str, command: tuple[str, ...] | list[str], *, rm: bool = False,
                  detach: bool = False, name: str | None = None, interactive: bool = False,
                  tty: bool = False, env: tuple[str, ...] = (), env_file: tuple[str, ...] = (),
                  volume: tuple[str, ...] = (), mount: tuple[str, ...] = (),
                  tmpfs: tuple[str, ...] = (), workdir: str | None = None,
                  user: str | None = None, entrypoint: str | None = None, init: bool = False,
                  hostname: str | None = None, network: str = "private",
                  publish: tuple[str, ...] = (), publish_all: bool = False,
                  memory: str | None = None, memory_swap: str | None = None,
                  cpus: str | None = None, pids_limit: str | None = None,
                  read_only: bool = False, cap_add: tuple[str, ...] = (),
                  cap_drop: tuple[str, ...] = (), security_opt: tuple[str, ...] = (),
                  privileged: bool = False, ulimit: tuple[str, ...] = (),
                  stop_signal: str | None = None, stop_timeout: int | None = None,
                  pull: str = "missing", label: tuple[str, ...] = (),
                  log_opt: tuple[str, ...] = (), platform: str | None = None,
                  add_host: tuple[str, ...] = (),
                  dns: tuple[str, ...] = (), dns_search: tuple[str, ...] = (),
                  dns_option: tuple[str, ...] = (), device: tuple[str, ...] = (),
                  ipc: str = "", pid: str = "", uts: str = "", cidfile: str | None = None,
                  label_file: tuple[str, ...] = (), sysctl: tuple[str, ...] = (),
                  shm_size: str | None = None, group_add: tuple[str, ...] = ()) -> RunOptions:
    """The run command line's raw strings, parsed and checked."""
    net = {"bridge": "private", "default": "private"}.get(network, network)
    if net not in ("none", "host", "private"):
        raise RunError(f"invalid --network {network!r}: expected none, host or private")
    opts = RunOptions(image=image, command=list(command), name=name, rm=rm, detach=detach,
                      interactive=interactive, tty=tty, env=list(env),
                      env_files=[Path(f) for f in env_file], workdir=workdir, user=user,
                      entrypoint=entrypoint, init=init, hostname=hostname, network=net,
                      publish_all=publish_all, read_only=read_only, cap_add=parse_caps(cap_add),
                      cap_drop=parse_caps(cap_drop), privileged=privileged, stop_signal=stop_signal,
                      stop_timeout=stop_timeout, pull=pull)
    opts.mounts = ([parse_volume(v) for v in volume] + [parse_mount(m) for m in mount]
                   + [parse_tmpfs(t) for t in tmpfs])
    opts.ports = [parse_publish(p) for p in publish]
    if memory is not None:
        opts.memory = parse_size(memory, "--memory")
        if opts.memory < 6 << 20:
            raise RunError(f"invalid --memory {memory!r}: the minimum is 6m")
    if memory_swap is not None:
        opts.memory_swap = parse_memory_swap(memory_swap)
        if opts.memory is None:
            raise RunError("--memory-swap needs --memory as well")
        if opts.memory_swap != -1 and opts.memory_swap < opts.memory:
            raise RunError(f"invalid --memory-swap {memory_swap!r}: must be at least --memory")
    if cpus is not None:
        opts.cpus = parse_cpus(cpus)
    if pids_limit is not None:
        opts.pids_limit = parse_pids(pids_limit)
    for s in security_opt:
        parse_security_opt(s, opts)
    opts.ulimits = [parse_ulimit(u) for u in ulimit]
    for item in log_opt:
        parse_log_opt(item, opts)
    if stop_signal is not None:
        parse_signal(stop_signal)
    if stop_timeout is not None and stop_timeout < -1:
        raise RunError(f"invalid --stop-timeout {stop_timeout}: must be -1 or more")
    if hostname is not None and not re.match(r"^[a-zA-Z0-9]([a-zA-Z0-9.-]{0,62})\Z", hostname):
        raise RunError(f"invalid --hostname {hostname!r}: not a valid host name")
    _host_options(opts, add_host, dns, dns_search, dns_option, device, ipc, pid, uts, cidfile,
                  label_file, sysctl, shm_size, group_add)
    opts.labels.update(kv_map(label, "--label", error=RunError))   # wins over --label-file
    if platform:
        from layerstore.platforms import platform_option

        try:
            opts.platform = platform_option(platform)
        except PybuildError as exc:
            raise RunError(str(exc)) from None
    return opts
