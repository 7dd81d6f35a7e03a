"""Registry authentication: Basic, and the Bearer token flow.

A registry answers 401 with `WWW-Authenticate: Bearer realm=..,service=..,
scope=..` (or `Basic realm=..`). For Bearer we ask the realm for a token
covering every scope the operation needs (`repository:NAME:pull,push`, plus
`pull` on the source repository of a cross-repository mount), cache it per
scope set, and fetch a new one when it expires or the registry wants more.

Where credentials go: as with docker, the registry's credentials are sent to
the realm it names, on whatever host (registry-1.docker.io sends them to
auth.docker.io) -- the registry could ask for them as Basic auth itself. But
never in clear from a registry reached over HTTPS: a plain-http realm on
another machine gets no credentials (an anonymous token request at most), and
a realm on another machine is verified with the system roots whatever the
registry's own TLS settings (its certs.d CAs, or the unverified HTTPS of a
loopback or insecure registry) are.
"""

from __future__ import annotations

import base64
import json
import re
import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from layerstore.registry import transport
from layerstore.registry.credentials import Credentials
from layerstore.registry.errors import RegistryError, Unauthorized

if TYPE_CHECKING:
    import requests

MAX_TOKEN_RESPONSE = 1 << 20     # real ones are a few KiB; the token goes into every header
_TOKEN = re.compile(r"[\x21-\x7e]{1,65536}")   # visible ASCII: a header value, nothing else
_PARAM = re.compile(r'\s*([a-zA-Z_][a-zA-Z0-9_-]*)\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^,\s]*))\s*,?')


@dataclass
class Challenge:
    scheme: str                  # "basic" or "bearer"
    params: dict[str, str] = field(default_factory=dict)


def parse_challenges(header: str) -> list[Challenge]:
    """Parse a WWW-Authenticate value: `Bearer realm="x",service="y", Basic realm="z"`."""
    out: list[Challenge] = []
    pos = 0
    while pos < len(header):
        m = re.compile(r"\s*,?\s*([A-Za-z][A-Za-z0-9_-]*)\s*").match(header, pos)
        if not m or m.end() == pos:
            break
        scheme = m.group(1).lower()
        pos = m.end()
        params: dict[str, str] = {}
        while True:
            p = _PARAM.match(header, pos)
            if not p or p.end() == pos:
                break
            # a bare token followed by a space is the next scheme, not a param
            value = p.group(2) if p.group(2) is not None else p.group(3)
            params[p.group(1).lower()] = re.sub(r"\\(.)", r"\1", value)
            pos = p.end()
        out.append(Challenge(scheme, params))
    return out


def scope(repository_path: str, *actions: str) -> str:
    return f"repository:{repository_path}:{','.join(actions)}"


@dataclass
class _Token:
    value: str
    expires: float
    margin: float = 5.0     # renew this long before expiry


class Authenticator:
    """Per-registry auth state shared by a client's threads."""

    def __init__(self, host: str, creds: Credentials | None,
                 pace: transport.Pace | None = None) -> None:
        self.host = host
        self.creds = creds
        self.pace = pace or transport.default_pace()
        self.challenge: Challenge | None = None
        self._tokens: dict[frozenset[str], _Token] = {}
        self._lock = threading.Lock()

    def learn(self, header: str | None) -> None:
        """Remember the registry's challenge (from a 401)."""
        for ch in parse_challenges(header or ""):
            if ch.scheme in ("bearer", "basic"):
                self.challenge = ch
                return
        self.challenge = Challenge("basic", {}) if self.creds else None

    def header(self, session: "requests.Session", scopes: frozenset[str],
               home: tuple[str, str], verify, fresh: bool = False) -> str | None:
        """The Authorization value for a request needing `scopes`, or None."""
        ch = self.challenge
        if ch is None:
            return None
        if ch.scheme == "basic":
            if not self.creds:
                return None
            raw = f"{self.creds.username}:{self.creds.password}".encode()
            return "Basic " + base64.b64encode(raw).decode()
        with self._lock:
            tok = self._tokens.get(scopes)
            if tok and not fresh and time.time() < tok.expires - tok.margin:
                return "Bearer " + tok.value
            tok = self._fetch_token(session, ch, scopes, home, verify)
            self._tokens[scopes] = tok
            return "Bearer " + tok.value

    def _fetch_token(self, session, ch: Challenge, scopes: frozenset[str],
                     home: tuple[str, str], verify) -> _Token:
        import requests

        realm = ch.params.get("realm")
        if not realm:
            raise Unauthorized(f"{self.host}: Bearer challenge without a realm")
        shown = transport.printable(realm)
        if not realm.lower().startswith(("https://", "http://")):
            # the realm gets the credentials (as with docker, on whatever host
            # the registry names), but only over HTTP(S)
            raise Unauthorized(f"{self.host}: token realm {shown!r} is not an http(s) URL")
        try:
            realm_origin = transport.origin(realm)
        except ValueError:
            raise Unauthorized(f"{self.host}: token realm {shown!r} is not a valid URL") from None
        from layerstore.registry.tls import host_name, is_loopback

        realm_here = is_loopback(host_name(realm_origin[1]))
        if realm_origin != home and not realm_here:
            verify = True       # not the registry's certs.d, nor its chosen lack of checks
        creds = self.creds
        if creds and realm_origin[0] == "http" and home[0] == "https" and not realm_here:
            raise Unauthorized(f"{self.host}: refusing to send credentials in clear to the "
                               f"plain-http token realm {shown!r} of an https registry")
        params: list[tuple[str, str]] = []
        if ch.params.get("service"):
            params.append(("service", ch.params["service"]))
        for s in sorted(scopes):
            params.append(("scope", s))
        auth = None
        try:
            if creds and creds.identity_token:
                data = dict(params, grant_type="refresh_token",
                            refresh_token=creds.password, client_id="pybuild")
                data["scope"] = " ".join(sorted(scopes))
                # not redirected: requests would read a redirect's body unbounded
                resp = session.post(realm, data=data, verify=verify,
                                    timeout=self.pace.timeout, stream=True,
                                    allow_redirects=False)
            else:
                if creds:
                    auth = (creds.username, creds.password)
                resp = transport.get(session, realm, self.pace, f"{self.host}: token from {shown}",
                                     params=params, auth=auth, verify=verify)
        except RegistryError as exc:
            raise Unauthorized(str(exc)) from None
        except requests.RequestException as exc:
            raise Unauthorized(f"{self.host}: cannot get a token from {shown}: "
                               f"{type(exc).__name__}") from None
        if resp.status_code in (401, 403):
            resp.close()
            who = f"as {self.creds.username}" if self.creds else "anonymously"
            raise Unauthorized(f"{self.host}: authentication {who} refused by {shown} "
                               f"(HTTP {resp.status_code})")
        if resp.status_code != 200:
            resp.close()
            raise Unauthorized(f"{self.host}: token server {shown} answered HTTP {resp.status_code}")
        try:
            body = json.loads(transport.read_body(resp, MAX_TOKEN_RESPONSE, self.pace,
                                                  f"{self.host}: token from {shown}"))
            value = body.get("token") or body.get("access_token")
            lifetime = int(body.get("expires_in") or 60)
        except RegistryError as exc:
            raise Unauthorized(str(exc)) from None
        except (ValueError, AttributeError, TypeError, OverflowError, RecursionError):
            value = None
        if not isinstance(value, str) or not _TOKEN.fullmatch(value):
            raise Unauthorized(f"{self.host}: token server {shown} sent no usable token")
        lifetime = min(lifetime, 86400)
        lifetime = max(lifetime, 1)
        return _Token(value, time.time() + lifetime, margin=min(5.0, lifetime * 0.2))
