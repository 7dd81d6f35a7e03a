"""Every error class: message, file:line:column, the offending line and a caret.

Also: whatever text comes in, the parser raises DockerfileError or succeeds,
never a lark or Python exception.
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from builder.dockerfile import DockerfileError, parse_ast, parse_dockerfile, plan_stages
from layerstore.errors import PybuildError


def error_of(text: str, **plan) -> DockerfileError:
    with pytest.raises(DockerfileError) as info:
        df = parse_dockerfile(text, "Dockerfile")
        plan_stages(df, **plan)
    assert isinstance(info.value, PybuildError)
    return info.value


CASES = [
    # (text, message, line, column)
    ("FROM a\n\n  RUNN echo hi\n", 'unknown instruction "RUNN" (did you mean "RUN"?)', 3, 3),
    ("FROM a\nCOPPY . /\n", 'unknown instruction "COPPY" (did you mean "COPY"?)', 2, 1),
    ("FROM a\nFOOBAR x\n", 'unknown instruction "FOOBAR"', 2, 1),
    ("# escape=`\n# escape=\\\nFROM a\n", "only one escape parser directive can be used", 2, 1),
    ("# escape=x\nFROM a\n", "invalid escape token 'x' does not match ` or \\", 1, 10),
    ("FROM a\nENV PATH\n", "ENV must have two arguments", 2, 5),
    ("FROM a\nLABEL a=b c d=e\n", "Syntax error - can't find = in \"c\". Must be of the form: name=value", 2, 11),
    ("FROM a\nRUN [\"a\", 1]\n", "when using JSON array syntax, arrays must be comprised of strings only", 2, 5),
    ("FROM a\nRUN <<EOF\necho\n", "unterminated heredoc", 2, 1),
    ("# just a comment\n\n", "file with no instructions", 2, None),
    ("FROM a b\n", "FROM requires either one or three arguments", 1, 1),
    ("FROM a AS\n", "FROM requires either one or three arguments", 1, 1),
    ("FROM a\nCOPY --form=x a b\n", "unknown flag: --form", 2, 6),
    ("FROM a\nCOPY --from a b\n", "missing a value on flag: from", 2, 6),
    ("FROM a\nCOPY --from=a --from=b a b\n", "duplicate flag specified: from", 2, 6),
    ("FROM a\nCOPY --link=maybe a b\n", "expecting boolean value for flag link, not: maybe", 2, 6),
    ("FROM a\nCOPY onlyone\n", "COPY requires at least two arguments, but only one was provided", 2, 1),
    ("FROM a\nRUN --mount=type=nfs,target=/x true\n", 'unsupported mount type "nfs"', 2, 5),
    ("FROM a\nRUN --mount=type=cache,targett=/x true\n", "unexpected key 'targett'", 2, 5),
    ("FROM a\nRUN --network=bridge true\n", "network mode 'bridge' not supported", 2, 5),
    ("FROM a\nSHELL /bin/sh -c\n", "SHELL requires the arguments to be in JSON form", 2, 1),
    ("FROM a\nHEALTHCHECK CONNECT tcp\n", 'Unknown type "CONNECT" in HEALTHCHECK (try CMD)', 2, 13),
    ("FROM a\nHEALTHCHECK NONE x\n", "HEALTHCHECK NONE takes no arguments", 2, 1),
    ("FROM a\nHEALTHCHECK --interval=soon CMD true\n", 'invalid duration for --interval: "soon"', 2, 13),
    ("FROM a\nHEALTHCHECK --retries=-1 CMD true\n", "--retries cannot be negative (-1)", 2, 13),
    ("FROM a\nONBUILD ONBUILD RUN x\n", "Chaining ONBUILD via `ONBUILD ONBUILD` isn't allowed", 2, 1),
    ("FROM a\nONBUILD FROM b\n", "FROM isn't allowed as an ONBUILD trigger", 2, 1),
    ("FROM a\nUSER\n", "USER requires exactly one argument", 2, 1),
    ("FROM a\nEXPOSE\n", "EXPOSE requires at least one argument", 2, 1),
    ("FROM a\nARG =x\n", "ARG names can not be blank", 2, 1),
    ("RUN true\nFROM a\n", "no build stage in current context", 1, 1),
    ("FROM a\nENV X=${Y\n", "syntax error: missing '}'", 2, 1),
    ("FROM a\nWORKDIR ${X:=y}\n", "unsupported modifier (:=) in substitution", 2, 1),
    ("FROM a\nARG X\nUSER ${X:?must be set}\n", "X: must be set", 3, 1),
    ("ARG B\nFROM $B\n", "base name ($B) should not be blank", 2, 1),
    ("FROM b AS a\nFROM a AS b\n", "circular dependency detected on stage: a", 1, 1),
    ("FROM a\nCOPY --from=3 x y\n", "invalid stage index 3", 2, 1),
]


@pytest.mark.parametrize("text,message,line,column", CASES, ids=[c[1][:40] for c in CASES])
def test_error_message_and_position(text, message, line, column):
    err = error_of(text)
    assert message in err.message
    assert (err.line, err.column) == (line, column)
    rendered = str(err).split("\n")
    where = f"Dockerfile:{line}" + (f":{column}" if column else "")
    assert rendered[0] == f"{where}: {err.message}"
    physical = text.split("\n")[line - 1]
    if physical:
        assert rendered[1] == physical
        assert rendered[2] == " " * (column - 1) + "^"


def test_caret_follows_tabs():
    err = error_of("FROM a\n\t\tRUNN x\n")
    assert str(err).split("\n")[1:] == ["\t\tRUNN x", "\t\t^"]


def test_unknown_target_names_the_target():
    err = error_of("FROM a AS x\n", target="y")
    assert str(err) == 'Dockerfile: target stage "y" could not be found'


def test_line_too_long_points_at_the_line():
    with pytest.raises(DockerfileError) as info:
        parse_ast("FROM a\nRUN " + "x" * 70000 + "\n")
    assert info.value.line == 2
    assert "greater than max allowed size of 65535" in str(info.value)


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet=st.sampled_from(list("FROMRUNCOPYADDENVARGonbuild \t\n\\`#=\"'$[]{},:-<EOF>-1")),
               max_size=120))
def test_arbitrary_text_gives_dockerfile_errors_only(text):
    try:
        df = parse_dockerfile(text)
        plan_stages(df)
    except DockerfileError as exc:
        assert str(exc).startswith("Dockerfile")
