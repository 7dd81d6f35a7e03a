"""The run flags of the detached supervisor's duties: --restart and --health-*.

Kept apart from options.build_options: cli.run takes these keys out of its flags,
then `apply` checks them against the rest (docker's conflicts) and stores them.
"""

from __future__ import annotations

import sys

from .errors import RunError
from .options import RunOptions

KEYS = ("restart", "health_cmd", "health_interval", "health_timeout", "health_retries",
        "health_start_period", "health_start_interval", "no_healthcheck")


def take(flags: dict) -> dict:
    """Remove this module's keys from the run command's flags."""
    return {k: flags.pop(k) for k in KEYS if k in flags}


def apply(opts: RunOptions, given: dict) -> RunOptions:
    from . import health, restart

    policy = restart.parse(given.get("restart") or "")
    if opts.rm and policy.name not in ("", "no"):
        raise RunError("Conflicting options: --restart and --rm")
    if policy.name not in ("", "no") and not opts.detach:
        # no daemon: only the supervisor of a -d container can start it again
        print("pybuild: warning: --restart has no effect without -d (a foreground container "
              "is not restarted)", file=sys.stderr)
    opts.restart = policy
    opts.health = health.parse_flags(
        given.get("health_cmd"), given.get("health_interval"), given.get("health_timeout"),
        given.get("health_start_period"), given.get("health_start_interval"),
        given.get("health_retries"), bool(given.get("no_healthcheck")))
    return opts
