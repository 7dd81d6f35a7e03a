"""The build context: a read-only directory filtered by .dockerignore.

Patterns follow docker's rules (moby patternmatcher): `*` and `?` stay within
one path segment, `**` spans any number of them, `!` re-includes, a leading
`/` is dropped, and a pattern that matches a directory excludes everything
below it. Sources are resolved inside the context only: a path that leaves it
through `..` or a symlink is an error, never a read of the host.
"""

from __future__ import annotations

import os
import posixpath
import re
import stat
from dataclasses import dataclass, field
from pathlib import Path

from layerstore.errors import PybuildError


class ContextError(PybuildError):
    """A COPY/ADD source that is missing or outside the build context."""


@dataclass
class Pattern:
    text: str
    exclusion: bool
    regex: re.Pattern


def _translate(pattern: str) -> re.Pattern:
    out = "^"
    i, n = 0, len(pattern)
    while i < n:
        ch = pattern[i]
        i += 1
        if ch == "*":
            if i < n and pattern[i] == "*":
                i += 1
                if i < n and pattern[i] == "/":
                    i += 1
                out += ".*" if i >= n else "(.*/)?"
            else:
                out += "[^/]*"
        elif ch == "?":
            out += "[^/]"
        elif ch == "\\":
            if i < n:
                out += re.escape(pattern[i])
                i += 1
            else:
                out += "\\\\"
        elif ch in "[]":
            out += ch
        elif ch in ".$^+(){}|":
            out += "\\" + ch
        else:
            out += ch
    try:
        return re.compile(out + "$", re.S)
    except re.error as exc:
        raise PybuildError(f".dockerignore: bad pattern {pattern!r}: {exc}") from None


def parse_ignore(text: str) -> list[Pattern]:
    """The lines of a .dockerignore file as ordered patterns."""
    out = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        excl = line.startswith("!")
        if excl:
            line = line[1:].strip()
        if not line:
            continue
        clean = posixpath.normpath(line)
        if len(clean) > 1 and clean.startswith("/"):
            clean = clean.lstrip("/") or "."
        out.append(Pattern(clean, excl, _translate(clean)))
    return out


class Matcher:
    """Answers "is this context path ignored?" with docker's parent-dir rule."""

    def __init__(self, patterns: list[Pattern]) -> None:
        self.patterns = patterns
        self.has_exclusions = any(p.exclusion for p in patterns)

    def ignored(self, rel: str) -> bool:
        if not self.patterns or rel in ("", "."):
            return False
        parent = posixpath.dirname(rel)
        parts = parent.split("/") if parent else []
        matched = False
        for p in self.patterns:
            hit = bool(p.regex.match(rel))
            if not hit and parts:
                for i in range(len(parts)):
                    if p.regex.match("/".join(parts[: i + 1])):
                        hit = True
                        break
            if hit:
                matched = not p.exclusion
        return matched

    def may_reinclude_below(self, rel_dir: str) -> bool:
        """Could an exclusion pattern bring back something under an ignored dir?"""
        if not self.has_exclusions:
            return False
        prefix = rel_dir + "/"
        for p in self.patterns:
            if p.exclusion and (p.text.startswith(prefix) or "*" in p.text or "?" in p.text
                                or "[" in p.text):
                return True
        return False


def ignore_text(root: Path, dockerfile: Path | None = None) -> str:
    """The ignore rules in force: `<Dockerfile>.dockerignore` first, else ROOT/.dockerignore."""
    candidates = []
    if dockerfile is not None:
        candidates.append(Path(str(dockerfile) + ".dockerignore"))
    candidates.append(root / ".dockerignore")
    for c in candidates:
        if c.is_file():
            return c.read_text(errors="surrogateescape")
    return ""


@dataclass
class Context:
    """A build context directory and its ignore rules (None root: no context, `-`)."""

    root: Path | None
    matcher: Matcher = field(default_factory=lambda: Matcher([]))
    name: str = "context"

    @classmethod
    def open(cls, root: Path | None, dockerfile: Path | None = None) -> "Context":
        if root is None:
            return cls(None)
        root = Path(root).resolve()
        if not root.is_dir():
            raise ContextError(f"build context {root} is not a directory")
        return cls(root, Matcher(parse_ignore(ignore_text(root, dockerfile))))

    def _require(self) -> Path:
        if self.root is None:
            raise ContextError("no build context: the Dockerfile came from stdin; "
                               "give a context directory to COPY from it")
        return self.root

    def resolve(self, source: str) -> str:
        """Clean `source` to a context-relative path ("" is the root); `..` out is an error."""
        raw = posixpath.normpath(source) if source else "."
        if raw == ".." or raw.startswith("../"):
            raise ContextError(f"{source}: path is outside the build {self.name}")
        return posixpath.normpath("/" + source).lstrip("/")

    def real(self, rel: str) -> Path:
        """Host path of context-relative `rel`, following symlinks only inside the context."""
        root = self._require()
        cur = root
        parts = [p for p in rel.split("/") if p and p != "."]
        hops = 0
        while parts:
            name = parts.pop(0)
            if name == "..":
                if cur == root:
                    raise ContextError(f"{rel}: path is outside the build {self.name}")
                cur = cur.parent
                continue
            nxt = cur / name
            try:
                st = os.lstat(nxt)
            except FileNotFoundError:
                return nxt  # caller reports missing
            if stat.S_ISLNK(st.st_mode):
                hops += 1
                if hops > 40:
                    raise ContextError(f"{rel}: too many levels of symbolic links")
                target = os.readlink(nxt)
                if target.startswith("/"):
                    raise ContextError(f"{rel}: symbolic link {nxt.relative_to(root)} -> {target} "
                                       f"points outside the build {self.name}")
                tparts = [p for p in target.split("/") if p and p != "."]
                depth = len(cur.relative_to(root).parts)
                for p in tparts:
                    depth = depth - 1 if p == ".." else depth + 1
                    if depth < 0:
                        raise ContextError(f"{rel}: symbolic link {nxt.relative_to(root)} -> "
                                           f"{target} points outside the build {self.name}")
                parts = tparts + parts
                continue
            cur = nxt
        return cur

    def ignored(self, rel: str) -> bool:
        return self.matcher.ignored(rel)
