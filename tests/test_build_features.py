"""Build options and instruction details buildah cannot be compared on: stdin
Dockerfiles, outputs, squash, reproducible times, parallel stages, COPY --parents/--exclude,
ONBUILD replay, and the error messages a user sees."""

from __future__ import annotations

import json
import tarfile
import textwrap

import pytest

from buildpeer import import_busybox


@pytest.fixture
def bb(pybuild, busybox_rootfs, tmp_path):
    import_busybox(pybuild, busybox_rootfs, tmp_path)
    return pybuild


def _ctx(tmp_path, dockerfile: str, files: dict[str, str] | None = None):
    ctx = tmp_path / "ctx"
    ctx.mkdir(exist_ok=True)
    (ctx / "Dockerfile").write_text(textwrap.dedent(dockerfile))
    for k, v in (files or {}).items():
        (ctx / k).parent.mkdir(parents=True, exist_ok=True)
        (ctx / k).write_text(v)
    return ctx


def _config(pybuild, name):
    return json.loads(pybuild("inspect", name).stdout)[0]


def test_stdin_dockerfile_without_context(bb):
    out = bb("build", "-t", "from-stdin", "--progress", "quiet", "-",
             input="FROM busybox\nRUN echo hi > /hi\nCMD [\"cat\", \"/hi\"]\n")
    assert out.stdout.strip().startswith("sha256:")
    p = bb("build", "--progress", "quiet", "-", input="FROM busybox\nCOPY x /x\n", check=False)
    assert p.returncode == 1 and "no build context" in p.stderr


def test_outputs_squash_labels_and_iidfile(bb, tmp_path):
    ctx = _ctx(tmp_path, """\
        FROM busybox
        RUN echo one > /one
        RUN echo two > /two && rm /one /bin/vi
        """)
    iid = tmp_path / "iid"
    bb("build", "--progress", "quiet", "-t", "squashed", "--squash", "--label", "team=core",
       "--iidfile", iid, ctx)
    cfg = _config(bb, "squashed")
    base_layers = _config(bb, "busybox")["RootFS"]["Layers"]
    assert cfg["RootFS"]["Layers"][:-1] == base_layers and len(cfg["RootFS"]["Layers"]) == 2
    squashed = tmp_path / "squashed-root"
    bb("build", "--progress", "quiet", "--squash", "--output", f"type=local,dest={squashed}", ctx)
    assert (squashed / "two").read_text() == "two\n" and not (squashed / "one").exists()
    assert not (squashed / "bin/vi").exists() and (squashed / "bin/sh").exists()
    assert cfg["Config"]["Labels"] == {"team": "core"}
    assert iid.read_text() == cfg["Id"]
    tar_out = tmp_path / "rootfs.tar"
    bb("build", "--progress", "quiet", "--output", f"type=tar,dest={tar_out}", ctx)
    with tarfile.open(tar_out) as t:
        names = set(t.getnames())
    assert "./two" in names and "./one" not in names and "./bin/busybox" in names
    oci = tmp_path / "image.tar"
    bb("build", "--progress", "quiet", "-t", "exported", "--output", f"type=oci,dest={oci}", ctx)
    with tarfile.open(oci) as t:
        assert "index.json" in t.getnames() and "oci-layout" in t.getnames()


def test_source_date_epoch_makes_builds_reproducible(bb, tmp_path):
    ctx = _ctx(tmp_path, """\
        FROM busybox
        COPY data.txt /data.txt
        RUN mkdir /made && echo fixed > /made/file
        CMD ["cat", "/data.txt"]
        """, {"data.txt": "d\n"})
    ids = []
    for _ in range(2):
        p = bb("build", "--no-cache", "--progress", "quiet", "--source-date-epoch", "1700000000",
               "-t", "repro", ctx)
        ids.append(p.stdout.strip())
    assert ids[0] == ids[1]
    created = _config(bb, "repro")["Created"]
    assert created.startswith("2023-11-14T22:13:20")


def test_independent_stages_run_in_parallel(bb, tmp_path):
    ctx = _ctx(tmp_path, """\
        FROM busybox AS a
        RUN sleep 1; echo a > /a
        FROM busybox AS b
        RUN sleep 1; echo b > /b
        FROM busybox
        COPY --from=a /a /a
        COPY --from=b /b /b
        """)
    err = bb("build", "--progress", "plain", "--jobs", "2", ctx).stderr.splitlines()
    run_starts = [i for i, l in enumerate(err) if "] RUN sleep 1" in l]
    first_done = min(i for i, l in enumerate(err) if l.split()[1:2] == ["DONE"] and
                     any(err[j].split()[0] == l.split()[0] for j in run_starts))
    assert len(run_starts) == 2 and max(run_starts) < first_done
    one = bb("build", "--progress", "plain", "--jobs", "1", "--no-cache", ctx).stderr.splitlines()
    starts = [i for i, l in enumerate(one) if "] RUN sleep 1" in l]
    dones = [i for i, l in enumerate(one) if l.startswith(one[starts[0]].split()[0] + " DONE")]
    assert dones[0] < starts[1]   # --jobs 1: one stage after the other


def test_copy_parents_and_exclude(bb, tmp_path):
    ctx = _ctx(tmp_path, """\
        FROM busybox
        COPY --parents src/a/x.txt src/b/y.txt /out/
        COPY --exclude=*.tmp --exclude=skip stuff /stuff
        """, {"src/a/x.txt": "x", "src/b/y.txt": "y", "stuff/keep.txt": "k", "stuff/junk.tmp": "j",
              "stuff/skip/deep.txt": "s"})
    out = tmp_path / "out"
    bb("build", "--progress", "quiet", "--output", f"type=local,dest={out}", ctx)
    assert (out / "out/src/a/x.txt").read_text() == "x"
    assert (out / "out/src/b/y.txt").read_text() == "y"
    assert (out / "stuff/keep.txt").exists()
    assert not (out / "stuff/junk.tmp").exists() and not (out / "stuff/skip").exists()


def test_onbuild_triggers_replay_and_entrypoint_resets_cmd(bb, tmp_path):
    base = _ctx(tmp_path, """\
        FROM busybox
        ONBUILD COPY marker.txt /marker.txt
        ONBUILD RUN echo triggered > /triggered
        CMD ["echo", "base"]
        """)
    bb("build", "--progress", "quiet", "-t", "with-triggers", base)
    assert _config(bb, "with-triggers")["Config"]["OnBuild"] == [
        "COPY marker.txt /marker.txt", "RUN echo triggered > /triggered"]
    child = tmp_path / "child"
    child.mkdir()
    (child / "marker.txt").write_text("m\n")
    (child / "Dockerfile").write_text("FROM with-triggers\nENTRYPOINT [\"/bin/cat\"]\n")
    out = tmp_path / "out"
    bb("build", "--progress", "quiet", "-t", "child", child)
    bb("build", "--progress", "quiet", "--output", f"type=local,dest={out}", child)
    assert (out / "marker.txt").read_text() == "m\n" and (out / "triggered").exists()
    cfg = _config(bb, "child")["Config"]
    assert cfg.get("OnBuild") is None and cfg.get("Cmd") is None
    assert cfg["Entrypoint"] == ["/bin/cat"]


def test_user_and_workdir_creation(bb, tmp_path):
    ctx = _ctx(tmp_path, """\
        FROM busybox
        USER user
        WORKDIR /home/user/project/sub
        RUN id -un > whoami && pwd > where
        """)
    out = tmp_path / "out"
    bb("build", "--progress", "quiet", "--output", f"type=local,dest={out}", ctx)
    d = out / "home/user/project/sub"
    assert (d / "whoami").read_text() == "user\n" and (d / "where").read_text() == f"/{d.relative_to(out)}\n"
    assert d.stat().st_uid == 1000


@pytest.mark.parametrize("dockerfile,message", [
    ("FROM busybox\nRUNN true\n", 'Dockerfile:2:1: unknown instruction "RUNN"'),
    ("FROM busybox\nCOPY missing.txt /\n", "missing.txt: not found in the build context"),
    ("FROM busybox\nADD https://example.invalid/x.tgz /\n", "ADD https://example.invalid/x.tgz: cannot download"),
    ("FROM no-such-image-here\n", "no-such-image-here"),
    ("FROM busybox AS a\nFROM busybox\nCOPY --from=a /nope /x\n", "/nope: not found in the source image"),
    ("FROM busybox\nCOPY a b c\n", "must be a directory and end with a /"),
    ("FROM busybox\nCOPY --chown=nobody-here a /a\n", "no user 'nobody-here'"),
])
def test_errors_are_one_clear_line(bb, tmp_path, dockerfile, message):
    ctx = _ctx(tmp_path, dockerfile, {"a": "a", "b": "b"})
    p = bb("build", "--progress", "plain", ctx, check=False)
    assert p.returncode != 0
    assert message in p.stderr, p.stderr
    assert "Traceback" not in p.stderr


def test_named_build_context(bb, tmp_path):
    extra = tmp_path / "extra"
    extra.mkdir()
    (extra / "lib.txt").write_text("from the named context\n")
    ctx = _ctx(tmp_path, """\
        FROM busybox
        COPY --from=shared lib.txt /copied.txt
        RUN --mount=type=bind,from=shared,target=/mnt cp /mnt/lib.txt /mounted.txt
        """)
    out = tmp_path / "out"
    bb("build", "--progress", "quiet", "--build-context", f"shared={extra}",
       "--output", f"type=local,dest={out}", ctx)
    assert (out / "copied.txt").read_text() == "from the named context\n"
    assert (out / "mounted.txt").read_text() == "from the named context\n"


def test_add_url_downloads_with_checksum(bb, tmp_path):
    import hashlib
    import http.server
    import threading

    served = tmp_path / "www"
    served.mkdir()
    (served / "tool.tar.gz").write_bytes(b"not really an archive\n")
    digest = "sha256:" + hashlib.sha256(b"not really an archive\n").hexdigest()

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *a, **k):
            super().__init__(*a, directory=str(served), **k)

        def log_message(self, *a):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Quiet)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}/tool.tar.gz"
    try:
        ctx = _ctx(tmp_path, f"FROM busybox\nADD --checksum={digest} {url} /dl/\n")
        out = tmp_path / "out"
        bb("build", "--progress", "quiet", "--output", f"type=local,dest={out}", ctx)
        got = out / "dl" / "tool.tar.gz"
        assert got.read_bytes() == b"not really an archive\n"   # a remote archive is not extracted
        assert got.stat().st_mode & 0o777 == 0o600
        (ctx / "Dockerfile").write_text(f"FROM busybox\nADD --checksum=sha256:{'0' * 64} {url} /x\n")
        p = bb("build", "--progress", "quiet", ctx, check=False)
        assert p.returncode == 1 and "checksum mismatch" in p.stderr
    finally:
        server.shutdown()
        server.server_close()
    (ctx / "Dockerfile").write_text(f"FROM busybox\nADD {url} /x\n")
    p = bb("build", "--progress", "quiet", ctx, check=False)
    assert p.returncode == 1 and "cannot download" in p.stderr and "Traceback" not in p.stderr


def test_progress_modes(bb, tmp_path):
    ctx = _ctx(tmp_path, "FROM busybox\nRUN echo visible-output\n")
    quiet = bb("build", "--progress", "quiet", "--no-cache", ctx)
    assert quiet.stderr == "" and quiet.stdout.strip().startswith("sha256:")
    assert len(quiet.stdout.split()) == 1
    raw = bb("build", "--progress", "rawjson", "--no-cache", ctx)
    events = [json.loads(line) for line in raw.stderr.splitlines()]
    kinds = [e["event"] for e in events]
    assert kinds.count("start") == 2 and kinds.count("done") == 2
    assert {"event": "output", "data": "visible-output"}.items() <= next(
        e for e in events if e["event"] == "output").items()
    plain = bb("build", "--progress", "plain", ctx)
    lines = plain.stderr.splitlines()
    assert any(l.startswith("#2 [2/2] RUN echo visible-output") for l in lines)
    assert "#2 CACHED" in lines
