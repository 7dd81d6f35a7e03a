"""Word expansion with BuildKit's shell-lexer rules (`shell.Lex`).

Docker expands `$VAR`, `${VAR}` and the `${VAR<op>word}` forms itself, in the
arguments of the instructions that support it (ADD, COPY, ENV, EXPOSE, FROM,
LABEL, STOPSIGNAL, USER, VOLUME, WORKDIR, ARG defaults, mount options); it
never runs a shell for that.  This module reproduces that lexer: quote
removal, the active escape character, the modifiers `:- - :+ + :? ?`, the
patterns `# ## % %% / //`, and word splitting after expansion.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Mapping
from dataclasses import dataclass, field

from .errors import ExpansionError
from .gotext import GO_SPACE_SET, go_quote
from .shellpattern import replace as _replace
from .shellpattern import reverse_pattern, shell_pattern_regex, trim_prefix, trim_suffix

__all__ = ["Expansion", "ShellLex", "expand_word", "expand_words", "reverse_pattern",
           "shell_pattern_regex", "MAX_NESTING", "MAX_WORD"]

_SPECIAL_PARAMS = frozenset("@*#?-$!0")
MAX_NESTING = 64  # ${...} inside ${...}: far beyond any real Dockerfile
# `ARG a=$a$a` doubles a value per line: twenty lines of that asked for terabytes (a
# MemoryError after minutes). A word never grows beyond this (a Dockerfile line is 64 KiB)
MAX_WORD = 1 << 20
_HEREDOC_OP = re.compile(r"<<[\t\n\v\f\r ]*\Z")


def _is_digit(ch: str) -> bool:
    return ch.isdigit() and (ch.isascii() or unicodedata.category(ch) == "Nd")


def _is_name_char(ch: str) -> bool:
    return ch == "_" or ch.isalpha() or _is_digit(ch)


class _Words:
    """Collects the words of ProcessWords: unquoted blanks split, quoted text never."""

    __slots__ = ("buf", "words", "in_word", "glue_heredoc")

    def __init__(self, glue_heredoc: bool) -> None:
        self.buf: list[str] = []
        self.words: list[str] = []
        self.in_word = False
        self.glue_heredoc = glue_heredoc

    def add_char(self, ch: str) -> None:
        if ch in GO_SPACE_SET:
            if self.glue_heredoc and _HEREDOC_OP.search("".join(self.buf[-64:])):
                self.add_raw(ch)       # `<< EOF` stays one word for heredoc detection
            elif self.in_word and self.buf:
                self.words.append("".join(self.buf))
                self.buf = []
                self.in_word = False
        else:
            self.add_raw(ch)

    def add_raw(self, text: str) -> None:
        self.buf.append(text)
        self.in_word = True

    def add_string(self, text: str) -> None:
        for ch in text:
            self.add_char(ch)

    def result(self) -> list[str]:
        if self.buf:
            self.words.append("".join(self.buf))
            self.buf = []
            self.in_word = False
        return self.words


@dataclass
class Expansion:
    """The outcome of expanding one word, with the variable names it looked up."""

    value: str
    words: list[str]
    matched: set[str] = field(default_factory=set)
    unmatched: set[str] = field(default_factory=set)


class ShellLex:
    """BuildKit's `shell.Lex`: expand and split one word at a time.

    `raw_quotes` keeps quote characters, `raw_escapes` keeps escape
    characters, `skip_unset` leaves references to unset variables as written.
    """

    def __init__(self, escape: str = "\\", *, raw_quotes: bool = False, raw_escapes: bool = False,
                 skip_unset: bool = False, skip_process_quotes: bool = False,
                 glue_heredoc: bool = False) -> None:
        self.escape = escape
        self.raw_quotes = raw_quotes
        self.raw_escapes = raw_escapes
        self.skip_unset = skip_unset
        self.skip_process_quotes = skip_process_quotes
        self.glue_heredoc = glue_heredoc

    def process(self, word: str, env: Mapping[str, str]) -> Expansion:
        run = _Run(self, word, env)
        try:
            value, words = run.stop_on(None, self.raw_escapes)
        except ExpansionError as exc:
            shown = word if len(word) <= 200 else word[:200] + "..."  # a hostile word is huge
            raise ExpansionError(f"failed to process {go_quote(shown)}: {exc.message}") from None
        return Expansion(value, words, run.matched, run.unmatched)

    def process_word(self, word: str, env: Mapping[str, str]) -> str:
        return self.process(word, env).value

    def process_words(self, word: str, env: Mapping[str, str]) -> list[str]:
        return self.process(word, env).words


class _Run:
    """State of one expansion: the text, a cursor and the names looked up."""

    def __init__(self, lex: ShellLex, text: str, env: Mapping[str, str]) -> None:
        self.lex = lex
        self.text = text
        self.pos = 0
        self.env = env
        self.raw_escapes = lex.raw_escapes
        self.matched: set[str] = set()
        self.unmatched: set[str] = set()
        self.depth = 0

    # -- cursor -----------------------------------------------------------------
    def peek(self, ahead: int = 0) -> str:
        pos = self.pos + ahead
        return self.text[pos] if pos < len(self.text) else ""

    def next(self) -> str:
        if self.pos < len(self.text):
            self.pos += 1
            return self.text[self.pos - 1]
        return ""

    def getenv(self, name: str) -> tuple[str, bool]:
        if name in self.env:
            self.matched.add(name)
            return self.env[name], True
        self.unmatched.add(name)
        return "", False

    # -- grammar ----------------------------------------------------------------
    def stop_on(self, stop: str | None, raw_escapes: bool) -> tuple[str, list[str]]:
        saved = self.raw_escapes
        self.raw_escapes = raw_escapes
        try:
            return self._stop_on(stop)
        finally:
            self.raw_escapes = saved

    def _stop_on(self, stop: str | None) -> tuple[str, list[str]]:
        result: list[str] = []
        words = _Words(self.lex.glue_heredoc)
        esc = self.lex.escape
        quotes = not self.lex.skip_process_quotes
        size = 0
        while self.pos < len(self.text):
            ch = self.text[self.pos]
            if stop is not None and ch == stop:
                self.pos += 1
                return "".join(result), words.result()
            if ch == "$":
                tmp = self.dollar()
                size += len(tmp)
                if size > MAX_WORD:
                    raise ExpansionError(f"expands to more than {MAX_WORD} characters")
                result.append(tmp)
                words.add_string(tmp)
            elif quotes and ch == "'":
                tmp = self.single_quote()
                result.append(tmp)
                words.add_raw(tmp)
            elif quotes and ch == '"':
                tmp = self.double_quote()
                size += len(tmp)
                if size > MAX_WORD:
                    raise ExpansionError(f"expands to more than {MAX_WORD} characters")
                result.append(tmp)
                words.add_raw(tmp)
            else:
                self.pos += 1
                if ch == esc:
                    if self.raw_escapes:
                        words.add_raw(ch)
                        result.append(ch)
                    ch = self.next()
                    if not ch:
                        break
                    words.add_raw(ch)
                else:
                    words.add_char(ch)
                result.append(ch)
        if stop is not None:
            raise ExpansionError(f"unexpected end of statement while looking for matching {stop}")
        return "".join(result), words.result()

    def single_quote(self) -> str:
        raw = self.lex.raw_quotes
        self.pos += 1
        end = self.text.find("'", self.pos)
        if end < 0:
            raise ExpansionError("unexpected end of statement while looking for matching single-quote")
        body = self.text[self.pos:end]
        self.pos = end + 1
        return f"'{body}'" if raw else body

    def double_quote(self) -> str:
        raw = self.lex.raw_quotes
        esc = self.lex.escape
        out = ['"'] if raw else []
        size = 0
        self.pos += 1
        while True:
            ch = self.peek()
            if not ch:
                raise ExpansionError("unexpected end of statement while looking for matching double-quote")
            if ch == '"':
                self.pos += 1
                if raw:
                    out.append(ch)
                return "".join(out)
            if ch == "$":
                out.append(self.dollar())
                size += len(out[-1])
                if size > MAX_WORD:
                    raise ExpansionError(f"expands to more than {MAX_WORD} characters")
                continue
            self.pos += 1
            if ch == esc:
                if self.raw_escapes:
                    out.append(ch)
                nxt = self.peek()
                if not nxt:
                    continue
                if nxt in ('"', "$", esc):
                    ch = self.next()
            out.append(ch)

    def name(self) -> str:
        start = self.pos
        text = self.text
        if start < len(text):
            ch = text[start]
            if _is_digit(ch):
                while self.pos < len(text) and _is_digit(text[self.pos]):
                    self.pos += 1
                return text[start:self.pos]
            if ch in _SPECIAL_PARAMS:
                self.pos += 1
                return ch
        while self.pos < len(text) and _is_name_char(text[self.pos]):
            self.pos += 1
        return text[start:self.pos]

    def dollar(self) -> str:
        if self.peek(1) != "{":
            return self._dollar()
        # ${a:-${b:-${c...}}} recurses once per level: bounded, so that a hostile
        # Dockerfile gets an error at its line instead of a RecursionError
        self.depth += 1
        try:
            if self.depth > MAX_NESTING:
                raise ExpansionError(f"variable substitutions nested more than {MAX_NESTING} deep")
            return self._dollar()
        finally:
            self.depth -= 1

    def _dollar(self) -> str:
        self.pos += 1
        skip_unset = self.lex.skip_unset
        if self.peek() != "{":
            name = self.name()
            if not name:
                return "$"
            value, found = self.getenv(name)
            if not found and skip_unset:
                return "$" + name
            return value
        self.pos += 1
        ch = self.peek()
        if not ch:
            raise ExpansionError("syntax error: missing '}'")
        if ch in "{}:":
            raise ExpansionError("syntax error: bad substitution")
        name = self.name()
        op = self.next()
        ops = op
        null_is_unset = False
        if not op:
            raise ExpansionError("syntax error: missing '}'")
        if op == "}":
            value, found = self.getenv(name)
            if not found and skip_unset:
                return "${%s}" % name
            return value
        if op == ":":
            null_is_unset = True
            op = self.next()
            ops += op
        if null_is_unset or (op and op in "+-?#%"):
            pattern_op = op in ("#", "%")
            if null_is_unset and pattern_op:
                raise ExpansionError(f"unsupported modifier ({ops}) in substitution")
            word = self._operand("}", pattern_op, "syntax error: missing '}'")
            value, found = self.getenv(name)
            if skip_unset and not found:
                return "${%s%s%s}" % (name, ops, word)
            empty = not found or (null_is_unset and value == "")
            if op == "-":
                return word if empty else value
            if op == "+":
                return "" if empty else word
            if op == "?":
                if not found:
                    raise ExpansionError(f"{name}: {word or 'is not allowed to be unset'}")
                if null_is_unset and value == "":
                    raise ExpansionError(f"{name}: {word or 'is not allowed to be empty'}")
                return value
            if op in ("#", "%"):
                greedy = word.startswith(op)
                if greedy:
                    word = word[1:]
                if op == "%":
                    return trim_suffix(word, value, greedy)
                return trim_prefix(word, value, greedy)
            raise ExpansionError(f"unsupported modifier ({ops}) in substitution")
        if op == "/":
            replace_all = self.peek() == "/"
            if replace_all:
                self.pos += 1
            pattern = self._operand("/", True, "syntax error: missing '/' in ${}")
            replacement = self._operand("}", True, "syntax error: missing '}'")
            value, found = self.getenv(name)
            if skip_unset and not found:
                return "${%s/%s/%s}" % (name, pattern, replacement)
            return _replace(pattern, value, replacement, replace_all, MAX_WORD)
        raise ExpansionError(f"unsupported modifier ({ops}) in substitution")

    def _operand(self, stop: str, raw_escapes: bool, eof_message: str) -> str:
        try:
            word, _ = self.stop_on(stop, raw_escapes)
        except ExpansionError:
            if self.pos >= len(self.text):
                raise ExpansionError(eof_message) from None
            raise
        return word


_PLAIN = re.compile(r"[^$'\"\\`]*\Z")


def expand_word(word: str, env: Mapping[str, str], escape: str = "\\") -> str:
    """Expand one word (ProcessWord): quotes removed, no word splitting."""
    if _PLAIN.match(word):
        return word
    return ShellLex(escape).process_word(word, env)


def expand_words(word: str, env: Mapping[str, str], escape: str = "\\") -> list[str]:
    """Expand, then split at unquoted blanks (ProcessWords)."""
    return ShellLex(escape).process_words(word, env)
