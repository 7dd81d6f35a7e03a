"""Registry client: pull, push, login, logout against OCI distribution registries.

Entry points: `ensure_image(store, name, policy=...)` (the one resolve-or-pull),
`pull(store, name, ...)`, `push(store, name, dest, ...)`,
`login(host, user, password, ...)`, `logout(host)`. Everything network-side
lives in `client.RegistryClient`, on `transport` (the one HTTP hygiene for
outside servers, which `ADD <url>` uses too: no ~/.netrc, bounded bodies and
response heads, stall timeouts, sockets a Ctrl-C can hang up).
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


PULL_POLICIES = ("missing", "always", "never")


def _present(store, name: str, platform) -> bool:
    from layerstore.errors import PybuildError

    try:
        store.resolve(name, platform)
    except PybuildError:
        return False
    return True


def ensure_image(store, name: str, *, policy: str = "missing", platform=None, options=None,
                 progress=None):
    """The store's image for `name`, pulled per `policy` (docker's --pull: `missing`
    pulls only when the store lacks it, `always` first pulls, `never` does not). The one
    resolve-or-pull: FROM, `run`, `create` and `bundle` all come here.

    Raises NotFound (local miss, or pull failed: the message says which) and the
    store's own errors for a found but unusable image."""
    from layerstore.errors import NotFound, PlatformMismatch, PybuildError

    if policy not in PULL_POLICIES:
        raise PybuildError(f"invalid pull policy {policy!r}: expected missing, always or never")
    mismatch: PlatformMismatch | None = None
    if policy != "always":
        try:
            return store.resolve(name, platform)
        except PlatformMismatch as exc:
            # docker then pulls the asked platform; if that fails, the mismatch is the news
            if policy == "never":
                raise
            mismatch = exc
        except NotFound:
            if policy == "never":
                raise NotFound(f"{name}: no such image in the store (and --pull=never)") from None
    from layerstore.registry.pull import pull   # only when pulling: requests is heavy

    try:
        result = pull(store, name, platform=platform, options=options, progress=progress)
    except PybuildError as exc:
        if mismatch is not None:
            raise PlatformMismatch(f"{mismatch} (and pulling {platform} failed: {exc})") from None
        if policy == "always" and _present(store, name, platform):
            # the pull is what failed (`--pull` with the registry unreachable): saying the
            # image is missing sent people looking for an image they had
            raise NotFound(f"pulling {name!r} failed: {exc} (the store has a copy; "
                           "pull policy 'always' does not fall back to it)") from None
        raise NotFound(f"unable to find image {name!r} locally, and pulling it failed: "
                       f"{exc}") from None
    return store.resolve(result.name, platform)
