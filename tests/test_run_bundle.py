"""`pybuild bundle IMAGE DIR` -> `runc run` behaves as `pybuild run` does: same output
(user, groups, hostname, cwd, env, capabilities, seccomp, masked and read-only paths,
mounts) and the same exit code."""

from __future__ import annotations

import os
import subprocess

from conftest import require_tool
from test_run_support import run_store  # noqa: F401  (fixture)

SCRIPT = r"""
id; hostname; pwd; env | sort
grep -E '^(Cap|Seccomp|NoNewPrivs)' /proc/self/status
cat /proc/timer_list | wc -c; ls /sys/firmware | wc -l
(echo x > /proc/sys/kernel/domainname) 2>&1
mount -t tmpfs t /tmp 2>&1
grep -E ' /(proc|sys|dev|dev/pts|dev/shm|dev/mqueue|etc/hosts|etc/hostname) ' /proc/mounts | cut -d' ' -f2,3 | sort
cat /etc/hostname; ls /dev | grep -v '^core$'
exit 7
"""


def test_bundle_runs_in_runc_like_pybuild_run(run_store, tmp_path):
    runc = require_tool("runc")
    bundle = tmp_path / "bundle"
    run_store("bundle", "--hostname", "bundlehost", "--entrypoint", "", "bbcfg", bundle,
              "sh", "-c", SCRIPT)
    assert (bundle / "config.json").is_file() and (bundle / "rootfs" / "bin" / "busybox").exists()
    cid = f"pybuild-test-{os.getpid()}-{tmp_path.name}"[:60]
    try:
        ours_runc = subprocess.run([runc, "run", cid], cwd=bundle, capture_output=True, text=True,
                                   timeout=60, stdin=subprocess.DEVNULL)
    finally:
        subprocess.run([runc, "delete", "-f", cid], capture_output=True)
    ours = run_store("run", "--rm", "--network", "none", "--hostname", "bundlehost",
                     "--entrypoint", "", "bbcfg", "sh", "-c", SCRIPT, check=False)
    assert ours.returncode == ours_runc.returncode == 7, (ours.stderr, ours_runc.stderr)
    assert ours.stdout == ours_runc.stdout
    assert "uid=1000(user)" in ours.stdout and "A=1" in ours.stdout and "/srv" in ours.stdout


def test_bundle_refuses_non_empty_dir_and_unknown_image(run_store, tmp_path):
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("")
    p = run_store("bundle", "busybox", tmp_path / "full", "true", check=False)
    assert p.returncode != 0 and "not empty" in p.stderr
    p = run_store("bundle", "nosuchimage", tmp_path / "b", check=False)
    assert p.returncode != 0 and "nosuchimage" in p.stderr and not (tmp_path / "b").exists()
