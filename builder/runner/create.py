"""Image config + run options -> a SandboxSpec and a container record.

docker's rules: Env is the image's overlaid by -e/--env-file; argv is the
entrypoint (`--entrypoint` replaces the image's and drops its Cmd) followed by
the command line's args or else the image's Cmd; WorkingDir, User and
StopSignal come from the image unless a flag overrides them; image Volumes
not covered by a mount get anonymous volumes; -P publishes ExposedPorts.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from builder.sandbox import (BindMount, Limits, NetworkConfig, OverlayRoot, PortMapping,
                             SandboxSpec, TmpfsMount)
from layerstore.errors import NotFound, PybuildError
from layerstore.platforms import of_config
from layerstore.store import Image, Store

from .containers import Containers, ContainerState
from .errors import RunError
from .options import (MountSpec, PortSpec, RunOptions, parse_env, parse_env_file,
                      parse_signal)
from .volumes import Volumes, copy_up
from . import specfile


def seccomp_cache(root: Path) -> Path:
    """ROOT/cache/seccomp/: compiled seccomp filters (derived data, safe to delete)."""
    return Path(root) / "cache" / "seccomp"


@dataclass
class Prepared:
    """A created container: its record, directory and the spec that will run it."""

    state: ContainerState
    dir: Path
    spec: SandboxSpec
    containers: Containers
    ulimits: list = field(default_factory=list)


def resolve_image(store: Store, name: str, pull: str, platform: str | None = None) -> Image:
    """Find the image (for --platform, else this host's), pulling it per --pull."""
    from layerstore.platforms import parse_platform
    from layerstore.registry import PULL_POLICIES, ensure_image

    if pull not in PULL_POLICIES:
        raise RunError(f"invalid --pull {pull!r}: expected missing, always or never")
    try:
        return ensure_image(store, name, policy=pull,
                            platform=parse_platform(platform) if platform else None)
    except NotFound as e:
        raise RunError(str(e)) from None


def compose_argv(cfg, command: list[str], entrypoint: str | None) -> list[str]:
    """docker's Entrypoint/Cmd composition."""
    if entrypoint is not None:
        ep = [entrypoint] if entrypoint else []
        cmd = list(command)
    else:
        ep = list(cfg.Entrypoint or [])
        cmd = list(command) if command else list(cfg.Cmd or [])
    argv = ep + cmd
    if not argv:
        raise RunError("no command specified: the image has no Entrypoint or Cmd and none was given")
    return argv


def working_dir(cfg, flag: str | None) -> str:
    if flag is not None:
        if not flag.startswith("/"):
            raise RunError(f"the working directory {flag!r} is invalid: it must be an absolute path")
        return flag
    wd = cfg.WorkingDir or "/"
    return str(PurePosixPath("/") / wd)


def _free_port(ip: str, proto: str) -> int:
    import socket

    kind = socket.SOCK_STREAM if proto == "tcp" else socket.SOCK_DGRAM
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind((ip, 0))
        return s.getsockname()[1]


def port_mappings(cfg, ports: list[PortSpec], publish_all: bool) -> list[PortMapping]:
    wanted = list(ports)
    if publish_all:
        have = {(p.container_port, p.proto) for p in wanted}
        for key in sorted(cfg.ExposedPorts or {}):
            num, _, proto = key.partition("/")
            proto = proto or "tcp"
            if num.isdigit() and (int(num), proto) not in have:
                wanted.append(PortSpec("0.0.0.0", 0, int(num), proto))
    out = []
    for p in wanted:
        host_port = p.host_port or _free_port(p.host_ip, p.proto)
        out.append(PortMapping(host_port, p.container_port, p.proto, p.host_ip))
    return out


def _mounts(opts: RunOptions, cfg, lowers: list[Path], volumes: Volumes,
            state: ContainerState) -> list[BindMount | TmpfsMount]:
    requested = list(opts.mounts)
    targets = {os.path.normpath(m.target) for m in requested}
    for vol_target in sorted(cfg.Volumes or {}):
        t = str(PurePosixPath("/") / vol_target)
        if os.path.normpath(t) not in targets:
            requested.append(MountSpec("volume", t))
    out: list[BindMount | TmpfsMount] = []
    seen: set[str] = set()
    for m in requested:
        t = os.path.normpath(m.target)
        if not t.strip("/"):   # an image's VOLUME / would copy the whole image, hide the root
            raise RunError(f"invalid mount target {m.target!r}: cannot mount over /")
        if t in seen:
            raise RunError(f"duplicate mount point: {m.target}")
        seen.add(t)
        if m.type == "tmpfs":
            out.append(TmpfsMount(t, m.size, m.mode, noexec=m.noexec))
            state.mounts.append({"Type": "tmpfs", "Destination": t, "RW": True})
            continue
        if m.type == "bind":
            src = Path(m.source)
            if not src.exists():
                if not (m.create_source and m.source.startswith("/")):
                    raise RunError(f"invalid mount {m.source}:{m.target}: bind source path "
                                   f"{m.source} does not exist")
                create_bind_source(m.source, m.target)
            out.append(BindMount(src.resolve(), t, m.readonly))
            state.mounts.append({"Type": "bind", "Source": str(src.resolve()), "Destination": t,
                                 "RW": not m.readonly})
            continue
        vol = volumes.create(m.source or None)
        if not m.source:
            state.anon_volumes.append(vol.name)
        copy_up(lowers, t, vol.data)
        out.append(BindMount(vol.data, t, m.readonly))
        state.mounts.append({"Type": "volume", "Name": vol.name, "Source": str(vol.data),
                             "Destination": t, "RW": not m.readonly})
    out.sort(key=lambda m: m.dst.count("/"))
    return out


def create_bind_source(source: str, target: str) -> None:
    """docker's `-v /missing/dir:/x`: the host directory is made, 0755 (root's), as the
    user named it. A symlink on the way that exists is followed (the user's path, as
    docker follows it), but a dangling one is refused rather than followed: whoever can
    plant a link where the path is still missing would otherwise pick where root makes
    a directory (docker's MkdirAll fails there too)."""
    from layerstore import resolver

    try:
        with resolver.rooted("/") as root:
            os.close(resolver.makedirs(root, source, mode=0o755, follow_dangling=False))
    except OSError as e:
        why = e.strerror or str(e)
        if isinstance(e, FileExistsError):
            why += " (a dangling symlink on the way is not followed)"
        raise RunError(f"invalid mount {source}:{target}: cannot create bind source path "
                       f"{source}: {why}") from None


def prepare(store: Store, opts: RunOptions, awaits_start: bool = False) -> Prepared:
    """Create the container (directory, record, volumes) and its spec, kept for `start`;
    nothing runs yet. `awaits_start`: made by `create`, it waits with no owner."""
    try:
        return _prepare(store, opts, awaits_start)
    except RunError:
        raise
    except PybuildError as e:
        if e.exit_code == 1:
            raise RunError(str(e)) from None
        raise


def _prepare(store: Store, opts: RunOptions, awaits_start: bool) -> Prepared:
    image = resolve_image(store, opts.image, opts.pull, opts.platform)
    cfg = image.config.config
    argv = compose_argv(cfg, opts.command, opts.entrypoint)
    env = cfg.env_dict()
    from_files = [item for f in opts.env_files for item in parse_env_file(f)]
    env.update(parse_env(from_files + list(opts.env), dict(os.environ)))
    cwd = working_dir(cfg, opts.workdir)
    user = opts.user if opts.user is not None else (cfg.User or "0")
    if not user:
        user = "0"
    stop_signal = parse_signal(opts.stop_signal or cfg.StopSignal or "SIGTERM")
    ports = port_mappings(cfg, opts.ports, opts.publish_all)
    network = NetworkConfig(opts.network, ports=ports)
    containers = Containers(store.root)
    cid = containers.new_id()
    hostname = opts.hostname or cid[:12]
    if opts.uts == "host":    # docker: the host's name, which the container cannot set
        import socket

        hostname = socket.gethostname()
    limits = Limits(memory=opts.memory, memory_swap=opts.memory_swap, pids=opts.pids_limit,
                    cpus=opts.cpus)
    cap_add, seccomp, nnp = list(opts.cap_add), opts.seccomp, opts.no_new_privs
    if opts.privileged:
        cap_add, seccomp, nnp = ["ALL"], "unconfined", False
    if any(c.upper() in ("ALL", "CAP_ALL") for c in cap_add):
        cap_add = own_capabilities()
    labels = dict(cfg.Labels or {})
    labels.update(opts.labels)
    state = ContainerState(
        id=cid, name=opts.name or "", image=image.descriptor.digest,
        image_name=opts.image, image_id=image.id, created=containers.now(), argv=argv, env=env,
        cwd=cwd, user=user, hostname=hostname, detached=opts.detach, tty=opts.tty,
        auto_remove=opts.rm, stop_signal=stop_signal,
        stop_timeout=opts.stop_timeout if opts.stop_timeout is not None else 10,
        cap_add=cap_add, cap_drop=list(opts.cap_drop), seccomp=seccomp, no_new_privs=nnp,
        privileged=opts.privileged, read_only=opts.read_only, network=opts.network,
        ports=[str(p) for p in ports], labels=labels,
        limits={k: v for k, v in vars(limits).items() if v is not None},
        log_max_size=opts.log_max_size, log_max_files=opts.log_max_files,
        host_config=host_config(opts), awaits_start=awaits_start)
    _supervision(state, cfg, opts)
    spec = SandboxSpec(root=OverlayRoot([], Path(), Path()), argv=argv,
                       env=tty_env(env, opts.tty), cwd=cwd, user=user, hostname=hostname,
                       limits=limits, network=network,
                       cap_add=cap_add, cap_drop=list(opts.cap_drop), seccomp=seccomp,
                       no_new_privs=nnp, privileged=opts.privileged, init=opts.init, id=cid,
                       freezer=True,
                       cache_dir=seccomp_cache(store.root), platform=of_config(image.config))
    host_options(spec, opts)
    _check_security(spec)
    cdir = containers.create(state)
    try:
        lowers = store.snapshot_chain(image)
        if not lowers:
            empty = cdir / "empty"
            empty.mkdir()
            lowers = [empty]
        spec.root = OverlayRoot(lowers, cdir / "upper", cdir / "work", readonly=opts.read_only,
                                volatile=opts.rm)
        spec.state_dir = cdir / "sandbox"
        spec.mounts = _mounts(opts, cfg, lowers, Volumes(store.root), state)
        spec.validate()
        specfile.save(cdir, spec, list(opts.ulimits))
        containers.save(state)
    except BaseException:
        discard(containers, state)
        raise
    return Prepared(state, cdir, spec, containers, list(opts.ulimits))


def _supervision(state: ContainerState, cfg, opts: RunOptions) -> None:
    """--restart and the health check (the image's, merged with --health-*)."""
    from .health import merged_config

    if opts.restart is not None:
        state.restart_policy = opts.restart.inspect()
    state.healthcheck = merged_config(cfg.Healthcheck, opts.health)
    state.health_shell = list(cfg.Shell) if cfg.Shell else None


def host_options(spec: SandboxSpec, opts: RunOptions) -> None:
    """--add-host, --dns*, --device, --ipc/--pid/--uts, --sysctl, --shm-size, --group-add."""
    spec.extra_hosts = list(opts.add_hosts)
    spec.dns, spec.dns_search = list(opts.dns), list(opts.dns_search)
    spec.dns_options = list(opts.dns_options)
    spec.devices = list(opts.devices)
    spec.ipc, spec.pid, spec.uts = opts.ipc, opts.pid, opts.uts
    if spec.uts == "host":
        spec.hostname = None
    spec.sysctls = dict(opts.sysctls)
    spec.shm_size = opts.shm_size
    spec.group_add = list(opts.group_add)


def host_config(opts: RunOptions) -> dict:
    """What inspect shows of the host options, in docker's HostConfig names and shapes."""
    return {
        "ExtraHosts": [f"{name}:{addr}" for name, addr in opts.add_hosts],
        "Dns": list(opts.dns), "DnsSearch": list(opts.dns_search),
        "DnsOptions": list(opts.dns_options),
        "Devices": [{"PathOnHost": d.host_path, "PathInContainer": d.path,
                     "CgroupPermissions": d.access} for d in opts.devices],
        "IpcMode": "private" if opts.ipc == "private" else opts.ipc,
        "PidMode": "" if opts.pid == "private" else opts.pid,
        "UTSMode": "" if opts.uts == "private" else opts.uts,
        "Sysctls": dict(opts.sysctls), "ShmSize": opts.shm_size or 64 << 20,
        "GroupAdd": list(opts.group_add),
    }


def load_prepared(containers: Containers, state: ContainerState) -> Prepared:
    """A created (or exited) container, ready to start again as it was prepared."""
    cdir = containers.path(state.id)
    spec, ulimits = specfile.load(cdir)
    if not all(Path(d).is_dir() for d in spec.root.lowers):
        # a prune removed the unpacked layers since: unpack them again
        try:
            store = Store.open(containers.root)
            spec.root.lowers = store.snapshot_chain(store.resolve(state.image))
        except PybuildError as e:
            raise RunError(f"container {state.id[:12]}: its image's layers are gone ({e})") from None
    spec.validate()
    return Prepared(state, cdir, spec, containers, ulimits)


def tty_env(env: dict[str, str], tty: bool) -> dict[str, str]:
    """The process's environment: with -t, TERM=xterm unless the image or -e set TERM.
    As docker's daemon environment, it is not part of the recorded Env (inspect's
    Config.Env), so an `exec` without -t does not inherit it."""
    return {"TERM": "xterm", **env} if tty and "TERM" not in env else env


def own_capabilities() -> list[str]:
    """ALL as docker means it: every capability we hold ourselves (our bounding set may
    lack some, e.g. CAP_SYS_RESOURCE in a restricted VM; asking for more fails capset)."""
    from builder.sandbox.caps import CAP_NUMBERS

    with open("/proc/self/status") as f:
        bnd = next(int(ln.split()[1], 16) for ln in f if ln.startswith("CapBnd:"))
    return sorted(name for name, n in CAP_NUMBERS.items() if bnd & (1 << n))


def _check_security(spec: SandboxSpec) -> None:
    """Unknown capabilities and unreadable seccomp profiles fail before anything is made
    (the filter compiled here is the one `start` loads: same cache)."""
    from builder.sandbox import caps, seccomp

    capset = caps.resolve(spec.cap_add, spec.cap_drop)
    seccomp.bpf_for(spec.seccomp, capset, spec.cache_dir)


def discard(containers: Containers, state: ContainerState) -> None:
    """Remove a container's directory and its anonymous volumes."""
    containers.discard(state)
