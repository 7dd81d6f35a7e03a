"""How to talk to one registry host: scheme, trusted CAs, client certificate.

Follows docker's `certs.d/<host:port>/` convention (the first of the certs.d
trees that has a directory for the host is used): `*.crt` are CAs trusted *in
addition to* the system roots, `<name>.cert` + `<name>.key` a client
certificate, and a `.cert` without its `.key` (or the reverse) is an error, as
in docker. The CAs and the certificate go into an `ssl.SSLContext` built in
memory for that host alone (nothing is written anywhere: the store's rule is
that nothing leaves ROOT, temporary files included), which the client mounts
on the registry's origin only, so blob storage elsewhere is verified with the
system roots and never sees the client certificate.

Registries on localhost/127.0.0.1/::1, and those the user marks insecure, are
tried over HTTPS without verification first and then over plain HTTP, as
docker does, unless a CA for them is configured, which then is checked.
Loopback is decided by the addresses a name resolves to, not by how it is
spelt.
"""

from __future__ import annotations

import ipaddress
import os
import socket
import ssl
import stat
from dataclasses import dataclass, field
from pathlib import Path

from layerstore import reference
from layerstore.errors import InvalidReference
from layerstore.registry.credentials import config_dir
from layerstore.registry.errors import RegistryError

SYSTEM_CERTS_DIRS = (Path("/etc/containers/certs.d"), Path("/etc/docker/certs.d"))
MAX_PEM = 1 << 20          # one CA bundle or certificate file
MAX_FILES = 100            # files looked at in one host's directory


class CertsError(RegistryError):
    """A host's certs.d directory cannot be used as it is."""


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
    """What requests needs for one host: `verify`, the schemes to try, and the
    host's own `ssl_context` (None: requests' defaults)."""

    host: str
    verify: bool = True
    schemes: tuple[str, ...] = ("https",)
    ssl_context: ssl.SSLContext | None = None
    ca_files: list[str] = field(default_factory=list)
    client_cert: str | None = None


def _read_pem(path: Path) -> bytes:
    """A CA or certificate file: a regular file (a FIFO would block the read for
    ever), at most MAX_PEM bytes."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY)
    except OSError as exc:
        raise CertsError(f"{path}: cannot read: {exc.strerror}") from None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise CertsError(f"{path}: not a regular file")
        data = os.read(fd, MAX_PEM + 1)
    finally:
        os.close(fd)
    if len(data) > MAX_PEM:
        raise CertsError(f"{path}: larger than {MAX_PEM} bytes")
    return data


@dataclass
class _HostFiles:
    dir: Path | None = None
    cas: list[Path] = field(default_factory=list)
    cert: tuple[Path, Path] | None = None


def _host_files(host: str) -> _HostFiles:
    """The CA files and the client certificate pair of `host`'s certs.d directory."""
    try:
        reference.check_domain(host)     # never '..', '/' or '' in a path
    except InvalidReference as exc:
        raise CertsError(str(exc)) from None
    for base in certs_dirs():
        d = base / host
        if not d.is_dir():
            continue
        found = _HostFiles(d)
        names: list[str] = []
        try:
            with os.scandir(d) as entries:
                for entry in entries:
                    names.append(entry.name)
                    if len(names) > MAX_FILES:
                        raise CertsError(f"{d}: more than {MAX_FILES} files")
        except OSError as exc:
            raise CertsError(f"{d}: cannot list: {exc.strerror}") from None
        names.sort()
        present = set(names)
        for name in names:
            if name.endswith(".crt"):
                found.cas.append(d / name)
            elif name.endswith(".cert"):
                key = name[:-len(".cert")] + ".key"
                if key not in present:
                    raise CertsError(f"{d}: missing key {key} for client certificate {name}; "
                                     "CA certificates must use the extension .crt")
                if found.cert is None:
                    found.cert = (d / name, d / key)
            elif name.endswith(".key"):
                cert = name[:-len(".key")] + ".cert"
                if cert not in present:
                    raise CertsError(f"{d}: missing client certificate {cert} for key {name}")
        return found
    return _HostFiles()


def _no_passphrase() -> bytes:
    # OpenSSL would otherwise ask on the terminal for an encrypted key's passphrase
    raise CertsError("client key is encrypted: certs.d keys must not have a passphrase")


def _context(files: _HostFiles, verify: bool) -> ssl.SSLContext:
    """An SSLContext with the system roots plus the host's CAs, and its client certificate."""
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
    if not verify:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    for path in files.cas:
        data = _read_pem(path)
        if not data.strip():
            continue
        try:
            ctx.load_verify_locations(cadata=data.decode("ascii", errors="replace"))
        except (ssl.SSLError, ValueError):
            raise CertsError(f"{path}: not a PEM certificate") from None
    if files.cert is not None:
        cert, key = files.cert
        for path in (cert, key):
            _read_pem(path)      # regular and small: load_cert_chain reads it itself
        try:
            ctx.load_cert_chain(str(cert), str(key), password=_no_passphrase)
        except (ssl.SSLError, ValueError) as exc:
            raise CertsError(f"{cert}: cannot use it with {key.name}: "
                             f"{getattr(exc, 'reason', None) or exc}") from None
    return ctx


def for_host(host: str, tls_verify: bool | None = None,
             insecure_hosts: tuple[str, ...] = ()) -> TLSConfig:
    """The TLS settings for `host` (`name[:port]`).

    tls_verify None means the default: verify, except for loopback and
    `insecure_hosts`, where an unverified HTTPS attempt is followed by HTTP.
    """
    files = _host_files(host)
    insecure = tls_verify is False or (
        tls_verify is None and not files.cas and (host in insecure_hosts or is_loopback(host)))
    ctx = _context(files, not insecure) if files.cas or files.cert else None
    cfg = TLSConfig(host, verify=not insecure, ssl_context=ctx,
                    ca_files=[str(p) for p in files.cas],
                    client_cert=str(files.cert[0]) if files.cert else None)
    if insecure:
        cfg.schemes = ("https", "http")
    return cfg
