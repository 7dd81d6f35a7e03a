"""Registry client: pull, push, login, logout against OCI distribution registries.

Entry points: `pull(store, name, ...)`, `push(store, name, dest, ...)`,
`login(host, user, password, ...)`, `logout(host)`. Everything network-side
lives in `client.RegistryClient`.
"""

from __future__ import annotations

DOCKER_HUB_API = "registry-1.docker.io"


def api_host(domain: str) -> str:
    """The host serving /v2/ for a reference's domain (Docker Hub differs)."""
    return DOCKER_HUB_API if domain == "docker.io" else domain


def open_client(domain: str, options=None):
    """A client for `domain` with the credentials stored for it."""
    from layerstore.registry import credentials
    from layerstore.registry.client import RegistryClient

    return RegistryClient(api_host(domain), options, creds=credentials.lookup(domain))
