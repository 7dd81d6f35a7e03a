"""Push and pull against a plain-HTTP docker-registry, with skopeo as the peer."""

from __future__ import annotations

import json

import pytest

from layerstore import mediatypes as mt
from layerstore.model import Descriptor, Index, Platform, canonical_json
from layerstore.platforms import parse_platform
from layerstore.errors import NotFound
from layerstore.registry import open_client
from layerstore.registry.errors import ManifestUnknown, NameUnknown
from layerstore.registry.pull import pull
from layerstore.registry.push import push
from layerstore.store import Store
from test_registry_helpers import (config_env, make_image, random_files,  # noqa: F401
                                   registry, skopeo)


def oci_dir_digests(path) -> tuple[str, list[str], str]:
    """(manifest digest, layer digests, config digest) of the single image in an OCI dir."""
    index = json.loads((path / "index.json").read_text())
    top = index["manifests"][0]["digest"]
    manifest = json.loads((path / "blobs" / "sha256" / top[7:]).read_bytes())
    for blob in [manifest["config"], *manifest["layers"]]:
        data = (path / "blobs" / "sha256" / blob["digest"][7:]).read_bytes()
        import hashlib
        assert "sha256:" + hashlib.sha256(data).hexdigest() == blob["digest"]
    return top, [l["digest"] for l in manifest["layers"]], manifest["config"]["digest"]


def image_digests(store: Store, name: str) -> tuple[str, list[str], str]:
    img = store.resolve(name)
    return img.descriptor.digest, [l.digest for l in img.manifest.layers], img.id


def test_push_then_skopeo_reads_back_identical_digests(tmp_path, registry, config_env):
    store = Store.open(tmp_path / "store")
    desc = make_image(store, "demo:1", [random_files(3, 2000, 1), random_files(2, 300_000, 2)])
    dest = f"{registry.host}/pybuild/demo:1"
    result = push(store, "demo:1", dest)
    assert result.digest == desc.digest
    assert result.uploaded == 3 and result.existing == 0

    raw = skopeo("inspect", "--raw", "--tls-verify=false", f"docker://{dest}").stdout
    assert raw.encode() == store.blobs.read(desc.digest)
    info = json.loads(skopeo("inspect", "--tls-verify=false", f"docker://{dest}").stdout)
    assert info["Digest"] == desc.digest

    out = tmp_path / "oci-out"
    skopeo("copy", "--src-tls-verify=false", f"docker://{dest}", f"oci:{out}:demo")
    assert oci_dir_digests(out) == image_digests(store, "demo:1")

    again = push(store, "demo:1", dest)          # everything is there now
    assert again.existing == 3 and again.uploaded == 0


def test_round_trip_into_empty_store(tmp_path, registry, config_env):
    src = Store.open(tmp_path / "src")
    make_image(src, "rt:1", [random_files(1, 100, 7), random_files(4, 40_000, 8),
                             random_files(1, 3_000_000, 9)])
    dest = f"{registry.host}/rt/img:v1"
    push(src, "rt:1", dest)
    dst = Store.open(tmp_path / "dst")
    result = pull(dst, dest)
    assert result.name == dest
    assert image_digests(dst, dest) == image_digests(src, "rt:1")
    assert result.fetched == sum(l.size for l in dst.resolve(dest).manifest.layers) + \
        dst.blobs.size(dst.resolve(dest).id)
    for digest in dst.blobs.digests():
        assert dst.blobs.rehash(digest) == digest
    # a second pull finds everything in the store
    again = pull(dst, dest)
    assert again.fetched == 0 and again.skipped == 4
    # pull by digest verifies and records name@digest
    by_digest = f"{registry.host}/rt/img@{result.top.digest}"
    third = Store.open(tmp_path / "third")
    res = pull(third, by_digest)
    assert res.name == by_digest
    assert third.resolve(by_digest).descriptor.digest == result.top.digest


def _two_platform_index(store: Store) -> Descriptor:
    amd = make_image(store, "multi:amd64", [random_files(2, 5000, 21)], arch="amd64")
    arm = make_image(store, "multi:arm64", [random_files(2, 5000, 22)], arch="arm64")
    amd.platform = Platform("linux", "amd64")
    arm.platform = Platform("linux", "arm64", "v8")
    index = Index(manifests=[amd, arm])
    desc = store.put_json(canonical_json(index.to_json()), mt.OCI_INDEX)
    store.tag("multi:latest", desc)
    return desc


def test_skopeo_pushed_image_and_index_pull_with_digests(tmp_path, registry, config_env):
    src = Store.open(tmp_path / "src")
    single = make_image(src, "single:1", [random_files(2, 10_000, 31)])
    idx = _two_platform_index(src)
    # skopeo pushes straight from our store, which is an OCI layout
    skopeo("copy", "--dest-tls-verify=false", f"oci:{src.root}:docker.io/library/single:1",
           f"docker://{registry.host}/sk/single:1")
    skopeo("copy", "--all", "--dest-tls-verify=false",
           f"oci:{src.root}:docker.io/library/multi:latest", f"docker://{registry.host}/sk/multi:1")

    dst = Store.open(tmp_path / "dst")
    res = pull(dst, f"{registry.host}/sk/single:1")
    assert res.top.digest == single.digest
    assert image_digests(dst, f"{registry.host}/sk/single:1") == image_digests(src, "single:1")

    res = pull(dst, f"{registry.host}/sk/multi:1", platform=parse_platform("linux/arm64"))
    assert res.top.digest == idx.digest
    assert dst.blobs.read(idx.digest) == src.blobs.read(idx.digest)
    arm = dst.resolve(f"{registry.host}/sk/multi:1", platform=parse_platform("linux/arm64"))
    assert (arm.descriptor.digest, arm.id) == (src.refs.get("docker.io/library/multi:arm64").digest,
                                               src.resolve("multi:arm64").id)
    amd_manifest = src.refs.get("docker.io/library/multi:amd64").digest
    assert not dst.blobs.has(amd_manifest)       # only the chosen platform came over

    every = Store.open(tmp_path / "every")
    res = pull(every, f"{registry.host}/sk/multi:1", all_platforms=True)
    assert len(res.manifests) == 2 and every.blobs.has(amd_manifest)
    # and it pushes back as the same index
    out = push(every, f"{registry.host}/sk/multi:1", f"{registry.host}/sk/multi-copy:1")
    assert out.digest == idx.digest
    raw = skopeo("inspect", "--raw", "--tls-verify=false",
                 f"docker://{registry.host}/sk/multi-copy:1").stdout
    assert raw.encode() == src.blobs.read(idx.digest)


def test_cross_repository_mount(tmp_path, registry, config_env):
    store = Store.open(tmp_path / "store")
    make_image(store, "m:1", [random_files(2, 20_000, 41), random_files(1, 20_000, 42)])
    push(store, "m:1", f"{registry.host}/team/a:1")
    pulled = Store.open(tmp_path / "pulled")
    pull(pulled, f"{registry.host}/team/a:1")
    res = push(pulled, f"{registry.host}/team/a:1", f"{registry.host}/team/b:1")
    assert res.mounted == 3 and res.uploaded == 0
    info = json.loads(skopeo("inspect", "--tls-verify=false",
                             f"docker://{registry.host}/team/b:1").stdout)
    assert info["Digest"] == res.digest


def test_missing_names_are_clear_errors(tmp_path, registry, config_env):
    store = Store.open(tmp_path / "store")
    make_image(store, "e:1", [random_files(1, 100, 51)])
    push(store, "e:1", f"{registry.host}/there:1")
    with pytest.raises(ManifestUnknown, match=rf"{registry.host}.*there:nope.*manifest unknown"):
        pull(store, f"{registry.host}/there:nope")
    with pytest.raises((NameUnknown, ManifestUnknown), match=registry.host):
        pull(store, f"{registry.host}/not/there:1")
    assert not list((store.root / "ingest").iterdir())
    # an index without this platform: named clearly
    _two_platform_index(store)
    push(store, "multi:latest", f"{registry.host}/there:multi")
    with pytest.raises(NotFound, match=r"there:multi: no image for platform linux/s390x"):
        pull(Store.open(tmp_path / "other"), f"{registry.host}/there:multi",
             platform=parse_platform("linux/s390x"))
    with open_client(registry.host) as client:
        assert sorted(client.list_tags("there")) == ["1", "multi"]


def test_push_compression(tmp_path, registry, config_env):
    import gzip
    import hashlib

    import zstandard

    from layerstore.model import ImageConfig
    from test_registry_helpers import make_layer

    store = Store.open(tmp_path / "store")
    gz = make_image(store, "c:1", [random_files(2, 30_000, 111)])
    # an image with one uncompressed layer
    blob, diff_id = make_layer(random_files(1, 20_000, 112))
    tar = gzip.decompress(blob)
    info = store.blobs.put(tar, "sha256:" + hashlib.sha256(tar).hexdigest())
    plain = store.commit_image(ImageConfig(architecture="amd64", os="linux", diff_ids=[diff_id]),
                               [Descriptor(mt.OCI_LAYER, info.digest, info.size)])
    store.tag("plain:1", plain)

    # without force, gzip layers stay as they are: same digest
    assert push(store, "c:1", f"{registry.host}/c/a:1", compression="zstd").digest == gz.digest
    # uncompressed layers get compressed
    res = push(store, "plain:1", f"{registry.host}/c/plain:1", compression="gzip")
    assert res.digest != plain.digest
    # forced: gzip -> zstd, config untouched
    res = push(store, "c:1", f"{registry.host}/c/z:1", compression="zstd", force_compression=True)
    manifests = {}
    for repo, digest in (("plain", None), ("z", res.digest)):
        raw = skopeo("inspect", "--raw", "--tls-verify=false",
                     f"docker://{registry.host}/c/{repo}:1").stdout
        manifests[repo] = json.loads(raw)
    assert [l["mediaType"] for l in manifests["plain"]["layers"]] == [mt.OCI_LAYER_GZIP]
    assert [l["mediaType"] for l in manifests["z"]["layers"]] == [mt.OCI_LAYER_ZSTD]
    assert manifests["z"]["config"]["digest"] == store.resolve("c:1").id

    back = Store.open(tmp_path / "back")
    pull(back, f"{registry.host}/c/z:1")
    img = back.resolve(f"{registry.host}/c/z:1")
    with back.blobs.open(img.manifest.layers[0].digest) as f:
        tar_bytes = zstandard.ZstdDecompressor().stream_reader(f).read()
    assert "sha256:" + hashlib.sha256(tar_bytes).hexdigest() == img.config.diff_ids[0]


def test_docker_schema2_pushed_by_skopeo_keeps_digest(tmp_path, registry, config_env):
    src = Store.open(tmp_path / "src")
    make_image(src, "v2:1", [random_files(2, 10_000, 121)])
    skopeo("copy", "--format", "v2s2", "--dest-tls-verify=false",
           f"oci:{src.root}:docker.io/library/v2:1", f"docker://{registry.host}/d/v2:1")
    raw = skopeo("inspect", "--raw", "--tls-verify=false",
                 f"docker://{registry.host}/d/v2:1").stdout.encode()
    assert json.loads(raw)["mediaType"] == mt.DOCKER_MANIFEST
    dst = Store.open(tmp_path / "dst")
    res = pull(dst, f"{registry.host}/d/v2:1")
    assert dst.blobs.read(res.top.digest) == raw
    assert res.top.media_type == mt.DOCKER_MANIFEST
    # and back up unchanged, with its Content-Type
    assert push(dst, f"{registry.host}/d/v2:1", f"{registry.host}/d/v2-copy:1").digest == \
        res.top.digest


def test_busybox_pushed_by_skopeo_pulls_and_runs(tmp_path, registry, config_env,
                                                 busybox_rootfs, pybuild):
    from layerstore.model import ImageConfig

    src = Store.open(tmp_path / "src")
    layer, diff_id = src.commit_layer(busybox_rootfs)
    config = ImageConfig(architecture="amd64", os="linux", diff_ids=[diff_id])
    config.config.Cmd = ["/bin/sh"]
    desc = src.commit_image(config, [layer])
    src.tag("bb:1", desc)
    skopeo("copy", "--dest-tls-verify=false", f"oci:{src.root}:docker.io/library/bb:1",
           f"docker://{registry.host}/sk/busybox:1")
    ref = f"{registry.host}/sk/busybox:1"
    assert pybuild("pull", "-q", ref).stdout.strip() == desc.digest
    out = pybuild("run", "--rm", "--network", "none", ref, "/bin/echo", "hello from the registry")
    assert out.stdout.strip() == "hello from the registry"
