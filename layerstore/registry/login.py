"""`login` / `logout`: check credentials against the registry, then store them."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from layerstore import reference
from layerstore.errors import InvalidReference, PybuildError
from layerstore.registry import api_host, credentials, tls
from layerstore.registry.client import Options, RegistryClient
from layerstore.registry.credentials import Credentials
from layerstore.registry.errors import Unauthorized

MAX_PASSWORD = 64 << 10       # registry tokens (GitHub, GitLab, cloud IAM) are a few KiB


def normalize_host(text: str) -> str:
    """`https://host:5000/v2/` -> `host:5000`; `docker.io` spellings -> docker.io.

    What is left must be a registry `host[:port]` as a reference names one:
    `user:pw@host` would put a password into file names, messages and the
    config's keys, and `..` or `a/b` would be a path (certs.d/<host>/)."""
    host = text.strip()
    for prefix in ("https://", "http://"):
        if host.lower().startswith(prefix):
            host = host[len(prefix):]
    host = host.split("/", 1)[0]
    if "@" in host:
        raise PybuildError("registry address with user information ('user@host'): give the "
                           "user with --username and the password on stdin")
    if host in ("index.docker.io", "registry-1.docker.io", "docker.io"):
        return "docker.io"
    try:
        return reference.check_domain(host)
    except InvalidReference as exc:
        raise PybuildError(str(exc)) from None


def check_credentials(username: str, password: str) -> None:
    """Refuse what cannot be sent as HTTP Basic (RFC 7617): a ':' in the user,
    control characters (a header split), empty or oversized values."""
    if not username:
        raise PybuildError("login: the username is empty")
    if ":" in username or any(ord(c) < 32 or ord(c) == 127 for c in username):
        raise PybuildError("login: the username must not contain ':' or control characters")
    if not password:
        raise PybuildError("login: the password is empty")
    if len(password) > MAX_PASSWORD:
        raise PybuildError(f"login: the password is longer than {MAX_PASSWORD} characters")


def verify(host: str, creds: Credentials, options: Options | None = None,
           warn: Callable[[str], None] | None = None) -> None:
    """Raise Unauthorized unless the registry accepts `creds`."""
    with RegistryClient(api_host(host), options, creds=creds) as client:
        base = client.ping()
        if client.auth.challenge is None:
            return   # the registry wants no auth at all; nothing to check
        if base.startswith("http://") and not tls.is_loopback(client.host) and warn:
            warn(f"WARNING! {host} is reached over plain HTTP: the password crosses the "
                 "network unencrypted.")
        try:
            client.request("GET", "", scopes=frozenset(), what="login").close()
        except Unauthorized:
            raise Unauthorized(f"{host}: login as {creds.username} refused") from None


def login(host: str, username: str, password: str, options: Options | None = None,
          warn: Callable[[str], None] | None = None) -> Path:
    host = normalize_host(host)
    check_credentials(username, password)
    creds = Credentials(username, password)
    verify(host, creds, options, warn)
    return credentials.save(host, creds)


def logout(host: str) -> bool:
    return credentials.erase(normalize_host(host))
