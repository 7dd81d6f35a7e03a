"""The one fd-based path resolver (layerstore/resolver.py), with openat2 and with the
O_NOFOLLOW walk that stands in for it on older kernels: both must agree, and no
symlink planted in a tree may lead outside it, also when swapped in concurrently."""

from __future__ import annotations

import errno
import os
import threading

import pytest

from layerstore import resolver as rs
from layerstore import syscalls


@pytest.fixture(params=["openat2", "walk"])
def impl(request, monkeypatch):
    if request.param == "openat2":
        assert syscalls.openat2_available(), "this kernel has openat2 (5.6+)"
        monkeypatch.setattr(rs, "USE_OPENAT2", True)
    else:
        monkeypatch.setattr(rs, "USE_OPENAT2", False)
    return request.param


@pytest.fixture
def tree(tmp_path):
    """root/ (the untrusted tree) and outside/ (the host) side by side."""
    root = tmp_path / "root"
    outside = tmp_path / "outside"
    (root / "etc").mkdir(parents=True)
    (root / "etc" / "passwd").write_text("root:x:0:0::/root:/bin/sh\n")
    (root / "usr" / "lib").mkdir(parents=True)
    outside.mkdir()
    (outside / "secret").write_text("host secret\n")
    (outside / "emptydir").mkdir()
    os.symlink(str(outside), root / "abs")                   # absolute, points at the host
    os.symlink("../../../../../../" + str(outside).lstrip("/"), root / "climb")
    os.symlink("usr/lib", root / "lib")                      # relative, inside
    os.symlink("/usr/lib", root / "lib64")                   # absolute, inside the root's view
    os.symlink("loop2", root / "loop1")
    os.symlink("loop1", root / "loop2")
    os.symlink("nowhere/deeper", root / "dangling")
    return root, outside


def _read(fd: int) -> bytes:
    try:
        return os.read(fd, 100)
    finally:
        os.close(fd)


def _ino(fd: int) -> int:
    try:
        return os.fstat(fd).st_ino
    finally:
        os.close(fd)


def test_in_root_symlinks_resolve_inside(tree, impl):
    root, outside = tree
    with rs.rooted(root) as r:
        # /abs -> <outside>: inside the root that is root/<outside path>, which is missing
        with pytest.raises(FileNotFoundError):
            rs.resolve(r, "abs/secret", flags=os.O_RDONLY)
        with pytest.raises(FileNotFoundError):
            rs.resolve(r, "climb/secret", flags=os.O_RDONLY)
        assert _ino(rs.resolve(r, "lib")) == (root / "usr" / "lib").stat().st_ino
        assert _ino(rs.resolve(r, "lib64")) == (root / "usr" / "lib").stat().st_ino
        assert _ino(rs.resolve(r, "/../../etc/../etc")) == (root / "etc").stat().st_ino
        assert _read(rs.resolve(r, "/etc/passwd", flags=os.O_RDONLY)).startswith(b"root:")


def test_in_root_absolute_link_to_a_real_path_inside(tree, impl):
    root, outside = tree
    # the same absolute path exists inside the root: that one is used, never the host's
    fake = root / str(outside).lstrip("/")
    fake.mkdir(parents=True)
    (fake / "secret").write_text("image file\n")
    with rs.rooted(root) as r:
        assert _read(rs.resolve(r, "abs/secret", flags=os.O_RDONLY)) == b"image file\n"
        assert _read(rs.resolve(r, "climb/secret", flags=os.O_RDONLY)) == b"image file\n"


def test_beneath_refuses_what_leaves(tree, impl):
    root, _ = tree
    with rs.rooted(root) as r:
        for bad in ("abs/secret", "climb", "lib64", "../etc", "etc/../../x"):
            with pytest.raises(rs.PathEscape):
                rs.resolve(r, bad, policy=rs.BENEATH)
        assert _ino(rs.resolve(r, "lib", policy=rs.BENEATH)) == (root / "usr" / "lib").stat().st_ino
        assert _ino(rs.resolve(r, "usr/../etc", policy=rs.BENEATH)) == (root / "etc").stat().st_ino


def test_no_symlinks_refuses_any_link(tree, impl):
    root, _ = tree
    with rs.rooted(root) as r:
        for bad in ("lib/x", "lib", "abs/secret", "lib64"):
            with pytest.raises(rs.PathEscape):
                rs.resolve(r, bad, policy=rs.NO_SYMLINKS)
        # the final link itself, when not followed, is fine
        fd = rs.resolve(r, "lib", policy=rs.NO_SYMLINKS, follow=False)
        try:
            assert os.readlink("", dir_fd=fd) == "usr/lib"
        finally:
            os.close(fd)
        with pytest.raises(OSError) as e:
            rs.resolve(r, "lib", policy=rs.NO_SYMLINKS, follow=False, flags=os.O_RDONLY)
        assert e.value.errno == errno.ELOOP
        assert not isinstance(e.value, rs.PathEscape)


def test_errors(tree, impl):
    root, _ = tree
    with rs.rooted(root) as r:
        with pytest.raises(OSError) as e:
            rs.resolve(r, "loop1")
        assert e.value.errno == errno.ELOOP
        with pytest.raises(NotADirectoryError):
            rs.resolve(r, "etc/passwd/x")
        with pytest.raises(FileNotFoundError):
            rs.resolve(r, "dangling")
        with pytest.raises(NotADirectoryError):
            rs.resolve(r, "etc/passwd", flags=os.O_RDONLY | os.O_DIRECTORY)
        with pytest.raises(rs.PathEscape):
            rs.resolve(r, "etc/pass\0wd")


def test_parent_and_lstat(tree, impl):
    root, outside = tree
    with rs.rooted(root) as r:
        # the parent of abs/newfile is root/<outside path> inside the root: absent
        with pytest.raises(FileNotFoundError):
            rs.parent(r, "abs/newfile")
        with pytest.raises(FileNotFoundError):
            rs.parent(r, "climb/newfile")
        with rs.parent_of(r, "lib64/x") as (dfd, name):
            assert name == "x"
            os.close(os.open(name, os.O_CREAT | os.O_WRONLY, 0o600, dir_fd=dfd))
        assert (root / "usr" / "lib" / "x").is_file()
        st = rs.lstat(r, "abs")
        assert st is not None and st.st_mode & 0o170000 == 0o120000
        assert rs.lstat(r, "missing/x") is None
        assert rs.readlink(r, "lib64") == "/usr/lib"
    assert sorted(os.listdir(outside)) == ["emptydir", "secret"]


def test_makedirs_stays_inside(tree, impl):
    root, outside = tree
    made: list[str] = []
    with rs.rooted(root) as r:
        os.close(rs.makedirs(r, "abs/a/b", mode=0o750, uid=12, gid=34, created=made))
        os.close(rs.makedirs(r, "climb/c", created=made))
        os.close(rs.makedirs(r, "dangling/d", created=made))
    inner = root / str(outside).lstrip("/")
    assert (inner / "a" / "b").is_dir()
    st = (inner / "a" / "b").stat()
    assert (st.st_mode & 0o7777, st.st_uid, st.st_gid) == (0o750, 12, 34)
    assert (inner / "c").is_dir()
    assert (root / "nowhere" / "deeper" / "d").is_dir()
    assert "/abs/a/b" in made
    assert sorted(os.listdir(outside)) == ["emptydir", "secret"]


def test_makedirs_can_refuse_a_dangling_link(tree, impl):
    """follow_dangling=False (run -v on the host): a dangling link is an error, its target
    is never created; a live link on the way is still followed."""
    root, outside = tree
    with rs.rooted(root) as r:
        with pytest.raises(FileExistsError):
            rs.makedirs(r, "dangling/d", follow_dangling=False)
        os.close(rs.makedirs(r, "lib/e", follow_dangling=False))
    assert not (root / "nowhere").exists()
    assert (root / "usr" / "lib" / "e").is_dir()
    assert sorted(os.listdir(outside)) == ["emptydir", "secret"]


def test_makedirs_beneath_refuses_escape(tree, impl):
    root, outside = tree
    with rs.rooted(root) as r:
        with pytest.raises(rs.PathEscape):
            rs.makedirs(r, "abs/x", policy=rs.BENEATH)
    assert sorted(os.listdir(outside)) == ["emptydir", "secret"]


def test_swapped_symlink_race_never_escapes(tmp_path, impl):
    """A concurrent attacker flips root/d between a directory and a symlink to the host
    while the resolver creates files under d/: nothing may appear outside the root."""
    root = tmp_path / "root"
    outside = tmp_path / "outside"
    root.mkdir()
    outside.mkdir()
    stop = threading.Event()

    def flip():
        d, tmp_link = root / "d", root / "d.link"
        while not stop.is_set():
            try:
                d.mkdir()
            except FileExistsError:
                pass
            try:
                os.symlink(str(outside), tmp_link)
                os.rename(tmp_link, d) if not d.is_dir() or not any(d.iterdir()) else None
            except OSError:
                pass
            try:
                if d.is_symlink():
                    d.unlink()
            except OSError:
                pass
    t = threading.Thread(target=flip)
    t.start()
    try:
        with rs.rooted(root) as r:
            for i in range(400):
                try:
                    with rs.parent_of(r, f"d/f{i}") as (dfd, name):
                        os.close(os.open(name, os.O_CREAT | os.O_WRONLY | os.O_NOFOLLOW, 0o600,
                                         dir_fd=dfd))
                except OSError:
                    pass
                try:
                    os.close(rs.makedirs(r, f"d/sub{i}"))
                except OSError:
                    pass
    finally:
        stop.set()
        t.join()
    assert os.listdir(outside) == []


def test_remove_tree_at_does_not_follow(tree, impl):
    root, outside = tree
    victim = root / "victim"
    victim.mkdir()
    os.symlink(str(outside), victim / "link")
    (victim / "ro").mkdir()
    (victim / "ro" / "f").write_text("x")
    os.chmod(victim / "ro", 0o555)
    with rs.rooted(root) as r:
        with rs.parent_of(r, "victim", policy=rs.NO_SYMLINKS) as (dfd, name):
            rs.remove_tree_at(dfd, name)
    assert not victim.exists()
    assert sorted(os.listdir(outside)) == ["emptydir", "secret"]
