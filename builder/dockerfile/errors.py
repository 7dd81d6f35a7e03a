"""Dockerfile errors that point at the text: file, line, column and a caret.

The first line of the message is the usual one-line pybuild error; the
offending source line and a caret under the column follow so that a person
can see the mistake without opening the file.
"""

from __future__ import annotations

from layerstore.errors import PybuildError


class DockerfileError(PybuildError):
    """Bad Dockerfile input, located as `file:line:column`."""

    def __init__(self, message: str, filename: str = "Dockerfile", line: int | None = None,
                 column: int | None = None, source_line: str | None = None) -> None:
        self.message = message
        self.filename = filename
        self.line = line
        self.column = column
        self.source_line = source_line
        super().__init__(self._render())

    def _render(self) -> str:
        if not self.filename:
            return self.message
        where = self.filename
        if self.line is not None:
            where += f":{self.line}"
            if self.column is not None:
                where += f":{self.column}"
        text = f"{where}: {self.message}"
        if self.source_line is not None and self.line is not None:
            src = self.source_line.rstrip("\r\n")
            col = max(1, self.column or 1)
            # keep tabs in the caret's indent so it lines up under the column
            pad = "".join(c if c == "\t" else " " for c in src[: col - 1])
            text += f"\n{src}\n{pad}^"
        return text


class ExpansionError(DockerfileError):
    """A `$VAR`/`${VAR...}` word that cannot be expanded (bad syntax, `${X:?}`).

    Raised by the lexer without a position; the stage planner re-raises it as a
    DockerfileError at the instruction that holds the word.
    """

    def __init__(self, message: str, filename: str = "", line: int | None = None,
                 column: int | None = None, source_line: str | None = None) -> None:
        super().__init__(message, filename, line, column, source_line)
