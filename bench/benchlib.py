"""What the bench scripts share: timing one command, and unmounting what a run left
under its temporary directory. (Run as `python3 bench/NAME.py`: this dir is on sys.path.)"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path


def timed(argv: list[str], env: dict[str, str] | None = None) -> float:
    """Wall seconds of argv (output discarded); a failure ends the benchmark."""
    t = time.perf_counter()
    p = subprocess.run(argv, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                       stderr=subprocess.PIPE)
    took = time.perf_counter() - t
    if p.returncode != 0:
        sys.exit(f"{' '.join(argv)} failed ({p.returncode}):\n"
                 f"{p.stderr.decode(errors='replace')[-2000:]}")
    return took


def unmount_under(base: Path) -> None:
    """Every mount below `base`, deepest first (lazily: a busy one goes when it can)."""
    with open("/proc/self/mountinfo") as f:
        points = [l.split()[4] for l in f if l.split()[4].startswith(str(base))]
    for p in sorted(points, key=len, reverse=True):
        subprocess.run(["umount", "-l", p], capture_output=True)
