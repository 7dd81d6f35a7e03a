"""`pybuild run` in the foreground and detached, and the commands on containers:
exit codes, config composition, stdin, -t, ps, logs -f, exec, stop, wait, rm, inspect."""

from __future__ import annotations

import json
import subprocess
import sys
import time

from conftest import REPO
from test_run_support import run_store  # noqa: F401  (fixture)

NONE = ("--network", "none")


def run(cli, *args, **kw):
    return cli("run", *NONE, *args, check=False, **kw)


def test_exit_codes_and_one_line_errors(run_store):
    assert run(run_store, "--rm", "busybox", "sh", "-c", "exit 3").returncode == 3
    for args, code, text in (
            (("busybox", "nosuchcmd"), 127, "executable file not found"),
            (("busybox", "/etc/passwd"), 126, "/etc/passwd"),
            (("nosuchimage",), 125, "nosuchimage"),
            (("--pull", "never", "nosuchimage"), 125, "--pull=never"),
            (("--pull", "sometimes", "busybox", "true"), 125, "--pull"),
            (("-v", "/x:rel", "busybox", "true"), 125, "/x:rel"),
            (("-u", "ghost", "busybox", "true"), 125, "ghost"),
            (("--memory", "lots", "busybox", "true"), 125, "--memory"),
            (("--cap-add", "CAP_NOPE", "busybox", "true"), 125, "capability"),
            (("busybox",), 125, "no command")):
        p = run(run_store, "--rm", *args)
        assert p.returncode == code, (args, p.stderr)
        assert len(p.stderr.strip().splitlines()) == 1 and text in p.stderr, p.stderr
    assert run_store("ps", "-aq").stdout.strip() == ""


def test_config_composition(run_store):
    # Entrypoint + Cmd, Env, WorkingDir, User from the image
    assert run(run_store, "--rm", "bbcfg").stdout == "ep c1 c2\n"
    assert run(run_store, "--rm", "bbcfg", "x").stdout == "ep x\n"
    p = run(run_store, "--rm", "--entrypoint", "sh", "-e", "A=9", "-e", "NEW=n", "bbcfg",
            "-c", 'echo $A $B $NEW; pwd; id -u; echo $HOME')
    assert p.stdout.split("\n")[:4] == ["9 2 n", "/srv", "1000", "/home/user"], p.stderr
    p = run(run_store, "--rm", "--entrypoint", "", "-u", "0:100", "-w", "/tmp", "--hostname",
            "box1", "bbcfg", "sh", "-c", "id -u; id -g; pwd; hostname")
    assert p.stdout.split() == ["0", "100", "/tmp", "box1"], p.stderr
    # --init: a reaping init is PID 1 and the command runs beneath it
    p = run(run_store, "--rm", "--init", "busybox", "sh", "-c", "echo $$; exit 9")
    assert p.returncode == 9 and p.stdout.strip() != "1"


def test_stdin_and_tty(run_store, tmp_path):
    p = run(run_store, "--rm", "-i", "busybox", "tr", "a-z", "A-Z", input="hello\n")
    assert p.stdout == "HELLO\n"
    p = run(run_store, "--rm", "busybox", "cat", input="ignored without -i\n")
    assert p.returncode == 0 and p.stdout == ""
    p = run(run_store, "--rm", "-t", "busybox", "sh", "-c", "[ -t 0 ] && [ -t 1 ] && echo tty")
    assert p.returncode == 0 and p.stdout.strip() == "tty"
    envf = tmp_path / "env"
    envf.write_text("# comment\nFROMFILE=yes\n")
    p = run(run_store, "--rm", "--env-file", envf, "busybox", "sh", "-c", "echo $FROMFILE")
    assert p.stdout == "yes\n"


def test_foreground_container_is_recorded(run_store):
    p = run(run_store, "--name", "kept", "busybox", "sh", "-c", "echo out; echo err >&2; exit 4")
    assert (p.returncode, p.stdout, p.stderr) == (4, "out\n", "err\n")
    logs = run_store("logs", "kept")          # an attached, kept container is logged too
    assert (logs.stdout, logs.stderr) == ("out\n", "err\n")
    ps = run_store("ps", "-a").stdout
    assert "kept" in ps and "Exited (4)" in ps
    assert "kept" not in run_store("ps").stdout
    info = json.loads(run_store("inspect", "kept").stdout)[0]
    assert info["State"]["ExitCode"] == 4 and info["Name"] == "/kept"
    assert info["ImageManifest"].startswith("sha256:")
    state = json.loads((run_store.root / "containers" / info["Id"] / "state.json").read_text())
    assert state["image"] == info["ImageManifest"]          # keeps the image from prune
    assert run(run_store, "--name", "kept", "busybox", "true").returncode == 125
    run_store("rm", "kept")
    assert not (run_store.root / "containers" / info["Id"]).exists()


def test_detached_round_trip(run_store):
    script = ('echo start; trap "echo bye; exit 0" TERM; '
              'while :; do echo tick; sleep 0.1; done')
    cid = run_store("run", *NONE, "-d", "--name", "rt", "busybox", "sh", "-c", script).stdout.strip()
    assert len(cid) == 64
    ps = run_store("ps").stdout
    assert cid[:12] in ps and "Up" in ps
    # exec: a second process in the same container (same PID namespace and hostname)
    p = run_store("exec", "rt", "sh", "-c", "cat /proc/1/cmdline | tr '\\0' '|'; echo; hostname")
    assert p.stdout.split("\n")[:2] == ["sh|-c|" + script + "|", cid[:12]]
    p = run_store("exec", "-u", "user", "-w", "/tmp", "-e", "X=1", "rt", "sh", "-c",
                  "id -u; pwd; echo $X; exit 6", check=False)
    assert p.returncode == 6 and p.stdout.split() == ["1000", "/tmp", "1"]
    assert run_store("exec", "rt", "nosuch", check=False).returncode == 127
    assert run_store("exec", "-i", "rt", "tr", "a-z", "A-Z", input="piped\n").stdout == "PIPED\n"
    assert run_store("exec", "rt", "cat", input="not without -i\n").stdout == ""
    # exec -t: a pty of the container's own devpts, so `tty` can name it
    assert run_store("exec", "-t", "rt", "tty").stdout.strip().startswith("/dev/pts/")
    # logs -f follows until the container ends
    follower = subprocess.Popen([sys.executable, "-m", "builder", "--root", str(run_store.root),
                                 "logs", "-f", "rt"], stdout=subprocess.PIPE, text=True, cwd=REPO)
    try:
        time.sleep(0.5)
        t0 = time.monotonic()
        run_store("stop", "rt")
        assert time.monotonic() - t0 < 5            # the TERM trap ended it, not the SIGKILL
        out, _ = follower.communicate(timeout=10)
    finally:
        follower.kill()
    lines = out.splitlines()
    assert lines[0] == "start" and "tick" in lines and lines[-1] == "bye"
    assert run_store("wait", "rt").stdout.strip() == "0"
    assert "Exited (0)" in run_store("ps", "-a").stdout
    assert run_store("logs", "--tail", "1", "rt").stdout == "bye\n"
    stamped = run_store("logs", "-t", "--tail", "1", "rt").stdout
    assert stamped.endswith(" bye\n") and stamped[:4].isdigit()
    assert run_store("exec", "rt", "true", check=False).returncode == 125
    run_store("rm", "rt")
    assert not (run_store.root / "containers" / cid).exists()
    assert run_store("ps", "-aq").stdout.strip() == ""


def test_stop_timeout_then_kill_and_rm_force(run_store):
    cid = run_store("run", *NONE, "-d", "--stop-timeout", "1", "busybox", "sleep", "100").stdout.strip()
    p = run_store("rm", cid, check=False)
    assert p.returncode == 125 and "stop it first" in p.stderr
    t0 = time.monotonic()
    run_store("stop", cid[:12])                     # sleep as PID 1 ignores SIGTERM
    assert 0.9 < time.monotonic() - t0 < 8
    assert run_store("wait", cid).stdout.strip() == "137"
    run_store("rm", cid)
    cid = run_store("run", *NONE, "-d", "--rm", "busybox", "sleep", "100").stdout.strip()
    run_store("kill", "-s", "TERM", cid)            # ignored by PID 1
    assert cid[:12] in run_store("ps").stdout
    run_store("rm", "-f", cid)
    assert not (run_store.root / "containers" / cid).exists()


def test_detached_start_failure_and_stop_signal(run_store):
    p = run_store("run", *NONE, "-d", "--rm", "busybox", "nosuch", check=False)
    assert p.returncode == 127 and "nosuch" in p.stderr
    assert run_store("ps", "-aq").stdout.strip() == ""
    # the image's STOPSIGNAL (SIGUSR1) is what stop sends
    cid = run_store("run", *NONE, "-d", "--entrypoint", "sh", "bbcfg", "-c",
                    'trap "exit 42" USR1; while :; do sleep 0.1; done').stdout.strip()
    run_store("stop", cid)
    assert run_store("wait", cid).stdout.strip() == "42"
    run_store("container", "prune")
    assert run_store("ps", "-aq").stdout.strip() == ""


def test_tty_window_size_propagates(run_store):
    """-t: the container's pty has our terminal's size from the first instant, and
    follows it on SIGWINCH."""
    import fcntl
    import os
    import pty
    import signal
    import struct
    import termios

    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 33, 111, 0, 0))
    proc = subprocess.Popen(
        [sys.executable, "-m", "builder", "--root", str(run_store.root), "run", "--rm", *NONE,
         "-t", "busybox", "sh", "-c",
         # print the size, wait (up to 20 s) until it changes, print it again
         'stty size; i=0; while [ "$(stty size)" = "33 111" ] && [ $i -lt 200 ]; do '
         'sleep 0.1; i=$((i+1)); done; stty size'],
        stdin=slave, stdout=slave, stderr=slave, cwd=REPO, start_new_session=True)
    os.close(slave)
    out = b""
    try:
        deadline = time.monotonic() + 30
        while b"33 111" not in out and time.monotonic() < deadline:
            out += os.read(master, 4096)
        fcntl.ioctl(master, termios.TIOCSWINSZ, struct.pack("HHHH", 44, 122, 0, 0))
        proc.send_signal(signal.SIGWINCH)
        while proc.poll() is None or b"44 122" not in out:
            try:
                chunk = os.read(master, 4096)
            except OSError:
                break
            if not chunk:
                break
            out += chunk
    finally:
        proc.wait(timeout=30)
        os.close(master)
    assert proc.returncode == 0
    assert b"33 111" in out and b"44 122" in out, out
