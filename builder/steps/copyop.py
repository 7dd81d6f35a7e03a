"""The COPY/ADD op: what the step reads, its cache key, and the write into a new layer.

`cache_key` gathers every input and hashes it: heredocs rendered in the stage's
scope, context sources (the main context or a --build-context) selected and
hashed by builder/steps/copy.py, another stage's or image's key for --from,
and ADD's URLs, which are downloaded here (keyed by their content: a download
is an input like a context file). `execute` writes exactly the selected entries
into a fresh upper over the state through the path resolver
(copy.copy_into inside rootview.in_overlay) and commits it; `release` drops the
downloads. Helpers live in copy.py (selection, hashing, writing) and download.py.
"""

from __future__ import annotations

import hashlib
import json
import secrets as pysecrets
from pathlib import Path

from builder.cache import step_key
from builder.context import Context
from builder.dockerfile import instructions as ins
from builder.rootview import in_overlay, normalize_dest
from builder.steps import copy as copystep
from builder.steps import download
from builder.steps.base import BuildError, Op, State, StepContext, canonical
from layerstore.errors import PybuildError
from layerstore.resolver import remove_tree


class CopyOp(Op):
    def __init__(self, i: ins._Transfer) -> None:
        self.i = i
        self.is_add = isinstance(i, ins.Add)
        self.dl_dir: Path | None = None
        self.dl_trees: list[copystep.SourceTree] = []

    def cache_key(self, ctx: StepContext) -> str:
        i, is_add, b = self.i, self.is_add, ctx.services
        from_ = getattr(i, "from_", None)
        heredoc_names = {h.name for h in i.heredocs}
        heredocs: list[tuple[str, str]] = []
        plain_sources = []
        for s in i.sources:
            name = s.lstrip("0123456789").lstrip("<").lstrip("-").strip("'\"")
            if s.lstrip("0123456789").startswith("<<") and name in heredoc_names:
                h = next(h for h in i.heredocs if h.name == name)
                heredocs.append((name, h.render(ctx.scope(), ctx.escape)))
            else:
                plain_sources.append(s)
        dest = normalize_dest(i.dest, ctx.state.config.config.WorkingDir or "/")
        if is_add:
            git = [s for s in plain_sources if download.is_git(s)]
            if git:
                raise download.DownloadError(
                    f"ADD {git[0]}: git repositories are not supported by pybuild (clone it "
                    "into the build context, or in a RUN step)")
            download.check_checksum(i.checksum, plain_sources + [f"<<{n}" for n, _ in heredocs])
        urls = [s for s in plain_sources if is_add and "://" in s]
        downloads: list[tuple[str, Path]] = []
        if urls:
            b.volatile = True   # fetched again by every build
            plain_sources = [s for s in plain_sources if s not in urls]
            self.dl_dir = b.scratch / f"download-{pysecrets.token_hex(6)}"
            self.dl_dir.mkdir()
            for k, url in enumerate(urls):
                downloads.append((url, download.fetch(url, self.dl_dir / str(k),
                                                      getattr(i, "checksum", None))))

        self.source_state: State | None = None
        sel = None
        context = ctx.context
        if from_ and from_ in b.opts.build_contexts:
            # --build-context NAME=DIR: another read-only context, same rules as the main one
            context = Context.open(b.opts.build_contexts[from_])
            context.name = f"context {from_!r}"
            from_ = None
        if from_:
            self.source_state = ctx.source_state(from_)
            inputs = "from " + self.source_state.key
            content = hashlib.sha256((inputs + json.dumps(plain_sources)).encode()).hexdigest()
        else:
            if plain_sources and context.root is None:
                raise BuildError("no build context (Dockerfile from stdin): "
                                 f"{i.keyword} {plain_sources[0]} has nothing to copy from")
            # the entries selected and hashed here are exactly what the copy writes
            sel = copystep.select_sources(plain_sources, copystep.SourceTree.of_context(context),
                                          list(i.exclude)) \
                if plain_sources else copystep.Selection()
            with b.hash_lock:
                content = copystep.digest_selection(sel, b.hashes)
            inputs = content
        hd = hashlib.sha256(json.dumps(heredocs).encode()).hexdigest()
        for url, path in downloads:
            # a remote file is keyed by its content (and copied as a file, never extracted)
            tree = copystep.SourceTree.of_files(path.parent, "download")
            self.dl_trees.append(tree)
            dl = copystep.select_sources([path.name], tree)
            item = dl.items[0]
            # ADD --unpack (BuildKit's): a download is extracted only when asked
            item.rel, item.arg = download.url_name(url), download.redact_text(url)
            item.archive_ok = getattr(i, "unpack", None) is True
            hd += f" {url} {copystep.digest_selection(dl)}"
            sel = sel or copystep.Selection()
            sel.items.append(item)
        self.sel, self.content, self.dest = sel, content, dest
        self.heredocs, self.downloads = heredocs, downloads
        self.plain_sources, self.from_ = plain_sources, from_
        return step_key(ctx.state.key, canonical(i) + dest, {}, inputs + hd)

    def execute(self, ctx: StepContext, key: str) -> State:
        i, b, sel = self.i, ctx.services, self.sel
        job = copystep.CopyJob(i.keyword, self.dest, sel.items if sel else None,
                               self.plain_sources if self.from_ else None, self.heredocs,
                               chown=i.chown, chmod=i.chmod, exclude=list(i.exclude),
                               parents=bool(getattr(i, "parents", False)),
                               extract=self.is_add and getattr(i, "unpack", None) is not False,
                               arg_count=len(self.plain_sources) + len(self.downloads),
                               mtime=float(b.opts.source_date_epoch)
                               if b.opts.source_date_epoch is not None else None)
        ws = b.workspace(ctx.state)
        try:
            plans = [ws.plan]
            if self.source_state is not None:
                plans.append(b.store.snapshots.view(b.lowers(self.source_state)))
            try:
                in_overlay(plans, copystep.copy_into, job, scratch=ws.dir)
            except PybuildError:
                if sel is not None:
                    with b.hash_lock:
                        b.hashes.forget(sel)
                        b.hashes.save()
                raise
            created_by = copystep.summary(i.keyword, self.content, sel, i.dest)
            return b.commit_upper(ctx.state, ws.upper, created_by, key)
        finally:
            ws.release()

    def release(self) -> None:
        for tree in self.dl_trees:
            tree.close()
        self.dl_trees = []
        if self.dl_dir is not None:
            remove_tree(self.dl_dir)
            self.dl_dir = None
