"""Mount points and sandbox stubs after a RUN (issue 11, finding 2: CVE-2024-23652 class).

A RUN step may move a directory that holds one of its mount points away and put a
symlink to a host directory in its place. The cleanup that takes the stubs out of the
upper dir afterwards must then touch nothing on the host: each case below plants such
a symlink and checks that a host directory of empty files and empty directories (the
very things the cleanup removes) is left exactly as it was.
"""

from __future__ import annotations

import os
import textwrap
from pathlib import Path

import pytest

from buildpeer import import_busybox


@pytest.fixture
def bb(pybuild, busybox_rootfs, tmp_path):
    import_busybox(pybuild, busybox_rootfs, tmp_path)
    return pybuild


def _ctx(tmp_path: Path, text: str) -> Path:
    ctx = tmp_path / "ctx"
    ctx.mkdir(exist_ok=True)
    (ctx / "Dockerfile").write_text(textwrap.dedent(text))
    return ctx


def _host_dir(tmp_path: Path, files: tuple[str, ...], dirs: tuple[str, ...]) -> Path:
    host = tmp_path / "host-dir"
    host.mkdir()
    for f in files:
        (host / f).touch()
    for d in dirs:
        (host / d).mkdir()
    return host


def _listing(top: Path) -> list[tuple[str, int, int]]:
    out = []
    for dirpath, dirnames, filenames in os.walk(top):
        for name in dirnames + filenames:
            p = os.path.join(dirpath, name)
            st = os.lstat(p)
            out.append((os.path.relpath(p, top), st.st_mode, st.st_size))
    return sorted(out)


def test_tmpfs_target_moved_and_replaced_by_a_symlink(bb, tmp_path):
    host = _host_dir(tmp_path, ("emptyfile", "x"), ("emptydir", "other"))
    before = _listing(host)
    ctx = _ctx(tmp_path, f"""\
        FROM busybox
        RUN --mount=type=tmpfs,target=/x/emptydir mv /x /x2 && ln -s {host} /x
        """)
    out = tmp_path / "out"
    bb("build", "--progress", "plain", "--output", f"type=local,dest={out}", ctx)
    assert _listing(host) == before
    assert os.readlink(out / "x") == str(host)


def test_run_secrets_stub_behind_a_symlinked_run(bb, tmp_path):
    host = _host_dir(tmp_path, ("s",), ("secrets", "empty"))
    before = _listing(host)
    secret = tmp_path / "secret.txt"
    secret.write_text("value")
    ctx = _ctx(tmp_path, f"""\
        FROM busybox
        RUN --mount=type=secret,id=s test -f /run/secrets/s && mv /run /run2 && ln -s {host} /run
        """)
    bb("build", "--progress", "plain", "--secret", f"id=s,src={secret}", "-t", "moved-run", ctx)
    assert _listing(host) == before


def test_etc_stubs_behind_a_symlinked_etc(bb, tmp_path):
    # an image without /etc: the sandbox makes /etc and the hosts, resolv.conf and
    # hostname mount points in it; the step swaps that /etc for a link to the host
    host = _host_dir(tmp_path, ("hosts", "resolv.conf", "hostname"), ("empty",))
    before = _listing(host)
    ctx = _ctx(tmp_path, f"""\
        FROM busybox AS bb
        FROM scratch
        COPY --from=bb /bin /bin
        RUN test -f /etc/hosts && mv /etc /etc2 && ln -s {host} /etc
        """)
    bb("build", "--progress", "plain", "-t", "moved-etc", ctx)
    assert _listing(host) == before


def test_stubs_and_mount_targets_do_not_reach_the_layer(bb, tmp_path):
    secret = tmp_path / "secret.txt"
    secret.write_text("value")
    ctx = _ctx(tmp_path, """\
        FROM busybox
        RUN --mount=type=tmpfs,target=/made/for/tmpfs --mount=type=secret,id=s \\
            --mount=type=cache,target=/var/cache/thing \\
            test -f /etc/hosts && test -f /run/secrets/s && echo done > /proof
        """)
    out = tmp_path / "out"
    bb("build", "--progress", "plain", "--secret", f"id=s,src={secret}",
       "--output", f"type=local,dest={out}", ctx)
    assert (out / "proof").read_text() == "done\n"
    for gone in ("made", "run", "etc/hosts", "etc/resolv.conf", "var/cache"):
        assert not os.path.lexists(out / gone), gone
    # what the image had stays, also the mount points it had itself
    assert (out / "etc" / "hostname").read_text() == "pybuild-busybox\n"
    assert os.listdir(out / "proc") == [] and os.listdir(out / "dev") == []
