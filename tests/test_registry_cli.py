"""`pybuild login/logout/push/pull` as a user runs them, against a token-auth registry."""

from __future__ import annotations

import json
import subprocess
import sys
import tarfile

from conftest import CLI, REPO
from layerstore.store import Store
from test_registry_helpers import (PASSWORD, USER, config_env, make_image,  # noqa: F401
                                   random_files, registry, token_setup)


def _cli(root, config_env) -> CLI:
    cli = CLI(root)
    env = {"PYBUILD_CONFIG": str(config_env), "DOCKER_CONFIG": str(config_env.parent / "dc")}
    return lambda *a, **kw: cli(*a, env=env, **kw)


def _saved_digests(tar_path) -> tuple[str, list[str], str]:
    with tarfile.open(tar_path) as tar:
        index = json.load(tar.extractfile("index.json"))
        top = index["manifests"][0]["digest"]
        manifest = json.load(tar.extractfile(f"blobs/sha256/{top[7:]}"))
    return top, [l["digest"] for l in manifest["layers"]], manifest["config"]["digest"]


def test_login_push_pull_save_logout(tmp_path, token_setup, config_env):
    reg, tokens = token_setup
    src_root = tmp_path / "src"
    make_image(Store.open(src_root), "cli:1", [random_files(2, 20_000, 101),
                                               random_files(1, 400_000, 102)])
    src = _cli(src_root, config_env)
    dest = f"{reg.host}/cli/img:1"

    denied = src("push", "cli:1", dest, check=False)
    assert denied.returncode == 1
    assert denied.stderr.count("\n") == 1 and "unauthorized" in denied.stderr
    assert reg.host in denied.stderr

    bad = src("login", "-u", USER, "--password-stdin", reg.host, input="nope\n", check=False)
    assert bad.returncode == 1 and "refused" in bad.stderr and "nope" not in bad.stderr
    ok = src("login", "-u", USER, "--password-stdin", reg.host, input=PASSWORD + "\n")
    assert "Login Succeeded" in ok.stdout
    assert PASSWORD not in ok.stdout + ok.stderr

    pushed = src("push", "--progress", "plain", "cli:1", dest)
    digest = pushed.stdout.strip()
    assert digest.startswith("sha256:") and PASSWORD not in pushed.stdout + pushed.stderr
    assert "pushed" in pushed.stderr

    dst = _cli(tmp_path / "dst", config_env)
    pulled = dst("pull", "-q", dest)
    assert pulled.stdout.strip() == digest and pulled.stderr == ""
    src("save", "-o", tmp_path / "a.tar", "cli:1")
    dst("save", "-o", tmp_path / "b.tar", dest)
    assert _saved_digests(tmp_path / "a.tar") == _saved_digests(tmp_path / "b.tar")
    assert _saved_digests(tmp_path / "a.tar")[0] == digest

    missing = dst("pull", f"{reg.host}/cli/img:nope", check=False)
    assert missing.returncode == 1
    assert missing.stderr.strip() == (f"pybuild: error: manifest {reg.host}/cli/img:nope: "
                                      "manifest unknown")

    assert "Removed login credentials" in src("logout", reg.host).stdout
    again = src("logout", reg.host, check=False)
    assert again.returncode == 1 and "not logged in" in again.stderr


def test_unreachable_and_bad_platform(tmp_path, registry, config_env):
    cli = _cli(tmp_path / "store", config_env)
    out = cli("pull", "127.0.0.1:1/nothing:1", check=False)
    assert out.returncode == 1
    assert out.stderr.strip() == "pybuild: error: 127.0.0.1:1: registry unreachable " \
                                 "(connection refused)"
    out = cli("pull", "--platform", "linux/bar", f"{registry.host}/x:1", check=False)
    assert out.returncode == 1 and "invalid platform" in out.stderr
    assert "unknown architecture 'bar'" in out.stderr


def test_help_does_not_import_the_registry_client():
    code = ("import sys, builder.cli; "
            "assert 'requests' not in sys.modules and 'layerstore.registry' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO)
