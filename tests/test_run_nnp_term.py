"""docker's defaults: no_new_privs is off unless `--security-opt no-new-privileges`, so a
setuid-root helper works in `run`, `exec` and RUN steps (seccomp, capabilities and masks
unchanged); `run -t` / `exec -t` set TERM=xterm unless the image or -e set TERM."""

from __future__ import annotations

import json
import subprocess

import pytest

from conftest import require_tool
from test_run_support import run_store, tag_configured  # noqa: F401  (fixture)

NONE = ("--network", "none")

# Prints its real and effective uid, NoNewPrivs and Seccomp from /proc/self/status, and
# what io_uring_setup (blocked by the default profile) returns. Static: runs on busybox.
SUID_C = r"""
#define _GNU_SOURCE
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>
#include <sys/syscall.h>

int main(void) {
    char line[256], nnp[32] = "?", sec[32] = "?", params[120] = {0};
    FILE *f = fopen("/proc/self/status", "r");
    while (f && fgets(line, sizeof line, f)) {
        sscanf(line, "NoNewPrivs: %31s", nnp);
        sscanf(line, "Seccomp: %31s", sec);
    }
    long rc = syscall(425, 1, params);   /* io_uring_setup on x86_64 */
    printf("uid=%d euid=%d nnp=%s seccomp=%s io_uring=%s\n", (int)getuid(), (int)geteuid(),
           nnp, sec, rc < 0 ? strerrorname_np(errno) : "ok");
    return 0;
}
"""

DOCKERFILE = """\
FROM busybox
COPY suidprobe /usr/local/bin/suidprobe
RUN chmod 4755 /usr/local/bin/suidprobe
USER 1000
RUN suidprobe > /tmp/in-build.txt
"""


def fields(line: str) -> dict[str, str]:
    return dict(kv.split("=", 1) for kv in line.split())


@pytest.fixture(scope="module")
def suid_image(run_store, tmp_path_factory):
    """`suid`: busybox with a setuid-root static helper and USER 1000; the helper's
    output in its own RUN step kept in /tmp/in-build.txt."""
    gcc = require_tool("gcc")
    ctx = tmp_path_factory.mktemp("suidctx")
    (ctx / "suidprobe.c").write_text(SUID_C)
    subprocess.run([gcc, "-static", "-O1", "-o", str(ctx / "suidprobe"), str(ctx / "suidprobe.c")],
                   check=True, capture_output=True)
    (ctx / "Dockerfile").write_text(DOCKERFILE)
    run_store("build", "--progress", "plain", "-t", "suid", ctx)
    return "suid"


def probe(cli, *flags: str) -> dict[str, str]:
    p = cli("run", "--rm", *NONE, *flags, "suid", "suidprobe")
    return fields(p.stdout)


def test_setuid_works_in_run_by_default(run_store, suid_image):
    assert probe(run_store) == {"uid": "1000", "euid": "0", "nnp": "0", "seccomp": "2",
                                "io_uring": "EPERM"}
    assert probe(run_store, "--security-opt", "no-new-privileges=false")["euid"] == "0"
    # the plain id shows no setuid effect: nothing else changed
    p = run_store("run", "--rm", *NONE, "suid", "sh", "-c",
                  "id -u; grep -E '^(CapEff|NoNewPrivs):' /proc/self/status | tr -d '\\t'")
    assert p.stdout.split() == ["1000", "CapEff:0000000000000000", "NoNewPrivs:0"]


# docker's spellings: bare, =BOOL (strconv.ParseBool) and the old ":" (compose files)
@pytest.mark.parametrize("opt", ["no-new-privileges", "no-new-privileges=true",
                                 "no-new-privileges:true", "no-new-privileges=1"])
def test_no_new_privileges_opt_in(run_store, suid_image, opt):
    assert probe(run_store, "--security-opt", opt) == {
        "uid": "1000", "euid": "1000", "nnp": "1", "seccomp": "2", "io_uring": "EPERM"}


def test_seccomp_loads_without_no_new_privs_for_root_too(run_store, suid_image):
    # root without CAP_SYS_ADMIN in its final set: the filter must go in before the
    # capabilities are dropped, or seccomp() fails with EACCES
    out = probe(run_store, "-u", "0")
    assert out == {"uid": "0", "euid": "0", "nnp": "0", "seccomp": "2", "io_uring": "EPERM"}
    out = probe(run_store, "-u", "0", "--cap-drop", "ALL")
    assert out["seccomp"] == "2" and out["io_uring"] == "EPERM" and out["nnp"] == "0"


def test_setuid_works_in_run_step(run_store, suid_image):
    # RUN steps: no_new_privs off, as BuildKit; the default profile still filters
    p = run_store("run", "--rm", *NONE, "suid", "cat", "/tmp/in-build.txt")
    assert fields(p.stdout) == {"uid": "1000", "euid": "0", "nnp": "0", "seccomp": "2",
                                "io_uring": "EPERM"}


def test_exec_follows_the_container(run_store, suid_image):
    names = {"nnp-off": (), "nnp-on": ("--security-opt", "no-new-privileges")}
    try:
        for name, flags in names.items():
            run_store("run", "-d", *NONE, "--name", name, *flags, "suid", "sleep", "60")
        off = fields(run_store("exec", "nnp-off", "suidprobe").stdout)
        on = fields(run_store("exec", "nnp-on", "suidprobe").stdout)
        assert off == {"uid": "1000", "euid": "0", "nnp": "0", "seccomp": "2", "io_uring": "EPERM"}
        assert on == {"uid": "1000", "euid": "1000", "nnp": "1", "seccomp": "2",
                      "io_uring": "EPERM"}
        opts = {name: json.loads(run_store("inspect", name).stdout)[0]["HostConfig"]["SecurityOpt"]
                for name in names}
        assert opts == {"nnp-off": [], "nnp-on": ["no-new-privileges"]}
    finally:
        run_store("rm", "-f", *names, check=False)


def test_tty_sets_term(run_store):
    def term(*flags: str, image: str = "busybox") -> str:
        p = run_store("run", "--rm", *NONE, *flags, image, "sh", "-c", 'echo "<${TERM-unset}>"')
        return p.stdout.strip()

    assert term("-t") == "<xterm>"
    assert term() == "<unset>"
    assert term("-t", "-e", "TERM=vt100") == "<vt100>"
    tag_configured(run_store.root, "busybox", "bbterm", Env=["TERM=screen"])
    assert term("-t", image="bbterm") == "<screen>"


def test_exec_tty_sets_term_not_recorded(run_store):
    try:
        run_store("run", "-d", "-t", *NONE, "--name", "termbox", "busybox", "sleep", "60")
        env = json.loads(run_store("inspect", "termbox").stdout)[0]["Config"]["Env"]
        assert not any(e.startswith("TERM=") for e in env)   # docker's Config.Env neither
        script = ("sh", "-c", 'echo "<${TERM-unset}>"')
        assert run_store("exec", "termbox", *script).stdout.strip() == "<unset>"
        assert run_store("exec", "-t", "termbox", *script).stdout.strip() == "<xterm>"
        assert run_store("exec", "-t", "-e", "TERM=dumb", "termbox",
                         *script).stdout.strip() == "<dumb>"
        # the container's own process got it from -t
        p = run_store("exec", "termbox", "sh", "-c", "tr '\\0' '\\n' < /proc/1/environ")
        assert "TERM=xterm" in p.stdout.split()
    finally:
        run_store("rm", "-f", "termbox", check=False)


def test_security_opt_spellings():
    from builder.runner.errors import RunError
    from builder.runner.options import RunOptions, parse_security_opt

    for text, want in (("no-new-privileges", True), ("no-new-privileges=true", True),
                       ("no-new-privileges:true", True), ("no-new-privileges=1", True),
                       ("no-new-privileges=False", False), ("no-new-privileges:false", False)):
        opts = RunOptions(image="x")
        parse_security_opt(text, opts)
        assert opts.no_new_privs is want, text
    assert RunOptions(image="x").no_new_privs is False
    for bad in ("no-new-privileges=", "no-new-privileges=yes", "no-new-privileges=true:x"):
        with pytest.raises(RunError, match="expected true or false"):
            parse_security_opt(bad, RunOptions(image="x"))
    # only the old form is cut at ":"; a profile path keeps its colons
    with pytest.raises(RunError, match="seccomp profile /no:such does not exist"):
        parse_security_opt("seccomp=/no:such", RunOptions(image="x"))
    opts = RunOptions(image="x")
    parse_security_opt("seccomp:unconfined", opts)
    assert opts.seccomp == "unconfined"
