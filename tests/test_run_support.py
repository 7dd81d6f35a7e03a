"""Shared fixtures for the test_run_* files: a store holding busybox images, and a
snapshot of the host resources a container could leave behind. No tests here."""

from __future__ import annotations

import copy
import os
import re
import subprocess
import tarfile
from pathlib import Path

import pytest

from conftest import CLI
from layerstore.store import Store

CONFIGURED = {"Entrypoint": ["echo", "ep"], "Cmd": ["c1", "c2"], "Env": ["A=1", "B=2"],
              "WorkingDir": "/srv", "Volumes": {"/data": {}}, "ExposedPorts": {"80/tcp": {}},
              "StopSignal": "SIGUSR1", "User": "user"}


def tag_configured(root: Path, source: str, name: str, **fields) -> None:
    """Tag a copy of `source` whose container config has `fields` set."""
    store = Store.open(root)
    image = store.resolve(source)
    config = copy.deepcopy(image.config)
    for key, value in fields.items():
        setattr(config.config, key, value)
    store.tag(name, store.commit_image(config, list(image.manifest.layers)))


_BUILT: dict[Path, CLI] = {}


@pytest.fixture(scope="module")
def run_store(tmp_path_factory, busybox_rootfs) -> CLI:
    """A store with `busybox` (no config) and `bbcfg` (Entrypoint, Cmd, Env, ...), made
    once per session and shared by the test_run_* modules; each module's containers are
    removed when the module is done."""
    cli = _BUILT.get(busybox_rootfs)
    if cli is None:
        base = tmp_path_factory.mktemp("runstore")
        tar = base / "busybox.tar"
        with tarfile.open(tar, "w") as t:
            t.add(busybox_rootfs, arcname=".")
        cli = CLI(base / "store")
        cli("import", tar, "busybox")
        tag_configured(cli.root, "busybox", "bbcfg", **CONFIGURED)
        _BUILT[busybox_rootfs] = cli
    yield cli
    # leave nothing running: every container still recorded is removed
    ids = cli("ps", "-aq", "--no-trunc", check=False).stdout.split()
    if ids:
        cli("rm", "-f", *ids, check=False)


def host_resources(root: Path) -> dict[str, object]:
    """What a container of this store could leak: mounts, cgroups, netns, veths, processes,
    files under ROOT/containers. Cgroups count only `pybuild-<64 hex>` (our container ids;
    the sandbox's own tests use shorter ids), mounts and processes only those naming ROOT."""
    cgroups = 0
    for _, dirnames, _ in os.walk("/sys/fs/cgroup"):
        cgroups += sum(1 for d in dirnames if re.fullmatch(r"pybuild-[0-9a-f]{64}", d))
    with open("/proc/self/mountinfo") as f:
        mounts = sum(1 for line in f if str(root) in line)
    links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True).stdout
    netns = len(os.listdir("/run/netns")) if os.path.isdir("/run/netns") else 0
    procs = 0
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                if str(root).encode() in f.read() and int(pid) != os.getpid():
                    procs += 1
        except OSError:
            continue
    # every entry under ROOT/containers (name links included), but not the .names dir itself
    files = sum(len(fs) + len(ds) for _, ds, fs in os.walk(root / "containers"))
    files -= (root / "containers" / ".names").is_dir()
    return {"mounts": mounts, "cgroups": cgroups, "netns": netns, "veths": links.count("pbv"),
            "processes": procs, "files": files}
