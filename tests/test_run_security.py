"""The sandbox issue's probes through `pybuild run`, and what --privileged, --cap-add,
--cap-drop and --security-opt change (exactly that, nothing else)."""

from __future__ import annotations

import os
import stat

from test_run_support import run_store  # noqa: F401  (fixture)

DOCKER_DEFAULT_CAPS = 0xA80425FB        # the 14 capabilities of docker's default set


def _own_bounding_set() -> int:
    with open("/proc/self/status") as f:
        return next(int(ln.split()[1], 16) for ln in f if ln.startswith("CapBnd:"))


ALL_CAPS = _own_bounding_set()          # --privileged: every capability we hold

PROBES = r"""
echo pid1=$$
grep -E '^(CapEff|CapPrm|CapBnd|CapInh|CapAmb|Seccomp|NoNewPrivs):' /proc/self/status | tr -d '\t'
echo timer_list=$(cat /proc/timer_list 2>/dev/null | wc -c)
echo firmware=$(ls /sys/firmware 2>/dev/null | wc -l)
echo hostproc=$(ls /proc | grep -c '^[0-9]')
(echo x > /proc/sys/kernel/domainname) 2>/dev/null; echo procsys=$?
mkdir -p /mnt; mount -t tmpfs t /mnt 2>/dev/null; echo mount=$?
unshare -m true 2>/dev/null; echo unshare=$?
swapon /dev/null 2>/dev/null; echo swapon=$?
chown 1 /tmp 2>/dev/null; echo chown=$?
echo sys=$(awk '$2 == "/sys" {print substr($4, 1, 2)}' /proc/mounts)
echo devices=$(find /dev -type b -o -type c | wc -l)
"""


def probe(cli, *flags: str) -> dict[str, str]:
    p = cli("run", "--rm", "--network", "none", *flags, "busybox", "sh", "-c", PROBES)
    return dict(line.split("=", 1) if "=" in line else line.split(":", 1)
                for line in p.stdout.splitlines() if line)


def caps(out: dict[str, str], key: str = "CapEff") -> int:
    return int(out[key], 16)


def test_default_probes(run_store):
    out = probe(run_store)
    assert out["pid1"] == "1"
    for key in ("CapEff", "CapPrm", "CapBnd"):
        assert caps(out, key) == DOCKER_DEFAULT_CAPS, key
    assert caps(out, "CapInh") == 0 and caps(out, "CapAmb") == 0
    assert out["Seccomp"] == "2" and out["NoNewPrivs"] == "0"   # docker's default
    # no leaked host fds: only stdio, besides the directory ls itself is reading
    listing = run_store("run", "--rm", "--network", "none", "busybox", "ls", "-l",
                        "/proc/self/fd").stdout
    fds = {ln.split()[-3] for ln in listing.splitlines() if "->" in ln and "/fd" not in ln}
    assert fds == {"0", "1", "2"}, listing
    assert out["timer_list"] == "0" and out["firmware"] == "0"      # masked
    assert int(out["hostproc"]) < 8                  # host processes invisible: only ours
    assert out["procsys"] != "0"                                     # /proc/sys read-only
    assert out["mount"] != "0" and out["unshare"] != "0" and out["swapon"] != "0"
    assert out["chown"] == "0"
    # a non-root user has an empty effective set
    user = probe(run_store, "-u", "1000")
    assert caps(user, "CapEff") == 0 and caps(user, "CapBnd") == DOCKER_DEFAULT_CAPS


def test_privileged(run_store):
    out = probe(run_store, "--privileged")
    assert caps(out) == ALL_CAPS and caps(out, "CapBnd") == ALL_CAPS
    assert out["Seccomp"] == "0" and out["NoNewPrivs"] == "0"
    assert out["mount"] == "0" and out["unshare"] == "0"
    # docker's --privileged also unmasks /proc, leaves /proc/sys and /sys writable and
    # gives the host's devices
    default = probe(run_store)
    assert int(out["timer_list"]) > 0 and out["timer_list"] != default["timer_list"]
    assert out["firmware"] == str(len(os.listdir("/sys/firmware")))
    assert out["procsys"] == "0" and default["procsys"] != "0"
    assert out["sys"] == "rw" and default["sys"] == "ro"
    host = sum(1 for _ in _host_device_nodes())
    assert int(default["devices"]) < 10 < host and int(out["devices"]) >= host - 1


def _host_device_nodes():
    """Character and block devices under the host's /dev, as --privileged copies them."""
    skip = {"pts", "shm", "fd", "mqueue", "console", "ptmx"}
    for top, dirs, files in os.walk("/dev"):
        dirs[:] = [d for d in dirs if d not in skip]
        for f in files:
            if f in skip:
                continue
            st = os.lstat(os.path.join(top, f))
            if stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode):
                yield os.path.join(top, f)


def test_cap_add_keeps_seccomp(run_store):
    out = probe(run_store, "--cap-add", "SYS_ADMIN")
    assert caps(out) == DOCKER_DEFAULT_CAPS | (1 << 21)
    assert out["Seccomp"] == "2"
    # docker's profile allows mount/unshare to a holder of CAP_SYS_ADMIN
    assert out["mount"] == "0" and out["unshare"] == "0"
    assert out["procsys"] != "0" and out["timer_list"] == "0"


def test_cap_drop_and_seccomp_unconfined(run_store):
    out = probe(run_store, "--cap-drop", "CHOWN")
    assert caps(out) == DOCKER_DEFAULT_CAPS & ~1 and out["chown"] != "0"
    assert caps(probe(run_store, "--cap-drop", "ALL")) == 0
    out = probe(run_store, "--security-opt", "seccomp=unconfined")
    assert out["Seccomp"] == "0" and caps(out) == DOCKER_DEFAULT_CAPS
    assert out["mount"] != "0"                      # still no CAP_SYS_ADMIN
    out = probe(run_store, "--security-opt", "no-new-privileges=false")
    assert out["NoNewPrivs"] == "0" and out["Seccomp"] == "2"
