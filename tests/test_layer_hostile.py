"""Hostile and corrupt layer tars: each is rejected with BadLayer naming the
entry, and nothing outside the target (a canary dir beside it) changes."""

from __future__ import annotations

import gzip
import io
import os
from pathlib import Path

import pytest

from layerstore.errors import BadLayer, DigestMismatch
from layerstore.layer_apply import apply_layer
from treecmp import describe_tree
from layerstore.layer_tar import DIR, LNK, REG, SYM, ZERO_BLOCK, _pax_record, build_header, padding

END = ZERO_BLOCK * 2


def reg(name: str, data: bytes = b"x", size: int | None = None) -> bytes:
    size = len(data) if size is None else size
    return build_header(name.encode(), REG, mode=0o644, size=size) + data + bytes(padding(len(data)))


def sym(name: str, target: str) -> bytes:
    return build_header(name.encode(), SYM, mode=0o777, linkname=target.encode())


def link(name: str, target: str) -> bytes:
    return build_header(name.encode(), LNK, mode=0o644, linkname=target.encode())


def dirent(name: str) -> bytes:
    return build_header(name.encode().rstrip(b"/") + b"/", DIR, mode=0o755)


def base256_size(header: bytes, size: int) -> bytes:
    """A ustar header with its size field rewritten in GNU base-256 (for sizes ustar cannot hold)."""
    block = bytearray(header)
    block[124:136] = b"\x80" + size.to_bytes(11, "big")
    block[148:156] = b"        "
    block[148:156] = b"%06o\0 " % sum(block)
    return bytes(block)


@pytest.fixture
def arena(tmp_path):
    """(target, canary): the canary holds a file and a dir a hostile layer would aim at."""
    target, canary = tmp_path / "target", tmp_path / "canary"
    target.mkdir()
    (canary / "sub").mkdir(parents=True)
    (canary / "file").write_text("precious")
    (canary / "sub" / "deep").write_text("also precious")
    before = (sorted(os.listdir(tmp_path)), describe_tree(canary))
    yield target, canary
    assert (sorted(os.listdir(tmp_path)), describe_tree(canary)) == before
    assert not os.path.lexists("/evil") and not os.path.lexists(tmp_path.parent / "evil")


def rejected(target: Path, layer: bytes, entry: str, mode: str) -> str:
    fds = len(os.listdir("/proc/self/fd"))
    with pytest.raises(BadLayer) as info:
        apply_layer(io.BytesIO(layer), target, mode=mode)
    assert len(os.listdir("/proc/self/fd")) == fds  # no fd left open on the way out
    msg = str(info.value)
    assert entry in msg, msg
    assert "\n" not in msg
    return msg


MODES = pytest.mark.parametrize("mode", ["overlay", "flat"])


@MODES
@pytest.mark.parametrize("name", ["../evil", "a/../../evil", "./../evil", "/evil", "/tmp/evil", "a/b/../../../evil"])
def test_dotdot_and_absolute_names_rejected(arena, mode, name):
    target, _ = arena
    rejected(target, reg(name) + END, name, mode)


@MODES
def test_write_through_absolute_symlink_rejected(arena, mode):
    target, canary = arena
    rejected(target, sym("a", str(canary)) + reg("a/file", b"pwned") + END, "a/file", mode)
    rejected(target, sym("b", "/etc") + reg("b/passwd", b"pwned") + END, "b/passwd", mode)


@MODES
def test_write_through_relative_symlink_chain_rejected(arena, mode):
    target, _ = arena
    layer = sym("up", "..") + sym("upup", "up/..") + reg("upup/canary/file", b"pwned") + END
    rejected(target, layer, "upup/canary/file", mode)
    rejected(target, dirent("d") + sym("d/x", "../..") + reg("d/x/canary/sub/deep") + END,
             "d/x/canary/sub/deep", mode)


@MODES
def test_symlink_then_dir_entry_below_rejected(arena, mode):
    target, canary = arena
    rejected(target, sym("a", str(canary)) + dirent("a/newdir") + END, "a/newdir", mode)


def test_flat_apply_refuses_symlink_already_in_tree(arena):
    target, canary = arena
    os.symlink(canary, target / "lib")
    rejected(target, reg("lib/file", b"pwned") + END, "lib/file", "flat")
    rejected(target, reg("lib/.wh.file") + END, "lib/.wh.file", "flat")
    rejected(target, reg("lib/.wh..wh..opq") + END, "lib/.wh..wh..opq", "flat")


def test_entries_replace_symlinks_instead_of_following_them(arena):
    """A file or dir entry over an existing symlink replaces the link itself."""
    target, canary = arena
    os.symlink(canary / "file", target / "f")
    os.symlink(canary / "sub", target / "d")
    apply_layer(io.BytesIO(reg("f", b"mine") + dirent("d") + reg("d/deep", b"mine") + END), target, mode="flat")
    assert (target / "f").read_bytes() == b"mine" and not (target / "f").is_symlink()
    assert (target / "d" / "deep").read_bytes() == b"mine" and not (target / "d").is_symlink()


@MODES
@pytest.mark.parametrize("dest", ["../canary/file", "/etc/passwd", "s/file"])
def test_hardlink_outside_rejected(arena, mode, dest):
    target, canary = arena
    rejected(target, sym("s", str(canary)) + link("h", dest) + END, "h", mode)


@MODES
def test_hardlink_to_missing_or_later_entry_rejected(arena, mode):
    target, _ = arena
    rejected(target, link("early", "nothere") + END, "early", mode)
    rejected(target, link("early", "later") + reg("later") + END, "early", mode)
    rejected(target, dirent("dir") + link("h", "dir") + END, "h", mode)


def test_flat_hardlink_to_a_file_already_in_the_tree(arena):
    """Docker writes links to files of lower layers; flat, they are in the tree."""
    target, _ = arena
    (target / "d").mkdir()
    (target / "d" / "lowerfile").write_bytes(b"from below")
    apply_layer(io.BytesIO(link("h", "d/lowerfile") + END), target, mode="flat")
    assert (target / "h").read_bytes() == b"from below"
    assert os.stat(target / "h").st_ino == os.stat(target / "d" / "lowerfile").st_ino
    rejected(target, link("h2", "d") + END, "h2", "flat")          # a directory: never
    os.symlink("d", target / "s")
    rejected(target, link("h3", "s/lowerfile") + END, "h3", "flat")  # through a symlink: never


@MODES
@pytest.mark.parametrize("name", [".wh...", "a/.wh...", ".wh..", "/.wh.canary", "../.wh.canary", "a/../../.wh.canary"])
def test_hostile_whiteouts_rejected(arena, mode, name):
    target, _ = arena
    rejected(target, dirent("a") + reg(name, b"") + END, name, mode)


@MODES
def test_whiteout_through_symlink_rejected(arena, mode):
    target, canary = arena
    rejected(target, sym("s", str(canary)) + reg("s/.wh.file", b"") + END, "s/.wh.file", mode)
    rejected(target, sym("s", str(canary)) + reg("s/.wh..wh..opq", b"") + END, "s/.wh..wh..opq", mode)


@MODES
def test_absurd_size_stops_at_real_end(arena, mode):
    target, _ = arena
    petabyte = 1 << 50
    layer = build_header(b"huge", REG, mode=0o644, size=petabyte) + b"A" * 4096  # size in a PAX record
    rejected(target, layer, "huge", mode)
    layer = base256_size(build_header(b"huge2", REG, mode=0o644), petabyte) + b"A" * 4096
    rejected(target, layer, "huge2", mode)
    assert (target / "huge").stat().st_blocks * 512 <= 1 << 20  # nothing preallocated


@MODES
def test_absurd_extended_headers_rejected(arena, mode):
    target, _ = arena
    huge_pax = base256_size(build_header(b"PaxHeaders.0/x", b"x"), 1 << 50) + bytes(512)
    rejected(target, reg("before") + huge_pax + END, "before", mode)
    bad_record = b"99999 path=x\n"
    pax = build_header(b"PaxHeaders.0/y", b"x", size=len(bad_record)) + bad_record + bytes(padding(len(bad_record)))
    rejected(target, reg("prev") + pax + reg("y") + END, "prev", mode)
    negative = b"14 size=-1000\n"
    pax = build_header(b"PaxHeaders.0/z", b"x", size=len(negative)) + negative + bytes(padding(len(negative)))
    rejected(target, pax + reg("z") + END, "z", mode)


@MODES
def test_truncated_streams_rejected(arena, mode, tmp_path):
    target, _ = arena
    whole = reg("first", b"1" * 3000) + reg("second", b"2" * 5000) + END
    cut_in_data = whole[:len(reg("first", b"1" * 3000)) + 1024]
    rejected(target, cut_in_data, "second", mode)
    cut_at_header = reg("first", b"1" * 3000)
    rejected(target, cut_at_header, "first", mode)
    noise = reg("first", os.urandom(3000)) + reg("second", os.urandom(300_000)) + END
    gz = gzip.compress(noise, mtime=0)
    rejected(target, gz[:len(gz) - 1000], "second", mode)


@MODES
def test_corrupt_header_rejected(arena, mode):
    target, _ = arena
    bad = bytearray(reg("broken"))
    bad[0:6] = b"BROKEN"  # checksum no longer matches
    rejected(target, reg("good") + bytes(bad) + END, "good", mode)


@MODES
def test_pax_and_gnu_long_names_are_checked_too(arena, mode):
    target, _ = arena
    evil = "../" * 40 + "evil"
    rejected(target, reg(evil) + END, evil, mode)  # long: carried in a PAX path record
    longname = evil.encode() + b"\0"
    gnu = (build_header(b"././@LongLink", b"L", size=len(longname)) + longname + bytes(padding(len(longname)))
           + reg("short") + END)
    rejected(target, gnu, evil, mode)


@MODES
def test_absurd_depth_rejected(arena, mode):
    target, _ = arena
    deep = "d/" * 5000 + "f"
    rejected(target, reg(deep) + END, "deeper than", mode)


def test_later_symlink_over_a_dir_is_not_followed_when_fixing_dir_metadata(arena):
    target, canary = arena
    layer = dirent("a") + dirent("a/sub") + sym("a", str(canary)) + END
    apply_layer(io.BytesIO(layer), target, mode="flat")
    assert os.readlink(target / "a") == str(canary)


def test_wrong_diff_id_is_a_digest_mismatch(tmp_path):
    target = tmp_path / "t"
    target.mkdir()
    with pytest.raises(DigestMismatch) as info:
        apply_layer(io.BytesIO(reg("f") + END), target, expected_diff_id="sha256:" + "0" * 64)
    assert "sha256:" + "0" * 64 in str(info.value)


# --- hard links to files of lower layers, as snapshots (copy-up) -----------------------

def dirent_meta(name: str, mode: int, uid: int, gid: int, mtime: int) -> bytes:
    return build_header(name.encode() + b"/", DIR, mode=mode, uid=uid, gid=gid, mtime=mtime)


def snapshot(path: Path, layer: bytes, lowers: list[Path] = ()) -> Path:
    path.mkdir()
    apply_layer(io.BytesIO(layer + END), path, mode="overlay", lowers=list(lowers))
    return path


def test_overlay_hardlink_to_lower_file_copies_it_up(tmp_path):
    caps = bytes.fromhex("0100000200200000000000000000000000000000")  # cap_net_bind_service
    base = snapshot(tmp_path / "l0", dirent_meta("etc", 0o750, 5, 6, 1000) + build_header(
        b"etc/base-f", REG, mode=0o4711, uid=7, gid=8, size=5, mtime=12345,
        xattrs={b"user.k": b"v", b"security.capability": caps}) + b"hello" + bytes(padding(5)))
    mid = snapshot(tmp_path / "l1", reg("other", b"x"), [base])
    top = snapshot(tmp_path / "l2", link("etc/h", "etc/base-f") + link("top", "etc/base-f"),
                   [base, mid])
    st = os.lstat(top / "etc" / "base-f")
    assert (top / "etc" / "base-f").read_bytes() == b"hello"
    assert (st.st_mode & 0o7777, st.st_uid, st.st_gid, st.st_mtime) == (0o4711, 7, 8, 12345)
    assert st.st_nlink == 3 and os.lstat(top / "top").st_ino == st.st_ino == os.lstat(top / "etc" / "h").st_ino
    assert os.getxattr(top / "etc" / "base-f", "user.k") == b"v"
    assert os.getxattr(top / "etc" / "base-f", "security.capability") == caps
    # the parent this layer did not declare keeps the metadata of the dir it covers
    d = os.lstat(top / "etc")
    assert (d.st_mode & 0o7777, d.st_uid, d.st_gid, d.st_mtime) == (0o750, 5, 6, 1000)
    assert os.lstat(base / "etc" / "base-f").st_nlink == 1  # the lower is never touched


def test_overlay_hardlink_honours_whiteouts_and_opaque_dirs(tmp_path):
    base = snapshot(tmp_path / "l0", dirent("d") + reg("d/f", b"1") + reg("g", b"2") + reg("k", b"3"))
    gone = snapshot(tmp_path / "l1", reg(".wh.g", b"") + dirent("d") + reg("d/.wh..wh..opq", b""),
                    [base])
    lowers = [base, gone]
    rejected(snapshot(tmp_path / "t1", b"", lowers), link("h", "g") + END, "h", "overlay")
    rejected(snapshot(tmp_path / "t2", b"", lowers), link("h", "d/f") + END, "h", "overlay")
    # this layer's own whiteout hides the lower file too
    rejected(snapshot(tmp_path / "t3", b"", lowers), reg(".wh.k", b"") + link("h", "k") + END, "h",
             "overlay")
    ok = snapshot(tmp_path / "t4", link("h", "k"), lowers)
    assert (ok / "h").read_bytes() == b"3"


def test_overlay_hardlink_to_lower_never_follows_symlinks(arena):
    target, canary = arena  # the lowers and targets live in `target`; the canary beside it
    base = snapshot(target / "l0", sym("s", str(canary)) + sym("rel", "../..") + dirent("d")
                    + reg("d/f", b"1"))
    for i, linkname in enumerate(("s/file", "rel/canary/file", "d/../../canary/file", "/d/f", "d")):
        t = target / f"t{i}"
        t.mkdir()
        with pytest.raises(BadLayer) as info:
            apply_layer(io.BytesIO(link("h", linkname) + END), t, mode="overlay", lowers=[base])
        assert "'h'" in str(info.value)
        assert os.listdir(t) in ([], ["d"])


def test_hostile_owner_device_and_time_fields(arena):
    target, _ = arena
    rejected(target, build_header(b"f", REG, mode=0o644, uid=1 << 40) + END, "f", "overlay")
    rejected(target, build_header(b"g", REG, mode=0o644, gid=(1 << 32) - 1) + END, "g", "overlay")
    dev = bytearray(build_header(b"c", b"3", mode=0o644))
    dev[329:337] = b"\x80" + (1 << 40).to_bytes(7, "big")  # devmajor, GNU base-256
    dev[148:156] = b"        "
    dev[148:156] = b"%06o\0 " % sum(dev)
    rejected(target, bytes(dev) + END, "c", "overlay")
    apply_layer(io.BytesIO(build_header(b"t", REG, mode=0o644, mtime=10 ** 30) + END), target)
    assert os.lstat(target / "t").st_mtime == 0  # as docker: an unrepresentable time is the epoch


def test_device_nodes_are_allowed(tmp_path):
    t = snapshot(tmp_path / "t", build_header(b"null", b"3", mode=0o666, devmajor=1, devminor=3))
    st = os.lstat(t / "null")
    assert st.st_rdev == os.makedev(1, 3) and st.st_mode & 0o777 == 0o666


def test_xattrs_an_image_must_not_set_are_dropped(tmp_path):
    bad = {b"trusted.overlay.opaque": b"y", b"trusted.overlay.redirect": b"/etc",
           b"trusted.overlay.metacopy": b"", b"trusted.other": b"x", b"user.overlay.opaque": b"y",
           b"security.selinux": b"system_u:object_r:shadow_t:s0", b"security.ima": b"\x03"}
    good = {b"user.mime_type": b"text/plain"}
    t = snapshot(tmp_path / "t", build_header(b"d/", DIR, mode=0o755, xattrs={**bad, **good})
                 + build_header(b"f", REG, mode=0o644, xattrs={**bad, **good}))
    for p in (t / "d", t / "f"):
        assert sorted(os.listxattr(p)) == ["user.mime_type"], os.listxattr(p)


def test_pax_headers_piling_up_for_one_entry_rejected(arena):
    """Ten PAX headers of 1 MiB each in a row, all for the one entry that follows:
    each is under the per-header limit, together they are not."""
    target, _ = arena
    pax = b""
    for i in range(10):
        data = _pax_record(b"SCHILY.xattr.user.k%d" % i, b"x" * ((1 << 20) - 64))
        pax += build_header(b"PaxHeaders.0/f", b"x", size=len(data)) + data + bytes(padding(len(data)))
    rejected(target, reg("before") + pax + reg("f") + END, "before", "overlay")
