"""Word expansion against BuildKit's shell-lexer tables (shared/corpus/buildkit-shell)."""

from __future__ import annotations

import json
import re

import pytest
from conftest import CORPUS

from builder.dockerfile import ExpansionError, ShellLex, expand_word, expand_words
from builder.dockerfile.expand import reverse_pattern, shell_pattern_regex

SHELL = CORPUS / "buildkit-shell"
ENVVAR_ENV = {"PWD": "/home", "SHELL": "bash", "KOREAN": "한국어", "NULL": ""}


def envvar_rows() -> list[tuple[str, str]]:
    """(input, expected) rows of envVarTest that apply to Linux (platform A or U)."""
    rows = []
    for line in (SHELL / "envVarTest").read_text(encoding="utf-8").split("\n"):
        if line.startswith("#") or not line.strip():
            continue
        platform, word, expected = (f.strip() for f in line.strip().split("|"))
        assert platform in "AUW"
        if platform != "W":
            rows.append((word, expected))
    return rows


def words_rows() -> list[tuple[str, dict[str, str], list[str]]]:
    """(input, env so far, expected words) rows of wordsTest, ENV lines applied in order."""
    env: dict[str, str] = {}
    rows = []
    for line in (SHELL / "wordsTest").read_text(encoding="utf-8").split("\n"):
        if line.startswith("#") or not line:
            continue
        if line.startswith("ENV "):
            name, value = line[4:].lstrip(" ").split("=", 1)
            env[name] = value
            continue
        word, expected = line.split("|")
        rows.append((word.strip(), dict(env), expected.lstrip(" ").split(",")))
    return rows


ENVVAR = envvar_rows()
WORDS = words_rows()


def test_tables_have_expected_sizes():
    assert len(ENVVAR) == 228
    assert len(WORDS) == 24


@pytest.mark.parametrize("word,expected", ENVVAR, ids=[f"{i}:{w}" for i, (w, _) in enumerate(ENVVAR)])
def test_env_var_table(word, expected):
    if expected == "error":
        with pytest.raises(ExpansionError):
            ShellLex("\\").process_word(word, ENVVAR_ENV)
    else:
        assert ShellLex("\\").process_word(word, ENVVAR_ENV) == expected
        assert expand_word(word, ENVVAR_ENV) == expected


@pytest.mark.parametrize("word,env,expected", WORDS, ids=[w for w, _, _ in WORDS])
def test_words_table(word, env, expected):
    try:
        got = expand_words(word, env)
    except ExpansionError:
        got = ["error"]
    assert got == expected


MATCHES = json.loads((SHELL / "process-word-with-matches.json").read_text())["cases"]


@pytest.mark.parametrize("case", MATCHES, ids=[c["input"] for c in MATCHES])
def test_process_word_with_matches(case):
    lex = ShellLex("\\")
    if case.get("error"):
        with pytest.raises(ExpansionError):
            lex.process(case["input"], case["envs"])
        return
    result = lex.process(case["input"], case["envs"])
    assert result.value == case["expected"]
    assert result.matched == set(case["matched"])
    assert result.unmatched == set(case["unmatched"])


def test_mandatory_env():
    for case in json.loads((SHELL / "mandatory-env.json").read_text())["cases"]:
        env = dict(item.split("=", 1) for item in case["env"])
        if "error_contains" in case:
            with pytest.raises(ExpansionError, match=re.escape(case["error_contains"])):
                expand_word(case["input"], env)
        else:
            assert expand_word(case["input"], env) == case["expected"]


def test_platform_release():
    table = json.loads((SHELL / "platform-release.json").read_text())
    for case in table["cases"]:
        assert expand_word(table["input"], case["envs"]) == case["expected"]


def test_shell_pattern_helpers():
    table = json.loads((SHELL / "shell-pattern.json").read_text())
    for pattern, regex in table["to_regex_greedy_anchored"].items():
        assert shell_pattern_regex(pattern, True, True) == regex
    for pattern in table["invalid_patterns"]:
        with pytest.raises(ExpansionError):
            shell_pattern_regex(pattern, True, True)
    for pattern, reversed_ in table["reverse_pattern"].items():
        assert reverse_pattern(pattern) == reversed_


def test_escape_character_backtick():
    assert expand_word("a`$b", {"b": "x"}, escape="`") == "a$b"
    assert expand_words("a` b c", {}, escape="`") == ["a b", "c"]
    assert expand_word("C:\\dir\\$X", {"X": "y"}, escape="`") == "C:\\dir\\y"


def test_lexer_options():
    assert ShellLex(skip_unset=True).process_word("$A ${B} ${C:-x}", {}) == "$A ${B} ${C:-x}"
    assert ShellLex(raw_quotes=True).process_word("'a' \"$X\"", {"X": "1"}) == "'a' \"1\""
    assert ShellLex(raw_escapes=True).process_word("a\\ b", {}) == "a\\ b"
    assert ShellLex(skip_process_quotes=True).process_word("'$X'", {"X": "1"}) == "'1'"
