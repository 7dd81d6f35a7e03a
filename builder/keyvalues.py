"""docker's `K=V` syntaxes in one place: `run -e` / `build --build-arg` lists,
`--label`-style maps, and the comma-separated field lists of `--mount`, `--secret`
and `--output`."""

from __future__ import annotations

import csv
from collections.abc import Callable, Collection, Iterable, Mapping

from layerstore.errors import PybuildError


def env_pairs(items: Iterable[str], env: Mapping[str, str],
              empty_key: Callable[[str], Exception]) -> dict[str, str]:
    """Ordered K -> V; a bare `K` takes K's value from `env` and is dropped when unset."""
    out: dict[str, str] = {}
    for item in items:
        key, eq, value = item.partition("=")
        if not key:
            raise empty_key(item)
        if eq:
            out[key] = value
        elif key in env:
            out[key] = env[key]
    return out


def kv_map(items: Iterable[str], what: str, *, bare: str | None = "",
           error: type[Exception] = PybuildError) -> dict[str, str]:
    """`--label K=V` and the like: K -> V, the last one winning. A bare `K` means
    `bare` (docker's labels: the empty string), or is an error when `bare` is None."""
    out: dict[str, str] = {}
    for item in items:
        key, eq, value = item.partition("=")
        if not key:
            raise error(f"invalid {what} {item!r}: empty key")
        if not eq and bare is None:
            raise error(f"invalid {what} {item!r}: expected KEY=VALUE")
        out[key] = value if eq else bare  # type: ignore[assignment]
    return out


def fields(text: str, what: str, *, bare: str | None = None, lower: bool = True,
           quoted: bool = False, repeat: Collection[str] = (),
           error: type[Exception] = PybuildError) -> dict[str, str]:
    """`type=bind,source=a,target=/b,readonly`: the comma-separated fields of one flag
    value. Keys are lower-cased (docker accepts `Type=`) unless `lower` is off; a bare
    field means `bare`, or is an error when `bare` is None. With `quoted`, buildx's CSV
    form of --output: a field in double quotes may hold commas (`"name=a,b"`). A key in
    `repeat` may come more than once: its values are joined with commas."""
    if quoted:
        try:
            parts = next(csv.reader([text], strict=True), [""])
        except csv.Error as exc:
            raise error(f"invalid {what} {text!r}: {exc}") from None
    else:
        parts = text.split(",")
    parts = [p.strip() for p in parts]
    if lower:
        parts = [k.lower() + eq + v for k, eq, v in (p.partition("=") for p in parts)]
    out = kv_map(parts, what, bare=bare, error=error)
    for key in repeat:
        values = [v for k, eq, v in (p.partition("=") for p in parts) if k == key and eq]
        if len(values) > 1:
            out[key] = ",".join(values)
    return out
