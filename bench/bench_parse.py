"""Dockerfile frontend speed: parsing the corpus, a 200-line file, and `pybuild check` wall time.

There is no peer tool that only parses Dockerfiles (buildah and docker parse
as part of a build), so this prints pybuild's own figures against the
targets of issue 3: a 200-line Dockerfile parses in < 20 ms and
`pybuild check` of it finishes in < 250 ms wall.  `python -c pass` is timed
alongside as the floor that interpreter start-up alone costs on this host.

Usage: python bench/bench_parse.py [--runs N]
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CORPUS = REPO.parent / "shared" / "corpus"
sys.path.insert(0, str(REPO))

from builder.dockerfile import DockerfileError, parse_dockerfile, plan_stages  # noqa: E402
from builder.dockerfile.parser import parse_ast  # noqa: E402
from builder.dockerfile.syntax import grammar_text, lark  # noqa: E402


def figures(samples: list[float], unit: float = 1e3, suffix: str = "ms") -> str:
    return (f"median {statistics.median(samples) * unit:8.2f} {suffix}  "
            f"min {min(samples) * unit:8.2f}  max {max(samples) * unit:8.2f}  (n={len(samples)})")


def corpus_files() -> list[Path]:
    files = sorted((CORPUS / "dockerfiles").glob("*.Dockerfile"))
    for folder in ("testfiles", "extra-cases"):
        files += sorted((CORPUS / "buildkit-parser" / folder).glob("*/Dockerfile"))
    return files


def two_hundred_lines() -> str:
    """A realistic multi-stage Dockerfile of exactly 200 lines."""
    head = ["# syntax=docker/dockerfile:1", "ARG GO_VERSION=1.22", "ARG ALPINE=3.19", ""]
    body: list[str] = []
    stage = 0
    while len(head) + len(body) < 188:
        body += [f"FROM golang:${{GO_VERSION}}-alpine${{ALPINE}} AS build{stage}",
                 "ARG TARGETOS TARGETARCH", f"ENV CGO_ENABLED=0 GOOS=$TARGETOS GOARCH=$TARGETARCH N={stage}",
                 "WORKDIR /src/$N",
                 "RUN --mount=type=cache,target=/root/.cache/go-build \\",
                 "    --mount=type=bind,source=go.mod,target=go.mod \\",
                 "    apk add --no-cache git make && \\",
                 "    # fetch modules first",
                 "    go mod download",
                 f"COPY --link --chmod=755 cmd/{stage}/ ./cmd/",
                 "RUN <<EOF", "set -e", "go build -o /out/app$N ./cmd", "EOF",
                 'LABEL org.opencontainers.image.title="app $N" version="${GO_VERSION}"',
                 "EXPOSE 80${N}/tcp", ""]
        stage += 1
    tail = ["FROM alpine:${ALPINE}"]
    tail += [f"COPY --from=build{i} /out/ /usr/local/bin/" for i in range(stage)]
    tail += ['HEALTHCHECK --interval=30s CMD ["wget", "-q", "localhost"]', 'ENTRYPOINT ["/usr/local/bin/app0"]']
    lines = head + body + tail
    while len(lines) < 200:
        lines.insert(len(head), "# padding comment")
    return "\n".join(lines[:200]) + "\n"


def parse_typed(data: bytes, name: str) -> None:
    """Typed parse; files docker rejects (unknown instructions in fixtures) still count."""
    try:
        parse_dockerfile(data, name)
    except DockerfileError:
        pass


def time_call(fn, runs: int) -> list[float]:
    out = []
    for _ in range(runs):
        t = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t)
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=7)
    runs = max(5, ap.parse_args().runs)

    files = corpus_files()
    blobs = [(f, f.read_bytes()) for f in files]
    print(f"corpus: {len(files)} Dockerfiles, {sum(len(b) for _, b in blobs) / 1024:.0f} KiB")

    # grammar construction: without cache (what every run would pay) vs. loading the cached parser
    text = grammar_text()
    build = time_call(lambda: lark.Lark(text, parser="lalr", lexer="contextual"), runs)
    with tempfile.TemporaryDirectory() as tmp:
        cache = os.path.join(tmp, "g.cache")
        lark.Lark(text, parser="lalr", lexer="contextual", cache=cache)
        cached = time_call(lambda: lark.Lark(text, parser="lalr", lexer="contextual", cache=cache), runs)
    print(f"grammar construction, uncached: {figures(build)}")
    print(f"grammar load from cache:        {figures(cached)}")

    whole = time_call(lambda: [parse_ast(b, f.name) for f, b in blobs], runs)
    print(f"parse whole corpus (syntax tree):          {figures(whole)}")
    typed = time_call(lambda: [parse_typed(b, f.name) for f, b in blobs], runs)
    print(f"parse whole corpus (typed instructions):   {figures(typed)}")

    per_file = []
    for f, b in blobs:
        per_file.append(statistics.median(time_call(lambda: parse_typed(b, f.name), 3)))
    print(f"per-file parse (typed), over files:        {figures(per_file)}")

    df200 = two_hundred_lines()
    assert df200.count("\n") == 200
    parse200 = time_call(lambda: parse_dockerfile(df200), runs * 3)
    plan200 = time_call(lambda: plan_stages(parse_dockerfile(df200)), runs * 3)
    print(f"200-line Dockerfile, parse:                {figures(parse200)}   target < 20 ms")
    print(f"200-line Dockerfile, parse + stage plan:   {figures(plan200)}")

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "Dockerfile"
        path.write_text(df200)
        # byte-compiled modules, as an installed pybuild has them; kept out of the tree
        env = dict(os.environ, PYTHONPATH=str(REPO), PYTHONPYCACHEPREFIX=str(Path(tmp) / "pycache"))
        env.pop("PYTHONDONTWRITEBYTECODE", None)
        cmd = [sys.executable, "-m", "builder", "check", "-f", str(path), "--format", "json"]
        subprocess.run(cmd, check=True, capture_output=True, env=env)   # warm grammar and bytecode caches
        walls, floor, cpu, floor_cpu = [], [], [], []
        for _ in range(runs):
            for argv, wall, used in ((cmd, walls, cpu), ([sys.executable, "-c", "pass"], floor, floor_cpu)):
                before = resource.getrusage(resource.RUSAGE_CHILDREN)
                t = time.perf_counter()
                subprocess.run(argv, check=True, capture_output=True, env=env)
                wall.append(time.perf_counter() - t)
                after = resource.getrusage(resource.RUSAGE_CHILDREN)
                used.append(after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime)
    print(f"`pybuild check` wall, 200-line file:       {figures(walls)}   target < 250 ms")
    print(f"`python -c pass` wall (interpreter floor): {figures(floor)}")
    print(f"`pybuild check` CPU (user+sys):            {figures(cpu)}")
    print(f"`python -c pass` CPU (user+sys):           {figures(floor_cpu)}")
    print(f"check / interpreter-floor ratio: wall {statistics.median(walls) / statistics.median(floor):.2f}x, "
          f"CPU {statistics.median(cpu) / statistics.median(floor_cpu):.2f}x")
    print(f"host load average: {os.getloadavg()[0]:.2f} (2 cores; other work inflates wall times)")
    print("peer: none (no standalone Dockerfile parser installed; buildah/docker parse only inside a build)")


if __name__ == "__main__":
    main()
