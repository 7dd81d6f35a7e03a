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
        return f"Up {since(st.started_at).removesuffix(' ago')}"
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


def inspect(st: ContainerState) -> dict:
    """docker inspect's container shape (the fields that mean something here)."""
    running = is_running(st)
    return {
        "Id": st.id,
        "Created": st.created,
        "Path": st.argv[0] if st.argv else "",
        "Args": st.argv[1:],
        "State": {
            "Status": "running" if running else st.status if st.status != "running" else "exited",
            "Running": running,
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
