"""A faulty proxy between client and registry: retries, resume, clean errors,
nothing corrupt stored, Authorization never sent to another host."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from conftest import REPO
from layerstore.errors import DigestMismatch
from layerstore.fsck import fsck
from layerstore.registry.client import Options
from layerstore.registry.login import login
from layerstore.registry.pull import pull
from layerstore.registry.push import push
from layerstore.store import Store
from test_registry_helpers import (PASSWORD, USER, Proxy, Recorder, config_env,  # noqa: F401
                                   make_image, random_files, registry, token_setup)

FAST = Options(backoff=0.05, max_backoff=0.2)


@pytest.fixture
def proxied(registry):
    proxy = Proxy(registry.port)
    yield registry, proxy
    proxy.stop()


def blob_get(digest: str):
    return lambda method, path: method == "GET" and path.endswith(f"/blobs/{digest}")


def _image(tmp_path, registry, name="f:1", big=2_000_000):
    src = Store.open(tmp_path / "src")
    make_image(src, name, [random_files(1, 1000, 81), random_files(1, big, 82)])
    dest = f"{registry.host}/faults/img:1"
    push(src, name, dest)
    img = src.resolve(name)
    big_layer = max(img.manifest.layers, key=lambda l: l.size)
    return src, img, big_layer


def assert_clean(store: Store) -> None:
    report = fsck(store)
    assert report.clean, report.problems
    for digest in store.blobs.digests():
        assert store.blobs.rehash(digest) == digest


def test_5xx_and_429_are_retried(tmp_path, proxied, config_env):
    registry, proxy = proxied
    src, img, big = _image(tmp_path, registry)
    proxy.add(blob_get(big.digest), ("status", 503), times=2)
    proxy.add(lambda m, p: "/manifests/" in p, ("status", 429, "1"), times=1)
    dst = Store.open(tmp_path / "dst")
    res = pull(dst, f"{proxy.host}/faults/img:1", options=FAST)
    assert res.top.digest == img.descriptor.digest
    gets = [s for s in proxy.seen if s.method == "GET" and s.path.endswith(big.digest)]
    assert len(gets) == 3
    # Retry-After: 1 was honoured (the backoff alone would wait ~0.05 s)
    manifest_gets = [s.at for s in proxy.seen if "/manifests/" in s.path]
    assert manifest_gets[1] - manifest_gets[0] >= 0.75
    assert_clean(dst)


def test_truncated_body_resumes_with_range(tmp_path, proxied, config_env):
    registry, proxy = proxied
    src, img, big = _image(tmp_path, registry)
    proxy.add(blob_get(big.digest), ("truncate", 0.5), times=1)
    dst = Store.open(tmp_path / "dst")
    pull(dst, f"{proxy.host}/faults/img:1", options=FAST)
    gets = [s for s in proxy.seen if s.method == "GET" and s.path.endswith(big.digest)]
    assert len(gets) == 2
    start = int(gets[1].headers["Range"].removeprefix("bytes=").rstrip("-"))
    assert 0 < start <= big.size // 2
    assert dst.blobs.read(big.digest) == src.blobs.read(big.digest)
    assert_clean(dst)


def test_wrong_bytes_never_stored(tmp_path, proxied, config_env):
    registry, proxy = proxied
    src, img, big = _image(tmp_path, registry)
    # corrupt once: caught by the digest check, fetched again, fine
    proxy.add(blob_get(big.digest), ("corrupt",), times=1)
    dst = Store.open(tmp_path / "dst")
    pull(dst, f"{proxy.host}/faults/img:1", options=FAST)
    assert dst.blobs.rehash(big.digest) == big.digest
    # corrupt every time: a clean one-line error, no blob, no ref, no partial
    bad = Store.open(tmp_path / "bad")
    proxy.add(blob_get(big.digest), ("corrupt",), times=10)
    with pytest.raises(DigestMismatch, match=rf"blob {big.digest} of {proxy.host}/faults/img"):
        pull(bad, f"{proxy.host}/faults/img:1", options=FAST)
    assert not bad.blobs.has(big.digest)
    assert bad.refs.list() == []
    # no partial of the bad blob; a sibling cut short by the failure may keep a
    # resumable partial, which holds a true prefix of its blob
    for partial in (bad.root / "ingest").iterdir():
        assert partial.name != f"{big.digest[7:]}.partial"
        digest = "sha256:" + partial.name.removesuffix(".partial")
        assert src.blobs.read(digest).startswith(partial.read_bytes())
    assert_clean(bad)


def test_truncated_manifest_and_short_blob(tmp_path, proxied, config_env):
    registry, proxy = proxied
    src, img, big = _image(tmp_path, registry)
    proxy.add(lambda m, p: "/manifests/" in p, ("truncate", 0.5), times=1)
    proxy.add(blob_get(big.digest), ("truncate", 0.1), times=10)
    dst = Store.open(tmp_path / "dst")
    with pytest.raises(Exception, match=rf"blob {big.digest}.*transfer kept failing") as info:
        pull(dst, f"{proxy.host}/faults/img:1", options=Options(retries=3, backoff=0.01))
    assert "Traceback" not in str(info.value) and "\n" not in str(info.value)
    assert not dst.blobs.has(big.digest) and dst.refs.list() == []
    # what did arrive is kept as a resumable partial, and the next pull completes it
    assert list((dst.root / "ingest").glob(f"{big.digest[7:]}.partial"))
    proxy.faults.clear()
    before = proxy.sent
    pull(dst, f"{proxy.host}/faults/img:1", options=FAST)
    assert proxy.sent - before < big.size * 0.9
    assert_clean(dst)


def test_redirect_to_other_host_gets_no_authorization(tmp_path, token_setup, config_env):
    reg, tokens = token_setup
    proxy = Proxy(reg.port)
    src = Store.open(tmp_path / "src")
    recorder = Recorder(src.blobs.dir)
    try:
        make_image(src, "red:1", [random_files(1, 50_000, 91)])
        big = src.resolve("red:1").manifest.layers[0]
        login(proxy.host, USER, PASSWORD)
        push(src, "red:1", f"{proxy.host}/red/img:1")
        proxy.add(blob_get(big.digest), ("redirect", recorder.base), times=1)
        dst = Store.open(tmp_path / "dst")
        pull(dst, f"{proxy.host}/red/img:1", options=FAST)
        assert dst.blobs.rehash(big.digest) == big.digest
        assert [s.path for s in recorder.seen] == [f"/v2/red/img/blobs/{big.digest}"]
        assert all("Authorization" not in s.headers and "authorization" not in s.headers
                   for s in recorder.seen)
        # ...while the registry's own origin did get it
        assert any(s.headers.get("Authorization", "").startswith("Bearer ")
                   for s in proxy.seen if s.path.endswith(big.digest))
    finally:
        recorder.stop()
        proxy.stop()


@pytest.mark.slow
def test_kill_9_mid_pull_then_resume(tmp_path, proxied, config_env):
    registry, proxy = proxied
    size = 48_000_000
    src, img, big = _image(tmp_path, registry, big=size)
    proxy.add(blob_get(big.digest), ("slow", 16_000_000), times=1)
    root = tmp_path / "dst"
    cmd = [sys.executable, "-m", "builder", "--root", str(root), "pull", "--progress", "plain",
           f"{proxy.host}/faults/img:1"]
    env = dict(os.environ, PYTHONPATH=str(REPO))
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 60
        while proxy.sent < size // 3 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert proxy.sent >= size // 3, "the pull never got going"
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.communicate()
    first = proxy.sent
    assert first < size + 10_000                  # it really was cut short
    dst = Store.open(root)
    assert not dst.blobs.has(big.digest)
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == img.descriptor.digest
    second = proxy.sent - first
    # resumed: the second pull moved only what was missing (plus small blobs)
    assert second < size - size // 4
    ranged = [s for s in proxy.seen if s.path.endswith(big.digest) and "Range" in s.headers]
    assert ranged
    assert dst.blobs.read(big.digest) == src.blobs.read(big.digest)
    fsck_run = subprocess.run([sys.executable, "-m", "builder", "--root", str(root), "fsck"],
                              env=env, capture_output=True, text=True)
    assert fsck_run.returncode == 0, fsck_run.stdout + fsck_run.stderr


def test_chunked_upload_with_a_failing_chunk(tmp_path, proxied, config_env, monkeypatch):
    from layerstore.registry import client

    registry, proxy = proxied
    monkeypatch.setattr(client, "MONOLITHIC_MAX", 1 << 20)
    monkeypatch.setattr(client, "UPLOAD_CHUNK", 1 << 20)
    src = Store.open(tmp_path / "src")
    make_image(src, "ch:1", [random_files(1, 3_500_000, 131)])
    layer = src.resolve("ch:1").manifest.layers[0]
    proxy.add(lambda m, p: m == "PATCH", ("status", 500), times=1)
    # the first PATCH gets a 500 (never reaching the registry): it is sent again
    res = push(src, "ch:1", f"{proxy.host}/chunked/img:1", options=FAST)
    patches = [s for s in proxy.seen if s.method == "PATCH"]
    assert len(patches) >= 5
    ranges = [s.headers["Content-Range"] for s in patches[1:5]]
    assert ranges[0] == "0-1048575" and ranges[1] == "1048576-2097151"
    dst = Store.open(tmp_path / "dst")
    assert pull(dst, f"{registry.host}/chunked/img:1").top.digest == res.digest
    assert dst.blobs.read(layer.digest) == src.blobs.read(layer.digest)


@pytest.mark.slow
def test_ctrl_c_stops_a_parallel_pull_and_keeps_partials(tmp_path, proxied, config_env):
    registry, proxy = proxied
    src = Store.open(tmp_path / "src")
    make_image(src, "cc:1", [random_files(1, 12_000_000, 141), random_files(1, 12_000_000, 142)])
    push(src, "cc:1", f"{registry.host}/faults/cc:1")
    for layer in src.resolve("cc:1").manifest.layers:
        proxy.add(blob_get(layer.digest), ("slow", 2_000_000), times=1)
    root = tmp_path / "dst"
    cmd = [sys.executable, "-m", "builder", "--root", str(root), "pull", "-q",
           f"{proxy.host}/faults/cc:1"]
    proc = subprocess.Popen(cmd, env=dict(os.environ, PYTHONPATH=str(REPO)),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 30
        while proxy.sent < 2_000_000 and time.monotonic() < deadline:
            time.sleep(0.02)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=20)   # both transfers stop, not run to the end
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 130 and "interrupted" in err
    assert proxy.sent < 20_000_000
    dst = Store.open(root)
    assert dst.refs.list() == [] and list((root / "ingest").glob("*.partial"))
    assert_clean(dst)
