"""`pybuild check`: parse and plan a Dockerfile without building it.

The build command goes through the same `check_dockerfile` call, so what
check accepts is exactly what a build would start from.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .document import Dockerfile, parse_dockerfile
from .errors import DockerfileError
from .stages import StageGraph, plan_stages


@dataclass
class CheckResult:
    dockerfile: Dockerfile
    graph: StageGraph

    @property
    def warnings(self) -> list[str]:
        parse = [f"{self.dockerfile.filename}:{w.line}: {w.message}" for w in self.dockerfile.warnings]
        return parse + list(self.graph.warnings)


def check_dockerfile(path: Path | bytes, build_args: dict[str, str] | None = None,
                     target: str | None = None, platform: str | None = None,
                     filename: str | None = None) -> CheckResult:
    """Read, parse and plan one Dockerfile; raises DockerfileError on the first problem."""
    if isinstance(path, bytes):       # read by the caller (the CLI reads through the context)
        data = path
    else:
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            raise DockerfileError("no such file: cannot read the Dockerfile", str(path)) from None
    df = parse_dockerfile(data, filename or ("Dockerfile" if isinstance(path, bytes) else str(path)))
    return CheckResult(df, plan_stages(df, build_args or {}, target, platform, lint=True))


def to_json(result: CheckResult) -> dict:
    """Stages the target needs, in build order, with their expanded instructions."""
    graph = result.graph
    stages = []
    for stage in graph.needed():
        stages.append({
            "index": stage.index,
            "name": stage.name,
            "line": stage.from_.line,
            "base": {"kind": stage.base.kind, "ref": stage.base.ref, "stage": stage.base.stage},
            "platform": stage.platform,
            "depends_on": sorted(stage.depends_on),
            "images": list(stage.images),
            "instructions": [i.to_json() for i in [stage.from_, *stage.triggers, *stage.instructions]],
        })
    return {
        "file": result.dockerfile.filename,
        "syntax": result.dockerfile.syntax,
        "escape": result.dockerfile.escape,
        "target": graph.stages[graph.target].label,
        "platform": str(graph.target_platform),
        "stages": stages,
        "skipped_stages": [s.label for s in graph.stages if s.index not in set(graph.order)],
        "warnings": result.warnings,
    }


def to_text(result: CheckResult) -> str:
    graph = result.graph
    lines = []
    for stage in graph.needed():
        base = stage.base.ref if stage.base.kind != "stage" else f"stage {graph.stages[stage.base.stage].label}"
        lines.append(f"stage {stage.label} (line {stage.from_.line}) from {base}: "
                     f"{len(stage.instructions) + len(stage.triggers)} instructions")
    skipped = len(graph.stages) - len(graph.order)
    lines.append(f"{result.dockerfile.filename}: OK, {len(graph.order)} of {len(graph.stages)} stages "
                 f"needed for target {graph.stages[graph.target].label}"
                 + (f" ({skipped} skipped)" if skipped else ""))
    return "\n".join(lines)
