"""Mounts and limits through `pybuild run`: bind ro/rw, named and anonymous volumes,
--read-only with --tmpfs, --mount, and the pids/ulimit flags."""

from __future__ import annotations

import json
from pathlib import Path

from test_run_support import run_store  # noqa: F401  (fixture)

NONE = ("--network", "none")


def sh(cli, *flags_and_image: str, script: str, check: bool = True):
    return cli("run", "--rm", *NONE, *flags_and_image, "sh", "-c", script, check=check)


def test_bind_mounts_ro_enforced_rw_written(run_store, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "f").write_text("host\n")
    p = sh(run_store, "-v", f"{src}:/in:ro", "busybox",
           script="cat /in/f; echo x > /in/f; echo rc=$?; touch /in/new; echo rc=$?")
    assert p.stdout.splitlines() == ["host", "rc=1", "rc=1"]
    assert "Read-only file system" in p.stderr
    assert (src / "f").read_text() == "host\n" and not (src / "new").exists()
    sh(run_store, "--mount", f"type=bind,source={src},target=/rw", "busybox",
       script="echo changed > /rw/f")
    assert (src / "f").read_text() == "changed\n"
    p = run_store("run", "--rm", *NONE, "--mount", f"type=bind,source={tmp_path}/missing,"
                  "target=/x", "busybox", "true", check=False)
    assert p.returncode == 125 and "does not exist" in p.stderr


def test_named_volume_keeps_data(run_store):
    sh(run_store, "-v", "keep:/data", "busybox", script="echo persisted > /data/f")
    assert "keep" in run_store("volume", "ls", "-q").stdout.split()
    p = sh(run_store, "--mount", "type=volume,source=keep,target=/other,readonly", "busybox",
           script="cat /other/f; echo y > /other/f || echo ro")
    assert p.stdout.splitlines() == ["persisted", "ro"]
    info = json.loads(run_store("volume", "inspect", "keep").stdout)[0]
    assert info["Name"] == "keep" and info["Mountpoint"].endswith("/keep/_data")
    run_store("volume", "rm", "keep")
    assert "keep" not in run_store("volume", "ls", "-q").stdout.split()
    assert run_store("volume", "rm", "keep", check=False).returncode != 0


def test_new_volume_is_filled_from_the_image(run_store):
    """docker's copy-up: an empty volume mounted over image content starts with it."""
    p = sh(run_store, "-v", "etcvol:/etc", "busybox", script="grep -c '^user:' /etc/passwd")
    assert p.stdout == "1\n"
    info = json.loads(run_store("volume", "inspect", "etcvol").stdout)[0]
    assert (Path(info["Mountpoint"]) / "passwd").read_text().startswith("root:")
    sh(run_store, "-v", "etcvol:/etc", "busybox", script="echo extra > /etc/added")
    p = sh(run_store, "-v", "etcvol:/mnt", "busybox", script="cat /mnt/added; ls /mnt | grep -c passwd")
    assert p.stdout.split() == ["extra", "1"]                 # not copied again, data kept
    run_store("volume", "rm", "etcvol")


def test_anonymous_volumes_follow_rm(run_store):
    before = set(run_store("volume", "ls", "-q").stdout.split())
    # bbcfg declares VOLUME /data: an anonymous volume, filled from the image, removed by --rm
    p = sh(run_store, "--entrypoint", "", "-u", "0", "bbcfg",
           script="grep -q ' /data ' /proc/mounts && echo mounted; echo hi > /data/x")
    assert p.stdout == "mounted\n"
    assert set(run_store("volume", "ls", "-q").stdout.split()) == before
    cid = run_store("run", *NONE, "-d", "-v", "/scratch", "busybox", "true").stdout.strip()
    run_store("wait", cid)
    new = set(run_store("volume", "ls", "-q").stdout.split()) - before
    assert len(new) == 1
    run_store("rm", "-v", cid)
    assert set(run_store("volume", "ls", "-q").stdout.split()) == before


def test_read_only_root_with_tmpfs(run_store):
    p = sh(run_store, "--read-only", "--tmpfs", "/tmp:size=1m", "busybox",
           script="echo ok > /tmp/f && cat /tmp/f; echo x > /etc/f; echo rc=$?; "
                  "grep ' /tmp ' /proc/mounts | grep -o size=[0-9]*k")
    assert p.stdout.splitlines() == ["ok", "rc=1", "size=1024k"]
    assert "Read-only file system" in p.stderr


def test_limits_and_ulimits(run_store):
    loop = "for i in 1 2 3 4 5 6 7 8 9 10 11 12; do sleep 1 & done; echo all-started"
    p = sh(run_store, "--pids-limit", "8", "busybox", script=loop, check=False)
    assert p.returncode != 0 and "can't fork" in p.stderr and "all-started" not in p.stdout
    assert sh(run_store, "--pids-limit", "20", "busybox", script=loop).stdout == "all-started\n"
    p = sh(run_store, "--ulimit", "nofile=64:128", "busybox", script="ulimit -n; ulimit -Hn")
    assert p.stdout.split() == ["64", "128"]
    p = run_store("run", "--rm", *NONE, "--pids-limit", "x", "busybox", "true", check=False)
    assert p.returncode == 125 and "--pids-limit" in p.stderr
    hog = 'x=$(head -c 200000000 /dev/zero | tr "\\0" a); echo survived'
    p = sh(run_store, "--memory", "16m", "--memory-swap", "16m", "busybox", script=hog, check=False)
    assert p.returncode == 137 and "survived" not in p.stdout
    assert "out of memory" in p.stderr and "16MiB" in p.stderr
