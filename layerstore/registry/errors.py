"""Registry errors, one line each, naming the registry and the reference."""

from __future__ import annotations

from layerstore.errors import PybuildError


class RegistryError(PybuildError):
    """A registry refused or failed a request; the message says which and why."""


class Unauthorized(RegistryError):
    """Credentials missing or rejected (HTTP 401)."""


class Denied(RegistryError):
    """Authenticated, but not allowed to do this (HTTP 403 / DENIED)."""


class NameUnknown(RegistryError):
    """The repository does not exist on the registry."""


class ManifestUnknown(RegistryError):
    """No manifest for this tag or digest."""


class Unreachable(RegistryError):
    """Could not connect (DNS, refused, timeout) after retries."""


class TLSFailure(RegistryError):
    """The TLS handshake or certificate verification failed."""


class CredentialsError(PybuildError):
    """config.json or a credential helper could not be read or written."""
