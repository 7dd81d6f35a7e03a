"""`pybuild exec` against a hostile container (issue 11, finding 3), and RUN secrets that
must not outlive a SIGKILLed build on disk (finding 7).

Each attack runs from inside a container, as an image's own process would: it forges
a PID into whatever pipe of ours it can open, opens the host's Python through
/proc/<pid>/exe, or plants a /dev/ptmx symlink for the host to follow.
"""

from __future__ import annotations

import ctypes
import os
import secrets
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from buildpeer import import_busybox, processes_matching
from conftest import REPO
from test_run_support import run_store  # noqa: F401  (fixture)

NONE = ("--network", "none")


def _popen(cli, *args: str, **kw) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "builder", "--root", str(cli.root), *args],
                            cwd=REPO, env=dict(os.environ, PYTHONPATH=str(REPO)), **kw)


def _upper(cli, cid: str) -> Path:
    return cli.root / "containers" / cid / "upper"


def _wait_for(what, timeout: float = 60.0, step: float = 0.05):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = what()
        if got:
            return got
        time.sleep(step)
    raise AssertionError(f"timed out waiting for {what.__name__}")


@pytest.fixture
def container(run_store):
    """A running container (its command sleeps unless given); removed when done."""
    made = []

    def make(*extra: str, command: tuple[str, ...] = ("sleep", "1000")) -> str:
        cid = run_store("run", *NONE, "-d", *extra, "busybox", *command).stdout.strip()
        made.append(cid)
        return cid
    yield make
    if made:
        run_store("rm", "-f", *made, check=False)


# The container's command. Our joining process is Python until its execve and holds our
# control pipe; it runs with the host's full capabilities until it drops to the
# container's, and only from then on may the container's root open its
# /proc/<pid>/fd/N (ptrace rules: same uid, dumpable, no capability it lacks). So the
# forger spins on each new Python process (ours: the only ones here) and, once it can,
# writes a forged "P <host pid>" into every pipe it holds, twice, 0.2 s apart, from a
# background subshell that keeps the pipe open: a reader that trusts the last "P" line
# it reads takes ours.
FORGER = r"""
S=$1
known=" $$ "
for d in /proc/[0-9]*; do known="$known${d#/proc/} "; done
: > /tmp/forger.log
while :; do
  for d in /proc/[0-9]*; do
    p=${d#/proc/}
    case "$known" in *" $p "*) continue;; esac
    known="$known$p "
    c=
    read -r c < $d/cmdline 2>/dev/null
    case "$c" in *python*) n=0;; *) n=100000;; esac
    while [ $n -lt 20000 ] && [ -d $d ]; do
      for f in $d/fd/*; do
        [ -p "$f" ] || continue
        n=100000
        { ( echo "P $S" >&3; usleep 200000; echo "P $S" >&3 \
            && echo "forged $p $f" >> /tmp/forger.log ) & } 3>"$f" 2>/dev/null
      done 2>/dev/null
      n=$((n+1))
    done
    echo "done $p" >> /tmp/forger.log
  done
done
"""


def test_exec_signals_only_its_own_command(run_store, container, tmp_path):
    """A forged `P <pid>` in any pipe we hold must not make `pybuild exec` signal a host
    process: SIGTERM goes to the exec'd command (through a pidfd), nowhere else."""
    sleeper = subprocess.Popen(["sleep", "600"])
    try:
        cid = container(command=("sh", "-c", FORGER, "forger", str(sleeper.pid)))
        log = _upper(run_store, cid) / "tmp" / "forger.log"
        _wait_for(lambda: log.exists())
        for _ in range(12):   # the forger's window is short: give it a few tries
            p = _popen(run_store, "exec", cid, "sh", "-c", "echo started $$; exec sleep 60",
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            try:
                line = ""
                while not line.startswith("started "):   # forged lines may come first
                    line = p.stdout.readline()
                    assert line, p.stderr.read()
                inner = line.split()[1]
                _wait_for(lambda: f"done {inner}\n" in log.read_text())
                time.sleep(0.3)   # (the old code read the pipe to EOF, then set up forwarding)
                p.send_signal(signal.SIGTERM)

                def settled() -> bool:
                    return p.poll() is not None or sleeper.poll() is not None
                _wait_for(settled, timeout=30)
                assert sleeper.poll() is None, "pybuild exec signalled a host process named in a pipe"
                assert p.wait(timeout=30) == 128 + signal.SIGTERM, p.stderr.read()
            finally:
                p.kill()
                p.wait()
                p.stdout.close()
                p.stderr.close()
    finally:
        sleeper.kill()
        sleeper.wait()


# The command of a container with the host's Python bound at /hostpy: hammers
# /proc/<pid>/exe of every process that appears until it is busybox (exec'd) or gone,
# counting each open that reached the host's Python (busybox's `test -ef` compares
# st_dev and st_ino).
EXE_PROBE = r"""
known=" $$ "
for d in /proc/[0-9]*; do known="$known${d#/proc/} "; done
: > /tmp/exe.log
while :; do
  for d in /proc/[0-9]*; do
    p=${d#/proc/}
    case "$known" in *" $p "*) continue;; esac
    known="$known$p "
    echo "seen $p" >> /tmp/exe.log
    n=0
    while [ $n -lt 20000 ] && [ -d $d ] && ! [ $d/exe -ef /bin/busybox ]; do
      if read -r -n 1 x < $d/exe 2>/dev/null && [ $d/exe -ef /hostpy ]; then
        echo "hit $p" >> /tmp/exe.log
      fi
      n=$((n+1))
    done
  done
done
"""


def test_exec_never_exposes_the_host_interpreter(run_store, container):
    """While `pybuild exec` joins, nothing in the container can open /proc/<pid>/exe of
    the joining process: it is the host's Python until execve (CVE-2019-5736)."""
    python = os.path.realpath(sys.executable)
    cid = container("-v", f"{python}:/hostpy:ro", command=("sh", "-c", EXE_PROBE))
    log = _upper(run_store, cid) / "tmp" / "exe.log"
    _wait_for(lambda: log.exists())
    for _ in range(12):
        run_store("exec", cid, "true")
    assert run_store("exec", cid, "sh", "-c", "[ /hostpy -ef /hostpy ] && echo ok").stdout == "ok\n"
    text = log.read_text()
    assert "seen " in text                      # the probe was watching
    assert "hit " not in text, text


def _inotify_open_watch(path: Path) -> int:
    libc = ctypes.CDLL(None, use_errno=True)
    fd = libc.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC)
    assert fd >= 0
    IN_OPEN = 0x20
    assert libc.inotify_add_watch(fd, os.fsencode(path), IN_OPEN) >= 0
    return fd


def _events(fd: int) -> bytes:
    try:
        return os.read(fd, 4096)
    except BlockingIOError:
        return b""


def test_exec_tty_never_follows_a_planted_ptmx(run_store, container, tmp_path):
    """`exec -t` opens the pty inside the container: a /dev/ptmx symlink to a host path
    resolves in the container's root, and what is not a ptmx is refused, not opened."""
    host = tmp_path / "host"
    host.mkdir()
    target, fifo = host / "target", host / "fifo"
    target.write_text("host file\n")
    os.mkfifo(fifo)
    watches = {p: _inotify_open_watch(p) for p in (target, fifo)}
    try:
        cid = container()
        for plant in (f"ln -s {target} /dev/ptmx", f"ln -s {fifo} /dev/ptmx",
                      f"ln -s ../../../../../../../..{target} /dev/ptmx",
                      "mkfifo /dev/ptmx", "echo not-a-pty > /dev/ptmx"):
            run_store("exec", cid, "sh", "-c", f"rm -f /dev/ptmx && {plant}")
            p = subprocess.run([sys.executable, "-m", "builder", "--root", str(run_store.root),
                                "exec", "-t", cid, "tty"], cwd=REPO, capture_output=True,
                               text=True, timeout=60, env=dict(os.environ, PYTHONPATH=str(REPO)))
            for path, fd in watches.items():
                assert _events(fd) == b"", f"{plant}: the host opened {path}"
            assert p.returncode == 125 and "/dev/ptmx" in p.stderr, (plant, p.stdout, p.stderr)
            assert len(p.stderr.strip().splitlines()) == 1, p.stderr
        assert target.read_text() == "host file\n"
        # an untouched container: a pty of its own devpts
        other = container()
        assert run_store("exec", "-t", other, "tty").stdout.strip().startswith("/dev/pts/")
        assert run_store("exec", "-t", other, "sh", "-c", "exit 3", check=False).returncode == 3
        # and nothing of ours crosses execve: the command holds its stdio, nothing else
        for tty in ((), ("-t",)):
            fds = run_store("exec", *tty, other, "sh", "-c", "ls /proc/$$/fd; true").stdout
            assert fds.split() == ["0", "1", "2"], fds
    finally:
        for fd in watches.values():
            os.close(fd)


def _grep(top: Path, needle: bytes, since: float, skip: set[Path]) -> list[str]:
    """Regular files below `top` changed since `since` that contain `needle`."""
    hits = []
    stack = [top]   # iterative: os.walk recurses, and other jobs leave deep trees in /tmp
    while stack:
        try:
            entries = list(os.scandir(stack.pop()))
        except OSError:
            continue
        for entry in entries:
            path = Path(entry.path)
            try:
                if entry.is_dir(follow_symlinks=False):
                    stack.append(path)
                    continue
                st = entry.stat(follow_symlinks=False)
                if not entry.is_file(follow_symlinks=False) or path in skip or st.st_mtime < since:
                    continue
                if needle in path.read_bytes():
                    hits.append(str(path))
            except OSError:
                continue
    return hits


def test_secret_of_a_sigkilled_build_never_reaches_disk(pybuild, busybox_rootfs, tmp_path):
    """RUN --mount=type=secret: the bytes live only on a tmpfs of the step's own mount
    namespace, so a SIGKILL of pybuild mid-step leaves them nowhere on disk."""
    t0 = time.time() - 1
    import_busybox(pybuild, busybox_rootfs, tmp_path)
    secret = ("pybuild-secret-" + secrets.token_hex(16)).encode()
    src = tmp_path / "token"
    src.write_bytes(secret)
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    naptime = str(900 + secrets.randbelow(99))
    (ctx / "Dockerfile").write_text(textwrap.dedent(f"""\
        FROM busybox
        RUN --mount=type=secret,id=s test -s /run/secrets/s && echo ready-$((6*7)) && sleep {naptime}
        """))
    p = _popen(pybuild, "build", "--progress", "plain", "--secret", f"id=s,src={src}", ctx,
               stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        out = b""
        while b"ready-42" not in out:   # the step's output, not its echo in the progress
            chunk = p.stdout.read1(4096)
            assert chunk, out.decode(errors="replace")
            out += chunk
        p.send_signal(signal.SIGKILL)
        p.wait()
    finally:
        p.kill()
        p.wait()
        p.stdout.close()
    # the orphaned monitor kills the step's container and cleans up
    _wait_for(lambda: not processes_matching(f"sleep {naptime}"), timeout=30)
    assert _grep(pybuild.root, secret, t0, set()) == []
    assert _grep(Path("/tmp"), secret, t0, {src}) == []


# The command of a container granted CAP_SYS_PTRACE (which overrides non-dumpable): it
# makes its /etc/passwd big (the joining process reads it to resolve the user: a long,
# visible window in the old order), then records what every process it can see shows
# of itself: its capabilities, and any environment or command line naming the caller's
# secret or store (the patterns are bracketed so that they do not match themselves).
SPY = r"""
i=0
while [ $i -lt 120000 ]; do echo "u$i:x:$((i+1000)):$((i+1000))::/:/bin/sh"; i=$((i+1)); done > /tmp/pw
cat /etc/passwd >> /tmp/pw && mv /tmp/pw /etc/passwd
: > /tmp/caps; : > /tmp/seen
echo ready > /tmp/ready
while :; do
  cat /proc/[0-9]*/status 2>/dev/null | grep '^CapEff' >> /tmp/caps
  cat /proc/[0-9]*/environ /proc/[0-9]*/cmdline 2>/dev/null | tr '\0' '\n' \
    | grep -a -e 'R3_EXEC_SECRE[T]=' -e 'runstor[e][0-9]*/store' >> /tmp/seen
done
"""


def test_exec_joins_unprivileged_and_leaves_the_caller_behind(run_store, container):
    """The process `pybuild exec` starts inside the container is never more privileged
    than the command it becomes, and it carries neither the caller's environment (the host
    user's tokens) nor its command line: a container that may ptrace (CAP_SYS_PTRACE) and
    reads /proc of every process it sees during the exec finds none of them. (It used to
    resolve the user and the executable in there with every host capability.)"""
    assert "runstore" in str(run_store.root)        # what the spy looks for in command lines
    cid = container("--cap-add", "SYS_PTRACE", command=("sh", "-c", SPY))
    _wait_for(lambda: (_upper(run_store, cid) / "tmp" / "ready").exists())
    secret = "R3_EXEC_SECRET=" + secrets.token_hex(8)
    env = dict(os.environ, PYTHONPATH=str(REPO), R3_EXEC_SECRET=secret.split("=", 1)[1])
    for _ in range(3):
        p = subprocess.run([sys.executable, "-m", "builder", "--root", str(run_store.root),
                            "exec", cid, "true"], cwd=REPO, env=env, capture_output=True,
                           text=True, timeout=120)
        assert p.returncode == 0, p.stderr
    tmp = _upper(run_store, cid) / "tmp"
    caps = set(tmp.joinpath("caps").read_text().split("\n")) - {""}
    assert caps == {"CapEff:\t00000000a80c25fb"}, caps      # docker's 14 + SYS_PTRACE, never more
    assert tmp.joinpath("seen").read_text() == ""
