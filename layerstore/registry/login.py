"""`login` / `logout`: check credentials against the registry, then store them."""

from __future__ import annotations

from pathlib import Path

from layerstore.registry import api_host, credentials
from layerstore.registry.client import Options, RegistryClient
from layerstore.registry.credentials import Credentials
from layerstore.registry.errors import Unauthorized


def normalize_host(text: str) -> str:
    """`https://host:5000/v2/` -> `host:5000`; `docker.io` spellings -> docker.io."""
    host = text.strip()
    for prefix in ("https://", "http://"):
        if host.startswith(prefix):
            host = host[len(prefix):]
    host = host.split("/", 1)[0]
    if host in ("index.docker.io", "registry-1.docker.io", "docker.io"):
        return "docker.io"
    return host


def verify(host: str, creds: Credentials, options: Options | None = None) -> None:
    """Raise Unauthorized unless the registry accepts `creds`."""
    with RegistryClient(api_host(host), options, creds=creds) as client:
        client.ping()
        if client.auth.challenge is None:
            return   # the registry wants no auth at all; nothing to check
        try:
            client.request("GET", "", scopes=frozenset(), what="login").close()
        except Unauthorized:
            raise Unauthorized(f"{host}: login as {creds.username} refused") from None


def login(host: str, username: str, password: str, options: Options | None = None) -> Path:
    host = normalize_host(host)
    creds = Credentials(username, password)
    verify(host, creds, options)
    return credentials.save(host, creds)


def logout(host: str) -> bool:
    return credentials.erase(normalize_host(host))
