"""docker's container lifecycle commands: create, start (-a, -i), restart, attach, rename,
pause/unpause, top, port, stats --no-stream, logs -t/--since/--until, stop -t, kill -s.
Every test leaves the host as it found it (test_run_support.host_resources)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from datetime import datetime, timedelta, timezone

import pytest

from conftest import REPO
from test_run_support import host_resources, run_store  # noqa: F401  (fixture)

NONE = ("--network", "none")
# written to a temp file and renamed: a freeze between `>`'s truncate and the write must
# not leave an empty /n for the test to read
COUNTER = 'i=0; while :; do i=$((i+1)); echo $i > /n.tmp; mv /n.tmp /n; sleep 0.05; done'


def _cgroups_of(ids: set[str]) -> list[str]:
    found = []
    for top, dirnames, _ in os.walk("/sys/fs/cgroup"):
        found += [os.path.join(top, d) for d in dirnames if d.removeprefix("pybuild-") in ids]
    return found


@pytest.fixture
def cli(run_store):
    """The shared busybox store; afterwards every container is gone and nothing leaked
    (the host-wide counts of cgroups, netns and veths also move with other tests running
    beside us: the cgroups checked are those named for this store's containers)."""
    mine = ("mounts", "processes", "files")
    yield run_store
    ids = run_store("ps", "-aq", "--no-trunc", check=False).stdout.split()
    if ids:
        run_store("rm", "-f", *ids, check=False)
    deadline = time.monotonic() + 10   # an owner that recorded the exit may still be exiting
    while True:
        after = host_resources(run_store.root)
        if not any(after[k] for k in mine) or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert {k: after[k] for k in mine} == {k: 0 for k in mine}
    assert _cgroups_of(set(ids)) == []


def _inspect(cli, ref) -> dict:
    return json.loads(cli("inspect", ref).stdout)[0]


def test_create_then_start_attached_exit_code(cli):
    cid = cli("create", *NONE, "--name", "c1", "busybox", "sh", "-c",
              "echo out; echo err >&2; exit 5").stdout.strip()
    assert re.fullmatch(r"[0-9a-f]{64}", cid)
    ps = cli("ps", "-a").stdout
    assert "c1" in ps and "Created" in ps and "c1" not in cli("ps").stdout
    assert _inspect(cli, "c1")["State"]["Status"] == "created"
    # a created container outlives its creator: a later ps does not reclaim it
    assert "Created" in cli("ps", "-a").stdout
    p = cli("start", "-a", "c1", check=False)
    assert (p.returncode, p.stdout, p.stderr) == (5, "out\n", "err\n")
    assert "Exited (5)" in cli("ps", "-a").stdout
    # an exited container starts again, from the same files
    p = cli("start", "-a", "c1", check=False)
    assert p.returncode == 5 and p.stdout == "out\n"
    assert cli("logs", "c1").stdout == "out\nout\n"


def test_create_shares_run_options_and_refuses_detach(cli):
    cli("create", *NONE, "--name", "opts", "-e", "X=1", "-w", "/tmp", "-l", "k=v", "busybox",
        "sh", "-c", "echo $X; pwd")
    info = _inspect(cli, "opts")
    assert "X=1" in info["Config"]["Env"] and info["Config"]["Labels"] == {"k": "v"}
    assert cli("start", "-a", "opts").stdout == "1\n/tmp\n"
    p = cli("create", "-d", "busybox", "true", check=False)
    assert p.returncode != 0 and "-d" in p.stderr


def test_start_interactive_feeds_stdin(cli):
    cli("create", *NONE, "-i", "--name", "ci", "busybox", "tr", "a-z", "A-Z")
    p = cli("start", "-i", "ci", input="hello\n")
    assert p.returncode == 0 and p.stdout == "HELLO\n"


def test_start_detached_and_restart_keeps_name_new_started_at(cli):
    cli("create", *NONE, "--name", "rs", "busybox", "sleep", "300")
    assert cli("start", "rs").stdout == "rs\n"
    first = _inspect(cli, "rs")
    assert first["State"]["Running"] is True
    assert cli("start", "rs").returncode == 0        # already running: nothing happens
    assert _inspect(cli, "rs")["State"]["StartedAt"] == first["State"]["StartedAt"]
    cli("restart", "-t", "1", "rs")
    second = _inspect(cli, "rs")
    assert second["State"]["Running"] is True and second["Id"] == first["Id"]
    assert second["Name"] == "/rs" and second["State"]["Pid"] != first["State"]["Pid"]
    assert second["State"]["StartedAt"] > first["State"]["StartedAt"]
    assert len(cli("ps", "-q").stdout.split()) == 1


def test_create_rm_is_removed_after_its_start(cli):
    cid = cli("create", *NONE, "--rm", "busybox", "sh", "-c", "exit 0").stdout.strip()
    assert cid[:12] in cli("ps", "-aq").stdout
    assert cli("start", "-a", cid).returncode == 0
    assert cli("ps", "-aq").stdout.strip() == ""


def test_attach_sees_output_and_exit_code(cli):
    cli("run", *NONE, "-d", "--name", "at", "busybox", "sh", "-c",
        "sleep 3; echo one; echo two >&2; exit 7")
    p = cli("attach", "at", check=False)
    assert (p.returncode, p.stdout, p.stderr) == (7, "one\n", "two\n")
    p = cli("attach", "at", check=False)
    assert p.returncode != 0 and "start it first" in p.stderr


def test_rename(cli):
    cli("run", *NONE, "-d", "--name", "old", "busybox", "sleep", "300")
    cli("rename", "old", "new")
    names = cli("ps").stdout
    assert re.search(r"\bnew$", names, re.M) and not re.search(r"\bold$", names, re.M)
    p = cli("inspect", "old", check=False)
    assert p.returncode != 0
    assert _inspect(cli, "new")["Name"] == "/new"
    cli("run", *NONE, "-d", "--name", "other", "busybox", "sleep", "300")
    p = cli("rename", "other", "new", check=False)
    assert p.returncode != 0 and "already in use" in p.stderr
    assert cli("rename", "new", "new", check=False).returncode != 0
    # the old name is free again, and the owner's exit record keeps the new name
    cli("stop", "-t", "0", "new")
    assert _inspect(cli, "new")["Name"] == "/new"
    cli("create", *NONE, "--name", "old", "busybox", "true")


def _counter(cli, ref) -> int:
    return int(cli("exec", ref, "cat", "/n").stdout)


def test_pause_unpause_and_stop_of_paused(cli):
    cli("run", *NONE, "-d", "--name", "pz", "busybox", "sh", "-c", COUNTER)
    time.sleep(0.5)
    cli("pause", "pz")
    assert "(Paused)" in cli("ps").stdout
    state = _inspect(cli, "pz")["State"]
    assert state["Status"] == "paused" and state["Paused"] is True
    # the counter file, read from the host through the container's upper dir
    upper = cli.root / "containers" / _inspect(cli, "pz")["Id"] / "upper" / "n"
    frozen = upper.read_text()
    time.sleep(0.6)
    assert upper.read_text() == frozen
    assert cli("pause", "pz", check=False).returncode == 1
    p = cli("exec", "pz", "true", check=False)
    assert p.returncode != 0 and "unpause" in p.stderr
    cli("unpause", "pz")
    assert "(Paused)" not in cli("ps").stdout
    time.sleep(0.5)
    assert _counter(cli, "pz") > int(frozen)
    assert cli("unpause", "pz", check=False).returncode == 1
    # docker's stop of a paused container: thawed, then signalled (sh as PID 1 ignores TERM)
    cli("pause", "pz")
    cli("stop", "-t", "1", "pz")
    assert _inspect(cli, "pz")["State"]["ExitCode"] == 137
    assert cli("pause", "pz", check=False).returncode == 1   # not running


def test_top_lists_only_the_container(cli):
    cli("run", *NONE, "-d", "--name", "tp", "busybox", "sh", "-c", "sleep 300 & sleep 301; echo done")
    time.sleep(0.3)
    out = cli("top", "tp").stdout.splitlines()
    assert re.match(r"UID\s+PID\s+PPID\s+C\s+STIME\s+TTY\s+TIME\s+CMD$", out[0])
    cmds = [ln.split()[7:] for ln in out[1:]]
    assert ["sleep", "300"] in cmds and ["sleep", "301"] in cmds
    assert len(out) == 4           # sh and the two sleeps: no host process
    pid = _inspect(cli, "tp")["State"]["Pid"]
    assert str(pid) in [ln.split()[1] for ln in out[1:]]
    # ps options, as docker passes them on
    aux = cli("top", "tp", "-o", "pid,comm").stdout.splitlines()
    assert aux[0].split() == ["PID", "COMMAND"] and len(aux) == 4
    cli("stop", "-t", "0", "tp")
    p = cli("top", "tp", check=False)
    assert p.returncode != 0 and "not running" in p.stderr


def test_port_lines(cli):
    cli("create", "--name", "pt", "-p", "127.0.0.1:18081:80", "-p", "18082:53/udp",
        "busybox", "true")
    lines = cli("port", "pt").stdout.splitlines()
    assert sorted(lines) == ["53/udp -> 0.0.0.0:18082", "80/tcp -> 127.0.0.1:18081"]
    assert cli("port", "pt", "80").stdout == "127.0.0.1:18081\n"
    assert cli("port", "pt", "53/udp").stdout == "0.0.0.0:18082\n"
    p = cli("port", "pt", "81", check=False)
    assert p.returncode != 0 and "81/tcp" in p.stderr


def test_stats_no_stream(cli):
    cli("run", *NONE, "-d", "--name", "st", "-m", "64m", "busybox", "sh", "-c",
        "x=$(head -c 2000000 /dev/zero | tr '\\0' a); sleep 300")
    time.sleep(0.5)
    out = cli("stats", "--no-stream", "st").stdout.splitlines()
    assert re.match(r"CONTAINER ID\s+NAME\s+CPU %\s+MEM USAGE / LIMIT\s+MEM %\s+NET I/O\s+"
                    r"BLOCK I/O\s+PIDS$", out[0])
    row = re.split(r"\s{2,}", out[1])
    assert row[1] == "st" and row[2].endswith("%")
    used, limit = row[3].split(" / ")
    m = re.fullmatch(r"([\d.]+)(B|KiB|MiB|GiB)", used)
    assert m and float(m[1]) > 0
    assert limit == "64MiB"
    assert re.fullmatch(r"[\d.]+%", row[4]) and int(row[7]) >= 1
    # without names: the running containers
    assert len(cli("stats", "--no-stream").stdout.splitlines()) == 2


def test_logs_timestamps_since_until(cli):
    cli("run", *NONE, "--name", "lg", "busybox", "sh", "-c", "echo early; sleep 1.2; echo late")
    stamped = cli("logs", "-t", "lg").stdout.splitlines()
    assert len(stamped) == 2
    stamps = []
    for line in stamped:
        m = re.fullmatch(r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{9}Z) (early|late)", line)
        assert m, line
        stamps.append(datetime.strptime(m[1][:26] + "Z", "%Y-%m-%dT%H:%M:%S.%fZ")
                      .replace(tzinfo=timezone.utc))
    middle = stamps[0] + (stamps[1] - stamps[0]) / 2
    assert cli("logs", "--since", middle.isoformat(), "lg").stdout == "late\n"
    assert cli("logs", "--until", middle.strftime("%Y-%m-%dT%H:%M:%S.%fZ"), "lg").stdout == "early\n"
    assert cli("logs", "--since", "10m", "lg").stdout == "early\nlate\n"
    assert cli("logs", "--since", str(int((stamps[1] + timedelta(seconds=5)).timestamp())),
               "lg").stdout == ""
    assert cli("logs", "--until", "2000-01-01", "lg").stdout == ""
    p = cli("logs", "--since", "yesterday-ish", "lg", check=False)
    assert p.returncode != 0 and "--since" in p.stderr and len(p.stderr.splitlines()) == 1


def test_stop_timeout_and_kill_signal(cli):
    cli("run", *NONE, "-d", "--name", "ig", "busybox", "sleep", "300")   # PID 1 ignores TERM
    cli("stop", "--timeout", "1", "ig")
    info = _inspect(cli, "ig")
    assert info["State"]["ExitCode"] == 137 and info["State"]["Running"] is False
    cli("start", "ig")
    cli("stop", "--time", "1", "ig")
    assert _inspect(cli, "ig")["State"]["ExitCode"] == 137
    cli("run", *NONE, "-d", "--name", "tr", "busybox", "sh", "-c",
        'trap "exit 12" USR1; while :; do sleep 0.1; done')
    cli("kill", "-s", "USR1", "tr")
    assert cli("wait", "tr").stdout.strip() == "12"


def test_concurrent_starts_run_one_copy(cli):
    """Two starts of one container at the same time: one runs it, the other finds it
    running (the directory lock), never two copies."""
    cli("create", *NONE, "--name", "once", "busybox", "sleep", "300")
    procs = [subprocess.Popen([sys.executable, "-m", "builder", "--root", str(cli.root),
                               "start", "once"], cwd=REPO, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(2)]
    for p in procs:
        p.communicate(timeout=60)
    assert len(cli("ps", "-q").stdout.split()) == 1
    assert len(cli("top", "once").stdout.splitlines()) == 2


def test_tampered_spec_is_a_one_line_error(cli):
    """spec.json is ours, in the private store; a damaged one still gets one clear line
    and rebuilds nothing but the sandbox's own dataclasses."""
    cid = cli("create", *NONE, "--name", "bad", "busybox", "true").stdout.strip()
    spec = cli.root / "containers" / cid / "spec.json"
    for text in ('{"spec": {"__type__": "Popen", "args": ["touch", "/tmp/pwned"]}}',
                 "not json", '{"spec": ' + "[" * 100000 + "]" * 100000 + "}",
                 " " * (5 << 20)):
        spec.write_text(text)
        p = cli("start", "bad", check=False)
        assert p.returncode != 0 and len(p.stderr.strip().splitlines()) == 1, p.stderr
        assert "spec.json" in p.stderr and "Traceback" not in p.stderr
    assert "Created" in cli("ps", "-a").stdout
