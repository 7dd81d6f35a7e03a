"""The build context: a read-only directory filtered by .dockerignore.

Patterns follow docker's rules (moby patternmatcher): `*` and `?` stay within
one path segment, `**` spans any number of them, `!` re-includes, a leading
`/` is dropped, and a pattern that matches a directory excludes everything
below it. Sources are resolved inside the context only, from a directory fd of
its root through the path resolver: a path that leaves it through `..` or a
symlink is an error, never a read of the host. Ignored files are invisible to the
build however they are reached (through a symlink, a wildcard, a bind mount).
"""

from __future__ import annotations

import os
import posixpath
import stat
import weakref
from dataclasses import dataclass, field
from pathlib import Path

from builder.ignorepattern import IgnorePattern, PatternError, is_literal
from layerstore import resolver
from layerstore.errors import PybuildError


class ContextError(PybuildError):
    """A COPY/ADD source that is missing or outside the build context."""


@dataclass
class Pattern:
    text: str
    exclusion: bool
    matcher: IgnorePattern


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
        try:
            out.append(Pattern(clean, excl, IgnorePattern(clean)))
        except PatternError as exc:
            raise PybuildError(f".dockerignore: {exc}") from None
    return out


class Matcher:
    """Answers "is this context path ignored?" with docker's parent-dir rule."""

    def __init__(self, patterns: list[Pattern]) -> None:
        self.patterns = patterns
        self.has_exclusions = any(p.exclusion for p in patterns)
        # The last pattern that matches decides. Asking every pattern about every file
        # made a 1 MiB ignore file of plain names cost 0.1 s per file (minutes for a
        # context): plain names are looked up in a dict, and a pattern whose first
        # component is plain is only asked about paths under that component.
        self.literal: dict[str, int] = {}        # text -> index of its last occurrence
        self.by_head: dict[str, list[int]] = {}  # first component -> indexes, ascending
        self.generic: list[int] = []
        for i, p in enumerate(patterns):
            head, slash, _ = p.text.partition("/")
            if is_literal(p.text):
                self.literal[p.text] = i
            elif slash and is_literal(head):
                self.by_head.setdefault(head, []).append(i)
            else:
                self.generic.append(i)

    def ignored(self, rel: str) -> bool:
        if not self.patterns or rel in ("", "."):
            return False
        best = self.literal.get(rel, -1)
        if self.literal:
            k = rel.find("/")
            while k > 0:
                best = max(best, self.literal.get(rel[:k], -1))
                k = rel.find("/", k + 1)
        for indexes in (self.generic, self.by_head.get(rel.partition("/")[0], ())):
            for i in reversed(indexes):
                if i <= best:
                    break
                if self.patterns[i].matcher.match(rel, parents=True):
                    best = i
                    break
        return best >= 0 and not self.patterns[best].exclusion

    def may_reinclude_below(self, rel_dir: str) -> bool:
        """Could an exclusion pattern bring back something under an ignored dir?"""
        if not self.has_exclusions:
            return False
        if self._wild_exclusion is None:
            excl = [p.text for p in self.patterns if p.exclusion]
            self._wild_exclusion = any(c in t for t in excl for c in "*?[")
            self._exclusion_texts = excl
        if self._wild_exclusion:
            return True
        prefix = rel_dir + "/"
        return any(t.startswith(prefix) for t in self._exclusion_texts)

    _wild_exclusion: bool | None = None
    _exclusion_texts: list[str] = []


MAX_IGNORE_FILE = 1 << 20      # a .dockerignore is a few lines; bigger is hostile input
_BOM = "\ufeff"


def _read_bounded(fd: int, what: str) -> str:
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        raise ContextError(f"{what}: not a regular file")
    data = os.read(fd, MAX_IGNORE_FILE + 1)
    if len(data) > MAX_IGNORE_FILE:
        raise ContextError(f"{what}: larger than {MAX_IGNORE_FILE} bytes")
    text = data.decode("utf-8", errors="surrogateescape")
    # moby strips a UTF-8 byte order mark: kept, it would glue itself to the first pattern
    return text[1:] if text.startswith(_BOM) else text


def _open_in_context(root_fd: int, rel: str) -> int | None:
    try:
        return resolver.resolve(root_fd, rel, policy=resolver.BENEATH,
                                flags=os.O_RDONLY | os.O_NONBLOCK)
    except (FileNotFoundError, NotADirectoryError):
        return None
    except resolver.PathEscape:
        raise ContextError(f"{rel}: symbolic link points outside the build context") from None


def ignore_text(root_fd: int, root: Path, dockerfile: Path | None = None) -> str:
    """The ignore rules in force: `<Dockerfile>.dockerignore` first, else the context's
    `.dockerignore`. A file inside the context is read through the context's fd (it may
    be a symlink, never one out of it: its lines could end up in an error message)."""
    candidates = []
    if dockerfile is not None:
        # the Dockerfile's directory as it really is: is the ignore file in the context?
        where = os.path.realpath(os.path.dirname(os.path.abspath(dockerfile)))
        own = Path(where, os.path.basename(dockerfile) + ".dockerignore")
        rel = os.path.relpath(own, root)
        candidates.append((own, None if rel == ".." or rel.startswith("../") else rel))
    candidates.append((None, ".dockerignore"))
    for path, rel in candidates:
        if rel is not None:
            fd = _open_in_context(root_fd, rel)
        else:
            try:
                fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
            except (FileNotFoundError, NotADirectoryError):
                fd = None
        if fd is not None:
            try:
                return _read_bounded(fd, str(path or rel))
            finally:
                os.close(fd)
    return ""


@dataclass
class Context:
    """A build context directory and its ignore rules (None root: no context, `-`).

    Every read of the context goes through `fd`, a directory fd of its root, and the
    path resolver (policy BENEATH: a symlink that leaves the context is an error).
    Ignored files do not exist for the build, however they are reached: `locate`
    judges the place a path really leads to and every symlink on the way, as
    BuildKit, which never sends ignored files, would see them."""

    root: Path | None
    matcher: Matcher = field(default_factory=lambda: Matcher([]))
    name: str = "context"
    fd: int = -1

    @classmethod
    def open(cls, root: Path | None, dockerfile: Path | None = None) -> "Context":
        if root is None:
            return cls(None)
        root = Path(root).resolve()
        try:
            fd = resolver.open_root(root)
        except OSError:
            raise ContextError(f"build context {root} is not a directory") from None
        ctx = cls(root, fd=fd)
        weakref.finalize(ctx, os.close, fd)
        ctx.matcher = Matcher(parse_ignore(ignore_text(fd, root, dockerfile)))
        return ctx

    def require(self) -> int:
        """The root's fd; an error when there is no context (Dockerfile from stdin)."""
        if self.root is None:
            raise ContextError("no build context: the Dockerfile came from stdin; "
                               "give a context directory to COPY from it")
        return self.fd

    def resolve(self, source: str) -> str:
        """Clean `source` to a context-relative path ("" is the root); `..` out is an error."""
        raw = posixpath.normpath(source) if source else "."
        if raw == ".." or raw.startswith("../"):
            raise ContextError(f"{source}: path is outside the build {self.name}")
        return posixpath.normpath("/" + source).lstrip("/")

    def locate(self, rel: str, follow: bool = True) -> str | None:
        """Where context path `rel` really is (symlinks followed inside the context):
        its path from the root with no symlink left in it, or None when nothing is
        there for the build: missing, ignored, or reached through an ignored symlink."""
        fd = self.require()
        try:
            seen = resolver.trace(fd, rel, policy=resolver.BENEATH, follow=follow)
        except resolver.PathEscape:
            raise ContextError(f"{rel}: path is outside the build {self.name} "
                               "(through a symbolic link)") from None
        except (FileNotFoundError, NotADirectoryError):
            return None
        except OSError as exc:
            raise ContextError(f"{rel}: {exc.strerror} in the build {self.name}") from None
        if any(self.ignored(link) for link in seen.links):
            return None
        real = seen.path
        if real and self.ignored(real):
            return None
        return real

    def ignored(self, rel: str) -> bool:
        return self.matcher.ignored(rel)
