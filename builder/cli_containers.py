"""docker's container lifecycle commands: create, start, restart, attach, rename, pause,
unpause, top, port, stats. `create` takes exactly run's options (the same click
parameters, -d aside); `run` is create + start through builder.runner.start."""

from __future__ import annotations

import sys

import click

from builder.cli import Settings, _containers, main, run_cmd, run_options


def _each(settings: Settings, refs: tuple[str, ...], action) -> None:
    """docker's habit for several names: report each failure, go on, exit 1 at the end
    (the one mechanism, builder.filters.each); each name done is echoed."""
    from builder.filters import each

    def one(ref: str) -> None:
        action(_containers(settings), ref)
        click.echo(ref)

    each(refs, one, lambda line: click.echo(line, err=True), own_status=False)


@main.command("create", context_settings={"allow_interspersed_args": False})
@click.pass_obj
def create_cmd(settings: Settings, image: str, command: tuple[str, ...], **flags) -> None:
    """Create a new container (docker start runs it); prints its ID."""
    from builder.runner.start import create

    flags["detach"] = True      # `start` runs it detached unless -a/-i
    p = create(settings.root, run_options(image, command, flags), awaits_start=True)
    p.containers.disown(p.state.id)
    click.echo(p.state.id)


# run's own click parameters, shared rather than copied (flags added to run reach create)
create_cmd.params = [p for p in run_cmd.params if p.name != "detach"]


@main.command("start")
@click.argument("containers", nargs=-1, required=True)
@click.option("-a", "--attach", is_flag=True, help="Attach output and return the exit code.")
@click.option("-i", "--interactive", is_flag=True, help="Attach stdin too (implies -a).")
@click.pass_obj
def start_cmd(settings: Settings, containers: tuple[str, ...], attach: bool,
              interactive: bool) -> None:
    """Start created or stopped containers (detached unless -a/-i)."""
    from builder.runner.start import start

    if attach or interactive:
        if len(containers) > 1:
            raise click.UsageError("you cannot start and attach multiple containers at once")
        _, code = start(_containers(settings), containers[0], attach, interactive)
        sys.exit(code)
    _each(settings, containers, lambda cs, ref: start(cs, ref))


@main.command("restart")
@click.argument("containers", nargs=-1, required=True)
@click.option("-t", "--time", "--timeout", "timeout", type=int, default=None,
              help="Seconds to wait for the stop before SIGKILL.")
@click.option("-s", "--signal", "sig", default=None, help="Signal to stop with.")
@click.pass_obj
def restart_cmd(settings: Settings, containers: tuple[str, ...], timeout: int | None,
                sig: str | None) -> None:
    """Stop (if running) and start containers again, detached."""
    from builder.runner.lifecycle import stop
    from builder.runner.options import parse_signal
    from builder.runner.start import start

    signum = parse_signal(sig) if sig else None

    def again(cs, ref):
        st = stop(cs, ref, timeout, signum)
        start(cs, st.id)
    _each(settings, containers, again)


@main.command("attach")
@click.argument("container")
@click.pass_obj
def attach_cmd(settings: Settings, container: str) -> None:
    """Print a running container's output until it exits; exit with its code."""
    from builder.runner.attach import attach_running

    sys.exit(attach_running(_containers(settings), container))


@main.command("rename")
@click.argument("container")
@click.argument("new_name")
@click.pass_obj
def rename_cmd(settings: Settings, container: str, new_name: str) -> None:
    """Rename a container."""
    from builder.runner.options import check_container_name

    cs = _containers(settings)
    cs.rename(cs.find(container), check_container_name(new_name))


@main.command("pause")
@click.argument("containers", nargs=-1, required=True)
@click.pass_obj
def pause_cmd(settings: Settings, containers: tuple[str, ...]) -> None:
    """Freeze every process of containers (cgroup freezer)."""
    from builder.runner.pause import pause

    _each(settings, containers, pause)


@main.command("unpause")
@click.argument("containers", nargs=-1, required=True)
@click.pass_obj
def unpause_cmd(settings: Settings, containers: tuple[str, ...]) -> None:
    """Thaw paused containers."""
    from builder.runner.pause import unpause

    _each(settings, containers, unpause)


@main.command("top", context_settings={"allow_interspersed_args": False,
                                       "ignore_unknown_options": True})
@click.argument("container")
@click.argument("ps_args", nargs=-1, type=click.UNPROCESSED)
@click.pass_obj
def top_cmd(settings: Settings, container: str, ps_args: tuple[str, ...]) -> None:
    """Show a container's processes (the host's ps, default -ef)."""
    from builder.runner.top import render, top

    out = render(top(_containers(settings), container, list(ps_args)))
    if out:
        click.echo(out)


@main.command("port")
@click.argument("container")
@click.argument("private", required=False, metavar="[PRIVATE_PORT[/PROTO]]")
@click.pass_obj
def port_cmd(settings: Settings, container: str, private: str | None) -> None:
    """List a container's published ports."""
    from builder.runner.views import port_lines

    for line in port_lines(_containers(settings).find(container), private):
        click.echo(line)


@main.command("stats")
@click.argument("containers", nargs=-1)
@click.option("-a", "--all", "show_all", is_flag=True, help="Stopped containers too.")
@click.option("--no-stream", is_flag=True, help="Print one table and exit.")
@click.option("--no-trunc", is_flag=True, help="Full container IDs.")
@click.pass_obj
def stats_cmd(settings: Settings, containers: tuple[str, ...], show_all: bool,
              no_stream: bool, no_trunc: bool) -> None:
    """CPU, memory, network, block I/O and pids of containers (refreshed every second)."""
    import time

    from builder.runner.lifecycle import is_running
    from builder.runner.stats import sample, table

    cs = _containers(settings)

    def states():
        if containers:
            return [cs.find(ref) for ref in containers]
        return [st for st in cs.all() if show_all or is_running(st)]
    before = [s for s in map(sample, states()) if s is not None]
    try:
        while True:
            time.sleep(0.5 if no_stream else 1.0)
            after = [s for s in map(sample, states()) if s is not None]
            text = table(before, after, no_trunc)
            if no_stream:
                click.echo(text)
                return
            click.echo("\033[2J\033[H" + text)
            before = after
    except KeyboardInterrupt:
        sys.exit(130)
