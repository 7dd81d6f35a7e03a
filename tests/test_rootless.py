"""Issue 15's acceptance, as an unprivileged user: the sample builds, `run`, `exec`, `logs`,
`-p` publishing, push/pull through docker-registry, `save` -> umoci unpack equal to a rootful
build, `fsck`; the store holds only the user's own host ids; nothing is written outside the
store and $XDG_RUNTIME_DIR; limits without a delegated cgroup are refused; a user without
subordinate ranges gets one uid and a warning.

The user, its install (a venv of /usr/bin/python3 running this repo's code) and the process
clean-up come from rootless_env.py. One user and store serve the whole module (the tests
build on each other's images, in file order); every test asserts on its own result.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import tarfile
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from buildpeer import umoci_unpack
from conftest import CLI, MKROOTFS, REPO, require_tool
from rootless_env import (Session, TestUser, foreign_owners, owned_entries, pybuild_as,
                          run_as, user_env)
from test_registry_helpers import Registry, free_port
from treecmp import describe_tree

SAMPLES = REPO / "sample-images"
EXPECT = {
    "hello": "Hello from pybuild (built on x86_64, running as nobody)\n",
    "multistage": "hello, world (greet 1.2.3, built in a separate stage)\n",
}
# A RUN that chowns to 1000 and installs a setuid file, plus USER 1000 writing its own files.
OWNERS_DOCKERFILE = """\
FROM busybox
COPY --chown=1000:100 note.txt /data/note.txt
RUN mkdir -p /data/app /opt/tools \\
 && echo hi > /data/app/f && chown -R 1000:1000 /data/app && chmod 2750 /data/app \\
 && cp /bin/busybox /opt/tools/suid-tool && chmod 4755 /opt/tools/suid-tool \\
 && touch /opt/tools/nobody-file && chown 65534:65534 /opt/tools/nobody-file
USER 1000
RUN touch /data/app/by-user && id -u > /data/app/whoami
USER root
CMD ["sh", "-c", "stat -c '%n %u:%g %a' /data/note.txt /data/app /data/app/by-user /opt/tools/suid-tool /opt/tools/nobody-file"]
"""
OWNERS_EXPECT = ("/data/note.txt 1000:100 644\n/data/app 1000:1000 2750\n"
                 "/data/app/by-user 1000:1000 644\n/opt/tools/suid-tool 0:0 4755\n"
                 "/opt/tools/nobody-file 65534:65534 644\n")
HTTPD_DOCKERFILE = """\
FROM busybox
RUN mkdir /www && echo "hello from a rootless container" > /www/index.html
EXPOSE 80
CMD ["sh", "-c", "echo httpd starting; exec httpd -f -v -p 80 -h /www"]
"""
# where an unprivileged user can write outside its store (walked by owner: other tests'
# files in /tmp do not count)
WRITABLE = [Path("/tmp"), Path("/var/tmp"), Path("/dev/shm")]


@dataclass
class Rootless:
    """`pybuild ...` as the test user, with its store under a work dir it owns."""

    session: Session
    user: TestUser
    work: Path

    @property
    def store(self) -> Path:
        return self.work / "data" / "pybuild"     # the default: $XDG_DATA_HOME/pybuild

    def env(self) -> dict[str, str]:
        return user_env(self.user, self.work / "data")

    def __call__(self, *args, check: bool = True, input=None,
                 timeout: float = 120) -> subprocess.CompletedProcess:
        return pybuild_as(self.user, *args, env=self.env(), input=input, timeout=timeout,
                          cwd=self.work, check=check)

    def give(self, path: Path) -> Path:
        """Make a root-made file or tree the user's."""
        for dirpath, dirnames, filenames in os.walk(path):
            for name in [*dirnames, *filenames]:
                os.lchown(os.path.join(dirpath, name), self.user.uid, self.user.gid)
        os.lchown(path, self.user.uid, self.user.gid)
        return path


def _rootfs_tar(dest: Path, all_root: bool = False) -> Path:
    """The busybox rootfs of the samples as a tarball; `all_root`: every file 0:0."""
    rootfs = dest.with_suffix(".d")
    subprocess.run(["sh", str(MKROOTFS), str(rootfs)], check=True, capture_output=True)
    owner = ["--owner=0", "--group=0"] if all_root else []
    subprocess.run(["tar", "-C", str(rootfs), "--numeric-owner", *owner, "-cf", str(dest), "."],
                   check=True)
    subprocess.run(["rm", "-rf", str(rootfs)], check=True)
    os.chmod(dest, 0o644)
    return dest


def _context(dir: Path, dockerfile: str, files: dict[str, str] | None = None) -> Path:
    dir.mkdir(parents=True)
    (dir / "Dockerfile").write_text(dockerfile)
    for name, text in (files or {}).items():
        (dir / name).write_text(text)
    for p in [dir, *dir.iterdir()]:
        os.chmod(p, 0o755 if p.is_dir() else 0o644)
    return dir


@pytest.fixture(scope="module")
def session():
    s = Session()
    before: dict[str, tuple] = {}
    try:
        s.before = before            # filled by `rl` once the work dirs exist
        yield s
    finally:
        problems = s.close()
    assert not problems, problems


@pytest.fixture(scope="module")
def rl(session):
    r = Rootless(session, session.user, session.workdir(session.user, "main"))
    # what the user owns outside its work dir before any pybuild ran
    session.before.update(owned_entries(r.user, [r.user.home, *WRITABLE], exclude=[r.work]))
    tar = r.give(_rootfs_tar(r.work / "busybox.tar"))
    r("import", tar, "busybox", "--change", 'CMD ["sh"]')
    return r


@pytest.fixture(scope="module")
def rootful(tmp_path_factory, rl):
    """A root store with the same busybox base (the same tarball, imported the same way)."""
    cli = CLI(tmp_path_factory.mktemp("rootful") / "store")
    cli("import", rl.work / "busybox.tar", "busybox", "--change", 'CMD ["sh"]')
    return cli


@pytest.fixture(scope="module")
def owners_ctx(rl):
    return rl.give(_context(rl.work / "ctx-owners", OWNERS_DOCKERFILE,
                            {"note.txt": "a note\n"}))


def _http_get(port: int, timeout: float = 20) -> str:
    deadline = time.monotonic() + timeout
    last = ""
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=2) as s:
                s.sendall(b"GET /index.html HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
                data = b""
                while chunk := s.recv(65536):
                    data += chunk
            if data.startswith(b"HTTP/1.") and b"\r\n\r\n" in data:
                return data.decode(errors="replace")
            last = repr(data[:200])
        except OSError as e:
            last = str(e)
        time.sleep(0.2)
    raise AssertionError(f"nothing answered on 127.0.0.1:{port}: {last}")


def _unpack(cli_save, image: str, dest: Path) -> Path:
    """`save --format oci` by `cli_save` into dest.tar, unpacked by umoci as root."""
    require_tool("umoci")
    archive = dest.with_suffix(".tar")
    cli_save("save", "--format", "oci", "-o", archive, image)
    layout = dest.with_suffix(".oci")
    layout.mkdir()
    with tarfile.open(archive) as t:
        t.extractall(layout, filter="fully_trusted")
    ref = json.loads((layout / "index.json").read_text())["manifests"][0]["annotations"][
        "org.opencontainers.image.ref.name"]
    return umoci_unpack(layout, ref, dest)


# --- builds and runs --------------------------------------------------------------------

def test_the_user_is_unprivileged(session):
    """What the other tests rely on: no root groups, no capabilities, the venv not /root's."""
    u = session.user
    p = run_as(u, ["sh", "-c", "id -u; id -G; grep -E '^Cap(Eff|Prm)' /proc/self/status; "
                   f"{session.python} -c 'import builder, sys; print(builder.__file__)'"],
               env=user_env(u), check=True)
    lines = p.stdout.splitlines()
    assert lines[:2] == [str(u.uid), str(u.gid)], p.stdout
    assert [l.split()[1] for l in lines[2:4]] == ["0000000000000000"] * 2, p.stdout
    assert lines[4] == str(REPO / "builder" / "__init__.py")
    assert not str(session.python).startswith("/root")
    assert u.subuids and u.subuids[0][1] >= 65536 and not session.nosub.subuids


def test_info_says_rootless(rl):
    info = json.loads(rl("info", "--format", "json").stdout)
    assert info["Rootless"] is True and info["DockerRootDir"] == str(rl.store)
    details = info["RootlessDetails"]
    assert details["User"] == rl.user.name
    start, count = rl.user.subuids[0]
    assert f"0->{rl.user.uid} (1)" in details["UIDMap"] and f"->{start} ({count})" in \
        details["UIDMap"]
    assert details["Network"] == "slirp4netns" and details["Overlay"] == "native"
    assert details["UserNamespace"] is True and details["CgroupDelegated"] == []
    assert any("no delegated cgroup" in w for w in info["Warnings"])
    text = rl("info").stdout
    assert " Rootless: true\n" in text and f"  UID map: 0->{rl.user.uid} (1)" in text


@pytest.mark.parametrize("name", ["hello", "multistage"])
def test_sample_builds_and_runs(rl, name):
    rl("build", "--progress", "plain", "-t", name, SAMPLES / name)
    assert rl("run", "--rm", name).stdout == EXPECT[name]


def test_cache_mount_sample_is_warm_the_second_time(rl):
    first = rl("build", "--progress", "plain", "-t", "cache-mount", SAMPLES / "cache-mount")
    assert "cache: cold" in first.stderr
    second = rl("build", "--progress", "plain", "--no-cache", "-t", "cache-mount",
                SAMPLES / "cache-mount")
    assert "cache: warm" in second.stderr
    out = rl("run", "--rm", "cache-mount").stdout.strip()
    assert len(out) == 16 and all(c in "0123456789abcdef" for c in out), out


def test_chown_setuid_and_user_1000(rl, owners_ctx):
    rl("build", "--progress", "plain", "-t", "owners", owners_ctx)
    assert rl("run", "--rm", "owners").stdout == OWNERS_EXPECT
    assert rl("run", "--rm", "owners", "cat", "/data/app/whoami").stdout == "1000\n"
    # USER 1000 at run time, writing where 1000 owns the directory and not elsewhere
    p = rl("run", "--rm", "-u", "1000:1000", "owners", "sh", "-c",
           "id -u; touch /data/app/x && echo wrote; touch /opt/tools/y 2>/dev/null || echo denied")
    assert p.stdout == "1000\nwrote\ndenied\n"


def test_save_unpacks_as_a_rootful_build_of_the_same_dockerfile(rl, rootful, owners_ctx,
                                                                tmp_path):
    rl("build", "-t", "owners", owners_ctx)         # answered by the cache when run in order
    rootful("build", "-t", "owners", owners_ctx)
    ours = _unpack(rl, "owners", rl.work / "unpack-rootless")
    theirs = _unpack(rootful, "owners", tmp_path / "unpack-rootful")
    a, b = describe_tree(ours, mtimes=False), describe_tree(theirs, mtimes=False)
    assert a == b, sorted(set(a.items()) ^ set(b.items()))[:10]
    st = os.lstat(ours / "opt/tools/suid-tool")
    assert (st.st_uid, st.st_gid, st.st_mode & 0o7777) == (0, 0, 0o4755)
    st = os.lstat(ours / "data/app/by-user")
    assert (st.st_uid, st.st_gid) == (1000, 1000)


def test_load_prune_and_a_bind_volume(rl):
    """`save` -> `load` into a fresh store runs the same; `prune --all` there leaves it
    fsck-clean; what container root writes to a bind mount is the user's on the host."""
    archive = rl.work / "owners-docker.tar"
    rl("save", "-o", archive, "owners")
    fresh = rl.work / "loaded"
    rl("--root", fresh, "load", "-i", archive)
    assert rl("--root", fresh, "run", "--rm", "owners").stdout == OWNERS_EXPECT
    rl("--root", fresh, "rmi", "owners")
    rl("--root", fresh, "prune", "--all")
    assert rl("--root", fresh, "images", "-q").stdout == ""
    assert rl("--root", fresh, "fsck").stdout.strip().endswith("clean")
    vol = rl.work / "vol"
    vol.mkdir()
    rl.give(vol)
    rl("run", "--rm", "-v", f"{vol}:/vol", "busybox", "sh", "-c",
       "echo from-root > /vol/r && chown 1000:1000 /vol && su -s /bin/sh user -c "
       "'echo from-1000 > /vol/u'")
    r, u = os.lstat(vol / "r"), os.lstat(vol / "u")
    assert (r.st_uid, r.st_gid) == (rl.user.uid, rl.user.gid)
    start = rl.user.subuids[0][0]
    assert u.st_uid == start + 999 and (vol / "u").read_text() == "from-1000\n"


def test_published_port_exec_and_logs(rl):
    ctx = rl.give(_context(rl.work / "ctx-httpd", HTTPD_DOCKERFILE))
    rl("build", "-t", "httpd", ctx)
    port = free_port()
    cid = rl("run", "-d", "-p", f"127.0.0.1:{port}:80", "httpd").stdout.strip()
    try:
        answer = _http_get(port)
        assert answer.startswith("HTTP/1.") and " 200 " in answer.splitlines()[0]
        assert answer.endswith("hello from a rootless container\n")
        assert rl("exec", cid, "cat", "/www/index.html").stdout == \
            "hello from a rootless container\n"
        assert rl("exec", cid, "id", "-u").stdout == "0\n"
        logs = rl("logs", cid)
        assert "httpd starting" in logs.stdout + logs.stderr
        assert f"127.0.0.1:{port}->80/tcp" in rl("ps").stdout
    finally:
        rl("rm", "-f", cid, check=False)
    assert cid[:12] not in rl("ps", "-a").stdout


def test_push_and_pull_through_docker_registry(rl, tmp_path):
    reg_dir = tmp_path / "registry"
    reg_dir.mkdir()
    reg = Registry(reg_dir)
    try:
        ref = f"{reg.host}/rootless/hello:1"
        rl("push", "hello", ref)
        other = rl.work / "pulled"
        rl("--root", other, "pull", ref)
        assert rl("--root", other, "run", "--rm", ref).stdout == EXPECT["hello"]
    finally:
        reg.stop()
    assert not foreign_owners(rl.user, other)


def test_limit_without_delegated_cgroup_is_refused_in_one_line(rl):
    p = rl("run", "--rm", "--memory", "64m", "busybox", "true", check=False)
    assert p.returncode != 0
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("pybuild: error:"), p.stderr
    assert "cgroup" in lines[0] and "Traceback" not in p.stderr


def test_fsck_clean_and_store_owned_by_the_users_ids_only(rl):
    assert rl("fsck").stdout.strip().endswith("clean")
    assert rl.store.is_dir()
    assert foreign_owners(rl.user, rl.store) == []


def test_nothing_written_outside_the_store_and_runtime_dir(rl, session):
    after = owned_entries(rl.user, [rl.user.home, *WRITABLE], exclude=[rl.work])
    changed = sorted(p for p, v in after.items() if session.before.get(p) != v)
    assert changed == [], changed
    # and in the work dir's $XDG_DATA_HOME nothing beside the store
    assert os.listdir(rl.work / "data") == ["pybuild"]


# --- a user without subordinate ranges --------------------------------------------------

def test_user_without_subordinate_ranges(session):
    nosub = Rootless(session, session.nosub, session.workdir(session.nosub, "nosub"))
    root_only = nosub.give(_rootfs_tar(nosub.work / "bb-root.tar", all_root=True))
    nosub("import", root_only, "bbroot", "--change", 'CMD ["sh"]')
    ctx = nosub.give(_context(nosub.work / "ctx", "FROM bbroot\nRUN echo built > /built\n"))
    nosub("build", "-t", "one-uid", ctx)
    assert nosub("run", "--rm", "one-uid", "cat", "/built").stdout == "built\n"
    info = nosub("info").stdout
    assert f"WARNING: no /etc/subuid range for {session.nosub.name}: one uid only" in info
    assert f"  UID map: 0->{session.nosub.uid} (1)\n" in info
    # an image that needs uid 1000 (the samples' busybox: /home/user is 1000:1000) is taken
    # with a warning that says what to do, at import and wherever else it is noticed
    with_user = nosub.give(_rootfs_tar(nosub.work / "bb.tar"))
    p = nosub("import", with_user, "busybox")
    q = nosub("run", "--rm", "busybox", "stat", "-c", "%u", "/home/user")
    said = [l for l in (p.stderr + q.stderr).splitlines() if "warning" in l.lower()]
    assert said and all("1000" in l and "/etc/subuid" in l for l in said[:1]), p.stderr
    assert q.stdout == "0\n"          # as the warning says: root's here
    assert "Traceback" not in p.stderr + q.stderr


# --- the namespace, its keeper, the runtime's confinement ---------------------------------

def _keeper(rl) -> tuple[int, str]:
    pid, start = (rl.user.runtime_dir / "pybuild" / "userns.pid").read_text().split()
    return int(pid), start


def _ns(pid: int, kind: str = "user") -> int:
    return os.stat(f"/proc/{pid}/ns/{kind}").st_ino


def _wait_gone(pid: int, timeout: float = 20) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with open(f"/proc/{pid}/stat", "rb") as f:
                if f.read().rpartition(b")")[2].split()[0] in (b"Z", b"X"):
                    return True
        except FileNotFoundError:
            return True
        time.sleep(0.1)
    return False


def test_runtime_probes_are_docker_defaults_rootless(rl):
    """The sandbox issue's probes (test_run_security.PROBES) through a rootless `run`: the
    same capabilities, seccomp, masks and refusals as rootful -- stricter, never looser."""
    from test_run_security import DOCKER_DEFAULT_CAPS, PROBES

    def probe(*flags):
        out = rl("run", "--rm", "--network", "none", *flags, "busybox", "sh", "-c",
                 PROBES).stdout
        return dict(ln.split("=", 1) if "=" in ln else ln.split(":", 1)
                    for ln in out.splitlines() if ln)

    out = probe()
    assert out["pid1"] == "1"
    for key in ("CapEff", "CapPrm", "CapBnd"):
        assert int(out[key], 16) == DOCKER_DEFAULT_CAPS, (key, out)
    assert int(out["CapInh"], 16) == 0 and int(out["CapAmb"], 16) == 0
    assert out["Seccomp"] == "2" and out["NoNewPrivs"] == "0"
    assert out["timer_list"] == "0" and out["firmware"] == "0"
    assert int(out["hostproc"]) < 8
    assert out["procsys"] != "0" and out["sys"] == "ro"
    assert out["mount"] != "0" and out["unshare"] != "0" and out["swapon"] != "0"
    assert out["chown"] == "0"
    user = probe("-u", "1000")
    assert int(user["CapEff"], 16) == 0 and int(user["CapBnd"], 16) == DOCKER_DEFAULT_CAPS
    nnp = probe("--security-opt", "no-new-privileges")
    assert nnp["NoNewPrivs"] == "1" and nnp["Seccomp"] == "2"


def test_invocations_share_one_namespace_and_its_keeper_leaves_when_idle(rl):
    """A container of one invocation lives in the namespace every later invocation joins
    (so exec, stop, top reach it); with nothing left in it the keeper exits by itself."""
    cid = rl("run", "-d", "--network", "none", "busybox", "sh", "-c",
             "sleep 300 & sleep 301").stdout.strip()
    try:
        keeper, _ = _keeper(rl)
        state = json.loads(rl("inspect", cid).stdout)[0]
        pid1 = state["State"]["Pid"]
        assert _ns(pid1) == _ns(keeper) != _ns(os.getpid())
        assert os.stat(f"/proc/{keeper}").st_uid == rl.user.uid
        # no cgroup without delegation: top reads the container's PID namespace instead
        top = rl("top", cid).stdout.splitlines()
        assert len(top) == 3 and all("sleep 30" in ln for ln in top[1:]), top
        p = rl("pause", cid, check=False)
        assert p.returncode != 0 and "no cgroup" in p.stderr and len(p.stderr.splitlines()) == 1
    finally:
        rl("rm", "-f", cid)
    assert _wait_gone(keeper), "the keeper outlived the last process of its namespace"
    assert not (rl.user.runtime_dir / "pybuild" / "userns.pid").exists()


def _start_time(pid: int) -> str:
    with open(f"/proc/{pid}/stat", "rb") as f:
        return f.read().rpartition(b")")[2].split()[19].decode()


def test_a_forged_keeper_pid_file_is_never_joined(rl):
    """The pid file names a process; a pid is followed only when its start time matches
    and its user namespace is one the user owns and not the initial one: init's and the
    user's own plain process are refused, and a fresh keeper is made."""
    pidfile = rl.user.runtime_dir / "pybuild" / "userns.pid"
    bystander = subprocess.Popen(run_as_argv(rl, ["sleep", "60"]))
    try:
        time.sleep(0.3)
        plain = next(p for p in _children(bystander.pid) + [bystander.pid]
                     if os.stat(f"/proc/{p}").st_uid == rl.user.uid)
        for victim in (1, plain):
            pidfile.parent.mkdir(exist_ok=True)
            pidfile.write_text(f"{victim} {_start_time(victim)}\n")
            os.chown(pidfile, rl.user.uid, rl.user.gid)
            out = rl("run", "--rm", "--network", "none", "busybox", "cat",
                     "/proc/self/uid_map").stdout.split()
            assert out[:3] == ["0", str(rl.user.uid), "1"], out
            keeper, _ = _keeper(rl)
            assert keeper not in (1, plain)
            assert _ns(keeper) not in (_ns(os.getpid()), _ns(plain))
    finally:
        bystander.kill()
        bystander.wait()


def run_as_argv(rl, argv: list[str]) -> list[str]:
    from rootless_env import as_user_argv

    return as_user_argv(rl.user, argv)


def _children(pid: int) -> list[int]:
    try:
        return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def test_a_delegated_cgroup_enforces_limits_rootless(rl):
    """With a cgroup subtree delegated to the user (what systemd's Delegate= does: the
    directory chowned to the user, the user's process inside), --memory and --pids-limit
    are enforced beneath it, and the container's cgroup is gone after rm."""
    from builder.sandbox.cgroups import hierarchies

    hs = hierarchies()
    made = []
    try:
        moves = []
        for c in ("memory", "pids"):
            d = Path(hs[c].base) / f"pybuild-rltest-{os.getpid()}"
            if d not in made:
                d.mkdir()
                made.append(d)
                for p in [d, *d.iterdir()]:
                    os.chown(p, rl.user.uid, rl.user.gid)
                moves.append(f"echo $$ > {d}/cgroup.procs")
        script = " && ".join(moves) + ' && exec "$@"'
        p = run_as(rl.user, ["sh", "-c", script, "sh", str(rl.session.python), "-m",
                             "builder", "run", "-d", "--network", "none", "--memory", "24m",
                             "--pids-limit", "33", "busybox", "sleep", "300"],
                   env=rl.env(), check=True)
        cid = p.stdout.strip()
        try:
            sub = {c: next(d for d in made if hs[c].base in str(d)) / f"pybuild-{cid}"
                   for c in ("memory", "pids")}
            mem = sub["memory"] / ("memory.max" if hs["memory"].version == 2
                                   else "memory.limit_in_bytes")
            assert int(mem.read_text()) == 24 << 20
            assert (sub["pids"] / "pids.max").read_text().strip() == "33"
            pid1 = json.loads(rl("inspect", cid).stdout)[0]["State"]["Pid"]
            assert str(pid1) in (sub["memory"] / "cgroup.procs").read_text().split()
        finally:
            rl("rm", "-f", cid)
        assert not any(d.exists() for d in sub.values())
    finally:
        for d in made:
            for _ in range(50):
                try:
                    d.rmdir()
                    break
                except OSError:
                    time.sleep(0.1)


FUSE_DOCKERFILE = """\
FROM busybox
RUN rm -rf /home/user && mkdir -p /home/user && echo new > /home/user/only \\
 && chown 1000:1000 /home/user/only && rm /bin/true \\
 && grep -c fuse-overlayfs /proc/mounts > /fuse-root
"""


def test_fuse_overlayfs_fallback_builds_and_runs_the_same_layers(rl):
    """Where the kernel refuses overlayfs in a user namespace (before 5.11) fuse-overlayfs
    mounts the roots (PYBUILD_OVERLAY forces it here): a RUN's whiteout, opaque dir and
    chown land in the layer as with native overlayfs (read back natively), `run` works,
    and no fuse-overlayfs daemon outlives the mounts."""
    ctx = rl.give(_context(rl.work / "ctx-fuse", FUSE_DOCKERFILE))
    env = {**rl.env(), "PYBUILD_OVERLAY": "fuse-overlayfs"}
    pybuild_as(rl.user, "build", "-t", "fz", str(ctx), env=env, cwd=rl.work, check=True)
    info = pybuild_as(rl.user, "info", "--format", "{{json .}}", env=env, cwd=rl.work,
                      check=True)
    assert json.loads(info.stdout)["RootlessDetails"]["Overlay"] == "fuse-overlayfs"
    out = pybuild_as(rl.user, "run", "--rm", "fz", "sh", "-c",
                     "grep -c '^fuse-overlayfs / ' /proc/mounts; cat /fuse-root",
                     env=env, cwd=rl.work, check=True).stdout.split()
    assert out == ["1", "1"], out
    # the layer as the kernel's overlayfs shows it: lower dir hidden, file whited out
    native = rl("run", "--rm", "fz", "sh", "-c",
                "ls /home/user; stat -c '%u:%g' /home/user/only; test -e /bin/true; echo $?;"
                "grep -c fuse /proc/mounts; true").stdout.split()
    assert native == ["only", "1000:1000", "1", "0"], native
    # fuse-overlayfs marks an opaque dir three ways (an xattr, a .wh..wh..opq file and a
    # whiteout of ".opq"): the layer says it once, as OCI does
    archive = rl.work / "fz.tar"
    rl("save", "--format", "docker", "-o", archive, "fz")
    with tarfile.open(archive) as t:
        top = json.load(t.extractfile("manifest.json"))[0]["Layers"][-1]
        with tarfile.open(fileobj=t.extractfile(top)) as layer:
            names = [m.name.lstrip("./") for m in layer.getmembers()]
    assert names.count("home/user/.wh..wh..opq") == 1, names
    assert not [n for n in names if n.endswith(".wh..opq") and "wh..wh" not in n], names
    assert "bin/.wh.true" in names and "home/user/only" in names
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and _fuse_daemons(rl):
        time.sleep(0.1)
    assert not _fuse_daemons(rl)


def _fuse_daemons(rl) -> list[int]:
    out = []
    for name in os.listdir("/proc"):
        try:
            if name.isdigit() and os.stat(f"/proc/{name}").st_uid == rl.user.uid and \
                    Path(f"/proc/{name}/comm").read_text().strip() == "fuse-overlayfs" and \
                    Path(f"/proc/{name}/stat").read_text().rpartition(")")[2].split()[0] != "Z":
                out.append(int(name))
        except OSError:
            continue
    return out
