"""Device rules: a default container keeps CAP_MKNOD, so the devices cgroup (v1) or a
BPF device program on its v2 cgroup must stop it from opening host devices it creates;
a privileged container may open them. Both mechanisms run on this hybrid host."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from builder.sandbox import SandboxError, UserNamespace, cgroups, devices, start
from builder.sandbox.cgroups import PREFIX
from tests.conftest import REPO
from tests.test_sandbox_support import clean, out, residue, sh, spec

CGROUP_ROOT = "/sys/fs/cgroup"

# mknod of any node is allowed, opening one outside the list is not (/dev: a tmpfs of
# the container's own, so nothing is left in the shared rootfs)
PROBE = ("mknod /dev/v c 7 0 && echo mknod=ok; head -c1 /dev/v >/dev/null; echo read=$?; "
         "head -c1 /dev/zero | wc -c; head -c1 /dev/urandom | wc -c; head -c1 /dev/random | wc -c; "
         "echo x > /dev/null && echo null=ok; (echo x > /dev/full) 2>/dev/null; echo full=$?; "
         "mknod /dev/b b 7 0 && echo bmknod=ok; head -c1 /dev/b >/dev/null; echo bread=$?")


def cgroup_dirs(cid: str) -> list[str]:
    """Every pybuild-<cid> directory in any cgroup hierarchy (v1 controllers and v2)."""
    found = []
    for top, dirs, _ in os.walk(CGROUP_ROOT):
        if top.count("/") - CGROUP_ROOT.count("/") >= 4:
            dirs[:] = []
        for name in dirs:
            if name == PREFIX + cid:
                found.append(os.path.join(top, name))
    return found


@pytest.fixture(params=[1, 2], ids=["v1-devices-cgroup", "v2-bpf-program"])
def mechanism(request, monkeypatch) -> int:
    """Force where the device rules go (the v1 controller and cgroup v2 are both here)."""
    monkeypatch.setattr(cgroups, "DEVICES_VERSION", request.param)
    assert cgroups.hierarchies(request.param)["devices"].version == request.param
    return request.param


def _own_cgroup(pid: int) -> dict[str, str]:
    with open(f"/proc/{pid}/cgroup") as f:
        return {ctrls or "v2": path for _, ctrls, path in
                (line.rstrip("\n").split(":", 2) for line in f)}


def _run_inspected(root, script: str, mechanism: int, **kw):
    """Start, check where the device rules are applied, then let the command finish."""
    c = start(spec(root, script + "; exec sleep 10", **kw))
    try:
        own = _own_cgroup(c.pid)
        d = c._cgroups.dirs["devices"]
        assert os.path.basename(d) == PREFIX + c.id
        if mechanism == 1:
            assert own["devices"].endswith("/" + PREFIX + c.id)
            with open(os.path.join(d, "devices.list")) as f:
                listed = f.read().split("\n")
        else:
            assert d.startswith(CGROUP_ROOT + "/unified/")
            assert own["v2"].endswith("/" + PREFIX + c.id)
            assert not own["devices"].endswith(PREFIX + c.id)  # only the BPF program applies
            listed = None
        time.sleep(0.3)  # the script's checks before the sleep
        c.kill(signal.SIGKILL)
        r = c.wait()
    finally:
        c.teardown()
    assert cgroup_dirs(c.id) == []
    assert residue([c.id], [root]) == clean()
    return r, listed


def test_v1_lines():
    assert devices.v1_lines(devices.DEFAULT_RULES) == [
        "c *:* m", "b *:* m", "c 1:3 rwm", "c 1:5 rwm", "c 1:7 rwm", "c 1:8 rwm", "c 1:9 rwm",
        "c 5:0 rwm", "c 5:1 rwm", "c 5:2 rwm", "c 136:* rwm", "c 10:200 rwm"]
    assert devices.v1_lines(devices.ALLOW_ALL) == ["a"]
    assert devices.rules_for(True) is devices.ALLOW_ALL
    assert devices.rules_for(False) is devices.DEFAULT_RULES


def test_bpf_program_shape():
    prog = devices.bpf_program(devices.DEFAULT_RULES)
    assert len(prog) % 8 == 0
    # ends with "r0 = 0; exit": whatever no rule allows is denied
    assert prog[-16:] == bytes([0xB7, 0, 0, 0, 0, 0, 0, 0, 0x95, 0, 0, 0, 0, 0, 0, 0])
    allow_all = devices.bpf_program(devices.ALLOW_ALL)
    # the loads, then "r0 = 1; exit" with nothing unreachable after it
    assert len(allow_all) == 8 * 8 and allow_all[-16:-8] == bytes([0xB7, 0, 0, 0, 1, 0, 0, 0])


def test_bpf_decisions_in_the_kernel(tmp_path):
    """Partial access, type and wildcard matching of the v2 program, run by the kernel for
    a host shell moved into a scratch cgroup beneath ours (removed afterwards)."""
    base = cgroups.hierarchies(2)["devices"].base
    d = os.path.join(base, PREFIX + "test-" + os.urandom(8).hex())
    rules = (devices.DeviceRule("c", 1, 3, "rw"), devices.DeviceRule("b", None, None, "m"),
             devices.DeviceRule("c", 1, None, "r"))
    script = (f"echo $$ > {d}/cgroup.procs || exit 99; cd {tmp_path}; "
              "for t in 'mknod n c 1 3' 'mknod b b 7 0' 'head -c1 b' 'mknod z c 1 5' "
              "'head -c1 /dev/zero' 'head -c0 /dev/null' 'true > /dev/null' "
              "'true > /dev/zero' 'true > /dev/full'; do "
              "if (eval \"$t\") >/dev/null 2>&1; then echo \"$t ok\"; else echo \"$t no\"; fi; "
              "done")
    os.mkdir(d)
    try:
        devices.attach(d, rules)
        r = subprocess.run(["sh", "-c", script], capture_output=True, text=True, timeout=30)
    finally:
        os.rmdir(d)
    assert r.stdout.splitlines() == [
        "mknod n c 1 3 no",        # rw but not m
        "mknod b b 7 0 ok",        # any block device: m
        "head -c1 b no",           # ... but not r
        "mknod z c 1 5 no",        # c 1:* is r only
        "head -c1 /dev/zero ok",   # ... which it allows
        "head -c0 /dev/null ok",
        "true > /dev/null ok",
        "true > /dev/zero no",     # w: not in c 1:* r
        "true > /dev/full no",
    ], r.stderr


def test_default_container_cannot_open_a_device_it_creates(busybox_rootfs, mechanism):
    r, listed = _run_inspected(busybox_rootfs, PROBE, mechanism)
    lines = out(r).splitlines()
    assert lines[0] == "mknod=ok"
    assert lines[1] == "read=1"
    assert b"Operation not permitted" in r.stderr
    assert lines[2:7] == ["1", "1", "1", "null=ok", "full=1"]  # full: opened, write ENOSPC
    assert lines[7:] == ["bmknod=ok", "bread=1"]  # a block device: likewise
    assert r.stderr.count(b"Operation not permitted") == 2
    if listed is not None:
        assert sorted(x for x in listed if x) == sorted(devices.v1_lines(devices.DEFAULT_RULES))


def test_pty_console_and_tty_still_work(busybox_rootfs, mechanism):
    r = sh(busybox_rootfs, "echo hi > /dev/console; echo tty > /dev/tty; stty size; "
                           "exec 3<>/dev/ptmx && echo ptmx=ok", stdio="pty", pty_size=(24, 80))
    assert r.exit_code == 0
    assert r.stdout.replace(b"\r\n", b"\n").splitlines() == [b"hi", b"tty", b"24 80", b"ptmx=ok"]


def test_privileged_container_can_open_it(busybox_rootfs, mechanism):
    with open("/dev/vcs", "rb") as f:  # the host lets root read it
        assert len(f.read(1)) == 1
    r, listed = _run_inspected(busybox_rootfs, "mknod /dev/v c 7 0 && head -c1 /dev/v | wc -c",
                               mechanism, privileged=True)
    assert out(r).splitlines() == ["1"]
    if listed is not None:
        assert [x for x in listed if x] == ["a *:* rwm"]


def test_failed_start_leaves_no_cgroup(busybox_rootfs, mechanism):
    s = spec(busybox_rootfs, "unused")
    s.argv = ["/no/such/command"]
    with pytest.raises(SandboxError) as e:
        start(s)
    assert e.value.exit_code == 127
    assert cgroup_dirs(s.id) == []
    s = spec(busybox_rootfs, "unused", user="ghost")
    with pytest.raises(SandboxError):
        start(s)
    assert cgroup_dirs(s.id) == []
    # its PID 1 may linger as a zombie of the host's init for a moment
    t0 = time.monotonic()
    while residue([s.id], [busybox_rootfs]) != clean() and time.monotonic() - t0 < 3.0:
        time.sleep(0.05)
    assert residue([s.id], [busybox_rootfs]) == clean()


CALLER = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from builder.sandbox import DirRoot, SandboxSpec, cgroups, start
    cgroups.DEVICES_VERSION = int(sys.argv[3]) or None
    c = start(SandboxSpec(root=DirRoot(Path(sys.argv[1])), argv=["sleep", "60"], id=sys.argv[2]))
    print(c._cgroups.dirs["devices"], flush=True)
    time.sleep(60)
""")


def test_killed_caller_leaves_no_device_cgroup(busybox_copy, mechanism):
    cid = os.urandom(16).hex()
    proc = subprocess.Popen([sys.executable, "-c", CALLER, str(busybox_copy), cid,
                             str(mechanism)], stdout=subprocess.PIPE, text=True, cwd=REPO,
                            env=dict(os.environ, PYTHONPATH=str(REPO)))
    try:
        d = proc.stdout.readline().strip()
        assert os.path.isdir(d) and d in cgroup_dirs(cid)
        proc.kill()
        proc.wait()
        t0 = time.monotonic()
        while cgroup_dirs(cid) and time.monotonic() - t0 < 2.0:
            time.sleep(0.02)
        assert cgroup_dirs(cid) == []
    finally:
        proc.kill()
        proc.wait()


READONLY_CGROUPS = textwrap.dedent("""
    import sys  # no socket import: the userns child must not need Python's files (/root is 0700)
    from pathlib import Path
    from builder.sandbox import DirRoot, SandboxError, SandboxSpec, UserNamespace, run
    root = DirRoot(Path(sys.argv[1]))
    for kind, kw in (("default", {}), ("privileged", {"privileged": True}),
                     ("userns", {"userns": UserNamespace()})):
        try:
            r = run(SandboxSpec(root=root, argv=["true"], stdio="pipe", **kw))
            print(kind, "exit", r.exit_code, flush=True)
        except SandboxError as e:
            print(kind, "error", e, flush=True)
""")


def test_without_cgroup_write_access_only_safe_containers_run(busybox_rootfs):
    """Every cgroup hierarchy read-only (in a private mount namespace): a default container
    is refused with the reason; privileged and user-namespace containers run."""
    remount = "for m in $(awk '$3 ~ /^cgroup/ {print $2}' /proc/mounts); do " \
              "mount -o remount,bind,ro $m || exit 1; done; exec \"$@\""
    p = subprocess.run(["unshare", "-m", "--propagation", "private", "sh", "-c", remount, "sh",
                        sys.executable, "-c", READONLY_CGROUPS, str(busybox_rootfs)],
                       capture_output=True, text=True, cwd=REPO, timeout=60,
                       env=dict(os.environ, PYTHONPATH=str(REPO)))
    lines = p.stdout.splitlines()
    assert p.returncode == 0, p.stderr
    assert lines[0].startswith("default error cannot apply device rules to container ")
    assert "Read-only file system" in lines[0] and "refusing to run it" in lines[0]
    assert lines[1:] == ["privileged exit 0", "userns exit 0"]


def test_user_namespace_container_gets_no_device_cgroup(busybox_rootfs):
    """It cannot mknod; and its monitor, inside the user namespace, could not remove a
    cgroup if the caller were killed."""
    r = sh(busybox_rootfs, "mknod /dev/v c 7 0; echo mknod=$?", userns=UserNamespace())
    assert out(r) == "mknod=1\n" and b"Operation not permitted" in r.stderr
    c = start(spec(busybox_rootfs, "exec sleep 10", userns=UserNamespace()))
    try:
        assert "devices" not in c._cgroups.dirs
        assert not _own_cgroup(c.pid)["devices"].endswith(PREFIX + c.id)
    finally:
        c.kill(signal.SIGKILL)
        c.wait()
        c.teardown()
    assert cgroup_dirs(c.id) == []


UNMOUNTED = "umount -R /sys/fs/cgroup || exit 1; exec \"$@\""


def _without_cgroup_mounts(*argv: str, **kw):
    """Run argv in a private mount namespace where no cgroup file system is mounted, as
    under `ip netns exec` (which mounts a fresh /sys)."""
    return subprocess.Popen(["unshare", "-m", "--propagation", "private", "sh", "-c", UNMOUNTED,
                             "sh", *argv], cwd=REPO, env=dict(os.environ, PYTHONPATH=str(REPO)),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)


UNMOUNTED_RUN = textwrap.dedent("""
    import sys
    from pathlib import Path
    from builder.sandbox import DirRoot, SandboxSpec, cgroups, run
    print(cgroups.hierarchies()["devices"].base, flush=True)
    r = run(SandboxSpec(root=DirRoot(Path(sys.argv[1])), argv=["sh", "-c", sys.argv[3]],
                        id=sys.argv[2], stdio="pipe"))
    sys.stdout.write(r.stdout.decode() + r.stderr.decode())
""")


def test_rules_apply_without_a_mounted_cgroup_file_system(busybox_rootfs):
    """No cgroup fs in our mount namespace: the v2 cgroup is reached through a mount of
    our own that is attached nowhere, and nothing is left in any namespace."""
    cid = os.urandom(16).hex()
    p = _without_cgroup_mounts(sys.executable, "-c", UNMOUNTED_RUN, str(busybox_rootfs), cid,
                               PROBE)
    stdout, stderr = p.communicate(timeout=60)
    assert p.returncode == 0, stderr
    lines = stdout.splitlines()
    assert lines[0] == cgroups.DETACHED + "/"
    assert lines[1:4] == ["mknod=ok", "read=1", "1"]
    assert "head: /dev/v: Operation not permitted" in lines
    assert cgroup_dirs(cid) == []
    assert residue([cid], [busybox_rootfs]) == clean()


def test_killed_caller_without_a_mounted_cgroup_file_system(busybox_copy):
    cid = os.urandom(16).hex()
    p = _without_cgroup_mounts(sys.executable, "-c", CALLER, str(busybox_copy), cid, "0")
    try:
        assert p.stdout.readline().strip() == f"{cgroups.DETACHED}/{PREFIX}{cid}"
        assert len(cgroup_dirs(cid)) == 1  # the v2 cgroup, seen where it is mounted here
        p.kill()
        p.wait()
        t0 = time.monotonic()
        while cgroup_dirs(cid) and time.monotonic() - t0 < 2.0:
            time.sleep(0.02)
        assert cgroup_dirs(cid) == []
    finally:
        p.kill()
        p.communicate()
