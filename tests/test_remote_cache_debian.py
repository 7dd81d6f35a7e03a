"""Issue 12's first acceptance point on the debian-python sample: machine A builds it
(apt-get through the machine's mirror) with `--cache-to type=registry,...,mode=max`;
machine B, holding only the same debootstrap-made base, builds it with `--cache-from`:
every step CACHED, apt-get never runs, the same image, and B downloads only the final
image's layers it lacked. Helpers and the counting proxy are test_remote_cache's."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from conftest import require_tool
from test_registry_helpers import registry  # noqa: F401
from test_remote_cache import (SAMPLES, Machine, blob_gets, build, cache_manifest,  # noqa: F401
                               local_blobs, manifest_of, proxied)

STEPS = ["ENV DEBIAN_FRONTEND=noninteractive LANG=C.UTF-8",
         "RUN apt-get update && apt-get install -y --no-install-recommends python3 "
         "&& rm -rf /var/lib/apt/lists/*",
         "WORKDIR /app", "COPY app.py .", "USER nobody", 'CMD ["python3", "/app/app.py"]']


def machine(tmp_path: Path, name: str) -> Machine:
    config = tmp_path / f"config-{name}"
    config.mkdir()
    return Machine(tmp_path / f"store-{name}",
                   {"PYBUILD_CONFIG": str(config), "DOCKER_CONFIG": str(config / "docker")})


@pytest.mark.slow
def test_debian_python_registry_cache_max_every_step_cached_on_b(tmp_path, proxied, registry):
    require_tool("debootstrap")
    a, b = machine(tmp_path, "a"), machine(tmp_path, "b")
    # the base: debootstrap's tarball is kept in ~/.cache/pybuild; B gets A's very base
    subprocess.run(["sh", str(SAMPLES / "debian-python" / "make-base.sh")], check=True,
                   env={"PYBUILD_ROOT": str(a.root), "PATH": os.environ["PATH"],
                        "HOME": str(Path.home()), "TMPDIR": str(tmp_path), **a.env},
                   capture_output=True, timeout=900)
    a("save", "-o", tmp_path / "debian-base.tar", "debian-base")
    b("load", "-i", tmp_path / "debian-base.tar")
    (tmp_path / "debian-base.tar").unlink()
    assert manifest_of(b, "debian-base").layers == manifest_of(a, "debian-base").layers

    ref = f"{proxied.host}/cache/debian-python:1"
    ctx = SAMPLES / "debian-python"
    first = build(a, ctx, "--cache-to", f"type=registry,ref={ref},mode=max",
                  tag="debian-python")
    assert first.ran == STEPS and first.cached == [], first.stderr
    assert "Setting up python3" in first.stderr          # apt-get ran on A, visibly
    assert f"exported cache to registry {ref}: 6 records" in first.stderr

    before = local_blobs(b)
    proxied.seen.clear()
    sent = proxied.sent
    second = build(b, ctx, "--cache-from", ref, tag="debian-python")
    assert second.ran == [] and second.cached == STEPS, second.stderr
    assert "apt-get" not in second.stderr.replace(STEPS[1], "")   # no RUN output at all
    assert "Setting up" not in second.stderr and "Get:" not in second.stderr
    assert "WARNING" not in second.stderr
    assert (second.manifest, second.image_id) == (first.manifest, first.image_id)

    # B fetched the cache config, the manifest and the final image's layers it lacked
    final = manifest_of(b, "debian-python")
    assert final.to_bytes() == manifest_of(a, "debian-python").to_bytes()
    cm, _ = cache_manifest(registry.host, "cache/debian-python", "1")
    wanted = {l.digest for l in final.layers} - before
    assert wanted and not wanted & {l.digest for l in manifest_of(b, "debian-base").layers}
    assert blob_gets(proxied) == wanted | {cm.config.digest}
    body = sum(l.size for l in final.layers if l.digest in wanted) + cm.config.size \
        + len(cm.to_bytes())
    pings = sum(1 for x in proxied.seen if x.path == "/v2/")        # each answered "{}"
    assert proxied.sent - sent == body + 2 * pings

    out = a("run", "--rm", "debian-python").stdout
    assert out.startswith("hello from Python 3.11")
    assert b("run", "--rm", "debian-python").stdout == out
    a("fsck")
    b("fsck")
