"""ADD <url>: download a remote file (http/https), verify --checksum, keep Last-Modified."""

from __future__ import annotations

import hashlib
import os
import posixpath
from pathlib import Path

from layerstore.errors import PybuildError


class DownloadError(PybuildError):
    """A URL that cannot be fetched or does not match its checksum."""


def url_name(url: str) -> str:
    from urllib.parse import urlparse

    name = posixpath.basename(urlparse(url).path.rstrip("/"))
    return name or "index.html"


def fetch(url: str, dest: Path, checksum: str | None) -> Path:
    """Fetch `url` for ADD (http/https only); a clear error when it cannot be reached."""
    import email.utils

    import requests

    if not url.startswith(("http://", "https://")):
        raise DownloadError(f"ADD {url}: only http:// and https:// URLs can be downloaded")
    h = hashlib.sha256()
    try:
        with requests.get(url, stream=True, timeout=30) as r:
            if r.status_code != 200:
                raise DownloadError(f"ADD {url}: download failed: HTTP {r.status_code}")
            with open(dest, "wb") as f:
                for chunk in r.iter_content(1 << 20):
                    f.write(chunk)
                    h.update(chunk)
            modified = r.headers.get("Last-Modified")
    except requests.RequestException as exc:
        raise DownloadError(f"ADD {url}: cannot download (no network access to it?): "
                         f"{type(exc).__name__}") from None
    if checksum and checksum != "sha256:" + h.hexdigest():
        raise DownloadError(f"ADD {url}: checksum mismatch: expected {checksum}, "
                         f"got sha256:{h.hexdigest()}")
    os.chmod(dest, 0o600)
    if modified:
        try:
            t = email.utils.parsedate_to_datetime(modified).timestamp()
            os.utime(dest, (t, t))
        except (TypeError, ValueError):
            pass
    return dest
