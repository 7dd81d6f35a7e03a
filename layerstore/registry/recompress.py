"""Re-encoding layers for push (`--compression`, `--force-compression`).

Uncompressed layers are compressed with the requested format; layers already
compressed some other way are re-encoded only when forced, because that
changes their digests (and so the manifest's). Diff IDs do not change: they
are of the uncompressed tar, so the config stays byte for byte the same.
"""

from __future__ import annotations

from layerstore import compression as comp
from layerstore import mediatypes as mt
from layerstore.model import Descriptor, Index, Manifest, canonical_json
from layerstore.store import Store

_KIND = {mt.OCI_LAYER: comp.NONE, mt.DOCKER_LAYER: comp.NONE, mt.OCI_LAYER_GZIP: comp.GZIP,
         mt.DOCKER_LAYER_GZIP: comp.GZIP, mt.OCI_LAYER_ZSTD: comp.ZSTD}


def _reencode(store: Store, layer: Descriptor, target: str) -> Descriptor:
    with store.blobs.open(layer.digest) as src, store.blobs.writer() as w:
        _kind, reader = comp.open_reader(src)
        out = comp.open_writer(w, target)
        while chunk := reader.read(comp.CHUNK):
            out.write(chunk)
        out.close()
        info = w.commit()
    return Descriptor(comp.media_type(target), info.digest, info.size, annotations=layer.annotations)


def manifest(store: Store, m: Manifest, target: str, force: bool) -> Manifest:
    """`m` with its layers in `target` compression (a new manifest only if one changed)."""
    layers, changed = [], False
    for layer in m.layers:
        kind = _KIND.get(layer.media_type)
        if kind is None or kind == target or (kind != comp.NONE and not force):
            layers.append(layer)
            continue
        layers.append(_reencode(store, layer, target))
        changed = True
    if not changed:
        return m
    config = Descriptor(mt.OCI_CONFIG if m.config.media_type == mt.DOCKER_CONFIG
                        else m.config.media_type, m.config.digest, m.config.size)
    new = Manifest(config=config, layers=layers, media_type=mt.OCI_MANIFEST,
                   annotations=m.annotations, subject=m.subject)
    new.raw = canonical_json(new.to_json())
    store.put_json(new.raw, mt.OCI_MANIFEST)
    return new


def index(idx: Index, replaced: dict[str, Manifest]) -> Index:
    """`idx` pointing at the re-encoded manifests (by old digest)."""
    if not replaced:
        return idx
    from layerstore import digest as dg

    entries = []
    for d in idx.manifests:
        new = replaced.get(d.digest)
        if new is None:
            entries.append(d)
            continue
        data = new.to_bytes()
        entries.append(Descriptor(mt.OCI_MANIFEST, dg.of_bytes(data), len(data),
                                  annotations=d.annotations, platform=d.platform))
    out = Index(manifests=entries, media_type=mt.OCI_INDEX, annotations=idx.annotations)
    out.raw = canonical_json(out.to_json())
    return out
