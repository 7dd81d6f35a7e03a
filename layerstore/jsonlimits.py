"""The one way outside JSON is read: bounded in size and nesting depth.

Manifests, indexes, configs, archive manifests, index.json, cache records: all of
them may come from an attacker, and Python's json module has no limits of its
own. A document nested 100 000 deep makes json.loads (and every recursive walk
after it: json.dumps, deepcopy, dataclass conversion) raise RecursionError; a
multi-gigabyte "manifest" would be read into memory whole. Here every document is
checked before and after parsing, and refused with a one-line InvalidJSON (a
PybuildError, and a ValueError for callers that treat any undecodable document
alike). NaN and Infinity, which Go's encoding/json rejects, are refused too.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from layerstore.errors import PybuildError

MAX_BYTES = 16 << 20    # configs with long histories stay far below; docker limits manifests to 4 MiB
MAX_DEPTH = 64          # OCI/docker documents are < 6 deep; this leaves every recursive walk safe


class InvalidJSON(PybuildError, ValueError):
    """A JSON document that is malformed, too large or nested too deeply."""


class TooDeep(InvalidJSON):
    """A JSON document nested deeper than its limit."""


def _no_constants(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _too_deep(obj: Any, max_depth: int) -> bool:
    """Whether containers nest deeper than `max_depth` (an iterative walk: no recursion)."""
    stack = [(obj, 1)]
    while stack:
        value, depth = stack.pop()
        if isinstance(value, dict):
            children = value.values()
        elif isinstance(value, list):
            children = value
        else:
            continue
        if depth > max_depth:
            return True
        stack.extend((c, depth + 1) for c in children if isinstance(c, (dict, list)))
    return False


def loads(data: bytes | str, what: str, *, max_bytes: int = MAX_BYTES,
          max_depth: int = MAX_DEPTH) -> Any:
    """Parse a JSON document from outside; InvalidJSON names `what` on any failure."""
    if len(data) > max_bytes:
        raise InvalidJSON(f"{what}: JSON document of {len(data)} bytes is larger than the "
                          f"limit of {max_bytes}")
    try:
        obj = json.loads(data, parse_constant=_no_constants)
    except RecursionError:
        raise TooDeep(f"{what}: JSON nested more than {max_depth} levels deep") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise InvalidJSON(f"{what}: not valid JSON: {exc}") from None
    opening = (b"[", b"{") if isinstance(data, (bytes, bytearray)) else ("[", "{")
    if sum(data.count(c) for c in opening) > max_depth and _too_deep(obj, max_depth):
        raise TooDeep(f"{what}: JSON nested more than {max_depth} levels deep")
    return obj


def read(path: str | os.PathLike, what: str | None = None, *, max_bytes: int = MAX_BYTES,
         max_depth: int = MAX_DEPTH) -> Any:
    """Read and parse a JSON file, never more than `max_bytes` of it.

    FileNotFoundError passes through (callers treat a missing file their own way)."""
    label = what or str(path)
    with open(path, "rb") as f:
        data = f.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise InvalidJSON(f"{label}: JSON document larger than the limit of {max_bytes} bytes")
    return loads(data, label, max_bytes=max_bytes, max_depth=max_depth)


def read_object(path: str | os.PathLike | Path, what: str | None = None, **limits) -> dict:
    """`read`, and the document must be a JSON object."""
    obj = read(path, what, **limits)
    if not isinstance(obj, dict):
        raise InvalidJSON(f"{what or path}: expected a JSON object")
    return obj
