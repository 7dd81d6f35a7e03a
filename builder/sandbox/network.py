"""Container networking: the `private` mode (bridge + veth + NAT + published ports).

`none` and `host` need nothing from here beyond the config (the sandbox core
unshares or shares the network namespace itself).  `private` joins the
container's own network namespace to a bridge (`pybuild0`) through a veth pair
and wires it up from outside, so the container never needs CAP_NET_ADMIN:

* the bridge holds the subnet's first host address and is the default gateway;
* outbound traffic is masqueraded; `net.ipv4.ip_forward` is switched on while a
  bridge of ours exists and restored to its old value when the last one goes;
* published ports are iptables DNAT rules (no userland proxy).  Traffic to a
  port published on 127.0.0.1 is DNATed in nat/OUTPUT and leaves through the
  bridge with a loopback source, which the kernel only routes with
  `net.ipv4.conf.<bridge>.route_localnet=1`; it is then masqueraded to the
  gateway address so the container can answer.  Because route_localnet would
  also let containers reach the host's 127.0.0.0/8 services, a filter rule
  drops anything arriving on the bridge for 127.0.0.0/8 that was not DNATed
  (the guard Kubernetes added for CVE-2020-8558).  The host port is also bound
  (not listened on) by the attaching process from attach to teardown, so no
  other program or container can take it meanwhile.  Containers reach published
  ports of their own or of their neighbours through a host address thanks to
  hairpin mode on the bridge ports plus a masquerade of DNATed bridge-to-bridge
  traffic;
* the veth pair takes the MTU of the host's default-route device.

All state lives in kernel objects, so a killed parent leaves nothing that the
next run cannot find: the host-side veth carries the alias
`pybuild <ip> <container-id>` (IP leases are read back from these aliases; the
kernel deletes the veth with the container's namespace), the bridge carries
`pybuild ip_forward=<old value>`, and every iptables rule carries the comment
`pybuild:<veth>` (per container), `pybuild-bridge:<bridge>` (per bridge) or
`pybuild-jump` (the jumps from the built-in chains into ours: nat PYBUILD and
PYBUILD-POSTROUTING, filter PYBUILD-FORWARD and PYBUILD-INPUT).  Each attach
and teardown also sweeps rules whose veth no longer exists.  Changes are made
under a POSIX lock on /run/pybuild/net/lock (plus a thread lock, since POSIX
locks are per process and, unlike flock, are not inherited by forked children
that may wait on us); the lock file holds no state and stays.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import hashlib
import ipaddress
import json
import os
import re
import shlex
import shutil
import socket
import subprocess
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from .netconfig import NetworkConfig, NetworkError, PortMapping

LOCK_DIR = "/run/pybuild/net"
LOCK_FILE = f"{LOCK_DIR}/lock"
NAT_CHAIN = "PYBUILD"
POST_CHAIN = "PYBUILD-POSTROUTING"
FWD_CHAIN = "PYBUILD-FORWARD"
INPUT_CHAIN = "PYBUILD-INPUT"
JUMP_TAG = "pybuild-jump"
ALIAS_PREFIX = "pybuild "
LOOPBACK_NET = "127.0.0.0/8"
CLONE_NEWPID = 0x20000000


def veth_name(container_id: str) -> str:
    """Host-side veth name for a container: short, fixed-length, derived from its id."""
    return "pbv" + hashlib.sha256(container_id.encode()).hexdigest()[:12]


def _run(argv: list[str], input: str | None = None, pass_fds: tuple[int, ...] = ()) -> str:
    """Run a network tool; its failure becomes a one-line NetworkError."""
    tool = shutil.which(argv[0])
    if tool is None:
        raise NetworkError(f"private network needs {argv[0]} (apt-get install "
                           f"{'iptables' if argv[0].startswith('iptables') else 'iproute2'})")
    proc = subprocess.run([tool, *argv[1:]], input=input, capture_output=True, text=True,
                          pass_fds=pass_fds)
    if proc.returncode != 0:
        detail = " ".join(proc.stderr.split()) or f"exit status {proc.returncode}"
        raise NetworkError(f"{' '.join(argv[:3])}: {detail}")
    return proc.stdout


_thread_lock = threading.Lock()


def _fresh_thread_lock() -> None:
    """A forked child (say the sandbox's monitor, which may later tear down) must not inherit
    the lock held by some other thread of its parent: that thread does not exist there."""
    global _thread_lock
    _thread_lock = threading.Lock()


os.register_at_fork(after_in_child=_fresh_thread_lock)


@contextmanager
def _net_lock() -> Iterator[None]:
    """Serialise changes to bridges, leases and rules across threads and processes."""
    os.makedirs(LOCK_DIR, mode=0o755, exist_ok=True)
    with _thread_lock:
        fd = os.open(LOCK_FILE, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.lockf(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)


@dataclass
class _Link:
    name: str
    kind: str
    master: str | None
    alias: str
    addrs: list[str]
    mtu: int = 1500


@dataclass
class _Host:
    """One look at the host side: links and our iptables rules."""

    links: dict[str, _Link]
    rules: dict[str, list[str]]  # table -> our rule lines, as iptables-save prints them
    chains: dict[str, set[str]]  # table -> chains of ours that exist
    routes: list[dict]           # `ip -j -4 route show` of the main table

    @classmethod
    def read(cls) -> _Host:
        links = {}
        for item in json.loads(_run(["ip", "-j", "-d", "addr", "show"]) or "[]"):
            links[item["ifname"]] = _Link(
                name=item["ifname"], kind=item.get("linkinfo", {}).get("info_kind", ""),
                master=item.get("master"), alias=item.get("ifalias", ""),
                addrs=[f"{a['local']}/{a['prefixlen']}" for a in item.get("addr_info", [])
                       if a.get("family") == "inet"],
                mtu=item.get("mtu", 1500))
        rules: dict[str, list[str]] = {"nat": [], "filter": []}
        chains: dict[str, set[str]] = {"nat": set(), "filter": set()}
        table = ""
        for line in _run(["iptables-save"]).splitlines():
            if line.startswith("*"):
                table = line[1:].strip()
            elif table not in rules:
                continue
            elif line.startswith(":PYBUILD"):
                chains[table].add(line[1:].split()[0])
            elif line.startswith("-A ") and "pybuild" in line and _comment(line).startswith("pybuild"):
                rules[table].append(line)
        routes = json.loads(_run(["ip", "-j", "-4", "route", "show"]) or "[]")
        return cls(links, rules, chains, routes)

    def our_veths(self) -> list[_Link]:
        return [link for link in self.links.values()
                if link.kind == "veth" and link.alias.startswith(ALIAS_PREFIX)]

    def our_bridges(self) -> list[_Link]:
        return [link for link in self.links.values()
                if link.kind == "bridge" and link.alias.startswith(ALIAS_PREFIX)]

    def uplink_mtu(self) -> int:
        """MTU of the default route's device, so containers don't send what it must fragment."""
        for route in self.routes:
            link = self.links.get(route.get("dev", ""))
            if route.get("dst") == "default" and link is not None:
                return max(576, min(link.mtu, 65535))
        return 1500

    def ports_of(self, bridge: str) -> list[str]:
        return [link.name for link in self.links.values() if link.master == bridge]


def _comment(rule: str) -> str:
    words = shlex.split(rule)
    for i, word in enumerate(words[:-1]):
        if word == "--comment":
            return words[i + 1]
    return ""


def _tables_script(lines: dict[str, list[str]]) -> str:
    """An iptables-restore script from per-table command lines (tables without lines left out)."""
    out = []
    for table, cmds in lines.items():
        if cmds:
            out += [f"*{table}", *cmds, "COMMIT"]
    return "\n".join(out) + "\n" if out else ""


def _restore(lines: dict[str, list[str]]) -> None:
    script = _tables_script(lines)
    if script:
        _run(["iptables-restore", "-w", "--noflush"], input=script)


def _sysctl(path: str, value: str | None = None) -> str:
    """Read or write a sysctl of the network namespace this thread is in."""
    full = f"/proc/sys/net/{path}"
    try:
        if value is not None:
            with open(full, "w") as fh:
                fh.write(value)
            return value
        with open(full) as fh:
            return fh.read().strip()
    except OSError as exc:
        raise NetworkError(f"sysctl {full}: {exc.strerror}") from None


def _netns_id(path: str) -> tuple[int, int]:
    st = os.stat(path)
    return st.st_dev, st.st_ino


def _can_fork_tools() -> None:
    """Let a process that unshared CLONE_NEWPID run our tools again.

    The sandbox's monitor unshares the PID namespace for the container; once the container's
    init is dead, every fork into that namespace fails (ENOMEM), so the monitor could not
    run `ip`/`iptables` to tear down after its parent was killed.  Pointing its future
    children back at its own PID namespace is harmless and a no-op for everyone else."""
    try:
        own, kids = os.stat("/proc/self/ns/pid"), os.stat("/proc/self/ns/pid_for_children")
    except OSError:
        return
    if (own.st_dev, own.st_ino) == (kids.st_dev, kids.st_ino):
        return
    fd = os.open("/proc/self/ns/pid", os.O_RDONLY | os.O_CLOEXEC)
    try:
        if ctypes.CDLL(None, use_errno=True).setns(fd, CLONE_NEWPID) != 0:
            err = ctypes.get_errno()
            raise NetworkError(f"setns to our own PID namespace: {os.strerror(err)}")
    finally:
        os.close(fd)


class PrivateNetwork:
    """One container's place on a bridge: attach it once, tear it down once (or more)."""

    def __init__(self, config: NetworkConfig, container_id: str) -> None:
        config.validate()
        if config.mode != "private":
            raise NetworkError(f"PrivateNetwork needs network mode private, not {config.mode}")
        self.config = config
        self.container_id = container_id
        self.veth = veth_name(container_id)
        self.net = config.network()
        self.gateway = config.gateway()
        self.ip: str | None = None
        self._attached = False
        self._closed = False
        self._reservations: list[socket.socket] = []

    # -- ports -------------------------------------------------------------------

    @staticmethod
    def _reserve_ports(ports: list[PortMapping]) -> list[socket.socket]:
        """Bind each host port so nobody else can take it while the container runs."""
        held: list[socket.socket] = []
        try:
            for port in ports:
                kind = socket.SOCK_STREAM if port.proto == "tcp" else socket.SOCK_DGRAM
                sock = socket.socket(socket.AF_INET, kind)
                held.append(sock)
                try:
                    sock.bind((port.host_ip, port.host_port))
                except OSError as exc:
                    reason = ("is already in use" if exc.errno == errno.EADDRINUSE
                              else f"cannot be bound: {exc.strerror}")
                    raise NetworkError(f"host port {port.host_ip}:{port.host_port}/{port.proto} "
                                       f"(published as {port}) {reason}") from None
        except BaseException:
            for sock in held:
                sock.close()
            raise
        return held

    # -- attach ------------------------------------------------------------------

    def attach(self, pid: int) -> str:
        """Join the network namespace of `pid` to the bridge; returns the container's IP.

        A failed attach leaves nothing behind and closes this instance (teardown is then a
        no-op), so it can never remove what another instance with the same id made."""
        if self._attached or self._closed:
            raise NetworkError(f"container {self.container_id}: network already "
                               f"{'attached' if self._attached else 'torn down'}")
        try:
            self.ip = self._attach(pid)
        except BaseException:
            self._closed = True
            self._release_ports()
            raise
        return self.ip

    def _attach(self, pid: int) -> str:
        # An fd pins the namespace we check, so a pid that dies and is reused meanwhile
        # cannot make us wire someone else's namespace.
        try:
            ns_fd = os.open(f"/proc/{pid}/ns/net", os.O_RDONLY | os.O_CLOEXEC)
        except OSError as exc:
            raise NetworkError(f"container {self.container_id}: process {pid}: {exc.strerror}") from None
        try:
            if _netns_id(f"/proc/self/fd/{ns_fd}") == _netns_id("/proc/thread-self/ns/net"):
                raise NetworkError(f"container {self.container_id}: process {pid} shares our network "
                                   "namespace; refusing to move an interface out of it")
            return self._attach_ns(ns_fd)
        finally:
            os.close(ns_fd)

    def _attach_ns(self, ns_fd: int) -> str:
        # Reserved here, after the caller forked its helpers, so that only it holds them.
        self._reservations = self._reserve_ports(self.config.ports)
        with _net_lock():
            host = _Host.read()
            if self.veth in host.links:
                raise NetworkError(f"container {self.container_id}: a network of that container id "
                                   f"is already attached (interface {self.veth})")
            self._attached = True
            try:
                if self._sweep(host, keep=self.config.bridge):
                    host = _Host.read()
                rules = self._ensure_bridge(host)
                self.ip = self._lease(host)
                self._plug(ns_fd, host.uplink_mtu())
                for table, lines in self._publish().items():
                    rules[table] += lines
                _restore(rules)  # all rules of this attach in one transaction
                return self.ip
            except BaseException:
                self._attached = False
                try:
                    self._release(_Host.read())
                except NetworkError:
                    pass  # the original error says more; the next attach sweeps the rest
                raise

    def _ensure_bridge(self, host: _Host) -> dict[str, list[str]]:
        """Create the bridge unless it exists (checking an existing one fits); returns the
        iptables lines still missing for it."""
        name, want = self.config.bridge, f"{self.gateway}/{self.net.prefixlen}"
        link = host.links.get(name)
        if link is not None:
            if link.kind != "bridge" or not link.alias.startswith(ALIAS_PREFIX):
                raise NetworkError(f"bridge {name}: an interface of that name exists and was not "
                                   f"made by pybuild ({link.kind or 'device'}); delete it or "
                                   "choose another bridge name")
            if want not in link.addrs:
                raise NetworkError(f"bridge {name} has address {', '.join(link.addrs) or 'none'}, "
                                   f"not {want} as subnet {self.net} needs")
        else:
            self._check_overlap(host)
            old = next((b.alias.removeprefix(ALIAS_PREFIX) for b in host.our_bridges()),
                       f"ip_forward={_sysctl('ipv4/ip_forward')}")
            _run(["ip", "-batch", "-"], input="\n".join([
                f"link add {name} type bridge",
                f'link set {name} alias "{ALIAS_PREFIX}{old}"',
                f"addr add {want} dev {name}",
                f"link set {name} up", ""]))
            host.links[name] = _Link(name, "bridge", None, ALIAS_PREFIX + old, [want])
        _sysctl("ipv4/ip_forward", "1")
        _sysctl(f"ipv4/conf/{name.replace('.', '/')}/route_localnet", "1")
        tag = f"pybuild-bridge:{name}"
        if any(_comment(r) == tag for rules in host.rules.values() for r in rules):
            return {"nat": [], "filter": []}
        nat, filt = self._chain_setup(host)
        c = f"-m comment --comment {tag}"
        nat += [f"-A {POST_CHAIN} -s {self.net} ! -o {name} {c} -j MASQUERADE",
                f"-A {POST_CHAIN} -s {LOOPBACK_NET} -o {name} {c} -j MASQUERADE",
                f"-A {POST_CHAIN} -s {self.net} -o {name} -m conntrack --ctstate DNAT {c} -j MASQUERADE"]
        filt += [f"-A {FWD_CHAIN} -i {name} {c} -j ACCEPT",
                 f"-A {FWD_CHAIN} -o {name} -m conntrack --ctstate RELATED,ESTABLISHED {c} -j ACCEPT",
                 f"-A {INPUT_CHAIN} -i {name} -d {LOOPBACK_NET} "
                 f"-m conntrack ! --ctstate RELATED,ESTABLISHED,DNAT {c} -j DROP"]
        return {"nat": nat, "filter": filt}

    @staticmethod
    def _chain_setup(host: _Host) -> tuple[list[str], list[str]]:
        """Lines creating our chains and the jumps into them, where missing."""
        c = f"-m comment --comment {JUMP_TAG}"
        want = {
            "nat": {NAT_CHAIN: [f"-A PREROUTING -m addrtype --dst-type LOCAL {c} -j {NAT_CHAIN}",
                                f"-A OUTPUT -m addrtype --dst-type LOCAL {c} -j {NAT_CHAIN}"],
                    POST_CHAIN: [f"-I POSTROUTING 1 {c} -j {POST_CHAIN}"]},
            "filter": {FWD_CHAIN: [f"-I FORWARD 1 {c} -j {FWD_CHAIN}"],
                       INPUT_CHAIN: [f"-I INPUT 1 {c} -j {INPUT_CHAIN}"]},
        }
        out: dict[str, list[str]] = {"nat": [], "filter": []}
        for table, chains in want.items():
            jumps = {r.split()[-1] for r in host.rules[table] if _comment(r) == JUMP_TAG}
            for chain, lines in chains.items():
                if chain not in host.chains[table]:
                    out[table].insert(0, f":{chain} - [0:0]")
                if chain not in jumps:
                    out[table] += lines
        return out["nat"], out["filter"]

    def _check_overlap(self, host: _Host) -> None:
        """Refuse a subnet that some existing route already covers."""
        for route in host.routes:
            dst = route.get("dst", "")
            if dst in ("", "default") or route.get("dev") == self.config.bridge:
                continue
            if ipaddress.ip_network(dst, strict=False).overlaps(self.net):
                raise NetworkError(f"network subnet {self.net} overlaps the route {dst} on "
                                   f"{route.get('dev', '?')}; choose another subnet")

    def _lease(self, host: _Host) -> str:
        """The lowest free address, leases being the aliases of our veths on this bridge."""
        used = {str(self.gateway)}
        for link in host.our_veths():
            if link.master == self.config.bridge:
                used.add(link.alias.split()[1])
        for addr in self.net.hosts():
            if str(addr) not in used:
                return str(addr)
        raise NetworkError(f"network subnet {self.net} on bridge {self.config.bridge} has no free "
                           f"address left ({len(used) - 1} containers attached)")

    def _plug(self, ns_fd: int, mtu: int) -> None:
        """Create the veth pair straight into the container and configure its end there."""
        cid = re.sub(r"[^A-Za-z0-9_.:-]", "_", self.container_id)[:64]
        ns = f"/proc/self/fd/{ns_fd}"  # as the tools see it: they inherit ns_fd
        _run(["ip", "-batch", "-"], pass_fds=(ns_fd,), input="\n".join([
            f"link add {self.veth} mtu {mtu} type veth peer name eth0 mtu {mtu} netns {ns}",
            f'link set {self.veth} alias "{ALIAS_PREFIX}{self.ip} {cid}"',
            f"link set {self.veth} master {self.config.bridge}",
            f"link set {self.veth} type bridge_slave hairpin on",
            f"link set {self.veth} up", ""]))
        _run(["nsenter", f"--net={ns}", "ip", "-batch", "-"], pass_fds=(ns_fd,), input="\n".join([
            "link set lo up",
            f"addr add {self.ip}/{self.net.prefixlen} dev eth0",
            "link set eth0 up",
            f"route add default via {self.gateway} dev eth0", ""]))

    def _publish(self) -> dict[str, list[str]]:
        """DNAT and FORWARD lines for the published ports, tagged with our veth."""
        c = f"-m comment --comment pybuild:{self.veth}"
        nat, filt = [], []
        for port in self.config.ports:
            match = f"-p {port.proto} -m {port.proto}"
            dest = "" if port.host_ip == "0.0.0.0" else f"-d {port.host_ip}/32 "
            nat.append(f"-A {NAT_CHAIN} {dest}{match} --dport {port.host_port} {c} "
                       f"-j DNAT --to-destination {self.ip}:{port.container_port}")
            filt.append(f"-A {FWD_CHAIN} -d {self.ip}/32 -o {self.config.bridge} {match} "
                        f"--dport {port.container_port} {c} -j ACCEPT")
        return {"nat": nat, "filter": filt}

    # -- teardown ----------------------------------------------------------------

    def teardown(self) -> None:
        """Remove this container's veth, rules, port reservations and, if last, the bridge.

        An instance that never attached removes whatever its container id left
        (a monitor cleaning up after its killed parent makes a fresh one)."""
        try:
            if self._attached or not self._closed:
                _can_fork_tools()
                with _net_lock():
                    host = _Host.read()
                    mine = f"pybuild:{self.veth}"
                    if self._attached or self.veth in host.links or any(
                            _comment(r) == mine for rules in host.rules.values() for r in rules):
                        self._release(host)
                self._attached = False
                self.ip = None
        finally:
            self._closed = True
            self._release_ports()

    def _release_ports(self) -> None:
        for sock in self._reservations:
            sock.close()
        self._reservations = []

    def _release(self, host: _Host) -> None:
        if self.veth in host.links:
            try:
                _run(["ip", "link", "del", self.veth])
            except NetworkError:
                if self.veth in _Host.read().links:  # not just gone with the container
                    raise
            del host.links[self.veth]
        self._sweep(host, also=self.veth)

    @staticmethod
    def _sweep(host: _Host, also: str | None = None, keep: str | None = None) -> bool:
        """Delete rules of vanished veths (and of `also`), then bridges (but `keep`) and
        chains left unused; says whether anything changed."""
        veths = {link.name for link in host.our_veths()} - {also}
        gone: dict[str, list[str]] = {"nat": [], "filter": []}
        kept: dict[str, list[str]] = {"nat": [], "filter": []}
        for table, rules in host.rules.items():
            for rule in rules:
                tag = _comment(rule)
                owner = tag.removeprefix("pybuild:") if tag.startswith("pybuild:") else None
                (gone if owner is not None and owner not in veths else kept)[table].append(rule)
        idle = [b for b in host.our_bridges()
                if b.name != keep and not set(host.ports_of(b.name)) - {also}]
        for bridge in idle:
            tag = f"pybuild-bridge:{bridge.name}"
            for table in kept:
                gone[table] += [r for r in kept[table] if _comment(r) == tag]
                kept[table] = [r for r in kept[table] if _comment(r) != tag]
        drop_chains = not any(_comment(r) != JUMP_TAG for rules in kept.values() for r in rules)
        if drop_chains:
            for table in kept:
                gone[table] += kept[table]
        script = {t: ["-D" + r[2:] for r in rules] for t, rules in gone.items()}
        if drop_chains:
            for table, chains in host.chains.items():
                script[table] += [f"-X {chain}" for chain in sorted(chains)]
        _restore(script)
        remaining = [b for b in host.our_bridges() if b not in idle]
        for bridge in idle:
            _run(["ip", "link", "del", bridge.name])
            del host.links[bridge.name]
        if idle and not remaining:
            old = idle[0].alias.removeprefix(ALIAS_PREFIX)
            if old == "ip_forward=0":
                _sysctl("ipv4/ip_forward", "0")
        return bool(idle) or any(script.values())


def collect_garbage() -> bool:
    """Remove what killed parents left in this network namespace: rules of vanished
    containers, bridges nobody uses, our chains when empty.  Says whether it removed anything."""
    with _net_lock():
        return PrivateNetwork._sweep(_Host.read())
