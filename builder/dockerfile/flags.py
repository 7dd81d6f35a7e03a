"""Builder flags (`--name=value`) checked against what each instruction accepts.

BuildKit's BFlags: a flag is a string, a repeatable list, or a boolean
(`--link`, `--link=false`); unknown names, missing values and repeated
single-valued flags are errors.
"""

from __future__ import annotations

from dataclasses import dataclass


class FlagError(ValueError):
    """Raised with the message only; the caller adds the position."""


@dataclass(frozen=True)
class FlagSpec:
    strings: frozenset[str] = frozenset()
    lists: frozenset[str] = frozenset()
    bools: frozenset[str] = frozenset()


def spec(strings: str = "", lists: str = "", bools: str = "") -> FlagSpec:
    return FlagSpec(frozenset(strings.split()), frozenset(lists.split()), frozenset(bools.split()))


def parse_flags(raw: list[str], allowed: FlagSpec, keyword: str) -> dict[str, object]:
    """`["--from=a", "--link"]` -> `{"from": "a", "link": True}`; lists collect repeats."""
    out: dict[str, object] = {}
    for word in raw:
        if not word.startswith("--"):
            raise FlagError(f"invalid flag {word!r}: flags start with --")
        name, eq, value = word[2:].partition("=")
        if not name:
            raise FlagError(f"empty flag name in {word!r}")
        if name in allowed.bools:
            if not eq:
                out[name] = True
            elif value.lower() in ("true", "false"):
                out[name] = value.lower() == "true"
            else:
                raise FlagError(f"expecting boolean value for flag {name}, not: {value}")
        elif name in allowed.lists:
            if not eq:
                raise FlagError(f"missing a value on flag: {name}")
            out.setdefault(name, [])
            out[name].append(value)  # type: ignore[union-attr]
        elif name in allowed.strings:
            if not eq:
                raise FlagError(f"missing a value on flag: {name}")
            if name in out:
                raise FlagError(f"duplicate flag specified: {name}")
            out[name] = value
        else:
            raise FlagError(f"unknown flag: --{name} (for {keyword})")
    return out
