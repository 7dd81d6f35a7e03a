"""`pybuild cp`, `diff`, `commit`, `export` on running and stopped containers, and the
container attacking the host through them (symlinks planted or flipped while cp runs:
CVE-2018-15664 / CVE-2019-14271 class)."""

from __future__ import annotations

import hashlib
import io
import os
import subprocess
import tarfile
import time
from pathlib import Path

import pytest

from layerstore import resolver
from test_run_support import host_resources, run_store  # noqa: F401  (fixture)


def tree_hash(root: Path) -> str:
    """Names, types, modes, link targets and contents of everything below root."""
    h = hashlib.sha256()
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in sorted(dirnames + filenames):
            p = Path(dirpath) / name
            st = p.lstat()
            h.update(f"{p.relative_to(root)} {st.st_mode:o}\n".encode())
            if p.is_symlink():
                h.update(os.readlink(p).encode())
            elif p.is_file():
                h.update(p.read_bytes())
    return h.hexdigest()


@pytest.fixture
def canary(tmp_path) -> Path:
    d = tmp_path / "canary"
    (d / "sub").mkdir(parents=True)
    (d / "secret").write_text("host secret\n")
    (d / "sub" / "f").write_text("host file\n")
    return d


def wait_for(cli, name: str, path: str) -> None:
    for _ in range(40):
        if cli("exec", name, "test", "-e", path, check=False).returncode == 0:
            return
        time.sleep(0.05)
    raise AssertionError(f"{name}: {path} never appeared")


def start(cli, name: str, script: str) -> None:
    cli("run", "-d", "--name", name, "busybox", "sh", "-c", script + "; touch /ready; sleep 1000")
    wait_for(cli, name, "/ready")


def rm(cli, *names: str) -> None:
    cli("rm", "-f", *names, check=False)


def test_cp_both_directions_running_and_stopped(run_store, tmp_path):
    cli = run_store
    src = tmp_path / "src"
    (src / "d" / "e").mkdir(parents=True)
    (src / "d" / "f.txt").write_text("file f\n")
    (src / "d" / "e" / "g").write_text("file g\n")
    (src / "one").write_text("one\n")
    start(cli, "fs-cp", "mkdir -p /work /var/logs && echo log1 > /var/logs/a.log")
    try:
        for state in ("running", "stopped"):
            if state == "stopped":
                cli("stop", "-t", "0", "fs-cp")
            # file into an existing dir keeps its name; into a new name takes that name
            cli("cp", src / "one", "fs-cp:/work")
            cli("cp", src / "one", f"fs-cp:/work/renamed-{state}")
            # a directory: copied as itself into an existing dir, its contents with /.
            cli("cp", src / "d", "fs-cp:/work/")
            cli("cp", f"{src}/d/.", f"fs-cp:/work/contents-{state}")
            out = tmp_path / f"out-{state}"
            out.mkdir()
            cli("cp", "fs-cp:/work", out / "work")
            assert (out / "work" / "one").read_text() == "one\n"
            assert (out / "work" / f"renamed-{state}").read_text() == "one\n"
            assert (out / "work" / "d" / "e" / "g").read_text() == "file g\n"
            assert (out / "work" / f"contents-{state}" / "f.txt").read_text() == "file f\n"
            # into the container files are root's (docker), -a keeps the source's owner
            listing = tarfile.open(fileobj=io.BytesIO(
                cli("cp", "fs-cp:/work/one", "-", input=b"").stdout))
            assert [(m.name, m.uid, m.gid) for m in listing.getmembers()] == [("one", 0, 0)]
            # the docs' line: a directory of the container into a new host dir
            cli("cp", "fs-cp:/var/logs/", out / "app_logs")
            assert (out / "app_logs" / "a.log").read_text() == "log1\n"
            # - : a tar on stdout / stdin
            tar = cli("cp", "fs-cp:/work/d", "-", input=b"").stdout
            names = sorted(tarfile.open(fileobj=io.BytesIO(tar)).getnames())
            assert names == ["d", "d/e", "d/e/g", "d/f.txt"]
            buf = io.BytesIO()
            with tarfile.open(fileobj=buf, mode="w") as t:
                info = tarfile.TarInfo(f"from-stdin-{state}")
                data = b"tar on stdin\n"
                info.size, info.uid, info.gid = len(data), 1234, 1234
                t.addfile(info, io.BytesIO(data))
            cli("cp", "-a", "-", "fs-cp:/work", input=buf.getvalue())
            back = tarfile.open(fileobj=io.BytesIO(
                cli("cp", f"fs-cp:/work/from-stdin-{state}", "-", input=b"").stdout))
            m = back.getmembers()[0]
            assert (m.uid, back.extractfile(m).read()) == (1234, b"tar on stdin\n")
        # errors as docker words them
        p = cli("cp", "fs-cp:/nope", tmp_path / "x", check=False)
        assert p.returncode == 1 and "Could not find the file /nope in container fs-cp" in p.stderr
        p = cli("cp", src / "d", "fs-cp:/work/one", check=False)
        assert p.returncode == 1 and "cannot copy a directory to a file" in p.stderr
        p = cli("cp", src / "one", tmp_path / "y", check=False)
        assert p.returncode == 1 and "must specify at least one container" in p.stderr
    finally:
        rm(cli, "fs-cp")


def test_hostile_symlinks_stay_in_the_container(run_store, tmp_path, canary):
    cli = run_store
    before = tree_hash(canary)
    etc_before = sorted(os.listdir("/etc"))
    src = tmp_path / "payload"
    src.mkdir()
    (src / "evil").write_text("written by cp\n")
    script = (f"ln -s / /rootlink && ln -s /etc /etclink && ln -s {canary} /hostpath && "
              f"mkdir -p {canary.parent} && ln -s /etc/shadow /leak && "
              "echo container-shadow > /etc/shadow && ln -s ../../../../../../.. /up && "
              "mkdir /devdir && mknod /devdir/disk b 253 0 && mknod /devnode c 1 3 && "
              "cp /bin/busybox /devdir/suid && chmod 4755 /devdir/suid")
    start(cli, "fs-evil", script)
    try:
        for state in ("running", "stopped"):
            if state == "stopped":
                cli("stop", "-t", "0", "fs-evil")
            # writes through the planted links land inside the container
            cli("cp", src / "evil", f"fs-evil:/etclink/evil-{state}")
            cli("cp", src / "evil", f"fs-evil:/rootlink/evil-{state}")
            cli("cp", src / "evil", f"fs-evil:/up/up-{state}")
            cli("cp", src / "evil", f"fs-evil:/hostpath", check=False)   # no such dir inside
            cli("cp", "-", f"fs-evil:/up", input=_tar("tar-" + state))
            shown = cli("cp", f"fs-evil:/etc/evil-{state}", "-", input=b"").stdout
            assert b"written by cp" in shown
            assert cli("cp", f"fs-evil:/up-{state}", "-", input=b"").returncode == 0
            # reading a planted link copies the link, -L follows it inside the container
            out = tmp_path / f"leak-{state}"
            cli("cp", "fs-evil:/leak", out)
            assert out.is_symlink() and os.readlink(out) == "/etc/shadow"
            cli("cp", "-L", "fs-evil:/leak", tmp_path / f"followed-{state}")
            assert (tmp_path / f"followed-{state}").read_text() == "container-shadow\n"
            cli("cp", "fs-evil:/etclink/.", tmp_path / f"etc-{state}")
            assert (tmp_path / f"etc-{state}" / "shadow").read_text() == "container-shadow\n"
            p = cli("cp", "fs-evil:/hostpath/secret", tmp_path / f"s-{state}", check=False)
            assert p.returncode == 1 and not (tmp_path / f"s-{state}").exists()
            # device nodes a container made never reach the host (a block device of the
            # host's disk, made with CAP_MKNOD); setuid bits only with -a
            p = cli("cp", "fs-evil:/devnode", tmp_path / f"dev-{state}", check=False)
            assert p.returncode == 1 and not (tmp_path / f"dev-{state}").exists()
            cli("cp", "fs-evil:/devdir", tmp_path / f"devdir-{state}")
            assert sorted(os.listdir(tmp_path / f"devdir-{state}")) == ["suid"]
            assert (tmp_path / f"devdir-{state}" / "suid").stat().st_mode & 0o7777 == 0o755
            cli("cp", "-a", "fs-evil:/devdir/suid", tmp_path / f"suid-a-{state}")
            assert (tmp_path / f"suid-a-{state}").stat().st_mode & 0o7777 == 0o4755
            # the container's /proc is another mount: refused, never read or written
            if state == "running":
                p = cli("cp", src / "evil", "fs-evil:/proc/sys/kernel/", check=False)
                assert p.returncode == 1 and "another mount" in p.stderr
    finally:
        rm(cli, "fs-evil")
    assert tree_hash(canary) == before
    assert sorted(os.listdir("/etc")) == etc_before
    assert not any(Path(p).exists() for p in ("/evil-running", "/evil-stopped", "/up-running"))


def _tar(name: str) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as t:
        info = tarfile.TarInfo(name)
        info.size = 3
        t.addfile(info, io.BytesIO(b"hi\n"))
    return buf.getvalue()


def test_a_racing_container_flipping_dir_and_symlink_never_reaches_the_host(
        run_store, tmp_path, canary):
    cli = run_store
    before = tree_hash(canary)
    src = tmp_path / "payload"
    (src / "inner").mkdir(parents=True)
    (src / "inner" / "x").write_text("x\n")
    flip = (f"mkdir -p /race; (while true; do rm -rf /race/d; mkdir /race/d; "
            f"echo c > /race/d/file; rm -rf /race/d; ln -s {canary} /race/d; "
            f"rm -f /race/d; ln -s / /race/d; done) & true")
    start(cli, "fs-race", flip)
    try:
        outs = []
        for i in range(12):
            cli("cp", src / "inner", "fs-race:/race/d/", check=False)
            cli("cp", src / "inner" / "x", f"fs-race:/race/d/sub-{i}", check=False)
            out = tmp_path / f"out-{i}"
            cli("cp", "fs-race:/race/d/", out, check=False)
            outs.append(out)
        for out in outs:        # whatever was read came from the container
            for p in out.rglob("*") if out.is_dir() else []:
                if p.is_file() and not p.is_symlink():
                    assert p.read_bytes() not in (b"host secret\n", b"host file\n")
    finally:
        rm(cli, "fs-race")
    assert tree_hash(canary) == before


def test_diff_commit_and_export(run_store, tmp_path):
    cli = run_store
    start(cli, "fs-dc", "echo new > /added && echo changed >> /etc/group && rm /bin/vi "
                        "&& mkdir -p /home/user/newdir && echo x > /home/user/newdir/f")
    try:
        running = cli("diff", "fs-dc").stdout.splitlines()
        assert "A /added" in running and "C /etc/group" in running and "D /bin/vi" in running
        assert "C /etc" in running and "A /home/user/newdir/f" in running
        assert "A /etc/hosts" not in running and "A /proc" not in running   # stubs
        assert running == sorted(running, key=lambda l: l[2:])
        image_id = cli("commit", "-m", "my message", "-a", "me", "-c", "ENV COMMITTED=yes",
                       "fs-dc", "fs-committed:v1").stdout.strip()
        assert image_id.startswith("sha256:") and len(image_id) == 71
        out = cli("run", "--rm", "fs-committed:v1", "sh", "-c",
                  "cat /added; echo $COMMITTED; test -e /bin/vi || echo vi-gone").stdout
        assert out.split() == ["new", "yes", "vi-gone"]
        history = cli("history", "--no-trunc", "fs-committed:v1").stdout
        assert "my message" in history.splitlines()[1]
        cli("stop", "-t", "0", "fs-dc")
        stopped = cli("diff", "fs-dc").stdout.splitlines()
        assert stopped == running
        cli("commit", "fs-dc", "fs-committed:v2")
        exported = tmp_path / "fs.tar"
        cli("export", "-o", exported, "fs-dc")
        names = tarfile.open(exported).getnames()
        assert "added" in names and "bin/busybox" in names and "bin/vi" not in names
        assert not [n for n in names if ".wh." in n]
        stdout = subprocess.run(
            [*_cli_argv(cli), "export", "fs-dc"], capture_output=True, check=True,
            env=dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parent.parent))).stdout
        assert sorted(tarfile.open(fileobj=io.BytesIO(stdout)).getnames()) == sorted(names)
    finally:
        rm(cli, "fs-dc")
        cli("rmi", "fs-committed:v1", "fs-committed:v2", check=False)


def _cli_argv(cli) -> list[str]:
    import sys

    return [sys.executable, "-m", "builder", "--root", str(cli.root)]


def test_nothing_left_behind(run_store):
    cli = run_store
    ids = cli("ps", "-aq", "--no-trunc").stdout.split()
    assert not [i for i in ids if cli("inspect", i, check=False).stdout.count('"fs-')]
    # cgroups and veths are counted machine-wide (other stores' containers may run
    # meanwhile); what names this store must be gone: mounts, processes, container files
    left = host_resources(cli.root)
    assert (left["mounts"], left["processes"], left["files"]) == (0, 0, 0), left


@pytest.mark.parametrize("openat2", [True, False])
def test_one_mount_policy_stops_at_mount_points(openat2, monkeypatch):
    monkeypatch.setattr(resolver, "USE_OPENAT2", openat2)
    with resolver.rooted("/") as root:
        fd = resolver.resolve(root, "etc/passwd", policy=resolver.ONE_MOUNT)
        os.close(fd)
        with pytest.raises(resolver.PathEscape, match="another mount"):
            resolver.resolve(root, "proc/self/status", policy=resolver.ONE_MOUNT)
        with pytest.raises(resolver.PathEscape, match="another mount"):
            resolver.resolve(root, "../../proc", policy=resolver.ONE_MOUNT)


def test_mounts_refused_hostile_tars_and_a_terminal(run_store, tmp_path):
    cli = run_store
    (tmp_path / "f").write_text("f\n")
    start(cli, "fs-vol", "mkdir -p /work")
    try:
        # docker writes through volumes and bind mounts: so does cp (into the mount's
        # source on the host, resolved inside it); read-only ones and tmpfs are refused
        bind = tmp_path / "bind"
        bind.mkdir()
        (bind / "b").write_text("bound\n")
        cli("run", "-d", "-v", "/data", "-v", f"{bind}:/bind:ro", "--tmpfs", "/scratch",
            "--name", "fs-vol2", "busybox", "sh", "-c",
            "ln -s / /data/rootlink; touch /ready; sleep 1000")
        wait_for(cli, "fs-vol2", "/ready")
        cli("cp", tmp_path / "f", "fs-vol2:/data/x")
        assert cli("exec", "fs-vol2", "cat", "/data/x").stdout == "f\n"
        cli("cp", tmp_path / "f", "fs-vol2:/data/rootlink/y")     # the volume's own root
        assert cli("exec", "fs-vol2", "cat", "/data/y").stdout == "f\n"
        cli("cp", "fs-vol2:/bind/b", tmp_path / "b-out")
        assert (tmp_path / "b-out").read_text() == "bound\n"
        p = cli("cp", tmp_path / "f", "fs-vol2:/bind/z", check=False)
        assert p.returncode == 1 and "read-only" in p.stderr and not (bind / "z").exists()
        p = cli("cp", tmp_path / "f", "fs-vol2:/scratch/z", check=False)
        assert p.returncode == 1 and "tmpfs mount at /scratch" in p.stderr
        cli("stop", "-t", "0", "fs-vol2")
        cli("cp", "fs-vol2:/data/x", tmp_path / "x-out")
        assert (tmp_path / "x-out").read_text() == "f\n"
        # a tar with an entry leaving the destination, or an absolute one: refused
        for name in ("../../../../escape-fs-test", "/escape-fs-test"):
            buf = io.BytesIO()
            with tarfile.open(fileobj=buf, mode="w") as t:
                info = tarfile.TarInfo(name)
                info.size = 2
                t.addfile(info, io.BytesIO(b"x\n"))
            p = cli("cp", "-", "fs-vol:/work", input=buf.getvalue(), check=False)
            assert p.returncode == 1 and b"escape-fs-test" in p.stderr, p.stderr
        assert not Path("/escape-fs-test").exists()
        assert not (cli.root / "escape-fs-test").exists()
        # export refuses a terminal, as docker
        import pty

        master, slave = pty.openpty()
        try:
            p = subprocess.run([*_cli_argv(cli), "export", "fs-vol"], stdout=slave,
                               stderr=subprocess.PIPE, text=True,
                               env=dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parent.parent)))
        finally:
            os.close(master)
            os.close(slave)
        assert p.returncode == 1 and "cowardly refusing to save to a terminal" in p.stderr
    finally:
        rm(cli, "fs-vol", "fs-vol2")


LEGACY = """
import sys
from layerstore import snapshots
snapshots.USE_NEW_MOUNT_API = False
from builder.cli import main
main(sys.argv[1:], prog_name="pybuild")
"""


def test_stopped_container_through_the_legacy_mount(run_store, tmp_path):
    """Kernels without the new mount API: the overlay is mounted in a private mount
    namespace of the cp process, on a work dir under ROOT/tmp, gone with it."""
    import sys

    cli = run_store
    (tmp_path / "f").write_text("legacy\n")
    cli("run", "--name", "fs-legacy", "busybox", "sh", "-c", "ln -s /etc /etclink")
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parent.parent))
    base = [sys.executable, "-c", LEGACY, "--root", str(cli.root)]
    try:
        for args in (["cp", str(tmp_path / "f"), "fs-legacy:/etclink/f"],
                     ["cp", "fs-legacy:/etc/f", str(tmp_path / "back")],
                     ["export", "-o", str(tmp_path / "e.tar"), "fs-legacy"]):
            p = subprocess.run(base + args, capture_output=True, text=True, env=env)
            assert p.returncode == 0, p.stderr
        assert (tmp_path / "back").read_text() == "legacy\n"
        assert "etc/f" in tarfile.open(tmp_path / "e.tar").getnames()
        assert not Path("/etc/f").exists() or Path("/etc/f").read_text() != "legacy\n"
        assert "A /etc/f" in cli("diff", "fs-legacy").stdout.splitlines()
        with open("/proc/self/mountinfo") as f:
            assert str(cli.root) not in f.read()
        assert not list((cli.root / "tmp").glob("build-cp-*"))
    finally:
        rm(cli, "fs-legacy")
