"""What the kernel says about a host process, read from /proc (never from the process)."""

from __future__ import annotations


def start_time(pid: int) -> str:
    """Field 22 of /proc/PID/stat (clock ticks after boot): with the pid it names one
    process even after the pid is reused. "" when the process is gone -- or dead and not
    yet reaped: a SIGKILLed supervisor's zombie may linger under a subreaper that does
    not reap, with its pid and start time intact."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            text = f.read(4096)
    except OSError:
        return ""
    # the command name may hold spaces and ')': the fields count from the last ')'
    fields = text.rpartition(b")")[2].split()
    if len(fields) < 20 or fields[0] in (b"Z", b"X", b"x"):
        return ""
    return fields[19].decode("ascii", "replace")
