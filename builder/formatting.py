"""docker's `--format` for list commands and `inspect -f`, on top of builder.gotemplate.

List commands (images, ps, history, volume ls, system df) render each row through the
template as docker's cli/command/formatter does: `json` is `{{json .}}`; a `table`
prefix makes a tab-aligned table (Go's tabwriter with docker's settings: min width 10,
padding 3) whose header is the same template run over the column titles; `\\t` and
`\\n` typed in the format become a tab and a newline. The row fields carry docker's
names and docker's string renderings (`.ID` truncated to 12, `.CreatedSince` "2 hours
ago", `.Size` "4.26MB").

`inspect -f` runs the template over the inspect JSON as docker's fallback does (a map:
a missing key is an error), one output line per object.
"""

from __future__ import annotations

import json
import re
import sys
from typing import Iterable

from builder.gotemplate import NilList, NilMap, Struct, Template, TemplateError
from layerstore.errors import PybuildError
from layerstore.humanize import ellipsis, human_size, parse_time, quoted, since

IMAGE_HEADERS = {"ID": "IMAGE ID", "Repository": "REPOSITORY", "Tag": "TAG", "Digest": "DIGEST",
                 "CreatedSince": "CREATED", "CreatedAt": "CREATED AT", "Size": "SIZE",
                 "Containers": "CONTAINERS", "SharedSize": "SHARED SIZE",
                 "UniqueSize": "UNIQUE SIZE", "VirtualSize": "VIRTUAL SIZE"}
PS_HEADERS = {"ID": "CONTAINER ID", "Image": "IMAGE", "Command": "COMMAND",
              "CreatedAt": "CREATED AT", "RunningFor": "CREATED", "Ports": "PORTS",
              "State": "STATE", "Status": "STATUS", "Size": "SIZE", "Names": "NAMES",
              "Labels": "LABELS", "Mounts": "MOUNTS", "Networks": "NETWORKS",
              "LocalVolumes": "LOCAL VOLUMES"}
HISTORY_HEADERS = {"ID": "IMAGE", "CreatedSince": "CREATED", "CreatedAt": "CREATED AT",
                   "CreatedBy": "CREATED BY", "Size": "SIZE", "Comment": "COMMENT"}
VOLUME_HEADERS = {"Name": "VOLUME NAME", "Driver": "DRIVER", "Scope": "SCOPE",
                  "Mountpoint": "MOUNTPOINT", "Labels": "LABELS", "Links": "LINKS",
                  "Size": "SIZE"}
DF_HEADERS = {"Type": "TYPE", "TotalCount": "TOTAL", "Active": "ACTIVE", "Size": "SIZE",
              "Reclaimable": "RECLAIMABLE"}


def _header_funcs() -> dict:
    # docker's HeaderFunctions: in the header, functions pass the column title through
    same = lambda v, *rest: v if isinstance(v, str) else ""   # noqa: E731
    return {name: same for name in ("json", "join", "split", "title", "lower", "upper",
                                    "pad", "truncate")}


def _prepare(fmt: str) -> tuple[bool, str]:
    table = fmt.startswith("table")
    text = fmt[len("table"):] if table else fmt
    text = text.strip(" ")
    if text == "json":
        text = "{{json .}}"
    return table, text.replace("\\t", "\t").replace("\\n", "\n")


# C0 and C1 controls but tab and newline: what a label or a Cmd could use to retitle, clear
# or rewrite the user's terminal
_CONTROLS = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def terminal_safe(text: str, tty: bool | None = None) -> str:
    """`text` as is for a pipe (scripts get docker's bytes); on a terminal, control
    characters from image and container data are shown escaped (\\x1b), never sent raw."""
    if tty is None:
        tty = sys.stdout.isatty()
    if not tty:
        return text
    return _CONTROLS.sub(lambda m: f"\\x{ord(m.group(0)):02x}", text)


def render_rows(fmt: str, rows: Iterable[Struct], headers: dict[str, str],
                tty: bool | None = None) -> str:
    """The output of `--format fmt` over rows (each line ends with a newline)."""
    table, text = _prepare(fmt)
    try:
        tmpl = Template(text, missing_key="error")
        out = [tmpl.execute(r) + "\n" for r in rows]
        if not table:
            return terminal_safe("".join(out), tty)
        try:
            head = Template(text, funcs=_header_funcs(), missing_key="default")
            title = head.execute(headers).replace("<no value>", "")
        except TemplateError:
            title = ""
    except TemplateError as e:
        raise PybuildError(str(e)) from None
    return terminal_safe(tabwrite(title + "\n" + "".join(out)), tty)


def render_inspect(fmt: str, objects: list[dict], tty: bool | None = None) -> str:
    """`inspect -f fmt`: one line per object; "json" is the default indented array."""
    if fmt.strip() == "json":
        return json.dumps(objects, indent=4) + "\n"
    try:
        tmpl = Template(fmt, missing_key="error")
        typed = [_typed_nils(o) for o in objects]
        return terminal_safe("".join(tmpl.execute(o) + "\n" for o in typed), tty)
    except TemplateError as e:
        raise PybuildError(f"template parsing error: {e}") from None


# inspect keys that are slices / maps in docker's Go types: their null prints as [] / map[]
_SLICES = {"Cmd", "Entrypoint", "Env", "OnBuild", "Shell", "RepoTags", "RepoDigests", "Layers",
           "CapAdd", "CapDrop", "Mounts", "Args", "SecurityOpt"}
_MAPS = {"Labels", "ExposedPorts", "Volumes", "Ports", "PortBindings", "Options", "Networks"}


def _typed_nils(v: object, key: str | None = None) -> object:
    if v is None:
        return NilList() if key in _SLICES else NilMap() if key in _MAPS else None
    if isinstance(v, dict):
        return {k: _typed_nils(x, k) for k, x in v.items()}
    if isinstance(v, list):
        return [_typed_nils(x) for x in v]
    return v


def tabwrite(text: str, minwidth: int = 10, padding: int = 3) -> str:
    """Go's text/tabwriter (flags 0, pad char ' '), as docker's tables use it: a cell is
    text ended by a tab; a column block is a run of lines that have a cell in it; the
    last cell of a line is not part of any column."""
    lines = [line.split("\t") for line in text.split("\n")]
    out: list[str] = []

    def write(lo: int, hi: int, widths: list[int]) -> None:
        for cells in lines[lo:hi]:
            parts = []
            for j, c in enumerate(cells):
                parts.append(c.ljust(widths[j]) if j < len(widths) else c)
            out.append("".join(parts))

    def fmt(line0: int, line1: int, widths: list[int]) -> None:
        column = len(widths)
        this = line0
        while this < line1:
            if column >= len(lines[this]) - 1:
                this += 1
                continue
            write(line0, this, widths)
            line0 = this
            width = minwidth
            while this < line1 and column < len(lines[this]) - 1:
                width = max(width, len(lines[this][column]) + padding)
                this += 1
            fmt(line0, this, widths + [width])
            line0 = this
        write(line0, line1, widths)

    fmt(0, len(lines), [])
    return "\n".join(out)


# --- rows with docker's field names ----------------------------------------------

def go_time(text: str | None) -> str:
    """Go's time.Time.String() in the local zone, as docker's CreatedAt columns print it."""
    dt = parse_time(text)
    if dt is None:
        return ""
    local = dt.astimezone()
    return local.strftime("%Y-%m-%d %H:%M:%S %z ") + (local.tzname() or "")


def rfc3339(text: str | None) -> str:
    dt = parse_time(text)
    if dt is None:
        return ""
    local = dt.astimezone().replace(microsecond=0)
    s = local.isoformat()
    return s[:-6] + "Z" if s.endswith("+00:00") else s


def _short(image_id: str, no_trunc: bool) -> str:
    return image_id if no_trunc else image_id.removeprefix("sha256:")[:12]


def image_rows(rows: list, no_trunc: bool = False) -> list[Struct]:
    out = []
    for r in rows:
        out.append(Struct("*formatter.imageContext", {
            "Containers": "N/A", "CreatedAt": go_time(r.created),
            "CreatedSince": since(r.created), "Digest": r.digest or "<none>",
            "ID": _short(r.image_id, no_trunc), "Repository": r.repository,
            "SharedSize": "N/A", "Size": human_size(r.size), "Tag": r.tag,
            "UniqueSize": "N/A", "VirtualSize": human_size(r.size)}, escape_html=True))
    return out


def history_rows(rows: list, no_trunc: bool = False, human: bool = True) -> list[Struct]:
    out = []
    for r in rows:
        created_by = r.created_by.replace("\t", " ")
        out.append(Struct("*image.historyContext", {
            "Comment": r.comment, "CreatedAt": rfc3339(r.created),
            "CreatedBy": created_by if no_trunc else ellipsis(created_by, 45),
            "CreatedSince": since(r.created) if human else rfc3339(r.created),
            "ID": r.image if r.image == "<missing>" else _short(r.image, no_trunc),
            "Size": human_size(r.size) if human else str(r.size)}, escape_html=True))
    return out


def _labels(labels: dict[str, str] | None) -> str:
    return ",".join(f"{k}={v}" for k, v in sorted((labels or {}).items()))


def ps_rows(states: list, no_trunc: bool = False) -> list[Struct]:
    import shlex

    from builder.runner.views import inspect, status_text

    out = []
    for st in states:
        cmd = shlex.join(st.argv)
        mounts = []
        for m in st.mounts:
            name = m.get("Name") or m.get("Source") or ""
            mounts.append(name if no_trunc else ellipsis(name, 15))
        out.append(Struct("*formatter.ContainerContext", {
            "Command": quoted(cmd if no_trunc else ellipsis(cmd, 20)),
            "CreatedAt": go_time(st.created), "ID": st.id if no_trunc else st.id[:12],
            "Image": quoted(st.image_name, False), "Labels": _labels(st.labels),
            "LocalVolumes": str(sum(1 for m in st.mounts if m.get("Type") == "volume")),
            "Mounts": ",".join(mounts), "Names": st.name, "Networks": st.network,
            "Ports": ", ".join(st.ports), "RunningFor": since(st.created),
            "Size": "0B", "State": inspect(st)["State"]["Status"], "Status": status_text(st)},
            escape_html=True))
    return out


def volume_rows(volumes: list) -> list[Struct]:
    return [Struct("*formatter.volumeContext", {
        "Availability": "N/A", "Driver": "local", "Group": "N/A", "Labels": _labels(v.labels),
        "Links": "N/A", "Mountpoint": str(v.data), "Name": v.name, "Scope": "local",
        "Size": "N/A", "Status": "N/A"}, escape_html=True) for v in volumes]


def df_rows(rows: list) -> list[Struct]:
    return [Struct("*formatter.diskUsageContext", r.to_json(), escape_html=True) for r in rows]


def inspect_objects(objects: list[dict]) -> list[dict]:
    """What `inspect -f` sees: the JSON objects as decoded JSON (no Python-only types)."""
    return json.loads(json.dumps(objects))
