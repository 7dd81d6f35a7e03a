"""The sandbox spec of a created container, kept in ROOT/containers/<id>/spec.json so
that `start` (and `restart`, and `start` of an exited container) runs exactly what
`create`/`run` prepared, without resolving the image or parsing flags again.

The file is ours (the store is private), but it is still read bounded, and only the
dataclasses of builder.sandbox and the run options can be rebuilt from it.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any

from .errors import RunError

SPEC_NAME = "spec.json"
MAX_SIZE = 4 << 20

# fields that describe one start, not the container: set by whoever starts it
_RUNTIME = {"stdio", "pty_size", "input", "timeout"}


def _classes() -> dict[str, type]:
    from builder.sandbox import netconfig, spec

    from .options import Ulimit

    out = {n: v for mod in (spec, netconfig) for n, v in vars(mod).items()
           if isinstance(v, type) and dataclasses.is_dataclass(v)}
    out["Ulimit"] = Ulimit
    return out


def _encode(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        out = {"__type__": type(value).__name__}
        for f in dataclasses.fields(value):
            out[f.name] = _encode(getattr(value, f.name))
        return out
    if isinstance(value, Path):
        return {"__path__": str(value)}
    if isinstance(value, (list, tuple)):
        return [_encode(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _encode(v) for k, v in value.items()}
    if isinstance(value, bytes):
        raise RunError("a container spec with in-memory data (secrets) cannot be kept")
    return value


def _decode(value: Any, classes: dict[str, type]) -> Any:
    if isinstance(value, list):
        return [_decode(v, classes) for v in value]
    if not isinstance(value, dict):
        return value
    if "__path__" in value:
        return Path(value["__path__"])
    kind = value.get("__type__")
    if kind is None:
        return {k: _decode(v, classes) for k, v in value.items()}
    cls = classes.get(kind)
    if cls is None:
        raise ValueError(f"unknown record type {kind!r}")
    known = {f.name for f in dataclasses.fields(cls) if f.init}
    return cls(**{k: _decode(v, classes) for k, v in value.items() if k in known})


def save(cdir: Path, spec, ulimits: list) -> None:
    data = _encode(spec)
    for key in _RUNTIME:
        data.pop(key, None)
    text = json.dumps({"spec": data, "ulimits": _encode(ulimits)}, sort_keys=True)
    tmp = cdir / f".{SPEC_NAME}.{os.getpid()}.tmp"
    with open(tmp, "w") as f:
        f.write(text)
    os.rename(tmp, cdir / SPEC_NAME)


def load(cdir: Path):
    """(SandboxSpec, ulimits) as saved."""
    try:
        fd = os.open(cdir / SPEC_NAME, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        raise RunError(f"container {cdir.name[:12]} was made by an older pybuild and cannot "
                       "be started again; run a new one") from None
    with os.fdopen(fd, "rb") as f:
        raw = f.read(MAX_SIZE + 1)
    if len(raw) > MAX_SIZE:
        raise RunError(f"container {cdir.name[:12]}: {SPEC_NAME} is larger than {MAX_SIZE} bytes")
    try:
        data = json.loads(raw)
        classes = _classes()
        spec = _decode(data["spec"], classes)
        ulimits = _decode(data.get("ulimits", []), classes)
    except (ValueError, KeyError, TypeError, AttributeError, RecursionError) as e:
        raise RunError(f"container {cdir.name[:12]}: unreadable {SPEC_NAME}: {e}") from None
    if (type(spec).__name__ != "SandboxSpec" or type(spec.root).__name__ != "OverlayRoot"
            or not isinstance(spec.root.lowers, list)):
        raise RunError(f"container {cdir.name[:12]}: unreadable {SPEC_NAME}: no sandbox spec")
    return spec, ulimits
