"""The remote build cache: `build --cache-to` / `--cache-from` through a real
docker-registry (plain, and htpasswd over TLS), an OCI layout directory, and inline
records in a pushed image. Machine A and machine B are two stores (B: empty but for the
same busybox base image); B's traffic is counted at a proxy."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from buildpeer import import_busybox
from conftest import CLI, REPO
from layerstore import digest as dg
from layerstore import mediatypes as mt
from layerstore.model import Descriptor, Manifest
from layerstore.registry.client import RegistryClient
from test_registry_auth import trust
from test_registry_helpers import (PASSWORD, USER, Proxy, Registry, config_env,  # noqa: F401
                                   free_port, htpasswd_file, make_pki, registry, skopeo)
from test_registry_hostile import one_line_error

from builder.remotecache import records as rec
from builder.remotecache.spec import CacheSpecError, parse_cache_from, parse_cache_to, parse_specs

SAMPLES = REPO / "sample-images"

# a "compile" stage and a runtime stage: RUN, COPY, ENV, WORKDIR, ARG, USER, CMD
MULTI = """\
FROM busybox AS build
ARG VERSION=1.0
WORKDIR /src
COPY src/ .
RUN sed -e "s/@V@/$VERSION/" greet.in > /greet && chmod 0755 /greet && date > /built-at
RUN mkdir /out && cp /greet /out/ && sha256sum /out/greet > /out/sum

FROM busybox
ENV APP=/app LANG=C.UTF-8
WORKDIR /app
COPY --from=build /out/ ./
COPY app.sh .
RUN chmod 0755 app.sh && ./app.sh > /app/first-run
USER nobody
CMD ["/app/app.sh"]
"""
FINAL_STEPS = ["ENV APP=/app LANG=C.UTF-8", "WORKDIR /app", "COPY --from=build /out/ ./",
               "COPY app.sh .", "RUN chmod 0755 app.sh && ./app.sh > /app/first-run",
               "USER nobody", 'CMD ["/app/app.sh"]']


@pytest.fixture(scope="session")
def busybox_tar(tmp_path_factory, busybox_rootfs) -> Path:
    """One busybox base image for every machine (the same digest everywhere)."""
    d = tmp_path_factory.mktemp("remote-cache-base")
    maker = CLI(d / "store")
    import_busybox(maker, busybox_rootfs, d)
    maker("save", "-o", d / "busybox.tar", "busybox")
    return d / "busybox.tar"


class Machine(CLI):
    """A CLI with a store and, like another host, credentials of its own."""

    def __init__(self, root: Path, env: dict[str, str]) -> None:
        super().__init__(root)
        self.env = env

    def __call__(self, *args, env=None, **kw):
        return super().__call__(*args, env={**self.env, **(env or {})}, **kw)


@pytest.fixture
def fleet(tmp_path, busybox_tar):
    """new(name) -> a machine: a store holding only the busybox base, and a config dir
    of its own (the trusted CAs of $PYBUILD_CONFIG, no credentials)."""
    import os

    def new(name: str) -> Machine:
        config = tmp_path / f"config-{name}"
        config.mkdir()
        shared = os.environ.get("PYBUILD_CONFIG")
        if shared and (Path(shared) / "certs.d").is_dir():
            shutil.copytree(Path(shared) / "certs.d", config / "certs.d")
        cli = Machine(tmp_path / f"store-{name}",
                      {"PYBUILD_CONFIG": str(config), "DOCKER_CONFIG": str(config / "docker")})
        cli("load", "-i", busybox_tar)
        return cli
    return new


@pytest.fixture
def proxied(registry):
    proxy = Proxy(registry.port)
    yield proxy
    proxy.stop()


def sample(tmp_path: Path, name: str = "ctx") -> Path:
    ctx = tmp_path / name
    (ctx / "src").mkdir(parents=True)
    (ctx / "Dockerfile").write_text(MULTI)
    (ctx / "src" / "greet.in").write_text("echo hello @V@\n")
    (ctx / "app.sh").write_text("#!/bin/sh\n/app/greet\n")
    return ctx


@dataclass
class Built:
    stderr: str
    manifest: str
    image_id: str
    ran: list[str]       # step texts that ran (FROM lines excluded)
    cached: list[str]


def build(cli: CLI, ctx: Path, *args: str, tag: str = "app", check: bool = True) -> Built:
    meta = cli.root.parent / f"meta-{cli.root.name}.json"
    p = cli("build", "--progress", "plain", "-t", tag, "--metadata-file", meta, *args, ctx,
            check=check)
    texts: dict[int, str] = {}
    state: dict[int, str] = {}
    for line in p.stderr.splitlines():
        m = re.match(r"#(\d+) \[[^\]]*\] (.*)", line)
        if m:
            texts[int(m.group(1))] = m.group(2)
        m = re.match(r"#(\d+) (CACHED|DONE)", line)
        if m:
            state[int(m.group(1))] = m.group(2)
    steps = [(texts[n], state.get(n)) for n in sorted(texts) if not texts[n].startswith("FROM ")]
    doc = json.loads(meta.read_text()) if p.returncode == 0 else {}
    return Built(p.stderr, doc.get("containerimage.digest", ""),
                 doc.get("containerimage.config.digest", ""),
                 [t for t, s in steps if s == "DONE"], [t for t, s in steps if s == "CACHED"])


def manifest_of(cli: CLI, name: str = "app") -> Manifest:
    from layerstore.store import Store

    return Store(cli.root).resolve(name).manifest


def blob_gets(proxy: Proxy) -> set[str]:
    return {s.path.rsplit("/", 1)[-1] for s in proxy.seen
            if s.method == "GET" and "/blobs/sha256:" in s.path}


def local_blobs(cli: CLI) -> set[str]:
    d = cli.root / "blobs" / "sha256"
    return {"sha256:" + p.name for p in d.iterdir()}


def cache_manifest(host: str, repo: str, tag: str) -> tuple[Manifest, dict]:
    client = RegistryClient(host)
    data, _, _ = client.get_manifest(repo, tag)
    m = Manifest.from_json(json.loads(data), raw=data)
    cfg = json.loads(client.read_blob(repo, m.config, rec.MAX_CONFIG_BLOB))
    return m, cfg


# --- registry: machine A exports, machine B imports ---------------------------------

def test_registry_cache_max_every_step_cached_same_image_only_final_layers(
        fleet, tmp_path, proxied, registry):
    a, b = fleet("a"), fleet("b")
    ctx = sample(tmp_path)
    ref = f"{proxied.host}/cache/app:buildcache"
    first = build(a, ctx, "--cache-to", f"type=registry,ref={ref},mode=max")
    assert len(first.ran) == 12 and first.cached == []
    assert f"exported cache to registry {ref}: 12 records" in first.stderr

    # the hello sample (ENV, WORKDIR, COPY, RUN, USER, CMD) to another ref, same registry
    hello_ref = f"{proxied.host}/cache/hello:buildcache"
    hello_a = build(a, SAMPLES / "hello", "--cache-to", f"type=registry,ref={hello_ref}",
                    tag="hello")

    before = local_blobs(b)
    proxied.seen.clear()
    sent = proxied.sent
    second = build(b, ctx, "--cache-from", ref)
    assert second.ran == [] and len(second.cached) == 12, second.stderr
    assert (second.manifest, second.image_id) == (first.manifest, first.image_id)
    assert "WARNING" not in second.stderr

    # B downloaded the final image's layers it lacked, the record list, the manifest:
    # not one layer of the build stage
    final = manifest_of(b)
    cm, _ = cache_manifest(registry.host, "cache/app", "buildcache")
    wanted = {l.digest for l in final.layers} - before
    assert blob_gets(proxied) == wanted | {cm.config.digest}
    body = sum(l.size for l in final.layers if l.digest in wanted) + cm.config.size \
        + len(cm.to_bytes())
    pings = sum(1 for x in proxied.seen if x.path == "/v2/")        # each answered "{}"
    assert proxied.sent - sent == body + 2 * pings
    build_stage_only = {l.digest for l in cm.layers} - {l.digest for l in final.layers}
    assert build_stage_only and not build_stage_only & local_blobs(b)

    hello_b = build(b, SAMPLES / "hello", "--cache-from", hello_ref, tag="hello")
    assert hello_b.ran == [] and len(hello_b.cached) == 6
    assert (hello_b.manifest, hello_b.image_id) == (hello_a.manifest, hello_a.image_id)
    assert b("run", "--rm", "hello").stdout == a("run", "--rm", "hello").stdout

    # the hits whose layers are here are B's own now: without the cache, only the
    # build stage's layer-making steps, whose layers B never fetched, run again
    proxied.seen.clear()
    third = build(b, ctx)
    assert sorted(third.cached) == sorted(FINAL_STEPS + ["ARG VERSION=1.0"])
    assert len(third.ran) == 4
    assert third.manifest == first.manifest and proxied.seen == []
    assert b("run", "--rm", "app").stdout == "hello 1.0\n"
    a("fsck")
    b("fsck")


def test_exported_manifest_is_plain_oci_that_skopeo_reads(fleet, tmp_path, registry):
    a = fleet("a")
    ctx = sample(tmp_path)
    ref = f"{registry.host}/cache/app:c1"
    build(a, ctx, "--cache-to", f"type=registry,ref={ref},mode=max")
    raw = skopeo("inspect", "--raw", "--tls-verify=false", f"docker://{ref}").stdout
    doc = json.loads(raw)
    assert doc["mediaType"] == mt.OCI_MANIFEST and doc["schemaVersion"] == 2
    assert doc["config"]["mediaType"] == rec.CACHE_CONFIG_TYPE
    assert "artifactType" not in doc and "annotations" not in doc     # no time in it
    m, cfg = cache_manifest(registry.host, "cache/app", "c1")
    assert m.to_bytes() == raw.encode()
    assert cfg["version"] == 1 and len(cfg["records"]) == 12
    keys = [r["key"] for r in cfg["records"]]
    assert keys == sorted(keys)
    for r in cfg["records"]:        # every record's layers are in the manifest
        assert all(0 <= i < len(m.layers) for i in r["layers"])
    # the same records make the same bytes: rebuilt and exported again (all cached)
    again = build(a, ctx, "--cache-to", f"type=registry,ref={registry.host}/cache/app:c2,mode=max")
    assert again.ran == []
    m2, _ = cache_manifest(registry.host, "cache/app", "c2")
    assert m2.to_bytes() == m.to_bytes()
    assert "0 uploaded" in again.stderr      # every blob was there already
    a("fsck")


def test_one_changed_source_file_runs_only_the_steps_after_it(fleet, tmp_path, registry):
    a, b = fleet("a"), fleet("b")
    ctx = sample(tmp_path)
    ref = f"{registry.host}/cache/app:one"
    build(a, ctx, "--cache-to", f"type=registry,ref={ref},mode=max")
    (ctx / "app.sh").write_text("#!/bin/sh\necho changed; /app/greet\n")
    changed = build(b, ctx, "--cache-from", ref)
    assert changed.ran == ["COPY app.sh .", "RUN chmod 0755 app.sh && ./app.sh > /app/first-run",
                           "USER nobody", 'CMD ["/app/app.sh"]'], changed.stderr
    assert len(changed.cached) == 8
    assert b("run", "--rm", "app").stdout == "changed\nhello 1.0\n"
    b("fsck")


def test_mode_min_hits_only_the_final_stage_and_max_every_stage(fleet, tmp_path, registry):
    a = fleet("a")
    ctx = sample(tmp_path)
    lo, hi = f"{registry.host}/cache/app:min", f"{registry.host}/cache/app:max"
    first = build(a, ctx, "--cache-to", f"type=registry,ref={lo}",
                  "--cache-to", f"type=registry,ref={hi},mode=max")
    assert "records" in first.stderr
    _, min_cfg = cache_manifest(registry.host, "cache/app", "min")
    _, max_cfg = cache_manifest(registry.host, "cache/app", "max")
    assert (len(min_cfg["records"]), len(max_cfg["records"])) == (7, 12)

    with_min = build(fleet("b-min"), ctx, "--cache-from", lo)
    build_steps = ["ARG VERSION=1.0", "WORKDIR /src", "COPY src/ .",
                   'RUN sed -e "s/@V@/$VERSION/" greet.in > /greet && chmod 0755 /greet && '
                   "date > /built-at",
                   "RUN mkdir /out && cp /greet /out/ && sha256sum /out/greet > /out/sum"]
    assert with_min.ran == build_steps, with_min.stderr
    assert len(with_min.cached) == 7
    # the build stage ran again (its date differs) but the final stage's COPY --from
    # is keyed by the stage's key: the final image is A's
    assert with_min.manifest == first.manifest

    with_max = build(fleet("b-max"), ctx, "--cache-from", hi)
    assert with_max.ran == [] and len(with_max.cached) == 12
    assert with_max.manifest == first.manifest


# --- type=local and type=inline --------------------------------------------------------

def test_local_directory_cache(fleet, tmp_path):
    a, b = fleet("a"), fleet("b")
    ctx = sample(tmp_path)
    cache = tmp_path / "ci-cache"
    first = build(a, ctx, "--cache-to", f"type=local,dest={cache},mode=max")
    layout = json.loads((cache / "index.json").read_text())
    assert [m["annotations"][mt.REF_NAME] for m in layout["manifests"]] == ["latest"]
    raw = skopeo("inspect", "--raw", f"oci:{cache}:latest").stdout
    assert json.loads(raw)["config"]["mediaType"] == rec.CACHE_CONFIG_TYPE
    # a second tag keeps the first
    build(a, ctx, "--cache-to", f"type=local,dest={cache},tag=other")
    names = {m["annotations"][mt.REF_NAME]
             for m in json.loads((cache / "index.json").read_text())["manifests"]}
    assert names == {"latest", "other"}
    assert not [p for p in (cache / "blobs" / "sha256").iterdir() if p.name.startswith(".")]

    before = local_blobs(b)
    second = build(b, ctx, "--cache-from", f"type=local,src={cache}")
    assert second.ran == [] and len(second.cached) == 12
    assert (second.manifest, second.image_id) == (first.manifest, first.image_id)
    final = {l.digest for l in manifest_of(b).layers}
    listed = {l["digest"] for l in json.loads(
        skopeo("inspect", "--raw", f"oci:{cache}:latest").stdout)["layers"]}
    assert (local_blobs(b) - before) & listed == final - before     # only the final layers
    a("fsck")
    b("fsck")


def test_hits_pass_on_without_downloads_and_the_same_records_give_the_same_digest(
        fleet, tmp_path, registry, proxied):
    """A exports to a directory; B imports it and exports to a registry (layers B never
    needed are fetched only to upload them); C imports that and exports to another
    repository of the same registry: mounted, nothing downloaded, nothing uploaded."""
    a, b, c = fleet("a"), fleet("b"), fleet("c")
    ctx = sample(tmp_path)
    cache = tmp_path / "dir-cache"
    first = build(a, ctx, "--cache-to", f"type=local,dest={cache},mode=max")
    via_b = f"{proxied.host}/relay/b:1"
    second = build(b, ctx, "--cache-from", f"type=local,src={cache}",
                   "--cache-to", f"type=registry,ref={via_b},mode=max")
    assert second.ran == [] and second.manifest == first.manifest
    local_digest = json.loads((cache / "index.json").read_text())["manifests"][0]["digest"]
    m_b, _ = cache_manifest(registry.host, "relay/b", "1")
    assert dg.of_bytes(m_b.to_bytes()) == local_digest        # same records, same bytes

    before = local_blobs(c)
    proxied.seen.clear()
    third = build(c, ctx, "--cache-from", via_b,
                  "--cache-to", f"type=registry,ref={proxied.host}/relay/c:1,mode=max")
    assert third.ran == [] and third.manifest == first.manifest
    assert "0 uploaded" in third.stderr and "mounted" in third.stderr
    final = {l.digest for l in manifest_of(c).layers}
    assert (local_blobs(c) - before) & {l.digest for l in m_b.layers} == final - before
    fetched = blob_gets(proxied) - {m_b.config.digest}
    assert fetched == final - before
    assert not [s for s in proxied.seen if s.method in ("PATCH", "PUT") and "/blobs/" in s.path]
    m_c, _ = cache_manifest(registry.host, "relay/c", "1")
    assert m_c.to_bytes() == m_b.to_bytes()
    c("fsck")


def test_a_cached_build_pushes_by_mounting_from_the_cache(fleet, tmp_path, registry, proxied):
    """BuildResult.origins: the push of a fully cached build mounts every layer from the
    cache repository; no layer byte goes up (only the image config)."""
    a, b = fleet("a"), fleet("b")
    ctx = small(tmp_path)
    cache = f"{proxied.host}/cache/small:1"
    build(a, ctx, "--cache-to", f"type=registry,ref={cache}")
    proxied.seen.clear()
    image = f"{proxied.host}/apps/small:1"
    pushed = build(b, ctx, "--cache-from", cache, "--push", tag=image)
    assert pushed.ran == [] and "4 mounted" in pushed.stderr     # busybox's and 3 built
    uploads = [s.path for s in proxied.seen if s.method in ("PATCH", "PUT") and "/blobs/" in s.path]
    config = manifest_of(b, image).config.digest      # the image config is no cache blob
    assert len(uploads) == 1 and config in uploads[0].replace("%3A", ":")


def test_inline_cache_in_a_pushed_image(fleet, tmp_path, proxied):
    a, b = fleet("a"), fleet("b")
    hello = SAMPLES / "hello"
    image = f"{proxied.host}/apps/hello:1"
    first = build(a, hello, "--cache-to", "type=inline", tag=image)
    a("push", image)
    before = local_blobs(b)
    proxied.seen.clear()
    # the common CI pattern: --cache-from the previous release, inline records again
    second = build(b, hello, "--cache-from", image, "--cache-to", "type=inline", tag=image)
    assert second.ran == [] and len(second.cached) == 6, second.stderr
    assert (second.manifest, second.image_id) == (first.manifest, first.image_id)
    final = manifest_of(b, image)
    assert blob_gets(proxied) == ({l.digest for l in final.layers} - before) | {final.config.digest}
    assert b("run", "--rm", image).stdout == a("run", "--rm", image).stdout

    # multi-stage: only the final stage's records ride in the image (mode=min), so the
    # build stage runs again, and the final stage's COPY --from still hits by its key
    ctx = sample(tmp_path)
    app = f"{proxied.host}/apps/app:1"
    multi_a = build(a, ctx, "--cache-to", "type=inline", tag=app)
    a("push", app)
    multi_b = build(b, ctx, "--cache-from", app, "--cache-to", "type=inline", tag=app)
    assert sorted(multi_b.cached) == sorted(FINAL_STEPS) and len(multi_b.ran) == 5
    assert multi_b.manifest == multi_a.manifest

    # FROM an image with inline records: the new image does not inherit them
    (tmp_path / "derived").mkdir()
    (tmp_path / "derived" / "Dockerfile").write_text(f"FROM {image}\nENV MORE=1\n")
    derived = build(b, tmp_path / "derived", tag="derived")
    from layerstore.store import Store
    cfg = Store(b.root).resolve("derived").config
    assert rec.INLINE_FIELD not in cfg.extra and derived.ran == ["ENV MORE=1"]
    assert rec.INLINE_FIELD in Store(b.root).resolve(image).config.extra
    b("fsck")


# --- auth ------------------------------------------------------------------------------

@pytest.fixture
def tls_registry(tmp_path):
    d = tmp_path / "tls-registry"
    d.mkdir()
    pki = make_pki(d / "pki")
    htpasswd_file(d / "htpasswd", {USER: PASSWORD})
    reg = Registry(d, auth={"htpasswd": {"realm": "pybuild-test", "path": str(d / "htpasswd")}},
                   pki=pki)
    yield reg
    reg.stop()


def test_cache_through_an_htpasswd_registry(fleet, tmp_path, tls_registry, config_env):
    reg = tls_registry
    trust(config_env, reg)          # before the machines: each copies the CA
    a, b = fleet("a"), fleet("b")
    ctx = sample(tmp_path)
    ref = f"{reg.host}/private/cache:1"
    # not logged in: the export fails in one line, or is a warning with ignore-error
    refused = a("build", "--progress", "quiet", "-t", "app", "--cache-to", f"type=registry,ref={ref}", ctx, check=False)
    assert "unauthorized" in one_line_error(refused) and "--cache-to" in refused.stderr
    ignored = build(a, ctx, "--cache-to", f"type=registry,ref={ref},ignore-error=true")
    assert "WARNING: --cache-to registry" in ignored.stderr and "unauthorized" in ignored.stderr

    a("login", "-u", USER, "--password-stdin", reg.host, input=PASSWORD)
    first = build(a, ctx, "--cache-to", f"type=registry,ref={ref},mode=max")
    assert "WARNING" not in first.stderr

    anonymous = build(b, ctx, "--cache-from", ref)      # B has no credentials yet
    assert "WARNING: cache source" in anonymous.stderr and "unauthorized" in anonymous.stderr
    assert len(anonymous.ran) == 12

    b2 = fleet("b2")
    b2("login", "-u", USER, "--password-stdin", reg.host, input=PASSWORD)
    second = build(b2, ctx, "--cache-from", ref)
    assert second.ran == [] and second.manifest == first.manifest
    raw = skopeo("inspect", "--raw", "--cert-dir", str(config_env / "certs.d" / reg.host),
                 "--creds", f"{USER}:{PASSWORD}", f"docker://{ref}").stdout
    assert json.loads(raw)["config"]["mediaType"] == rec.CACHE_CONFIG_TYPE
    b2("fsck")


# --- a corrupt, lying or absent cache: a warning and a cold build ------------------------

SMALL = "FROM busybox\nRUN echo one > /one\nCOPY f.txt /f\nRUN cat /f /one > /both\n"


def small(tmp_path: Path) -> Path:
    ctx = tmp_path / "small"
    ctx.mkdir()
    (ctx / "Dockerfile").write_text(SMALL)
    (ctx / "f.txt").write_text("f\n")
    return ctx


def _rewrite(host: str, repo: str, tag: str, change) -> None:
    """Put a changed export under `tag`: `change(manifest, config bytes)` -> (manifest,
    config bytes)."""
    import io

    client = RegistryClient(host)
    data, _, _ = client.get_manifest(repo, tag)
    m = Manifest.from_json(json.loads(data))
    cfg = client.read_blob(repo, m.config, rec.MAX_CONFIG_BLOB)
    m, cfg = change(m, cfg)
    desc = Descriptor(rec.CACHE_CONFIG_TYPE, dg.of_bytes(cfg), len(cfg))
    if not client.blob_exists(repo, desc.digest):
        client.upload_blob(repo, desc, lambda: io.BytesIO(cfg))
    m.config = desc
    m.raw = None
    client.put_manifest(repo, tag, m.to_bytes(), mt.OCI_MANIFEST)


def _wrong_layer_count(m, cfg):
    doc = json.loads(cfg)
    for r in doc["records"]:
        r["layers"] = r["layers"] + [0]
    return m, json.dumps(doc).encode()


def _lying_layer(top: str, other: str):
    """The final image's top layer's descriptor names another layer of the export:
    every digest checks out, only the diff ID (what the image config says the bytes
    are) does not."""
    def change(m, cfg):
        swap = next(l for l in m.layers if l.digest == other)
        m.layers = [swap if l.digest == top else l for l in m.layers]
        return m, cfg
    return change


def _truncated(m, cfg):
    return m, cfg[:len(cfg) // 2]


def _deep(m, cfg):
    return m, b'{"version":1,"records":' + b"[" * 5000 + b"]" * 5000 + b"}"


def _delete_layer(host, repo, digest):
    import requests

    r = requests.delete(f"http://{host}/v2/{repo}/blobs/{digest}")
    assert r.status_code == 202, r.text


@pytest.mark.parametrize("damage,words", [
    ("corrupt-config", "digest"),
    ("wrong-layer-count", "layers but"),
    ("truncated", "not valid JSON"),
    ("deep", "nested more than"),
    ("missing-blob", "is missing; record ignored"),
    ("corrupt-layer", "built again without --cache-from"),
    ("lying-layer", "its record says"),
    ("down", "unreachable"),
    ("not-a-cache", "carries no pybuild cache records"),
])
def test_a_damaged_cache_is_a_warning_and_a_cold_build(fleet, tmp_path, registry, proxied,
                                                       damage, words):
    a, b = fleet("a"), fleet("b")
    ctx = small(tmp_path)
    ref = f"{proxied.host}/cache/small:1"
    first = build(a, ctx, "--cache-to", f"type=registry,ref={ref}")
    m, _ = cache_manifest(registry.host, "cache/small", "1")
    ours = [l for l in m.layers if l.digest not in local_blobs(b)]
    if damage == "corrupt-config":
        proxied.add(lambda meth, path: meth == "GET" and m.config.digest in path, ("corrupt",),
                    times=2)
    elif damage == "corrupt-layer":
        proxied.add(lambda meth, path: meth == "GET" and ours[-1].digest in path, ("corrupt",),
                    times=20)
    elif damage == "wrong-layer-count":
        _rewrite(registry.host, "cache/small", "1", _wrong_layer_count)
    elif damage == "lying-layer":
        top = manifest_of(a).layers
        _rewrite(registry.host, "cache/small", "1", _lying_layer(top[-1].digest, top[-2].digest))
    elif damage == "truncated":
        _rewrite(registry.host, "cache/small", "1", _truncated)
    elif damage == "deep":
        _rewrite(registry.host, "cache/small", "1", _deep)
    elif damage == "missing-blob":
        _delete_layer(registry.host, "cache/small", ours[0].digest)
    elif damage == "down":
        ref = f"127.0.0.1:{free_port()}/cache/small:1"
    elif damage == "not-a-cache":
        a("push", "busybox", f"{proxied.host}/cache/small:1")
    cold = build(b, ctx, "--cache-from", ref)
    assert "WARNING" in cold.stderr and words in cold.stderr, cold.stderr
    assert "Traceback" not in cold.stderr
    assert b("run", "--rm", "app", "cat", "/both").stdout == "f\none\n"
    if damage == "missing-blob":
        # the step whose layer is gone runs again; when it ran within the same second as
        # the first build its layer is the same bytes, and the records above it hit
        assert cold.ran[:1] == ["RUN echo one > /one"], cold.ran
    elif damage not in ("corrupt-layer", "lying-layer"):
        assert len(cold.ran) == 3 and cold.cached == []
    assert first.manifest != cold.manifest or damage == "corrupt-layer"
    b("fsck")


def test_local_cache_with_a_rotten_blob_builds_again_without_it(fleet, tmp_path):
    a, b = fleet("a"), fleet("b")
    ctx = small(tmp_path)
    cache = tmp_path / "cache"
    build(a, ctx, "--cache-to", f"type=local,dest={cache}")
    top = manifest_of(a).layers[-1].digest
    blob = cache / "blobs" / "sha256" / dg.hex_of(top)
    data = bytearray(blob.read_bytes())
    data[len(data) // 2] ^= 0xFF
    blob.write_bytes(bytes(data))
    again = build(b, ctx, "--cache-from", f"type=local,src={cache}")
    assert "WARNING: build cache source failed" in again.stderr
    assert b("run", "--rm", "app", "cat", "/both").stdout == "f\none\n"
    (cache / "index.json").write_text('{"manifests": [')
    torn = build(fleet("c"), ctx, "--cache-from", f"type=local,src={cache}")
    assert "WARNING: cache source local" in torn.stderr and len(torn.ran) == 3
    b("fsck")


def test_export_to_an_unreachable_target_fails_in_one_line_unless_ignored(fleet, tmp_path):
    a = fleet("a")
    ctx = small(tmp_path)
    dead = f"127.0.0.1:{free_port()}/cache/x:1"
    failed = a("build", "--progress", "plain", "-t", "app", "--cache-to",
               f"type=registry,ref={dead}", ctx, check=False)
    assert failed.returncode == 1
    last = failed.stderr.strip().splitlines()[-1]
    assert last.startswith("pybuild: error: --cache-to registry") and "unreachable" in last
    ok = build(a, ctx, "--cache-to", f"type=registry,ref={dead},ignore-error=true")
    assert "WARNING: --cache-to registry" in ok.stderr and "ignore-error=true" in ok.stderr
    assert ok.cached and not ok.ran
    blocked = tmp_path / "file"
    blocked.write_text("x")
    bad_dir = a("build", "--progress", "quiet", "-t", "app", "--cache-to", f"type=local,dest={blocked}", ctx,
                check=False)
    assert "--cache-to local" in one_line_error(bad_dir)


# --- the fleet: four builders at once on one cache ref --------------------------------------

def test_four_concurrent_builders_share_one_cache_ref(fleet, tmp_path, registry):
    ref = f"{registry.host}/cache/fleet:main"
    machines = [fleet(f"m{i}") for i in range(4)]
    procs = []
    for i, m in enumerate(machines):
        ctx = sample(tmp_path, f"ctx{i}")
        if i % 2:            # two kinds of work: half of them change one source file
            (ctx / "app.sh").write_text("#!/bin/sh\necho variant; /app/greet\n")
        cmd = [sys.executable, "-m", "builder", "--root", str(m.root), "build", "--progress",
               "plain", "-t", "app", "--cache-from", ref, "--cache-to",
               f"type=registry,ref={ref},mode=max", str(ctx)]
        procs.append(subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE,
                                      stderr=subprocess.PIPE, text=True,
                                      env={**__import__("os").environ, "PYTHONPATH": str(REPO)}))
    for p in procs:
        out, err = p.communicate(timeout=300)
        assert p.returncode == 0, err
    # a later reader sees one whole export: every record's blobs there, digests right
    client = RegistryClient(registry.host)
    m, cfg = cache_manifest(registry.host, "cache/fleet", "main")
    check = fleet("checker")
    from layerstore.store import Store
    store = Store(check.root)
    with store.writing():
        for layer in m.layers:
            if not store.blobs.has(layer.digest):
                client.fetch_blob("cache/fleet", layer, store.blobs)     # verified
    cc = rec.decode(json.dumps(cfg).encode(), m.layers, "fleet")
    assert cc.dropped == 0 and len(cc.records) >= 12
    for r in cc.records.values():
        config = rec.check(r, "fleet")
        assert len(config.diff_ids) == len(r.layers)
    later = build(fleet("later"), sample(tmp_path, "ctx-later"), "--cache-from", ref)
    assert "WARNING" not in later.stderr and later.cached


# --- specs -------------------------------------------------------------------------------------

def test_cache_specs_as_buildx_reads_them(tmp_path):
    s = parse_cache_to("type=registry,ref=reg.example:5000/a/b:c,mode=max,compression=gzip,"
                       "oci-mediatypes=true,image-manifest=true,ignore-error=true,"
                       "cache-mounts=true")
    assert (s.type, str(s.ref), s.mode, s.ignore_error, s.cache_mounts) == \
        ("registry", "reg.example:5000/a/b:c", "max", True, True)
    assert s.origin == "reg.example:5000/a/b"
    assert parse_cache_to("reg.example/a/b").mode == "min"      # bare: registry, min
    loc = parse_cache_to(f"type=local,dest={tmp_path}/x,tag=v2")
    assert (loc.path, loc.tag) == (tmp_path / "x", "v2")
    assert parse_cache_to("type=inline").type == "inline"
    frm = parse_cache_from("myapp:latest")
    assert frm.type == "registry" and str(frm.ref) == "docker.io/library/myapp:latest"
    assert parse_cache_from(f"type=local,src={tmp_path}").tag == "latest"
    assert parse_cache_from("reg.example/a@sha256:" + "a" * 64).ref.digest


@pytest.mark.parametrize("to,frm,words", [
    (["type=registry,ref=r.example/a,mode=fast"], [], "mode='fast' must be min or max"),
    (["type=registry,ref=r.example/a,colour=blue"], [], "unknown key 'colour'"),
    (["type=registry"], [], "ref= is required"),
    (["type=local"], [], "dest= is required"),
    (["type=gha"], [], "type=gha is not supported"),
    (["type=inline,mode=max"], [], "supports mode=min only"),
    (["type=registry,ref=r.example/a,ignore-error=perhaps"], [], "is not true or false"),
    (["type=registry,ref=r.example/a,image-manifest=false"], [], "image-manifest=false"),
    (["type=registry,ref=r.example/a,compression=zstd"], [], "build with --compression zstd"),
    (["type=registry,ref=r.example/a@sha256:" + "a" * 64], [], "not a digest"),
    (["type=registry,ref=Bad/Name"], [], "Bad/Name"),
    ([], ["type=local,dest=/x"], "unknown key 'dest'"),
    ([], ["type=registry,ref=r.example/a,mode=max"], "unknown key 'mode'"),
    ([], ["type=local,src=/x,tag=../../x"], "not a valid tag"),
    ([], ["a,b"], "bad path component"),
    ([], ["type=local,src"], "expected KEY=VALUE"),
])
def test_bad_cache_specs_are_refused(to, frm, words):
    with pytest.raises(CacheSpecError, match=re.escape(words)):
        parse_specs(to, frm, "gzip")


def test_bad_cache_specs_fail_in_one_line_before_any_step(fleet, tmp_path):
    a = fleet("a")
    for args, words in ((["--cache-to", "type=registry,ref=r.example/a,colour=blue"],
                         "unknown key 'colour'"),
                        (["--cache-from", "type=local,src=/x,tag=../../x"], "not a valid tag"),
                        (["--compression", "zstd", "--cache-to",
                          "type=local,dest=/x,compression=gzip"], "build with --compression gzip")):
        p = a("build", "--progress", "plain", "-t", "x", *args, small(tmp_path), check=False)
        assert words in one_line_error(p)
        assert "#1" not in p.stderr
        shutil.rmtree(tmp_path / "small")


# --- the format ----------------------------------------------------------------------------------

def _record(key: str, layers: list[Descriptor]) -> rec.Record:
    cfg = {"architecture": "amd64", "os": "linux", "config": {},
           "rootfs": {"type": "layers", "diff_ids": ["sha256:" + "d" * 63 + str(i)
                                                     for i in range(len(layers))]}}
    return rec.Record(key, json.dumps(cfg, sort_keys=True, separators=(",", ":")).encode(), layers)


def _layer(i: int) -> Descriptor:
    return Descriptor(mt.OCI_LAYER_GZIP, "sha256:" + f"{i:064x}", 100 + i)


def test_the_same_records_give_the_same_bytes_in_any_order():
    recs = [_record(f"{k:064x}", [_layer(j) for j in range(k % 4)]) for k in range(1, 30)]
    one, layers1 = rec.encode(recs)
    two, layers2 = rec.encode(list(reversed(recs)) + recs[:3])
    assert one == two and layers1 == layers2
    config = Descriptor(rec.CACHE_CONFIG_TYPE, dg.of_bytes(one), len(one))
    assert rec.manifest(config, layers1).to_bytes() == rec.manifest(config, layers2).to_bytes()
    back = rec.decode(one, layers1, "t")
    assert sorted(back.records) == sorted(r.key for r in recs) and back.dropped == 0


def test_records_read_back_are_bounded_and_checked():
    layers = [_layer(i) for i in range(3)]
    good = _record("a" * 64, layers[:2])
    data, out_layers = rec.encode([good])
    doc = json.loads(data)
    bad = [
        {"key": "A" * 64, "config": "{}", "layers": []},               # not lowercase hex
        {"key": "b" * 64, "config": "{}", "layers": [7]},              # index out of range
        {"key": "c" * 64, "config": "{}", "layers": [True]},           # a bool is no index
        {"key": "d" * 64, "config": 5, "layers": []},
        "nonsense",
    ]
    doc["records"] += bad + [dict(doc["records"][0])]                 # "a"*64 told twice
    back = rec.decode(json.dumps(doc).encode(), out_layers, "t")
    assert back.records == {} and back.dropped == len(bad) + 2
    with pytest.raises(rec.CacheFormatError, match="records, more than"):
        rec.decode(json.dumps({"version": 1, "records": [0] * (rec.MAX_RECORDS + 1)}).encode(),
                   [], "t")
    with pytest.raises(rec.CacheFormatError, match="unsupported cache format version"):
        rec.decode(b'{"version": 2, "records": []}', [], "t")
    # check(): diff IDs and layers must agree; a layer must be a layer
    r = rec.Record("e" * 64, good.config, layers[:1])
    with pytest.raises(rec.CacheFormatError, match="1 layers but 2 diff IDs"):
        rec.check(r, "t")
    odd = rec.Record("f" * 64, good.config, [layers[0], Descriptor("text/html", layers[1].digest, 5)])
    with pytest.raises(rec.CacheFormatError, match="not an image layer"):
        rec.check(odd, "t")
    cfg = rec.check(good, "t")
    # the parent rule: keep the parent's layers and diff IDs, add at most one
    assert rec.extends(good, cfg, (layers[:1], cfg.diff_ids[:1]))
    assert rec.extends(good, cfg, (layers[:2], cfg.diff_ids[:2]))
    assert not rec.extends(good, cfg, ([], []))
    assert not rec.extends(good, cfg, ([layers[2]], cfg.diff_ids[:1]))
    assert not rec.extends(good, cfg, (layers[:1], ["sha256:" + "0" * 64]))


def test_inline_records_name_only_a_prefix_of_the_image_layers():
    layers = [_layer(i) for i in range(3)]
    recs = [_record("1" * 64, layers[:1]), _record("2" * 64, layers[:2]),
            _record("3" * 64, [layers[0], _layer(9)])]
    doc = rec.inline_records(recs, layers)
    assert [r["key"] for r in doc["records"]] == ["1" * 64, "2" * 64]
    assert [r["layers"] for r in doc["records"]] == [[0], [0, 1]]
    back = rec.records_from(doc, layers, "t")
    assert back.records["2" * 64].layers == layers[:2]
