"""`run -d --restart ...` and health checks, both carried out by the detached supervisor:
restart counts and backoff, stop ending a restart policy, docker's flag errors, health
status transitions through the one exec path, probe timeouts and bounded output, and
nothing left behind (mounts, cgroups, processes, files)."""

from __future__ import annotations

import json
import os
import re
import time

import pytest

from test_run_support import host_resources, run_store  # noqa: F401  (fixture)

NONE = ("--network", "none")
FAST = ("--health-interval", "1s", "--health-retries", "2")


def _inspect(cli, ref: str) -> dict:
    return json.loads(cli("inspect", ref).stdout)[0]


def _until(what, timeout: float = 30.0, step: float = 0.1):
    """Poll `what()` until it returns something true; that value (fails on timeout)."""
    deadline = time.monotonic() + timeout
    while True:
        value = what()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out waiting for {what.__doc__ or what}"
        time.sleep(step)


def _state(cli, ref: str) -> dict:
    return _inspect(cli, ref)["State"]


def _health(cli, ref: str) -> dict:
    return _state(cli, ref)["Health"]


def _residue(root, ids: list[str]) -> dict:
    """What the test's containers could leave: the store's mounts, processes and files
    (host_resources), and cgroups named after these containers (the host-wide counts of
    cgroups and veths also move with other stores' containers)."""
    now = host_resources(root)
    names = {f"pybuild-{i}" for i in ids}
    cgroups = sorted(os.path.join(d, n) for d, dirnames, _ in os.walk("/sys/fs/cgroup")
                     for n in dirnames if n in names)
    return {k: now[k] for k in ("mounts", "processes", "files")} | {"cgroups": cgroups}


@pytest.fixture
def clean(run_store):
    """The test's containers removed afterwards, and nothing of theirs left behind."""
    before = _residue(run_store.root, [])
    names: list[str] = []
    yield names
    ids = []
    for n in names:
        p = run_store("inspect", n, check=False)
        if p.returncode == 0:
            ids.append(json.loads(p.stdout)[0]["Id"])
            err = run_store.root / "containers" / ids[-1] / "supervisor.err"
            assert not err.exists(), err.read_text()     # the supervisor never crashed
        run_store("rm", "-f", n, check=False)

    def settled():
        return _residue(run_store.root, ids) == before
    try:
        _until(settled, timeout=10)
    except AssertionError:
        assert _residue(run_store.root, ids) == before


def test_restart_flag_errors(run_store):
    for args, text in (
            (("--rm", "--restart", "always"), "Conflicting options: --restart and --rm"),
            (("--restart", "on-failure:-1"), "maximum retry count cannot be negative"),
            (("--restart", "sometimes"), "unknown policy 'sometimes'"),
            (("--no-healthcheck", "--health-cmd", "true"), "--no-healthcheck conflicts"),
            (("--health-interval", "-1s", "--health-cmd", "true"), "cannot be negative"),
            (("--health-timeout", "5"), "invalid duration")):   # the rest: the units test
        p = run_store("run", *NONE, "-d", *args, "busybox", "true", check=False)
        assert p.returncode == 125, (args, p.stderr)
        assert len(p.stderr.strip().splitlines()) == 1 and text in p.stderr, (args, p.stderr)
    assert run_store("ps", "-aq").stdout.strip() == ""
    assert "host reboot" in run_store("run", "--help").stdout
    # without -d there is no supervisor to restart it: said, and it runs once
    p = run_store("run", *NONE, "--name", "fg", "--restart", "always", "busybox", "sh", "-c",
                  "exit 4", check=False)
    assert p.returncode == 4 and "--restart has no effect without -d" in p.stderr
    info = _inspect(run_store, "fg")
    assert info["RestartCount"] == 0 and info["HostConfig"]["RestartPolicy"]["Name"] == "always"
    run_store("rm", "fg")


def test_on_failure_restarts_exactly_max_times(run_store, clean):
    clean.append("r1")
    run_store("run", *NONE, "-d", "--restart", "on-failure:2", "--name", "r1", "busybox",
              "sh", "-c", "echo run; exit 3")

    def exited():
        st = _state(run_store, "r1")
        return st["Status"] == "exited" and st
    st = _until(exited)
    info = _inspect(run_store, "r1")
    assert info["RestartCount"] == 2 and st["ExitCode"] == 3
    assert info["HostConfig"]["RestartPolicy"] == {"Name": "on-failure", "MaximumRetryCount": 2}
    assert run_store("logs", "r1").stdout == "run\n" * 3     # one log across the 3 runs
    time.sleep(0.5)
    assert _inspect(run_store, "r1")["RestartCount"] == 2    # and no more


def test_always_restarts_after_success_until_stop(run_store, clean):
    clean.append("r2")
    run_store("run", *NONE, "-d", "--restart", "always", "--name", "r2", "busybox",
              "sh", "-c", "sleep 0.3; exit 0")
    _until(lambda: _inspect(run_store, "r2")["RestartCount"] >= 2)
    # while it waits to be restarted, ps says so, docker's way
    saw = _until(lambda: re.search(r"Restarting \(0\) .* ago",
                                   run_store("ps").stdout), timeout=30, step=0.02)
    assert saw
    run_store("stop", "r2")
    st = _state(run_store, "r2")
    assert st["Status"] == "exited" and not st["Running"]
    count = _inspect(run_store, "r2")["RestartCount"]
    time.sleep(1.5)                              # longer than the backoff reached so far
    after = _inspect(run_store, "r2")
    assert after["State"]["Status"] == "exited" and after["RestartCount"] == count
    assert "r2" not in run_store("ps").stdout


def test_stop_of_a_long_running_restarting_container_is_final(run_store, clean):
    clean.append("r3")
    run_store("run", *NONE, "-d", "--restart", "unless-stopped", "--stop-timeout", "1",
              "--name", "r3", "busybox", "sleep", "300")
    assert _state(run_store, "r3")["Running"]
    run_store("stop", "r3")
    time.sleep(0.5)
    info = _inspect(run_store, "r3")
    assert info["State"]["Status"] == "exited" and info["RestartCount"] == 0
    # kill (SIGKILL) of an always container: no restart either (docker's ExitOnNext)
    clean.append("r4")
    run_store("run", *NONE, "-d", "--restart", "always", "--name", "r4", "busybox", "sleep", "300")
    run_store("kill", "r4")
    _until(lambda: _state(run_store, "r4")["Status"] == "exited")
    time.sleep(0.5)
    assert _inspect(run_store, "r4")["RestartCount"] == 0


def test_health_starting_unhealthy_then_healthy(run_store, clean):
    clean.append("h1")
    # inside the start period (5 s) failures do not count: it stays "starting"
    run_store("run", *NONE, "-d", "--name", "h1", "--health-cmd", "test -f /tmp/ok", *FAST,
              "--health-start-period", "5s", "--health-start-interval", "1s",
              "busybox", "sleep", "300")
    h = _health(run_store, "h1")
    assert h["Status"] == "starting" and h["FailingStreak"] == 0
    assert "(health: starting)" in run_store("ps").stdout
    h = _until(lambda: (h := _health(run_store, "h1"))["Status"] == "unhealthy" and h)
    assert h["FailingStreak"] >= 2 and all(e["ExitCode"] == 1 for e in h["Log"])
    assert len(h["Log"]) >= 3          # the failures inside the start period are logged too
    assert "(unhealthy)" in run_store("ps").stdout
    assert run_store("exec", "h1", "touch", "/tmp/ok").returncode == 0
    h = _until(lambda: (h := _health(run_store, "h1"))["Status"] == "healthy" and h)
    assert h["FailingStreak"] == 0 and h["Log"][-1]["ExitCode"] == 0
    assert 0 < len(h["Log"]) <= 5 and h["Log"][-1]["Start"] <= h["Log"][-1]["End"]
    assert re.search(r"Up .* \(healthy\)", run_store("ps").stdout)
    cfg = _inspect(run_store, "h1")["Config"]["Healthcheck"]
    assert cfg == {"Test": ["CMD-SHELL", "test -f /tmp/ok"], "Interval": 10**9, "Retries": 2,
                   "StartPeriod": 5 * 10**9, "StartInterval": 10**9}
    run_store("stop", "-t", "1", "h1")
    assert _health(run_store, "h1")["Status"] == "unhealthy"   # docker's after a stop


def test_health_timeout_and_bounded_output(run_store, clean):
    clean.append("h2")
    run_store("run", *NONE, "-d", "--name", "h2", "--health-cmd", "sleep 100",
              "--health-timeout", "1s", *FAST, "busybox", "sleep", "300")
    h = _until(lambda: (h := _health(run_store, "h2"))["Log"] and h)
    entry = h["Log"][0]
    assert entry["ExitCode"] == -1
    assert entry["Output"] == "Health check exceeded timeout (1s)"
    _until(lambda: _health(run_store, "h2")["Status"] == "unhealthy")
    clean.append("h3")
    # 1 MB of output from the (untrusted) probe: docker's 4096 bytes and "..." are kept
    run_store("run", *NONE, "-d", "--name", "h3", "--health-cmd",
              "yes x | head -c 1000000; echo done >&2", *FAST, "busybox", "sleep", "300")
    h = _until(lambda: (h := _health(run_store, "h3"))["Status"] == "healthy" and h)
    out = h["Log"][-1]["Output"]
    assert len(out) == 4096 + 3 and out.endswith("...") and out.startswith("x\nx\n")
    assert len((run_store.root / "containers" / _inspect(run_store, "h3")["Id"]
                / "health.json").read_bytes()) < 64 << 10


def test_image_healthcheck_and_no_healthcheck(run_store, clean):
    from test_run_support import tag_configured

    tag_configured(run_store.root, "busybox", "bbhealth",
                   Healthcheck={"Test": ["CMD", "true"], "Interval": 10**9},
                   Cmd=["sleep", "300"])
    clean.extend(["h4", "h5"])
    run_store("run", *NONE, "-d", "--name", "h4", "bbhealth")
    _until(lambda: _health(run_store, "h4")["Status"] == "healthy")
    run_store("run", *NONE, "-d", "--name", "h5", "--no-healthcheck", "bbhealth")
    info = _inspect(run_store, "h5")
    assert "Health" not in info["State"] and info["Config"]["Healthcheck"] == {"Test": ["NONE"]}
    assert re.search(r"Up [^(]*$", [ln for ln in run_store("ps").stdout.splitlines()
                                    if ln.endswith("h5")][0])


def test_policy_backoff_and_merge_units(tmp_path):
    from builder.runner import health, restart
    from builder.runner.errors import RunError

    assert restart.parse("on-failure:2") == restart.RestartPolicy("on-failure", 2)
    assert restart.parse("unless-stopped").inspect() == {"Name": "unless-stopped",
                                                         "MaximumRetryCount": 0}
    for bad, text in (("on-failure:-1", "cannot be negative"),
                      ("always:1", "can only be used with 'on-failure'"),
                      ("no:-1", "'on-failure' and cannot be negative"),
                      ("x", "unknown policy 'x'"), (":1", "no policy provided before colon"),
                      ("on-failure:1x", "must be an integer"),
                      ("on-failure:99999999999", "out of range")):
        with pytest.raises(RunError, match=re.escape(text)):
            restart.parse(bad)
    with pytest.raises(RunError, match="--health-retries cannot be negative"):
        health.parse_flags("true", None, None, None, None, -2, False)
    pol = restart.RestartPolicy("on-failure", 2)
    assert [restart.should_restart(pol, 1, n, False) for n in range(3)] == [True, True, False]
    assert not restart.should_restart(pol, 0, 0, False)
    assert restart.should_restart(restart.RestartPolicy("always"), 0, 99, False)
    assert not restart.should_restart(restart.RestartPolicy("always"), 1, 0, True)   # stopped
    b = restart.Backoff()
    assert [b.next(0.1) for _ in range(4)] == [0.1, 0.2, 0.4, 0.8]
    assert b.next(10.0) == 0.1                   # a run of 10 s resets it
    assert max(b.next(0) for _ in range(40)) == 60.0
    # docker's merge: a flag wins, what is unset comes from the image
    image = {"Test": ["CMD", "true"], "Interval": 5 * 10**9, "Retries": 7}
    flags = health.parse_flags(None, "1s", None, None, None, None, False)
    assert health.merged_config(image, flags) == {"Test": ["CMD", "true"], "Interval": 10**9,
                                                  "Retries": 7}
    assert health.merged_config(image, None) == image
    off = health.parse_flags(None, None, None, None, None, None, True)
    assert health.merged_config(image, off) == {"Test": ["NONE"]}
    assert health.probe_argv({"Test": ["CMD-SHELL", "x"]}, None) == ["/bin/sh", "-c", "x"]
    assert health.probe_argv({"Test": ["CMD-SHELL", "x"]}, ["/bin/ash", "-ec"]) == ["/bin/ash",
                                                                                 "-ec", "x"]
    assert health.probe_argv({"Test": ["BOGUS", "x"]}, None) is None
    assert [health.go_duration_text(s) for s in (1, 1.5, 90, 0.5, 3600)] == \
        ["1s", "1.5s", "1m30s", "500ms", "1h0m0s"]
    with pytest.raises(RunError, match="cannot be less than 1ms"):
        health.parse_flags("true", "1us", None, None, None, None, False)
    # health.json is ours, but read with a bound all the same: junk or a huge file is no health
    (tmp_path / health.HEALTH_FILE).write_text("[1, 2")
    assert health.read(tmp_path) is None
    (tmp_path / health.HEALTH_FILE).write_bytes(b" " * (2 << 20) + b"{}")
    assert health.read(tmp_path) is None


def test_probe_output_is_inert_text(run_store, clean):
    """Control bytes, invalid UTF-8 and JSON-looking text from the probe stay a string."""
    clean.append("h6")
    cmd = r"""printf '\033[2J\377\376"}{"Status":"healthy"\n'; exit 1"""
    run_store("run", *NONE, "-d", "--name", "h6", "--health-cmd", cmd, *FAST, "busybox",
              "sleep", "300")
    h = _until(lambda: (h := _health(run_store, "h6"))["Status"] == "unhealthy" and h)
    out = h["Log"][-1]["Output"]
    assert out.startswith("\x1b[2J\ufffd\ufffd\"}{") and h["Log"][-1]["ExitCode"] == 1
    assert "\x1b" not in run_store("inspect", "h6").stdout     # escaped in the JSON
