"""An image's layers applied one over another into a plain directory (the
"flat" view a container sees), for `--output type=local` and comparisons."""

from __future__ import annotations

from pathlib import Path

from layerstore.store import Image, Store


def unpack_image(store: Store, image: Image, dest: Path) -> None:
    from layerstore.layer_apply import apply_layer

    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    for layer, diff_id in zip(image.manifest.layers, image.config.diff_ids):
        with store.blobs.open(layer.digest) as stream:
            apply_layer(stream, dest, mode="flat", expected_diff_id=diff_id)
