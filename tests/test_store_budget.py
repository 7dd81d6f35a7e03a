"""A bounded store (issue 12): `--max-storage`, PYBUILD_MAX_STORAGE and the store's
`max-storage` setting prune after every build and pull, least recently used build cache
first, then dangling images, then snapshots; never a tagged image, the image of a
container or what the command used. Usage is measured as `du -sx -B1` counts it."""

from __future__ import annotations

import hashlib
import json
import gc
import os
import subprocess
import sys
from pathlib import Path

import pytest

from buildpeer import import_busybox, steps
from conftest import CLI
from test_registry_helpers import config_env, registry  # noqa: F401  (fixtures)

MiB = 1 << 20

DOCKERFILE = "FROM busybox\nCOPY data /data\nENV N=1\n"


def du(path: Path) -> int:
    out = subprocess.run(["du", "-sx", "-B1", str(path)], check=True, capture_output=True,
                         text=True).stdout
    return int(out.split()[0])


def _ctx(tmp_path: Path, dockerfile: str = DOCKERFILE) -> Path:
    ctx = tmp_path / "ctx"
    ctx.mkdir(parents=True, exist_ok=True)
    (ctx / "Dockerfile").write_text(dockerfile)
    return ctx


def _new_data(ctx: Path, n: int) -> str:
    """~1 MB that does not compress: each build's COPY makes a new ~1 MB layer."""
    data = os.urandom(1000_000)
    (ctx / "data").write_bytes(data)
    return hashlib.sha256(data).hexdigest()


def _records(root: Path) -> set[str]:
    entries = root / "cache" / "entries"
    return {p.stem for p in entries.glob("*/*.json")} if entries.is_dir() else set()


@pytest.fixture
def base(pybuild, busybox_rootfs, tmp_path, store_root):
    import_busybox(pybuild, busybox_rootfs, tmp_path)
    return pybuild, store_root


def test_twenty_builds_stay_under_the_limit(base, tmp_path):
    pybuild, root = base
    ctx = _ctx(tmp_path)
    limit = du(root) + 6 * MiB
    kept_sum = _new_data(ctx, 0)
    pybuild("build", "-q", "--max-storage", str(limit), "-t", "keep:1", ctx)
    pruned = 0
    for n in range(1, 21):
        _new_data(ctx, n)
        # every 5th build untagged: a dangling image, the second thing a prune takes
        tag = [] if n % 5 == 0 else ["-t", "app"]
        p = pybuild("build", "--progress", "plain", "--max-storage", str(limit), *tag, ctx)
        image_id = p.stdout.split()[-1]
        assert du(root) <= limit, (n, du(root), limit, p.stderr)
        lines = [l for l in p.stderr.splitlines() if l.startswith("pruned ")]
        assert len(lines) <= 1 and "WARNING" not in p.stderr
        if lines:
            pruned += 1
            assert lines[0].endswith(f"of {_binary(limit)}"), lines[0]
        # this build's image and its cache records survive its own prune
        assert json.loads(pybuild("inspect", image_id).stdout)[0]["Id"] == image_id
        last = p
    assert pruned >= 10
    # the last build's cache records are all there: a rebuild runs nothing
    again = pybuild("build", "--progress", "plain", "--max-storage", str(limit), "-t", "app", ctx)
    assert set(steps(again.stderr)[n] for n in (2, 3)) == {"CACHED"}, again.stderr
    assert again.stdout.split()[-1] == last.stdout.split()[-1]
    # the tagged image of the first build survived every prune, and runs
    out = pybuild("run", "--rm", "--network", "none", "keep:1", "sha256sum", "/data").stdout
    assert out.split()[0] == kept_sum
    fsck = pybuild("fsck")
    assert fsck.stdout.strip().endswith("clean") and "problem" not in fsck.stdout
    assert du(root) <= limit


def _binary(n: int) -> str:
    from layerstore.humanize import bytes_size

    return bytes_size(n)


def test_a_limit_below_what_must_stay_warns_and_keeps_it(base, tmp_path):
    pybuild, root = base
    ctx = _ctx(tmp_path)
    _new_data(ctx, 1)
    pybuild("build", "-q", "-t", "one", ctx)
    _new_data(ctx, 2)
    first = _records(root)
    p = pybuild("build", "--max-storage", "1MB", "-t", "two", ctx)
    warnings = [l for l in p.stderr.splitlines() if l.startswith("WARNING")]
    assert p.returncode == 0 and len(warnings) == 1
    assert "more than its limit of 1MiB" in warnings[0]
    # everything tagged is still whole; only the older build's cache records went
    for name in ("busybox", "one", "two"):
        pybuild("inspect", name)
    assert pybuild("fsck").stdout.strip().endswith("clean")
    assert first and not first & _records(root)     # the older build's records went
    rebuilt = pybuild("build", "--progress", "plain", "-t", "two", ctx)
    assert set(steps(rebuilt.stderr)[n] for n in (2, 3)) == {"CACHED"}   # this one's stayed


def test_a_containers_image_survives(base, tmp_path):
    pybuild, root = base
    ctx = _ctx(tmp_path)
    _new_data(ctx, 1)
    pybuild("build", "-q", "-t", "served", ctx)
    cid = pybuild("run", "-d", "--network", "none", "served", "sleep", "300").stdout.strip()
    try:
        pybuild("run", "--name", "exited", "--network", "none", "busybox", "true")
        exited_id = "exited"
        pybuild("rmi", "served")          # now only the running container holds it
        pybuild("rmi", "busybox")         # and only the exited one holds busybox
        ctx2 = _ctx(tmp_path / "two", "FROM scratch\nCOPY data /data\n")
        (ctx2 / "data").write_bytes(os.urandom(500_000))
        p = pybuild("build", "--max-storage", "0", ctx2)
        assert p.returncode == 0 and "WARNING: the store keeps" in p.stderr
        assert pybuild("exec", cid, "sha256sum", "/data").returncode == 0
        from layerstore import digest as dg
        from layerstore.store import Store

        store = Store(root)
        state = json.loads((root / "containers" / cid / "state.json").read_text())
        img = _image(store, state["image"])
        assert all(store.blobs.has(l.digest) for l in img.manifest.layers)
        assert all(store.snapshots.has(c) for c in dg.chain_ids(img.config.diff_ids))
        # the exited container's image (busybox, untagged now) is whole too
        eid = json.loads(pybuild("inspect", exited_id).stdout)[0]["Id"]
        bb = json.loads((root / "containers" / eid / "state.json").read_text())["image"]
        assert all(store.blobs.has(l.digest)
                   for l in _image(store, bb).manifest.layers)
        assert pybuild("fsck").stdout.strip().endswith("clean")
    finally:
        pybuild("rm", "-f", cid, check=False)
        for c in pybuild("ps", "-aq", "--no-trunc", check=False).stdout.split():
            pybuild("rm", "-f", c, check=False)


def _image(store, digest: str):
    from layerstore.model import Descriptor

    return store.load_image(Descriptor("", digest, store.blobs.size(digest)))


def test_bad_limits_fail_before_any_work(base, tmp_path):
    pybuild, root = base
    ctx = _ctx(tmp_path)
    _new_data(ctx, 1)
    for args, env in [(["--max-storage", "lots"], {}), (["--max-storage", "-1m"], {}),
                      ([], {"PYBUILD_MAX_STORAGE": "12 parsecs"})]:
        p = pybuild("build", *args, ctx, env=env, check=False)
        assert p.returncode == 1 and len(p.stderr.splitlines()) == 1, p.stderr
        assert p.stderr.startswith("pybuild: error: ") and "invalid size" in p.stderr
        assert _records(root) == set()      # no step ran
    p = pybuild("pull", "--max-storage", "x", "127.0.0.1:1/a/b", check=False)
    assert p.returncode == 1 and "invalid size" in p.stderr and len(p.stderr.splitlines()) == 1
    # a hostile settings file is refused with one line, not followed or trusted
    for bad in ['{"max-storage": "1; rm -rf /"}', '{"max-storage": -5}', '[' * 100000,
                '{"other": 1}', '{"max-storage": ' + "9" * 400 + '}']:
        (root / "settings.json").write_text(bad)
        p = pybuild("build", ctx, check=False)
        assert p.returncode == 1 and len(p.stderr.splitlines()) == 1, (bad[:40], p.stderr)
        assert "settings.json" in p.stderr
    (root / "settings.json").unlink()
    assert _records(root) == set()


def test_setting_env_and_flag_precedence(base, tmp_path):
    pybuild, root = base
    assert pybuild("system", "get").stdout == "max-storage none\n"
    pybuild("system", "set", "max-storage", "1.5GiB")
    assert pybuild("system", "get", "max-storage").stdout == "max-storage 1.5GiB\n"
    st = os.stat(root / "settings.json")
    assert st.st_mode & 0o777 == 0o600
    assert json.loads((root / "settings.json").read_text()) == {"max-storage": 1610612736}
    bad = pybuild("system", "set", "max-storage", "huge", check=False)
    assert bad.returncode == 1 and "invalid size" in bad.stderr
    assert pybuild("system", "set", "color", "red", check=False).returncode == 1
    pybuild("system", "set", "max-storage", "1")        # 1 byte: every build prunes
    ctx = _ctx(tmp_path)
    _new_data(ctx, 1)
    by_setting = pybuild("build", "-q", ctx)
    assert "WARNING: the store keeps" in by_setting.stderr
    _new_data(ctx, 2)
    env_off = pybuild("build", "-q", ctx, env={"PYBUILD_MAX_STORAGE": "none"})
    assert env_off.stderr == ""
    _new_data(ctx, 3)
    env_big = pybuild("build", "-q", ctx, env={"PYBUILD_MAX_STORAGE": "1g"})
    assert env_big.stderr == ""
    _new_data(ctx, 4)
    flag = pybuild("build", "-q", "--max-storage", "none", ctx, env={"PYBUILD_MAX_STORAGE": "1"})
    assert flag.stderr == ""
    _new_data(ctx, 5)
    flag = pybuild("build", "-q", "--max-storage", "1", ctx, env={"PYBUILD_MAX_STORAGE": "1g"})
    assert "WARNING: the store keeps" in flag.stderr
    pybuild("system", "set", "max-storage", "none")
    assert pybuild("system", "get").stdout == "max-storage none\n"
    assert json.loads((root / "settings.json").read_text()) == {}


def test_a_failed_build_prunes_too(base, tmp_path):
    pybuild, root = base
    ctx = _ctx(tmp_path)
    _new_data(ctx, 1)
    pybuild("build", "-q", ctx)                 # dangling, with its cache records
    before = du(root)
    _new_data(ctx, 2)
    (ctx / "Dockerfile").write_text("FROM busybox\nCOPY data /data\nRUN exit 3\n")
    p = pybuild("build", "--max-storage", str(before - 512 * 1024), ctx, check=False)
    assert p.returncode == 1 and "exit code: 3" in p.stderr
    assert any(l.startswith("pruned ") for l in p.stderr.splitlines()), p.stderr
    assert du(root) <= before - 512 * 1024
    pybuild("inspect", "busybox")
    assert pybuild("fsck").stdout.strip().endswith("clean")


def test_pull_is_bounded_and_keeps_what_it_pulled(base, tmp_path, registry, config_env):
    pybuild, root = base
    ref = f"{registry.host}/budget/busybox:1"
    pybuild("push", "busybox", ref)
    other = CLI(tmp_path / "other")
    ctx = _ctx(tmp_path, "FROM scratch\nCOPY data /data\n")
    for n in range(3):                           # old build cache, dangling images
        _new_data(ctx, n)
        other("build", "-q", ctx)
    assert _records(other.root)
    p = other("pull", "--max-storage", "1", ref)
    assert "WARNING: the store keeps" in p.stderr
    assert any(l.startswith("pruned 3 cache records, 3 images") for l in p.stderr.splitlines())
    assert _records(other.root) == set()
    digest = p.stdout.strip()
    assert json.loads(other("inspect", ref).stdout)[0]["Descriptor"]["digest"] == digest
    assert other("fsck").stdout.strip().endswith("clean")
    out = other("run", "--rm", "--network", "none", ref, "echo", "pulled").stdout
    assert out == "pulled\n"


# --- units: the measurement --------------------------------------------------------------

def test_tree_usage_counts_as_du_does(tmp_path):
    """Hard links once, directories too, symlinks not followed, 2000 levels deep with a
    bounded number of fds, no recursion."""
    from layerstore import resolver

    top = tmp_path / "tree"
    (top / "a" / "b").mkdir(parents=True)
    (top / "a" / "f").write_bytes(os.urandom(100_000))
    os.link(top / "a" / "f", top / "a" / "b" / "g")
    os.symlink("/usr", top / "a" / "usr")
    fd = os.open(top, os.O_RDONLY)
    try:
        for i in range(2000):
            os.mkdir("d", dir_fd=fd)
            new = os.open("d", os.O_RDONLY, dir_fd=fd)
            os.close(fd)
            fd = new
            if i % 500 == 0:
                with open(os.open("x", os.O_CREAT | os.O_WRONLY, 0o644, dir_fd=fd), "wb") as f:
                    f.write(b"y" * 9000)
    finally:
        os.close(fd)
    try:
        # objects of earlier tests that the collector finalizes close their fds at any
        # moment: collect them first, so the count moves only by what the walk leaks
        gc.collect()
        before = len(os.listdir("/proc/self/fd"))
        limit = sys.getrecursionlimit()
        sys.setrecursionlimit(120)               # a recursive walk would die here
        try:
            with resolver.rooted(tmp_path) as pfd:
                got = resolver.tree_usage_at(pfd, "tree")
        finally:
            sys.setrecursionlimit(limit)
        assert got == du(top)
        gc.collect()
        assert len(os.listdir("/proc/self/fd")) <= before
        with resolver.rooted(top / "a") as afd:
            assert resolver.tree_usage_at(afd, "usr") == os.lstat(top / "a" / "usr").st_blocks * 512
            seen: set = set()
            first = resolver.tree_usage_at(afd, "f", seen)
            assert first > 0
            assert resolver.tree_usage_at(afd, "b", seen) == du(top / "a" / "b") - first
    finally:
        resolver.remove_tree(top)                # pytest's own cleanup recurses


def test_store_usage_is_what_du_counts_and_lying_size_records_are_ignored(base, tmp_path):
    pybuild, root = base
    ctx = _ctx(tmp_path, "FROM busybox\nCOPY data /data\nRUN echo x > /y\n")
    _new_data(ctx, 1)
    pybuild("build", "-q", "-t", "app", ctx)
    from layerstore.store import Store
    from layerstore.usage import SIZES_FILE, measure

    store = Store(root)
    u = measure(store)
    assert u.total == u.parts() == du(root) == store.disk_usage()
    assert u.snapshots and all(v > 0 for v in u.snapshots.values())
    for chain, size in u.snapshots.items():
        assert size == du(store.snapshots.path(chain))
    assert sum(u.blob_sizes.values()) == sum(
        os.lstat(p).st_size for p in (root / "blobs" / "sha256").iterdir())
    # a size record that lies (another inode), or names a path, is not believed
    doc = json.loads((root / SIZES_FILE).read_text())
    hexes = list(doc["sizes"])
    doc["sizes"][hexes[0]] = [1, 1, 10**12]
    doc["sizes"]["../../../etc"] = [1, 1, 5]
    (root / SIZES_FILE).write_text(json.dumps(doc))
    assert measure(store).total == du(root)
    (root / SIZES_FILE).write_text("[" * 10000)
    assert measure(store).total == du(root)


def test_keep_storage_counts_every_layer_a_record_alone_keeps(base, tmp_path):
    """`prune --keep-storage`: the cache's size is its records' files and every blob and
    snapshot only records hold (it counted just each record's last layer)."""
    pybuild, root = base
    ctx = _ctx(tmp_path, "FROM busybox\nCOPY data /data\nCOPY data2 /data2\n")
    _new_data(ctx, 1)
    (ctx / "data2").write_bytes(os.urandom(700_000))
    pybuild("build", "-q", "-t", "gone", ctx)
    pybuild("rmi", "gone")                      # its layers are the cache's alone now
    from builder.cache import BuildCache
    from builder.storage import disk_usage
    from layerstore.store import Store

    store = Store(root)
    cache_size = disk_usage(store).row("Build Cache").size
    assert cache_size > 1_700_000 + 1_000_000     # two layers + their snapshots
    cache = BuildCache(root)
    assert cache.prune(keep_bytes=cache_size) == 0
    assert cache.prune(keep_bytes=cache_size - 1) == 1   # the oldest record goes first
    left = _records(root)
    assert len(left) == 1
    assert cache.prune(keep_bytes=0) == 1 and _records(root) == set()
    assert (root / "cache" / "roots").read_text() == ""


def test_hostile_cache_records_are_pruned_and_never_followed(base, tmp_path):
    """Records read back from disk are input: junk, a lying manifest field, a record
    nested too deep or a symlink in their place cost a prune nothing but their own file
    (the symlink is not a record: neither followed nor removed through)."""
    pybuild, root = base
    ctx = _ctx(tmp_path)
    _new_data(ctx, 1)
    pybuild("build", "-q", "-t", "app", ctx)
    victim = tmp_path / "victim"
    victim.write_text("keep me")
    entries = root / "cache" / "entries"
    planted = {
        "a" * 64: os.urandom(300_000),
        "b" * 64: json.dumps({"manifest": "../../../../etc/passwd", "layers": [],
                              "config": "{}"}).encode(),
        "c" * 64: b"[" * 5000 + b"]" * 5000,
        "d" * 64: json.dumps({"manifest": "sha256:" + "e" * 64, "layers": 7}).encode(),
    }
    for key, data in planted.items():
        (entries / key[:2]).mkdir(exist_ok=True)
        (entries / key[:2] / f"{key}.json").write_bytes(data)
        os.utime(entries / key[:2] / f"{key}.json", (1, 1))       # least recently used
    (entries / "ff").mkdir(exist_ok=True)
    os.symlink(victim, entries / "ff" / f"{'f' * 64}.json")
    df = pybuild("system", "df").stdout                       # reads them all, no error
    assert df.splitlines()[4].split()[:3] == ["Build", "Cache", str(len(_records(root)) - 1)]
    _new_data(ctx, 2)
    p = pybuild("build", "--max-storage", str(du(root)), "-t", "app", ctx)
    assert p.returncode == 0 and any(l.startswith("pruned ") for l in p.stderr.splitlines())
    left = _records(root)
    assert not {k for k in planted} & left
    assert victim.read_text() == "keep me" and (entries / "ff" / f"{'f' * 64}.json").is_symlink()
    assert pybuild("fsck").stdout.strip().endswith("clean")
