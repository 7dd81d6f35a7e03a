"""The private network mode, driven directly against real namespaces.

Every test that touches the network builds a small lab first: a "host"
network namespace (where pybuild's bridge, NAT and port rules go) joined by a
veth to an "outside" namespace (192.0.2.0/24, TEST-NET-1), which has no route
to the container subnet, so replies reach a container only through NAT.  The
code under test runs in a forked child that setns()'d into the lab's host
namespace; the machine's own interfaces, routes and firewall are never touched,
and both namespaces are deleted on every exit path.  "Containers" are
`unshare --net sleep` processes that die with the child that started them, or,
in the last tests, real containers run by the sandbox core over a busybox rootfs.
"""

from __future__ import annotations

import ctypes
import ipaddress
import json
import os
import pickle
import select
import shlex
import signal
import socket
import subprocess
import sys
import time
import traceback
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from builder.sandbox.network import (LOCK_DIR, NetworkConfig, NetworkError, PortMapping,
                                     PrivateNetwork, collect_garbage, veth_name)
from layerstore.errors import PybuildError

from conftest import require_tool

CLONE_NEWNET = 0x40000000
PR_SET_PDEATHSIG = 1
_libc = ctypes.CDLL(None, use_errno=True)

# A tiny echo peer: `serve PROTO ADDR PORT TAG` answers "TAG PEER-IP MESSAGE";
# `ask PROTO ADDR PORT MESSAGE` prints the answer (exit 1 on timeout/refusal).
PEER = r'''
import socket, sys
cmd, proto, addr, port, word = sys.argv[1:6]
kind = socket.SOCK_STREAM if proto == "tcp" else socket.SOCK_DGRAM
s = socket.socket(socket.AF_INET, kind)
if cmd == "serve":
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((addr, int(port)))
    if proto == "tcp":
        s.listen(16)
    print("ready", flush=True)
    while True:
        if proto == "tcp":
            c, peer = s.accept()
            c.sendall(f"{word} {peer[0]} {c.recv(200).decode()}".encode())
            c.close()
        else:
            data, peer = s.recvfrom(200)
            s.sendto(f"{word} {peer[0]} {data.decode()}".encode(), peer)
            print("got", peer[0], data.decode(), flush=True)
else:
    s.settimeout(float(sys.argv[6]) if len(sys.argv) > 6 else 3)
    try:
        s.connect((addr, int(port)))
        s.send(word.encode())
        print(s.recv(200).decode())
    except OSError as exc:
        print(f"error {exc}")
        sys.exit(1)
'''


def _pdeathsig() -> None:
    """Run in a Popen child: die when the process that started it dies."""
    _libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


def setns_net(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        if _libc.setns(fd, CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"setns {path}: {os.strerror(err)}")
    finally:
        os.close(fd)


class Forked:
    """A forked child running `fn` (optionally inside the named netns) and returning its result."""

    def __init__(self, fn: Callable[[], Any], netns: str | None = None) -> None:
        self._r, w = os.pipe()
        self.pid = os.fork()
        if self.pid == 0:  # child
            os.close(self._r)
            try:
                if netns is not None:
                    before = os.stat("/proc/thread-self/ns/net").st_ino
                    setns_net(f"/run/netns/{netns}")
                    assert os.stat("/proc/thread-self/ns/net").st_ino != before
                result: tuple[str, Any] = ("ok", fn())
            except BaseException:
                result = ("err", traceback.format_exc())
            try:
                data = pickle.dumps(result)
                while data:
                    data = data[os.write(w, data):]
            finally:
                os._exit(0)
        os.close(w)

    def result(self, timeout: float = 40) -> Any:
        chunks, deadline = [], time.monotonic() + timeout
        try:
            while True:
                left = deadline - time.monotonic()
                if left <= 0 or not select.select([self._r], [], [], left)[0]:
                    raise AssertionError(f"forked test child {self.pid} timed out after {timeout}s")
                chunk = os.read(self._r, 65536)
                if not chunk:
                    break
                chunks.append(chunk)
        finally:
            os.close(self._r)
            if chunks == [] or time.monotonic() > deadline:
                os.kill(self.pid, signal.SIGKILL)
            os.waitpid(self.pid, 0)
        status, value = pickle.loads(b"".join(chunks))
        if status == "err":
            raise AssertionError(f"in forked test child:\n{value}")
        return value


def run(*argv: str, check: bool = True, input: str | None = None) -> str:
    proc = subprocess.run(argv, capture_output=True, text=True, input=input)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(argv)} exited {proc.returncode}: {proc.stderr}")
    return proc.stdout


@dataclass
class Lab:
    host: str
    outside: str
    host_addr: str = "192.0.2.1"
    outside_addr: str = "192.0.2.2"

    def run(self, fn: Callable[[], Any], timeout: float = 40) -> Any:
        """Run fn in a child inside the lab's host namespace; return its result."""
        return Forked(fn, self.host).result(timeout)


@pytest.fixture
def lab() -> Iterator[Lab]:
    require_tool("ip")
    require_tool("iptables")
    require_tool("nsenter")
    require_tool("unshare")
    tag = uuid.uuid4().hex[:8]
    lab = Lab(f"pbtest-{tag}", f"pbtest-{tag}-out")
    try:
        run("ip", "netns", "add", lab.host)
        run("ip", "netns", "add", lab.outside)
        run("ip", "-n", lab.host, "-batch", "-", input="\n".join([
            "link set lo up",
            f"link add up0 type veth peer name eth0 netns {lab.outside}",
            f"addr add {lab.host_addr}/24 dev up0",
            "link set up0 mtu 1400 up",
            f"route add default via {lab.outside_addr}", ""]))
        run("ip", "-n", lab.outside, "-batch", "-", input="\n".join([
            "link set lo up",
            f"addr add {lab.outside_addr}/24 dev eth0",
            "link set eth0 mtu 1400 up", ""]))
        yield lab
    finally:
        for ns in (lab.outside, lab.host):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)
    assert lab.host not in run("ip", "netns", "list")


# ---- helpers used inside the lab's host namespace ---------------------------------

def start_container() -> subprocess.Popen:
    """A process in a fresh network namespace (its own, not yet wired)."""
    mine = os.stat("/proc/thread-self/ns/net").st_ino
    proc = subprocess.Popen(["unshare", "--net", "sleep", "60"], preexec_fn=_pdeathsig)
    deadline = time.monotonic() + 5
    while os.stat(f"/proc/{proc.pid}/ns/net").st_ino == mine:
        assert time.monotonic() < deadline, "unshare --net did not take effect"
        time.sleep(0.002)
    return proc


def in_container(pid: int, *argv: str, check: bool = True) -> str:
    return run("nsenter", f"--net=/proc/{pid}/ns/net", *argv, check=check)


def serve(proto: str, addr: str, port: int, word: str, prefix: tuple[str, ...] = ()) -> subprocess.Popen:
    """Start an echo peer (in the netns `prefix` enters) and wait until it listens."""
    proc = subprocess.Popen([*prefix, sys.executable, "-c", PEER, "serve", proto, addr, str(port), word],
                            stdout=subprocess.PIPE, text=True, preexec_fn=_pdeathsig)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
    return proc


def ask(proto: str, addr: str, port: int, word: str, prefix: tuple[str, ...] = (),
        timeout: float = 3) -> str:
    """Ask an echo peer from the netns `prefix` enters (default: this one)."""
    proc = subprocess.run([*prefix, sys.executable, "-c", PEER, "ask", proto, addr, str(port), word,
                           str(timeout)], capture_output=True, text=True)
    return proc.stdout.strip()


def residue() -> dict[str, Any]:
    """What pybuild may leave in a network namespace: links, rules, chains, sysctls, state."""
    links = sorted(line.split(":")[1].strip().split("@")[0]
                   for line in run("ip", "-o", "link").splitlines())
    rules = sorted(line for line in run("iptables-save").splitlines()
                   if line.startswith("-A") or (line.startswith(":") and not line.split()[1] == "ACCEPT"))
    state = sorted(os.listdir(LOCK_DIR)) if os.path.isdir(LOCK_DIR) else []
    with open("/proc/sys/net/ipv4/ip_forward") as fh:
        forward = fh.read().strip()
    return {"links": links, "rules": rules, "ip_forward": forward,
            "state": [name for name in state if name != "lock"]}


def wait_attached(count: int, seconds: float) -> dict[str, Any]:
    """The residue once `count` containers, each publishing one port, have finished attaching
    (their DNAT rules are the last thing an attach adds)."""
    deadline = time.monotonic() + seconds
    while True:
        seen = residue()
        if sum("-j DNAT" in rule for rule in seen["rules"]) == count:
            return seen
        assert time.monotonic() < deadline, f"only some of {count} attached: {seen}"
        time.sleep(0.05)


def stop(*procs: subprocess.Popen) -> None:
    for proc in procs:
        proc.kill()
        proc.wait()


# ---- tests ---------------------------------------------------------------------------

@pytest.mark.parametrize("kwargs, words", [
    (dict(mode="bridge"), ["bridge", "none, host, private"]),
    (dict(mode="private", subnet="10.89.0.1/24"), ["10.89.0.1/24", "host bits"]),
    (dict(mode="private", subnet="fd00::/64"), ["fd00::/64", "IPv4"]),
    (dict(mode="private", subnet="10.89.0.0/31"), ["10.89.0.0/31", "/31"]),
    (dict(mode="private", subnet="ten.0.0.0/8"), ["ten.0.0.0/8"]),
    (dict(mode="private", subnet="127.0.0.0/8"), ["127.0.0.0/8", "loopback"]),
    (dict(mode="private", subnet="224.1.0.0/16"), ["224.1.0.0/16", "multicast"]),
    (dict(mode="private", bridge="a-very-long-bridge"), ["a-very-long-bridge"]),
    (dict(mode="private", bridge="br/0"), ["br/0"]),
    (dict(mode="none", ports=[PortMapping(8080, 80)]), ["127.0.0.1:8080->80/tcp", "private"]),
    (dict(mode="private", ports=[PortMapping(0, 80)]), ["host port 0"]),
    (dict(mode="private", ports=[(8080, 80)]), ["(8080, 80)", "PortMapping"]),
    (dict(mode="private", ports=[PortMapping(8080, 70000)]), ["container port 70000"]),
    (dict(mode="private", ports=[PortMapping(8080, 80, "sctp")]), ["sctp"]),
    (dict(mode="private", ports=[PortMapping(8080, 80, host_ip="localhost")]), ["localhost"]),
    (dict(mode="private", ports=[PortMapping(8080, 80), PortMapping(8080, 81, host_ip="0.0.0.0")]),
     ["0.0.0.0:8080->81/tcp", "127.0.0.1:8080->80/tcp"]),
    (dict(mode="private", ports=[PortMapping(8080, 80), PortMapping(8080, 81, host_ip="127.0.0.2"),
                                 PortMapping(8080, 82, host_ip="127.0.0.2")]),
     ["127.0.0.2:8080->82/tcp clashes with 127.0.0.2:8080->81/tcp"]),
])
def test_config_rejects_bad_input_with_one_line(kwargs, words):
    with pytest.raises(NetworkError) as info:
        NetworkConfig(**kwargs)
    message = str(info.value)
    assert isinstance(info.value, PybuildError) and "\n" not in message
    for word in words:
        assert word in message


@pytest.mark.parametrize("text, want", [
    ("8080:80", PortMapping(8080, 80, "tcp", "127.0.0.1")),
    ("0.0.0.0:53:5353/udp", PortMapping(53, 5353, "udp", "0.0.0.0")),
    (":8080:80/tcp", PortMapping(8080, 80, "tcp", "0.0.0.0")),
    ("127.0.0.2:1:65535", PortMapping(1, 65535, "tcp", "127.0.0.2")),
])
def test_port_mapping_parses_docker_syntax(text, want):
    assert PortMapping.parse(text) == want


@pytest.mark.parametrize("text, words", [
    ("8080", ["'8080'", "HOST_PORT:CONTAINER_PORT"]),
    ("a:b", ["'a:b'"]),
    ("8080:80/sctp", ["sctp"]),
    ("8080:0", ["container port 0"]),
    ("example.com:8080:80", ["example.com", "IPv4"]),
])
def test_port_mapping_parse_rejects_with_one_line(text, words):
    with pytest.raises(NetworkError) as info:
        PortMapping.parse(text)
    assert "\n" not in str(info.value) and all(word in str(info.value) for word in words)


def test_config_accepts_same_port_on_other_protocol_or_address():
    cfg = NetworkConfig(mode="private", subnet="172.30.8.0/22", ports=[
        PortMapping(8080, 80), PortMapping(8080, 80, "udp"), PortMapping(8080, 80, host_ip="127.0.0.2")])
    assert str(cfg.gateway()) == "172.30.8.1"
    assert len(veth_name("x" * 200)) <= 15 and veth_name("a") != veth_name("b")


def test_private_network_reaches_out_and_publishes_tcp_udp(lab: Lab):
    """The core scenario: address, route, bridge, NAT out, published ports in, clean teardown."""
    def scenario() -> dict[str, Any]:
        before = residue()
        host_srv = serve("tcp", "0.0.0.0", 7000, "host")
        out_srv = serve("tcp", lab.outside_addr, 7001, "outside", ("ip", "netns", "exec", lab.outside))
        box = start_container()
        enter = ("nsenter", f"--net=/proc/{box.pid}/ns/net")
        net = PrivateNetwork(NetworkConfig(mode="private", ports=[
            PortMapping(18080, 8080), PortMapping(18081, 8081, "udp"),
            PortMapping(18082, 8080, host_ip="0.0.0.0")]), "c-" + uuid.uuid4().hex)
        seen: dict[str, Any] = {"before": before}
        try:
            seen["ip"] = ip = net.attach(box.pid)
            seen["addr"] = in_container(box.pid, "ip", "-o", "-4", "addr", "show", "dev", "eth0")
            seen["route"] = in_container(box.pid, "ip", "route")
            seen["links"] = in_container(box.pid, "ip", "-o", "link")
            seen["bridge"] = run("ip", "-o", "-4", "addr", "show", "dev", "pybuild0")
            seen["to_host"] = ask("tcp", "10.89.0.1", 7000, "hi", enter)
            seen["to_outside"] = ask("tcp", lab.outside_addr, 7001, "hi", enter)
            box_tcp = serve("tcp", "0.0.0.0", 8080, "box", enter)
            box_udp = serve("udp", "0.0.0.0", 8081, "boxudp", enter)
            try:
                seen["tcp_lo"] = ask("tcp", "127.0.0.1", 18080, "t1")
                seen["udp_lo"] = ask("udp", "127.0.0.1", 18081, "u1")
                seen["tcp_any_lo"] = ask("tcp", "127.0.0.1", 18082, "t2")
                seen["tcp_any_ext"] = ask("tcp", lab.host_addr, 18082, "t3")
                seen["tcp_from_outside"] = ask("tcp", lab.host_addr, 18082, "t4",
                                               ("ip", "netns", "exec", lab.outside))
                seen["hairpin"] = ask("tcp", lab.host_addr, 18082, "t6", enter)
                seen["lo_only_from_outside"] = ask("tcp", lab.host_addr, 18080, "t5",
                                                   ("ip", "netns", "exec", lab.outside), timeout=1)
            finally:
                stop(box_tcp, box_udp)
            seen["during"] = residue()
        finally:
            net.teardown()
            net.teardown()  # idempotent
            stop(box, host_srv, out_srv)
        seen["after"] = residue()
        return seen

    seen = lab.run(scenario)
    ip = seen["ip"]
    assert ipaddress.ip_address(ip) in ipaddress.ip_network("10.89.0.0/24") and ip != "10.89.0.1"
    assert f"inet {ip}/24" in seen["addr"]
    assert "default via 10.89.0.1 dev eth0" in seen["route"]
    assert sorted(l.split(":")[1].strip().split("@")[0] for l in seen["links"].splitlines()) == ["eth0", "lo"]
    assert "mtu 1400" in next(l for l in seen["links"].splitlines() if "eth0" in l)  # the uplink's
    assert "inet 10.89.0.1/24" in seen["bridge"]
    # the bridge address is reached directly (no NAT), the outside only through MASQUERADE
    assert seen["to_host"] == f"host {ip} hi"
    assert seen["to_outside"] == f"outside {lab.host_addr} hi"
    # published ports: loopback via OUTPUT DNAT (+route_localnet), other addresses, from outside
    assert seen["tcp_lo"] == "box 10.89.0.1 t1"
    assert seen["udp_lo"] == "boxudp 10.89.0.1 u1"
    assert seen["tcp_any_lo"] == "box 10.89.0.1 t2"
    assert seen["tcp_any_ext"].startswith("box ") and seen["tcp_any_ext"].endswith(" t3")
    assert seen["tcp_from_outside"] == f"box {lab.outside_addr} t4"
    assert not seen["lo_only_from_outside"].startswith("box")
    assert seen["hairpin"] == "box 10.89.0.1 t6"  # a container reaches its own published port
    during = seen["during"]
    assert veth_name("x") not in during["links"] and "pybuild0" in during["links"]
    assert any("PYBUILD" in rule and "DNAT" in rule for rule in during["rules"])
    assert during["ip_forward"] == "1"
    assert seen["after"] == seen["before"]


def test_port_in_use_is_named_and_reservations_exclude_each_other(lab: Lab):
    def scenario() -> dict[str, Any]:
        before = residue()
        errors = []
        boxes = [start_container()]

        def attempt(ports: list[PortMapping]) -> PrivateNetwork | None:
            net = PrivateNetwork(NetworkConfig(mode="private", ports=ports), uuid.uuid4().hex)
            try:
                net.attach(boxes[-1].pid)
                return net
            except NetworkError as exc:
                errors.append(str(exc))
                net.teardown()
                return None

        squatter = socket.socket()
        squatter.bind(("127.0.0.1", 18090))
        squatter.listen(1)
        try:
            assert attempt([PortMapping(18090, 80)]) is None
            assert attempt([PortMapping(18091, 81), PortMapping(18090, 80, host_ip="0.0.0.0")]) is None
            free_again = socket.socket()
            free_again.bind(("127.0.0.1", 18091))  # the failed attempt let go of 18091
            free_again.close()
            udp = attempt([PortMapping(18090, 80, "udp")])  # the same number over udp is free
            assert udp is not None
        finally:
            squatter.close()
        boxes.append(start_container())
        try:
            assert attempt([PortMapping(18090, 53, "udp")]) is None  # held by the first container
            udp.teardown()
            again = attempt([PortMapping(18090, 53, "udp")])
            assert again is not None
            again.teardown()
        finally:
            stop(*boxes)
        return {"before": before, "errors": errors, "after": residue()}

    seen = lab.run(scenario)
    errors = seen["errors"]
    assert len(errors) == 3, errors
    assert "127.0.0.1:18090/tcp" in errors[0] and "in use" in errors[0]
    assert "0.0.0.0:18090/tcp" in errors[1] and "in use" in errors[1]
    assert "127.0.0.1:18090/udp" in errors[2] and "in use" in errors[2]
    assert all("\n" not in e for e in errors)
    assert seen["after"] == seen["before"]


def test_concurrent_attach_gets_distinct_addresses_and_leaves_nothing(lab: Lab):
    count = 6

    def worker(i: int, go: int) -> str:
        box = start_container()
        net = PrivateNetwork(NetworkConfig(mode="private", ports=[PortMapping(19000 + i, 80)]), f"w{i}")
        try:
            ip = net.attach(box.pid)
            os.read(go, 1)  # everyone stays attached until the parent has looked
            return ip
        finally:
            net.teardown()
            stop(box)

    def scenario() -> dict[str, Any]:
        before = residue()
        go_r, go_w = os.pipe()
        workers = [Forked(lambda i=i: worker(i, go_r)) for i in range(count)]
        during = wait_attached(count, 20)
        os.write(go_w, b"x" * count)
        ips = [w.result() for w in workers]
        return {"before": before, "during": during, "ips": ips, "after": residue()}

    seen = lab.run(scenario, timeout=50)
    assert len(set(seen["ips"])) == count
    assert all(ipaddress.ip_address(ip) in ipaddress.ip_network("10.89.0.0/24") for ip in seen["ips"])
    assert sum(name.startswith("pbv") for name in seen["during"]["links"]) == count
    assert sum("-j DNAT" in rule for rule in seen["during"]["rules"]) == count
    assert seen["after"] == seen["before"]


def test_rules_of_a_killed_parent_are_swept_by_the_next_run(lab: Lab):
    def crashed_parent() -> str:
        box = start_container()  # dies with this process (PDEATHSIG), taking the veth along
        net = PrivateNetwork(NetworkConfig(mode="private", ports=[PortMapping(18100, 80)]), "crashed")
        return net.attach(box.pid)  # and never tears down

    def scenario() -> dict[str, Any]:
        before = residue()
        Forked(crashed_parent).result()
        wait_gone(veth_name("crashed"))
        left = residue()
        box = start_container()
        net = PrivateNetwork(NetworkConfig(mode="private", ports=[PortMapping(18100, 80)]), "next")
        try:
            ip = net.attach(box.pid)
            during = residue()
        finally:
            net.teardown()
            stop(box)
        after = residue()
        Forked(crashed_parent).result()
        wait_gone(veth_name("crashed"))
        left_again = residue()
        swept = collect_garbage(), collect_garbage()
        after_gc = residue()
        Forked(crashed_parent).result()
        wait_gone(veth_name("crashed"))
        left_third = residue()
        PrivateNetwork(NetworkConfig(mode="private", ports=[PortMapping(18100, 80)]), "crashed").teardown()
        return {"before": before, "left": left, "during": during, "ip": ip, "after": after,
                "left_again": left_again, "swept": swept, "after_gc": after_gc,
                "left_third": left_third, "after_orphan_teardown": residue()}

    def wait_gone(link: str) -> None:
        deadline = time.monotonic() + 5
        while link in residue()["links"]:
            assert time.monotonic() < deadline, f"{link} outlived its namespace"
            time.sleep(0.02)

    seen = lab.run(scenario)
    assert any("pybuild:" + veth_name("crashed") in rule for rule in seen["left"]["rules"])
    assert "pybuild0" in seen["left_again"]["links"] and seen["left_again"] != seen["before"]
    assert seen["swept"] == (True, False)
    assert seen["after_gc"] == seen["before"]
    # the core's monitor, orphaned, tears down through a fresh instance of the same id
    assert seen["left_third"] != seen["before"]
    assert seen["after_orphan_teardown"] == seen["before"]
    assert not any(veth_name("crashed") in rule for rule in seen["during"]["rules"])
    assert seen["ip"] == "10.89.0.2"  # the dead container's lease went with its veth
    assert seen["after"] == seen["before"]


def test_attach_refuses_bad_targets_and_leaves_nothing(lab: Lab):
    def scenario() -> dict[str, Any]:
        before = residue()
        errors: dict[str, str] = {}

        def attempt(name: str, cfg: NetworkConfig, pid: int) -> None:
            net = PrivateNetwork(cfg, name)
            try:
                net.attach(pid)
            except NetworkError as exc:
                errors[name] = str(exc)
            finally:
                net.teardown()

        attempt("own-netns", NetworkConfig(mode="private"), os.getpid())
        attempt("no-such-pid", NetworkConfig(mode="private"), 2**22 + 7)
        box = start_container()
        try:
            attempt("overlap", NetworkConfig(mode="private", subnet="192.0.2.0/25"), box.pid)
            first = PrivateNetwork(NetworkConfig(mode="private"), "first")
            try:
                first.attach(box.pid)
                other = start_container()
                try:
                    attempt("mismatch", NetworkConfig(mode="private", subnet="10.90.0.0/24"), other.pid)
                    attempt("again", NetworkConfig(mode="private"), box.pid)  # already has eth0
                finally:
                    stop(other)
                during = residue()
            finally:
                first.teardown()
            run("ip", "link", "add", "pybuild9", "type", "bridge")
            attempt("foreign", NetworkConfig(mode="private", bridge="pybuild9"), box.pid)
            run("ip", "link", "del", "pybuild9")
        finally:
            stop(box)
        return {"before": before, "errors": errors, "during": during, "after": residue()}

    seen = lab.run(scenario)
    errors = seen["errors"]
    assert set(errors) == {"own-netns", "no-such-pid", "overlap", "mismatch", "again", "foreign"}
    assert "shares our network namespace" in errors["own-netns"]
    assert str(2**22 + 7) in errors["no-such-pid"]
    assert "192.0.2.0/24" in errors["overlap"] and "up0" in errors["overlap"]
    assert "10.89.0.1/24" in errors["mismatch"] and "10.90.0.0/24" in errors["mismatch"]
    assert "eth0" in errors["again"] or "exists" in errors["again"]
    assert "pybuild9" in errors["foreign"] and "not made by pybuild" in errors["foreign"]
    assert all("\n" not in e for e in errors.values())
    assert sum(name.startswith("pbv") for name in seen["during"]["links"]) == 1  # failed ones rolled back
    assert seen["after"] == seen["before"]


# Sends one UDP datagram as a raw Ethernet frame (AF_PACKET needs only CAP_NET_RAW, which
# docker's default set grants): argv = ifname, destination MAC, source IP, dest IP, port, text.
RAW_UDP = r'''
import socket, struct, sys
ifname, dmac, src, dst, port, text = sys.argv[1:7]
payload = text.encode()
udp = struct.pack("!HHHH", 40000, int(port), 8 + len(payload), 0) + payload
hdr = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 1, 0, 64, 17, 0,
                  socket.inet_aton(src), socket.inet_aton(dst))
words = sum(struct.unpack("!10H", hdr))
while words >> 16:
    words = (words & 0xFFFF) + (words >> 16)
hdr = hdr[:10] + struct.pack("!H", ~words & 0xFFFF) + hdr[12:]
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
s.bind((ifname, 0))
mac = s.getsockname()[4]
s.send(bytes.fromhex(dmac.replace(":", "")) + mac + b"\x08\x00" + hdr + udp)
'''


def test_containers_cannot_reach_host_loopback_through_route_localnet(lab: Lab):
    """route_localnet on the bridge must not open the host's 127.0.0.1 services to containers."""
    def received(server: subprocess.Popen, wait: float) -> str:
        assert server.stdout is not None
        ready = select.select([server.stdout], [], [], wait)[0]
        return server.stdout.readline().strip() if ready else ""

    def scenario() -> dict[str, str]:
        secret = serve("udp", "127.0.0.1", 7005, "secret")
        box = start_container()
        net = PrivateNetwork(NetworkConfig(mode="private"), "probe")
        try:
            ip = net.attach(box.pid)
            gw_mac = json.loads(run("ip", "-j", "link", "show", "pybuild0"))[0]["address"]
            send = ("nsenter", f"--net=/proc/{box.pid}/ns/net", sys.executable, "-c", RAW_UDP,
                    "eth0", gw_mac, ip)
            run(*send, "127.0.0.1", "7005", "steal")
            blocked = received(secret, 1.0)
            guard = [r for r in residue()["rules"] if r.startswith("-A PYBUILD-INPUT")]
            for rule in guard:
                run("iptables", "-w", "-D", *shlex.split(rule)[1:])
            run(*send, "127.0.0.1", "7005", "open")
            open_door = received(secret, 2.0)
            for rule in guard:
                run("iptables", "-w", *shlex.split(rule))
        finally:
            net.teardown()
            stop(box, secret)
        return {"blocked": blocked, "open_door": open_door, "ip": ip}

    seen = lab.run(scenario)
    assert seen["blocked"] == "", seen
    # the probe is meaningful: without our guard the very same frame is delivered
    assert seen["open_door"] == f"got {seen['ip']} open", seen


def test_same_container_id_twice_is_refused_without_harming_the_first(lab: Lab):
    def scenario() -> dict[str, Any]:
        before = residue()
        one, two = start_container(), start_container()
        first = PrivateNetwork(NetworkConfig(mode="private", ports=[PortMapping(18120, 80)]), "twin")
        try:
            ip = first.attach(one.pid)
            twin = PrivateNetwork(NetworkConfig(mode="private"), "twin")
            try:
                twin.attach(two.pid)
                error = ""
            except NetworkError as exc:
                error = str(exc)
            twin.teardown()
            for again in (first, twin):  # one attach per PrivateNetwork, none after teardown
                try:
                    again.attach(two.pid)
                except NetworkError as exc:
                    error += " | " + str(exc)
            box = serve("tcp", "0.0.0.0", 80, "first", ("nsenter", f"--net=/proc/{one.pid}/ns/net"))
            reply = ask("tcp", "127.0.0.1", 18120, "still")
            stop(box)
        finally:
            first.teardown()
            stop(one, two)
        return {"before": before, "error": error, "ip": ip, "reply": reply, "after": residue()}

    seen = lab.run(scenario)
    first, again_first, again_twin = seen["error"].split(" | ")
    assert "twin" in first and "already attached (interface pbv" in first
    assert again_first.endswith("network already attached")
    assert again_twin.endswith("network already torn down")
    assert seen["reply"] == "first 10.89.0.1 still"
    assert seen["after"] == seen["before"]


# ---- through the sandbox core (busybox rootfs) ---------------------------------------

def _fetch(url: str, deadline: float) -> str:
    """GET url, retrying while the container's server is still starting."""
    import urllib.request
    while True:
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:
                return resp.read().decode()
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def _knock(port: int, deadline: float) -> None:
    """Connect to 127.0.0.1:port until something accepts (tells the container to finish)."""
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=2):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def test_run_private_through_the_sandbox(lab: Lab, busybox_rootfs):
    from builder.sandbox import DirRoot, SandboxSpec, TmpfsMount, start

    script = ("ip -o -4 addr show dev eth0; ip route; echo links=$(ip -o link | wc -l); "
              "echo hi | nc 10.89.0.1 7000; echo hi | nc 192.0.2.2 7001; "
              "echo hello-from-box > /tmp/index.html; httpd -p 8080 -h /tmp; "
              "nc -l -p 9000 > /dev/null; echo done")

    def scenario() -> dict[str, Any]:
        before = residue()
        host_srv = serve("tcp", "0.0.0.0", 7000, "host")
        out_srv = serve("tcp", lab.outside_addr, 7001, "outside", ("ip", "netns", "exec", lab.outside))
        spec = SandboxSpec(root=DirRoot(busybox_rootfs, readonly=True), argv=["/bin/sh", "-c", script],
                           mounts=[TmpfsMount("/tmp")], stdio="pipe", timeout=30,
                           network=NetworkConfig(mode="private", ports=[
                               PortMapping(18080, 8080), PortMapping(19000, 9000)]))
        box = start(spec)
        try:
            deadline = time.monotonic() + 15
            page = _fetch("http://127.0.0.1:18080/index.html", deadline)
            during = residue()
            _knock(19000, deadline)
            result = box.wait()
        finally:
            box.teardown()
            stop(host_srv, out_srv)
        return {"before": before, "page": page, "during": during, "ip": box.ip,
                "exit": result.exit_code, "out": (result.stdout or b"").decode(),
                "err": (result.stderr or b"").decode(), "after": residue()}

    netns_before = run("ip", "netns", "list")
    seen = lab.run(scenario, timeout=60)
    out, ip = seen["out"], seen["ip"]
    assert seen["exit"] == 0, seen
    assert f"inet {ip}/24" in out and "default via 10.89.0.1 dev eth0" in out
    assert "links=2" in out  # lo and eth0
    assert f"host {ip} hi" in out  # the host side of the bridge, directly
    assert f"outside {lab.host_addr} hi" in out  # the outside, through NAT
    assert seen["page"] == "hello-from-box\n"  # published port, via the host's 127.0.0.1
    assert "done" in out
    assert any(name.startswith("pbv") for name in seen["during"]["links"])
    assert seen["after"] == seen["before"]
    assert run("ip", "netns", "list") == netns_before


def _run_beside_host_server(lab: Lab, rootfs, script: str, **spec: Any) -> dict[str, Any]:
    """In the lab: run `sh -c script` through the sandbox while a "host" peer listens on :7000."""
    from builder.sandbox import DirRoot, SandboxSpec, run as sandbox_run

    def scenario() -> dict[str, Any]:
        before = residue()
        host_srv = serve("tcp", "0.0.0.0", 7000, "host")
        try:
            result = sandbox_run(SandboxSpec(root=DirRoot(rootfs, readonly=True), stdio="pipe",
                                             argv=["/bin/sh", "-c", script], timeout=20, **spec))
        finally:
            stop(host_srv)
        return {"before": before, "exit": result.exit_code, "out": (result.stdout or b"").decode(),
                "after": residue()}

    return lab.run(scenario, timeout=40)


def test_run_none_has_only_loopback_and_no_route(lab: Lab, busybox_rootfs):
    seen = _run_beside_host_server(lab, busybox_rootfs, "ip -o link; echo routes=$(ip route | wc -l); "
                                   "echo hi | nc 192.0.2.1 7000 || echo unreachable")
    links = [line.split(":")[1].strip() for line in seen["out"].splitlines() if ": <" in line]
    assert links == ["lo"], seen
    assert "LOOPBACK,UP" in seen["out"]
    assert "routes=0" in seen["out"] and "unreachable" in seen["out"] and "host " not in seen["out"]
    assert seen["after"] == seen["before"]


def test_run_private_eight_at_once_then_twenty_in_a_row_leave_nothing(lab: Lab, busybox_rootfs):
    import threading

    from builder.sandbox import DirRoot, SandboxSpec, run as sandbox_run

    def one(i: int, wait: bool) -> tuple[int, str]:
        """Run a container; with `wait` it stays until its published port is knocked on."""
        script = "ip -o -4 addr show dev eth0" + ("; nc -l -p 80 >/dev/null" if wait else "")
        spec = SandboxSpec(root=DirRoot(busybox_rootfs, readonly=True), stdio="pipe", timeout=30,
                           argv=["/bin/sh", "-c", script],
                           network=NetworkConfig(mode="private", ports=[PortMapping(18200 + i, 80)]))
        result = sandbox_run(spec)
        return result.exit_code, (result.stdout or b"").decode().split()[3]

    def scenario() -> dict[str, Any]:
        before = residue()
        results: dict[int, Any] = {}

        def worker(i: int) -> None:
            try:
                results[i] = one(i, True)
            except Exception as exc:  # reported, not lost in the thread
                results[i] = repr(exc)

        threads = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
        for t in threads:
            t.start()
        during = wait_attached(8, 30)
        deadline = time.monotonic() + 20
        for i in range(8):  # all eight are up at once; now let each finish
            _knock(18200 + i, deadline)
        for t in threads:
            t.join(40)
        parallel = [results.get(i) for i in range(8)]
        started = time.monotonic()
        serial = [one(0, False) for _ in range(20)]
        return {"before": before, "parallel": parallel, "serial": serial, "during": during,
                "serial_seconds": time.monotonic() - started, "after": residue()}

    seen = lab.run(scenario, timeout=60)
    assert all(isinstance(r, tuple) and r[0] == 0 for r in seen["parallel"]), seen["parallel"]
    assert len({r[1] for r in seen["parallel"]}) == 8  # eight distinct addresses
    assert sum(name.startswith("pbv") for name in seen["during"]["links"]) == 8
    assert all(r == (0, "10.89.0.2/24") for r in seen["serial"])  # each lease went back
    assert seen["after"] == seen["before"]


def test_killing_the_parent_mid_run_leaves_no_network_behind(lab: Lab, busybox_copy):
    from builder.sandbox import DirRoot, SandboxSpec, start

    def parent(report: int) -> None:
        spec = SandboxSpec(root=DirRoot(busybox_copy, readonly=True), argv=["/bin/sleep", "30"],
                           network=NetworkConfig(mode="private", ports=[PortMapping(18300, 80)]))
        box = start(spec)
        os.write(report, f"{box.pid} {box.ip}\n".encode())
        time.sleep(60)  # SIGKILLed long before

    def scenario() -> dict[str, Any]:
        before = residue()
        r, w = os.pipe()
        victim = Forked(lambda: parent(w))
        os.close(w)
        with os.fdopen(r) as report:
            pid, ip = report.readline().split()
        during = residue()
        os.kill(victim.pid, signal.SIGKILL)
        os.waitpid(victim.pid, 0)
        os.close(victim._r)
        killed = time.monotonic()
        while residue() != before and time.monotonic() - killed < 5:
            time.sleep(0.02)
        cleaned_after = time.monotonic() - killed
        return {"before": before, "during": during, "ip": ip, "after": residue(),
                "cleaned_after": cleaned_after, "container_alive": os.path.exists(f"/proc/{pid}")}

    seen = lab.run(scenario, timeout=40)
    assert seen["ip"].startswith("10.89.0.")
    assert any(name.startswith("pbv") for name in seen["during"]["links"])
    assert any("-j DNAT" in rule for rule in seen["during"]["rules"])
    assert seen["after"] == seen["before"], seen
    print(f"network cleaned {seen['cleaned_after']:.2f}s after the parent was killed")
    assert seen["cleaned_after"] < 2 and not seen["container_alive"]


def test_run_private_with_a_user_namespace(lab: Lab, busybox_rootfs):
    """A container whose network namespace belongs to its own user namespace is wired all the same."""
    from builder.sandbox import UserNamespace

    seen = _run_beside_host_server(
        lab, busybox_rootfs, "cat /proc/self/uid_map; ip -o -4 addr show dev eth0; echo hi | nc 10.89.0.1 7000",
        userns=UserNamespace(), etc_files=False,
        network=NetworkConfig(mode="private", ports=[PortMapping(18400, 80)]))
    out = seen["out"]
    assert seen["exit"] == 0, seen
    assert out.split()[:3] == ["0", "100000", "65536"]
    assert "inet 10.89.0.2/24" in out and "host 10.89.0.2 hi" in out
    assert seen["after"] == seen["before"]
