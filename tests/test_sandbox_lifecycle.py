"""Exit status, signals, timeout, init, stdio modes, and teardown on every path:
sequential and concurrent runs, failed set-ups, and a caller killed with SIGKILL."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from builder.sandbox import SandboxError, run, start
from tests.conftest import REPO
from tests.test_sandbox_support import clean, out, residue, sh, spec


def test_exit_status_and_signal_death(busybox_rootfs):
    assert sh(busybox_rootfs, "exit 7").exit_code == 7
    r = sh(busybox_rootfs, "sleep 5 & kill -TERM $!; wait $!; exit $?")
    assert r.exit_code == 143
    c = start(spec(busybox_rootfs, "exec sleep 30"))
    c.kill(signal.SIGKILL)
    r = c.wait()
    assert (r.exit_code, r.signal) == (137, 9)


def test_signal_forwarded_to_command(busybox_rootfs):
    c = start(spec(busybox_rootfs, "trap 'echo got-term; exit 42' TERM; echo ready; "
                                   "while :; do sleep 0.05; done"))
    try:
        buf = b""
        while b"ready" not in buf:
            buf += os.read(c.stdout, 100)
        c.kill(signal.SIGTERM)
        r = c.wait()
    finally:
        c.teardown()
    assert r.exit_code == 42 and b"got-term" in buf + r.stdout


def test_timeout_kills_container(busybox_rootfs):
    t0 = time.monotonic()
    r = sh(busybox_rootfs, "sleep 30", timeout=0.5)
    assert time.monotonic() - t0 < 5
    assert r.timed_out and r.exit_code == 137
    assert r.message == "container was killed: timeout after 0.5s"


def test_init_reaps_orphans_and_forwards(busybox_rootfs):
    r = sh(busybox_rootfs, "(sleep 0.1 &); sleep 0.4; echo $$; ps -o pid,stat,comm | grep -c ' Z ' ; "
                           "exit 5", init=True)
    lines = out(r).split()
    assert lines[0] != "1"  # the command is not PID 1, the init is
    assert lines[1] == "0"  # the orphaned sleep was reaped
    assert r.exit_code == 5


def test_stdin_pipe_and_pty(busybox_rootfs):
    r = sh(busybox_rootfs, "tr a-z A-Z", input=b"hello\n")
    assert out(r) == "HELLO\n" and r.stderr == b""
    r = sh(busybox_rootfs, "[ -t 0 ] && [ -t 1 ] && echo is-a-tty; echo hi > /dev/console; "
                           "stty size", stdio="pty")
    assert r.stdout.replace(b"\r\n", b"\n").splitlines()[:2] == [b"is-a-tty", b"hi"]


def test_failed_setup_leaves_nothing(busybox_rootfs):
    s = spec(busybox_rootfs, "unused", user="ghost")
    with pytest.raises(SandboxError):
        start(s)
    assert residue([s.id], [busybox_rootfs]) == clean()


@pytest.mark.slow
def test_two_hundred_sequential_leave_no_residue(busybox_rootfs):
    ids = []
    for i in range(200):
        s = spec(busybox_rootfs, f"echo {i}")
        ids.append(s.id)

        r = run(s)
        assert r.exit_code == 0 and out(r) == f"{i}\n"
    assert residue(ids, [busybox_rootfs]) == clean()


def test_eight_concurrent(busybox_rootfs):
    specs = [spec(busybox_rootfs, f"sleep 0.2; echo $(hostname) {i}", hostname=f"c{i}")
             for i in range(8)]

    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(run, specs))
    for i, r in enumerate(results):
        assert r.exit_code == 0 and out(r) == f"c{i} {i}\n"
    assert residue([s.id for s in specs], [busybox_rootfs]) == clean()


CALLER = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from builder.sandbox import DirRoot, SandboxSpec, start
    c = start(SandboxSpec(root=DirRoot(Path(sys.argv[1])), argv=["sleep", "60"], id=sys.argv[2]))
    print(c.pid, c.state_dir, flush=True)
    time.sleep(60)
""")


def test_sigkill_of_caller_leaves_nothing_behind(busybox_copy):
    cid = os.urandom(16).hex()
    proc = subprocess.Popen([sys.executable, "-c", CALLER, str(busybox_copy), cid],
                            stdout=subprocess.PIPE, text=True, cwd=REPO,
                            env=dict(os.environ, PYTHONPATH=str(REPO)))
    try:
        pid, state = proc.stdout.readline().split()
        assert os.path.exists(f"/proc/{pid}") and os.path.isdir(state)
        assert residue([cid])["processes"] != []
        proc.kill()
        proc.wait()
        t0 = time.monotonic()
        while time.monotonic() - t0 < 1.0:
            if residue([cid], [busybox_copy]) == clean():
                break
            time.sleep(0.02)
        assert residue([cid], [busybox_copy]) == clean()
        assert not os.path.exists(f"/proc/{pid}") and not os.path.exists(state)
    finally:
        proc.kill()
        proc.wait()


FORWARDER = textwrap.dedent("""
    import sys
    from pathlib import Path
    from builder.sandbox import DirRoot, SandboxSpec, run
    r = run(SandboxSpec(root=DirRoot(Path(sys.argv[1])), argv=["sh", "-c",
            "trap 'echo got-$0; exit 42' TERM HUP; echo ready; while :; do sleep 0.05; done"]))
    print("exit", r.exit_code, flush=True)
""")


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP])
def test_run_forwards_signals_sent_to_the_caller(busybox_rootfs, sig):
    proc = subprocess.Popen([sys.executable, "-c", FORWARDER, str(busybox_rootfs)],
                            stdout=subprocess.PIPE, text=True, cwd=REPO,
                            env=dict(os.environ, PYTHONPATH=str(REPO)))
    try:
        assert proc.stdout.readline() == "ready\n"
        proc.send_signal(sig)
        rest = proc.communicate(timeout=10)[0]
    finally:
        proc.kill()
        proc.wait()
    assert rest.splitlines()[-1] == "exit 42" and "got-sh" in rest


def test_wait_timeout_without_spec_timeout(busybox_rootfs):
    c = start(spec(busybox_rootfs, "sleep 30", timeout=None))
    r = c.wait(timeout=0.3)
    assert r.timed_out and r.exit_code == 137 and r.message == "container was killed: timeout"
