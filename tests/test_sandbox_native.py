"""The machine code the sandbox runs in containers instead of Python (native.py).

`--init`: the container's PID 1 is a machine-code init run from a sealed memfd, not the
host's Python (whose /proc/1/cmdline, environ and exe a container could read: the command
line always, the host user's environment and interpreter binary once it holds
CAP_SYS_PTRACE). It still reaps orphans, forwards signals and passes the exit status on.
Every command is executed through a machine-code trampoline, so `/proc/self/exe` -- and a
`#!/proc/self/exe` script -- never names the host's interpreter inside a container."""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys

import pytest

from builder.sandbox import SandboxError, native, run, start
from conftest import REPO, require_tool
from test_run_support import run_store  # noqa: F401  (fixture)
from tests.test_sandbox_support import out, sh, spec


@pytest.mark.parametrize("which", ["INIT", "EXEC"])
def test_machine_code_is_its_assembly(tmp_path, which):
    """The embedded bytes are the assembly next to them, as GNU as assembles it (nobody
    edits hex by hand)."""
    asm, objcopy = require_tool("as"), require_tool("objcopy")
    (tmp_path / "code.s").write_text(getattr(native, f"{which}_ASM"))
    subprocess.run([asm, "--64", "-o", str(tmp_path / "code.o"), str(tmp_path / "code.s")],
                   check=True)
    subprocess.run([objcopy, "-O", "binary", "-j", ".text", str(tmp_path / "code.o"),
                    str(tmp_path / "code.bin")], check=True)
    assert (tmp_path / "code.bin").read_bytes() == getattr(native, f"{which}_CODE")


def test_pid_1_shows_nothing_of_the_host(run_store):
    """A container that may ptrace its PID 1 finds there neither the host's interpreter nor
    the environment or command line of the `pybuild run` that started it."""
    token = secrets.token_hex(12)
    script = ("readlink /proc/1/exe; tr '\\0' '\\n' < /proc/1/environ; tr '\\0' ' ' < /proc/1/cmdline;"
              " echo; echo x >> /proc/1/exe 2>/dev/null && echo WROTE-EXE; exit 7")
    p = subprocess.run([sys.executable, "-m", "builder", "--root", str(run_store.root), "run",
                        "--rm", "--network", "none", "--init", "--cap-add", "SYS_PTRACE",
                        "busybox", "sh", "-c", script], cwd=REPO, capture_output=True, text=True,
                       env=dict(os.environ, PYTHONPATH=str(REPO), R3_HOST_TOKEN=token), timeout=120)
    assert p.returncode == 7, p.stderr
    exe = p.stdout.splitlines()[0]
    assert exe.startswith("/memfd:pybuild-init"), p.stdout
    assert os.path.realpath(sys.executable) not in p.stdout
    assert token not in p.stdout and str(run_store.root) not in p.stdout, p.stdout
    assert "WROTE-EXE" not in p.stdout
    assert "pybuild-init " in p.stdout        # argv: the init and the command's pid


def test_init_forwards_signals_and_passes_the_status_on(busybox_rootfs):
    c = start(spec(busybox_rootfs, "trap 'echo got-term; exit 42' TERM; echo ready; "
                                   "while :; do sleep 0.05; done", init=True))
    try:
        buf = b""
        while b"ready" not in buf:
            buf += os.read(c.stdout, 100)
        c.kill(signal.SIGTERM)
        r = c.wait()
    finally:
        c.teardown()
    assert r.exit_code == 42 and b"got-term" in buf + r.stdout
    assert sh(busybox_rootfs, "kill -KILL $$", init=True).exit_code == 128 + signal.SIGKILL
    r = sh(busybox_rootfs, "echo $$; cat /proc/1/cmdline | tr '\\0' ' '", init=True)
    pid, cmdline = out(r).splitlines()
    assert cmdline.split() == ["pybuild-init", pid]
    missing = spec(busybox_rootfs, "unused", init=True)
    missing.argv = ["no-such-cmd"]
    with pytest.raises(SandboxError, match="executable file not found") as e:
        start(missing)
    assert e.value.exit_code == 127


def test_commands_are_executed_by_the_sealed_trampoline(busybox_copy, run_store):
    """A `#!/proc/self/exe` script (CVE-2019-5736's way to run the executing process's own
    binary) finds our sealed trampoline there, not the host's Python: it refuses (125) and
    nothing runs. Failed execs keep docker's codes and messages."""
    (busybox_copy / "self").write_text("#!/proc/self/exe\nprint('host python ran')\n")
    (busybox_copy / "garbage").write_bytes(b"\x7fELF garbage")
    (busybox_copy / "nointerp").write_text("#!/no/such/interpreter\n")
    for name in ("self", "garbage", "nointerp"):
        os.chmod(busybox_copy / name, 0o755)
    own = spec(busybox_copy, "unused")
    own.argv = ["/self", "-c", "print('host python ran')"]
    r = run(own)
    assert (r.exit_code, r.stdout, r.stderr) == (125, b"", b"")
    for argv, code, text in ((["/garbage"], 126, 'exec "/garbage": Exec format error'),
                             (["/nointerp"], 127, 'exec "/nointerp": No such file or directory'),
                             (["/etc/passwd"], 126, 'exec "/etc/passwd": Permission denied')):
        bad = spec(busybox_copy, "unused")
        bad.argv = argv
        with pytest.raises(SandboxError) as e:
            start(bad)
        assert (e.value.exit_code, str(e.value)) == (code, text)
    # and through `pybuild exec`, whose command the trampoline executes too
    cid = run_store("run", "-d", "--network", "none", "busybox", "sleep", "600").stdout.strip()
    try:
        run_store("exec", cid, "sh", "-c", "printf '#!/proc/self/exe\\n' > /s && chmod +x /s")
        p = run_store("exec", cid, "/s", "-c", "print('host python ran')", check=False)
        assert (p.returncode, p.stdout) == (125, ""), p.stderr
        p = run_store("exec", cid, "/etc/passwd", check=False)
        assert p.returncode == 126 and 'exec "/etc/passwd": Permission denied' in p.stderr
    finally:
        run_store("rm", "-f", cid)
