"""Which implementation gives a container its `private` network: the bridge (network.py)
where we own the host's network namespace, the user-mode stack (usernet.py) in rootless mode,
where we do not (no veth, bridge or iptables there).

PYBUILD_NETWORK_BACKEND=auto|bridge|user overrides the choice (tests exercise the user-mode
network as root with it); it is read here only.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Protocol

from .netconfig import NetworkConfig, NetworkError

ENV = "PYBUILD_NETWORK_BACKEND"
BACKENDS = ("auto", "bridge", "user")


class ContainerNetwork(Protocol):
    nameserver: str | None   # the resolver the container's resolv.conf names; None: the host's

    def attach(self, pid: int) -> str: ...

    def teardown(self) -> None: ...


def backend() -> str:
    """"bridge" or "user" for this process."""
    asked = os.environ.get(ENV, "") or "auto"
    if asked not in BACKENDS:
        raise NetworkError(f"{ENV}={asked[:40]!r} is not one of {', '.join(BACKENDS)}")
    if asked != "auto":
        return asked
    from layerstore.userns import in_user_namespace

    return "user" if in_user_namespace() else "bridge"


def network_for(config: NetworkConfig, container_id: str, state_dir: Path) -> ContainerNetwork:
    """The private network of one container (state_dir: where a user-mode helper keeps its
    log, pid record and API socket)."""
    if backend() == "user":
        from .usernet import UserNetwork

        return UserNetwork(config, container_id, state_dir)
    from .network import PrivateNetwork

    return PrivateNetwork(config, container_id)
