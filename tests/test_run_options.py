"""Unit tests of run-flag parsing and docker's config composition rules."""

from __future__ import annotations

import pytest

from builder.runner.create import compose_argv, working_dir
from builder.runner.errors import RunError
from builder.runner.options import (build_options, parse_env, parse_env_file, parse_mount,
                                    parse_publish, parse_signal, parse_size, parse_tmpfs,
                                    parse_ulimit, parse_volume)
from layerstore.model import ContainerConfig


def test_sizes():
    assert parse_size("64m", "--memory") == 64 << 20
    assert parse_size("1g", "--memory") == 1 << 30
    assert parse_size("512k", "x") == 512 << 10
    assert parse_size("100", "x") == 100
    for bad in ("", "m", "-1m", "12q", "0"):
        with pytest.raises(RunError):
            parse_size(bad, "--memory")


def test_volume_specs():
    v = parse_volume("/host:/ctr:ro")
    assert (v.type, v.source, v.target, v.readonly) == ("bind", "/host", "/ctr", True)
    v = parse_volume("data:/var/lib/data")
    assert (v.type, v.source, v.readonly) == ("volume", "data", False)
    v = parse_volume("/anon")
    assert (v.type, v.source) == ("volume", "")
    for bad in ("/h:rel", "/h:/c:xx", "a:b:c:d", "../up:/c", "bad name:/c", ":/c"):
        with pytest.raises(RunError, match="invalid"):
            parse_volume(bad)


def test_mount_and_tmpfs_specs():
    m = parse_mount("type=bind,source=/src,target=/dst,readonly")
    assert (m.type, m.source, m.target, m.readonly) == ("bind", "/src", "/dst", True)
    m = parse_mount("type=tmpfs,target=/t,tmpfs-size=1m,tmpfs-mode=700")
    assert (m.size, m.mode) == (1 << 20, 0o700)
    t = parse_tmpfs("/tmp:size=2m,mode=1777")
    assert (t.target, t.size, t.mode) == ("/tmp", 2 << 20, 0o1777)
    for bad in ("type=nfs,target=/x", "type=bind,source=rel,target=/x", "type=volume",
                "type=bind,source=/a,target=/b,color=red"):
        with pytest.raises(RunError):
            parse_mount(bad)
    with pytest.raises(RunError):
        parse_tmpfs("/tmp:uid=5")


def test_publish_specs():
    p = parse_publish("8080:80")
    assert (p.host_ip, p.host_port, p.container_port, p.proto) == ("0.0.0.0", 8080, 80, "tcp")
    p = parse_publish("127.0.0.1:53:5353/udp")
    assert (p.host_ip, p.host_port, p.container_port, p.proto) == ("127.0.0.1", 53, 5353, "udp")
    assert parse_publish("80").host_port == 0
    for bad in ("70000:80", "80/sctp", "x:80", "1.2.3:80:80"):
        with pytest.raises(RunError):
            parse_publish(bad)


def test_signals_ulimits_env(tmp_path):
    assert parse_signal("SIGTERM") == 15 and parse_signal("kill") == 9 and parse_signal("10") == 10
    with pytest.raises(RunError):
        parse_signal("SIGNOPE")
    u = parse_ulimit("nofile=100:200")
    assert (u.name, u.soft, u.hard) == ("nofile", 100, 200)
    for bad in ("nofile", "bogus=1", "nofile=9:3", "nofile=a"):
        with pytest.raises(RunError):
            parse_ulimit(bad)
    assert parse_env(["A=1", "B", "C"], {"B": "host"}) == {"A": "1", "B": "host"}
    f = tmp_path / "env"
    f.write_text("# c\n\nX=1\nY = 2\n")
    with pytest.raises(RunError, match=r"env:4:1"):
        parse_env_file(f)


def test_log_options():
    o = build_options("img", [], log_opt=("max-size=1k", "max-file=2"))
    assert (o.log_max_size, o.log_max_files) == (1024, 2)
    for bad in ("max-size=", "max-file=0", "mode=fast"):
        with pytest.raises(RunError, match="--log-opt"):
            build_options("img", [], log_opt=(bad,))


def test_build_options_limits():
    o = build_options("img", ["a"], memory="64m", memory_swap="-1", cpus="0.5", pids_limit="50",
                      security_opt=("seccomp=unconfined", "no-new-privileges"))
    assert (o.memory, o.memory_swap, o.cpus, o.pids_limit) == (64 << 20, -1, 0.5, 50)
    assert o.seccomp == "unconfined" and o.no_new_privs
    for kwargs in ({"memory": "1k"}, {"memory_swap": "1g"}, {"cpus": "0"}, {"pids_limit": "x"},
                   {"network": "bridge2"}, {"security_opt": ("apparmor=x",)},
                   {"hostname": "bad_host!"}, {"stop_signal": "NOPE"}):
        with pytest.raises(RunError):
            build_options("img", [], **kwargs)


def test_entrypoint_cmd_composition():
    cfg = ContainerConfig(Entrypoint=["/ep"], Cmd=["a", "b"])
    assert compose_argv(cfg, [], None) == ["/ep", "a", "b"]
    assert compose_argv(cfg, ["x"], None) == ["/ep", "x"]
    assert compose_argv(cfg, [], "/other") == ["/other"]          # --entrypoint resets Cmd
    assert compose_argv(cfg, ["y"], "/other") == ["/other", "y"]
    assert compose_argv(cfg, ["sh"], "") == ["sh"]                # --entrypoint "" clears it
    with pytest.raises(RunError, match="no command"):
        compose_argv(ContainerConfig(), [], None)
    assert working_dir(ContainerConfig(WorkingDir="srv"), None) == "/srv"
    with pytest.raises(RunError, match="absolute"):
        working_dir(ContainerConfig(), "rel")


def test_names_with_a_trailing_newline_are_refused():
    """Python's `$` matches before a final newline: every name check must refuse one."""
    from pathlib import Path

    from builder.runner.options import check_container_name, check_volume_name
    from builder.sandbox.spec import DirRoot, SandboxError, SandboxSpec

    for check in (check_volume_name, check_container_name):
        with pytest.raises(RunError):
            check("name\n")
    for kw in ({"hostname": "h\n"}, {"id": "abc\n"}):
        with pytest.raises(SandboxError):
            SandboxSpec(root=DirRoot(Path("/")), argv=["true"], **kw).validate()
