"""docker's `K=V` / bare `K` lists (`run -e`, `build --build-arg`) in one place."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping


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
