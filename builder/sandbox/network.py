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
`pybuild <ip> <container-id>[ <hold>]` (IP leases are read back from these aliases; the
kernel deletes the veth with the container's namespace), the bridge carries
`pybuild ip_forward=<old value>`, and every iptables rule carries the comment
`pybuild:<veth>` (per container), `pybuild-bridge:<bridge>` (per bridge) or
`pybuild-jump` (the jumps from the built-in chains into ours: nat PYBUILD and
PYBUILD-POSTROUTING, filter PYBUILD-FORWARD and PYBUILD-INPUT).  Each attach
sweeps rules whose veth no longer exists, and so does a teardown that had rules
of its own or leaves a bridge unused.  Links, addresses and routes are read and
changed over rtnetlink in-process (rtnetlink.py); only iptables runs a program.

A bridge goes with its last port, and making it again costs more than the rest of a
container's network (two iptables-restore runs and the kernel's RCU wait when a
device is deleted).  Jobs that start many short containers in a row (a build's RUN
steps) therefore hold the bridge (`BridgeHold`): a keeper process, forked once, adds
a veth pair whose port end is enslaved to the bridge and carries the alias
`pybuild-hold <keeper pid> <start time>`, then waits for EOF on a pipe only the job
holds; when the job ends in any way (SIGKILL too) it removes the pair, the veths of
its containers the kernel has not removed yet, and sweeps.  Sweeps remove holds
whose keeper is gone.  A container on a live hold (NetworkConfig.hold) without
published ports skips the iptables look at attach (the keeper set the rules up)
and leaves its veth to go with its namespace.  Changes are made
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
import os
import re
import shlex
import shutil
import signal
import socket
import struct
import subprocess
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from builder.procinfo import start_time
from .netconfig import NetworkConfig, NetworkError, PortMapping
from .rtnetlink import Netlink, NetlinkError

LOCK_DIR = "/run/pybuild/net"
LOCK_FILE = f"{LOCK_DIR}/lock"
NAT_CHAIN = "PYBUILD"
POST_CHAIN = "PYBUILD-POSTROUTING"
FWD_CHAIN = "PYBUILD-FORWARD"
INPUT_CHAIN = "PYBUILD-INPUT"
JUMP_TAG = "pybuild-jump"
ALIAS_PREFIX = "pybuild "
HOLD_PREFIX = "pybuild-hold "
LOOPBACK_NET = "127.0.0.0/8"
CLONE_NEWPID = 0x20000000


def veth_name(container_id: str) -> str:
    """Host-side veth name for a container: short, fixed-length, derived from its id."""
    return "pbv" + hashlib.sha256(container_id.encode()).hexdigest()[:12]


def _run(argv: list[str], input: str | None = None) -> str:
    """Run an iptables tool; its failure becomes a one-line NetworkError."""
    tool = shutil.which(argv[0])
    if tool is None:
        raise NetworkError(f"private network needs {argv[0]} (apt-get install iptables)")
    proc = subprocess.run([tool, *argv[1:]], input=input, capture_output=True, text=True)
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


@contextmanager
def _netlink(ns_fd: int | None = None) -> Iterator[Netlink]:
    """A netlink socket of our namespace (or `ns_fd`'s); its refusals become NetworkErrors."""
    try:
        with Netlink(ns_fd) as nl:
            yield nl
    except NetlinkError as exc:
        raise NetworkError(exc.strerror) from None
    except OSError as exc:
        raise NetworkError(f"netlink: {exc.strerror or exc}") from None


def _routes() -> list[dict]:
    """IPv4 routes of the main table, named as `ip -j -4 route` names them (dst, dev)."""
    out = []
    try:
        with open("/proc/thread-self/net/route") as fh:   # this thread's namespace
            lines = fh.read().splitlines()[1:]
    except OSError as exc:
        raise NetworkError(f"/proc/thread-self/net/route: {exc.strerror}") from None
    for line in lines:
        f = line.split()
        if len(f) < 8:
            continue
        dst, mask = int(f[1], 16), int(f[7], 16)
        prefix = bin(mask).count("1")
        name = "default" if dst == 0 and prefix == 0 else \
            f"{socket.inet_ntoa(struct.pack('=I', dst))}/{prefix}"
        out.append({"dst": name, "dev": f[0]})
    return out


class _Host:
    """One look at the host side: links and addresses (netlink), routes (/proc) and, only
    when something needs them, our iptables rules (the one look that runs a program)."""

    def __init__(self, nl: Netlink, links: dict[str, _Link], routes: list[dict]) -> None:
        self.nl = nl          # changes go through the socket that looked
        self.links = links
        self.routes = routes
        self._rules: dict[str, list[str]] | None = None
        self._chains: dict[str, set[str]] = {}

    @classmethod
    def read(cls, nl: Netlink) -> _Host:
        found = nl.links()
        names = {link.index: link.name for link in found.values()}
        links = {name: _Link(name=name, kind=link.kind, master=names.get(link.master),
                             alias=link.alias, addrs=link.addrs, mtu=link.mtu)
                 for name, link in found.items()}
        return cls(nl, links, _routes())

    def again(self) -> _Host:
        return _Host.read(self.nl)

    def delete(self, name: str) -> None:
        """Delete a link of ours; gone already (with its namespace) is fine."""
        try:
            self.nl.delete_link(name)
        except NetlinkError as exc:
            raise NetworkError(exc.strerror) from None
        self.links.pop(name, None)

    @property
    def rules(self) -> dict[str, list[str]]:
        """table -> our rule lines, as iptables-save prints them."""
        if self._rules is None:
            self._read_rules()
        assert self._rules is not None
        return self._rules

    @property
    def chains(self) -> dict[str, set[str]]:
        """table -> chains of ours that exist."""
        if self._rules is None:
            self._read_rules()
        return self._chains

    def _read_rules(self) -> None:
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
        self._rules, self._chains = rules, chains

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

    def dead_holds(self) -> list[_Link]:
        return [link for link in self.links.values()
                if link.alias.startswith(HOLD_PREFIX) and not _keeper_alive(link.alias)]


def _keeper_alive(alias: str) -> bool:
    words = alias.split()
    return len(words) == 3 and words[1].isdigit() and start_time(int(words[1])) == words[2]


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

    nameserver: str | None = None   # the container's resolv.conf keeps the host's resolvers

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
        ns_fd = self._own_namespace(pid)
        try:
            return self._attach_ns(ns_fd)
        finally:
            os.close(ns_fd)

    def _own_namespace(self, pid: int) -> int:
        """An fd of `pid`'s network namespace, which must not be ours: the fd pins the
        namespace we checked, so a pid that dies and is reused meanwhile cannot make us wire
        someone else's, and we never move an interface out of our own namespace."""
        try:
            ns_fd = os.open(f"/proc/{pid}/ns/net", os.O_RDONLY | os.O_CLOEXEC)
        except OSError as exc:
            raise NetworkError(f"container {self.container_id}: process {pid}: "
                               f"{exc.strerror}") from None
        if _netns_id(f"/proc/self/fd/{ns_fd}") == _netns_id("/proc/thread-self/ns/net"):
            os.close(ns_fd)
            raise NetworkError(f"container {self.container_id}: process {pid} shares our "
                               "network namespace; refusing to move an interface out of it")
        return ns_fd

    def _attach_ns(self, ns_fd: int) -> str:
        # Reserved here, after the caller forked its helpers, so that only it holds them.
        self._reservations = self._reserve_ports(self.config.ports)
        with _net_lock(), _netlink() as nl:
            host = _Host.read(nl)
            if self.veth in host.links:
                raise NetworkError(f"container {self.container_id}: a network of that container id "
                                   f"is already attached (interface {self.veth})")
            self._attached = True
            try:
                # under a live hold the keeper set the bridge's rules up and sweeps at its end:
                # a container without published ports then needs no look at iptables
                held = not self.config.ports and self._held(host)
                if not held and self._sweep(host, keep=self.config.bridge):
                    host = host.again()
                rules = self._ensure_bridge(host, check_rules=not held)
                self.ip = self._lease(host)
                self._plug(host, ns_fd)
                for table, lines in self._publish().items():
                    rules[table] += lines
                _restore(rules)  # all rules of this attach in one transaction
                return self.ip
            except BaseException:
                self._attached = False
                try:
                    self._release(host.again())
                except NetworkError:
                    pass  # the original error says more; the next attach sweeps the rest
                raise

    def _held(self, host: _Host) -> bool:
        """Whether our hold is a port of our bridge and its keeper lives."""
        alias = HOLD_PREFIX + self.config.hold
        return bool(self.config.hold) and _keeper_alive(alias) and any(
            link.alias == alias and link.master == self.config.bridge
            for link in host.links.values())

    def _ensure_bridge(self, host: _Host, check_rules: bool = True) -> dict[str, list[str]]:
        """Create the bridge unless it exists (checking an existing one fits); returns the
        iptables lines still missing for it (none when an existing bridge's rules are not to
        be checked)."""
        name, want = self.config.bridge, f"{self.gateway}/{self.net.prefixlen}"
        link = host.links.get(name)
        check_rules = check_rules or link is None
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
            try:
                host.nl.add_link(name, "bridge")
                host.nl.set_link(name, alias=f"{ALIAS_PREFIX}{old}")
                host.nl.add_address(host.nl.index(name), want, f"address {want} on {name}")
                host.nl.set_link(name, up=True)
            except NetlinkError as exc:
                raise NetworkError(f"bridge {name}: {exc.strerror}") from None
            host.links[name] = _Link(name, "bridge", None, ALIAS_PREFIX + old, [want])
        _sysctl("ipv4/ip_forward", "1")
        _sysctl(f"ipv4/conf/{name.replace('.', '/')}/route_localnet", "1")
        tag = f"pybuild-bridge:{name}"
        if not check_rules or any(_comment(r) == tag
                                  for rules in host.rules.values() for r in rules):
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

    def _plug(self, host: _Host, ns_fd: int) -> None:
        """Create the veth pair straight into the container and configure its end there."""
        cid = re.sub(r"[^A-Za-z0-9_.:-]", "_", self.container_id)[:64]
        mtu, nl = host.uplink_mtu(), host.nl
        try:
            nl.add_veth(self.veth, "eth0", mtu, peer_ns_fd=ns_fd,
                        master=nl.index(self.config.bridge))
            hold = f" {self.config.hold}" if self.config.hold else ""
            nl.set_link(self.veth, alias=f"{ALIAS_PREFIX}{self.ip} {cid}{hold}", hairpin=True,
                        up=True)
            with Netlink(ns_fd) as inside:   # a socket of the container's namespace
                inside.set_link("lo", up=True)
                eth0 = inside.index("eth0")
                inside.add_address(eth0, f"{self.ip}/{self.net.prefixlen}",
                                   f"address {self.ip} on eth0")
                inside.set_link("eth0", up=True)
                inside.add_default_route(str(self.gateway), eth0,
                                         f"default route via {self.gateway}")
        except NetlinkError as exc:
            raise NetworkError(f"container {self.container_id}: {exc.strerror}") from None

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
                with _net_lock(), _netlink() as nl:
                    host = _Host.read(nl)
                    mine = f"pybuild:{self.veth}"
                    # rules tagged with our veth exist only for published ports
                    if self._attached or self.veth in host.links or (self.config.ports and any(
                            _comment(r) == mine for rules in host.rules.values() for r in rules)):
                        self._release(host, lazy=not self.config.ports and self._held(host))
                self._attached = False
                self.ip = None
        finally:
            self._closed = True
            self._release_ports()

    def _release_ports(self) -> None:
        for sock in self._reservations:
            sock.close()
        self._reservations = []

    def _release(self, host: _Host, lazy: bool = False) -> None:
        """Remove our veth and sweep. `lazy` (under a live hold): leave the veth to the kernel,
        which deletes it with the container's namespace, off our path; deleting it here
        waits for an RCU barrier (20-35 ms), and the hold removes any left at its end."""
        if lazy:
            return
        if self.veth in host.links:
            host.delete(self.veth)
        self._sweep(host, also=self.veth, quick=not self.config.ports)

    @staticmethod
    def _sweep(host: _Host, also: str | None = None, keep: str | None = None,
               quick: bool = False) -> bool:
        """Delete rules of vanished veths (and of `also`), then bridges (but `keep`) and
        chains left unused; says whether anything changed. `quick` (a container without
        published ports going) looks at the rules only when a bridge goes: rules of other
        vanished veths wait for the next attach, which sweeps them."""
        dead = host.dead_holds()
        for hold in dead:   # its keeper was killed: nobody else will remove it
            host.delete(hold.name)
        idle = [b for b in host.our_bridges()
                if b.name != keep and not set(host.ports_of(b.name)) - {also}]
        if quick and not idle:
            return bool(dead)
        veths = {link.name for link in host.our_veths()} - {also}
        gone: dict[str, list[str]] = {"nat": [], "filter": []}
        kept: dict[str, list[str]] = {"nat": [], "filter": []}
        for table, rules in host.rules.items():
            for rule in rules:
                tag = _comment(rule)
                owner = tag.removeprefix("pybuild:") if tag.startswith("pybuild:") else None
                (gone if owner is not None and owner not in veths else kept)[table].append(rule)
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
            host.delete(bridge.name)
        if idle and not remaining:
            old = idle[0].alias.removeprefix(ALIAS_PREFIX)
            if old == "ip_forward=0":
                _sysctl("ipv4/ip_forward", "0")
        return bool(idle or dead) or any(script.values())


class BridgeHold:
    """Keeps a private network's bridge and NAT rules up from `start` to `close` (or to the
    death of the process that started it), so its containers only add and remove a veth."""

    def __init__(self, config: NetworkConfig) -> None:
        config.validate()
        if config.mode != "private":
            raise NetworkError(f"BridgeHold needs network mode private, not {config.mode}")
        self.config = config
        self.pid = -1
        self.name = ""          # "<keeper pid> <start time>", for NetworkConfig.hold
        self._lifeline = -1

    def start(self) -> None:
        """Fork the keeper and return once it holds the bridge (NetworkError if it cannot)."""
        if self.pid > 0:
            return
        life_r, life_w = os.pipe2(os.O_CLOEXEC)
        status_r, status_w = os.pipe2(os.O_CLOEXEC)
        reply = b""
        try:
            pid = os.fork()
            if pid == 0:
                _keeper_main(self.config, life_r, status_w)   # never returns
            os.close(life_r)
            os.close(status_w)
            life_r = status_w = -1
            self.pid, self._lifeline = pid, life_w
            life_w = -1
            while len(reply) < 4096 and (chunk := os.read(status_r, 4096)):
                reply += chunk
        except BaseException:
            self.close()   # interrupted: the keeper sees EOF and undoes what it did
            raise
        finally:
            for fd in (life_r, life_w, status_r, status_w):
                if fd >= 0:
                    os.close(fd)
        if not reply.startswith(b"ok "):
            self.close()
            raise NetworkError(reply.decode(errors="replace") or "bridge keeper died")
        self.name = reply[3:].decode()

    def network(self) -> NetworkConfig:
        """The config of a container on the held bridge."""
        if not self.name:
            raise NetworkError("bridge hold not started")
        return NetworkConfig(mode="private", subnet=self.config.subnet, bridge=self.config.bridge,
                             hold=self.name)

    def close(self) -> None:
        """Let the keeper go and wait until it has removed the hold (and the bridge if idle)."""
        if self._lifeline >= 0:
            os.close(self._lifeline)
            self._lifeline = -1
        if self.pid > 0:
            try:
                os.waitpid(self.pid, 0)
            except ChildProcessError:
                pass
            self.pid = -1
        self.name = ""

    def __enter__(self) -> BridgeHold:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _keeper_main(config: NetworkConfig, lifeline: int, status: int) -> None:
    """The forked keeper: hold the bridge, wait for EOF on `lifeline`, let go. Never returns."""
    try:
        # the job's Ctrl-C and SIGTERM reach it through the lifeline (the job dies, EOF)
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT):
            signal.signal(sig, signal.SIG_IGN)
        null = os.open(os.devnull, os.O_RDWR)
        for fd in (0, 1, 2):   # never keep the job's output pipes open
            os.dup2(null, fd)
        lo = 3   # nor anything else of the job's: other containers' pipes, locks
        for fd in sorted({lifeline, status}) + [1 << 20]:
            os.closerange(lo, fd)
            lo = fd + 1
        pid = os.getpid()
        started = start_time(pid)
        digest = hashlib.sha256(f"{pid} {started}".encode()).hexdigest()[:11]
        port, peer = f"pbh{digest}0", f"pbh{digest}1"
        holder = PrivateNetwork(config, f"hold-{pid}-{started}")
        with _net_lock(), _netlink() as nl:
            host = _Host.read(nl)
            if PrivateNetwork._sweep(host, keep=config.bridge):
                host = host.again()
            rules = holder._ensure_bridge(host)
            nl.add_veth(port, peer, 1500, master=nl.index(config.bridge))
            nl.set_link(port, alias=f"{HOLD_PREFIX}{pid} {started}")
            _restore(rules)
        os.write(status, f"ok {pid} {started}".encode())
    except BaseException as exc:  # noqa: BLE001 - reported to the job, which raises it
        try:
            os.write(status, str(exc).encode()[:4000] or b"bridge keeper failed")
        finally:
            os._exit(1)
    os.close(status)
    while True:
        try:
            if not os.read(lifeline, 64):
                break
        except InterruptedError:
            continue
    code = 0
    try:
        with _net_lock(), _netlink() as nl:
            host = _Host.read(nl)
            mine = f" {pid} {started}"
            for link in host.our_veths():   # left to the kernel by their teardown, not gone yet
                if link.alias.endswith(mine):
                    host.delete(link.name)
            if port in host.links:
                host.delete(port)
            PrivateNetwork._sweep(host)
    except BaseException:  # noqa: BLE001 - the next sweep removes what is left
        code = 1
    os._exit(code)


def collect_garbage() -> bool:
    """Remove what killed parents left in this network namespace: rules of vanished
    containers, bridges nobody uses, our chains when empty.  Says whether it removed anything."""
    with _net_lock(), _netlink() as nl:
        return PrivateNetwork._sweep(_Host.read(nl))
