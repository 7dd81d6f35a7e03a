"""`pybuild import`: a root filesystem tar becomes a one-layer image.

The tar is unpacked first (hostile entries are rejected there, and the
result doubles as the layer's snapshot), then re-packed canonically: sorted,
numeric owners, gzip — so the same rootfs always gives the same layer.
"""

from __future__ import annotations

import os
from typing import BinaryIO

from layerstore import workdirs

from layerstore.humanize import rfc3339_now
from layerstore.model import ContainerConfig, History, ImageConfig, Platform
from layerstore.platforms import host_platform
from layerstore.snapshots import TMP_PREFIX
from layerstore.store import Store


def import_rootfs(store: Store, stream: BinaryIO, name: str | None, *, source: str = "-",
                  config: ContainerConfig | None = None, message: str | None = None,
                  platform: Platform | None = None, compression: str = "gzip",
                  source_date_epoch: int | None = None) -> str:
    """Returns the image ID; tags it `name` when given."""
    from layerstore.layer_apply import apply_layer

    platform = platform or host_platform()
    with store.writing():
        # owned by this process (a flock): a killed import's dir is reclaimed by prune, a
        # running one never is; the root of a rootfs is 0755, as docker's
        tmp = workdirs.create(store.snapshots.dir, f"{TMP_PREFIX}import-", mode=0o755)
        try:
            apply_layer(stream, tmp.path, mode="flat")
            layer, diff_id = store.commit_layer(tmp.path, compression=compression, overlay=False,
                                                source_date_epoch=source_date_epoch)
            if store.snapshots.commit(tmp.path, diff_id):   # one layer: chain ID = diff ID
                tmp.disown()
        finally:
            tmp.release()  # the same rootfs is already unpacked, or the import failed
        created = rfc3339_now(source_date_epoch)
        cfg = ImageConfig(architecture=platform.architecture, os=platform.os,
                          variant=platform.variant, created=created,
                          config=config or ContainerConfig(), diff_ids=[diff_id],
                          history=[History(created=created, created_by="",
                                           comment=message or f"Imported from {source}")])
        manifest = store.commit_image(cfg, [layer])
        if name:
            store.tag(name, manifest)
        else:
            store.refs.add_untagged(manifest)
        return store.read_manifest(manifest).config.digest
