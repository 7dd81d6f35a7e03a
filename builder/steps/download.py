"""ADD <url>: download a remote file (http/https), verify --checksum, keep Last-Modified.

The URL comes from a Dockerfile, so from whoever wrote it: the download goes
through layerstore's hardened transport (no ~/.netrc credentials of the
builder, at most 10 redirects and only to http(s), a stall/trickle timeout),
and streams to `dest` (under ROOT) instead of memory. As with docker, there is
no size limit.
"""

from __future__ import annotations

import hashlib
import os
import posixpath
from pathlib import Path
from urllib.parse import urlsplit

from layerstore.errors import PybuildError


class DownloadError(PybuildError):
    """A URL that cannot be fetched or does not match its checksum."""


def url_name(url: str) -> str:
    from urllib.parse import urlparse

    name = posixpath.basename(urlparse(url).path.rstrip("/"))
    return name or "index.html"


def fetch(url: str, dest: Path, checksum: str | None, pace=None) -> Path:
    """Fetch `url` for ADD (http/https only) into the new file `dest`; a clear error
    when it cannot be reached. `pace` (transport.Pace) defaults to $PYBUILD_STALL_TIMEOUT."""
    import email.utils
    import http.client

    import requests
    import urllib3

    from layerstore.registry import transport

    try:
        scheme = urlsplit(url).scheme.lower()
    except ValueError:          # "http://[::1"
        raise DownloadError(f"ADD {url}: not a valid URL") from None
    if scheme not in ("http", "https"):
        raise DownloadError(f"ADD {url}: only http:// and https:// URLs can be downloaded")
    pace = pace or transport.default_pace()
    h = hashlib.sha256()
    try:
        with transport.Session() as session, \
                transport.get(session, url, pace, f"ADD {url}") as r:
            if r.status_code != 200:
                raise DownloadError(f"ADD {url}: download failed: HTTP {r.status_code}")
            fd = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                         0o600)
            os.fchmod(fd, 0o600)        # as BuildKit, whatever the umask
            with open(fd, "wb") as f:
                for chunk in transport.chunks(r, pace, f"ADD {url}"):
                    f.write(chunk)
                    h.update(chunk)
            modified = r.headers.get("Last-Modified")
    except (requests.RequestException, urllib3.exceptions.HTTPError, http.client.HTTPException,
            ValueError) as exc:
        # connection failures, and what a hostile URL makes of requests:
        # InvalidURL, bad ports
        raise DownloadError(f"ADD {url}: cannot download (no network access to it?): "
                            f"{type(exc).__name__}") from None
    except (transport.TransferError, transport.BadBody, transport.RedirectError) as exc:
        raise DownloadError(str(exc)) from None
    if checksum and checksum != "sha256:" + h.hexdigest():
        raise DownloadError(f"ADD {url}: checksum mismatch: expected {checksum}, "
                            f"got sha256:{h.hexdigest()}")
    if modified:
        try:
            t = email.utils.parsedate_to_datetime(modified).timestamp()
            os.utime(dest, (t, t))
        except (TypeError, ValueError, OverflowError, OSError):
            pass           # a date we cannot use is no date: docker ignores it too
    return dest
