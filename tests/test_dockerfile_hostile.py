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


# --- round 2: pattern blowups, growth, flag text, numeric bounds ----------------------

import random  # noqa: E402
import re  # noqa: E402
import resource  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
from hangs import deadline  # noqa: E402
from pathlib import Path  # noqa: E402

REPO = Path(__file__).resolve().parent.parent




@pytest.mark.parametrize("word,expected", [
    ("${X/" + "*a" * 12 + "*b/r}", "a" * 40),          # no b: no match, value kept
    ("${X##" + "*a" * 12 + "*b}", "a" * 40),
    ("${X#" + "*a" * 12 + "}", "a" * 28),
    ("${X%%" + "a*" * 12 + "b}", "a" * 40),
    ("${X//" + "?*" * 12 + "/r}", "r"),
])
def test_pattern_substitutions_do_not_backtrack(word, expected):
    with deadline(20):
        assert expand_word(word, {"X": "a" * 40}) == expected


def _ref_regex(pattern: str, greedy: bool, anchored: bool) -> re.Pattern:
    from builder.dockerfile.expand import shell_pattern_regex
    return re.compile(shell_pattern_regex(pattern, greedy, anchored))


def _ref_replace_all(pattern: str, value: str, rep: str) -> str:
    """Go's ReplaceAllString on BuildKit's regex: an empty match right after a match is
    not replaced."""
    rx = _ref_regex(pattern, True, False)
    out, pos, last = [], 0, 0
    while pos <= len(value):
        m = rx.search(value, pos)
        if not m:
            break
        out.append(value[last:m.start()])
        if m.end() > last or m.start() == 0:
            out.append(rep)
        last = m.end()
        pos = pos + 1 if pos + 1 > m.end() else m.end()
    return "".join(out) + value[last:]


def test_pattern_substitutions_agree_with_buildkits_regexes():
    """The linear matcher gives what Go's leftmost-first engine gives for BuildKit's
    translation, newlines in the value included (neither `*` nor `?` matches one)."""
    rng = random.Random(11)
    for _ in range(4000):
        pat = "".join(rng.choice("ab*?*") for _ in range(rng.randint(0, 6)))
        val = "".join(rng.choice("ab\n") for _ in range(rng.randint(0, 9)))
        env = {"V": val, "P": pat}
        for op, greedy in (("#", False), ("##", True)):
            m = _ref_regex(pat, greedy, True).search(val)
            assert expand_word("${V%s$P}" % op, env) == (val[m.end():] if m else val), (op, pat, val)
        for op, greedy in (("%", False), ("%%", True)):
            from builder.dockerfile.expand import reverse_pattern
            m = _ref_regex(reverse_pattern(pat), greedy, True).search(val[::-1])
            want = (val[::-1][m.end():] if m else val[::-1])[::-1]
            assert expand_word("${V%s$P}" % op, env) == want, (op, pat, val)
        m = _ref_regex(pat, True, False).search(val)
        assert expand_word("${V/$P/X}", env) == (val[:m.start()] + "X" + val[m.end():] if m else val)
        assert expand_word("${V//$P/X}", env) == _ref_replace_all(pat, val, "X"), (pat, val)


def test_go_replace_all_rules():
    # an empty match right after a match is not replaced (Python's re.sub would: "rr")
    assert expand_word("${V//*/r}", {"V": "abc"}) == "r"
    # a replacement that holds `$0` / `$$` after expansion is a Go template
    assert expand_word("${V//?/$R}", {"V": "ab", "R": "<$0>"}) == "<a><b>"
    assert expand_word("${V//a/$R}", {"V": "aba", "R": "$$"}) == "$b$"
    assert expand_word("${V/a/$R}", {"V": "aba", "R": "$$"}) == "$$ba"   # first only: literal


def _limited(code: str, timeout: int = 120) -> subprocess.CompletedProcess:
    """Run `code` in a child with 2 GiB of address space (the old frontend asked for
    terabytes), returning its outcome."""
    def limit():
        resource.setrlimit(resource.RLIMIT_AS, (2 << 30, 2 << 30))
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=timeout, preexec_fn=limit, cwd=REPO,
                          env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"})


@pytest.mark.parametrize("lines", [
    "ARG a=aaaaaaaaaaaaaaaa\n" + "ARG a=$a$a$a$a\n" * 20 + "FROM scratch\n",
    "FROM scratch\nARG a=aaaaaaaaaaaaaaaa\n" + "ARG a=$a$a$a$a\n" * 20 + "ENV b=$a\n",
    "FROM scratch\nARG a=" + "x" * 4000 + "\nENV b=${a//?/$a}\n",
], ids=["meta-args", "stage-args", "replace-all"])
def test_expansion_growth_is_bounded(lines):
    code = ("import sys\nfrom builder.dockerfile import parse_dockerfile, plan_stages, DockerfileError\n"
            f"try:\n    plan_stages(parse_dockerfile({lines!r}))\nexcept DockerfileError as e:\n"
            "    print(str(e).splitlines()[0]); sys.exit(3)\n")
    proc = _limited(code)
    assert proc.returncode == 3, proc.stderr[-500:]
    assert "1048576 characters" in proc.stdout
    assert proc.stdout.startswith("Dockerfile:")


def test_flag_values_keep_their_non_ascii_text():
    df = parse_dockerfile("FROM scratch AS été\nFROM scratch\n"
                          "COPY --from=été --chown=josé --exclude=café.txt a b\n")
    copy = df.instructions[-1]
    assert (copy.from_, copy.chown, copy.exclude) == ("été", "josé", ["café.txt"])
    graph = plan_stages(df)
    assert graph.stages[1].depends_on == [0] and graph.stages[1].images == []


@pytest.mark.parametrize("ref", ["\u00b2", "\u0663", "\uff11"])
def test_non_ascii_digits_are_names_not_stage_indexes(ref):
    """Go's Atoi takes ASCII digits only: `²` is an image name (int() crashed on it, and
    `٣` meant stage 3), and not a valid one: a build stops at it before any step."""
    df = parse_dockerfile(f"FROM scratch\nFROM scratch AS t\nCOPY --from={ref} a b\n"
                          "FROM scratch\nFROM scratch\n")
    graph = plan_stages(df, target="t", lint=True)
    assert graph.stages[1].images == [ref] and graph.stages[1].depends_on == []
    with pytest.raises(DockerfileError, match="invalid reference format") as info:
        plan_stages(df, target="t")
    assert info.value.line == 3


@pytest.mark.parametrize("line,message", [
    ("HEALTHCHECK --interval=99999999999999999999h CMD x", "invalid duration for --interval"),
    ("HEALTHCHECK --timeout=2562048h CMD x", "invalid duration for --timeout"),
    ("HEALTHCHECK --retries=99999999999 CMD x", "invalid value for --retries"),
])
def test_healthcheck_numbers_out_of_range_are_errors(line, message):
    err = error_of(f"FROM scratch\n{line}\n")
    assert err.line == 2 and message in err.message


def test_stopsignal_out_of_range():
    from builder.dockerfile import instructions as ins
    from builder.steps import meta
    for bad in ("0", "99999999999999999999999"):
        with pytest.raises(meta.MetaError):
            meta.apply(ins.StopSignal(value=bad), meta.ContainerConfig())
    assert meta.apply(ins.StopSignal(value="15"), meta.ContainerConfig()).StopSignal == "15"


@pytest.mark.parametrize("value", ["../../x", "linux/amd64/v8/extra", "linux/", "linux/am;d64"])
def test_from_platform_must_be_a_platform(value):
    err = error_of(f"FROM scratch\nFROM --platform={value} scratch AS t\n")
    assert err.line == 2 and "FROM --platform: invalid platform" in err.message
    assert plan_stages(parse_dockerfile("FROM --platform=linux/arm/v7 scratch\n")).stages[0].platform \
        == "linux/arm/v7"
