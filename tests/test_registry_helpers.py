"""Servers the registry tests stand up on 127.0.0.1: Debian's docker-registry
(plain, htpasswd+TLS, token auth), a token issuer, and a faulty proxy.

No tests live here; the test_registry_* modules import these helpers.
Every server is stopped (and the registry killed) in fixture teardown.
"""

from __future__ import annotations

import base64
import functools
import gzip
import hashlib
import http.client
import io
import json
import os
import random
import re
import resource
import signal
import socket
import ssl
import subprocess
import tarfile
import threading
import time
import uuid
import zlib
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest

from conftest import require_tool
from layerstore import mediatypes as mt
from layerstore.model import Descriptor, ImageConfig, Platform
from layerstore.store import Store

REGISTRY = "/usr/bin/docker-registry"
USER, PASSWORD = "alice", "s3cret-Pa55"


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def wait_port(port: int, proc: subprocess.Popen | None = None, timeout: float = 15,
              host: str = "127.0.0.1") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on {host}:{port}")


# --- certificates ------------------------------------------------------------

@dataclass
class PKI:
    """A CA and a server certificate for 127.0.0.1/localhost, made with openssl."""

    dir: Path
    ca: Path
    cert: Path
    key: Path


def make_pki(dir: Path) -> PKI:
    require_tool("openssl")
    dir.mkdir(parents=True, exist_ok=True)
    ca_key, ca = dir / "ca.key", dir / "ca.crt"
    key, csr, cert = dir / "server.key", dir / "server.csr", dir / "server.crt"
    ext = dir / "ext.cnf"
    ext.write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n"
                   "basicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyEncipherment\n"
                   "extendedKeyUsage=serverAuth\n")
    run = lambda *a: subprocess.run(a, check=True, capture_output=True)  # noqa: E731
    run("openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(ca_key),
        "-out", str(ca), "-days", "2", "-subj", "/CN=pybuild test CA",
        "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=keyCertSign,cRLSign")
    run("openssl", "req", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(csr),
        "-subj", "/CN=127.0.0.1")
    run("openssl", "x509", "-req", "-in", str(csr), "-CA", str(ca), "-CAkey", str(ca_key),
        "-CAcreateserial", "-out", str(cert), "-days", "2", "-extfile", str(ext))
    return PKI(dir, ca, cert, key)


def make_client_cert(pki: PKI, dir: Path, name: str = "client") -> tuple[Path, Path]:
    """A client certificate (extendedKeyUsage clientAuth) signed by `pki`'s CA:
    (`<name>.cert`, `<name>.key`) in `dir`, the certs.d names."""
    dir.mkdir(parents=True, exist_ok=True)
    key, csr, cert = dir / f"{name}.key", pki.dir / f"{name}.csr", dir / f"{name}.cert"
    ext = pki.dir / f"{name}-ext.cnf"
    ext.write_text("basicConstraints=CA:FALSE\nkeyUsage=digitalSignature\n"
                   "extendedKeyUsage=clientAuth\n")
    run = lambda *a: subprocess.run(a, check=True, capture_output=True)  # noqa: E731
    run("openssl", "req", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(csr),
        "-subj", f"/CN={name}")
    run("openssl", "x509", "-req", "-in", str(csr), "-CA", str(pki.ca), "-CAkey",
        str(pki.dir / "ca.key"), "-CAcreateserial", "-out", str(cert), "-days", "2",
        "-extfile", str(ext))
    return cert, key


# --- docker-registry -----------------------------------------------------------

class Registry:
    """One docker-registry process with its own storage and config."""

    def __init__(self, tmp: Path, auth: dict | None = None, pki: PKI | None = None) -> None:
        require_tool("docker-registry")
        self.dir = tmp
        self.port = free_port()
        self.host = f"127.0.0.1:{self.port}"
        self.scheme = "https" if pki else "http"
        self.pki = pki
        http_cfg: dict = {"addr": self.host, "secret": uuid.uuid4().hex}
        if pki:
            http_cfg["tls"] = {"certificate": str(pki.cert), "key": str(pki.key)}
        config = {
            "version": 0.1,
            "log": {"level": "error", "accesslog": {"disabled": True}},
            "storage": {"filesystem": {"rootdirectory": str(tmp / "data")},
                        "delete": {"enabled": True}},
            "http": http_cfg,
        }
        if auth:
            config["auth"] = auth
        # JSON is YAML: no yaml module needed
        (tmp / "config.yml").write_text(json.dumps(config, indent=1))
        self.log = open(tmp / "registry.log", "wb")
        self.proc = subprocess.Popen([REGISTRY, "serve", str(tmp / "config.yml")],
                                     stdout=self.log, stderr=subprocess.STDOUT,
                                     start_new_session=True)
        try:
            wait_port(self.port, self.proc)
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait()
        self.log.close()


def htpasswd_file(path: Path, users: dict[str, str]) -> Path:
    require_tool("htpasswd")
    for i, (user, password) in enumerate(users.items()):
        flags = "-cbB" if i == 0 else "-bB"
        subprocess.run(["htpasswd", flags, str(path), user, password], check=True,
                       capture_output=True)
    return path


# --- token server --------------------------------------------------------------

def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


class TokenServer:
    """Issues registry JWTs (RS256, cert in x5c) like docker's token auth servers do.

    `users` maps user -> password; anonymous requests get pull-only tokens
    when `anonymous_pull` is set. Every request is recorded in `requests`."""

    def __init__(self, tmp: Path, users: dict[str, str], issuer: str = "pybuild-test-issuer",
                 service: str = "pybuild-test-registry", lifetime: int = 300,
                 anonymous_pull: bool = False) -> None:
        tmp.mkdir(parents=True, exist_ok=True)
        self.key = tmp / "signing.key"
        self.cert = tmp / "signing.crt"
        subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout",
                        str(self.key), "-out", str(self.cert), "-days", "2",
                        "-subj", "/CN=pybuild token signer"], check=True, capture_output=True)
        der = subprocess.run(["openssl", "x509", "-in", str(self.cert), "-outform", "DER"],
                             check=True, capture_output=True).stdout
        self.x5c = base64.b64encode(der).decode()
        self.users, self.issuer, self.service = users, issuer, service
        self.lifetime, self.anonymous_pull = lifetime, anonymous_pull
        self.requests: list[dict] = []
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:
                pass

            def do_GET(self) -> None:
                owner._handle(self)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.realm = f"http://127.0.0.1:{self.port}/token"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def registry_auth(self) -> dict:
        return {"token": {"realm": self.realm, "service": self.service, "issuer": self.issuer,
                          "rootcertbundle": str(self.cert)}}

    def sign(self, claims: dict) -> str:
        header = {"alg": "RS256", "typ": "JWT", "x5c": [self.x5c]}
        signing_input = f"{_b64url(json.dumps(header).encode())}." \
                        f"{_b64url(json.dumps(claims).encode())}"
        sig = subprocess.run(["openssl", "dgst", "-sha256", "-sign", str(self.key)],
                             input=signing_input.encode(), check=True, capture_output=True).stdout
        return f"{signing_input}.{_b64url(sig)}"

    def _handle(self, h: BaseHTTPRequestHandler) -> None:
        q = parse_qs(urlsplit(h.path).query)
        user = None
        authz = h.headers.get("Authorization", "")
        if authz.startswith("Basic "):
            name, _, password = base64.b64decode(authz[6:]).decode().partition(":")
            if self.users.get(name) != password:
                self.requests.append({"user": name, "scopes": q.get("scope", []), "ok": False})
                h.send_response(401)
                h.send_header("Content-Length", "0")
                h.end_headers()
                return
            user = name
        self.requests.append({"user": user, "scopes": q.get("scope", []), "ok": True,
                              "service": q.get("service", [None])[0]})
        access = []
        for s in q.get("scope", []):
            kind, _, rest = s.partition(":")
            name, _, actions = rest.rpartition(":")
            allowed = actions.split(",") if user else (["pull"] if self.anonymous_pull else [])
            access.append({"type": kind, "name": name,
                           "actions": [a for a in actions.split(",") if a in allowed]})
        now = int(time.time())
        claims = {"iss": self.issuer, "sub": user or "", "aud": self.service, "exp": now +
                  self.lifetime, "nbf": now - 10, "iat": now, "jti": uuid.uuid4().hex,
                  "access": access}
        body = json.dumps({"token": self.sign(claims), "expires_in": self.lifetime,
                           "issued_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now))}
                          ).encode()
        h.send_response(200)
        h.send_header("Content-Type", "application/json")
        h.send_header("Content-Length", str(len(body)))
        h.end_headers()
        h.wfile.write(body)

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


# --- faulty proxy ----------------------------------------------------------------

@dataclass
class Seen:
    method: str
    path: str
    headers: dict[str, str]
    at: float = field(default_factory=time.monotonic)
    client_cert: dict | None = None          # the peer certificate a TLS client presented


class Proxy:
    """A reverse proxy to a plain-HTTP registry that counts body bytes and can misbehave.

    `faults` is a list of (predicate(method, path), action) tried in order;
    each fault fires `times` times. Actions: ("status", code), ("truncate",
    fraction), ("corrupt",), ("redirect", url_base), ("slow", bytes_per_s),
    ("stall", fraction): send that much, then nothing (the connection stays
    open until the client gives up or stop()), ("trickle", fraction, interval):
    then one byte every `interval` seconds."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream = upstream_port
        self.faults: list[dict] = []
        self.stopping = threading.Event()
        self.sent = 0                      # response body bytes sent to clients
        self.seen: list[Seen] = []
        self.lock = threading.Lock()
        owner = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:
                pass

            def handle_one_request(self) -> None:
                # a TLS ClientHello (the client probing HTTPS first): hang up at once
                try:
                    first = self.rfile.peek(1)[:1]
                except (OSError, ValueError):
                    return
                if first == b"\x16":
                    self.close_connection = True
                    return
                super().handle_one_request()

            def _any(self) -> None:
                owner._forward(self)

            do_GET = do_HEAD = do_PUT = do_POST = do_PATCH = do_DELETE = _any

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.host = f"127.0.0.1:{self.port}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def add(self, predicate, action: tuple, times: int = 1) -> None:
        with self.lock:
            self.faults.append({"pred": predicate, "action": action, "left": times})

    def _fault(self, method: str, path: str) -> tuple | None:
        with self.lock:
            for f in self.faults:
                if f["left"] > 0 and f["pred"](method, path):
                    f["left"] -= 1
                    return f["action"]
        return None

    def _forward(self, h: BaseHTTPRequestHandler) -> None:
        method = h.command
        headers = {k: v for k, v in h.headers.items()}
        with self.lock:
            self.seen.append(Seen(method, h.path, headers))
        length = int(h.headers.get("Content-Length") or 0)
        body = h.rfile.read(length) if length else None
        action = self._fault(method, h.path)
        if action and action[0] == "status":
            h.send_response(action[1])
            h.send_header("Content-Length", "0")
            if len(action) > 2:
                h.send_header("Retry-After", str(action[2]))
            h.end_headers()
            return
        if action and action[0] == "redirect":
            h.send_response(307)
            h.send_header("Location", action[1] + h.path)
            h.send_header("Content-Length", "0")
            h.end_headers()
            return
        conn = http.client.HTTPConnection("127.0.0.1", self.upstream, timeout=60)
        try:
            fwd = {k: v for k, v in headers.items() if k.lower() not in ("connection",)}
            conn.request(method, h.path, body=body, headers=fwd)
            resp = conn.getresponse()
            h.send_response(resp.status)
            for k, v in resp.getheaders():
                if k.lower() not in ("connection", "transfer-encoding"):
                    h.send_header(k, v)
            if resp.getheader("Content-Length") is None:
                data = resp.read()
                h.send_header("Content-Length", str(len(data)))
                h.end_headers()
                self._write(h, data, method)
                return
            h.end_headers()
            total = int(resp.getheader("Content-Length"))
            limit = total
            if action and action[0] in ("truncate", "stall", "trickle"):
                limit = int(total * action[1])
            rate = action[1] if action and action[0] == "slow" else None
            done = 0
            flip = action is not None and action[0] == "corrupt"
            while done < limit:
                chunk = resp.read(min(1 << 16, limit - done))
                if not chunk:
                    break
                if flip:
                    chunk = bytes([chunk[0] ^ 0xFF]) + chunk[1:]
                    flip = False
                if not self._write(h, chunk, method):
                    return
                done += len(chunk)
                if rate:
                    time.sleep(len(chunk) / rate)
            if limit < total and action[0] == "stall":
                h.wfile.flush()
                self.stopping.wait(120)
            elif limit < total and action[0] == "trickle":
                rest = resp.read(total - limit)
                for i in range(len(rest)):
                    if self.stopping.wait(action[2]) or not self._write(h, rest[i:i + 1], method):
                        break
                    h.wfile.flush()
            if limit < total:
                h.close_connection = True
                h.wfile.flush()
                try:
                    h.connection.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
        finally:
            conn.close()

    def _write(self, h, data: bytes, method: str) -> bool:
        if method == "HEAD":
            return True
        try:
            h.wfile.write(data)
        except OSError:
            return False
        with self.lock:
            self.sent += len(data)
        return True

    def stop(self) -> None:
        self.stopping.set()
        self.server.shutdown()
        self.server.server_close()


class Recorder:
    """Another origin (127.0.0.2) that serves blobs by redirect and records headers."""

    def __init__(self, blobs_dir: Path) -> None:
        self.seen: list[Seen] = []
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:
                pass

            def do_GET(self) -> None:
                owner.seen.append(Seen("GET", self.path, dict(self.headers.items())))
                hexd = self.path.rsplit(":", 1)[-1]
                path = blobs_dir / hexd
                if not path.is_file():
                    self.send_response(404)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                data = path.read_bytes()
                self.send_response(200)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.server = ThreadingHTTPServer(("127.0.0.2", 0), Handler)
        self.port = self.server.server_address[1]
        self.base = f"http://127.0.0.2:{self.port}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


# --- hostile server ----------------------------------------------------------------

class Hostile:
    """A scriptable HTTP(S) server on 127.0.0.1 (or 127.0.0.2) playing a hostile
    registry, token server or ADD source.

    `route(method, regex, handler)`: the first route whose regex fully matches
    the path (query included) answers, with handler(h, match); `GET /v2/` is
    200 unless routed otherwise; anything else is 404. Every request is
    recorded in `seen`. Handlers answer with the functions below (reply,
    reply_endless, reply_stalled, reply_trickle); the slow ones wait on
    `stopping`, so stop() ends them. With `pki`, it speaks TLS; without, it
    hangs up on a TLS ClientHello (the client probing HTTPS first). With
    `client_ca` it asks for a client certificate (required unless
    `client_optional`), and each Seen records the peer's in `client_cert`.
    `addr` may be an IPv6 literal (`::1`): `host` is then `[::1]:port`."""

    def __init__(self, addr: str = "127.0.0.1", pki: PKI | None = None,
                 client_ca: Path | None = None, client_optional: bool = False) -> None:
        self.routes: list[tuple[str, re.Pattern, object]] = []
        self.seen: list[Seen] = []
        self.stopping = threading.Event()
        owner = self

        class RequestHandler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:
                pass

            def handle_one_request(self) -> None:
                if pki is None:
                    try:
                        first = self.rfile.peek(1)[:1]
                    except (OSError, ValueError):
                        return
                    if first == b"\x16":
                        self.close_connection = True
                        return
                super().handle_one_request()

            def _any(self) -> None:
                owner._answer(self)

            do_GET = do_HEAD = do_PUT = do_POST = do_PATCH = do_DELETE = _any

        server_cls = ThreadingHTTPServer
        if ":" in addr:
            server_cls = type("ThreadingHTTPServer6", (ThreadingHTTPServer,),
                              {"address_family": socket.AF_INET6})
        self.server = server_cls((addr, 0), RequestHandler)
        self.server.daemon_threads = True
        if pki is not None:
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            ctx.load_cert_chain(str(pki.cert), str(pki.key))
            if client_ca is not None:
                ctx.load_verify_locations(str(client_ca))
                ctx.verify_mode = ssl.CERT_OPTIONAL if client_optional else ssl.CERT_REQUIRED
            self.server.socket = ctx.wrap_socket(self.server.socket, server_side=True)
        self.port = self.server.server_address[1]
        self.host = f"[{addr}]:{self.port}" if ":" in addr else f"{addr}:{self.port}"
        self.base = f"{'https' if pki else 'http'}://{self.host}"
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.05,),
                                       daemon=True)
        self.thread.start()

    def route(self, method: str, pattern: str, handler, first: bool = False) -> None:
        """Answer `method` ("*": any) on paths matching `pattern` with handler(h, match);
        `first` puts the route before the ones there already."""
        self.routes.insert(0 if first else len(self.routes), (method, re.compile(pattern), handler))

    def _answer(self, h: BaseHTTPRequestHandler) -> None:
        peer = getattr(h.connection, "getpeercert", lambda: None)()
        self.seen.append(Seen(h.command, h.path, dict(h.headers.items()), client_cert=peer))
        length = int(h.headers.get("Content-Length") or 0)
        h.body = h.rfile.read(length) if length else b""
        for method, pattern, handler in self.routes:
            m = pattern.fullmatch(h.path)
            if m and method in (h.command, "*"):
                try:
                    handler(h, m)
                except OSError:
                    h.close_connection = True
                return
        if h.command == "GET" and h.path == "/v2/":
            reply(h, 200, b"{}")
        else:
            reply(h, 404, b"")

    def stop(self) -> None:
        self.stopping.set()
        self.server.shutdown()
        self.server.server_close()


def reply(h: BaseHTTPRequestHandler, status: int, body: bytes = b"",
          headers: dict[str, str] | None = None) -> None:
    h.send_response(status)
    for k, v in (headers or {}).items():
        h.send_header(k, v)
    h.send_header("Content-Length", str(len(body)))
    h.end_headers()
    if h.command != "HEAD":
        h.wfile.write(body)


def reply_endless(h: BaseHTTPRequestHandler, status: int, start: bytes, filler: bytes,
                  headers: dict[str, str] | None = None, stop: threading.Event | None = None,
                  most: int = 8 << 30) -> int:
    """`start` then `filler` over and over (up to `most` bytes), with no length:
    the body ends only when the connection does. Returns the bytes sent before
    the client hung up."""
    h.send_response(status)
    for k, v in (headers or {}).items():
        h.send_header(k, v)
    h.send_header("Connection", "close")
    h.end_headers()
    h.close_connection = True
    block = filler * max(1, (1 << 16) // len(filler))
    sent = 0
    try:
        h.wfile.write(start)
        sent = len(start)
        while sent < most and not (stop and stop.is_set()):
            h.wfile.write(block)
            sent += len(block)
    except OSError:
        pass
    return sent


def reply_stalled(h: BaseHTTPRequestHandler, status: int, body: bytes, sent: int,
                  stop: threading.Event, headers: dict[str, str] | None = None) -> None:
    """Announce all of `body`, send its first `sent` bytes, then nothing."""
    h.send_response(status)
    for k, v in (headers or {}).items():
        h.send_header(k, v)
    h.send_header("Content-Length", str(len(body)))
    h.end_headers()
    h.wfile.write(body[:sent])
    stop.wait(120)
    h.close_connection = True


def reply_trickle(h: BaseHTTPRequestHandler, status: int, body: bytes, sent: int,
                  stop: threading.Event, interval: float = 0.25,
                  headers: dict[str, str] | None = None) -> None:
    """Announce all of `body`, send `sent` bytes, then one byte every `interval` s:
    the socket never goes quiet long enough for a read timeout."""
    h.send_response(status)
    for k, v in (headers or {}).items():
        h.send_header(k, v)
    h.send_header("Content-Length", str(len(body)))
    h.end_headers()
    h.wfile.write(body[:sent])
    for i in range(sent, len(body)):
        if stop.wait(interval):
            break
        h.wfile.write(body[i:i + 1])
    h.close_connection = True


@functools.lru_cache(maxsize=4)
def gzip_bomb(inflated: int) -> bytes:
    """A gzip stream of ~inflated/1000 bytes that inflates to `inflated` zero bytes
    (members of 16 MiB each, made once: cheap to build, dear to inflate)."""
    unit = 16 << 20
    z = zlib.compressobj(9, zlib.DEFLATED, 31)
    member = z.compress(bytes(unit)) + z.flush()
    return member * max(1, inflated // unit)


def limited(mem: int):
    """preexec_fn for a CLI under test: an address-space limit, so a regression
    that inflates a bomb dies of MemoryError instead of eating the machine."""
    def apply() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (mem, mem))
    return apply


# --- images --------------------------------------------------------------------

def make_layer(files: dict[str, bytes]) -> tuple[bytes, str]:
    """A gzip layer blob with `files`: (blob bytes, diff ID)."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in sorted(files.items()):
            info = tarfile.TarInfo(name)
            info.size, info.mtime, info.mode = len(data), 1700000000, 0o644
            tar.addfile(info, io.BytesIO(data))
    tar_bytes = raw.getvalue()
    return gzip.compress(tar_bytes, mtime=0), "sha256:" + hashlib.sha256(tar_bytes).hexdigest()


def make_image(store: Store, name: str, layers: list[dict[str, bytes]],
               arch: str = "amd64", cmd: list[str] | None = None) -> Descriptor:
    """Write layers, config and manifest into `store` and tag `name`; the manifest descriptor."""
    descs, diff_ids = [], []
    for files in layers:
        blob, diff_id = make_layer(files)
        info = store.blobs.put(blob, "sha256:" + hashlib.sha256(blob).hexdigest())
        descs.append(Descriptor(mt.OCI_LAYER_GZIP, info.digest, info.size))
        diff_ids.append(diff_id)
    config = ImageConfig(architecture=arch, os="linux", diff_ids=diff_ids)
    config.config.Cmd = cmd or ["/bin/sh"]
    desc = store.commit_image(config, descs)
    desc.platform = Platform("linux", arch)
    store.tag(name, desc)
    return desc


def random_files(n: int, size: int, seed: int) -> dict[str, bytes]:
    rnd = random.Random(seed)
    return {f"d{seed}/f{i}": rnd.randbytes(size) for i in range(n)}


def skopeo(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    require_tool("skopeo")
    proc = subprocess.run(["skopeo", "--insecure-policy", *args], capture_output=True,
                          text=True, timeout=timeout)
    if proc.returncode != 0:
        raise AssertionError(f"skopeo {' '.join(args)} failed:\n{proc.stderr}")
    return proc


# --- fixtures --------------------------------------------------------------------

@pytest.fixture
def registry(tmp_path):
    """A plain-HTTP registry without auth."""
    d = tmp_path / "registry"
    d.mkdir()
    reg = Registry(d)
    yield reg
    reg.stop()


@pytest.fixture
def config_env(tmp_path, monkeypatch):
    """Isolate credentials and certs.d: $PYBUILD_CONFIG and $DOCKER_CONFIG in tmp."""
    cfg = tmp_path / "pybuild-config"
    cfg.mkdir()
    monkeypatch.setenv("PYBUILD_CONFIG", str(cfg))
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path / "docker-config"))
    return cfg


@pytest.fixture
def token_setup(tmp_path):
    d = tmp_path / "token-registry"
    d.mkdir()
    tokens = TokenServer(d / "issuer", {USER: PASSWORD}, lifetime=3, anonymous_pull=True)
    try:
        reg = Registry(d, auth=tokens.registry_auth())
    except BaseException:
        tokens.stop()
        raise
    yield reg, tokens
    reg.stop()
    tokens.stop()
