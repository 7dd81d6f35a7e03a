"""How a container is networked, as plain checked values: the mode, and for the
`private` mode its subnet, bridge and published ports.

Only the configuration lives here, so that a spec can carry it without loading
what sets a private network up (network.py: bridges, veths, iptables).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from layerstore.errors import PybuildError

if TYPE_CHECKING:
    import ipaddress

MODES = ("none", "host", "private")
PROTOS = ("tcp", "udp")
_IFNAME = re.compile(r"^[A-Za-z0-9_.-]{1,15}\Z")
_HOLD = re.compile(r"^[0-9]{1,10} [0-9]{1,20}\Z")


class NetworkError(PybuildError):
    """A network configuration that cannot work, or a failed network set-up."""


@dataclass
class PortMapping:
    """One published port: host_ip:host_port on the host -> container_port inside."""

    host_port: int
    container_port: int
    proto: str = "tcp"
    host_ip: str = "127.0.0.1"

    def __str__(self) -> str:
        return f"{self.host_ip}:{self.host_port}->{self.container_port}/{self.proto}"

    @classmethod
    def parse(cls, text: str) -> PortMapping:
        """docker's `-p [HOST_IP:]HOST_PORT:CONTAINER_PORT[/PROTO]`; the host address defaults
        to 127.0.0.1 (docker's is 0.0.0.0: publishing to the world must be asked for)."""
        spec, _, proto = text.partition("/")
        parts = spec.rsplit(":", 2)
        if len(parts) == 2:
            parts.insert(0, "127.0.0.1")
        if len(parts) != 3 or not all(p.isdigit() for p in parts[1:]):
            raise NetworkError(f"published port {text!r}: expected "
                               "[HOST_IP:]HOST_PORT:CONTAINER_PORT[/tcp|udp]")
        mapping = cls(int(parts[1]), int(parts[2]), proto or "tcp", parts[0] or "0.0.0.0")
        mapping.validate()
        return mapping

    def validate(self) -> None:
        for what, port in (("host port", self.host_port), ("container port", self.container_port)):
            if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
                raise NetworkError(f"published port {self}: {what} {port!r} is not in 1-65535")
        if self.proto not in PROTOS:
            raise NetworkError(f"published port {self}: protocol {self.proto!r} is not tcp or udp")
        try:
            import ipaddress

            ipaddress.IPv4Address(self.host_ip)
        except ValueError:
            raise NetworkError(f"published port {self}: host address {self.host_ip!r} "
                               "is not an IPv4 address") from None


@dataclass
class NetworkConfig:
    """How a container is networked; `subnet`, `ports`, `bridge` and `hold` matter for private
    only. `hold` names the BridgeHold (network.py) keeping the bridge up for a run of
    containers (a build's RUN steps): their veths are left to go with their namespaces, and the
    hold removes any still there when it ends."""

    mode: str = "none"
    subnet: str = "10.89.0.0/24"
    ports: list[PortMapping] = field(default_factory=list)
    bridge: str = "pybuild0"
    hold: str = ""

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise NetworkError naming the field at fault; touches nothing on the host."""
        if self.mode not in MODES:
            raise NetworkError(f"network mode {self.mode!r} is not one of {', '.join(MODES)}")
        if self.ports and self.mode != "private":
            raise NetworkError(f"publishing port {self.ports[0]} needs network mode private, "
                               f"not {self.mode}")
        if self.mode != "private":
            return
        self.network()
        if not _IFNAME.match(self.bridge) or self.bridge in (".", ".."):
            raise NetworkError(f"bridge name {self.bridge!r} is not a valid interface name "
                               "(1-15 of A-Z a-z 0-9 _ . -)")
        if self.hold and not _HOLD.match(self.hold):
            raise NetworkError(f"bridge hold {self.hold!r} is not '<keeper pid> <start time>'")
        for i, port in enumerate(self.ports):
            if not isinstance(port, PortMapping):
                raise NetworkError(f"published port {port!r} is not a PortMapping")
            port.validate()
            for other in self.ports[:i]:
                if ((other.proto, other.host_port) == (port.proto, port.host_port)
                        and (other.host_ip == port.host_ip or "0.0.0.0" in (other.host_ip, port.host_ip))):
                    raise NetworkError(f"published port {port} clashes with {other}")

    def network(self) -> ipaddress.IPv4Network:
        """The subnet, checked: IPv4, no host bits, room for a gateway and a container."""
        import ipaddress

        try:
            net = ipaddress.ip_network(self.subnet, strict=True)
        except ValueError as exc:
            raise NetworkError(f"network subnet {self.subnet!r}: {exc}") from None
        if not isinstance(net, ipaddress.IPv4Network):
            raise NetworkError(f"network subnet {self.subnet!r}: only IPv4 is supported")
        if net.is_loopback or net.is_multicast or net.is_link_local or net.is_unspecified \
                or net.is_reserved:
            raise NetworkError(f"network subnet {self.subnet!r}: a loopback, multicast, link-local "
                               "or reserved range cannot be a container network")
        if net.prefixlen > 30:
            raise NetworkError(f"network subnet {self.subnet!r}: a /{net.prefixlen} has no room "
                               "for a gateway and a container (use /30 or larger)")
        return net

    def gateway(self) -> ipaddress.IPv4Address:
        """The bridge's address: the subnet's first host address."""
        return self.network().network_address + 1
