"""The tar headers of layers: ustar blocks and PAX records, built and parsed.

Written by hand rather than with `tarfile` for speed on trees of tens of
thousands of files and for full control of every byte (determinism).  The
output is what Go's archive/tar (docker, BuildKit) writes: ustar where the
fields fit, a PAX extended header before the entry where they do not
(long path or link target, big numbers, xattrs as SCHILY.xattr.*).

Reading (`read_entries`) is the one tar reader of the store: layers (apply)
and image archives (load) both go through it. It reads as Go's archive/tar
does, which docker, containerd and most scanners use (GNU long names and
base-256 numbers too): a header read any other way would let one layer mean
one thing to them and another thing here.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from typing import Iterator, Protocol

BLOCK = 512
ZERO_BLOCK = bytes(BLOCK)

REG, AREG, LNK, SYM, CHR, BLK, DIR, FIFO, CONT = b"0", b"\0", b"1", b"2", b"3", b"4", b"5", b"6", b"7"
PAX, PAX_GLOBAL, GNU_LONGNAME, GNU_LONGLINK = b"x", b"g", b"L", b"K"

WHITEOUT_PREFIX = b".wh."
OPAQUE_MARKER = b".wh..wh..opq"
XATTR_PREFIX = b"SCHILY.xattr."
# Path components a layer entry may have, writing and applying alike (apply keeps one fd
# per level open; docker's path-based syscalls stop at PATH_MAX, some 2000 levels).
MAX_DEPTH = 400

_HEADER = struct.Struct("100s8s8s8s12s12s8sc100s6s2s32s32s8s8s155s12x")
_MAX7 = 8 ** 7 - 1
_MAX11 = 8 ** 11 - 1


def padding(size: int) -> int:
    """Bytes of zero padding after `size` bytes of entry data."""
    return -size % BLOCK


def _pax_record(key: bytes, value: bytes) -> bytes:
    body = b" " + key + b"=" + value + b"\n"
    length = len(body) + len(str(len(body)))
    while len(str(length)) + len(body) != length:
        length = len(str(length)) + len(body)
    return str(length).encode() + body


def _split_ustar(name: bytes) -> tuple[bytes, bytes] | None:
    """(prefix, name) when `name` fits the ustar fields, else None."""
    if len(name) <= 100:
        return b"", name
    # split at the first '/' that leaves at most 100 bytes (and a non-empty name) after it
    cut = name.find(b"/", len(name) - 101)
    if 0 < cut <= 155 and cut < len(name) - 1:
        return name[:cut], name[cut + 1:]
    return None


def _ustar_block(name: bytes, prefix: bytes, mode: int, uid: int, gid: int, size: int, mtime: int,
                 typeflag: bytes, linkname: bytes, devmajor: int, devminor: int) -> bytes:
    block = bytearray(_HEADER.pack(
        name, b"%07o\0" % mode, b"%07o\0" % uid, b"%07o\0" % gid, b"%011o\0" % size,
        b"%011o\0" % mtime, b"        ", typeflag, linkname, b"ustar\0", b"00", b"", b"",
        b"%07o\0" % devmajor, b"%07o\0" % devminor, prefix))
    block[148:156] = b"%06o\0 " % sum(block)
    return bytes(block)


def build_header(name: bytes, typeflag: bytes, *, mode: int = 0, uid: int = 0, gid: int = 0,
                 size: int = 0, mtime: int = 0, linkname: bytes = b"", devmajor: int = 0,
                 devminor: int = 0, xattrs: dict[bytes, bytes] | None = None) -> bytes:
    """Header block(s) for one entry: ustar, preceded by a PAX header if needed.

    uname/gname stay empty (numeric ownership); PAX records are sorted by key.
    """
    records: dict[bytes, bytes] = {}
    split = _split_ustar(name)
    if split is None:
        records[b"path"] = name
        split = b"", name[:100]
    if len(linkname) > 100:
        records[b"linkpath"] = linkname
        linkname = linkname[:100]
    for key, value, limit in ((b"uid", uid, _MAX7), (b"gid", gid, _MAX7), (b"size", size, _MAX11),
                              (b"mtime", mtime, _MAX11)):
        if not 0 <= value <= limit:
            records[key] = str(value).encode()
    uid = uid if 0 <= uid <= _MAX7 else 0
    gid = gid if 0 <= gid <= _MAX7 else 0
    size_field = size if size <= _MAX11 else 0
    mtime = mtime if 0 <= mtime <= _MAX11 else 0
    if xattrs:
        for key, value in xattrs.items():
            records[XATTR_PREFIX + key] = value
    block = _ustar_block(split[1], split[0], mode, uid, gid, size_field, mtime, typeflag, linkname,
                         devmajor, devminor)
    if not records:
        return block
    data = b"".join(_pax_record(key, records[key]) for key in sorted(records))
    base = name.rstrip(b"/").rsplit(b"/", 1)[-1]
    pax = _ustar_block(b"PaxHeaders.0/" + base[:87], b"", 0o644, 0, 0, len(data), 0, PAX, b"", 0, 0)
    return pax + data + bytes(padding(len(data))) + block


# -- parsing ----------------------------------------------------------------

# Go's archive/tar refuses PAX and GNU long-name data above 1 MiB, so no layer that
# docker or containerd can read has more; beyond that it is a memory bomb.
MAX_META = 1 << 20
# Entry types that carry no data whatever their size field says (as Go and GNU tar).
HEADER_ONLY = (LNK, SYM, CHR, BLK, DIR, FIFO)
GNU_SPARSE = b"S"
_OCTAL = frozenset(b"01234567")
_DECIMAL = frozenset(b"0123456789")
_INT64 = 1 << 63


class HeaderError(ValueError):
    """A header block that is not a valid tar header. read_entries sets where: the
    `offset` of the header and, once its name is known, the `entry` it belongs to."""

    def __init__(self, message: str, *, offset: int | None = None,
                 entry: bytes | None = None) -> None:
        super().__init__(message)
        self.offset = offset
        self.entry = entry


class TarTruncated(HeaderError):
    """The stream ends inside a header or inside an entry's data."""


def _number(field_: bytes, what: str) -> int:
    """A numeric field as Go's parseNumeric reads it: octal digits (spaces and NULs
    around them), or GNU base-256 (two's complement) when the top bit is set.
    Python's int() would also take signs, '0o' prefixes and underscores: a mode of
    "-000001" is not 07777, it is no header."""
    if field_ and field_[0] & 0x80:
        if field_[0] & 0x40:    # negative
            value = int.from_bytes(field_, "big", signed=True)
        else:
            value = int.from_bytes(field_, "big") & ~(0x80 << (8 * (len(field_) - 1)))
        if not -_INT64 <= value < _INT64:
            raise HeaderError(f"{what} field out of range")
        return value
    text = field_.strip(b" \0")
    if not text.isdigit():      # the common case is all digits; else cut at a NUL, as Go
        text = text.split(b"\0", 1)[0]
        if not text:
            return 0
        if not _OCTAL.issuperset(text):
            raise HeaderError(f"bad {what} field {field_!r}")
    try:
        return int(text, 8)
    except ValueError:          # an 8 or a 9
        raise HeaderError(f"bad {what} field {field_!r}") from None


def _decimal(text: bytes, what: str, signed: bool = True, digits: int = 19) -> int:
    """A PAX decimal (Go's strconv.ParseInt: an optional sign, then digits only),
    at most `digits` long and, at the default, in int64's range."""
    body = text[1:] if signed and text[:1] in (b"-", b"+") else text
    if not body or not _DECIMAL.issuperset(body) or len(body) > digits:
        raise HeaderError(f"bad PAX {what} {text[:40]!r}")
    value = int(text)
    if digits == 19 and not -_INT64 <= value < _INT64:
        raise HeaderError(f"PAX {what} out of range")
    return value


def _cstr(field_: bytes) -> bytes:
    return field_.split(b"\0", 1)[0]


@dataclass(slots=True)
class Header:
    """One entry: its ustar/GNU block with PAX records and GNU long names folded in."""

    name: bytes
    typeflag: bytes
    mode: int
    uid: int
    gid: int
    size: int
    mtime_ns: int
    linkname: bytes
    devmajor: int
    devminor: int
    xattrs: dict[bytes, bytes] = field(default_factory=dict)
    offset: int = 0          # where the entry's data starts in the (uncompressed) stream


def parse_header(block: bytes) -> Header:
    """Parses and checksum-verifies one 512-byte header block."""
    (name, mode, uid, gid, size, mtime, chksum, typeflag, linkname, magic, _version, _uname,
     _gname, devmajor, devminor, prefix) = _HEADER.unpack(block)
    want = _number(chksum, "checksum")
    unsigned = sum(block) - sum(chksum) + 256      # the checksum field counts as spaces
    if want != unsigned:
        signed = unsigned - 256 * sum(1 for b in block[:148] + block[156:] if b >= 128)
        if want != signed:
            raise HeaderError("header checksum mismatch")
    full = _cstr(name)
    if magic == b"ustar\0" and prefix[0]:
        full = _cstr(prefix) + b"/" + full
    is_dev = typeflag in (CHR, BLK)
    return Header(name=full, typeflag=typeflag, mode=_number(mode, "mode") & 0o7777,
                  uid=_number(uid, "uid"), gid=_number(gid, "gid"), size=_number(size, "size"),
                  mtime_ns=_number(mtime, "mtime") * 1_000_000_000, linkname=_cstr(linkname),
                  devmajor=_number(devmajor, "devmajor") if is_dev else 0,
                  devminor=_number(devminor, "devminor") if is_dev else 0)


def parse_pax(data: bytes) -> dict[bytes, bytes]:
    """PAX extended header records ("LEN key=value\\n" ...), as Go's parsePAX: every
    byte must belong to a record (no NUL padding), a key is non-empty and holds no '='
    or NUL, and path names hold no NUL."""
    records: dict[bytes, bytes] = {}
    pos = 0
    while pos < len(data):
        space = data.find(b" ", pos, pos + 21)
        if space < 0:
            raise HeaderError("malformed PAX record")
        length = _decimal(data[pos:space], "record length", signed=False)
        end = pos + length
        if length < 5 or end > len(data) or end <= space + 1 or data[end - 1] != 0x0A:
            raise HeaderError("malformed PAX record")
        key, eq, value = data[space + 1:end - 1].partition(b"=")
        if not eq or not key or b"\0" in key:
            raise HeaderError("malformed PAX record key")
        if key in (b"path", b"linkpath", b"uname", b"gname") and b"\0" in value:
            raise HeaderError(f"NUL byte in the PAX {key.decode()} record")
        records[key] = value
        pos = end
    return records


def pax_time_ns(text: bytes) -> int:
    """A PAX time ("1700000000.123456789", maybe negative) in nanoseconds (Go's parsePAXTime)."""
    whole, _, frac = text.partition(b".")
    seconds = _decimal(whole, "time", digits=40)   # far-future times: the caller clamps
    if frac and not _DECIMAL.issuperset(frac):
        raise HeaderError(f"bad PAX time {text[:40]!r}")
    nanos = int((frac[:9] or b"0").ljust(9, b"0"))
    return seconds * 1_000_000_000 + (-nanos if whole.startswith(b"-") else nanos)


def _fold(h: Header, records: dict[bytes, bytes] | None, long_name: bytes | None,
          long_link: bytes | None) -> None:
    """Go's mergePAX, then its GNU long names (which win over PAX path records).
    The name is settled first, so that an error about the rest can name the entry."""
    if records and records.get(b"path"):   # an empty record keeps the ustar value (Go)
        h.name = records[b"path"]
    if long_name:
        h.name = long_name
    if records:
        if any(key.startswith(b"GNU.sparse.") for key in records):
            raise HeaderError("GNU sparse files are not supported")
        for key, value in records.items():
            if not value or key == b"path":
                continue
            if key == b"linkpath":
                h.linkname = value
            elif key == b"size":
                h.size = _decimal(value, "size")
            elif key == b"uid":
                h.uid = _decimal(value, "uid")
            elif key == b"gid":
                h.gid = _decimal(value, "gid")
            elif key == b"mtime":
                h.mtime_ns = pax_time_ns(value)
            elif key.startswith(XATTR_PREFIX):
                h.xattrs[key[len(XATTR_PREFIX):]] = value
    if long_link:
        h.linkname = long_link
    if h.typeflag == AREG:      # pre-POSIX: a trailing slash made a directory
        h.typeflag = DIR if h.name.endswith(b"/") else REG
    if h.typeflag == GNU_SPARSE:
        raise HeaderError("GNU sparse files are not supported")
    if h.typeflag in HEADER_ONLY:
        h.size = 0
    if h.size < 0:
        raise HeaderError("negative size")


class TarSource(Protocol):
    """What read_entries reads from: a stream that knows how far it got."""

    offset: int

    def read(self, size: int) -> bytes:
        """Exactly `size` bytes; b"" when the stream ended before them (cleanly, with
        nothing read); TarTruncated when it ends part-way."""

    def skip(self, size: int) -> None:
        """Drops `size` bytes; TarTruncated when the stream ends first."""


def read_entries(src: TarSource, *, max_meta: int = MAX_META,
                 eof_ok: bool = False) -> Iterator[Header]:
    """Every entry of a tar stream, its PAX records and GNU long names folded in.

    The consumer may read any part of an entry's data (starting at `header.offset`)
    before asking for the next entry; whatever it left is skipped. PAX and GNU
    long-name data above `max_meta` bytes is refused, also when spread over many
    headers for one entry. A PAX header replaces the one before it (only the last
    applies, as in Go), and a global header is read and ignored (as docker does).
    The archive ends at two zero blocks (one zero block and then data is an error,
    as in Go); with `eof_ok`, also at a clean end of the stream between entries
    (tar and Go accept that; layers must carry the end marker). HeaderError (with
    the offset) or TarTruncated for anything else."""
    records: dict[bytes, bytes] | None = None
    long_name = long_link = None
    meta = 0
    while True:
        at = src.offset
        block = src.read(BLOCK)
        if not block:
            if eof_ok:
                return
            raise TarTruncated("no end-of-archive marker")
        if block == ZERO_BLOCK:
            if src.read(BLOCK) not in (b"", ZERO_BLOCK):
                raise HeaderError("a zero block followed by more entries", offset=at)
            return
        try:
            h = parse_header(block)
        except HeaderError as exc:
            raise HeaderError(str(exc), offset=at) from None
        try:
            if h.typeflag in (PAX, PAX_GLOBAL, GNU_LONGNAME, GNU_LONGLINK):
                if not 0 <= h.size <= max_meta:
                    raise HeaderError(f"extended header of {h.size} bytes is implausible")
                meta += h.size
                if meta > 2 * max_meta:     # ten 1 MiB headers in a row for one entry
                    raise HeaderError(f"extended headers of more than {2 * max_meta} bytes "
                                      "for one entry are implausible")
                data = src.read(h.size)
                if len(data) != h.size:
                    raise TarTruncated("truncated inside an extended header")
                src.skip(padding(h.size))
                if h.typeflag == PAX:
                    records = parse_pax(data)
                elif h.typeflag == PAX_GLOBAL:
                    parse_pax(data)
                elif h.typeflag == GNU_LONGNAME:
                    long_name = _cstr(data)
                else:
                    long_link = _cstr(data)
                continue
            _fold(h, records, long_name, long_link)
        except TarTruncated:
            raise
        except HeaderError as exc:
            named = h.typeflag not in (PAX, PAX_GLOBAL, GNU_LONGNAME, GNU_LONGLINK)
            raise HeaderError(str(exc), offset=at, entry=h.name if named else None) from None
        h.offset = src.offset
        end = h.offset + h.size + padding(h.size)
        yield h
        if src.offset < end:
            src.skip(end - src.offset)
        records = None
        long_name = long_link = None
        meta = 0
