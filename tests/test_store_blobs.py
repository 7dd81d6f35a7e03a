"""Blob ingest: verified before visible, nothing left on mismatch, safe when concurrent."""

from __future__ import annotations

import hashlib
import io
import multiprocessing
import os

import pytest

from layerstore.blobs import SizeMismatch
from layerstore.errors import DigestMismatch, NotFound
from layerstore.store import Store


def sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def test_ingest_verifies_and_publishes(store_root):
    store = Store.open(store_root)
    data = os.urandom(3 << 20)
    info = store.blobs.ingest(io.BytesIO(data), expected=sha(data), size=len(data))
    assert info.digest == sha(data) and info.size == len(data)
    assert store.blobs.path(info.digest).read_bytes() == data
    assert store.blobs.read(info.digest) == data
    assert list(os.scandir(store.blobs.ingest_dir)) == []


def test_mismatch_leaves_nothing_and_names_both_digests(store_root):
    store = Store.open(store_root)
    data = b"hello"
    wrong = sha(b"other")
    with pytest.raises(DigestMismatch) as err:
        store.blobs.ingest(io.BytesIO(data), expected=wrong)
    assert wrong in str(err.value) and sha(data) in str(err.value)
    assert not store.blobs.has(wrong) and not store.blobs.has(sha(data))
    assert list(os.scandir(store.blobs.ingest_dir)) == []


def test_size_is_enforced(store_root):
    store = Store.open(store_root)
    with pytest.raises(SizeMismatch):
        store.blobs.ingest(io.BytesIO(b"12345"), size=3)
    with pytest.raises(SizeMismatch):
        store.blobs.ingest(io.BytesIO(b"12"), size=3)
    assert list(store.blobs.digests()) == []


def test_verifying_read_detects_corruption(store_root):
    store = Store.open(store_root)
    info = store.blobs.put(b"payload")
    path = store.blobs.path(info.digest)
    os.chmod(path, 0o644)
    path.write_bytes(b"PAYLOAD")
    with pytest.raises(DigestMismatch):
        store.blobs.read(info.digest)
    with pytest.raises(DigestMismatch):
        with store.blobs.open(info.digest, verify=True) as f:
            f.read()
    with pytest.raises(NotFound):
        store.blobs.open(sha(b"absent"))


def test_resume_keeps_partial_and_continues(store_root):
    store = Store.open(store_root)
    data = os.urandom(1 << 20)
    digest = sha(data)
    w = store.blobs.writer(expected=digest, size=len(data), resume=True)
    w.write(data[:300_000])
    w.abort()  # an interrupted download
    assert not store.blobs.has(digest)
    with store.blobs.writer(expected=digest, size=len(data), resume=True) as w2:
        assert w2.offset == 300_000
        w2.write(data[w2.offset:])
        w2.commit()
    assert store.blobs.read(digest) == data
    assert list(os.scandir(store.blobs.ingest_dir)) == []


def _ingest_same(root: str, data: bytes, n: int) -> str:
    store = Store.open(root)
    for _ in range(n):
        store.blobs.ingest(io.BytesIO(data), expected=sha(data))
    return "ok"


def test_concurrent_ingest_of_same_blob(store_root):
    Store.open(store_root)
    data = os.urandom(2 << 20)
    with multiprocessing.get_context("fork").Pool(4) as pool:
        results = pool.starmap(_ingest_same, [(str(store_root), data, 5)] * 4)
    assert results == ["ok"] * 4
    store = Store.open(store_root)
    assert list(store.blobs.digests()) == [sha(data)]
    assert store.blobs.read(sha(data)) == data
    assert list(os.scandir(store.blobs.ingest_dir)) == []
