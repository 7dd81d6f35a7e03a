"""USER is resolved against the image's own /etc/passwd and /etc/group, which are
hostile input: a fifo must not hang `run`/`exec`, a huge file must not eat memory, a
malformed line must not crash, as libc skips such lines."""

from __future__ import annotations

import os
import signal

import pytest

from builder.sandbox import SandboxError
from builder.sandbox import users
from tests.test_sandbox_support import out, sh  # noqa: F401


def test_malformed_lines_are_skipped(tmp_path):
    passwd = tmp_path / "passwd"
    group = tmp_path / "group"
    passwd.write_text("app:x:notanumber:0::/:/bin/sh\n"
                      "app:x:1000:1000::/home/app:/bin/sh\n"
                      "short:x:5\n"
                      "big:x:99999999999999999999:1::/:/bin/sh\n")
    group.write_text("staff:x:x50:app\nwheel:x:10:app,other\nbad\n")
    ids = users.resolve("app", str(passwd), str(group))
    assert (ids.uid, ids.gid, ids.groups, ids.home) == (1000, 1000, [10, 1000], "/home/app")
    with pytest.raises(SandboxError):
        users.resolve("big", str(passwd), str(group))   # skipped: unknown user name
    assert users.resolve("4294967294", str(passwd), str(group)).uid == 4294967294
    with pytest.raises(SandboxError, match="out of range"):
        users.resolve("4294967295", str(passwd), str(group))


def test_huge_and_special_databases_fail_clearly(tmp_path):
    huge = tmp_path / "passwd"
    with open(huge, "wb") as f:
        f.truncate(users.MAX_DB + 1)
    with pytest.raises(SandboxError, match="larger than"):
        users.resolve("root", str(huge), "/nonexistent")
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    with pytest.raises(SandboxError, match="not a regular file"):
        users.resolve("root", str(fifo), "/nonexistent")


def test_fifo_passwd_in_an_image_does_not_hang_the_container(busybox_copy):
    os.unlink(busybox_copy / "etc" / "passwd")
    os.mkfifo(busybox_copy / "etc" / "passwd")

    def hung(signum, frame):
        raise AssertionError("the container start hung on a fifo /etc/passwd")
    old = signal.signal(signal.SIGALRM, hung)
    signal.alarm(30)
    try:
        with pytest.raises(SandboxError, match="not a regular file") as e:
            sh(busybox_copy, "echo ran", user="app")
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)
    assert e.value.exit_code == 125
