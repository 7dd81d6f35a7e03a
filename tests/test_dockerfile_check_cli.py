"""`pybuild check`: exit codes, text and JSON output, errors with a caret."""

from __future__ import annotations

import json


DOCKERFILE = """\
# syntax=docker/dockerfile:1
ARG BASE=alpine:3.19
FROM ${BASE} AS build
ARG VERSION=1.0
ENV APP=/src/app-${VERSION}
COPY --chown=0:0 . $APP
RUN make -C $APP

FROM scratch AS unused
COPY --from=build / /

FROM busybox
COPY --from=build ${APP}/bin /usr/bin/app
CMD ["app"]
"""


def test_check_json(pybuild, tmp_path):
    (tmp_path / "Dockerfile").write_text(DOCKERFILE)
    proc = pybuild("check", "--format", "json", "--build-arg", "VERSION=2.5", "--build-arg", "NOPE=1",
                   tmp_path)
    doc = json.loads(proc.stdout)
    assert doc["syntax"] == "docker/dockerfile:1"
    assert doc["target"] == "2" and doc["skipped_stages"] == ["unused"]
    build, final = doc["stages"]
    assert (build["name"], build["base"], build["line"]) == \
        ("build", {"kind": "image", "ref": "alpine:3.19", "stage": None}, 3)
    copy = build["instructions"][3]
    assert copy == {"keyword": "COPY", "flags": ["--chown=0:0"], "arguments": [".", "/src/app-2.5"],
                    "line": 6, "end_line": 6}
    assert build["instructions"][4]["arguments"] == ["make -C $APP"]     # RUN is not expanded
    assert final["depends_on"] == [0]
    # APP is not in scope in the last stage: ENV does not cross stages
    assert final["instructions"][1]["arguments"] == ["/bin", "/usr/bin/app"]
    assert final["instructions"][2] == {"keyword": "CMD", "flags": [], "arguments": ["app"], "line": 14,
                                        "end_line": 14}
    assert "one or more build-args [NOPE] were not consumed" in proc.stderr


def test_check_text_and_target(pybuild, tmp_path):
    path = tmp_path / "build.Dockerfile"
    path.write_text(DOCKERFILE)
    proc = pybuild("check", "-f", path, "--target", "unused")
    assert proc.stdout.splitlines()[-1] == f"{path}: OK, 2 of 3 stages needed for target unused (1 skipped)"
    proc = pybuild("check", "-f", path, "--target", "missing", check=False)
    assert proc.returncode == 1
    assert 'target stage "missing" could not be found' in proc.stderr


def test_check_error_has_position_and_caret(pybuild, tmp_path):
    (tmp_path / "Dockerfile").write_text("FROM alpine\nRUN true\n    RUNN echo hi\n")
    proc = pybuild("check", tmp_path, check=False)
    assert proc.returncode == 1
    assert proc.stdout == ""
    lines = proc.stderr.splitlines()
    assert lines[0] == f'pybuild: error: {tmp_path}/Dockerfile:3:5: unknown instruction "RUNN" (did you mean "RUN"?)'
    assert lines[1:] == ["    RUNN echo hi", "    ^"]
    assert "Traceback" not in proc.stderr


def test_check_missing_file(pybuild, tmp_path):
    proc = pybuild("check", tmp_path, check=False)
    assert proc.returncode == 1
    assert "cannot read the Dockerfile" in proc.stderr and "Traceback" not in proc.stderr


def test_cli_imports_the_frontend_lazily():
    """`pybuild --help` must not pay for lark and the Dockerfile frontend."""
    import subprocess
    import sys

    from conftest import REPO

    code = "import sys, builder.cli; print(sorted(m for m in sys.modules if m.startswith(('lark', 'builder.dockerfile'))))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO)
    assert out.stdout.strip() == "[]"
