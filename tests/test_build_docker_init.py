"""The Dockerfiles `docker init` writes for Python, Node and Go (tests/data/docker-init/,
from docker's documentation), built and run.

There is no Docker Hub here: the bases they name (python:3.11-slim, node:18, golang:1.19,
debian:bookworm-slim) are made once per session from the debootstrap-made Debian base
(its tarball cached in ~/.cache/pybuild by sample-images/debian-python/make-base.sh) and
Debian's packages. HTTPS from RUN steps goes through an intercepting proxy here, so the
host's extra CA files are added to each base before update-ca-certificates, as a company
base image would have them. The two lines a Debian base changes (Alpine in node's FROM,
apk in Go's final stage) are marked in those Dockerfiles; every other line is docker init's.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import CLI, REPO, require_tool

DATA = REPO / "tests" / "data" / "docker-init"
SAMPLES = REPO / "sample-images"

# one package-list update for all the bases (a cached step), then each base's packages
BASES = """\
FROM debian-base AS lists
ENV DEBIAN_FRONTEND=noninteractive LANG=C.UTF-8
RUN apt-get update

FROM lists AS slim
RUN apt-get install -y --no-install-recommends ca-certificates adduser tzdata
COPY certs/ /usr/local/share/ca-certificates/
RUN update-ca-certificates && rm -rf /var/lib/apt/lists/*

FROM lists AS python
RUN apt-get install -y --no-install-recommends ca-certificates adduser python3 python3-venv
COPY certs/ /usr/local/share/ca-certificates/
RUN update-ca-certificates && rm -rf /var/lib/apt/lists/*
# as the python image: its own python/pip first on PATH (not Debian's externally
# managed one), pip trusting the system's CAs
RUN python3 -m venv /usr/local/python \\
    && printf '[global]\\ncert = /etc/ssl/certs/ca-certificates.crt\\n' > /etc/pip.conf
ENV PATH=/usr/local/python/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
CMD ["python3"]

FROM lists AS node
RUN apt-get install -y --no-install-recommends ca-certificates adduser nodejs npm
COPY certs/ /usr/local/share/ca-certificates/
RUN update-ca-certificates && rm -rf /var/lib/apt/lists/*
# as the node image: a `node` user (uid 1000); node trusts only its own CAs otherwise
RUN useradd --create-home --uid 1000 --shell /bin/bash node
ENV NODE_EXTRA_CA_CERTS=/etc/ssl/certs/ca-certificates.crt
CMD ["node"]

FROM lists AS golang
RUN apt-get install -y --no-install-recommends ca-certificates golang-go
COPY certs/ /usr/local/share/ca-certificates/
RUN update-ca-certificates && rm -rf /var/lib/apt/lists/*
ENV GOPATH=/go PATH=/go/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
WORKDIR /go
"""

TAGS = {"slim": "debian:bookworm-slim", "python": "python:3.11-slim", "node": "node:18",
        "golang": "golang:1.19"}


def _cache_dir() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "pybuild"


def _bases_key(certs: list[Path]) -> str:
    """What the bases are made of: their Dockerfile, the CA files, the debootstrap tarball."""
    h = hashlib.sha256(BASES.encode())
    for crt in certs:
        h.update(crt.name.encode() + b"\0" + crt.read_bytes())
    tarball = _cache_dir() / "debian-bookworm-minbase.tar"
    if tarball.exists():
        st = tarball.stat()
        h.update(f"{st.st_size}:{st.st_mtime_ns}".encode())
    return h.hexdigest()[:16]


@pytest.fixture(scope="session")
def init_store(tmp_path_factory) -> CLI:
    """A store holding the four bases. Building them takes minutes (apt-get), so, as
    make-base.sh keeps debootstrap's tarball, their archive is kept in ~/.cache/pybuild
    and loaded next time (rebuilt when what they are made of changed or it is unreadable)."""
    require_tool("debootstrap")
    base = tmp_path_factory.mktemp("docker-init")
    cli = CLI(base / "store")
    extra = Path("/usr/local/share/ca-certificates")
    certs = sorted(extra.glob("*.crt")) if extra.is_dir() else []
    archive = _cache_dir() / f"docker-init-bases-{_bases_key(certs)}.tar"
    if archive.exists():
        if cli("load", "-i", archive, check=False).returncode == 0:
            return cli
        archive.unlink()
        shutil.rmtree(cli.root, ignore_errors=True)
    _build_bases(cli, base, certs)
    archive.parent.mkdir(parents=True, exist_ok=True)
    for old in archive.parent.glob("docker-init-bases-*.tar"):
        old.unlink()
    tmp = archive.with_suffix(".tmp")
    cli("save", "-o", tmp, *TAGS.values())
    tmp.rename(archive)
    return cli


def _build_bases(cli: CLI, base: Path, certs: list[Path]) -> None:
    subprocess.run(["sh", str(SAMPLES / "debian-python" / "make-base.sh")], check=True,
                   env={"PYBUILD_ROOT": str(cli.root), "PATH": os.environ["PATH"],
                        "HOME": str(Path.home()), "TMPDIR": str(base)},
                   capture_output=True, timeout=900)
    ctx = base / "bases"
    (ctx / "certs").mkdir(parents=True)
    (ctx / "Dockerfile").write_text(BASES)
    for crt in certs:
        shutil.copy(crt, ctx / "certs" / crt.name)
    # the first build makes the shared package lists; the other three reuse them, together
    cli("build", "--progress", "quiet", "--target", "slim", "-t", TAGS["slim"], ctx, timeout=900)
    env = dict(os.environ, PYTHONPATH=str(REPO))
    procs = {t: subprocess.Popen([sys.executable, "-m", "builder", "--root", str(cli.root),
                                  "build", "--progress", "plain", "--target", t, "-t", TAGS[t],
                                  str(ctx)], env=env, stdout=subprocess.PIPE,
                                 stderr=subprocess.STDOUT, text=True)
             for t in ("python", "node", "golang")}
    for t, p in procs.items():
        out, _ = p.communicate(timeout=900)
        assert p.returncode == 0, f"base {TAGS[t]}:\n{out[-3000:]}"


@pytest.mark.parametrize("lang,expected", [
    ("python", "hello from python as appuser (uid 10001) in /app, six 1.16.0, PY3=True\n"),
    ("node", 'hello from node as node in /usr/src/app, NODE_ENV=production, '
             'ms("2 days")=172800000\n'),
    ("go", "hello from go as appuser (uid 10001), linux/amd64\n"),
])
def test_docker_init_dockerfile_builds_and_runs(init_store: CLI, lang, expected):
    ctx = DATA / lang
    tag = f"docker-init-{lang}"
    p = init_store("build", "--progress", "plain", "-t", tag, ctx, timeout=900)
    assert "WARNING" not in p.stderr, p.stderr
    assert init_store("run", "--rm", tag).stdout == expected
    # the relative bind targets landed in the WORKDIR only for the step: not in the image
    listing = init_store("run", "--rm", "--entrypoint", "ls", tag, "-A").stdout.split()
    if lang == "python":
        assert sorted(listing) == ["app.py", "requirements.txt"]    # from COPY . . only
    elif lang == "node":
        assert "node_modules" in listing and "package-lock.json" in listing
    else:       # the build stage's files never reach the final image
        assert "bin" in listing and not {"src", "go.mod", "go.sum", "main.go"} & set(listing)
    # a rebuild is all cache: the bind-mounted files are keyed by content
    again = init_store("build", "--progress", "plain", "-t", tag, ctx)
    assert " 0 steps run" in again.stderr or "(0 steps run" in again.stderr, again.stderr


def test_docker_init_python_dependency_change_reruns_pip(init_store: CLI, tmp_path):
    """The bind-mounted requirements.txt is an input of the pip step: a changed file
    re-runs it (and only the steps after it)."""
    ctx = tmp_path / "python"
    shutil.copytree(DATA / "python", ctx)
    init_store("build", "-t", "di-py-a", ctx, timeout=900)
    (ctx / "requirements.txt").write_text("six==1.16.0\nidna==3.7\n")
    (ctx / "app.py").write_text("import idna, six\nprint(idna.encode('ドメイン.テスト').decode())\n")
    p = init_store("build", "--progress", "plain", "-t", "di-py-b", ctx, timeout=900)
    assert "Successfully installed idna-3.7" in p.stderr, p.stderr
    assert init_store("run", "--rm", "di-py-b").stdout == "xn--eckwd4c7c.xn--zckzah\n"
