"""Hostile registries, token servers and ADD sources (issue 11, finding 7 and the
registry side of finding 8): no ~/.netrc credentials leave the builder, every
body is bounded after decompression, stalls and trickles end in a Range resume
or a clear error (never a hang), loopback is decided by address, redirects and
upload locations cannot lead credentials or bytes astray, and documents that
are not images are refused."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import sys
import threading
from pathlib import Path

import pytest

from conftest import CLI, REPO
from layerstore import mediatypes as mt
from layerstore.errors import DigestMismatch, InvalidImage, PybuildError
from layerstore.registry import tls
from layerstore.registry.client import Options, RegistryClient
from layerstore.registry.errors import RegistryError, Unauthorized
from layerstore.registry.pull import pull
from layerstore.registry.push import push
from layerstore.store import Store
from test_registry_helpers import (Hostile, Proxy, Recorder, config_env, gzip_bomb,  # noqa: F401
                                   limited, make_image, make_pki, random_files, registry, reply,
                                   reply_endless, reply_stalled, reply_trickle)

FAST = Options(backoff=0.05, max_backoff=0.2, timeout=1.0)
MEM = 1 << 30            # address space for a CLI under test: a bomb inflated whole dies
BOMB = 2 << 30           # inflates to 2 GiB from ~2 MB


# --- helpers -----------------------------------------------------------------------

@pytest.fixture
def hostile():
    servers: list[Hostile] = []

    def make(addr: str = "127.0.0.1", pki=None, **kw) -> Hostile:
        servers.append(Hostile(addr, pki, **kw))
        return servers[-1]
    yield make
    for s in servers:
        s.stop()


def bounded(fn, seconds: float = 45):
    """Run fn in a thread: its result or exception, or a failure if it hangs."""
    out: dict = {}

    def run() -> None:
        try:
            out["value"] = fn()
        except BaseException as exc:  # noqa: BLE001 - handed back to the test
            out["error"] = exc
    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(seconds)
    assert not t.is_alive(), f"still running after {seconds} s: it hangs"
    if "error" in out:
        raise out["error"]
    return out["value"]


def one_line_error(proc) -> str:
    assert proc.returncode == 1, (proc.returncode, proc.stderr[-2000:])
    assert proc.stderr.startswith("pybuild: error: ") and proc.stderr.count("\n") == 1, \
        proc.stderr[-2000:]
    return proc.stderr


def run_cli(root: Path, *args: str, env: dict | None = None, mem: int | None = MEM,
            timeout: float = 60, input: str | None = None, cwd: Path | None = None):
    import subprocess

    full = dict(os.environ, PYTHONPATH=str(REPO), MALLOC_ARENA_MAX="2")
    full.update(env or {})
    return subprocess.run([sys.executable, "-m", "builder", "--root", str(root), *args],
                          capture_output=True, text=True, env=full, timeout=timeout,
                          preexec_fn=limited(mem) if mem else None, input=input, cwd=cwd)


def serve_image(hs: Hostile, src: Store, name: str, repo: str, tag: str = "1") -> dict:
    """Route a store's image on `hs` as a registry would; returns its parts."""
    img = src.resolve(name)
    data = src.blobs.read(img.descriptor.digest)
    digest = img.descriptor.digest
    for ref in (tag, digest):
        hs.route("*", rf"/v2/{repo}/manifests/{ref}",
                 lambda h, m: reply(h, 200, data, {"Content-Type": mt.OCI_MANIFEST,
                                                   "Docker-Content-Digest": digest}))
    for blob in [*img.manifest.layers]:
        hs.route("*", rf"/v2/{repo}/blobs/{blob.digest}",
                 lambda h, m, b=src.blobs.read(blob.digest): reply(h, 200, b))
    cfg = src.blobs.read(img.id)
    hs.route("*", rf"/v2/{repo}/blobs/{img.id}", lambda h, m: reply(h, 200, cfg))
    return {"manifest": data, "digest": digest, "layers": img.manifest.layers, "config": img.id}


def serve_document(hs: Hostile, repo: str, tag: str, doc: dict | bytes,
                   content_type: str | None, digest_header: str | None = None) -> bytes:
    data = doc if isinstance(doc, bytes) else json.dumps(doc).encode()
    headers = {"Docker-Content-Digest": digest_header or "sha256:" + hashlib.sha256(data).hexdigest()}
    if content_type:
        headers["Content-Type"] = content_type
    route = rf"/v2/{repo}/manifests/({tag}|sha256:{hashlib.sha256(data).hexdigest()})"
    hs.route("*", route, lambda h, m: reply(h, 200, data, headers))
    return data


def netrc_home(tmp_path: Path, hosts: tuple[str, ...] = ("127.0.0.1", "127.0.0.2")) -> Path:
    home = tmp_path / "home"
    home.mkdir()
    netrc = home / ".netrc"
    netrc.write_text("".join(f"machine {h} login netrc-user password netrc-secret\n"
                             for h in hosts))
    netrc.chmod(0o600)
    return home


def authorizations(seen) -> list[str]:
    return [v for s in seen for k, v in s.headers.items() if k.lower() == "authorization"]


# --- 1. ~/.netrc ---------------------------------------------------------------------

def test_add_sends_no_netrc_credentials(tmp_path, hostile, monkeypatch):
    from builder.steps import download

    home = netrc_home(tmp_path)
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.delenv("NETRC", raising=False)
    other = hostile("127.0.0.2")
    other.route("GET", r"/g", lambda h, m: reply(h, 200, b"from elsewhere"))
    hs = hostile()
    hs.route("GET", r"/f", lambda h, m: reply(h, 200, b"payload"))
    hs.route("GET", r"/moved", lambda h, m: reply(h, 302, b"", {"Location": f"{other.base}/g"}))
    out = download.fetch(f"{hs.base}/f", tmp_path / "f", None)
    assert out.read_bytes() == b"payload"
    download.fetch(f"{hs.base}/moved", tmp_path / "g", None)
    assert (tmp_path / "g").read_bytes() == b"from elsewhere"
    assert authorizations(hs.seen) == [] and authorizations(other.seen) == []
    # credentials the Dockerfile states in the URL are sent, to that host only
    user_url = f"http://ann:pw@{hs.host}/moved"
    download.fetch(user_url, tmp_path / "h", None)
    assert authorizations(hs.seen) == ["Basic " + base64.b64encode(b"ann:pw").decode()]
    assert authorizations(other.seen) == []


def test_add_errors_never_show_a_password_of_the_url(tmp_path, hostile):
    """The URL's own credentials go to its host, never into an error (CI logs are public)."""
    from builder.steps import download

    hs = hostile()
    hs.route("GET", r"/gone", lambda h, m: reply(h, 404, b"no"))
    with pytest.raises(download.DownloadError) as err:
        download.fetch(f"http://ann:s3cret-pw@{hs.host}/gone", tmp_path / "g", None)
    assert "s3cret-pw" not in str(err.value)
    assert f"http://ann:xxxxx@{hs.host}/gone" in str(err.value)
    with pytest.raises(download.DownloadError) as err:
        download.fetch("ftp://ann:s3cret-pw@127.0.0.1/x", tmp_path / "x", None)
    assert "s3cret-pw" not in str(err.value)


def test_build_progress_and_history_never_show_a_password_of_the_url(tmp_path, hostile):
    """The Dockerfile's own URL credentials reach their host, never the build's progress
    log or the image's history (both end up in public CI logs and registries)."""
    hs = hostile()
    hs.route("GET", r"/f", lambda h, m: reply(h, 200, b"payload"))
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    (ctx / "Dockerfile").write_text(f"FROM scratch\nADD http://ann:s3cret-pw@{hs.host}/f /f\n")
    cli = CLI(tmp_path / "store")
    out = cli("build", "--progress", "plain", "-t", "add-pw", ctx)
    shown = out.stdout + out.stderr
    assert "s3cret-pw" not in shown and "ann:xxxxx@" in shown
    assert authorizations(hs.seen) == ["Basic " + base64.b64encode(b"ann:s3cret-pw").decode()]
    history = cli("history", "--no-trunc", "add-pw").stdout
    assert "s3cret-pw" not in history and "ADD " in history


def test_build_add_sends_no_netrc_credentials(tmp_path, hostile):
    home = netrc_home(tmp_path)
    hs = hostile()
    hs.route("GET", r"/f", lambda h, m: reply(h, 200, b"payload"))
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    (ctx / "Dockerfile").write_text(f"FROM scratch\nADD {hs.base}/f /f\n")
    cli = CLI(tmp_path / "store")
    cli("build", "--progress", "plain", "-t", "add-netrc", ctx,
        env={"HOME": str(home), "NETRC": str(home / ".netrc")})
    assert [s.path for s in hs.seen] == ["/f"]
    assert authorizations(hs.seen) == []


def test_registry_never_sends_netrc_credentials(tmp_path, registry, config_env, monkeypatch):
    """Not to the registry (which asked for none), nor to blob storage it redirects to."""
    home = netrc_home(tmp_path)
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.delenv("NETRC", raising=False)
    src = Store.open(tmp_path / "src")
    make_image(src, "n:1", [random_files(1, 20_000, 7)])
    push(src, "n:1", f"{registry.host}/netrc/img:1")
    layer = src.resolve("n:1").manifest.layers[0]
    proxy = Proxy(registry.port)
    recorder = Recorder(src.blobs.dir)
    try:
        proxy.add(lambda m, p: m == "GET" and p.endswith(layer.digest),
                  ("redirect", recorder.base), times=1)
        dst = Store.open(tmp_path / "dst")
        pull(dst, f"{proxy.host}/netrc/img:1", options=FAST)
        assert dst.blobs.has(layer.digest)
        assert recorder.seen and proxy.seen
        assert authorizations(proxy.seen) == [] and authorizations(recorder.seen) == []
    finally:
        recorder.stop()
        proxy.stop()


def test_proxy_from_the_environment_is_still_used(tmp_path, hostile, monkeypatch):
    """Only netrc is off: HTTP(S)_PROXY (and REQUESTS_CA_BUNDLE) still apply, as
    HTTPS through an intercepting proxy needs them."""
    from builder.steps import download

    proxy = hostile()
    proxy.route("GET", r"http://add\.invalid/f", lambda h, m: reply(h, 200, b"via proxy"))
    proxy.route("GET", r"http://reg\.invalid/v2/", lambda h, m: reply(h, 200, b"{}"))
    monkeypatch.setenv("http_proxy", proxy.base)
    monkeypatch.setenv("https_proxy", proxy.base)
    monkeypatch.delenv("no_proxy", raising=False)
    monkeypatch.delenv("NO_PROXY", raising=False)
    assert download.fetch("http://add.invalid/f", tmp_path / "f", None).read_bytes() == \
        b"via proxy"
    with RegistryClient("reg.invalid", Options(insecure_hosts=("reg.invalid",), retries=0),
                        creds=None) as c:
        assert c.ping() == "http://reg.invalid"
    assert [s.path for s in proxy.seen if s.method == "GET"] == ["http://add.invalid/f",
                                                                 "http://reg.invalid/v2/"]


# --- 2. bounded reads ------------------------------------------------------------------

def test_gzip_bomb_404_body_is_a_clear_error(tmp_path, hostile, config_env):
    hs = hostile()
    bomb = gzip_bomb(BOMB)
    hs.route("GET", r"/v2/x/manifests/latest",
             lambda h, m: reply(h, 404, bomb, {"Content-Encoding": "gzip",
                                               "Content-Type": "application/json"}))
    out = run_cli(tmp_path / "store", "pull", f"{hs.host}/x", env={"PYBUILD_CONFIG": str(config_env)})
    assert one_line_error(out) == f"pybuild: error: manifest {hs.host}/x:latest: manifest unknown\n"


def test_endless_json_error_body_is_a_clear_error(tmp_path, hostile, config_env):
    hs = hostile()
    hs.route("GET", r"/v2/x/manifests/1",
             lambda h, m: reply_endless(h, 404, b'{"errors":[{"code":"MANIFEST_UNKNOWN","message":"',
                                        b"x" * 4096, {"Content-Type": "application/json"},
                                        hs.stopping))
    out = run_cli(tmp_path / "store", "pull", f"{hs.host}/x:1",
                  env={"PYBUILD_CONFIG": str(config_env)})
    assert one_line_error(out) == f"pybuild: error: manifest {hs.host}/x:1: manifest unknown\n"


def _token_registry(hs: Hostile, token_handler) -> None:
    hs.route("*", r"/v2/.*", lambda h, m: reply(h, 401, b"", {
        "WWW-Authenticate": f'Bearer realm="{hs.base}/token",service="s"'}))
    hs.route("GET", r"/token\?.*", token_handler, first=True)


def test_huge_token_response_is_a_clear_error(tmp_path, hostile, config_env):
    bomb = gzip_bomb(BOMB)
    hs = hostile()
    _token_registry(hs, lambda h, m: reply(h, 200, bomb, {"Content-Encoding": "gzip",
                                                          "Content-Type": "application/json"}))
    out = run_cli(tmp_path / "store", "pull", f"{hs.host}/x:1",
                  env={"PYBUILD_CONFIG": str(config_env)})
    assert "token from" in one_line_error(out) and "bytes allowed" in out.stderr
    # a plain one: 3 MiB of token would go into every Authorization header
    big = json.dumps({"token": "a" * (3 << 20)}).encode()
    hs2 = hostile()
    _token_registry(hs2, lambda h, m: reply(h, 200, big, {"Content-Type": "application/json"}))
    out = run_cli(tmp_path / "store", "pull", f"{hs2.host}/x:1",
                  env={"PYBUILD_CONFIG": str(config_env)})
    assert "bytes allowed" in one_line_error(out)
    assert all(len(v) < 10000 for v in authorizations(hs2.seen))
    # a token that is not a header value
    hs3 = hostile()
    _token_registry(hs3, lambda h, m: reply(h, 200, json.dumps({"token": "a\r\nX-Evil: 1"}).encode()))
    out = run_cli(tmp_path / "store", "pull", f"{hs3.host}/x:1",
                  env={"PYBUILD_CONFIG": str(config_env)})
    assert "sent no usable token" in one_line_error(out)


def test_tag_lists_are_bounded(hostile, config_env, monkeypatch):
    from layerstore.registry import client as client_mod

    monkeypatch.setattr(client_mod, "MAX_TAG_PAGES", 50, raising=False)
    hs = hostile()
    pages = []

    def endless(h, m):            # a fresh next page each time (capped so an old client ends)
        n = int(m.group(1) or 0)
        pages.append(n)
        link = {"Link": f'</v2/e/tags/list?n=1&last=t{n + 1}>; rel="next"'} if n < 200 else {}
        reply(h, 200, json.dumps({"name": "e", "tags": [f"t{n}"]}).encode(), link)
    hs.route("GET", r"/v2/e/tags/list(?:\?n=1&last=t(\d+))?", endless)
    hs.route("GET", r"/v2/loop/tags/list", lambda h, m: reply(
        h, 200, b'{"tags":["a"]}', {"Link": '</v2/loop/tags/list>; rel="next"'}))
    hs.route("GET", r"/v2/away/tags/list", lambda h, m: reply(
        h, 200, b'{"tags":["a"]}', {"Link": '<http://127.0.0.2:9/v2/away/tags/list?x>; rel="next"'}))
    big = json.dumps({"tags": ["t" * 1000] * 40_000}).encode()       # 40 MB, one page
    hs.route("GET", r"/v2/big/tags/list", lambda h, m: reply(h, 200, big))
    bomb = gzip_bomb(BOMB)
    hs.route("GET", r"/v2/bomb/tags/list",
             lambda h, m: reply(h, 200, bomb, {"Content-Encoding": "gzip"}))
    hs.route("GET", r"/v2/odd/tags/list", lambda h, m: reply(h, 200, b'{"tags":[{"a":1}]}'))
    with RegistryClient(hs.host, FAST, creds=None) as c:
        with pytest.raises(RegistryError, match=r"tags of .*/e: more than 50 pages"):
            c.list_tags("e")
        assert len(pages) == 50
        with pytest.raises(RegistryError, match="goes round in a loop"):
            c.list_tags("loop")
        with pytest.raises(RegistryError, match="next page on another host"):
            c.list_tags("away")
        with pytest.raises(RegistryError, match=r"tags of .*/big: 4\d+ bytes, more than"):
            c.list_tags("big")
        with pytest.raises(RegistryError, match=r"tags of .*/bomb: more than the \d+ bytes allowed"):
            c.list_tags("bomb")
        with pytest.raises(RegistryError, match="not a tag list"):
            c.list_tags("odd")


def test_manifest_bomb_and_oversize_are_refused(tmp_path, hostile, config_env):
    hs = hostile()
    bomb = gzip_bomb(BOMB)
    hs.route("GET", r"/v2/b/manifests/1", lambda h, m: reply(
        h, 200, bomb, {"Content-Encoding": "gzip", "Content-Type": mt.OCI_MANIFEST}))
    hs.route("GET", r"/v2/e/manifests/1", lambda h, m: reply_endless(
        h, 200, b'{"schemaVersion":2,"x":"', b"y" * 4096, {"Content-Type": mt.OCI_MANIFEST},
        hs.stopping))
    hs.route("GET", r"/v2/c/manifests/1", lambda h, m: reply(
        h, 200, b"", {"Content-Encoding": "br", "Content-Type": mt.OCI_MANIFEST}))
    store = Store.open(tmp_path / "s")
    with pytest.raises(RegistryError, match=r"manifest .*/b:1: more than the 4194304 bytes allowed"):
        bounded(lambda: pull(store, f"{hs.host}/b:1", options=FAST))
    with pytest.raises(RegistryError, match=r"manifest .*/e:1: more than the 4194304 bytes allowed"):
        bounded(lambda: pull(store, f"{hs.host}/e:1", options=FAST))
    with pytest.raises(RegistryError, match="unsupported Content-Encoding 'br'"):
        bounded(lambda: pull(store, f"{hs.host}/c:1", options=FAST))


def test_hostile_www_authenticate_headers(tmp_path, hostile, config_env):
    hs = hostile()
    params = ",".join(f'k{i}="{"v" * 20}\\"' for i in range(2000))           # ~60 KB
    hs.route("*", r"/v2/.*", lambda h, m: reply(h, 401, b"", {
        "WWW-Authenticate": f'Bearer {params},realm="unterminated' + "a" * 2000}))
    store = Store.open(tmp_path / "s")
    with pytest.raises(Unauthorized) as info:
        bounded(lambda: pull(store, f"{hs.host}/x:1", options=FAST))
    assert "\n" not in str(info.value)
    hs2 = hostile()
    hs2.route("*", r"/v2/.*", lambda h, m: reply(h, 401, b"", {
        "WWW-Authenticate": 'Bearer realm="file:///etc/passwd",service="s"'}))
    with pytest.raises(Unauthorized, match="is not an http"):
        pull(store, f"{hs2.host}/x:1", options=FAST)


# --- 3. stalls and trickles -----------------------------------------------------------

@pytest.fixture
def proxied(registry):
    proxy = Proxy(registry.port)
    yield registry, proxy
    proxy.stop()


def _pushed(tmp_path, registry, size=1_500_000):
    src = Store.open(tmp_path / "src")
    make_image(src, "st:1", [random_files(1, 500, 61), random_files(1, size, 62)])
    push(src, "st:1", f"{registry.host}/stall/img:1")
    big = max(src.resolve("st:1").manifest.layers, key=lambda l: l.size)
    return src, big


def _blob_get(digest: str):
    return lambda method, path: method == "GET" and path.endswith(f"/blobs/{digest}")


def test_stalled_blob_resumes_with_range(tmp_path, proxied, config_env):
    registry, proxy = proxied
    src, big = _pushed(tmp_path, registry)
    proxy.add(_blob_get(big.digest), ("stall", 0.5), times=1)
    out = run_cli(tmp_path / "dst", "pull", "-q", f"{proxy.host}/stall/img:1", mem=None,
                  env={"PYBUILD_STALL_TIMEOUT": "2", "PYBUILD_CONFIG": str(config_env)})
    assert out.returncode == 0, out.stderr
    gets = [s for s in proxy.seen if s.method == "GET" and s.path.endswith(big.digest)]
    assert len(gets) == 2
    start = int(gets[1].headers["Range"].removeprefix("bytes=").rstrip("-"))
    assert 0 < start <= big.size // 2
    assert Store.open(tmp_path / "dst").blobs.read(big.digest) == src.blobs.read(big.digest)


def test_trickling_blob_resumes_or_fails_clearly(tmp_path, proxied, config_env):
    registry, proxy = proxied
    src, big = _pushed(tmp_path, registry)
    # a trickle keeps the socket busy (no read timeout ever fires): it is cut off
    # by rate, and the rest comes with Range
    proxy.add(_blob_get(big.digest), ("trickle", 0.4, 0.2), times=1)
    dst = Store.open(tmp_path / "dst")
    bounded(lambda: pull(dst, f"{proxy.host}/stall/img:1", options=FAST))
    ranged = [s for s in proxy.seen if s.path.endswith(big.digest) and "Range" in s.headers]
    assert len(ranged) == 1
    assert dst.blobs.read(big.digest) == src.blobs.read(big.digest)
    # trickling every time: a clear error naming the blob, and a resumable partial
    proxy.add(_blob_get(big.digest), ("trickle", 0.3, 0.2), times=10)
    bad = Store.open(tmp_path / "bad")
    with pytest.raises(RegistryError, match=rf"blob {big.digest} .*transfer kept failing "
                                            r"\(stalled: .*bytes/s\) after 2 attempts") as info:
        bounded(lambda: pull(bad, f"{proxy.host}/stall/img:1",
                             options=Options(retries=1, backoff=0.05, timeout=1.0)))
    assert "\n" not in str(info.value)
    assert bad.refs.list() == [] and not bad.blobs.has(big.digest)
    assert list((bad.root / "ingest").glob(f"{big.digest[7:]}.partial"))


def test_stalled_manifest_and_token_fail_clearly(tmp_path, hostile, config_env):
    hs = hostile()
    doc = json.dumps({"schemaVersion": 2, "mediaType": mt.OCI_MANIFEST, "pad": "x" * 4000}).encode()
    hs.route("GET", r"/v2/t/manifests/1", lambda h, m: reply_trickle(
        h, 200, doc, 100, hs.stopping, 0.2, {"Content-Type": mt.OCI_MANIFEST}))
    hs.route("GET", r"/v2/s/manifests/1", lambda h, m: reply_stalled(
        h, 200, doc, 100, hs.stopping, {"Content-Type": mt.OCI_MANIFEST}))
    store = Store.open(tmp_path / "s")
    with pytest.raises(RegistryError, match=r"manifest .*/t:1: stalled: \d+ bytes in"):
        bounded(lambda: pull(store, f"{hs.host}/t:1", options=FAST))
    with pytest.raises(RegistryError, match=r"manifest .*/s:1: stalled: no data for 1 s"):
        bounded(lambda: pull(store, f"{hs.host}/s:1", options=FAST))
    tok = hostile()
    body = json.dumps({"token": "t" * 3000}).encode()
    _token_registry(tok, lambda h, m: reply_trickle(h, 200, body, 10, tok.stopping, 0.2))
    with pytest.raises(Unauthorized, match=r"token from .*: stalled"):
        bounded(lambda: pull(store, f"{tok.host}/x:1", options=FAST))


def test_add_download_stall_and_trickle(tmp_path, hostile, monkeypatch):
    from builder.steps import download

    monkeypatch.setenv("PYBUILD_STALL_TIMEOUT", "1")
    body = os.urandom(20_000)
    hs = hostile()
    hs.route("GET", r"/stall", lambda h, m: reply_stalled(h, 200, body, 5000, hs.stopping))
    hs.route("GET", r"/trickle", lambda h, m: reply_trickle(h, 200, body, 5000, hs.stopping, 0.2))
    hs.route("GET", r"/bomb", lambda h, m: reply(h, 200, gzip_bomb(64 << 20),
                                                 {"Content-Encoding": "gzip"}))
    with pytest.raises(download.DownloadError, match=r"ADD .*/stall: stalled: no data for 1 s"):
        bounded(lambda: download.fetch(f"{hs.base}/stall", tmp_path / "a", None))
    with pytest.raises(download.DownloadError, match=r"ADD .*/trickle: stalled: \d+ bytes in"):
        bounded(lambda: download.fetch(f"{hs.base}/trickle", tmp_path / "b", None))
    # no size limit (as docker), but streamed to the file, never held in memory
    out = download.fetch(f"{hs.base}/bomb", tmp_path / "c", None)
    assert out.stat().st_size == 64 << 20


def test_add_refuses_hostile_urls(tmp_path, hostile):
    from builder.steps import download

    hs = hostile()
    hs.route("GET", r"/file", lambda h, m: reply(h, 302, b"", {"Location": "file:///etc/passwd"}))
    hs.route("GET", r"/ftp", lambda h, m: reply(h, 302, b"", {"Location": "ftp://127.0.0.1/x"}))
    hs.route("GET", r"/loop(\d+)", lambda h, m: reply(
        h, 302, b"", {"Location": f"/loop{int(m.group(1)) + 1}"}))
    urls = ["file:///etc/passwd", "ftp://127.0.0.1/x", "gopher://x", f"{hs.base}/file",
            f"{hs.base}/ftp", f"{hs.base}/loop0", "http://[::1", "http://127.0.0.1:99999/x",
            "http:///x", "http://127.0.0.1:1/refused"]
    for i, url in enumerate(urls):
        with pytest.raises(download.DownloadError) as info:
            download.fetch(url, tmp_path / str(i), None)
        assert str(info.value).startswith(f"ADD {url}: ") and "\n" not in str(info.value)
    assert len([s for s in hs.seen if s.path.startswith("/loop")]) == 11
    assert not any((tmp_path / str(i)).exists() for i in range(len(urls)))


def test_redirect_bodies_are_never_read(tmp_path, hostile, config_env):
    """requests reads the body of each redirect it follows, whole: an endless one
    behind a redirect (ADD, a token realm) would fill memory."""
    from builder.steps import download

    hs = hostile()
    sent: list[int] = []
    hs.route("GET", r"/f", lambda h, m: reply(h, 200, b"payload"))
    hs.route("GET", r"/moved.*", lambda h, m: sent.append(reply_endless(
        h, 302, b"", b"z" * 4096, {"Location": "/f"}, hs.stopping, most=256 << 20)))
    assert download.fetch(f"{hs.base}/moved", tmp_path / "f", None).read_bytes() == b"payload"
    tok = hostile()
    _token_registry(tok, lambda h, m: reply(h, 200, b'{"token":"abc"}'))
    tok.route("GET", r"/moved.*", lambda h, m: sent.append(reply_endless(
        h, 302, b"", b"z" * 4096, {"Location": "/token?scope=x"}, tok.stopping, most=256 << 20)),
        first=True)
    client = RegistryClient(tok.host, FAST, creds=None)
    client.ping()
    client.auth.challenge.params["realm"] = f"{tok.base}/moved"
    assert client.auth.header(client.session, frozenset(["repository:x:pull"]),
                              ("http", tok.host), False) \
        == "Bearer abc"
    client.close()
    # the registry client's redirects to blob storage
    src = Store.open(tmp_path / "src")
    make_image(src, "rb:1", [random_files(1, 3000, 76)])
    reg = hostile()
    layer = serve_image(reg, src, "rb:1", "rb")["layers"][0].digest
    reg.route("GET", rf"/v2/rb/blobs/{layer}", lambda h, m: sent.append(reply_endless(
        h, 307, b"", b"z" * 4096, {"Location": f"/v2/rb/blobs/{layer}?at=storage"},
        reg.stopping, most=256 << 20)), first=True)
    reg.route("GET", rf"/v2/rb/blobs/{layer}\?at=storage",
              lambda h, m: reply(h, 200, src.blobs.read(layer)), first=True)
    dst = Store.open(tmp_path / "dst")
    pull(dst, f"{reg.host}/rb:1", options=FAST)
    assert dst.blobs.has(layer)
    assert len(sent) == 3 and all(n < (64 << 20) for n in sent), sent


# --- 4. loopback by address ---------------------------------------------------------------

def test_loopback_is_decided_by_address(config_env):
    for host in ("127.attacker.example", "127.attacker.example:5000", "127.0.0.1.nip.io",
                 "10.1.2.3:5000", "[::2]:5000", "localhost.attacker.example"):
        assert not tls.is_loopback(host), host
        cfg = tls.for_host(host)
        assert cfg.schemes == ("https",) and cfg.verify is True, host
    for host in ("127.0.0.1:5000", "127.3.4.5", "localhost:5000", "[::1]:5000",
                 "[::ffff:127.0.0.1]:80", "localhost"):
        assert tls.is_loopback(host), host
        assert tls.for_host(host).schemes == ("https", "http")


def test_pull_from_a_127_name_keeps_tls(tmp_path, config_env):
    """What `pull` really sends: a spy on requests records every URL and its verify."""
    spy = tmp_path / "spy"
    spy.mkdir()
    (spy / "sitecustomize.py").write_text(
        "import os, requests.sessions as s\n"
        "_send = s.Session.send\n"
        "def send(self, request, **kw):\n"
        "    with open(os.environ['SPY_LOG'], 'a') as f:\n"
        "        f.write(f\"{request.url} verify={kw.get('verify')!r}\\n\")\n"
        "    return _send(self, request, **kw)\n"
        "s.Session.send = send\n")
    log = tmp_path / "spy.log"
    out = run_cli(tmp_path / "store", "pull", "127.attacker.example:5000/x", mem=None,
                  env={"PYTHONPATH": f"{REPO}:{spy}", "SPY_LOG": str(log),
                       "PYBUILD_CONFIG": str(config_env)})
    assert "127.attacker.example:5000: registry unreachable" in one_line_error(out)
    sent = log.read_text().splitlines()
    assert sent and all(line.startswith("https://127.attacker.example:5000/") for line in sent)
    assert not any(line.endswith("verify=False") for line in sent)


# --- 5. redirects, upload locations, digests, sizes, documents ----------------------------

def test_redirects_to_other_schemes_are_refused(tmp_path, hostile, config_env):
    pki = make_pki(tmp_path / "pki")
    src = Store.open(tmp_path / "src")
    make_image(src, "r:1", [random_files(1, 3000, 71)])
    hs = hostile(pki=pki)
    parts = serve_image(hs, src, "r:1", "r")
    layer = parts["layers"][0].digest
    plain = hostile("127.0.0.2")
    plain.route("GET", r".*", lambda h, m: reply(h, 200, src.blobs.read(layer)))
    targets = iter([f"{plain.base}/downgraded", "file:///etc/passwd", "ftp://127.0.0.2/x"])
    hs.route("GET", rf"/v2/r/blobs/{layer}",
             lambda h, m: reply(h, 307, b"", {"Location": next(targets)}), first=True)
    for expected in ("refusing a redirect from https to http://127.0.0.2",
                     "refusing to follow 'file:///etc/passwd'", "refusing to follow 'ftp://"):
        store = Store.open(tmp_path / f"dst-{len(hs.seen)}")
        with pytest.raises(RegistryError, match=expected) as info:
            pull(store, f"{hs.host}/r:1", options=FAST)
        assert "\n" not in str(info.value) and store.refs.list() == []
    assert plain.seen == []           # nothing went out in clear
    # a redirect loop ends
    hs.route("GET", rf"/v2/r/blobs/{layer}",
             lambda h, m: reply(h, 302, b"", {"Location": h.path}), first=True)
    with pytest.raises(RegistryError, match="too many redirects"):
        pull(Store.open(tmp_path / "loop"), f"{hs.host}/r:1", options=FAST)


def test_upload_location_on_another_host_gets_no_credentials(tmp_path, hostile, config_env):
    from layerstore.registry import credentials

    credentials.save("127.0.0.1", credentials.Credentials("u", "pw"))   # not this port's
    other = hostile("127.0.0.2")
    other.route("*", r"/upload.*", lambda h, m: reply(h, 201, b""))
    hs = hostile()
    basic = "Basic " + base64.b64encode(b"bob:hunter2").decode()

    def home(h, m):
        if h.headers.get("Authorization") != basic:
            return reply(h, 401, b"", {"WWW-Authenticate": 'Basic realm="r"'})
        if h.command == "HEAD":
            return reply(h, 404)
        if h.command == "POST":
            return reply(h, 202, b"", {"Location": f"{other.base}/upload/1"})
        if h.command == "PUT":
            return reply(h, 201, b"", {"Docker-Content-Digest": "sha256:" +
                                       hashlib.sha256(h.body).hexdigest()})
        return reply(h, 404)
    hs.route("*", r"/v2/.+", home)
    credentials.save(hs.host, credentials.Credentials("bob", "hunter2"))
    src = Store.open(tmp_path / "src")
    make_image(src, "u:1", [random_files(1, 2000, 72)])
    push(src, "u:1", f"{hs.host}/u/img:1", options=FAST)
    uploads = [s for s in other.seen if s.method == "PUT"]
    assert len(uploads) == 2 and authorizations(other.seen) == []
    assert basic in authorizations(hs.seen)


def test_token_realm_redirect_keeps_credentials_home(tmp_path, hostile, config_env):
    """Credentials go to the realm the registry names (as docker), not further."""
    from layerstore.registry import credentials

    other = hostile("127.0.0.2")
    other.route("GET", r"/token.*", lambda h, m: reply(h, 200, b'{"token":"t0k"}'))
    hs = hostile()
    _token_registry(hs, lambda h, m: reply(h, 302, b"", {"Location": f"{other.base}/token"}))
    credentials.save(hs.host, credentials.Credentials("bob", "hunter2"))
    with pytest.raises(Unauthorized):     # the registry never accepts the token: fine
        pull(Store.open(tmp_path / "s"), f"{hs.host}/x:1", options=FAST)
    assert other.seen and all(s.path == "/token" for s in other.seen)
    assert authorizations(other.seen) == []
    basic = "Basic " + base64.b64encode(b"bob:hunter2").decode()
    assert basic in [s.headers.get("Authorization") for s in hs.seen if s.path.startswith("/token")]
    assert "Bearer t0k" in authorizations(hs.seen)


def test_registry_messages_stay_one_line(tmp_path, hostile, config_env):
    hs = hostile()
    body = json.dumps({"errors": [{"code": "DENIED", "message": "no\n\x1b[31mpybuild: fake"}]})
    hs.route("GET", r"/v2/x/manifests/1", lambda h, m: reply(h, 403, body.encode()))
    out = run_cli(tmp_path / "store", "pull", f"{hs.host}/x:1",
                  env={"PYBUILD_CONFIG": str(config_env)})
    assert one_line_error(out).endswith("denied: DENIED: no??[31mpybuild: fake\n")


def test_hostile_retry_after(tmp_path, hostile, config_env):
    hs = hostile()
    for i, value in enumerate(("nan", "-5", "Wed, 21 Oct 2015 07:28:00 GMT")):
        hs.route("GET", rf"/v2/r{i}/manifests/1",
                 lambda h, m, v=value: reply(h, 429, b"", {"Retry-After": v}))
        with pytest.raises(RegistryError, match="HTTP 429") as info:
            bounded(lambda: pull(Store.open(tmp_path / f"s{i}"), f"{hs.host}/r{i}:1",
                                 options=Options(retries=1, backoff=0.05, timeout=1.0)))
        assert "\n" not in str(info.value)


def test_docker_content_digest_mismatch(tmp_path, hostile, config_env):
    src = Store.open(tmp_path / "src")
    make_image(src, "d:1", [random_files(1, 2000, 73)])
    data = src.blobs.read(src.resolve("d:1").descriptor.digest)
    hs = hostile()
    serve_document(hs, "d", "1", data, mt.OCI_MANIFEST, digest_header="sha256:" + "0" * 64)
    with pytest.raises(DigestMismatch) as info:
        pull(Store.open(tmp_path / "dst"), f"{hs.host}/d:1", options=FAST)
    assert "\n" not in str(info.value) and f"{hs.host}/d:1" in str(info.value)


def _layer(digest: str, size: int) -> dict:
    return {"mediaType": mt.OCI_LAYER_GZIP, "digest": digest, "size": size}


def test_absurd_descriptor_sizes_are_refused(tmp_path, hostile, config_env):
    src = Store.open(tmp_path / "src")
    make_image(src, "z:1", [random_files(1, 2000, 74)])
    img = src.resolve("z:1")
    good = json.loads(src.blobs.read(img.descriptor.digest))
    hs = hostile()
    huge = dict(good, layers=[_layer(img.manifest.layers[0].digest, 2 ** 60)])
    serve_document(hs, "huge", "1", huge, mt.OCI_MANIFEST)
    big_cfg = dict(good, config=dict(good["config"], size=2 ** 53))
    serve_document(hs, "cfg", "1", big_cfg, mt.OCI_MANIFEST)
    index = {"schemaVersion": 2, "mediaType": mt.OCI_INDEX, "manifests": [{
        "mediaType": mt.OCI_MANIFEST, "digest": img.descriptor.digest, "size": 2 ** 40,
        "platform": {"os": "linux", "architecture": "amd64"}}]}
    serve_document(hs, "idx", "1", index, mt.OCI_INDEX)
    negative = dict(good, layers=[_layer(img.manifest.layers[0].digest, -1)])
    serve_document(hs, "neg", "1", negative, mt.OCI_MANIFEST)
    many = dict(index, manifests=[dict(index["manifests"][0], size=4 << 20)] * 17)
    serve_document(hs, "many", "1", many, mt.OCI_INDEX)
    for repo, what in (("huge", r"layer 0: size \d+ is out of range"),
                       ("cfg", r"config: size \d+ is out of range"),
                       ("idx", r"manifest 0: size \d+ is out of range"),
                       ("neg", r"layer 0: invalid size -1"),
                       ("many", r"manifests add up to 71303168 bytes, more than")):
        store = Store.open(tmp_path / repo)
        with pytest.raises(InvalidImage, match=what) as info:
            pull(store, f"{hs.host}/{repo}:1", options=FAST, all_platforms=repo in ("idx", "many"))
        assert "\n" not in str(info.value) and store.refs.list() == []
    assert not [s for s in hs.seen if "/blobs/" in s.path]   # nothing was fetched


def test_documents_that_are_not_images_are_refused(tmp_path, hostile, config_env):
    src = Store.open(tmp_path / "src")
    make_image(src, "a:1", [random_files(1, 2000, 75)])
    img = src.resolve("a:1")
    good = json.loads(src.blobs.read(img.descriptor.digest))
    hs = hostile()
    serve_image(hs, src, "a:1", "a")
    empty = {"schemaVersion": 2, "mediaType": mt.OCI_INDEX, "manifests": []}
    serve_document(hs, "empty", "1", empty, mt.OCI_INDEX)
    artifact = dict(good, config={"mediaType": "application/vnd.cncf.helm.config.v1+json",
                                  "digest": good["config"]["digest"], "size": good["config"]["size"]})
    serve_document(hs, "artifact", "1", artifact, mt.OCI_MANIFEST)
    both = {k: v for k, v in good.items() if k != "mediaType"}
    both["manifests"] = [{"mediaType": mt.OCI_MANIFEST, "digest": img.descriptor.digest,
                          "size": len(src.blobs.read(img.descriptor.digest))}]
    serve_document(hs, "both", "1", both, None)
    serve_document(hs, "both2", "1", both, mt.OCI_MANIFEST)
    lying = dict(good, mediaType=mt.OCI_MANIFEST)
    serve_document(hs, "lying", "1", lying, mt.OCI_INDEX)
    cases = {"empty": "lists no manifests", "artifact": "not an image",
             "both": "ambiguous", "both2": "ambiguous", "lying": "referred to as"}
    for repo, expected in cases.items():
        for all_platforms in (False, True):
            store = Store.open(tmp_path / f"{repo}-{all_platforms}")
            with pytest.raises(PybuildError, match=expected) as info:
                pull(store, f"{hs.host}/{repo}:1", options=FAST, all_platforms=all_platforms)
            assert "\n" not in str(info.value) and store.refs.list() == [], repo
    # while the image itself pulls
    assert pull(Store.open(tmp_path / "ok"), f"{hs.host}/a:1", options=FAST).top.digest == \
        img.descriptor.digest


def test_all_platforms_pulls_images_beside_attestations_and_artifacts(tmp_path, hostile, config_env):
    """buildx puts provenance/SBOM manifests (in-toto layers, platform unknown/unknown) in
    the index next to the images; --all-platforms stores the images and leaves those out,
    and an artifact entry never fails the whole pull."""
    src = Store.open(tmp_path / "src")
    make_image(src, "a:1", [random_files(1, 2000, 76)])
    img = src.resolve("a:1")
    good = json.loads(src.blobs.read(img.descriptor.digest))
    hs = hostile()
    serve_image(hs, src, "a:1", "a")
    attestation = dict(good, layers=[{"mediaType": "application/vnd.in-toto+json",
                                      "digest": good["layers"][0]["digest"],
                                      "size": good["layers"][0]["size"]}])
    att = serve_document(hs, "a", "att", attestation, mt.OCI_MANIFEST)
    artifact = dict(good, artifactType="application/vnd.example.sig")
    art = serve_document(hs, "a", "art", artifact, mt.OCI_MANIFEST)
    manifest = src.blobs.read(img.descriptor.digest)
    index = {"schemaVersion": 2, "mediaType": mt.OCI_INDEX, "manifests": [
        {"mediaType": mt.OCI_MANIFEST, "digest": img.descriptor.digest, "size": len(manifest),
         "platform": {"architecture": "amd64", "os": "linux"}},
        {"mediaType": mt.OCI_MANIFEST, "digest": "sha256:" + hashlib.sha256(att).hexdigest(),
         "size": len(att), "platform": {"architecture": "unknown", "os": "unknown"},
         "annotations": {"vnd.docker.reference.type": "attestation-manifest",
                         "vnd.docker.reference.digest": img.descriptor.digest}},
        {"mediaType": mt.OCI_MANIFEST, "digest": "sha256:" + hashlib.sha256(art).hexdigest(),
         "size": len(art), "platform": {"architecture": "arm64", "os": "linux"}}]}
    serve_document(hs, "a", "multi", index, mt.OCI_INDEX)
    store = Store.open(tmp_path / "dst")
    result = pull(store, f"{hs.host}/a:multi", options=FAST, all_platforms=True)
    assert [d.digest for d in result.manifests] == [img.descriptor.digest]
    assert store.resolve(f"{hs.host}/a:multi").id == img.id
