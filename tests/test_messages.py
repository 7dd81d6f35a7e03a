"""Issue 13, failure output: one clear line for a user's mistake or an unreachable
place, in the words docker users know, never a Python exception name or repr."""

from __future__ import annotations

import json
import os
import socket
import ssl
import subprocess
import threading
from pathlib import Path

import pytest

from conftest import CLI
from layerstore.registry import transport

INTERNALS = ("Traceback", "Error(", "b'", "b\"", "Exception")


def one_error_line(p: subprocess.CompletedProcess, code: int) -> str:
    err = p.stderr.decode() if isinstance(p.stderr, bytes) else p.stderr
    lines = err.strip().splitlines()
    assert p.returncode == code, (p.returncode, err)
    assert len(lines) == 1 and lines[0].startswith("pybuild: error: "), err
    assert not any(s in err for s in INTERNALS), err
    return lines[0].removeprefix("pybuild: error: ")


def nothing_stored(root: Path) -> None:
    if (root / "index.json").exists():
        assert json.loads((root / "index.json").read_text()).get("manifests", []) == []
    assert not (root / "ingest").exists() or os.listdir(root / "ingest") == []
    assert not (root / "containers").exists() or os.listdir(root / "containers") == []


# --- load of something that is not an archive ---------------------------------------------

def test_load_of_what_is_not_an_archive_is_one_line(pybuild: CLI, tmp_path):
    short = tmp_path / "notes.txt"
    short.write_text("hello\n")
    long = tmp_path / "long.txt"
    long.write_text("".join(f"line {i}\n" for i in range(300)))
    member = tmp_path / "m"
    member.write_bytes(b"x" * 5000)
    subprocess.run(["tar", "cf", tmp_path / "whole.tar", "-C", tmp_path, "m"], check=True)
    (tmp_path / "cut.tar").write_bytes((tmp_path / "whole.tar").read_bytes()[:1500])
    cases = [
        ((short,), None, f"{short}: not a tar archive (shorter than one tar header)"),
        ((long,), None, f"{long}: not a tar archive"),
        (("/dev/null",), None, "/dev/null: empty, not an archive"),
        ((tmp_path,), None, f"{tmp_path}: is a directory, not an archive"),
        ((tmp_path / "cut.tar",), None,
         f"{tmp_path / 'cut.tar'}: truncated: a member runs past the end of the archive"),
        ((), b"", "<stdin>: empty, not an archive"),
        ((), b"hello\n", "<stdin>: not a tar archive (shorter than one tar header)"),
    ]
    for source, stdin, message in cases:
        args = ("load", "-i", *source) if source else ("load",)
        p = pybuild(*args, check=False, input=stdin)
        assert one_error_line(p, 1) == message
    nothing_stored(pybuild.root)


# --- ADD of an unreachable URL ---------------------------------------------------------------

def _build_add(pybuild: CLI, tmp_path: Path, url: str) -> subprocess.CompletedProcess:
    ctx = tmp_path / "ctx"
    ctx.mkdir(exist_ok=True)
    (ctx / "Dockerfile").write_text(f"FROM scratch\nADD {url} /f\n")
    return pybuild("build", "--progress=plain", "-t", "added", ctx, check=False)


def _last_error(p: subprocess.CompletedProcess) -> str:
    lines = p.stderr.strip().splitlines()
    assert p.returncode == 1, p.stderr
    assert lines[-1].startswith("pybuild: error: "), p.stderr
    assert not any(s in p.stderr for s in INTERNALS), p.stderr
    return lines[-1]


def test_add_of_a_refused_port_names_host_and_cause(pybuild: CLI, tmp_path):
    with socket.socket() as s:          # bound, not listening: the kernel refuses
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        p = _build_add(pybuild, tmp_path, f"http://user:sekrit@127.0.0.1:{port}/f")
    assert _last_error(p) == (f"pybuild: error: Dockerfile:2: ADD: ADD "
                              f"http://user:xxxxx@127.0.0.1:{port}/f: cannot download: "
                              f"127.0.0.1:{port}: connection refused")
    # (the step's title line still shows the Dockerfile's text as written)
    assert not [ln for ln in p.stderr.splitlines() if "sekrit" in ln and "ERROR" in ln.upper()]
    assert "added" not in pybuild("images").stdout


def test_add_of_an_unresolvable_name_says_dns(pybuild: CLI, tmp_path):
    p = _build_add(pybuild, tmp_path, "http://nonexistent.invalid/f")
    assert _last_error(p) == ("pybuild: error: Dockerfile:2: ADD: ADD http://nonexistent.invalid/f:"
                              " cannot download: nonexistent.invalid:80: DNS name not resolved")
    assert "added" not in pybuild("images").stdout


@pytest.fixture
def tls_server(tmp_path):
    """A TLS server with a self-signed certificate (so never verified), and a plain TCP
    server answering HTTP (so no TLS at all)."""
    key, cert = tmp_path / "key.pem", tmp_path / "cert.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                    "-subj", "/CN=127.0.0.1", "-keyout", key, "-out", cert],
                   check=True, capture_output=True)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)
    socks = []

    def serve(sock: socket.socket, wrap: bool) -> None:
        while True:
            try:
                c, _ = sock.accept()
            except OSError:
                return
            try:
                if wrap:
                    c = ctx.wrap_socket(c, server_side=True)
                c.recv(4096)
                c.sendall(b"HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n")
            except OSError:
                pass
            finally:
                c.close()

    ports = []
    for wrap in (True, False):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        s.listen()
        socks.append(s)
        ports.append(s.getsockname()[1])
        threading.Thread(target=serve, args=(s, wrap), daemon=True).start()
    yield ports
    for s in socks:
        s.close()


def test_tls_failures_in_words(tls_server):
    import requests

    tls_port, plain_port = tls_server
    for url, reason in ((f"https://127.0.0.1:{tls_port}/f",
                         "TLS verification failed: self-signed certificate"),
                        (f"https://127.0.0.1:{plain_port}/f",
                         "TLS handshake failed: the server does not speak TLS on this port")):
        with pytest.raises(requests.RequestException) as info:
            requests.get(url, timeout=10)
        assert transport.failure_reason(info.value) == reason
        port = url.rsplit(":", 1)[1].split("/")[0]
        assert transport.failure_host(info.value) == f"127.0.0.1:{port}"


def test_failure_reason_of_a_timeout_and_of_no_cause():
    import requests

    with socket.socket() as s:       # listening, never accepting: the read times out
        s.bind(("127.0.0.1", 0))
        s.listen()
        with pytest.raises(requests.RequestException) as info:
            requests.get(f"http://127.0.0.1:{s.getsockname()[1]}/", timeout=0.3)
    assert transport.failure_reason(info.value) == "timed out"
    assert transport.failure_reason(ValueError("")) == "the connection failed"


# --- run --cap-add of an unknown capability ------------------------------------------------

@pytest.mark.parametrize("flag,value", [("--cap-add", "NOPE"), ("--cap-drop", "cap_nope"),
                                        ("--cap-add", "CAP_")])
def test_unknown_capability_is_named_before_anything_happens(pybuild: CLI, flag, value):
    p = pybuild("run", flag, value, "busybox:never-pulled", "true", check=False)
    assert one_error_line(p, 125) == f"unknown capability {value} (see `pybuild run --help`)"
    nothing_stored(pybuild.root)


def test_known_capability_spellings_pass_validation():
    from builder.runner.options import parse_caps

    assert parse_caps(("net_admin", "CAP_SYS_PTRACE", "ALL", "cap_all")) == \
        ["net_admin", "CAP_SYS_PTRACE", "ALL", "cap_all"]


# --- docker habits instead of click's guesses --------------------------------------------

@pytest.mark.parametrize("args,usage,error", [
    (("compose", "up"), "pybuild",
     "Error: No such command 'compose'. (docker's 'compose' is 'pybuild run -d, one per "
     "service: pybuild has no compose')"),
    # not a habit: click's own guesses stay
    (("bulid",), "pybuild",
     "Error: No such command 'bulid'. (Did you mean one of: 'build', 'builder', 'buildx'?)"),
    (("fsk",), "pybuild", "Error: No such command 'fsk'. Did you mean 'fsck'?"),
    (("system", "pruen"), "pybuild system", "Error: No such command 'pruen'. Did you mean 'prune'?"),
])
def test_docker_habits_get_the_pybuild_spelling(pybuild: CLI, args, usage, error):
    p = pybuild(*args, check=False)
    lines = p.stderr.strip().splitlines()
    assert p.returncode == 2, p.stderr
    assert lines[0].startswith(f"Usage: {usage} ") and lines[-1] == error, p.stderr
    assert not (pybuild.root / "index.json").exists()


# --- the build summary's grammar --------------------------------------------------------

def test_summary_says_1_step_run(pybuild: CLI, tmp_path):
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    (ctx / "f").write_text("hi\n")
    (ctx / "Dockerfile").write_text("FROM scratch\nCOPY f /f\n")
    first = pybuild("build", "--progress=plain", ctx)
    assert first.stderr.strip().splitlines()[-1].endswith(" (1 step run, 0 cached)"), first.stderr
    again = pybuild("build", "--progress=plain", ctx)
    assert again.stderr.strip().splitlines()[-1].endswith(" (0 steps run, 1 cached)"), again.stderr
    (ctx / "Dockerfile").write_text("FROM scratch\nCOPY f /f\nCOPY f /g\n")
    third = pybuild("build", "--progress=plain", ctx)
    assert third.stderr.strip().splitlines()[-1].endswith(" (1 step run, 1 cached)"), third.stderr
