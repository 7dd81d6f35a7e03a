"""`pybuild cp`, `diff`, `commit`, `export`: a container's filesystem from the host
(builder.runner.cp, diff, commit; every container-side path through the resolver)."""

from __future__ import annotations

import os
import sys

import click

from builder.cli import Settings, main
from layerstore.errors import PybuildError


def _containers(settings: Settings):
    from builder.runner.containers import Containers

    return Containers(settings.root)


@main.command("cp")
@click.argument("src")
@click.argument("dest")
@click.option("-a", "--archive", is_flag=True,
              help="Archive mode (copy all uid/gid information).")
@click.option("-L", "--follow-link", is_flag=True, help="Always follow symbol link in SRC_PATH.")
@click.option("-q", "--quiet", is_flag=True, help="Suppress progress output (there is none).")
@click.pass_obj
def cp_cmd(settings: Settings, src: str, dest: str, archive: bool, follow_link: bool,
           quiet: bool) -> None:
    """Copy files between a container and the host: CONTAINER:SRC DEST or SRC CONTAINER:DEST
    (- for a tar on stdin/stdout). Works on running and stopped containers."""
    from builder.runner import cp
    from builder.runner.fsview import FsError, opened

    sc, spath = cp.split_arg(src)
    dc, dpath = cp.split_arg(dest)
    if sc and dc:
        raise FsError("copying between containers is not supported")
    if not sc and not dc:
        raise FsError("must specify at least one container source")
    store = settings.store()
    if sc:
        if not spath:
            raise FsError("source path cannot be empty")
        with opened(store, _containers(settings), sc) as cfs:
            cp.copy_out(cfs, sc, spath, dpath, archive=archive, follow=follow_link)
        return
    if not dpath:
        raise FsError("destination path cannot be empty")
    with opened(store, _containers(settings), dc) as cfs:
        cp.copy_in(cfs, dc, spath, dpath, archive=archive, follow=follow_link)


@main.command("diff")
@click.argument("container")
@click.pass_obj
def diff_cmd(settings: Settings, container: str) -> None:
    """Changes to files or directories on a container's filesystem (A added, C changed,
    D deleted)."""
    from builder.runner.diff import changes, lines

    for line in lines(changes(settings.store(), _containers(settings), container)):
        click.echo(line)


@main.command("commit")
@click.argument("container")
@click.argument("repository", required=False)
@click.option("-a", "--author", default=None, help='Author (e.g. "John Hannibal Smith <hannibal@a-team.com>").')
@click.option("-c", "--change", "changes", multiple=True,
              help="Apply a Dockerfile instruction to the created image (CMD, ENTRYPOINT, "
                   "ENV, EXPOSE, LABEL, ONBUILD, STOPSIGNAL, USER, VOLUME, WORKDIR).")
@click.option("-m", "--message", default=None, help="Commit message.")
@click.option("--pause/--no-pause", "pause", default=True,
              help="Accepted for docker; the container is not frozen (stop it first for a "
                   "consistent image).")
@click.pass_obj
def commit_cmd(settings: Settings, container: str, repository: str | None, author: str | None,
               changes: tuple[str, ...], message: str | None, pause: bool) -> None:
    """Create a new image from a container's changes."""
    from builder.runner.commit import commit

    click.echo(commit(settings.store(), _containers(settings), container, repository,
                      changes=list(changes), message=message, author=author))


@main.command("export")
@click.argument("container")
@click.option("-o", "--output", default=None, help="Write to a file, instead of STDOUT.")
@click.pass_obj
def export_cmd(settings: Settings, container: str, output: str | None) -> None:
    """Export a container's filesystem as a tar archive."""
    from builder.runner import cp
    from builder.runner.fsview import opened

    if output is None and sys.stdout.isatty():
        raise PybuildError("cowardly refusing to save to a terminal. Use the -o flag or redirect")
    store = settings.store()
    with opened(store, _containers(settings), container) as cfs:
        if output is None:
            cp.export(cfs, sys.stdout.buffer)
            return
        tmp = f"{output}.pybuild-{os.getpid()}.tmp"
        try:
            with open(tmp, "xb") as f:
                cp.export(cfs, f)
            os.replace(tmp, output)
        except BaseException:
            try:
                os.unlink(tmp)
            except OSError:
                pass
            raise
