""".dockerignore is a boundary, COPY writes through the one path resolver, hard links
survive COPY (issue 11, findings 6 and 8).

An ignored file must be invisible to the build however it is reached, as with
BuildKit, which never sends it: through a symlink named by COPY, a symlinked
directory, a wildcard, a directory copy holding a symlink to it, a RUN bind mount
of the context, a bind mount naming it, and a .dockerignore starting with a UTF-8
BOM. Each test plants a marker in the ignored files and asserts it reaches neither
the image, nor any byte of the store (blobs decompressed, snapshots, cache), nor the
build's output. COPY destinations resolve inside the image's rootfs (an absolute
symlink in the image is followed there, never on the host), and three names of one
inode stay one inode, in the image and as hard link entries in the layer tar.
"""

from __future__ import annotations

import gzip
import io
import json
import os
import tarfile
import textwrap
from pathlib import Path

import pytest

from buildpeer import import_busybox, pybuild_unpack

MARK = b"IGNORED-SECRET-7f3a9c"


@pytest.fixture
def bb(pybuild, busybox_rootfs, tmp_path):
    import_busybox(pybuild, busybox_rootfs, tmp_path)
    return pybuild


def _context(tmp_path: Path, dockerfile: str, ignore: bytes = b"secret.txt\nsecretdir\n",
             ignore_name: str = ".dockerignore") -> Path:
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    (ctx / "Dockerfile").write_text(textwrap.dedent(dockerfile))
    (ctx / ignore_name).write_bytes(ignore)
    (ctx / "secret.txt").write_bytes(MARK + b" file\n")
    (ctx / "secretdir").mkdir()
    (ctx / "secretdir" / "inner.txt").write_bytes(MARK + b" dir\n")
    (ctx / "ok.txt").write_text("ok\n")
    os.symlink("secret.txt", ctx / "link")
    os.symlink("secretdir", ctx / "dirlink")
    os.symlink("secret.txt", ctx / "alias.txt")
    (ctx / "sub").mkdir()
    os.symlink("../secret.txt", ctx / "sub" / "sublink")
    (ctx / "sub" / "fine.txt").write_text("fine\n")
    return ctx


def _blob_texts(data: bytes) -> list[bytes]:
    out = [data]
    if data[:2] == b"\x1f\x8b":
        try:
            out.append(gzip.decompress(data))
        except (OSError, EOFError):
            pass
    elif data[:4] == b"\x28\xb5\x2f\xfd":
        import zstandard

        try:
            out.append(zstandard.ZstdDecompressor().stream_reader(io.BytesIO(data)).read())
        except zstandard.ZstdError:
            pass
    return out


def _store_holds(root: Path, mark: bytes = MARK) -> list[str]:
    """Every file under the store whose bytes (or decompressed bytes) hold `mark`."""
    found = []
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            path = os.path.join(dirpath, name)
            try:
                with open(path, "rb", opener=lambda p, f: os.open(p, f | os.O_NOFOLLOW | os.O_NONBLOCK)) as fh:
                    if not os.path.isfile(path):
                        continue
                    data = fh.read()
            except OSError:
                continue
            if any(mark in t for t in _blob_texts(data)):
                found.append(path)
    return found


def _assert_no_leak(store_root: Path, proc) -> None:
    assert _store_holds(store_root) == []
    assert MARK.decode() not in proc.stdout + proc.stderr


@pytest.mark.parametrize("step", [
    "COPY link /x",                                   # a symlink to an ignored file
    "COPY dirlink/ /x/",                              # a symlink to an ignored directory
    "COPY dirlink/inner.txt /x",
    "COPY sub/sublink /x",
    "RUN --mount=type=bind,source=secret.txt,target=/s cat /s",
    "RUN --mount=type=bind,source=link,target=/s cat /s",
    "RUN --mount=type=bind,source=secretdir,target=/s cat /s/inner.txt",
])
def test_ignored_file_is_not_found_under_any_name(bb, tmp_path, store_root, step):
    ctx = _context(tmp_path, f"FROM busybox\n{step}\n")
    p = bb("build", "--progress", "plain", "-t", "leak", ctx, check=False)
    assert p.returncode == 1, p.stdout + p.stderr
    last = p.stderr.strip().splitlines()[-1]
    assert last.startswith("pybuild: error:") and "not found" in last, p.stderr
    assert "Traceback" not in p.stderr
    _assert_no_leak(store_root, p)


def test_wildcard_and_directory_copies_leave_ignored_content_behind(bb, tmp_path, store_root):
    ctx = _context(tmp_path, """\
        FROM busybox
        COPY *.txt /w/
        COPY . /all/
        """)
    p = bb("build", "--progress", "plain", "-t", "leak", ctx)
    _assert_no_leak(store_root, p)
    root = pybuild_unpack(bb, "leak", tmp_path / "unpacked")
    assert (root / "w" / "ok.txt").read_text() == "ok\n"
    assert not (root / "w" / "secret.txt").exists()
    assert not (root / "all" / "secret.txt").exists() and not (root / "all" / "secretdir").exists()
    # symlinks are copied as symlinks, never as the content they point at
    assert os.readlink(root / "all" / "link") == "secret.txt"
    assert os.readlink(root / "all" / "sub" / "sublink") == "../secret.txt"
    assert (root / "all" / "sub" / "fine.txt").read_text() == "fine\n"


def test_run_bind_mount_of_the_context_shows_only_what_is_not_ignored(bb, tmp_path, store_root):
    ctx = _context(tmp_path, """\
        FROM busybox
        RUN --mount=type=bind,target=/ctx sh -c 'ls -a /ctx > /listing; cat /ctx/ok.txt > /ok; \
            cat /ctx/secret.txt /ctx/link /ctx/alias.txt /ctx/sub/sublink /ctx/dirlink/inner.txt \
            /ctx/secretdir/inner.txt > /leak 2>&1; true'
        RUN --mount=type=bind,target=/rw,rw sh -c 'echo new > /rw/new.txt && cat /rw/ok.txt > /ok2; \
            cat /rw/secret.txt >> /leak 2>&1; true'
        """)
    p = bb("build", "--progress", "plain", "-t", "leak", ctx)
    _assert_no_leak(store_root, p)
    root = pybuild_unpack(bb, "leak", tmp_path / "unpacked")
    assert (root / "ok").read_text() == "ok\n" and (root / "ok2").read_text() == "ok\n"
    listing = (root / "listing").read_text().split()
    assert "ok.txt" in listing and "link" in listing
    assert "secret.txt" not in listing and "secretdir" not in listing
    assert MARK not in (root / "leak").read_bytes()
    assert not (ctx / "new.txt").exists()       # an rw bind writes to the step's copy


@pytest.mark.parametrize("ignore_name", [".dockerignore", "Dockerfile.dockerignore"])
def test_dockerignore_with_a_byte_order_mark(bb, tmp_path, store_root, ignore_name):
    ctx = _context(tmp_path, "FROM busybox\nCOPY . /all/\n",
                   ignore="secret.txt\r\nsecretdir\n".encode("utf-8-sig"), ignore_name=ignore_name)
    p = bb("build", "--progress", "plain", "-t", "leak", ctx)
    _assert_no_leak(store_root, p)
    root = pybuild_unpack(bb, "leak", tmp_path / "unpacked")
    assert (root / "all" / "ok.txt").read_text() == "ok\n"
    assert not (root / "all" / "secret.txt").exists()


def _tar_image(pybuild, tmp_path: Path, name: str, entries: list[tuple[str, str, str]]) -> None:
    """Import a one-layer image from (type, name, target) entries: d(ir) or l(ink)."""
    path = tmp_path / f"{name}.tar"
    with tarfile.open(path, "w") as t:
        for kind, entry, target in entries:
            info = tarfile.TarInfo(entry)
            if kind == "d":
                info.type, info.mode = tarfile.DIRTYPE, 0o755
            else:
                info.type, info.linkname = tarfile.SYMTYPE, target
            t.addfile(info)
    pybuild("import", path, name)


def test_copy_destination_through_an_absolute_symlink_stays_in_the_rootfs(pybuild, tmp_path):
    host = tmp_path / "host-dir"
    host.mkdir()
    _tar_image(pybuild, tmp_path, "links", [
        ("d", "srv", ""), ("d", "srv/data", ""),
        ("l", "app", "/srv/app"),                       # dangling: docker creates /srv/app
        ("l", "data", "/srv/data"),
        ("l", "deep", "/srv/new/deeper"),               # several missing levels
        ("l", "evil", "/../../../../../../.." + str(host)),   # the host's dir, seen from "/"
    ])
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    (ctx / "f").write_text("payload\n")
    (ctx / "Dockerfile").write_text("FROM links\nCOPY f /app/\nCOPY f /data/\nCOPY f /deep/\n"
                                    "COPY f /evil/\nCOPY f /evil/sub/g\nWORKDIR /app/work\n")
    pybuild("build", "--progress", "plain", "-t", "through", ctx)
    root = pybuild_unpack(pybuild, "through", tmp_path / "unpacked")
    assert (root / "srv" / "app" / "f").read_text() == "payload\n"
    assert (root / "srv" / "data" / "f").read_text() == "payload\n"
    assert (root / "srv" / "new" / "deeper" / "f").read_text() == "payload\n"
    inside = root / str(host).lstrip("/")
    assert (inside / "f").read_text() == "payload\n" and (inside / "sub" / "g").is_file()
    assert (root / "srv" / "app" / "work").is_dir()
    assert os.readlink(root / "app") == "/srv/app"
    assert list(host.iterdir()) == []                   # nothing written on the host


def _layer_members(pybuild, tmp_path: Path, name: str) -> list[list[tarfile.TarInfo]]:
    archive = tmp_path / f"{name}-save.tar"
    pybuild("save", "--format", "oci", "-o", archive, name)
    out = []
    with tarfile.open(archive) as t:
        index = json.load(t.extractfile("index.json"))
        digest = index["manifests"][0]["digest"].split(":")[1]
        manifest = json.load(t.extractfile(f"blobs/sha256/{digest}"))
        for layer in manifest["layers"]:
            data = t.extractfile(f"blobs/sha256/{layer['digest'].split(':')[1]}").read()
            with tarfile.open(fileobj=io.BytesIO(_blob_texts(data)[-1])) as lt:
                out.append(lt.getmembers())
    return out


def test_hard_links_survive_copy_from_the_context_and_from_a_stage(pybuild, tmp_path):
    ctx = tmp_path / "ctx"
    (ctx / "hl" / "sub").mkdir(parents=True)
    (ctx / "hl" / "a").write_text("one inode\n")
    os.link(ctx / "hl" / "a", ctx / "hl" / "b")
    os.link(ctx / "hl" / "a", ctx / "hl" / "sub" / "c")
    (ctx / "hl" / "other").write_text("another\n")
    (ctx / "Dockerfile").write_text("FROM scratch AS one\nCOPY hl /hl\n"
                                    "FROM scratch\nCOPY --from=one /hl /hl2\nCOPY hl /hl\n")
    pybuild("build", "--progress", "plain", "-t", "links", ctx)
    root = pybuild_unpack(pybuild, "links", tmp_path / "unpacked")
    for top in ("hl", "hl2"):
        names = [root / top / "a", root / top / "b", root / top / "sub" / "c"]
        inodes = {os.stat(n).st_ino for n in names}
        assert len(inodes) == 1, top
        assert all(os.stat(n).st_nlink == 3 for n in names), top
        assert (root / top / "b").read_text() == "one inode\n"
        assert os.stat(root / top / "other").st_nlink == 1
    for members in _layer_members(pybuild, tmp_path, "links"):
        links = sorted(m.name.split("/", 1)[1] for m in members if m.islnk())
        regular = [m.name for m in members if m.isreg()]
        assert len(links) == 2 and len(regular) == 2, [(m.name, m.type) for m in members]


def test_trace_reports_the_real_place_and_every_link(tmp_path):
    from layerstore import resolver as rs

    root = tmp_path / "t"
    (root / "a" / "b").mkdir(parents=True)
    (root / "a" / "b" / "f").write_text("x")
    os.symlink("a/b", root / "l")
    os.symlink("/a", root / "abs")
    os.symlink("../b/f", root / "a" / "b" / "up")
    with rs.rooted(root) as fd:
        t = rs.trace(fd, "l/f")
        assert (t.path, t.links) == ("a/b/f", ["l"])
        t = rs.trace(fd, "abs/b/up", policy=rs.IN_ROOT)
        assert (t.path, t.links) == ("a/b/f", ["abs", "a/b/up"])
        assert rs.trace(fd, "l/..").path == "a"
        with pytest.raises(rs.PathEscape):
            rs.trace(fd, "abs/b", policy=rs.BENEATH)
        with pytest.raises(FileNotFoundError):
            rs.trace(fd, "l/missing")


@pytest.mark.parametrize("name", [".dockerignore", "Dockerfile.dockerignore"])
def test_an_ignore_file_linking_out_of_the_context_is_refused(tmp_path, name):
    from builder.context import Context, ContextError

    host = tmp_path / "host-secret"
    host.write_text("HOST-LINE-[unclosed\n")     # its lines would show in a pattern error
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    (ctx / "Dockerfile").write_text("FROM scratch\n")
    os.symlink(host, ctx / name)
    with pytest.raises(ContextError, match="outside the build context") as info:
        Context.open(ctx, ctx / "Dockerfile")
    assert "HOST-LINE" not in str(info.value)


@pytest.mark.parametrize("openat2", [True, False])
def test_a_bind_view_holds_the_selection_only(tmp_path, monkeypatch, openat2):
    """The step's private copy of the context (what RUN --mount=type=bind shows), with
    the kernel's openat2 and with the O_NOFOLLOW walk that stands in for it."""
    from builder.context import Context
    from builder.steps.copy import (FileHashes, SourceTree, digest_selection, materialize,
                                    select_sources)
    from layerstore import resolver as rs

    monkeypatch.setattr(rs, "USE_OPENAT2", openat2)
    ctx_dir = _context(tmp_path, "FROM scratch\n")
    os.link(ctx_dir / "ok.txt", ctx_dir / "sub" / "ok-again.txt")
    os.chmod(ctx_dir / "sub", 0o750)
    ctx = Context.open(ctx_dir)
    sel = select_sources(["."], SourceTree.of_context(ctx))
    digest_selection(sel, FileHashes(None))
    views = tmp_path / "views"
    views.mkdir()
    materialize(sel, views, "view")
    view = views / "view"
    found = sorted(str(p.relative_to(view)) for p in view.rglob("*"))
    assert "secret.txt" not in found and not any(f.startswith("secretdir") for f in found)
    assert {"ok.txt", "link", "dirlink", "sub/sublink", "sub/fine.txt"} <= set(found)
    assert os.readlink(view / "dirlink") == "secretdir"
    assert os.stat(view / "ok.txt").st_ino == os.stat(view / "sub" / "ok-again.txt").st_ino
    assert os.stat(view / "sub").st_mode & 0o777 == 0o750
    for p in view.rglob("*"):
        if p.is_file() and not p.is_symlink():
            assert MARK not in p.read_bytes()


def test_chown_reads_the_images_account_files_inside_it_and_bounded(pybuild, tmp_path):
    """--chown names are looked up in the image's own /etc/passwd, resolved inside the
    rootfs; a FIFO there (hostile image) is an error, not a build that hangs."""
    path = tmp_path / "accounts.tar"
    with tarfile.open(path, "w") as t:
        for name in ("etc", "real"):
            info = tarfile.TarInfo(name)
            info.type, info.mode = tarfile.DIRTYPE, 0o755
            t.addfile(info)
        data = b"app:x:1234:4321::/home/app:/bin/sh\n"
        info = tarfile.TarInfo("real/passwd")
        info.size = len(data)
        t.addfile(info, io.BytesIO(data))
        info = tarfile.TarInfo("etc/passwd")                 # absolute: resolves in the rootfs
        info.type, info.linkname = tarfile.SYMTYPE, "/../../real/passwd"
        t.addfile(info)
        info = tarfile.TarInfo("etc/group")
        info.type = tarfile.FIFOTYPE
        t.addfile(info)
    pybuild("import", path, "accounts")
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    (ctx / "f").write_text("x\n")
    (ctx / "Dockerfile").write_text("FROM accounts\nCOPY --chown=app f /f\n")
    pybuild("build", "--progress", "plain", "-t", "owned", ctx, timeout=120)
    # (read from the layer: umoci itself would hang on the image's FIFO)
    f = next(m for m in _layer_members(pybuild, tmp_path, "owned")[-1] if m.name.endswith("f"))
    assert (f.uid, f.gid) == (1234, 4321)
    (ctx / "Dockerfile").write_text("FROM accounts\nCOPY --chown=app:staff f /f\n")
    p = pybuild("build", "--progress", "plain", "-t", "owned2", ctx, check=False, timeout=60)
    assert p.returncode == 1 and "no group 'staff'" in p.stderr.strip().splitlines()[-1]


def test_run_bind_mount_from_a_stage_resolves_its_source_inside_that_stage(bb, tmp_path):
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    (ctx / "Dockerfile").write_text(textwrap.dedent("""\
        FROM busybox AS one
        RUN mkdir -p /srv/data && echo from-one > /srv/data/x && ln -s /srv/data /data
        FROM busybox
        RUN --mount=type=bind,from=one,source=/data,target=/m cat /m/x > /got
        RUN --mount=type=bind,from=one,source=data/x,target=/f,rw sh -c 'cat /f > /got2; echo w > /f'
        """))
    bb("build", "--progress", "plain", "-t", "stagebind", ctx)
    root = pybuild_unpack(bb, "stagebind", tmp_path / "unpacked")
    assert (root / "got").read_text() == "from-one\n" == (root / "got2").read_text()
    (ctx / "Dockerfile").write_text("FROM busybox AS one\nFROM busybox\n"
                                    "RUN --mount=type=bind,from=one,source=/nope,target=/m true\n")
    p = bb("build", "--progress", "plain", ctx, check=False)
    assert p.returncode == 1 and "source=/nope: not found" in p.stderr.strip().splitlines()[-1]


@pytest.mark.parametrize("command", ["build", "check"])
def test_a_dockerfile_symlinked_out_of_the_context_is_not_read(pybuild, tmp_path, command):
    """An untrusted context whose Dockerfile is a symlink to a host file: its lines would
    reach parse errors and CI logs. It is read through the context's root, as BuildKit
    reads what the client sent, so the link is refused and the host file stays unread."""
    host = tmp_path / "host-secret"
    host.write_bytes(MARK + b" ssh key line\n")
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    os.symlink(str(host), ctx / "Dockerfile")
    p = pybuild(command, str(ctx), check=False)
    assert p.returncode != 0
    assert "leads out of the build context" in p.stderr, p.stderr
    assert MARK.decode() not in p.stdout + p.stderr
    assert "Traceback" not in p.stderr
    # a Dockerfile symlinked inside the context is fine, and -f outside it is the user's choice
    os.unlink(ctx / "Dockerfile")
    (ctx / "real.Dockerfile").write_text("FROM scratch\nLABEL a=b\n")
    os.symlink("real.Dockerfile", ctx / "Dockerfile")
    outside = tmp_path / "outside.Dockerfile"
    outside.write_text("FROM scratch\nLABEL c=d\n")
    for args in ([str(ctx)], ["-f", str(outside), str(ctx)]):
        p = pybuild(command, *args, check=False)
        assert p.returncode == 0, p.stderr
