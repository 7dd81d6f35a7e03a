"""`pybuild build` arguments -> BuildOptions -> build -> outputs (image, archive, dir).

Kept out of cli.py so the command stays thin and this is callable from tests.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import click

from builder.keyvalues import fields, kv_map
from layerstore.errors import PybuildError


def parse_output(text: str | None) -> dict[str, str]:
    if not text:
        return {"type": "image"}
    if "=" not in text:
        return {"type": "local", "dest": text}
    out = fields(text, "--output", lower=False)
    if out.get("type", "image") not in ("image", "oci", "docker", "local", "tar"):
        raise PybuildError(f"--output {text!r}: type must be image, oci, docker, local or tar "
                           "(push with `pybuild push` after building)")
    out.setdefault("type", "image")
    if out["type"] != "image" and "dest" not in out:
        raise PybuildError(f"--output {text!r}: dest= is required")
    return out


def run_build(root: Path, open_store, context: str, dockerfile: str | None, *, tags, build_args,
              build_arg_files, target, no_cache, pull, network, platform, labels, annotations,
              secrets, build_contexts, compression, source_date_epoch, squash, iidfile,
              metadata_file, output, progress_mode, quiet, jobs, allow=()) -> None:
    """Build per the command line; a rebuild the memo can vouch for skips the solver."""
    from builder.buildmemo import BuildMemo, MemoMiss, may_answer, may_record
    from builder.buildopts import BuildOptions, check_network, parse_allow, parse_build_args
    from builder.progress import Progress

    granted = parse_allow(allow)
    check_network(network, granted, "--network host (every RUN step)")
    args: dict[str, str] = {}
    for f in build_arg_files:
        try:
            lines = Path(f).read_text().splitlines()
        except OSError as exc:
            raise PybuildError(f"--build-arg-file {f}: {exc.strerror}") from None
        args.update(parse_build_args(l for l in lines if l.strip() and not l.lstrip().startswith("#")))
    args.update(parse_build_args(build_args))
    if source_date_epoch is None and os.environ.get("SOURCE_DATE_EPOCH", "").isdigit():
        source_date_epoch = int(os.environ["SOURCE_DATE_EPOCH"])
    opts = BuildOptions(context=None if context == "-" else Path(context).absolute(),
                        tags=list(tags), build_args=args, target=target, no_cache=no_cache,
                        pull=pull, network=network, allow=granted, platform=platform,
                        labels=kv_map(labels, "--label"),
                        annotations=kv_map(annotations, "--annotation", bare=None),
                        compression=compression, source_date_epoch=source_date_epoch,
                        squash=squash, jobs=max(1, jobs))
    if context == "-" or dockerfile == "-":
        opts.dockerfile_text = sys.stdin.buffer.read()
    elif dockerfile:
        opts.dockerfile = Path(dockerfile).absolute()
    if opts.context is not None and not opts.context.is_dir():
        raise PybuildError(f"build context {context}: not a directory")
    for k, v in kv_map(build_contexts, "--build-context", bare=None).items():
        opts.build_contexts[k] = Path(v).absolute()
    out = parse_output(output)
    mode = "quiet" if quiet else progress_mode
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
        _report(mode, answer.image_id, answer.manifest_digest, answer.names, 0, answer.cached,
                answer.warnings, iidfile, metadata_file)
        return

    from builder.build import build
    from builder.steps.mounts import parse_secret

    for s in secrets:
        sec = parse_secret(s)
        opts.secrets[sec.id] = sec
    store = open_store()
    progress = Progress(mode)
    try:
        result = build(store, opts, progress)
    finally:
        progress.close()
    deliver(store, result, out)
    if key is not None and result.memo is not None:
        memo.record(key, result.image_id, result.manifest.digest, result.names, result.warnings,
                    result.memo)
    _report(mode, result.image_id, result.manifest.digest, result.names, result.steps,
            result.cached, result.warnings, iidfile, metadata_file)


def _report(mode: str, image_id: str, manifest_digest: str, names: list[str], ran: int,
            cached: int, warnings: list[str], iidfile: Path | None,
            metadata_file: Path | None) -> None:
    for w in warnings:
        click.echo(f"WARNING: {w}", err=True)
    if iidfile:
        iidfile.write_text(image_id)
    if metadata_file:
        metadata_file.write_text(json.dumps({
            "containerimage.config.digest": image_id,
            "containerimage.digest": manifest_digest,
            "image.name": ",".join(names)}, indent=2))
    if mode not in ("quiet", "rawjson"):
        for n in names:
            click.echo(f"Successfully tagged {n}", err=True)
        click.echo(f"--> {image_id[7:19]} ({ran} steps run, {cached} cached)", err=True)
    click.echo(image_id)


def deliver(store, result, out: dict[str, str]) -> None:
    kind = out["type"]
    if kind == "image":
        return
    dest = Path(out["dest"])
    if kind in ("oci", "docker"):
        from layerstore.archive import save

        name = result.names[0] if result.names else result.manifest.digest
        save(store, [name], dest, kind)
    elif kind in ("local", "tar"):
        from layerstore.unpack import unpack_image

        image = store.resolve(result.manifest.digest)
        if kind == "local":
            unpack_image(store, image, dest)
        else:
            import tarfile

            from layerstore import workdirs

            # temporary work stays under ROOT (owned, reclaimed if we are killed)
            with workdirs.create(store.root / "tmp", "out-") as tmp:
                unpack_image(store, image, tmp.path / "root")
                with tarfile.open(dest, "w") as tar:
                    tar.add(tmp.path / "root", arcname=".")
