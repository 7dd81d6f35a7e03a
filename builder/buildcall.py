"""`build --call check|outline|targets` and `--check`: BuildKit's frontend subrequests.

They read and plan the Dockerfile and print what BuildKit's `docker build` prints
for them; no store is opened, no base is pulled and no step runs. `check` is
`pybuild check`'s parse and plan (one implementation) plus a few of BuildKit's
named lint rules, printed in BuildKit's shape, and exits 1 when it found warnings
(as buildx does: `docker build --check` fails a CI job on a warning).
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

import click

from layerstore.errors import PybuildError

CALLS = ("build", "check", "outline", "targets")
RULES_URL = "https://docs.docker.com/go/dockerfile/rule/"


@dataclass(frozen=True)
class Call:
    name: str            # check | outline | targets
    format: str = "text"   # text | json


def parse_call(text: str | None, check: bool) -> Call | None:
    """`--call NAME[,format=text|json]` (buildx's spelling); `--check` is `--call check`.
    None: an ordinary build (`--call build` too)."""
    if check:
        if text not in (None, "check", "build") and not str(text).startswith("check,"):
            raise PybuildError(f"--check and --call {text} cannot be used together")
        text = text if text and text.startswith("check") else "check"
    if text is None:
        return None
    name, *opts = [p.strip() for p in text.split(",")]
    name = {"lint": "check"}.get(name, name)
    if name not in CALLS:
        raise PybuildError(f"--call {text!r}: unknown call {name!r} "
                           f"(known: {', '.join(CALLS)})")
    fmt = "text"
    for opt in opts:
        key, eq, value = opt.partition("=")
        if key != "format" or not eq or value not in ("text", "json"):
            raise PybuildError(f"--call {text!r}: unknown option {opt!r} "
                               "(known: format=text|json)")
        fmt = value
    return None if name == "build" else Call(name, fmt)


def table(rows: list[list[str]], padding: int) -> list[str]:
    """Go's tabwriter as buildx uses it: every column but the last padded to its widest
    cell plus `padding` spaces."""
    widths = [max(len(r[c]) for r in rows) + padding for c in range(len(rows[0]) - 1)]
    return ["".join(cell.ljust(w) for cell, w in zip(r, widths)) + r[-1] for r in rows]


def description(df, line: int, name: str | None) -> str:
    """BuildKit's description of a stage or an ARG: the comment right above its line (no
    blank line between) that starts with its name; the rest of that comment."""
    if not name:
        return ""
    n = line - 1
    comments = []
    while n >= 1:
        text = (df.source_line(n) or "").strip()
        if not text.startswith("#"):
            break
        comments.insert(0, text[1:].strip())
        n -= 1
    for c in comments:
        if c.startswith(name + " "):
            return c[len(name) + 1:].strip()
    return ""


def _dockerfile(context: str, dockerfile: str | None) -> tuple[bytes, str]:
    from builder.buildcli import read_stdin_dockerfile
    from builder.buildopts import locate_dockerfile, read_dockerfile

    if context == "-" or dockerfile == "-":
        return read_stdin_dockerfile(), "Dockerfile"
    ctx = Path(context)
    if not ctx.is_dir():
        raise PybuildError(f"build context {context}: not a directory")
    path = locate_dockerfile(ctx, Path(dockerfile) if dockerfile else None)
    assert path is not None
    return read_dockerfile(ctx, path), str(path) if dockerfile else path.name


def run_call(call: Call, context: str, dockerfile: str | None, build_args: dict[str, str],
             target: str | None, platform: str | None) -> int:
    """Print the call's answer on stdout; the exit status."""
    data, filename = _dockerfile(context, dockerfile)
    if call.name == "check":
        return _check(call, data, filename, build_args, target, platform)
    from builder.dockerfile.document import parse_dockerfile
    from builder.dockerfile.stages import plan_stages

    df = parse_dockerfile(data, filename)
    graph = plan_stages(df, build_args, target, platform, lint=True)
    doc = _targets(df) if call.name == "targets" else _outline(df, graph, build_args)
    if call.format == "json":
        click.echo(json.dumps(doc, indent=2))
    elif call.name == "targets":
        click.echo(print_targets(doc), nl=False)
    else:
        click.echo(print_outline(doc), nl=False)
    return 0


# --- targets ---

def _targets(df) -> dict:
    from builder.dockerfile import instructions as ins

    froms = [i for i in df.instructions if isinstance(i, ins.From)]
    out = []
    for k, f in enumerate(froms):
        t = {"name": f.name or "", "description": description(df, f.line, f.name),
             "base": f.image}
        if k == len(froms) - 1:
            t["default"] = True
        out.append({k: v for k, v in t.items() if v != ""})
    return {"targets": out}


def print_targets(doc: dict) -> str:
    rows = [["TARGET", "DESCRIPTION"]]
    for t in doc["targets"]:
        name = t.get("name", "")
        if t.get("default"):
            name = f"{name} (default)" if name else "(default)"
        rows.append([name, t.get("description", "")])
    return "\n".join(table(rows, 3)) + "\n"


# --- outline ---

def _outline(df, graph, build_args: dict[str, str]) -> dict:
    from builder.dockerfile import instructions as ins
    from builder.dockerfile.stages import PLATFORM_ARGS, PROXY_ARGS

    needed = graph.needed()
    target = graph.stages[graph.target]
    first_from = min((i.line for i in df.instructions if isinstance(i, ins.From)), default=0)
    args: dict[str, dict] = {}

    def add(decl, line: int) -> None:
        if decl.name in args or decl.name in PLATFORM_ARGS or decl.name in PROXY_ARGS:
            return
        value = build_args.get(decl.name, decl.default if decl.default is not None
                               else graph.meta_args.get(decl.name) or "")
        a = {"name": decl.name, "value": value,
             "description": description(df, line, decl.name)}
        args[decl.name] = {k: v for k, v in a.items() if v != "" or k == "name"}

    # the global ARGs the needed stages' FROM lines use, then each needed stage's own
    from_text = " ".join(s.from_.original for s in needed)
    for i in df.instructions:
        if isinstance(i, ins.Arg) and i.line < first_from:
            for d in i.args:
                if re.search(r"\$\{?" + re.escape(d.name) + r"\b", from_text):
                    add(d, i.line)
    secrets: dict[str, bool] = {}
    ssh: dict[str, bool] = {}
    for s in needed:
        for i in [*s.triggers, *s.instructions]:
            if isinstance(i, ins.Arg):
                for d in i.args:
                    add(d, i.line)
            if isinstance(i, ins.Run):
                for m in i.mounts:
                    if m.type == "secret":
                        name = m.id or (os.path.basename(m.target) if m.target else "")
                        if name:
                            secrets[name] = secrets.get(name, False) or bool(m.required)
                    elif m.type == "ssh":
                        name = m.id or "default"
                        ssh[name] = ssh.get(name, False) or bool(m.required)
    doc: dict = {}
    if target.name:
        doc["name"] = target.name
    desc = description(df, target.from_.line, target.name)
    if desc:
        doc["description"] = desc
    if args:
        doc["args"] = list(args.values())
    if secrets:
        doc["secrets"] = [{"name": k, **({"required": True} if v else {})}
                          for k, v in secrets.items()]
    if ssh:
        doc["ssh"] = [{"name": k, **({"required": True} if v else {})} for k, v in ssh.items()]
    return doc


def print_outline(doc: dict) -> str:
    out: list[str] = []
    if doc.get("name") or doc.get("description"):
        rows = [["TARGET:", doc.get("name") or "(default)"]]
        if doc.get("description"):
            rows.append(["DESCRIPTION:", doc["description"]])
        out += table(rows, 1) + [""]
    if doc.get("args"):
        rows = [["BUILD ARG", "VALUE", "DESCRIPTION"]]
        rows += [[a["name"], a.get("value", ""), a.get("description", "")] for a in doc["args"]]
        out += table(rows, 3) + [""]
    for key, title in (("secrets", "SECRET"), ("ssh", "SSH")):
        if doc.get(key):
            rows = [[title, "REQUIRED"]]
            rows += [[s["name"], "true" if s.get("required") else ""] for s in doc[key]]
            out += table(rows, 3) + [""]
    return "".join(line + "\n" for line in out)


# --- check ---

@dataclass
class Finding:
    message: str                 # BuildKit's detail line, or pybuild's own warning
    line: int = 0
    rule: str = ""               # BuildKit's rule name ("" for pybuild's own checks)
    description: str = ""


def lint_rules(df) -> list[Finding]:
    """A few of BuildKit's named rules, the ones real Dockerfiles trip most."""
    from builder.dockerfile import instructions as ins

    found = []
    for i in df.instructions:
        words = (i.original or "").split()
        if isinstance(i, ins.From) and i.name and len(words) >= 3:
            kw, as_ = words[0], next((w for w in words if w.lower() == "as"), None)
            if as_ is not None and (kw.isupper() != as_.isupper() or kw.islower() != as_.islower()):
                found.append(Finding(f"'{as_}' and '{kw}' keywords' casing do not match",
                                     i.line, "FromAsCasing",
                                     "The 'as' keyword should match the case of the 'from' "
                                     "keyword"))
        elif isinstance(i, (ins.Cmd, ins.Entrypoint)) and i.prepend_shell:
            found.append(Finding("JSON arguments recommended for "
                                 f"{i.keyword} to prevent unintended behavior related to OS "
                                 "signals", i.line, "JSONArgsRecommended",
                                 "JSON arguments recommended for ENTRYPOINT/CMD to prevent "
                                 "unintended behavior related to OS signals"))
        elif isinstance(i, ins.Maintainer):
            found.append(Finding("Maintainer instruction is deprecated in favor of using "
                                 "label", i.line, "MaintainerDeprecated",
                                 "The MAINTAINER instruction is deprecated, use a label "
                                 "instead to define an image author"))
    return found


def skipped_rules(df) -> set[str]:
    """`# check=skip=RULE[,RULE]|all[;error=true]`: the rules the Dockerfile opts out of."""
    d = df.directives.get("check")
    skip: set[str] = set()
    for part in (d.value if d else "").split(";"):
        key, _, value = part.strip().partition("=")
        if key.strip() == "skip":
            skip.update(v.strip() for v in value.split(",") if v.strip())
    return skip


def _rule_url(rule: str) -> str:
    slug = {"FromAsCasing": "from-as-casing", "JSONArgsRecommended": "json-args-recommended",
            "MaintainerDeprecated": "maintainer-deprecated"}[rule]
    return RULES_URL + slug + "/"


def _check(call: Call, data: bytes, filename: str, build_args: dict[str, str],
           target: str | None, platform: str | None) -> int:
    from builder.dockerfile import check

    result = check.check_dockerfile(data, build_args, target, platform, filename=filename)
    skip = skipped_rules(result.dockerfile)
    findings = [f for f in lint_rules(result.dockerfile) if "all" not in skip and f.rule not in skip]
    for w in result.warnings:
        m = re.match(re.escape(filename) + r":(\d+): (.*)\Z", w, re.S)
        findings.append(Finding(m.group(2), int(m.group(1))) if m else Finding(w))
    findings.sort(key=lambda f: f.line)
    if call.format == "json":
        click.echo(json.dumps({"warnings": [
            {"ruleName": f.rule, "description": f.description or f.message,
             "url": _rule_url(f.rule) if f.rule else "", "detail": f.message,
             "location": {"file": filename, "line": f.line}} for f in findings]}, indent=2))
        return 1 if findings else 0
    if not findings:
        click.echo("Check complete, no warnings found.")
        return 0
    n = len(findings)
    click.echo("Check complete, " + ("1 warning has been found!" if n == 1
                                      else f"{n} warnings have been found!"))
    df = result.dockerfile
    for f in findings:
        click.echo("")
        click.echo(f"WARNING: {f.rule} - {_rule_url(f.rule)}" if f.rule else f"WARNING: {f.message}")
        if f.rule:
            click.echo(f.message)
        if f.line:
            click.echo(f"{filename}:{f.line}")
            click.echo("-" * 20)
            for n in range(max(1, f.line - 2), f.line + 3):
                text = df.source_line(n)
                if text is None:
                    break
                mark = ">>> " if n == f.line else "    "
                click.echo(f" {n:>3} | {mark}{text}".rstrip())
            click.echo("-" * 20)
    return 1
