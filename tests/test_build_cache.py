"""The build cache: no change rebuilds nothing, one changed file reruns only from the
first step that reads it, keys ignore mtimes, --no-cache runs everything."""

from __future__ import annotations

import json
import os
import textwrap
import time

import pytest

from buildpeer import import_busybox, steps

DOCKERFILE = """\
FROM busybox
ENV A=1
COPY first.txt /first.txt
RUN cat /first.txt > /derived
COPY second.txt /second.txt
RUN cat /second.txt >> /derived
CMD ["cat", "/derived"]
"""


def _ctx(tmp_path):
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    (ctx / "Dockerfile").write_text(DOCKERFILE)
    (ctx / "first.txt").write_text("first\n")
    (ctx / "second.txt").write_text("second\n")
    return ctx


def _build(pybuild, ctx, *args):
    p = pybuild("build", "--progress", "plain", "-t", "cached", *args, ctx)
    return steps(p.stderr), p.stdout.strip().splitlines()[-1]


def test_rebuild_without_change_is_all_cached(pybuild, busybox_rootfs, tmp_path):
    import_busybox(pybuild, busybox_rootfs, tmp_path)
    ctx = _ctx(tmp_path)
    first, image1 = _build(pybuild, ctx)
    assert [first[n] for n in range(2, 8)] == ["DONE"] * 6
    digest1 = json.loads(pybuild("inspect", "cached").stdout)[0]["Descriptor"]["digest"]
    again, image2 = _build(pybuild, ctx)
    assert [again[n] for n in range(2, 8)] == ["CACHED"] * 6
    assert image1 == image2
    digest2 = json.loads(pybuild("inspect", "cached").stdout)[0]["Descriptor"]["digest"]
    assert digest1 == digest2
    # mtimes are not part of the key
    os.utime(ctx / "first.txt", (time.time() + 100, time.time() + 100))
    touched, image3 = _build(pybuild, ctx)
    assert set(touched[n] for n in range(2, 8)) == {"CACHED"} and image3 == image1


def test_one_changed_file_reruns_from_the_first_step_reading_it(pybuild, busybox_rootfs, tmp_path):
    import_busybox(pybuild, busybox_rootfs, tmp_path)
    ctx = _ctx(tmp_path)
    _, image1 = _build(pybuild, ctx)
    (ctx / "second.txt").write_text("changed\n")
    st, image2 = _build(pybuild, ctx)
    assert [st[n] for n in range(2, 8)] == ["CACHED", "CACHED", "CACHED", "DONE", "DONE", "DONE"]
    assert image1 != image2
    assert pybuild("run", "--rm", "--network", "none", "cached").stdout == "first\nchanged\n"
    # a mode change is a content change too
    os.chmod(ctx / "first.txt", 0o600)
    st, _ = _build(pybuild, ctx)
    assert [st[n] for n in range(2, 5)] == ["CACHED", "DONE", "DONE"]


def test_no_cache_and_build_arg_change(pybuild, busybox_rootfs, tmp_path):
    import_busybox(pybuild, busybox_rootfs, tmp_path)
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    (ctx / "Dockerfile").write_text(textwrap.dedent("""\
        FROM busybox
        ARG FLAVOUR=plain
        RUN echo one > /one
        RUN echo $FLAVOUR > /flavour
        """))
    _build(pybuild, ctx)
    st, _ = _build(pybuild, ctx, "--no-cache")
    assert set(st[n] for n in range(2, 5)) == {"DONE"}
    st, _ = _build(pybuild, ctx, "--build-arg", "FLAVOUR=spicy")
    # ARG changes every RUN after it (docker puts build args in the RUN's environment)
    assert [st[n] for n in range(2, 5)] == ["CACHED", "DONE", "DONE"]


def test_cache_roots_keep_layers_through_prune(pybuild, busybox_rootfs, tmp_path, store_root):
    import_busybox(pybuild, busybox_rootfs, tmp_path)
    ctx = _ctx(tmp_path)
    _build(pybuild, ctx)
    roots = (store_root / "cache" / "roots").read_text().split()
    assert roots and all(r.startswith("sha256:") for r in roots)
    pybuild("rmi", "cached")
    pybuild("prune")
    st, _ = _build(pybuild, ctx)
    assert set(st[n] for n in range(2, 8)) == {"CACHED"}


def test_cache_prune_policy_and_cache_mounts(bb_store):
    pybuild, ctx, store_root = bb_store
    from builder.cache import BuildCache

    cache = BuildCache(store_root)
    assert cache.prune(until=0) == 0                       # nothing is older than the epoch
    st, _ = _build(pybuild, ctx)
    assert set(st[n] for n in range(2, 8)) == {"CACHED"}
    assert cache.prune(keep_bytes=10**12) == 0             # everything fits
    assert cache.prune(until=time.time() + 60) > 0         # everything is older than that
    assert (store_root / "cache" / "roots").read_text() == ""
    st, _ = _build(pybuild, ctx)
    assert set(st[n] for n in range(2, 8)) == {"DONE"}
    (store_root / "cache" / "mounts" / "x").mkdir(parents=True)
    assert cache.clear_mounts() == 1 and not any((store_root / "cache" / "mounts").iterdir())


@pytest.fixture
def bb_store(pybuild, busybox_rootfs, tmp_path, store_root):
    import_busybox(pybuild, busybox_rootfs, tmp_path)
    ctx = _ctx(tmp_path)
    _build(pybuild, ctx)
    return pybuild, ctx, store_root


def test_prune_command_applies_the_cache_policy(pybuild, busybox_rootfs, tmp_path, store_root):
    import_busybox(pybuild, busybox_rootfs, tmp_path)
    ctx = _ctx(tmp_path)
    _build(pybuild, ctx)
    pybuild("rmi", "cached")
    out = pybuild("prune", "--keep-storage", "1g", "--filter", "until=24h").stdout
    assert "0 build cache entries" in out
    st, _ = _build(pybuild, ctx)
    assert set(st[n] for n in range(2, 8)) == {"CACHED"}
    pybuild("rmi", "cached")
    out = pybuild("prune", "--filter", "until=0s", "--cache-mounts").stdout
    assert " 0 build cache entries" not in out and "blobs" in out
    assert (store_root / "cache" / "roots").read_text() == ""
    st, _ = _build(pybuild, ctx)
    assert set(st[n] for n in range(2, 8)) == {"DONE"}
    bad = pybuild("prune", "--filter", "since=1h", check=False)
    assert bad.returncode == 1 and "invalid filter 'since'" in bad.stderr   # docker's words
