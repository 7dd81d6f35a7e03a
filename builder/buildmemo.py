"""The whole-build memo: a rebuild with nothing changed answers without re-solving.

The solver's cache already makes such a rebuild run nothing, but reaching that
answer means loading the Dockerfile frontend, resolving images and checking every
step. After a successful build the memo records, under a key of everything the
build was given (Dockerfile bytes, options, ignore rules, and the stat signature
of every context file that is not ignored), what the solver concluded: the image,
how each base image resolved, the cache entries and blobs it used, and the steps it
showed. A later build with the same key is answered from the record when all of that
still holds: the refs still point where they did, the entries and blobs still exist.

The stat signature (inode, size, mtime, ctime, mode, owner) is the same trust the
solver's context hashing uses (steps/copy.py FileHashes): a file rewritten in place
changes its ctime. Anything the record cannot vouch for goes the long way: --no-cache,
--pull, outputs other than the store, ADD of a URL, a base found by image ID. A --no-cache
or --pull build still leaves a record: the cache entries it wrote are what a plain
rebuild would hit.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import stat
from dataclasses import dataclass, field
from pathlib import Path

from builder.buildopts import BuildOptions, locate_dockerfile, read_dockerfile
from builder.context import Context
from builder import VERSION
from layerstore import digest as dg
from layerstore import jsonlimits, resolver
from layerstore.atomic import atomic_write
from layerstore.errors import PybuildError
from layerstore.locking import file_lock

# 2: records of builds that pybuild now refuses (RUN --security=insecure) or expands
# otherwise (${x//p/r}, .dockerignore classes) must not answer for the solver
FORMAT = 2
_HEX_KEY = re.compile(r"[0-9a-f]{64}")
KEEP = 200      # records kept, newest first


@dataclass
class MemoRecord:
    """What a build left for the memo. Read back from disk it is input like any other:
    every name in it becomes a lookup in the store, so each must be what we write (a
    digest, a hex cache key), never `../..`; anything else makes the record no record."""

    image_id: str
    manifest: str
    names: list[str]
    warnings: list[str]
    bases: list[tuple[str, str]]   # (ref name in index.json or "", digest it resolved to)
    entries: list[str]             # cache keys the solver asked for, hit or made
    blobs: list[str]               # every blob the result rests on
    steps: list[list]              # [n, label, text, is FROM], as the progress showed them

    @classmethod
    def from_json(cls, doc: dict) -> "MemoRecord":
        def strings(v) -> list[str]:
            if not isinstance(v, list) or not all(isinstance(x, str) for x in v):
                raise MemoMiss("not a list of strings")
            return v
        if doc.get("format") != FORMAT:
            raise MemoMiss("another format")
        bases = doc["bases"]
        if not isinstance(bases, list) or not all(
                isinstance(b, list) and len(b) == 2 and all(isinstance(x, str) for x in b)
                for b in bases):
            raise MemoMiss("bases")
        steps = doc["steps"]
        if not isinstance(steps, list) or not all(
                isinstance(t, list) and len(t) == 4 and isinstance(t[0], int) for t in steps):
            raise MemoMiss("steps")
        rec = cls(doc["image_id"], doc["manifest"], strings(doc["names"]),
                  strings(doc["warnings"]), [(b[0], b[1]) for b in bases],
                  strings(doc["entries"]), strings(doc["blobs"]), steps)
        digests = [rec.manifest, rec.image_id, *rec.blobs, *(d for _, d in rec.bases)]
        if not all(isinstance(d, str) and dg.is_digest(d) for d in digests) or \
                not all(_HEX_KEY.fullmatch(k) for k in rec.entries):
            raise MemoMiss("names in the record are not digests and keys")
        return rec

    def to_json(self) -> dict:
        return {"format": FORMAT, "image_id": self.image_id, "manifest": self.manifest,
                "names": self.names, "warnings": self.warnings,
                "bases": [list(b) for b in self.bases], "entries": self.entries,
                "blobs": self.blobs, "steps": self.steps}


@dataclass
class Answer:
    """A build answered from the memo: what the CLI prints and writes."""

    image_id: str
    manifest_digest: str
    names: list[str]
    steps: list[list]              # [n, label, text, is FROM]
    warnings: list[str] = field(default_factory=list)
    entries: list[str] = field(default_factory=list)   # cache keys it rests on
    blobs: list[str] = field(default_factory=list)

    @property
    def cached(self) -> int:
        return sum(1 for s in self.steps if not s[3])


def may_answer(opts: BuildOptions) -> bool:
    """--no-cache and --pull ask for work the memo would skip, and so does --cache-to:
    its export happens only when the solver runs."""
    return not opts.no_cache and not opts.pull and not opts.cache_to \
        and not opts.no_cache_filter


def may_record(output_type: str) -> bool:
    """Any build into the store: its result is what a cached rebuild would give, since
    even --no-cache writes the cache entries that rebuild would hit."""
    return output_type == "image"


def tree_signature(ctx: Context) -> str:
    """sha256 over (path, type+mode, owner, size, mtime, ctime, inode) of every path the
    context exposes, in a fixed order; ignored subtrees are not entered, ignored files
    not counted (the build never reads them: not by name, not through a symlink). The
    walk goes by directory fds from the context's own fd, never following a symlink."""
    h = hashlib.sha256()
    if ctx.root is None:
        return ""
    stack = [""]
    while stack:
        rel_dir = stack.pop()
        try:
            fd = resolver.resolve(ctx.fd, rel_dir, policy=resolver.NO_SYMLINKS,
                                  flags=os.O_RDONLY | os.O_DIRECTORY)
            try:
                with os.scandir(fd) as it:
                    entries = sorted(((e.name, e.stat(follow_symlinks=False)) for e in it),
                                     key=lambda t: t[0])
            finally:
                os.close(fd)
        except (OSError, resolver.PathEscape) as exc:
            raise MemoMiss(f"cannot list {rel_dir or '.'}: {exc}") from None
        subdirs = []
        for name, st in entries:
            rel = f"{rel_dir}/{name}" if rel_dir else name
            is_dir = stat.S_ISDIR(st.st_mode)
            if ctx.ignored(rel) and not (is_dir and ctx.matcher.may_reinclude_below(rel)):
                continue
            h.update(f"{rel}\0{st.st_mode}\0{st.st_uid}\0{st.st_gid}\0{st.st_size}\0"
                     f"{st.st_mtime_ns}\0{st.st_ctime_ns}\0{st.st_ino}\0{st.st_dev}\n"
                     .encode(errors="surrogateescape"))
            if is_dir:
                subdirs.append(rel)
        stack.extend(reversed(subdirs))
    return h.hexdigest()


class MemoMiss(Exception):
    """The memo cannot answer; the solver will."""


class BuildMemo:
    """Records under ROOT/cache/builds/<key>.json."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.dir = self.root / "cache" / "builds"

    def key(self, opts: BuildOptions, secrets: list[str]) -> str:
        """Everything the build was given, as one digest."""
        df = locate_dockerfile(opts.context, opts.dockerfile)
        if opts.dockerfile_text is not None:
            text, df = opts.dockerfile_text, None
        else:
            assert df is not None
            try:
                text = read_dockerfile(opts.context, df)
            except PybuildError:
                raise MemoMiss("no Dockerfile") from None
        ctx = Context.open(opts.context, df)
        named = {}
        for name, path in sorted(opts.build_contexts.items()):
            c = Context.open(path)
            named[name] = [str(c.root), _ignore_text(c), tree_signature(c)]
        doc = {
            "format": FORMAT, "version": VERSION,
            "dockerfile": [str(df) if df else None, hashlib.sha256(text).hexdigest()],
            "context": [str(ctx.root) if ctx.root else None, _ignore_text(ctx), tree_signature(ctx)],
            "named": named, "args": opts.build_args, "target": opts.target,
            # the entitlements too: a build that was refused one must not be answered by the
            # record of a build that had it (RUN --network=host)
            "network": opts.network, "allow": sorted(opts.allow), "platform": opts.platform,
            "labels": opts.labels,
            "annotations": opts.annotations, "compression": opts.compression,
            "epoch": opts.source_date_epoch, "squash": opts.squash, "tags": opts.tags,
            # a secret's value is never part of a key; its relative src is, with the cwd
            "secrets": [secrets, os.getcwd() if secrets else None],
            **({"sandbox": [opts.add_hosts, opts.shm_size]} if opts.add_hosts or opts.shm_size
               else {}),
        }
        if opts.ulimits:     # absent: the key of a build from before --ulimit existed
            doc["ulimits"] = [[u.name, u.soft, u.hard] for u in opts.ulimits]
        return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()

    def _path(self, key: str) -> Path:
        return self.dir / f"{key}.json"

    def answer(self, key: str) -> Answer | None:
        """The recorded result if every fact it rests on still holds."""
        try:
            rec = MemoRecord.from_json(jsonlimits.read_object(self._path(key)))
        except (OSError, ValueError, KeyError, TypeError, MemoMiss):
            return None
        try:
            with file_lock(self.root / "gc.lock", shared=True):   # no prune meanwhile
                return self._check(rec)
        except (MemoMiss, PybuildError, OSError):
            return None

    def _check(self, rec: MemoRecord) -> Answer | None:
        """Through the store's own readers (refs, blobs, build cache), never its paths."""
        from builder.cache import BuildCache
        from layerstore.blobs import BlobStore
        from layerstore.refs import RefIndex

        named: dict[str, str] = {}
        present: set[str] = set()
        for name, desc in RefIndex(self.root).entries():
            present.add(desc.digest)
            if name:
                named[name] = desc.digest
        for name, digest in rec.bases:
            if name and named.get(name) != digest:
                return None
        if rec.names:
            if any(named.get(n) != rec.manifest for n in rec.names):
                return None
        elif rec.manifest not in present:
            return None
        blobs = BlobStore(self.root)
        if not all(blobs.has(d) for d in [rec.manifest, rec.image_id, *rec.blobs,
                                           *(d for _, d in rec.bases)]):
            return None
        cache = BuildCache(self.root)
        if not all(cache.has(k) for k in rec.entries):
            return None
        for k in rec.entries:   # used now, as the solver's cache hits would mark them
            cache.touch(k)
        return Answer(rec.image_id, rec.manifest, rec.names, rec.steps, rec.warnings,
                      rec.entries, rec.blobs)

    def record(self, key: str, rec: MemoRecord) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        atomic_write(self._path(key), json.dumps(rec.to_json()).encode())
        self._trim()

    def _trim(self, keep: int = KEEP) -> None:
        """Keep the `keep` most recently written records (one per distinct input)."""
        files = sorted((e.stat().st_mtime, e.path) for e in os.scandir(self.dir)
                       if e.name.endswith(".json"))
        for _, path in files[:max(0, len(files) - keep)]:
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass

    def forget(self) -> int:
        """Drop every record (the cache entries they rest on are being pruned)."""
        n = 0
        if self.dir.is_dir():
            for e in os.scandir(self.dir):
                if e.name.endswith(".json"):
                    os.unlink(e.path)
                    n += 1
        return n


def _ignore_text(ctx: Context) -> list[str]:
    return [p.text if not p.exclusion else "!" + p.text for p in ctx.matcher.patterns]

