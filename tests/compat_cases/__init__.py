"""Docker command lines, verbatim, with the output shape docker documents.

Each module here is one area of issue 13 and defines `CASES: list[Case]` (run in
order, sharing one store and one work dir per module) and optionally
`setup(shell: Shell) -> None` run before its first case. tests/test_docker_compat.py
runs them all: `docker` at the start of a line becomes `pybuild --root STORE`.
"""

from __future__ import annotations

import importlib
import pkgutil
from dataclasses import dataclass


@dataclass(frozen=True)
class Case:
    line: str            # the docker command line exactly as documented/pasted ("docker ...")
    out: str = ""        # regex re.search()ed in stdout (MULTILINE); "" = not checked
    code: int = 0        # expected exit status
    err: str = ""        # regex re.search()ed in stderr; "" = not checked
    source: str = ""     # where the line comes from: a docs URL or "CI usage"
    input: str | None = None   # stdin
    lines: int | None = None   # exact count of non-empty stdout lines, when docker's shape fixes it


def modules() -> list[str]:
    return sorted(m.name for m in pkgutil.iter_modules(__path__) if not m.name.startswith("_"))


def load(name: str):
    return importlib.import_module(f"{__name__}.{name}")
