"""`pybuild import`: a root filesystem tar becomes a one-layer image.

The tar is unpacked first (hostile entries are rejected there, and the
result doubles as the layer's snapshot), then re-packed canonically: sorted,
numeric owners, gzip — so the same rootfs always gives the same layer.
"""

from __future__ import annotations

import os
import uuid
from typing import BinaryIO

from layerstore.humanize import rfc3339_now
from layerstore.model import ContainerConfig, History, ImageConfig, Platform
from layerstore.platforms import host_platform
from layerstore.snapshots import TMP_PREFIX, remove_tree
from layerstore.store import Store


def import_rootfs(store: Store, stream: BinaryIO, name: str | None, *, source: str = "-",
                  config: ContainerConfig | None = None, message: str | None = None,
                  platform: Platform | None = None, compression: str = "gzip",
                  source_date_epoch: int | None = None) -> str:
    """Returns the image ID; tags it `name` when given."""
    from layerstore.layer_apply import apply_layer

    platform = platform or host_platform()
    tmp = store.snapshots.dir / f"{TMP_PREFIX}import-{uuid.uuid4().hex[:12]}"
    tmp.mkdir(mode=0o755)
    with store.writing():
        try:
            apply_layer(stream, tmp, mode="flat")
            layer, diff_id = store.commit_layer(tmp, compression=compression, overlay=False,
                                                source_date_epoch=source_date_epoch)
            final = store.snapshots.path(diff_id)
            try:
                os.rename(tmp, final)
            except OSError:
                remove_tree(tmp)  # the same rootfs is already unpacked
        except BaseException:
            remove_tree(tmp)
            raise
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
