"""The runtime against hostile input (issue 11, round 3): seccomp profiles, image-chosen
commands on the user's terminal, image symlinks under mount targets, a VOLUME over /,
a volume swapped under its copy-up, and `--rm` containers whose owner was SIGKILLed."""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
import time

import pytest

from builder.runner import volumes as volmod
from builder.runner.errors import RunError
from builder.runner.options import RunOptions, parse_security_opt
from builder.sandbox import BindMount, SandboxError, TmpfsMount, seccomp
from builder.sandbox.caps import resolve
from conftest import REPO
from test_run_support import run_store, tag_configured  # noqa: F401  (fixture)
from tests.test_sandbox_support import out, sh

NONE = ("--network", "none")

PROFILES = {
    "syscalls is a string": {"defaultAction": "SCMP_ACT_ALLOW", "syscalls": "read"},
    "rule is a number": {"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [5]},
    "names is a number": {"defaultAction": "SCMP_ACT_ALLOW",
                          "syscalls": [{"names": 5, "action": "SCMP_ACT_ERRNO"}]},
    "name is null": {"defaultAction": "SCMP_ACT_ALLOW",
                     "syscalls": [{"names": [None], "action": "SCMP_ACT_ERRNO"}]},
    "arg without index": {"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [{
        "names": ["read"], "action": "SCMP_ACT_ERRNO", "args": [{"value": 1, "op": "SCMP_CMP_EQ"}]}]},
    "arg value a string": {"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [{
        "names": ["read"], "action": "SCMP_ACT_ERRNO",
        "args": [{"index": 0, "value": "x", "op": "SCMP_CMP_EQ"}]}]},
    "arg value too big": {"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [{
        "names": ["read"], "action": "SCMP_ACT_ERRNO",
        "args": [{"index": 0, "value": 1 << 80, "op": "SCMP_CMP_EQ"}]}]},
    "errno a string": {"defaultAction": "SCMP_ACT_ERRNO", "defaultErrnoRet": "x"},
    "errno too big": {"defaultAction": "SCMP_ACT_ERRNO", "defaultErrnoRet": 1 << 40},
    "action a number": {"defaultAction": 5},
    "archMap a string": {"defaultAction": "SCMP_ACT_ALLOW", "archMap": "x86"},
    "includes a string": {"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [{
        "names": ["read"], "action": "SCMP_ACT_ERRNO", "includes": "caps"}]},
    "caps a number": {"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [{
        "names": ["read"], "action": "SCMP_ACT_ERRNO", "includes": {"caps": 5}}]},
    "bad minKernel": {"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [{
        "names": ["read"], "action": "SCMP_ACT_ERRNO", "includes": {"minKernel": "new"}}]},
    "too many rules": {"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [{
        "names": ["read"], "action": "SCMP_ACT_ERRNO",
        "args": [{"index": 0, "value": i, "op": "SCMP_CMP_EQ"}]} for i in range(6000)]},
}


@pytest.mark.parametrize("case", sorted(PROFILES))
def test_hostile_seccomp_profile_is_one_clear_error(case, tmp_path):
    path = tmp_path / "profile.json"
    path.write_text(json.dumps(PROFILES[case]))
    with pytest.raises(SandboxError) as e:
        seccomp.bpf_for(path, resolve([], []))
    assert str(path) in str(e.value) and "\n" not in str(e.value)


def test_seccomp_profile_size_depth_and_file_type_are_bounded(tmp_path):
    caps = resolve([], [])
    deep = tmp_path / "deep.json"
    deep.write_text('{"defaultAction": "SCMP_ACT_ALLOW", "x": ' + "[" * 50000 + "]" * 50000 + "}")
    with pytest.raises(SandboxError, match="nested"):
        seccomp.bpf_for(deep, caps)
    big = tmp_path / "big.json"
    with open(big, "wb") as f:
        f.truncate(64 << 20)             # sparse: reading it whole would take 64 MiB
    with pytest.raises(SandboxError, match="larger than"):
        seccomp.bpf_for(big, caps)
    bad = tmp_path / "bad.json"
    bad.write_text('{"defaultAction": "SCMP_ACT_ERRNO",\n "syscalls": [}')
    with pytest.raises(SandboxError, match=r"bad.json:2:"):
        seccomp.bpf_for(bad, caps)
    # a fifo must not block run or exec for ever: through the flag and straight to the sandbox
    fifo = tmp_path / "fifo.json"
    os.mkfifo(fifo)
    with pytest.raises(RunError, match="not a regular file"):
        parse_security_opt(f"seccomp={fifo}", RunOptions(image="x"))
    code = ("import sys; from builder.sandbox import seccomp, SandboxError\n"
            "from builder.sandbox.caps import resolve\n"
            "try: seccomp.bpf_for(sys.argv[1], resolve([], []))\n"
            "except SandboxError as e: print(e)\n")
    p = subprocess.run([sys.executable, "-c", code, str(fifo)], cwd=REPO, capture_output=True,
                       text=True, timeout=60, env=dict(os.environ, PYTHONPATH=str(REPO)))
    assert "not a regular file" in p.stdout, p.stderr


def test_ps_never_prints_the_image_s_escape_sequences(run_store):
    """An image's Cmd is its author's: `ps` quotes it as docker does (Go's strconv.Quote),
    so no escape sequence reaches the user's terminal."""
    tag_configured(run_store.root, "busybox", "r3-esc",
                   Cmd=["sh", "-c", "true #\x1b]0;owned\x07\x1b[2J\u202e"])
    run_store("run", *NONE, "--name", "r3-esc", "r3-esc")
    try:
        for flags in ((), ("--no-trunc",)):
            table = run_store("ps", "-a", *flags).stdout
            row = next(line for line in table.splitlines() if line.endswith("r3-esc"))
            assert not any(not ch.isprintable() for ch in row), repr(row)
        assert "\\x1b]0;owned\\x07\\x1b[2J\\u202e" in run_store("ps", "-a", "--no-trunc").stdout
    finally:
        run_store("rm", "r3-esc")


def _ids(cli) -> list[str]:
    return sorted(p.name for p in (cli.root / "containers").iterdir() if not p.name.startswith("."))


def _volumes(cli) -> list[str]:
    d = cli.root / "volumes"
    return sorted(p.name for p in d.iterdir()) if d.is_dir() else []


def _wait(what, timeout: float = 60.0):
    deadline = time.monotonic() + timeout
    while not (got := what()):
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)
    return got


def test_sigkilled_rm_containers_are_reclaimed(run_store):
    """`run --rm` whose CLI (attached) or supervisor (-d) is SIGKILLed: its container,
    upper dir, anonymous volume and name are gone at the next `ps`, as docker's daemon
    removes them; nothing is left running."""
    before, vols = _ids(run_store), _volumes(run_store)
    cli = subprocess.Popen([sys.executable, "-m", "builder", "--root", str(run_store.root), "run",
                            "--rm", *NONE, "--name", "r3-orphan", "-v", "/anon", "busybox",
                            "sleep", "600"], cwd=REPO, env=dict(os.environ, PYTHONPATH=str(REPO)))
    def started() -> list[str]:
        out = []
        for i in _ids(run_store):
            try:
                if i not in before and json.loads((run_store.root / "containers" / i
                                                   / "state.json").read_text())["pid"]:
                    out.append(i)
            except (OSError, ValueError):
                continue          # being created
        return out
    try:
        new = _wait(started)
    finally:
        cli.kill()
        cli.wait()
    cid = run_store("run", "-d", "--rm", *NONE, "--name", "r3-orphan-d", "busybox",
                    "sleep", "600").stdout.strip()
    state = json.loads((run_store.root / "containers" / cid / "state.json").read_text())
    os.kill(state["owner_pid"], signal.SIGKILL)          # the supervisor
    _wait(lambda: not os.path.exists(f"/proc/{state['pid']}"))
    assert run_store("ps", "-aq", "--no-trunc").stdout.split() == [
        i for i in before if (run_store.root / "containers" / i).is_dir()]
    assert new[0] not in _ids(run_store) and cid not in _ids(run_store)
    assert _volumes(run_store) == vols
    assert run_store("run", "--rm", *NONE, "--name", "r3-orphan", "busybox", "true").returncode == 0


def test_mount_targets_follow_image_symlinks_inside_the_root(busybox_copy, tmp_path):
    """A mount target that is an image symlink lands where the container's kernel resolves
    it, inside the rootfs (docker's rule), and never in /proc (runc's)."""
    src = tmp_path / "src"
    src.mkdir()
    (src / "f").write_text("host\n")
    etc_before = sorted(os.listdir(busybox_copy / "etc"))
    (busybox_copy / "data").symlink_to("/etc")
    (busybox_copy / "up").symlink_to("../../../../../../etc")
    (busybox_copy / "psys").symlink_to("/proc/sys")
    r = sh(busybox_copy, "cat /etc/f; ls /tmp/t", mounts=[BindMount(src, "/data"),
                                                       TmpfsMount("/up/../tmp/t")])
    assert r.exit_code == 0 and out(r) == "host\n", r.stderr
    assert sorted(os.listdir(busybox_copy / "etc")) == etc_before
    for mount in (BindMount(src, "/psys/kernel"), TmpfsMount("/psys"), BindMount(src, "/proc/x")):
        with pytest.raises(SandboxError, match="inside /proc"):
            sh(busybox_copy, "true", mounts=[mount])


def test_image_volumes_over_root_and_through_symlinks(run_store):
    """VOLUME / is refused (it would copy the whole image and hide the root); a VOLUME
    at an image symlink is filled from, and mounted at, where the link leads in the image."""
    tag_configured(run_store.root, "busybox", "r3-rootvol", Volumes={"/": {}})
    p = run_store("run", "--rm", *NONE, "r3-rootvol", "true", check=False)
    assert p.returncode == 125 and "cannot mount over /" in p.stderr
    base = run_store.root / "r3-linkvol.tar"
    import tarfile
    with tarfile.open(base, "w") as t:
        info = tarfile.TarInfo("data")
        info.type, info.linkname = tarfile.SYMTYPE, "/etc"
        t.addfile(info)
    run_store("import", base, "r3-link-layer")
    vols = _volumes(run_store)
    p = run_store("run", "--rm", *NONE, "-v", "r3-etc:/data", "busybox", "true")
    assert p.returncode == 0
    # an image whose /data -> /etc is a VOLUME: the volume holds /etc's files
    from layerstore.store import Store
    store = Store.open(run_store.root)
    bb, link = store.resolve("busybox"), store.resolve("r3-link-layer")
    import copy
    cfg = copy.deepcopy(bb.config)
    cfg.diff_ids = list(bb.config.diff_ids) + list(link.config.diff_ids)
    cfg.config.Volumes = {"/data": {}}
    store.tag("r3-linkvol", store.commit_image(cfg, list(bb.manifest.layers)
                                               + list(link.manifest.layers)))
    p = run_store("run", "--rm", *NONE, "r3-linkvol", "sh", "-c",
                  "grep -c root /etc/passwd; ls -ld /data | cut -c1")
    assert p.stdout.split() == ["1", "l"], p.stderr
    assert set(_volumes(run_store)) - set(vols) == {"r3-etc"}
    run_store("volume", "rm", "r3-etc")


def test_copy_up_never_chmods_through_a_node_swapped_for_a_symlink(tmp_path, monkeypatch):
    """Copy-up into a volume that a running container shares: it may replace the node we
    just made by a symlink to a host file; chmod must not follow it (the mode is the
    image's choice)."""
    lower = tmp_path / "lower"
    (lower / "vol").mkdir(parents=True)
    os.mkfifo(lower / "vol" / "node", 0o600)
    os.chmod(lower / "vol" / "node", 0o4777)
    victim = tmp_path / "host-file"
    victim.write_text("secret\n")
    os.chmod(victim, 0o600)
    dest = tmp_path / "volume"
    dest.mkdir()
    real_mknod = os.mknod

    def racing_mknod(name, mode=0o600, device=0, *, dir_fd=None):
        real_mknod(name, mode, device, dir_fd=dir_fd)
        os.unlink(name, dir_fd=dir_fd)               # the other container's move
        os.symlink(victim, name, dir_fd=dir_fd)
    monkeypatch.setattr(os, "mknod", racing_mknod)
    try:
        volmod.copy_up([lower], "/vol", dest)
        error = ""
    except RunError as e:
        error = str(e)
    assert stat.S_IMODE(victim.stat().st_mode) == 0o600, "copy-up chmodded the host file"
    assert "was replaced" in error
    monkeypatch.setattr(os, "mknod", real_mknod)
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    volmod.copy_up([lower], "/vol", fresh)
    assert stat.S_IMODE(os.lstat(fresh / "node").st_mode) == 0o4777
    assert stat.S_ISFIFO(os.lstat(fresh / "node").st_mode)


def test_tmpfs_flag_is_noexec_unless_asked_as_docker(run_store):
    """docker's --tmpfs mounts noexec,nosuid,nodev unless `exec` is given (--mount
    type=tmpfs is not noexec): a container cannot run what it writes to a --tmpfs."""
    script = "cp /bin/busybox /t/true && /t/true; echo rc=$?"
    for flags, want in ((("--tmpfs", "/t"), "rc=126"), (("--tmpfs", "/t:size=8m,exec"), "rc=0"),
                        (("--mount", "type=tmpfs,target=/t"), "rc=0")):
        p = run_store("run", "--rm", *NONE, *flags, "busybox", "sh", "-c", script)
        assert p.stdout.strip() == want, (flags, p.stdout, p.stderr)
