"""The snapshotter (layerstore/snapshots.py): mount plans on both mount paths, stub
removal that never leaves its upper dir, and work dirs that outlive no owner.

Build-level cases: a 60-layer image on kernels without `lowerdir+` (issue 11,
finding 8: COPY and WORKDIR mounted their overlay with every path in one option
page), and a SIGKILLed build's work dirs, processes, cgroups and mounts (finding 7).
"""

from __future__ import annotations

import io
import os
import signal
import stat
import subprocess
import sys
import tarfile
import textwrap
import time
from pathlib import Path

import pytest

from buildpeer import import_busybox, mounts_now, processes_matching
from conftest import REPO
from layerstore import digest as dg
from layerstore import snapshots, workdirs
from layerstore.snapshots import MountPlan, SnapshotStore

WHITEOUT = stat.S_IFCHR | 0o000


def _layers(base: Path, n: int) -> list[Path]:
    """n lower dirs with long paths (far beyond one 4 KiB option page together)."""
    out = []
    for i in range(n):
        d = base / ("long-" * 10) / f"snapshot-{i:03d}-{'y' * 40}"
        (d / "layers").mkdir(parents=True)
        (d / "layers" / f"l{i:03d}").write_text(str(i))
        (d / "order").write_text(str(i))
        out.append(d)
    return out


def _inspect(points: list[str]) -> dict:
    """(In the mounting child) what each mount shows; writes into the first."""
    got = {}
    for k, p in enumerate(points):
        got[k] = {"entries": sorted(os.listdir(p)),
                  "layers": len(os.listdir(os.path.join(p, "layers")))
                  if os.path.isdir(os.path.join(p, "layers")) else None,
                  "order": open(os.path.join(p, "order")).read() if os.path.exists(
                      os.path.join(p, "order")) else None}
        try:
            with open(os.path.join(p, "probe"), "w") as f:
                f.write("x")
            got[k]["writable"] = True
        except OSError:
            got[k]["writable"] = False
    with open("/proc/self/mountinfo") as f:
        got["options"] = [line.split(" - ")[1] for line in f if line.split()[4] == points[0]]
    return got


@pytest.mark.parametrize("new_api", [True, False], ids=["fsopen", "mount2"])
def test_plans_mount_the_same_on_both_paths(tmp_path, monkeypatch, new_api):
    from builder.rootview import in_overlay

    monkeypatch.setattr(snapshots, "USE_NEW_MOUNT_API", new_api)
    lowers = _layers(tmp_path / "l", 120)
    assert sum(len(str(p)) + 1 for p in lowers) > 3 * 4096
    store = SnapshotStore(tmp_path / "root")
    with store.prepare(lowers) as ws:
        views = [store.view([]), store.view(lowers[:1]), store.view(lowers[:3])]
        got = in_overlay([ws.plan, *views], _inspect, scratch=ws.dir)
        assert (ws.upper / "probe").read_text() == "x"          # writes land in the upper
        assert sorted(os.listdir(ws.upper)) == ["probe"]
    assert not ws.dir.exists()
    assert got[0]["order"] == "119" and got[0]["layers"] == 120   # merged; the top layer wins
    assert got[1] == {"entries": [], "layers": None, "order": None, "writable": False}
    assert got[2]["order"] == "0" and got[2]["layers"] == 1 and not got[2]["writable"]
    assert got[3]["order"] == "2" and got[3]["layers"] == 3 and not got[3]["writable"]
    assert all(not p.joinpath("probe").exists() for p in lowers)
    options = got["options"][0]
    assert ("lowerdir+=" in options) == new_api
    assert ("lowerdir=" in options) != new_api     # mount(2): dirs named by fd numbers


def test_prepare_over_nothing_and_commit(tmp_path):
    from builder.rootview import in_overlay

    store = SnapshotStore(tmp_path / "root")
    store.init()
    with store.prepare([]) as ws:      # FROM scratch: an overlay still needs a lower
        assert stat.S_IMODE(os.stat(ws.dir).st_mode) == 0o700
        assert stat.S_IMODE(os.stat(ws.upper).st_mode) == 0o755
        in_overlay([ws.plan], _inspect, scratch=ws.dir)
        chain = dg.of_bytes(b"layer")
        assert store.commit(ws.upper, chain)
        assert not store.commit(tmp_path, chain)             # the first one stays
    assert (store.path(chain) / "probe").read_text() == "x"
    assert store.chain_ids() == [chain]


# --- remove_stubs -----------------------------------------------------------------------

def _host(tmp_path: Path) -> tuple[Path, list]:
    host = tmp_path / "host"
    (host / "emptydir").mkdir(parents=True)
    (host / "secrets").mkdir()
    for f in ("emptyfile", "hosts", "f"):
        (host / f).touch()
    return host, sorted(os.listdir(host))


def test_stub_paths_through_a_planted_symlink_are_not_touched(tmp_path):
    host, before = _host(tmp_path)
    lower, upper = tmp_path / "lower", tmp_path / "upper"
    (lower / "etc").mkdir(parents=True)
    upper.mkdir()
    (upper / "x").symlink_to(host)                  # mv /x /x2 && ln -s host /x
    (upper / "run").symlink_to(host)
    (upper / "a").mkdir()
    (upper / "a" / "b").symlink_to(host)
    (upper / "etc").symlink_to(host)
    stubs = ["/x/emptydir", "/x/emptyfile", "/x", "/run/secrets", "/a/b/f", "/a/b",
             "/etc/hosts", "/x/../etc/hosts"]
    for s in ([], None):
        snapshots.remove_stubs(upper, stubs, [lower] if s is not None else None)
    assert sorted(os.listdir(host)) == before
    assert all(os.path.islink(upper / n) for n in ("x", "run", "etc", "a/b"))


def test_stub_rules(tmp_path):
    lower1, lower2, upper = tmp_path / "l1", tmp_path / "l2", tmp_path / "u"
    for d in ("etc", "run/secrets", "opt/keep", "srv"):
        (lower1 / d).mkdir(parents=True)
    (lower1 / "etc" / "passwd").write_text("root\n")
    (lower1 / "etc" / "hostname").touch()           # the image's own (empty) file
    lower2.mkdir()
    os.mknod(lower2 / "run", WHITEOUT)              # layer 2 deleted /run
    upper.mkdir()
    (upper / "etc").mkdir()                         # copied up for the stub, unchanged
    os.chmod(upper / "etc", os.stat(lower1 / "etc").st_mode)
    (upper / "etc" / "hosts").touch()
    (upper / "etc" / "hostname").touch()
    (upper / "srv").mkdir(mode=0o700)               # the step chmod'ed it: a change
    os.chmod(upper / "srv", 0o700)
    (upper / "srv" / "mnt").mkdir()
    (upper / "run" / "secrets").mkdir(parents=True)  # /run is gone below: these are new
    (upper / "new" / "target").mkdir(parents=True)
    (upper / "new" / "target2").mkdir()
    (upper / "new" / "target2" / "written").write_text("kept")
    (upper / "made" / "x").mkdir(parents=True)       # /made: the container's own (run again)
    (upper / "dev" / "pts").mkdir(parents=True)
    (upper / "dev" / "null").touch()
    (upper / "sys").mkdir()
    (upper / "sys" / "nonempty").write_text("x")
    stubs = ["/etc/hosts", "/etc/hostname", "/srv/mnt", "/run/secrets", "/run",
             "/new/target", "/new/target2", "/dev", "/sys", "/made/x"]
    snapshots.remove_stubs(upper, stubs, [lower1, lower2])
    left = sorted(str(p.relative_to(upper)) for p in upper.rglob("*"))
    assert left == ["etc", "etc/hostname", "made", "new", "new/target2", "new/target2/written",
                    "srv", "sys", "sys/nonempty"]


def test_plain_root_keeps_the_parents_it_had(tmp_path):
    root = tmp_path / "root"
    (root / "mnt" / "a").mkdir(parents=True)
    (root / "etc").mkdir()
    (root / "etc" / "hosts").touch()
    snapshots.remove_stubs(root, ["/mnt/a", "/etc/hosts"])
    assert sorted(os.listdir(root)) == ["etc", "mnt"] and os.listdir(root / "mnt") == []


# --- work dirs -----------------------------------------------------------------------

_OWNER = ("import sys, time; from pathlib import Path; from layerstore import workdirs; "
          "w = workdirs.create(Path(sys.argv[1]), 'build-'); "
          "(w.path / 'f').write_bytes(b'x' * 4096); "
          "print(w.path, flush=True); time.sleep(60)")


def _owner(parent: Path) -> tuple[subprocess.Popen, Path]:
    p = subprocess.Popen([sys.executable, "-c", _OWNER, str(parent)], stdout=subprocess.PIPE,
                         text=True, env=dict(os.environ, PYTHONPATH=str(REPO)))
    return p, Path(p.stdout.readline().strip())


def _du(path: Path) -> int:
    if not path.exists():
        return -1
    return int(subprocess.run(["du", "-s", "-B1", str(path)], capture_output=True, text=True,
                              check=True).stdout.split()[0])


def test_reclaim_takes_only_dirs_whose_owner_is_gone(tmp_path):
    parent = tmp_path / "containers"
    (parent / "web-1").mkdir(parents=True)            # a container of `pybuild run`: not ours
    dead, dead_dir = _owner(parent)
    alive, alive_dir = _owner(parent)
    try:
        dead.kill()
        dead.wait()
        assert workdirs.owner_alive(alive_dir) and not workdirs.owner_alive(dead_dir)
        # freed as du counts it: the blocks of the dir and of its 4 KiB file
        held = _du(dead_dir)
        assert held >= 4096 and workdirs.reclaim(parent, ("build-",)) == (1, held)
        assert sorted(os.listdir(parent)) == sorted(["web-1", alive_dir.name])
    finally:
        alive.kill()
        alive.wait()
    held = _du(alive_dir)
    assert workdirs.reclaim(parent, ("build-",)) == (1, held)
    assert os.listdir(parent) == ["web-1"]


def test_released_and_disowned_dirs(tmp_path):
    with workdirs.create(tmp_path, "t-", mode=0o755) as w:
        assert stat.S_IMODE(os.stat(w.path).st_mode) == 0o755
        (w.path / "sub").mkdir()
        os.chmod(w.path / "sub", 0o500)
    assert os.listdir(tmp_path) == []
    w = workdirs.create(tmp_path, "t-")
    os.rename(w.path, tmp_path / "final")
    w.release()                                       # renamed away: never removed by name
    w.disown()
    assert os.listdir(tmp_path) == ["final"]


# --- builds --------------------------------------------------------------------------------

@pytest.fixture
def bb(pybuild, busybox_rootfs, tmp_path):
    import_busybox(pybuild, busybox_rootfs, tmp_path)
    return pybuild


def _many_layers(root: Path, n: int, name: str) -> None:
    """Tag `name`: busybox plus n one-file layers (written straight into the store)."""
    import copy

    from layerstore import mediatypes as mt
    from layerstore.model import Descriptor, History
    from layerstore.store import Store

    store = Store.open(root)
    base = store.resolve("busybox")
    cfg = copy.deepcopy(base.config)
    cfg.raw = None
    layers = list(base.manifest.layers)
    for i in range(n):
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w") as t:
            data = f"{i}\n".encode()
            info = tarfile.TarInfo(f"layers/l{i:03d}")
            info.size = len(data)
            t.addfile(info, io.BytesIO(data))
        blob = buf.getvalue()
        digest = dg.of_bytes(blob)
        store.blobs.put(blob, digest)
        layers.append(Descriptor(mt.OCI_LAYER, digest, len(blob)))
        cfg.diff_ids.append(digest)
        cfg.history.append(History(created_by=f"layer {i}"))
    store.tag(name, store.commit_image(cfg, layers))


# runs the CLI with the new mount API switched off, as on a kernel before 6.8
_LEGACY = ("import runpy, sys; from layerstore import snapshots; "
           "snapshots.USE_NEW_MOUNT_API = False; sys.argv[0] = 'pybuild'; "
           "runpy.run_module('builder', run_name='__main__', alter_sys=True)")


def test_copy_workdir_and_run_over_sixty_layers_without_lowerdir_plus(bb, tmp_path, store_root):
    _many_layers(store_root, 64, "many")
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    (ctx / "f.txt").write_text("copied\n")
    (ctx / "Dockerfile").write_text(textwrap.dedent("""\
        FROM many
        COPY f.txt /copied/f.txt
        WORKDIR /deep/work
        RUN test "$(cat /copied/f.txt /layers/l000 /layers/l063)" = "$(printf 'copied\\n0\\n63')" \\
            && test "$PWD" = /deep/work && awk '$5 == "/"' /proc/self/mountinfo > /root-mount
        COPY --from=many /layers/l063 /from-many
        """))
    out = tmp_path / "out"
    p = subprocess.run([sys.executable, "-c", _LEGACY, "--root", str(store_root), "build",
                        "--progress", "plain", "--output", f"type=local,dest={out}", str(ctx)],
                       capture_output=True, text=True, cwd=REPO, timeout=600,
                       env=dict(os.environ, PYTHONPATH=str(REPO)))
    assert p.returncode == 0, p.stderr[-3000:]
    assert (out / "copied" / "f.txt").read_text() == "copied\n"
    assert (out / "from-many").read_text() == "63\n"
    root_mount = (out / "root-mount").read_text()
    assert "lowerdir=" in root_mount and "lowerdir+" not in root_mount   # the mount(2) path


def _start_build(store_root: Path, ctx: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "builder", "--root", str(store_root), "build",
                             "--progress", "plain", str(ctx)], cwd=REPO, stderr=subprocess.PIPE,
                            stdout=subprocess.DEVNULL, text=True,
                            env=dict(os.environ, PYTHONPATH=str(REPO)))


def _wait_for(p: subprocess.Popen, word: str) -> None:
    seen = ""
    deadline = time.monotonic() + 60
    while word not in seen and time.monotonic() < deadline and p.poll() is None:
        seen += p.stderr.readline()
    assert word in seen, seen[-3000:]


def _cgroup_of(word: str) -> list[Path]:
    """The pybuild-build-<id> cgroup dirs (one per hierarchy) of the processes whose
    command line has `word`."""
    dirs: set[Path] = set()
    for proc in processes_matching(word):
        with open(f"/proc/{proc.split()[0]}/cgroup") as f:
            for line in f:
                _, controllers, path = line.rstrip("\n").split(":", 2)
                parts = path.split("/")
                mine = [k for k, part in enumerate(parts) if part.startswith("pybuild-build-")]
                if mine:
                    top = Path("/sys/fs/cgroup") / (controllers.split(",")[0] if controllers else "")
                    dirs.add(top.joinpath(*[x for x in parts[:mine[0] + 1] if x]))
    assert dirs and len({d.name for d in dirs}) == 1, dirs
    return sorted(dirs)


def _cgroup_exists(dirs: list[Path]) -> bool:
    return any(d.exists() for d in dirs)


def _work_dirs(root: Path) -> list[str]:
    return sorted(p.name for p in (root / "containers").iterdir() if p.name.startswith("build-"))


def test_killed_build_is_reclaimed_and_a_running_one_kept(bb, tmp_path, store_root):
    victim_ctx, live_ctx = tmp_path / "victim", tmp_path / "live"
    # what the steps print ($((6*7))) differs from their echoed command lines
    for ctx, run in ((victim_ctx, "head -c 8000000 /dev/zero > /big && echo victim-$((6*7)) "
                                  "&& sleep 31"),
                     (live_ctx, "echo live-$((6*7)) && sleep 32")):
        ctx.mkdir()
        (ctx / "Dockerfile").write_text(f"FROM busybox\nRUN {run}\n")
    victim = _start_build(store_root, victim_ctx)
    live = None
    try:
        _wait_for(victim, "victim-42")
        victim_dirs = _work_dirs(store_root)
        assert len(victim_dirs) == 1
        big = store_root / "containers" / victim_dirs[0] / "upper" / "big"
        assert big.stat().st_size == 8000000
        victim_cgroup = _cgroup_of("sleep 31")
        live = _start_build(store_root, live_ctx)
        _wait_for(live, "live-42")
        live_dirs = sorted(set(_work_dirs(store_root)) - set(victim_dirs))
        live_cgroup = _cgroup_of("sleep 32")
        victim.kill()
        victim.wait()
        for _ in range(100):     # its container dies with the build: no process, cgroup
            if not processes_matching("sleep 31") and not _cgroup_exists(victim_cgroup):
                break
            time.sleep(0.05)
        assert processes_matching("sleep 31") == []
        assert not _cgroup_exists(victim_cgroup) and _cgroup_exists(live_cgroup)
        assert [m for m in mounts_now() if str(store_root) in m] == []
        # the next build reclaims the killed one's work dir, and leaves the live one's
        (tmp_path / "next").mkdir()
        (tmp_path / "next" / "Dockerfile").write_text("FROM busybox\nENV NEXT=1\n")
        bb("build", "--progress", "plain", tmp_path / "next")
        assert _work_dirs(store_root) == live_dirs
        live.kill()
        live.wait()
        for _ in range(100):
            if not processes_matching("sleep 32") and not _cgroup_exists(live_cgroup):
                break
            time.sleep(0.05)
        out = bb("prune").stdout
        assert _work_dirs(store_root) == []
        assert "1 partial writes" in out, out
        assert [p for p in (store_root / "tmp").iterdir()] == []
        assert [p for p in (store_root / "snapshots").iterdir() if p.name.startswith(".tmp-")] == []
        assert not _cgroup_exists(live_cgroup)
    finally:
        for p in (victim, live):
            if p is not None and p.poll() is None:
                p.kill()
                p.wait()
