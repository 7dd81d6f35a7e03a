"""`pybuild bundle IMAGE DIR`: an OCI runtime bundle that `runc run` executes the way
`pybuild run` would: the same argv, env, cwd, user, hostname, namespaces,
capabilities, seccomp profile, masked and read-only paths, /dev and /etc files.

The values come from the same code that builds the sandbox spec (create.py)
and from the sandbox's own constants, so the two cannot drift apart silently.
"""

from __future__ import annotations

import json
import os
import platform
from pathlib import Path

from builder.sandbox import caps as capmod, seccomp
from builder.sandbox.spec import DEFAULT_PATH, MASKED_PATHS, READONLY_PATHS
from builder.sandbox.users import resolve as resolve_user
from layerstore import resolver
from layerstore.atomic import atomic_write
from layerstore.store import Store
from layerstore.unpack import unpack_image

from .create import compose_argv, working_dir
from .errors import RunError

NAMESPACES = ("pid", "network", "ipc", "uts", "mount", "cgroup")
_NOSUID_NOEXEC_NODEV = ["nosuid", "noexec", "nodev"]


def _mounts(etc_dir: Path) -> list[dict]:
    """The sandbox's kernel and /dev mounts (rootfs.py), then the generated /etc files."""
    out = [
        {"destination": "/proc", "type": "proc", "source": "proc", "options": _NOSUID_NOEXEC_NODEV},
        {"destination": "/dev", "type": "tmpfs", "source": "tmpfs",
         "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]},
        {"destination": "/dev/pts", "type": "devpts", "source": "devpts",
         "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"]},
        {"destination": "/dev/shm", "type": "tmpfs", "source": "shm",
         "options": _NOSUID_NOEXEC_NODEV + ["mode=1777", "size=65536k"]},
        {"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue",
         "options": _NOSUID_NOEXEC_NODEV},
        {"destination": "/sys", "type": "sysfs", "source": "sysfs",
         "options": _NOSUID_NOEXEC_NODEV + ["ro"]},
    ]
    for name in ("hosts", "resolv.conf", "hostname"):
        out.append({"destination": "/etc/" + name, "type": "bind",
                    "source": str(etc_dir / name), "options": ["rbind", "rprivate"]})
    return out


def oci_seccomp(setting: str | None, capset: frozenset[str]) -> dict | None:
    """The docker-format profile as it applies to `capset`, in OCI runtime-spec form."""
    if setting == "unconfined":
        return None
    path = Path(setting) if setting else seccomp.DEFAULT_PROFILE
    prof = seccomp.load_profile(path)
    machine = platform.machine()
    arch, native = seccomp._NATIVE.get(machine, (machine, ""))
    arches = [native] if native else []
    for entry in prof.get("archMap") or []:
        if entry.get("architecture") == native:
            arches += entry.get("subArchitectures") or []
    rules = []
    for rule in prof.get("syscalls") or []:
        if not seccomp._applies(rule, capset, arch):
            continue
        names = rule.get("names") or ([rule["name"]] if rule.get("name") else [])
        out = {"names": names, "action": rule["action"]}
        if rule.get("errnoRet") is not None:
            out["errnoRet"] = rule["errnoRet"]
        if rule.get("args"):
            out["args"] = [{"index": a["index"], "value": a["value"],
                            "valueTwo": a.get("valueTwo", 0), "op": a["op"]} for a in rule["args"]]
        rules.append(out)
    result = {"defaultAction": prof["defaultAction"], "architectures": arches, "syscalls": rules}
    if prof.get("defaultErrnoRet") is not None:
        result["defaultErrnoRet"] = prof["defaultErrnoRet"]
    return result


def _image_user(rootfs: Path, user: str):
    """USER resolved against the image's own /etc/passwd and /etc/group, each opened
    through the path resolver as the container would see it (an absolute symlink there
    stays inside the rootfs), then read through our fd of it."""
    fds = []
    try:
        with resolver.rooted(rootfs) as root:
            paths = []
            for name in ("etc/passwd", "etc/group"):
                try:
                    fds.append(resolver.resolve(root, name, flags=os.O_RDONLY | os.O_NONBLOCK))
                    paths.append(f"/proc/self/fd/{fds[-1]}")
                except (OSError, resolver.PathEscape):
                    paths.append("/nonexistent")
        return resolve_user(user, passwd=paths[0], group=paths[1])
    finally:
        for fd in fds:
            os.close(fd)


def write_bundle(store: Store, name: str, dest: Path, hostname: str | None = None,
                 command: list[str] | None = None, entrypoint: str | None = None) -> Path:
    """Unpack `name` into dest/rootfs and write dest/config.json (argv: Entrypoint +
    `command` or the image's Cmd, as `pybuild run IMAGE [COMMAND]` composes it)."""
    from .create import resolve_image

    dest = Path(dest).absolute()
    if dest.exists() and any(dest.iterdir()):
        raise RunError(f"bundle directory {dest} exists and is not empty")
    image = resolve_image(store, name, "never")
    cfg = image.config.config
    argv = compose_argv(cfg, list(command or []), entrypoint)
    cwd = working_dir(cfg, None)
    hostname = hostname or image.id[7:19]
    dest.mkdir(parents=True, exist_ok=True)
    rootfs = dest / "rootfs"
    unpack_image(store, image, rootfs)
    ids = _image_user(rootfs, cfg.User or "0")
    env = cfg.env_dict()
    env.setdefault("PATH", DEFAULT_PATH)
    env.setdefault("HOSTNAME", hostname)
    env.setdefault("HOME", ids.home)
    etc_dir = dest / "etc"
    etc_dir.mkdir(exist_ok=True)
    (etc_dir / "hosts").write_text("127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost "
                                   "ip6-loopback\n")
    try:
        resolv = Path("/etc/resolv.conf").read_text()
    except OSError:
        resolv = ""
    (etc_dir / "resolv.conf").write_text(resolv)
    (etc_dir / "hostname").write_text(hostname + "\n")
    capset = capmod.resolve([], [])
    cap_list = sorted(capset, key=lambda c: capmod.CAP_NUMBERS[c])
    config = {
        "ociVersion": "1.0.2",
        "process": {
            "terminal": False,
            "user": {"uid": ids.uid, "gid": ids.gid,
                     "additionalGids": list(ids.groups)},
            "args": argv,
            "env": [f"{k}={v}" for k, v in env.items()],
            "cwd": cwd,
            "capabilities": {"bounding": cap_list, "effective": cap_list,
                             "permitted": cap_list, "inheritable": [], "ambient": []},
            "noNewPrivileges": False,   # as `pybuild run` (docker's default)
        },
        "root": {"path": "rootfs", "readonly": False},
        "hostname": hostname,
        "mounts": _mounts(etc_dir),
        "linux": {
            "namespaces": [{"type": t} for t in NAMESPACES],
            "maskedPaths": list(MASKED_PATHS),
            "readonlyPaths": list(READONLY_PATHS),
            "resources": {"devices": [{"allow": False, "access": "rwm"}]},
        },
        "annotations": {"org.opencontainers.image.ref.name": name,
                        "io.pybuild.image.manifest": image.descriptor.digest},
    }
    prof = oci_seccomp(None, capset)
    if prof is not None:
        config["linux"]["seccomp"] = prof
    atomic_write(dest / "config.json", json.dumps(config, indent=2).encode(), 0o644)
    return dest
