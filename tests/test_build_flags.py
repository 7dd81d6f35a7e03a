"""BuildKit's `docker build` flags: --ulimit, --no-cache-filter, --call/--check,
BUILDKIT_PROGRESS."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest

from buildpeer import import_busybox, steps


@pytest.fixture
def bb(pybuild, busybox_rootfs, tmp_path):
    import_busybox(pybuild, busybox_rootfs, tmp_path)
    return pybuild


def _ctx(tmp_path: Path, text: str, name: str = "ctx") -> Path:
    d = tmp_path / name
    d.mkdir()
    (d / "Dockerfile").write_text(textwrap.dedent(text))
    return d


def _stored(root: Path) -> list[str]:
    """The image names in the store (none: nothing was built)."""
    index = root / "index.json"
    if not index.exists():
        return []
    return [m.get("annotations", {}).get("org.opencontainers.image.ref.name", "")
            for m in json.loads(index.read_text()).get("manifests", [])]


# --- --ulimit -------------------------------------------------------------------------

def test_ulimit_reaches_run_steps(bb, tmp_path):
    ctx = _ctx(tmp_path, """\
        FROM busybox
        RUN echo "soft=$(ulimit -n) hard=$(ulimit -Hn)" > /limits
        CMD ["cat", "/limits"]
        """)
    bb("build", "--ulimit", "nofile=1024:2048", "-t", "lim", ctx)
    assert bb("run", "--rm", "lim").stdout.strip() == "soft=1024 hard=2048"
    # another limit is another step (part of its key, as BuildKit's), not a cache hit
    p = bb("build", "--progress", "plain", "--ulimit", "nofile=512:512", "-t", "lim", ctx)
    assert "CACHED" not in p.stderr
    assert bb("run", "--rm", "lim").stdout.strip() == "soft=512 hard=512"
    # the same limit again: cached (the RUN and the CMD)
    p = bb("build", "--progress", "plain", "--ulimit", "nofile=512:512", "-t", "lim", ctx)
    assert list(steps(p.stderr).values()).count("CACHED") == 2, p.stderr


def test_ulimit_without_the_flag_keeps_the_old_cache_key(bb, tmp_path):
    ctx = _ctx(tmp_path, "FROM busybox\nRUN echo one > /one\n")
    bb("build", ctx)
    p = bb("build", "--progress", "plain", "--no-cache-filter", "nosuchstage", ctx)
    assert list(steps(p.stderr).values()).count("CACHED") == 1, p.stderr


@pytest.mark.parametrize("value,message", [
    ("nofile", "expected NAME=SOFT[:HARD]"),
    ("nofiles=1:2", "expected NAME=SOFT[:HARD]"),
    ("nofile=a:b", "limits must be integers"),
    ("nofile=4096:1024", "soft limit 4096 exceeds hard limit 1024"),
])
def test_bad_ulimit_fails_before_anything(pybuild, tmp_path, value, message):
    ctx = _ctx(tmp_path, "FROM busybox\nRUN true\n")
    p = pybuild("build", "--ulimit", value, ctx, check=False)
    assert p.returncode != 0 and message in p.stderr and "Traceback" not in p.stderr
    assert _stored(pybuild.root) == []


# --- --no-cache-filter ----------------------------------------------------------------

MULTI = """\
    FROM busybox AS build
    RUN echo built > /artifact
    RUN echo more >> /artifact

    FROM busybox AS test
    RUN echo tested > /t

    FROM busybox
    COPY --from=build /artifact /artifact
    COPY --from=test /t /t
    RUN cat /artifact /t
    """


def test_no_cache_filter_reruns_only_that_stage(bb, tmp_path):
    ctx = _ctx(tmp_path, MULTI)
    first = bb("build", "--progress", "plain", "-t", "multi", ctx)
    assert "CACHED" not in first.stderr
    again = bb("build", "--progress", "plain", "--no-cache-filter", "test", "-t", "multi", ctx)
    marks = list(steps(again.stderr).values())
    # build: 2 RUN cached; test: its RUN ran; final: 2 COPY + RUN -- the COPY of test's new
    # layer and what follows are keyed by content, which is the same, so they hit
    assert marks.count("CACHED") == 5, again.stderr
    assert "echo tested" in again.stderr
    lines = again.stderr.splitlines()
    ran = [l for l in lines if "[test" in l and "RUN echo tested" in l]
    assert ran, again.stderr
    n = ran[0].split()[0]
    assert f"{n} CACHED" not in again.stderr
    # two stages, comma-separated; by index too
    both = bb("build", "--progress", "plain", "--no-cache-filter", "build,test", ctx)
    assert list(steps(both.stderr).values()).count("CACHED") == 3, both.stderr
    by_index = bb("build", "--progress", "plain", "--no-cache-filter", "1", ctx)
    assert list(steps(by_index.stderr).values()).count("CACHED") == 5, by_index.stderr


def test_no_cache_filter_bypasses_the_whole_build_memo(bb, tmp_path):
    ctx = _ctx(tmp_path, "FROM busybox AS only\nRUN echo x > /x\n")
    bb("build", ctx)
    p = bb("build", "--progress", "plain", "--no-cache-filter", "only", ctx)
    assert "CACHED" not in p.stderr and "1 step run" in p.stderr, p.stderr


# --- --call / --check -----------------------------------------------------------------

CALL_DF = """\
    # syntax=docker/dockerfile:1

    # GO_VERSION sets the Go version for the build
    ARG GO_VERSION=1.22
    # build compiles the binary
    FROM busybox:${GO_VERSION} AS build
    # VERSION is the program's version
    ARG VERSION=v0.0.1
    RUN --mount=type=secret,target=/etc/passwd,required=true --mount=type=ssh true

    FROM busybox as second
    RUN false

    FROM busybox
    RUN false

    # binary returns the compiled binary
    FROM build AS binary
    ARG BAR
    RUN --mount=type=secret,id=second${BAR} --mount=type=ssh,id=ssh3,required true
    """


def test_call_targets(pybuild, tmp_path):
    ctx = _ctx(tmp_path, CALL_DF)
    p = pybuild("build", "--call", "targets", ctx)
    assert p.stdout.splitlines() == [
        "TARGET             DESCRIPTION",
        "build              compiles the binary",
        "second             ",
        "                   ",
        "binary (default)   returns the compiled binary",
    ]
    js = json.loads(pybuild("build", "--call=targets,format=json", ctx).stdout)
    assert [t.get("name", "") for t in js["targets"]] == ["build", "second", "", "binary"]
    assert js["targets"][3]["default"] is True and js["targets"][0]["base"] == "busybox:${GO_VERSION}"
    assert _stored(pybuild.root) == [] and not (pybuild.root / "blobs").exists()


def test_call_outline(pybuild, tmp_path):
    ctx = _ctx(tmp_path, CALL_DF)
    p = pybuild("build", "--call", "outline", "--build-arg", "BAR=678", ctx)
    assert p.stdout == textwrap.dedent("""\
        TARGET:      binary
        DESCRIPTION: returns the compiled binary

        BUILD ARG    VALUE    DESCRIPTION
        GO_VERSION   1.22     sets the Go version for the build
        VERSION      v0.0.1   is the program's version
        BAR          678      

        SECRET      REQUIRED
        passwd      true
        second678   

        SSH       REQUIRED
        default   
        ssh3      true

        """)
    # a target: only what it needs (stage second has no args and no secrets)
    p = pybuild("build", "--call", "outline", "--target", "second", ctx)
    assert p.stdout == "TARGET: second\n\n"     # tabwriter: one row, padding 1
    p = pybuild("build", "--call", "outline", "--target", "nope", ctx, check=False)
    assert p.returncode != 0 and 'target stage "nope" could not be found' in p.stderr
    assert _stored(pybuild.root) == []


@pytest.mark.parametrize("flags", [("--check",), ("--call", "check"), ("--call=check",)])
def test_check_prints_buildkit_warnings_and_fails(pybuild, tmp_path, flags):
    ctx = _ctx(tmp_path, """\
        FROM busybox as base
        MAINTAINER someone
        CMD echo hi
        """)
    p = pybuild("build", *flags, ctx, check=False)
    assert p.returncode == 1, p.stderr
    out = p.stdout
    assert out.startswith("Check complete, 3 warnings have been found!\n")
    assert "WARNING: FromAsCasing - https://docs.docker.com/go/dockerfile/rule/from-as-casing/\n" \
        "'as' and 'FROM' keywords' casing do not match\nDockerfile:1\n" in out
    assert "   1 | >>> FROM busybox as base" in out
    assert "WARNING: MaintainerDeprecated - " in out and "WARNING: JSONArgsRecommended - " in out
    assert "   3 | >>> CMD echo hi" in out
    assert _stored(pybuild.root) == []


def test_check_clean_dockerfile_exits_0_and_runs_nothing(pybuild, tmp_path):
    ctx = _ctx(tmp_path, """\
        FROM busybox AS base
        RUN touch /ran-a-step
        CMD ["sh"]
        """)
    p = pybuild("build", "--check", "-t", "x", ctx)
    assert p.stdout == "Check complete, no warnings found.\n"
    assert "#1" not in p.stderr and _stored(pybuild.root) == []
    one = pybuild("build", "--check", "--build-arg", "NOPE=1", ctx, check=False)
    assert one.returncode == 1 and "Check complete, 1 warning has been found!" in one.stdout
    assert "WARNING: one or more build-args [NOPE] were not consumed" in one.stdout
    js = json.loads(pybuild("build", "--call", "check,format=json", "--build-arg", "NOPE=1", ctx,
                            check=False).stdout)
    assert len(js["warnings"]) == 1


def test_check_parse_error_is_an_error(pybuild, tmp_path):
    ctx = _ctx(tmp_path, "FROM busybox\nNOTANINSTRUCTION x\n")
    p = pybuild("build", "--check", ctx, check=False)
    assert p.returncode not in (0, 1) or "error" in p.stderr
    assert "Traceback" not in p.stderr and "NOTANINSTRUCTION" in p.stderr.upper()


@pytest.mark.parametrize("args,message", [
    (("--call", "lnit"), "unknown call 'lnit'"),
    (("--call", "outline,format=yaml"), "unknown option 'format=yaml'"),
    (("--check", "--call", "targets"), "--check and --call targets cannot be used together"),
])
def test_bad_call_is_one_line(pybuild, tmp_path, args, message):
    ctx = _ctx(tmp_path, "FROM busybox\n")
    p = pybuild("build", *args, ctx, check=False)
    assert p.returncode != 0 and message in p.stderr and "Traceback" not in p.stderr


def test_call_reads_the_dockerfile_from_stdin_and_f(pybuild, tmp_path):
    ctx = _ctx(tmp_path, "FROM busybox AS one\n")
    p = pybuild("build", "--call", "targets", "-f", "-", ctx, input="FROM busybox AS fromstdin\n")
    assert "fromstdin (default)" in p.stdout
    other = ctx / "Other.Dockerfile"
    other.write_text("FROM busybox AS other\n")
    p = pybuild("build", "--call", "targets", "-f", other, ctx)
    assert "other (default)" in p.stdout


# --- BUILDKIT_PROGRESS ----------------------------------------------------------------

def test_buildkit_progress_env_sets_the_default(bb, tmp_path):
    ctx = _ctx(tmp_path, "FROM busybox\nRUN echo progress-line\n")
    p = bb("build", ctx, env={"BUILDKIT_PROGRESS": "plain"})
    assert "#2 [2/2] RUN echo progress-line" in p.stderr or "RUN echo progress-line" in p.stderr
    assert any(l.startswith("#") for l in p.stderr.splitlines()), p.stderr
    q = bb("build", ctx, env={"BUILDKIT_PROGRESS": "quiet"})
    assert q.stderr == "" and q.stdout.strip().startswith("sha256:")
    # the flag wins over the environment
    p = bb("build", "--progress", "quiet", ctx, env={"BUILDKIT_PROGRESS": "plain"})
    assert p.stderr == ""
    bad = bb("build", ctx, env={"BUILDKIT_PROGRESS": "fancy"}, check=False)
    assert bad.returncode == 2 and "'fancy' is not one of" in bad.stderr


def test_ulimit_the_kernel_refuses_fails_the_step_in_one_line(bb, tmp_path):
    """Above fs.nr_open no process may hold the limit (root neither): the step fails with
    the limit named, nothing is tagged and the next build runs normally."""
    ctx = _ctx(tmp_path, "FROM busybox\nRUN echo should-not-run\n")
    p = bb("build", "--ulimit", "nofile=2000000", "-t", "huge", ctx, check=False)
    assert p.returncode != 0 and "Traceback" not in p.stderr
    assert "cannot set --ulimit nofile=2000000:2000000" in p.stderr.splitlines()[-1]
    assert "should-not-run\n" not in p.stderr.replace("RUN echo should-not-run", "")
    assert not any("huge" in n for n in _stored(bb.root))
    containers = bb.root / "containers"
    assert not containers.exists() or not list(containers.glob("build-*"))


def test_check_directive_skips_rules(pybuild, tmp_path):
    ctx = _ctx(tmp_path, "# check=skip=JSONArgsRecommended\nFROM busybox as b\nCMD echo hi\n")
    p = pybuild("build", "--check", ctx, check=False)
    assert p.returncode == 1 and p.stdout.startswith("Check complete, 1 warning has been found!")
    assert "WARNING: FromAsCasing" in p.stdout and "WARNING: JSONArgsRecommended" not in p.stdout
    (ctx / "Dockerfile").write_text("# check=skip=all\nFROM busybox as b\nCMD echo hi\n")
    assert pybuild("build", "--check", ctx).stdout == "Check complete, no warnings found.\n"
