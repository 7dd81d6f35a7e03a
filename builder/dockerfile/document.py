"""A whole Dockerfile as typed instructions: `parse_dockerfile`."""

from __future__ import annotations

from dataclasses import dataclass, field

from .errors import DockerfileError
from .instructions import Arg, From, Instruction, to_instruction
from .nodes import Directive, SyntaxTree, Warning
from .parser import parse_ast


@dataclass
class Dockerfile:
    """Directives, the escape character and the instructions in file order."""

    filename: str
    instructions: list[Instruction]
    directives: dict[str, Directive] = field(default_factory=dict)
    escape: str = "\\"
    warnings: list[Warning] = field(default_factory=list)
    tree: SyntaxTree | None = None

    @property
    def syntax(self) -> str | None:
        d = self.directives.get("syntax")
        return d.value if d else None

    def source_line(self, line: int) -> str | None:
        if self.tree and 0 < line <= len(self.tree.lines):
            return self.tree.lines[line - 1]
        return None


def parse_dockerfile(text: str | bytes, filename: str = "Dockerfile") -> Dockerfile:
    """Parse and type-check a Dockerfile; raises DockerfileError with file:line:column."""
    tree = parse_ast(text, filename)
    instructions = [to_instruction(node, tree.escape, filename, tree.lines) for node in tree.nodes]
    for ins in instructions:
        if isinstance(ins, From):
            break
        if not isinstance(ins, Arg):
            raise DockerfileError(f"no build stage in current context: {ins.keyword} before the first FROM",
                                  filename, ins.line, ins.column, tree.lines[ins.line - 1])
    return Dockerfile(filename, instructions, tree.directives, tree.escape, list(tree.warnings), tree)
