"""The listing surface as docker's CLI has it: `images`/`ps`/`volume ls` filters and flags,
`rm`/`rmi`/`volume rm` going on past a missing name, `images` SIZE as the uncompressed
content, and the prunes reporting the bytes they really freed."""

from __future__ import annotations

import json
import subprocess
import tarfile
from pathlib import Path

import pytest

from conftest import CLI
from layerstore.humanize import human_size
from test_registry_helpers import config_env, registry  # noqa: F401
from test_run_support import host_resources


def _du(root: Path) -> int:
    return int(subprocess.run(["du", "-sxB1", str(root)], capture_output=True, text=True,
                              check=True).stdout.split()[0])


def _size_of(text: str) -> float:
    """'2.13MB' -> bytes (docker's decimal units)."""
    units = {"B": 1, "kB": 1e3, "MB": 1e6, "GB": 1e9}
    for u in ("kB", "MB", "GB", "B"):
        if text.endswith(u):
            return float(text[:-len(u)]) * units[u]
    raise AssertionError(text)


@pytest.fixture(scope="module")
def template(tmp_path_factory, busybox_rootfs):
    """A store holding busybox:latest, myapp:1.0 (label app=web), tool:2 (label app=tool)
    and one untagged image (label app=dang), built in that order: built once, copied for
    each test (a store holds no absolute path)."""
    base = tmp_path_factory.mktemp("listing")
    cli = CLI(base / "store")
    tar = base / "busybox.tar"
    with tarfile.open(tar, "w") as t:
        t.add(busybox_rootfs, arcname=".")
    cli("import", tar, "busybox:latest")
    ctx = base / "ctx"
    ctx.mkdir()
    ids = {}
    for tag, label, data in (("myapp:1.0", "web", "a"), ("tool:2", "tool", "b"),
                             (None, "dang", "c")):
        (ctx / "f").write_text(data * 5000)
        (ctx / "Dockerfile").write_text(f"FROM busybox\nLABEL app={label}\nCOPY f /f\n")
        args = ["build", "-q", str(ctx)] + (["-t", tag] if tag else [])
        ids[label] = cli(*args).stdout.strip().splitlines()[-1]
    return cli.root, ids


@pytest.fixture
def store(pybuild, template):
    src, ids = template
    subprocess.run(["cp", "-a", str(src), str(pybuild.root)], check=True)
    yield ids
    ps = pybuild("ps", "-aq", "--no-trunc", check=False).stdout.split()
    if ps:
        pybuild("rm", "-f", *ps, check=False)
    # cgroups, netns and veths are counted host-wide (other stores' tests run meanwhile):
    # here only those named after this store's containers
    left = host_resources(pybuild.root)
    assert (left["mounts"], left["processes"], left["files"]) == (0, 0, 0), left
    for cid in ps:
        assert not list(Path("/sys/fs/cgroup").glob(f"**/pybuild-{cid}")), cid


def _rows(out: str) -> list[tuple[str, ...]]:
    """The rows without CREATED (it ages between two runs)."""
    return [tuple(l.split()[:3] + l.split()[-1:]) for l in out.splitlines()]


def _repos(out: str) -> list[tuple[str, str]]:
    return [tuple(l.split()[:2]) for l in out.splitlines()[1:]]


def test_images_positional_and_reference_glob(pybuild, store):
    assert _repos(pybuild("images", "myapp").stdout) == [("myapp", "1.0")]
    assert _repos(pybuild("images", "myapp:1.0").stdout) == [("myapp", "1.0")]
    assert _repos(pybuild("images", "myapp:2").stdout) == []
    assert _repos(pybuild("images", "docker.io/library/busybox").stdout) == \
        [("busybox", "latest")]
    assert _repos(pybuild("images", "--filter", "reference=busy*").stdout) == \
        [("busybox", "latest")]
    assert sorted(_repos(pybuild("images", "-f", "reference=*:*").stdout)) == \
        [("busybox", "latest"), ("myapp", "1.0"), ("tool", "2")]
    # the same key twice is an OR
    assert sorted(_repos(pybuild("images", "-f", "reference=tool", "-f",
                                 "reference=myapp").stdout)) == [("myapp", "1.0"), ("tool", "2")]


def test_images_dangling_label_before_since(pybuild, store):
    assert pybuild("images", "-q", "-f", "dangling=true").stdout.split() == \
        [store["dang"][7:19]]
    out = pybuild("images", "-f", "dangling=false").stdout
    assert "<none>" not in out and len(_repos(out)) == 3
    assert pybuild("images", "-q", "--filter", "label=app=web").stdout.split() == \
        [store["web"][7:19]]
    assert sorted(pybuild("images", "-q", "-f", "label=app").stdout.split()) == \
        sorted(i[7:19] for i in store.values())
    # different keys are an AND
    assert pybuild("images", "-q", "-f", "label=app", "-f", "dangling=true").stdout.split() == \
        [store["dang"][7:19]]
    assert _repos(pybuild("images", "-f", "before=tool:2").stdout) == \
        [("myapp", "1.0"), ("busybox", "latest")]
    assert _repos(pybuild("images", "-f", "since=myapp:1.0").stdout) == \
        [("<none>", "<none>"), ("tool", "2")]
    assert _rows(pybuild("images", "-a").stdout) == _rows(pybuild("images").stdout)


def test_images_digests_column(pybuild, store):
    lines = pybuild("images", "--digests", "busybox").stdout.splitlines()
    assert lines[0].split() == ["REPOSITORY", "TAG", "DIGEST", "IMAGE", "ID", "CREATED", "SIZE"]
    digest = json.loads(pybuild("inspect", "busybox").stdout)[0]["Descriptor"]["digest"]
    assert lines[1].split()[:3] == ["busybox", "latest", digest]


@pytest.mark.parametrize("args,code,message", [
    (("images", "-f", "color=red"), 1, "pybuild: error: invalid filter 'color'"),
    (("images", "-f", "dangling"), 125, "bad format of filter (expected name=value)"),
    (("images", "-f", "dangling=maybe"), 1, "pybuild: error: invalid filter 'dangling=maybe'"),
    (("images", "-f", "reference=[ab"), 1, "pybuild: error: invalid filter 'reference=[ab'"),
    (("images", "-f", "before=nosuch"), 1, "no such image"),
    (("ps", "-f", "status=sleeping"), 1, "pybuild: error: invalid filter 'status=sleeping'"),
    (("ps", "-f", "exited=zero"), 1, "pybuild: error: invalid filter 'exited=zero'"),
    (("ps", "-f", "reference=x"), 1, "pybuild: error: invalid filter 'reference'"),
    (("volume", "ls", "-f", "size=1"), 1, "pybuild: error: invalid filter 'size'"),
    (("prune", "--filter", "dangling=true"), 1, "pybuild: error: invalid filter 'dangling'"),
])
def test_bad_filters_are_one_line_errors(pybuild, args, code, message):
    p = pybuild(*args, check=False)
    assert p.returncode == code, p
    assert p.stderr.count("\n") == 1 and message in p.stderr, p.stderr
    assert "Traceback" not in p.stderr and p.stdout == ""


def test_ps_filters_last_latest(pybuild, store):
    pybuild("run", "--name", "ok", "-l", "team=a", "busybox", "true")
    pybuild("run", "--name", "bad", "busybox", "sh", "-c", "exit 3", check=False)
    pybuild("run", "--name", "app", "myapp:1.0", "true")
    up = pybuild("run", "-d", "--name", "up", "busybox", "sleep", "60").stdout.strip()

    def names(*args: str) -> list[str]:
        out = pybuild("ps", "--no-trunc", *args).stdout.splitlines()[1:]
        return [l.split()[-1] for l in out]

    assert names() == ["up"]
    assert names("-a") == ["up", "app", "bad", "ok"]      # newest first
    assert sorted(names("-a", "-f", "exited=0")) == ["app", "ok"]
    assert names("-a", "-f", "exited=3") == ["bad"]
    assert sorted(names("-f", "status=exited")) == ["app", "bad", "ok"]   # status implies -a
    assert names("-f", "status=running") == ["up"]
    assert names("-a", "-f", "label=team=a") == ["ok"]
    assert names("-a", "-f", "name=^/?ba") == ["bad"]
    assert names("-a", "-f", "id=" + up[:10]) == ["up"]
    # ancestor: the image by name or ID, and the images built on it
    assert names("-a", "-f", "ancestor=myapp:1.0") == ["app"]
    assert "app" in names("-a", "-f", "ancestor=busybox")
    assert names("-n", "2") == names("-a")[:2]
    assert names("-l") == names("-a")[:1]
    q = pybuild("ps", "-aq", "-f", "status=exited").stdout.split()
    assert len(q) == 3 and all(len(i) == 12 for i in q)
    pybuild("rm", "-f", up)


def test_ps_size_column(pybuild, store):
    pybuild("run", "--name", "w", "myapp:1.0", "sh", "-c", "printf 123456789012 > /new")
    lines = pybuild("ps", "-a", "-s").stdout.splitlines()
    assert lines[0].split()[-1] == "SIZE"
    rw, virtual = lines[1].split("   ")[-1].strip().split(" (virtual ")
    assert rw == "12B"
    image_size = pybuild("images", "myapp").stdout.splitlines()[1].split()[-1]
    assert abs(_size_of(virtual.rstrip(")")) - _size_of(image_size) - 12) <= \
        0.005 * _size_of(image_size)


def test_volume_ls_filters(pybuild, store):
    pybuild("volume", "create", "--label", "env=prod", "data1")
    pybuild("volume", "create", "data2")
    pybuild("volume", "create", "other")
    pybuild("run", "--name", "holder", "-v", "data2:/d", "busybox", "true")
    assert pybuild("volume", "ls", "-q", "-f", "dangling=true").stdout.split() == \
        ["data1", "other"]
    assert pybuild("volume", "ls", "-q", "-f", "dangling=false").stdout.split() == ["data2"]
    assert pybuild("volume", "ls", "-q", "-f", "name=data").stdout.split() == ["data1", "data2"]
    assert pybuild("volume", "ls", "-q", "-f", "label=env=prod").stdout.split() == ["data1"]
    assert pybuild("volume", "ls", "-q", "-f", "driver=local").stdout.split() == \
        ["data1", "data2", "other"]
    out = pybuild("volume", "ls", "-f", "label=env").stdout.splitlines()
    assert out[0].split() == ["DRIVER", "VOLUME", "NAME"] and out[1].split() == ["local", "data1"]


def test_rm_rmi_volume_rm_go_on_past_a_missing_name(pybuild, store):
    pybuild("run", "--name", "a", "busybox", "true")
    pybuild("run", "--name", "b", "busybox", "true")
    p = pybuild("rm", "a", "missing", "b", "gone", check=False)
    assert p.returncode == 1
    assert p.stdout.split() == ["a", "b"]
    assert p.stderr.splitlines() == ["pybuild: error: no such container: missing",
                                     "pybuild: error: no such container: gone"]
    assert pybuild("ps", "-aq").stdout == ""
    pybuild("tag", "busybox", "extra:1")
    p = pybuild("rmi", "extra:1", "nosuch:1", "tool:2", check=False)
    assert p.returncode == 1
    assert p.stdout.splitlines() == ["Untagged: extra:1", "Untagged: tool:2"]
    assert len(p.stderr.splitlines()) == 1 and "nosuch:1" in p.stderr
    pybuild("volume", "create", "v1")
    p = pybuild("volume", "rm", "nov", "v1", check=False)
    assert p.returncode == 1 and p.stdout.split() == ["v1"] and "nov" in p.stderr
    assert pybuild("volume", "ls", "-q").stdout == ""


def _image_size(cli: CLI, name: str) -> str:
    return cli("images", name).stdout.splitlines()[1].split()[-1]


def test_images_size_is_uncompressed_and_the_same_however_it_arrived(
        pybuild, store, tmp_path, registry, config_env):  # noqa: F811
    from layerstore.store import Store

    built = _image_size(pybuild, "myapp:1.0")
    st = Store.open(pybuild.root)
    img = st.resolve("myapp:1.0")
    compressed = sum(l.size for l in img.manifest.layers)
    # busybox's binary compresses to about half: SIZE is the unpacked bytes
    assert _size_of(built) > 1.5 * compressed
    inspect_size = json.loads(pybuild("inspect", "myapp:1.0").stdout)[0]["Size"]
    assert human_size(inspect_size) == built

    archive = tmp_path / "myapp.tar"
    pybuild("save", "-o", archive, "myapp:1.0")
    other = CLI(tmp_path / "other")
    other("load", "-i", archive)
    assert _image_size(other, "myapp:1.0") == built
    # pushed recompressed (other blob sizes, same diff IDs), pulled into a third store
    dest = f"{registry.host}/listing/myapp:1"
    pybuild("push", "--compression", "zstd", "--force-compression", "myapp:1.0", dest)
    third = CLI(tmp_path / "third")
    third("pull", dest)
    pulled = Store.open(third.root).resolve(dest)
    assert sum(l.size for l in pulled.manifest.layers) != compressed
    assert third("images", "-q").stdout.strip() and _image_size(third, dest) == built


def test_layer_size_records_are_checked(pybuild, store):
    """A lying record changes nothing: records are keyed by diff ID and only written
    after the stream hashed to it; a garbage file is ignored."""
    before = _rows(pybuild("images").stdout)
    path = pybuild.root / "cache" / "layer-sizes.json"
    assert path.exists()
    doc = json.loads(path.read_text())
    assert doc["version"] == 1 and all(len(k) == 64 for k in doc["sizes"])
    path.write_text("{" * 100000)
    assert _rows(pybuild("images").stdout) == before
    path.write_text(json.dumps({"version": 1, "sizes": {"../../etc": 5, "x" * 64: -1}}))
    assert _rows(pybuild("images").stdout) == before
    assert json.loads(path.read_text())["sizes"].keys() == doc["sizes"].keys()


def test_a_corrupt_layer_blob_gets_no_size_record(pybuild, store):
    """A layer blob that no longer decompresses to its diff ID: `images` still lists the
    image (its stored size, no traceback) and records nothing for that diff ID."""
    from layerstore.store import Store

    img = Store.open(pybuild.root).resolve("tool:2")
    top, diff_id = img.manifest.layers[-1], img.config.diff_ids[-1]
    blob = pybuild.root / "blobs" / "sha256" / top.digest.split(":")[1]
    blob.write_bytes(b"\x1f\x8b\x08\x00" + b"garbage" * 100)
    (pybuild.root / "cache" / "layer-sizes.json").unlink(missing_ok=True)
    p = pybuild("images", "tool")
    assert p.stderr == "" and p.stdout.splitlines()[1].split()[:2] == ["tool", "2"]
    sizes = json.loads((pybuild.root / "cache" / "layer-sizes.json").read_text())["sizes"]
    assert diff_id.split(":")[1] not in sizes
    assert img.config.diff_ids[0].split(":")[1] in sizes


def _reclaimed(out: str) -> int:
    line = [l for l in out.splitlines() if l.startswith("Total reclaimed space: ")][-1]
    return int(_size_of(line.split(": ")[1]))


def test_prune_reports_what_it_freed_snapshots_included(pybuild, store):
    pybuild("run", "--name", "c1", "tool:2", "sh", "-c", "head -c 300000 /bin/busybox > /big")
    assert list((pybuild.root / "snapshots").iterdir())
    before = _du(pybuild.root)
    out = pybuild("container", "prune", "-f").stdout
    assert out.startswith("Deleted Containers:\n")
    freed, after = _reclaimed(out), _du(pybuild.root)
    assert freed >= 300_000
    assert abs(freed - (before - after)) <= 16384 + 0.01 * freed
    pybuild("rmi", "tool:2", "myapp:1.0")
    before = _du(pybuild.root)
    out = pybuild("prune", "-a").stdout
    freed, after = _reclaimed(out), _du(pybuild.root)
    assert freed > 1_000_000          # busybox's snapshot went too (no image uses it)
    assert abs(freed - (before - after)) <= 16384 + 0.01 * freed
    assert _reclaimed(pybuild("prune").stdout) == 0


def test_prune_label_filters(pybuild, store):
    out = pybuild("prune", "--filter", "label=app=web").stdout
    assert "0 untagged images" in out          # myapp is tagged: nothing dangling matches
    assert pybuild("images", "-q", "-f", "dangling=true").stdout.split() == [store["dang"][7:19]]
    out = pybuild("prune", "--filter", "label!=app=dang").stdout
    assert "0 untagged images" in out
    out = pybuild("prune", "--filter", "label=app=dang").stdout
    assert "1 untagged images" in out
    assert pybuild("images", "-q", "-f", "dangling=true").stdout == ""


def test_container_and_volume_prune_filters(pybuild, store):
    pybuild("run", "--name", "keep", "-l", "keep=1", "busybox", "true")
    pybuild("run", "--name", "drop", "busybox", "true")
    out = pybuild("container", "prune", "--filter", "label!=keep").stdout
    assert out.count("\n") >= 3 and "Total reclaimed space:" in out
    left = [l.split()[-1] for l in pybuild("ps", "-a").stdout.splitlines()[1:]]
    assert left == ["keep"]
    out = pybuild("container", "prune", "--filter", "until=1h").stdout
    assert out.strip().startswith("Total reclaimed space: 0B")    # keep is newer than 1h
    pybuild("volume", "create", "-l", "tmp=1", "scratch")
    pybuild("volume", "create", "kept")
    out = pybuild("volume", "prune", "-f", "--filter", "all=true", "--filter", "label=tmp").stdout
    assert out.startswith("Deleted Volumes:\nscratch\n")
    assert pybuild("volume", "ls", "-q").stdout.split() == ["kept"]


def test_content_measure_counts_file_bytes_once(tmp_path):
    """ps -s's rw figure: file and symlink lengths, a hard-linked inode once, no
    directories, no symlink followed."""
    import os

    from layerstore import resolver

    top = tmp_path / "upper"
    (top / "d" / "e").mkdir(parents=True)
    (top / "d" / "f").write_bytes(b"x" * 12)
    os.link(top / "d" / "f", top / "g")
    (top / "d" / "e" / "big").write_bytes(b"y" * 5000)
    os.symlink("/etc/passwd", top / "link")          # 11 bytes of target, not the file
    fd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        assert resolver.tree_usage_at(fd, "upper", measure=resolver.content) == 12 + 5000 + 11
        assert resolver.tree_usage_at(fd, "upper") >= 3 * 4096     # allocated, as du
    finally:
        os.close(fd)
