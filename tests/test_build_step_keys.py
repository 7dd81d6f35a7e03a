"""Step cache keys are persisted: in every store's cache/entries and in every remote cache
(--cache-to) a fleet shares. A change of how any op computes its key silently turns every
user's cache cold, so the keys of each step kind are pinned here (values recorded from the
solver before its step logic moved into builder/steps ops)."""

from __future__ import annotations

import hashlib
import json
import textwrap

from buildpeer import import_busybox, steps

SCRATCH_DOCKERFILE = """\
FROM scratch AS src
COPY a.txt /src/a.txt

FROM scratch
ARG V=1
ENV A=$V B="two words"
LABEL org.example.x=y
EXPOSE 80 53/udp
VOLUME /data
MAINTAINER someone
SHELL ["/bin/ash", "-c"]
STOPSIGNAL SIGTERM
HEALTHCHECK --interval=5s CMD ["true"]
ONBUILD RUN echo hi
USER 1:1
ENTRYPOINT ["/bin/x"]
CMD ["y"]
WORKDIR /app
WORKDIR /app
COPY a.txt .
COPY --chmod=600 --chown=2:3 sub /s/
ADD sub/b.txt /added
COPY --from=src /src/a.txt /fromstage
COPY --from=other o.txt /o
COPY <<EOT /heredoc.txt
hello $V
EOT
WORKDIR rel
ENV C=3
"""

# every step of SCRATCH_DOCKERFILE (metadata kinds, WORKDIR with and without a layer,
# COPY from the context, a stage, a named context and a heredoc, ADD), with --build-arg V=7
SCRATCH_KEYS = sorted("""
17f01dffa11b23b6a5c7f27fa8f4ee84ca26e3bddcd10ef34546544f9c995e95
22d4eded731e97e2e8fa2860b5ecbd6d93da4c1c8ff21b6cb8e4154ff8fecf98
2af3973c37aa073d410bdb90f9eeb0cfc9f7bcb1d31dcd21e0027f75f111fb06
2ca8e0b3cd700b3944c7d435ff7b1bbcb20c2280d7d35579d5a52871d0b28b83
2ef6d76e3aeb8132fc0ee9838749d8766e2a4182288874b752386a7c66cf8560
50027f84475bb17153de9ed84b91e83a346279bc77290e15ea82ea67a50d0de4
52ffa4e7865f3556914eef3f08ffe236c53f2f2b1ca5a4dcf286f059753b987c
57a7d3c63174a9b1fdb3b508dad2136382c95d44691405a9aaae24f57e2807d7
5a233439e2638a8916ccbdd4f4df522d80bdaabf8ada6bc686455fd04e560c6b
5e8ba7f35f1ce41191d89f65ce3a7324c708372cd8d7e27d8bfe742aaad3b023
6200e8efbf3272afe10a8e7b88a191f8981990ad51a086f8ef8da0c7dceccd01
6585735080a3ae96bf7277ded8c642ec1d3d11d47e40b4bed9a663e7cc2d7a15
6b1f7d9aedc6262755ee87dabc03fb6703c2fc680771147f2274bf237a32dd33
7f32a0eb3bf3264671ad32b8c13a3da1925833faeda57f9f501c02d7205401f6
8d53621df8e8a1d4c58d0e49df0e8bf12a719a19bea4cd94b56a61e834a46eb4
9503cda8899eb9c3bcefe2acc86ebab03d3ec82905acec02e908d32bf45799be
965a57c5c57cb449eef4e542a5842507f1072a1813c1a07fe80951faea1a7e81
9a1017cf2da82db22255528533b60adf20a37d48e33326ba76e3bce142b6f270
a030ed7662522701d2dbdc9cbb0856b3bc9acb8c8eb05ece49908ea51c584a54
bd85b0517a97e0bb2085d2fd46d756040a834a7d7927eb51adb2255a16129772
c86b4f4117310aa20b51055b40f80752fdb72b7f3c6c1bb44f071f4741c7bcbf
de3718d688bd731680aead686641d4a7c22fca2e4db7aa270544f2ad40b1f90d
e7ad17b42fb8e36e8a096874f98163bc11b3f7906c0cdac05b2fed308361148d
e83058cdfacf50720e9f5fddc54a1cc77d52e40fbeebf62b25122a8631ff5314
""".split())


def _entries(store_root) -> list[str]:
    return sorted(p.stem for p in (store_root / "cache" / "entries").glob("*/*.json"))


def test_scratch_step_keys_are_pinned(pybuild, store_root, tmp_path):
    ctx = tmp_path / "ctx"
    (ctx / "sub").mkdir(parents=True)
    other = tmp_path / "other"
    other.mkdir()
    (ctx / "Dockerfile").write_text(SCRATCH_DOCKERFILE)
    for path, text in ((ctx / "a.txt", "alpha\n"), (ctx / "sub" / "b.txt", "beta\n"),
                       (other / "o.txt", "other\n")):
        path.write_text(text)
        path.chmod(0o644)
    for d in (ctx, ctx / "sub", other):
        d.chmod(0o755)
    p = pybuild("build", "--progress", "plain", "--build-context", f"other={other}",
                "--build-arg", "V=7", "-t", "k", ctx)
    assert set(steps(p.stderr).values()) == {"DONE"}
    assert _entries(store_root) == SCRATCH_KEYS
    again = pybuild("build", "--progress", "plain", "--build-context", f"other={other}",
                    "--build-arg", "V=7", "-t", "k", ctx)
    assert "(0 steps run, 24 cached)" in again.stderr + again.stdout
    assert _entries(store_root) == SCRATCH_KEYS


def _key(parent: str, step: str, args: dict[str, str], inputs: str = "") -> str:
    # the formula of builder/cache.py step_key, written out: it is part of the pin
    doc = json.dumps({"parent": parent, "step": step, "args": sorted(args.items()),
                      "inputs": inputs}, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(doc.encode()).hexdigest()


def test_run_step_keys_are_pinned(pybuild, store_root, busybox_rootfs, tmp_path):
    """RUN needs a base with a shell, whose digest varies: its keys are pinned as the
    formula over the base image's key (plain, build arg used, --network=none, heredoc)."""
    import_busybox(pybuild, busybox_rootfs, tmp_path)
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    (ctx / "Dockerfile").write_text(textwrap.dedent("""\
        FROM busybox
        RUN echo hi > /x
        ARG X=5
        RUN echo $X > /y
        RUN --network=none true
        RUN <<EOF
        echo a > /z
        EOF
        """))
    pybuild("build", "--progress", "plain", "-t", "r", ctx)
    digest = json.loads(pybuild("inspect", "busybox").stdout)[0]["Descriptor"]["digest"]
    no_inputs = hashlib.sha256(b"").hexdigest()
    sh = ["/bin/sh", "-c"]
    k0 = hashlib.sha256(f"image {digest} gzip".encode()).hexdigest()
    k1 = _key(k0, json.dumps([sh + ["echo hi > /x"], [], "private", []]), {}, no_inputs)
    k2 = _key(k1, "ARG X", {})
    k3 = _key(k2, json.dumps([sh + ["echo $X > /y"], [], "private", []]), {"X": "5"},
              no_inputs)
    mount_none = json.dumps([sh + ["true"], [], "none", []])
    k4 = _key(k3, mount_none, {"X": "5"}, no_inputs)
    k5 = _key(k4, json.dumps([sh + ["echo a > /z\n"], [], "private", []]), {"X": "5"},
              no_inputs)
    assert _entries(store_root) == sorted([k1, k2, k3, k4, k5])


def test_ops_do_not_import_the_solver():
    """Layers: the ops in builder/steps get what they need through their context;
    importing every one of them must not pull in builder/build.py."""
    import subprocess
    import sys
    from pathlib import Path

    repo = Path(__file__).resolve().parent.parent
    mods = sorted(p.stem for p in (repo / "builder" / "steps").glob("*.py"))
    assert {"base", "ops", "meta", "workdir", "copyop", "run"} <= set(mods)
    code = ("import importlib, sys\n"
            f"for m in {mods!r}: importlib.import_module('builder.steps.' + m)\n"
            "from builder.steps.ops import op_for\n"
            "print('builder.build' in sys.modules)\n")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       cwd=repo, env={"PYTHONPATH": str(repo), "PATH": "/usr/bin:/bin"})
    assert p.returncode == 0, p.stderr
    assert p.stdout.strip() == "False"
