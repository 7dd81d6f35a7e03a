"""Distribution-spec HTTP client for one registry, on `requests`.

What it adds over plain requests: the /v2/ ping that picks the scheme and
learns the auth challenge; Authorization only ever sent to the registry's own
origin (redirects to blob storage are followed by hand, without it, and never
from https down to http or to another scheme); no ~/.netrc (transport.Session);
retries with exponential backoff on connection errors, 429 and 5xx
(Retry-After honoured); every body read bounded after decompression
(manifests, tag lists, error bodies); transfers that stall or trickle are cut
off (`Options.timeout`, $PYBUILD_STALL_TIMEOUT); blob downloads that stream
into the store's ingest, resume with Range and are verified before they
become visible.
"""

from __future__ import annotations

import json
import queue
import random
import threading
import weakref
from dataclasses import dataclass, field
from typing import BinaryIO, Callable
from urllib.parse import urljoin, urlsplit, urlencode

import requests

from layerstore import digest as dg
from layerstore import mediatypes as mt
from layerstore.blobs import BlobStore, SizeMismatch
from layerstore.errors import DigestMismatch, LocalIOError
from layerstore.model import Descriptor
from layerstore.registry import credentials, tls, transport
from layerstore.registry.auth import Authenticator, scope
from layerstore.registry.errors import (Denied, ManifestUnknown, NameUnknown, RegistryError,
                                        TLSFailure, Unauthorized, Unreachable)

MANIFEST_ACCEPT = ", ".join((mt.OCI_INDEX, mt.OCI_MANIFEST, mt.DOCKER_MANIFEST_LIST,
                             mt.DOCKER_MANIFEST))
MAX_MANIFEST = 4 << 20            # what distribution itself accepts
MAX_ERROR_BODY = 64 << 10         # only the error codes are wanted from it
MAX_TAGS_PAGE = 8 << 20           # ~250,000 tag names in one page
MAX_TAGS_TOTAL = 32 << 20
MAX_TAG_PAGES = 1000
CHUNK = 1 << 20
MONOLITHIC_MAX = 32 << 20         # larger blobs are uploaded in PATCH chunks
UPLOAD_CHUNK = 128 << 20
MAX_REDIRECTS = 5
USER_AGENT = transport.USER_AGENT

Progress = Callable[[int], None]   # called with a byte count as bytes move


@dataclass
class Options:
    tls_verify: bool | None = None     # None: verify, except loopback/insecure hosts
    insecure_hosts: tuple[str, ...] = ()
    retries: int = 5                   # attempts after the first
    backoff: float = 0.5               # first delay; doubles each time, capped
    max_backoff: float = 20.0
    # seconds without a byte (connect, headers or body) before a try is given
    # up; a body must also average min_rate bytes/s over each such window
    timeout: float = field(default_factory=transport.stall_timeout)
    min_rate: float = transport.MIN_RATE
    max_concurrent: int = 6            # what skopeo uses; small blobs hide fsync latency


def _error_codes(resp: requests.Response, pace: transport.Pace) -> list[tuple[str, str]]:
    """The distribution error codes of an error response; [] when it has none we can read.

    Hostile bodies are common here (a gzip bomb 404, an endless body): at
    most MAX_ERROR_BODY bytes are inflated, and only ten codes are kept."""
    try:
        body = json.loads(transport.read_body(resp, MAX_ERROR_BODY, pace, "error body") or b"{}")
        return [(transport.printable(e.get("code", ""), 100),
                 transport.printable(e.get("message", ""), 200))
                for e in body.get("errors", [])[:10]]
    except (ValueError, AttributeError, TypeError, RecursionError, RegistryError):
        return []


class _Replayable:
    """A body that can be sent again after a failure: bytes or a file range."""

    def __init__(self, opener: Callable[[], BinaryIO] | None = None, start: int = 0,
                 length: int = 0, data: bytes | None = None,
                 progress: Progress | None = None) -> None:
        self.opener, self.start, self.length, self.data = opener, start, length, data
        self.progress = progress

    def body(self):
        if self.data is not None:
            return self.data
        try:
            f = self.opener()
        except OSError as exc:
            raise LocalIOError(exc, exc.filename or "the blob to upload") from None
        return _FileRange(f, self.start, self.length, self.progress)


class _FileRange:
    """`length` bytes of a file from `start`; sized so requests sends Content-Length.

    read() hands out 1 MiB whatever http.client asks for, which cuts the
    per-block overhead of its 16 KiB default."""

    def __init__(self, f: BinaryIO, start: int, length: int, progress: Progress | None) -> None:
        self.f = f
        self.left = length
        self.length = length
        self.progress = progress
        if start:
            f.seek(start)

    def __len__(self) -> int:
        return self.length

    def read(self, n: int = -1) -> bytes:
        if self.left <= 0:
            self.f.close()
            return b""
        try:
            data = self.f.read(min(max(n, CHUNK), self.left))
        except OSError as exc:
            # a local disk's error, which urllib3 would take for the socket's (both are
            # OSError) and the client retry as "registry unreachable" six times
            raise LocalIOError(exc, getattr(self.f, "name", "the blob to upload")) from None
        if not data:
            raise RegistryError("blob file shrank while it was being uploaded")
        self.left -= len(data)
        if self.progress:
            self.progress(len(data))
        return data


# every client alive in this process, for `cancel_all`
_LIVE: "weakref.WeakSet[RegistryClient]" = weakref.WeakSet()


def cancel_all() -> None:
    """Ctrl-C in a build: the pulls its steps' threads run (a FROM, a --cache-from)
    stop now, instead of the build waiting for them to finish."""
    for client in list(_LIVE):
        client.cancel()


class RegistryClient:
    """One registry host (`name[:port]`), shared by a pull or push's threads."""

    def __init__(self, host: str, options: Options | None = None,
                 creds: credentials.Credentials | None | bool = True) -> None:
        self.host = host
        self.options = options or Options()
        self.tls = tls.for_host(host, self.options.tls_verify, self.options.insecure_hosts)
        if self.tls.verify is False:   # chosen on purpose (loopback/insecure): no nagging
            import urllib3

            urllib3.disable_warnings(urllib3.exceptions.InsecureRequestWarning)
        if creds is True:
            creds = credentials.lookup(host)
        self.pace = transport.Pace(self.options.timeout, self.options.min_rate)
        self.auth = Authenticator(host, creds or None, self.pace)
        self.session = transport.Session(USER_AGENT)
        pool = max(4, self.options.max_concurrent + 2)
        self.adapters = [transport.Adapter(pool_connections=4, pool_maxsize=pool)]
        self.session.mount("https://", self.adapters[0])
        self.session.mount("http://", self.adapters[0])
        if self.tls.ssl_context is not None:
            # the host's certs.d CAs and client certificate: for its own origin only
            # (requests picks the longest matching prefix), not for blob storage elsewhere
            self.adapters.append(transport.Adapter(ssl_context=self.tls.ssl_context,
                                                   pool_connections=1, pool_maxsize=pool))
            self.session.mount(f"https://{host}/", self.adapters[-1])
        self.base: str | None = None
        self._ping_lock = threading.Lock()
        self.cancelled = threading.Event()
        _LIVE.add(self)

    def cancel(self) -> None:
        """Stop transfers in other threads now (Ctrl-C, a failed sibling): they see
        Cancelled at their next chunk or retry, and those blocked on a socket (a
        stalled registry) have it shut down under them instead of waiting out
        the stall timeout."""
        self.cancelled.set()
        for adapter in self.adapters:
            adapter.abort()

    def _check_cancelled(self) -> None:
        if self.cancelled.is_set():
            raise Cancelled(f"{self.host}: transfer cancelled")

    def close(self) -> None:
        self.session.close()

    def __enter__(self) -> "RegistryClient":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # --- transport ----------------------------------------------------------

    def _send(self, method: str, url: str, headers: dict, body,
              verify=None) -> requests.Response:
        # always streamed: requests would otherwise read any body whole, unbounded
        return self.session.request(method, url, headers=headers, data=body, stream=True,
                                    allow_redirects=False, timeout=self.pace.timeout,
                                    verify=self.tls.verify if verify is None else verify)

    def _sleep(self, attempt: int, resp: requests.Response | None = None) -> None:
        delay = min(self.options.backoff * (2 ** attempt), self.options.max_backoff)
        if resp is not None and resp.headers.get("Retry-After"):
            try:
                asked = float(resp.headers["Retry-After"])
            except ValueError:    # an HTTP date: the backoff will do
                asked = -1.0
            if 0 <= asked <= 60:  # not "nan", "-5" or "1e9": sleep() raises or never ends
                delay = asked
            elif asked > 60:
                delay = 60.0
        if self.cancelled.wait(delay * (0.8 + 0.4 * random.random())):
            self._check_cancelled()

    def ping(self) -> str:
        """GET /v2/ on each allowed scheme; returns the base URL and learns auth."""
        with self._ping_lock:
            if self.base:
                return self.base
            last: Exception | None = None
            for scheme in self.tls.schemes:
                url = f"{scheme}://{self.host}/v2/"
                for attempt in range(self.options.retries + 1):
                    try:
                        resp = self._send("GET", url, {}, None)
                    except requests.exceptions.SSLError as exc:
                        last = exc
                        break
                    except requests.ConnectionError as exc:
                        last = exc
                        if scheme != self.tls.schemes[-1] or attempt >= min(2, self.options.retries):
                            break
                        self._sleep(attempt)
                        continue
                    except requests.Timeout as exc:
                        last = exc
                        break
                    transport.discard(resp, self.pace)
                    if resp.status_code == 429 or resp.status_code >= 500:
                        if attempt < self.options.retries:
                            self._sleep(attempt, resp)
                            continue
                    if resp.status_code in (200, 401):
                        if resp.status_code == 401:
                            self.auth.learn(resp.headers.get("WWW-Authenticate"))
                        self.base = f"{scheme}://{self.host}"
                        return self.base
                    raise RegistryError(f"{self.host}: /v2/ answered HTTP {resp.status_code}; "
                                        "not a distribution registry?")
                else:
                    continue
            if isinstance(last, requests.exceptions.SSLError):
                raise TLSFailure(f"{self.host}: TLS failure: {_reason(last)}")
            raise Unreachable(f"{self.host}: registry unreachable ({_reason(last)})")

    def request(self, method: str, path: str, *, scopes: frozenset[str], what: str,
                headers: dict | None = None, body: _Replayable | None = None,
                ok: tuple[int, ...] = (200,), retries: int | None = None) -> requests.Response:
        """Send with auth, retries and hand-followed redirects; raise on unexpected status.

        `path` is relative to /v2/ (or an absolute URL from a Location header).
        `retries` (default Options.retries) bounds the tries after a connection
        failure, a timeout, a 429 or a 5xx.
        The response is streamed: the caller reads its body (bounded) or closes it."""
        retries = self.options.retries if retries is None else retries
        base = self.ping()
        home = transport.origin(base)
        url = self._follow(base + "/v2/", path, what)
        fresh = False
        attempt = 0
        redirects = 0
        while True:
            self._check_cancelled()
            hdrs = dict(headers or {})
            if transport.origin(url) == home:
                value = self.auth.header(self.session, scopes, home, self.tls.verify,
                                         fresh=fresh)
                if value:
                    hdrs["Authorization"] = value
            try:
                resp = self._send(method, url, hdrs, body.body() if body else None,
                                  verify=None if transport.origin(url) == home else True)
            except requests.exceptions.SSLError as exc:
                raise TLSFailure(f"{self.host}: TLS failure on {what}: {_reason(exc)}") from None
            except (requests.ConnectionError, requests.Timeout) as exc:
                self._check_cancelled()       # the socket was shut down by cancel()
                if attempt >= retries:
                    raise Unreachable(f"{self.host}: registry unreachable during {what} "
                                      f"({_reason(exc)}) after {attempt + 1} attempts") from None
                self._sleep(attempt)
                attempt += 1
                continue
            except requests.RequestException as exc:   # InvalidURL, InvalidHeader, ...
                raise RegistryError(f"{self.host}: {what}: {type(exc).__name__}") from None
            status = resp.status_code
            if status in ok:
                return resp
            if status in (301, 302, 303, 307, 308) and "Location" in resp.headers \
                    and method in ("GET", "HEAD"):
                transport.discard(resp, self.pace)
                redirects += 1
                if redirects > MAX_REDIRECTS:
                    raise RegistryError(f"{self.host}: too many redirects on {what}")
                url = self._follow(url, resp.headers["Location"], what)
                continue
            if status == 401 and transport.origin(url) == home and not fresh:
                self.auth.learn(resp.headers.get("WWW-Authenticate"))
                transport.discard(resp, self.pace)
                fresh = True
                continue
            if (status == 429 or status >= 500) and attempt < retries:
                transport.discard(resp, self.pace)
                self._sleep(attempt, resp)
                attempt += 1
                continue
            self._raise(resp, what)

    def _follow(self, current: str, location: str, what: str) -> str:
        """The absolute URL a path, Location header or Link points to, if we may go there.

        Only http(s); never from an https registry down to plain http (the
        bytes of a private image, and a signed URL, would cross the network in
        clear). Credentials are kept to `home` by request() itself."""
        try:
            url = urljoin(current, location)
            parts = urlsplit(url)
            parts.port          # raises ValueError on a bad port
        except ValueError:
            raise Refused(f"{self.host}: invalid URL {location[:200]!r} on {what}") from None
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise Refused(f"{self.host}: refusing to follow {location[:200]!r} on {what}: "
                          "only http(s) URLs")
        if parts.scheme == "http" and urlsplit(current).scheme == "https":
            raise Refused(f"{self.host}: refusing a redirect from https to "
                          f"{transport.printable(url)} on {what}")
        return url

    def _raise(self, resp: requests.Response, what: str):
        status = resp.status_code
        codes = _error_codes(resp, self.pace) if resp.request.method != "HEAD" else []
        resp.close()
        detail = "; ".join(f"{c}: {m}" if m else c for c, m in codes) or f"HTTP {status}"
        names = {c for c, _ in codes}
        prefix = what if self.host in what else f"{self.host}: {what}"
        if status == 401 or "UNAUTHORIZED" in names:
            who = f"as {self.auth.creds.username}" if self.auth.creds else "anonymously"
            raise Unauthorized(f"{prefix}: unauthorized ({who}); try `pybuild login {self.host}`")
        if status == 403 or "DENIED" in names:
            raise Denied(f"{prefix}: denied: {detail}")
        if "NAME_UNKNOWN" in names:
            raise NameUnknown(f"{prefix}: name unknown: {detail}")
        if "MANIFEST_UNKNOWN" in names or ("manifest" in what and status == 404):
            raise ManifestUnknown(f"{prefix}: manifest unknown")
        if "BLOB_UNKNOWN" in names or status == 404:
            raise RegistryError(f"{prefix}: not found ({detail})")
        raise RegistryError(f"{prefix}: {detail}")

    # --- manifests ----------------------------------------------------------

    def get_manifest(self, repo: str, reference: str) -> tuple[bytes, str, str]:
        """(bytes, media type, digest) of a manifest or index, verified.

        By digest: the bytes must hash to it. By tag: to the registry's
        Docker-Content-Digest when it sends one."""
        what = f"manifest {self.host}/{repo}{'@' if ':' in reference else ':'}{reference}"
        scopes = frozenset([scope(repo, "pull")])
        for attempt in range(2):
            resp = self.request("GET", f"{repo}/manifests/{reference}", scopes=scopes, what=what,
                                headers={"Accept": MANIFEST_ACCEPT})
            try:
                data = transport.read_body(resp, MAX_MANIFEST, self.pace, what)
            except transport.TransferError:     # truncated, reset, stalled: one more try
                if attempt:
                    raise
                continue
            actual = dg.of_bytes(data)
            expected = reference if dg.is_digest(reference) else None
            header = resp.headers.get("Docker-Content-Digest", "")
            if expected is None and header.startswith("sha256:"):
                expected = header
            if expected and actual != expected:
                if attempt == 0:
                    continue
                raise DigestMismatch(expected, actual, what=what)
            media_type = resp.headers.get("Content-Type", "").split(";")[0].strip()
            return data, media_type, actual
        raise RegistryError(f"{what}: could not be read")

    def put_manifest(self, repo: str, reference: str, data: bytes, media_type: str) -> str:
        what = f"manifest {self.host}/{repo}:{reference}"
        resp = self.request("PUT", f"{repo}/manifests/{reference}",
                            scopes=frozenset([scope(repo, "pull", "push")]), what=what,
                            headers={"Content-Type": media_type},
                            body=_Replayable(data=data), ok=(200, 201))
        actual = dg.of_bytes(data)
        header = resp.headers.get("Docker-Content-Digest")
        transport.discard(resp, self.pace)
        if header and header != actual:
            raise DigestMismatch(actual, header, what=f"{what}: registry stored")
        return actual

    def list_tags(self, repo: str) -> list[str]:
        """Every tag of `repo`, following `Link: <...>; rel="next"` pages.

        A registry can paginate for ever or send one endless page: pages, the
        bytes of each and of all are bounded, and a page seen twice ends it."""
        what = f"tags of {self.host}/{repo}"
        tags: list[str] = []
        path = f"{repo}/tags/list"
        seen: set[str] = set()
        budget = MAX_TAGS_TOTAL
        while path:
            if len(seen) >= MAX_TAG_PAGES:
                raise RegistryError(f"{what}: more than {MAX_TAG_PAGES} pages")
            resp = self.request("GET", path, scopes=frozenset([scope(repo, "pull")]), what=what)
            nxt = resp.links.get("next", {}).get("url")
            data = transport.read_body(resp, min(MAX_TAGS_PAGE, budget), self.pace, what)
            budget -= len(data)
            try:
                page = json.loads(data)
                names = page.get("tags") or []
            except (ValueError, AttributeError, RecursionError):
                raise RegistryError(f"{what}: not a tag list") from None
            if not isinstance(names, list) or not all(isinstance(t, str) for t in names):
                raise RegistryError(f"{what}: not a tag list")
            tags.extend(names)
            seen.add(resp.url)
            path = ""
            if nxt:
                path = self._follow(resp.url, nxt, what)
                if path in seen:
                    raise RegistryError(f"{what}: the next page link goes round in a loop")
                if transport.origin(path) != transport.origin(resp.url):
                    raise RegistryError(f"{what}: next page on another host ({nxt[:200]!r})")
        return tags

    # --- blobs: download ----------------------------------------------------

    def fetch_blob(self, repo: str, desc: Descriptor, blobs: BlobStore,
                   progress: Progress | None = None) -> int:
        """Stream blob `desc` into the store; resumes partials. Returns bytes fetched."""
        what = f"blob {desc.digest} of {self.host}/{repo}"
        scopes = frozenset([scope(repo, "pull")])
        fetched = 0
        verify_failures = 0
        attempt = 0
        while True:
            with blobs.writer(expected=desc.digest, size=desc.size, resume=True) as w:
                if progress and w.offset:
                    progress(w.offset)
                try:
                    fetched += self._stream_into(repo, desc, w, scopes, what, progress)
                    w.commit()
                    return fetched
                except (DigestMismatch, SizeMismatch) as exc:
                    verify_failures += 1
                    if verify_failures > 1:
                        if isinstance(exc, DigestMismatch):
                            raise DigestMismatch(exc.expected, exc.actual, what=what) from None
                        raise SizeMismatch(f"{what}: {exc}") from None
                    if progress:
                        progress(-w.offset)
                except _Interrupted as exc:
                    fetched += exc.fetched
                    self._check_cancelled()   # a cancel() hangs up: not the server's fault
                    if attempt >= self.options.retries:
                        raise RegistryError(f"{what}: transfer kept failing "
                                            f"({exc.reason}) after {attempt + 1} attempts") from None
                    self._sleep(attempt)
                    attempt += 1

    def _stream_into(self, repo: str, desc: Descriptor, w, scopes, what: str,
                     progress: Progress | None) -> int:
        start = w.offset
        if start >= desc.size and desc.size > 0:
            return 0
        headers = {"Accept-Encoding": "identity"}
        if start:
            headers["Range"] = f"bytes={start}-"
        resp = self.request("GET", f"{repo}/blobs/{desc.digest}", scopes=scopes, what=what,
                            headers=headers, ok=(200, 206, 416))
        got = 0
        try:
            if resp.status_code == 416:
                return 0
            skip = 0
            if start and resp.status_code == 200:
                skip = start          # the server ignored Range: drop what we have
            elif start:
                cr = resp.headers.get("Content-Range", "")
                if not cr.startswith(f"bytes {start}-"):
                    raise _Interrupted(0, f"unexpected Content-Range {cr!r}")
            declared = resp.headers.get("Content-Length", "")
            if declared.isdigit() and int(declared) + start - skip > desc.size:
                raise SizeMismatch(f"{what}: registry sends {int(declared) + start - skip} bytes,"
                                   f" the descriptor says {desc.size}")
            sink = _WriteBehind(w, progress)
            try:
                for chunk in transport.chunks(resp, self.pace, what, decode=False):
                    got += len(chunk)
                    if skip:
                        if len(chunk) <= skip:
                            skip -= len(chunk)
                            continue
                        chunk = chunk[skip:]
                        skip = 0
                    sink.put(chunk)
                    self._check_cancelled()
            except transport.TransferError as exc:    # stalled, trickling, reset, cut short
                sink.finish()
                raise _Interrupted(got, str(exc).removeprefix(f"{what}: ")) from None
            except BaseException:
                sink.finish()
                raise
            sink.finish()
            if w.offset < desc.size:
                raise _Interrupted(got, f"body ended after {w.offset} of {desc.size} bytes")
            return got
        finally:
            resp.close()

    def read_blob(self, repo: str, desc: Descriptor, max_bytes: int) -> bytes:
        """A small blob (a config, a build cache's record list) read into memory: at most
        `max_bytes` (a descriptor claiming more is refused unread), verified against its
        digest. A body cut short is read once more."""
        what = f"blob {desc.digest} of {self.host}/{repo}"
        if desc.size > max_bytes:
            raise transport.TooLarge(f"{what}: {desc.size} bytes, more than the {max_bytes} "
                                     "bytes allowed")
        for attempt in range(2):
            resp = self.request("GET", f"{repo}/blobs/{desc.digest}",
                                scopes=frozenset([scope(repo, "pull")]), what=what,
                                headers={"Accept-Encoding": "identity"})
            try:
                data = transport.read_body(resp, max_bytes, self.pace, what)
            except transport.TransferError:
                if attempt:
                    raise
                continue
            actual = dg.of_bytes(data)
            if actual == desc.digest and len(data) == desc.size:
                return data
            if attempt:
                if len(data) != desc.size:
                    raise SizeMismatch(f"{what}: {len(data)} bytes, the descriptor says "
                                       f"{desc.size}")
                raise DigestMismatch(desc.digest, actual, what=what)
        raise RegistryError(f"{what}: could not be read")

    def blob_exists(self, repo: str, digest: str, *, for_push: bool = True) -> bool:
        """Whether `repo` has blob `digest`. A reader asks with `for_push=False`: read
        access only (a build cache source may be read-only to it)."""
        actions = ("pull", "push") if for_push else ("pull",)
        resp = self.request("HEAD", f"{repo}/blobs/{digest}",
                            scopes=frozenset([scope(repo, *actions)]),
                            what=f"blob {digest} of {self.host}/{repo}", ok=(200, 404))
        transport.discard(resp, self.pace)
        return resp.status_code == 200

    # --- blobs: upload ------------------------------------------------------

    def mount_blob(self, repo: str, digest: str, source: str) -> str | None:
        """Cross-repository mount; None when mounted, else an upload URL to use."""
        q = urlencode({"mount": digest, "from": source})
        resp = self.request("POST", f"{repo}/blobs/uploads/?{q}",
                            scopes=frozenset([scope(repo, "pull", "push"), scope(source, "pull")]),
                            what=f"mount of {digest} from {source} into {self.host}/{repo}",
                            ok=(201, 202))
        transport.discard(resp, self.pace)
        if resp.status_code == 201:
            header = resp.headers.get("Docker-Content-Digest")
            if header is None or header == digest:
                return None
            # "mounted" as something else: upload it, and let the registry check it
            resp = self.request("POST", f"{repo}/blobs/uploads/",
                                scopes=frozenset([scope(repo, "pull", "push")]),
                                what=f"upload of {digest} to {self.host}/{repo}", ok=(202,))
            transport.discard(resp, self.pace)
        return _location(resp, self.host)

    def upload_blob(self, repo: str, desc: Descriptor, opener: Callable[[], BinaryIO],
                    progress: Progress | None = None, location: str | None = None) -> None:
        """Upload `desc` (bytes from `opener()`): one PUT when small, PATCH chunks when large.

        A PATCH or PUT that fails is not sent again into the same session (what
        the registry kept of it is unknown): a new session starts, at most
        Options.retries times. Those requests are not retried one by one on top
        of that, so a registry that stalls every upload costs retries + 1 stall
        timeouts, not their square."""
        what = f"upload of {desc.digest} to {self.host}/{repo}"
        scopes = frozenset([scope(repo, "pull", "push")])
        for attempt in range(self.options.retries + 1):
            self._check_cancelled()
            sent = [0]

            def counted(n: int) -> None:
                self._check_cancelled()
                sent[0] += n
                if progress:
                    progress(n)
            try:
                self._upload_once(repo, desc, opener, counted, location, scopes, what)
                return
            except _UploadRestart as exc:
                if progress and sent[0]:
                    progress(-sent[0])
                location = None
                if attempt >= self.options.retries:
                    raise RegistryError(f"{what}: failed after {attempt + 1} attempts: {exc}") \
                        from None
                self._sleep(attempt)

    def _upload_once(self, repo, desc, opener, progress, location, scopes, what) -> None:
        if location is None:
            resp = self.request("POST", f"{repo}/blobs/uploads/", scopes=scopes, what=what,
                                ok=(202,))
            transport.discard(resp, self.pace)
            location = _location(resp, self.host)
        if desc.size <= MONOLITHIC_MAX:
            body = _Replayable(opener, 0, desc.size, progress=progress)
            start = desc.size
        else:
            start = 0
            body = None
            while start < desc.size:
                n = min(UPLOAD_CHUNK, desc.size - start)
                try:
                    resp = self.request(
                        "PATCH", location, scopes=scopes, what=what,
                        headers={"Content-Type": "application/octet-stream",
                                 "Content-Range": f"{start}-{start + n - 1}"},
                        body=_Replayable(opener, start, n, progress=progress), ok=(202,),
                        retries=0)
                except RegistryError as exc:
                    if isinstance(exc, (Unauthorized, Denied, Cancelled, Refused)):
                        raise
                    raise _UploadRestart(str(exc)) from None
                acked = resp.headers.get("Range")
                transport.discard(resp, self.pace)
                end = _range_end(acked)
                if acked is not None and end != start + n - 1:
                    # the registry kept something else than what was sent: appending
                    # more would make a blob that fails its digest at the end
                    raise _UploadRestart(f"the registry acknowledged {acked[:40]!r} after "
                                         f"bytes 0-{start + n - 1}")
                location = _location(resp, self.host)
                start += n
        sep = "&" if "?" in location else "?"
        try:
            resp = self.request("PUT", f"{location}{sep}{urlencode({'digest': desc.digest})}",
                                scopes=scopes, what=what,
                                headers={"Content-Type": "application/octet-stream"},
                                body=body or _Replayable(data=b""), ok=(201, 204), retries=0)
        except RegistryError as exc:
            if isinstance(exc, (Unauthorized, Denied, Cancelled, Refused)) \
                    or "DIGEST_INVALID" in str(exc):
                raise
            raise _UploadRestart(str(exc)) from None
        header = resp.headers.get("Docker-Content-Digest")
        transport.discard(resp, self.pace)
        if header and header != desc.digest:
            raise DigestMismatch(desc.digest, header, what=f"{what}: registry stored")


class _WriteBehind:
    """Hashes and writes chunks in a second thread while the socket is read.

    Both sides drop the GIL (recv; sha256 and write), so network and disk
    overlap. finish() waits for the writer and re-raises its error (such as
    SizeMismatch) in the caller."""

    def __init__(self, w, progress: Progress | None, depth: int = 16) -> None:
        self.w, self.progress = w, progress
        self.queue: queue.Queue = queue.Queue(depth)
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, name="blob-write", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while True:
            chunk = self.queue.get()
            if chunk is None:
                return
            if self.error is not None:
                continue          # drain after a failure
            try:
                self.w.write(chunk)
                if self.progress:
                    self.progress(len(chunk))
            except BaseException as exc:
                self.error = exc

    def put(self, chunk: bytes) -> None:
        if self.error is not None:
            self.finish()
        self.queue.put(chunk)

    def finish(self) -> None:
        if self.thread.is_alive():
            self.queue.put(None)
            self.thread.join()
        if self.error is not None:
            err, self.error = self.error, None
            raise err


class Refused(RegistryError):
    """A URL the registry pointed at that we will not go to (scheme, downgrade)."""


class Cancelled(RegistryError):
    """Stopped on purpose: the user interrupted, or another transfer failed."""


class _Interrupted(Exception):
    def __init__(self, fetched: int, reason: str) -> None:
        super().__init__(reason)
        self.fetched, self.reason = fetched, reason


class _UploadRestart(Exception):
    """An upload session went wrong half-way; start a new one."""


def _location(resp: requests.Response, host: str) -> str:
    """An upload session's URL, absolute (a relative one is relative to the request
    that returned it); request() refuses other schemes and keeps credentials off
    any other origin."""
    location = resp.headers.get("Location")
    if not location:
        raise RegistryError(f"{host}: upload answer without a Location header")
    try:
        return urljoin(resp.url, location)
    except ValueError:          # `http://[::1`: urllib's own complaint is no message for us
        raise Refused(f"{host}: invalid upload location {transport.printable(location)!r}") \
            from None


def _range_end(value: str | None) -> int | None:
    """The last byte a PATCH answer's `Range: 0-N` (or `bytes=0-N`) acknowledges."""
    if value is None:
        return None
    start, sep, end = value.strip().removeprefix("bytes=").partition("-")
    if not sep or not start.isdigit() or not end.isdigit() or int(start) != 0:
        return -1
    return int(end)


def _reason(exc: BaseException | None) -> str:
    """The cause of a failed request in words (the one lookup: transport.failure_reason)."""
    return "no answer" if exc is None else transport.failure_reason(exc)
