"""Basic auth over TLS (htpasswd, a CA the test makes) and the Bearer token flow."""

from __future__ import annotations

import base64
import json
import os
import stat
import time

import pytest

from layerstore.registry import credentials
from layerstore.registry.client import Options
from layerstore.registry.errors import TLSFailure, Unauthorized
from layerstore.registry.login import login, logout
from layerstore.registry.pull import pull
from layerstore.registry.push import push
from layerstore.store import Store
from test_registry_helpers import (USER, PASSWORD, Registry, config_env,  # noqa: F401
                                   htpasswd_file, token_setup, make_image, make_pki, random_files, skopeo)



@pytest.fixture
def tls_registry(tmp_path):
    d = tmp_path / "tls-registry"
    d.mkdir()
    pki = make_pki(d / "pki")
    htpasswd_file(d / "htpasswd", {USER: PASSWORD, "bob": "bobpass"})
    reg = Registry(d, auth={"htpasswd": {"realm": "pybuild-test", "path": str(d / "htpasswd")}},
                   pki=pki)
    yield reg
    reg.stop()


def trust(config_dir, reg) -> None:
    """Install the registry's CA in certs.d, the way a user would."""
    d = config_dir / "certs.d" / reg.host
    d.mkdir(parents=True)
    (d / "ca.crt").write_bytes(reg.pki.ca.read_bytes())


def test_basic_auth_over_tls(tmp_path, tls_registry, config_env):
    reg = tls_registry
    store = Store.open(tmp_path / "store")
    desc = make_image(store, "b:1", [random_files(2, 30_000, 61)])
    dest = f"{reg.host}/private/b:1"
    trust(config_env, reg)

    with pytest.raises(Unauthorized, match=rf"{reg.host}.*unauthorized \(anonymously\)"):
        push(store, "b:1", dest)
    with pytest.raises(Unauthorized, match="login as alice refused"):
        login(reg.host, USER, "wrong")
    assert not (config_env / "config.json").exists()

    path = login(reg.host, USER, PASSWORD)
    saved = json.loads(path.read_text())
    assert base64.b64decode(saved["auths"][reg.host]["auth"]).decode() == f"{USER}:{PASSWORD}"
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600

    res = push(store, "b:1", dest)
    assert res.digest == desc.digest
    # skopeo, given the same CA and credentials, sees the same manifest
    raw = skopeo("inspect", "--raw", "--cert-dir", str(config_env / "certs.d" / reg.host),
                 "--creds", f"{USER}:{PASSWORD}", f"docker://{dest}").stdout
    assert raw.encode() == store.blobs.read(desc.digest)

    dst = Store.open(tmp_path / "dst")
    assert pull(dst, dest).top.digest == desc.digest

    assert logout(reg.host) is True
    assert logout(reg.host) is False
    with pytest.raises(Unauthorized):
        pull(Store.open(tmp_path / "again"), dest)


def test_tls_verification(tmp_path, tls_registry, config_env):
    reg = tls_registry
    store = Store.open(tmp_path / "store")
    creds = credentials.Credentials(USER, PASSWORD)
    credentials.save(reg.host, creds)
    make_image(store, "t:1", [random_files(1, 1000, 62)])
    # verification asked for, CA unknown: a clean TLS error, nothing sent
    with pytest.raises(TLSFailure, match=rf"{reg.host}: TLS failure: TLS verification failed"):
        push(store, "t:1", f"{reg.host}/t:1", options=Options(tls_verify=True))
    # loopback default: HTTPS without verification works (as docker does)
    push(store, "t:1", f"{reg.host}/t:1")
    # with the CA in certs.d the certificate is checked, and passes
    trust(config_env, reg)
    assert pull(Store.open(tmp_path / "dst"), f"{reg.host}/t:1",
                options=Options(tls_verify=True)).fetched > 0
    # a wrong CA in certs.d is a verification failure even on loopback
    other = make_pki(tmp_path / "other-pki")
    (config_env / "certs.d" / reg.host / "ca.crt").write_bytes(other.ca.read_bytes())
    with pytest.raises(TLSFailure):
        pull(Store.open(tmp_path / "dst2"), f"{reg.host}/t:1")


def test_docker_config_cred_helper(tmp_path, tls_registry, config_env, monkeypatch):
    reg = tls_registry
    trust(config_env, reg)
    bindir = tmp_path / "bin"
    bindir.mkdir()
    log = tmp_path / "helper.log"
    helper = bindir / "docker-credential-pbtest"
    vault = tmp_path / "vault"
    helper.write_text(f"""#!/bin/sh
# the docker-credential-* protocol: action in $1, request on stdin
if [ "$1" = store ]; then cat > {vault}; echo "store" >> {log}; exit 0; fi
read server
echo "$1 $server" >> {log}
if [ "$1" = get ] && [ -f {vault} ]; then cat {vault}; exit 0; fi
if [ "$1" = get ] && [ "$server" = "{reg.host}" ]; then
  printf '{{"ServerURL":"%s","Username":"bob","Secret":"bobpass"}}' "$server"
  exit 0
fi
if [ "$1" = erase ] && [ -f {vault} ]; then rm {vault}; exit 0; fi
echo "credentials not found in native keychain"
exit 1
""")
    helper.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bindir}:{os.environ['PATH']}")
    docker_cfg = tmp_path / "docker-config"
    docker_cfg.mkdir()
    (docker_cfg / "config.json").write_text(json.dumps({"credHelpers": {reg.host: "pbtest"}}))

    store = Store.open(tmp_path / "store")
    desc = make_image(store, "h:1", [random_files(1, 5000, 63)])
    assert push(store, "h:1", f"{reg.host}/helper/h:1").digest == desc.digest
    assert f"get {reg.host}" in log.read_text()

    # plain auths in docker's file work too
    (docker_cfg / "config.json").write_text(json.dumps({"auths": {f"https://{reg.host}": {
        "auth": base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()}}}))
    assert pull(Store.open(tmp_path / "dst"), f"{reg.host}/helper/h:1").top.digest == desc.digest

    # with credsStore in pybuild's own config, login goes to the helper, not the file
    (docker_cfg / "config.json").write_text("{}")
    (config_env / "config.json").write_text(json.dumps({"credsStore": "pbtest"}))
    login(reg.host, USER, PASSWORD)
    saved = json.loads((config_env / "config.json").read_text())
    assert saved["auths"][reg.host] == {} and PASSWORD not in json.dumps(saved)
    assert PASSWORD in vault.read_text()
    assert pull(Store.open(tmp_path / "dst2"), f"{reg.host}/helper/h:1").top.digest == desc.digest
    assert logout(reg.host) and not vault.exists()


# --- token auth ------------------------------------------------------------------

def test_token_auth_flow(tmp_path, token_setup, config_env):
    reg, tokens = token_setup
    store = Store.open(tmp_path / "store")
    desc = make_image(store, "k:1", [random_files(2, 10_000, 71)])
    dest = f"{reg.host}/team/k:1"

    with pytest.raises(Unauthorized, match=reg.host):
        push(store, "k:1", dest)      # anonymous tokens carry pull only
    login(reg.host, USER, PASSWORD)
    tokens.requests.clear()
    assert push(store, "k:1", dest).digest == desc.digest
    asked = {s for r in tokens.requests for s in r["scopes"]}
    assert "repository:team/k:pull,push" in asked
    assert all(r["user"] == USER and r["service"] == tokens.service for r in tokens.requests)
    # one token serves the whole push (cached per scope set)
    assert len(tokens.requests) <= 2

    logout(reg.host)
    anon = Store.open(tmp_path / "anon")
    tokens.requests.clear()
    assert pull(anon, dest).top.digest == desc.digest
    assert tokens.requests and all(r["user"] is None for r in tokens.requests)
    assert {s for r in tokens.requests for s in r["scopes"]} == {"repository:team/k:pull"}


def test_token_refresh_and_cross_repo_scope(tmp_path, token_setup, config_env):
    reg, tokens = token_setup
    login(reg.host, USER, PASSWORD)
    store = Store.open(tmp_path / "store")
    make_image(store, "r:1", [random_files(1, 10_000, 72)])
    push(store, "r:1", f"{reg.host}/src/r:1")
    pulled = Store.open(tmp_path / "pulled")
    pull(pulled, f"{reg.host}/src/r:1")
    time.sleep(3.2)                    # tokens live 3 s: the next push needs new ones
    tokens.requests.clear()
    res = push(pulled, f"{reg.host}/src/r:1", f"{reg.host}/dst/r:1")
    assert res.mounted == 2 and res.uploaded == 0
    mount_scopes = [set(r["scopes"]) for r in tokens.requests]
    assert {"repository:dst/r:pull,push", "repository:src/r:pull"} in mount_scopes
