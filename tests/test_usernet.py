"""The user-mode private network (builder/sandbox/usernet.py, slirp4netns), exercised as root
through PYBUILD_NETWORK_BACKEND=user, as rootless mode would use it.

Everything runs inside a network namespace this test creates (`ip netns add`, pybuild under
`ip netns exec`), so the machine's interfaces are never touched. In it the test plays "the
host": an interface (one end of a veth pair) with 198.51.100.1 (TEST-NET-2, non-loopback) carries a TCP server
(outbound reach) and a DNS responder that `ip netns exec` makes the namespace's resolver
(/etc/netns/<ns>/resolv.conf), and a TCP server on 127.0.0.1 stands for the host's loopback
services the container must not reach. slirp4netns lives in that namespace too: its outbound
sockets are real connects to 198.51.100.1, its DNS forwarder reads that resolv.conf."""

from __future__ import annotations

import glob
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import REPO, require_tool
from test_run_support import run_store  # noqa: F401  (fixture)

HOST_IP = "198.51.100.1"
ANSWER_IP = "198.51.100.7"
OUT_PORT = 7001
LOOP_PORT = 7003
ENV = {"PYBUILD_NETWORK_BACKEND": "user"}

SERVERS = r"""
import socket, sys, threading
def tcp(addr, text):
    s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(addr); s.listen(16)
    def loop():
        while True:
            c, _ = s.accept(); c.sendall(text); c.close()
    threading.Thread(target=loop, daemon=True).start()
tcp((sys.argv[1], int(sys.argv[2])), b"outbound-ok\n")
tcp(("127.0.0.1", int(sys.argv[3])), b"host-loopback\n")
d = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); d.bind((sys.argv[1], 53))
answer = socket.inet_aton(sys.argv[4])
print("ready", flush=True)
while True:
    q, peer = d.recvfrom(512)
    if len(q) < 12:
        continue
    end = 12
    while end < len(q) and q[end]:
        end += 1 + q[end]
    question = q[12:end + 5]
    qtype = q[end + 1:end + 3]
    head = q[:2] + b"\x81\x80" + b"\x00\x01" + (b"\x00\x01" if qtype == b"\x00\x01" else b"\x00\x00") + b"\x00\x00\x00\x00"
    rr = b"\xc0\x0c\x00\x01\x00\x01\x00\x00\x00\x3c\x00\x04" + answer if qtype == b"\x00\x01" else b""
    d.sendto(head + question + rr, peer)
"""


@pytest.fixture(scope="module")
def lab():
    """The namespace, its "host" address, resolver and servers."""
    require_tool("ip")
    require_tool("slirp4netns")
    name = f"pbun{os.getpid()}"
    etc = Path("/etc/netns") / name
    subprocess.run(["ip", "netns", "add", name], check=True)
    server = None
    try:
        for cmd in (["ip", "link", "set", "lo", "up"],
                    ["ip", "link", "add", "host0", "type", "veth", "peer", "name", "host1"],
                    ["ip", "addr", "add", f"{HOST_IP}/24", "dev", "host0"],
                    ["ip", "link", "set", "host0", "up"],
                    ["ip", "link", "set", "host1", "up"]):
            subprocess.run(["ip", "netns", "exec", name, *cmd], check=True)
        etc.mkdir(parents=True)
        (etc / "resolv.conf").write_text(f"nameserver {HOST_IP}\n")
        server = subprocess.Popen(["ip", "netns", "exec", name, sys.executable, "-c", SERVERS,
                                   HOST_IP, str(OUT_PORT), str(LOOP_PORT), ANSWER_IP],
                                  stdout=subprocess.PIPE, text=True)
        assert server.stdout.readline().strip() == "ready"
        yield name
    finally:
        if server is not None:
            server.kill()
            server.wait()
        shutil.rmtree(etc, ignore_errors=True)
        subprocess.run(["ip", "netns", "del", name], check=False)


def pb(store, ns: str, *args: str, check: bool = True, env: dict | None = None,
       timeout: float = 60) -> subprocess.CompletedProcess:
    cmd = ["ip", "netns", "exec", ns, sys.executable, "-m", "builder", "--root", str(store.root),
           *args]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=REPO,
                       env=dict(os.environ, PYTHONPATH=str(REPO), **(env or ENV)))
    if check and p.returncode:
        raise AssertionError(f"{args} exited {p.returncode}: {p.stdout}{p.stderr}")
    return p


def in_ns(ns: str, *argv: str) -> subprocess.CompletedProcess:
    return subprocess.run(["ip", "netns", "exec", ns, *argv], capture_output=True, text=True,
                          timeout=30)


FETCH = ("import socket, sys, time\n"
         "end = time.monotonic() + 10\n"
         "while True:\n"
         "    try:\n"
         "        s = socket.create_connection(('127.0.0.1', int(sys.argv[1])), timeout=3)\n"
         "        data = s.makefile('rb').read(); s.close()\n"
         "        if data or time.monotonic() > end:\n"
         "            break\n"
         "    except OSError:\n"
         "        if time.monotonic() > end:\n"
         "            raise\n"
         "    time.sleep(0.1)\n"
         "sys.stdout.write(data.decode())\n")


def helpers(store) -> dict[int, Path]:
    """slirp4netns processes of this store's containers (pid record -> its directory)."""
    out = {}
    for rec in glob.glob(f"{store.root}/containers/*/sandbox/usernet/helper"):
        try:
            pid = int(Path(rec).read_text().split()[0])
        except (OSError, ValueError, IndexError):
            continue
        out[pid] = Path(rec).parent
    return out


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rpartition(")")[2].split()[0] not in ("Z", "X")
    except OSError:
        return False


def wait_gone(pid: int, seconds: float = 10) -> bool:
    end = time.monotonic() + seconds
    while alive(pid):
        if time.monotonic() > end:
            return False
        time.sleep(0.05)
    return True


def test_outbound_tcp_dns_and_no_host_loopback(run_store, lab):
    script = (f"ip -o -4 addr show eth0; ip -o link show eth0; ip route; cat /etc/resolv.conf;"
              f"echo TCP; nc -w 3 {HOST_IP} {OUT_PORT} </dev/null;"
              f"echo DNS; nslookup probe.example.test;"
              f"echo LOOP; nc -w 2 10.0.2.2 {LOOP_PORT} </dev/null; echo loop-rc=$?")
    out = pb(run_store, lab, "run", "--rm", "busybox", "sh", "-c", script).stdout
    assert "inet 10.0.2.100/24" in out and "mtu 65520" in out
    assert "default via 10.0.2.2 dev eth0" in out
    # the container's only resolver is the user-mode DNS, which forwards to the host's
    resolv = [ln for ln in out.splitlines() if ln.startswith("nameserver")]
    assert resolv == ["nameserver 10.0.2.3"]
    assert out.split("TCP\n")[1].startswith("outbound-ok\n")
    dns = out.split("DNS\n")[1].split("LOOP\n")[0]
    assert ANSWER_IP in dns, out
    # the "host" serves on 127.0.0.1 (the lab's own connect proves it) but the container
    # cannot get there through the gateway: --disable-host-loopback
    probe = in_ns(lab, sys.executable, "-c", FETCH, str(LOOP_PORT))
    assert probe.stdout == "host-loopback\n"
    tail = out.split("LOOP\n")[1]
    assert "host-loopback" not in tail and "loop-rc=0" not in tail
    assert not helpers(run_store)   # the helper went with the container


def test_published_port_answers_and_rm_f_stops_the_helper(run_store, lab):
    port = 18581
    serve = "while true; do echo hello-from-container | nc -l -p 80; done"
    cid = pb(run_store, lab, "run", "-d", "-p", f"127.0.0.1:{port}:80", "-p", f"{port + 2}:81/udp",
             "busybox", "sh", "-c", serve).stdout.strip()
    try:
        got = in_ns(lab, sys.executable, "-c", FETCH, str(port))
        assert got.stdout == "hello-from-container\n", got.stderr
        assert f"127.0.0.1:{port}->80/tcp" in pb(run_store, lab, "ps").stdout
        info = json.loads(pb(run_store, lab, "inspect", cid).stdout)[0]
        assert info["NetworkSettings"]["IPAddress"] == "10.0.2.100"
        # the host side listens on the address asked for, in slirp4netns
        ss = in_ns(lab, "ss", "-Hltnp", f"sport = :{port}").stdout
        assert f"127.0.0.1:{port}" in ss and "slirp4netns" in ss
        # docker's default address for `-p HOSTPORT:CPORT` is 0.0.0.0; udp is published too
        ss = in_ns(lab, "ss", "-Hlunp", f"sport = :{port + 2}").stdout
        assert f"0.0.0.0:{port + 2}" in ss and "slirp4netns" in ss
        found = helpers(run_store)
        assert len(found) == 1
        (pid, where), = found.items()
        assert where == run_store.root / "containers" / cid / "sandbox" / "usernet"
        # everything the helper has open that is a path lies in its directory
        for fd in os.listdir(f"/proc/{pid}/fd"):
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
            if target.startswith("/"):
                assert target.startswith((str(where), "/dev/null", "/dev/net/tun")), target
        assert sorted(os.listdir(where)) == ["api.sock", "helper", "slirp4netns.log"]
        # a second container cannot take the port
        p = pb(run_store, lab, "run", "--rm", "-p", f"127.0.0.1:{port}:80", "busybox", "true",
               check=False)
        assert p.returncode == 125 and str(port) in p.stderr and "in use" in p.stderr
        pb(run_store, lab, "rm", "-f", cid)
        cid = ""
        assert wait_gone(pid, 5)
        assert not where.exists()
    finally:
        if cid:
            pb(run_store, lab, "rm", "-f", cid, check=False)


def test_helper_dies_when_the_monitor_is_killed(run_store, lab):
    cid = pb(run_store, lab, "run", "-d", "-p", "127.0.0.1:18582:80", "busybox",
             "sleep", "60").stdout.strip()
    try:
        (pid, where), = helpers(run_store).items()
        init = json.loads(pb(run_store, lab, "inspect", cid).stdout)[0]["State"]["Pid"]
        with open(f"/proc/{init}/stat") as fh:
            monitor = int(fh.read().rpartition(")")[2].split()[1])
        os.kill(monitor, signal.SIGKILL)
        assert wait_gone(pid), "slirp4netns outlived the container's monitor"
        assert not alive(init)
        # the port is free again (nobody listens)
        assert "18582" not in in_ns(lab, "ss", "-Hltn").stdout
    finally:
        pb(run_store, lab, "rm", "-f", cid, check=False)
    assert not where.exists()


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGKILL])
def test_helper_dies_with_the_caller(run_store, lab, sig):
    """Ctrl-C of a foreground `run` (the container gets it and ends), and SIGKILL of the
    caller (the helper's exit fd closes with it; the monitor cleans up the rest)."""
    cmd = ["ip", "netns", "exec", lab, sys.executable, "-m", "builder", "--root",
           str(run_store.root), "run", "--rm", "busybox", "sh", "-c",
           "trap 'exit 130' INT; sleep 60 & wait"]   # PID 1 takes Ctrl-C only with a handler
    proc = subprocess.Popen(cmd, cwd=REPO, env=dict(os.environ, PYTHONPATH=str(REPO), **ENV),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        end = time.monotonic() + 20
        while not (found := helpers(run_store)):
            assert time.monotonic() < end and proc.poll() is None
            time.sleep(0.05)
        (pid, where), = found.items()
        time.sleep(0.3)   # past the exec of `sh` and its trap
        # `ip netns exec` execs, so proc.pid is pybuild itself
        os.kill(proc.pid, sig)
        proc.wait(timeout=20)
        assert wait_gone(pid)
        end = time.monotonic() + 10
        while where.exists() and time.monotonic() < end:
            time.sleep(0.05)
        assert not where.exists()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    if sig == signal.SIGINT:
        assert proc.returncode == 130


def test_network_none_has_only_loopback_and_no_helper(run_store, lab):
    cid = pb(run_store, lab, "run", "-d", "--network", "none", "busybox", "sleep", "30").stdout.strip()
    try:
        out = pb(run_store, lab, "exec", cid, "sh", "-c", "ls /sys/class/net; ip route").stdout
        assert out.split() == ["lo"]
        assert not (run_store.root / "containers" / cid / "sandbox" / "usernet").exists()
        assert not helpers(run_store)
    finally:
        pb(run_store, lab, "rm", "-f", cid, check=False)


def test_build_run_step_gets_the_user_mode_network(run_store, lab, tmp_path):
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    (ctx / "Dockerfile").write_text(
        "FROM busybox\n"
        f"RUN ip -o -4 addr show eth0 > /addr && nc -w 3 {HOST_IP} {OUT_PORT} </dev/null > /got\n"
        "CMD [\"cat\", \"/addr\", \"/got\"]\n")
    pb(run_store, lab, "build", "--progress", "quiet", "-t", "usernet-built", str(ctx),
       timeout=120)
    out = pb(run_store, lab, "run", "--rm", "--network", "none", "usernet-built").stdout
    assert "10.0.2.100/24" in out and "outbound-ok" in out


def test_backend_override_is_validated_and_rootful_is_not_a_user_namespace(run_store, lab):
    p = pb(run_store, lab, "run", "--rm", "busybox", "true", check=False,
           env={"PYBUILD_NETWORK_BACKEND": "slirpy"})
    assert p.returncode != 0 and "PYBUILD_NETWORK_BACKEND" in p.stderr
    assert "Traceback" not in p.stderr and len(p.stderr.strip().splitlines()) == 1
    probe = "from layerstore.userns import in_user_namespace as f; print(f())"
    env = dict(os.environ, PYTHONPATH=str(REPO))
    assert subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                          env=env).stdout == "False\n"
    assert subprocess.run(["unshare", "--user", "--map-root-user", sys.executable, "-c", probe],
                          capture_output=True, text=True, env=env).stdout == "True\n"


IN_USERNS = r"""
import os, subprocess, sys
from pathlib import Path
from builder.sandbox.netbackend import backend, network_for
from builder.sandbox.netconfig import NetworkConfig
assert backend() == "user", backend()           # auto: rootless mode means user-mode
box = subprocess.Popen(["unshare", "--net", "sleep", "30"])
try:
    import time
    while os.readlink(f"/proc/{box.pid}/ns/net") == os.readlink("/proc/self/ns/net"):
        time.sleep(0.01)
    net = network_for(NetworkConfig(mode="private"), "userns-probe", Path(sys.argv[1]))
    print("ip", net.attach(box.pid))
    pid = int((Path(sys.argv[1]) / "usernet" / "helper").read_text().split()[0])
    print(subprocess.run(["nsenter", f"--net=/proc/{box.pid}/ns/net", "ip", "-o", "-4", "addr",
                          "show", "eth0"], capture_output=True, text=True).stdout.strip())
    net.teardown()
    print("helper-alive", os.path.exists(f"/proc/{pid}"))
finally:
    box.kill()
"""


def test_auto_picks_user_mode_in_a_user_namespace_and_it_works_there(tmp_path):
    """As rootless mode runs: root only in a user namespace that does not own the host's
    network namespace (no veth or bridge possible there)."""
    require_tool("slirp4netns")
    state = tmp_path / "state"
    state.mkdir()
    p = subprocess.run(["unshare", "--user", "--map-root-user", sys.executable, "-c", IN_USERNS,
                        str(state)], capture_output=True, text=True, timeout=60,
                       env=dict(os.environ, PYTHONPATH=str(REPO)), cwd=REPO)
    assert p.returncode == 0, p.stderr
    assert "ip 10.0.2.100" in p.stdout and "inet 10.0.2.100/24" in p.stdout
    assert "helper-alive False" in p.stdout
    assert os.listdir(state) == []


def test_container_with_its_own_user_namespace_reaches_out(lab, busybox_rootfs):
    """A container whose network namespace belongs to its own (nested) user namespace:
    slirp4netns still joins it (the sandbox's own temporary state dir: the container's root
    must be able to reach the mount point there)."""
    script = (
        "import sys\n"
        "from pathlib import Path\n"
        "from builder.sandbox import DirRoot, NetworkConfig, SandboxSpec, UserNamespace, run\n"
        "r = run(SandboxSpec(root=DirRoot(Path(sys.argv[1]), readonly=True), stdio='pipe',\n"
        "        argv=['/bin/sh', '-c', sys.argv[2]], timeout=20, userns=UserNamespace(),\n"
        "        network=NetworkConfig(mode='private')))\n"
        "sys.stdout.write(r.stdout.decode()); sys.exit(r.exit_code)\n")
    cmd = (f"cat /proc/self/uid_map; ip -o -4 addr show eth0; "
           f"nc -w 3 {HOST_IP} {OUT_PORT} </dev/null")
    p = subprocess.run(["ip", "netns", "exec", lab, sys.executable, "-c", script,
                        str(busybox_rootfs), cmd], capture_output=True, text=True,
                       timeout=60, cwd=REPO, env=dict(os.environ, PYTHONPATH=str(REPO), **ENV))
    assert p.returncode == 0, p.stderr
    assert p.stdout.split()[:3] == ["0", "100000", "65536"]
    assert "inet 10.0.2.100/24" in p.stdout and "outbound-ok" in p.stdout
