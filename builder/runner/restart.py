"""Restart policies (`run -d --restart`), carried out by the detached supervisor.

pybuild has no daemon, so the supervisor that owns a `-d` container is also its
restart manager: when the container's process ends and the policy says so, it
waits docker's backoff and starts a fresh sandbox on the same rootfs (same id,
name, upper dir and log). Nothing survives a host reboot: there is no daemon to
start containers again at boot.

An explicit `stop` (or `kill` with SIGKILL or the stop signal, or `rm -f`) ends
it for good under every policy, as docker's HasBeenManuallyStopped does. The
request is a file of its own in the container's directory, not a field of
state.json: the supervisor rewrites state.json from its own copy, and a flag set
there by another process would be lost in that rewrite.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from .errors import RunError

POLICIES = ("no", "always", "unless-stopped", "on-failure")
STOP_FLAG = "stop-requested"
BACKOFF_START = 0.1          # docker's restart manager: 100 ms, doubling,
BACKOFF_MAX = 60.0           # at most a minute,
BACKOFF_RESET_AFTER = 10.0   # back to 100 ms once a run lasted 10 s


@dataclass(frozen=True)
class RestartPolicy:
    name: str = "no"
    max_retries: int = 0      # on-failure only; 0: no limit

    def inspect(self) -> dict:
        return {"Name": self.name, "MaximumRetryCount": self.max_retries}


def parse(text: str) -> RestartPolicy:
    """docker's --restart syntax and validation (opts.ParseRestartPolicy +
    container.ValidateRestartPolicy), with docker's messages."""
    if text == "":
        return RestartPolicy()
    name, colon, count = text.partition(":")
    if colon and not name:
        raise RunError("invalid restart policy format: no policy provided before colon")
    retries = 0
    if count:
        try:
            retries = int(count, 10)
        except ValueError:
            raise RunError("invalid restart policy format: maximum retry count must be an "
                           "integer") from None
    if name in ("no", "always", "unless-stopped"):
        if retries:
            raise RunError("invalid restart policy: maximum retry count can only be used with "
                           "'on-failure'" + (" and cannot be negative" if retries < 0 else ""))
    elif name == "on-failure":
        if retries < 0:
            raise RunError("invalid restart policy: maximum retry count cannot be negative")
        if retries >= 1 << 31:
            raise RunError(f"invalid restart policy: maximum retry count {count} is out of range")
    else:
        raise RunError(f"invalid restart policy: unknown policy '{name}'; use one of 'no', "
                       "'always', 'on-failure', or 'unless-stopped'")
    return RestartPolicy(name, retries)


def should_restart(policy: RestartPolicy, exit_code: int, restarts: int, stopped: bool) -> bool:
    """After a run ended with exit_code, `restarts` restarts so far."""
    if stopped or policy.name == "no":
        return False
    if policy.name in ("always", "unless-stopped"):
        return True
    return exit_code != 0 and (policy.max_retries == 0 or restarts < policy.max_retries)


@dataclass
class Backoff:
    """docker's restart delay: 100 ms doubling up to a minute, reset after a 10 s run."""

    delay: float = 0.0

    def next(self, ran_for: float) -> float:
        if ran_for >= BACKOFF_RESET_AFTER:
            self.delay = 0.0
        self.delay = BACKOFF_START if self.delay == 0 else min(self.delay * 2, BACKOFF_MAX)
        return self.delay


def request_stop(container_dir: Path) -> None:
    """Tell the supervisor not to restart the container again (before it is signalled)."""
    try:
        os.close(os.open(container_dir / STOP_FLAG,
                         os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600))
    except FileNotFoundError:
        pass   # removed meanwhile


def stop_requested(container_dir: Path) -> bool:
    return os.path.lexists(container_dir / STOP_FLAG)


def clear_stop(container_dir: Path) -> None:
    """A new start of the container (a new supervisor) forgets an earlier stop."""
    try:
        os.unlink(container_dir / STOP_FLAG)
    except FileNotFoundError:
        pass
