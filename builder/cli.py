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


@main.command("images")
@click.option("-q", "--quiet", is_flag=True, help="Only image IDs.")
@click.option("--no-trunc", is_flag=True, help="Full image IDs.")
@click.option("--format", "fmt", type=click.Choice(["table", "json"]), default="table")
@click.pass_obj
def images_cmd(settings: Settings, quiet: bool, no_trunc: bool, fmt: str) -> None:
    """List images in the store."""
    from layerstore.images import format_images, list_images

    rows = list_images(settings.store())
    if fmt == "json":
        for r in rows:
            click.echo(json.dumps({"Repository": r.repository, "Tag": r.tag, "ID": r.image_id,
                                   "CreatedAt": r.created, "Size": r.size, "Digest": r.digest}))
        return
    out = format_images(rows, no_trunc=no_trunc, quiet=quiet)
    if out:
        click.echo(out)


@main.command("history")
@click.argument("image")
@click.option("--no-trunc", is_flag=True, help="Do not truncate output.")
@click.option("-H", "--human", type=bool, default=True, show_default=True,
              help="Sizes and dates in human-readable form.")
@click.option("--format", "fmt", type=click.Choice(["table", "json"]), default="table")
@click.option("-q", "--quiet", is_flag=True, help="Only image IDs.")
@click.pass_obj
def history_cmd(settings: Settings, image: str, no_trunc: bool, human: bool, fmt: str,
                quiet: bool) -> None:
    """Show the history of an image."""
    from layerstore.images import format_history, history, history_json

    rows = history(settings.store(), image)
    if quiet:
        for r in rows:
            click.echo(r.image if no_trunc or r.image == "<missing>" else r.image[7:19])
    elif fmt == "json":
        for obj in history_json(rows):
            click.echo(json.dumps(obj))
    else:
        click.echo(format_history(rows, no_trunc=no_trunc, human=human))


@main.command("inspect")
@click.argument("names", nargs=-1, required=True)
@click.pass_obj
def inspect_cmd(settings: Settings, names: tuple[str, ...]) -> None:
    """Show image details as JSON."""
    from layerstore.images import inspect

    store = settings.store()
    _print_json([inspect(store, n) for n in names])


@main.command("tag")
@click.argument("source")
@click.argument("target")
@click.pass_obj
def tag_cmd(settings: Settings, source: str, target: str) -> None:
    """Give an image another name."""
    from layerstore.images import tag

    tag(settings.store(), source, target)


@main.command("rmi")
@click.argument("names", nargs=-1, required=True)
@click.option("-f", "--force", is_flag=True, help="Remove every name of an image given by ID.")
@click.pass_obj
def rmi_cmd(settings: Settings, names: tuple[str, ...], force: bool) -> None:
    """Remove image names (prune then frees the space)."""
    from layerstore.images import rmi
    from layerstore.reference import parse

    store = settings.store()
    for name in names:
        for removed in rmi(store, name, force=force):
            click.echo(f"Untagged: {parse(removed).familiar}")


@main.command("import")
@click.argument("tarball")
@click.argument("name", required=False)
@click.option("-c", "--change", "changes", multiple=True,
              help="Apply a Dockerfile instruction (CMD, ENTRYPOINT, ENV, EXPOSE, LABEL, "
                   "ONBUILD, STOPSIGNAL, USER, VOLUME, WORKDIR) to the config.")
@click.option("-m", "--message", default=None, help="Commit message for the history entry.")
@click.option("--platform", default=None, help="os/arch[/variant] of the image.")
@click.pass_obj
def import_cmd(settings: Settings, tarball: str, name: str | None, changes: tuple[str, ...],
               message: str | None, platform: str | None) -> None:
    """Create a one-layer image from a root filesystem tarball (- for stdin)."""
    from layerstore.importer import import_rootfs
    from layerstore.platforms import parse_platform

    config = None
    if changes:
        from builder.config_changes import apply_changes
        from layerstore.model import ContainerConfig

        config = apply_changes(ContainerConfig(), list(changes))
    plat = parse_platform(platform) if platform else None
    store = settings.store()
    if tarball == "-":
        image_id = import_rootfs(store, sys.stdin.buffer, name, source="-", config=config,
                                 message=message, platform=plat)
    else:
        try:
            f = open(tarball, "rb")
        except FileNotFoundError:
            raise PybuildError(f"{tarball}: no such file") from None
        with f:
            image_id = import_rootfs(store, f, name, source=tarball, config=config,
                                     message=message, platform=plat)
    click.echo(image_id)


@main.command("save")
@click.argument("names", nargs=-1, required=True)
@click.option("-o", "--output", type=click.Path(path_type=Path), default=None,
              help="Write to this file instead of stdout.")
@click.option("--format", "fmt", type=click.Choice(["oci", "docker"]), default="oci",
              show_default=True)
@click.pass_obj
def save_cmd(settings: Settings, names: tuple[str, ...], output: Path | None, fmt: str) -> None:
    """Write images to a tar archive (OCI layout or docker-archive)."""
    from layerstore.archive import save

    if output is None and sys.stdout.isatty():
        raise PybuildError("refusing to write an archive to a terminal: use -o FILE")
    save(settings.store(), list(names), output, fmt, stdout=sys.stdout.buffer)


@main.command("load")
@click.option("-i", "--input", "source", type=click.Path(path_type=Path), default=None,
              help="Read from this file instead of stdin.")
@click.option("-q", "--quiet", is_flag=True)
@click.pass_obj
def load_cmd(settings: Settings, source: Path | None, quiet: bool) -> None:
    """Load images from an OCI or docker archive (auto-detected)."""
    from layerstore.archive import iter_names, load

    loaded = load(settings.store(), None if source in (None, Path("-")) else source,
                  stdin=sys.stdin.buffer)
    if not quiet:
        for line in iter_names(loaded):
            click.echo(line)


@main.command("prune")
@click.option("-a", "--all", "all_unused", is_flag=True,
              help="Also remove unpacked snapshots no container uses.")
@click.pass_obj
def prune_cmd(settings: Settings, all_unused: bool) -> None:
    """Remove unreachable blobs, snapshots, dangling images and leftovers."""
    from layerstore.gc import prune
    from layerstore.humanize import human_size

    r = prune(settings.store(), all_unused=all_unused)
    click.echo(f"Deleted: {r.untagged_images} untagged images, {r.blobs} blobs, "
               f"{r.snapshots} snapshots, {r.partial_files} partial writes")
    click.echo(f"Total reclaimed space: {human_size(r.reclaimed)}")


@main.command("fsck")
@click.pass_obj
def fsck_cmd(settings: Settings) -> None:
    """Verify every blob and reference in the store (exit 1 on problems)."""
    from layerstore.fsck import fsck

    r = fsck(settings.store())
    for p in r.problems:
        click.echo(f"problem: {p}")
    for n in r.notes:
        click.echo(f"note: {n}")
    click.echo(f"checked {r.blobs_checked} blobs: "
               + ("clean" if r.clean else f"{len(r.problems)} problems"))
    if not r.clean:
        sys.exit(1)


# --- registry ---------------------------------------------------------------

def _registry_options(tls_verify: bool | None, max_concurrent: int):
    from layerstore.registry.client import Options

    if max_concurrent < 1:
        raise click.BadParameter("must be at least 1", param_hint="--max-concurrent")
    return Options(tls_verify=tls_verify, max_concurrent=max_concurrent)


def _transfer_options(fn):
    """Options shared by push and pull."""
    fn = click.option("-q", "--quiet", is_flag=True, help="Print only the digest.")(fn)
    fn = click.option("--progress", "progress_mode", default="auto",
                      type=click.Choice(["auto", "tty", "plain"]),
                      help="Bars on a terminal (auto), or one plain line per blob.")(fn)
    fn = click.option("--max-concurrent", default=3, show_default=True,
                      help="Blobs transferred at the same time.")(fn)
    fn = click.option("--tls-verify", type=click.BOOL, default=None,
                      help="Verify TLS certificates (default: yes, except on localhost).")(fn)
    return fn


@main.command("pull")
@click.argument("image")
@click.option("--platform", default=None, help="os/arch[/variant] to pick from an index.")
@click.option("--all-platforms", is_flag=True, help="Store every platform of an index.")
@_transfer_options
@click.pass_obj
def pull_cmd(settings: Settings, image: str, platform: str | None, all_platforms: bool,
             tls_verify: bool | None, max_concurrent: int, progress_mode: str,
             quiet: bool) -> None:
    """Pull IMAGE (by tag or digest) from its registry; prints its digest."""
    from layerstore.platforms import parse_platform
    from layerstore.registry.progress import reporter
    from layerstore.registry.pull import pull

    result = pull(settings.store(), image,
                  platform=parse_platform(platform) if platform else None,
                  all_platforms=all_platforms,
                  options=_registry_options(tls_verify, max_concurrent),
                  progress=reporter(progress_mode, quiet))
    click.echo(result.top.digest)


@main.command("push")
@click.argument("image")
@click.argument("dest", required=False)
@_transfer_options
@click.pass_obj
def push_cmd(settings: Settings, image: str, dest: str | None, tls_verify: bool | None,
             max_concurrent: int, progress_mode: str, quiet: bool) -> None:
    """Push IMAGE to its registry, or to DEST; prints the pushed digest."""
    from layerstore.registry.progress import reporter
    from layerstore.registry.push import push

    result = push(settings.store(), image, dest,
                  options=_registry_options(tls_verify, max_concurrent),
                  progress=reporter(progress_mode, quiet))
    click.echo(result.digest)


@main.command("login")
@click.argument("registry")
@click.option("-u", "--username", default=None)
@click.option("-p", "--password", default=None, hidden=True,
              help="Insecure: visible in the process list; use --password-stdin.")
@click.option("--password-stdin", is_flag=True, help="Read the password from stdin.")
@click.option("--tls-verify", type=click.BOOL, default=None)
def login_cmd(registry: str, username: str | None, password: str | None, password_stdin: bool,
              tls_verify: bool | None) -> None:
    """Check credentials for REGISTRY and store them in config.json."""
    from layerstore.registry.login import login

    if password_stdin:
        if password is not None:
            raise click.UsageError("--password and --password-stdin are mutually exclusive")
        if username is None:
            raise click.UsageError("--password-stdin needs --username")
        password = sys.stdin.read().rstrip("\r\n")
    if username is None:
        username = click.prompt("Username")
    if password is None:
        password = click.prompt("Password", hide_input=True)
    login(registry, username, password, _registry_options(tls_verify, 1))
    click.echo("Login Succeeded")


@main.command("logout")
@click.argument("registry")
def logout_cmd(registry: str) -> None:
    """Remove stored credentials for REGISTRY."""
    from layerstore.errors import NotFound
    from layerstore.registry.login import logout, normalize_host

    if not logout(registry):
        raise NotFound(f"not logged in to {normalize_host(registry)}")
    click.echo(f"Removed login credentials for {normalize_host(registry)}")
