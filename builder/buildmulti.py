"""`build --platform linux/amd64,linux/arm64`: one build per platform, then one OCI image
index naming each platform's manifest, tagged and pushed as docker buildx does.

Each platform is a whole build of its own (its own cache keys: the platform is in them
through the base image chosen from an index, FROM scratch and TARGETPLATFORM), so a stage
`FROM --platform=$BUILDPLATFORM` runs natively once per target with that target's
TARGETARCH, as with buildx. Foreign platforms' RUN steps run under qemu-user
(sandbox/binfmt.py). The per-platform images are not left as dangling images: the index
holds them.
"""

from __future__ import annotations

import dataclasses

import click

from layerstore import mediatypes as mt
from layerstore.errors import PybuildError
from layerstore.model import Descriptor, Index, Platform

# outputs a multi-platform result can go to: the store (and a registry), or an OCI archive
# of the index; a docker-archive holds one platform, local/tar one filesystem
MULTI_OUTPUTS = ("image", "registry", "oci")


@dataclasses.dataclass
class MultiResult:
    index: Descriptor
    names: list[str]
    results: list          # BuildResult of each platform, in the order asked
    steps: int
    cached: int
    warnings: list[str]


def check_output(out: dict[str, str]) -> None:
    if out["type"] not in MULTI_OUTPUTS:
        raise PybuildError(f"--output type={out['type']}: holds one platform; a build for "
                           "several platforms goes to the store, a registry or type=oci")


def build_platforms(store, opts, platforms: list[str], progress_for, used=None) -> MultiResult:
    """Build `opts` once per platform (in order; each with its own progress from
    `progress_for(platform)`), then write and tag the index."""
    from builder.build import build

    results = []
    for p in platforms:
        one = dataclasses.replace(opts, platform=p, tags=[])
        progress = progress_for(p)
        try:
            results.append(build(store, one, progress))
        finally:
            progress.close()
        if used is not None:
            from builder.storage import note_build

            note_build(used, results[-1])
    manifests = []
    for r in results:
        cfg = store.read_config(store.read_manifest(r.manifest))
        manifests.append(Descriptor(r.manifest.media_type, r.manifest.digest, r.manifest.size,
                                    platform=Platform(cfg.os or "linux", cfg.architecture,
                                                      cfg.variant)))
    index = Index(manifests=manifests, media_type=mt.OCI_INDEX)
    top = store.put_json(index.to_bytes(), mt.OCI_INDEX)
    names = [store.tag(t, top) for t in opts.tags]
    if not names:
        store.refs.add_untagged(top)
    for r in results:       # reachable through the index now: not dangling images
        store.refs.remove_untagged(r.manifest.digest)
    warnings = [w for r in results for w in r.warnings]
    return MultiResult(top, names, results, sum(r.steps for r in results),
                       sum(r.cached for r in results), list(dict.fromkeys(warnings)))


def plain_header(platform: str, mode: str) -> None:
    """Which platform the steps below are for (BuildKit prefixes each step instead)."""
    if mode == "plain":
        click.echo(f"#0 building for {platform}", err=True)
