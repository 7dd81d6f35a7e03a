"""Probes run inside a busybox container: namespaces, /proc masking, capabilities,
seccomp, no_new_privs, leaked descriptors, /dev and the generated /etc files."""

from __future__ import annotations

import json
import os
import socket
import threading

import pytest

from builder.sandbox import DEFAULT_CAPS, BindMount, SandboxError, UserNamespace, run, start
from builder.sandbox.caps import mask, resolve
from builder.sandbox.network import NetworkConfig
from builder.sandbox.seccomp import DEFAULT_PROFILE
from builder.sandbox.spec import MASKED_PATHS
from tests.test_sandbox_support import PROBE_PATH, out, probe, sh, spec  # noqa: F401

DOCKER_CAPS_HEX = "00000000a80425fb"


def test_docker_default_caps_mask():
    assert f"{mask(resolve([], [])):016x}" == DOCKER_CAPS_HEX
    assert len(DEFAULT_CAPS) == 14


def test_pid1_and_host_processes_invisible(busybox_rootfs):
    r = sh(busybox_rootfs, "echo $$; ls /proc | grep -E '^[0-9]+$' | sort -n | tr '\\n' ' '")
    pid_line, procs = out(r).splitlines()
    assert pid_line == "1"
    pids = [int(p) for p in procs.split()]
    # only pid 1 (sh), the pipeline's processes; never the host's (pytest is far above)
    assert pids[0] == 1 and max(pids) < 10
    assert os.getpid() not in pids or os.getpid() < 10


def test_hostname_isolated(busybox_rootfs):
    before = socket.gethostname()
    r = sh(busybox_rootfs, "hostname; cat /etc/hostname; hostname other 2>&1; hostname",
           hostname="boxy")
    lines = out(r).splitlines()
    assert lines[0] == "boxy" and lines[1] == "boxy"
    assert lines[-1] == "boxy"  # sethostname is denied (no CAP_SYS_ADMIN)
    assert socket.gethostname() == before


def test_masked_paths_unreadable(busybox_rootfs):
    present = [p for p in MASKED_PATHS if os.path.exists(p)]
    assert present, "the host should have at least some of docker's masked paths"
    script = "; ".join(
        f"if [ -d {p} ]; then echo {p} $(ls -A {p} | wc -l); "
        f"else echo {p} $(cat {p} 2>/dev/null | wc -c); fi" for p in present)
    script += "; cat /proc/kcore >/dev/null 2>&1 && echo kcore-readable $(wc -c </proc/kcore)"
    r = sh(busybox_rootfs, script)
    got = dict(line.split() for line in out(r).splitlines())
    assert "kcore-readable" not in got or got["kcore-readable"] == "0"
    for p in present:
        assert got[p] == "0", f"{p} is readable inside the container"
    # and the host really has something there to hide
    assert any(os.listdir(p) if os.path.isdir(p) else open(p, "rb").read(1) for p in present)


def test_proc_sys_readonly(busybox_rootfs):
    r = sh(busybox_rootfs, "echo 1 > /proc/sys/vm/drop_caches; echo rc=$?; "
                           "echo x > /proc/sysrq-trigger; echo rc=$?; "
                           "grep -E ' /proc/sys ' /proc/self/mountinfo")
    text = out(r)
    assert text.count("rc=1") == 2
    assert " ro," in text.splitlines()[-1] or " ro " in text.splitlines()[-1]
    assert "Read-only file system" in r.stderr.decode()


def test_privileged_syscalls_denied(busybox_rootfs, probe):
    r = sh(busybox_rootfs, f"{PROBE_PATH} mount unshare keyctl ptrace1 reboot swapon io_uring; "
                           "mount -t tmpfs none /mnt; echo mount=$?; unshare -m true; echo unshare=$?",
           probe)
    got = dict((line.split(None, 1) + [""])[:2] for line in out(r).splitlines())
    # io_uring: moby >= 25 and containerd 2 took io_uring_* out of the default profile
    # (its submissions bypass seccomp, and it was the kernel's most exploited surface)
    for name in ("mount", "unshare", "keyctl", "ptrace1", "reboot", "swapon", "io_uring"):
        assert got[name] == "EPERM", f"{name}: {got[name]}"
    assert "mount=1" in got and "unshare=1" in got  # busybox's own mount and unshare fail too


def test_seccomp_follows_capabilities(busybox_rootfs, probe):
    # chroot is allowed with CAP_SYS_CHROOT (docker default) and denied once dropped
    assert "chroot ok" in out(sh(busybox_rootfs, f"{PROBE_PATH} chroot", probe))
    r = sh(busybox_rootfs, f"{PROBE_PATH} chroot", probe, cap_drop=["SYS_CHROOT"])
    assert "chroot EPERM" in out(r)


def test_caps_root_exactly_docker_default(busybox_rootfs):
    r = sh(busybox_rootfs, "grep Cap /proc/self/status")
    caps = dict(line.split(":\t") for line in out(r).splitlines())
    assert caps == {"CapInh": "0" * 16, "CapPrm": DOCKER_CAPS_HEX, "CapEff": DOCKER_CAPS_HEX,
                    "CapBnd": DOCKER_CAPS_HEX, "CapAmb": "0" * 16}


def test_caps_non_root_effective_empty(busybox_rootfs):
    r = sh(busybox_rootfs, "id -u; grep Cap /proc/self/status", user="user")
    lines = out(r).splitlines()
    assert lines[0] == "1000"
    caps = dict(line.split(":\t") for line in lines[1:])
    assert caps["CapEff"] == "0" * 16 and caps["CapPrm"] == "0" * 16
    assert caps["CapBnd"] == DOCKER_CAPS_HEX and caps["CapInh"] == "0" * 16


def test_cap_add_and_drop(busybox_rootfs):
    r = sh(busybox_rootfs, "grep CapEff /proc/self/status", cap_add=["NET_ADMIN"],
           cap_drop=["CHOWN"])
    eff = int(out(r).split()[1], 16)
    assert eff == (int(DOCKER_CAPS_HEX, 16) | 1 << 12) & ~1


def test_seccomp_and_no_new_privs(busybox_rootfs):
    # docker's default: no_new_privs off, the default profile loaded all the same
    r = sh(busybox_rootfs, "grep -E '^(Seccomp|NoNewPrivs):' /proc/self/status")
    assert dict(line.split(":\t") for line in out(r).splitlines()) == {"Seccomp": "2",
                                                                      "NoNewPrivs": "0"}
    r = sh(busybox_rootfs, "grep -E '^(Seccomp|NoNewPrivs):' /proc/self/status",
           no_new_privs=True)
    assert dict(line.split(":\t") for line in out(r).splitlines()) == {"Seccomp": "2",
                                                                      "NoNewPrivs": "1"}
    r = sh(busybox_rootfs, "grep -E '^(Seccomp|NoNewPrivs):' /proc/self/status",
           seccomp="unconfined")
    assert dict(line.split(":\t") for line in out(r).splitlines()) == {"Seccomp": "0",
                                                                      "NoNewPrivs": "0"}


@pytest.mark.parametrize("user", ["0", "user"])
def test_seccomp_enforced_without_no_new_privs(busybox_rootfs, probe, user):
    # the kernel takes a filter without no_new_privs only from a holder of CAP_SYS_ADMIN:
    # it must go in before the capabilities (none of which is CAP_SYS_ADMIN) are dropped
    r = sh(busybox_rootfs, f"{PROBE_PATH} io_uring keyctl mount; "
                           "grep -E '^(Seccomp|NoNewPrivs):' /proc/self/status", probe, user=user)
    got = dict((line.replace(":", "").split(None, 1) + [""])[:2] for line in out(r).splitlines())
    assert got == {"io_uring": "EPERM", "keyctl": "EPERM", "mount": "EPERM", "Seccomp": "2",
                   "NoNewPrivs": "0"}, r.stderr


def test_user_supplied_seccomp_profile(busybox_rootfs, tmp_path):
    prof = json.loads(DEFAULT_PROFILE.read_text())
    prof["syscalls"].insert(0, {"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO",
                                "errnoRet": 13})
    for rule in prof["syscalls"][1:]:
        rule["names"] = [n for n in rule["names"] if n not in ("mkdir", "mkdirat")]
    path = tmp_path / "profile.json"
    path.write_text(json.dumps(prof))
    r = sh(busybox_rootfs, "mkdir /tmp/d; echo rc=$?", seccomp=path, no_new_privs=False)
    assert "rc=1" in out(r) and "Permission denied" in r.stderr.decode()
    bad = tmp_path / "bad.json"
    bad.write_text('{"defaultAction": "SCMP_ACT_ERRNO",\n "syscalls": [}')
    with pytest.raises(SandboxError, match=r"bad.json:2:"):
        sh(busybox_rootfs, "true", seccomp=bad)


def test_only_stdio_fds_reach_the_command(busybox_rootfs, probe, tmp_path):
    leak = os.open(tmp_path / "leak", os.O_CREAT | os.O_RDWR)
    os.set_inheritable(leak, True)
    try:
        # the probe is PID 1 itself: exactly what the sandbox hands to the command
        r = sh(busybox_rootfs, f"exec {PROBE_PATH} fds", probe)
        r2 = sh(busybox_rootfs, "readlink /proc/1/cwd", cwd="/tmp")
    finally:
        os.close(leak)
    assert out(r) == "fds 0 1 2\n"
    assert out(r2) == "/tmp\n"  # the cwd is inside the container, never a host directory


def test_dev_is_minimal(busybox_rootfs):
    r = sh(busybox_rootfs, "ls -A /dev | tr '\\n' ' '; echo; echo x > /dev/null && echo null-ok; "
                           "head -c 5 /dev/zero | wc -c; readlink /dev/ptmx; readlink /dev/fd; "
                           "ls /dev/pts | tr '\\n' ' '")
    lines = out(r).splitlines()
    assert set(lines[0].split()) == {"null", "zero", "full", "random", "urandom", "tty", "ptmx",
                                     "pts", "shm", "mqueue", "fd", "stdin", "stdout", "stderr",
                                     "core"}
    assert lines[1] == "null-ok" and lines[2] == "5"
    assert lines[3:5] == ["pts/ptmx", "/proc/self/fd"]
    assert lines[5].split() == ["ptmx"]  # a new devpts instance: none of the host's ptys


def test_sys_readonly_and_etc_files(busybox_rootfs):
    r = sh(busybox_rootfs, "touch /sys/x 2>/dev/null; echo rc=$?; cat /etc/hosts; "
                           "cat /etc/hostname", hostname="etcbox")
    text = out(r)
    assert "rc=1" in text
    assert "127.0.0.1\tlocalhost" in text and text.rstrip().endswith("etcbox")


def test_user_resolution(busybox_rootfs):
    assert out(sh(busybox_rootfs, "id", user="user")).strip() == \
        "uid=1000(user) gid=1000(user) groups=10(wheel),100(users),1000(user)"
    assert out(sh(busybox_rootfs, "id", user="1000:100")).strip() == \
        "uid=1000(user) gid=100(users) groups=100(users)"
    assert out(sh(busybox_rootfs, "id -u; echo $HOME", user="nobody")).split() == \
        ["65534", "/nonexistent"]
    with pytest.raises(SandboxError, match="no such user"):
        sh(busybox_rootfs, "id", user="ghost")


def test_exec_errors(busybox_rootfs):
    s = spec(busybox_rootfs, "unused")
    s.argv = ["no-such-command"]
    with pytest.raises(SandboxError) as e:
        run(s)
    assert e.value.exit_code == 127 and "not found" in str(e.value)
    s = spec(busybox_rootfs, "unused")
    s.argv = ["/etc/passwd"]
    with pytest.raises(SandboxError) as e:
        run(s)
    assert e.value.exit_code == 126


def test_bind_mount_target_cannot_escape_via_symlink(busybox_copy, tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    (busybox_copy / "evil").symlink_to("../../../../../../.." + str(outside))
    src = tmp_path / "src"
    src.mkdir()
    (src / "file").write_text("data")
    r = sh(busybox_copy, "cat /evil/sub/file", mounts=[BindMount(src, "/evil/sub")])
    assert out(r) == "data"
    assert list(outside.iterdir()) == []  # the target was made inside the rootfs


def test_network_none_only_loopback(busybox_rootfs):
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(1)
    port = srv.getsockname()[1]
    try:
        r = sh(busybox_rootfs, f"ip -o link | cut -d: -f2 | tr -d ' ' | tr '\\n' ' '; echo; "
                               f"ip route | wc -l; ip -o link show lo | grep -c UP; "
                               f"nc -w 1 127.0.0.1 {port} </dev/null; echo nc=$?")
    finally:
        srv.close()
    lines = out(r).splitlines()
    assert lines[0].split() == ["lo"]
    assert lines[1] == "0" and lines[2] == "1"
    assert lines[3] == "nc=1"


def test_network_host_shares_host_stack(busybox_rootfs):
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(1)
    port = srv.getsockname()[1]
    got = []
    t = threading.Thread(target=lambda: got.append(srv.accept()[0].recv(10)))
    t.start()
    try:
        r = sh(busybox_rootfs, f"echo hello | nc -w 2 127.0.0.1 {port}; echo nc=$?",
               network=NetworkConfig(mode="host"))
        t.join(5)
    finally:
        srv.close()
    assert "nc=0" in out(r) and got == [b"hello\n"]


def test_user_namespace_maps_root_to_unprivileged_range(busybox_rootfs):
    script = ("id -u; cat /proc/self/uid_map; grep CapEff /proc/self/status; "
              "touch /etc/owned-by-host-root 2>/dev/null; echo touch=$?; sleep 1")
    c = start(spec(busybox_rootfs, script, userns=UserNamespace(100000, 100000, 65536)))
    try:
        with open(f"/proc/{c.pid}/status") as f:
            host_status = dict(line.split(":", 1) for line in f if ":" in line)
        assert host_status["Uid"].split()[0] == "100000"
        r = c.wait()
    finally:
        c.teardown()
    lines = out(r).splitlines()
    assert lines[0] == "0"
    assert lines[1].split() == ["0", "100000", "65536"]
    assert lines[2].split()[1] == DOCKER_CAPS_HEX
    assert lines[3] == "touch=1"  # root inside, but not the host's root
    assert not (busybox_rootfs / "etc" / "owned-by-host-root").exists()


def test_user_namespace_owns_a_remapped_rootfs(busybox_copy):
    import subprocess
    subprocess.run(["chown", "-R", "-h", "100000:100000", str(busybox_copy)], check=True)
    r = sh(busybox_copy, "echo hi > /etc/written; ls -ln /etc/written; cat /etc/hosts | head -1",
           userns=UserNamespace())
    lines = out(r).splitlines()
    assert lines[0].split()[2:4] == ["0", "0"]  # owned by root as the container sees it
    assert lines[1] == "127.0.0.1\tlocalhost"
    st = (busybox_copy / "etc" / "written").stat()
    assert (st.st_uid, st.st_gid) == (100000, 100000)  # and by the mapped range on the host
    assert not (busybox_copy / "etc" / "hosts").exists()  # the mount point stub is gone
