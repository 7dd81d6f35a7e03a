"""`pybuild run -p/-P`: an httpd in a container answers from the host side.

Everything runs inside a network namespace this test creates (`ip netns add`,
pybuild under `ip netns exec`), so the machine's own interfaces, routes and
firewall are never touched; the namespace is deleted in teardown."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest

from conftest import REPO, require_tool
from test_run_support import run_store  # noqa: F401  (fixture)


@pytest.fixture
def netns():
    require_tool("ip")
    name = f"pbrun{os.getpid()}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        subprocess.run(["ip", "netns", "exec", name, "ip", "link", "set", "lo", "up"], check=True)
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False)


def in_ns(ns: str, *argv: str, check: bool = True) -> subprocess.CompletedProcess:
    p = subprocess.run(["ip", "netns", "exec", ns, *argv], capture_output=True, text=True,
                       timeout=60, cwd=REPO, env=dict(os.environ, PYTHONPATH=str(REPO)))
    if check and p.returncode:
        raise AssertionError(f"{argv} exited {p.returncode}: {p.stdout}{p.stderr}")
    return p


FETCH = ("import sys, urllib.request; "
         "sys.stdout.write(urllib.request.urlopen(sys.argv[1], timeout=2).read().decode())")


def fetch(ns: str, port: int) -> str:
    """GET / on the host side (busybox wget crashes on ports above 32767)."""
    deadline = time.monotonic() + 10
    while True:
        p = in_ns(ns, sys.executable, "-c", FETCH, f"http://127.0.0.1:{port}/", check=False)
        if p.returncode == 0 or time.monotonic() > deadline:
            return p.stdout
        time.sleep(0.1)


def test_published_port_answers_from_host(run_store, netns, tmp_path):
    www = tmp_path / "www"
    www.mkdir()
    (www / "index.html").write_text("hello from the container\n")
    pb = (sys.executable, "-m", "builder", "--root", str(run_store.root))
    httpd = ("busybox", "httpd", "-f", "-p", "80", "-h", "/www")
    started = []
    try:
        cid = in_ns(netns, *pb, "run", "-d", "-p", "18080:80", "-v", f"{www}:/www:ro",
                    *httpd).stdout.strip()
        started.append(cid)
        assert fetch(netns, 18080) == "hello from the container\n"
        assert "0.0.0.0:18080->80/tcp" in in_ns(netns, *pb, "ps").stdout
        # the host port is taken now: a second container cannot publish it
        p = in_ns(netns, *pb, "run", "--rm", "-p", "18080:80", "busybox", "true", check=False)
        assert p.returncode == 125 and "18080" in p.stderr and "in use" in p.stderr
        # -P publishes the image's ExposedPorts (bbcfg: 80/tcp) on a free port
        cid2 = in_ns(netns, *pb, "run", "-d", "-P", "-u", "0", "-v", f"{www}:/www:ro",
                     "--entrypoint", "busybox", "bbcfg", *httpd[1:]).stdout.strip()
        started.append(cid2)
        port = json.loads(in_ns(netns, *pb, "inspect", cid2).stdout)[0]["NetworkSettings"]["Ports"]
        host_port = int(port["80/tcp"][0]["HostPort"])     # docker's map
        assert fetch(netns, host_port) == "hello from the container\n"
    finally:
        if started:
            in_ns(netns, *pb, "rm", "-f", *started, check=False)
    links = in_ns(netns, "ip", "-o", "link").stdout
    assert "pbv" not in links and "pybuild0" not in links
    assert "pybuild" not in in_ns(netns, "iptables-save").stdout
