"""Registry hosts as outside input (issue 11, round 2): references and their
registry part, and the certs.d directory of a host.

References follow docker's grammar exactly (ASCII tags; a port a socket can
use; IPv6 literals that are addresses) and name only sha256 digests, the one
algorithm the store can verify and find again. certs.d works as in docker:
`*.crt` CAs in addition to the system roots, `<n>.cert` + `<n>.key` a client
certificate (a half pair is an error), all loaded into memory -- nothing is
written outside ROOT, not even a merged CA bundle in /tmp -- and used for the
registry's origin only. A host name is never a path (`..`, `a/b`), and a
certs.d file that is a FIFO is refused instead of blocking.
"""

from __future__ import annotations

import os
import tempfile

import pytest

from layerstore.errors import InvalidReference
from layerstore.reference import parse
from layerstore.registry import tls
from layerstore.registry.client import Options
from layerstore.registry.errors import RegistryError, TLSFailure
from layerstore.registry.pull import pull
from layerstore.store import Store
from test_registry_helpers import (Hostile, config_env, make_client_cert, make_image,  # noqa: F401
                                   make_pki, random_files, reply)
from test_registry_hostile import bounded, hostile, serve_image  # noqa: F401

FAST = Options(backoff=0.05, max_backoff=0.2, timeout=2.0, retries=1)
D = "ab" * 32


# --- references -----------------------------------------------------------------------

@pytest.mark.parametrize("text,why", [
    ("busybox:t\u00e4g", "bad tag"),                 # Go's \w is ASCII
    ("busybox:\u0661\u0662", "bad tag"),             # Arabic digits
    ("busybox:\u212a", "bad tag"),                   # KELVIN SIGN, lower() is 'k'
    (f"busybox@sha512:{'ab' * 64}", "unsupported digest algorithm 'sha512'"),
    (f"busybox@md5:{'ab' * 16}", "unsupported digest algorithm 'md5'"),
    (f"busybox@sha256:{'ab' * 31}", "64 lowercase hex"),
    (f"busybox@sha256:{'ab' * 33}", "64 lowercase hex"),
    ("localhost:99999/x", "port 99999 out of range"),
    ("localhost:0/x", "port 0 out of range"),
    ("[:::::]:5000/x", "bad IPv6 address"),
    ("[1.2.3.4]/x", "bad IPv6 address"),
    ("a/../b", "bad path component '..'"),
    ("a/./b", "bad path component '.'"),
    ("A/b", "must be lowercase"),
    ("x" * 300, "longer than 255"),
    ("reg.example/" + "a/" * 130 + "b", "longer than 255"),
])
def test_hostile_references_are_refused(text, why):
    with pytest.raises(InvalidReference) as info:
        parse(text)
    message = str(info.value)
    assert why in message and "\n" not in message
    assert len(message) < 300          # the input is quoted cut short


@pytest.mark.parametrize("text,domain,path", [
    ("[::1]:5000/x", "[::1]:5000", "x"),
    ("[fe80::1]/a/b:t", "[fe80::1]", "a/b"),
    ("localhost:65535/x", "localhost:65535", "x"),
    ("Reg.Example:443/x", "Reg.Example:443", "x"),
    ("docker.io/x", "docker.io", "library/x"),
    ("index.docker.io/library/x", "docker.io", "library/x"),
])
def test_unusual_but_valid_references(text, domain, path):
    ref = parse(text)
    assert (ref.domain, ref.path) == (domain, path)


def test_pull_over_ipv6_loopback(tmp_path, hostile, config_env):
    src = Store.open(tmp_path / "src")
    make_image(src, "v6:1", [random_files(1, 2000, 301)])
    hs = hostile("::1")
    parts = serve_image(hs, src, "v6:1", "v6")
    dst = Store.open(tmp_path / "dst")
    assert hs.host.startswith("[::1]:")
    assert pull(dst, f"{hs.host}/v6:1", options=FAST).top.digest == parts["digest"]
    assert dst.resolve(f"{hs.host}/v6:1").descriptor.digest == parts["digest"]


# --- certs.d ----------------------------------------------------------------------------

def _certs_dir(config_env, host: str):
    d = config_env / "certs.d" / host
    d.mkdir(parents=True)
    return d


def test_several_cas_stay_in_memory(tmp_path, hostile, config_env, monkeypatch):
    """Two CA files for one host were concatenated into /tmp/pybuild-ca-*.pem."""
    private_tmp = tmp_path / "tmp"
    private_tmp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(private_tmp))    # where mkstemp would write
    pki = make_pki(tmp_path / "pki")
    other = make_pki(tmp_path / "other")
    src = Store.open(tmp_path / "src")
    make_image(src, "m:1", [random_files(1, 2000, 302)])
    hs = hostile(pki=pki)
    parts = serve_image(hs, src, "m:1", "m")
    d = _certs_dir(config_env, hs.host)
    (d / "a-other.crt").write_bytes(other.ca.read_bytes())
    (d / "b-registry.crt").write_bytes(pki.ca.read_bytes())
    res = pull(Store.open(tmp_path / "dst"), f"{hs.host}/m:1",
               options=Options(tls_verify=True, retries=0))
    assert res.top.digest == parts["digest"]
    assert os.listdir(private_tmp) == []
    # and each CA alone is what is trusted: without the registry's, verification fails
    (d / "b-registry.crt").unlink()
    with pytest.raises(TLSFailure, match="TLS verification failed"):
        pull(Store.open(tmp_path / "dst2"), f"{hs.host}/m:1",
             options=Options(tls_verify=True, retries=0))


def test_certs_d_cas_add_to_the_system_roots(tmp_path, config_env):
    """docker: `*.crt` are appended to the system pool; requests' verify=<file> used
    the file *instead of* the system roots."""
    pki = make_pki(tmp_path / "pki")
    d = _certs_dir(config_env, "reg.example:5000")
    (d / "ca.crt").write_bytes(pki.ca.read_bytes())
    cfg = tls.for_host("reg.example:5000")
    assert cfg.verify is True and cfg.ssl_context is not None
    names = [dict(x[0] for x in c["subject"]).get("commonName")
             for c in cfg.ssl_context.get_ca_certs()]
    assert "pybuild test CA" in names and len(names) > 1


def test_client_certificate_goes_to_the_registry_only(tmp_path, hostile, config_env, monkeypatch):
    pki = make_pki(tmp_path / "pki")
    src = Store.open(tmp_path / "src")
    make_image(src, "c:1", [random_files(1, 3000, 303)])
    img = src.resolve("c:1")
    layer = img.manifest.layers[0].digest
    # blob storage on another origin, which would take a client certificate if offered
    storage = hostile(pki=pki, client_ca=pki.ca, client_optional=True)
    storage.route("GET", r"/blob", lambda h, m: reply(h, 200, src.blobs.read(layer)))
    reg = hostile(pki=pki, client_ca=pki.ca)            # requires one
    serve_image(reg, src, "c:1", "c")
    reg.route("GET", rf"/v2/c/blobs/{layer}",
              lambda h, m: reply(h, 307, b"", {"Location": f"{storage.base}/blob"}), first=True)
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(pki.ca))     # storage is verified: trust it
    opts = Options(tls_verify=True, retries=0)
    d = _certs_dir(config_env, reg.host)
    (d / "ca.crt").write_bytes(pki.ca.read_bytes())
    with pytest.raises(RegistryError):                         # no client certificate yet
        pull(Store.open(tmp_path / "none"), f"{reg.host}/c:1", options=opts)
    make_client_cert(pki, d)
    dst = Store.open(tmp_path / "dst")
    assert pull(dst, f"{reg.host}/c:1", options=opts).top.digest == img.descriptor.digest
    assert dst.blobs.read(layer) == src.blobs.read(layer)
    assert reg.seen and all(s.client_cert for s in reg.seen)
    assert [s.path for s in storage.seen] == ["/blob"] and storage.seen[0].client_cert is None


def test_half_client_certificate_pairs_are_errors(tmp_path, config_env):
    pki = make_pki(tmp_path / "pki")
    d = _certs_dir(config_env, "reg.example")
    (d / "client.cert").write_bytes(pki.cert.read_bytes())
    with pytest.raises(RegistryError, match="missing key client.key for client certificate "
                                            "client.cert; CA certificates must use the "
                                            "extension .crt"):
        tls.for_host("reg.example")
    (d / "client.cert").rename(d / "other.crt.bak")
    (d / "client.key").write_bytes(pki.key.read_bytes())
    with pytest.raises(RegistryError, match="missing client certificate client.cert for key "
                                            "client.key"):
        tls.for_host("reg.example")
    (d / "client.key").unlink()
    (d / "junk.crt").write_text("not a certificate\n")
    with pytest.raises(RegistryError, match="junk.crt: not a PEM certificate"):
        tls.for_host("reg.example")


def test_certs_d_files_that_are_not_files(tmp_path, config_env):
    d = _certs_dir(config_env, "reg.example")
    os.mkfifo(d / "ca.crt")          # requests would have OpenSSL open and read it: blocks
    with pytest.raises(RegistryError, match=r"ca.crt: not a regular file"):
        bounded(lambda: tls.for_host("reg.example", tls_verify=True), 20)


def test_host_names_are_never_paths(tmp_path, config_env):
    """certs.d/<host>/: a host `..` made the config directory itself a host's
    certs dir (its *.crt trusted), `a/b` a path below another host's."""
    pki = make_pki(tmp_path / "pki")
    (config_env / "planted.crt").write_bytes(pki.ca.read_bytes())
    for host in ("..", ".", "a/b", "", "../certs.d/x", "x\x00y"):
        with pytest.raises(RegistryError, match="invalid registry name"):
            tls.for_host(host)
    d = _certs_dir(config_env, "[::1]:5000")
    (d / "ca.crt").write_bytes(pki.ca.read_bytes())
    assert tls.for_host("[::1]:5000").ca_files == [str(d / "ca.crt")]
