"""Shell patterns of `${x#p}`, `${x%p}`, `${x/p/r}` matched in linear time.

BuildKit turns such a pattern into a Go regular expression (`*` -> `.*`, `?` ->
`.`, no `[...]` classes) and Go's engine never backtracks. Python's does: the
pattern `*a*a*a*a*a*a*a*a*b` against forty `a`s took minutes, so a Dockerfile
line could hang the frontend. The language is so small that no engine is
needed: a pattern is literal segments (with `?` wildcards) separated by stars,
and leftmost-first matching then has a direct answer:

* from a given start, the lazy match places every segment at its earliest
  occurrence; the greedy match places the middle ones so, and the last at its
  latest occurrence (or takes the rest of the line after a trailing `*`) —
  placing a middle segment later never makes room for anything;
* the leftmost start is the first occurrence of the leading segment that ends
  before the latest place the rest can begin (found by placing the segments at
  their latest occurrences, right to left).

As in Go, `*` and `?` never match a newline, so a match lies within one line of
the value. A pattern holding a literal newline is matched with `re` when it has
no `*` (a fixed length cannot backtrack) and refused otherwise.
"""

from __future__ import annotations

import re

from .errors import ExpansionError

_STAR = object()
_ANY = object()
# a `?` segment is searched with `re`: O(value x segment), so the product is bounded
MAX_WORK = 50_000_000


def _tokens(pattern: str) -> list:
    """Literal characters, _ANY and _STAR; BuildKit's escape rules."""
    out: list = []
    i, n = 0, len(pattern)
    while i < n:
        ch = pattern[i]
        i += 1
        if ch == "*":
            out.append(_STAR)
        elif ch == "?":
            out.append(_ANY)
        elif ch == "\\":
            nxt = pattern[i] if i < n else ""
            if nxt in ("}", "/"):
                continue            # an escaped `}` or `/` of ${...} is not part of the pattern
            i += 1
            if nxt not in ("*", "?", "\\"):
                raise ExpansionError(f"invalid escape '\\{nxt}'")
            out.append(nxt)
        else:
            out.append(ch)
    return out


def shell_pattern_regex(pattern: str, greedy: bool, anchored: bool) -> str:
    """The pattern as BuildKit's regular expression (documentation, and the fallback
    for patterns with a literal newline and no `*`)."""
    out = ["^"] if anchored else []
    for t in _tokens(pattern):
        if t is _STAR:
            out.append(".*" if greedy else ".*?")
        elif t is _ANY:
            out.append(".")
        elif t in ("*", "?", "\\"):
            out.append("\\" + t)
        else:
            out.append(re.escape(t) if t in "[]{}.+()|^$" else t)
    return "".join(out)


def reverse_pattern(pattern: str) -> str:
    """Reverse a pattern but keep each `\\x` escape in order (`a\\*c` -> `c\\*a`)."""
    parts: list[str] = []
    i, n = 0, len(pattern)
    while i < n:
        if pattern[i] == "\\" and i != n - 1:
            parts.append(pattern[i:i + 2])
            i += 2
        else:
            parts.append(pattern[i])
            i += 1
    return "".join(reversed(parts))


class _Segment:
    """A run of literal characters and `?` between stars."""

    def __init__(self, tokens: list) -> None:
        self.size = len(tokens)
        self.wild = any(t is _ANY for t in tokens)
        self.text = "".join("?" if t is _ANY else t for t in tokens)
        self.rx = re.compile("".join("." if t is _ANY else re.escape(t) for t in tokens)) \
            if self.wild else None
        self.rrx = re.compile("".join("." if t is _ANY else re.escape(t) for t in reversed(tokens))) \
            if self.wild else None

    def at(self, v: str, p: int, end: int) -> bool:
        if self.rx is None:
            return v.startswith(self.text, p, end)
        return self.rx.match(v, p, end) is not None

    def find(self, v: str, start: int, end: int) -> int:
        """Earliest p >= start with the segment in v[p:p+size], p + size <= end."""
        if self.rx is None:
            return v.find(self.text, start, end)
        m = self.rx.search(v, start, end)
        return m.start() if m else -1

    def rfind(self, v: str, rv: str, start: int, end: int) -> int:
        """Latest such p (rv is v reversed: a wildcard segment searches it forwards)."""
        if self.rx is None:
            return v.rfind(self.text, start, end)
        n = len(v)
        m = self.rrx.search(rv, n - end, n - start)
        return n - m.end() if m else -1


class ShellPattern:
    def __init__(self, pattern: str) -> None:
        try:
            tokens = _tokens(pattern)
        except ExpansionError as exc:
            raise ExpansionError(f"invalid pattern ({pattern}) in substitution: {exc.message}") from None
        self.pattern = pattern
        self.fixed_rx: re.Pattern | None = None
        self.work = sum(1 for t in tokens if t is not _STAR)
        if "\n" in tokens:
            if _STAR in tokens:
                raise ExpansionError(f"unsupported pattern ({pattern!r}) in substitution: "
                                     "a newline together with '*'")
            # fixed length: `re` cannot backtrack on it
            self.fixed_rx = re.compile(shell_pattern_regex(pattern, True, False))
            return
        parts: list[list] = [[]]
        for t in tokens:
            if t is _STAR:
                parts.append([])
            else:
                parts[-1].append(t)
        self.stars = len(parts) > 1
        self.lead = _Segment(parts[0])
        self.middles = [_Segment(p) for p in parts[1:-1] if p]
        self.trail = _Segment(parts[-1]) if self.stars else None
        self.work = sum(s.size for s in [self.lead, *self.middles, *([self.trail] if self.trail else [])]
                        if s.wild)

    def _budget(self, value: str) -> None:
        if len(value) * self.work > MAX_WORK:
            raise ExpansionError(f"pattern ({self.pattern[:40]}) too complex for a value of "
                                 f"{len(value)} characters")

    # -- one line [ls, le) of v ------------------------------------------------------
    def _end(self, v: str, s: int, le: int, greedy: bool) -> int:
        """End of the match starting at s, or -1."""
        if not self.lead.at(v, s, le):
            return -1
        c = s + self.lead.size
        if not self.stars:
            return c
        for m in self.middles:
            p = m.find(v, c, le)
            if p < 0:
                return -1
            c = p + m.size
        if not self.trail.size:
            return le if greedy else c
        p = self.trail.rfind(v, self._rv(v), c, le) if greedy else self.trail.find(v, c, le)
        return p + self.trail.size if p >= 0 else -1

    def _rv(self, v: str) -> str:
        if self._rev is None or self._rev[0] is not v:
            self._rev = (v, v[::-1])
        return self._rev[1]

    _rev: tuple[str, str] | None = None

    def _search_line(self, v: str, start: int, le: int) -> tuple[int, int] | None:
        if not self.stars:
            p = self.lead.find(v, start, le)
            return (p, p + self.lead.size) if p >= 0 else None
        limit = le                       # the latest place where the part after lead can begin
        for seg in ([self.trail] if self.trail.size else []) + self.middles[::-1]:
            p = seg.rfind(v, self._rv(v), start, limit)
            if p < 0:
                return None
            limit = p
        s = self.lead.find(v, start, limit)
        if s < 0:
            return None
        return s, self._end(v, s, le, True)

    # -- whole values ------------------------------------------------------------------
    def search(self, v: str, pos: int = 0) -> tuple[int, int] | None:
        """The leftmost-first (greedy) match starting at or after pos."""
        if self.fixed_rx is not None:
            m = self.fixed_rx.search(v, pos)
            return m.span() if m else None
        ls = v.rfind("\n", 0, pos) + 1
        while ls <= len(v):
            le = v.find("\n", ls)
            if le < 0:
                le = len(v)
            if le >= pos:
                found = self._search_line(v, max(pos, ls), le)
                if found is not None:
                    return found
            ls = le + 1
        return None

    def prefix_end(self, v: str, greedy: bool) -> int:
        """End of the match anchored at the start of v, or -1."""
        if self.fixed_rx is not None:
            m = self.fixed_rx.match(v)
            return m.end() if m else -1
        le = v.find("\n")
        return self._end(v, 0, len(v) if le < 0 else le, greedy)


def trim_prefix(pattern: str, value: str, greedy: bool) -> str:
    """`${x#p}` (shortest) / `${x##p}` (longest)."""
    p = ShellPattern(pattern)
    p._budget(value)
    end = p.prefix_end(value, greedy)
    return value[end:] if end >= 0 else value


def trim_suffix(pattern: str, value: str, greedy: bool) -> str:
    """`${x%p}` / `${x%%p}`: the shortest rightmost match is a leftmost one on the
    reversed strings (as BuildKit does it)."""
    return trim_prefix(reverse_pattern(pattern), value[::-1], greedy)[::-1]


def replace(pattern: str, value: str, replacement: str, replace_all: bool, limit: int) -> str:
    """`${x/p/r}` (first match, r literal) and `${x//p/r}` (every match, Go's
    ReplaceAllString: `$0`/`${0}` is the match, `$$` a dollar; an empty match right after
    a match is not replaced). The result may not exceed `limit` characters."""
    p = ShellPattern(pattern)
    p._budget(value)
    if not replace_all:
        found = p.search(value)
        if found is None:
            return value
        s, e = found
        out = value[:s] + replacement + value[e:]
        if len(out) > limit:
            raise ExpansionError(f"substitution result larger than {limit} characters")
        return out
    parts: list[str] = []
    size = 0
    pos = last = 0
    n = len(value)
    while pos <= n:
        found = p.search(value, pos)
        if found is None:
            break
        s, e = found
        parts.append(value[last:s])
        size += s - last
        if e > last or s == 0:
            parts.append(_go_template(replacement, value[s:e]))
            size += len(parts[-1])
        if size > limit:
            raise ExpansionError(f"substitution result larger than {limit} characters")
        last = e
        pos = pos + 1 if pos + 1 > e else e        # always advance
    parts.append(value[last:])
    out = "".join(parts)
    if len(out) > limit:
        raise ExpansionError(f"substitution result larger than {limit} characters")
    return out


def _go_template(template: str, match: str) -> str:
    """Go's Regexp.Expand for a pattern without groups: `$$` is `$`, `$0` the match."""
    if "$" not in template:
        return template

    def sub(t: re.Match) -> str:
        name = t.group(1) or t.group(2)
        if t.group(0) == "$$":
            return "$"
        return match if name == "0" else ""
    return re.sub(r"\$(?:\{([^}]*)\}|([A-Za-z0-9_]+)|\$)", sub, template)
