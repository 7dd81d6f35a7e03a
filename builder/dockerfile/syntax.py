"""The lark parser for grammar/dockerfile.lark, built once and cached on disk.

Building an LALR table from the grammar takes longer than parsing a whole
Dockerfile, so the constructed parser is pickled under the user's cache
directory (keyed by the grammar's hash and the lark version) and reloaded on
later runs; inside a process it is kept in memory.
"""

from __future__ import annotations

import hashlib
import os
from functools import lru_cache
from importlib import resources
from pathlib import Path

import lark


def grammar_text() -> str:
    """The grammar file, found as package data or beside the source tree."""
    try:
        return (resources.files("grammar") / "dockerfile.lark").read_text(encoding="utf-8")
    except (OSError, TypeError, ModuleNotFoundError):
        # `grammar` is a namespace package in a source checkout
        return (Path(__file__).resolve().parents[2] / "grammar" / "dockerfile.lark").read_text(
            encoding="utf-8")


def _cache_file(text: str) -> str | None:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(Path.home(), ".cache")
    digest = hashlib.sha256(f"{lark.__version__}\0{text}".encode()).hexdigest()[:16]
    folder = Path(base) / "pybuild"
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError:
        return None
    if not os.access(folder, os.W_OK):
        return None
    return str(folder / f"dockerfile-grammar-{digest}.lark-cache")


@lru_cache(maxsize=1)
def line_parser() -> lark.Lark:
    """The LALR parser for one logical instruction line."""
    text = grammar_text()
    cache = _cache_file(text)
    kwargs = dict(parser="lalr", lexer="contextual", start="start",
                  propagate_positions=False, maybe_placeholders=False)
    if cache is not None:
        try:
            return lark.Lark(text, cache=cache, **kwargs)
        except OSError:
            pass
    return lark.Lark(text, **kwargs)
