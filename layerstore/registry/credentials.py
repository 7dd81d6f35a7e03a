"""Registry credentials in docker's `config.json` format.

pybuild keeps its own file ($PYBUILD_CONFIG/config.json, default
~/.config/pybuild/config.json) and also reads docker's ($DOCKER_CONFIG or
~/.docker/config.json). Entries are `auths.<host>.auth` = base64(user:pass),
or go through `docker-credential-<helper>` executables named by
`credHelpers.<host>` or `credsStore`. Secrets are never printed or logged.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

from layerstore.atomic import atomic_write
from layerstore.registry.errors import CredentialsError

DOCKER_HUB = "docker.io"
DOCKER_HUB_KEYS = ("https://index.docker.io/v1/", "index.docker.io", "docker.io",
                   "registry-1.docker.io")


@dataclass(frozen=True)
class Credentials:
    username: str
    password: str
    identity_token: bool = False   # password is an OAuth refresh token

    def __repr__(self) -> str:   # keep secrets out of logs and tracebacks
        return f"Credentials(username={self.username!r}, password=***)"


def config_dir() -> Path:
    env = os.environ.get("PYBUILD_CONFIG")
    if env:
        return Path(env)
    base = os.environ.get("XDG_CONFIG_HOME") or os.path.join(Path.home(), ".config")
    return Path(base) / "pybuild"


def config_path() -> Path:
    return config_dir() / "config.json"


def docker_config_path() -> Path:
    env = os.environ.get("DOCKER_CONFIG")
    return Path(env) / "config.json" if env else Path.home() / ".docker" / "config.json"


def _keys_for(host: str) -> tuple[str, ...]:
    """config.json keys that may hold `host` (docker.io has legacy spellings)."""
    if host == DOCKER_HUB:
        return DOCKER_HUB_KEYS
    return (host, f"https://{host}", f"http://{host}", f"https://{host}/v1/", f"https://{host}/v2/")


def _load(path: Path) -> dict:
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return {}
    except OSError as exc:
        raise CredentialsError(f"cannot read {path}: {exc.strerror}") from None
    try:
        obj = json.loads(data or b"{}")
    except ValueError as exc:
        raise CredentialsError(f"{path}: not valid JSON: {exc}") from None
    if not isinstance(obj, dict):
        raise CredentialsError(f"{path}: expected a JSON object")
    return obj


def _decode_auth(value: str, path: Path, key: str) -> tuple[str, str]:
    try:
        user, sep, password = base64.b64decode(value, validate=False).decode().partition(":")
    except (ValueError, UnicodeDecodeError):
        sep = ""
    if not sep:
        raise CredentialsError(f"{path}: auths.{key}.auth is not base64 of user:password")
    return user, password


def _helper(name: str, action: str, payload: str) -> str:
    exe = f"docker-credential-{name}"
    try:
        proc = subprocess.run([exe, action], input=payload, capture_output=True, text=True,
                              timeout=60)
    except FileNotFoundError:
        raise CredentialsError(f"credential helper {exe} not found in PATH") from None
    except subprocess.TimeoutExpired:
        raise CredentialsError(f"credential helper {exe} {action}: timed out") from None
    if proc.returncode != 0:
        msg = (proc.stdout.strip() or proc.stderr.strip()).splitlines()
        raise CredentialsError(f"credential helper {exe} {action}: "
                               f"{msg[0] if msg else f'exit status {proc.returncode}'}")
    return proc.stdout


def _from_helper(name: str, host: str) -> Credentials | None:
    for key in _keys_for(host)[:2] if host != DOCKER_HUB else DOCKER_HUB_KEYS[:1]:
        try:
            out = _helper(name, "get", key)
        except CredentialsError as exc:
            if "credentials not found" in str(exc).lower():
                continue
            raise
        try:
            obj = json.loads(out)
            user, secret = obj["Username"], obj["Secret"]
        except (ValueError, KeyError, TypeError):
            raise CredentialsError(f"credential helper docker-credential-{name}: "
                                   "unexpected answer to get") from None
        return Credentials(user, secret, identity_token=(user == "<token>"))
    return None


def _from_config(path: Path, host: str) -> Credentials | None:
    obj = _load(path)
    helpers = obj.get("credHelpers") or {}
    for key in _keys_for(host):
        if key in helpers:
            return _from_helper(helpers[key], host)
    auths = obj.get("auths") or {}
    for key in _keys_for(host):
        entry = auths.get(key)
        if not isinstance(entry, dict):
            continue
        if entry.get("identitytoken"):
            user = entry.get("username") or "<token>"
            return Credentials(user, entry["identitytoken"], identity_token=True)
        if entry.get("auth"):
            return Credentials(*_decode_auth(entry["auth"], path, key))
        if entry.get("username") and entry.get("password"):
            return Credentials(entry["username"], entry["password"])
    if obj.get("credsStore"):
        return _from_helper(obj["credsStore"], host)
    return None


def lookup(host: str) -> Credentials | None:
    """Credentials for `host` from pybuild's config, then docker's; None if none."""
    for path in (config_path(), docker_config_path()):
        creds = _from_config(path, host)
        if creds is not None:
            return creds
    return None


def _store_key(host: str) -> str:
    return DOCKER_HUB_KEYS[0] if host == DOCKER_HUB else host


def save(host: str, creds: Credentials) -> Path:
    """Store credentials in pybuild's config.json (or its helper); returns the file."""
    path = config_path()
    obj = _load(path)
    helper = (obj.get("credHelpers") or {}).get(host) or obj.get("credsStore")
    key = _store_key(host)
    auths = obj.setdefault("auths", {})
    if helper:
        _helper(helper, "store", json.dumps({"ServerURL": key, "Username": creds.username,
                                             "Secret": creds.password}))
        auths[key] = {}
    else:
        token = base64.b64encode(f"{creds.username}:{creds.password}".encode()).decode()
        auths[key] = {"auth": token}
    _write(path, obj)
    return path


def erase(host: str) -> bool:
    """Remove stored credentials for `host`; False when there were none."""
    path = config_path()
    obj = _load(path)
    helper = (obj.get("credHelpers") or {}).get(host) or obj.get("credsStore")
    found = False
    auths = obj.get("auths") or {}
    for key in _keys_for(host):
        if key in auths:
            del auths[key]
            found = True
    if helper:
        try:
            _helper(helper, "erase", _store_key(host))
            found = True
        except CredentialsError as exc:
            if "not found" not in str(exc).lower():
                raise
    if found:
        _write(path, obj)
    return found


def _write(path: Path, obj: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    atomic_write(path, json.dumps(obj, indent=2).encode() + b"\n", mode=0o600)
