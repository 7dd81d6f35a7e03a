"""`pybuild commit`: a container's changes as a new image.

The image is the container's image plus one layer: its upper dir written by the
layer codec (store.commit_layer: the diff a build's RUN step takes, whiteouts and
opaque dirs included), without the stubs the sandbox made for a running container
(diff.stubs_in_upper). The config is the image's with the container's own settings
(Env, Cmd/Entrypoint, WorkingDir, User, Labels: what `run` gave it, as docker's
commit keeps them), then the --change instructions (builder.config_changes, as
`import -c`), and one history entry (created_by: the container's command; -m, -a).

The upper dir stays where it is (the container keeps it): the snapshot of the new
layer is unpacked from its blob when the image first runs. A running container is
read while it runs (no freezer here: a file it writes meanwhile may be refused as
"changed while writing the layer"; stop it first for a consistent image).
"""

from __future__ import annotations

import copy
import shlex

from layerstore.humanize import rfc3339_now
from layerstore.model import History
from layerstore.store import Store

from .containers import Containers, ContainerState
from .fsview import FsError, container_image


def _config(cfg, st: ContainerState) -> None:
    """The container's run settings into the image config (docker commit keeps them)."""
    c = cfg.config
    ep = list(c.Entrypoint or [])
    if ep and st.argv[:len(ep)] == ep:
        c.Cmd = st.argv[len(ep):] or c.Cmd
    else:
        c.Entrypoint = None
        c.Cmd = list(st.argv) or c.Cmd
    c.Env = [f"{k}={v}" for k, v in st.env.items()] or c.Env
    c.WorkingDir = st.cwd if st.cwd and st.cwd != "/" else c.WorkingDir
    if st.user and not (st.user == "0" and not c.User):
        c.User = st.user
    if st.labels:
        c.Labels = dict(st.labels)


def commit(store: Store, containers: Containers, ref: str, repo: str | None, *,
           changes: list[str], message: str | None, author: str | None) -> str:
    """The new image's ID (config digest); tagged `repo` when given."""
    from layerstore import reference

    from .diff import stubs_in_upper

    st = containers.find(ref)
    if repo:
        try:
            reference.parse(repo)
        except Exception as e:
            raise FsError(f"invalid reference format: {repo}: {e}") from None
    image = container_image(store, st)
    cfg = copy.deepcopy(image.config)
    _config(cfg, st)
    if changes:
        from builder.config_changes import apply_changes

        cfg.config = apply_changes(cfg.config, list(changes))
    exclude = frozenset(p.lstrip("/").encode() for p in stubs_in_upper(store, containers, st))
    upper = containers.path(st.id) / "upper"
    with store.writing():
        layer, diff_id = store.commit_layer(upper, compression="gzip", overlay=True,
                                            exclude=exclude)
        created = rfc3339_now()
        cfg.created = created
        if author:
            cfg.author = author
        cfg.diff_ids = list(cfg.diff_ids) + [diff_id]
        cfg.history = list(cfg.history) + [History(created=created, created_by=shlex.join(st.argv),
                                                   author=author, comment=message)]
        manifest = store.commit_image(cfg, list(image.manifest.layers) + [layer])
        if repo:
            store.tag(repo, manifest)
        else:
            store.refs.add_untagged(manifest)
        return store.read_manifest(manifest).config.digest
