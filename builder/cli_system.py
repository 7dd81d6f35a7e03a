"""docker's management groups and whole-system commands: `image …`, `builder …`,
`buildx build`, `image prune`, `system prune`, `system info`/`info`, `version`.

The groups only name top-level commands (cli.ManagementGroup): one implementation of each
command, reachable under docker's both spellings.
"""

from __future__ import annotations

import json
import os
import platform
import time

import click

from builder import VERSION
from builder.cli import ManagementGroup, Settings, _containers, _volumes_in_use, main, system_group
from layerstore.errors import PybuildError

IMAGE_ALIASES = {w: w for w in ("build", "history", "import", "inspect", "load", "pull", "push",
                                "save", "tag")} | {"ls": "images", "list": "images", "rm": "rmi"}


@main.group("image", cls=ManagementGroup, aliases=IMAGE_ALIASES)
def image_group() -> None:
    """Manage images (docker's `image` words: ls, rm, prune, inspect, …)."""


@main.group("builder", cls=ManagementGroup, aliases={"build": "build", "prune": "prune"})
def builder_group() -> None:
    """Manage builds (docker's `builder build`, `builder prune` = `pybuild prune`)."""


@main.group("buildx", cls=ManagementGroup, aliases={"build": "build", "prune": "prune"})
def buildx_group() -> None:
    """docker buildx's spellings: `buildx build` = `pybuild build`."""


def _created_before(store, desc, until: float | None) -> bool:
    """docker's until=: the image was created before WHEN (no date: kept)."""
    if until is None:
        return True
    from layerstore.errors import InvalidImage, NotFound
    from layerstore.humanize import parse_time

    try:
        created = parse_time(store.load_image(desc).config.created)
    except (NotFound, InvalidImage, ValueError):
        return False
    return created is not None and created.timestamp() < until


def _untag_unused(settings: Settings, store, parsed, until: float | None) -> list[str]:
    """docker's `-a`: every image no container (in any state) was made from, and that
    passes the filters, loses its names."""
    used = {c.image_id for c in _containers(settings).all()}
    gone = []
    for name, desc in store.refs.entries():
        if not name:
            continue
        try:
            img = store.load_image(desc, [name])
        except PybuildError:
            continue
        if img.id in used or not parsed.labels_match(img.config.config.Labels) or \
                not _created_before(store, desc, until):
            continue
        store.refs.delete(name)
        gone.append(_familiar(name))
    return gone


def _familiar(name: str) -> str:
    from layerstore.reference import parse

    ref = parse(name)
    return f"{ref.familiar_repository}:{ref.tag}" if ref.tag else ref.familiar_repository


def _dangling(store, parsed, until: float | None) -> list[str]:
    """The untagged images the filters let go (labels, and created before until=)."""
    from builder.filters import dangling_images

    untagged = {desc.digest: desc for name, desc in store.refs.entries() if not name}
    return [d for d in dangling_images(store, parsed)
            if d in untagged and _created_before(store, untagged[d], until)]


@image_group.command("prune")
@click.option("-a", "--all", "all_unused", is_flag=True,
              help="Remove every image no container uses, not just dangling ones.")
@click.option("-f", "--force", is_flag=True, help="Do not ask (there is no prompt anyway).")
@click.option("--filter", "filters", multiple=True, metavar="KEY=VALUE",
              help="until=WHEN (created before), label=KEY[=VALUE], label!=KEY[=VALUE].")
@click.pass_obj
def image_prune_cmd(settings: Settings, all_unused: bool, force: bool,
                    filters: tuple[str, ...]) -> None:
    """Remove dangling images (with -a: unused ones), and the space only they held."""
    from layerstore.gc import prune
    from layerstore.humanize import human_size
    from layerstore.usage import Freed

    from builder.filters import prune_filters

    parsed, until = prune_filters(filters)
    store = settings.store()
    untagged = _untag_unused(settings, store, parsed, until) if all_unused else []
    with Freed(store.root) as freed:
        report = prune(store, untagged=_dangling(store, parsed, until))
    if untagged or report.untagged_images:
        click.echo("Deleted Images:")
        for name in untagged:
            click.echo(f"untagged: {name}")
    click.echo(f"Total reclaimed space: {human_size(freed.bytes)}")


@system_group.command("prune")
@click.option("-a", "--all", "all_unused", is_flag=True,
              help="Remove every unused image, not just dangling ones.")
@click.option("--volumes", is_flag=True, help="Prune anonymous volumes too.")
@click.option("-f", "--force", is_flag=True, help="Do not ask (there is no prompt anyway).")
@click.option("--filter", "filters", multiple=True, metavar="KEY=VALUE",
              help="until=WHEN, label=KEY[=VALUE], label!=KEY[=VALUE].")
@click.pass_obj
def system_prune_cmd(settings: Settings, all_unused: bool, volumes: bool, force: bool,
                     filters: tuple[str, ...]) -> None:
    """Remove stopped containers, dangling images (-a: unused ones), the build cache and,
    with --volumes, unused anonymous volumes: docker's `system prune`."""
    from builder.cache import prune_store
    from builder.runner.lifecycle import prune as prune_containers
    from builder.runner.volumes import Volumes
    from layerstore.humanize import human_size

    from builder.filters import prune_filters

    parsed, until = prune_filters(filters)
    containers = prune_containers(_containers(settings))
    if containers:
        click.echo("Deleted Containers:\n" + "\n".join(containers) + "\n")
    if volumes:
        gone = Volumes(settings.root).prune(_volumes_in_use(settings), False)
        if gone:
            click.echo("Deleted Volumes:\n" + "\n".join(gone) + "\n")
    store = settings.store()
    untagged = _untag_unused(settings, store, parsed, until) if all_unused else []
    if untagged:
        click.echo("Deleted Images:\n" + "\n".join(f"untagged: {n}" for n in untagged) + "\n")
    # docker's system prune drops all unused build cache (not only the dangling records)
    s = prune_store(store, all_unused=all_unused,
                    until=until if until is not None else time.time() + 1, filters=parsed)
    if s.cache_entries:
        click.echo(f"Deleted build cache objects: {s.cache_entries}\n")
    click.echo(f"Total reclaimed space: {human_size(s.store.reclaimed)}")


# --- info and version ------------------------------------------------------------

def _os_release() -> str:
    try:
        with open("/etc/os-release") as f:
            for line in f:
                if line.startswith("PRETTY_NAME="):
                    return line.split("=", 1)[1].strip().strip('"')
    except OSError:
        pass
    return "unknown"


def _mem_total() -> int:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return 0


def _cgroup_version() -> str:
    if os.path.exists("/sys/fs/cgroup/cgroup.controllers"):
        return "2"
    if os.path.exists("/sys/fs/cgroup/unified/cgroup.controllers"):
        return "1 (hybrid: v2 at /sys/fs/cgroup/unified)"
    return "1"


def _arch() -> str:
    from layerstore.platforms import host_platform

    return host_platform().architecture


def info_data(settings: Settings) -> dict:
    """docker info's fields, under docker's JSON names, for a daemonless store."""
    from builder.runner.lifecycle import is_running
    from layerstore.images import list_images

    from builder.rootless_info import format_map, probe

    rl = probe()
    states = [c for c in _containers(settings).all()]
    running = [c for c in states if c.status == "running" and is_running(c)]
    paused = [c for c in states if getattr(c, "paused", False)]
    root_exists = (settings.root / "index.json").exists()
    images = {r.image_id for r in list_images(settings.store())} if root_exists else set()
    return {
        "ID": "",
        "Containers": len(states),
        "ContainersRunning": len(running) - len(paused),
        "ContainersPaused": len(paused),
        "ContainersStopped": len(states) - len(running),
        "Images": len(images),
        "Driver": "overlay",
        "DriverStatus": [["Backing Filesystem", _fs_type(settings.root)]],
        "CgroupDriver": "cgroupfs",
        "CgroupVersion": _cgroup_version(),
        "KernelVersion": platform.release(),
        "OperatingSystem": _os_release(),
        "OSType": "linux",
        "Architecture": platform.machine(),
        "NCPU": os.cpu_count() or 0,
        "MemTotal": _mem_total(),
        "DockerRootDir": str(settings.root),
        "Name": platform.node(),
        "ServerVersion": VERSION,
        "SecurityOptions": ["name=seccomp,profile=builtin", "name=cgroupns"]
                           + (["name=rootless"] if rl.rootless else []),
        "Rootless": rl.rootless,
        "RootlessDetails": {
            "UserNamespace": rl.in_user_namespace,
            "User": rl.user,
            "Overlay": rl.overlay,
            "Network": rl.network,
            "UIDMap": format_map(rl.uid_map),
            "GIDMap": format_map(rl.gid_map),
            "CgroupDelegated": rl.cgroup_delegated,
        },
        "Daemonless": True,
        "Warnings": rl.missing,
    }


def _fs_type(root) -> str:
    """The filesystem type of the store's mount (what the overlay upper dirs live on)."""
    path = os.path.realpath(root if os.path.exists(root) else os.path.dirname(root))
    best, kind = "", "unknown"
    try:
        with open("/proc/self/mounts") as f:
            for line in f:
                fields = line.split()
                if len(fields) >= 3 and (path == fields[1] or path.startswith(
                        fields[1].rstrip("/") + "/")) and len(fields[1]) > len(best):
                    best, kind = fields[1], fields[2]
    except OSError:
        pass
    return kind


def _human(n: int) -> str:
    from layerstore.humanize import bytes_size

    return bytes_size(n)


def format_info(d: dict) -> str:
    lines = [
        "Client:",
        f" Version:    {VERSION}",
        " Context:    default (daemonless: this process is the engine)",
        "",
        "Server:",
        f" Containers: {d['Containers']}",
        f"  Running: {d['ContainersRunning']}",
        f"  Paused: {d['ContainersPaused']}",
        f"  Stopped: {d['ContainersStopped']}",
        f" Images: {d['Images']}",
        f" Server Version: {d['ServerVersion']}",
        f" Storage Driver: {d['Driver']}",
        *[f"  {k}: {v}" for k, v in d["DriverStatus"]],
        f" Cgroup Driver: {d['CgroupDriver']}",
        f" Cgroup Version: {d['CgroupVersion']}",
        " Security Options:",
        *[f"  {o.split(',')[0].removeprefix('name=')}" + "".join(
            f"\n   {kv.split('=')[0].capitalize()}: {kv.split('=')[1]}"
            for kv in o.split(",")[1:]) for o in d["SecurityOptions"]],
        f" Kernel Version: {d['KernelVersion']}",
        f" Operating System: {d['OperatingSystem']}",
        f" OSType: {d['OSType']}",
        f" Architecture: {d['Architecture']}",
        f" CPUs: {d['NCPU']}",
        f" Total Memory: {_human(d['MemTotal'])}",
        f" Name: {d['Name']}",
        f" Docker Root Dir: {d['DockerRootDir']}",
        f" Rootless: {str(d['Rootless']).lower()}",
    ]
    r = d.get("RootlessDetails")
    if d["Rootless"] and r:
        lines += [
            f"  User: {r['User']} (user namespace: {'yes' if r['UserNamespace'] else 'no'})",
            f"  UID map: {r['UIDMap']}",
            f"  GID map: {r['GIDMap']}",
            f"  Overlay: {r['Overlay']}",
            f"  Network: {r['Network']}",
            f"  Cgroup delegated: {', '.join(r['CgroupDelegated']) or 'no'}",
        ]
    lines += [f"WARNING: {w}" for w in d.get("Warnings", [])]
    return "\n".join(lines)


def _render(data: dict, fmt: str | None, text) -> str:
    """--format: `json` (docker's one line), or a Go template as inspect's -f takes it."""
    if fmt is None:
        return text(data)
    if fmt.strip() in ("json", "{{json .}}"):
        return json.dumps(data)
    from builder.formatting import render_inspect

    return render_inspect(fmt, [data]).removesuffix("\n")


@system_group.command("info")
@click.option("-f", "--format", "fmt", default=None, help="json, or a Go template.")
@click.pass_obj
def system_info_cmd(settings: Settings, fmt: str | None) -> None:
    """Show the store, the host and what the sandbox uses (docker info)."""
    click.echo(_render(info_data(settings), fmt, format_info))


@main.command("info")
@click.option("-f", "--format", "fmt", default=None, help="json, or a Go template.")
@click.pass_context
def info_cmd(ctx: click.Context, fmt: str | None) -> None:
    """Show the store, the host and what the sandbox uses (= system info)."""
    ctx.invoke(system_info_cmd, fmt=fmt)


def version_data() -> dict:
    arch = _arch()
    client = {"Version": VERSION, "ApiVersion": "-", "GoVersion": "-",
              "PythonVersion": platform.python_version(), "Os": "linux", "Arch": arch,
              "Platform": {"Name": "pybuild"}}
    # no daemon: the engine is this process; scripts probing `.Server.Version` get ours
    server = {"Platform": {"Name": "pybuild (daemonless)"}, "Version": VERSION,
              "Os": "linux", "Arch": arch, "KernelVersion": platform.release(),
              "Components": [{"Name": "Engine", "Version": VERSION}]}
    return {"Client": client, "Server": server}


def format_version(d: dict) -> str:
    c, s = d["Client"], d["Server"]
    return "\n".join([
        "Client:",
        f" Version:           {c['Version']}",
        f" Python version:    {c['PythonVersion']}",
        f" OS/Arch:           {c['Os']}/{c['Arch']}",
        " Context:           default",
        "",
        f"Server: {s['Platform']['Name']}",
        " Engine:",
        f"  Version:          {s['Version']}",
        f"  OS/Arch:          {s['Os']}/{s['Arch']}",
        f"  Kernel Version:   {s['KernelVersion']}",
    ])


@main.command("version")
@click.option("-f", "--format", "fmt", default=None, help="json, or a Go template.")
def version_cmd(fmt: str | None) -> None:
    """Show the version of pybuild (docker version's shape)."""
    click.echo(_render(version_data(), fmt, format_version))
