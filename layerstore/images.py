"""What `images`, `history`, `inspect`, `tag` and `rmi` show and do."""

from __future__ import annotations

from dataclasses import dataclass

from layerstore import reference
from layerstore.errors import NotFound, PybuildError
from layerstore.humanize import ellipsis, human_size, since
from layerstore.store import Store


@dataclass
class ImageRow:
    repository: str
    tag: str
    image_id: str
    created: str | None
    size: int
    digest: str


def list_images(store: Store) -> list[ImageRow]:
    """One row per name (and one per untagged image); SIZE is the uncompressed content,
    as docker's (layerstore.layersizes)."""
    from layerstore.layersizes import LayerSizes

    sizes = LayerSizes(store)
    rows = []
    for img in store.images():
        size = sizes.image(img)
        for name in img.names:
            ref = reference.parse(name, default_tag=False)
            rows.append(ImageRow(repository=ref.familiar_repository, tag=ref.tag or "<none>",
                                 image_id=img.id, created=img.config.created, size=size,
                                 digest=img.top.digest))
        if not img.names:  # dangling, as docker lists them
            rows.append(ImageRow("<none>", "<none>", img.id, img.config.created, size,
                                 img.top.digest))
    sizes.save()
    rows.sort(key=lambda r: (r.created or ""), reverse=True)
    return rows


def format_images(rows: list[ImageRow], no_trunc: bool = False, quiet: bool = False,
                  digests: bool = False) -> str:
    def ident(r: ImageRow) -> str:
        return r.image_id if no_trunc else r.image_id[7:19]

    if quiet:
        seen: list[str] = []
        for r in rows:
            if ident(r) not in seen:
                seen.append(ident(r))
        return "\n".join(seen)
    if digests:  # docker's `images --digests`: DIGEST after TAG
        table = [("REPOSITORY", "TAG", "DIGEST", "IMAGE ID", "CREATED", "SIZE")]
        table += [(r.repository, r.tag, r.digest or "<none>", ident(r), since(r.created),
                   human_size(r.size)) for r in rows]
        return columns(table)
    table = [("REPOSITORY", "TAG", "IMAGE ID", "CREATED", "SIZE")]
    table += [(r.repository, r.tag, ident(r), since(r.created), human_size(r.size)) for r in rows]
    return columns(table)


def columns(table: list[tuple[str, ...]]) -> str:
    """Left-aligned columns three spaces apart, like docker's tabwriter output."""
    widths = [max(len(row[i]) for row in table) for i in range(len(table[0]))]
    return "\n".join("   ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip()
                     for row in table)


@dataclass
class HistoryRow:
    image: str             # image ID for the top entry, "<missing>" below it
    created: str | None
    created_by: str
    size: int
    comment: str
    empty_layer: bool


def history(store: Store, name: str, platform=None) -> list[HistoryRow]:
    """Newest first, as docker prints it; layer sizes are the stored blob sizes.
    `platform`: which image of an index (default: this host's)."""
    img = store.resolve(name, platform)
    layers = iter(img.manifest.layers)
    rows = []
    entries = img.config.history or []
    if not entries:  # an image without history: one row per layer
        rows = [HistoryRow("<missing>", img.config.created, "", l.size, "", False)
                for l in img.manifest.layers]
    for h in entries:
        size = 0
        if not h.empty_layer:
            layer = next(layers, None)
            size = layer.size if layer else 0
        rows.append(HistoryRow("<missing>", h.created, h.created_by or "", size,
                               h.comment or "", h.empty_layer))
    rows.reverse()
    if rows:
        rows[0].image = img.id
    return rows


def format_history(rows: list[HistoryRow], no_trunc: bool = False, human: bool = True) -> str:
    table = [("IMAGE", "CREATED", "CREATED BY", "SIZE", "COMMENT")]
    for r in rows:
        image = r.image if (no_trunc or r.image == "<missing>") else r.image[7:19]
        created_by = table_created_by(r.created_by, no_trunc)
        created = since(r.created) if human else (r.created or "")
        size = human_size(r.size) if human else str(r.size)
        table.append((image, created, created_by, size, r.comment))
    return columns(table)


def table_created_by(text: str, no_trunc: bool = False) -> str:
    """CREATED BY in docker's table: one line per entry (a heredoc RUN's newlines shown
    as `\\n`, a tab as a space, as docker's table does); cut to 45 characters with an
    ellipsis unless --no-trunc."""
    one = text.replace("\r", "\\r").replace("\n", "\\n").replace("\t", " ")
    return one if no_trunc else ellipsis(one, 45)


def history_json(rows: list[HistoryRow]) -> list[dict]:
    """The fields of `docker history --format json`, one object per row."""
    return [{"Comment": r.comment, "CreatedAt": r.created or "", "CreatedBy": r.created_by,
             "CreatedSince": since(r.created), "ID": r.image, "Size": human_size(r.size),
             "EmptyLayer": r.empty_layer} for r in rows]


# the keys docker's image inspect always prints, so that `inspect -f '{{.Config.Entrypoint}}'`
# on an image without one prints <nil> instead of failing on a missing key
_CONFIG_DEFAULTS: dict = {"Hostname": "", "Domainname": "", "User": "", "AttachStdin": False,
                          "AttachStdout": False, "AttachStderr": False, "ExposedPorts": None,
                          "Tty": False, "OpenStdin": False, "StdinOnce": False, "Env": None,
                          "Cmd": None, "Image": "", "Volumes": None, "WorkingDir": "",
                          "Entrypoint": None, "OnBuild": None, "Labels": None}


def docker_config(config: dict) -> dict:
    out = {k: config.get(k, v) for k, v in _CONFIG_DEFAULTS.items()}
    out.update(config)
    return out


def inspect(store: Store, name: str) -> dict:
    """docker image inspect's shape, from our manifest and config."""
    from layerstore.layersizes import image_size

    img = store.resolve(name)
    cfg = img.config
    tags, digests = [], []
    for n in img.names:
        ref = reference.parse(n, default_tag=False)
        if ref.tag:
            tags.append(ref.familiar)
        digests.append(f"{ref.familiar_repository}@{img.top.digest}")
    return {
        "Id": img.id,
        "RepoTags": tags,
        "RepoDigests": sorted(set(digests)),
        "Parent": "",
        "Comment": next((h.comment for h in reversed(cfg.history) if h.comment), ""),
        "Created": cfg.created or "",
        "Author": cfg.author or "",
        "DockerVersion": "",
        "Config": docker_config(cfg.config.to_json()),
        "Architecture": cfg.architecture,
        **({"Variant": cfg.variant} if cfg.variant else {}),
        "Os": cfg.os,
        "Size": image_size(store, img),
        "RootFS": {"Type": "layers", "Layers": list(cfg.diff_ids)},
        "Descriptor": img.descriptor.to_json(),
        "Manifest": img.manifest.to_json(),
        "Metadata": {"LastTagTime": ""},
    }


def tag(store: Store, source: str, target: str) -> str:
    img = store.resolve(source)
    return store.tag(target, img.top)


def rmi(store: Store, name: str, force: bool = False) -> list[str]:
    """Untag `name`; an image ID removes every tag of that image (with force
    when it has several, as docker asks). Returns the names removed; blobs go
    at the next `prune`."""
    try:
        full = reference.normalize(name)
    except PybuildError:
        full = None
    if full and store.refs.find(full) is not None:
        store.refs.delete(full)
        return [full]
    img = store.resolve(name)
    names = img.names
    if not names:
        raise NotFound(f"{name}: no such image in the store")
    if len(names) > 1 and not force:
        raise PybuildError(f"unable to delete {img.id[7:19]} (must be forced): image is "
                           f"referenced in {len(names)} names")
    for n in names:
        store.refs.delete(n)
    return names
