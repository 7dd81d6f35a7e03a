"""HTTP hygiene shared by the registry client, its token fetch and `ADD <url>`.

* `Session` never reads ~/.netrc. Plain requests adds the builder's netrc
  credentials to any request made without explicit auth, and again after
  every redirect, to whatever host it leads to: an `ADD http://attacker/`
  line or a registry's redirect to "blob storage" would collect them.
  Redirects are followed by hand (`get`, `RegistryClient.request`), never by
  requests, which reads each redirect's body whole.
  Everything else taken from the environment stays (trust_env is kept on):
  proxies, and REQUESTS_CA_BUNDLE, which is how HTTPS through an
  intercepting proxy verifies here.
* Bodies are read through `chunks`/`read_body`: bounded in bytes *after*
  decompression (gzip/deflate are undone here, a piece at a time, whatever
  urllib3's version does), and a body that stalls (no byte for `stall`
  seconds) or trickles (under `min_rate` bytes/s over a window of `stall`
  seconds, which keeps a socket timeout from ever firing) fails with a
  retryable `TransferError` instead of hanging.
* `Adapter` bounds what a socket timeout cannot: a server that trickles its
  response head one byte at a time (every recv returns something, so no read
  timeout ever fires; http.client allows 100 header lines of 64 KiB each)
  gets the read timeout as a deadline for the whole head. It also carries a
  host's own TLS context (certs.d CAs and client certificate, built in
  memory), and `abort()` shuts down every socket it opened, so that Ctrl-C or
  a failed sibling transfer stops threads blocked in recv at once instead of
  after a stall timeout.
"""

from __future__ import annotations

import http.client
import os
import socket
import threading
import time
import weakref
import zlib
from dataclasses import dataclass
from typing import Iterator
from urllib.parse import urljoin, urlsplit

import requests
import urllib3
from requests.adapters import HTTPAdapter
from requests.auth import AuthBase, HTTPBasicAuth
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool
from requests.utils import get_auth_from_url

from layerstore.errors import PybuildError
from layerstore.registry.errors import RegistryError

STALL_ENV = "PYBUILD_STALL_TIMEOUT"
DEFAULT_STALL = 60.0          # seconds; also the window the minimum rate is averaged over
MIN_RATE = 1024.0             # bytes/s; a trickle below this over a whole window is a stall
CHUNK = 1 << 20
MAX_REDIRECTS = 10            # what Go's http.Client (so BuildKit's ADD) follows
USER_AGENT = "pybuild/0.1"
DRAIN = 64 << 10              # an unwanted body up to this size is read so the connection is reused


def stall_timeout() -> float:
    """Seconds without progress before a transfer is abandoned ($PYBUILD_STALL_TIMEOUT)."""
    raw = os.environ.get(STALL_ENV, "").strip()
    if not raw:
        return DEFAULT_STALL
    try:
        value = float(raw)
    except ValueError:
        value = 0.0
    if not 0 < value <= 86400:
        raise PybuildError(f"{STALL_ENV}={raw!r}: expected a number of seconds (0 < s <= 86400)")
    return value


@dataclass(frozen=True)
class Pace:
    """How long a transfer may go without progress."""

    stall: float = DEFAULT_STALL
    min_rate: float = MIN_RATE

    @property
    def timeout(self) -> tuple[float, float]:
        """(connect, read) for requests: a read timeout is the no-byte-at-all case."""
        return (self.stall, self.stall)


def default_pace() -> Pace:
    return Pace(stall_timeout())


class TransferError(RegistryError):
    """A body stopped coming (stall, trickle, reset, cut short): worth another try."""


class BadBody(RegistryError):
    """A body that cannot be accepted: too large, or an encoding we do not undo."""


class TooLarge(BadBody):
    """A body longer than its limit (counted after decompression)."""


class _URLAuthOnly(AuthBase):
    """Set as the session's auth so requests never falls back to ~/.netrc.

    It does what requests does for auth=None minus netrc: credentials written
    in the URL itself (`http://user:pw@host/`, which a Dockerfile may state)
    are sent as Basic auth."""

    def __call__(self, r):
        user, password = get_auth_from_url(r.url)
        if user or password:
            return HTTPBasicAuth(user, password)(r)
        return r


def _hang_up(sock) -> None:
    """Shut a socket down under a thread blocked on it (which then sees EOF).

    The plain socket's shutdown even for an SSLSocket: SSLSocket.shutdown
    drops its SSL object, and the blocked reader would then fail with a
    ValueError instead of an OSError."""
    if sock is None:
        return
    try:
        socket.socket.shutdown(sock, socket.SHUT_RDWR)
    except (OSError, ValueError, TypeError):
        pass


class _Deadline:
    """Shuts `sock()` down unless finish() comes within `limit` seconds."""

    def __init__(self, limit, sock) -> None:
        self.lock = threading.Lock()
        self.expired = False
        self.done = False
        self.sock = sock
        self.timer = None
        if isinstance(limit, (int, float)) and limit > 0:
            self.timer = threading.Timer(limit, self._expire)
            self.timer.daemon = True
            self.timer.start()

    def _expire(self) -> None:
        with self.lock:
            if self.done:
                return
            self.expired = True
        _hang_up(self.sock())

    def finish(self) -> bool:
        """True when the deadline had passed (the socket is gone)."""
        with self.lock:
            self.done = True
        if self.timer is not None:
            self.timer.cancel()
        return self.expired


def _bounded_connection(base: type, live: weakref.WeakSet) -> type:
    """`base` (urllib3's HTTP(S)Connection) whose response head ends within the read
    timeout, and whose sockets abort() can reach. (The TLS handshake needs no
    such care: CPython's socket timeout bounds a whole handshake.)"""

    class Bounded(base):
        def __init__(self, *args, **kw) -> None:
            super().__init__(*args, **kw)
            self._pb_raw = None
            live.add(self)

        def _new_conn(self):
            self._pb_raw = super()._new_conn()     # reachable by abort() while TLS wraps it
            return self._pb_raw

        def getresponse(self):
            limit = self.timeout                   # urllib3 set the read timeout just before
            deadline = _Deadline(limit, lambda: self.sock)
            try:
                resp = super().getresponse()
            except Exception:
                if deadline.finish():
                    raise TimeoutError(f"timed out: the response head took over {limit:g} s") \
                        from None
                raise
            if deadline.finish():
                resp.close()
                raise TimeoutError(f"timed out: the response head took over {limit:g} s")
            return resp

        def pb_abort(self) -> None:
            _hang_up(self.sock)
            _hang_up(self._pb_raw)

    Bounded.__name__ = Bounded.__qualname__ = f"Bounded{base.__name__}"
    return Bounded


class Adapter(HTTPAdapter):
    """requests' adapter with bounded response heads, an optional TLS
    context of its own, and abort() for the sockets it opened."""

    def __init__(self, *, ssl_context=None, pool_connections: int = 4,
                 pool_maxsize: int = 10) -> None:
        self.ssl_context = ssl_context
        self._live: weakref.WeakSet = weakref.WeakSet()
        http_conn = _bounded_connection(HTTPConnection, self._live)
        https_conn = _bounded_connection(HTTPSConnection, self._live)
        self._pools = {
            "http": type("BoundedHTTPPool", (HTTPConnectionPool,), {"ConnectionCls": http_conn}),
            "https": type("BoundedHTTPSPool", (HTTPSConnectionPool,),
                          {"ConnectionCls": https_conn}),
        }
        super().__init__(pool_connections=pool_connections, pool_maxsize=pool_maxsize)

    def init_poolmanager(self, connections, maxsize, block=False, **pool_kwargs) -> None:
        if self.ssl_context is not None:
            pool_kwargs["ssl_context"] = self.ssl_context
        super().init_poolmanager(connections, maxsize, block, **pool_kwargs)
        self.poolmanager.pool_classes_by_scheme = self._pools

    def proxy_manager_for(self, proxy, **proxy_kwargs):
        if self.ssl_context is not None:
            proxy_kwargs.setdefault("ssl_context", self.ssl_context)
        manager = super().proxy_manager_for(proxy, **proxy_kwargs)
        if not proxy.lower().startswith("socks"):     # SOCKS brings pools of its own
            manager.pool_classes_by_scheme = self._pools
        return manager

    def abort(self) -> None:
        """Hang up every connection this adapter opened (other threads' too)."""
        for conn in list(self._live):
            conn.pb_abort()


class Session(requests.Session):
    """requests.Session minus ~/.netrc, and minus its own redirect following.

    A 3xx comes back to the caller as it is; `get` (or the registry client)
    follows it. requests' following would read ~/.netrc again for the new
    host, and it reads the body of every redirect whole (it does so even with
    allow_redirects=False, to prepare `Response.next`): an endless 302 body
    would fill memory."""

    def __init__(self, user_agent: str = USER_AGENT) -> None:
        super().__init__()
        self.auth = _URLAuthOnly()
        self.headers["User-Agent"] = user_agent
        self.headers["Accept-Encoding"] = "gzip, deflate"    # what _Decoder undoes
        adapter = Adapter()
        self.mount("https://", adapter)
        self.mount("http://", adapter)

    def get_redirect_target(self, resp) -> None:
        return None


def printable(text: str, limit: int = 200) -> str:
    """Remote text fit for a one-line message: control characters (a newline
    that fakes a second line, an escape sequence for the terminal) become '?'."""
    text = str(text)[:limit]
    return "".join(ch if ch.isprintable() else "?" for ch in text)


def _chain(exc: BaseException) -> list[BaseException]:
    """`exc` and what caused it, outermost first: requests wraps urllib3's MaxRetryError
    (in args), which names its cause in `.reason`, which was raised from the socket error."""
    out: list[BaseException] = []
    e: BaseException | None = exc
    while e is not None and len(out) < 16 and all(e is not o for o in out):
        out.append(e)
        reason = getattr(e, "reason", None)
        arg = e.args[0] if e.args and isinstance(e.args[0], BaseException) else None
        e = reason if isinstance(reason, BaseException) else \
            (e.__cause__ or arg or e.__context__)
    return out


def failure_host(exc: BaseException) -> str | None:
    """host[:port] of the connection that failed (after a redirect, not the first URL's)."""
    for e in _chain(exc):
        pool = getattr(e, "pool", None) or getattr(e, "conn", None)
        host = getattr(pool, "host", None)
        if isinstance(host, str) and host:
            port = getattr(pool, "port", None)
            return printable(f"{host}:{port}" if port else host)
    return None


def failure_reason(exc: BaseException) -> str:
    """Why a request failed, in words (`DNS name not resolved`, `connection refused`,
    `TLS verification failed: ...`, `timed out`), from the deepest cause in the chain
    that says something, never an exception class name."""
    import ssl

    import urllib3

    chain = _chain(exc)
    # a timeout anywhere in the chain is what failed: what it interrupted (a reset, a
    # close the stalled peer did later) is only the context it was raised in
    for e in chain:
        if isinstance(e, (TimeoutError, socket.timeout)) or (
                isinstance(e, urllib3.exceptions.TimeoutError)
                and not isinstance(e, urllib3.exceptions.NewConnectionError)):
            return "timed out"
    for e in reversed(chain):
        if isinstance(e, ssl.SSLCertVerificationError):
            return f"TLS verification failed: {printable(e.verify_message or e.reason or 'bad certificate')}"
        if isinstance(e, ssl.SSLError):
            text = str(e)
            if "WRONG_VERSION_NUMBER" in text or "wrong version number" in text:
                return "TLS handshake failed: the server does not speak TLS on this port"
            return f"TLS handshake failed: {printable(e.reason or text)}"
        if isinstance(e, socket.gaierror):
            if e.errno == socket.EAI_AGAIN:
                return "DNS name not resolved (temporary failure in name resolution)"
            return "DNS name not resolved"
        if isinstance(e, ConnectionRefusedError):
            return "connection refused"
        if isinstance(e, ConnectionResetError):
            return "connection reset by the server"
        if isinstance(e, http.client.RemoteDisconnected):
            return "connection closed by the server"
        if isinstance(e, (TimeoutError, socket.timeout)) or (
                isinstance(e, urllib3.exceptions.TimeoutError)
                and not isinstance(e, urllib3.exceptions.NewConnectionError)):
            return "timed out"
        if isinstance(e, OSError) and e.errno is not None and e.strerror:
            return printable(e.strerror.lower() if e.strerror[:1].isupper() else e.strerror)
    text = str(exc).splitlines()[0] if str(exc) else ""
    return printable(text) if text else "the connection failed"


class RedirectError(RegistryError):
    """Too many redirects, or one to something other than http(s)."""


def origin(url: str) -> tuple[str, str]:
    """(scheme, host:port): what credentials are bound to."""
    parts = urlsplit(url)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    return parts.scheme, f"{parts.hostname}:{port}"


def get(session: requests.Session, url: str, pace: Pace, what: str, *, auth=None,
        params=None, **kw) -> requests.Response:
    """GET `url` streamed, following up to MAX_REDIRECTS redirects by hand.

    By hand because requests reads the body of every redirect it follows
    whole, however large or endless. `auth` goes to the first URL's origin
    only; redirects lead to http(s) URLs only."""
    first = origin(url)
    for _ in range(MAX_REDIRECTS + 1):
        resp = session.get(url, params=params, auth=auth if origin(url) == first else None,
                           stream=True, allow_redirects=False, timeout=pace.timeout, **kw)
        params = None
        location = resp.headers.get("Location")
        if resp.status_code not in (301, 302, 303, 307, 308) or not location:
            return resp
        discard(resp, pace)
        try:
            url = urljoin(resp.url, location)
            parts = urlsplit(url)
            parts.port
        except ValueError:
            raise RedirectError(f"{what}: redirect to an invalid URL {location[:200]!r}") from None
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise RedirectError(f"{what}: refusing a redirect to {location[:200]!r}: "
                                "only http(s) URLs")
    raise RedirectError(f"{what}: more than {MAX_REDIRECTS} redirects")


_READ_ERRORS = (OSError, urllib3.exceptions.HTTPError, http.client.HTTPException,
                requests.RequestException)


def reason(exc: BaseException) -> str:
    """A short cause for a failed read."""
    text = str(exc)
    for needle, short in (("timed out", "timed out"), ("Connection reset", "connection reset"),
                          ("IncompleteRead", "body cut short"),
                          ("Connection broken", "connection broken")):
        if needle in text or needle in type(exc).__name__:
            return short
    return type(exc).__name__


class _Decoder:
    """Content-Encoding gzip/deflate undone in pieces of at most CHUNK bytes.

    zlib's max_length keeps a bomb (1 MB that inflates to 1 GB) from ever
    being inflated in one go; the caller's limit then stops it."""

    def __init__(self, header: str, what: str) -> None:
        codings = [c.strip().lower() for c in header.split(",")]
        codings = [c for c in codings if c and c != "identity"]
        if len(codings) > 1 or (codings and codings[0] not in ("gzip", "x-gzip", "deflate")):
            raise BadBody(f"{what}: unsupported Content-Encoding {header[:80]!r}")
        self.what = what
        self.coding = codings[0] if codings else None
        self.z = self._new() if self.coding else None
        self.fed = False

    def _new(self):
        # gzip: a gzip header; deflate: a zlib header (47 accepts either)
        return zlib.decompressobj(16 + zlib.MAX_WBITS if self.coding != "deflate" else 47)

    def feed(self, data: bytes) -> Iterator[bytes]:
        if self.z is None:
            if data:
                yield data
            return
        self.fed = self.fed or bool(data)
        buf = data
        while buf:
            try:
                out = self.z.decompress(buf, CHUNK)
            except zlib.error:
                raise BadBody(f"{self.what}: corrupt {self.coding} content") from None
            if out:
                yield out
            if self.z.eof:
                buf = self.z.unused_data
                if buf:                   # a further gzip member
                    self.z = self._new()
            else:
                buf = self.z.unconsumed_tail

    def finish(self) -> None:
        if self.z is not None and self.fed and not self.z.eof:
            raise TransferError(f"{self.what}: {self.coding} body cut short")


def chunks(resp: requests.Response, pace: Pace, what: str, *,
           decode: bool = True) -> Iterator[bytes]:
    """The body of a `stream=True` response, piece by piece.

    With `decode`, Content-Encoding gzip/deflate is undone (bounded pieces).
    Raises TransferError when the body stalls, trickles or breaks off."""
    raw = resp.raw
    # read1 (urllib3 >= 2) returns after each recv, so a trickle is seen as it
    # happens; read(n) would wait for all n bytes, one byte a second
    read1 = getattr(raw, "read1", None)
    decoder = _Decoder(resp.headers.get("Content-Encoding", ""), what) if decode else None
    window_start = time.monotonic()
    window_bytes = 0
    while True:
        try:
            data = read1(CHUNK, decode_content=False) if read1 else \
                raw.read(CHUNK, decode_content=False)
        except _READ_ERRORS as exc:
            what_failed = "stalled" if "timed out" in str(exc) else reason(exc)
            if what_failed == "stalled":
                raise TransferError(f"{what}: stalled: no data for {pace.stall:g} s") from None
            raise TransferError(f"{what}: {what_failed}") from None
        if not data:
            break
        now = time.monotonic()
        window_bytes += len(data)
        elapsed = now - window_start
        if elapsed >= pace.stall:
            if window_bytes < pace.min_rate * elapsed:
                raise TransferError(f"{what}: stalled: {window_bytes} bytes in {elapsed:.0f} s, "
                                    f"under {pace.min_rate:g} bytes/s")
            window_start, window_bytes = now, 0
        if decoder is None:
            yield data
        else:
            yield from decoder.feed(data)
    if decoder is not None:
        decoder.finish()


def read_body(resp: requests.Response, limit: int, pace: Pace, what: str) -> bytes:
    """The whole (decoded) body of a `stream=True` response, at most `limit` bytes.

    Raises TooLarge beyond `limit`, TransferError when it stalls or breaks off."""
    try:
        declared = resp.headers.get("Content-Length")
        encoded = resp.headers.get("Content-Encoding", "").strip().lower() not in ("", "identity")
        if declared and declared.isdigit() and int(declared) > limit and not encoded:
            raise TooLarge(f"{what}: {declared} bytes, more than the {limit} bytes allowed")
        out = bytearray()
        for piece in chunks(resp, pace, what):
            out += piece
            if len(out) > limit:
                raise TooLarge(f"{what}: more than the {limit} bytes allowed")
        return bytes(out)
    finally:
        resp.close()


def discard(resp: requests.Response, pace: Pace) -> None:
    """Done with a response whose body is not wanted: read a small one (so the
    connection goes back to the pool), drop the connection of a large one."""
    try:
        declared = resp.headers.get("Content-Length")
        if resp.request is not None and resp.request.method == "HEAD":
            return
        if declared is not None and declared.isdigit() and int(declared) <= DRAIN:
            got = 0
            for piece in chunks(resp, pace, "discarded body", decode=False):
                got += len(piece)
                if got > DRAIN:
                    break
    except (RegistryError, *_READ_ERRORS):
        pass
    finally:
        resp.close()
