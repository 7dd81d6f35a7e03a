"""Helpers shared by the build tests: a busybox context, buildah as a peer, umoci unpack.

buildah runs with its own --root/--runroot under the test's temp dir, and
`cleanup` removes its containers, images and overlay mounts, so nothing of a
test run is left on the machine.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tarfile
from pathlib import Path

from conftest import CLI, require_tool

CONFIG_FIELDS = ("User", "ExposedPorts", "Env", "Entrypoint", "Cmd", "Volumes", "WorkingDir",
                 "Labels", "StopSignal", "Healthcheck", "OnBuild", "Shell")


def rootfs_tar(rootfs: Path, dest: Path) -> Path:
    with tarfile.open(dest, "w") as tar:
        tar.add(rootfs, arcname=".")
    return dest


class Buildah:
    def __init__(self, base: Path) -> None:
        require_tool("buildah")
        self.root = base / "root"
        self.runroot = base / "runroot"
        self.base = base

    def __call__(self, *args: str, check: bool = True, timeout: float = 300):
        cmd = ["buildah", "--root", str(self.root), "--runroot", str(self.runroot),
               "--storage-driver", "overlay", *map(str, args)]
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
        if check and p.returncode != 0:
            raise AssertionError(f"{' '.join(cmd)} exited {p.returncode}:\n{p.stdout}\n{p.stderr}")
        return p

    def bud(self, context: Path, tag: str, *extra: str, check: bool = True):
        return self("bud", "--runtime", "runc", "--format", "docker", "--network", "host",
                    "-t", tag, *extra, str(context), check=check)

    def config(self, tag: str) -> dict:
        out = json.loads(self("inspect", "--type", "image", tag).stdout)
        return out["Docker"]["config"]

    def unpack(self, tag: str, dest: Path) -> Path:
        layout = dest.parent / (dest.name + "-oci")
        self("push", tag, f"oci:{layout}:{tag}")
        return umoci_unpack(layout, tag, dest)

    def cleanup(self) -> None:
        if self.root.exists():
            self("rm", "-a", check=False)
            self("rmi", "-a", "-f", check=False)
            unmount_under(self.base)
        shutil.rmtree(self.base, ignore_errors=True)


def unmount_under(base: Path) -> None:
    base_s = str(base.resolve())
    with open("/proc/self/mountinfo") as f:
        points = [line.split()[4] for line in f]
    for p in sorted((p for p in points if p.startswith(base_s)), key=len, reverse=True):
        subprocess.run(["umount", "-l", p], capture_output=True)


def umoci_unpack(layout: Path, tag: str, dest: Path) -> Path:
    require_tool("umoci")
    subprocess.run(["umoci", "unpack", "--image", f"{layout}:{tag}", str(dest)], check=True,
                   capture_output=True)
    return dest / "rootfs"


def pybuild_unpack(pybuild, name: str, dest: Path) -> Path:
    archive = dest.parent / (dest.name + ".tar")
    pybuild("save", "--format", "oci", "-o", archive, name)
    layout = dest.parent / (dest.name + "-oci")
    layout.mkdir()
    with tarfile.open(archive) as t:
        t.extractall(layout)
    index = json.loads((layout / "index.json").read_text())
    ref = index["manifests"][0]["annotations"]["org.opencontainers.image.ref.name"]
    return umoci_unpack(layout, ref, dest)


def pybuild_config(pybuild, name: str) -> dict:
    return json.loads(pybuild("inspect", name).stdout)[0]["Config"]


def config_subset(cfg: dict) -> dict:
    out = {}
    for k in CONFIG_FIELDS:
        v = cfg.get(k)
        if k == "Labels" and v:
            v = {a: b for a, b in v.items() if a != "io.buildah.version"} or None
        if v in (None, "", [], {}):
            continue
        out[k] = v
    return out


def mounts_now() -> list[str]:
    with open("/proc/self/mountinfo") as f:
        return sorted(line.split()[4] for line in f)


def processes_matching(word: str) -> list[str]:
    out = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                cmd = f.read().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if word in cmd:
            out.append(f"{pid} {cmd}")
    return out


def import_busybox(pybuild, busybox_rootfs: Path, tmp: Path, name: str = "busybox") -> None:
    """The busybox base image in the test's store (one layer, CMD sh).

    A store that does not exist yet gets a copy of a template store made once per rootfs
    and name (`pybuild import` costs ~0.3 s, `cp -a` of the 3 MB store ~10 ms; hundreds of
    tests start this way). A store of images alone names no absolute path (container
    records do: never template a store with containers), so the copy is a store of its own;
    a real copy (no hard links), so a test that corrupts its blobs or snapshots changes
    nothing the next test sees. Two stores made this way hold the same image ID (two
    imports differ in their `created` time), which no test relies on."""
    root = Path(pybuild.root)
    if not root.exists():
        template = busybox_rootfs.parent / f"template-store-{name}"
        if not template.exists():
            work = busybox_rootfs.parent / f"template-work-{name}"
            shutil.rmtree(work, ignore_errors=True)
            work.mkdir()
            tar = rootfs_tar(busybox_rootfs, work / "busybox-rootfs.tar")
            CLI(work / "store")("import", "--change", 'CMD ["sh"]', tar, name)
            os.rename(work / "store", template)
            shutil.rmtree(work)
        root.parent.mkdir(parents=True, exist_ok=True)
        subprocess.run(["cp", "-a", "--", str(template), str(root)], check=True)
        return
    tar = tmp / "busybox-rootfs.tar"
    if not tar.exists():
        rootfs_tar(busybox_rootfs, tar)
    pybuild("import", "--change", 'CMD ["sh"]', tar, name)


def steps(output: str) -> dict[int, str]:
    """Plain progress -> {step number: "CACHED" | "DONE" | "ERROR"}."""
    out: dict[int, str] = {}
    for line in output.splitlines():
        parts = line.split()
        if len(parts) >= 2 and parts[0].startswith("#") and parts[0][1:].isdigit():
            if parts[1] in ("CACHED", "DONE", "ERROR:"):
                out[int(parts[0][1:])] = parts[1].rstrip(":")
    return out
