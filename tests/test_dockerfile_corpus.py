"""Every real-world Dockerfile in shared/corpus/dockerfiles parses like BuildKit and checks clean.

The instruction count is cross-checked with a naive line-based counter
written here (README step 4), independent of the parser.
"""

from __future__ import annotations

import gzip
import json
import re

import pytest
from conftest import CORPUS

from builder.dockerfile import Arg, DockerfileError, From, parse_ast, parse_dockerfile, plan_stages
from builder.dockerfile.check import check_dockerfile

FILES = CORPUS / "dockerfiles"
RECORDS = {rec["file"]: rec for rec in map(json.loads, gzip.open(FILES / "EXPECTED.jsonl.gz", "rt",
                                                                  encoding="utf-8"))}
NAMES = sorted(RECORDS)

# Files docker itself refuses to build, with the reason; pybuild must refuse them the same way.
INVALID = {
    "containers__buildah__tests__bud__unrecognized__Dockerfile.Dockerfile": 'unknown instruction "BOGUS"',
    "docker__compose__pkg__e2e__fixtures__wrong-composefile__service1__Dockerfile.Dockerfile":
        'unknown instruction "WRONG"',
    # `ENV name='a\'b'`: the single quote that follows `b` is never closed
    "containers__buildah__tests__conformance__testdata__Dockerfile.env.Dockerfile":
        "looking for matching single-quote",
}

_DIRECTIVE = re.compile(r"#\s*([A-Za-z][A-Za-z0-9]*)\s*=\s*(.+?)\s*$")
_HEREDOC = re.compile(r"(?:^|\s)\d*<<(-?)\s*([\"']?)([^\s\"'<>|;&]+)\2")


def naive_count(data: bytes) -> int:
    """Count instructions from the raw lines (README section 'How tests should use it', step 4)."""
    text = data.decode("utf-8", "surrogateescape").replace("\r\n", "\n").removeprefix("\ufeff")
    lines = text.split("\n")
    escape = "\\"
    for line in lines:
        m = _DIRECTIVE.match(line.strip())
        if not m or m.group(1).lower() not in ("syntax", "escape", "check"):
            break
        if m.group(1).lower() == "escape":
            escape = m.group(2)
    count, i = 0, 0
    while i < len(lines):
        line = lines[i]
        i += 1
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        count += 1
        joined = [line]
        current = line
        while current.rstrip(" \t").endswith(escape) and not current.rstrip(" \t").endswith(escape * 2) \
                and i < len(lines):
            current = lines[i]
            i += 1
            if not current.strip() or current.lstrip().startswith("#"):
                current = escape      # skipped; the instruction goes on
                continue
            joined.append(current)
        words = " ".join(joined).split()
        keyword = words[1] if words and words[0].upper() == "ONBUILD" and len(words) > 1 else \
            (words[0] if words else "")
        if keyword.upper() not in ("RUN", "COPY", "ADD"):
            continue
        rest = words[words.index(keyword) + 1:]
        while rest and rest[0].startswith("--"):
            rest = rest[1:]
        if rest and rest[0].startswith("["):
            continue
        for m in _HEREDOC.finditer(" ".join(joined)):
            while i < len(lines):
                body = lines[i]
                i += 1
                if (body.lstrip("\t") if m.group(1) == "-" else body) == m.group(3):
                    break
    return count


def test_corpus_size():
    assert len(NAMES) == 347 == len(list(FILES.glob("*.Dockerfile")))


@pytest.mark.parametrize("name", NAMES)
def test_parse_matches_reference(name):
    rec = RECORDS[name]
    data = (FILES / name).read_bytes()
    tree = parse_ast(data, name)
    assert len(tree.nodes) == rec["instruction_count"] == naive_count(data)
    assert tree.dump() + "\n" == rec["dump"]
    assert tree.warnings == [] == rec["warnings"]
    assert tree.escape == rec["escape_token"]
    for node, want in zip(tree.nodes, rec["instructions"]):
        assert node.keyword == want["cmd"]
        assert (node.start_line, node.end_line) == (want["start_line"], want["end_line"])
        assert (node.flags, node.json, node.values) == (want["flags"], want["json"], want["values"])
        assert node.original == want["original"]
        assert [(h.name, h.file_descriptor, h.expand, h.chomp, h.content) for h in node.heredocs] == \
            [(h["name"], h["file_descriptor"], h["expand"], h["chomp"], h["content"]) for h in want["heredocs"]]


def required_build_args(data: bytes, name: str) -> dict[str, str]:
    """Stand-in values for global ARGs without a default (the files expect --build-arg)."""
    args = {}
    for ins in parse_dockerfile(data, name).instructions:
        if isinstance(ins, From):
            break
        if isinstance(ins, Arg):
            args.update({a.name: "busybox:latest" for a in ins.args if a.default is None})
    return args


@pytest.mark.parametrize("name", NAMES)
def test_check_passes(name):
    path = FILES / name
    if name in INVALID:
        with pytest.raises(DockerfileError, match=re.escape(INVALID[name])) as info:
            check_dockerfile(path, filename=name)
        assert str(info.value).startswith(f"{name}:")
        return
    try:
        result = check_dockerfile(path, filename=name)
    except DockerfileError as exc:
        if "should not be blank" not in exc.message:
            raise
        result = check_dockerfile(path, required_build_args(path.read_bytes(), name), filename=name)
    graph = result.graph
    assert graph.order[-1] == graph.target == len(graph.stages) - 1
    assert len(graph.stages) == sum(isinstance(i, From) for i in result.dockerfile.instructions)
    instructions = result.dockerfile.instructions
    global_args = next(i for i, ins in enumerate(instructions) if isinstance(ins, From))
    assert global_args + sum(1 + len(s.instructions) for s in graph.stages) == len(instructions)


def test_every_stage_is_a_valid_target():
    """Pruning: each stage as --target needs itself and only stages before or referenced."""
    df = parse_dockerfile((FILES / "moby__moby__Dockerfile.Dockerfile").read_bytes())
    full = plan_stages(df)
    assert len(full.stages) == 59
    for stage in full.stages:
        graph = plan_stages(df, target=stage.name or str(stage.index))
        assert graph.order[-1] == stage.index
        needed = set(graph.order)
        for i in graph.order:
            assert set(graph.stages[i].depends_on) <= needed


@pytest.mark.slow
def test_cli_check_on_corpus_samples(pybuild):
    for name in ("moby__moby__Dockerfile.Dockerfile", "moby__buildkit__Dockerfile.Dockerfile",
                 "dotnet__dotnet-docker__src__sdk__10.0__nanoserver-ltsc2025__amd64__Dockerfile.Dockerfile"):
        proc = pybuild("check", "-f", FILES / name, "--format", "json")
        doc = json.loads(proc.stdout)
        instructions = sum(len(s["instructions"]) for s in doc["stages"])
        assert 0 < instructions <= RECORDS[name]["instruction_count"]
        assert doc["stages"][-1]["index"] == max(s["index"] for s in doc["stages"])
