"""COPY and ADD: select sources, hash them for the cache key, write them into a root.

Sources come from the build context (filtered by .dockerignore, never
leaving it), from another stage's or image's rootfs (`--from`), or from
heredocs. `select_sources` runs where the source tree is visible and returns
the exact list of files; `digest_selection` hashes content, mode, owner and
link targets (not mtimes) for the cache key; `copy_into` runs inside the
mounted destination rootfs (see rootview.in_overlay) and applies docker's
rules: a directory source copies its contents, a trailing slash or an
existing directory makes the destination a directory, missing parents are
created 0755 root, owners are 0:0 unless `--chown` (names looked up in the
image's own /etc/passwd and /etc/group), `--chmod` octal or symbolic, and
ADD extracts local tar archives (plain, gzip, bzip2, xz, zstd).
"""

from __future__ import annotations

import fnmatch
import hashlib
import os
import posixpath
import stat
import time
from dataclasses import dataclass, field
from pathlib import Path

from builder.context import Context, ContextError, Matcher, parse_ignore
from builder.rootview import RootError, secure_join
from layerstore.errors import PybuildError

_WILD = set("*?[")
_ARCHIVE_MAGIC = (b"\x1f\x8b", b"BZh", b"\xfd7zXZ\x00", b"\x28\xb5\x2f\xfd")


class CopyError(PybuildError):
    """A COPY/ADD that docker would refuse (missing source, bad destination, bad --chown)."""


@dataclass
class Item:
    """One selected source: where it is, what it is called under the destination."""

    host: str          # absolute path where it can be read
    rel: str           # path under the source root (for --parents and messages)
    is_dir: bool
    arg: str           # the source argument it came from


@dataclass
class Selection:
    items: list[Item] = field(default_factory=list)
    wildcard: bool = False
    count_args: int = 0


class _Root:
    """Resolves source paths inside one tree: the context or a mounted rootfs."""

    def __init__(self, base: str, ctx: Context | None) -> None:
        self.base = base
        self.ctx = ctx

    def real(self, rel: str) -> str:
        if self.ctx is not None:
            return str(self.ctx.real(rel))
        return secure_join(self.base, rel)

    def ignored(self, rel: str) -> bool:
        return self.ctx is not None and self.ctx.ignored(rel)


def _glob(root: _Root, pattern: str) -> list[str]:
    parts = [p for p in pattern.split("/") if p]
    found = [""]
    for part in parts:
        nxt = []
        for base in found:
            if not (_WILD & set(part)):
                nxt.append(posixpath.join(base, part) if base else part)
                continue
            d = root.real(base) if base else root.real("")
            try:
                names = sorted(os.listdir(d))
            except (NotADirectoryError, FileNotFoundError):
                continue
            for n in names:
                if fnmatch.fnmatchcase(n, part):
                    nxt.append(posixpath.join(base, n) if base else n)
        found = nxt
    return [f for f in found if os.path.lexists(root.real(f)) and not root.ignored(f)]


def select_sources(sources: list[str], base: str, ctx: Context | None) -> Selection:
    """Expand wildcards and check every source exists in its tree."""
    root = _Root(base, ctx)
    sel = Selection(count_args=len(sources))
    for src in sources:
        if ctx is not None:
            rel = ctx.resolve(src)
        else:
            rel = posixpath.normpath("/" + src).lstrip("/")
        if _WILD & set(rel):
            matches = _glob(root, rel)
            sel.wildcard = True
            if not matches:
                raise CopyError(f"no source files were specified: {src} matches nothing")
        else:
            matches = [rel]
        for m in matches:
            host = root.real(m)
            if not os.path.lexists(host) or (m and root.ignored(m)):
                where = "build context" if ctx is not None else "source image"
                raise CopyError(f"{src}: not found in the {where}")
            st = os.stat(host) if ctx is None or not os.path.islink(host) else os.lstat(host)
            sel.items.append(Item(host, m, stat.S_ISDIR(st.st_mode), src))
    return sel


def walk_item(item: Item, ctx: Context | None, exclude: Matcher | None):
    """(relative path under the item, host path, lstat) for the item and everything below."""
    if not item.is_dir:
        yield "", item.host, os.lstat(item.host)
        return
    yield "", item.host, os.stat(item.host)
    stack = [""]
    while stack:
        sub = stack.pop()
        d = os.path.join(item.host, sub) if sub else item.host
        for name in sorted(os.listdir(d)):
            rel = posixpath.join(sub, name) if sub else name
            ctx_rel = posixpath.join(item.rel, rel) if item.rel else rel
            if ctx is not None and ctx.ignored(ctx_rel):
                if os.path.isdir(os.path.join(d, name)) and ctx.matcher.may_reinclude_below(ctx_rel):
                    pass
                else:
                    continue
            if exclude is not None and exclude.ignored(rel):
                continue
            host = os.path.join(d, name)
            st = os.lstat(host)
            yield rel, host, st
            if stat.S_ISDIR(st.st_mode):
                stack.append(rel)


def digest_selection(sel: Selection, ctx: Context | None, exclude: list[str],
                     hashes: "FileHashes | None" = None) -> str:
    """Content hash of the selection: names, types, modes, owners, contents, link targets."""
    h = hashlib.sha256()
    ex = Matcher(parse_ignore("\n".join(exclude))) if exclude else None
    for item in sel.items:
        h.update(f"item {item.arg}\0{item.rel}\0{int(item.is_dir)}\n".encode())
        for rel, host, st in walk_item(item, ctx, ex):
            mode = st.st_mode
            h.update(f"{rel}\0{mode:o}\0{st.st_uid}\0{st.st_gid}\0".encode(errors="surrogateescape"))
            if stat.S_ISREG(mode):
                h.update((hashes.get(host, st) if hashes else file_sha256(host)).encode())
            elif stat.S_ISLNK(mode):
                h.update(os.readlink(host).encode(errors="surrogateescape"))
            h.update(b"\n")
    return h.hexdigest()


def file_sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


class FileHashes:
    """Content hashes of context files remembered by (inode, size, mtime, ctime)."""

    def __init__(self, path: Path | None) -> None:
        import json

        self.path = path
        self.data: dict[str, list] = {}
        self.dirty = False
        if path is not None and path.is_file():
            try:
                self.data = json.loads(path.read_text())
            except (ValueError, OSError):
                self.data = {}

    def get(self, host: str, st: os.stat_result) -> str:
        sig = [st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns]
        hit = self.data.get(host)
        if hit and hit[:5] == sig:
            return hit[5]
        digest = file_sha256(host)
        self.data[host] = sig + [digest]
        self.dirty = True
        return digest

    def save(self) -> None:
        import json

        from layerstore.atomic import atomic_write

        if self.path is None or not self.dirty:
            return
        if len(self.data) > 500_000:
            self.data = {}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(self.path, json.dumps(self.data).encode())


# --- inside the destination rootfs --------------------------------------------


def _lookup(root: str, file: str, name: str, field_no: int = 2) -> list[str] | None:
    path = secure_join(root, file)
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            for line in f:
                parts = line.rstrip("\n").split(":")
                if parts and parts[0] == name and len(parts) > field_no:
                    return parts
    except OSError:
        return None
    return None


def resolve_chown(root: str, spec: str | None) -> tuple[int, int]:
    """`user[:group]` → (uid, gid) from the image's own /etc/passwd and /etc/group."""
    if not spec:
        return 0, 0
    user, _, group = spec.partition(":")
    if user.isdigit():
        uid = int(user)
        gid = uid
    else:
        entry = _lookup(root, "/etc/passwd", user, 3)
        if entry is None:
            raise CopyError(f"--chown={spec}: no user {user!r} in the image's /etc/passwd")
        uid, gid = int(entry[2]), int(entry[3])
    if group:
        if group.isdigit():
            gid = int(group)
        else:
            g = _lookup(root, "/etc/group", group, 2)
            if g is None:
                raise CopyError(f"--chown={spec}: no group {group!r} in the image's /etc/group")
            gid = int(g[2])
    return uid, gid


def parse_chmod(spec: str | None):
    """--chmod as a function (old mode, is_dir) -> new mode; octal or symbolic (u+x,g-w,o=r)."""
    if not spec:
        return None
    if all(c in "01234567" for c in spec):
        value = int(spec, 8)
        if value > 0o7777:
            raise CopyError(f"--chmod={spec}: invalid mode")
        return lambda mode, is_dir: value
    clauses = []
    for clause in spec.split(","):
        i = 0
        who = ""
        while i < len(clause) and clause[i] in "ugoa":
            who += clause[i]
            i += 1
        ops = clause[i:]
        if not ops or ops[0] not in "+-=":
            raise CopyError(f"--chmod={spec}: invalid mode")
        parts = []
        while ops:
            op = ops[0]
            j = 1
            while j < len(ops) and ops[j] in "rwxXst":
                j += 1
            parts.append((op, ops[1:j]))
            ops = ops[j:]
            if ops and ops[0] not in "+-=":
                raise CopyError(f"--chmod={spec}: invalid mode")
        clauses.append((who or "a", parts))

    def apply(mode: int, is_dir: bool) -> int:
        mode &= 0o7777
        for who, parts in clauses:
            for op, perms in parts:
                bits = 0
                for p in perms:
                    for w in ("ugo" if "a" in who else who):
                        shift = {"u": 6, "g": 3, "o": 0}[w]
                        if p == "r":
                            bits |= 4 << shift
                        elif p == "w":
                            bits |= 2 << shift
                        elif p == "x" or (p == "X" and (is_dir or mode & 0o111)):
                            bits |= 1 << shift
                        elif p == "s" and w in "ug":
                            bits |= 0o4000 if w == "u" else 0o2000
                        elif p == "t":
                            bits |= 0o1000
                mask = 0
                for w in ("ugo" if "a" in who else who):
                    mask |= {"u": 0o4700, "g": 0o2070, "o": 0o1007}[w]
                if op == "+":
                    mode |= bits
                elif op == "-":
                    mode &= ~bits
                else:
                    mode = (mode & ~mask) | bits
        return mode
    return apply


@dataclass
class CopyJob:
    """Everything the child needs to perform one COPY/ADD into the mounted rootfs."""

    keyword: str
    dest: str                       # absolute, trailing slash kept
    items: list[Item] | None        # context sources (already selected), else None
    from_sources: list[str] | None  # sources inside the --from tree (selected in the child)
    heredocs: list[tuple[str, str]] = field(default_factory=list)   # (name, content)
    ctx: Context | None = None
    chown: str | None = None
    chmod: str | None = None
    exclude: list[str] = field(default_factory=list)
    parents: bool = False
    extract: bool = False           # ADD: unpack local archives
    arg_count: int = 0
    workdir_only: bool = False      # WORKDIR: just create the directory
    remote: list[str] = field(default_factory=list)   # downloaded ADD URLs: files, not extracted
    mtime: float | None = None


def _copy_file(src_path: str, dst_path: str) -> None:
    """Content copy with sendfile (copy_file_range fails across overlay/other filesystems)."""
    with open(src_path, "rb") as src, open(dst_path, "wb") as out:
        size = os.fstat(src.fileno()).st_size
        offset = 0
        try:
            while offset < size:
                n = os.sendfile(out.fileno(), src.fileno(), offset, min(size - offset, 1 << 30))
                if n == 0:
                    break
                offset += n
        except OSError:
            src.seek(offset)
            out.seek(offset)
            while chunk := src.read(1 << 20):
                out.write(chunk)


def _mkdirs(root: str, path: str, uid: int, gid: int) -> str:
    """Create missing directories of `path` (0755, owned uid:gid); returns the real path."""
    parts = [p for p in path.split("/") if p]
    cur = ""
    for p in parts:
        cur += "/" + p
        real = secure_join(root, cur)
        if not os.path.lexists(real):
            os.mkdir(real, 0o755)
            os.chmod(real, 0o755)
            os.lchown(real, uid, gid)
        elif not os.path.isdir(real):
            raise CopyError(f"{cur}: not a directory in the image (cannot copy into it)")
    return secure_join(root, path)


def _is_archive(path: str) -> bool:
    try:
        with open(path, "rb") as f:
            head = f.read(8)
            if any(head.startswith(m) for m in _ARCHIVE_MAGIC):
                return _decompressed_is_tar(path)
            f.seek(257)
            return f.read(5) == b"ustar"
    except OSError:
        return False


def _decompressed_is_tar(path: str) -> bool:
    from layerstore import compression as comp

    try:
        with open(path, "rb") as f:
            _, reader = comp.open_reader(f)
            head = reader.read(512)
        return len(head) >= 262 and head[257:262] == b"ustar"
    except Exception:  # noqa: BLE001 - not an archive we can read: copy it as a file
        return False


class _Writer:
    def __init__(self, root: str, job: CopyJob) -> None:
        self.root = root
        self.job = job
        self.uid, self.gid = resolve_chown(root, job.chown)
        self.chmod = parse_chmod(job.chmod)
        self.chowned = job.chown is not None
        self.exclude = Matcher(parse_ignore("\n".join(job.exclude))) if job.exclude else None
        self.dir_times: list[tuple[str, int, int]] = []

    def owner(self, st: os.stat_result) -> tuple[int, int]:
        if self.chowned or self.job.from_sources is None:
            return self.uid, self.gid
        return st.st_uid, st.st_gid

    def mode(self, st: os.stat_result) -> int:
        mode = stat.S_IMODE(st.st_mode)
        if self.chmod is not None:
            return self.chmod(mode, stat.S_ISDIR(st.st_mode))
        return mode

    def put(self, host: str, st: os.stat_result, target_rel: str) -> None:
        """Create one entry at `target_rel` (absolute inside root) from host path `host`."""
        parent = posixpath.dirname(target_rel.rstrip("/")) or "/"
        real_parent = secure_join(self.root, parent)
        name = posixpath.basename(target_rel.rstrip("/"))
        dst = os.path.join(real_parent, name) if name else real_parent
        uid, gid = self.owner(st)
        mode = st.st_mode
        if stat.S_ISDIR(mode):
            real = secure_join(self.root, target_rel)
            if os.path.lexists(real) and not os.path.isdir(real):
                os.unlink(real)
            if not os.path.isdir(real):
                os.mkdir(real)
            os.chmod(real, self.mode(st))
            os.lchown(real, uid, gid)
            self.dir_times.append((real, st.st_atime_ns, st.st_mtime_ns))
            return
        if os.path.lexists(dst):
            if os.path.isdir(dst) and not os.path.islink(dst):
                raise CopyError(f"cannot replace directory {target_rel} with a file")
            os.unlink(dst)
        if stat.S_ISREG(mode):
            _copy_file(host, dst)
            os.chown(dst, uid, gid)
            os.chmod(dst, self.mode(st))
            os.utime(dst, ns=(st.st_atime_ns, st.st_mtime_ns))
        elif stat.S_ISLNK(mode):
            os.symlink(os.readlink(host), dst)
            os.lchown(dst, uid, gid)
            os.utime(dst, ns=(st.st_atime_ns, st.st_mtime_ns), follow_symlinks=False)
        elif stat.S_ISFIFO(mode) or stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
            os.mknod(dst, mode, st.st_rdev)
            os.lchown(dst, uid, gid)
            os.chmod(dst, self.mode(st))
        # sockets are skipped, as docker does

    def copy_item(self, item: Item, dest: str, as_dir: bool) -> None:
        if item.is_dir:
            target = dest.rstrip("/") or "/"
            if self.job.parents and item.rel:
                target = posixpath.join(target, item.rel)
            # the destination directory is created like a parent (0755, --chown owner),
            # not with the source directory's metadata (buildah, BuildKit)
            _mkdirs(self.root, target, self.uid, self.gid)
            for rel, host, st in walk_item(item, self.job.ctx, self.exclude):
                if rel:
                    self.put(host, st, posixpath.join(target, rel))
            return
        st = os.stat(item.host) if self.job.ctx is None else os.lstat(item.host)
        if stat.S_ISLNK(st.st_mode) and self.job.ctx is not None:
            st = os.stat(item.host)  # a source named explicitly is followed (inside the context)
        if self.job.extract and item.host not in self.job.remote and stat.S_ISREG(st.st_mode) \
                and _is_archive(item.host):
            self.extract(item.host, dest)
            return
        if as_dir:
            name = item.rel if self.job.parents and item.rel else posixpath.basename(item.rel or item.host)
            target = posixpath.join(dest.rstrip("/") or "/", name)
        else:
            target = dest
        _mkdirs(self.root, posixpath.dirname(target) or "/", self.uid, self.gid)
        self.put(item.host, st, target)

    def extract(self, host: str, dest: str) -> None:
        from layerstore.layer_apply import apply_layer

        target = _mkdirs(self.root, dest, self.uid, self.gid)
        with open(host, "rb") as f:
            apply_layer(f, Path(target), mode="flat")

    def finish(self) -> None:
        for real, atime, mtime in reversed(self.dir_times):
            try:
                os.utime(real, ns=(atime, mtime))
            except OSError:
                pass


def copy_into(points: list[str], job: CopyJob) -> str:
    """Run in the mounted rootfs (points[0]; points[1] is the --from tree). Returns a summary."""
    root = points[0]
    if job.workdir_only:
        uid, gid = resolve_chown(root, job.chown) if job.chown else (0, 0)
        _mkdirs(root, job.dest, uid, gid)
        return "dir"
    w = _Writer(root, job)
    if job.from_sources is not None:
        sel = select_sources(job.from_sources, points[1], None)
        items, wildcard = sel.items, sel.wildcard
    else:
        items, wildcard = list(job.items or []), False
    dest = job.dest
    n_sources = job.arg_count + len(job.heredocs)
    dest_is_dir = dest.endswith("/") or os.path.isdir(secure_join(root, dest))
    many = n_sources > 1 or (wildcard and len(items) > 1)
    if n_sources > 1 and not dest.endswith("/") and not dest_is_dir:
        raise CopyError(f"When using {job.keyword} with more than one source file, the destination "
                        "must be a directory and end with a /")
    if many or dest_is_dir:
        _mkdirs(root, dest, w.uid, w.gid)
    for item in items:
        w.copy_item(item, dest, as_dir=many or dest_is_dir)
    for name, content in job.heredocs:
        target = posixpath.join(dest.rstrip("/") or "/", name) if (many or dest_is_dir) else dest
        _mkdirs(root, posixpath.dirname(target) or "/", w.uid, w.gid)
        real = secure_join(root, target)
        if os.path.lexists(real):
            os.unlink(real)
        with open(real, "w", encoding="utf-8", errors="surrogateescape") as f:
            f.write(content)
        mode = w.chmod(0o644, False) if w.chmod else 0o644
        os.chown(real, w.uid, w.gid)
        os.chmod(real, mode)
        t = job.mtime if job.mtime is not None else time.time()
        os.utime(real, (t, t))
    w.finish()
    return "ok"


def summary(keyword: str, content_digest: str, sel: Selection | None, dest: str) -> str:
    """buildah's history text: `COPY file:<sha> in /dest ` (dir: / multi: for several)."""
    kind = "file"
    if sel is not None:
        if len(sel.items) > 1:
            kind = "multi"
        elif sel.items and sel.items[0].is_dir:
            kind = "dir"
    return f"/bin/sh -c #(nop) {keyword} {kind}:{content_digest} in {dest} "


__all__ = ["CopyError", "CopyJob", "ContextError", "FileHashes", "RootError", "Selection",
           "copy_into", "digest_selection", "select_sources", "summary"]
