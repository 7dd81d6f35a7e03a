""".dockerignore (and COPY --exclude) patterns, matched in linear time.

moby's patternmatcher turns a pattern into a Go regular expression: `*` ->
`[^/]*`, `?` -> `[^/]`, `**` -> `(.*/)?` (`.*` at the end), `[...]` a class,
`\\x` the character x. Go's engine never backtracks; Python's does, and the
context is hostile input: the line `*a*a*a*a*a*a*a*a*b` took 90 s against one
60-character name, for every file of the build. So a pattern with at most one
star (all the usual ones) runs as a regex, where a single star cannot
backtrack more than once per position; any other runs on a bit-parallel NFA (one
bit per pattern position, a few integer operations per path character, the
transitions cached as a small lazy DFA), linear in the path.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from layerstore.errors import PybuildError

_STAR, _DANY, _DSLASH, _ONE = "STAR", "DANY", "DSLASH", "ONE"
_STARS = (_STAR, _DANY, _DSLASH)
_CACHE_LIMIT = 1 << 16


class PatternError(PybuildError):
    """A pattern that is not a valid expression (an unterminated `[`)."""


def _tokens(pattern: str) -> tuple[list, str]:
    """(tokens, regex source): a token is a literal character, one of the wildcard
    names above, or a compiled one-character class."""
    tokens: list = []
    out = ["^"]
    i, n = 0, len(pattern)
    while i < n:
        ch = pattern[i]
        i += 1
        if ch == "*":
            if i < n and pattern[i] == "*":
                i += 1
                if i < n and pattern[i] == "/":
                    i += 1
                tok, rx = (_DANY, ".*") if i >= n else (_DSLASH, "(.*/)?")
            else:
                tok, rx = _STAR, "[^/]*"
            if tokens and tokens[-1] == tok:      # `**/**/` is `**/`, `**` is `*`
                continue
            tokens.append(tok)
            out.append(rx)
        elif ch == "?":
            tokens.append(_ONE)
            out.append("[^/]")
        elif ch == "\\":
            lit = pattern[i] if i < n else "\\"
            i += 1
            tokens.append(lit)
            out.append(re.escape(lit))
        elif ch == "[":
            end, body = _class_body(pattern, i)
            if end < 0:
                raise PatternError(f"bad pattern {pattern!r}: unterminated character set")
            try:
                cls = re.compile(f"[{body}]", re.S)
            except re.error as exc:
                raise PatternError(f"bad pattern {pattern!r}: {exc}") from None
            i = end + 1
            tokens.append(cls)
            out.append(f"[{body}]")
        else:
            tokens.append(ch)
            out.append(re.escape(ch))
    return tokens, "".join(out) + "$"


def _class_body(pattern: str, i: int) -> tuple[int, str]:
    """The index of the `]` closing a class opened before i, and the class body as a
    regex. As the translation always did, `^` is a literal (not a negation) and a `]`
    first in the class is a member; `*` and `?` inside are plain characters."""
    body = []
    n = len(pattern)
    start = i
    while i < n:
        ch = pattern[i]
        if ch == "]" and i > start:
            return i, "".join(body)
        if ch == "\\" and i + 1 < n:
            body.append(re.escape(pattern[i + 1]))
            i += 2
        else:
            body.append("\\" + ch if ch in "[]^" else ch)
            i += 1
    return -1, ""


@dataclass
class _Machine:
    """Bit i set: the match may be at pattern position i. A `**/` takes two positions:
    its start, and "inside `.*`, waiting for a `/`"."""

    lits: dict[str, int] = field(default_factory=dict)   # char -> literal positions
    classes: list[tuple[int, re.Pattern]] = field(default_factory=list)
    one: int = 0          # `?`: any char but /
    star: int = 0         # `*`: stays on any char but /
    dany: int = 0         # `**` at the end: stays on anything
    dstart: int = 0       # `**/` start: any char -> inside; / -> past it
    dinside: int = 0      # `**/` inside: stays on anything; / -> past it
    eps1: int = 0         # skippable by one position
    eps2: int = 0         # skippable by two
    accept: int = 0
    start: int = 0
    cache: dict = field(default_factory=dict)

    def close(self, mask: int) -> int:
        while True:
            new = mask | ((mask & self.eps1) << 1) | ((mask & self.eps2) << 2)
            if new == mask:
                return mask
            mask = new

    def step(self, mask: int, ch: str) -> int:
        key = (mask, ch)
        nxt = self.cache.get(key)
        if nxt is not None:
            return nxt
        adv1 = self.lits.get(ch, 0) | self.dstart
        for bit, cls in self.classes:
            if cls.match(ch):
                adv1 |= bit
        stay = self.dany | self.dinside
        adv2 = 0
        if ch == "/":
            adv1 |= self.dinside
            adv2 = self.dstart
        else:
            adv1 |= self.one
            stay |= self.star
        nxt = self.close(((mask & adv1) << 1) | ((mask & adv2) << 2) | (mask & stay))
        if len(self.cache) > _CACHE_LIMIT:
            self.cache.clear()
        self.cache[key] = nxt
        return nxt


def _machine(tokens: list) -> _Machine:
    m = _Machine()
    pos = 0
    for tok in tokens:
        bit = 1 << pos
        if tok == _DSLASH:
            m.dstart |= bit
            m.dinside |= bit << 1
            m.eps2 |= bit
            pos += 2
            continue
        if tok == _STAR:
            m.star |= bit
            m.eps1 |= bit
        elif tok == _DANY:
            m.dany |= bit
            m.eps1 |= bit
        elif tok == _ONE:
            m.one |= bit
        elif isinstance(tok, str):
            m.lits[tok] = m.lits.get(tok, 0) | bit
        else:
            m.classes.append((bit, tok))
        pos += 1
    m.accept = 1 << pos
    m.start = m.close(1)
    return m


def is_literal(pattern: str) -> bool:
    """A pattern that only matches its own text."""
    return not any(c in pattern for c in "*?[\\")


class IgnorePattern:
    """One pattern: does it match a path, or (`parents`) any of its parent dirs?
    Compiled when first used (a big ignore file mostly holds plain names, which the
    Matcher looks up without matching); one with a `[` class is checked at once."""

    def __init__(self, pattern: str) -> None:
        self.pattern = pattern
        self.regex: re.Pattern | None = None
        self.machine: _Machine | None = None
        if "[" in pattern:
            self._compile()

    def _compile(self) -> None:
        tokens, source = _tokens(self.pattern)
        try:
            self.regex = re.compile(source, re.S)
        except re.error as exc:
            raise PatternError(f"bad pattern {self.pattern!r}: {exc}") from None
        stars = sum(1 for t in tokens if isinstance(t, str) and t in _STARS)
        self.machine = _machine(tokens) if stars > 1 else None

    def match(self, path: str, parents: bool = False) -> bool:
        """Whether the pattern matches `path`, or with `parents` any prefix of it that
        ends before a `/` (moby's rule: an ignored directory hides what is below)."""
        if self.regex is None:
            self._compile()
        m = self.machine
        if m is None:
            if self.regex.match(path):
                return True
            if parents:
                k = path.find("/")
                while k > 0:
                    if self.regex.match(path, 0, k):
                        return True
                    k = path.find("/", k + 1)
            return False
        state = m.start
        for ch in path:
            if parents and ch == "/" and state & m.accept:
                return True
            state = m.step(state, ch)
            if not state:
                return False
        return bool(state & m.accept)
