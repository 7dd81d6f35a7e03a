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

from builder import VERSION
from layerstore.errors import PybuildError


def default_root() -> Path:
    """/var/lib/pybuild for root, $XDG_DATA_HOME/pybuild for everyone else."""
    env = os.environ.get("PYBUILD_ROOT")
    if env:
        return Path(env)
    if os.geteuid() == 0:
        from layerstore.userns import in_user_namespace

        # rootless pybuild re-execs itself as root of the user's namespace: still the user's
        if not in_user_namespace():
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


# docker command lines whose pybuild spelling click's spelling guesses cannot find
# ("Did you mean '--help'?" for `build --check`): the words typed -> what to type instead
_DOCKER_HABITS = {
    ("compose",): "pybuild run -d, one per service: pybuild has no compose",
}


def _habit(words: list[str]) -> str | None:
    for n in (2, 1):
        hint = _DOCKER_HABITS.get(tuple(words[:n])) if len(words) >= n else None
        if hint:
            return f"(docker's '{' '.join(words[:n])}' is '{hint}')"
    return None


class HabitCommand(click.Command):
    """A command whose unknown option may be a docker habit with a pybuild spelling."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        try:
            return super().parse_args(ctx, args)
        except click.NoSuchOption as exc:
            hint = _habit([ctx.info_name or "", exc.option_name])
            if hint is None:
                raise
            raise click.NoSuchOption(exc.option_name, f"No such option '{exc.option_name}'. {hint}",
                                     ctx=ctx) from None


class HabitGroup(click.Group):
    """A group whose unknown subcommand may be a docker habit with a pybuild spelling;
    other unknown words keep click's own guesses."""

    command_class = HabitCommand

    def resolve_command(self, ctx: click.Context, args: list[str]):
        if args and self.get_command(ctx, args[0]) is None and not ctx.resilient_parsing:
            words = args[:2] if ctx.parent is None else [ctx.info_name or "", *args[:1]]
            hint = _habit(words)
            if hint is not None:
                raise click.NoSuchCommand(args[0], f"No such command '{args[0]}'. {hint}",
                                          ctx=ctx)
        return super().resolve_command(ctx, args)


HabitGroup.group_class = HabitGroup


class ManagementGroup(HabitGroup):
    """One of docker's management groups (`image ls`, `container rm`, `builder prune`):
    its own subcommands first, then `aliases` naming a top-level command, looked up when
    used so that every command registered anywhere is reachable under both spellings."""

    def __init__(self, *args, aliases: dict[str, str] | None = None, **kw) -> None:
        super().__init__(*args, **kw)
        self.aliases = aliases or {}

    def _target(self, ctx: click.Context, name: str) -> click.Command | None:
        target = self.aliases.get(name)
        return None if target is None else ctx.find_root().command.get_command(ctx, target)

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        return super().get_command(ctx, name) or self._target(ctx, name)

    def list_commands(self, ctx: click.Context) -> list[str]:
        own = set(super().list_commands(ctx))
        return sorted(own | {a for a in self.aliases if self._target(ctx, a) is not None})


class PybuildGroup(HabitGroup):
    """Turns PybuildError into one line on stderr and a non-zero exit."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except PybuildError as exc:
            if ctx.obj is not None and ctx.obj.debug:
                raise
            # a failed build step ends as BuildKit's does (`ERROR: failed to solve: ...`)
            click.echo(getattr(exc, "docker_line", None) or f"pybuild: error: {exc}", err=True)
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
    if os.geteuid() != 0 and ctx.invoked_subcommand not in _NO_STORE:
        from builder import rootless

        rootless.enter(ctx.obj.root)


# commands that never touch the store or a container: a plain user runs them as is
_NO_STORE = {None, "login", "logout", "version", "completion"}


def _print_json(obj) -> None:
    click.echo(json.dumps(obj, indent=4))


def _print_inspect(objects: list, fmt: str | None) -> None:
    if not fmt:
        _print_json(objects)
        return
    from builder.formatting import render_inspect

    click.echo(render_inspect(fmt, objects), nl=False)


def is_custom(fmt: str | None) -> bool:
    """--format asks for a template (not the command's own table or json)."""
    return bool(fmt) and fmt.strip() not in ("table", "json")


# --- layer store ---------------------------------------------------------


@main.command("images")
@click.argument("repository", required=False)
@click.option("-q", "--quiet", is_flag=True, help="Only image IDs.")
@click.option("--no-trunc", is_flag=True, help="Full image IDs.")
@click.option("-a", "--all", "show_all", is_flag=True,
              help="Show all images (pybuild keeps no intermediate images: the same list).")
@click.option("--digests", is_flag=True, help="Show digests.")
@click.option("-f", "--filter", "filters", multiple=True, metavar="KEY=VALUE",
              help="dangling=true|false, reference=PATTERN, label=KEY[=VALUE], before=IMAGE, "
                   "since=IMAGE.")
@click.option("--format", "fmt", default="table",
              help="table, json, or a Go template: 'table {{.Repository}}\\t{{.Tag}}', "
                   "'{{json .}}'.")
@click.pass_obj
def images_cmd(settings: Settings, repository: str | None, quiet: bool, no_trunc: bool,
               show_all: bool, digests: bool, filters: tuple[str, ...], fmt: str) -> None:
    """List images in the store (REPOSITORY[:TAG] limits the list to it)."""
    from builder.filters import select_images
    from layerstore.images import format_images, list_images

    store = settings.store()
    rows = select_images(store, list_images(store), filters, repository)
    if is_custom(fmt) and not quiet:
        from builder.formatting import IMAGE_HEADERS, image_rows, render_rows

        click.echo(render_rows(fmt, image_rows(rows, no_trunc), IMAGE_HEADERS), nl=False)
        return
    if fmt == "json":
        for r in rows:
            click.echo(json.dumps({"Repository": r.repository, "Tag": r.tag, "ID": r.image_id,
                                   "CreatedAt": r.created, "Size": r.size, "Digest": r.digest}))
        return
    out = format_images(rows, no_trunc=no_trunc, quiet=quiet, digests=digests)
    if out:
        click.echo(out)


@main.command("history")
@click.argument("image")
@click.option("--no-trunc", is_flag=True, help="Do not truncate output.")
@click.option("-H", "--human", type=bool, default=True, show_default=True,
              help="Sizes and dates in human-readable form.")
@click.option("--format", "fmt", default="table",
              help="table, json, or a Go template: '{{.ID}}\\t{{.CreatedBy}}'.")
@click.option("-q", "--quiet", is_flag=True, help="Only image IDs.")
@click.option("--platform", default=None, metavar="OS/ARCH[/VARIANT]",
              help="Which image of a multi-platform index (default: this host's).")
@click.pass_obj
def history_cmd(settings: Settings, image: str, no_trunc: bool, human: bool, fmt: str,
                quiet: bool, platform: str | None) -> None:
    """Show the history of an image."""
    from layerstore.images import format_history, history, history_json
    from layerstore.platforms import parse_platform, platform_option

    rows = history(settings.store(), image,
                   parse_platform(platform_option(platform)) if platform else None)
    if quiet:
        for r in rows:
            click.echo(r.image if no_trunc or r.image == "<missing>" else r.image[7:19])
    elif is_custom(fmt):
        from builder.formatting import HISTORY_HEADERS, history_rows, render_rows

        click.echo(render_rows(fmt, history_rows(rows, no_trunc, human), HISTORY_HEADERS),
                   nl=False)
    elif fmt == "json":
        for obj in history_json(rows):
            click.echo(json.dumps(obj))
    else:
        click.echo(format_history(rows, no_trunc=no_trunc, human=human))


@main.command("inspect")
@click.argument("names", nargs=-1, required=True)
@click.option("-f", "--format", "fmt", default=None,
              help="A Go template over the JSON: '{{.State.Status}}', '{{json .Config.Cmd}}'.")
@click.pass_obj
def inspect_cmd(settings: Settings, names: tuple[str, ...], fmt: str | None) -> None:
    """Show image or container details as JSON."""
    from layerstore.errors import NotFound
    from layerstore.images import inspect

    store = settings.store()
    out = []
    for n in names:
        try:
            out.append(inspect(store, n))
        except NotFound as image_error:
            from builder.runner.views import inspect as inspect_container

            try:
                out.append(inspect_container(_containers(settings).find(n)))
            except NotFound:
                raise NotFound(f"{n}: no such image or container") from image_error
    _print_inspect(out, fmt)


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
    from builder.filters import each
    from layerstore.images import rmi
    from layerstore.reference import parse

    store = settings.store()

    def one(name: str) -> None:
        for removed in rmi(store, name, force=force):
            click.echo(f"Untagged: {parse(removed).familiar}")
    each(names, one, _echo_err)


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
              show_default=True,
              help="oci: an OCI image layout (docker save writes docker-archive by "
                   "default: --format docker).")
@click.pass_obj
def save_cmd(settings: Settings, names: tuple[str, ...], output: Path | None, fmt: str) -> None:
    """Write images to a tar archive (OCI layout or docker-archive).

    The default format is OCI (an OCI image layout in a tar); docker save's default is
    docker-archive, which `--format docker` writes. `pybuild load` reads both."""
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
              help="Also drop the whole build cache and snapshots no container uses.")
@click.option("--keep-storage", default=None, metavar="SIZE",
              help="Keep at most this much build cache (least recently used goes first).")
@click.option("--filter", "filters", multiple=True, metavar="KEY=VALUE",
              help="until=WHEN: drop build cache entries unused since WHEN (24h, timestamp, "
                   "RFC 3339); label=KEY[=VALUE] / label!=KEY[=VALUE]: only dangling images "
                   "with (without) that label.")
@click.option("--cache-mounts", is_flag=True, help="Also empty RUN --mount=type=cache dirs.")
@click.option("-f", "--force", is_flag=True, help="Do not ask (there is no prompt anyway).")
@click.pass_obj
def prune_cmd(settings: Settings, all_unused: bool, keep_storage: str | None,
              filters: tuple[str, ...], cache_mounts: bool, force: bool) -> None:
    """Remove unreachable blobs, snapshots, dangling images and leftovers."""
    from builder.cache import prune_store
    from builder.filters import prune_filters
    from layerstore.humanize import human_size, parse_size

    parsed, until = prune_filters(filters)
    try:
        keep = parse_size(keep_storage) if keep_storage is not None else None
    except ValueError as exc:
        raise PybuildError(f"--keep-storage: {exc}") from None
    s = prune_store(settings.store(), all_unused=all_unused, until=until, keep_bytes=keep,
                    cache_mounts=cache_mounts, filters=parsed)
    r = s.store
    click.echo(f"Deleted: {r.untagged_images} untagged images, {r.blobs} blobs, "
               f"{r.snapshots} snapshots, {r.partial_files} partial writes, "
               f"{s.cache_entries} build cache entries, {s.cache_mounts} cache mounts")
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


# --- the store's disk --------------------------------------------------------

def _max_storage_option(fn):
    return click.option("--max-storage", default=None, metavar="SIZE|none",
                        help="Prune the store afterwards to stay under SIZE (500MB, 1.5GiB): "
                             "least recently used build cache first (env PYBUILD_MAX_STORAGE, "
                             "or `system set max-storage`).")(fn)


def _echo_err(line: str) -> None:
    click.echo(line, err=True)


@main.group("system")
def system_group() -> None:
    """Manage the store as a whole (disk usage, settings)."""


@system_group.command("df")
@click.option("-v", "--verbose", is_flag=True, help="Show every image, container, volume, "
                                                     "cache record and cache mount.")
@click.option("--format", "fmt", default="table",
              help="table, json, or a Go template: '{{.Type}}: {{.Size}}'.")
@click.pass_obj
def system_df_cmd(settings: Settings, verbose: bool, fmt: str) -> None:
    """Show what uses the store's disk space, and what a prune could reclaim."""
    from builder.storage import disk_usage, format_table, format_verbose, verbose_json

    du = disk_usage(settings.store())
    if is_custom(fmt):
        from builder.formatting import DF_HEADERS, df_rows, render_rows

        click.echo(render_rows(fmt, df_rows(du.rows), DF_HEADERS), nl=False)
        return
    if fmt == "json":
        if verbose:
            click.echo(json.dumps(verbose_json(du)))
        else:
            for row in du.rows:
                click.echo(json.dumps(row.to_json()))
        return
    click.echo(format_verbose(du) if verbose else format_table(du))


@system_group.command("set")
@click.argument("name")
@click.argument("value")
@click.pass_obj
def system_set_cmd(settings: Settings, name: str, value: str) -> None:
    """Set a store setting: max-storage SIZE|none."""
    from layerstore import settings as store_settings

    settings.store()
    store_settings.set_value(settings.root, name, value)


@system_group.command("get")
@click.argument("name", required=False)
@click.pass_obj
def system_get_cmd(settings: Settings, name: str | None) -> None:
    """Show the store's settings (or one of them)."""
    from layerstore import settings as store_settings

    values = store_settings.load(settings.root) if settings.root.exists() else {}
    for key in [name] if name else sorted(store_settings.KNOWN):
        click.echo(f"{key} {store_settings.show(key, values.get(key))}")


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
    fn = click.option("--max-concurrent", default=6, show_default=True,
                      help="Blobs transferred at the same time.")(fn)
    fn = click.option("--tls-verify", type=click.BOOL, default=None,
                      help="Verify TLS certificates (default: yes, except on localhost).")(fn)
    return fn


@main.command("pull")
@click.argument("image")
@click.option("--platform", default=None, help="os/arch[/variant] to pick from an index.")
@click.option("--all-platforms", is_flag=True, help="Store every platform of an index.")
@_transfer_options
@_max_storage_option
@click.pass_obj
def pull_cmd(settings: Settings, image: str, platform: str | None, all_platforms: bool,
             tls_verify: bool | None, max_concurrent: int, progress_mode: str,
             quiet: bool, max_storage: str | None) -> None:
    """Pull IMAGE (by tag or digest) from its registry; prints its digest."""
    from builder.storage import bounded, note_pull
    from layerstore.platforms import parse_platform
    from layerstore.registry.progress import reporter
    from layerstore.registry.pull import pull

    with bounded(settings.root, settings.store, max_storage, _echo_err) as used:
        result = pull(settings.store(), image,
                      platform=parse_platform(platform) if platform else None,
                      all_platforms=all_platforms,
                      options=_registry_options(tls_verify, max_concurrent),
                      progress=reporter(progress_mode, quiet))
        note_pull(used, result)
    click.echo(result.top.digest)


@main.command("push")
@click.argument("image")
@click.argument("dest", required=False)
@click.option("--compression", type=click.Choice(["gzip", "zstd", "none"]), default=None,
              help="Compress uncompressed layers this way before upload.")
@click.option("--force-compression", is_flag=True,
              help="Also re-encode layers compressed differently (changes digests).")
@_transfer_options
@click.pass_obj
def push_cmd(settings: Settings, image: str, dest: str | None, compression: str | None,
             force_compression: bool, tls_verify: bool | None, max_concurrent: int,
             progress_mode: str, quiet: bool) -> None:
    """Push IMAGE to its registry, or to DEST; prints the pushed digest."""
    from layerstore.registry.progress import reporter
    from layerstore.registry.push import push

    if force_compression and not compression:
        raise click.UsageError("--force-compression needs --compression")
    result = push(settings.store(), image, dest,
                  options=_registry_options(tls_verify, max_concurrent),
                  progress=reporter(progress_mode, quiet), compression=compression,
                  force_compression=force_compression)
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
    from layerstore.registry.login import MAX_PASSWORD, login

    warn = lambda text: click.echo(text, err=True)   # noqa: E731
    if password_stdin:
        if password is not None:
            raise click.UsageError("--password and --password-stdin are mutually exclusive")
        if username is None:
            raise click.UsageError("--password-stdin needs --username")
        # bounded (stdin may be endless); login() refuses what is longer than MAX_PASSWORD
        raw = sys.stdin.buffer.read(MAX_PASSWORD + 3)
        password = raw.decode(errors="replace").removesuffix("\n").removesuffix("\r")
    elif password is not None:
        warn("WARNING! Using --password via the CLI is insecure. Use --password-stdin.")
    if username is None:
        username = click.prompt("Username")
    if password is None:
        password = click.prompt("Password", hide_input=True)
    login(registry, username, password, _registry_options(tls_verify, 1), warn=warn)
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


# --- dockerfile frontend ---

@main.command("check")
@click.option("-f", "--file", "dockerfile", type=click.Path(path_type=Path), default=None,
              help="Dockerfile to check (default: CONTEXT/Dockerfile).")
@click.option("--build-arg", "build_args", multiple=True, metavar="KEY=VALUE", help="Set a build arg.")
@click.option("--target", default=None, help="Stage to build (default: the last).")
@click.option("--platform", default=None, help="Target platform, e.g. linux/arm64.")
@click.option("--format", "fmt", type=click.Choice(["text", "json"]), default="text")
@click.argument("context", type=click.Path(path_type=Path), default=".", required=False)
def check_cmd(dockerfile: Path | None, build_args: tuple[str, ...], target: str | None,
              platform: str | None, fmt: str, context: Path) -> None:
    """Parse and validate a Dockerfile without building it."""
    from builder.buildopts import locate_dockerfile, parse_build_args, read_dockerfile
    from builder.dockerfile import check

    path = locate_dockerfile(context, dockerfile)
    result = check.check_dockerfile(read_dockerfile(context, path), parse_build_args(build_args),
                                    target, platform, filename=str(path))
    for warning in result.warnings:
        click.echo(f"pybuild: warning: {warning}", err=True)
    if fmt == "json":
        _print_json(check.to_json(result))
    else:
        click.echo(check.to_text(result))


# --- run ---

def _containers(settings: Settings):
    from builder.runner.containers import Containers

    return Containers(settings.root)


def run_options(image: str, command: tuple[str, ...], flags: dict):
    """run's (and create's) command line as RunOptions, --restart/--health-* included."""
    from builder.runner import supervision
    from builder.runner.options import build_options

    given = supervision.take(flags)
    return supervision.apply(build_options(image, command, **flags), given)


@main.command("run", context_settings={"allow_interspersed_args": False})
@click.argument("image")
@click.argument("command", nargs=-1, type=click.UNPROCESSED)
@click.option("--rm", is_flag=True, help="Remove the container when it exits.")
@click.option("-d", "--detach", is_flag=True, help="Run in the background; print the ID.")
@click.option("--name", default=None, help="Name the container.")
@click.option("-i", "--interactive", is_flag=True, help="Keep stdin open.")
@click.option("-t", "--tty", is_flag=True, help="Allocate a pseudo-terminal.")
@click.option("-e", "--env", multiple=True, metavar="K=V", help="Set an environment variable.")
@click.option("--env-file", multiple=True, help="Read K=V lines from a file.")
@click.option("-v", "--volume", multiple=True, metavar="SRC:DST[:ro]", help="Bind or volume mount.")
@click.option("--mount", multiple=True, metavar="type=...,target=...", help="Mount (bind, volume, tmpfs).")
@click.option("--tmpfs", multiple=True, metavar="DST[:opts]", help="Mount a tmpfs.")
@click.option("-w", "--workdir", default=None, help="Working directory inside the container.")
@click.option("-u", "--user", default=None, help="USER[:GROUP] (name or id).")
@click.option("--entrypoint", default=None, help="Override the image's entrypoint.")
@click.option("--init", is_flag=True, help="Run a tiny init as PID 1.")
@click.option("-h", "--hostname", default=None, help="Container host name.")
@click.option("--network", "--net", default="private", help="none, host or private (default).")
@click.option("-p", "--publish", multiple=True, metavar="[IP:]HPORT:CPORT[/proto]", help="Publish a port.")
@click.option("-P", "--publish-all", is_flag=True, help="Publish every exposed port.")
@click.option("-m", "--memory", default=None, help="Memory limit (e.g. 64m).")
@click.option("--memory-swap", default=None, help="Memory plus swap limit; -1 unlimited.")
@click.option("--cpus", default=None, help="Number of CPUs (e.g. 0.5).")
@click.option("--pids-limit", default=None, help="Maximum number of processes.")
@click.option("--read-only", is_flag=True, help="Mount the root filesystem read-only.")
@click.option("--cap-add", multiple=True, help="Add a capability (e.g. NET_ADMIN, SYS_PTRACE, ALL; the CAP_ prefix is optional).")
@click.option("--cap-drop", multiple=True, help="Drop a capability (ALL for every one).")
@click.option("--security-opt", multiple=True, help="seccomp=unconfined|FILE, no-new-privileges[=true|false] (off by default).")
@click.option("--privileged", is_flag=True, help="Every capability, no seccomp filter.")
@click.option("--ulimit", multiple=True, metavar="NAME=SOFT[:HARD]", help="Set a resource limit.")
@click.option("--stop-signal", default=None, help="Signal that stops the container.")
@click.option("--stop-timeout", type=int, default=None, help="Seconds before SIGKILL on stop.")
@click.option("--pull", default="missing", help="missing (default), always or never.")
@click.option("--platform", default=None, metavar="OS/ARCH[/VARIANT]",
              help="The image's platform (of an index; a foreign one runs under qemu-user).")
@click.option("-l", "--label", multiple=True, metavar="K=V", help="Set a label.")
@click.option("--log-opt", multiple=True, metavar="max-size=S|max-file=N",
              help="Log rotation (default max-size=10m, max-file=3).")
@click.option("--restart", default=None, metavar="POLICY",
              help="With -d: no (default), always, unless-stopped, on-failure[:MAX]; the "
              "container's supervisor restarts it. No daemon: nothing restarts containers "
              "after a host reboot (unless-stopped acts as always).")
@click.option("--health-cmd", default=None, help="Command to run to check health.")
@click.option("--health-interval", default=None, metavar="DURATION",
              help="Time between running the check (ms|s|m|h) (default 30s).")
@click.option("--health-timeout", default=None, metavar="DURATION",
              help="Maximum time to allow one check to run (default 30s).")
@click.option("--health-retries", type=int, default=None,
              help="Consecutive failures needed to report unhealthy (default 3).")
@click.option("--health-start-period", default=None, metavar="DURATION",
              help="Start period for the container to initialize (default 0s).")
@click.option("--health-start-interval", default=None, metavar="DURATION",
              help="Time between checks during the start period (default 5s).")
@click.option("--no-healthcheck", is_flag=True, help="Disable any container-specified HEALTHCHECK.")
@click.option("--add-host", multiple=True, metavar="NAME:IP", help="Add a line to /etc/hosts (IP may be host-gateway).")
@click.option("--dns", multiple=True, metavar="IP", help="Set a DNS server.")
@click.option("--dns-search", multiple=True, metavar="DOMAIN", help="Set a DNS search domain.")
@click.option("--dns-option", multiple=True, metavar="OPT", help="Set a resolv.conf option.")
@click.option("--device", multiple=True, metavar="HOST[:CTR][:rwm]", help="Give the container a host device.")
@click.option("--ipc", default="", help="IPC namespace: private (default), host or none.")
@click.option("--pid", default="", help="PID namespace: private (default) or host.")
@click.option("--uts", default="", help="UTS namespace: private (default) or host.")
@click.option("--cidfile", default=None, help="Write the container ID to this file.")
@click.option("--label-file", multiple=True, help="Read K=V label lines from a file.")
@click.option("--sysctl", multiple=True, metavar="KEY=VALUE", help="Set a namespaced kernel parameter.")
@click.option("--shm-size", default=None, help="Size of /dev/shm (default 64m).")
@click.option("--group-add", multiple=True, help="Add a supplementary group (name or id).")
@click.pass_obj
def run_cmd(settings: Settings, image: str, command: tuple[str, ...], **flags) -> None:
    """Run a command in a new container."""
    from builder import runner

    code, cid = runner.run(settings.root, run_options(image, command, flags))
    if cid:
        click.echo(cid)
    sys.exit(code)


@main.command("ps")
@click.option("-a", "--all", "show_all", is_flag=True, help="Show stopped containers too.")
@click.option("-q", "--quiet", is_flag=True, help="Only IDs.")
@click.option("--no-trunc", is_flag=True, help="Do not truncate.")
@click.option("-f", "--filter", "filters", multiple=True, metavar="KEY=VALUE",
              help="status=STATUS, name=NAME, id=ID, label=KEY[=VALUE], ancestor=IMAGE, "
                   "exited=CODE.")
@click.option("-n", "--last", type=int, default=-1, help="Show the N last created containers "
                                                           "(all states).")
@click.option("-l", "--latest", is_flag=True, help="Show the latest created container.")
@click.option("-s", "--size", is_flag=True, help="Show the containers' sizes.")
@click.option("--format", "fmt", default="table",
              help="table, json, or a Go template: 'table {{.ID}}\\t{{.Names}}\\t{{.Status}}'.")
@click.pass_obj
def ps_cmd(settings: Settings, show_all: bool, quiet: bool, no_trunc: bool,
           filters: tuple[str, ...], last: int, latest: bool, size: bool, fmt: str) -> None:
    """List containers."""
    from builder.filters import select_containers
    from builder.runner.views import ps_table

    rows = select_containers(settings.store, _containers(settings).all(), filters, show_all,
                             1 if latest else last)
    if fmt.strip() not in ("", "table") and not quiet:
        from builder.formatting import PS_HEADERS, ps_rows, render_rows

        click.echo(render_rows(fmt, ps_rows(rows, no_trunc), PS_HEADERS), nl=False)
        return
    sizes = None
    if size and not quiet:
        from builder.filters import container_sizes

        sizes = container_sizes(settings.store(), rows)
    out = ps_table(rows, quiet, no_trunc, sizes=sizes)
    if out:
        click.echo(out)


@main.command("stop")
@click.argument("containers", nargs=-1, required=True)
@click.option("-t", "--time", "--timeout", "timeout", type=int, default=None,
              help="Seconds before SIGKILL.")
@click.option("-s", "--signal", "sig", default=None, help="Signal to send first.")
@click.pass_obj
def stop_cmd(settings: Settings, containers: tuple[str, ...], timeout: int | None,
             sig: str | None) -> None:
    """Stop running containers: the stop signal, then SIGKILL."""
    from builder.runner.lifecycle import stop
    from builder.runner.options import parse_signal

    from builder.filters import each

    signum = parse_signal(sig) if sig else None

    def one(ref: str) -> None:
        stop(_containers(settings), ref, timeout, signum)
        click.echo(ref)

    each(containers, one, _echo_err)     # docker: each missing one reported, the rest done


@main.command("kill")
@click.argument("containers", nargs=-1, required=True)
@click.option("-s", "--signal", "sig", default="KILL", help="Signal to send (default KILL).")
@click.pass_obj
def kill_cmd(settings: Settings, containers: tuple[str, ...], sig: str) -> None:
    """Send a signal to running containers."""
    from builder.runner.lifecycle import kill
    from builder.runner.options import parse_signal

    from builder.filters import each

    signum = parse_signal(sig)

    def one(ref: str) -> None:
        kill(_containers(settings), ref, signum)
        click.echo(ref)

    each(containers, one, _echo_err)


@main.command("rm")
@click.argument("containers", nargs=-1, required=True)
@click.option("-f", "--force", is_flag=True, help="Kill a running container first.")
@click.option("-v", "--volumes", is_flag=True, help="Remove its anonymous volumes too.")
@click.pass_obj
def rm_cmd(settings: Settings, containers: tuple[str, ...], force: bool, volumes: bool) -> None:
    """Remove containers."""
    from builder.filters import each
    from builder.runner.lifecycle import remove

    def one(ref: str) -> None:
        remove(_containers(settings), ref, force, volumes)
        click.echo(ref)
    each(containers, one, _echo_err)


@main.command("logs")
@click.argument("container")
@click.option("-f", "--follow", is_flag=True, help="Keep printing new output.")
@click.option("--tail", default="all", help="Number of lines from the end (default all).")
@click.option("-t", "--timestamps", is_flag=True, help="Prefix each line with its time.")
@click.option("--since", default=None, help="Only lines since a time (RFC 3339, Unix time or a "
              "duration such as 10m).")
@click.option("--until", default=None, help="Only lines before a time (as --since).")
@click.pass_obj
def logs_cmd(settings: Settings, container: str, follow: bool, tail: str, timestamps: bool,
             since: str | None, until: str | None) -> None:
    """Print a detached container's output."""
    from builder.runner.logs import show

    show(_containers(settings), container, follow, tail, timestamps, since, until)


@main.command("wait")
@click.argument("containers", nargs=-1, required=True)
@click.pass_obj
def wait_cmd(settings: Settings, containers: tuple[str, ...]) -> None:
    """Block until containers stop; print their exit codes."""
    from builder.runner.lifecycle import wait

    for ref in containers:
        click.echo(wait(_containers(settings), ref))


@main.command("exec", context_settings={"allow_interspersed_args": False})
@click.argument("container")
@click.argument("command", nargs=-1, required=True, type=click.UNPROCESSED)
@click.option("-i", "--interactive", is_flag=True, help="Keep stdin open.")
@click.option("-t", "--tty", is_flag=True, help="Allocate a pseudo-terminal.")
@click.option("-e", "--env", multiple=True, metavar="K=V", help="Set an environment variable.")
@click.option("-u", "--user", default=None, help="USER[:GROUP] (name or id).")
@click.option("-w", "--workdir", default=None, help="Working directory inside the container.")
@click.option("-d", "--detach", is_flag=True, help="Do not wait for the command.")
@click.pass_obj
def exec_cmd(settings: Settings, container: str, command: tuple[str, ...], interactive: bool,
             tty: bool, env: tuple[str, ...], user: str | None, workdir: str | None,
             detach: bool) -> None:
    """Run a command in a running container."""
    from builder.runner.exec import exec_in

    sys.exit(exec_in(_containers(settings), container, list(command), interactive=interactive,
                     use_tty=tty, env=list(env), user=user, workdir=workdir, detach=detach))


# docker's `docker container …` words -> pybuild's top-level command of that name
CONTAINER_ALIASES = {w: w for w in (
    "attach", "commit", "cp", "create", "diff", "exec", "export", "inspect", "kill", "logs",
    "pause", "port", "rename", "restart", "rm", "run", "start", "stats", "stop", "top",
    "unpause", "wait")} | {"ls": "ps", "list": "ps", "ps": "ps"}


@main.group("container", cls=ManagementGroup, aliases=CONTAINER_ALIASES)
def container_group() -> None:
    """Manage containers (docker's `container` words: ls, rm, inspect, …)."""


@container_group.command("prune")
@click.option("-f", "--force", is_flag=True, help="Do not ask (there is no prompt anyway).")
@click.option("--filter", "filters", multiple=True, metavar="KEY=VALUE",
              help="until=WHEN, label=KEY[=VALUE], label!=KEY[=VALUE].")
@click.pass_obj
def container_prune_cmd(settings: Settings, force: bool, filters: tuple[str, ...]) -> None:
    """Remove every stopped container."""
    from builder.filters import prune_containers
    from layerstore.humanize import human_size

    gone, freed = prune_containers(settings.root, _containers(settings), filters)
    if gone:
        click.echo("Deleted Containers:\n" + "\n".join(gone) + "\n")
    click.echo(f"Total reclaimed space: {human_size(freed)}")


@main.group("volume")
def volume_group() -> None:
    """Manage named volumes."""


def _volumes_in_use(settings: Settings) -> set[str]:
    return {m["Name"] for c in _containers(settings).all() for m in c.mounts if "Name" in m}


@volume_group.command("create")
@click.argument("name", required=False)
@click.option("-l", "--label", multiple=True, metavar="K=V")
@click.pass_obj
def volume_create_cmd(settings: Settings, name: str | None, label: tuple[str, ...]) -> None:
    """Create a volume."""
    from builder.runner.volumes import Volumes

    from builder.keyvalues import kv_map

    labels = kv_map(label, "--label")
    click.echo(Volumes(settings.root).create(name, labels).name)


@volume_group.command("ls")
@click.option("-q", "--quiet", is_flag=True)
@click.option("-f", "--filter", "filters", multiple=True, metavar="KEY=VALUE",
              help="dangling=true|false, name=NAME, label=KEY[=VALUE], driver=local.")
@click.option("--format", "fmt", default="table",
              help="table, json, or a Go template: '{{.Name}}\\t{{.Mountpoint}}'.")
@click.pass_obj
def volume_ls_cmd(settings: Settings, quiet: bool, filters: tuple[str, ...], fmt: str) -> None:
    """List volumes."""
    from builder import filters as flt
    from builder.runner.volumes import Volumes

    vols = flt.filter_volumes(Volumes(settings.root).list(), flt.parse(filters, flt.VOLUMES),
                              _volumes_in_use(settings) if filters else set())
    if fmt.strip() not in ("", "table") and not quiet:
        from builder.formatting import VOLUME_HEADERS, render_rows, volume_rows

        click.echo(render_rows(fmt, volume_rows(vols), VOLUME_HEADERS), nl=False)
        return
    if quiet:
        lines = [v.name for v in vols]
    else:
        lines = ["DRIVER    VOLUME NAME"] + [f"local     {v.name}" for v in vols]
    if lines:
        click.echo("\n".join(lines))


@volume_group.command("inspect")
@click.argument("names", nargs=-1, required=True)
@click.option("-f", "--format", "fmt", default=None, help="A Go template: '{{.Mountpoint}}'.")
@click.pass_obj
def volume_inspect_cmd(settings: Settings, names: tuple[str, ...], fmt: str | None) -> None:
    """Show volumes as JSON."""
    from builder.runner.volumes import Volumes

    _print_inspect([Volumes(settings.root).get(n).inspect() for n in names], fmt)


@volume_group.command("rm")
@click.argument("names", nargs=-1, required=True)
@click.pass_obj
def volume_rm_cmd(settings: Settings, names: tuple[str, ...]) -> None:
    """Remove volumes not used by any container."""
    from builder.filters import each
    from builder.runner.volumes import Volumes

    in_use = _volumes_in_use(settings)

    def one(n: str) -> None:
        Volumes(settings.root).remove(n, in_use)
        click.echo(n)
    each(names, one, _echo_err)


@volume_group.command("prune")
@click.option("-a", "--all", "all_volumes", is_flag=True, help="Named volumes too.")
@click.option("-f", "--force", is_flag=True, help="Do not ask (there is no prompt anyway).")
@click.option("--filter", "filters", multiple=True, metavar="KEY=VALUE",
              help="label=KEY[=VALUE], label!=KEY[=VALUE], all=true.")
@click.pass_obj
def volume_prune_cmd(settings: Settings, all_volumes: bool, force: bool,
                     filters: tuple[str, ...]) -> None:
    """Remove unused anonymous (with -a: all unused) volumes."""
    from builder.filters import prune_volumes
    from layerstore.humanize import human_size

    gone, freed = prune_volumes(settings.root, _volumes_in_use(settings), all_volumes, filters)
    if gone:
        click.echo("Deleted Volumes:\n" + "\n".join(gone) + "\n")
    click.echo(f"Total reclaimed space: {human_size(freed)}")


@main.command("bundle", context_settings={"allow_interspersed_args": False})
@click.argument("image")
@click.argument("directory", type=click.Path(path_type=Path))
@click.argument("command", nargs=-1, type=click.UNPROCESSED)
@click.option("--hostname", default=None, help="Host name (default: the image ID's first 12).")
@click.option("--entrypoint", default=None, help="Override the image's entrypoint.")
@click.pass_obj
def bundle_cmd(settings: Settings, image: str, directory: Path, command: tuple[str, ...],
               hostname: str | None, entrypoint: str | None) -> None:
    """Write an OCI runtime bundle (config.json + rootfs) that `runc run` executes."""
    from builder.runner.bundle import write_bundle

    write_bundle(settings.store(), image, directory, hostname=hostname, command=list(command),
                 entrypoint=entrypoint)
    click.echo(str(directory))


# --- build ---


@main.command("build")
@click.argument("context")
@click.option("-f", "--file", "dockerfile", default=None, help="Dockerfile path, or - for stdin.")
@click.option("-t", "--tag", "tags", multiple=True, help="Name the image NAME[:TAG].")
@click.option("--build-arg", "build_args", multiple=True, help="K[=V] build argument.")
@click.option("--build-arg-file", "build_arg_files", multiple=True, help="File of K=V lines.")
@click.option("--target", default=None, help="Build up to this stage.")
@click.option("--no-cache", is_flag=True, help="Do not use the build cache.")
@click.option("--no-cache-filter", "no_cache_filter", multiple=True, metavar="STAGE[,STAGE]",
              help="Do not take these stages' steps from the cache.")
@click.option("--ulimit", "ulimit", multiple=True, metavar="NAME=SOFT[:HARD]",
              help="Resource limit of RUN steps, e.g. nofile=1024:2048.")
@click.option("--call", "call", default=None, metavar="check|outline|targets[,format=json]",
              help="Do not build: check the Dockerfile, outline its build args and secrets, "
                   "or list its targets (--call build builds).")
@click.option("--check", "check", is_flag=True, help="Shorthand for --call check.")
@click.option("--pull", is_flag=True, help="Pull base images even if present.")
@click.option("--network", default="default", type=click.Choice(["default", "none", "host"]),
              help="RUN steps' network: default (a private namespace, NAT to the outside), "
                   "none, or host (needs --allow network.host).")
@click.option("--allow", "allow", multiple=True,
              help="Grant an entitlement: network.host (RUN on the host's network).")
@click.option("--platform", default=None, help="os/arch[/variant] of the image.")
@click.option("--label", "labels", multiple=True, help="K=V label on the image.")
@click.option("--annotation", "annotations", multiple=True, help="K=V manifest annotation.")
@click.option("--secret", "secrets", multiple=True, help="id=ID,src=PATH|env=VAR")
@click.option("--build-context", "build_contexts", multiple=True, help="NAME=DIR")
@click.option("--compression", default="gzip", type=click.Choice(["gzip", "zstd"]))
@click.option("--source-date-epoch", type=int, default=None,
              help="Clamp times (env SOURCE_DATE_EPOCH) for reproducible images.")
@click.option("--squash", is_flag=True, help="Merge all layers into one.")
@click.option("--iidfile", type=click.Path(path_type=Path), default=None)
@click.option("--metadata-file", type=click.Path(path_type=Path), default=None)
@click.option("-o", "--output", default=None,
              help="type=image|registry|oci|docker|local|tar,dest=PATH; "
                   "type=registry,name=REF or type=image,name=REF,push=true pushes.")
@click.option("--push", is_flag=True, help="Push the image to its -t names after the build "
                                         "(--output type=image,push=true).")
@click.option("--tls-verify", type=click.BOOL, default=None,
              help="Pushing and registry caches: verify TLS certificates (default: yes, "
                   "except on localhost).")
@click.option("--cache-to", "cache_to", multiple=True, metavar="SPEC",
              help="Export the build cache: type=registry,ref=REG/REPO:TAG[,mode=min|max]"
                   "[,ignore-error=true][,cache-mounts=true], type=local,dest=DIR, "
                   "type=inline (repeatable).")
@click.option("--cache-from", "cache_from", multiple=True, metavar="SPEC",
              help="Import a build cache: type=registry,ref=REF, type=local,src=DIR, or an "
                   "image REF built with --cache-to type=inline (repeatable).")
@click.option("--progress", "progress_mode", default="auto", envvar="BUILDKIT_PROGRESS",
              type=click.Choice(["auto", "tty", "plain", "rawjson", "quiet"]),
              help="Progress output (env BUILDKIT_PROGRESS).")
@click.option("-q", "--quiet", is_flag=True, help="Print only the image ID.")
@click.option("--jobs", default=4, show_default=True,
              help="Stages (and --platform platforms) built at the same time.")
@click.option("--add-host", "add_host", multiple=True, metavar="NAME:IP",
              help="Add a line to RUN steps' /etc/hosts (IP may be host-gateway).")
@click.option("--shm-size", default=None, help="Size of RUN steps' /dev/shm (default 64m).")
@_max_storage_option
@click.pass_obj
def build_cmd(settings: Settings, context: str, dockerfile: str | None,
              tls_verify: bool | None, max_storage: str | None, **kw) -> None:
    """Build an image from a Dockerfile and a context directory (- for none)."""
    from builder.buildcli import run_build
    from builder.storage import bounded

    with bounded(settings.root, settings.store, max_storage, _echo_err) as used:
        run_build(settings.root, settings.store, context, dockerfile,
                  registry_options=lambda: _registry_options(tls_verify, 6), used=used, **kw)


# commands registered by their own modules (kept light: heavy imports inside the commands)
from builder import cli_system  # noqa: E402,F401  (image/builder groups, info, version)
from builder import cli_fs  # noqa: E402,F401  (cp, diff, commit, export)
from builder import cli_containers  # noqa: E402,F401  (create, start, pause, top, stats, ...)
