"""--platform everywhere: docker's parsing and normalization, the platform in every key,
index selection, docker's mismatch error, and foreign architectures run through
qemu-user-static registered with binfmt_misc (fix-binary)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import tarfile
from pathlib import Path

import pytest

from conftest import CLI, REPO
from layerstore.errors import PybuildError
from layerstore.platforms import parse_platform

MKROOTFS = REPO / "sample-images" / "busybox" / "mkrootfs.sh"
NONE = ("--network", "none")


@pytest.mark.parametrize("text,want", [
    ("linux/amd64", "linux/amd64"), ("linux/x86_64", "linux/amd64"),
    ("linux/amd64/v1", "linux/amd64"), ("linux/amd64/v3", "linux/amd64/v3"),
    ("linux/arm64", "linux/arm64"), ("linux/arm64/v8", "linux/arm64"),
    ("linux/aarch64", "linux/arm64"), ("LINUX/ARM64", "linux/arm64"),
    ("linux/arm", "linux/arm/v7"), ("linux/arm/7", "linux/arm/v7"),
    ("linux/armhf", "linux/arm/v7"), ("linux/arm/v6", "linux/arm/v6"),
    ("linux/i386", "linux/386"), ("arm64", "linux/arm64"), ("linux/riscv64", "linux/riscv64"),
])
def test_platforms_are_normalized_as_containerd_does(text, want):
    assert str(parse_platform(text)) == want


@pytest.mark.parametrize("text,needle", [
    ("foo/bar", "unknown operating system 'foo'"), ("linux/bar", "unknown architecture 'bar'"),
    ("linux/amd64/v1/x", "expected os/arch[/variant]"), ("linux//amd64", "expected os/arch"),
    ("../../etc", "expected os/arch"), ("", "expected os/arch"),
    ("linux/amd64,linux/" + "a" * 100, "expected os/arch"),
])
def test_invalid_platforms_are_refused(text, needle):
    with pytest.raises(PybuildError, match=needle.replace("[", r"\[").replace("/", "/")):
        parse_platform(text)


def _rootfs_tar(dest: Path, arch: str | None) -> Path:
    root = dest / f"rootfs-{arch or 'host'}"
    subprocess.run(["sh", str(MKROOTFS), str(root), *([arch] if arch else [])], check=True)
    tar = dest / f"busybox-{arch or 'host'}.tar"
    with tarfile.open(tar, "w") as t:
        t.add(root, arcname=".")
    return tar


def _make_index(root: Path, name: str, members: list[str]) -> None:
    """`name` := an OCI index of the given single-platform images (docker's multi-arch base)."""
    from layerstore import mediatypes as mt
    from layerstore.model import Descriptor, Index, Platform
    from layerstore.store import Store

    store = Store.open(root)
    entries = []
    for m in members:
        img = store.resolve(m)
        cfg = img.config
        entries.append(Descriptor(img.descriptor.media_type, img.descriptor.digest,
                                  img.descriptor.size,
                                  platform=Platform(cfg.os, cfg.architecture, cfg.variant)))
    index = Index(manifests=entries)
    store.tag(name, store.put_json(index.to_bytes(), mt.OCI_INDEX))


@pytest.fixture(scope="module")
def plat(tmp_path_factory) -> CLI:
    base = tmp_path_factory.mktemp("platform")
    cli = CLI(base / "store")
    cli("import", _rootfs_tar(base, None), "bbamd")
    cli("import", "--platform", "linux/arm64", _rootfs_tar(base, "arm64"), "bbarm")
    _make_index(cli.root, "bbmulti", ["bbamd", "bbarm"])
    yield cli
    ids = cli("ps", "-aq", "--no-trunc", check=False).stdout.split()
    if ids:
        cli("rm", "-f", *ids, check=False)


def _ctx(tmp_path: Path, text: str, name: str = "ctx") -> Path:
    ctx = tmp_path / name
    ctx.mkdir()
    (ctx / "Dockerfile").write_text(text)
    return ctx


def _file(cli: CLI, image: str, path: str, *platform: str) -> str:
    return cli("run", "--rm", *NONE, *platform, image, "cat", path).stdout.strip()


def test_bad_platform_is_refused_before_any_step(plat: CLI, tmp_path):
    ctx = _ctx(tmp_path, "FROM bbamd\nRUN echo step-ran\n")
    for value, needle in (("foo/bar", "unknown operating system 'foo'"),
                          ("linux/bar", "unknown architecture 'bar'"),
                          ("windows/amd64", "linux images only")):
        p = plat("build", "--progress", "plain", "--platform", value, ctx, check=False)
        assert p.returncode == 1 and "step-ran" not in p.stderr, p.stderr
        assert p.stderr.strip().splitlines()[-1].startswith(f"pybuild: error: --platform"), p.stderr
        assert needle in p.stderr
    p = plat("run", "--rm", "--platform", "linux/bar", "bbamd", "true", check=False)
    assert p.returncode == 125 and "unknown architecture 'bar'" in p.stderr


def test_a_single_platform_base_of_another_platform_is_docker_s_error(plat: CLI, tmp_path):
    ctx = _ctx(tmp_path, "FROM bbamd\nRUN echo step-ran > /x\n")
    p = plat("build", "--progress", "plain", "--platform", "linux/arm64", "-t", "never", ctx,
             check=False)
    assert p.returncode == 1, p.stderr
    assert ("does not match the specified platform: wanted linux/arm64, actual: linux/amd64"
            in p.stderr), p.stderr
    assert "step-ran" not in p.stderr and "never" not in plat("images").stdout
    p = plat("run", "--rm", *NONE, "--platform", "linux/arm64", "bbamd", "true", check=False)
    assert p.returncode == 125 and "wanted linux/arm64, actual: linux/amd64" in p.stderr


def test_each_platform_of_an_index_base_builds_and_never_shares_a_cache_entry(plat: CLI,
                                                                             tmp_path):
    ctx = _ctx(tmp_path, "FROM bbmulti\nARG TARGETPLATFORM\n"
                         "RUN echo $TARGETPLATFORM $(uname -m) > /arch\n")
    amd = plat("build", "--progress", "plain", "--platform", "linux/amd64", "-t", "out:amd", ctx)
    arm = plat("build", "--progress", "plain", "--platform", "linux/arm64/v8", "-t", "out:arm",
               ctx)
    assert arm.stderr.strip().splitlines()[-1].endswith("(2 steps run, 0 cached)"), arm.stderr
    assert _file(plat, "out:amd", "/arch") == "linux/amd64 x86_64"
    assert _file(plat, "out:arm", "/arch", "--platform", "linux/arm64") == "linux/arm64 aarch64"
    cfg = json.loads(plat("inspect", "out:arm").stdout)[0]
    assert (cfg["Os"], cfg["Architecture"]) == ("linux", "arm64")
    # the same request again, spelled another way: cached (one key per platform)
    again = plat("build", "--progress", "plain", "--platform", "linux/aarch64", "-t", "out:arm",
                 ctx)
    assert "(0 steps run" in again.stderr, again.stderr


def test_run_platform_selects_from_an_index_and_emulates(plat: CLI):
    assert plat("run", "--rm", *NONE, "bbmulti", "uname", "-m").stdout.strip() == "x86_64"
    assert plat("run", "--rm", *NONE, "--platform", "linux/arm64", "bbmulti",
                "uname", "-m").stdout.strip() == "aarch64"
    # the binary really is aarch64: the kernel hands it to qemu, and `file` says so
    out = plat("run", "--rm", *NONE, "bbarm", "sh", "-c", "uname -m; echo ok").stdout.split()
    assert out == ["aarch64", "ok"]


def test_emulated_containers_keep_docker_s_confinement(plat: CLI):
    """The same capabilities, seccomp mode and no_new_privs under qemu-user as natively."""
    probe = "grep -E '^(CapEff|CapBnd|Seccomp|NoNewPrivs):' /proc/self/status"
    native = plat("run", "--rm", *NONE, "bbamd", "sh", "-c", probe).stdout
    emulated = plat("run", "--rm", *NONE, "bbarm", "sh", "-c", probe).stdout
    assert "Seccomp:\t2" in native and native == emulated


def test_the_emulator_is_the_host_s_never_one_the_image_planted(plat: CLI, tmp_path):
    """binfmt's F flag: the kernel opened qemu when the handler was registered. An image
    shipping its own file at the emulator's path must not have it run by the kernel."""
    from builder.sandbox import binfmt

    h = binfmt.handler("qemu-aarch64")
    assert h is not None and h.enabled and "F" in h.flags, h
    planted = h.interpreter.lstrip("/")
    ctx = _ctx(tmp_path, f"FROM bbarm\nRUN mkdir -p /{os.path.dirname(planted)} && "
                         f"printf '#!/bin/sh\\necho PLANTED > /planted-ran\\n' > /{planted} && "
                         f"chmod 755 /{planted}\n")
    plat("build", "--progress", "plain", "-t", "planted", ctx)
    out = plat("run", "--rm", *NONE, "planted", "sh", "-c",
               "uname -m; ls /planted-ran 2>/dev/null || echo none").stdout.split()
    assert out == ["aarch64", "none"]


def test_a_handler_without_fix_binary_is_refused(plat: CLI):
    """Without F the kernel looks the emulator up inside the container's root: refused
    with what to do. The host's handler is restored afterwards."""
    from builder.sandbox import binfmt

    entry = binfmt.BINFMT_DIR / "qemu-aarch64"
    line = binfmt._conf_line("aarch64")
    head, _, flags = line.rpartition(":")
    entry.write_text("-1")
    try:
        (binfmt.BINFMT_DIR / "register").write_text(f"{head}:{flags.replace('F', '')}")
        p = plat("run", "--rm", *NONE, "bbarm", "true", check=False)
        assert p.returncode == 125 and "lacks the F (fix-binary) flag" in p.stderr, p.stderr
        assert len(p.stderr.strip().splitlines()) == 1
    finally:
        if entry.exists():
            entry.write_text("-1")
        binfmt.ensure("linux/arm64")       # pybuild registers its own, with F
    assert "F" in binfmt.handler("qemu-aarch64").flags
    assert plat("run", "--rm", *NONE, "bbarm", "uname", "-m").stdout.strip() == "aarch64"


def test_history_platform_picks_from_an_index(plat: CLI):
    host = plat("history", "-q", "--no-trunc", "bbmulti").stdout.split()
    arm = plat("history", "-q", "--no-trunc", "--platform", "linux/arm64", "bbmulti").stdout.split()
    assert host[0] == json.loads(plat("inspect", "bbamd").stdout)[0]["Id"]
    assert arm[0] == json.loads(plat("inspect", "bbarm").stdout)[0]["Id"] != host[0]
    p = plat("history", "--platform", "linux/s390x", "bbmulti", check=False)
    assert p.returncode == 1 and "no image for platform linux/s390x" in p.stderr


def test_save_and_load_keep_every_platform_of_an_index(plat: CLI, tmp_path):
    archive = tmp_path / "multi.tar"
    plat("save", "-o", archive, "bbmulti")
    other = CLI(tmp_path / "other")
    other("load", "-i", archive)
    assert other("run", "--rm", *NONE, "--platform", "linux/arm64", "bbmulti",
                 "uname", "-m").stdout.strip() == "aarch64"
    assert other("run", "--rm", *NONE, "bbmulti", "uname", "-m").stdout.strip() == "x86_64"
    raw = subprocess.run(["skopeo", "inspect", "--raw", f"oci-archive:{archive}"],
                         capture_output=True, text=True, check=True).stdout
    arches = sorted(m["platform"]["architecture"] for m in json.loads(raw)["manifests"])
    assert arches == ["amd64", "arm64"]


# --- several platforms in one build ---------------------------------------------------

from test_registry_helpers import registry  # noqa: E402,F401  (fixture)

MULTI = ("FROM bbmulti\nARG TARGETPLATFORM\n"
         "RUN echo $TARGETPLATFORM $(uname -m) > /arch\n")


def _index(root: Path, name: str) -> dict:
    from layerstore.store import Store

    store = Store.open(root)
    desc = store.refs.get(name)
    return json.loads(store.blobs.read(desc.digest, limit=1 << 20))


def test_several_platforms_make_one_index(plat: CLI, tmp_path):
    ctx = _ctx(tmp_path, MULTI)
    p = plat("build", "--progress", "plain", "--platform", "linux/amd64,linux/arm64",
             "-t", "multi:1", ctx)
    # BuildKit's labels: each step names its platform
    assert re.search(r"^#\d+ \[linux/amd64 2/3\] ARG TARGETPLATFORM$", p.stderr, re.M), p.stderr
    assert re.search(r"^#\d+ \[linux/arm64 3/3\] RUN echo", p.stderr, re.M), p.stderr
    index = _index(plat.root, "docker.io/library/multi:1")
    plats = [(m["platform"]["os"], m["platform"]["architecture"]) for m in index["manifests"]]
    assert plats == [("linux", "amd64"), ("linux", "arm64")]
    assert _file(plat, "multi:1", "/arch") == "linux/amd64 x86_64"
    assert _file(plat, "multi:1", "/arch", "--platform", "linux/arm64") == "linux/arm64 aarch64"
    # skopeo reads the store (an OCI layout) and picks each platform
    ref = f"oci:{plat.root}:docker.io/library/multi:1"
    raw = json.loads(subprocess.run(["skopeo", "inspect", "--raw", ref], check=True,
                                    capture_output=True, text=True).stdout)
    assert raw["mediaType"] == "application/vnd.oci.image.index.v1+json"
    arm = json.loads(subprocess.run(["skopeo", "--override-arch", "arm64", "inspect", ref],
                                    check=True, capture_output=True, text=True).stdout)
    assert arm["Architecture"] == "arm64"
    # no per-platform leftovers among the images: the index holds them
    assert "<none>" not in plat("images").stdout
    # the same build again: every step of both platforms cached
    again = plat("build", "--progress", "plain", "--platform", "linux/arm64,linux/amd64",
                 "-t", "multi:1", ctx)
    assert again.stderr.strip().splitlines()[-1].endswith("(0 steps run, 4 cached)"), again.stderr


def test_build_platform_stages_run_natively_once_per_target(plat: CLI, tmp_path):
    ctx = _ctx(tmp_path, "FROM --platform=$BUILDPLATFORM bbamd AS build\nARG TARGETARCH\n"
                         "RUN echo built-on-$(uname -m)-for-$TARGETARCH > /out\n"
                         "FROM bbmulti\nCOPY --from=build /out /out\n")
    plat("build", "--progress", "plain", "--platform", "linux/amd64,linux/arm64",
         "-t", "cross:1", ctx)
    assert _file(plat, "cross:1", "/out") == "built-on-x86_64-for-amd64"
    assert _file(plat, "cross:1", "/out", "--platform", "linux/arm64") == \
        "built-on-x86_64-for-arm64"


def test_several_platforms_refuse_single_platform_outputs(plat: CLI, tmp_path):
    ctx = _ctx(tmp_path, "FROM bbmulti\nRUN echo step-ran\n")
    for out in ("type=docker,dest=x.tar", "type=local,dest=outdir", "type=tar,dest=x.tar"):
        p = plat("build", "--progress", "plain", "--platform", "linux/amd64,linux/arm64",
                 "-o", out, ctx, check=False)
        assert p.returncode == 1 and "holds one platform" in p.stderr, p.stderr
        assert "step-ran" not in p.stderr
    p = plat("build", "--platform", "linux/amd64,,linux/arm64", ctx, check=False)
    assert p.returncode == 1 and "empty platform" in p.stderr


def test_a_pushed_index_pulls_back_for_one_platform(plat: CLI, tmp_path, registry):
    ctx = _ctx(tmp_path, MULTI)
    target = f"{registry.host}/team/multi:1"
    plat("build", "--progress", "plain", "--platform", "linux/amd64,linux/arm64",
         "-t", target, "--push", ctx)
    fresh = CLI(tmp_path / "fresh")
    fresh("pull", "--platform", "linux/arm64", target)
    assert fresh("run", "--rm", *NONE, "--platform", "linux/arm64", target,
                 "cat", "/arch").stdout.strip() == "linux/arm64 aarch64"


def test_several_platforms_as_buildah_builds_them(plat: CLI, tmp_path):
    """buildah bud --platform A,B --manifest: the same platforms, the same files."""
    from buildpeer import Buildah

    ctx = _ctx(tmp_path, f"FROM oci:{plat.root}:docker.io/library/bbmulti:latest\n"
                         "ARG TARGETPLATFORM\nRUN echo $TARGETPLATFORM $(uname -m) > /arch\n")
    (tmp_path / "pyctx").mkdir()
    (tmp_path / "pyctx" / "Dockerfile").write_text(MULTI)
    bud = Buildah(tmp_path / "buildah")
    try:
        bud("bud", "--runtime", "runc", "--network", "none", "--platform",
            "linux/amd64,linux/arm64", "--manifest", "peer", str(ctx))
        peer = json.loads(bud("manifest", "inspect", "peer").stdout)
        peer_plats = sorted((m["platform"]["os"], m["platform"]["architecture"])
                            for m in peer["manifests"])
        peer_files = {}
        for arch in ("amd64", "arm64"):
            c = bud("from", "--arch", arch, "peer").stdout.strip()
            peer_files[arch] = bud("run", "--runtime", "runc", c, "cat", "/arch").stdout.strip()
            bud("rm", c)
    finally:
        bud.cleanup()
    plat("build", "--progress", "plain", "--platform", "linux/amd64,linux/arm64", "-t", "ours",
         tmp_path / "pyctx")
    ours = _index(plat.root, "docker.io/library/ours:latest")
    assert sorted((m["platform"]["os"], m["platform"]["architecture"])
                  for m in ours["manifests"]) == peer_plats == [("linux", "amd64"),
                                                                ("linux", "arm64")]
    for arch in ("amd64", "arm64"):
        assert _file(plat, "ours", "/arch", "--platform", f"linux/{arch}") == peer_files[arch]


def _fresh_with_bases(plat: CLI, tmp_path, name: str) -> CLI:
    archive = tmp_path / f"{name}-bases.tar"
    plat("save", "-o", archive, "bbmulti")
    fresh = CLI(tmp_path / name)
    fresh("load", "-i", archive)
    return fresh


def test_one_cache_ref_serves_every_platform(plat: CLI, tmp_path, registry):
    """--cache-to of a multi-platform build keeps every platform's records in one ref;
    --cache-from of it serves each platform (buildx keeps one: docker/buildx#1044)."""
    ctx = _ctx(tmp_path, MULTI)
    ref = f"{registry.host}/team/cache:multi"
    plat("build", "--progress", "plain", "--platform", "linux/amd64,linux/arm64",
         "--cache-to", f"type=registry,ref={ref},mode=max", "-t", "cached:1", ctx)
    for p, arch in (("linux/arm64", "aarch64"), ("linux/amd64", "x86_64")):
        fresh = _fresh_with_bases(plat, tmp_path, f"fresh-{p.replace('/', '-')}")
        out = fresh("build", "--progress", "plain", "--platform", p,
                    "--cache-from", f"type=registry,ref={ref}", "-t", "again", ctx)
        assert out.stderr.strip().splitlines()[-1].endswith("(0 steps run, 2 cached)"), out.stderr
        assert _file(fresh, "again", "/arch", "--platform", p) == f"{p} {arch}"


def test_per_platform_exports_to_one_ref_keep_each_other(plat: CLI, tmp_path, registry):
    """Two CI jobs, one per platform, exporting to the same ref: the second export keeps
    the first one's platform."""
    ctx = _ctx(tmp_path, MULTI)
    ref = f"{registry.host}/team/cache:jobs"
    for p in ("linux/arm64", "linux/amd64"):
        plat("build", "--progress", "plain", "--no-cache", "--platform", p,
             "--cache-to", f"type=registry,ref={ref}", "-t", f"job:{p.split('/')[1]}", ctx)
    fresh = _fresh_with_bases(plat, tmp_path, "fresh-jobs")
    for p in ("linux/arm64", "linux/amd64"):
        out = fresh("build", "--progress", "plain", "--platform", p,
                    "--cache-from", f"type=registry,ref={ref}", "-t", "again", ctx)
        assert out.stderr.strip().splitlines()[-1].endswith("(0 steps run, 2 cached)"), \
            (p, out.stderr)


# --- several platforms at once (up to --jobs) ------------------------------------------

# Each platform's RUN appends begin/end to a log in a cache mount both platforms share (by
# id). With /m/wait there, a step ends only once the other platform's step has begun:
# only builds that run at once get through (the bound is a safety net, not a timer). The
# image content is the same either way, so the two indexes must be the same bytes.
MEET = """\
FROM bbmulti
ARG TARGETARCH
RUN --mount=type=cache,target=/m,id=meet echo begin-$TARGETARCH >> /m/log; \\
    if [ -e /m/wait ]; then \\
      case $TARGETARCH in amd64) o=arm64;; *) o=amd64;; esac; i=0; \\
      while ! grep -q begin-$o /m/log && [ $i -lt 600 ]; do sleep 0.1; i=$((i+1)); done; \\
    fi; uname -m > /arch; echo end-$TARGETARCH >> /m/log
"""
BOTH = ("--platform", "linux/amd64,linux/arm64")


def _cache_dir(cli: CLI, cid: str) -> Path:
    """The host side of `RUN --mount=type=cache,id=cid`, emptied."""
    import shutil

    from builder.steps.mounts import cache_path

    d = cache_path(cli.root / "cache" / "mounts", cid)
    shutil.rmtree(d, ignore_errors=True)
    d.mkdir(parents=True)
    return d


def _digest(cli: CLI, name: str) -> str:
    from layerstore.store import Store

    return Store.open(cli.root).refs.get(name).digest


def _whole_lines(err: str) -> None:
    """Plain progress of concurrent builds: every line one event, never two run together."""
    for line in err.splitlines():
        assert re.fullmatch(r"#\d+ (\[linux/(amd64|arm64) \d/\d\] .*|DONE \d+\.\ds|CACHED|"
                            r"CANCELED|ERROR: .*|\d+\.\d{3} .*)|Successfully tagged .*|--> .*|"
                            r"sha256:[0-9a-f]{64}|-+| > .*|\d+\.\d{3} .*|.*\| .*|Dockerfile:\d+|ERROR: .*|"
                            r"pybuild: interrupted", line), line


def test_platforms_build_at_once_and_one_after_another_with_jobs_1(plat: CLI, tmp_path):
    ctx = _ctx(tmp_path, MEET)
    common = ("build", "--progress", "plain", "--no-cache", "--source-date-epoch", "0", *NONE,
              *BOTH)
    # --jobs 1: amd64's build, every line of it, before anything of arm64's
    m = _cache_dir(plat, "meet")
    seq = plat(*common, "--jobs", "1", "-t", "meet:seq", ctx)
    assert (m / "log").read_text().split() == ["begin-amd64", "end-amd64", "begin-arm64",
                                               "end-arm64"]
    lines = seq.stderr.splitlines()
    amd = {n for n in re.findall(r"^#(\d+) \[linux/amd64 ", seq.stderr, re.M)}
    first_arm = next(k for k, l in enumerate(lines) if "[linux/arm64 " in l)
    assert len(amd) == 3 and all(l.split()[0][1:] in amd for l in lines[:first_arm]), seq.stderr
    assert not any(l.split()[0][1:] in amd for l in lines[first_arm:] if l.startswith("#"))
    _whole_lines(seq.stderr)
    # the default (--jobs 4): both at once, each step waiting for the other to begin
    m = _cache_dir(plat, "meet")
    (m / "wait").touch()
    par = plat(*common, "-t", "meet:par", ctx)
    log = (m / "log").read_text().split()
    assert sorted(log[:2]) == ["begin-amd64", "begin-arm64"], log
    assert sorted(log[2:]) == ["end-amd64", "end-arm64"], log
    assert re.search(r"^#\d+ \[linux/arm64 3/3\] RUN --mount=type=cache", par.stderr, re.M)
    _whole_lines(par.stderr)
    # the same index, byte for byte: the same manifests for each platform
    assert _digest(plat, "docker.io/library/meet:par") == \
        _digest(plat, "docker.io/library/meet:seq")
    assert _file(plat, "meet:par", "/arch", "--platform", "linux/arm64") == "aarch64"


def _veths() -> set[str]:
    out = subprocess.run(["ip", "-o", "link", "show", "type", "veth"], capture_output=True,
                         text=True).stdout
    return {l.split(":")[1].strip().split("@")[0] for l in out.splitlines() if ":" in l}


def _after(check, tries: int = 50):
    """What `check()` gives once it is empty (other builds' state comes and goes)."""
    import time

    for _ in range(tries):
        left = check()
        if not left:
            break
        time.sleep(0.1)
    return left


def _build_until(plat: CLI, ctx: Path, ready, *args: str) -> subprocess.Popen:
    import signal
    import sys
    import time

    p = subprocess.Popen([sys.executable, "-m", "builder", "--root", str(plat.root), "build",
                          "--progress", "plain", *args, str(ctx)], cwd=REPO,
                         stderr=subprocess.PIPE, text=True,
                         env=dict(os.environ, PYTHONPATH=str(REPO), PYTHONFAULTHANDLER="1"),
                         preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.monotonic() + 60
    while not ready() and time.monotonic() < deadline and p.poll() is None:
        time.sleep(0.05)
    return p


def _finish(p: subprocess.Popen) -> str:
    import signal

    try:
        return p.communicate(timeout=30)[1]
    except subprocess.TimeoutExpired:
        p.send_signal(signal.SIGABRT)      # the stacks, for the report
        raise AssertionError(f"still running 30 s on:\n{p.communicate()[1][-6000:]}")


def _nothing_left(plat: CLI, before: dict, veths: set[str], sleeper: str) -> None:
    from buildpeer import processes_matching
    from test_build_output import _no_leftovers, _no_new_host_state

    assert _after(lambda: processes_matching(sleeper)) == []
    _no_new_host_state(before, plat.root)
    assert _after(lambda: _veths() - veths) == set()
    _no_leftovers(plat.root)
    assert plat("fsck").stdout.strip().endswith("clean")


def test_ctrl_c_cancels_every_platform_and_leaves_nothing(plat: CLI, tmp_path):
    import signal

    from test_build_run import _host_state

    ctx = _ctx(tmp_path, "FROM bbmulti\nARG TARGETARCH\n"
                         "RUN --mount=type=cache,target=/m,id=ctrlc touch /m/in-$TARGETARCH; "
                         "sleep 471; echo finished\n")
    m = _cache_dir(plat, "ctrlc")
    before, veths = _host_state(), _veths()
    # the default network: both platforms' steps on the build's one bridge
    p = _build_until(plat, ctx, lambda: (m / "in-amd64").exists() and (m / "in-arm64").exists(),
                     *BOTH, "--no-cache", "-t", "ctrlc")
    assert (m / "in-amd64").exists() and (m / "in-arm64").exists(), p.poll()
    p.send_signal(signal.SIGINT)
    err = _finish(p)
    assert p.returncode == 130, err
    runs = re.findall(r"^#(\d+) \[linux/(amd64|arm64) 3/3\] RUN", err, re.M)
    assert sorted(a for _, a in runs) == ["amd64", "arm64"], err
    for n, _ in runs:
        assert f"#{n} CANCELED" in err.splitlines(), err
    assert "pybuild: interrupted" in err and "ERROR" not in err and "137" not in err, err
    assert not re.search(r"^#\d+ [\d.]+ finished", err, re.M), err    # the output, not the command
    assert plat("inspect", "ctrlc", check=False).returncode == 1
    _whole_lines(err)
    _nothing_left(plat, before, veths, "sleep 471")


def test_a_failing_platform_cancels_the_others(plat: CLI, tmp_path):
    from test_build_run import _host_state

    step = ("touch /m/in-$TARGETARCH; if [ $TARGETARCH = arm64 ]; then i=0; "
            "while [ ! -e /m/in-amd64 ] && [ $i -lt 600 ]; do sleep 0.1; i=$((i+1)); done; "
            "echo arm-fails; exit 3; fi; sleep 472")
    ctx = _ctx(tmp_path, f"FROM bbmulti\nARG TARGETARCH\n"
                         f"RUN --mount=type=cache,target=/m,id=fails {step}\n")
    _cache_dir(plat, "fails")
    before, veths = _host_state(), _veths()
    p = plat("build", "--progress", "plain", "--no-cache", *NONE, *BOTH, "-t", "fails", ctx,
             check=False, timeout=120)
    err = p.stderr
    assert p.returncode == 1, err
    lines = err.rstrip("\n").splitlines()
    assert lines[-1] == (f'ERROR: failed to solve: process "/bin/sh -c {step}" did not complete '
                         "successfully: exit code: 3"), err
    # BuildKit's report of the failing step names its platform
    assert f" > [linux/arm64 3/3] RUN --mount=type=cache,target=/m,id=fails {step}:" in lines
    assert "Dockerfile:3" in lines and any(re.fullmatch(r"\d+\.\d{3} arm-fails", l)
                                           for l in lines), err
    arm = re.search(r"^#(\d+) \[linux/arm64 3/3\] RUN", err, re.M).group(1)
    amd = re.search(r"^#(\d+) \[linux/amd64 3/3\] RUN", err, re.M).group(1)
    assert f"#{arm} ERROR: process" in err and f"#{amd} CANCELED" in lines, err
    assert f"#{amd} ERROR" not in err
    assert plat("inspect", "fails", check=False).returncode == 1
    _whole_lines(err)
    _nothing_left(plat, before, veths, "sleep 472")


def test_the_tty_view_shows_every_platform_s_steps(plat: CLI, tmp_path):
    from test_build_output import _pty_run

    ctx = _ctx(tmp_path, MULTI)
    code, out = _pty_run(["--root", str(plat.root), "build", "--progress", "tty", *NONE,
                          "--no-cache", *BOTH, str(ctx)], timeout=60)
    assert code == 0, out[-3000:]
    final = out[out.rindex("[+] Building"):]
    assert re.search(r"^\[\+\] Building \d+\.\ds \(6/6\) FINISHED\s*$", final, re.M), final
    for arch in ("amd64", "arm64"):
        assert re.search(rf"^ => \[linux/{arch} 3/3\] RUN echo \$TARGETPLATFORM \$\(uname -m\) "
                         rf"> /arch\s+\d+\.\ds$", final, re.M), final


def test_a_layer_is_unpacked_once_when_two_builds_want_it_at_once(tmp_path):
    """Two platforms' builds (or stages) wanting the same base layer's snapshot: one
    unpacks it, the other waits for it instead of unpacking a second copy."""
    import threading

    from layerstore import digest as dg
    from layerstore.store import Store

    store = Store.open(tmp_path / "store")
    src = tmp_path / "src"
    src.mkdir()
    (src / "f").write_text("layer\n")
    layer, diff_id = store.commit_layer(src, overlay=False)
    chain_id = dg.chain_ids([diff_id])[0]
    opened, second = [], threading.Event()

    def open_layer():
        opened.append(1)
        if len(opened) > 1:
            second.set()
        else:
            second.wait(0.5)     # long enough for the other thread to get here: it must not
        return store.blobs.open(layer.digest)

    got = []
    threads = [threading.Thread(target=lambda: got.append(
        store.snapshots.ensure(chain_id, diff_id, open_layer))) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(opened) == 1 and got[0] == got[1] == store.snapshots.path(chain_id)
    assert (got[0] / "f").read_text() == "layer\n"
    assert not [e for e in os.listdir(store.snapshots.dir) if e.startswith(".tmp-")]


def test_a_base_both_platforms_build_on_is_pulled_once(plat: CLI, tmp_path, registry):
    """`FROM --platform=$BUILDPLATFORM IMAGE` in both platforms' builds, at once: one pull."""
    from test_registry_helpers import Proxy

    plat("push", "bbamd", f"{registry.host}/team/bbamd:1")
    proxy = Proxy(registry.port)
    try:
        ctx = _ctx(tmp_path, f"FROM --platform=$BUILDPLATFORM {proxy.host}/team/bbamd:1 AS b\n"
                             "ARG TARGETARCH\nRUN echo $TARGETARCH > /t\n"
                             "FROM scratch\nCOPY --from=b /t /t\n")
        fresh = CLI(tmp_path / "fresh")
        out = fresh("build", "--progress", "plain", *NONE, *BOTH, "-t", "pulled", ctx)
        gets = [s.path for s in proxy.seen if s.method == "GET" and "/blobs/" in s.path]
        assert len(gets) == len(set(gets)) == 2, gets      # its config and its layer, once
        assert re.search(r"^#\d+ \[linux/amd64->arm64 b 1/3\] FROM ", out.stderr, re.M), out.stderr
        index = _index(fresh.root, "docker.io/library/pulled:latest")
        assert [m["platform"]["architecture"] for m in index["manifests"]] == ["amd64", "arm64"]
    finally:
        proxy.stop()
