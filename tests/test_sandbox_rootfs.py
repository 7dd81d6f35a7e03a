"""Root filesystems: overlay writes land in the upper dir only, deep lower stacks,
read-only roots, tmpfs and bind mounts."""

from __future__ import annotations

import hashlib
import os
import re
import stat
from pathlib import Path

import pytest

from builder.sandbox import BindMount, DirRoot, OverlayRoot, SandboxError, TmpfsMount
from layerstore import snapshots
from tests.test_sandbox_support import out, sh


def tree_digest(root: Path) -> str:
    """Names, types, modes, owners, link targets and contents of a whole tree."""
    h = hashlib.sha256()
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in sorted(dirnames + filenames):
            p = os.path.join(dirpath, name)
            st = os.lstat(p)
            h.update(f"{os.path.relpath(p, root)} {st.st_mode:o} {st.st_uid} {st.st_gid}\n".encode())
            if stat.S_ISLNK(st.st_mode):
                h.update(os.readlink(p).encode())
            elif stat.S_ISREG(st.st_mode):
                with open(p, "rb") as f:
                    h.update(hashlib.sha256(f.read()).digest())
    return h.hexdigest()


def overlay(tmp_path: Path, lowers: list[Path]) -> OverlayRoot:
    (tmp_path / "upper").mkdir()
    (tmp_path / "work").mkdir()
    return OverlayRoot(lowers, tmp_path / "upper", tmp_path / "work")


def test_writes_land_only_in_upper(busybox_rootfs, tmp_path):
    layer = tmp_path / "layer"
    (layer / "etc").mkdir(parents=True)
    (layer / "etc" / "motd").write_text("from layer\n")
    (layer / "data").mkdir()
    (layer / "data" / "gone").write_text("delete me")
    lowers = [busybox_rootfs, layer]
    before = [tree_digest(p) for p in lowers]
    plan = overlay(tmp_path, lowers)
    r = sh(busybox_rootfs, "cat /etc/motd; echo changed >> /etc/motd; rm /data/gone; "
                           "mkdir -p /new/dir; echo x > /new/dir/f; chmod 700 /bin; "
                           "rm -rf /usr/sbin; cat /etc/motd", root_plan=plan)
    assert r.exit_code == 0, r.stderr
    assert out(r) == "from layer\nfrom layer\nchanged\n"
    assert [tree_digest(p) for p in lowers] == before
    upper = plan.upper
    assert (upper / "etc" / "motd").read_text() == "from layer\nchanged\n"
    assert (upper / "new" / "dir" / "f").read_text() == "x\n"
    gone = os.lstat(upper / "data" / "gone")  # a whiteout
    assert stat.S_ISCHR(gone.st_mode) and gone.st_rdev == 0
    assert stat.S_IMODE(os.lstat(upper / "bin").st_mode) == 0o700
    # the mount points made for /etc/hosts and /etc/resolv.conf were removed again
    assert sorted(os.listdir(upper / "etc")) == ["motd"]


def test_idle_command_leaves_upper_empty(busybox_rootfs, tmp_path):
    plan = overlay(tmp_path, [busybox_rootfs])
    r = sh(busybox_rootfs, "cat /etc/hosts /etc/resolv.conf >/dev/null; ls /proc /sys >/dev/null",
           root_plan=plan, mounts=[TmpfsMount("/made/for/tmpfs")])
    assert r.exit_code == 0
    assert os.listdir(plan.upper) == []


def test_plain_root_gets_no_stubs(busybox_copy):
    before = tree_digest(busybox_copy)
    r = sh(busybox_copy, "test -f /etc/hosts && echo mounted", mounts=[TmpfsMount("/a/b")])
    assert out(r) == "mounted\n"
    assert tree_digest(busybox_copy) == before


@pytest.mark.parametrize("new_api", [True, False], ids=["fsopen", "mount2-fallback"])
def test_two_hundred_lowers(tmp_path, busybox_rootfs, monkeypatch, new_api):
    monkeypatch.setattr(snapshots, "USE_NEW_MOUNT_API", new_api)
    base = tmp_path / ("x" * 60)
    lowers = [busybox_rootfs]
    for i in range(200):
        d = base / f"snapshot-{i:03d}-{'y' * 20}"
        (d / "layers").mkdir(parents=True)
        (d / "layers" / f"l{i:03d}").write_text(str(i))
        (d / "order").write_text(str(i))
        lowers.append(d)
    assert sum(len(str(p)) + 1 for p in lowers) > 4096 * 4  # far beyond one option page
    r = sh(busybox_rootfs, "echo $(cat /order); ls /layers | wc -l; "
                           "awk '$5 == \"/\" {print $NF}' /proc/self/mountinfo",
           root_plan=overlay(tmp_path, lowers))
    order, count, options = out(r).split()
    assert (order, count) == ("199", "200")  # the last listed is the top layer
    # mount(2): every dir named by the number of an fd, looked up in /proc/self/fd
    assert ("lowerdir+=" in options) == new_api
    assert bool(re.search(r"lowerdir=\d+:\d+:\d+:", options)) != new_api


def test_readonly_root_with_tmpfs(busybox_rootfs):
    r = sh(busybox_rootfs, "touch /x 2>/dev/null; echo root=$?; echo y > /scratch/y && cat /scratch/y; "
                           "grep ' /scratch ' /proc/self/mountinfo | grep -c tmpfs",
           root_plan=DirRoot(busybox_rootfs, readonly=True),
           mounts=[TmpfsMount("/scratch", size=1 << 20)])
    assert out(r).split() == ["root=1", "y", "1"]


def test_bind_mounts_ro_and_rw(busybox_rootfs, tmp_path):
    ro, rw = tmp_path / "ro", tmp_path / "rw"
    ro.mkdir()
    rw.mkdir()
    (ro / "f").write_text("ro-data")
    r = sh(busybox_rootfs, "echo $(cat /mnt/ro/f); echo x > /mnt/ro/g 2>/dev/null; echo ro=$?; "
                           "echo written > /mnt/rw/out",
           mounts=[BindMount(ro, "/mnt/ro", readonly=True), BindMount(rw, "/mnt/rw", readonly=False)])
    assert out(r).split() == ["ro-data", "ro=1"]
    assert (rw / "out").read_text() == "written\n"
    assert not (ro / "g").exists()


def test_missing_root_is_a_clear_error(tmp_path):
    with pytest.raises(SandboxError, match="does not exist"):
        sh(tmp_path / "nope", "true")


@pytest.mark.parametrize("change, message", [
    ({"argv": []}, "argv is empty"),
    ({"cwd": "relative"}, "cwd 'relative' is not absolute"),
    ({"hostname": "bad host"}, "hostname 'bad host'"),
    ({"env": {"A=B": "x"}}, "environment variable 'A=B'"),
    ({"stdio": "tty"}, "stdio 'tty'"),
    ({"id": "../x"}, "container id '../x'"),
    ({"mounts": [TmpfsMount("rel")]}, "mount target 'rel' is not absolute"),
])
def test_bad_spec_names_the_field(busybox_rootfs, change, message):
    from tests.test_sandbox_support import spec
    s = spec(busybox_rootfs, "true")
    for k, v in change.items():
        setattr(s, k, v)
    with pytest.raises(SandboxError, match=message.replace("(", r"\(")):
        s.validate()
