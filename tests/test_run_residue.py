"""100 `pybuild run --rm IMG true` in a loop leave the counts of mounts, cgroups,
netns, veths, processes and files under ROOT/containers as they were."""

from __future__ import annotations

import time

import pytest

from test_run_support import host_resources, run_store  # noqa: F401  (fixture)


def _stable(root) -> dict:
    """Resources once two readings 0.2 s apart agree (earlier tests' processes gone)."""
    last = host_resources(root)
    for _ in range(25):
        time.sleep(0.2)
        now = host_resources(root)
        if now == last:
            return now
        last = now
    return last


def _settled(root, want: dict, timeout: float = 3.0) -> dict:
    """Resources now; a container's last processes may take a moment to vanish."""
    deadline = time.monotonic() + timeout
    while True:
        now = host_resources(root)
        if now == want or time.monotonic() > deadline:
            return now
        time.sleep(0.05)


@pytest.mark.slow
def test_hundred_rm_runs_leave_nothing(run_store):
    root = run_store.root
    run_store("run", "--rm", "--network", "none", "busybox", "true")   # snapshots made once
    before = _stable(root)
    for i in range(100):
        p = run_store("run", "--rm", "--network", "none", "busybox", "true", check=False)
        assert p.returncode == 0, (i, p.stderr)
    assert _settled(root, before) == before
    assert run_store("ps", "-aq").stdout == ""


def test_failed_and_detached_rm_runs_leave_nothing(run_store):
    root = run_store.root
    before = _stable(root)
    volumes = run_store("volume", "ls", "-q").stdout
    assert run_store("run", "--rm", "--network", "none", "busybox", "nosuch",
                     check=False).returncode == 127
    assert run_store("run", "--rm", "--network", "none", "-v", "/anon", "busybox", "sh", "-c",
                     "exit 2", check=False).returncode == 2
    cid = run_store("run", "-d", "--rm", "--network", "none", "busybox", "sleep", "30").stdout.strip()
    run_store("rm", "-f", cid)
    assert _settled(root, before) == before
    assert run_store("volume", "ls", "-q").stdout == volumes
