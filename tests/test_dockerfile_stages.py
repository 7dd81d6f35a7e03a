"""Stage graph semantics: ARG scoping, expansion targets, dependencies, pruning, ONBUILD."""

from __future__ import annotations

import re

import pytest

from builder.dockerfile import (Copy, DockerfileError, Env, Expose, Label, Run, Platform, User, Volume,
                                Workdir, parse_dockerfile, plan_stages, replay_onbuild)


def plan(text: str, **kw):
    return plan_stages(parse_dockerfile(text), **kw)


def test_global_arg_is_usable_in_from_only_until_redeclared():
    g = plan("ARG TAG=3.19\nARG IMG=alpine:${TAG}\nFROM $IMG AS base\n"
             "RUN echo $TAG\nENV A=${TAG}-x\nARG TAG\nENV B=${TAG}-y\n")
    stage = g.stages[0]
    assert stage.base.kind == "image" and stage.base.ref == "alpine:3.19"
    assert stage.from_.image == "alpine:3.19"
    env = dict(p for i in stage.instructions if isinstance(i, Env) for p in i.pairs)
    assert env == {"A": "-x", "B": "3.19-y"}      # TAG only after the re-declaration
    run = next(i for i in stage.instructions if isinstance(i, Run))
    assert run.command == ["echo $TAG"]            # shell form RUN is never expanded by the builder


def test_build_args_override_defaults_and_scope_per_stage():
    text = "FROM a AS one\nARG V=default\nLABEL v=$V\nFROM b AS two\nLABEL v=$V\nARG V\nLABEL w=$V\n"
    g = plan(text, build_args={"V": "given"})
    labels = [[p for i in s.instructions if isinstance(i, Label) for p in i.pairs] for s in g.stages]
    assert labels == [[("v", "given")], [("v", ""), ("w", "given")]]
    g = plan(text)
    labels = [[p for i in s.instructions if isinstance(i, Label) for p in i.pairs] for s in g.stages]
    assert labels == [[("v", "default")], [("v", ""), ("w", "")]]
    assert g.stages[0].args == {"V": "default"}


def test_env_wins_over_arg_and_is_inherited_by_stage_bases():
    g = plan("FROM a AS base\nENV X=env\nARG X=arg\nWORKDIR /$X\n"
             "FROM base\nUSER ${X}\n")
    assert next(i for i in g.stages[0].instructions if isinstance(i, Workdir)).value == "/env"
    assert next(i for i in g.stages[1].instructions if isinstance(i, User)).value == "env"


def test_predefined_platform_args():
    text = ("FROM --platform=$BUILDPLATFORM golang AS build\nARG TARGETARCH\nARG TARGETOS\n"
            "ENV GOARCH=$TARGETARCH GOOS=$TARGETOS NOTDECLARED=x$TARGETVARIANT\n"
            "FROM alpine:${TARGETARCH}\n")
    g = plan(text, platform="linux/arm64/v8", build_platform="linux/amd64")
    assert g.stages[0].platform == "linux/amd64"
    env = dict(p for i in g.stages[0].instructions if isinstance(i, Env) for p in i.pairs)
    assert env == {"GOARCH": "arm64", "GOOS": "linux", "NOTDECLARED": "x"}
    assert g.stages[1].base.ref == "alpine:arm64"
    # normalized as BuildKit does (docker/buildx#1652): arm64's v8 is implied, TARGETVARIANT ""
    assert str(g.target_platform) == "linux/arm64"
    assert plan(text).build_platform == Platform.host()


def test_expansion_applies_to_docker_positions_only():
    g = plan('FROM a\nARG P=8080 D=/data U=app S=SIGTERM\n'
             'COPY --chown=$U:$U --chmod=755 src/${P} ${D}/\nADD x${P} $D\n'
             'EXPOSE $P ${P}/udp\nVOLUME ["$D", "/v"]\nUSER $U\nSTOPSIGNAL $S\n'
             'LABEL "k-$P"="v $U"\nWORKDIR $D\nCMD echo $P\nENTRYPOINT ["$P"]\n'
             'RUN --mount=type=cache,target=$D/cache,id=c$P echo $P\n'
             'HEALTHCHECK CMD curl $P\nONBUILD RUN echo $P\nSHELL ["/bin/sh", "-c$P"]\n')
    ins = {type(i).__name__: i for i in g.stages[0].instructions}
    copy = ins["Copy"]
    assert (copy.sources, copy.dest, copy.chown, copy.chmod) == (["src/8080"], "/data/", "app:app", "755")
    assert (ins["Add"].sources, ins["Add"].dest) == (["x8080"], "/data")
    assert ins["Expose"].ports == ["8080", "8080/udp"]
    assert ins["Volume"].paths == ["/data", "/v"]
    assert ins["User"].value == "app" and ins["StopSignal"].value == "SIGTERM"
    assert ins["Label"].pairs == [("k-8080", "v app")]
    assert ins["Workdir"].value == "/data"
    assert ins["Cmd"].command == ["echo $P"] and ins["Cmd"].prepend_shell
    assert ins["Entrypoint"].command == ["$P"] and not ins["Entrypoint"].prepend_shell
    run = ins["Run"]
    assert run.command == ["echo $P"]
    assert (run.mounts[0].type, run.mounts[0].target, run.mounts[0].id) == ("cache", "/data/cache", "c8080")
    assert ins["Healthcheck"].test == ["CMD-SHELL", "curl $P"]
    assert ins["OnBuild"].expression == "RUN echo $P"
    assert ins["Shell"].command == ["/bin/sh", "-c$P"]


def test_dependencies_and_pruning():
    text = ("FROM alpine AS a\nFROM a AS b\nRUN --mount=from=c,target=/c true\n"
            "FROM scratch AS c\nCOPY --from=0 /x /x\nCOPY --from=nginx:1 /y /y\n"
            "FROM busybox AS d\nCOPY --from=b / /\n")
    g = plan(text)
    assert [s.base.kind for s in g.stages] == ["image", "stage", "scratch", "image"]
    assert g.stages[1].base.stage == 0
    assert sorted(g.stages[1].depends_on) == [0, 2]
    assert g.stages[2].depends_on == [0] and g.stages[2].images == ["nginx:1"]
    assert g.order == [0, 2, 1, 3]
    pruned = plan(text, target="C")
    assert pruned.order == [0, 2] and pruned.target == 2
    assert [s.index for s in pruned.needed()] == [0, 2]
    assert plan(text, target="a").order == [0]


def test_stage_named_like_its_image_is_not_a_self_reference():
    g = plan("FROM golang AS golang\nRUN true\nFROM golang\n")
    assert g.stages[0].base.kind == "image"
    assert g.stages[1].base.kind == "stage"


def test_cycles_are_errors():
    with pytest.raises(DockerfileError, match=r"circular dependency detected on stage: a") as info:
        plan("FROM b AS a\nFROM a AS b\n")
    assert info.value.line == 1
    with pytest.raises(DockerfileError, match="circular dependency"):
        plan("FROM x AS a\nCOPY --from=b / /\nFROM x AS b\nCOPY --from=a / /\n")


def test_unknown_stages_are_errors():
    with pytest.raises(DockerfileError, match='target stage "nope" could not be found'):
        plan("FROM a AS x\n", target="nope")
    with pytest.raises(DockerfileError, match="invalid stage index 5") as info:
        plan("FROM a\nRUN true\nCOPY --from=5 / /\n")
    assert (info.value.line, info.value.column) == (3, 1)


def test_onbuild_triggers_replay_in_stages_built_on_them():
    g = plan("FROM a AS base\nARG V=1\nONBUILD COPY . /app\nONBUILD RUN make $V\n"
             "FROM base\nARG V=2\nRUN true\n")
    assert [t.keyword for t in g.stages[0].onbuild] == ["ONBUILD", "ONBUILD"]
    child = g.stages[1]
    assert [type(t).__name__ for t in child.triggers] == ["Copy", "Run"]
    assert isinstance(child.triggers[0], Copy) and child.triggers[0].dest == "/app"
    triggers = replay_onbuild(["RUN echo hi", "COPY --from=x a b"])
    assert [t.keyword for t in triggers] == ["RUN", "COPY"]
    assert triggers[1].from_ == "x"
    with pytest.raises(DockerfileError, match="isn't allowed as an ONBUILD trigger"):
        replay_onbuild(["FROM x"])


def test_undeclared_build_arg_is_a_warning():
    g = plan("ARG USED\nFROM a\nARG ALSO\n", build_args={"USED": "1", "ALSO": "2", "EXTRA": "3",
                                                        "HTTP_PROXY": "p", "TARGETARCH": "x"})
    assert g.warnings == ["one or more build-args [EXTRA] were not consumed"]
    assert g.proxy_env() == {"HTTP_PROXY": "p"}


def test_expose_and_volume_forms():
    g = plan("FROM a\nARG PORTS=\"80 443/tcp\"\nEXPOSE $PORTS 8000-8010\nVOLUME /a /b\n")
    ins = g.stages[0].instructions
    assert next(i for i in ins if isinstance(i, Expose)).ports == ["80", "443/tcp", "8000-8010"]
    assert next(i for i in ins if isinstance(i, Volume)).paths == ["/a", "/b"]


def test_heredoc_run_keeps_script_and_flags():
    df = parse_dockerfile("FROM a\nRUN --network=none <<EOF 3<<-'X'\necho $HOME\nEOF\n\tdata\nX\n")
    run = df.instructions[1]
    assert isinstance(run, Run) and run.network == "none"
    assert [(h.name, h.file_descriptor, h.expand, h.chomp) for h in run.heredocs] == \
        [("EOF", 0, True, False), ("X", 3, False, True)]
    assert run.heredocs[1].body() == "data\n"
    assert (run.line, run.end_line) == (2, 6)


def test_stage_name_warnings():
    g = plan("FROM a AS x\nFROM b AS x\nFROM c AS arm/v7\nCOPY --from=x / /\n")
    assert g.stages[2].depends_on == [0]                      # the first "x"
    assert len(g.warnings) == 2
    assert any(w.startswith("Dockerfile:2: duplicate stage name 'x'") for w in g.warnings)
    assert any(w.startswith("Dockerfile:3: stage name 'arm/v7' is not valid for BuildKit") for w in g.warnings)


@pytest.mark.parametrize("spec,ok", [("80", True), ("80/tcp", True), ("53/UDP", True), ("8000-8010/sctp", True),
                                     ("127.0.0.1:8080:80", True), ("65536", False), ("90-80", False),
                                     ("80/icmp", False), ("http", False), ("/", False)])
def test_expose_port_specs(spec, ok):
    text = f"FROM a\nARG P={spec}\nEXPOSE $P\n"
    if ok:
        assert plan(text).stages[0].instructions[1].ports == [spec]
    else:
        with pytest.raises(DockerfileError, match=f'invalid port "{re.escape(spec)}" in EXPOSE') as info:
            plan(text)
        assert (info.value.line, info.value.column) == (3, 1)
