"""RUN and friends: heredocs against BuildKit's expected outputs, a failing RUN leaves
nothing behind, secrets never reach the store, cache/tmpfs/bind mounts."""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import subprocess
import textwrap
from pathlib import Path

import pytest

from buildpeer import import_busybox, mounts_now, processes_matching
from conftest import CORPUS

HEREDOCS = CORPUS / "buildkit-parser" / "heredoc-integration"
EXPECTED = json.loads((HEREDOCS / "expected-outputs.json").read_text()) if HEREDOCS.is_dir() else {}
UNIX_CASES = sorted(k for k in EXPECTED if k.endswith(".Dockerfile") and "windows" not in k)


@pytest.fixture
def bb(pybuild, busybox_rootfs, tmp_path):
    import_busybox(pybuild, busybox_rootfs, tmp_path)
    return pybuild


def _write(tmp_path: Path, text: str, files: dict[str, str] | None = None) -> Path:
    ctx = tmp_path / "ctx"
    ctx.mkdir(exist_ok=True)
    (ctx / "Dockerfile").write_text(textwrap.dedent(text))
    for k, v in (files or {}).items():
        (ctx / k).write_text(v)
    return ctx


def test_heredoc_corpus_is_there():
    assert len(UNIX_CASES) >= 9, f"heredoc corpus missing or shrunk at {HEREDOCS}"


@pytest.mark.parametrize("case", UNIX_CASES)
def test_heredoc_corpus(bb, tmp_path, case):
    # Debian's busybox-static has no adduser applet (our rootfs already has `user`) and
    # installs awk as /usr/bin/awk
    text = (HEREDOCS / case).read_text().replace("RUN adduser -D user", "RUN grep -q ^user: /etc/passwd")
    text = text.replace("/bin/awk", "/usr/bin/awk")
    if case.startswith("testOnBuild"):
        base = _write(tmp_path, text)
        bb("build", "-t", "onbuild-base", base)
        text = "FROM onbuild-base AS base\nFROM scratch\nCOPY --from=base /dest /dest\n"
        (base / "Dockerfile").write_text(text)
    ctx = _write(tmp_path, text)
    out = tmp_path / "out"
    bb("build", "--progress", "plain", "--output", f"type=local,dest={out}", ctx)
    for name, want in EXPECTED[case]["outputs"].items():
        assert (out / name).read_text() == want, name


def _images(pybuild) -> list:
    rows = [json.loads(l) for l in pybuild("images", "--format", "json").stdout.splitlines()]
    return sorted((r["Repository"], r["Tag"], r["ID"]) for r in rows)


def _host_state() -> dict:
    netns = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    cgroups = []
    with open("/proc/self/cgroup") as f:
        for line in f:
            _, controllers, path = line.rstrip("\n").split(":", 2)
            base = Path("/sys/fs/cgroup") / (controllers.split(",")[0] if controllers else "") \
                / path.lstrip("/")
            if base.is_dir():   # RUN containers' cgroups are pybuild-build-<id>
                cgroups += [str(p) for p in base.glob("**/pybuild-build-*") if p.is_dir()]
    return {"mounts": mounts_now(), "netns": netns, "cgroups": sorted(cgroups)}


def test_failing_run_reports_and_leaves_nothing(bb, tmp_path, store_root):
    images_before = _images(bb)
    before = _host_state()
    ctx = _write(tmp_path, """\
        FROM busybox
        RUN echo fine > /fine
        RUN echo step-output-line; echo oops-on-stderr >&2; exit 7
        RUN echo never > /never
        """)
    p = bb("build", "--progress", "plain", "-t", "broken", ctx, check=False)
    assert p.returncode == 1
    last = p.stderr.strip().splitlines()
    err = p.stderr
    assert "Dockerfile:3" in err and "exit code: 7" in err, err
    assert "oops-on-stderr" in err and "step-output-line" in err
    assert not any("never" in l and "DONE" in l for l in last)
    assert _images(bb) == images_before
    assert _host_state() == before
    assert processes_matching(str(store_root)) == []
    assert [c.name for c in (store_root / "containers").iterdir() if c.name.startswith("build-")] == []
    assert not (store_root / "tmp" / "build").exists() or \
        [p.name for p in (store_root / "tmp" / "build").iterdir()] == ["empty"]


def _grep_store(root: Path, needle: bytes) -> list[str]:
    hits = []
    for dirpath, _, files in os.walk(root):
        for f in files:
            p = Path(dirpath) / f
            if p.is_symlink() or not p.is_file():
                continue
            data = p.read_bytes()
            if data[:2] == b"\x1f\x8b":
                try:
                    data = gzip.decompress(data)
                except OSError:
                    pass
            if needle in data:
                hits.append(str(p))
    return hits


def test_secrets_never_reach_the_store(bb, tmp_path, store_root):
    secret = b"s3cr3t-VALUE-4242"
    sfile = tmp_path / "token.txt"
    sfile.write_bytes(secret)
    digest = hashlib.sha256(secret).hexdigest()   # the Dockerfile must not contain the secret
    ctx = _write(tmp_path, f"""\
        FROM busybox
        RUN --mount=type=secret,id=tok test "$(sha256sum < /run/secrets/tok | cut -d' ' -f1)" = {digest} \\
            && echo used-file > /proof-file
        RUN --mount=type=secret,id=tok,env=TOKEN,target=/etc/tok \\
            test "$(printf %s "$TOKEN" | sha256sum | cut -d' ' -f1)" = {digest} \\
            && test -f /etc/tok && echo used-env > /proof-env
        """)
    env = dict(os.environ, TOKVAR=secret.decode())
    bb("build", "--progress", "plain", "-t", "with-secret", "--secret", f"id=tok,src={sfile}",
       ctx, env=env)
    out = tmp_path / "out"
    bb("build", "--progress", "quiet", "--output", f"type=local,dest={out}",
       "--secret", "id=tok,env=TOKVAR", ctx, env=env)
    assert (out / "proof-file").read_text() == "used-file\n"
    assert (out / "proof-env").read_text() == "used-env\n"
    assert not (out / "run" / "secrets").exists() and not (out / "etc" / "tok").exists()
    assert _grep_store(store_root, secret) == []
    history = bb("history", "--no-trunc", "with-secret").stdout
    assert secret.decode() not in history


def test_cache_tmpfs_and_bind_mounts(bb, tmp_path, store_root):
    ctx = _write(tmp_path, """\
        FROM busybox
        RUN --mount=type=cache,target=/cache,id=c1 \\
            if [ -f /cache/seen ]; then echo warm > /state; else touch /cache/seen; echo cold > /state; fi
        RUN --mount=type=tmpfs,target=/scratch echo x > /scratch/file && test -f /scratch/file
        RUN --mount=type=bind,source=input.txt,target=/in.txt cp /in.txt /copied \\
            && ! touch /in.txt 2>/dev/null
        """, {"input.txt": "bound\n"})
    out1, out2 = tmp_path / "o1", tmp_path / "o2"
    bb("build", "--progress", "plain", "--output", f"type=local,dest={out1}", ctx)
    bb("build", "--no-cache", "--progress", "plain", "--output", f"type=local,dest={out2}", ctx)
    assert (out1 / "state").read_text() == "cold\n"
    assert (out2 / "state").read_text() == "warm\n"
    for out in (out1, out2):
        assert not (out / "cache").exists() and not (out / "scratch").exists()
        assert not (out / "in.txt").exists()
        assert (out / "copied").read_text() == "bound\n"


def test_ctrl_c_stops_the_build_cleanly(bb, tmp_path, store_root):
    import signal
    import sys
    import time

    from conftest import REPO

    ctx = _write(tmp_path, """\
        FROM busybox
        RUN echo started; sleep 40; echo finished
        """)
    before = _host_state()
    p = subprocess.Popen([sys.executable, "-m", "builder", "--root", str(store_root), "build",
                          "--progress", "plain", str(ctx)], cwd=REPO, stderr=subprocess.PIPE,
                         env=dict(os.environ, PYTHONFAULTHANDLER="1"),
                         text=True, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.monotonic() + 30
    seen = ""
    while "started" not in seen and time.monotonic() < deadline:
        seen += p.stderr.readline()
    p.send_signal(signal.SIGINT)
    try:
        _, rest = p.communicate(timeout=20)
    except subprocess.TimeoutExpired:
        p.send_signal(signal.SIGABRT)
        _, rest = p.communicate()
        raise AssertionError(rest[-5000:])
    assert p.returncode == 130 and "interrupted" in rest
    assert "0 finished" not in seen + rest   # the output line, not the echoed command
    for _ in range(40):   # the container's processes die with its PID 1, within a moment
        if not processes_matching("sleep 40"):
            break
        time.sleep(0.05)
    assert processes_matching("sleep 40") == []
    assert _host_state() == before
    assert [c.name for c in (store_root / "containers").iterdir() if c.name.startswith("build-")] == []


def test_cache_sharing_private_takes_a_free_instance(tmp_path):
    from builder.steps.mounts import private_instance

    base = tmp_path / "mounts" / "abc"
    first, held1 = private_instance(base)
    second, held2 = private_instance(base)       # the first is busy: a new instance
    assert first == base and second == base.with_name("abc-1")
    held1.close()
    third, held3 = private_instance(base)        # free again: reused
    assert third == base
    held2.close()
    held3.close()


def test_cache_sharing_private_in_parallel_stages(bb, tmp_path):
    ctx = _write(tmp_path, """\
        FROM busybox AS a
        RUN --mount=type=cache,target=/c,id=p,sharing=private \\
            touch /c/seen-a && sleep 1 && ls /c > /list
        FROM busybox AS b
        RUN --mount=type=cache,target=/c,id=p,sharing=private \\
            touch /c/seen-b && sleep 1 && ls /c > /list
        FROM busybox
        COPY --from=a /list /a
        COPY --from=b /list /b
        CMD ["cat", "/a", "/b"]
        """)
    bb("build", "--progress", "plain", "-t", "priv", ctx)
    out = bb("run", "--rm", "--network", "none", "priv").stdout.split()
    # each stage wrote into its own instance while the other held one
    assert sorted(out) == ["seen-a", "seen-b"]
