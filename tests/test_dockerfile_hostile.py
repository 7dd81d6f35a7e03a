"""Hostile Dockerfiles that once made the frontend recurse without bound: each is an
error at its file:line:column, or a plan, never a RecursionError."""

from __future__ import annotations

import pytest

from builder.dockerfile import DockerfileError, parse_dockerfile, plan_stages
from builder.dockerfile.expand import MAX_NESTING, expand_word

DEEP = 5000


def error_of(text: str, **plan) -> DockerfileError:
    with pytest.raises(DockerfileError) as info:
        plan_stages(parse_dockerfile(text, "Dockerfile"), **plan)
    return info.value


@pytest.mark.parametrize("word", [
    "${A:-" * DEEP + "x" + "}" * DEEP,
    '"${A:+"' * DEEP + "x" + '"}' * DEEP,
    "${A/" + "${B:-" * DEEP + "p" + "}" * DEEP + "/r}",
], ids=["default", "quoted", "pattern"])
def test_deeply_nested_substitutions_are_located_errors(word):
    err = error_of(f"FROM scratch\nARG A=1\nENV X={word}\n")
    assert (err.filename, err.line, err.column) == ("Dockerfile", 3, 1)
    assert f"nested more than {MAX_NESTING} deep" in err.message
    first = str(err).splitlines()[0]
    assert first.startswith("Dockerfile:3:1: ") and len(first) < 400


def test_nesting_within_the_bound_still_expands():
    n = MAX_NESTING - 1
    assert expand_word("${A:-" * n + "deep" + "}" * n, {}) == "deep"
    assert expand_word("${A:-" * n + "deep" + "}" * n, {"A": "set"}) == "set"


def test_deeply_nested_json_array_is_a_located_error():
    err = error_of("FROM scratch\nCMD " + "[" * DEEP + "]" * DEEP + "\n")
    assert (err.line, err.column) == (2, 5)
    assert "arrays must be comprised of strings only" in err.message


def test_thousands_of_chained_stages_plan():
    n = 3000
    chain = "FROM scratch AS s0\n" + "".join(f"FROM s{i - 1} AS s{i}\n" for i in range(1, n))
    assert len(plan_stages(parse_dockerfile(chain)).needed()) == n
    copies = "FROM scratch AS s0\nCOPY a /a\n" + "".join(
        f"FROM scratch AS s{i}\nCOPY --from=s{i - 1} /a /a\n" for i in range(1, n))
    graph = plan_stages(parse_dockerfile(copies))
    assert [s.name for s in graph.needed()] == [f"s{i}" for i in range(n)]
    loop = "FROM s2 AS s0\n" + "".join(f"FROM s{i - 1} AS s{i}\n" for i in range(1, 3))
    assert "circular dependency" in error_of(loop).message
    cyc = ("FROM scratch AS a\nCOPY --from=c /x /x\nFROM scratch AS b\nCOPY --from=a /x /x\n"
           "FROM scratch AS c\nCOPY --from=b /x /x\n")
    assert "circular dependency detected on stage: a (a -> c -> b -> a)" in error_of(cyc).message
