"""Errors a user can act on.

Every error pybuild raises on purpose derives from PybuildError; the CLI prints
its message as one line and exits non-zero, while anything else is a bug and
shows a traceback only with --debug.
"""

from __future__ import annotations


class PybuildError(Exception):
    """An error caused by input or environment, reported as one line."""

    exit_code: int = 1


class NotFound(PybuildError):
    """A named object (image, blob, ref, snapshot) does not exist."""


class PlatformMismatch(NotFound):
    """A single-platform image is here, but for another platform than the one asked
    (a pull may still find the right one: it is a kind of "not found")."""


class InvalidReference(PybuildError):
    """An image reference that docker would reject."""


class DigestMismatch(PybuildError):
    """Content did not hash to the digest it was promised to have."""

    def __init__(self, expected: str, actual: str, what: str = "blob") -> None:
        super().__init__(f"{what}: digest mismatch: expected {expected}, got {actual}")
        self.expected = expected
        self.actual = actual


class BadLayer(PybuildError):
    """A layer tar that is corrupt or hostile; names the entry at fault."""


class InvalidImage(PybuildError):
    """A manifest, index or config that does not parse or is inconsistent."""


class LocalIOError(PybuildError):
    """Writing to local disk failed (the store full, read-only, not permitted): a cause
    here, not the remote's, so never retried as a network fault, and the message names
    the path."""

    def __init__(self, exc: OSError, path: object) -> None:
        self.errno = exc.errno
        super().__init__(f"{exc.strerror or exc}: {path}")
