"""Push against hostile registries, hangs of any phase of a request, Ctrl-C, and
concurrent pulls and prunes (issue 11, round 2: what test_registry_hostile.py,
which is about pull, leaves out).

A registry that stalls an upload costs retries + 1 stall timeouts, not their
square; a server that trickles its response head (every recv returns a byte,
so no read timeout fires) is cut off; Ctrl-C stops a push blocked on a stalled
socket at once; a cross-repository mount "of something else" is uploaded; a
PATCH whose Range says the registry kept other bytes restarts the upload; a
relative upload Location is relative to the request that returned it; a
registry's credentials never go in clear to a plain-http token realm of an
https registry; a prune running beside a pull cannot leave the pulled ref
pointing at deleted blobs.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import signal
import subprocess
import sys
import threading
import uuid

import pytest

from conftest import REPO
from layerstore import gc
from layerstore.fsck import fsck
from layerstore.registry import credentials, transport
from layerstore.registry.client import Options
from layerstore.registry.errors import RegistryError, Unauthorized
from layerstore.registry.pull import pull
from layerstore.registry.push import push
from layerstore.store import Store
from test_registry_helpers import (Hostile, Proxy, config_env, make_image,  # noqa: F401
                                   make_pki, random_files, registry, reply)
from test_registry_hostile import authorizations, bounded, hostile, serve_image  # noqa: F401

FAST = Options(backoff=0.05, max_backoff=0.2, timeout=1.0, retries=2)


def _digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


class Uploads:
    """A registry's upload side on a Hostile server: sessions, chunks, digests checked.

    `lie_once`: the first PATCH is answered `Range: 0-99` and only its first
    100 bytes are kept (a registry that lost data and says so)."""

    def __init__(self, hs: Hostile, repo: str, lie_once: bool = False) -> None:
        self.hs, self.repo, self.lie = hs, repo, lie_once
        self.sessions: dict[str, bytearray] = {}
        self.blobs: dict[str, bytes] = {}
        self.manifests: dict[str, bytes] = {}
        base = rf"/v2/{repo}"
        hs.route("HEAD", rf"{base}/blobs/(sha256:[0-9a-f]+)", self.head)
        hs.route("POST", rf"{base}/blobs/uploads/", self.post)
        hs.route("PATCH", rf"{base}/blobs/uploads/(\w+)(?:\?.*)?", self.patch)
        hs.route("PUT", rf"{base}/blobs/uploads/(\w+)\?(?:.*&)?digest=sha256%3A([0-9a-f]+)",
                 self.put)
        hs.route("PUT", rf"{base}/manifests/(.+)", self.put_manifest)

    def head(self, h, m):
        reply(h, 200 if m.group(1) in self.blobs else 404)

    def post(self, h, m):
        sid = uuid.uuid4().hex[:12]
        self.sessions[sid] = bytearray()
        # relative to the request URL (/v2/<repo>/blobs/uploads/), as RFC 7231 has it
        reply(h, 202, b"", {"Location": sid, "Range": "0-0"})

    def patch(self, h, m):
        data = self.sessions[m.group(1)]
        data += h.body
        if self.lie:
            self.lie = False
            del data[100:]
        reply(h, 202, b"", {"Location": f"{m.group(1)}?state={len(data)}",
                            "Range": f"0-{len(data) - 1}"})

    def put(self, h, m):
        data = bytes(self.sessions.pop(m.group(1))) + h.body
        digest = "sha256:" + m.group(2)
        if _digest(data) != digest:
            body = json.dumps({"errors": [{"code": "DIGEST_INVALID", "message": "no"}]})
            return reply(h, 400, body.encode())
        self.blobs[digest] = data
        reply(h, 201, b"", {"Docker-Content-Digest": digest})

    def put_manifest(self, h, m):
        self.manifests[m.group(1)] = h.body
        reply(h, 201, b"", {"Docker-Content-Digest": _digest(h.body)})


# --- uploads ---------------------------------------------------------------------------

def test_stalled_upload_costs_retries_not_their_square(tmp_path, hostile, config_env):
    """Each failed PUT used to be sent again retries times inside each of retries + 1
    upload sessions: (retries + 1)^2 stall timeouts, over half an hour at the defaults."""
    src = Store.open(tmp_path / "src")
    make_image(src, "s:1", [random_files(1, 2000, 201)])
    hs = hostile()
    hs.route("HEAD", r"/v2/.*", lambda h, m: reply(h, 404))
    hs.route("POST", r"/v2/s/img/blobs/uploads/", lambda h, m: reply(
        h, 202, b"", {"Location": f"/up/{uuid.uuid4().hex}"}))
    hs.route("PUT", r"/up/.*", lambda h, m: hs.stopping.wait(120))
    opts = Options(backoff=0.05, max_backoff=0.2, timeout=1.0, retries=2, max_concurrent=1)
    with pytest.raises(RegistryError, match=r"upload of sha256:\w+ to .*failed after 3 "
                                            r"attempts: .*timed out") as info:
        bounded(lambda: push(src, "s:1", f"{hs.host}/s/img:1", options=opts), 60)
    assert "\n" not in str(info.value)
    puts = [s for s in hs.seen if s.method == "PUT"]
    assert len(puts) == 3, [s.path for s in puts]        # one per session: 3, not 9
    assert len({s.path for s in puts}) == 3               # each in a new session


def test_mount_of_something_else_is_uploaded(tmp_path, hostile, config_env):
    """A 201 to a cross-repository mount whose Docker-Content-Digest names another
    blob is not taken as the blob being there: it is uploaded (and checked)."""
    hs = hostile()
    src = Store.open(tmp_path / "src")
    desc = make_image(src, f"{hs.host}/other/img:1", [random_files(1, 3000, 202)])
    up = Uploads(hs, "m/img")
    mounts = []

    def mount(h, m):
        mounts.append(h.path)
        reply(h, 201, b"", {"Docker-Content-Digest": "sha256:" + "0" * 64,
                            "Location": "/v2/m/img/blobs/sha256:" + "0" * 64})
    hs.route("POST", r"/v2/m/img/blobs/uploads/\?mount=.*", mount, first=True)
    res = push(src, f"{hs.host}/other/img:1", f"{hs.host}/m/img:1", options=FAST)
    assert len(mounts) == 2 and res.mounted == 0 and res.uploaded == 2
    m = src.resolve(f"{hs.host}/other/img:1")
    for blob in [m.manifest.config, *m.manifest.layers]:
        assert up.blobs[blob.digest] == src.blobs.read(blob.digest)
    assert up.manifests["1"] == src.blobs.read(desc.digest)


def test_chunked_upload_follows_the_registry(tmp_path, hostile, config_env, monkeypatch):
    """PATCH chunks against a registry that answers with relative Locations (relative
    to the request, not to /v2/) and once acknowledges fewer bytes than were sent
    (Range: 0-99): the upload starts again instead of appending after a hole and
    failing on DIGEST_INVALID at the end."""
    from layerstore.registry import client

    monkeypatch.setattr(client, "MONOLITHIC_MAX", 1 << 20)
    monkeypatch.setattr(client, "UPLOAD_CHUNK", 1 << 20)
    src = Store.open(tmp_path / "src")
    make_image(src, "c:1", [random_files(1, 3_000_000, 203)])
    hs = hostile()
    up = Uploads(hs, "c/img", lie_once=True)
    res = push(src, "c:1", f"{hs.host}/c/img:1", options=FAST)
    layer = src.resolve("c:1").manifest.layers[0]
    assert up.blobs[layer.digest] == src.blobs.read(layer.digest)
    assert res.uploaded == 2
    patches = [s.path for s in hs.seen if s.method == "PATCH"]
    assert all(p.startswith("/v2/c/img/blobs/uploads/") for p in patches)
    posts = [s for s in hs.seen if s.method == "POST"]
    assert len(posts) == 3                 # config, layer, and the layer once more


def test_hostile_upload_locations_are_refused_at_once(tmp_path, hostile, config_env):
    """Not followed, and not tried again in new sessions either: the registry meant it."""
    from layerstore.registry.client import Refused

    src = Store.open(tmp_path / "src")
    make_image(src, "l:1", [random_files(1, 2000, 213)])
    for location, expected in (("http://[::1", "invalid upload location 'http://\\[::1'"),
                               ("ftp://127.0.0.1/x", "refusing to follow 'ftp://"),
                               ("file:///etc/passwd", "refusing to follow 'file:///etc/passwd"),
                               ("http://127.0.0.1:99999/u", "invalid URL")):
        hs = hostile()
        hs.route("HEAD", r"/v2/.*", lambda h, m: reply(h, 404))
        hs.route("POST", r"/v2/l/img/blobs/uploads/",
                 lambda h, m, loc=location: reply(h, 202, b"", {"Location": loc}))
        opts = Options(backoff=0.05, timeout=1.0, retries=2, max_concurrent=1)
        with pytest.raises(Refused, match=expected) as info:
            push(src, "l:1", f"{hs.host}/l/img:1", options=opts)
        assert "\n" not in str(info.value)
        posts = [s for s in hs.seen if s.method == "POST"]
        assert 1 <= len(posts) <= 2, location       # once per blob at most, not once per retry


# --- hangs -----------------------------------------------------------------------------

def _trickle_head(hs: Hostile):
    """A status line, then the headers one byte every 0.2 s: each recv returns
    something, so a read timeout never fires."""
    def handler(h, m):
        h.close_connection = True
        h.wfile.write(b"HTTP/1.1 200 OK\r\n")
        h.wfile.flush()
        line = b"X-Slow: " + b"a" * 60 + b"\r\n"
        for i in range(100_000):
            if hs.stopping.wait(0.2):
                return
            h.wfile.write(line[i % len(line):i % len(line) + 1])
            h.wfile.flush()
    return handler


def test_trickled_response_heads_are_cut_off(tmp_path, hostile, config_env, monkeypatch):
    from builder.steps import download

    hs = hostile()
    hs.route("GET", r"/v2/x/manifests/1", _trickle_head(hs))
    opts = Options(backoff=0.05, max_backoff=0.2, timeout=1.0, retries=1)
    with pytest.raises(RegistryError, match=r"manifest .*/x:1 \(timed out\) after 2 attempts"):
        bounded(lambda: pull(Store.open(tmp_path / "a"), f"{hs.host}/x:1", options=opts), 30)
    # an upload's answer
    src = Store.open(tmp_path / "src")
    make_image(src, "t:1", [random_files(1, 1000, 204)])
    hs.route("HEAD", r"/v2/.*", lambda h, m: reply(h, 404))
    hs.route("POST", r"/v2/t/img/blobs/uploads/", lambda h, m: reply(h, 202, b"", {"Location": "/u"}))
    hs.route("PUT", r"/u\?.*", _trickle_head(hs))
    with pytest.raises(RegistryError, match=r"failed after 2 attempts: .*timed out"):
        bounded(lambda: push(src, "t:1", f"{hs.host}/t/img:1", options=opts), 30)
    # a token realm's
    tok = hostile()
    tok.route("*", r"/v2/.*", lambda h, m: reply(h, 401, b"", {
        "WWW-Authenticate": f'Bearer realm="{tok.base}/token",service="s"'}))
    tok.route("GET", r"/token\?.*", _trickle_head(tok), first=True)
    with pytest.raises(Unauthorized, match="token from"):
        bounded(lambda: pull(Store.open(tmp_path / "b"), f"{tok.host}/x:1", options=opts), 30)
    # ADD <url>
    monkeypatch.setenv("PYBUILD_STALL_TIMEOUT", "1")
    hs.route("GET", r"/add", _trickle_head(hs))
    with pytest.raises(download.DownloadError, match=r"ADD .*/add: .*"):
        bounded(lambda: download.fetch(f"{hs.base}/add", tmp_path / "f", None), 30)
    assert not (tmp_path / "f").exists()


def test_ctrl_c_stops_a_push_blocked_on_a_stalled_registry(tmp_path, hostile, config_env):
    """The workers blocked in recv used to finish only after the stall timeout, and
    then retried: Ctrl-C took minutes. cancel() now hangs their sockets up."""
    root = tmp_path / "src"
    src = Store.open(root)
    make_image(src, "cc:1", [random_files(1, 2000, 205), random_files(1, 3000, 206)])
    refs_before = src.refs.list()
    hs = hostile()
    hs.route("HEAD", r"/v2/.*", lambda h, m: reply(h, 404))
    hs.route("POST", r"/v2/cc/img/blobs/uploads/", lambda h, m: reply(
        h, 202, b"", {"Location": f"/up/{uuid.uuid4().hex}"}))
    hs.route("PUT", r"/up/.*", lambda h, m: hs.stopping.wait(300))
    env = dict(os.environ, PYTHONPATH=str(REPO), PYBUILD_CONFIG=str(config_env),
               PYBUILD_STALL_TIMEOUT="120")
    proc = subprocess.Popen([sys.executable, "-m", "builder", "--root", str(root), "push",
                             "--progress", "plain", "cc:1", f"{hs.host}/cc/img:1"],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        waited = threading.Event()
        for _ in range(400):
            if len([s for s in hs.seen if s.method == "PUT"]) >= 3:   # all three blobs stuck
                break
            waited.wait(0.05)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 130 and err.endswith("pybuild: interrupted\n"), err[-2000:]
    assert len([s for s in hs.seen if s.method == "PUT"]) == 3      # nothing retried
    again = Store.open(root)
    assert again.refs.list() == refs_before and fsck(again).clean


# --- where credentials go ------------------------------------------------------------

def test_no_credentials_in_clear_to_the_realm_of_an_https_registry(tmp_path, hostile, config_env,
                                                                  monkeypatch):
    """docker sends a registry's credentials to whatever realm it names (auth.docker.io
    for Docker Hub); not in clear, though, when the registry itself is https."""
    proxy = hostile()
    proxy.route("GET", r"http://token\.invalid/token.*", lambda h, m: reply(h, 200, b'{"token":"t"}'))
    monkeypatch.setenv("http_proxy", proxy.base)
    monkeypatch.setenv("no_proxy", "127.0.0.1")
    monkeypatch.delenv("NO_PROXY", raising=False)
    pki = make_pki(tmp_path / "pki")
    reg = hostile(pki=pki)
    reg.route("*", r"/v2/.*", lambda h, m: reply(h, 401, b"", {
        "WWW-Authenticate": 'Bearer realm="http://token.invalid/token",service="s"'}))
    credentials.save(reg.host, credentials.Credentials("bob", "hunter2"))
    with pytest.raises(Unauthorized, match="refusing to send credentials in clear to the "
                                           "plain-http token realm"):
        pull(Store.open(tmp_path / "a"), f"{reg.host}/x:1", options=FAST)
    assert proxy.seen == []
    # anonymously, the token request (no secret in it) is made
    credentials.erase(reg.host)
    with pytest.raises(Unauthorized):      # the registry never accepts the token: fine
        pull(Store.open(tmp_path / "b"), f"{reg.host}/x:1", options=FAST)
    assert proxy.seen and authorizations(proxy.seen) == []


def test_a_realm_elsewhere_is_verified(tmp_path, hostile, config_env, monkeypatch):
    """A registry on loopback is used without TLS verification (as docker); the token
    realm it names on another host is not: it gets the system roots."""
    import requests

    seen: list = []
    real_get = transport.Session.get

    def spy(self, url, **kw):
        if "token.invalid" in url:
            seen.append(kw.get("verify"))
            raise requests.ConnectionError("no such host")
        return real_get(self, url, **kw)
    monkeypatch.setattr(transport.Session, "get", spy)
    reg = hostile()
    reg.route("*", r"/v2/.*", lambda h, m: reply(h, 401, b"", {
        "WWW-Authenticate": 'Bearer realm="https://token.invalid/token",service="s"'}))
    with pytest.raises(Unauthorized, match="cannot get a token"):
        pull(Store.open(tmp_path / "a"), f"{reg.host}/x:1", options=FAST)
    assert seen == [True]


def test_challenge_changing_mid_push(tmp_path, hostile, config_env):
    """Basic at first, then Bearer with a realm on another host: the push goes on; the
    credentials go to the registry and to the realm it names, nowhere else."""
    tokens = hostile("127.0.0.2")
    basic = "Basic " + base64.b64encode(b"bob:hunter2").decode()
    tokens.route("GET", r"/token\?.*", lambda h, m: reply(
        h, 200 if h.headers.get("Authorization") == basic else 401, b'{"token":"tk"}'))
    hs = hostile()
    up = Uploads(hs, "ch/img")
    state = {"n": 0}

    def gate(h, m):
        state["n"] += 1
        authz = h.headers.get("Authorization", "")
        want = basic if state["n"] <= 4 else "Bearer tk"
        if authz == want:
            return False
        scheme = ('Basic realm="r"' if state["n"] <= 4 else
                  f'Bearer realm="{tokens.base}/token",service="s"')
        reply(h, 401, b"", {"WWW-Authenticate": scheme})
        return True

    for route in list(hs.routes):
        method, pattern, handler = route
        hs.routes.remove(route)
        hs.route(method, pattern.pattern,
                 lambda h, m, handler=handler: None if gate(h, m) else handler(h, m))
    credentials.save(hs.host, credentials.Credentials("bob", "hunter2"))
    src = Store.open(tmp_path / "src")
    make_image(src, "ch:1", [random_files(1, 2000, 207), random_files(1, 2000, 208)])
    opts = Options(backoff=0.05, max_backoff=0.2, timeout=1.0, retries=2, max_concurrent=1)
    res = push(src, "ch:1", f"{hs.host}/ch/img:1", options=opts)
    assert res.uploaded == 3 and up.manifests["1"] == src.blobs.read(res.digest)
    assert set(authorizations(tokens.seen)) == {basic}
    assert {"Bearer tk", basic} <= set(authorizations(hs.seen))


# --- concurrency ------------------------------------------------------------------------

def test_prune_during_a_pull_waits_for_it(tmp_path, hostile, config_env):
    """prune used to delete the blobs a pull had fetched but not yet named by a ref;
    the pull then wrote a ref to an image that was not all there."""
    src = Store.open(tmp_path / "src")
    make_image(src, "pp:1", [random_files(1, 2000, 209), random_files(1, 60_000, 210)])
    img = src.resolve("pp:1")
    hs = hostile()
    serve_image(hs, src, "pp:1", "pp")
    small, big = sorted(img.manifest.layers, key=lambda l: l.size)
    go = threading.Event()
    big_data = src.blobs.read(big.digest)
    hs.route("GET", rf"/v2/pp/blobs/{big.digest}",
             lambda h, m: (go.wait(30), reply(h, 200, big_data)), first=True)
    dst = Store.open(tmp_path / "dst")
    pulled: dict = {}
    t = threading.Thread(target=lambda: pulled.update(
        r=pull(dst, f"{hs.host}/pp:1", options=FAST)), daemon=True)
    t.start()
    for _ in range(600):
        if dst.blobs.has(small.digest) and dst.blobs.has(img.id):
            break
        go.wait(0.05)
    assert dst.blobs.has(small.digest)
    pruned: dict = {}
    p = threading.Thread(target=lambda: pruned.update(r=gc.prune(Store.open(dst.root))),
                         daemon=True)
    p.start()
    p.join(2)           # an old prune is done by now; a fixed one waits for the pull
    go.set()
    t.join(30)
    p.join(30)
    assert not t.is_alive() and not p.is_alive() and "r" in pulled and "r" in pruned
    image = dst.resolve(f"{hs.host}/pp:1")
    for blob in [image.manifest.config, *image.manifest.layers]:
        assert dst.blobs.has(blob.digest), blob.digest
    assert fsck(dst).clean and pruned["r"].blobs == 0


def test_two_pulls_of_one_image_at_once(tmp_path, registry, config_env):
    """Two processes pulling the same image into one store (its blobs slowed down so
    they overlap): both succeed and the store checks out."""
    src = Store.open(tmp_path / "src")
    make_image(src, "tw:1", [random_files(1, 1_000_000, 211), random_files(1, 500, 212)])
    push(src, "tw:1", f"{registry.host}/tw/img:1")
    proxy = Proxy(registry.port)
    try:
        for layer in src.resolve("tw:1").manifest.layers:
            proxy.add(lambda m, p, d=layer.digest: m == "GET" and p.endswith(d),
                      ("slow", 2_000_000), times=2)
        root = tmp_path / "dst"
        env = dict(os.environ, PYTHONPATH=str(REPO), PYBUILD_CONFIG=str(config_env))
        cmd = [sys.executable, "-m", "builder", "--root", str(root), "pull", "-q",
               f"{proxy.host}/tw/img:1"]
        procs = [subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                  text=True) for _ in range(2)]
        outs = [p.communicate(timeout=120) for p in procs]
    finally:
        proxy.stop()
    digest = src.resolve("tw:1").descriptor.digest
    for p, (out, err) in zip(procs, outs):
        assert p.returncode == 0 and out.strip() == digest, err
    dst = Store.open(root)
    assert fsck(dst).clean
    assert dst.resolve(f"{proxy.host}/tw/img:1").descriptor.digest == digest
