"""The container log: JSON lines, size-capped rotation, non-UTF-8 bytes, tail, follow."""

from __future__ import annotations

import threading
import time

from builder.runner.logs import LOG_NAME, LogWriter, follow_log, log_files, read_entries
from test_run_support import run_store  # noqa: F401  (fixture)


def test_rotation_caps_size_and_keeps_order(tmp_path):
    w = LogWriter(tmp_path / LOG_NAME, max_size=2000, max_files=3)
    for i in range(200):
        w.write("stdout" if i % 2 else "stderr", f"line {i}\n".encode())
    w.close()
    files = log_files(tmp_path)
    assert [f.name for f in files] == [LOG_NAME + ".2", LOG_NAME + ".1", LOG_NAME]
    assert all(f.stat().st_size <= 2000 for f in files)
    entries, _ = read_entries(tmp_path)
    numbers = [int(e.data.split()[1]) for e in entries]
    assert numbers == sorted(numbers) and numbers[-1] == 199 and numbers[0] > 0   # oldest dropped
    assert {e.stream for e in entries} == {"stdout", "stderr"}
    tail, _ = read_entries(tmp_path, 3)
    assert [e.data for e in tail] == [b"line 197\n", b"line 198\n", b"line 199\n"]


def test_partial_lines_and_binary_round_trip(tmp_path):
    w = LogWriter(tmp_path / LOG_NAME)
    w.write("stdout", b"hal")
    w.write("stdout", b"f\xff\xfe line\nrest without newline")
    w.close()
    entries, _ = read_entries(tmp_path)
    assert [e.data for e in entries] == [b"half\xff\xfe line\n", b"rest without newline"]


def test_follow_reads_until_stopped(tmp_path):
    w = LogWriter(tmp_path / LOG_NAME, max_size=300, max_files=2)
    w.write("stdout", b"before\n")
    _, offset = read_entries(tmp_path)
    running = threading.Event()
    running.set()

    def writer():
        for i in range(30):          # enough to rotate several times while followed
            w.write("stdout", f"after {i}\n".encode())
            time.sleep(0.01)
        running.clear()
    t = threading.Thread(target=writer)
    t.start()
    got = [e.data for e in follow_log(tmp_path, running.is_set, offset)]
    t.join()
    w.close()
    assert b"before\n" not in got
    assert got[-1] == b"after 29\n"
    numbers = [int(d.split()[1]) for d in got]
    assert numbers == sorted(numbers)


def test_detached_log_is_capped_by_log_opt(run_store):
    script = "i=0; while [ $i -lt 300 ]; do echo line $i; i=$((i+1)); done"
    cid = run_store("run", "--network", "none", "-d", "--log-opt", "max-size=2k", "--log-opt",
                    "max-file=2", "busybox", "sh", "-c", script).stdout.strip()
    assert run_store("wait", cid).stdout.strip() == "0"
    files = log_files(run_store.root / "containers" / cid)
    assert [f.name for f in files] == [LOG_NAME + ".1", LOG_NAME]
    assert all(f.stat().st_size <= 2048 for f in files)
    assert run_store("logs", "--tail", "2", cid).stdout == "line 298\nline 299\n"
    run_store("rm", cid)
