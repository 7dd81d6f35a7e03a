"""Build context rules: .dockerignore patterns as docker applies them, sources that try
to leave the context, --chmod parsing and `import --change` through the build's handlers."""

from __future__ import annotations

import os
import textwrap

import pytest

from builder.context import Context, ContextError, Matcher, parse_ignore
from builder.steps.copy import CopyError, SourceTree, parse_chmod, select_sources
from builder.config_changes import apply_changes
from layerstore.errors import PybuildError
from layerstore.model import ContainerConfig


def _m(text: str) -> Matcher:
    return Matcher(parse_ignore(textwrap.dedent(text)))


@pytest.mark.parametrize("patterns,path,ignored", [
    ("*.log", "a.log", True),
    ("*.log", "sub/a.log", False),            # * stays within one segment
    ("**/*.log", "sub/deep/a.log", True),
    ("**/*.log", "a.log", True),              # ** matches zero segments
    ("/build", "build/x", True),              # leading / is dropped; parent dir match
    ("build", "src/build", False),
    ("docs/**", "docs/a/b", True),
    ("*.md\n!README.md", "README.md", False),
    ("*.md\n!README.md", "CHANGES.md", True),
    ("!README.md\n*.md", "README.md", True),  # the last matching pattern wins
    ("# comment\n\n  tmp  ", "tmp/file", True),
    ("a?c", "abc", True),
    ("a?c", "a/c", False),
    ("[ab].txt", "b.txt", True),
    ("dir/../other", "other", True),          # patterns are cleaned
])
def test_dockerignore_patterns(patterns, path, ignored):
    assert _m(patterns).ignored(path) is ignored


def test_context_sources_cannot_leave_the_context(tmp_path):
    ctx_dir = tmp_path / "ctx"
    ctx_dir.mkdir()
    (tmp_path / "secret").write_text("host file")
    (ctx_dir / "ok.txt").write_text("ok")
    os.symlink("../secret", ctx_dir / "escape-rel")
    os.symlink("/etc/passwd", ctx_dir / "escape-abs")
    os.symlink("ok.txt", ctx_dir / "inside")
    ctx = Context.open(ctx_dir)
    with pytest.raises(ContextError, match="outside the build context"):
        select_sources(["../secret"], SourceTree.of_context(ctx))
    with pytest.raises(ContextError, match="outside the build context"):
        select_sources(["escape-rel"], SourceTree.of_context(ctx))
    with pytest.raises(ContextError, match="outside the build context"):
        select_sources(["escape-abs"], SourceTree.of_context(ctx))
    # an absolute source is relative to the context root, as in docker: never the host's file
    with pytest.raises(CopyError, match="not found in the build context"):
        select_sources(["/etc/passwd"], SourceTree.of_context(ctx))
    sel = select_sources(["inside", "/ok.txt"], SourceTree.of_context(ctx))
    assert [i.rel for i in sel.items] == ["inside", "ok.txt"]


def test_ignored_sources_are_not_found(tmp_path):
    ctx_dir = tmp_path / "ctx"
    ctx_dir.mkdir()
    (ctx_dir / "keep.txt").write_text("k")
    (ctx_dir / "drop.txt").write_text("d")
    (ctx_dir / ".dockerignore").write_text("drop.txt\n")
    ctx = Context.open(ctx_dir)
    with pytest.raises(CopyError, match="drop.txt: not found"):
        select_sources(["drop.txt"], SourceTree.of_context(ctx))
    assert [i.rel for i in select_sources(["*.txt"], SourceTree.of_context(ctx)).items] == ["keep.txt"]
    # <Dockerfile>.dockerignore wins over .dockerignore
    df = ctx_dir / "build.Dockerfile"
    df.write_text("FROM scratch\n")
    (ctx_dir / "build.Dockerfile.dockerignore").write_text("keep.txt\n")
    ctx2 = Context.open(ctx_dir, df)
    assert ctx2.ignored("keep.txt") and not ctx2.ignored("drop.txt")


@pytest.mark.parametrize("spec,before,is_dir,after", [
    ("0755", 0o644, False, 0o755),
    ("u+x", 0o644, False, 0o744),
    ("go-w", 0o666, False, 0o644),
    ("a=r", 0o777, False, 0o444),
    ("u=rwx,g=rx,o=", 0o000, False, 0o750),
    ("a+X", 0o644, True, 0o755),
    ("a+X", 0o644, False, 0o644),
    ("u+s", 0o755, False, 0o4755),
])
def test_chmod_octal_and_symbolic(spec, before, is_dir, after):
    assert parse_chmod(spec)(before, is_dir) == after


def test_chmod_rejects_garbage():
    with pytest.raises(CopyError):
        parse_chmod("u*x")
    with pytest.raises(CopyError):
        parse_chmod("99999")


def test_import_changes_use_the_build_handlers():
    cfg = apply_changes(ContainerConfig(Env=["PATH=/bin"]), [
        'ENV PATH=$PATH:/opt/bin LANG=C.UTF-8', 'EXPOSE 80 5000-5001/udp', 'CMD ["sh"]',
        'ENTRYPOINT ["/init"]', 'WORKDIR /srv', 'WORKDIR app', 'USER 1000:1000',
        'LABEL a=b "c d"="e f"', 'STOPSIGNAL SIGINT', 'VOLUME /data',
        'HEALTHCHECK --interval=5s --retries=3 CMD curl -f http://localhost/',
        'ONBUILD RUN echo hi'])
    assert cfg.Env == ["PATH=/bin:/opt/bin", "LANG=C.UTF-8"]
    assert cfg.ExposedPorts == {"80/tcp": {}, "5000/udp": {}, "5001/udp": {}}
    assert cfg.Cmd == ["sh"] and cfg.Entrypoint == ["/init"]   # CMD set before ENTRYPOINT stays
    assert cfg.WorkingDir == "/srv/app" and cfg.User == "1000:1000"
    assert cfg.Labels == {"a": "b", "c d": "e f"} and cfg.StopSignal == "SIGINT"
    assert cfg.Volumes == {"/data": {}} and cfg.OnBuild == ["RUN echo hi"]
    assert cfg.Healthcheck == {"Test": ["CMD-SHELL", "curl -f http://localhost/"],
                               "Interval": 5_000_000_000, "Retries": 3}
    with pytest.raises(PybuildError, match="RUN is not allowed"):
        apply_changes(ContainerConfig(), ["RUN true"])
    with pytest.raises(PybuildError, match="--change 1:1"):
        apply_changes(ContainerConfig(), ["CMDD x"])
