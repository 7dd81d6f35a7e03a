"""`pybuild build` arguments -> BuildOptions -> build -> outputs (image, archive, dir).

Kept out of cli.py so the command stays thin and this is callable from tests.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import click

from builder.keyvalues import fields, kv_map
from layerstore.errors import PybuildError


_OUTPUT_KEYS = {"image": {"type", "name", "push"}, "oci": {"type", "dest"},
                "docker": {"type", "dest"}, "local": {"type", "dest"}, "tar": {"type", "dest"}}
_BOOLS = {"true": "true", "1": "true", "t": "true", "false": "false", "0": "false", "f": "false"}


def parse_output(text: str | None, push: bool = False) -> dict[str, str]:
    """buildx's --output: `type=...,dest=...`; a bare `-` is a tar on stdout, any other
    bare word a local directory. `type=registry` is `type=image,push=true` (as in
    buildx), and `--push` (`push`) sets push=true on an image output."""
    if not text:
        out = {"type": "image"}
    elif text == "-":
        out = {"type": "tar", "dest": "-"}
    elif "=" not in text:
        out = {"type": "local", "dest": text}
    else:
        out = fields(text, "--output", lower=False, quoted=True, repeat=("name",))
        kind = out.setdefault("type", "image")
        if kind == "registry":
            out["type"] = "image"
            out.setdefault("push", "true")
        elif kind not in _OUTPUT_KEYS:
            raise PybuildError(f"--output {text!r}: type must be image, registry, oci, docker, "
                               "local or tar")
        unknown = sorted(set(out) - _OUTPUT_KEYS[out["type"]])
        if unknown:
            raise PybuildError(f"--output {text!r}: unknown key {unknown[0]!r} for type={kind} "
                               f"(known: {', '.join(sorted(_OUTPUT_KEYS[out['type']]))})")
        if out["type"] != "image" and "dest" not in out:
            raise PybuildError(f"--output {text!r}: dest= is required")
        if "push" in out:
            value = _BOOLS.get(out["push"].lower())
            if value is None:
                raise PybuildError(f"--output {text!r}: push={out['push']} is not true or false")
            out["push"] = value
    if push:
        if out["type"] != "image":
            raise PybuildError(f"--push and --output type={out['type']} cannot be used together "
                               "(--push pushes the image: drop one of them)")
        out["push"] = "true"
    return out


def output_names(out: dict[str, str]) -> list[str]:
    """The `name=` values of an image output (`"name=a,b"` or name=a,name=b)."""
    return [n.strip() for n in out.get("name", "").split(",") if n.strip()]


def push_targets(out: dict[str, str], tags) -> list[str]:
    """Where an image output with push=true goes: its `name=` values, else the -t tags
    (buildx's rule). Checked before any step runs: a build that cannot be pushed
    should not be built first."""
    from layerstore import reference

    if out.get("push") != "true":
        return []
    targets = output_names(out) or list(tags)
    if not targets:
        raise PybuildError("pushing needs a name: give -t REGISTRY/REPO:TAG or "
                           "--output type=registry,name=REGISTRY/REPO:TAG")
    for t in targets:
        if reference.parse(t).digest:
            raise PybuildError(f"{t}: push to a tag, not a digest")
    return list(dict.fromkeys(str(reference.parse(t)) for t in targets))


def read_bounded(path: str, option: str, limit: int = 1 << 20) -> str:
    """A small text file named on the command line (`--build-arg-file /dev/zero` read
    until the OOM killer came)."""
    with open(path, "rb") as f:
        data = f.read(limit + 1)
    if len(data) > limit:
        raise PybuildError(f"{option} {path}: larger than {limit >> 20} MiB")
    return data.decode("utf-8", "surrogateescape")


def read_stdin_dockerfile() -> bytes:
    """`-f -` / context `-`: bounded as a Dockerfile read from disk is (`yes | pybuild
    build -` read until memory ran out)."""
    from builder.buildopts import MAX_DOCKERFILE

    data = sys.stdin.buffer.read(MAX_DOCKERFILE + 1)
    if len(data) > MAX_DOCKERFILE:
        raise PybuildError(f"the Dockerfile on stdin is larger than {MAX_DOCKERFILE >> 20} MiB")
    return data


def named_context(name: str, value: str) -> Path:
    """`--build-context NAME=DIR`: a local directory. buildx's other sources (an image,
    a URL, an OCI layout) are refused by name: read as paths they named a directory of
    the current one, and an empty value named the current directory itself."""
    if not value:
        raise PybuildError(f"--build-context {name}=: no directory given")
    if "://" in value or value.startswith(("target:", "git@")):
        raise PybuildError(f"--build-context {name}={value}: only a local directory is "
                           "supported (not an image, a URL or a git repository)")
    return Path(value).absolute()     # checked when a step uses it (an unused one may be absent)


def _sandbox_options(opts, add_host, shm_size) -> None:
    """build --add-host NAME:IP and --shm-size SIZE, parsed as run's (one parser each)."""
    from builder.runner.options import parse_add_host, parse_size

    opts.add_hosts = [parse_add_host(h) for h in add_host]
    opts.shm_size = parse_size(shm_size, "--shm-size") if shm_size is not None else None


_MAX_EPOCH = 253402300799     # 9999-12-31T23:59:59Z: the last time an RFC 3339 date can say


def check_epoch(value: int | None) -> int | None:
    """--source-date-epoch, else a non-empty SOURCE_DATE_EPOCH (as buildx reads it):
    seconds since 1970, checked before any step (a bad value in the environment was
    ignored, a negative or huge one failed after the build as a traceback)."""
    what = "--source-date-epoch"
    if value is None:
        text = os.environ.get("SOURCE_DATE_EPOCH", "")
        if not text:
            return None
        what = "SOURCE_DATE_EPOCH"
        if not (text.isascii() and text.isdigit()):
            raise PybuildError(f"{what}={text[:40]!r} (environment): not a number of seconds "
                               "(a non-negative integer)")
        value = int(text)
    if not 0 <= value <= _MAX_EPOCH:
        raise PybuildError(f"{what} {value}: must be between 0 and {_MAX_EPOCH} "
                           "(seconds since 1970-01-01)")
    return value


def collect_build_args(build_arg_files, build_args) -> dict[str, str]:
    """--build-arg-file lines, then --build-arg (which wins)."""
    from builder.buildopts import parse_build_args

    args: dict[str, str] = {}
    for f in build_arg_files:
        try:
            lines = read_bounded(f, "--build-arg-file").splitlines()
        except OSError as exc:
            raise PybuildError(f"--build-arg-file {f}: {exc.strerror}") from None
        args.update(parse_build_args(l for l in lines if l.strip() and not l.lstrip().startswith("#")))
    args.update(parse_build_args(build_args))
    return args


def run_build(root: Path, open_store, context: str, dockerfile: str | None, *, tags, build_args,
              build_arg_files, target, no_cache, pull, network, platform, labels, annotations,
              secrets, build_contexts, compression, source_date_epoch, squash, iidfile,
              metadata_file, output, progress_mode, quiet, jobs, allow=(), push=False,
              registry_options=None, cache_to=(), cache_from=(), used=None, add_host=(),
              shm_size=None, ulimit=(), no_cache_filter=(), call=None, check=False) -> None:
    """Build per the command line; a rebuild the memo can vouch for skips the solver.
    `registry_options`: a callable giving the registry client's Options (--tls-verify),
    asked only when the build pushes. `used` (a layerstore.budget.InUse) learns what the
    build used, for the --max-storage prune after it."""
    from builder.buildcall import parse_call, run_call
    from builder.buildmemo import BuildMemo, MemoMiss, MemoRecord, may_answer, may_record
    from builder.buildopts import (BuildOptions, check_network, parse_allow,
                                   parse_no_cache_filter, parse_ulimits)
    from builder.progress import Progress

    what = parse_call(call, check)
    ulimits = parse_ulimits(ulimit)
    skip_cache = parse_no_cache_filter(no_cache_filter)
    if what is not None:    # BuildKit's subrequests: the Dockerfile read and planned, no build
        args = collect_build_args(build_arg_files, build_args)
        raise click.exceptions.Exit(run_call(what, context, dockerfile, args, target, platform))
    if jobs < 1:    # as docker refuses a bad number instead of quietly using another
        raise PybuildError(f"--jobs {jobs}: must be at least 1")
    source_date_epoch = check_epoch(source_date_epoch)
    platforms: list[str] = []
    if platform:
        from layerstore.platforms import platform_list

        platforms = platform_list(platform)
        platform = platforms[0] if len(platforms) == 1 else None
    granted = parse_allow(allow)
    check_network(network, granted, "--network host (every RUN step)")
    from layerstore import reference

    for t in tags:    # before any step runs, as docker does, not after the whole build
        reference.parse(t)
    out = parse_output(output, push)
    if len(platforms) > 1:
        from builder.buildmulti import check_output

        check_output(out)
    targets = push_targets(out, tags)
    named = {str(reference.parse(t)) for t in tags}
    for n in output_names(out):     # the image exporter's names are the image's names too
        if str(reference.parse(n)) not in named:
            named.add(str(reference.parse(n)))
            tags = [*tags, n]
    push_options = registry_options() if targets and registry_options else None
    from builder.remotecache.spec import parse_specs

    # --cache-to/--cache-from: every value checked before any step runs
    exports, sources = parse_specs(cache_to, cache_from, compression)
    args = collect_build_args(build_arg_files, build_args)
    opts = BuildOptions(context=None if context == "-" else Path(context).absolute(),
                        tags=list(tags), build_args=args, target=target, no_cache=no_cache,
                        pull=pull, network=network, allow=granted, platform=platform,
                        labels=kv_map(labels, "--label"),
                        annotations=kv_map(annotations, "--annotation", bare=None),
                        compression=compression, source_date_epoch=source_date_epoch,
                        squash=squash, jobs=jobs, cache_to=exports,
                        cache_from=sources, ulimits=ulimits, no_cache_filter=skip_cache)
    _sandbox_options(opts, add_host, shm_size)
    if registry_options and any(s.type == "registry" for s in exports + sources):
        opts.registry_options = push_options or registry_options()
    if context == "-" or dockerfile == "-":
        opts.dockerfile_text = read_stdin_dockerfile()
    elif dockerfile:
        opts.dockerfile = Path(dockerfile).absolute()
    if opts.context is not None and not opts.context.is_dir():
        raise PybuildError(f"build context {context}: not a directory")
    for k, v in kv_map(build_contexts, "--build-context", bare=None).items():
        opts.build_contexts[k] = named_context(k, v)
    from builder.steps.mounts import parse_secret

    for s in secrets:    # a missing source fails now, not at the RUN step that needs it
        sec = parse_secret(s)
        sec.check()
        opts.secrets[sec.id] = sec
    mode = "quiet" if quiet else progress_mode
    if len(platforms) > 1:
        _build_platforms(open_store(), opts, platforms, out, targets, push_options, mode, used,
                         iidfile, metadata_file)
        return
    memo, key, answer = BuildMemo(root), None, None
    if may_record(out["type"]):
        try:
            key = memo.key(opts, list(secrets))
            answer = memo.answer(key) if may_answer(opts) else None
        except (MemoMiss, OSError, PybuildError):
            key = None  # e.g. a file vanished mid-walk, a named context missing: the solver decides
    if answer is not None:
        progress = Progress(mode)
        try:
            for n, label, text, is_from in answer.steps:
                progress.start(n, label, text)
                progress.done(n) if is_from else progress.cached(n)
        finally:
            progress.close()
        if used is not None:
            used.manifests.add(answer.manifest_digest)
            used.keys.update(answer.entries)
            used.blobs.update(answer.blobs)
        if targets:
            push_image(open_store(), answer.manifest_digest, targets, {}, push_options, mode)
        _report(mode, answer.image_id, answer.manifest_digest, answer.names, 0, answer.cached,
                answer.warnings, iidfile, metadata_file)
        return

    from builder.build import build

    store = open_store()
    progress = Progress(mode)
    with _reported(progress, mode):
        result = build(store, opts, progress)
    if used is not None:
        from builder.storage import note_build

        note_build(used, result)
    deliver(store, result, out)
    if key is not None and result.memo is not None:
        m = result.memo
        memo.record(key, MemoRecord(result.image_id, result.manifest.digest, result.names,
                                    result.warnings, [tuple(b) for b in m["bases"]],
                                    m["entries"], m["blobs"], [list(t) for t in m["steps"]]))
    if targets:
        push_image(store, result.manifest.digest, targets, result.origins, push_options, mode)
    _report(mode, result.image_id, result.manifest.digest, result.names, result.steps,
            result.cached, result.warnings, iidfile, metadata_file,
            stdout=out.get("dest") != "-")


@contextmanager
def _reported(progress, mode: str) -> Iterator[None]:
    """Closes the progress view; a failed build is told in BuildKit's order: the live view
    ends, then the failing step's framed log and Dockerfile excerpt, then the error line
    (the CLI's, last; never cut to the terminal's width: written as is, not through the
    live view)."""
    try:
        yield
    except PybuildError as exc:
        progress.close()
        report = getattr(exc, "step_report", "")
        if report and mode != "rawjson":
            sys.stderr.write(report)
            sys.stderr.flush()
        raise
    finally:
        progress.close()


def _build_platforms(store, opts, platforms: list[str], out: dict[str, str],
                     targets: list[str], push_options, mode: str, used, iidfile,
                     metadata_file) -> None:
    """Several platforms: a build each, at once up to --jobs, into one progress view, one
    index (builder/buildmulti.py); no memo (each platform's steps still come from the
    cache). A failure is reported as one platform's is."""
    from builder.buildmulti import build_platforms
    from builder.progress import Progress

    progress = Progress(mode)
    with _reported(progress, mode):
        res = build_platforms(store, opts, platforms, progress, used)
    if out["type"] == "oci":
        from layerstore.archive import save

        name = res.names[0] if res.names else res.index.digest
        save(store, [name], None if out["dest"] == "-" else Path(out["dest"]), "oci",
             **({"stdout": sys.stdout.buffer} if out["dest"] == "-" else {}))
    if targets:
        push_image(store, res.index.digest, targets, {}, push_options, mode)
    _report(mode, res.index.digest, res.index.digest, res.names, res.steps, res.cached,
            res.warnings, iidfile, metadata_file, stdout=out.get("dest") != "-")


def push_image(store, manifest_digest: str, targets: list[str], origins: dict[str, str],
               options, mode: str) -> None:
    """`--push` / `type=registry`: the built image (its manifest digest, so a tag moved by
    another build meanwhile is not what goes up) to each target, through the one push
    path `pybuild push` takes; blobs the build cache knows in the same registry
    (`origins`) are mounted, never uploaded. One summary line per target."""
    from layerstore import reference
    from layerstore.registry.progress import human, reporter
    from layerstore.registry.push import push

    quiet = mode in ("quiet", "rawjson")     # rawjson's stderr is JSON lines only
    for target in targets:
        ref = reference.parse(target)
        res = push(store, f"{ref.domain}/{ref.path}@{manifest_digest}", target,
                   options=options, progress=reporter("quiet" if quiet else mode),
                   origins=origins)
        if not quiet:
            click.echo(f"pushed {target} {res.digest}: {res.uploaded} blobs uploaded "
                       f"({res.uploaded_bytes} bytes, {human(res.uploaded_bytes)}), "
                       f"{res.mounted} mounted, {res.existing} already there", err=True)


def _write_file(option: str, path: Path, text: str) -> None:
    try:
        path.write_text(text)
    except OSError as exc:
        raise PybuildError(f"{option} {path}: {exc.strerror}") from None


def _report(mode: str, image_id: str, manifest_digest: str, names: list[str], ran: int,
            cached: int, warnings: list[str], iidfile: Path | None,
            metadata_file: Path | None, stdout: bool = True) -> None:
    """`stdout`: False when the image's archive went there (`-o -`): nothing else may."""
    for w in warnings:
        click.echo(f"WARNING: {w}", err=True)
    if iidfile:
        _write_file("--iidfile", iidfile, image_id)
    if metadata_file:
        _write_file("--metadata-file", metadata_file, json.dumps({
            "containerimage.config.digest": image_id,
            "containerimage.digest": manifest_digest,
            "image.name": ",".join(names)}, indent=2))
    if mode not in ("quiet", "rawjson"):
        for n in names:
            click.echo(f"Successfully tagged {n}", err=True)
        click.echo(f"--> {image_id[7:19]} ({ran} step{'' if ran == 1 else 's'} run, "
                   f"{cached} cached)", err=True)
    click.echo(image_id, err=not stdout)


def deliver(store, result, out: dict[str, str]) -> None:
    """Write the built image where --output asked: an archive (oci, docker), its files
    (local), or their tar; `dest=-` is stdout for the archives."""
    kind = out["type"]
    if kind == "image":
        return
    to_stdout = out["dest"] == "-"
    if kind == "local" and to_stdout:
        raise PybuildError("--output type=local: dest=- is not a directory (use type=tar)")
    dest = Path(out["dest"])
    if kind in ("oci", "docker"):
        from layerstore.archive import save

        name = result.names[0] if result.names else result.manifest.digest
        if to_stdout:
            save(store, [name], None, kind, stdout=sys.stdout.buffer)
        else:
            save(store, [name], dest, kind)
        return
    from layerstore.unpack import unpack_image

    image = store.load_image(result.manifest)
    if kind == "local":
        if dest.exists() and not dest.is_dir():
            raise PybuildError(f"--output type=local,dest={dest}: not a directory")
        unpack_image(store, image, dest)
        return
    import tarfile

    from layerstore import workdirs

    if not to_stdout and dest.is_dir():
        raise PybuildError(f"--output type=tar,dest={dest}: is a directory")
    # temporary work stays under ROOT (owned, reclaimed if we are killed)
    with workdirs.create(store.root / "tmp", "out-") as tmp:
        unpack_image(store, image, tmp.path / "root")
        if to_stdout:
            with tarfile.open(fileobj=sys.stdout.buffer, mode="w|") as tar:
                tar.add(tmp.path / "root", arcname=".")
            sys.stdout.buffer.flush()
        else:
            with tarfile.open(dest, "w") as tar:
                tar.add(tmp.path / "root", arcname=".")
