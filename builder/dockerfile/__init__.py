"""Dockerfile frontend: text -> typed instructions -> stage graph.

Public API (used by the build solver and `pybuild check`):

    parse_dockerfile(text, filename="Dockerfile") -> Dockerfile
    plan_stages(dockerfile, build_args, target, platform) -> StageGraph
    expand_word(word, env, escape) / expand_words(word, env, escape)
    ShellLex                 the BuildKit shell lexer with all its options
    parse_ast(text)          the raw BuildKit-compatible syntax tree (SyntaxTree.dump())
    DockerfileError          every error, formatted `file:line:col: message` + caret

It reads text and runs nothing.
"""

from .document import Dockerfile, parse_dockerfile
from .errors import DockerfileError, ExpansionError
from .expand import ShellLex, expand_word, expand_words
from .instructions import (Add, Arg, ArgDecl, Cmd, Copy, Entrypoint, Env, Expose, From, Healthcheck,
                           Instruction, Label, Maintainer, Mount, OnBuild, Run, Shell, StopSignal, User,
                           Volume, Workdir)
from .nodes import Heredoc, Node, SyntaxTree
from .parser import parse_ast
from .stages import Base, Platform, Stage, StageGraph, plan_stages, replay_onbuild

__all__ = [
    "Add", "Arg", "ArgDecl", "Base", "Cmd", "Copy", "Dockerfile", "DockerfileError", "Entrypoint",
    "Env", "ExpansionError", "Expose", "From", "Healthcheck", "Heredoc", "Instruction", "Label",
    "Maintainer", "Mount", "Node", "OnBuild", "Platform", "Run", "Shell", "ShellLex", "Stage",
    "StageGraph", "StopSignal", "SyntaxTree", "User", "Volume", "Workdir", "expand_word",
    "expand_words", "parse_ast", "parse_dockerfile", "plan_stages", "replay_onbuild",
]
