"""Differential tests: the same Dockerfile built by pybuild and by buildah gives the same
rootfs (type, mode, owner, content, link target of every path, as unpacked by
umoci) and the same config fields."""

from __future__ import annotations

import gzip
import io
import os
import tarfile
import textwrap
from pathlib import Path

import pytest

from buildpeer import (Buildah, config_subset, pybuild_config, pybuild_unpack, rootfs_tar)
from treecmp import diff_dirs

PRELUDE = "FROM scratch\nADD rootfs.tar /\n"
# buildah 1.28 leaves the stubs of its RUN mounts in the image (docker/BuildKit do not)
BUILDAH_STUBS = ("etc/hosts", "etc/resolv.conf", "run")


@pytest.fixture(scope="module")
def buildah(tmp_path_factory):
    b = Buildah(tmp_path_factory.mktemp("buildah"))
    yield b
    b.cleanup()


@pytest.fixture(scope="module")
def base_tar(busybox_rootfs, tmp_path_factory) -> Path:
    return rootfs_tar(busybox_rootfs, tmp_path_factory.mktemp("bbtar") / "rootfs.tar")


def _context(tmp_path: Path, base_tar: Path, dockerfile: str, files: dict[str, bytes | str],
             prelude: str = PRELUDE) -> Path:
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    os.link(base_tar, ctx / "rootfs.tar")
    (ctx / "Dockerfile").write_text(prelude + textwrap.dedent(dockerfile))
    for name, data in files.items():
        p = ctx / name
        p.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(data, str) and data.startswith("->"):
            os.symlink(data[2:], p)
        elif isinstance(data, str):
            p.write_text(data)
        else:
            p.write_bytes(data)
    return ctx


def _compare(pybuild, buildah, tmp_path, ctx, tag, *args, ignore=BUILDAH_STUBS):
    pybuild("build", "--progress", "plain", "-t", tag, *args, ctx)
    buildah.bud(ctx, tag, *args)
    ours = pybuild_unpack(pybuild, tag, tmp_path / "ours")
    theirs = buildah.unpack(tag, tmp_path / "theirs")
    problems = diff_dirs(ours, theirs, ignore=ignore)
    assert problems == [], "\n".join(problems)
    assert config_subset(pybuild_config(pybuild, tag)) == config_subset(buildah.config(tag))
    return ours


def test_metadata_and_run(pybuild, buildah, tmp_path, base_tar):
    ctx = _context(tmp_path, base_tar, """\
        ARG VERSION=1.0
        ENV APP_HOME=/srv/app GREETING="hello world"
        ENV PATH=$PATH:$APP_HOME/bin
        LABEL org.example.version=$VERSION "with space"="a b"
        EXPOSE 8080 53/udp
        VOLUME ["/data", "/cache"]
        WORKDIR $APP_HOME
        RUN mkdir -p bin sub/dir && echo "$GREETING $VERSION" > greeting && chmod 0750 sub \\
            && ln -s greeting link && ln -s /nonexistent dangling && rm -rf /home /tmp/* \\
            && mkfifo fifo && touch -d @0 greeting
        RUN rm /bin/vi && echo $VERSION > /version
        WORKDIR rel
        STOPSIGNAL SIGQUIT
        HEALTHCHECK --interval=30s --timeout=3s --retries=2 CMD ["true"]
        ONBUILD RUN echo triggered
        USER nobody
        ENTRYPOINT ["/bin/sh", "-c"]
        CMD ["echo $GREETING"]
        SHELL ["/bin/sh", "-ec"]
        """, {})
    ours = _compare(pybuild, buildah, tmp_path, ctx, "meta-run", "--build-arg", "VERSION=2.5",
                    # buildah also creates VOLUME directories when a RUN follows; BuildKit does not
                    ignore=BUILDAH_STUBS + ("data", "cache"))
    assert (ours / "srv/app/greeting").read_text() == "hello world 2.5\n"
    assert not (ours / "bin/vi").exists()


def test_copy_semantics(pybuild, buildah, tmp_path, base_tar):
    files = {
        "file.txt": "one\n", "exec.sh": "#!/bin/sh\necho hi\n",
        "dir/a": "a\n", "dir/sub/b": "b\n", "dir/link": "->a",
        "glob1.conf": "1", "glob2.conf": "2", "other.txt": "x",
        "ignored.log": "nope", "deep/x/y.log": "nope", "deep/keep.log": "keep",
        ".dockerignore": "**/*.log\n!deep/keep.log\n/other.txt\n",
        "tree/.hidden": "h",
    }
    ctx = _context(tmp_path, base_tar, """\
        RUN echo 'app:x:1234:2345::/home/app:/bin/sh' >> /etc/passwd && echo 'grp:x:2345:' >> /etc/group \\
            && echo 'other:x:3456:' >> /etc/group
        COPY file.txt /renamed.txt
        COPY file.txt /into/existing/
        COPY dir /copied-dir
        COPY dir/ /copied-dir2/
        COPY *.conf /confs/
        COPY deep /deep
        COPY . /whole/
        COPY --chown=app file.txt /owned/by-name
        COPY --chown=app:other dir /owned/dir
        COPY --chown=10:20 file.txt /owned/numeric
        COPY --chmod=0755 file.txt /modes/octal
        COPY tree /etc/tree
        WORKDIR /work
        COPY file.txt exec.sh ./
        """, files)
    os.chmod(ctx / "exec.sh", 0o700)
    os.chmod(ctx / "dir", 0o750)
    ours = _compare(pybuild, buildah, tmp_path, ctx, "copy-sem")
    assert not (ours / "whole/ignored.log").exists()
    assert not (ours / "whole/other.txt").exists()
    assert (ours / "deep/keep.log").exists()
    st = os.stat(ours / "owned/by-name")
    assert (st.st_uid, st.st_gid) == (1234, 2345)


def test_multistage(pybuild, buildah, tmp_path, base_tar):
    ctx = _context(tmp_path, base_tar, """\
        RUN mkdir -p /out && echo built > /out/artifact && chmod 600 /out/artifact \\
            && chown 5:6 /out/artifact && ln -s artifact /out/alias
        FROM scratch AS unused
        ADD rootfs.tar /
        RUN exit 3
        FROM scratch AS runtime
        ADD rootfs.tar /
        COPY --from=0 /out /app/
        COPY --from=0 /out/artifact /single
        CMD ["/bin/cat", "/app/artifact"]
        """, {})
    ours = _compare(pybuild, buildah, tmp_path, ctx, "multi", "--target", "runtime")
    st = os.stat(ours / "app/artifact")
    assert (st.st_uid, st.st_gid) == (5, 6)


def test_add_archives(pybuild, buildah, tmp_path, base_tar):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as t:
        for name, data, mode, uid in (("pkg/bin/tool", b"#!/bin/sh\n", 0o755, 7),
                                      ("pkg/README", b"read me\n", 0o644, 0)):
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.uid, info.gid, info.mtime = len(data), mode, uid, uid, 1000
            t.addfile(info, io.BytesIO(data))
    ctx = _context(tmp_path, base_tar, """\
        ADD plain.tar /opt/
        ADD packed.tar.gz /srv
        ADD notes.txt /srv/notes.txt
        """, {"plain.tar": buf.getvalue(), "packed.tar.gz": gzip.compress(buf.getvalue(), mtime=0),
              "notes.txt": "n\n"})
    ours = _compare(pybuild, buildah, tmp_path, ctx, "adds")
    assert (ours / "opt/pkg/bin/tool").stat().st_uid == 7
    assert (ours / "srv/pkg/README").read_text() == "read me\n"


def test_args_stages_and_whiteouts(pybuild, buildah, tmp_path, base_tar):
    ctx = _context(tmp_path, base_tar, """\
        ARG DIR=/opt/x
        FROM scratch AS base
        ADD rootfs.tar /
        ARG DIR
        ENV DIR=$DIR
        RUN mkdir -p $DIR/sub && echo base > $DIR/file && echo deep > $DIR/sub/deep
        FROM base AS child
        ARG SUFFIX=default
        RUN echo "$DIR-$SUFFIX" > /child
        COPY --from=base $DIR/file /copied
        RUN rm -rf /etc/passwd /tmp $DIR/sub && mkdir /tmp && touch /tmp/new && ln -s /child /etc/passwd \\
            && mkdir $DIR/sub && echo replaced > $DIR/sub/other
        USER 1000:1000
        """, {}, prelude="")
    ours = _compare(pybuild, buildah, tmp_path, ctx, "args-stages", "--build-arg", "SUFFIX=given")
    assert (ours / "child").read_text() == "/opt/x-given\n"
    assert not (ours / "opt/x/sub/deep").exists()
