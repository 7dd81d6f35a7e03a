"""What `ps` and `inspect` show for container records (docker's columns and keys)."""

from __future__ import annotations

import shlex

from layerstore.humanize import ellipsis, quoted, since

from .containers import ContainerState
from .lifecycle import is_active, is_running

_HEALTH_WORDS = {"starting": "health: starting", "healthy": "healthy", "unhealthy": "unhealthy"}


def status_text(st: ContainerState) -> str:
    if st.status == "created":
        return "Created"
    if is_running(st):
        from .pause import is_paused

        up = f"Up {since(st.started_at).removesuffix(' ago')}"
        if is_paused(st):
            return up + " (Paused)"
        word = _HEALTH_WORDS.get(str((st.health or {}).get("Status")))
        return up + (f" ({word})" if word else "")
    if st.status == "restarting" and is_active(st):
        return f"Restarting ({st.exit_code if st.exit_code is not None else 0}) {since(st.finished_at)}"
    return f"Exited ({st.exit_code if st.exit_code is not None else 255}) {since(st.finished_at)}"


def ps_table(rows: list[ContainerState], quiet: bool, no_trunc: bool = False,
             sizes: dict[str, str] | None = None) -> str:
    """docker's ps table; `sizes` (id -> "12B (virtual 4.26MB)") adds the SIZE column."""
    if quiet:
        return "\n".join(r.id if no_trunc else r.id[:12] for r in rows)
    head = ("CONTAINER ID", "IMAGE", "COMMAND", "CREATED", "STATUS", "PORTS", "NAMES")
    if sizes is not None:
        head += ("SIZE",)
    table = [head]
    for r in rows:
        cmd = shlex.join(r.argv)
        table.append((r.id if no_trunc else r.id[:12], quoted(r.image_name, False),
                      quoted(cmd if no_trunc else ellipsis(cmd, 20)), since(r.created),
                      status_text(r), ", ".join(r.ports), r.name)
                     + ((sizes.get(r.id, "0B"),) if sizes is not None else ()))
    widths = [max(len(row[i]) for row in table) for i in range(len(head))]
    return "\n".join("   ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in table)


def port_map(ports: list[str]) -> dict[str, list[dict[str, str]]]:
    """"0.0.0.0:8080->80/tcp" records as docker's map: {"80/tcp": [{"HostIp", "HostPort"}]}."""
    out: dict[str, list[dict[str, str]]] = {}
    for p in ports:
        host, _, inside = p.rpartition("->")
        ip, _, port = host.rpartition(":")
        out.setdefault(inside, []).append({"HostIp": ip, "HostPort": port})
    return out


def inspect(st: ContainerState) -> dict:
    """docker inspect's container shape (the fields that mean something here)."""
    from .pause import is_paused

    running = is_running(st)
    restarting = st.status == "restarting" and is_active(st)
    paused = running and is_paused(st)
    state = {
        "Status": ("paused" if paused else "running") if running
        else "restarting" if restarting
        else st.status if st.status not in ("running", "restarting") else "exited",
        "Running": running or restarting, "Paused": paused, "Restarting": restarting,
    }
    health = _health(st)
    return {
        "Id": st.id,
        "Created": st.created,
        "Path": st.argv[0] if st.argv else "",
        "Args": st.argv[1:],
        "State": {
            **state,
            "Pid": st.pid if running else 0,
            "ExitCode": st.exit_code if st.exit_code is not None else 0,
            "OOMKilled": st.oom_killed,
            "Dead": False,
            "Error": st.error,
            "StartedAt": st.started_at,
            "FinishedAt": st.finished_at,
            **({"Health": health} if health is not None else {}),
        },
        "Image": st.image_id,
        "ImageManifest": st.image,
        "Name": "/" + st.name,
        "RestartCount": st.restart_count,
        "HostConfig": {
            "AutoRemove": st.auto_remove, "Privileged": st.privileged,
            "ReadonlyRootfs": st.read_only, "CapAdd": st.cap_add, "CapDrop": st.cap_drop,
            "SecurityOpt": ([f"seccomp={st.seccomp}"] if st.seccomp else [])
            + (["no-new-privileges"] if st.no_new_privs else []),
            "NetworkMode": st.network, "PortBindings": port_map(st.ports),
            "Resources": st.limits, "RestartPolicy": st.restart_policy,
            **st.host_config,
        },
        "Mounts": st.mounts,
        "Config": {
            "Hostname": st.hostname, "User": st.user, "Env": [f"{k}={v}" for k, v in st.env.items()],
            "Cmd": st.argv, "Image": st.image_name, "WorkingDir": st.cwd, "Labels": st.labels,
            "StopSignal": st.stop_signal, "StopTimeout": st.stop_timeout, "Tty": st.tty,
            **({"Healthcheck": st.healthcheck} if st.healthcheck else {}),
            "Entrypoint": None, "Volumes": None, "OnBuild": None,
        },
        "Platform": "linux",
        "NetworkSettings": {
            "IPAddress": st.ip or "", "Ports": port_map(st.ports),
            # docker's per-network map, which CI scripts range over for the address
            # (`{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}`); the private
            # network has docker's default network's name
            "Networks": {{"private": "bridge"}.get(st.network, st.network): {
                "IPAddress": st.ip or ""}},
        },
    }


def _health(st: ContainerState) -> dict | None:
    """docker's State.Health, present when the container has a health check; only the
    fields docker has, whatever health.json holds."""
    from .health import probe_argv

    if probe_argv(st.healthcheck, st.health_shell) is None or (st.health is None
                                                                and not st.detached):
        return None   # no check, or one nothing ran (only -d containers have a supervisor)
    h = st.health or {}
    log = [{"Start": str(e.get("Start", "")), "End": str(e.get("End", "")),
            "ExitCode": e.get("ExitCode") if isinstance(e.get("ExitCode"), int) else -1,
            "Output": str(e.get("Output", ""))}
           for e in (h.get("Log") or [])[-5:] if isinstance(e, dict)]
    streak = h.get("FailingStreak")
    return {"Status": str(h.get("Status") or "starting"),
            "FailingStreak": streak if isinstance(streak, int) else 0, "Log": log}
def port_lines(st: ContainerState, private: str | None = None) -> list[str]:
    """docker port: `80/tcp -> 0.0.0.0:8080` per published port, or with PRIVATE[/PROTO]
    only the host addresses of that port (the records read once, by port_map)."""
    from .errors import RunError

    ports = port_map(st.ports)
    if private is None:
        return [f"{inside} -> {b['HostIp']}:{b['HostPort']}" for inside, binds in ports.items()
                for b in binds]
    port, _, proto = private.partition("/")
    proto = proto or "tcp"
    if not port.isdigit() or proto not in ("tcp", "udp", "sctp"):
        raise RunError(f"invalid port {private!r}: expected PORT[/PROTO]")
    found = [f"{b['HostIp']}:{b['HostPort']}" for b in ports.get(f"{int(port)}/{proto}", [])]
    if not found:
        raise RunError(f"no public port '{port}/{proto}' published for {st.name}")
    return found
