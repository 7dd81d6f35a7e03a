"""`pybuild build --push`, `-o type=registry,name=...`, `-o type=image,...,push=true`:
the built image goes up through the one push path; what the registry already has (in
this repository or another one of it) is never uploaded again; bad output specs fail
before any step runs."""

from __future__ import annotations

import json

import pytest

from buildpeer import import_busybox
from conftest import CLI
from layerstore.errors import NotFound
from layerstore.registry.push import push
from layerstore.store import Store
from test_registry_auth import trust
from test_registry_helpers import (PASSWORD, USER, Proxy, Registry, config_env,  # noqa: F401
                                   htpasswd_file, make_image, make_pki, random_files,
                                   registry, skopeo)
from test_registry_hostile import one_line_error

DOCKERFILE = """\
FROM busybox
COPY msg.txt /msg.txt
RUN echo built > /out
CMD ["sh", "-c", "cat /out /msg.txt"]
"""


@pytest.fixture
def proxied(registry):
    """The registry behind a counting proxy: every request and its body size is seen."""
    proxy = Proxy(registry.port)
    proxy.direct = lambda ref: ref.replace(proxy.host, registry.host)   # skopeo's Accept
    yield proxy                                                          # list needs no proxy
    proxy.stop()


@pytest.fixture
def bb(pybuild, busybox_rootfs, tmp_path, config_env):
    import_busybox(pybuild, busybox_rootfs, tmp_path)
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    (ctx / "Dockerfile").write_text(DOCKERFILE)
    (ctx / "msg.txt").write_text("hello from the context\n")
    return pybuild, ctx


def _built_digest(tmp_path, name: str) -> str:
    return json.loads((tmp_path / f"{name}.json").read_text())["containerimage.digest"]


def _build(pybuild, tmp_path, ctx, meta: str, *args: str, check: bool = True):
    return pybuild("build", "--progress", "plain", "--metadata-file", tmp_path / f"{meta}.json",
                   *args, ctx, check=check)


def _remote_digest(ref: str) -> str:
    return json.loads(skopeo("inspect", "--tls-verify=false", f"docker://{ref}").stdout
                      )["Digest"]


def _blob_bodies(proxy: Proxy) -> list[tuple[str, str, int]]:
    """Requests that carried blob bytes to the registry (upload PATCH/PUT bodies)."""
    return [(s.method, s.path, int(s.headers.get("Content-Length") or 0)) for s in proxy.seen
            if s.method in ("PUT", "PATCH") and "/blobs/uploads/" in s.path
            and int(s.headers.get("Content-Length") or 0) > 0]


def _summary(stderr: str, ref: str) -> str:
    lines = [l for l in stderr.splitlines() if l.startswith(f"pushed {ref} ")]
    assert len(lines) == 1, stderr
    return lines[0]


def test_build_push_then_pull_and_run_elsewhere(bb, proxied, tmp_path):
    pybuild, ctx = bb
    ref = f"{proxied.host}/app/a:1"
    p = _build(pybuild, tmp_path, ctx, "a", "--push", "-t", ref)
    digest = _built_digest(tmp_path, "a")
    line = _summary(p.stderr, ref)
    assert digest in line and " 4 blobs uploaded" in line and "0 mounted" in line
    sent = sum(n for _m, _p, n in _blob_bodies(proxied))
    assert f"({sent} bytes," in line and sent > 100_000          # busybox went up
    assert p.stderr.count(": pushed\n") + p.stderr.count(": pushed (") == 4   # one line a blob
    assert _remote_digest(proxied.direct(ref)) == digest

    other = CLI(tmp_path / "elsewhere")
    assert other("pull", "-q", ref).stdout.strip() == digest
    out = other("run", "--rm", "--network", "none", ref).stdout
    assert out == "built\nhello from the context\n"


def test_cached_build_push_uploads_no_layer_bytes(bb, proxied, tmp_path):
    pybuild, ctx = bb
    first = f"{proxied.host}/app/a:1"
    _build(pybuild, tmp_path, ctx, "a", "--push", "-t", first)
    digest = _built_digest(tmp_path, "a")

    proxied.seen.clear()
    again = _build(pybuild, tmp_path, ctx, "again", "--push", "-t", first)   # same repository
    assert _built_digest(tmp_path, "again") == digest
    assert _blob_bodies(proxied) == []
    line = _summary(again.stderr, first)
    assert "0 blobs uploaded (0 bytes" in line and "4 already there" in line
    assert again.stderr.count(": exists\n") == 4

    proxied.seen.clear()                       # another repository of the same registry
    second = f"{proxied.host}/app/b:2"
    other = _build(pybuild, tmp_path, ctx, "b", "-o", f"type=registry,name={second}")
    assert "#3 CACHED" in other.stderr and _built_digest(tmp_path, "b") == digest
    assert _blob_bodies(proxied) == []
    line = _summary(other.stderr, second)
    assert "0 blobs uploaded (0 bytes" in line and "4 mounted" in line
    assert other.stderr.count(": mounted from app/a\n") == 4
    mounts = [s for s in proxied.seen if s.method == "POST" and "mount=" in s.path]
    assert len(mounts) == 4
    assert _remote_digest(proxied.direct(second)) == digest

    proxied.seen.clear()          # buildx's quoted name list, type=image,push=true
    c, d = f"{proxied.host}/app/c:3", f"{proxied.host}/app/d:4"
    both = _build(pybuild, tmp_path, ctx, "cd", "-o", f'type=image,"name={c},{d}",push=true')
    assert _blob_bodies(proxied) == []
    for ref in (c, d):
        assert "0 blobs uploaded (0 bytes" in _summary(both.stderr, ref)
        assert _remote_digest(proxied.direct(ref)) == digest
    for ref in (second, c, d):                 # name= names the image in the store too
        assert json.loads(pybuild("inspect", ref).stdout)[0]["Id"] == \
            json.loads(pybuild("inspect", first).stdout)[0]["Id"]


@pytest.mark.parametrize("args,message", [
    (["-t", "{reg}/x:1", "-o", "type=image,push=maybe"], "push=maybe is not true or false"),
    (["-o", "type=registry"], "pushing needs a name: give -t"),
    (["--push"], "pushing needs a name: give -t"),
    (["-o", "type=registry,name={reg}/x:1,compresion=zstd"], "unknown key 'compresion'"),
    (["-o", "type=local,dest=out,push=true"], "unknown key 'push'"),
    (["-t", "{reg}/x:1", "--push", "-o", "type=oci,dest=x.tar"],
     "--push and --output type=oci cannot be used together"),
    (["-o", "type=registry,name={reg}/x@sha256:" + "a" * 64], "push to a tag, not a digest"),
    (["-o", "type=registry,name=Bad/Name"], "Bad/Name"),
    (["-o", 'type=registry,"name={reg}/x:1'], "invalid --output"),
])
def test_bad_push_outputs_fail_before_any_step(bb, proxied, tmp_path, store_root, args, message):
    pybuild, ctx = bb
    args = [a.replace("{reg}", proxied.host) for a in args]
    p = pybuild("build", "--progress", "plain", *args, ctx, check=False)
    err = one_line_error(p)
    assert message in err
    assert "#1 " not in p.stdout + p.stderr                     # no step started
    entries = store_root / "cache" / "entries"
    assert not entries.exists() or not any(entries.iterdir())
    assert proxied.seen == []                                    # nor anything sent


def test_build_push_with_login_on_an_htpasswd_registry(bb, tmp_path, config_env):
    pybuild, ctx = bb
    d = tmp_path / "auth-registry"
    d.mkdir()
    pki = make_pki(d / "pki")
    htpasswd_file(d / "htpasswd", {USER: PASSWORD})
    reg = Registry(d, auth={"htpasswd": {"realm": "pybuild-test", "path": str(d / "htpasswd")}},
                   pki=pki)
    try:
        trust(config_env, reg)
        ref = f"{reg.host}/private/app:1"
        denied = _build(pybuild, tmp_path, ctx, "denied", "--push", "-t", ref, check=False)
        assert denied.returncode == 1 and "unauthorized" in denied.stderr.splitlines()[-1]
        pybuild("login", "-u", USER, "--password-stdin", reg.host, input=PASSWORD + "\n")
        ok = _build(pybuild, tmp_path, ctx, "ok", "--push", "-t", ref)
        assert PASSWORD not in ok.stdout + ok.stderr
        digest = _built_digest(tmp_path, "ok")
        assert digest in _summary(ok.stderr, ref)
        certs = str(config_env / "certs.d" / reg.host)
        info = skopeo("inspect", "--cert-dir", certs, "--creds", f"{USER}:{PASSWORD}",
                      f"docker://{ref}").stdout
        assert json.loads(info)["Digest"] == digest
        # --tls-verify reaches the push: a wrong CA fails verification, unless told not to
        other = make_pki(tmp_path / "other-pki")
        (config_env / "certs.d" / reg.host / "ca.crt").write_bytes(other.ca.read_bytes())
        bad = _build(pybuild, tmp_path, ctx, "bad", "--push", "-t", ref, check=False)
        assert bad.returncode == 1 and "TLS failure" in bad.stderr.splitlines()[-1]
        assert _build(pybuild, tmp_path, ctx, "insecure", "--push", "--tls-verify=false",
                      "-t", ref).returncode == 0
    finally:
        reg.stop()


def test_absent_blobs_go_up_only_by_mount(tmp_path, registry, config_env):
    """A layer a remote cache hit never downloaded (absent from the store) is mounted from
    the repository `origins` names; refused, it is a one-line error naming the blob;
    without an origin on that registry it is not in the store, before anything is sent."""
    store = Store.open(tmp_path / "store")
    make_image(store, "img:1", [random_files(2, 50_000, 301), random_files(1, 9_000, 302)])
    image = store.resolve("img:1")
    layer = image.manifest.layers[0].digest
    assert push(store, "img:1", f"{registry.host}/cache/src:1").uploaded == 3
    store.blobs.path(layer).unlink()           # as a lazy remote-cache hit leaves it

    res = push(store, "img:1", f"{registry.host}/app/dst:1",
               origins={layer: f"{registry.host}/cache/src"})
    assert (res.mounted, res.uploaded) == (1, 2) and res.uploaded_bytes > 0
    assert _remote_digest(f"{registry.host}/app/dst:1") == image.descriptor.digest

    with pytest.raises(NotFound, match=rf"blob {layer} is not in the store and the registry "
                                       r"refused to mount it from cache/nowhere$"):
        push(store, "img:1", f"{registry.host}/app/third:1",
             origins={layer: f"{registry.host}/cache/nowhere"})
    with pytest.raises(NotFound, match=rf"blob {layer} is not in the store$"):
        push(store, "img:1", f"{registry.host}/app/fourth:1",
             origins={layer: f"elsewhere.example:5000/cache/src"})


def test_output_specs_as_buildx_reads_them():
    from builder.buildcli import parse_output, push_targets

    reg = "127.0.0.1:5000"
    out = parse_output(f"type=registry,name={reg}/a:1,name={reg}/b")
    assert out == {"type": "image", "push": "true", "name": f"{reg}/a:1,{reg}/b"}
    assert push_targets(out, ["ignored:1"]) == [f"{reg}/a:1", f"{reg}/b:latest"]
    assert parse_output(f"type=registry,push=false,name={reg}/a") == {
        "type": "image", "push": "false", "name": f"{reg}/a"}
    assert push_targets(parse_output(f"type=registry,push=false,name={reg}/a"), []) == []
    out = parse_output(None, push=True)                 # --push: the -t names
    assert push_targets(out, [f"{reg}/t:1", f"{reg}/t:1"]) == [f"{reg}/t:1"]
    assert parse_output("type=image,push=TRUE")["push"] == "true"
    assert parse_output("type=local,dest=a\"b") == {"type": "local", "dest": 'a"b'}
