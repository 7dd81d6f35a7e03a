"""What a build shows when it fails, is interrupted or runs out of disk, as BuildKit shows
it: the failing step's framed log, then the Dockerfile excerpt with `>>>`, then
`ERROR: failed to solve: ...` (plain and tty); Ctrl-C gives CANCELED and exit 130 and
leaves nothing; ENOSPC names the path and is not retried; the tty view's header and
labels; `history` showing a heredoc RUN on one line and a layer-making WORKDIR as such."""

from __future__ import annotations

import errno
import json
import hashlib
import os
import pty
import re
import select
import signal
import struct
import subprocess
import sys
import termios
import fcntl
import textwrap
import time
from pathlib import Path

import pytest

from buildpeer import import_busybox, processes_matching
from conftest import REPO, CLI
from test_build_run import _host_state
from test_registry_helpers import Proxy, config_env, make_image, random_files, registry  # noqa: F401

ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|\x1b\][^\x07]*\x07|\r")


@pytest.fixture
def bb(pybuild, busybox_rootfs, tmp_path):
    import_busybox(pybuild, busybox_rootfs, tmp_path)
    return pybuild


def _ctx(tmp_path: Path, text: str, name: str = "ctx", files: dict[str, bytes] | None = None) -> Path:
    ctx = tmp_path / name
    ctx.mkdir(exist_ok=True)
    (ctx / "Dockerfile").write_text(textwrap.dedent(text))
    for k, v in (files or {}).items():
        (ctx / k).write_bytes(v)
    return ctx


def _no_leftovers(root: Path) -> None:
    for sub in ("containers", "tmp"):
        d = root / sub
        left = [e for e in os.listdir(d) if e.startswith("build-")] if d.is_dir() else []
        assert left == [], f"{sub}/ keeps {left}"


def _no_new_host_state(before: dict, root: Path) -> None:
    """No mount of this store's, and no cgroup that was not there before, is left. Other
    builds on the machine come and go meanwhile: theirs end within moments, ours never."""
    for _ in range(50):
        now = _host_state()
        new = sorted(set(now["cgroups"]) - set(before["cgroups"]))
        if not new:
            break
        time.sleep(0.1)
    assert new == []
    assert [m for m in now["mounts"] if str(root) in m] == []


def _fsck_clean(cli: CLI) -> None:
    assert cli("fsck").stdout.strip().endswith("clean")


# --- a failing step ----------------------------------------------------------------------

FAILING = """\
    FROM busybox
    RUN echo preparing
    RUN for i in $(seq 1 15); do echo line-$i; done; \\
        echo to-stderr >&2; exit 3
    RUN echo never
    """


def test_failing_step_frame_then_excerpt_then_error(bb, tmp_path):
    before = bb("images", "-q").stdout
    ctx = _ctx(tmp_path, FAILING)
    p = bb("build", "--progress", "plain", "-t", "fail", ctx, check=False)
    err = p.stderr
    assert p.returncode == 1, err
    frame = err.index("------\n > [3/4] RUN for i in $(seq 1 15); do echo line-$i; done; "
                      "echo to-stderr >&2; exit 3:\n")
    excerpt = err.index("Dockerfile:3\n--------------------\n")
    line = 'ERROR: failed to solve: process "/bin/sh -c for i in $(seq 1 15); do echo ' \
           'line-$i; done;     echo to-stderr >&2; exit 3" did not complete successfully: ' \
           'exit code: 3'
    assert frame < excerpt < err.index(line), err
    assert err.rstrip("\n").splitlines()[-1] == line     # the error last, whole
    # the frame holds the last 10 lines of the step's output, each with its time
    body = err[frame:excerpt].splitlines()[2:-1]
    assert len(body) == 10 and body[-1].split(" ", 1)[1] == "to-stderr", body
    assert [b.split(" ", 1)[1] for b in body[:-1]] == [f"line-{i}" for i in range(7, 16)]
    assert all(re.fullmatch(r"\d+\.\d{3} \S+", b) for b in body), body
    # both lines of the step marked, one line of context each side (BuildKit's: two
    # for a one-line step)
    assert err[excerpt:].splitlines()[1:7] == [
        "--------------------",
        "   2 |     RUN echo preparing",
        "   3 | >>> RUN for i in $(seq 1 15); do echo line-$i; done; \\",
        "   4 | >>>     echo to-stderr >&2; exit 3",
        "   5 |     RUN echo never",
        "--------------------",
    ]
    assert "pybuild: error" not in err and "Traceback" not in err
    assert bb("images", "-q").stdout == before     # nothing tagged, nothing made
    _no_leftovers(bb.root)


def test_failing_copy_is_framed_and_located_too(bb, tmp_path):
    ctx = _ctx(tmp_path, "FROM busybox\nCOPY missing.txt /x\n")
    p = bb("build", "--progress", "plain", ctx, check=False)
    err = p.stderr
    assert p.returncode == 1
    assert err.index("------\n > [2/2] COPY missing.txt /x:\n------\n") < \
        err.index("Dockerfile:2\n--------------------\n   1 |     FROM busybox\n"
                  "   2 | >>> COPY missing.txt /x\n") < err.index("pybuild: error: Dockerfile:2: COPY")


def _pty_run(args: list[str], cols: int = 200, timeout: float = 120,
             on_output=None) -> tuple[int, str]:
    """Run the CLI on a pty of `cols` columns; (exit status, output without ANSI codes)."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 50, cols, 0, 0))
    env = dict(os.environ, PYTHONPATH=str(REPO), TERM="xterm", COLUMNS=str(cols))
    p = subprocess.Popen([sys.executable, "-m", "builder", *args], stdin=slave, stdout=slave,
                         stderr=slave, env=env, cwd=REPO, close_fds=True,
                         preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    os.close(slave)
    out = b""
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            r, _, _ = select.select([master], [], [], 0.2)
            if r:
                try:
                    chunk = os.read(master, 65536)
                except OSError as exc:   # EIO: every slave end closed
                    if exc.errno != errno.EIO:
                        raise
                    chunk = b""
                if not chunk:
                    break
                out += chunk
                if on_output is not None:
                    on_output(p, out)
            elif p.poll() is not None:
                break
        code = p.wait(timeout=30)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
        os.close(master)
    return code, ANSI.sub("", out.decode("utf-8", "replace"))


def test_tty_failure_report_after_the_view_and_never_cut(bb, tmp_path):
    cmd = "echo " + "x" * 150 + "; false"
    ctx = _ctx(tmp_path, f"FROM busybox\nRUN {cmd}\n")
    code, out = _pty_run(["--root", str(bb.root), "build", "--progress", "tty", str(ctx)], cols=60)
    assert code == 1, out
    line = f'ERROR: failed to solve: process "/bin/sh -c {cmd}" did not complete successfully: ' \
           'exit code: 1'
    assert line in out.splitlines(), out[-3000:]        # whole, not cut at 60 columns
    view = out.rindex("FINISHED")
    assert view < out.index(f"------\n > [2/2] RUN {cmd}:\n") < out.index(
        f"Dockerfile:2\n--------------------\n   1 |     FROM busybox\n   2 | >>> RUN {cmd}\n") \
        < out.index(line)
    assert out.rstrip("\n").splitlines()[-1] == line


# --- the tty view ------------------------------------------------------------------------

def test_tty_header_counts_and_single_stage_labels(bb, tmp_path):
    # the step lasts long enough for the view to draw a frame while it runs
    ctx = _ctx(tmp_path, "FROM busybox\nRUN sleep 1 && echo one > /one\nENV A=b\n")
    code, out = _pty_run(["--root", str(bb.root), "build", "--progress", "tty", "--no-cache",
                          str(ctx)])
    assert code == 0, out
    assert re.search(r"^\[\+\] Building \d+\.\ds \(3/3\) FINISHED\s*$", out, re.M), out
    assert re.search(r"^\[\+\] Building \d+\.\ds \([0-2]/3\)\s*$", out, re.M), out  # while running
    assert re.search(r"^ => \[1/3\] FROM busybox\s+\d+\.\ds$", out, re.M), out
    assert re.search(r"^ => \[2/3\] RUN sleep 1 && echo one > /one\s+\d+\.\ds$", out, re.M), out
    assert "stage-0" not in out
    code, out = _pty_run(["--root", str(bb.root), "build", "--progress", "tty", str(ctx)])
    assert re.search(r"^ => CACHED \[2/3\] RUN sleep 1 && echo one > /one\s+0\.0s$", out, re.M), out


def test_a_step_waiting_for_another_stage_is_shown_waiting(bb, tmp_path):
    ctx = _ctx(tmp_path, """\
        FROM busybox AS slow
        RUN sleep 2; echo made > /made
        FROM busybox
        COPY --from=slow /made /made
        """)
    p = bb("build", "--progress", "rawjson", "--no-cache", ctx)
    events = [json.loads(l) for l in p.stderr.splitlines() if l.startswith("{")]
    labels = {e["step"]: e["label"] for e in events if e["event"] == "start"}
    assert sorted(labels.values()) == ["slow 1/2", "slow 2/2", "stage-1 1/2", "stage-1 2/2"]
    copy = next(n for n, l in labels.items() if l == "stage-1 2/2")
    run = next(n for n, l in labels.items() if l == "slow 2/2")
    order = [(e["event"], e.get("step")) for e in events]
    # waiting from before the RUN it needs is over until after it
    assert order.index(("waiting", copy)) < order.index(("done", run)) < \
        order.index(("resumed", copy)) < order.index(("done", copy)), order
    # and the tty view shows it so
    from builder.progress import Progress

    with open(os.devnull, "w") as sink:
        prog = Progress("plain", stream=sink)
        prog.start(1, "stage-1 2/2", "COPY --from=slow /made /made")
        prog.waiting(1)
        from rich.console import Console

        prog.console = Console(file=sink, width=100)
        text = prog._render().plain
    assert " => WAITING [stage-1 2/2] COPY --from=slow /made /made" in text
    assert text.splitlines()[1].endswith("waiting") and "(0/1)" in text


# --- Ctrl-C --------------------------------------------------------------------------------

def _interrupt(bb: CLI, ctx: Path, when: str, delay: float = 0.0) -> tuple[int, str]:
    p = subprocess.Popen([sys.executable, "-m", "builder", "--root", str(bb.root), "build",
                          "--progress", "plain", "-t", "interrupted", str(ctx)], cwd=REPO,
                         stderr=subprocess.PIPE, text=True,
                         env=dict(os.environ, PYTHONPATH=str(REPO), PYTHONFAULTHANDLER="1"),
                         preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    seen = ""
    deadline = time.monotonic() + 60
    while when not in seen and time.monotonic() < deadline and p.poll() is None:
        seen += p.stderr.readline()
    time.sleep(delay)
    p.send_signal(signal.SIGINT)
    try:
        _, rest = p.communicate(timeout=20)
    except subprocess.TimeoutExpired:
        p.send_signal(signal.SIGABRT)      # the stacks, for the report
        _, rest = p.communicate()
        raise AssertionError(f"still running 20 s after SIGINT:\n{rest[-6000:]}")
    return p.returncode, seen + rest


INTERRUPTED = """\
    FROM busybox
    RUN echo started; sleep 40; echo finished > /finished
    """


def _untimed(text: str) -> str:
    """The output without its times: "#2 0.137 started" holds no exit code 137."""
    return re.sub(r"\d+\.\d+", "", text)


def test_ctrl_c_shows_canceled_exits_130_and_leaves_nothing(bb, tmp_path):
    ctx = _ctx(tmp_path, INTERRUPTED)
    before, images = _host_state(), bb("images", "-q").stdout
    code, err = _interrupt(bb, ctx, " started\n")
    assert code == 130, err
    assert "#2 CANCELED" in err.splitlines() and "137" not in _untimed(err), err
    assert "pybuild: interrupted" in err and "ERROR" not in err
    assert bb("images", "-q").stdout == images
    assert bb("inspect", "interrupted", check=False).returncode == 1
    for _ in range(40):
        if not processes_matching("sleep 40"):
            break
        time.sleep(0.05)
    assert processes_matching("sleep 40") == []
    _no_new_host_state(before, bb.root)
    _no_leftovers(bb.root)
    _fsck_clean(bb)


def test_ctrl_c_in_the_tty_view_shows_canceled(bb, tmp_path):
    ctx = _ctx(tmp_path, INTERRUPTED)
    sent = []

    def interrupt(p, out: bytes) -> None:
        if not sent and b"# started" in out:
            sent.append(True)
            p.send_signal(signal.SIGINT)
    code, out = _pty_run(["--root", str(bb.root), "build", "--progress", "tty", str(ctx)],
                         timeout=60, on_output=interrupt)
    assert sent and code == 130, out[-3000:]
    final = out[out.rindex("[+] Building"):]
    assert re.search(r"^ => CANCELED \[2/2\] RUN echo started; sleep 40; echo finished > "
                     r"/finished\s+\d+\.\ds$", final, re.M), final
    assert "137" not in _untimed(out) and "pybuild: interrupted" in final
    _no_leftovers(bb.root)


@pytest.mark.parametrize("delay", [0.0, 0.03, 0.06, 0.1])
def test_ctrl_c_while_the_steps_container_starts(bb, tmp_path, delay):
    """SIGINT as the step's line is out and its container is starting: the kill found
    nothing to kill and the build went on pumping the step's output for its whole 40 s
    (no container was registered yet). Now the step's container is killed as soon as
    it exists; the build ends at once."""
    ctx = _ctx(tmp_path, INTERRUPTED)
    before = _host_state()
    code, err = _interrupt(bb, ctx, "#2 [2/2] RUN", delay)
    assert code == 130, err
    assert "#2 CANCELED" in err.splitlines() and "137" not in _untimed(err), err
    assert not re.search(r"^#2 [\d.]+ finished", err, re.M), err
    for _ in range(40):
        if not processes_matching("sleep 40"):
            break
        time.sleep(0.05)
    assert processes_matching("sleep 40") == []
    _no_new_host_state(before, bb.root)
    _no_leftovers(bb.root)


def test_ctrl_c_during_a_base_image_pull_stops_it(bb, tmp_path, registry, config_env):  # noqa: F811
    """The FROM's pull runs in a step's thread: Ctrl-C waited for the whole transfer."""
    from layerstore.registry.push import push
    from layerstore.store import Store

    src = Store.open(tmp_path / "src")
    make_image(src, "big:1", [random_files(1, 3_000_000, 9)])
    push(src, "big:1", f"{registry.host}/space/big:1")
    layer = src.resolve("big:1").manifest.layers[0]
    proxy = Proxy(registry.port)
    proxy.add(lambda m, p: m == "GET" and p.endswith(layer.digest), ("slow", 50_000), times=5)
    try:
        ctx = _ctx(tmp_path, f"FROM 127.0.0.1:{proxy.port}/space/big:1\nRUN true\n")
        code, err = _interrupt(bb, ctx, "#1 [1/2] FROM", delay=1.0)
    finally:
        proxy.stop()
    assert code == 130 and "pybuild: interrupted" in err, err
    assert "#1 CANCELED" in err.splitlines(), err
    assert not bb.root.joinpath("blobs", "sha256", layer.digest[7:]).exists()
    assert bb("inspect", "interrupted", check=False).returncode == 1
    _no_leftovers(bb.root)
    _fsck_clean(bb)


# --- no space left on device -------------------------------------------------------------

@pytest.fixture
def small_fs(tmp_path):
    """A tmpfs of the given size (MiB) for a store; unmounted after the test."""
    made = []

    def make(mib: int) -> Path:
        d = tmp_path / f"small{len(made)}"
        d.mkdir()
        subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={mib}m,mode=0700", "tmpfs", str(d)],
                       check=True)
        made.append(d)
        return d
    yield make
    for d in made:
        if subprocess.run(["umount", str(d)]).returncode != 0:
            subprocess.run(["umount", "-l", str(d)], check=True)


@pytest.mark.parametrize("step", ["RUN head -c 7000000 /dev/urandom > /big", "COPY big /big"])
def test_no_space_in_a_build_names_the_path(busybox_rootfs, tmp_path, small_fs, step):
    cli = CLI(small_fs(12) / "store")
    import_busybox(cli, busybox_rootfs, tmp_path)
    images = cli("images", "-q").stdout
    ctx = _ctx(tmp_path, f"FROM busybox\n{step}\n", files={"big": os.urandom(7_000_000)})
    p = cli("build", "--progress", "plain", "-t", "big", ctx, check=False)
    assert p.returncode == 1 and "Traceback" not in p.stderr, p.stderr
    last = p.stderr.strip().splitlines()[-1]
    keyword = step.split()[0]
    assert re.fullmatch(rf"pybuild: error: Dockerfile:2: {keyword}: No space left on device: "
                        rf"{re.escape(str(cli.root))}/\S+", last), last
    assert p.stderr.count("No space left on device") == 2     # the step's line and the error
    assert cli("images", "-q").stdout == images
    _no_leftovers(cli.root)
    _fsck_clean(cli)
    assert not list((cli.root / "ingest").glob("*.tmp"))


def test_no_space_in_a_pull_says_so_at_once(tmp_path, small_fs, registry, config_env):  # noqa: F811
    from layerstore.registry.push import push
    from layerstore.store import Store

    src = Store.open(tmp_path / "src")
    make_image(src, "big:1", [random_files(1, 3_000_000, 7)])
    push(src, "big:1", f"{registry.host}/space/big:1")
    layer = src.resolve("big:1").manifest.layers[0]
    proxy = Proxy(registry.port)
    try:
        cli = CLI(small_fs(2) / "store")
        p = cli("pull", f"127.0.0.1:{proxy.port}/space/big:1", check=False)
        gets = [s for s in proxy.seen if s.method == "GET" and s.path.endswith(layer.digest)]
    finally:
        proxy.stop()
    assert p.returncode == 1 and "Traceback" not in p.stderr, p.stderr
    errors = [l for l in p.stderr.splitlines() if l.startswith("pybuild: error:")]
    assert len(errors) == 1, p.stderr
    assert "No space left on device" in errors[0] and str(cli.root) in errors[0], errors
    assert "attempts" not in errors[0] and "retr" not in p.stderr
    assert len(gets) == 1, gets               # fetched once: a local error is not retried
    _fsck_clean(cli)
    assert not any((cli.root / "ingest").iterdir()), sorted(p.name for p in (cli.root / "ingest").iterdir())


# --- history -------------------------------------------------------------------------------

def test_history_heredoc_on_one_line_and_workdir_layer_not_nop(bb, tmp_path):
    ctx = _ctx(tmp_path, """\
        FROM busybox
        RUN <<EOF
        echo hello > /greeting
        echo world >> /greeting
        EOF
        WORKDIR /app
        WORKDIR /app
        """)
    bb("build", "-t", "hist", ctx)
    table = bb("history", "hist").stdout.splitlines()
    full = bb("history", "--no-trunc", "hist").stdout.splitlines()
    entries = json.loads(bb("inspect", "hist").stdout)
    entries = entries[0] if isinstance(entries, list) else entries
    n = len(bb("history", "-q", "hist").stdout.splitlines())
    assert len(table) == len(full) == n + 1     # one row per entry: no line broken
    assert re.match(r"IMAGE\s+CREATED\s+CREATED BY\s+SIZE\s+COMMENT$", table[0])
    heredoc = [l for l in full if "echo hello" in l]
    assert len(heredoc) == 1 and \
        "echo hello > /greeting\\necho world >> /greeting\\n" in heredoc[0], full
    short = [l for l in table if "/bin/sh -c" in l and "echo hello" in l]
    assert len(short) == 1 and "…" in short[0], table
    # the first WORKDIR made /app (a layer): BuildKit's text; the second changed nothing
    workdirs = [l for l in full if "WORKDIR /app" in l]
    assert len(workdirs) == 2, full
    assert re.search(r"\sWORKDIR /app\s+\d+(\.\d+)?[kM]?B\s*$", workdirs[1]) and \
        "#(nop)" not in workdirs[1], workdirs     # older row below: the layer
    assert "#(nop) WORKDIR /app" in workdirs[0] and re.search(r"\s0B\s*$", workdirs[0])


class _FailingRead:
    """A local blob file whose disk fails half-way through the upload (EIO)."""
    name = "/the/local/blob"

    def __init__(self) -> None:
        self.calls = 0

    def read(self, n: int = -1) -> bytes:
        self.calls += 1
        if self.calls > 1:
            raise OSError(errno.EIO, "Input/output error")
        return b"x" * 1024

    def seek(self, pos: int) -> None:
        pass

    def close(self) -> None:
        pass


def test_a_local_read_error_during_an_upload_is_not_retried(registry, config_env):  # noqa: F811
    """urllib3 takes any OSError while sending a body for a broken connection: a failing
    local disk was retried as "registry unreachable" six times, then named as such."""
    from layerstore.errors import LocalIOError
    from layerstore.model import Descriptor
    from layerstore.registry.client import Options, RegistryClient

    proxy = Proxy(registry.port)
    try:
        desc = Descriptor("application/octet-stream", "sha256:" + "0" * 64, 4 << 20)
        with RegistryClient(f"127.0.0.1:{proxy.port}", Options(backoff=0.01), creds=None) as c:
            with pytest.raises(LocalIOError, match=r"^Input/output error: /the/local/blob$"):
                c.upload_blob("space/up", desc, _FailingRead)
        sends = [s for s in proxy.seen if s.method in ("PATCH", "PUT")]
        posts = [s for s in proxy.seen if s.method == "POST"]
    finally:
        proxy.stop()
    assert len(posts) == 1 and len(sends) <= 1, proxy.seen     # one session, not six


def test_a_short_write_on_a_filling_disk_never_commits_a_truncated_blob(small_fs):
    """A write larger than the space left is taken in part by the kernel (a short write,
    no error): the blob writer hashed all of it, so it must write all of it or fail --
    committing would publish a blob shorter than its digest says."""
    from layerstore.errors import LocalIOError
    from layerstore.store import Store

    store = Store.open(small_fs(1) / "store")
    data = os.urandom(3 << 20)
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    with pytest.raises(LocalIOError, match="No space left on device"):
        with store.blobs.writer(expected=digest, size=len(data)) as w:
            w.write(data)
            w.commit()
    assert not store.blobs.has(digest)
    assert not any((store.root / "ingest").iterdir())
