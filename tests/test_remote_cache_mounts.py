"""Cache mounts that travel (issue 12 point 5): a RUN --mount=type=cache directory packed
as an OCI artifact and restored into an empty store, the artifact taken as hostile input."""

from __future__ import annotations

import fcntl
import gzip
import io
import json
import os
import stat
import threading
from pathlib import Path

import pytest

from builder.dockerfile.instructions import Mount
from builder.remotecache import mounts as cm
from builder.steps.mounts import cache_ids, cache_lock, cache_path
from layerstore import digest as dg
from layerstore import mediatypes as mt
from layerstore.errors import PybuildError
from layerstore.layer_tar import BLK, CHR, REG, SYM, ZERO_BLOCK, build_header, padding
from layerstore.model import Descriptor, Manifest
from layerstore.store import Store
from test_registry_helpers import config_env, registry, skopeo  # noqa: F401
from treecmp import describe_tree, diff_trees

PLATFORM = "linux/amd64"


def fetcher(src: Store, dst: Store, calls: list[str]):
    """What RC's importer does: a blob of the source into the store, through ingest."""
    def fetch(desc: Descriptor) -> None:
        calls.append(desc.digest)
        with src.blobs.open(desc.digest) as f:
            dst.blobs.ingest(f, desc.digest, desc.size)
    return fetch


def no_fetch(desc: Descriptor) -> None:
    raise AssertionError(f"fetched {desc.digest}")


@pytest.fixture
def stores(tmp_path):
    return Store.open(tmp_path / "a"), Store.open(tmp_path / "b")


def make_cache(d: Path) -> None:
    """A cache dir with what pip/npm/apt caches hold, and the corners of a tree."""
    d.mkdir(parents=True)
    (d / "sub" / "deeper").mkdir(parents=True)
    (d / "f").write_text("warm\n")
    (d / "sub" / "deeper" / "g").write_bytes(os.urandom(3000))
    os.chmod(d / "sub" / "deeper" / "g", 0o4755)
    (d / "linked").write_text("two names")
    os.link(d / "linked", d / "sub" / "hardlink")
    os.symlink("../f", d / "sub" / "rel")
    os.symlink("/etc/passwd", d / "abs")
    (d / "private").mkdir()
    (d / "private" / "secret").write_text("s")
    os.chown(d / "private" / "secret", 1000, 1000)
    os.chown(d / "private", 1000, 1000)
    os.chmod(d / "private", 0o700)
    os.mkfifo(d / "fifo")
    os.setxattr(d / "f", "user.origin", b"pip")
    os.utime(d / "f", (1_000_000, 1_000_000))
    os.chown(d, 1000, 1000)
    os.chmod(d, 0o750)


def tree(d: Path) -> dict:
    st = os.lstat(d)
    return {".": (stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid), **describe_tree(d)}


def leftovers(store: Store) -> list[str]:
    return [n for n in os.listdir(cm.mounts_dir(store)) if n.startswith(".restore-")]


# --- round trip ------------------------------------------------------------------

def test_pack_then_restore_into_an_empty_store_gives_the_same_tree(stores):
    a, b = stores
    src = cache_path(cm.mounts_dir(a), "pip")
    make_cache(src)
    entries = cm.collect(a, ["pip", "never-used"], PLATFORM)
    assert [e["id"] for e in entries] == ["pip"] and entries[0]["platform"] == PLATFORM
    desc = Descriptor.from_json(entries[0]["manifest"])
    assert desc.extra["artifactType"] == cm.ARTIFACT_TYPE

    # the artifact is what the design says, readable by any OCI tool
    manifest = json.loads(a.blobs.read(desc.digest))
    assert manifest["mediaType"] == mt.OCI_MANIFEST and manifest["schemaVersion"] == 2
    assert manifest["artifactType"] == "application/vnd.pybuild.cache.mount.v1"
    assert manifest["config"] == {"mediaType": "application/vnd.oci.empty.v1+json", "size": 2,
                                  "digest": dg.of_bytes(b"{}"), "data": "e30="}
    assert a.blobs.read(manifest["config"]["digest"]) == b"{}"
    assert len(manifest["layers"]) == 1 and manifest["layers"][0]["mediaType"] == mt.OCI_LAYER_GZIP
    assert manifest["annotations"] == {"dev.pybuild.cache.mount.id": "pip"}
    assert [d.digest for d in cm.artifact_blobs(a, desc)] == \
        [manifest["config"]["digest"], manifest["layers"][0]["digest"]]

    calls: list[str] = []
    restored = cm.restore(b, entries, fetcher(a, b, calls), ids=["pip"], platform=PLATFORM)
    assert restored == ["pip"]
    assert calls == [desc.digest, manifest["layers"][0]["digest"]]
    dst = cache_path(cm.mounts_dir(b), "pip")
    assert diff_trees(tree(src), tree(dst)) == []
    assert tree(dst)["."] == (0o750, 1000, 1000)
    assert tree(dst)["private"][1:4] == (0o700, 1000, 1000)
    assert os.stat(dst / "linked").st_ino == os.stat(dst / "sub" / "hardlink").st_ino
    assert os.readlink(dst / "abs") == "/etc/passwd"
    assert (dst / "f").read_text() == "warm\n" and leftovers(b) == []


def test_the_artifact_travels_through_a_registry(stores, registry, config_env):
    """What RC does with it: blobs then the manifest pushed by digest to docker-registry
    (which must accept the artifact), `skopeo inspect --raw` reads it, and a store on
    another machine restores from the registry (the manifest by a manifest GET)."""
    from layerstore.registry import open_client

    a, b = stores
    make_cache(cache_path(cm.mounts_dir(a), "pip"))
    [entry] = cm.collect(a, ["pip"], PLATFORM)
    desc = Descriptor.from_json(entry["manifest"])
    with open_client(registry.host) as client:
        for blob in cm.artifact_blobs(a, desc):
            client.upload_blob("cache", blob, lambda d=blob.digest: a.blobs.open(d))
        client.put_manifest("cache", desc.digest, a.blobs.read(desc.digest), desc.media_type)
    raw = json.loads(skopeo("inspect", "--raw", "--tls-verify=false",
                            f"docker://{registry.host}/cache@{desc.digest}").stdout)
    assert raw["artifactType"] == cm.ARTIFACT_TYPE

    fetched: list[str] = []

    def fetch(d: Descriptor) -> None:
        fetched.append(d.digest)
        with open_client(registry.host) as client:
            if d.media_type == mt.OCI_MANIFEST:
                data, _kind, _digest = client.get_manifest("cache", d.digest)
                b.blobs.put(data, d.digest)
            else:
                client.fetch_blob("cache", d, b.blobs)
    # the entry as RC's records.decode hands it over: the descriptor already parsed
    assert cm.restore(b, [{**entry, "manifest": desc}], fetch) == ["pip"]
    assert len(fetched) == 2
    assert diff_trees(tree(cache_path(cm.mounts_dir(a), "pip")),
                      tree(cache_path(cm.mounts_dir(b), "pip"))) == []


def test_packing_twice_gives_the_same_bytes(stores, tmp_path):
    a, b = stores
    src = cache_path(cm.mounts_dir(a), "npm")
    make_cache(src)
    first = cm.pack(a, "npm", PLATFORM, src)
    (src / "f").read_text()          # an atime change is no change
    second = cm.pack(a, "npm", PLATFORM, src)
    assert first.digest == second.digest and first.size == second.size
    # another store, same tree (restored there): the same artifact digest again
    cm.unpack(b, first, cm.mounts_dir(b), "npm", fetch_blob=fetcher(a, b, []))
    assert cm.pack(b, "npm", PLATFORM, cache_path(cm.mounts_dir(b), "npm")).digest == first.digest
    # and a change is a new digest
    (src / "f").write_text("changed")
    assert cm.pack(a, "npm", PLATFORM, src).digest != first.digest


def test_device_nodes_are_left_out_of_the_artifact(stores):
    a, b = stores
    src = cache_path(cm.mounts_dir(a), "dev")
    src.mkdir(parents=True)
    (src / "kept").write_text("k")
    os.mknod(src / "null", stat.S_IFCHR | 0o666, os.makedev(1, 3))
    os.mknod(src / "disk", stat.S_IFBLK | 0o600, os.makedev(8, 0))
    [entry] = cm.collect(a, ["dev"], PLATFORM)
    assert cm.restore(b, [entry], fetcher(a, b, [])) == ["dev"]
    assert sorted(os.listdir(cache_path(cm.mounts_dir(b), "dev"))) == ["kept"]


def test_collect_skips_absent_and_empty_dirs_and_platform_filters_restore(stores):
    a, b = stores
    cache_path(cm.mounts_dir(a), "empty").mkdir(parents=True)
    make_cache(cache_path(cm.mounts_dir(a), "x"))
    entries = cm.collect(a, ["x", "empty", "absent"], "linux/arm64")
    assert [(e["id"], e["platform"]) for e in entries] == [("x", "linux/arm64")]
    assert cm.restore(b, entries, no_fetch, platform="linux/amd64") == []
    assert cm.restore(b, entries, no_fetch, ids=["other"]) == []
    assert not cache_path(cm.mounts_dir(b), "x").exists()
    assert cm.restore(b, entries, fetcher(a, b, []), platform="linux/arm64/v8") == ["x"]


def test_ids_not_here_are_carried_over_from_the_sources_without_their_layers(stores, tmp_path):
    a, b = stores
    make_cache(cache_path(cm.mounts_dir(a), "pip"))
    make_cache(cache_path(cm.mounts_dir(a), "npm"))
    entries = cm.collect(a, ["pip", "npm"], PLATFORM)
    layer = {e["id"]: cm.artifact_blobs(a, Descriptor.from_json(e["manifest"]))[1]
             for e in entries}
    local = cache_path(cm.mounts_dir(b), "npm")
    local.mkdir(parents=True)
    (local / "here").write_text("b's own")
    bad = [{"id": "pip", "platform": PLATFORM,
            "manifest": artifact(a, tgz(reg("f")), artifact_type="application/x").to_json()}]
    calls: list[str] = []
    providers: dict = {}
    warnings: list[str] = []
    out = cm.collect(b, ["pip", "npm", "apt"], PLATFORM, warn=warnings.append,
                     carried=[(bad, fetcher(a, b, calls)), (entries, fetcher(a, b, calls))],
                     providers=providers)
    assert [e["id"] for e in out] == ["npm", "pip"]
    # npm: b's own dir, packed; pip: a's artifact as it was, its manifest fetched only
    assert out[1] == entries[1] and out[0] != entries[0]
    assert not b.blobs.has(layer["pip"].digest) and list(providers) == [layer["pip"].digest]
    assert [d.digest for d in cm.artifact_blobs(b, Descriptor.from_json(out[1]["manifest"]))] \
        == [cm.EMPTY_DIGEST, layer["pip"].digest]
    assert len(warnings) == 1 and "not carried over" in warnings[0]
    providers[layer["pip"].digest](layer["pip"])      # the exporter, when the target lacks it
    assert b.blobs.has(layer["pip"].digest)


def test_cache_ids_name_the_dirs_the_run_step_uses():
    mounts = [Mount(type="cache", target="/root/.cache/pip"),
              Mount(type="cache", target="node_modules", id="npm"),
              Mount(type="cache", target="rel/dir"),
              Mount(type="tmpfs", target="/tmp")]
    assert cache_ids(mounts, "/app") == ["/root/.cache/pip", "npm", "/app/rel/dir"]


# --- never overwrite a cache that is there ---------------------------------------

def test_an_existing_cache_is_never_overwritten(stores):
    a, b = stores
    make_cache(cache_path(cm.mounts_dir(a), "pip"))
    entries = cm.collect(a, ["pip"], PLATFORM)
    mine = cache_path(cm.mounts_dir(b), "pip")
    mine.mkdir(parents=True)
    (mine / "mine").write_text("local")
    # the layer is never even fetched for a full cache dir
    calls: list[str] = []
    assert cm.restore(b, entries, fetcher(a, b, calls)) == []
    assert calls == [] and os.listdir(mine) == ["mine"]
    desc = Descriptor.from_json(entries[0]["manifest"])
    assert cm.unpack(b, desc, cm.mounts_dir(b), "pip", fetch_blob=fetcher(a, b, calls)) == mine
    assert os.listdir(mine) == ["mine"] and leftovers(b) == []


def test_an_empty_cache_dir_is_filled(stores):
    a, b = stores
    make_cache(cache_path(cm.mounts_dir(a), "pip"))
    entries = cm.collect(a, ["pip"], PLATFORM)
    empty = cache_path(cm.mounts_dir(b), "pip")
    empty.mkdir(parents=True)
    assert cm.restore(b, entries, fetcher(a, b, [])) == ["pip"]
    assert (empty / "f").read_text() == "warm\n"


def test_a_cache_filled_meanwhile_by_another_build_is_kept(stores):
    a, b = stores
    make_cache(cache_path(cm.mounts_dir(a), "pip"))
    entries = cm.collect(a, ["pip"], PLATFORM)
    theirs = cache_path(cm.mounts_dir(b), "pip")
    fetch = fetcher(a, b, [])

    def racing_fetch(desc: Descriptor) -> None:
        fetch(desc)
        if desc.media_type != mt.OCI_MANIFEST:     # while the layer comes: a step fills it
            theirs.mkdir(parents=True)
            (theirs / "theirs").write_text("made here")
    cm.restore(b, entries, racing_fetch)
    assert os.listdir(theirs) == ["theirs"] and leftovers(b) == []


def test_restore_waits_for_a_locked_step_and_keeps_what_it_wrote(stores):
    a, b = stores
    make_cache(cache_path(cm.mounts_dir(a), "apt"))
    entries = cm.collect(a, ["apt"], PLATFORM)
    d = cache_path(cm.mounts_dir(b), "apt")
    d.mkdir(parents=True)
    with open(cache_lock(d), "a+") as held:       # what run.py holds for sharing=locked
        fcntl.flock(held, fcntl.LOCK_EX)
        result: list = []
        t = threading.Thread(target=lambda: result.append(cm.restore(b, entries, fetcher(a, b, []))))
        t.start()
        t.join(1.0)
        assert t.is_alive() and os.listdir(d) == []
        (d / "from-the-step").write_text("x")
    t.join(30)
    assert result == [[]] and os.listdir(d) == ["from-the-step"] and leftovers(b) == []


def test_work_dirs_of_a_killed_restore_are_reclaimed(stores):
    a, b = stores
    make_cache(cache_path(cm.mounts_dir(a), "pip"))
    entries = cm.collect(a, ["pip"], PLATFORM)
    stale = cm.mounts_dir(b) / ".restore-0123456789abcdef"
    (stale / "half").mkdir(parents=True)       # no process holds its lock: its owner died
    assert cm.restore(b, entries, fetcher(a, b, [])) == ["pip"]
    assert not stale.exists() and leftovers(b) == []


# --- hostile artifacts -----------------------------------------------------------

def tgz(*members: bytes) -> bytes:
    return gzip.compress(b"".join(members) + ZERO_BLOCK * 2, mtime=0)


def reg(name: str, data: bytes = b"x") -> bytes:
    return build_header(name.encode(), REG, mode=0o644, size=len(data)) + data + bytes(padding(len(data)))


def artifact(store: Store, layer: bytes, *, mount_id: str = "pip", artifact_type=cm.ARTIFACT_TYPE,
             layer_size: int | None = None, layers: int = 1, config=None,
             media_type: str = mt.OCI_LAYER_GZIP) -> Descriptor:
    """A mount artifact as a lying cache source could make it, in `store`."""
    info = store.blobs.put(layer, dg.of_bytes(layer))
    ldesc = Descriptor(media_type, info.digest, info.size if layer_size is None else layer_size)
    extra = {"artifactType": artifact_type} if artifact_type else {}
    m = Manifest(config=config or cm.EMPTY_DESCRIPTOR, layers=[ldesc] * layers,
                 annotations={cm.ID_ANNOTATION: mount_id}, extra=extra)
    store.blobs.put(b"{}", dg.of_bytes(b"{}"))
    return store.put_json(m.to_bytes(), mt.OCI_MANIFEST)


@pytest.fixture
def hostile(tmp_path, stores):
    """(source store, target store, restore(desc) -> (ids, warnings, fetched)); checks
    afterwards that nothing appeared outside the store and no cache dir was made."""
    a, b = stores
    victim = tmp_path / "victim"
    victim.mkdir()
    before = sorted(os.listdir(tmp_path))

    def run(desc: Descriptor, mount_id: str = "pip"):
        warnings: list[str] = []
        calls: list[str] = []
        entries = [{"id": mount_id, "platform": PLATFORM, "manifest": desc.to_json()}]
        done = cm.restore(b, entries, fetcher(a, b, calls), warn=warnings.append)
        return done, warnings, calls

    yield a, b, run, victim
    assert sorted(os.listdir(tmp_path)) == before and os.listdir(victim) == []
    assert not os.path.lexists("/x") and not os.path.lexists(tmp_path.parent / "x")
    mounts = cm.mounts_dir(b)
    made = [n for n in os.listdir(mounts) if not n.endswith(".lock")] if mounts.exists() else []
    assert made == []


def one_warning(warnings: list[str], *words: str) -> None:
    assert len(warnings) == 1 and "\n" not in warnings[0], warnings
    for w in words:
        assert w in warnings[0], warnings


@pytest.mark.parametrize("members,words", [
    ((reg("../x"),), "'..'"),
    ((reg("ok"), reg("../../../x")), "'..'"),
    ((reg("/x"),), "absolute"),
])
def test_entries_leading_outside_are_refused(hostile, members, words):
    a, b, run, _victim = hostile
    done, warnings, _ = run(artifact(a, tgz(*members)))
    assert done == []
    one_warning(warnings, "not restored", words)


def test_a_file_through_an_absolute_symlink_is_refused(hostile):
    a, b, run, victim = hostile
    layer = tgz(build_header(b"l", SYM, mode=0o777, linkname=str(victim).encode()),
                reg("l/planted", b"owned"))
    done, warnings, _ = run(artifact(a, layer))
    assert done == [] and not (victim / "planted").exists()
    one_warning(warnings, "refusing to write through it")


@pytest.mark.parametrize("kind", [CHR, BLK])
def test_device_nodes_are_refused(hostile, kind):
    a, b, run, _victim = hostile
    layer = tgz(reg("ok"), build_header(b"mem", kind, mode=0o666, devmajor=1, devminor=1))
    done, warnings, _ = run(artifact(a, layer))
    assert done == []
    one_warning(warnings, "device nodes are not allowed")


def test_wrong_artifact_type_is_refused_before_its_layer_is_fetched(hostile):
    a, b, run, _victim = hostile
    desc = artifact(a, tgz(reg("f")), artifact_type="application/vnd.example.other")
    done, warnings, calls = run(desc)
    assert done == [] and calls == [desc.digest]
    one_warning(warnings, "artifactType")
    done, warnings, calls = run(artifact(a, tgz(reg("f")), artifact_type=None))
    one_warning(warnings, "artifactType")


@pytest.mark.parametrize("change,words", [
    (dict(layer_size=1 << 40), "larger than"),
    (dict(layers=2), "2 layers, not one"),
    (dict(mount_id="npm"), "is for cache mount 'npm'"),
    (dict(media_type="application/vnd.example.blob"), "is not a tar"),
    (dict(config=Descriptor(mt.OCI_CONFIG, dg.of_bytes(b"{}"), 2)), "empty descriptor"),
])
def test_lying_manifests_are_refused_before_the_layer_is_fetched(hostile, change, words):
    a, b, run, _victim = hostile
    desc = artifact(a, tgz(reg("f")), **change)
    done, warnings, calls = run(desc)
    assert done == [] and calls == [desc.digest]
    one_warning(warnings, words)


def test_a_huge_manifest_is_refused_unread(hostile):
    a, b, run, _victim = hostile
    desc = artifact(a, tgz(reg("f")))
    big = Descriptor(mt.OCI_MANIFEST, desc.digest, 1 << 33)
    done, warnings, calls = run(big)
    assert done == [] and calls == []
    one_warning(warnings, "larger than")
    for bad in ("nope", [{"id": "", "platform": PLATFORM}], [{"id": "x", "platform": "??"}]):
        warnings = []
        assert cm.restore(b, bad, no_fetch, warn=warnings.append) == []
        one_warning(warnings, "ignored")


def test_a_layer_that_inflates_beyond_the_limit_is_refused(hostile, monkeypatch):
    a, b, run, _victim = hostile
    monkeypatch.setattr(cm, "MAX_UNPACKED_SIZE", 1 << 20)
    zeros = bytes(4 << 20)
    done, warnings, _ = run(artifact(a, tgz(reg("bomb", zeros))))
    assert done == []
    one_warning(warnings, "larger than 1048576 bytes uncompressed")


def test_a_blob_that_lies_about_its_content_is_refused(hostile):
    a, b, run, _victim = hostile
    desc = artifact(a, tgz(reg("f", b"honest")))
    layer = json.loads(a.blobs.read(desc.digest))["layers"][0]
    path = a.blobs.path(layer["digest"])
    os.chmod(path, 0o600)
    path.write_bytes(tgz(reg("f", b"forged")))    # the source serves other bytes
    done, warnings, _ = run(desc)
    assert done == []
    one_warning(warnings, "not restored")


def test_unpack_errors_are_one_line_pybuild_errors(stores):
    a, b = stores
    desc = artifact(b, tgz(reg("../x")))
    with pytest.raises(PybuildError) as err:
        cm.unpack(b, desc, cm.mounts_dir(b), "pip")
    assert "\n" not in str(err.value) and leftovers(b) == []
    assert not cache_path(cm.mounts_dir(b), "pip").exists()


# --- end to end: machine A exports, machine B (empty store) restores -------------

@pytest.mark.parametrize("kind", ["local", "registry"])
def test_a_fresh_machine_sees_what_the_cache_mount_held_on_another(tmp_path, busybox_rootfs,
                                                                    kind, request):
    from buildpeer import import_busybox
    from conftest import CLI

    a, b = CLI(tmp_path / "store-a"), CLI(tmp_path / "store-b")
    for cli, name in ((a, "a"), (b, "b")):
        (tmp_path / name).mkdir()
        import_busybox(cli, busybox_rootfs, tmp_path / name)
    ctx_a, ctx_b = tmp_path / "ctx-a", tmp_path / "ctx-b"
    ctx_a.mkdir()
    ctx_b.mkdir()
    (ctx_a / "Dockerfile").write_text(
        "FROM busybox\n"
        "RUN --mount=type=cache,target=/c sh -c 'echo warm > /c/f'\n"
        "RUN --mount=type=cache,target=/u,id=owned,uid=1000,mode=0700 "
        "sh -c 'echo mine > /u/g'\n")
    (ctx_b / "Dockerfile").write_text(
        "FROM busybox\n"
        "RUN --mount=type=cache,target=/c cat /c/f > /seen\n"
        "RUN --mount=type=cache,target=/u,id=owned,uid=1000,mode=0700 "
        "sh -c 'cat /u/g; stat -c %u:%a /u' > /owned\n")
    if kind == "local":
        cache = tmp_path / "cache-dir"
        to, source = f"type=local,dest={cache},cache-mounts=true", f"type=local,src={cache}"
    else:
        reg = request.getfixturevalue("registry")
        request.getfixturevalue("config_env")
        ref = f"{reg.host}/app/cache:mounts"
        to, source = f"type=registry,ref={ref},cache-mounts=true", f"type=registry,ref={ref}"
    a("build", "--progress", "plain", "--cache-to", to, ctx_a)
    out = tmp_path / "out"
    built = b("build", "--progress", "plain", "--cache-from", source,
              "--output", f"type=local,dest={out}", ctx_b)
    assert (out / "seen").read_text() == "warm\n", built.stderr
    assert (out / "owned").read_text() == "mine\n1000:700\n"
    assert "warning" not in built.stderr.lower()
    b("fsck")
    a("fsck")


def test_a_fully_cached_build_keeps_the_mounts_in_the_export_it_rewrites(
        tmp_path, busybox_rootfs, registry, config_env):
    """The CI loop: --cache-from R --cache-to R,cache-mounts=true on runner after runner.
    B's build is all hits (its steps never mount the cache, nothing restores it), yet its
    export must still carry the warm cache on to C."""
    from buildpeer import import_busybox, steps
    from conftest import CLI

    a, b, c = (CLI(tmp_path / f"store-{n}") for n in "abc")
    (tmp_path / "a").mkdir()
    import_busybox(a, busybox_rootfs, tmp_path / "a")
    a("save", "-o", tmp_path / "base.tar", "busybox")
    for cli in (b, c):
        cli("load", "-i", tmp_path / "base.tar")
    same, changed = tmp_path / "same", tmp_path / "changed"
    for d, run in ((same, "sh -c 'echo warm > /c/f'"), (changed, "cat /c/f > /seen")):
        d.mkdir()
        (d / "Dockerfile").write_text(f"FROM busybox\nRUN --mount=type=cache,target=/c {run}\n")
    ref = f"{registry.host}/app/cache:ci"
    to = f"type=registry,ref={ref},cache-mounts=true"
    a("build", "--cache-to", to, same)
    again = b("build", "--progress", "plain", "--cache-from", ref, "--cache-to", to, same)
    assert list(steps(again.stderr).values())[-1] == "CACHED", again.stderr
    assert not any(p.is_dir() and not p.name.startswith(".")
                   for p in (tmp_path / "store-b" / "cache" / "mounts").glob("*"))
    out = tmp_path / "out"
    c("build", "--cache-from", ref, "--output", f"type=local,dest={out}", changed)
    assert (out / "seen").read_text() == "warm\n"


# --- packing a tree a concurrent step may still change ---------------------------

@pytest.mark.parametrize("swap", ["dir-to-symlink", "file-to-symlink", "file-to-fifo"])
def test_an_entry_swapped_mid_walk_never_brings_host_files_in(tmp_path, monkeypatch, swap):
    """A shared cache mount may be in use by another build's step while it is packed:
    an entry swapped after its directory was listed is an error, never followed."""
    from layerstore import layer_diff

    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    (src / "sub" / "f").write_text("cache")
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "f").write_text("host secret")
    listing = layer_diff._Differ.listing

    def swapping(self, dfd, dirname):
        out = listing(self, dfd, dirname)
        if swap == "dir-to-symlink" and dirname == b"":
            os.rename(src / "sub", tmp_path / "moved")
            os.symlink(victim, src / "sub")
        elif swap != "dir-to-symlink" and dirname == b"sub":
            os.unlink(src / "sub" / "f")
            if swap == "file-to-symlink":
                os.symlink(victim / "f", src / "sub" / "f")
            else:
                os.mkfifo(src / "sub" / "f")
        return out
    monkeypatch.setattr(layer_diff._Differ, "listing", swapping)
    out = io.BytesIO()
    with pytest.raises(layer_diff.LayerSourceError, match="changed while writing"):
        layer_diff.write_layer(src, out, compression="none", overlay=False, root_entry=True)
    assert b"host secret" not in out.getvalue()


def test_a_corrupt_mount_artifact_in_the_cache_source_is_a_warning_and_a_cold_cache(
        tmp_path, busybox_rootfs):
    from buildpeer import import_busybox
    from conftest import CLI

    a, b = CLI(tmp_path / "store-a"), CLI(tmp_path / "store-b")
    for cli, name in ((a, "a"), (b, "b")):
        (tmp_path / name).mkdir()
        import_busybox(cli, busybox_rootfs, tmp_path / name)
    ctx_a, ctx_b = tmp_path / "ctx-a", tmp_path / "ctx-b"
    for d, run in ((ctx_a, "sh -c 'echo warm > /c/f'"),
                   (ctx_b, "sh -c 'cat /c/f || echo cold' > /seen")):
        d.mkdir()
        (d / "Dockerfile").write_text(f"FROM busybox\nRUN --mount=type=cache,target=/c {run}\n")
    cache = tmp_path / "cache-dir"
    a("build", "--cache-to", f"type=local,dest={cache},cache-mounts=true", ctx_a)
    # the source now serves a hostile tar under the layer's name
    blobs = cache / "blobs" / "sha256"
    top = json.loads((cache / "index.json").read_text())["manifests"][0]["digest"]
    config = json.loads((blobs / top[7:]).read_bytes())["config"]["digest"]
    art = json.loads((blobs / config[7:]).read_bytes())["mounts"][0]["manifest"]["digest"]
    layer = json.loads((blobs / art[7:]).read_bytes())["layers"][0]["digest"]
    (blobs / layer[7:]).write_bytes(tgz(reg("../../../../x", b"owned")))
    out = tmp_path / "out"
    built = b("build", "--cache-from", f"type=local,src={cache}", "--output",
              f"type=local,dest={out}", ctx_b)
    assert (out / "seen").read_text() == "cold\n"
    warnings = [l for l in built.stderr.splitlines() if "warning" in l.lower()]
    assert len(warnings) == 1 and "cache mount '/c' not restored" in warnings[0], built.stderr
    mounts = tmp_path / "store-b" / "cache" / "mounts"
    assert not [n for n in os.listdir(mounts) if n.startswith(".restore-")]
    assert not (tmp_path / "x").exists() and not (tmp_path / "store-b" / "x").exists()
    b("fsck")
