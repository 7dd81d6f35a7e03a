"""What `ps` and `inspect` show for container records (docker's columns and keys)."""

from __future__ import annotations

import shlex

from layerstore.humanize import ellipsis, quoted, since

from .containers import ContainerState
from .lifecycle import is_running


def status_text(st: ContainerState) -> str:
    if st.status == "created":
        return "Created"
    if is_running(st):
        from .pause import is_paused

        up = f"Up {since(st.started_at).removesuffix(' ago')}"
        return up + " (Paused)" if is_paused(st) else up
    return f"Exited ({st.exit_code if st.exit_code is not None else 255}) {since(st.finished_at)}"


def ps_table(rows: list[ContainerState], quiet: bool, no_trunc: bool = False) -> str:
    if quiet:
        return "\n".join(r.id if no_trunc else r.id[:12] for r in rows)
    head = ("CONTAINER ID", "IMAGE", "COMMAND", "CREATED", "STATUS", "PORTS", "NAMES")
    table = [head]
    for r in rows:
        cmd = shlex.join(r.argv)
        table.append((r.id if no_trunc else r.id[:12], quoted(r.image_name, False),
                      quoted(cmd if no_trunc else ellipsis(cmd, 20)), since(r.created),
                      status_text(r), ", ".join(r.ports), r.name))
    widths = [max(len(row[i]) for row in table) for i in range(len(head))]
    return "\n".join("   ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in table)


def inspect(st: ContainerState) -> dict:
    """docker inspect's container shape (the fields that mean something here)."""
    from .pause import is_paused

    running = is_running(st)
    paused = running and is_paused(st)
    return {
        "Id": st.id,
        "Created": st.created,
        "Path": st.argv[0] if st.argv else "",
        "Args": st.argv[1:],
        "State": {
            "Status": ("paused" if paused else "running") if running
            else st.status if st.status != "running" else "exited",
            "Running": running,
            "Paused": paused,
            "Pid": st.pid if running else 0,
            "ExitCode": st.exit_code if st.exit_code is not None else 0,
            "OOMKilled": st.oom_killed,
            "Error": st.error,
            "StartedAt": st.started_at,
            "FinishedAt": st.finished_at,
        },
        "Image": st.image_id,
        "ImageManifest": st.image,
        "Name": "/" + st.name,
        "HostConfig": {
            "AutoRemove": st.auto_remove, "Privileged": st.privileged,
            "ReadonlyRootfs": st.read_only, "CapAdd": st.cap_add, "CapDrop": st.cap_drop,
            "SecurityOpt": ([f"seccomp={st.seccomp}"] if st.seccomp else [])
            + (["no-new-privileges"] if st.no_new_privs else []),
            "NetworkMode": st.network, "PortBindings": st.ports, "Resources": st.limits,
        },
        "Mounts": st.mounts,
        "Config": {
            "Hostname": st.hostname, "User": st.user, "Env": [f"{k}={v}" for k, v in st.env.items()],
            "Cmd": st.argv, "Image": st.image_name, "WorkingDir": st.cwd, "Labels": st.labels,
            "StopSignal": st.stop_signal, "StopTimeout": st.stop_timeout, "Tty": st.tty,
        },
        "NetworkSettings": {"IPAddress": st.ip or "", "Ports": st.ports},
    }


def port_lines(st: ContainerState, private: str | None = None) -> list[str]:
    """docker port: `80/tcp -> 0.0.0.0:8080` per published port, or with PRIVATE[/PROTO]
    only the host addresses of that port."""
    import re

    from .errors import RunError

    maps = []   # the record's "HOST_IP:HOST_PORT->PORT/PROTO" (PortMapping's str)
    for text in st.ports:
        m = re.fullmatch(r"(.*):(\d+)->(\d+)/(\w+)", text)
        if m:
            maps.append((m[1], int(m[2]), int(m[3]), m[4]))
    if private is None:
        return [f"{cport}/{proto} -> {ip}:{hport}" for ip, hport, cport, proto in maps]
    port, _, proto = private.partition("/")
    proto = proto or "tcp"
    if not port.isdigit() or proto not in ("tcp", "udp", "sctp"):
        raise RunError(f"invalid port {private!r}: expected PORT[/PROTO]")
    found = [f"{ip}:{hport}" for ip, hport, cport, proto_ in maps
             if cport == int(port) and proto_ == proto]
    if not found:
        raise RunError(f"no public port '{port}/{proto}' published for {st.name}")
    return found
