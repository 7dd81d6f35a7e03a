"""docker's `--filter key=value` for `images`, `ps`, `volume ls` and the prunes.

One parser (`parse`) and the matchers of each listing. As in docker: the same key
given twice is an OR of its values, different keys are an AND, and every `label`
must match (`label!` -- typed `label!=K[=V]` -- excludes what matches all of them).
A value docker would not accept is an error naming the filter, never a silent
"matches nothing".
"""

from __future__ import annotations

import re
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass, field

from layerstore.errors import PybuildError

# keys each command accepts (docker CLI 28 / API 1.47)
IMAGES = ("dangling", "reference", "label", "before", "since")
CONTAINERS = ("status", "name", "label", "ancestor", "exited", "id")
VOLUMES = ("dangling", "name", "label", "driver")
PRUNE = ("until", "label", "label!")
CONTAINER_PRUNE = ("until", "label", "label!")
VOLUME_PRUNE = ("label", "label!", "all")

STATUSES = ("created", "restarting", "running", "removing", "paused", "exited", "dead")


class InvalidFilter(PybuildError):
    """A key the command does not know, or a value it cannot mean (docker's daemon
    error: exit 1)."""

    def __init__(self, text: str) -> None:
        super().__init__(f"invalid filter '{text}'")


class BadFilterFormat(PybuildError):
    """Not `key=value` at all: docker's CLI refuses the flag value (exit 125)."""

    exit_code = 125

    def __init__(self, text: str) -> None:
        super().__init__(f'invalid argument "{text}" for "-f, --filter" flag: '
                         "bad format of filter (expected name=value)")


@dataclass
class Filters:
    values: dict[str, list[str]] = field(default_factory=dict)

    def __contains__(self, key: str) -> bool:
        return key in self.values

    def __bool__(self) -> bool:
        return bool(self.values)

    def get(self, key: str) -> list[str]:
        return self.values.get(key, [])

    def add(self, key: str, value: str) -> None:
        self.values.setdefault(key, []).append(value)

    def boolean(self, key: str) -> bool | None:
        """dangling=true|false (1|0); None when the key is not given."""
        vals = {v.lower() for v in self.get(key)}
        if not vals:
            return None
        if vals <= {"true", "1"}:
            return True
        if vals <= {"false", "0"}:
            return False
        raise InvalidFilter(f"{key}={','.join(self.get(key))}")

    def labels_match(self, labels: Mapping[str, str] | None) -> bool:
        """Every `label` matches, and not every `label!` does (docker's prune)."""
        labels = labels or {}
        if not all(_label(want, labels) for want in self.get("label")):
            return False
        nots = self.get("label!")
        return not (nots and all(_label(want, labels) for want in nots))


def _label(want: str, labels: Mapping[str, str]) -> bool:
    key, eq, value = want.partition("=")
    if key not in labels:
        return False
    return not eq or labels[key] == value


def parse(items: Iterable[str], allowed: Collection[str]) -> Filters:
    out = Filters()
    for item in items:
        key, eq, value = item.partition("=")
        key = key.strip().lower()
        if not eq or not key:
            raise BadFilterFormat(item)
        if key not in allowed:
            raise InvalidFilter(key)
        out.add(key, value)
    return out


# --- docker's path.Match (the reference filter's glob) ------------------------------

_GLOB_LIMIT = 1024


def glob_regex(pattern: str) -> re.Pattern:
    """Go's path.Match as a regex: `*` any run of non-/ characters, `?` one of them,
    `[...]` a class (`[^...]` negated), `\\` quotes the next character."""
    if len(pattern) > _GLOB_LIMIT:
        raise InvalidFilter(f"reference={pattern[:40]}…")
    out, i, n = [], 0, len(pattern)
    while i < n:
        c = pattern[i]
        if c == "*":
            out.append("[^/]*")
        elif c == "?":
            out.append("[^/]")
        elif c == "\\":
            if i + 1 >= n:
                raise InvalidFilter(f"reference={pattern}")
            i += 1
            out.append(re.escape(pattern[i]))
        elif c == "[":
            j = pattern.find("]", i + 2 if pattern[i + 1:i + 2] in ("^", "]") else i + 1)
            if j < 0:
                raise InvalidFilter(f"reference={pattern}")
            body = pattern[i + 1:j]
            neg = body.startswith("^")
            body = body[1:] if neg else body
            if not body:
                raise InvalidFilter(f"reference={pattern}")
            chars = "".join("\\" + ch if ch in "\\]^[" else ch for ch in body)
            out.append(f"[^/{chars}]" if neg else f"[{chars}]")
            i = j
        else:
            out.append(re.escape(c))
        i += 1
    return re.compile("".join(out) + r"\Z", re.DOTALL)


def reference_match(patterns: list[re.Pattern], repository: str, tag: str) -> bool:
    """docker's FamiliarMatch: the pattern against `repo:tag`, else against `repo`."""
    full = f"{repository}:{tag}"
    return any(p.match(full) or p.match(repository) for p in patterns)


# --- images --------------------------------------------------------------------------

def filter_images(store, rows: list, filters: Filters, labels_of: Callable[[str], dict]) -> list:
    """The `images` rows (layerstore.images.ImageRow) that pass `filters`;
    `labels_of(image_id)` gives an image's config labels."""
    from layerstore.humanize import parse_time

    if not filters:
        return rows
    dangling = filters.boolean("dangling")
    patterns = [glob_regex(p) for p in filters.get("reference")]

    def created_of(name: str):
        return parse_time(store.resolve(name).config.created)

    before = [created_of(n) for n in filters.get("before")]
    since = [created_of(n) for n in filters.get("since")]
    before_ids = {store.resolve(n).id for n in filters.get("before")}
    since_ids = {store.resolve(n).id for n in filters.get("since")}
    out = []
    for r in rows:
        is_dangling = r.repository == "<none>" and r.tag == "<none>"
        if dangling is not None and is_dangling != dangling:
            continue
        if patterns and (is_dangling or not reference_match(patterns, r.repository, r.tag)):
            continue
        if "label" in filters and not filters.labels_match(labels_of(r.image_id)):
            continue
        created = parse_time(r.created)
        if before and (r.image_id in before_ids or created is None
                       or not any(b is not None and created < b for b in before)):
            continue
        if since and (r.image_id in since_ids or created is None
                      or not any(s is not None and created > s for s in since)):
            continue
        out.append(r)
    return out


# --- containers ----------------------------------------------------------------------

def container_status(st) -> str:
    """docker's State.Status of a container record."""
    from builder.runner.lifecycle import is_active, is_running
    from builder.runner.pause import is_paused

    if is_running(st):
        return "paused" if is_paused(st) else "running"
    if st.status == "restarting" and is_active(st):
        return "restarting"
    return st.status if st.status not in ("running", "restarting") else "exited"


def _regex(key: str, value: str) -> re.Pattern:
    try:
        return re.compile(value)
    except re.error:
        raise InvalidFilter(f"{key}={value}") from None


def filter_containers(store, rows: list, filters: Filters) -> list:
    """The container records (builder.runner.containers.ContainerState) passing `filters`."""
    if not filters:
        return rows
    statuses = filters.get("status")
    for s in statuses:
        if s not in STATUSES:
            raise InvalidFilter(f"status={s}")
    names = [_regex("name", v) for v in filters.get("name")]
    ids = [_regex("id", v) for v in filters.get("id")]
    codes = []
    for v in filters.get("exited"):
        try:
            codes.append(int(v))
        except ValueError:
            raise InvalidFilter(f"exited={v}") from None
    ancestors = [_ancestor(store, v) for v in filters.get("ancestor")]
    chains: dict[str, list[str] | None] = {}
    out = []
    for st in rows:
        status = container_status(st)
        if statuses and status not in statuses:
            continue
        if names and not any(p.search(st.name) or p.search("/" + st.name) for p in names):
            continue
        if ids and not any(p.search(st.id) for p in ids):
            continue
        if codes and not (status == "exited" and st.started_at and st.exit_code in codes):
            continue
        if "label" in filters and not filters.labels_match(st.labels):
            continue
        if ancestors and not any(a(st, chains) for a in ancestors):
            continue
        out.append(st)
    return out


def _ancestor(store, value: str) -> Callable:
    """ancestor=IMAGE: containers of that image (by name, tag or ID) or of an image built
    on it (its layers are the bottom of theirs)."""
    from layerstore.errors import NotFound

    try:
        img = store.resolve(value)
    except (NotFound, PybuildError):
        img = None
    base = list(img.config.diff_ids) if img is not None else None

    def diff_ids(st, chains) -> list[str] | None:
        if st.image_id not in chains:
            try:
                chains[st.image_id] = list(store.resolve(st.image_id).config.diff_ids)
            except PybuildError:
                chains[st.image_id] = None
        return chains[st.image_id]

    def match(st, chains) -> bool:
        if st.image_name == value:
            return True
        if img is None:
            return False
        if st.image_id == img.id:
            return True
        mine = diff_ids(st, chains)
        return bool(base) and mine is not None and mine[:len(base)] == base
    return match


# --- volumes -------------------------------------------------------------------------

def filter_volumes(vols: list, filters: Filters, in_use: set[str]) -> list:
    """Volumes (builder.runner.volumes.Volume) passing `filters`."""
    if not filters:
        return vols
    dangling = filters.boolean("dangling")
    for d in filters.get("driver"):
        if not d:
            raise InvalidFilter("driver=")
    out = []
    for v in vols:
        if dangling is not None and (v.name not in in_use) != dangling:
            continue
        if filters.get("name") and not any(n in v.name for n in filters.get("name")):
            continue
        if filters.get("driver") and "local" not in filters.get("driver"):
            continue
        if "label" in filters and not filters.labels_match(v.labels):
            continue
        out.append(v)
    return out


# --- prune ---------------------------------------------------------------------------

def dangling_images(store, filters: Filters) -> list[str]:
    """Digests of the untagged images whose labels pass `filters` (label, label!)."""
    from layerstore.errors import InvalidImage, NotFound

    out = []
    for name, desc in store.refs.entries():
        if name:
            continue
        try:
            labels = store.load_image(desc).config.config.Labels
        except (NotFound, InvalidImage):
            continue
        if filters.labels_match(labels):
            out.append(desc.digest)
    return out


# --- what the commands call ----------------------------------------------------------

def prune_filters(items: Iterable[str]) -> tuple[Filters, float | None]:
    """A prune's --filter values (until=, label=, label!=) and the until= time."""
    from builder.cache import parse_until

    parsed = parse(items, PRUNE)
    until = None
    for value in parsed.get("until"):
        if not value:
            raise InvalidFilter("until=")
        until = parse_until(value)
    return parsed, until


def each(names: Iterable[str], action: Callable[[str], None],
         warn: Callable[[str], None], own_status: bool = True) -> None:
    """`rm a missing b`: act on every name; one error line per failure, and exit 1 at the
    end when any failed (docker's rm, rmi and volume rm). One name alone fails as the
    command always did (its error's own exit status) with `own_status`, else exits 1 too
    (docker's pause, start, restart: the daemon's error is exit 1)."""
    names = list(names)
    if len(names) == 1 and own_status:
        action(names[0])
        return
    failed = False
    for name in names:
        try:
            action(name)
        except PybuildError as exc:
            warn(f"pybuild: error: {exc}")
            failed = True
    if failed:
        raise SystemExit(1)


def select_images(store, rows: list, items: Iterable[str], repository: str | None) -> list:
    """`images [REPOSITORY[:TAG]] [--filter ...]`: the positional argument is a reference
    filter, as docker's CLI makes it."""
    filters = parse(items, IMAGES)
    if repository:
        filters.add("reference", _familiar(repository))
    labels: dict[str, dict] = {}

    def labels_of(image_id: str) -> dict:
        if image_id not in labels:
            labels[image_id] = store.resolve(image_id).config.config.Labels or {}
        return labels[image_id]
    return filter_images(store, rows, filters, labels_of)


def _familiar(name: str) -> str:
    """`docker.io/library/busybox:1` -> `busybox:1`: rows show familiar names. A pattern
    (or what does not parse) is kept as typed."""
    from layerstore import reference

    if any(c in name for c in "*?[\\"):
        return name
    try:
        return reference.parse(name, default_tag=False).familiar
    except PybuildError:
        return name


def select_containers(open_store: Callable, rows: list, items: Iterable[str], show_all: bool,
                      last: int) -> list:
    """`ps [-a] [-n N|-l] [--filter ...]`, newest first as docker lists them: a status
    filter or -n implies -a; -n keeps the N newest of what passes the filters."""
    from builder.runner.lifecycle import is_active

    filters = parse(items, CONTAINERS)
    rows = sorted(rows, key=lambda st: (st.created, st.id), reverse=True)
    if not (show_all or last > 0 or "status" in filters):
        rows = [st for st in rows if is_active(st)]     # running, or about to restart
    if filters:
        rows = filter_containers(open_store() if "ancestor" in filters else None, rows, filters)
    return rows[:last] if last > 0 else rows


def container_sizes(store, rows: list) -> dict[str, str]:
    """`ps -s`: id -> "12B (virtual 4.26MB)": the bytes of the files in the container's
    upper dir (its writable layer) and those plus its image's content, as docker's."""
    import os

    from layerstore import resolver
    from layerstore.humanize import human_size
    from layerstore.layersizes import LayerSizes

    sizes = LayerSizes(store)
    images: dict[str, int] = {}
    out = {}
    cdir = os.path.join(store.root, "containers")
    for st in rows:
        rw = 0
        try:
            fd = os.open(os.path.join(cdir, st.id), os.O_RDONLY | os.O_DIRECTORY
                         | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError:
            fd = -1
        if fd >= 0:
            try:
                rw = resolver.tree_usage_at(fd, "upper", measure=resolver.content)
            finally:
                os.close(fd)
        if st.image_id not in images:
            try:
                images[st.image_id] = sizes.image(store.resolve(st.image_id))
            except PybuildError:
                images[st.image_id] = 0
        out[st.id] = f"{human_size(rw)} (virtual {human_size(rw + images[st.image_id])})"
    sizes.save()
    return out


def prune_containers(root, containers, items: Iterable[str]) -> tuple[list[str], int]:
    """`container prune [--filter until=|label=|label!=]`: (ids removed, bytes freed)."""
    from builder.cache import parse_until
    from builder.runner.lifecycle import prune
    from layerstore.humanize import parse_time
    from layerstore.usage import Freed

    filters = parse(items, CONTAINER_PRUNE)
    until = [parse_until(v) for v in filters.get("until")]

    def select(st) -> bool:
        if until:
            created = parse_time(st.created)
            if created is None or not all(created.timestamp() < u for u in until):
                return False
        return filters.labels_match(st.labels)
    with Freed(root, ("containers", "volumes")) as freed:
        gone = prune(containers, select if filters else None)
    return gone, freed.bytes


def prune_volumes(root, in_use: set[str], all_volumes: bool,
                  items: Iterable[str]) -> tuple[list[str], int]:
    """`volume prune [-a] [--filter label=|label!=|all=true]`: (names removed, bytes freed)."""
    from builder.runner.volumes import Volumes
    from layerstore.usage import Freed

    filters = parse(items, VOLUME_PRUNE)
    if filters.boolean("all"):
        all_volumes = True
    select = filters.labels_match if ("label" in filters or "label!" in filters) else None
    with Freed(root, ("volumes",)) as freed:
        gone = Volumes(root).prune(in_use, all_volumes, select=lambda v: select(v.labels)
                                   if select else True)
    return gone, freed.bytes
