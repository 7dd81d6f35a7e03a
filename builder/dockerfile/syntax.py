"""The lark parser for grammar/dockerfile.lark, built once and cached on disk.

Building an LALR table from the grammar takes longer than parsing a whole
Dockerfile, so the constructed parser is pickled under the user's cache
directory (keyed by the grammar's hash and the lark version) and reloaded on
later runs; inside a process it is kept in memory.
"""

from __future__ import annotations

import hashlib
import os
import sys
from functools import lru_cache
from pathlib import Path


def _import_lark():
    """Import lark without the optional `regex` module, which costs ~100 ms.

    lark only uses `regex` when asked to (`regex=True`); hiding it during the
    import keeps `pybuild check` fast and changes nothing else.
    """
    if "regex" in sys.modules:
        import lark
        return lark
    sys.modules["regex"] = None  # type: ignore[assignment]
    try:
        import lark
    finally:
        del sys.modules["regex"]
    return lark


lark = _import_lark()


def grammar_text() -> str:
    """The grammar file: beside the `builder` package (source tree or site-packages),
    else wherever importlib.resources finds the `grammar` package data."""
    path = Path(__file__).resolve().parents[2] / "grammar" / "dockerfile.lark"
    if path.is_file():
        return path.read_text(encoding="utf-8")
    from importlib import resources

    return (resources.files("grammar") / "dockerfile.lark").read_text(encoding="utf-8")


def _cache_file(text: str) -> str | None:
    try:
        base = os.environ.get("XDG_CACHE_HOME") or os.path.join(Path.home(), ".cache")
    except (RuntimeError, KeyError):      # no home directory: build in memory
        return None
    digest = hashlib.sha256(f"{lark.__version__}\0{text}".encode()).hexdigest()[:16]
    folder = Path(base) / "pybuild"
    try:
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError:
        return None
    # the cache is a pickle: only trust a folder that belongs to us and nobody else can write
    st = folder.stat()
    if st.st_uid != os.geteuid() or st.st_mode & 0o022 or not os.access(folder, os.W_OK):
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
