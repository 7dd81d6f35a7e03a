"""The one tar reader (layerstore.layer_tar.read_entries) reads headers as Go's archive/tar
does, for layers (apply) and image archives (load) alike: a tar that docker, containerd or
a scanner reads one way must not mean something else here, nor crash."""

from __future__ import annotations

import gzip
import io
import json
import os
import struct
import tempfile
from pathlib import Path

import pytest
import zstandard

from layerstore.archive import _open_archive
from layerstore.errors import BadLayer, PybuildError
from layerstore.layer_apply import apply_layer
from layerstore.layer_tar import (CHR, REG, ZERO_BLOCK, HeaderError, _pax_record,
                                  build_header, padding, read_entries)

END = ZERO_BLOCK * 2


def reg(name: bytes, data: bytes = b"x", typeflag: bytes = REG) -> bytes:
    return build_header(name, typeflag, mode=0o644, size=len(data)) + data + bytes(padding(len(data)))


def meta(typeflag: bytes, data: bytes, name: bytes = b"././@LongLink") -> bytes:
    """A PAX ('x', 'g') or GNU long-name ('L', 'K') header with its data."""
    return build_header(name, typeflag, size=len(data)) + data + bytes(padding(len(data)))


def pax(**records: bytes) -> bytes:
    return meta(b"x", b"".join(_pax_record(k.encode(), v) for k, v in records.items()), b"PaxHeaders/x")


def patched(header: bytes, offset: int, field: bytes) -> bytes:
    """A header block with one field overwritten and its checksum fixed up."""
    block = bytearray(header[:512])
    block[offset:offset + len(field)] = field
    block[148:156] = b"        "
    block[148:156] = b"%06o\0 " % sum(block)
    return bytes(block) + header[512:]


def applied(tmp_path: Path, layer: bytes, mode: str = "overlay") -> Path:
    target = tmp_path / f"t{len(os.listdir(tmp_path))}"
    target.mkdir()
    apply_layer(io.BytesIO(layer), target, mode=mode)
    return target


def refused(tmp_path: Path, layer: bytes, text: str) -> str:
    target = tmp_path / f"r{len(os.listdir(tmp_path))}"
    target.mkdir()
    with pytest.raises(BadLayer) as info:
        apply_layer(io.BytesIO(layer), target, mode="overlay")
    msg = str(info.value)
    assert text in msg and "\n" not in msg, msg
    return msg


class _Bytes:
    """A TarSource over bytes, for the reader alone."""

    def __init__(self, data: bytes) -> None:
        self.data, self.offset = data, 0

    def read(self, size: int) -> bytes:
        if self.offset >= len(self.data):
            return b""
        if self.offset + size > len(self.data):
            from layerstore.layer_tar import TarTruncated
            raise TarTruncated("cut")
        self.offset += size
        return self.data[self.offset - size:self.offset]

    def skip(self, size: int) -> None:
        self.read(size)


def names(data: bytes) -> list[bytes]:
    return [h.name for h in read_entries(_Bytes(data))]


def test_negative_octal_numbers_are_no_header(tmp_path):
    """int(x, 8) takes "-000001": a device node's major -1 crashed os.makedev with an
    OverflowError (a traceback), a mode of -1 became 07777. Go refuses both headers."""
    dev = patched(build_header(b"dev", CHR, mode=0o600, devmajor=1, devminor=1), 329, b"-000001\0")
    refused(tmp_path, dev + END, "bad devmajor field")
    mode = patched(reg(b"f"), 100, b"-000001\0")
    refused(tmp_path, mode + END, "bad mode field")
    for junk in (b"0o00644\0", b"0_644\0\0\0", b"+000644\0"):
        refused(tmp_path, patched(reg(b"g"), 100, junk) + END, "bad mode field")
    # base-256 (GNU) is two's complement: an all-ones uid is -1, out of range, not 2**62
    refused(tmp_path, patched(reg(b"h"), 108, b"\xff" * 8) + END, "owner -1:0 is out of range")


def test_pax_numbers_as_go_reads_them(tmp_path):
    for record in (b"1_000", b" 12", b"12 ", b"0x10", b"1e3"):
        refused(tmp_path, pax(size=record) + reg(b"f", b"") + END, "bad PAX size")
    refused(tmp_path, pax(mtime=b"12.5x") + reg(b"f") + END, "bad PAX time")
    t = applied(tmp_path, pax(mtime=b"-1.5", uid=b"+7") + reg(b"f") + END)
    st = os.lstat(t / "f")
    assert (st.st_mtime_ns, st.st_uid) == (-1_500_000_000, 7)


def test_gnu_long_name_wins_over_pax_path(tmp_path):
    """Go applies the PAX records, then the GNU long name: a tar carrying both names its
    entry by the GNU one for docker; it must here too (it was the PAX path)."""
    layer = meta(b"L", b"gnu-name\0") + pax(path=b"pax-name") + reg(b"ustar-name") + END
    assert names(layer) == [b"gnu-name"]
    assert os.listdir(applied(tmp_path, layer)) == ["gnu-name"]


def test_only_the_last_pax_header_applies(tmp_path):
    """Two PAX headers in a row: Go keeps the second only (it was merged with the first)."""
    layer = pax(path=b"first-path") + pax(mtime=b"5") + reg(b"ustar-name") + END
    assert names(layer) == [b"ustar-name"]
    t = applied(tmp_path, layer)
    assert os.listdir(t) == ["ustar-name"] and os.lstat(t / "ustar-name").st_mtime == 5


def test_empty_pax_path_keeps_the_ustar_name(tmp_path):
    """Go: an empty record keeps the ustar value (here the entry became the root)."""
    assert os.listdir(applied(tmp_path, pax(path=b"") + reg(b"name") + END)) == ["name"]


def test_pax_global_header_is_ignored(tmp_path):
    """As docker: a global header names no entry and renames none."""
    layer = meta(b"g", _pax_record(b"path", b"global-name"), b"GlobalHead") + reg(b"a") + reg(b"b") + END
    assert sorted(os.listdir(applied(tmp_path, layer))) == ["a", "b"]


def test_zero_block_then_more_entries_is_refused(tmp_path):
    """One zero block, then entries: Go's reader fails (ErrHeader); this stopped at the zero
    block and applied half the layer (whose diff ID covers all of it)."""
    refused(tmp_path, reg(b"a") + ZERO_BLOCK + reg(b"hidden") + END, "zero block followed by")
    assert os.listdir(applied(tmp_path, reg(b"a") + ZERO_BLOCK)) == ["a"]   # one zero block, then EOF


def test_trailing_slash_makes_a_directory_only_for_old_style_entries(tmp_path):
    """Go (and so docker) turns an old-style entry (type NUL) named "d/" into a directory;
    a regular file ('0') named "f/" stays a file, named "f"."""
    t = applied(tmp_path, reg(b"d/", b"", typeflag=b"\0") + reg(b"f/", b"data") + END)
    assert (t / "d").is_dir() and (t / "f").read_bytes() == b"data"


def test_a_layer_of_no_bytes_is_an_empty_layer(tmp_path):
    """docker applies an empty stream (Go's reader sees a clean end); a stream that ends
    after an entry without the end marker stays refused."""
    assert os.listdir(applied(tmp_path, b"")) == []
    assert os.listdir(applied(tmp_path, gzip.compress(b"", mtime=0))) == []
    refused(tmp_path, reg(b"a"), "no end-of-archive marker")
    refused(tmp_path, b"x" * 100, "truncated")             # not no bytes: part of a header


def test_gnu_sparse_entries_are_refused_clearly(tmp_path):
    refused(tmp_path, reg(b"s", b"", typeflag=b"S") + END, "sparse")
    refused(tmp_path, pax(**{"GNU.sparse.major": b"1"}) + reg(b"s2") + END, "sparse")


def test_zstd_stream_opening_with_a_skippable_frame(tmp_path):
    """A zstd layer may start with a skippable frame (containerd detects it as zstd);
    it was taken for an uncompressed tar and refused."""
    tar = reg(b"hello", b"world") + END
    skippable = struct.pack("<II", 0x184D2A5E, 4) + b"meta"
    layer = skippable + zstandard.ZstdCompressor().compress(tar) + skippable
    assert (applied(tmp_path, layer) / "hello").read_bytes() == b"world"


def test_archive_and_layer_read_one_tar_alike(tmp_path):
    """load's member index and apply read the same tar the same way (one reader)."""
    data = json.dumps([]).encode()
    tar = (meta(b"L", b"manifest.json\0") + pax(path=b"decoy.json") + reg(b"x", data)
           + pax(path=b"one") + pax(size=b"3") + reg(b"two", b"abc") + END)
    path = tmp_path / "a.tar"
    path.write_bytes(tar)
    for compress in (False, True):          # read in place, and spooled from a stream
        path.write_bytes(gzip.compress(tar, mtime=0) if compress else tar)
        with open(path, "rb") as f, tempfile.TemporaryFile(dir=tmp_path) as spool:
            archive = _open_archive(f, spool, "a.tar", seekable=True)
            assert sorted(archive.members) == ["manifest.json", "two"]
            assert archive.read("two") == b"abc"
    assert sorted(os.listdir(applied(tmp_path, tar))) == ["manifest.json", "two"]


def test_reader_errors_carry_offset_and_entry():
    with pytest.raises(HeaderError) as info:
        list(read_entries(_Bytes(reg(b"a") + pax(size=b"-5") + reg(b"neg", b"") + END)))
    assert info.value.entry == b"neg" and info.value.offset == 2048   # its header block
    with pytest.raises(PybuildError):      # through apply: a one-line BadLayer
        apply_layer(io.BytesIO(patched(reg(b"a"), 124, b"9" * 11 + b"\0") + END), Path("/nonexistent"))
