"""Every build input is checked before the first step (issue 13, "Validate before
anything runs"): a bad value is one `pybuild: error:` line, no step runs, nothing is
written to the store. Unknown `# syntax=` frontends are a warning; `--pull` that cannot
reach the registry says the pull failed, not that the image is missing.
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import textwrap
from pathlib import Path

import pytest

from buildpeer import import_busybox
from conftest import CLI

from builder.dockerfile import DockerfileError, parse_dockerfile, plan_stages


@pytest.fixture(scope="module")
def bb(busybox_rootfs, tmp_path_factory) -> CLI:
    """One store for the module: every build here fails before it writes anything (the
    tests assert that), so they cannot disturb each other."""
    tmp = tmp_path_factory.mktemp("validate")
    cli = CLI(tmp / "store")
    import_busybox(cli, busybox_rootfs, tmp)
    return cli


def _ctx(tmp_path: Path, text: str) -> Path:
    ctx = tmp_path / "ctx"
    ctx.mkdir(exist_ok=True)
    (ctx / "Dockerfile").write_text(textwrap.dedent(text))
    return ctx


def _store_state(root: Path) -> dict[str, tuple[int, int]]:
    """Every file of the store with its size and mtime: a build that wrote a blob, a
    cache entry, an image name or a snapshot changes it."""
    out = {}
    for dirpath, _dirs, files in os.walk(root):
        for f in files:
            st = os.lstat(os.path.join(dirpath, f))
            out[os.path.relpath(os.path.join(dirpath, f), root)] = (st.st_size, st.st_mtime_ns)
    return out


def _refused_before_any_step(bb: CLI, proc: subprocess.CompletedProcess,
                             before: dict, *needles: str) -> str:
    assert proc.returncode != 0, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    errors = [l for l in proc.stderr.splitlines() if l.startswith("pybuild: error:")]
    assert len(errors) == 1, proc.stderr[-2000:]
    for needle in needles:
        assert needle in errors[0], errors[0]
    # no step started: plain progress shows none, the RUN's echo never ran
    assert not re.search(r"^#\d+ ", proc.stderr, re.M), proc.stderr[-2000:]
    assert "step-ran" not in proc.stderr.replace("echo step-ran", "")
    assert "step-ran" not in proc.stdout
    assert _store_state(bb.root) == before
    return errors[0]


RUN_ONE = "FROM busybox\nRUN echo step-ran\n"


@pytest.mark.parametrize("args,env,needle", [
    (["--jobs", "0"], {}, "--jobs 0: must be at least 1"),
    (["--jobs", "-2"], {}, "--jobs -2: must be at least 1"),
    (["--source-date-epoch", "-1"], {}, "--source-date-epoch -1: must be between 0 and"),
    (["--source-date-epoch", "99999999999999"], {}, "--source-date-epoch 99999999999999: must be"),
    ([], {"SOURCE_DATE_EPOCH": "yesterday"}, "SOURCE_DATE_EPOCH='yesterday' (environment): not a"),
    ([], {"SOURCE_DATE_EPOCH": "-5"}, "SOURCE_DATE_EPOCH='-5' (environment): not a number"),
    (["--build-context", "other"], {}, "invalid --build-context 'other': expected KEY=VALUE"),
    (["--build-context", "=/tmp"], {}, "invalid --build-context '=/tmp': empty key"),
    (["--secret", "id=tok,src={tmp}/missing"], {}, "--secret id=tok: cannot read {tmp}/missing: "
                                                    "No such file or directory"),
    (["--secret", "id=tok,src={tmp}"], {}, "--secret id=tok: {tmp} is not a regular file"),
    (["--secret", "id=tok,src={tmp}/fifo"], {}, "--secret id=tok: {tmp}/fifo is not a regular file"),
    (["--secret", "id=tok,src={tmp}/big"], {}, "--secret id=tok: {tmp}/big is larger than 500 KiB"),
    (["--secret", "id=tok,env=PYBUILD_TEST_UNSET_VAR"], {},
     "--secret id=tok: environment variable PYBUILD_TEST_UNSET_VAR is not set"),
    (["--secret", "id=tok,type=env,src=PYBUILD_TEST_UNSET_VAR"], {},
     "environment variable PYBUILD_TEST_UNSET_VAR is not set"),
])
def test_bad_build_inputs_are_refused_before_any_step(bb, tmp_path, args, env, needle):
    ctx = _ctx(tmp_path, RUN_ONE)
    os.mkfifo(tmp_path / "fifo")      # a FIFO as a secret hung the build at the RUN step
    (tmp_path / "big").write_bytes(b"x" * (500 * 1024 + 1))
    args = [a.format(tmp=tmp_path) for a in args]
    before = _store_state(bb.root)
    proc = bb("build", "--progress", "plain", *args, ctx, check=False, env=env, timeout=60)
    _refused_before_any_step(bb, proc, before, needle.format(tmp=tmp_path))


def test_checked_inputs_that_are_fine_still_build(bb, tmp_path):
    ctx = _ctx(tmp_path, "FROM busybox\nRUN --mount=type=secret,id=a --mount=type=secret,id=b,env=B "
                         "test \"$(cat /run/secrets/a)$B\" = onetwo && echo both-secrets-seen\n")
    (tmp_path / "a").write_text("one")
    proc = bb("build", "--progress", "plain", "--no-cache", "--jobs", "1",
              "--secret", f"id=a,src={tmp_path}/a", "--secret", "id=b,env=PYBUILD_TEST_B", ctx,
              env={"PYBUILD_TEST_B": "two", "SOURCE_DATE_EPOCH": ""}, timeout=120)
    assert "both-secrets-seen" in proc.stderr
    out = bb("build", "-q", "--source-date-epoch", "0", "-t", "epoch0",
             _ctx(tmp_path, "FROM busybox\nRUN true\n"), timeout=120)
    created = json.loads(bb("inspect", "epoch0").stdout)[0]["Created"]
    assert out.returncode == 0 and created.startswith("1970-01-01T00:00:00"), created


# --- FROM and --from references ---------------------------------------------------------

@pytest.fixture
def listener():
    """A registry address nothing may dial: the test fails if anything connects."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen(8)
    s.setblocking(False)
    yield s.getsockname()[1], s
    s.close()


@pytest.mark.parametrize("dockerfile,where,needle", [
    ("FROM busybox AS first\nRUN echo step-ran > /x\nFROM Busybox:latest\nCOPY --from=first /x /x\n",
     "Dockerfile:3",
     "FROM Busybox:latest: invalid reference format: repository name 'Busybox:latest' must be "
     "lowercase"),
    ("FROM foo:bar:baz\nRUN echo step-ran\n", "Dockerfile:1",
     "FROM foo:bar:baz: invalid reference format"),
    ("FROM a b c\nRUN echo step-ran\n", "Dockerfile:1", "FROM requires either one or three"),
    ("FROM busybox AS a\nRUN echo step-ran > /x\nFROM 127.0.0.1:{port}/Team/app:1\n"
     "COPY --from=a /x /x\n", "Dockerfile:3", "must be lowercase"),
    ("FROM 127.0.0.1:{port}/team/app:bad:tag\nRUN echo step-ran\n", "Dockerfile:1",
     "invalid reference format"),
    ("FROM busybox\nRUN echo step-ran\nCOPY --from=127.0.0.1:{port}/Up/x:1 / /\n", "Dockerfile:3",
     "--from 127.0.0.1:{port}/Up/x:1: invalid reference format"),
    ("FROM busybox\nRUN --mount=from=Nope:x:y,target=/m echo step-ran\n", "Dockerfile:2",
     "--from Nope:x:y: invalid reference format"),
    # BuildKit refuses it while converting the Dockerfile: it ran the steps before it here
    ("FROM busybox\nRUN echo step-ran\nADD --checksum=sha256:" + "0" * 64 + " f /f\n",
     "Dockerfile:3", "ADD --checksum: checksum can't be specified for non-HTTP(S) sources (f)"),
    ("FROM busybox\nRUN echo step-ran\nARG SUM=sha256:abc\nADD --checksum=$SUM http://x/f /f\n",
     "Dockerfile:4", "ADD --checksum=sha256:abc: invalid checksum digest format"),
])
def test_invalid_image_reference_is_a_positioned_error(bb, tmp_path, listener, dockerfile,
                                                        where, needle):
    """It was found at its step, after the stages before it had run, as "unable to find
    image locally, and pulling it failed"."""
    port, sock = listener
    ctx = _ctx(tmp_path, dockerfile.format(port=port))
    before = _store_state(bb.root)
    proc = bb("build", "--progress", "plain", ctx, check=False, timeout=60)
    line = _refused_before_any_step(bb, proc, before, f"{where}:", needle.format(port=port))
    assert "pulling" not in line and "locally" not in line
    with pytest.raises(BlockingIOError):
        sock.accept()        # no pull was tried


def test_valid_references_of_every_kind_still_build(bb, tmp_path):
    image_id = json.loads(bb("inspect", "busybox").stdout)[0]["Id"]
    assert image_id.startswith("sha256:")
    for i, base in enumerate([image_id, image_id[7:19], "docker.io/library/busybox:latest"]):
        ctx = _ctx(tmp_path, f"FROM {base}\n")
        assert bb("build", "-q", ctx, timeout=120).returncode == 0, base
    # a stage named in another case is still the stage, not an image
    ctx = _ctx(tmp_path, "FROM busybox AS build\nRUN echo built > /b\nFROM Build\n"
                         "COPY --from=BUILD /b /c\nRUN cat /c\n")
    assert "built" in bb("build", "--progress", "plain", ctx, timeout=120).stderr


# --- # syntax= --------------------------------------------------------------------------

@pytest.mark.parametrize("syntax", [
    "docker/dockerfile:1", "docker/dockerfile:1.7", "docker/dockerfile:1.7-labs",
    "docker/dockerfile", "docker.io/docker/dockerfile:1",
    "docker/dockerfile-upstream:master",
    "docker/dockerfile:1@sha256:" + "a" * 64,
])
def test_known_syntax_frontends_do_not_warn(syntax):
    graph = plan_stages(parse_dockerfile(f"# syntax={syntax}\nFROM scratch\n"))
    assert graph.warnings == []


@pytest.mark.parametrize("syntax", [
    "example.com/my/frontend:1", "tonistiigi/dockerfile:runmount", "docker/dockerfile-evil:1",
    "docker/dockerfile:1 extra",
])
def test_unknown_syntax_frontends_warn(syntax):
    graph = plan_stages(parse_dockerfile(f"# syntax={syntax}\nFROM scratch\n"))
    assert len(graph.warnings) == 1 and "Dockerfile:1: unknown frontend" in graph.warnings[0]
    assert syntax in graph.warnings[0]


def test_unknown_syntax_frontend_is_a_warning_and_the_build_goes_on(bb, tmp_path):
    ctx = _ctx(tmp_path, "# syntax=example.com/my/frontend:1\nFROM busybox\n"
                         "RUN echo built-anyway\n")
    proc = bb("build", "--progress", "plain", "--no-cache", ctx, timeout=120)
    assert "built-anyway" in proc.stderr
    warnings = [l for l in proc.stderr.splitlines() if l.startswith("WARNING:")]
    assert warnings == ["WARNING: Dockerfile:1: unknown frontend '# syntax=example.com/my/"
                        "frontend:1': pybuild cannot fetch frontends and builds with its "
                        "built-in Dockerfile frontend"], proc.stderr[-2000:]
    ok = bb("build", "--progress", "plain", "--no-cache",
            _ctx(tmp_path, "# syntax=docker/dockerfile:1\nFROM busybox\nRUN true\n"), timeout=120)
    assert "WARNING" not in ok.stderr


def test_invalid_from_reference_error_shape_in_the_planner():
    text = "FROM scratch AS a\nFROM Busybox:latest AS b\nFROM scratch AS c\nCOPY --from=X:y:z / /\n"
    with pytest.raises(DockerfileError) as err:
        plan_stages(parse_dockerfile(text), target="b")
    assert err.value.line == 2 and "must be lowercase" in str(err.value)
    # a stage the target does not need (as BuildKit, which parses the names of the stages
    # it builds), and `pybuild check` (whose build args may be missing): warnings
    graph = plan_stages(parse_dockerfile(text), target="a")
    assert [w.split(":")[1] for w in graph.warnings] == ["2", "4"], graph.warnings
    graph = plan_stages(parse_dockerfile(text), lint=True)
    assert len(graph.warnings) == 2 and "FROM Busybox:latest: invalid reference" in graph.warnings[0]
    with pytest.raises(DockerfileError) as err:
        plan_stages(parse_dockerfile(text))
    assert err.value.line == 4 and "--from X:y:z: invalid reference format" in str(err.value)


def test_pybuild_check_warns_about_an_invalid_from(bb, tmp_path):
    ctx = _ctx(tmp_path, "ARG TAG\nFROM busybox:$TAG\n")
    proc = bb("check", ctx, check=False)
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr
    assert "Dockerfile:2: FROM busybox:: invalid reference format" in proc.stderr


# --- --pull without a registry ----------------------------------------------------------

def test_pull_that_fails_says_so_when_the_image_is_here(bb, tmp_path):
    """`--pull` with the base in the store and its registry down said "unable to find
    image locally": the image was there, the pull is what failed."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()                 # nothing listens: connection refused
    name = f"127.0.0.1:{port}/lib/bb:1"
    bb("tag", "busybox", name)
    ctx = _ctx(tmp_path, f"FROM {name}\nRUN echo step-ran\n")
    proc = bb("build", "--pull", "--progress", "plain", ctx, check=False, timeout=120)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    error = [l for l in proc.stderr.splitlines() if l.startswith("pybuild: error:")][-1]
    assert f"pulling '{name}' failed" in error and "connection refused" in error, error
    assert "unable to find" not in error and "locally" not in error
    assert "step-ran" not in proc.stderr.replace("echo step-ran", "")
    # without --pull the local copy is used; a name the store lacks keeps the old message
    assert "step-ran" in bb("build", "--progress", "plain", ctx, timeout=120).stderr
    missing = _ctx(tmp_path, f"FROM 127.0.0.1:{port}/lib/none:1\n")
    proc = bb("build", "--pull", missing, check=False, timeout=120)
    assert "unable to find image" in proc.stderr and "pulling it failed" in proc.stderr
    bb("rmi", name)
