"""The registry client's pure parts: challenges, config.json, TLS choices, hosts."""

from __future__ import annotations

import base64
import json

import pytest

from layerstore.registry import api_host, credentials, tls
from layerstore.registry.auth import parse_challenges
from layerstore.registry.errors import CredentialsError
from layerstore.registry.login import normalize_host
from test_registry_helpers import config_env, make_pki  # noqa: F401


def test_parse_challenges():
    chs = parse_challenges('Bearer realm="https://auth.example/token",service="reg.example",'
                           'scope="repository:a/b:pull,push", Basic realm="x \\"y\\""')
    assert [c.scheme for c in chs] == ["bearer", "basic"]
    assert chs[0].params == {"realm": "https://auth.example/token", "service": "reg.example",
                             "scope": "repository:a/b:pull,push"}
    assert chs[1].params == {"realm": 'x "y"'}
    assert parse_challenges("Basic realm=plain")[0].params == {"realm": "plain"}
    assert parse_challenges("") == []


def test_credentials_round_trip_and_docker_file(tmp_path, config_env):
    assert credentials.lookup("reg.example:5000") is None
    path = credentials.save("reg.example:5000", credentials.Credentials("u", "p:with:colons"))
    assert credentials.lookup("reg.example:5000") == credentials.Credentials("u", "p:with:colons")
    assert "p:with:colons" not in repr(credentials.lookup("reg.example:5000"))
    assert json.loads(path.read_text())["auths"]["reg.example:5000"]["auth"] == \
        base64.b64encode(b"u:p:with:colons").decode()
    # docker's file, with an identity token and the Docker Hub legacy key
    docker = tmp_path / "docker-config"
    docker.mkdir()
    (docker / "config.json").write_text(json.dumps({"auths": {
        "https://index.docker.io/v1/": {"auth": base64.b64encode(b"hub:pw").decode()},
        "tok.example": {"identitytoken": "refresh-me"}}}))
    assert credentials.lookup("docker.io") == credentials.Credentials("hub", "pw")
    tok = credentials.lookup("tok.example")
    assert tok.identity_token and tok.password == "refresh-me"
    assert credentials.erase("reg.example:5000") and not credentials.erase("reg.example:5000")


def test_broken_config_is_a_clear_error(tmp_path, config_env):
    (config_env / "config.json").write_text('{"auths": {"h": {"auth": "bm9jb2xvbg=="}}}')
    with pytest.raises(CredentialsError, match=r"config.json: auths.h.auth is not base64"):
        credentials.lookup("h")
    (config_env / "config.json").write_text("{nope")
    with pytest.raises(CredentialsError, match=r"config.json: not valid JSON"):
        credentials.lookup("h")
    (config_env / "config.json").write_text(json.dumps({"credHelpers": {"h": "absent-helper"}}))
    with pytest.raises(CredentialsError, match="docker-credential-absent-helper not found"):
        credentials.lookup("h")


def test_tls_choices(tmp_path, config_env):
    local = tls.for_host("127.0.0.1:5000")
    assert local.verify is False and local.schemes == ("https", "http")
    assert tls.for_host("localhost:5000").schemes == ("https", "http")
    remote = tls.for_host("reg.example")
    assert remote.verify is True and remote.schemes == ("https",)
    assert remote.ssl_context is None          # requests' own defaults
    assert tls.for_host("127.0.0.1:5000", tls_verify=True).schemes == ("https",)
    assert tls.for_host("reg.example", tls_verify=False).verify is False
    assert tls.for_host("reg.example", insecure_hosts=("reg.example",)).schemes == ("https", "http")
    pki = make_pki(tmp_path / "pki")
    d = config_env / "certs.d" / "reg.example:443"
    d.mkdir(parents=True)
    (d / "ca.crt").write_bytes(pki.ca.read_bytes())
    (d / "client.cert").write_bytes(pki.cert.read_bytes())
    (d / "client.key").write_bytes(pki.key.read_bytes())
    cfg = tls.for_host("reg.example:443")
    assert cfg.verify is True and cfg.ca_files == [str(d / "ca.crt")]
    assert cfg.client_cert == str(d / "client.cert") and cfg.ssl_context is not None
    # the CA is trusted in addition to the system roots, as docker does
    subjects = [dict(x[0] for x in c["subject"]).get("commonName")
                for c in cfg.ssl_context.get_ca_certs()]
    assert "pybuild test CA" in subjects and len(subjects) > 1


def test_hosts():
    assert normalize_host("https://reg.example:5000/v2/") == "reg.example:5000"
    assert normalize_host("index.docker.io") == "docker.io"
    assert api_host("docker.io") == "registry-1.docker.io"
    assert api_host("quay.io") == "quay.io"
