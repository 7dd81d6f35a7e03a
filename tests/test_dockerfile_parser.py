"""The parser against BuildKit's own fixtures (shared/corpus/buildkit-parser).

Each fixture directory is one test, so a new fixture is a new test case.
"""

from __future__ import annotations

import json

import pytest
from conftest import CORPUS

from builder.dockerfile import DockerfileError, parse_ast, parse_dockerfile, plan_stages
from builder.dockerfile.instructions import Copy
from builder.dockerfile.parser import (detect_directive, heredocs_from_line, parse_heredoc,
                                       parse_name_val, parse_words, _LineError, _reject_non_strings)

ROOT = CORPUS / "buildkit-parser"
DUMP_CASES = sorted(p.parent for p in (ROOT / "testfiles").glob("*/Dockerfile")) + \
    sorted(p.parent for p in (ROOT / "extra-cases").glob("*/Dockerfile"))
NEGATIVE = sorted((ROOT / "testfiles-negative").iterdir()) + sorted((ROOT / "extra-negative").iterdir())
COMPANIONS = [json.loads(line) for line in (ROOT / "testfiles-expected.jsonl").read_text().splitlines()]
INLINE = ROOT / "inline-fixtures"


def record(node, top: bool = True) -> dict:
    """A node in the shape of the JSON companions (FORMAT.md section 4)."""
    doc = {"cmd": node.keyword}
    if top:
        doc.update(start_line=node.start_line, end_line=node.end_line)
    doc.update(flags=node.flags, json=node.json, values=node.values)
    if top:
        doc["heredocs"] = [dict(name=h.name, file_descriptor=h.file_descriptor, expand=h.expand,
                                chomp=h.chomp, content=h.content) for h in node.heredocs]
        doc["original"] = node.original
    if node.sub is not None:
        doc["sub"] = record(node.sub, top=False)
    return doc


def assert_companion(tree, expected: dict) -> None:
    """Compare every key the companion file records (inline fixtures record fewer)."""
    got = [record(n) for n in tree.nodes]
    assert len(got) == len(expected["instructions"])
    for mine, theirs in zip(got, expected["instructions"]):
        assert {k: mine.get(k) for k in theirs} == theirs
    if "warnings" in expected:
        assert [w.message for w in tree.warnings] == expected["warnings"]
    if "escape_token" in expected:
        assert tree.escape == expected["escape_token"]
    if "dump" in expected:
        assert tree.dump() + "\n" == expected["dump"]


def test_corpus_is_present():
    assert len(DUMP_CASES) == 33 + 26 and len(NEGATIVE) == 4 + 13 and len(COMPANIONS) == 33


@pytest.mark.parametrize("case", DUMP_CASES, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_dump_matches_reference(case):
    tree = parse_ast((case / "Dockerfile").read_bytes())
    assert tree.dump() + "\n" == (case / "result").read_bytes().decode("utf-8")


@pytest.mark.parametrize("expected", COMPANIONS, ids=lambda e: e["case"])
def test_testfiles_lines_flags_heredocs(expected):
    tree = parse_ast((ROOT / "testfiles" / expected["case"] / "Dockerfile").read_bytes())
    assert_companion(tree, expected)


@pytest.mark.parametrize("case", sorted((ROOT / "extra-cases").iterdir()), ids=lambda p: p.name)
def test_extra_cases_lines_flags_heredocs(case):
    assert_companion(parse_ast((case / "Dockerfile").read_bytes()),
                     json.loads((case / "expected.json").read_text()))


@pytest.mark.parametrize("name", ["heredoc-extract", "heredoc-json-form", "empty-continuation-warnings"])
def test_inline_fixture_dockerfiles(name):
    expected = json.loads((INLINE / name / "expected.json").read_text())
    assert_companion(parse_ast((INLINE / name / "Dockerfile").read_bytes()), expected)


@pytest.mark.parametrize("case", NEGATIVE, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_negative_cases_are_rejected(case):
    with pytest.raises(DockerfileError) as info:
        parse_ast((case / "Dockerfile").read_bytes(), "Dockerfile")
    text = str(info.value)
    assert text.startswith("Dockerfile:")
    if (case / "error").exists():
        assert (case / "error").read_text().strip() in text


def test_line_numbers():
    expected = json.loads((INLINE / "line-numbers.json").read_text())
    tree = parse_ast((ROOT / "testfile-line" / "Dockerfile").read_bytes())
    assert len(tree.nodes) == expected["children"]
    assert [[n.start_line, n.end_line] for n in tree.nodes] == expected["child_lines"]
    assert tree.nodes[0].start_line == expected["ast_start_line"]
    assert tree.nodes[-1].end_line == expected["ast_end_line"]


def test_line_longer_than_65535_bytes_fails():
    with pytest.raises(DockerfileError, match="dockerfile line greater than max allowed size of 65535"):
        parse_ast("FROM image\nLABEL test=" + "a" * 65536 + "\n")
    assert parse_ast("FROM image\nLABEL t=" + "a" * (65535 - 8) + "\n").nodes[1].values[1] == "a" * 65527


@pytest.mark.parametrize("case", json.loads((INLINE / "parse-words.json").read_text())["cases"],
                         ids=lambda c: c["input"])
def test_parse_words(case):
    assert parse_words(case["input"], "\\") == case["expect"]


@pytest.mark.parametrize("case", json.loads((INLINE / "name-val.json").read_text())["cases"],
                         ids=lambda c: c["input"])
def test_name_val(case):
    if "expect_error" in case:
        with pytest.raises(_LineError, match=case["expect_error"]):
            parse_name_val(case["input"], case["keyword"], "\\")
    else:
        assert parse_name_val(case["input"], case["keyword"], "\\") == case["expect_chain"]


def test_json_arrays():
    table = json.loads((INLINE / "json-arrays.json").read_text())
    for case in table["valid"]:
        assert _reject_non_strings(case["input"].strip(), 1) == case["expect"]
        assert parse_ast(f"CMD {case['input']}").nodes[0].values == case["expect"]
    for text in table["not_string_array"]:
        with pytest.raises(_LineError, match="arrays must be comprised of strings only"):
            _reject_non_strings(text, 1)
        with pytest.raises(DockerfileError, match="arrays must be comprised of strings only"):
            parse_ast(f"FROM a\nRUN {text}")
    # not JSON at all falls back to shell form, silently
    assert parse_ast("CMD [NaN]").nodes[0].values == ["[NaN]"]
    assert parse_ast("CMD ['a']").nodes[0].json is False


def test_heredoc_words():
    table = json.loads((INLINE / "heredoc-words.json").read_text())
    helpers = table["parse_heredoc"]
    for word in helpers["valid_name_EOF"]:
        doc = parse_heredoc(word)
        assert doc is not None and doc.name == "EOF", word
        assert doc.chomp == word.startswith("<<-")
        assert doc.expand == ("'" not in word and '"' not in word)
    for word in helpers["error"]:
        with pytest.raises(DockerfileError):
            parse_heredoc(word)
    for word in helpers["not_a_heredoc"]:
        assert parse_heredoc(word) is None, word
    for case in table["heredocs_from_line"]:
        assert [d.name for d in heredocs_from_line(case["line"])] == case["names"], case["line"]
    assert [d.file_descriptor for d in heredocs_from_line("RUN 4<<EOF")] == [4]
    chomp = table["chomp"]
    from builder.dockerfile import Heredoc
    assert Heredoc("EOF", chomp["input"], chomp=True).body() == chomp["expect"]


def test_directives_parse_all():
    table = json.loads((INLINE / "directives.json").read_text())
    for case in table["parse_all"]:
        tree = parse_ast(case["input"] + "FROM a\n")
        assert [{"name": d.name, "value": d.value} for d in tree.directives.values()] == case["expect"]


@pytest.mark.parametrize("key,cases", [("syntax", "detect_syntax"), ("check", "parse_directive_check")])
def test_detect_directive(key, cases):
    for case in json.loads((INLINE / "directives.json").read_text())[cases]:
        data = bytes.fromhex(case.get("input_bytes_hex_prefix", "")) + case["input"].encode()
        found = detect_directive(data, key, any_format=key == "syntax")
        assert (found is not None) == case["ok"], case
        if found:
            assert found[0] == case["ref"]
            if "cmdline" in case:
                assert found[1] == case["cmdline"]
            if "line" in case:
                assert found[2] == case["line"]


HEREDOC_DIR = ROOT / "heredoc-integration"
HEREDOC_OUTPUTS = json.loads((HEREDOC_DIR / "expected-outputs.json").read_text())


@pytest.mark.parametrize("name", sorted(p.name for p in HEREDOC_DIR.glob("*.Dockerfile")))
def test_heredoc_integration_parses(name):
    df = parse_dockerfile((HEREDOC_DIR / name).read_bytes(), name)
    plan_stages(df)
    assert any(i.heredocs for i in df.instructions) or "Fake" in name


@pytest.mark.parametrize("name", [n for n in sorted(HEREDOC_OUTPUTS) if n.endswith(".Dockerfile")])
def test_heredoc_copy_contents(name):
    """What COPY heredocs would write: expansion for <<EOF, none for <<'EOF', tabs for <<-."""
    expected = HEREDOC_OUTPUTS[name]
    wanted = {k: v for k, v in expected["outputs"].items() if k not in expected["needs_run"]}
    graph = plan_stages(parse_dockerfile((HEREDOC_DIR / name).read_bytes(), name))
    produced: dict[str, str] = {}
    for stage in graph.stages:
        env = {**stage.args, **stage.env}
        for ins in stage.instructions:
            if isinstance(ins, Copy):
                for doc in ins.heredocs:
                    dest = ins.dest.removeprefix("/dest/")
                    key = dest + doc.name if dest.endswith("/") else dest
                    produced[key] = doc.render(env, graph_escape(name))
    for key, content in wanted.items():
        assert produced.get(key) == content, key


def graph_escape(name: str) -> str:
    return parse_ast((HEREDOC_DIR / name).read_bytes()).escape


def test_grammar_parser_is_cached_on_disk(tmp_path):
    """The LALR tables are built once, then loaded from the user's cache directory."""
    import os
    import subprocess
    import sys

    from conftest import REPO

    env = dict(os.environ, XDG_CACHE_HOME=str(tmp_path), PYTHONPATH=str(REPO))
    code = "from builder.dockerfile import parse_ast; print(parse_ast('FROM a').dump())"
    first = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert first.stdout == '(from "a")\n'
    caches = list((tmp_path / "pybuild").glob("dockerfile-grammar-*.lark-cache"))
    assert len(caches) == 1
    stamp = caches[0].stat().st_mtime_ns
    second = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert second.stdout == first.stdout
    assert caches[0].stat().st_mtime_ns == stamp        # loaded, not rebuilt
    # an unusable cache location still works (the parser is built in memory)
    blocker = tmp_path / "blocker"
    blocker.write_text("not a directory")
    env["XDG_CACHE_HOME"] = str(blocker / "sub")
    third = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert third.stdout == first.stdout, third.stderr


@pytest.mark.parametrize("line,dump", [
    ('COPY --"" --x a b', '(copy "--x" "a" "b")'),          # `--""` is a bare `--`: flags end there
    ('RUN --a --"" --b echo', '(run ["--a"] "--b echo")'),
    ('COPY --"  a" x y', '(copy ["--  a"] "x" "y")'),      # quotes keep blanks inside a flag
    ("COPY --a\\ b x y", '(copy ["--a b"] "x" "y")'),
    ('COPY# --"', '(copy# "")'),
])
def test_flag_quoting_edge_cases(line, dump):
    assert parse_ast(line).dump() == dump
