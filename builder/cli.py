"""The `pybuild` command line: parse arguments, call one function, render.

Heavy modules are imported inside the commands so that `pybuild --help`
stays fast; no logic a test would want to call lives here.
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import click

from layerstore.errors import PybuildError

VERSION = "0.1.0"


def default_root() -> Path:
    """/var/lib/pybuild for root, $XDG_DATA_HOME/pybuild for everyone else."""
    env = os.environ.get("PYBUILD_ROOT")
    if env:
        return Path(env)
    if os.geteuid() == 0:
        return Path("/var/lib/pybuild")
    data = os.environ.get("XDG_DATA_HOME") or os.path.join(Path.home(), ".local", "share")
    return Path(data) / "pybuild"


@dataclass
class Settings:
    root: Path
    debug: bool

    def store(self):
        from layerstore.store import Store

        return Store.open(self.root)


class PybuildGroup(click.Group):
    """Turns PybuildError into one line on stderr and a non-zero exit."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except PybuildError as exc:
            if ctx.obj is not None and ctx.obj.debug:
                raise
            click.echo(f"pybuild: error: {exc}", err=True)
            sys.exit(exc.exit_code)
        except KeyboardInterrupt:
            click.echo("pybuild: interrupted", err=True)
            sys.exit(130)
        except OSError as exc:
            if ctx.obj is not None and ctx.obj.debug:
                raise
            where = f": {exc.filename}" if getattr(exc, "filename", None) else ""
            click.echo(f"pybuild: error: {exc.strerror or exc}{where}", err=True)
            sys.exit(1)


@click.group(cls=PybuildGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--root", type=click.Path(path_type=Path), default=None,
              help="Store directory (env PYBUILD_ROOT).")
@click.option("--debug", is_flag=True, help="Show tracebacks on errors.")
@click.version_option(VERSION, prog_name="pybuild")
@click.pass_context
def main(ctx: click.Context, root: Path | None, debug: bool) -> None:
    """Build, store, ship and run OCI images without a daemon."""
    ctx.obj = Settings(root=(root or default_root()).absolute(), debug=debug)


def _print_json(obj) -> None:
    click.echo(json.dumps(obj, indent=4))


# --- layer store ---------------------------------------------------------
