"""Digests (`sha256:<hex>`) and the hashing helpers that produce them."""

from __future__ import annotations

import hashlib
import re

from layerstore.errors import PybuildError

# fullmatch, never match + "$": "$" also matches before a trailing newline, and a digest
# is a file name in blobs/ and a path in registry URLs
_DIGEST = re.compile(r"sha256:[0-9a-f]{64}")


class InvalidDigest(PybuildError):
    """A string that is not a sha256 digest."""


def validate(digest: str) -> str:
    """Return `digest` if it is a well-formed sha256 digest; raise otherwise.

    Only sha256 is accepted: it is what every registry and runtime writes, and a
    digest is also a file name in blobs/, so nothing else may slip through.
    """
    if not isinstance(digest, str) or not _DIGEST.fullmatch(digest):
        raise InvalidDigest(f"invalid digest {digest!r}: expected sha256:<64 hex digits>")
    return digest


def is_digest(value: str) -> bool:
    return isinstance(value, str) and bool(_DIGEST.fullmatch(value))


def hex_of(digest: str) -> str:
    return validate(digest)[len("sha256:"):]


def of_bytes(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def chain_ids(diff_ids: list[str]) -> list[str]:
    """OCI chain IDs: ChainID(L0)=DiffID(L0), ChainID(Ln)=sha256(ChainID(Ln-1) + " " + DiffID(Ln))."""
    out: list[str] = []
    for diff_id in diff_ids:
        out.append(diff_id if not out else of_bytes(f"{out[-1]} {diff_id}".encode()))
    return out
