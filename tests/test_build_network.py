"""The network of a build's RUN steps (issue 11, finding 4).

A RUN step used to run in the host's network namespace with CAP_NET_RAW: it could sniff
the host's loopback traffic (AF_PACKET) and reach every service bound to 127.0.0.1.
Now the default is a private namespace per step on a bridge with NAT to the outside, as
docker build's; `--network none` as before; the host's network only when asked twice
(`--network host` or `RUN --network=host`, plus `--allow network.host`).

Every build here runs inside a lab this test makes: a "host" network namespace (where
pybuild runs and puts its bridge, veths and iptables rules) joined by a veth to an
"outside" namespace (192.0.2.0/24, TEST-NET-1) that has no route to the containers'
subnet, so a reply reaches a RUN step only through NAT. The machine's own interfaces,
routes and firewall are never touched, and both namespaces go on every exit path.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from buildpeer import import_busybox, processes_matching
from conftest import REPO, require_tool

HOST_ADDR, OUTSIDE_ADDR = "192.0.2.1", "192.0.2.2"

# `serve ADDR PORT`: a TCP server that prints "ready", then for each client writes
# "hello <client address>" to it and "conn <client address>" to stdout.
SERVER = r'''
import socket, sys
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((sys.argv[1], int(sys.argv[2])))
s.listen(8)
print("ready", flush=True)
while True:
    c, peer = s.accept()
    print("conn", peer[0], flush=True)
    c.sendall(f"hello {peer[0]}\n".encode())
    c.close()
'''

# A DNS server for one name: mirror.test -> 192.0.2.80 (A); anything else: no answer.
DNS = r'''
import socket, struct
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("0.0.0.0", 53))
print("ready", flush=True)
while True:
    q, peer = s.recvfrom(512)
    pos, labels = 12, []
    while q[pos]:
        labels.append(q[pos + 1:pos + 1 + q[pos]].decode().lower())
        pos += 1 + q[pos]
    qtype = struct.unpack("!H", q[pos + 1:pos + 3])[0]
    question = q[12:pos + 5]
    hit = labels == ["mirror", "test"] and qtype == 1
    answer = struct.pack("!HHHIH4s", 0xC00C, 1, 1, 60, 4, socket.inet_aton("192.0.2.80")) if hit else b""
    rcode = 0 if labels == ["mirror", "test"] else 3
    s.sendto(q[:2] + struct.pack("!HHHHH", 0x8180 | rcode, 1, int(hit), 0, 0) + question + answer, peer)
    print("query", ".".join(labels), qtype, peer[0], flush=True)
'''


def sh(*argv: str, check: bool = True, input: str | None = None) -> str:
    p = subprocess.run(argv, capture_output=True, text=True, input=input, timeout=60)
    if check and p.returncode:
        raise AssertionError(f"{' '.join(argv)} exited {p.returncode}: {p.stdout}{p.stderr}")
    return p.stdout


@dataclass
class Lab:
    host: str
    outside: str
    root: Path
    servers: list[subprocess.Popen]

    def pybuild(self, *args: str, check: bool = True,
                timeout: float = 120) -> subprocess.CompletedProcess:
        """`pybuild --root ROOT ...` inside the lab's host namespace."""
        p = subprocess.run(["ip", "netns", "exec", self.host, sys.executable, "-m", "builder",
                            "--root", str(self.root), *map(str, args)],
                           capture_output=True, text=True, timeout=timeout, cwd=REPO,
                           env=dict(os.environ, PYTHONPATH=str(REPO)))
        if check and p.returncode:
            raise AssertionError(f"pybuild {' '.join(map(str, args))} exited {p.returncode}:\n"
                                 f"{p.stdout}\n{p.stderr}")
        return p

    def serve(self, ns: str, code: str, *args: str) -> subprocess.Popen:
        proc = subprocess.Popen(["ip", "netns", "exec", ns, sys.executable, "-c", code, *args],
                                stdout=subprocess.PIPE, text=True)
        self.servers.append(proc)
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
        return proc

    def stop(self, proc: subprocess.Popen) -> list[str]:
        """Stop a server; the lines it printed after "ready"."""
        proc.kill()
        out, _ = proc.communicate(timeout=10)
        return out.split("\n")[:-1] if out else []

    def residue(self) -> dict[str, list[str]]:
        """What of ours is in the lab's host namespace: links, iptables lines, processes."""
        links = [line.split(":")[1].strip().split("@")[0]
                 for line in sh("ip", "-n", self.host, "-o", "link").splitlines()]
        rules = [line for line in sh("ip", "netns", "exec", self.host, "iptables-save").splitlines()
                 if "pybuild" in line.lower()]
        return {"links": [l for l in links if l.startswith(("pbv", "pbh", "pybuild"))],
                "rules": rules, "processes": processes_matching(str(self.root))}


@pytest.fixture
def lab(pybuild, busybox_rootfs, tmp_path) -> Iterator[Lab]:
    for tool in ("ip", "iptables", "busybox"):
        require_tool(tool)
    import_busybox(pybuild, busybox_rootfs, tmp_path)
    tag = uuid.uuid4().hex[:8]
    lab = Lab(f"pbbuild-{tag}", f"pbbuild-{tag}-out", pybuild.root, [])
    etc = Path("/etc/netns") / lab.host
    try:
        sh("ip", "netns", "add", lab.host)
        sh("ip", "netns", "add", lab.outside)
        sh("ip", "-n", lab.host, "-batch", "-", input="\n".join([
            "link set lo up",
            f"link add up0 type veth peer name eth0 netns {lab.outside}",
            f"addr add {HOST_ADDR}/24 dev up0",
            "link set up0 up",
            f"route add default via {OUTSIDE_ADDR}", ""]))
        sh("ip", "-n", lab.outside, "-batch", "-", input="\n".join([
            "link set lo up", f"addr add {OUTSIDE_ADDR}/24 dev eth0", "link set eth0 up", ""]))
        # `ip netns exec` shows these files as /etc/*: the lab's resolver is outside
        etc.mkdir(parents=True)
        (etc / "resolv.conf").write_text(f"nameserver {OUTSIDE_ADDR}\n")
        yield lab
    finally:
        for proc in lab.servers:
            proc.kill()
            proc.wait()
        for ns in (lab.outside, lab.host):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)
        for f in etc.glob("*"):
            f.unlink()
        if etc.is_dir():
            etc.rmdir()
    assert lab.host not in sh("ip", "netns", "list")


def context(tmp_path: Path, dockerfile: str, name: str = "ctx") -> Path:
    ctx = tmp_path / name
    ctx.mkdir()
    (ctx / "Dockerfile").write_text(dockerfile)
    return ctx


def exported(lab: Lab, tmp_path: Path, ctx: Path, *args: str) -> Path:
    """Build `ctx` in the lab and export its rootfs; returns that directory."""
    out = tmp_path / f"out-{uuid.uuid4().hex[:6]}"
    lab.pybuild("build", "--progress", "plain", "-o", f"type=local,dest={out}", *args, ctx)
    return out


def no_residue(lab: Lab, wait: float = 0) -> dict[str, list[str]]:
    deadline = time.monotonic() + wait
    while True:
        left = lab.residue()
        if not any(left.values()) or time.monotonic() >= deadline:
            return left
        time.sleep(0.1)


# ---- a) + b): the host's loopback and namespace are out of reach --------------------------

def test_default_run_cannot_reach_host_loopback_and_has_its_own_namespace(lab, tmp_path):
    server = lab.serve(lab.host, SERVER, "127.0.0.1", "18411")
    host_ns = os.stat(f"/run/netns/{lab.host}").st_ino
    ctx = context(tmp_path, "FROM busybox\n"
                  # the host's 127.0.0.1:18411 answers "hello"; our own loopback refuses
                  "RUN (nc -w 3 127.0.0.1 18411 </dev/null || echo refused) > /loopback\n"
                  "RUN readlink /proc/self/ns/net > /netns && ls /sys/class/net > /links"
                  " && ip -4 -o addr show > /addrs\n"
                  "RUN --network=none ls /sys/class/net > /links-none\n")
    out = exported(lab, tmp_path, ctx)
    assert (out / "loopback").read_text() == "refused\n"
    assert lab.stop(server) == []           # nothing of the build ever connected
    netns = (out / "netns").read_text().strip()
    assert netns.startswith("net:[") and netns != f"net:[{host_ns}]"
    # only its own loopback and its end of the veth: no host interface to sniff on
    assert (out / "links").read_text().split() == ["eth0", "lo"]
    assert " inet 10.89.0." in (out / "addrs").read_text()
    assert (out / "links-none").read_text().split() == ["lo"]
    assert not any(no_residue(lab).values())


# ---- c): outbound NAT and DNS -------------------------------------------------------------

def test_default_run_reaches_the_outside_through_nat_and_resolves_names(lab, tmp_path):
    server = lab.serve(lab.outside, SERVER, OUTSIDE_ADDR, "18412")
    dns = lab.serve(lab.outside, DNS)
    ctx = context(tmp_path, "FROM busybox\n"
                  f"RUN nc -w 5 {OUTSIDE_ADDR} 18412 </dev/null > /reply"
                  " && ip -4 -o addr show eth0 > /addr && cat /etc/resolv.conf > /resolv"
                  " && nslookup mirror.test > /lookup\n")
    out = exported(lab, tmp_path, ctx)
    own = (out / "addr").read_text().split()[3].split("/")[0]
    assert own.startswith("10.89.0.")
    # the outside has no route to 10.89.0.0/24: it saw (and answered) the host's address
    assert (out / "reply").read_text() == f"hello {HOST_ADDR}\n"
    assert lab.stop(server) == [f"conn {HOST_ADDR}"]
    assert f"nameserver {OUTSIDE_ADDR}" in (out / "resolv").read_text()
    assert "192.0.2.80" in (out / "lookup").read_text()
    assert any(line.startswith(f"query mirror.test 1 {HOST_ADDR}") for line in lab.stop(dns))
    assert not any(no_residue(lab).values())


# ---- d): the host's network is an entitlement ---------------------------------------------

def test_host_network_needs_allow_network_host_and_is_refused_before_any_step(lab, tmp_path):
    server = lab.serve(lab.host, SERVER, "127.0.0.1", "18413")
    plain = context(tmp_path, "FROM busybox\nRUN echo STEP-RAN\n"
                    "RUN (nc -w 3 127.0.0.1 18413 </dev/null || echo refused) > /loopback\n")
    p = lab.pybuild("build", "--progress", "plain", "--network", "host", plain, check=False)
    assert p.returncode != 0 and "STEP-RAN" not in p.stdout + p.stderr
    assert "network.host is not allowed" in p.stderr and "--allow network.host" in p.stderr
    assert p.stderr.count("\n") == 1 and "Traceback" not in p.stderr
    # RUN --network=host in a later step refuses the whole build before the first step
    flagged = context(tmp_path, "FROM busybox\nRUN echo STEP-RAN\n"
                      "RUN --network=host (nc -w 3 127.0.0.1 18413 </dev/null || echo refused)"
                      " > /loopback\n", "flagged")
    p = lab.pybuild("build", "--progress", "plain", flagged, check=False)
    assert p.returncode != 0 and "STEP-RAN" not in p.stdout + p.stderr
    assert "network.host is not allowed" in p.stderr and "Dockerfile:3" in p.stderr
    assert lab.stop(server) == []
    # asked twice: the step is on the host's network and reaches its loopback
    server = lab.serve(lab.host, SERVER, "127.0.0.1", "18413")
    out = exported(lab, tmp_path, plain, "--network", "host", "--allow", "network.host")
    assert (out / "loopback").read_text() == "hello 127.0.0.1\n"
    out = exported(lab, tmp_path, flagged, "--allow", "network.host")
    assert (out / "loopback").read_text() == "hello 127.0.0.1\n"
    assert lab.stop(server) == ["conn 127.0.0.1"] * 2
    # into the store (the build memo records it) then again without --allow: still refused
    lab.pybuild("build", "-t", "flagged", "--allow", "network.host", flagged)
    p = lab.pybuild("build", "-t", "flagged", flagged, check=False)
    assert p.returncode != 0 and "network.host is not allowed" in p.stderr
    assert not any(no_residue(lab).values())


@pytest.mark.parametrize("allow, words", [
    ("security.insecure", "not supported"),
    ("network.hots", "invalid entitlement"),
    ("network.host,device", "invalid entitlement"),
])
def test_allow_rejects_what_it_cannot_grant(lab, tmp_path, allow, words):
    ctx = context(tmp_path, "FROM busybox\nRUN echo STEP-RAN\n")
    p = lab.pybuild("build", "--progress", "plain", "--allow", allow, ctx, check=False)
    assert p.returncode != 0 and "STEP-RAN" not in p.stdout + p.stderr
    assert words in p.stderr and p.stderr.startswith("pybuild: error: --allow")


# ---- e): nothing of the network outlives the build ----------------------------------------

def test_no_network_residue_after_success_failure_and_sigkill(lab, tmp_path):
    ok = context(tmp_path, "FROM busybox\nRUN ls /sys/class/net > /a\nRUN ls /sys/class/net > /b\n"
                 "RUN --network=none true\nRUN ls /sys/class/net > /c\n")
    out = exported(lab, tmp_path, ok)
    assert [(out / f).read_text().split() for f in "abc"] == [["eth0", "lo"]] * 3
    assert no_residue(lab) == {"links": [], "rules": [], "processes": []}
    failing = context(tmp_path, "FROM busybox\nRUN ls /sys/class/net\nRUN false\n", "failing")
    p = lab.pybuild("build", "--progress", "plain", failing, check=False)
    assert p.returncode != 0 and "eth0" in p.stdout + p.stderr
    assert no_residue(lab) == {"links": [], "rules": [], "processes": []}
    # SIGKILL while a RUN step runs: its monitor and the bridge keeper clean up
    slow = context(tmp_path, "FROM busybox\nRUN true\nRUN sleep 60\n", "slow")
    proc = subprocess.Popen(["ip", "netns", "exec", lab.host, sys.executable, "-m", "builder",
                             "--root", str(lab.root), "build", "--progress", "plain", slow],
                            cwd=REPO, env=dict(os.environ, PYTHONPATH=str(REPO)),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while not any(l.startswith("pbv") for l in lab.residue()["links"]):
            assert proc.poll() is None and time.monotonic() < deadline, "no RUN on a bridge"
            time.sleep(0.05)
        during = lab.residue()
        time.sleep(0.3)   # into `sleep 60`
    finally:
        proc.kill()
        proc.wait()
    assert "pybuild0" in during["links"] and any(l.startswith("pbh") for l in during["links"])
    assert during["rules"]
    assert no_residue(lab, wait=15) == {"links": [], "rules": [], "processes": []}


def _build_cgroups() -> set[str]:
    """Every cgroup directory a RUN step's sandbox made (pybuild-build-*), in any hierarchy."""
    out = set()
    for top in Path("/sys/fs/cgroup").iterdir():
        if top.is_dir() and not top.is_symlink():
            out.update(str(d) for d in top.glob("pybuild-build-*"))
    return out


def test_a_killed_process_group_is_reclaimed_by_the_next_build(lab, tmp_path):
    # SIGKILL to the whole group (a CI runner cancelling a job): the bridge keeper and the
    # RUN's monitor die too; the hold they left names a dead keeper and the next build sweeps it
    slow = context(tmp_path, "FROM busybox\nRUN sleep 60\n", "slow")
    groups_before = _build_cgroups()
    proc = subprocess.Popen(["ip", "netns", "exec", lab.host, sys.executable, "-m", "builder",
                             "--root", str(lab.root), "build", slow], start_new_session=True,
                            cwd=REPO, env=dict(os.environ, PYTHONPATH=str(REPO)),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while not any(l.startswith("pbv") for l in lab.residue()["links"]):
            assert proc.poll() is None and time.monotonic() < deadline, "no RUN on a bridge"
            time.sleep(0.05)
        killed = _build_cgroups() - groups_before
        assert killed, "the RUN step made no cgroup"
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    deadline = time.monotonic() + 15
    while lab.residue()["processes"] or any(l.startswith("pbv") for l in lab.residue()["links"]):
        assert time.monotonic() < deadline, lab.residue()
        time.sleep(0.1)
    left = lab.residue()
    assert "pybuild0" in left["links"] and any(l.startswith("pbh") for l in left["links"])
    out = exported(lab, tmp_path, context(tmp_path, "FROM busybox\nRUN ls /sys/class/net > /n\n"))
    assert (out / "n").read_text().split() == ["eth0", "lo"]
    assert no_residue(lab) == {"links": [], "rules": [], "processes": []}
    # the killed step's cgroups went with its work dir, reclaimed by the next build
    assert not killed & _build_cgroups()
