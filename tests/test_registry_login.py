"""login/logout and credentials as outside input (issue 11, round 2).

config.json (pybuild's or docker's) may be hostile: nested 100 000 deep, a
FIFO, a link to /dev/zero, a number where a string belongs; credential helpers
are other programs whose answers are bounded in size and time, whose names
cannot lead to another binary (`x/evil`, `../`, a helper in the current
directory), and which run without a shell; login refuses registry addresses
with user information or paths, bounds --password-stdin, warns about -p and
about plain HTTP, writes config.json 0600 through a symlinked config (as
docker), and never prints a secret, --debug included.
"""

from __future__ import annotations

import base64
import json
import os
import stat
from pathlib import Path

import pytest

from layerstore.registry import credentials, login as login_mod, tls
from layerstore.registry.client import Options
from layerstore.registry.errors import CredentialsError
from test_registry_helpers import Hostile, config_env, reply  # noqa: F401
from test_registry_hostile import bounded, hostile, one_line_error, run_cli  # noqa: F401

SECRET = "s3cret-Pa55"


def _env(config_env, **extra) -> dict:
    """The CLI's environment: the fixture's $PYBUILD_CONFIG and $DOCKER_CONFIG, and `extra`."""
    env = {"PYBUILD_CONFIG": str(config_env), "DOCKER_CONFIG": os.environ["DOCKER_CONFIG"]}
    env.update(extra)
    return env


def _docker_config(config_env) -> Path:
    d = Path(os.environ["DOCKER_CONFIG"])
    d.mkdir(exist_ok=True)
    return d / "config.json"


HOSTILE_CONFIGS = {
    "nested": ("[" * 100_000, "nested more than"),
    "auths-list": (json.dumps({"auths": []}), "auths is not a JSON object"),
    "helpers-list": (json.dumps({"credHelpers": ["h:1"]}), "credHelpers is not a JSON object"),
    "auth-number": (json.dumps({"auths": {"h:1": {"auth": 5}}}), "auth is not a string"),
    "token-number": (json.dumps({"auths": {"h:1": {"identitytoken": [1]}}}),
                     "identitytoken is not a string"),
    "store-object": (json.dumps({"credsStore": {"a": 1}}), "credsStore: invalid credential helper"),
    "helper-path": (json.dumps({"credHelpers": {"h:1": "../../bin/sh"}}),
                    r"credHelpers.h:1: invalid credential helper name '\.\./\.\./bin/sh'"),
    "too-big": (json.dumps({"pad": "x" * (5 << 20)}), "larger than the limit"),
}


@pytest.mark.parametrize("case", sorted(HOSTILE_CONFIGS))
def test_hostile_config_is_a_clear_error(config_env, case):
    text, expected = HOSTILE_CONFIGS[case]
    _docker_config(config_env).write_text(text)
    with pytest.raises(CredentialsError, match=expected) as info:
        credentials.lookup("h:1")
    assert "\n" not in str(info.value) and str(info.value).startswith(str(config_env.parent))


def test_config_that_is_not_a_file_never_blocks(tmp_path, config_env):
    path = _docker_config(config_env)
    os.mkfifo(path)              # open() and read() of a FIFO block until a writer comes
    with pytest.raises(CredentialsError, match="not a regular file"):
        bounded(lambda: credentials.lookup("h:1"), 20)
    path.unlink()
    path.symlink_to("/dev/zero")
    out = run_cli(tmp_path / "store", "pull", "127.0.0.1:1/x:1", env=_env(config_env), timeout=30)
    assert one_line_error(out) == f"pybuild: error: {path}: not a regular file\n"
    path.unlink()
    path.write_text("[" * 100_000)
    out = run_cli(tmp_path / "store", "pull", "127.0.0.1:1/x:1", env=_env(config_env))
    assert "JSON nested more than" in one_line_error(out)


def _helper(bindir, name: str, body: str):
    bindir.mkdir(exist_ok=True)
    path = bindir / f"docker-credential-{name}"
    path.write_text("#!/bin/sh\n" + body)
    path.chmod(0o755)
    return path


def test_helper_names_cannot_run_other_binaries(tmp_path, config_env):
    """`credsStore: "x/evil"` made docker-credential-x/evil, a path relative to the
    current directory; a '.' in PATH found helpers there too (Go's LookPath has
    refused that since 1.19)."""
    work = tmp_path / "work"
    marker = tmp_path / "ran"
    (work / "docker-credential-x").mkdir(parents=True)
    evil = work / "docker-credential-x" / "evil"
    evil.write_text(f"#!/bin/sh\ntouch {marker}\n")
    evil.chmod(0o755)
    _helper(work, "dot", f"touch {marker}\n")
    cfg = _docker_config(config_env)
    env = _env(config_env, PATH=f".:{os.environ['PATH']}")
    for name, expected in (("x/evil", "credsStore: invalid credential helper name 'x/evil'"),
                           ("../work/docker-credential-x/evil", "invalid credential helper"),
                           ("dot", "credential helper docker-credential-dot not found in PATH")):
        cfg.write_text(json.dumps({"credsStore": name}))
        out = run_cli(tmp_path / "s", "pull", "127.0.0.1:1/x:1", env=env, cwd=work)
        assert expected in one_line_error(out), out.stderr
        assert not marker.exists(), name


def test_helper_answers_are_bounded(tmp_path, config_env, monkeypatch):
    bindir = tmp_path / "bin"
    _helper(bindir, "endless", "exec yes '{\"Username\":\"u\",\"Secret\":\"'\n")
    _helper(bindir, "slow", "sleep 300\n")
    _helper(bindir, "forks", "(sleep 300) &\necho '{\"Username\":\"u\",\"Secret\":\"s\"}'\n")
    _helper(bindir, "odd", "echo '{\"Username\":1,\"Secret\":{}}'\n")
    _helper(bindir, "ok", "cat >/dev/null\necho '{\"Username\":\"u\",\"Secret\":\"" + SECRET +
            "\"}'\n")
    path = f"{bindir}:{os.environ['PATH']}"
    cfg = _docker_config(config_env)
    cfg.write_text(json.dumps({"credsStore": "endless"}))
    out = run_cli(tmp_path / "store", "pull", "127.0.0.1:1/x:1", timeout=60,
                  env=_env(config_env, PATH=path))
    assert "docker-credential-endless get: answer longer than" in one_line_error(out)
    monkeypatch.setenv("PATH", path)
    monkeypatch.setattr(credentials, "HELPER_TIMEOUT", 1.0, raising=False)
    for name, expected in (("slow", "no answer within 1 s"), ("forks", "no answer within 1 s"),
                           ("odd", "unexpected answer to get")):
        cfg.write_text(json.dumps({"credsStore": name}))
        with pytest.raises(CredentialsError, match=rf"docker-credential-{name}.*{expected}"):
            bounded(lambda: credentials.lookup("h:1"), 20)
    cfg.write_text(json.dumps({"credsStore": "ok"}))
    assert credentials.lookup("h:1") == credentials.Credentials("u", SECRET)


# --- login ---------------------------------------------------------------------------

def _basic_registry(hs: Hostile, user: str = "bob", password: str = SECRET) -> None:
    good = "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()
    hs.route("GET", r"/v2/", lambda h, m: reply(h, 200, b"{}") if h.headers.get(
        "Authorization") == good else reply(h, 401, b"", {"WWW-Authenticate": 'Basic realm="r"'}))


def test_login_refuses_addresses_with_user_info_or_paths(tmp_path, hostile, config_env):
    hs = hostile()
    _basic_registry(hs)
    for address, expected in ((f"https://bob:{SECRET}@{hs.host}/", "user information"),
                              (f"bob:{SECRET}@{hs.host}", "user information"),
                              ("..", "invalid registry name '..'"),
                              ("../../etc", "invalid registry name '..'"),
                              ("x_y:5000", "invalid registry name")):
        out = run_cli(tmp_path / "store", "--debug", "login", "-u", "bob", "--password-stdin",
                      address, env=_env(config_env), input=SECRET + "\n")
        assert out.returncode != 0 and expected in out.stderr, out.stderr[-1500:]
        assert SECRET not in out.stdout + out.stderr
        assert not (config_env / "config.json").exists()
        assert [s for s in hs.seen if s.headers.get("Authorization")] == []
    out = run_cli(tmp_path / "store", "logout", "../x", env=_env(config_env))
    assert "invalid registry name '..'" in one_line_error(out)


def test_login_writes_0600_through_a_symlinked_config(tmp_path, hostile, config_env):
    """docker follows a symlinked config.json (dotfiles kept elsewhere) and writes the
    file it points at; replacing the link with a file loses the user's setup."""
    hs = hostile()
    _basic_registry(hs)
    dotfiles = tmp_path / "dotfiles"
    dotfiles.mkdir()
    target = dotfiles / "pybuild.json"
    target.write_text(json.dumps({"auths": {"other.example": {"auth": "dTpw"}},
                                  "HttpHeaders": {"X-Kept": "1"}}))
    target.chmod(0o644)
    (config_env / "config.json").symlink_to(target)
    out = run_cli(tmp_path / "store", "login", "-u", "bob", "-p", SECRET, hs.host,
                  env=_env(config_env))
    assert out.returncode == 0, out.stderr
    assert out.stdout == "Login Succeeded\n"
    assert out.stderr == "WARNING! Using --password via the CLI is insecure. Use " \
                         "--password-stdin.\n"
    assert (config_env / "config.json").is_symlink()
    saved = json.loads(target.read_text())
    assert saved["HttpHeaders"] == {"X-Kept": "1"} and "other.example" in saved["auths"]
    assert base64.b64decode(saved["auths"][hs.host]["auth"]).decode() == f"bob:{SECRET}"
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    # a wrong password, with --debug: refused, and the secret is nowhere in the output
    out = run_cli(tmp_path / "store", "--debug", "login", "-u", "bob", "--password-stdin",
                  hs.host, env=_env(config_env), input="Wr0ng-" + SECRET)
    assert out.returncode != 0 and "login as bob refused" in out.stderr
    assert SECRET not in out.stdout + out.stderr


def test_password_stdin_is_bounded(tmp_path, hostile, config_env):
    hs = hostile()
    hs.route("GET", r"/v2/", lambda h, m: reply(h, 401, b"", {"WWW-Authenticate": 'Basic realm="r"'}))
    out = run_cli(tmp_path / "store", "login", "-u", "bob", "--password-stdin", hs.host,
                  env=_env(config_env), input="x" * (1 << 20))
    assert "password is longer than" in one_line_error(out)
    assert hs.seen == []
    for user, pw, expected in (("bob", "", "password is empty"), ("a:b", "pw", "must not contain ':'"),
                               ("bo\x1bb", "pw", "control characters")):
        out = run_cli(tmp_path / "store", "login", "-u", user, "--password-stdin", hs.host,
                      env=_env(config_env), input=pw + "\n")
        assert expected in one_line_error(out)
    assert hs.seen == [] and not (config_env / "config.json").exists()


def test_login_over_plain_http_warns(hostile, config_env, monkeypatch):
    """Only for a registry that is not on this machine (and was marked insecure)."""
    hs = hostile()
    _basic_registry(hs)
    warned: list[str] = []
    monkeypatch.setattr(tls, "is_loopback", lambda host: False)
    path = login_mod.login(hs.host, "bob", SECRET, Options(insecure_hosts=(hs.host,), retries=0),
                           warn=warned.append)
    assert path == config_env / "config.json"
    assert warned == [f"WARNING! {hs.host} is reached over plain HTTP: the password crosses "
                      "the network unencrypted."]


def test_a_failing_helper_never_echoes_the_secret(tmp_path, hostile, config_env, monkeypatch):
    """A helper's complaint is quoted in the error; one that repeats its input back
    (the JSON with the Secret) would have put the password on the terminal."""
    hs = hostile()
    password = 'pa"ss\\' + SECRET
    _basic_registry(hs, password=password)
    bindir = tmp_path / "bin"
    _helper(bindir, "echoer", "printf 'cannot store: '; cat; exit 3\n")
    monkeypatch.setenv("PATH", f"{bindir}:{os.environ['PATH']}")
    (config_env / "config.json").write_text(json.dumps({"credsStore": "echoer"}))
    with pytest.raises(CredentialsError, match=r"docker-credential-echoer store: cannot store: "
                                               r".*\"Secret\": \"\*\*\*\"") as info:
        login_mod.login(hs.host, "bob", password, Options(retries=0))
    assert SECRET not in str(info.value)
