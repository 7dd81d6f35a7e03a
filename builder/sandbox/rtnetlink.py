"""The few rtnetlink requests the private network needs, on one socket per network namespace.

The private network used to run `ip` (and `nsenter ip`) for every look at the host and
every change: eight processes per container, 3-20 ms each on a busy host, which was
most of what a private network added to a build's RUN step. These are the same
requests `ip` sends, made in-process: a dump of links (name, kind, master, alias,
MTU) and of IPv4 addresses, a veth pair created with its peer straight in another
namespace, link flags/alias/bridge-port mode, an address, a default route, and a
delete. (pyroute2 would do all this, but importing it takes ~0.35 s: more than the
processes it would save in a short build.)

A socket is bound to the network namespace of the thread that creates it: `Netlink(ns_fd)`
creates its socket on a short-lived thread that has joined `ns_fd`, so the caller's
own threads never change namespace.
"""

from __future__ import annotations

import errno
import ipaddress
import os
import socket
import struct
import threading
from dataclasses import dataclass, field

NETLINK_ROUTE = 0
NLMSG_ERROR, NLMSG_DONE = 2, 3
NLM_F_REQUEST, NLM_F_MULTI, NLM_F_ACK = 0x1, 0x2, 0x4
NLM_F_DUMP_INTR = 0x10
NLM_F_DUMP = 0x300
NLM_F_EXCL, NLM_F_CREATE = 0x200, 0x400
RTM_NEWLINK, RTM_DELLINK, RTM_GETLINK = 16, 17, 18
RTM_NEWADDR, RTM_GETADDR = 20, 22
RTM_NEWROUTE = 24
IFLA_IFNAME, IFLA_MTU, IFLA_MASTER, IFLA_LINKINFO = 3, 4, 10, 18
IFLA_IFALIAS, IFLA_NET_NS_FD = 20, 28
IFLA_INFO_KIND, IFLA_INFO_DATA, IFLA_INFO_SLAVE_KIND, IFLA_INFO_SLAVE_DATA = 1, 2, 4, 5
VETH_INFO_PEER = 1
IFLA_BRPORT_MODE = 4          # hairpin
IFA_ADDRESS, IFA_LOCAL = 1, 2
RTA_OIF, RTA_GATEWAY = 4, 5
RT_TABLE_MAIN, RTPROT_BOOT, RT_SCOPE_UNIVERSE, RTN_UNICAST = 254, 3, 0, 1
IFF_UP = 0x1
CLONE_NEWNET = 0x40000000

_HDR = struct.Struct("=IHHII")       # nlmsghdr: len, type, flags, seq, pid
_IFINFO = struct.Struct("=BxHiII")   # ifinfomsg: family, type, index, flags, change
_IFADDR = struct.Struct("=BBBBI")    # ifaddrmsg: family, prefixlen, flags, scope, index
_RTMSG = struct.Struct("=BBBBBBBBI")  # rtmsg
_ATTR = struct.Struct("=HH")
MAX_REPLY = 64 << 20                 # a dump larger than this is not a host we understand


class NetlinkError(OSError):
    """A request the kernel refused; errno and the request's description."""


def _align(n: int) -> int:
    return (n + 3) & ~3


def attr(kind: int, payload: bytes) -> bytes:
    raw = _ATTR.pack(_ATTR.size + len(payload), kind) + payload
    return raw + b"\0" * (_align(len(raw)) - len(raw))


def _string(kind: int, text: str) -> bytes:
    return attr(kind, text.encode() + b"\0")


def _u32(kind: int, value: int) -> bytes:
    return attr(kind, struct.pack("=I", value))


def parse_attrs(data: bytes) -> dict[int, bytes]:
    """Attributes of one level (the last of a repeated kind wins; nested ones stay raw)."""
    out: dict[int, bytes] = {}
    pos = 0
    while pos + _ATTR.size <= len(data):
        length, kind = _ATTR.unpack_from(data, pos)
        if length < _ATTR.size or pos + length > len(data):
            break
        out[kind & 0x3FFF] = data[pos + _ATTR.size:pos + length]
        pos += _align(length)
    return out


def _u32_of(raw: bytes | None, default: int) -> int:
    return struct.unpack("=I", raw)[0] if raw is not None and len(raw) == 4 else default


def _text(raw: bytes | None) -> str:
    return raw.split(b"\0", 1)[0].decode(errors="replace") if raw else ""


@dataclass
class Link:
    index: int
    name: str
    kind: str = ""
    master: int = 0
    alias: str = ""
    mtu: int = 1500
    up: bool = False
    addrs: list[str] = field(default_factory=list)   # IPv4 "a.b.c.d/len"


class Netlink:
    """One NETLINK_ROUTE socket, in our network namespace or in the one `ns_fd` names."""

    def __init__(self, ns_fd: int | None = None) -> None:
        self._seq = 0
        if ns_fd is None:
            self.sock = self._socket()
        else:
            self.sock = self._socket_in(ns_fd)

    @staticmethod
    def _socket() -> socket.socket:
        sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC,
                             NETLINK_ROUTE)
        try:
            sock.bind((0, 0))
        except BaseException:
            sock.close()
            raise
        return sock

    @classmethod
    def _socket_in(cls, ns_fd: int) -> socket.socket:
        """A socket of `ns_fd`'s namespace, made on a thread of its own that joins it (the
        join is per thread and dies with it)."""
        import ctypes

        box: dict[str, object] = {}

        def enter() -> None:
            try:
                if ctypes.CDLL(None, use_errno=True).setns(ns_fd, CLONE_NEWNET) != 0:
                    err = ctypes.get_errno()
                    raise OSError(err, "setns to the container's network namespace: "
                                       f"{os.strerror(err)}")
                box["sock"] = cls._socket()
            except BaseException as exc:  # noqa: BLE001 - re-raised on the caller's thread
                box["error"] = exc
        t = threading.Thread(target=enter, name="netns-socket")
        t.start()
        t.join()
        if "error" in box:
            raise box["error"]  # type: ignore[misc]
        return box["sock"]  # type: ignore[return-value]

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> Netlink:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- transport --------------------------------------------------------------------

    def _send(self, kind: int, flags: int, body: bytes) -> int:
        self._seq += 1
        msg = _HDR.pack(_HDR.size + len(body), kind, flags | NLM_F_REQUEST, self._seq, 0) + body
        self.sock.sendto(msg, (0, 0))
        return self._seq

    def _replies(self, seq: int, what: str):
        """Messages answering `seq` (type, flags, payload) until DONE or the ACK/error."""
        total = 0
        while True:
            data = self.sock.recv(1 << 16)
            total += len(data)
            if total > MAX_REPLY:
                raise NetlinkError(errno.EMSGSIZE, f"{what}: reply larger than {MAX_REPLY} bytes")
            pos = 0
            while pos + _HDR.size <= len(data):
                length, kind, flags, mseq, _ = _HDR.unpack_from(data, pos)
                if length < _HDR.size:
                    raise NetlinkError(errno.EPROTO, f"{what}: malformed netlink reply")
                payload = data[pos + _HDR.size:pos + length]
                pos += _align(length)
                if mseq != seq:
                    continue
                if kind == NLMSG_DONE:
                    return
                if kind == NLMSG_ERROR:
                    code = -struct.unpack_from("=i", payload)[0]
                    if code:
                        raise NetlinkError(code, f"{what}: {os.strerror(code)}")
                    return
                yield kind, flags, payload

    def request(self, kind: int, body: bytes, what: str, flags: int = 0) -> None:
        """A change, acknowledged (NetlinkError naming `what` when refused)."""
        seq = self._send(kind, flags | NLM_F_ACK, body)
        for _ in self._replies(seq, what):
            pass

    def _dump(self, kind: int, body: bytes, what: str) -> list[bytes]:
        for _ in range(5):   # the kernel flags a dump that raced a change: ask again
            seq = self._send(kind, NLM_F_DUMP, body)
            out, torn = [], False
            for _, flags, payload in self._replies(seq, what):
                torn |= bool(flags & NLM_F_DUMP_INTR)
                out.append(payload)
            if not torn:
                return out
        raise NetlinkError(errno.EAGAIN, f"{what}: interrupted by changes five times")

    # -- reading ----------------------------------------------------------------------

    def links(self) -> dict[str, Link]:
        """Every link of the namespace with its IPv4 addresses, by name."""
        by_index: dict[int, Link] = {}
        for payload in self._dump(RTM_GETLINK, _IFINFO.pack(socket.AF_UNSPEC, 0, 0, 0, 0),
                                  "list links"):
            _, _, index, flags, _ = _IFINFO.unpack_from(payload)
            a = parse_attrs(payload[_IFINFO.size:])
            info = parse_attrs(a.get(IFLA_LINKINFO, b""))
            by_index[index] = Link(index, _text(a.get(IFLA_IFNAME)), _text(info.get(IFLA_INFO_KIND)),
                                   _u32_of(a.get(IFLA_MASTER), 0), _text(a.get(IFLA_IFALIAS)),
                                   _u32_of(a.get(IFLA_MTU), 1500), bool(flags & IFF_UP))
        for payload in self._dump(RTM_GETADDR, _IFADDR.pack(socket.AF_INET, 0, 0, 0, 0),
                                  "list addresses"):
            family, prefixlen, _, _, index = _IFADDR.unpack_from(payload)
            a = parse_attrs(payload[_IFADDR.size:])
            raw = a.get(IFA_LOCAL) or a.get(IFA_ADDRESS)
            if family == socket.AF_INET and raw and len(raw) == 4 and index in by_index:
                by_index[index].addrs.append(f"{socket.inet_ntoa(raw)}/{prefixlen}")
        return {link.name: link for link in by_index.values()}

    # -- changes ----------------------------------------------------------------------

    def add_veth(self, name: str, peer: str, mtu: int, peer_ns_fd: int | None = None,
                 master: int = 0) -> None:
        """A veth pair; the peer is created straight in `peer_ns_fd`'s namespace."""
        peer_attrs = _string(IFLA_IFNAME, peer) + _u32(IFLA_MTU, mtu)
        if peer_ns_fd is not None:
            peer_attrs += _u32(IFLA_NET_NS_FD, peer_ns_fd)
        info = _string(IFLA_INFO_KIND, "veth") + attr(IFLA_INFO_DATA, attr(
            VETH_INFO_PEER, _IFINFO.pack(socket.AF_UNSPEC, 0, 0, 0, 0) + peer_attrs))
        body = (_IFINFO.pack(socket.AF_UNSPEC, 0, 0, 0, 0) + _string(IFLA_IFNAME, name)
                + _u32(IFLA_MTU, mtu) + attr(IFLA_LINKINFO, info))
        if master:
            body += _u32(IFLA_MASTER, master)
        self.request(RTM_NEWLINK, body, f"add veth {name}", NLM_F_CREATE | NLM_F_EXCL)

    def add_link(self, name: str, kind: str) -> None:
        """A link of a kind that needs no more than its name (a bridge)."""
        body = (_IFINFO.pack(socket.AF_UNSPEC, 0, 0, 0, 0) + _string(IFLA_IFNAME, name)
                + attr(IFLA_LINKINFO, _string(IFLA_INFO_KIND, kind)))
        self.request(RTM_NEWLINK, body, f"add {kind} {name}", NLM_F_CREATE | NLM_F_EXCL)

    def index(self, name: str) -> int:
        body = _IFINFO.pack(socket.AF_UNSPEC, 0, 0, 0, 0) + _string(IFLA_IFNAME, name)
        seq = self._send(RTM_GETLINK, 0, body)
        for kind, _, payload in self._replies(seq, f"find link {name}"):
            if kind == RTM_NEWLINK:
                index = _IFINFO.unpack_from(payload)[2]
                # the reply ends the request: drain nothing more
                return index
        raise NetlinkError(errno.ENODEV, f"find link {name}: no such device")

    def set_link(self, name: str, *, up: bool | None = None, alias: str | None = None,
                 hairpin: bool | None = None) -> None:
        """Change a link found by name: its up flag, alias, bridge-port hairpin mode."""
        flags = IFF_UP if up else 0
        change = IFF_UP if up is not None else 0
        body = _IFINFO.pack(socket.AF_UNSPEC, 0, 0, flags, change) + _string(IFLA_IFNAME, name)
        if alias is not None:
            body += attr(IFLA_IFALIAS, alias.encode())
        if hairpin is not None:
            body += attr(IFLA_LINKINFO, _string(IFLA_INFO_SLAVE_KIND, "bridge") + attr(
                IFLA_INFO_SLAVE_DATA, attr(IFLA_BRPORT_MODE, bytes([int(hairpin)]))))
        self.request(RTM_NEWLINK, body, f"set link {name}")

    def add_address(self, index: int, cidr: str, what: str) -> None:
        iface = ipaddress.IPv4Interface(cidr)
        raw = iface.ip.packed
        body = (_IFADDR.pack(socket.AF_INET, iface.network.prefixlen, 0, RT_SCOPE_UNIVERSE, index)
                + attr(IFA_LOCAL, raw) + attr(IFA_ADDRESS, raw))
        self.request(RTM_NEWADDR, body, what, NLM_F_CREATE | NLM_F_EXCL)

    def add_default_route(self, gateway: str, index: int, what: str) -> None:
        body = (_RTMSG.pack(socket.AF_INET, 0, 0, 0, RT_TABLE_MAIN, RTPROT_BOOT, RT_SCOPE_UNIVERSE,
                            RTN_UNICAST, 0)
                + attr(RTA_GATEWAY, ipaddress.IPv4Address(gateway).packed) + _u32(RTA_OIF, index))
        self.request(RTM_NEWROUTE, body, what, NLM_F_CREATE | NLM_F_EXCL)

    def delete_link(self, name: str) -> bool:
        """Delete a link by name; False when there was none."""
        body = _IFINFO.pack(socket.AF_UNSPEC, 0, 0, 0, 0) + _string(IFLA_IFNAME, name)
        try:
            self.request(RTM_DELLINK, body, f"delete link {name}")
        except NetlinkError as exc:
            if exc.errno in (errno.ENODEV, errno.ENOENT):
                return False
            raise
        return True
