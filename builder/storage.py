"""The store's disk: `pybuild system df`, and the `--max-storage` bound of build and pull.

Both rest on layerstore.usage (what each blob, snapshot and directory takes, as
du counts it) and layerstore.budget (which roots keep which blob and snapshot);
this module adds what only the builder knows: the build cache records, the
containers (running or not) and their volumes.
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Callable, Iterator

from builder.cache import BuildCache
from layerstore import reference
from layerstore.budget import (BudgetReport, InUse, cache_size, enforce, ledger_for,
                               limit_for)
from layerstore.errors import PybuildError
from layerstore.humanize import bytes_size, human_duration, human_size, quoted, since
from layerstore.images import columns
from layerstore.usage import measure

# --- the bound -------------------------------------------------------------------------


def note_build(used: InUse, result) -> None:
    """What a finished build used (builder.build.BuildResult): its image, the blobs and
    the cache records it rests on."""
    used.manifests.add(result.manifest.digest)
    used.blobs.update(result.used.get("blobs", ()))
    used.keys.update(result.used.get("entries", ()))


def note_pull(used: InUse, result) -> None:
    """What a pull stored (layerstore.registry.pull.PullResult)."""
    used.manifests.add(result.top.digest)
    used.manifests.update(m.digest for m in result.manifests)


def keep_under(store, limit: int, used: InUse | None = None) -> BudgetReport:
    """Prune `store` until it takes at most `limit` bytes, never what `used` names."""
    cache = BuildCache(store.root)
    return enforce(store, limit, records=cache.records,
                   forget=lambda keys, recs: cache.forget(keys, recs, tidy=True),
                   in_use=used)


def report_lines(report: BudgetReport) -> list[str]:
    """What a bounded build or pull says on stderr: nothing when the store was under its
    limit, one line for what was pruned, one warning when what must stay is too much."""
    lines = []
    if report.pruned:
        lines.append(f"pruned {report.records} cache records, {report.images} images, "
                     f"{report.snapshots} snapshots: {bytes_size(report.freed)} freed; "
                     f"store {bytes_size(report.after)} of {bytes_size(report.limit)}")
    if report.over:
        lines.append(f"WARNING: the store keeps {bytes_size(report.after)} that must stay "
                     "(tagged images, images of containers, what this command used), more "
                     f"than its limit of {bytes_size(report.limit)}")
    return lines


@contextmanager
def bounded(root, open_store: Callable, flag: str | None,
            echo: Callable[[str], None]) -> Iterator[InUse]:
    """Around a build or a pull: the limit (--max-storage `flag`, $PYBUILD_MAX_STORAGE or
    the store's setting) is read first, so a bad value fails before any work; when the
    command ends, done or failed (not interrupted), the store is pruned under it,
    keeping what the command noted in the InUse it was given."""
    limit = limit_for(root, flag)
    used = InUse()
    try:
        yield used
    except Exception:
        if limit is not None:
            _prune(open_store, limit, used, echo)
        raise
    if limit is not None:
        _prune(open_store, limit, used, echo)


def _prune(open_store: Callable, limit: int, used: InUse, echo: Callable[[str], None]) -> None:
    try:
        report = keep_under(open_store(), limit, used)
    except (PybuildError, OSError) as exc:     # the command's own outcome stands
        echo(f"WARNING: pruning the store to its limit failed: {exc}")
        return
    for line in report_lines(report):
        echo(line)


# --- system df -------------------------------------------------------------------------


@dataclass
class DfRow:
    type: str
    total: int
    active: int
    size: int
    reclaimable: int
    percent: bool = True        # docker prints no percentage for the build cache

    def reclaimable_text(self) -> str:
        text = human_size(self.reclaimable, 4)
        if self.percent and self.size > 0:
            text += f" ({self.reclaimable * 100 // self.size}%)"
        return text

    def to_json(self) -> dict:
        return {"Active": str(self.active), "Reclaimable": self.reclaimable_text(),
                "Size": human_size(self.size, 4), "TotalCount": str(self.total),
                "Type": self.type}


@dataclass
class ImageUsage:
    names: list[str]
    digest: str                 # what the names point at (manifest or index)
    image_id: str
    created: str | None
    size: int                   # blobs (content) + snapshots of the image
    shared: int                 # of that, what another image holds too
    containers: int

    @property
    def unique(self) -> int:
        return self.size - self.shared


@dataclass
class ContainerUsage:
    id: str
    image: str
    command: str
    volumes: int
    size: int
    created: str
    status: str
    name: str
    running: bool


@dataclass
class VolumeUsage:
    name: str
    links: int
    size: int


@dataclass
class CacheUsage:
    key: str
    size: int                   # its file + what only it holds
    last_used: float
    shared: bool                # holds something another record or image holds too
    layer: bool                 # a step that made a layer


@dataclass
class DiskUsage:
    rows: list[DfRow]
    images: list[ImageUsage] = field(default_factory=list)
    containers: list[ContainerUsage] = field(default_factory=list)
    volumes: list[VolumeUsage] = field(default_factory=list)
    cache: list[CacheUsage] = field(default_factory=list)
    mounts: dict[str, int] = field(default_factory=dict)
    total: int = 0              # the whole store, as du counts it

    def row(self, kind: str) -> DfRow:
        return next(r for r in self.rows if r.type == kind)


def disk_usage(store) -> DiskUsage:
    """What uses the store's space, docker's `system df` rows: each blob and snapshot
    counted once however many images, records or containers share it; blobs at their
    content size (as `images` shows them), directories as du counts them."""
    from builder.runner.containers import Containers
    from builder.runner.lifecycle import is_running
    from builder.runner.volumes import Volumes

    conts = Containers(store.root).all()
    vols = Volumes(store.root).list()
    cache = BuildCache(store.root)
    with store.writing():           # no prune while we look
        usage = measure(store)
        recs = cache.records()
        led = ledger_for(store, usage, recs)
        refs = store.refs.entries()
        configs = _configs(store, refs)

    def size_of(items) -> int:
        return led.size_of(*items, sizes=True)

    top_of = {("tagged", n) if n else ("dangling", d.digest): d.digest for n, d in refs}
    is_image = lambda r: r in top_of

    def image_items(digest: str) -> tuple[set[str], set[str]]:
        b: set[str] = set()
        c: set[str] = set()
        for root, top in top_of.items():
            if top == digest:
                hb, hc = led.held.get(root, (set(), set()))
                b, c = b | hb, c | hc
        return b, c

    tops = list(dict.fromkeys(d.digest for _, d in refs))
    items = {t: image_items(t) for t in tops}
    c_images = [st.image for st in conts]
    users = {t: sum(1 for m in c_images if m in items[t][0]) for t in tops}
    active = [t for t in tops if users[t]]
    all_b, all_c = led.any(is_image)
    act_b = set().union(*(items[t][0] for t in active)) if active else set()
    act_c = set().union(*(items[t][1] for t in active)) if active else set()

    def shared_with_other_images(t: str) -> int:
        b, c = items[t]
        others_b = {x for x in b if len({top_of[r] for r in led.blobs[x] if is_image(r)}) > 1}
        others_c = {x for x in c if len({top_of[r] for r in led.chains[x] if is_image(r)}) > 1}
        return size_of((others_b, others_c))

    images = []
    for t in tops:
        names = [n for n, d in refs if n and d.digest == t]
        image_id, created = configs.get(t, ("", None))
        images.append(ImageUsage(names, t, image_id, created, size_of(items[t]),
                                 shared_with_other_images(t), users[t]))
    images.sort(key=lambda i: i.created or "", reverse=True)
    images_size = size_of((all_b, all_c))
    rows = [DfRow("Images", len(tops), len(active), images_size,
                  images_size - size_of((act_b, act_c)))]

    containers = []
    for st in conts:
        running = is_running(st)
        containers.append(ContainerUsage(
            st.id, st.image_name, quoted(" ".join(st.argv)),
            sum(1 for m in st.mounts if "Name" in m), usage.containers.get(st.id, 0),
            st.created, st.status, st.name, running))
    rows.append(DfRow("Containers", len(containers), sum(c.running for c in containers),
                      sum(c.size for c in containers),
                      sum(c.size for c in containers if not c.running)))

    links: dict[str, int] = {}
    for st in conts:
        for m in st.mounts:
            if "Name" in m:
                links[m["Name"]] = links.get(m["Name"], 0) + 1
    volumes = [VolumeUsage(v.name, links.get(v.name, 0), usage.volumes.get(v.name, 0))
               for v in vols]
    rows.append(DfRow("Local Volumes", len(volumes), sum(1 for v in volumes if v.links),
                      sum(v.size for v in volumes),
                      sum(v.size for v in volumes if not v.links)))

    c_size = cache_size(led)
    rows_cache = []
    for r in sorted(recs, key=lambda r: r.last_used, reverse=True):
        hb, hc = led.held.get(("cache", r.key), (set(), set()))
        mine = ({x for x in hb if led.blobs[x] == {("cache", r.key)}},
                {x for x in hc if led.chains[x] == {("cache", r.key)}})
        shared = len(mine[0]) < len(hb) or len(mine[1]) < len(hc)
        rows_cache.append(CacheUsage(r.key, r.size + size_of(mine), r.last_used, shared,
                                     r.manifest is not None))
    rows.append(DfRow("Build Cache", len(recs), 0, c_size, c_size, percent=False))

    mounts = {name: size for name, size in usage.cache_mounts.items()}
    dirs = [n for n in mounts if not n.endswith(".lock") and not n.startswith(".")]
    m_size = sum(mounts.values())
    rows.append(DfRow("Cache Mounts", len(dirs), 0, m_size, m_size, percent=False))
    return DiskUsage(rows, images, containers, volumes, rows_cache,
                     {n: mounts[n] for n in dirs}, usage.total)


def _configs(store, refs) -> dict[str, tuple[str, str | None]]:
    """top digest -> (image ID, created) of each image the refs name."""
    out: dict[str, tuple[str, str | None]] = {}
    for _name, desc in refs:
        if desc.digest in out:
            continue
        try:
            img = store.load_image(desc)
        except PybuildError:
            continue
        out[desc.digest] = (img.id, img.config.created)
    return out


def format_table(du: DiskUsage) -> str:
    table = [("TYPE", "TOTAL", "ACTIVE", "SIZE", "RECLAIMABLE")]
    table += [(r.type, str(r.total), str(r.active), human_size(r.size, 4), r.reclaimable_text())
              for r in du.rows]
    return columns(table)


def format_verbose(du: DiskUsage) -> str:
    """docker's `system df -v` sections, and one for the cache mounts."""
    images = [("REPOSITORY", "TAG", "IMAGE ID", "CREATED", "SIZE", "SHARED SIZE",
               "UNIQUE SIZE", "CONTAINERS")]
    for i in du.images:
        for repo, tag in _repo_tags(i.names):
            images.append((repo, tag, i.image_id[7:19], since(i.created), human_size(i.size, 4),
                           human_size(i.shared, 4), human_size(i.unique, 4), str(i.containers)))
    containers = [("CONTAINER ID", "IMAGE", "COMMAND", "LOCAL VOLUMES", "SIZE", "CREATED",
                   "STATUS", "NAMES")]
    for c in du.containers:
        containers.append((c.id[:12], quoted(c.image, marks=False), c.command[:22],
                           str(c.volumes), human_size(c.size, 4), since(c.created), c.status,
                           quoted(c.name, marks=False)))
    volumes = [("VOLUME NAME", "LINKS", "SIZE")]
    volumes += [(v.name, str(v.links), human_size(v.size, 4)) for v in du.volumes]
    now = time.time()
    cache = [("CACHE ID", "CACHE TYPE", "SIZE", "LAST USED", "SHARED")]
    for r in du.cache:
        cache.append((r.key[:25], "regular" if r.layer else "metadata", human_size(r.size, 4),
                      human_duration(max(0.0, now - r.last_used)) + " ago",
                      "true" if r.shared else "false"))
    mounts = [("CACHE MOUNT", "SIZE")]
    mounts += [(name, human_size(size, 4)) for name, size in sorted(du.mounts.items())]
    return "\n".join([
        "Images space usage:", "", columns(images), "",
        "Containers space usage:", "", columns(containers), "",
        "Local Volumes space usage:", "", columns(volumes), "",
        f"Build cache usage: {human_size(du.row('Build Cache').size, 4)}", "", columns(cache), "",
        f"Cache mounts usage: {human_size(du.row('Cache Mounts').size, 4)}", "", columns(mounts)])


def verbose_json(du: DiskUsage) -> dict:
    """`system df -v --format json`: one object, docker's keys, sizes in bytes."""
    return {
        "Images": [{"Containers": i.containers, "CreatedAt": i.created or "", "ID": i.image_id,
                    "Digest": i.digest, "Names": i.names, "SharedSize": i.shared,
                    "Size": i.size, "UniqueSize": i.unique} for i in du.images],
        "Containers": [{"ID": c.id, "Image": c.image, "Command": c.command,
                        "LocalVolumes": c.volumes, "Size": c.size, "CreatedAt": c.created,
                        "Status": c.status, "Names": c.name} for c in du.containers],
        "Volumes": [{"Name": v.name, "Links": v.links, "Size": v.size} for v in du.volumes],
        "BuildCache": [{"ID": r.key, "CacheType": "regular" if r.layer else "metadata",
                        "Size": r.size, "LastUsedAt": r.last_used, "Shared": r.shared}
                       for r in du.cache],
        "CacheMounts": [{"ID": n, "Size": s} for n, s in sorted(du.mounts.items())],
    }


def _repo_tags(names: list[str]) -> list[tuple[str, str]]:
    if not names:
        return [("<none>", "<none>")]
    out = []
    for n in names:
        ref = reference.parse(n, default_tag=False)
        out.append((ref.familiar_repository, ref.tag or "<none>"))
    return out
