"""docker's defaults where pybuild differed: a user's mount over /etc/hosts,
/etc/resolv.conf or /etc/hostname wins over the generated file; `-v` of a missing host
directory creates it (`--mount type=bind` does not); `save --help` names the format."""

from __future__ import annotations

import os
import stat

from conftest import REPO
from test_run_support import run_store  # noqa: F401  (fixture)

NONE = ("--network", "none")
SHOW = "cat /etc/hosts; echo --; cat /etc/resolv.conf; echo --; cat /etc/hostname; hostname"


def _pinned(tmp_path):
    files = {"hosts": "10.1.2.3\tupstream\n", "resolv.conf": "nameserver 10.9.9.9\nsearch pinned\n",
             "hostname": "pinnedname\n"}
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    return files


def test_user_mounts_over_etc_files_win(run_store, tmp_path):
    """All three, through -v (ro) and --mount, on the default (private) network, whose
    set-up rewrites the generated files with the container's address: the user's
    files are what the container reads, and pybuild never writes into them."""
    files = _pinned(tmp_path)
    p = run_store("run", "--rm", "--hostname", "boxname",
                  "-v", f"{tmp_path}/hosts:/etc/hosts:ro",
                  "--mount", f"type=bind,source={tmp_path}/resolv.conf,target=/etc/resolv.conf",
                  "-v", f"{tmp_path}/hostname:/etc//hostname",
                  "busybox", "sh", "-c", SHOW + "; echo x >> /etc/hosts || echo ro")
    assert p.stdout.split("--\n") == [files["hosts"], files["resolv.conf"],
                                      files["hostname"] + "boxname\nro\n"]
    assert "localhost" not in p.stdout and "Read-only file system" in p.stderr
    for name, text in files.items():
        assert (tmp_path / name).read_text() == text
    # the control: without the user's mounts the generated files are there
    p = run_store("run", "--rm", "--hostname", "boxname", "busybox", "sh", "-c", SHOW)
    hosts, resolv, hostname = p.stdout.split("--\n")
    assert "localhost" in hosts and "upstream" not in hosts
    assert "10.9.9.9" not in resolv and hostname == "boxname\nboxname\n"


def test_one_etc_mount_leaves_the_other_generated_files(run_store, tmp_path):
    files = _pinned(tmp_path)
    p = run_store("run", "--rm", *NONE, "--hostname", "boxname",
                  "--mount", f"type=bind,source={tmp_path}/hosts,target=/etc/hosts,readonly",
                  "busybox", "sh", "-c", SHOW)
    hosts, resolv, hostname = p.stdout.split("--\n")
    assert hosts == files["hosts"]
    assert "10.9.9.9" not in resolv and hostname == "boxname\nboxname\n"


def test_volume_over_etc_files(run_store):
    """Any mount type wins: a named volume at /etc/hosts (busybox has none) is that
    directory; over /etc/hostname (a file in busybox) it is a one-line error."""
    p = run_store("run", "--rm", *NONE, "-v", "etcmounts-hosts:/etc/hosts", "busybox",
                  "sh", "-c", "test -d /etc/hosts && echo dir")
    assert p.stdout == "dir\n"
    p = run_store("run", "--rm", *NONE, "-v", "etcmounts-hosts:/etc/hostname", "busybox",
                  "true", check=False)
    assert p.returncode == 125 and len(p.stderr.strip().splitlines()) == 1
    assert 'mount target "/etc/hostname" is not a directory' in p.stderr
    run_store("volume", "rm", "etcmounts-hosts")


def test_v_creates_a_missing_host_dir(run_store, tmp_path):
    """docker's -v: the missing host directory (and its parents) is made 0755 whatever
    the umask, and the container writes into it."""
    target = tmp_path / "made" / "deeper"
    old = os.umask(0o077)
    try:
        run_store("run", "--rm", *NONE, "-v", f"{target}:/x", "busybox",
                  "sh", "-c", "echo written > /x/f")
    finally:
        os.umask(old)
    assert (target / "f").read_text() == "written\n"
    for d in (tmp_path / "made", target):
        st = d.lstat()
        assert stat.S_ISDIR(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o755


def test_v_refuses_to_create_through_a_dangling_link(run_store, tmp_path):
    """Whoever can plant a link where the path is still missing must not pick where root
    makes a directory: a dangling link is an error (docker's MkdirAll fails too)."""
    os.symlink(tmp_path / "elsewhere", tmp_path / "link")
    p = run_store("run", "--rm", *NONE, "-v", f"{tmp_path}/link/sub:/x", "busybox", "true",
                  check=False)
    assert p.returncode == 125
    assert p.stderr.startswith("pybuild: error: ") and len(p.stderr.strip().splitlines()) == 1
    assert "cannot create bind source path" in p.stderr and "dangling symlink" in p.stderr
    assert not (tmp_path / "elsewhere").exists()


def test_mount_bind_missing_source_is_an_error(run_store, tmp_path):
    p = run_store("run", "--rm", *NONE, "--mount",
                  f"type=bind,source={tmp_path}/missing,target=/x", "busybox", "true",
                  check=False)
    assert p.returncode == 125
    assert p.stderr.startswith("pybuild: error: ") and len(p.stderr.strip().splitlines()) == 1
    assert "bind source path" in p.stderr and "does not exist" in p.stderr
    assert not (tmp_path / "missing").exists()


def test_volume_name_creates_no_host_dir(run_store):
    """`-v name:/x` is a named volume: nothing appears in the working directory (the
    CLI runs in the repository)."""
    name = "etcmounts-vol"
    run_store("run", "--rm", *NONE, "-v", f"{name}:/x", "busybox", "true")
    assert name in run_store("volume", "ls", "-q").stdout.split()
    assert not (REPO / name).exists()
    run_store("volume", "rm", name)


def test_save_help_names_the_default_format(run_store):
    text = " ".join(run_store("save", "--help").stdout.split())
    assert "The default format is OCI" in text
    assert "docker save's default is docker-archive" in text and "--format docker" in text
