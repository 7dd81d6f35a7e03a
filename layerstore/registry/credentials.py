"""Registry credentials in docker's `config.json` format.

pybuild keeps its own file ($PYBUILD_CONFIG/config.json, default
~/.config/pybuild/config.json) and also reads docker's ($DOCKER_CONFIG or
~/.docker/config.json). Entries are `auths.<host>.auth` = base64(user:pass),
or go through `docker-credential-<helper>` executables named by
`credHelpers.<host>` or `credsStore`. Secrets are never printed or logged.

Both files and the helpers' answers are outside input: a config.json may be a
FIFO, a link to /dev/zero, nested 100 000 deep or hold a number where a
string belongs, and a helper may never answer or answer without end. Each is
read bounded in size and time and refused with a one-line CredentialsError.
A helper name is a plain name looked up in the absolute directories of $PATH
(never `x/../../evil`, never the current directory, as Go's LookPath since
1.19), and run without a shell.
"""

from __future__ import annotations

import base64
import json
import os
import re
import selectors
import signal
import stat
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from layerstore import jsonlimits
from layerstore.atomic import atomic_write
from layerstore.registry.errors import CredentialsError

DOCKER_HUB = "docker.io"
DOCKER_HUB_KEYS = ("https://index.docker.io/v1/", "index.docker.io", "docker.io",
                   "registry-1.docker.io")
MAX_CONFIG = 4 << 20            # real ones are a few KiB
MAX_HELPER_OUTPUT = 1 << 20     # a get answer is one small JSON object
MAX_HELPER_ERROR = 16 << 10
HELPER_TIMEOUT = 30.0           # seconds a helper may take (a keychain prompt included)
HELPER_PREFIX = "docker-credential-"
_HELPER_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")


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


def _printable(text: str, limit: int = 200) -> str:
    text = text[:limit]
    return "".join(ch if ch.isprintable() else "?" for ch in text)


def _load(path: Path) -> dict:
    """The config file as a dict; {} when there is none.

    Opened non-blocking (a FIFO would block open() and read() for ever), and
    only a regular file is read, at most MAX_CONFIG bytes of it."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY)
    except FileNotFoundError:
        return {}
    except OSError as exc:
        raise CredentialsError(f"cannot read {path}: {exc.strerror}") from None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise CredentialsError(f"{path}: not a regular file")
        with os.fdopen(fd, "rb", closefd=False) as f:
            data = f.read(MAX_CONFIG + 1)
    except OSError as exc:
        raise CredentialsError(f"cannot read {path}: {exc.strerror}") from None
    finally:
        os.close(fd)
    try:
        obj = jsonlimits.loads(data or b"{}", str(path), max_bytes=MAX_CONFIG)
    except jsonlimits.InvalidJSON as exc:
        raise CredentialsError(str(exc)) from None
    if not isinstance(obj, dict):
        raise CredentialsError(f"{path}: expected a JSON object")
    return obj


def _section(obj: dict, key: str, path: Path) -> dict:
    """obj[key] as a dict ({} when absent or null); anything else is an error."""
    value = obj.get(key)
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise CredentialsError(f"{path}: {key} is not a JSON object")
    return value


def _string(value, path: Path, where: str) -> str | None:
    if value is None or isinstance(value, str):
        return value
    raise CredentialsError(f"{path}: {where} is not a string")


def _decode_auth(value: str, path: Path, key: str) -> tuple[str, str]:
    try:
        user, sep, password = base64.b64decode(value, validate=False).decode().partition(":")
    except (ValueError, UnicodeDecodeError):
        sep = ""
    if not sep:
        raise CredentialsError(f"{path}: auths.{_printable(key, 100)}.auth is not base64 of "
                               "user:password")
    return user, password


def _helper_name(value, path: Path, where: str) -> str:
    """A helper name from the config: a plain name (never `x/evil`, `..`, an object)."""
    if not isinstance(value, str) or not _HELPER_NAME.fullmatch(value):
        raise CredentialsError(f"{path}: {where}: invalid credential helper name "
                               f"{_printable(str(value), 100)!r}: expected a plain name such as "
                               "'pass' or 'secretservice'")
    return value


def _helper_path(name: str) -> str:
    """The absolute path of docker-credential-<name>, found only in absolute $PATH entries."""
    if not _HELPER_NAME.fullmatch(name):       # checked by _helper_name already
        raise CredentialsError(f"invalid credential helper name {_printable(name, 100)!r}")
    exe = HELPER_PREFIX + name
    for d in os.environ.get("PATH", os.defpath).split(os.pathsep):
        if not os.path.isabs(d):
            continue       # '' or '.': the current directory is not a place to run helpers from
        candidate = os.path.join(d, exe)
        if os.path.isfile(candidate) and os.access(candidate, os.X_OK):
            return candidate
    raise CredentialsError(f"credential helper {exe} not found in PATH")


def _helper(name: str, action: str, payload: str, secret: str | None = None) -> str:
    """Run `docker-credential-<name> <action>` with `payload` on stdin; its stdout.

    Bounded: at most MAX_HELPER_OUTPUT bytes and HELPER_TIMEOUT seconds, after
    which the helper (and anything it started) is killed. Its complaint is
    quoted in the error, with `secret` (which a helper may echo back from its
    input) masked."""
    path = _helper_path(name)
    exe = HELPER_PREFIX + name
    try:
        proc = subprocess.Popen([path, action], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, start_new_session=True, close_fds=True)
    except OSError as exc:
        raise CredentialsError(f"credential helper {exe}: cannot run it: {exc.strerror}") from None
    try:
        out, err, problem = _exchange(proc, payload.encode())
    finally:
        if proc.poll() is None:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except OSError:
                pass
        proc.wait()
        for f in (proc.stdin, proc.stdout, proc.stderr):
            if f is not None and not f.closed:
                f.close()
    if problem:
        raise CredentialsError(f"credential helper {exe} {action}: {problem}")
    if proc.returncode != 0:
        text = (out.strip() or err.strip()).decode(errors="replace")
        if secret:     # as given, and as it appears inside the JSON it was sent in
            for form in (secret, json.dumps(secret)[1:-1]):
                text = text.replace(form, "***")
        first = text.splitlines()[0] if text else f"exit status {proc.returncode}"
        raise CredentialsError(f"credential helper {exe} {action}: {_printable(first)}")
    return out.decode(errors="replace")


def _exchange(proc: subprocess.Popen, payload: bytes) -> tuple[bytes, bytes, str | None]:
    """Write `payload`, read stdout and stderr to their ends: (out, err, problem)."""
    deadline = time.monotonic() + HELPER_TIMEOUT
    try:
        proc.stdin.write(payload)
        proc.stdin.close()
    except OSError:
        pass        # the helper did not want its stdin: its answer says why
    bufs = {proc.stdout: bytearray(), proc.stderr: bytearray()}
    limits = {proc.stdout: MAX_HELPER_OUTPUT, proc.stderr: MAX_HELPER_ERROR}
    sel = selectors.DefaultSelector()
    for f in bufs:
        os.set_blocking(f.fileno(), False)
        sel.register(f, selectors.EVENT_READ)
    try:
        while sel.get_map():
            left = deadline - time.monotonic()
            if left <= 0:
                return bytes(bufs[proc.stdout]), b"", f"no answer within {HELPER_TIMEOUT:g} s"
            for key, _ in sel.select(left):
                f = key.fileobj
                try:
                    chunk = os.read(f.fileno(), 65536)
                except BlockingIOError:
                    continue
                if not chunk:
                    sel.unregister(f)
                    continue
                bufs[f] += chunk
                if len(bufs[f]) > limits[f]:
                    if f is proc.stdout:
                        return b"", b"", f"answer longer than {MAX_HELPER_OUTPUT} bytes"
                    del bufs[f][limits[f]:]
                    sel.unregister(f)
        left = deadline - time.monotonic()
        try:
            proc.wait(max(left, 0.01))
        except subprocess.TimeoutExpired:
            return b"", b"", f"no answer within {HELPER_TIMEOUT:g} s"
    finally:
        sel.close()
    return bytes(bufs[proc.stdout]), bytes(bufs[proc.stderr]), None


def _from_helper(name: str, host: str) -> Credentials | None:
    for key in _keys_for(host)[:2] if host != DOCKER_HUB else DOCKER_HUB_KEYS[:1]:
        try:
            out = _helper(name, "get", key)
        except CredentialsError as exc:
            if "credentials not found" in str(exc).lower():
                continue
            raise
        try:
            obj = jsonlimits.loads(out, f"credential helper {HELPER_PREFIX}{name}",
                                   max_bytes=MAX_HELPER_OUTPUT)
            user, secret = obj["Username"], obj["Secret"]
        except (ValueError, KeyError, TypeError):
            user = secret = None
        if not isinstance(user, str) or not isinstance(secret, str):
            raise CredentialsError(f"credential helper {HELPER_PREFIX}{name}: "
                                   "unexpected answer to get")
        return Credentials(user, secret, identity_token=(user == "<token>"))
    return None


def _from_config(path: Path, host: str) -> Credentials | None:
    obj = _load(path)
    helpers = _section(obj, "credHelpers", path)
    for key in _keys_for(host):
        if key in helpers:
            where = f"credHelpers.{_printable(key, 100)}"
            return _from_helper(_helper_name(helpers[key], path, where), host)
    auths = _section(obj, "auths", path)
    for key in _keys_for(host):
        entry = auths.get(key)
        if not isinstance(entry, dict):
            continue
        where = f"auths.{_printable(key, 100)}"
        token = _string(entry.get("identitytoken"), path, f"{where}.identitytoken")
        auth = _string(entry.get("auth"), path, f"{where}.auth")
        user = _string(entry.get("username"), path, f"{where}.username")
        password = _string(entry.get("password"), path, f"{where}.password")
        if token:
            return Credentials(user or "<token>", token, identity_token=True)
        if auth:
            return Credentials(*_decode_auth(auth, path, key))
        if user and password:
            return Credentials(user, password)
    store = obj.get("credsStore")
    if store:
        return _from_helper(_helper_name(store, path, "credsStore"), host)
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


def _helper_for(obj: dict, path: Path, host: str) -> str | None:
    name = _section(obj, "credHelpers", path).get(host)
    if name:
        return _helper_name(name, path, f"credHelpers.{_printable(host, 100)}")
    store = obj.get("credsStore")
    return _helper_name(store, path, "credsStore") if store else None


def save(host: str, creds: Credentials) -> Path:
    """Store credentials in pybuild's config.json (or its helper); returns the file."""
    path = config_path()
    obj = _load(path)
    helper = _helper_for(obj, path, host)
    key = _store_key(host)
    auths = _section(obj, "auths", path)
    obj["auths"] = auths
    if helper:
        _helper(helper, "store", json.dumps({"ServerURL": key, "Username": creds.username,
                                             "Secret": creds.password}), secret=creds.password)
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
    helper = _helper_for(obj, path, host)
    found = False
    auths = _section(obj, "auths", path)
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
    """Replace the file atomically, 0600 (as docker writes it).

    A config.json that is a symlink (dotfiles kept elsewhere) is followed, as
    docker does: the file it points at is replaced, the link stays."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    target = Path(os.path.realpath(path)) if path.is_symlink() else path
    atomic_write(target, json.dumps(obj, indent=2).encode() + b"\n", mode=0o600)
