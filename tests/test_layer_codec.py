"""Layer codec units: tar format details, overlay markers, determinism,
compression detection, diff IDs; GNU tar is the peer that reads our layers."""

from __future__ import annotations

import hashlib
import io
import os
import socket
import stat
import struct
import subprocess
import tarfile
from pathlib import Path

import pytest
import zstandard

from conftest import require_tool
from layerstore import compression as comp
from layerstore.layer_apply import apply_layer
from treecmp import describe_tree, diff_trees
from layerstore.layer_diff import write_layer

CAP_NET_RAW = struct.pack("<IIIII", 0x02000001, 1 << 13, 0, 0, 0)
LONG = "n" * 120
DEEP = "/".join(["d" * 60] * 5)


def make_tree(root: Path) -> Path:
    """Every entry kind the codec handles, with owners, modes, xattrs and long names."""
    root.mkdir()
    (root / "etc").mkdir(mode=0o750)
    (root / "etc" / "conf").write_bytes(b"key=value\n" * 100)
    os.chown(root / "etc" / "conf", 1000, 2000)
    (root / "bin").mkdir()
    ping = root / "bin" / "ping"
    ping.write_bytes(os.urandom(70_000))
    os.chmod(ping, 0o4755)
    os.setxattr(ping, "security.capability", CAP_NET_RAW)
    os.setxattr(ping, "user.comment", b"with\nnewline and = sign")
    os.link(ping, root / "bin" / "ping-hardlink")
    os.symlink("/bin/ping", root / "bin" / "abs-link")
    os.symlink("../etc/" + "t" * 150, root / "bin" / "long-link")
    os.mkfifo(root / "fifo", 0o640)
    os.mknod(root / "null", 0o666 | stat.S_IFCHR, os.makedev(1, 3))
    os.mknod(root / "loop9", 0o660 | stat.S_IFBLK, os.makedev(7, 9))
    (root / LONG).write_bytes(b"long name")
    os.makedirs(root / DEEP)
    (root / DEEP / "f").write_bytes(b"deep")
    os.link(root / DEEP / "f", root / ("h" * 110))
    (root / "empty").mkdir(mode=0o1777)
    os.chmod(root / "empty", 0o1777)
    big_uid = root / "big-uid"
    big_uid.write_bytes(b"")
    os.chown(big_uid, 3_000_000, 3_000_001)
    os.utime(root / "etc" / "conf", (1_000_000, 1_000_000))
    return root


def layer_bytes(src: Path, compression: str = "none", **kw) -> tuple[bytes, object]:
    out = io.BytesIO()
    stats = write_layer(src, out, compression=compression, **kw)
    return out.getvalue(), stats


def names_of(tar: bytes) -> list[str]:
    with tarfile.open(fileobj=io.BytesIO(tar)) as tf:
        return [m.name for m in tf]


def test_round_trip_all_entry_kinds(tmp_path):
    src = make_tree(tmp_path / "src")
    blob, stats = layer_bytes(src, "gzip")
    dest = tmp_path / "dest"
    dest.mkdir()
    applied = apply_layer(io.BytesIO(blob), dest, mode="flat", expected_diff_id=stats.diff_id)
    assert not diff_trees(describe_tree(dest), describe_tree(src))
    assert applied.entries == len(describe_tree(src))
    assert os.getxattr(dest / "bin" / "ping", "security.capability") == CAP_NET_RAW
    assert os.stat(dest / "bin" / "ping").st_ino == os.stat(dest / "bin" / "ping-hardlink").st_ino


def test_tar_headers_are_numeric_sorted_and_pax_for_what_ustar_cannot_hold(tmp_path):
    src = make_tree(tmp_path / "src")
    tar, _ = layer_bytes(src)
    with tarfile.open(fileobj=io.BytesIO(tar)) as tf:
        members = tf.getmembers()
    names = [m.name for m in members]
    assert names == sorted(names, key=lambda n: n.split("/"))  # component-wise byte order
    assert all(m.uname == "" and m.gname == "" for m in members)
    by = {m.name: m for m in members}
    ping = by["bin/ping"]
    assert ping.pax_headers["SCHILY.xattr.security.capability"].encode("utf-8", "surrogateescape") == CAP_NET_RAW
    assert ping.mode == 0o4755
    assert by["bin/ping-hardlink"].islnk() and by["bin/ping-hardlink"].linkname == "bin/ping"
    assert by["bin/long-link"].linkname == "../etc/" + "t" * 150
    assert by["loop9"].isblk() and (by["loop9"].devmajor, by["loop9"].devminor) == (7, 9)
    assert by["big-uid"].uid == 3_000_000 and by["big-uid"].pax_headers["uid"] == "3000000"
    assert by["etc/conf"].uid == 1000 and by["etc/conf"].gid == 2000 and by["etc/conf"].mtime == 1_000_000
    assert DEEP + "/f" in by and LONG in by
    assert not any("atime" in m.pax_headers or "ctime" in m.pax_headers for m in members)
    assert tar.endswith(bytes(1024)) and len(tar) % 512 == 0


def test_gnu_tar_lists_and_extracts_our_layers(tmp_path):
    tar_tool = require_tool("tar")
    src = make_tree(tmp_path / "src")
    for compression in ("gzip", "zstd"):
        blob, _ = layer_bytes(src, compression)
        path = tmp_path / f"layer.{compression}"
        path.write_bytes(blob)
        listing = subprocess.run([tar_tool, "-tvf", str(path)], capture_output=True, text=True, check=True)
        assert listing.stderr == ""
        assert "bin/ping-hardlink link to bin/ping" in listing.stdout
        assert len(listing.stdout.splitlines()) == len(describe_tree(src))
        out = tmp_path / f"gnu-{compression}"
        out.mkdir()
        subprocess.run([tar_tool, "--xattrs", "--xattrs-include=*", "--numeric-owner", "-xpf", str(path),
                        "-C", str(out)], check=True)
        assert not diff_trees(describe_tree(out), describe_tree(src))


def test_we_apply_what_gnu_tar_writes(tmp_path):
    tar_tool = require_tool("tar")
    src = make_tree(tmp_path / "src")
    for fmt in ("gnu", "posix"):
        path = tmp_path / f"{fmt}.tar"
        subprocess.run([tar_tool, f"--format={fmt}", "--xattrs", "--xattrs-include=*", "--numeric-owner",
                        "-cf", str(path), "-C", str(src), "."], check=True)
        dest = tmp_path / f"from-{fmt}"
        dest.mkdir()
        with open(path, "rb") as f:
            stats = apply_layer(f, dest, mode="flat")
        assert stats.diff_id == "sha256:" + hashlib.sha256(path.read_bytes()).hexdigest()
        want = describe_tree(src)
        assert not diff_trees(describe_tree(dest), want)


def make_upper(root: Path) -> Path:
    """An overlay upper dir as the kernel leaves it: whiteouts and opaque dirs."""
    root.mkdir()
    os.mknod(root / "gone", stat.S_IFCHR, 0)
    (root / "opq").mkdir()
    os.setxattr(root / "opq", "trusted.overlay.opaque", b"y")
    os.setxattr(root / "opq", "trusted.overlay.origin", b"ignored")
    (root / "opq" / "child").write_bytes(b"new")
    (root / "uopq").mkdir()
    os.setxattr(root / "uopq", "user.overlay.opaque", b"y")
    (root / "keep").mkdir()
    os.mknod(root / "keep" / "dead", stat.S_IFCHR, 0)
    return root


def test_overlay_upper_markers(tmp_path):
    upper = make_upper(tmp_path / "upper")
    tar, _ = layer_bytes(upper)
    assert names_of(tar) == [".wh.gone", "keep", "keep/.wh.dead", "opq", "opq/.wh..wh..opq", "opq/child",
                             "uopq", "uopq/.wh..wh..opq"]
    with tarfile.open(fileobj=io.BytesIO(tar)) as tf:
        assert not any(k.startswith("SCHILY.xattr.trusted.overlay") for m in tf for k in m.pax_headers)
    plain, _ = layer_bytes(upper, overlay=False)
    assert names_of(plain) == ["gone", "keep", "keep/dead", "opq", "opq/child", "uopq"]
    # whiteouts sort by their tar name: "-minus" < ".wh.-early", though the upper holds "-early" < "-minus"
    os.mknod(upper / "-early", stat.S_IFCHR, 0)
    (upper / "+plus").write_bytes(b"")
    (upper / "-minus").write_bytes(b"")
    assert names_of(layer_bytes(upper)[0])[:4] == ["+plus", "-minus", ".wh.-early", ".wh.gone"]


def test_apply_overlay_form_and_flat_form(tmp_path):
    tar, _ = layer_bytes(make_upper(tmp_path / "upper"))
    snap = tmp_path / "snap"
    snap.mkdir()
    apply_layer(io.BytesIO(tar), snap, mode="overlay")
    for path in (snap / "gone", snap / "keep" / "dead"):
        st = os.lstat(path)
        assert stat.S_ISCHR(st.st_mode) and st.st_rdev == 0
    assert os.getxattr(snap / "opq", "trusted.overlay.opaque") == b"y"
    assert os.getxattr(snap / "uopq", "trusted.overlay.opaque") == b"y"
    assert (snap / "opq" / "child").read_bytes() == b"new"

    flat = tmp_path / "flat"
    for d in ("gone/sub", "opq/old", "uopq/old", "keep"):
        (flat / d).mkdir(parents=True)
    (flat / "keep" / "dead").write_bytes(b"x")
    (flat / "keep" / "alive").write_bytes(b"x")
    apply_layer(io.BytesIO(tar), flat, mode="flat")
    assert sorted(os.listdir(flat)) == ["keep", "opq", "uopq"]
    assert os.listdir(flat / "keep") == ["alive"]
    assert os.listdir(flat / "opq") == ["child"] and os.listdir(flat / "uopq") == []
    assert os.listxattr(flat / "opq") == []


def test_source_date_epoch_gives_identical_layers(tmp_path):
    src = make_tree(tmp_path / "src")
    os.utime(src / "etc" / "conf", (500, 500))
    first = {c: layer_bytes(src, c, source_date_epoch=1_000_000_000)[0] for c in ("gzip", "zstd", "none")}
    with tarfile.open(fileobj=io.BytesIO(first["none"])) as tf:
        mtimes = {m.name: m.mtime for m in tf}
    assert mtimes["etc/conf"] == 500 and max(mtimes.values()) == 1_000_000_000
    for dirpath, dirnames, filenames in os.walk(src):
        for name in dirnames + filenames:
            os.utime(os.path.join(dirpath, name), ns=(2_000_000_000_123_456_789,) * 2,
                     follow_symlinks=False) if name != "conf" else None
    second = {c: layer_bytes(src, c, source_date_epoch=1_000_000_000)[0] for c in ("gzip", "zstd", "none")}
    assert first == second
    assert layer_bytes(src, "none")[0] != first["none"]  # without the clamp, the touch shows


def test_gzip_header_and_parallel_determinism(tmp_path):
    data = os.urandom(1 << 20) + b"compressible " * 300_000 + os.urandom(5000)
    outs = []
    for threads in (1, 2, 3):
        buf = io.BytesIO()
        w = comp.ParallelGzipWriter(buf, level=6, threads=threads)
        for i in range(0, len(data), 77_777):
            w.write(data[i:i + 77_777])
        w.close()
        outs.append(buf.getvalue())
    assert outs[0] == outs[1] == outs[2]
    blob = outs[0]
    assert blob[:10] == b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\xff"  # no name, mtime 0
    path = tmp_path / "x.gz"
    path.write_bytes(blob)
    subprocess.run([require_tool("gzip"), "-t", str(path)], check=True)
    assert subprocess.run(["gzip", "-dc", str(path)], capture_output=True, check=True).stdout == data


def test_zstd_output_does_not_depend_on_thread_count():
    data = (os.urandom(300) * 20_000) + os.urandom(2 << 20)
    blobs = []
    for threads in (1, 2, 4):
        buf = io.BytesIO()
        with zstandard.ZstdCompressor(level=3, threads=threads).stream_writer(buf, closefd=False) as w:
            w.write(data)
        blobs.append(buf.getvalue())
    assert blobs[0] == blobs[1] == blobs[2]


@pytest.mark.parametrize("compression", ["gzip", "zstd", "none"])
def test_diff_id_is_sha256_of_decompressed_blob(tmp_path, compression):
    src = make_tree(tmp_path / "src")
    path = tmp_path / "blob"
    with open(path, "wb") as out:
        stats = write_layer(src, out, compression=compression)
    assert stats.media_type == comp.MEDIA_TYPES[compression]
    tool = {"gzip": ["gzip", "-dc"], "zstd": ["zstd", "-dcq"], "none": ["cat"]}[compression]
    raw = subprocess.run([*tool, str(path)], capture_output=True, check=True).stdout
    got = subprocess.run(["sha256sum"], input=raw, capture_output=True, check=True).stdout.split()[0]
    assert stats.diff_id == "sha256:" + got.decode()
    assert stats.uncompressed_size == len(raw)


def test_compression_is_detected_by_magic(tmp_path):
    src = make_tree(tmp_path / "src")
    plain, stats = layer_bytes(src)
    (tmp_path / "l.tar").write_bytes(plain)
    variants = {"none": tmp_path / "l.tar"}
    for name, cmd, ext in (("gzip", "gzip", "gz"), ("zstd", "zstd", "zst"), ("bzip2", "bzip2", "bz2"),
                           ("xz", "xz", "xz")):
        out = tmp_path / f"l.tar.{ext}"
        out.write_bytes(subprocess.run([require_tool(cmd), "-c", str(tmp_path / "l.tar")],
                                       capture_output=True, check=True).stdout)
        variants[name] = out
    want = describe_tree(src)
    for name, path in variants.items():
        assert comp.detect(path.read_bytes()[:comp.MAGIC_LEN]) == name
        dest = tmp_path / f"dest-{name}"
        dest.mkdir()
        with open(path, "rb") as f:
            applied = apply_layer(f, dest, mode="flat", expected_diff_id=stats.diff_id)
        assert applied.uncompressed_size == len(plain)
        assert not diff_trees(describe_tree(dest), want)


def test_sockets_are_skipped_and_empty_tree_is_a_valid_layer(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    empty, _ = layer_bytes(src)
    assert empty == bytes(1024)
    sock = socket.socket(socket.AF_UNIX)
    try:
        sock.bind(str(src / "sock"))
        (src / "file").write_bytes(b"x")
        assert names_of(layer_bytes(src)[0]) == ["file"]
    finally:
        sock.close()


def test_directory_metadata_is_set_after_its_children(tmp_path):
    src = tmp_path / "src"
    (src / "ro").mkdir(parents=True)
    (src / "ro" / "f").write_bytes(b"x")
    os.chmod(src / "ro", 0o555)
    os.utime(src / "ro", (12345, 12345))
    blob, _ = layer_bytes(src, "zstd")
    dest = tmp_path / "dest"
    dest.mkdir()
    apply_layer(io.BytesIO(blob), dest)
    st = os.stat(dest / "ro")
    assert stat.S_IMODE(st.st_mode) == 0o555 and st.st_mtime == 12345


def test_missing_source_is_a_clear_error(tmp_path):
    from layerstore.layer_diff import LayerSourceError

    for compression in ("gzip", "zstd", "none"):
        with pytest.raises(LayerSourceError, match="missing: not a directory"):
            write_layer(tmp_path / "missing", io.BytesIO(), compression=compression)


@pytest.mark.parametrize("fmt", ["gnu", "posix"])
def test_sparse_archives_are_refused_not_misread(tmp_path, fmt):
    from layerstore.errors import BadLayer

    src = tmp_path / "src"
    src.mkdir()
    with open(src / "holey", "wb") as f:
        f.truncate(8 << 20)
        f.seek(0, 2)
        f.write(b"end")
    path = tmp_path / "sparse.tar"
    subprocess.run([require_tool("tar"), f"--format={fmt}", "-S", "-cf", str(path), "-C", str(src), "holey"],
                   check=True)
    dest = tmp_path / "dest"
    dest.mkdir()
    with open(path, "rb") as f, pytest.raises(BadLayer, match="sparse|unsupported tar entry type"):
        apply_layer(f, dest)


def test_metacopy_and_redirect_uppers_are_refused(tmp_path):
    from layerstore.layer_diff import LayerSourceError

    for name, kind in (("trusted.overlay.metacopy", "file"), ("trusted.overlay.redirect", "dir")):
        upper = tmp_path / name
        upper.mkdir()
        entry = upper / "x"
        entry.mkdir() if kind == "dir" else entry.write_bytes(b"")
        os.setxattr(entry, name, b"/elsewhere" if kind == "dir" else b"")
        with pytest.raises(LayerSourceError, match=name.rsplit(".", 1)[1]):
            write_layer(upper, io.BytesIO())
        assert names_of(layer_bytes(upper, overlay=False)[0]) == ["x"]


@pytest.mark.parametrize("compression, level", [("brotli", None), ("gzip", 10), ("zstd", 23)])
def test_unknown_compression_or_level_is_a_clear_error(tmp_path, compression, level):
    with pytest.raises(comp.UnsupportedCompression, match=compression):
        write_layer(tmp_path, io.BytesIO(), compression=compression, level=level)


@pytest.mark.parametrize("compression, level", [("gzip", 1), ("gzip", 9), ("zstd", 19), ("zstd", -3)])
def test_levels_are_honoured_and_still_round_trip(tmp_path, compression, level):
    src = make_tree(tmp_path / "src")
    blob, stats = layer_bytes(src, compression, level=level)
    dest = tmp_path / "dest"
    dest.mkdir()
    apply_layer(io.BytesIO(blob), dest, expected_diff_id=stats.diff_id)
    assert not diff_trees(describe_tree(dest), describe_tree(src))


def test_multi_member_gzip_applies_and_bad_crc_is_refused(tmp_path):
    import gzip

    from layerstore.errors import BadLayer

    src = make_tree(tmp_path / "src")
    plain, stats = layer_bytes(src)
    cut = len(plain) // 3
    multi = gzip.compress(plain[:cut], mtime=0) + gzip.compress(plain[cut:], mtime=0)
    dest = tmp_path / "dest"
    dest.mkdir()
    applied = apply_layer(io.BytesIO(multi), dest, expected_diff_id=stats.diff_id)
    assert applied.uncompressed_size == len(plain)
    bad = bytearray(gzip.compress(plain, mtime=0))
    bad[-8] ^= 0xFF  # CRC32 of the member
    other = tmp_path / "other"
    other.mkdir()
    with pytest.raises(BadLayer, match="corrupt"):
        apply_layer(io.BytesIO(bytes(bad)), other)


def test_errors_of_the_underlying_stream_pass_through(tmp_path):
    from layerstore.errors import DigestMismatch

    src = make_tree(tmp_path / "src")
    blob, _ = layer_bytes(src, "gzip")

    class VerifyingReader(io.BytesIO):
        """Like a blob store reader that finds the content bad when it reaches the end."""

        def read(self, n=-1):
            data = super().read(n)
            if not data:
                raise DigestMismatch("sha256:" + "a" * 64, "sha256:" + "b" * 64)
            return data

    dest = tmp_path / "dest"
    dest.mkdir()
    with pytest.raises(DigestMismatch):
        apply_layer(VerifyingReader(blob), dest)


@pytest.mark.parametrize("compression", ["gzip", "zstd", "none"])
def test_a_failing_output_stream_fails_the_commit(tmp_path, compression):
    import errno

    src = make_tree(tmp_path / "src")
    (src / "big").write_bytes(os.urandom(6 << 20))

    class DiskFull(io.BytesIO):
        def write(self, data):
            if self.tell() > 100_000:
                raise OSError(errno.ENOSPC, "No space left on device")
            return super().write(data)

    with pytest.raises(OSError, match="No space left"):
        write_layer(src, DiskFull(), compression=compression)


def test_odd_file_names_round_trip(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    names = [b"new\nline", b"sp ace", b"\xff\xfe-not-utf8", "ünïcödé-☃".encode(), b"x" * 200 + b"\xff",
             b"-dash", b"=equals=", b"trailing.", b"..dots"]
    base = os.fsencode(src)
    for i, name in enumerate(names):
        with open(os.path.join(base, name), "wb") as f:
            f.write(b"%d" % i)
    os.symlink(b"\xff/target\nwith newline", os.path.join(base, b"odd-link"))
    blob, stats = layer_bytes(src, "gzip")
    dest = tmp_path / "dest"
    dest.mkdir()
    apply_layer(io.BytesIO(blob), dest, expected_diff_id=stats.diff_id)
    assert not diff_trees(describe_tree(dest), describe_tree(src))
    gnu = tmp_path / "gnu"
    gnu.mkdir()
    (tmp_path / "l.tgz").write_bytes(blob)
    subprocess.run([require_tool("tar"), "-xzf", str(tmp_path / "l.tgz"), "-C", str(gnu)], check=True)
    assert sorted(os.listdir(os.fsencode(gnu))) == sorted(names + [b"odd-link"])
