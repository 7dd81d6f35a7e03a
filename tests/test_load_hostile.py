"""Hostile and odd image archives through `pybuild load` and `run`: each is loaded and
runs, or is refused with one line (never a traceback, a hang or unbounded memory).

The archives are made by hand with tarfile, as an attacker (or docker) would."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from conftest import CLI, REPO
from layerstore import mediatypes as mt
from layerstore.archive import load
from layerstore.errors import PybuildError
from layerstore.model import Descriptor, Manifest
from layerstore.store import Store

NONE = ("--network", "none")
DEEP = 100_000


def sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def tar_of(members: list[tuple[tarfile.TarInfo, bytes | None]], fmt=tarfile.PAX_FORMAT) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=fmt) as t:
        for info, data in members:
            if data is not None:
                info.size = len(data)
            t.addfile(info, io.BytesIO(data) if data is not None else None)
    return buf.getvalue()


def entry(name: str, data: bytes | None = None, *, kind=tarfile.REGTYPE, mode=0o644,
          link: str = "") -> tuple[tarfile.TarInfo, bytes | None]:
    info = tarfile.TarInfo(name)
    info.type, info.mode, info.linkname, info.mtime = kind, mode, link, 1_700_000_000
    return info, data if kind == tarfile.REGTYPE else None


def busybox_layer(busybox_rootfs: Path, extra: list = ()) -> bytes:
    """A layer with a static busybox as /bin/sh, /bin/cat, /bin/stat."""
    members = [entry("bin", kind=tarfile.DIRTYPE, mode=0o755),
               entry("bin/busybox", (busybox_rootfs / "bin" / "busybox").read_bytes(), mode=0o755)]
    members += [entry(f"bin/{n}", kind=tarfile.SYMTYPE, link="busybox") for n in ("sh", "cat", "stat")]
    return tar_of(members + list(extra))


def config_doc(diff_ids: list[str], **extra) -> dict:
    return {"architecture": "amd64", "os": "linux", "rootfs": {"type": "layers", "diff_ids": diff_ids},
            "config": {"Env": ["PATH=/bin"]}, **extra}


def docker_archive(path: Path, layers: list[bytes], config: dict | bytes | None = None, *,
                   tag: str = "hostile:latest", manifest: object = None,
                   extra: list = ()) -> Path:
    cfg = config if config is not None else config_doc([sha(l) for l in layers])
    cfg_bytes = cfg if isinstance(cfg, bytes) else json.dumps(cfg).encode()
    members = [entry("config.json", cfg_bytes)]
    members += [entry(f"layer{i}.tar", l) for i, l in enumerate(layers)]
    doc = manifest if manifest is not None else [
        {"Config": "config.json", "RepoTags": [tag], "Layers": [f"layer{i}.tar" for i in range(len(layers))]}]
    members.append(entry("manifest.json", json.dumps(doc).encode()))
    path.write_bytes(tar_of(members + list(extra)))
    return path


def oci_archive(path: Path, top: list[dict] | bytes, blobs: list[bytes],
                misnamed: dict[str, bytes] | None = None) -> Path:
    """An OCI layout tar; `misnamed`: blobs stored under a digest that is not theirs."""
    index = top if isinstance(top, bytes) else json.dumps(
        {"schemaVersion": 2, "mediaType": mt.OCI_INDEX, "manifests": top}).encode()
    members = [entry("oci-layout", b'{"imageLayoutVersion":"1.0.0"}'), entry("index.json", index)]
    members += [entry(f"blobs/sha256/{sha(b)[7:]}", b) for b in blobs]
    members += [entry(f"blobs/sha256/{d[7:]}", b) for d, b in (misnamed or {}).items()]
    path.write_bytes(tar_of(members))
    return path


def desc(data: bytes, media_type: str, **extra) -> dict:
    return {"mediaType": media_type, "digest": sha(data), "size": len(data), **extra}


def refused(cli: CLI, *args: str, text: str = "", input: bytes | None = None) -> str:
    p = cli(*args, check=False, input=input)
    err = p.stderr.decode() if isinstance(p.stderr, bytes) else p.stderr
    lines = err.strip().splitlines()
    assert p.returncode != 0, (args, err)
    assert len(lines) == 1 and lines[0].startswith("pybuild: error:"), err[-3000:]
    assert text.lower() in err.lower(), err
    return err


def refused_in_process(cli: CLI, archive: Path, text: str = "") -> None:
    """`load` of many variants, called in-process (one CLI run per test shows the line)."""
    with pytest.raises(PybuildError) as info:
        load(Store.open(cli.root), archive)
    assert "\n" not in str(info.value) and text.lower() in str(info.value).lower(), info.value


@pytest.fixture
def cli(store_root) -> CLI:
    return CLI(store_root)


def test_hardlink_to_a_lower_layer_file_loads_runs_and_round_trips(cli, busybox_rootfs, tmp_path):
    """docker writes such layers: the second layer links a file of the first."""
    lower = busybox_layer(busybox_rootfs, [entry("etc", kind=tarfile.DIRTYPE, mode=0o750),
                                           entry("etc/base-f", b"from the lower layer\n")])
    upper = tar_of([entry("linked", kind=tarfile.LNKTYPE, link="etc/base-f"),
                    entry("etc/also", kind=tarfile.LNKTYPE, link="etc/base-f")])
    arch = docker_archive(tmp_path / "img.tar", [lower, upper], tag="hl:1")
    cli("load", "-i", arch)
    script = "cat /etc/base-f /linked; stat -c '%h %a' /etc/base-f /linked /etc/also; stat -c %a /etc"
    want = "from the lower layer\nfrom the lower layer\n3 644\n3 644\n3 644\n750\n"
    p = cli("run", "--rm", *NONE, "hl:1", "sh", "-c", script, check=False)
    assert (p.returncode, p.stdout) == (0, want), p.stderr
    # and out again, into another store, in both archive formats
    for fmt in ("oci", "docker"):
        cli("save", "hl:1", "-o", tmp_path / f"{fmt}.tar", "--format", fmt)
        other = CLI(tmp_path / f"store-{fmt}")
        other("load", "-i", tmp_path / f"{fmt}.tar")
        p = other("run", "--rm", *NONE, "hl:1", "sh", "-c", script, check=False)
        assert (p.returncode, p.stdout) == (0, want), p.stderr


def test_corrupt_compression_is_one_line(cli, busybox_rootfs, tmp_path):
    layer = busybox_layer(busybox_rootfs)
    gz = bytearray(gzip.compress(layer, mtime=0))
    gz[len(gz) // 2:len(gz) // 2 + 64] = os.urandom(64)
    arch = docker_archive(tmp_path / "a.tar", [bytes(gz)], config_doc([sha(layer)]))
    refused(cli, "load", "-i", arch, text="corrupt")
    whole = bytearray(gzip.compress(docker_archive(tmp_path / "b.tar", [layer]).read_bytes(), mtime=0))
    whole[len(whole) // 2:len(whole) // 2 + 64] = os.urandom(64)
    (tmp_path / "b.tar.gz").write_bytes(whole)
    refused(cli, "load", "-i", tmp_path / "b.tar.gz", text="corrupt")
    # streamed from stdin, the layer inside may be checked (its diff ID) before the gzip
    # trailer's CRC is reached: either refusal is right, whichever the random bytes hit
    err = refused(cli, "load", input=bytes(whole))
    assert "corrupt" in err.lower() or "has diff id" in err.lower(), err
    (tmp_path / "noise").write_bytes(os.urandom(5000))
    refused(cli, "load", "-i", tmp_path / "noise")


def test_deeply_nested_json_is_one_line(cli, busybox_rootfs, tmp_path):
    layer = busybox_layer(busybox_rootfs)
    deep = json.dumps(config_doc([sha(layer)])).encode()[:-1] + b', "x": ' + b"[" * DEEP + b"]" * DEEP + b"}"
    refused(cli, "load", "-i", docker_archive(tmp_path / "a.tar", [layer], deep), text="nested")
    (tmp_path / "c.tar").write_bytes(tar_of([entry("manifest.json", b"[" * DEEP + b"]" * DEEP)]))
    refused(cli, "load", "-i", tmp_path / "c.tar", text="nested")
    # a config already in the store (written by another tool): `run` refuses it in one line
    store = Store.open(cli.root)
    lay = store.blobs.put(layer, sha(layer))
    cfg = store.put_json(deep, mt.OCI_CONFIG)
    top = store.put_json(Manifest(cfg, [Descriptor(mt.OCI_LAYER, lay.digest, lay.size)]).to_bytes(),
                         mt.OCI_MANIFEST)
    store.tag("deep:1", top)
    refused(cli, "run", "--rm", *NONE, "deep:1", "true", text="nested")


def test_documents_with_wrong_field_types_are_refused(cli, busybox_rootfs, tmp_path):
    layer = busybox_layer(busybox_rootfs)
    for i, bad in enumerate(({"Env": [1]}, {"Env": "PATH=/bin"}, {"Cmd": "sh"}, {"Labels": {"a": 1}},
                             {"ExposedPorts": ["80/tcp"]}, {"User": 0})):
        cfg = config_doc([sha(layer)])
        cfg["config"] = bad
        refused_in_process(cli, docker_archive(tmp_path / f"{i}.tar", [layer], cfg), text="config")
    refused(cli, "load", "-i", tmp_path / "0.tar", text="config")
    for i, manifest in enumerate(({"Config": 1}, {"Config": "config.json", "Layers": "layer0.tar"},
                                  {"Config": "config.json", "Layers": [7]},
                                  {"Config": "config.json", "Layers": ["layer0.tar"], "RepoTags": "x:y"})):
        refused_in_process(cli, docker_archive(tmp_path / f"m{i}.tar", [layer], manifest=[manifest]))
    refused(cli, "load", "-i", tmp_path / "m1.tar")
    assert cli("images", "-q").stdout == ""


def test_archive_members_outside_the_archive_are_refused(cli, busybox_rootfs, tmp_path):
    layer = busybox_layer(busybox_rootfs)
    outside = ("../../etc/passwd", "/etc/passwd", "a/../../etc/passwd", "link-up", "link-abs")
    links = [entry("link-up", kind=tarfile.SYMTYPE, link="../../../../etc/passwd"),
             entry("link-abs", kind=tarfile.SYMTYPE, link="/etc/passwd")]
    for i, name in enumerate(outside):
        for field in ("Config", "Layers"):
            m = {"Config": "config.json", "RepoTags": ["x:1"], "Layers": ["layer0.tar"]}
            m[field] = name if field == "Config" else [name]
            arch = docker_archive(tmp_path / f"{i}{field}.tar", [layer], manifest=[m], extra=links)
            refused_in_process(cli, arch, text="outside")
    refused(cli, "load", "-i", tmp_path / "0Config.tar", text="outside")
    assert cli("images", "-q").stdout == ""


def test_repositories_is_never_read(cli, busybox_rootfs, tmp_path):
    layer = busybox_layer(busybox_rootfs)
    bomb = [entry("repositories", b"{" * 50_000 + b"\"")]
    cli("load", "-i", docker_archive(tmp_path / "a.tar", [layer], tag="fine:1", extra=bomb))
    assert cli("run", "--rm", *NONE, "fine:1", "sh", "-c", "echo ok").stdout == "ok\n"


def test_blob_not_matching_its_digest_is_refused(cli, busybox_rootfs, tmp_path):
    layer = busybox_layer(busybox_rootfs)
    cfg = json.dumps(config_doc([sha(layer)])).encode()
    man = json.dumps({"schemaVersion": 2, "mediaType": mt.OCI_MANIFEST,
                      "config": desc(cfg, mt.OCI_CONFIG), "layers": [desc(layer, mt.OCI_LAYER)]}).encode()
    other = bytearray(layer)
    other[-2000] ^= 0xFF  # same size, other bytes
    bad = oci_archive(tmp_path / "bad.tar", [desc(man, mt.OCI_MANIFEST)], [cfg, man],
                      misnamed={sha(layer): bytes(other)})
    refused(cli, "load", "-i", bad, text="digest")
    assert cli("images", "-q").stdout == ""


def test_index_of_nothing_artifacts_and_ambiguous_documents_are_refused(cli, busybox_rootfs, tmp_path):
    layer = busybox_layer(busybox_rootfs)
    cfg = json.dumps(config_doc([sha(layer)])).encode()
    image = {"schemaVersion": 2, "mediaType": mt.OCI_MANIFEST, "config": desc(cfg, mt.OCI_CONFIG),
             "layers": [desc(layer, mt.OCI_LAYER)]}
    helm_cfg = b'{"name":"chart"}'
    artifacts = [
        {**image, "config": desc(helm_cfg, "application/vnd.cncf.helm.config.v1+json")},
        {**image, "artifactType": "application/vnd.example.sbom+json"},
        {**image, "layers": [desc(layer, "application/vnd.in-toto+json")]},
    ]
    empty_index = json.dumps({"schemaVersion": 2, "mediaType": mt.OCI_INDEX, "manifests": []}).encode()
    cases: list[tuple[str, list[dict] | bytes, list[bytes]]] = [
        ("no manifests", empty_index, []),
        ("no manifests", [desc(empty_index, mt.OCI_INDEX)], [empty_index]),
    ]
    for a in artifacts:
        doc = json.dumps(a).encode()
        cases.append(("not an image", [desc(doc, mt.OCI_MANIFEST)], [doc, cfg, helm_cfg, layer]))
        idx = json.dumps({"schemaVersion": 2, "mediaType": mt.OCI_INDEX,
                          "manifests": [desc(doc, mt.OCI_MANIFEST)]}).encode()
        cases.append(("no image", [desc(idx, mt.OCI_INDEX)], [idx, doc, cfg, helm_cfg, layer]))
    # CVE-2021-41190: readable as a manifest and as an index, no mediaType to tell
    plain = json.dumps(image).encode()
    ambiguous = json.dumps({"schemaVersion": 2, "config": image["config"], "layers": image["layers"],
                            "manifests": [desc(plain, mt.OCI_MANIFEST)]}).encode()
    cases.append(("ambiguous", [desc(ambiguous, "")], [ambiguous, plain, cfg, layer]))
    cases.append(("ambiguous", [desc(ambiguous, mt.OCI_MANIFEST)], [ambiguous, plain, cfg, layer]))
    # the descriptor says manifest, the document says index (or the reverse)
    idx = json.dumps({"schemaVersion": 2, "mediaType": mt.OCI_INDEX,
                      "manifests": [desc(plain, mt.OCI_MANIFEST)]}).encode()
    cases.append(("referred to as", [desc(idx, mt.OCI_MANIFEST)], [idx, plain, cfg, layer]))
    cases.append(("referred to as", [desc(plain, mt.OCI_INDEX)], [plain, cfg, layer]))
    for i, (text, top, blobs) in enumerate(cases):
        refused_in_process(cli, oci_archive(tmp_path / f"{i}.tar", top, blobs), text=text)
    refused(cli, "load", "-i", tmp_path / "0.tar", text="no manifests")
    assert cli("images", "-q").stdout == ""
    # already in the store (another tool put them there): `run` refuses them too
    store = Store.open(cli.root)
    for b in (cfg, helm_cfg, layer):
        store.blobs.put(b, sha(b))
    for i, doc in enumerate([json.dumps(a).encode() for a in artifacts] + [ambiguous]):
        store.tag(f"odd:{i}", store.put_json(doc, ""))
        refused(cli, "run", "--rm", *NONE, f"odd:{i}", "true")
    # the plain image loads and runs; so does an index holding it beside an artifact
    # (BuildKit's attestations are such manifests), and fsck finds nothing wrong
    cli("load", "-i", oci_archive(tmp_path / "ok.tar",
                                  [desc(plain, mt.OCI_MANIFEST, annotations={mt.REF_NAME: "ok:1"})],
                                  [plain, cfg, layer]))
    assert cli("run", "--rm", *NONE, "ok:1", "sh", "-c", "echo ok").stdout == "ok\n"
    sbom = json.dumps(artifacts[2]).encode()
    both = json.dumps({"schemaVersion": 2, "mediaType": mt.OCI_INDEX, "manifests": [
        desc(plain, mt.OCI_MANIFEST, platform={"os": "linux", "architecture": "amd64"}),
        desc(sbom, mt.OCI_MANIFEST, platform={"os": "unknown", "architecture": "unknown"})]}).encode()
    cli("load", "-i", oci_archive(tmp_path / "both.tar",
                                  [desc(both, mt.OCI_INDEX, annotations={mt.REF_NAME: "both:1"})],
                                  [both, plain, sbom, cfg, layer]))
    assert cli("run", "--rm", *NONE, "both:1", "sh", "-c", "echo both").stdout == "both\n"
    for i in range(len(artifacts) + 1):
        cli("rmi", f"odd:{i}")
    assert "corrupt" not in cli("fsck").stdout


def test_tar_header_bombs_in_the_archive_are_refused(cli, tmp_path):
    pax = tarfile.TarInfo("PaxHeaders/x")
    pax.type, pax.size = tarfile.XHDTYPE, 1 << 40   # a PAX header of a terabyte, in a small file
    bomb = pax.tobuf(tarfile.GNU_FORMAT) + b"x" * 4096
    (tmp_path / "pax.tar").write_bytes(bomb)
    refused(cli, "load", "-i", tmp_path / "pax.tar", text="implausible")
    record = b"path=" + b"a" * (2 << 20)
    record = str(len(record) + 9).encode() + b" " + record + b"\n"
    real = tar_of([entry("manifest.json", b"[]")])
    pax.size = len(record)
    big = pax.tobuf(tarfile.USTAR_FORMAT) + record + bytes(-len(record) % 512) + real
    (tmp_path / "big.tar").write_bytes(big)
    refused(cli, "load", "-i", tmp_path / "big.tar", text="implausible")
    truncated = tar_of([entry("manifest.json", b"[" + b" " * 5000 + b"]")])[:2048]
    (tmp_path / "cut.tar").write_bytes(truncated)
    refused(cli, "load", "-i", tmp_path / "cut.tar", text="truncated")


def test_descriptors_pointing_outside_the_layout_are_refused(cli, tmp_path):
    for i, digest in enumerate(("sha256:../../../etc/passwd", "sha512:" + "0" * 128,
                                "sha256:" + "A" * 64, "../blobs/sha256/x")):
        index = [{"mediaType": mt.OCI_MANIFEST, "digest": digest, "size": 10}]
        refused_in_process(cli, oci_archive(tmp_path / f"{i}.tar", index, []), text="digest")


def test_hostile_import_is_one_line(cli, tmp_path):
    """uid 2**40 and a far-future time (GNU base-256 fields), xattrs an image must not set."""
    info = tarfile.TarInfo("f")
    info.size, info.uid = 1, 1 << 40
    (tmp_path / "uid.tar").write_bytes(tar_of([(info, b"x")], fmt=tarfile.GNU_FORMAT))
    refused(cli, "import", tmp_path / "uid.tar", "bad:1", text="out of range")
    info = tarfile.TarInfo("f")
    info.size, info.mtime = 1, 1 << 62
    info.pax_headers = {"SCHILY.xattr.trusted.overlay.redirect": "/etc",
                        "SCHILY.xattr.security.selinux": "system_u:object_r:shadow_t:s0",
                        "SCHILY.xattr.user.kept": "yes"}
    (tmp_path / "x.tar").write_bytes(tar_of([(info, b"x")]))
    cli("import", tmp_path / "x.tar", "odd:1")
    store = Store.open(cli.root)
    snap = store.snapshot_chain(store.resolve("odd:1"))[-1]
    assert sorted(os.listxattr(snap / "f")) == ["user.kept"]
    assert os.lstat(snap / "f").st_mtime == 0


def test_volume_copy_up_never_opens_image_devices_and_merges_layers(cli, busybox_rootfs, tmp_path):
    """A VOLUME path of a hostile image holding device nodes: copy-up recreates them as
    nodes (reading them would copy a host disk, `b 8 0`, into the volume, or never end,
    `c 1 9`); a whiteout in a higher layer hides a lower file; no symlink is followed."""
    null = tarfile.TarInfo("data/null")
    null.type, null.devmajor, null.devminor, null.mode = tarfile.CHRTYPE, 1, 3, 0o666
    lower = busybox_layer(busybox_rootfs, [
        entry("data", kind=tarfile.DIRTYPE, mode=0o750), entry("data/a", b"gone"),
        entry("data/b", b"kept"), (null, None), entry("data/fifo", kind=tarfile.FIFOTYPE),
        entry("data/shadow", kind=tarfile.SYMTYPE, link="/etc/shadow"),
        entry("data/sub", kind=tarfile.DIRTYPE), entry("data/sub/x", b"x")])
    upper = tar_of([entry("data", kind=tarfile.DIRTYPE, mode=0o751), entry("data/.wh.a", b""),
                    entry("data/c", b"new"), entry("data/sub", kind=tarfile.DIRTYPE),
                    entry("data/sub/.wh..wh..opq", b""), entry("data/sub/y", b"y")])
    cfg = config_doc([sha(lower), sha(upper)])
    cfg["config"]["Volumes"] = {"/data": {}}
    cli("load", "-i", docker_archive(tmp_path / "v.tar", [lower, upper], cfg, tag="vol:1"))
    script = "ls /data /data/sub; stat -c '%F %t:%T' /data/null /data/fifo; cat /data/b /data/c; " \
             "readlink /data/shadow; stat -c %a /data"
    for how in ((), ("-v", "named:/data")):
        p = cli("run", "--rm", *NONE, *how, "vol:1", "sh", "-c", script, check=False)
        assert p.returncode == 0, p.stderr
        assert p.stdout.split("\n") == [
            "/data:", "b", "c", "fifo", "null", "shadow", "sub", "", "/data/sub:", "y",
            "character special file 1:3", "fifo 0:0", "keptnew/etc/shadow", "751", ""], p.stdout
    data = cli.root / "volumes" / "named" / "_data"
    assert os.lstat(data / "null").st_rdev == os.makedev(1, 3) and os.path.islink(data / "shadow")


# --- round 2 ------------------------------------------------------------------------


def _oci_image(layers: list[bytes], config: dict | bytes | None = None, layer_blobs=None,
               config_desc: dict | None = None) -> tuple[list[dict], list[bytes]]:
    """(index.json entries, blobs) of a one-image OCI layout."""
    cfg = config if isinstance(config, bytes) else json.dumps(
        config if config is not None else config_doc([sha(l) for l in layers])).encode()
    stored = layer_blobs if layer_blobs is not None else layers
    man = json.dumps({"schemaVersion": 2, "mediaType": mt.OCI_MANIFEST,
                      "config": config_desc or desc(cfg, mt.OCI_CONFIG),
                      "layers": [desc(l, mt.OCI_LAYER) for l in stored]}).encode()
    top = [desc(man, mt.OCI_MANIFEST, annotations={"org.opencontainers.image.ref.name": "odd:1"})]
    return top, [cfg, man, *stored]


def test_oci_layout_of_another_version_is_refused(cli, tmp_path):
    """As containerd's importer: a layout of another version may mean anything (it was
    loaded, as was one whose oci-layout is not even JSON)."""
    layer = tar_of([entry("f", b"x")])
    top, blobs = _oci_image([layer])
    good = oci_archive(tmp_path / "good.tar", top, blobs)
    for i, layout in enumerate((b'{"imageLayoutVersion":"2.0.0"}', b"garbage", b"[" * 5000)):
        with tarfile.open(good) as t:
            members = [(m, layout if m.name == "oci-layout" else t.extractfile(m).read())
                       for m in t.getmembers()]
        (tmp_path / f"{i}.tar").write_bytes(tar_of(members))
        refused_in_process(cli, tmp_path / f"{i}.tar", text="oci-layout")
    refused(cli, "load", "-i", tmp_path / "0.tar", text="unsupported image layout version")
    assert cli("images", "-q").stdout == ""
    cli("load", "-i", good)


def test_images_that_contradict_their_config_are_refused_at_load(cli, busybox_rootfs, tmp_path):
    """docker load refuses what `run` would refuse: a config naming 10 000 (or no) diff IDs
    for one layer, a "config" that is a layer blob, a layer that is not what the config
    says. They were loaded and tagged, and failed only at `run`."""
    layer = busybox_layer(busybox_rootfs)
    other = tar_of([entry("g", b"y")])
    cases = {
        "10000 diff IDs": _oci_image([layer], config_doc([sha(layer)] * 10_000)),
        "0 diff IDs": _oci_image([layer], config_doc([])),
        "not valid JSON": _oci_image([layer], config=b"", config_desc=desc(layer, mt.OCI_CONFIG)),
        "diff ID": _oci_image([layer], config_doc([sha(layer)]), layer_blobs=[other]),
    }
    for i, (text, (top, blobs)) in enumerate(cases.items()):
        refused_in_process(cli, oci_archive(tmp_path / f"{i}.tar", top, blobs), text=text)
    refused(cli, "load", "-i", tmp_path / "0.tar", text="10000 diff IDs")
    assert cli("images", "-q").stdout == ""


def test_images_of_more_layers_than_an_overlay_stacks_are_refused(cli, tmp_path):
    """overlayfs stacks at most 500 lower dirs: 600 layers were loaded, all unpacked at
    `run`, and then the mount failed (EINVAL)."""
    layers = [tar_of([entry(f"f{i}", b"x")]) for i in range(600)]
    top, blobs = _oci_image(layers)
    refused(cli, "load", "-i", oci_archive(tmp_path / "oci.tar", top, blobs), text="600 layers")
    refused_in_process(cli, docker_archive(tmp_path / "docker.tar", layers), text="600 layers")
    assert not os.listdir(cli.root / "snapshots")


def test_an_endless_input_is_read_only_as_far_as_the_archive_goes(cli):
    """A stream was spooled whole before its first header was read: `load -i /dev/zero`
    (or an endless pipe) filled the disk for ever. Now the spool stops where the tar ends:
    zero blocks are an empty archive."""
    refused(cli, "load", "-i", "/dev/zero", text="neither an OCI layout")
    p = subprocess.run(f"yes | {sys.executable} -m builder --root {cli.root} load", shell=True,
                       capture_output=True, text=True, timeout=60, cwd=REPO,
                       env=dict(os.environ, PYTHONPATH=str(REPO)))
    assert p.returncode != 0 and "not a tar archive" in p.stderr, p.stderr
    assert os.listdir(cli.root / "ingest") == []
