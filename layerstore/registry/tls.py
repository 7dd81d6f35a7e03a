"""How to talk to one registry host: scheme, CA bundle, client certificate.

Follows the docker/containers `certs.d/<host:port>/` convention: `*.crt` are
extra CAs, `<name>.cert` + `<name>.key` a client certificate. Registries on
localhost/127.0.0.1/::1, and those the user marks insecure, are tried over
HTTPS without verification first and then over plain HTTP, as docker does —
unless a CA for them is configured, which then is checked. Loopback is
decided by the addresses a name resolves to, not by how it is spelt.
"""

from __future__ import annotations

import ipaddress
import os
import socket
from dataclasses import dataclass, field
from pathlib import Path

from layerstore.registry.credentials import config_dir

SYSTEM_CERTS_DIRS = (Path("/etc/containers/certs.d"), Path("/etc/docker/certs.d"))


def certs_dirs() -> list[Path]:
    """Where certs.d trees are looked up, most specific first."""
    dirs = []
    env = os.environ.get("PYBUILD_CERTS_DIR")
    if env:
        dirs.append(Path(env))
    dirs.append(config_dir() / "certs.d")
    dirs.extend(SYSTEM_CERTS_DIRS)
    return dirs


def host_name(host: str) -> str:
    """`127.0.0.1:5000` -> `127.0.0.1`; `[::1]:5000` -> `[::1]`."""
    if host.startswith("["):
        return host[: host.index("]") + 1]
    return host.rsplit(":", 1)[0] if ":" in host else host


def _loopback_address(text: str) -> bool | None:
    """True/False for a literal IP address, None for a name."""
    try:
        ip = ipaddress.ip_address(text.split("%", 1)[0])
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_loopback


def is_loopback(host: str) -> bool:
    """Does `host` (`name[:port]`) only ever mean this machine?

    Decided by address, as docker does, never by spelling: `127.attacker.example`
    is somebody's DNS name. A name counts when every address it resolves to
    is loopback; one that does not resolve does not count. (`localhost` is
    taken at its word, as everywhere.)"""
    name = host_name(host).strip("[]")
    if name.lower().rstrip(".") == "localhost":
        return True
    literal = _loopback_address(name)
    if literal is not None:
        return literal
    try:
        infos = socket.getaddrinfo(name, None, proto=socket.IPPROTO_TCP)
    except (OSError, UnicodeError, ValueError):
        return False
    found = [_loopback_address(str(info[4][0])) for info in infos]
    return bool(found) and all(found)


@dataclass
class TLSConfig:
    """Settings for requests: `verify` (bool or CA path), `cert`, schemes to try."""

    host: str
    verify: bool | str = True
    cert: tuple[str, str] | None = None
    schemes: tuple[str, ...] = ("https",)
    ca_files: list[str] = field(default_factory=list)


def for_host(host: str, tls_verify: bool | None = None,
             insecure_hosts: tuple[str, ...] = ()) -> TLSConfig:
    """The TLS settings for `host` (`name[:port]`).

    tls_verify None means the default: verify, except for loopback and
    `insecure_hosts`, where an unverified HTTPS attempt is followed by HTTP.
    """
    ca_files: list[str] = []
    cert = None
    for base in certs_dirs():
        d = base / host
        if not d.is_dir():
            continue
        for f in sorted(d.iterdir()):
            if f.suffix == ".crt":
                ca_files.append(str(f))
            elif f.suffix == ".cert":
                key = f.with_suffix(".key")
                if key.is_file() and cert is None:
                    cert = (str(f), str(key))
        break
    insecure = tls_verify is False or (
        tls_verify is None and not ca_files and (host in insecure_hosts or is_loopback(host)))
    if insecure:
        return TLSConfig(host, verify=False, cert=cert, schemes=("https", "http"))
    verify: bool | str = True
    if ca_files:
        verify = ca_files[0] if len(ca_files) == 1 else _merged_bundle(host, ca_files)
    return TLSConfig(host, verify=verify, cert=cert, ca_files=ca_files)


_BUNDLES: dict[tuple[str, ...], str] = {}


def _merged_bundle(host: str, ca_files: list[str]) -> str:
    """Several CA files for one host: requests takes one path, so concatenate
    them into a private temp file (once per process, removed at exit)."""
    import atexit
    import tempfile

    key = tuple(ca_files)
    if key not in _BUNDLES:
        fd, path = tempfile.mkstemp(prefix="pybuild-ca-", suffix=".pem")
        with os.fdopen(fd, "wb") as out:
            for f in ca_files:
                out.write(Path(f).read_bytes().rstrip(b"\n") + b"\n")
        atexit.register(os.unlink, path)
        _BUNDLES[key] = path
    return _BUNDLES[key]
