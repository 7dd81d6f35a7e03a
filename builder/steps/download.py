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
import re
from pathlib import Path
from urllib.parse import urlsplit

from builder.dockerfile.instructions import checksum_problem
from layerstore.errors import PybuildError


class DownloadError(PybuildError):
    """A URL that cannot be fetched or does not match its checksum."""


def check_checksum(checksum: str | None, sources: list[str]) -> None:
    """ADD --checksum (the planner already refused a bad one; a trigger or a library
    caller that skipped it still gets the same rule)."""
    problem = checksum_problem(checksum, sources)
    if problem:
        raise DownloadError(problem)


def is_url(source: str) -> bool:
    return source.startswith(("http://", "https://"))


def is_git(source: str) -> bool:
    """A source BuildKit would clone (its IsGitURL rules): git://, git@host:, or an
    http(s) URL of a `.git` path (a `#ref` may follow)."""
    if source.startswith(("git://", "git@", "ssh://")):
        return True
    if is_url(source):
        path = urlsplit(source.split("#", 1)[0]).path
        return path.endswith(".git") or path.endswith(".git/")
    return False


def redact(url: str) -> str:
    """A URL as messages show it: a password written into it (`https://u:pw@host/`) is
    replaced, as BuildKit's RedactCredentials does; logs of CI builds are public."""
    try:
        parts = urlsplit(url)
    except ValueError:
        parts = None
    if parts is None or parts.password is None:
        if parts is None and "@" in url:
            return url.split("://", 1)[0] + "://xxxxx@" + url.rsplit("@", 1)[1]
        return url
    host = parts.netloc.rpartition("@")[2]
    return parts._replace(netloc=f"{parts.username}:xxxxx@{host}").geturl()


_USERINFO = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*://[^/\s:@]*):[^/\s@]*@")


def redact_text(text: str) -> str:
    """Every `scheme://user:password@` in a step's text (as progress and history show it)
    with the password replaced, as BuildKit shows ADD sources."""
    return _USERINFO.sub(r"\1:xxxxx@", text)


def _failure(url: str, exc: BaseException) -> str:
    """`host: cause` of a failed download, e.g. `example.com:443: DNS name not resolved`;
    a password of the URL never shown, whatever the exception's text quotes."""
    from layerstore.registry import transport

    try:
        parts = urlsplit(url)
        host, password = parts.netloc.rpartition("@")[2], parts.password
    except ValueError:
        host, password = "", None
    where = transport.failure_host(exc) or transport.printable(host)
    text = f"{where}: {transport.failure_reason(exc)}" if where else transport.failure_reason(exc)
    return text.replace(password, "xxxxx") if password else text


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

    shown = redact(url)

    try:
        scheme = urlsplit(url).scheme.lower()
    except ValueError:          # "http://[::1"
        raise DownloadError(f"ADD {shown}: not a valid URL") from None
    if scheme not in ("http", "https"):
        raise DownloadError(f"ADD {shown}: only http:// and https:// URLs can be downloaded")
    pace = pace or transport.default_pace()
    algorithm = checksum.partition(":")[0] if checksum else "sha256"
    h = hashlib.new(algorithm)
    try:
        with transport.Session() as session, \
                transport.get(session, url, pace, f"ADD {shown}") as r:
            if r.status_code != 200:
                raise DownloadError(f"ADD {shown}: download failed: HTTP {r.status_code}")
            fd = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                         0o600)
            os.fchmod(fd, 0o600)        # as BuildKit, whatever the umask
            with open(fd, "wb") as f:
                for chunk in transport.chunks(r, pace, f"ADD {shown}"):
                    f.write(chunk)
                    h.update(chunk)
            modified = r.headers.get("Last-Modified")
    except (requests.RequestException, urllib3.exceptions.HTTPError, http.client.HTTPException,
            ValueError) as exc:
        # connection failures, and what a hostile URL makes of requests:
        # InvalidURL, bad ports
        raise DownloadError(f"ADD {shown}: cannot download: {_failure(url, exc)}") from None
    except (transport.TransferError, transport.BadBody, transport.RedirectError) as exc:
        raise DownloadError(str(exc)) from None
    if checksum and checksum != f"{algorithm}:{h.hexdigest()}":
        raise DownloadError(f"ADD {shown}: checksum mismatch: expected {checksum}, "
                            f"got {algorithm}:{h.hexdigest()}")
    if modified:
        try:
            t = email.utils.parsedate_to_datetime(modified).timestamp()
            os.utime(dest, (t, t))
        except (TypeError, ValueError, OverflowError, OSError):
            pass           # a date we cannot use is no date: docker ignores it too
    return dest
