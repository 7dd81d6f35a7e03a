"""docker's `run` flags that reach host resources, each seen from inside the container:
--add-host, --dns*, --device, --ipc/--pid/--uts, --cidfile, --label-file, --sysctl,
--shm-size, --group-add; and `build --add-host/--shm-size` in a RUN step (and its key).
Hostile values (a sysctl key that climbs out of /proc/sys, a device that is a symlink or
a regular file) are one-line errors that create nothing."""

from __future__ import annotations

import json
import os
import re
import socket
import stat
import time

import pytest

from builder.runner.errors import RunError
from builder.runner.options import build_options, parse_add_host, parse_label_file
from builder.sandbox import SandboxError, sysctls
from test_run_support import host_resources, run_store  # noqa: F401  (fixture)

NONE = ("--network", "none")


@pytest.fixture(autouse=True)
def leaves_nothing(run_store):
    """Every test's containers are --rm or removed by it: nothing may be left. (Only what
    names this store is compared: cgroups and veths are counted host-wide, where other
    test runs come and go.)"""
    root = run_store.root

    def ours() -> dict:
        r = host_resources(root)
        return {k: r[k] for k in ("mounts", "processes", "files")}
    before = ours()
    yield
    deadline = time.monotonic() + 3
    while (now := ours()) != before and time.monotonic() < deadline:
        time.sleep(0.05)
    assert now == before


def _one_line_error(p, pattern: str) -> None:
    assert p.returncode == 125, p
    assert re.fullmatch(rf"pybuild: error: [^\n]*{pattern}[^\n]*\n", p.stderr), p.stderr
    assert "Traceback" not in p.stderr


# --- /etc/hosts and resolv.conf ---------------------------------------------------------

def test_add_host_lines(run_store):
    p = run_store("run", "--rm", "--add-host=docker:93.184.216.34", "--add-host", "v6:[::1]",
                  "--add-host", "eq=10.1.2.3", "--add-host", "gw:host-gateway",
                  "busybox", "cat", "/etc/hosts")
    lines = p.stdout.splitlines()
    for line in ("93.184.216.34\tdocker", "::1\tv6", "10.1.2.3\teq", "10.89.0.1\tgw"):
        assert line in lines
    assert lines[0] == "127.0.0.1\tlocalhost"
    # host-gateway on a network without a bridge is still docker's bridge address
    p = run_store("run", "--rm", *NONE, "--add-host", "gw:host-gateway", "busybox",
                  "cat", "/etc/hosts")
    assert "10.89.0.1\tgw" in p.stdout.splitlines()


def test_add_host_bad_values_are_one_line_errors(run_store):
    for bad in ("noaddress", "x:300.1.1.1", ":1.2.3.4", "x:[zz::1]"):
        _one_line_error(run_store("run", "--rm", "--add-host", bad, "busybox", "true",
                                  check=False), "--add-host")
    assert parse_add_host("a:[fe80::1]") == ("a", "fe80::1")
    assert parse_add_host("a=::1") == ("a", "::1")


def test_dns_flags_write_resolv_conf(run_store):
    p = run_store("run", "--rm", "--dns=10.0.0.1", "--dns", "10.0.0.2", "--dns-search",
                  "example.com", "--dns-option", "ndots:2", "busybox", "cat", "/etc/resolv.conf")
    lines = p.stdout.splitlines()
    assert [ln for ln in lines if ln.startswith("nameserver")] == ["nameserver 10.0.0.1",
                                                                   "nameserver 10.0.0.2"]
    assert "search example.com" in lines and "options ndots:2" in lines
    _one_line_error(run_store("run", "--rm", "--dns", "not-an-ip", "busybox", "true",
                              check=False), "--dns")


# --- devices -------------------------------------------------------------------------------

def test_device_node_readable_with_host_numbers(run_store, tmp_path):
    p = run_store("run", "--rm", *NONE, "--device", "/dev/zero:/dev/myzero", "busybox", "sh",
                  "-c", "stat -c '%F %t:%T' /dev/myzero; head -c 4 /dev/myzero | od -An -tx1")
    assert p.stdout.split("\n")[:2] == ["character special file 1:5", " 00 00 00 00"]


def test_device_cgroup_allows_just_the_given_device(run_store, tmp_path):
    """A block device no default rule allows (a loop node of our own, 7:0): denied without
    --device, readable with it, and with :r not writable."""
    node = tmp_path / "loopnode"
    os.mknod(node, stat.S_IFBLK | 0o600, os.makedev(7, 0))
    script = ("head -c 1 /dev/l >/dev/null && echo read; "
              "(exec 3>/dev/l) 2>/dev/null && echo wrote; true")
    p = run_store("run", "--rm", *NONE, "--device", f"{node}:/dev/l:r", "busybox", "sh", "-c",
                  "stat -c '%F %t:%T' /dev/l; " + script)
    assert p.stdout.splitlines() == ["block special file 7:0", "read"]
    p = run_store("run", "--rm", *NONE, "--device", f"{node}:/dev/l", "busybox", "sh", "-c",
                  script)
    assert p.stdout.splitlines() == ["read", "wrote"]
    p = run_store("run", "--rm", *NONE, "busybox", "sh", "-c", "mknod /dev/l b 7 0; " + script)
    assert p.stdout == ""


def test_device_that_is_not_a_device_is_refused(run_store, tmp_path):
    """A regular file and a symlink (even to a device): refused before anything is made."""
    regular = tmp_path / "plain"
    regular.write_text("x")
    link = tmp_path / "link"
    link.symlink_to("/dev/zero")
    for path, why in ((regular, "not a device node"), (link, "a symbolic link"),
                      (tmp_path / "missing", "No such file")):
        _one_line_error(run_store("run", "--rm", "--device", str(path), "busybox", "true",
                                  check=False), why)
    _one_line_error(run_store("run", "--rm", "--device", "/dev/zero:relative", "busybox", "true",
                              check=False), "absolute")


# --- namespaces ---------------------------------------------------------------------------

def test_pid_host_shows_host_processes_and_kills_strays(run_store):
    with open("/proc/1/comm") as f:
        host_init = f.read().strip()
    p = run_store("run", "--rm", *NONE, "--pid", "host", "busybox", "sh", "-c",
                  "cat /proc/1/comm; sleep 1000 >/dev/null 2>&1 & echo $!")
    comm, stray = p.stdout.split()
    assert comm == host_init and comm not in ("sh", "cat")
    # the stray's pid is a host pid here: it died with the container's cgroup
    deadline = time.monotonic() + 3
    while os.path.exists(f"/proc/{stray}") and time.monotonic() < deadline:
        time.sleep(0.05)
    try:
        with open(f"/proc/{stray}/comm") as f:
            assert f.read().strip() != "sleep"
    except FileNotFoundError:
        pass
    p = run_store("run", "--rm", *NONE, "busybox", "cat", "/proc/1/comm")
    assert p.stdout.strip() == "cat"


def test_exec_into_host_namespaces(run_store):
    """`exec` joins a container that shares the host's PID, UTS and IPC namespaces (its
    command's parent is then visible, which the joiner must not take for a death)."""
    run_store("run", "-d", "--name", "hostns-exec", *NONE, "--pid", "host", "--uts", "host",
              "--ipc", "host", "busybox", "sleep", "60")
    try:
        p = run_store("exec", "hostns-exec", "sh", "-c", "hostname; cat /proc/1/comm")
        with open("/proc/1/comm") as f:
            assert p.stdout.splitlines() == [socket.gethostname(), f.read().strip()]
    finally:
        run_store("rm", "-f", "hostns-exec")


def test_uts_host_has_the_host_name_and_cannot_set_one(run_store):
    host = socket.gethostname()
    p = run_store("run", "--rm", *NONE, "--uts", "host", "busybox", "sh", "-c",
                  "hostname; cat /etc/hostname; hostname renamed 2>&1 || echo refused")
    assert p.stdout.splitlines()[:2] == [host, host] and "refused" in p.stdout
    assert socket.gethostname() == host
    _one_line_error(run_store("run", "--rm", "--uts", "host", "-h", "x", "busybox", "true",
                              check=False), "--hostname and --uts host")


def test_ipc_modes(run_store):
    name = f"pybuild-test-{os.getpid()}"
    with open(f"/dev/shm/{name}", "w") as f:
        f.write("host")
    try:
        p = run_store("run", "--rm", *NONE, "--ipc", "host", "busybox", "cat", f"/dev/shm/{name}")
        assert p.stdout == "host"
        p = run_store("run", "--rm", *NONE, "busybox", "ls", "/dev/shm")
        assert name not in p.stdout
    finally:
        os.unlink(f"/dev/shm/{name}")
    p = run_store("run", "--rm", *NONE, "--ipc", "none", "busybox", "sh", "-c",
                  "test -e /dev/shm && echo shm || echo noshm")
    assert p.stdout == "noshm\n"
    _one_line_error(run_store("run", "--rm", "--ipc", "container:x", "busybox", "true",
                              check=False), "--ipc")


# --- cidfile and label-file ------------------------------------------------------------------

def test_cidfile_holds_the_full_id_and_is_never_overwritten(run_store, tmp_path):
    cid = tmp_path / "cid"
    run_store("run", "--name", "cidfile-test", "--cidfile", cid, *NONE, "busybox", "true")
    try:
        text = cid.read_text()
        assert re.fullmatch(r"[0-9a-f]{64}", text)
        assert json.loads(run_store("inspect", "cidfile-test").stdout)[0]["Id"] == text
        count = len(run_store("ps", "-aq").stdout.split())
        p = run_store("run", "--rm", "--cidfile", cid, "busybox", "true", check=False)
        _one_line_error(p, "container ID file found")
        assert cid.read_text() == text
        assert len(run_store("ps", "-aq").stdout.split()) == count
        assert [f.name for f in tmp_path.iterdir()] == ["cid"]   # no temporary left
    finally:
        run_store("rm", "-f", "cidfile-test")


def test_label_file_labels_in_inspect(run_store, tmp_path):
    lf = tmp_path / "labels"
    lf.write_text("# a comment\ncom.example.a=1\n\n  com.example.b=two words\ncom.example.c=x\n")
    run_store("run", "--name", "labelfile-test", "--label-file", lf, "-l", "com.example.c=flag",
              *NONE, "busybox", "true")
    try:
        labels = json.loads(run_store("inspect", "labelfile-test").stdout)[0]["Config"]["Labels"]
        assert {k: v for k, v in labels.items() if k.startswith("com.example.")} == \
            {"com.example.a": "1", "com.example.b": "two words", "com.example.c": "flag"}
    finally:
        run_store("rm", "-f", "labelfile-test")
    assert parse_label_file(lf)[0] == "com.example.a=1"
    _one_line_error(run_store("run", "--rm", "--label-file", tmp_path / "nope", "busybox",
                              "true", check=False), "--label-file")


def test_inspect_host_config(run_store):
    run_store("run", "--name", "hostconfig-test", *NONE, "--add-host", "a:[::1]", "--dns",
              "10.0.0.1", "--device", "/dev/zero:/dev/z:r", "--ipc", "none", "--sysctl",
              "kernel.shmmax=1048576", "--shm-size", "1g", "--group-add", "29", "busybox", "true")
    try:
        hc = json.loads(run_store("inspect", "hostconfig-test").stdout)[0]["HostConfig"]
    finally:
        run_store("rm", "-f", "hostconfig-test")
    assert hc["ExtraHosts"] == ["a:::1"] and hc["Dns"] == ["10.0.0.1"]
    assert hc["Devices"] == [{"PathOnHost": "/dev/zero", "PathInContainer": "/dev/z",
                              "CgroupPermissions": "r"}]
    assert (hc["IpcMode"], hc["PidMode"], hc["UTSMode"]) == ("none", "", "")
    assert hc["Sysctls"] == {"kernel.shmmax": "1048576"} and hc["ShmSize"] == 1 << 30
    assert hc["GroupAdd"] == ["29"] and hc["NetworkMode"] == "none"


# --- sysctl -----------------------------------------------------------------------------------

def test_sysctl_values_read_back(run_store):
    with open("/proc/sys/net/ipv4/ip_forward") as f:
        host_forward = f.read()
    p = run_store("run", "--rm", "--sysctl", "net.ipv4.ip_forward=1", "--sysctl",
                  "kernel.shmmax=1048576", "--sysctl", "net/ipv4/conf/eth0/rp_filter=2",
                  "busybox", "sh", "-c",
                  "cat /proc/sys/net/ipv4/ip_forward /proc/sys/kernel/shmmax "
                  "/proc/sys/net/ipv4/conf/eth0/rp_filter; sysctl net.ipv4.ip_forward")
    assert p.stdout.splitlines() == ["1", "1048576", "2", "net.ipv4.ip_forward = 1"]
    with open("/proc/sys/net/ipv4/ip_forward") as f:
        assert f.read() == host_forward


def test_sysctl_not_namespaced_or_escaping_is_refused(run_store):
    with open("/proc/sys/kernel/core_pattern") as f:
        core = f.read()
    for value, why in (("vm.swappiness=10", "not in a separate kernel namespace"),
                       ("kernel.hostname=x", "use --hostname"),
                       ("net/ipv4/../../kernel/core_pattern=|/tmp/x", "not a sysctl name"),
                       ("net.ipv4.ip_forward/../../../kernel/core_pattern=x", "not a sysctl name"),
                       ("../../../etc/passwd=x", "not a sysctl name"),
                       ("net.ipv4.ip_forward", "KEY=VALUE")):
        _one_line_error(run_store("run", "--rm", "--sysctl", value, "busybox", "true",
                                  check=False), why)
    _one_line_error(run_store("run", "--rm", "--network", "host", "--sysctl",
                              "net.ipv4.ip_forward=1", "busybox", "true", check=False),
                    "host's network namespace")
    _one_line_error(run_store("run", "--rm", "--ipc", "host", "--sysctl", "kernel.shmmax=1",
                              "busybox", "true", check=False), "host's IPC namespace")
    with open("/proc/sys/kernel/core_pattern") as f:
        assert f.read() == core


def test_sysctl_checks_in_the_sandbox_itself():
    """The sandbox spec refuses what the CLI refuses (a caller other than `run`)."""
    assert sysctls.check("net.ipv4.conf.all.forwarding", "1", "private", "private",
                         "private") == ["net", "ipv4", "conf", "all", "forwarding"]
    assert sysctls.components("net/ipv4/conf/eth0.100/forwarding")[3] == "eth0.100"
    for key in ("kernel.core_pattern", "net..x", "net/./x", "net/ipv4/..", "a", "net.\0x"):
        with pytest.raises(SandboxError):
            sysctls.check(key, "1", "private", "private", "private")
    with pytest.raises(SandboxError, match="one line"):
        sysctls.check("net.ipv4.ip_forward", "1\n2", "private", "private", "private")
    with pytest.raises(RunError):
        build_options("busybox", [], sysctl=("fs.mqueue.msg_max=10",), ipc="host")


def test_sandbox_spec_refuses_bad_host_options(busybox_rootfs):
    from builder.sandbox import DeviceNode, DirRoot, SandboxSpec, UserNamespace

    def spec(**kw):
        return SandboxSpec(root=DirRoot(busybox_rootfs), argv=["true"], **kw)
    for kw, why in ((dict(ipc="shareable"), "ipc mode"), (dict(pid="none"), "pid mode"),
                    (dict(uts="host", hostname="x"), "hostname"),
                    (dict(pid="host", userns=UserNamespace()), "user-namespaced"),
                    (dict(devices=[DeviceNode("/dev/x", "c", 1, 3, access="rwx")]), "device"),
                    (dict(devices=[DeviceNode("rel", "c", 1, 3)]), "device"),
                    (dict(extra_hosts=[("a b", "1.2.3.4")]), "extra host"),
                    (dict(dns=["1.1.1.1 x"]), "DNS"),
                    (dict(sysctls={"kernel.core_pattern": "x"}), "separate kernel namespace"),
                    (dict(shm_size=0), "shm size")):
        with pytest.raises(SandboxError, match=why):
            spec(**kw).validate()
    spec(ipc="none", pid="host", uts="host", sysctls={"net.ipv4.ip_forward": "1"}).validate()


# --- /dev/shm and groups ----------------------------------------------------------------------

def test_shm_size(run_store):
    p = run_store("run", "--rm", *NONE, "--shm-size=128m", "busybox", "df", "-k", "/dev/shm")
    assert p.stdout.splitlines()[1].split()[1] == "131072"
    p = run_store("run", "--rm", *NONE, "busybox", "df", "-k", "/dev/shm")
    assert p.stdout.splitlines()[1].split()[1] == "65536"      # docker's default 64m
    _one_line_error(run_store("run", "--rm", "--shm-size", "lots", "busybox", "true",
                              check=False), "--shm-size")


def test_group_add(run_store):
    p = run_store("run", "--rm", *NONE, "--group-add", "29", "--group-add", "wheel", "-u",
                  "user", "busybox", "id", "-G")
    assert sorted(map(int, p.stdout.split())) == [10, 29, 100, 1000]
    p = run_store("run", "--rm", *NONE, "--group-add", "nosuchgroup", "busybox", "true",
                  check=False)
    _one_line_error(p, "nosuchgroup")
    # as docker's, an exec'd process has the container's extra groups too
    run_store("run", "-d", "--name", "groupadd-exec", *NONE, "--group-add", "29", "busybox",
              "sleep", "60")
    try:
        p = run_store("exec", "groupadd-exec", "id", "-G")
        assert sorted(map(int, p.stdout.split())) == [0, 29]
    finally:
        run_store("rm", "-f", "groupadd-exec")


# --- build --add-host / --shm-size ---------------------------------------------------------

def test_build_add_host_and_shm_size_in_run_and_key(run_store, tmp_path):
    (tmp_path / "Dockerfile").write_text(
        "FROM busybox\nRUN (grep upstream /etc/hosts || true) > /hosts.txt && "
        "df -k /dev/shm | tail -1 > /shm.txt\n")
    flags = ("--add-host", "upstream:10.180.0.1", "--shm-size", "128m")

    def build(*extra):
        return run_store("build", "--progress", "plain", *extra, "-t", "runflags-build",
                         tmp_path).stderr
    build(*flags)
    p = run_store("run", "--rm", *NONE, "runflags-build", "cat", "/hosts.txt", "/shm.txt")
    hosts, shm = p.stdout.splitlines()
    assert hosts == "10.180.0.1\tupstream" and shm.split()[1] == "131072"
    assert "1 cached" in build(*flags)
    # another address, another size, or none: another key (as BuildKit's ExecOp digest)
    assert "0 cached" in build("--add-host", "upstream:10.180.0.2", "--shm-size", "128m")
    assert "0 cached" in build("--add-host", "upstream:10.180.0.1")
    assert "0 cached" in build()
    p = run_store("build", "--add-host", "bad", tmp_path, check=False)
    assert p.returncode != 0 and "--add-host" in p.stderr and "Traceback" not in p.stderr
    run_store("rmi", "runflags-build")
