"""The syntax tree of a Dockerfile as BuildKit's parser sees it.

One `Node` per instruction: the keyword as written, its builder flags, its
argument values (already split the way each keyword wants), whether the JSON
form was used, heredocs and the source span.  `dump` renders the tree in
BuildKit's S-expression test format so it can be compared with the reference.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from .gotext import go_quote, trim_space


@dataclass
class Heredoc:
    """A `<<NAME` here-document attached to RUN, COPY or ADD."""

    name: str
    content: str = ""
    file_descriptor: int = 0
    expand: bool = True
    chomp: bool = False

    def body(self) -> str:
        """The content with `<<-` tab stripping applied (leading tabs of every line)."""
        if not self.chomp:
            return self.content
        return "\n".join(line.lstrip("\t") for line in self.content.split("\n"))

    def render(self, env: Mapping[str, str], escape: str = "\\") -> str:
        """The bytes a build writes: chomped, then expanded unless the name was quoted.

        Expansion keeps quote characters (BuildKit's SkipProcessQuotes) but
        honours `$VAR` and escapes, so `\\$` gives `$` and `\\<newline>` a newline.
        """
        from .expand import ShellLex

        text = self.body()
        if not self.expand:
            return text
        return ShellLex(escape, skip_process_quotes=True).process_word(text, env)


@dataclass
class Node:
    """One instruction (or the instruction wrapped by ONBUILD)."""

    keyword: str                      # as written, e.g. "from" or "RUN"
    flags: list[str] = field(default_factory=list)
    values: list[str] = field(default_factory=list)
    json: bool = False
    sub: Node | None = None           # ONBUILD's trigger
    heredocs: list[Heredoc] = field(default_factory=list)
    original: str = ""
    start_line: int = 0
    end_line: int = 0
    column: int = 1

    @property
    def name(self) -> str:
        """The keyword in lower case, the way instructions are dispatched."""
        return self.keyword.lower()

    def dump(self) -> str:
        text = self.keyword.lower()
        if self.flags:
            text += " [" + " ".join(go_quote(f) for f in self.flags) + "]"
        if self.sub is not None:
            text += " (" + self.sub.dump() + ")"
        for value in self.values:
            text += " " + go_quote(value)
        return trim_space(text)


@dataclass
class Directive:
    name: str
    value: str
    line: int


@dataclass
class Warning:
    message: str
    line: int


@dataclass
class SyntaxTree:
    """The parsed file: directives, the escape character, nodes and warnings."""

    filename: str
    nodes: list[Node]
    directives: dict[str, Directive]
    escape: str = "\\"
    warnings: list[Warning] = field(default_factory=list)
    lines: list[str] = field(default_factory=list)   # physical lines, for error carets

    def dump(self) -> str:
        return "\n".join(f"({node.dump()})" for node in self.nodes)
