"""Docker reference parsing and normalization."""

import pytest

from layerstore.errors import InvalidReference
from layerstore.reference import parse

D = "sha256:" + "ab" * 32


@pytest.mark.parametrize("text,full,familiar", [
    ("busybox", "docker.io/library/busybox:latest", "busybox:latest"),
    ("busybox:1.36", "docker.io/library/busybox:1.36", "busybox:1.36"),
    ("library/busybox", "docker.io/library/busybox:latest", "busybox:latest"),
    ("docker.io/busybox", "docker.io/library/busybox:latest", "busybox:latest"),
    ("index.docker.io/user/app:v2", "docker.io/user/app:v2", "user/app:v2"),
    ("localhost:5000/a/b:tag", "localhost:5000/a/b:tag", "localhost:5000/a/b:tag"),
    ("localhost/app", "localhost/app:latest", "localhost/app:latest"),
    ("ghcr.io/o/r/deep/path:1.0-rc_1", "ghcr.io/o/r/deep/path:1.0-rc_1",
     "ghcr.io/o/r/deep/path:1.0-rc_1"),
    (f"name@{D}", f"docker.io/library/name@{D}", f"name@{D}"),
    (f"name:tag@{D}", f"docker.io/library/name:tag@{D}", f"name:tag@{D}"),
    ("127.0.0.1:5000/x", "127.0.0.1:5000/x:latest", "127.0.0.1:5000/x:latest"),
    ("a__b/c-d.e", "docker.io/a__b/c-d.e:latest", "a__b/c-d.e:latest"),
])
def test_normalize(text, full, familiar):
    ref = parse(text)
    assert str(ref) == full
    assert ref.familiar == familiar


@pytest.mark.parametrize("text,why", [
    ("", "empty"),
    ("Busybox", "lowercase"),
    ("busybox:", "bad tag"),
    ("busybox:-x", "bad tag"),
    ("a//b", "bad path component"),
    ("-abc", "bad path component"),
    ("abc-", "bad path component"),
    ("busybox@sha256:123", "bad digest"),
    ("busybox@sha256:" + "AB" * 32, "lowercase hex"),
    ("bad host!/x", "whitespace"),
    ("x" * 300, "longer than"),
    ("a:b:c", "bad path component"),
    ("exa mple", "whitespace"),
])
def test_invalid(text, why):
    with pytest.raises(InvalidReference) as err:
        parse(text)
    assert why in str(err.value)
    assert "\n" not in str(err.value)
