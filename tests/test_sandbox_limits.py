"""cgroup limits: pids (fork bomb), memory (OOM reported as such), cpu files."""

from __future__ import annotations

import os
import subprocess
import time

import pytest

from builder.sandbox import Limits, start
from tests.test_sandbox_support import PROBE_PATH, clean, out, probe, residue, sh, spec  # noqa: F401


def test_pids_limit_stops_forks_exactly(busybox_rootfs, probe):
    # the probe is PID 1 (exec'd by sh), so it may create limit - 1 children
    r = sh(busybox_rootfs, f"exec {PROBE_PATH} forks", probe, limits=Limits(pids=16))
    assert out(r).strip() == "forks 15 EAGAIN"


@pytest.mark.slow
def test_fork_bomb_is_contained(busybox_rootfs):
    bomb = "bomb() { bomb | bomb & }; bomb; sleep 10"
    c = start(spec(busybox_rootfs, bomb, limits=Limits(pids=64), timeout=3))
    try:
        pids_dir = c._cgroups.dirs["pids"]
        peak = 0
        deadline = time.monotonic() + 2
        while time.monotonic() < deadline:
            try:
                with open(f"{pids_dir}/pids.current") as f:
                    peak = max(peak, int(f.read()))
            except OSError:
                break
            # the host is unaffected: we can still start processes while the bomb runs
            assert subprocess.run(["true"]).returncode == 0
            time.sleep(0.1)
        with open(f"{pids_dir}/pids.events") as f:
            refused = int(f.read().split()[1])
        r = c.wait()
    finally:
        c.teardown()
    assert 0 < peak <= 64
    assert refused > 0  # forks were refused at the limit
    assert r.timed_out and r.exit_code == 137
    assert residue([c.id], [busybox_rootfs]) == clean()


def test_memory_hog_is_oom_killed(busybox_rootfs):
    r = sh(busybox_rootfs, "exec dd if=/dev/zero of=/dev/null bs=100M count=1",
           limits=Limits(memory=64 << 20))
    assert r.exit_code == 137 and r.signal == 9
    assert r.oom_killed
    assert r.message == "container was killed: out of memory (limit 64MiB)"


def test_memory_below_limit_is_fine(busybox_rootfs):
    r = sh(busybox_rootfs, "dd if=/dev/zero of=/dev/null bs=16M count=1 2>/dev/null; echo ok",
           limits=Limits(memory=64 << 20))
    assert r.exit_code == 0 and not r.oom_killed and r.message is None
    assert out(r) == "ok\n"


def test_limits_are_written_and_removed(busybox_rootfs):
    c = start(spec(busybox_rootfs, "cat /proc/self/cgroup; sleep 0.5",
                   limits=Limits(memory=128 << 20, pids=50, cpus=0.5, cpu_weight=100)))
    try:
        dirs = dict(c._cgroups.dirs)
        files = {}
        for ctrl, d in dirs.items():
            for name in os.listdir(d):
                if name in ("memory.limit_in_bytes", "memory.max", "pids.max", "cpu.cfs_quota_us",
                            "cpu.max", "cpu.shares", "cpu.weight"):
                    with open(os.path.join(d, name)) as f:
                        files[name] = f.read().split()[0]
            with open(os.path.join(d, "cgroup.procs")) as f:
                assert str(c.pid) in f.read().split()
        r = c.wait()
    finally:
        c.teardown()
    assert files["pids.max"] == "50"
    assert files.get("memory.limit_in_bytes", files.get("memory.max")) == str(128 << 20)
    assert files.get("cpu.cfs_quota_us", files.get("cpu.max")) == "50000"
    assert "cpu.shares" in files or files["cpu.weight"] == "100"
    # inside, the cgroup namespace makes the container's cgroup the root
    lines = [ln for ln in out(r).splitlines() if ln.split(":")[1] in ("pids", "memory")]
    assert lines and all(ln.endswith(":/") for ln in lines)
    for d in dirs.values():
        assert not os.path.exists(d)
