"""Dockerfile text -> SyntaxTree, with BuildKit's exact line handling.

The physical-line layer is done here because it is context-sensitive: parser
directives at the top (`# escape=` changes the continuation character),
continuations that skip comment and blank lines, and heredoc bodies whose end
depends on a word inside the instruction.  Each assembled logical line is
then parsed by the lark grammar (grammar/dockerfile.lark) and turned into a
`Node` with the argument splitting of its keyword.
"""

from __future__ import annotations

import re

from layerstore import jsonlimits

from .errors import DockerfileError, ExpansionError
from .expand import ShellLex
from .gotext import GO_SPACE_SET, go_quote, trim_left_space, trim_space
from .nodes import Directive, Heredoc, Node, SyntaxTree, Warning
from .syntax import lark, line_parser

MAX_LINE_BYTES = 65535
_DIRECTIVE = re.compile(r"#[\t\n\f\r ]*([a-zA-Z][a-zA-Z0-9]*)[\t\n\f\r ]*=[\t\n\f\r ]*(.+?)[\t\n\f\r ]*\Z")
_DIRECTIVES = ("syntax", "escape", "check")
_BLANKS = re.compile(r"[\t\v\f\r ]+")
_HEREDOC_WORD = re.compile(r"([0-9]*)<<(-?)[\t\n\f\r ]*([^<]*)\Z")
_HEREDOC_KEYWORDS = ("run", "copy", "add")
_CONTINUATION = {
    "\\": re.compile(r"(?<!\\)\\[ \t]*\Z"),
    "`": re.compile(r"(?<!`)`[ \t]*\Z"),
}


class _LineError(Exception):
    """A problem found while building a node; the reader adds the position."""

    def __init__(self, message: str, column: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.column = column


def parse_ast(source: str | bytes, filename: str = "Dockerfile") -> SyntaxTree:
    """Parse like BuildKit's `parser.Parse`; raises DockerfileError."""
    if isinstance(source, bytes):
        text = source.decode("utf-8", "surrogateescape")
    else:
        text = source
    if text.startswith("\ufeff"):
        text = text[1:]
    parts = text.split("\n")
    raw = [p + "\n" for p in parts[:-1]]
    if parts[-1]:
        raw.append(parts[-1])
    physical = [r.rstrip("\r\n") for r in raw]
    return _Reader(filename, raw, physical).run()


class _Reader:
    def __init__(self, filename: str, raw: list[str], physical: list[str]) -> None:
        self.filename = filename
        self.raw = raw
        self.physical = physical
        self.escape = "\\"
        self.continuation = _CONTINUATION["\\"]
        self.directives: dict[str, Directive] = {}
        self.directives_done = False
        self.warnings: list[Warning] = []

    def error(self, message: str, line: int, column: int | None = None) -> DockerfileError:
        src = self.physical[line - 1] if 0 < line <= len(self.physical) else None
        return DockerfileError(message, self.filename, line, column, src)

    def directive(self, line: str, lineno: int) -> None:
        if self.directives_done:
            return
        m = _DIRECTIVE.match(line)
        key = m.group(1).lower() if m else ""
        if key not in _DIRECTIVES:
            self.directives_done = True
            return
        if key in self.directives:
            raise self.error(f"only one {key} parser directive can be used", lineno,
                             len(line) - len(line.lstrip()) + 1)
        value = m.group(2)
        if key == "escape":
            if value not in ("`", "\\"):
                raise self.error(f"invalid escape token '{value}' does not match ` or \\", lineno,
                                 self.physical[lineno - 1].find(value) + 1)
            self.escape = value
            self.continuation = _CONTINUATION[value]
        self.directives[key] = Directive(key, value, lineno)

    def trim_continuation(self, line: str) -> tuple[str, bool]:
        m = self.continuation.search(line)
        if m:
            return line[:m.start()], False
        return line, True

    def run(self) -> SyntaxTree:
        raw, physical = self.raw, self.physical
        for i, line in enumerate(physical):
            if len(line) * 4 > MAX_LINE_BYTES and len(line.encode("utf-8", "surrogateescape")) > MAX_LINE_BYTES:
                raise self.error(f"dockerfile line greater than max allowed size of {MAX_LINE_BYTES}", i + 1)
        nodes: list[Node] = []
        n = len(physical)
        i = 0
        while i < n:
            first = trim_left_space(physical[i])
            self.directive(first, i + 1)
            i += 1
            start = i
            if first.startswith("#"):
                continue
            line, done = self.trim_continuation(first)
            if done and not line:
                continue
            column = len(physical[start - 1]) - len(first) + 1
            empty_continuation = False
            while not done and i < n:
                cont = physical[i]
                i += 1
                stripped = trim_left_space(cont)
                if stripped.startswith("#"):
                    continue
                if not stripped:
                    empty_continuation = True
                    continue
                cont, done = self.trim_continuation(cont)
                line += cont
            if empty_continuation:
                self.warnings.append(Warning(f"Empty continuation line found in: {line}", i))
            try:
                node = build_node(line, self.escape)
            except _LineError as exc:
                col = column
                if exc.column is not None and column + exc.column - 1 <= len(physical[start - 1]):
                    col = column + exc.column - 1
                raise self.error(exc.message, start, col) from None
            target = node.sub if node.name == "onbuild" and node.sub is not None else node
            if "<<" in line and target.name in _HEREDOC_KEYWORDS and not target.json:
                try:
                    docs = heredocs_from_line(line)
                except ExpansionError as exc:
                    raise self.error(exc.message, start, column) from None
                for doc in docs:
                    body: list[str] = []
                    terminated = False
                    while i < n:
                        candidate = physical[i]
                        if doc.chomp:
                            candidate = candidate.lstrip("\t")
                        if candidate == doc.name:
                            terminated = True
                            i += 1
                            break
                        body.append(raw[i])
                        i += 1
                    if not terminated:
                        raise self.error(f"unterminated heredoc {doc.name!r}", start, column)
                    doc.content = "".join(body)
                    node.heredocs.append(doc)
            node.original = line
            node.start_line, node.end_line, node.column = start, i, column
            nodes.append(node)
        if not nodes:
            raise self.error("file with no instructions", max(n, 1) if n else 1)
        return SyntaxTree(self.filename, nodes, self.directives, self.escape, self.warnings, physical)


# ---- one logical line -> Node -------------------------------------------------

def build_node(line: str, escape: str) -> Node:
    """Parse one logical line with the grammar and split its arguments."""
    text = trim_space(line)
    offset = line.find(text[:1]) if text else 0
    try:
        tree = line_parser().parse(text)
        # a flag such as `--""` is a bare `--` once its quotes are removed: it ends the flags
        while (bare := _quoted_dashdash(tree)) is not None:
            text = text[:bare.start_pos] + " --" + text[bare.end_pos:]
            tree = line_parser().parse(text)
    except lark.exceptions.UnexpectedInput as exc:   # the grammar accepts any line; be safe
        raise _LineError(f"syntax error: {exc.__class__.__name__}", offset + exc.column) from None
    if not tree.children:
        return Node(keyword="", values=[""])
    return _convert(tree.children[0], escape, offset)


def _quoted_dashdash(tree: lark.Tree) -> lark.Token | None:
    for token in tree.scan_values(lambda v: isinstance(v, lark.Token) and v.type == "FLAG"):
        if _flag_word(trim_left_space(token)) == "--":
            return token
    return None


def _convert(tree: lark.Tree, escape: str, offset: int) -> Node:
    kind = tree.data
    children = tree.children
    keyword = children[0]
    node = Node(keyword=str(keyword))
    args: list = []
    for child in children[1:]:
        if isinstance(child, lark.Token) and child.type == "FLAG":
            node.flags.append(_flag_word(trim_left_space(child)))
        else:
            args.append(child)
    if kind == "onbuild":
        if args:
            node.sub = _convert(args[0], escape, offset)
        return node
    if kind == "unknown":
        node.values = [""]
        return node
    prefix: list[str] = []
    if kind == "healthcheck":
        if not args:
            return node
        prefix = [trim_left_space(args[0])]
        args = args[1:]
        kind = "cmd"
    if kind in ("from_", "expose"):
        node.values = [trim_left_space(t) for t in args]
    elif kind in ("add", "copy", "volume"):
        if args and isinstance(args[0], lark.Tree):
            node.values, node.json = _json_values(args[0]), True
        elif args:
            words = [trim_left_space(t) for t in args]
            if words[0].startswith("["):
                rest = trim_space(str(args[0]) + "".join(str(t) for t in args[1:]))
                _reject_non_strings(rest, _col(args[0], offset))
            node.values = words
    elif kind in ("run", "cmd", "entrypoint", "shell"):
        values: list[str] = []
        if args and isinstance(args[0], lark.Tree):
            values, node.json = _json_values(args[0]), True
        elif args:
            rest = trim_space(args[0])
            decoded = _reject_non_strings(rest, _col(args[0], offset))
            if decoded is not None:
                values, node.json = decoded, True
            else:
                values = [rest]
        node.values = prefix + values
    elif kind in ("env", "label"):
        if args:
            rest = trim_space(args[0])
            node.values = parse_name_val(rest, kind.upper(), escape, _col(args[0], offset))
    elif kind == "arg":
        if args:
            node.values = parse_words(trim_space(args[0]), escape)
    else:  # maintainer, user, workdir, stopsignal
        if args:
            node.values = [trim_space(args[0])]
    return node


def _col(token: lark.Token, offset: int) -> int:
    """1-based column, within the logical line, where a token's text (not its blanks) starts."""
    return offset + token.start_pos + len(token) - len(trim_left_space(token)) + 1


def _json_values(tree: lark.Tree) -> list[str]:
    return jsonlimits.loads(tree.children[0].value, "JSON array")


def _reject_non_strings(rest: str, column: int) -> list[str] | None:
    """A `[...]` that is JSON: its strings, or an error if it holds anything else."""
    if not rest.startswith("["):
        return None
    try:
        decoded = jsonlimits.loads(rest, "JSON array")
    except jsonlimits.TooDeep:  # nested arrays hold no strings (and must not recurse here)
        raise _LineError("when using JSON array syntax, arrays must be comprised of strings only",
                         column) from None
    except ValueError:
        return None
    if not isinstance(decoded, list):
        return None
    if all(isinstance(v, str) for v in decoded):
        return decoded
    raise _LineError("when using JSON array syntax, arrays must be comprised of strings only", column)


def _flag_word(word: str) -> str:
    """A builder flag with quotes removed and backslash escapes resolved (bytewise, as Go)."""
    if word.isascii():
        units = word
    else:
        units = "".join(map(chr, word.encode("utf-8", "surrogateescape")))
    out: list[str] = []
    quote = ""
    i, n = 0, len(units)
    while i < n:
        ch = units[i]
        i += 1
        if quote:
            if ch == quote:
                quote = ""
                continue
        elif ch in "'\"":
            quote = ch
            continue
        if ch == "\\":
            if i == n:
                continue
            ch = units[i]
            i += 1
        out.append(ch)
    if word.isascii():
        return "".join(out)
    # back from bytes to text: `--from=stagé`, `--chown=josé` must not turn into mojibake
    return "".join(out).encode("latin-1").decode("utf-8", "surrogateescape")


def parse_words(rest: str, escape: str) -> list[str]:
    """BuildKit's parseWords: split on blanks, keeping quotes and escapes as written."""
    words: list[str] = []
    word: list[str] = []
    blank_ok = False
    quote = ""
    in_word = False
    i, n = 0, len(rest)
    while i < n:
        ch = rest[i]
        if not in_word:
            if ch in GO_SPACE_SET:
                i += 1
                continue
            in_word = True
        if not quote and ch in GO_SPACE_SET:
            if blank_ok or word:
                words.append("".join(word))
            word, blank_ok, in_word = [], False, False
            i += 1
            continue
        if not quote and ch in "'\"":
            quote, blank_ok = ch, True
        elif quote and ch == quote:
            quote = ""
        elif ch == escape and quote != "'":   # escapes work unquoted and in "..."
            if i + 1 == n:
                i += 1
                continue
            word.append(ch)
            i += 1
            ch = rest[i]
        word.append(ch)
        i += 1
    if in_word and (blank_ok or word):
        words.append("".join(word))
    return words


def parse_name_val(rest: str, key: str, escape: str, column: int = 1) -> list[str]:
    """ENV/LABEL arguments as key, value, separator triples (legacy `K V` or `K=V ...`)."""
    words = parse_words(rest, escape)
    if not words:
        return []
    if "=" not in words[0]:
        parts = _BLANKS.split(rest, maxsplit=1)
        if len(parts) < 2:
            raise _LineError(f"{key} must have two arguments", column)
        return [parts[0], parts[1], ""]
    values: list[str] = []
    for word in words:
        if "=" not in word:
            raise _LineError(f"Syntax error - can't find = in {go_quote(word)}. "
                             "Must be of the form: name=value", column + max(rest.find(word), 0))
        k, v = word.split("=", 1)
        values += [k, v, "="]
    return values


_HEREDOC_LEX = ShellLex("\\", raw_quotes=True, raw_escapes=True, skip_unset=True, glue_heredoc=True)
_NAME_LEX = ShellLex("\\", skip_unset=True)
_NAME_LEX_RAW = ShellLex("\\", skip_unset=True, raw_quotes=True)


def heredocs_from_line(line: str) -> list[Heredoc]:
    """The heredocs a logical line opens, in order (no error if the line does not lex)."""
    try:
        words = _HEREDOC_LEX.process_words(line, {})
    except ExpansionError:
        return []
    docs = []
    for word in words:
        doc = parse_heredoc(word)
        if doc is not None:
            docs.append(doc)
    return docs


def parse_heredoc(word: str) -> Heredoc | None:
    """`[n]<<[-]NAME` -> Heredoc; quoting any part of NAME turns off expansion."""
    m = _HEREDOC_WORD.match(word)
    if not m or not m.group(3):
        return None
    fd, chomp, rest = m.groups()
    names = _NAME_LEX.process_words(rest, {})
    if len(names) != 1:
        return None
    raw = _NAME_LEX_RAW.process_words(rest, {})
    if len(raw) != 1:
        raise ExpansionError(f"internal lexing of heredoc produced inconsistent results: {rest}")
    quotes = names[0].count("'") + names[0].count('"')
    raw_quotes = raw[0].count("'") + raw[0].count('"')
    return Heredoc(name=names[0], file_descriptor=int(fd or 0), expand=quotes == raw_quotes,
                   chomp=chomp == "-")


def detect_directive(source: str | bytes, key: str, any_format: bool = False) -> tuple[str, str, int] | None:
    """Find `# key=value` at the top of a file (BuildKit's DetectSyntax/ParseDirective).

    Returns (ref, full value, 1-based line) or None.  A leading `#!` line is
    skipped; with `any_format`, `//key=value` comments and a JSON object
    `{"key": ...}` are accepted too (as BuildKit does for `syntax`).
    """
    text = source.decode("utf-8", "surrogateescape") if isinstance(source, bytes) else source
    if text.startswith("\ufeff"):
        text = text[1:]
    lines = text.split("\n")
    offset = 0
    if lines and lines[0].startswith("#!"):
        lines, offset = lines[1:], 1
    for prefix in ("#", "//") if any_format else ("#",):
        pattern = re.compile(re.escape(prefix) + _DIRECTIVE.pattern[1:])
        for i, line in enumerate(lines):
            m = pattern.match(line)
            if not m or m.group(1).lower() not in _DIRECTIVES:
                break
            if m.group(1).lower() == key:
                value = m.group(2)
                return value.split(" ", 1)[0], value, i + 1 + offset
    if any_format:
        try:
            doc = jsonlimits.loads(text, "Dockerfile")
        except ValueError:
            return None
        if isinstance(doc, dict) and isinstance(doc.get(key), str):
            return doc[key], doc[key], offset
    return None
