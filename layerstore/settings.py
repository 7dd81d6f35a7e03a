"""Store-level settings: ROOT/settings.json (`pybuild system set/get`).

A JSON object of known keys only, written atomically 0600 under the store lock
and read back bounded (a hand-edited or planted file is input like any other):
an unknown key or a value of the wrong kind is refused with one line naming it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from layerstore import jsonlimits
from layerstore.atomic import atomic_write
from layerstore.errors import PybuildError
from layerstore.humanize import bytes_size, parse_size
from layerstore.locking import file_lock

FILE = "settings.json"
MAX_BYTES = 64 << 10
MAX_LIMIT = 1 << 63         # docker's sizes are int64


class SettingError(PybuildError):
    """A setting that does not exist, or a value it cannot take."""


@dataclass(frozen=True)
class Setting:
    name: str
    help: str
    parse: Callable[[str], object]       # text -> stored JSON value (None: unset)
    show: Callable[[object], str]        # stored JSON value -> text
    check: Callable[[object], bool]      # is a stored value one this setting can hold


def parse_limit(text: str, what: str = "max-storage") -> int | None:
    """A storage limit: a docker-style size (500MB, 1.5GiB, 2g: binary units, as docker's
    RAMInBytes) or `none`."""
    t = text.strip()
    if t.lower() == "none":
        return None
    try:
        value = parse_size(t)
    except (ValueError, OverflowError):     # 1e400 bytes: float infinity
        value = -1
    if not 0 <= value < MAX_LIMIT:
        raise SettingError(f"{what}: invalid size {text[:40]!r}: expected a size such as "
                           "500MB or 1.5GiB, or none")
    return value


KNOWN: dict[str, Setting] = {s.name: s for s in [
    Setting("max-storage", "prune the store after every build and pull to stay under this size",
            parse_limit, lambda v: "none" if v is None else bytes_size(v),
            lambda v: type(v) is int and 0 <= v < MAX_LIMIT),
]}


def _known(name: str) -> Setting:
    s = KNOWN.get(name)
    if s is None:
        raise SettingError(f"unknown setting {name!r} (known: {', '.join(sorted(KNOWN))})")
    return s


def load(root: Path) -> dict[str, object]:
    """Every setting that is set; a missing file is no settings."""
    path = Path(root) / FILE
    try:
        doc = jsonlimits.read_object(path, FILE, max_bytes=MAX_BYTES)
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        raise SettingError(f"{path}: unreadable: {exc}") from None
    for k, v in doc.items():
        if k not in KNOWN or not KNOWN[k].check(v):
            raise SettingError(f"{path}: invalid setting {k!r}: {json.dumps(v)[:80]}")
    return doc


def get(root: Path, name: str) -> object:
    _known(name)
    return load(root).get(name)


def show(name: str, value: object) -> str:
    return _known(name).show(value)


def set_value(root: Path, name: str, text: str) -> object:
    """Set `name` from its command-line text (`none` unsets a limit); returns the value."""
    setting = _known(name)
    value = setting.parse(text)
    with file_lock(Path(root) / "lock"):
        doc = load(root)
        if value is None:
            doc.pop(name, None)
        else:
            doc[name] = value
        atomic_write(Path(root) / FILE, json.dumps(doc, sort_keys=True, indent=1).encode(), 0o600)
    return value
