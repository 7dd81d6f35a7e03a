"""Sizes and ages printed the way the docker CLI prints them."""

from __future__ import annotations

import re
from datetime import datetime, timezone

_UNITS = ("B", "kB", "MB", "GB", "TB", "PB", "EB", "ZB", "YB")


def human_size(size: float, precision: int = 3) -> str:
    """Decimal units with 3 significant digits: 0B, 4.86kB, 1.24MB (docker's
    units.HumanSizeWithPrecision, as `images` prints them; `system df` prints 4)."""
    i = 0
    while size >= 1000 and i < len(_UNITS) - 1:
        size /= 1000.0
        i += 1
    return f"{size:.{precision}g}{_UNITS[i]}"


def human_duration(seconds: float) -> str:
    """docker's units.HumanDuration."""
    if seconds < 1:
        return "Less than a second"
    if seconds < 2:
        return "1 second"
    if seconds < 60:
        return f"{int(seconds)} seconds"
    minutes = seconds / 60
    if int(minutes) == 1:
        return "About a minute"
    if minutes < 60:
        return f"{int(minutes)} minutes"
    hours = round(seconds / 3600)
    if hours == 1:
        return "About an hour"
    if hours < 48:
        return f"{hours} hours"
    if hours < 24 * 7 * 2:
        return f"{hours // 24} days"
    if hours < 24 * 30 * 2:
        return f"{hours // 24 // 7} weeks"
    if hours < 24 * 365 * 2:
        return f"{hours // 24 // 30} months"
    return f"{hours // 24 // 365} years"


_GO_DURATION = re.compile(r"(?:(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|μs|ms|s|m|h))+\Z")
_GO_DURATION_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|μs|ms|s|m|h)")
_GO_UNIT_SECONDS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "μs": 1e-6, "ms": 1e-3, "s": 1.0,
                    "m": 60.0, "h": 3600.0}


def parse_go_duration(text: str) -> float:
    """Go's time.ParseDuration ("1m30s", "1.5h", "0"; a leading sign is not accepted
    here) in seconds; ValueError when malformed or beyond an int64 of nanoseconds."""
    if text == "0":
        return 0.0
    if not _GO_DURATION.match(text):
        raise ValueError(f"invalid duration {text!r}")
    seconds = sum(float(n) * _GO_UNIT_SECONDS[u] for n, u in _GO_DURATION_PART.findall(text))
    if seconds * 1e9 >= 2 ** 63:
        raise ValueError(f"duration {text!r} is out of range")
    return seconds


def parse_time(text: str | None) -> datetime | None:
    """RFC 3339 with any number of fractional digits (Go writes nanoseconds)."""
    if not text:
        return None
    t = text.strip().replace("Z", "+00:00")
    if "." in t:
        head, _, rest = t.partition(".")
        frac = ""
        while rest and rest[0].isdigit():
            frac, rest = frac + rest[0], rest[1:]
        t = f"{head}.{frac[:6].ljust(6, '0')}{rest}"
    try:
        dt = datetime.fromisoformat(t)
    except ValueError:
        return None
    return dt if dt.tzinfo else dt.replace(tzinfo=timezone.utc)


def since(text: str | None, now: datetime | None = None) -> str:
    dt = parse_time(text)
    if dt is None:
        return "N/A"
    now = now or datetime.now(timezone.utc)
    return human_duration(max(0.0, (now - dt).total_seconds())) + " ago"


def ellipsis(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


def quoted(text: str, marks: bool = True) -> str:
    """`text` safe for a terminal, quoted as Go's strconv.Quote does (docker's ps prints
    commands so; `marks=False` leaves out the quotes). Strings from images and containers
    (Entrypoint, Cmd, names) are their authors': an escape sequence in them must not
    reach the user's terminal raw (retitle it, clear it, fake other rows)."""
    out = []
    for ch in text:
        if ch in '"\\' and marks:
            out.append("\\" + ch)
        elif ch.isprintable():
            out.append(ch)
        elif ord(ch) < 0x100:
            out.append(f"\\x{ord(ch):02x}")
        elif ord(ch) < 0x10000:
            out.append(f"\\u{ord(ch):04x}")
        else:
            out.append(f"\\U{ord(ch):08x}")
    body = "".join(out)
    return f'"{body}"' if marks else body


def rfc3339_now(epoch: int | None = None) -> str:
    """A timestamp for configs and history: now (microseconds), or `epoch` exactly."""
    if epoch is not None:
        return datetime.fromtimestamp(epoch, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")



_SIZE = re.compile(r"^(\d+(?:\.\d+)?)\s*([bkmgt]?)i?b?$", re.IGNORECASE)
_SIZE_UNITS = {"": 1, "b": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}


def parse_size(text: str) -> int:
    """docker's RAMInBytes: 64m, 1g, 512k, 1.5GB, 1024 (binary units); ValueError if not."""
    m = _SIZE.match(text.strip())
    if not m:
        raise ValueError(f"invalid size {text!r}: expected a size such as 64m or 1g")
    return int(float(m.group(1)) * _SIZE_UNITS[m.group(2).lower()])


_BINARY = ("B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB", "ZiB", "YiB")


def bytes_size(size: float) -> str:
    """Binary units with 4 significant digits: 500MiB, 1.5GiB (docker's units.BytesSize),
    for sizes a user gave in binary units (--max-storage, as docker's RAMInBytes reads)."""
    i = 0
    while size >= 1024 and i < len(_BINARY) - 1:
        size /= 1024.0
        i += 1
    return f"{size:.4g}{_BINARY[i]}"
