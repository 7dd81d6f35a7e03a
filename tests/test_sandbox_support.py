"""Shared helpers for the sandbox tests: a static syscall probe, spec shortcuts and a
snapshot of everything a container could leave behind (no tests live here)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from builder.sandbox import BindMount, DirRoot, Result, SandboxSpec, run
from builder.sandbox.cgroups import PREFIX, hierarchies
from tests.conftest import require_tool

# A static probe: each argument names one privileged operation to try; it prints
# "<name> ok" or "<name> <errno name>" so tests can assert the exact denial.
PROBE_C = r"""
#define _GNU_SOURCE
#include <errno.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <dirent.h>
#include <stdlib.h>
#include <unistd.h>
#include <sys/mount.h>
#include <sys/ptrace.h>
#include <sys/reboot.h>
#include <sys/swap.h>
#include <sys/syscall.h>
#include <sys/wait.h>

static void report(const char *name, long rc) {
    if (rc < 0) printf("%s %s\n", name, strerrorname_np(errno));
    else printf("%s ok\n", name);
}

int main(int argc, char **argv) {
    setvbuf(stdout, NULL, _IONBF, 0);
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "mount")) report(a, mount("none", "/mnt", "tmpfs", 0, NULL));
        else if (!strcmp(a, "unshare")) report(a, unshare(CLONE_NEWNS));
        else if (!strcmp(a, "keyctl")) report(a, syscall(SYS_keyctl, 0, -3, 1));
        else if (!strcmp(a, "ptrace1")) report(a, ptrace(PTRACE_ATTACH, 1, 0, 0));
        else if (!strcmp(a, "reboot")) report(a, reboot(RB_DISABLE_CAD));
        else if (!strcmp(a, "swapon")) report(a, swapon("/dev/null", 0));
        else if (!strcmp(a, "chroot")) report(a, chroot("/"));
        else if (!strcmp(a, "io_uring")) {   /* io_uring_setup(1, &params): 425 on x86_64 */
            char params[120] = {0};
            report(a, syscall(425, 1, params));
        }
        else if (!strcmp(a, "fds")) {
            DIR *d = opendir("/proc/self/fd");
            struct dirent *e;
            printf("fds");
            while ((e = readdir(d))) {
                if (e->d_name[0] == '.' || atoi(e->d_name) == dirfd(d)) continue;
                printf(" %s", e->d_name);
            }
            printf("\n");
            closedir(d);
        } else if (!strcmp(a, "forks")) {
            int n = 0;
            for (;;) {
                pid_t p = fork();
                if (p == 0) { pause(); _exit(0); }
                if (p < 0) break;
                n++;
            }
            printf("forks %d %s\n", n, strerrorname_np(errno));
            kill(0, SIGKILL);
        } else printf("%s unknown\n", a);
    }
    return 0;
}
"""

PROBE_PATH = "/usr/local/bin/sbxprobe"


@pytest.fixture(scope="session")
def probe(tmp_path_factory) -> Path:
    """The probe compiled statically, so it runs in a busybox rootfs."""
    gcc = require_tool("gcc")
    d = tmp_path_factory.mktemp("probe")
    (d / "probe.c").write_text(PROBE_C)
    subprocess.run([gcc, "-static", "-O1", "-o", str(d / "sbxprobe"), str(d / "probe.c")],
                   check=True, capture_output=True)
    return d / "sbxprobe"


def spec(root: Path, script: str, probe: Path | None = None, **kw) -> SandboxSpec:
    mounts = list(kw.pop("mounts", []))
    if probe is not None:
        mounts.append(BindMount(probe, PROBE_PATH, readonly=True))
    kw.setdefault("stdio", "pipe")
    kw.setdefault("timeout", 60)
    return SandboxSpec(root=kw.pop("root_plan", DirRoot(root)), argv=["sh", "-c", script],
                       mounts=mounts, **kw)


def sh(root: Path, script: str, probe: Path | None = None, **kw) -> Result:
    return run(spec(root, script, probe, **kw))


def out(r: Result) -> str:
    assert r.stdout is not None
    return r.stdout.decode()


def _children(pid: int) -> set[int]:
    kids = set()
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    stat = f.read()
            except OSError:
                continue
            if int(stat.rpartition(")")[2].split()[1]) == pid:
                kids.add(int(entry))
    return kids


def _cgroup_of(pid: str) -> str:
    try:
        with open(f"/proc/{pid}/cgroup") as f:
            return f.read()
    except OSError:
        return ""


def residue(ids: list[str], paths: list[Path] = ()) -> dict[str, object]:
    """What containers with these ids might leave: mounts (in any process's view) under
    their state dirs or `paths`, cgroups, processes, network namespaces, state dirs.
    Scoped to our ids because other test sessions may run containers meanwhile."""
    short = [i[:12] for i in ids]
    marks = [str(p) for p in paths] + [f"pybuild-{s}" for s in short]
    mounts = []
    for pid in [p for p in os.listdir("/proc") if p.isdigit()]:
        try:
            with open(f"/proc/{pid}/mountinfo") as f:
                for line in f:
                    point = line.split()[4]
                    if any(m in point for m in marks) or any(m in line for m in marks[len(paths):]):
                        mounts.append(point)
        except OSError:
            continue
    cgroups = sorted(
        os.path.join(h.base, name)
        for h in {h.base: h for h in hierarchies().values()}.values()
        for name in os.listdir(h.base) if name.startswith(PREFIX) and name[len(PREFIX):] in ids)
    procs = sorted(p for p in os.listdir("/proc") if p.isdigit()
                   and any(f"{PREFIX}{i}" in _cgroup_of(p) for i in ids))
    own_net = os.readlink("/proc/self/ns/net")
    foreign_net = set()
    for pid in _children(os.getpid()):
        try:
            if os.readlink(f"/proc/{pid}/ns/net") != own_net:
                foreign_net.add(pid)
        except OSError:
            pass
    state = sorted(p for p in os.listdir("/tmp") if any(p.startswith(f"pybuild-{s}-") for s in short))
    return {"mounts": sorted(set(mounts)), "cgroups": cgroups, "processes": procs,
            "children": sorted(_children(os.getpid())), "foreign_net": sorted(foreign_net),
            "state_dirs": state}


def clean() -> dict[str, object]:
    return {"mounts": [], "cgroups": [], "processes": [], "children": [], "foreign_net": [],
            "state_dirs": []}
