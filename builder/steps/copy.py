"""COPY and ADD: select sources, hash them for the cache key, write them into a root.

Sources come from the build context (filtered by .dockerignore, never
leaving it), from another stage's or image's rootfs (`--from`), or from
heredocs. Every source tree is entered through a directory fd and the path
resolver (layerstore/resolver.py): the context with policy BENEATH, a rootfs
with IN_ROOT. `select_sources` runs where the source tree is visible and
returns the exact list of entries (name, type, mode, owner, link target);
`digest_selection` hashes them for the cache key and records each file's
content digest; `copy_into` runs inside the mounted destination rootfs (see
rootview.in_overlay), consumes exactly that list (no second walk), and copies
each file from an fd that must be the inode that was hashed, hashing again as
it copies: a context file changed in between fails the step instead of
putting other bytes under the key (a poisoned cache entry). docker's rules
apply: a directory source copies its contents, a trailing slash or an existing
directory makes the destination a directory, missing parents are created 0755
root, owners are 0:0 unless `--chown` (names looked up in the image's own
/etc/passwd and /etc/group), `--chmod` octal or symbolic, hard links among the
sources stay hard links, and ADD extracts local tar archives (plain, gzip,
bzip2, xz, zstd). Every write into the destination is an *at call on a
directory fd the resolver gave (IN_ROOT: a symlink in the image resolves inside
it, as in docker), never a path joined on the host.
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
from layerstore import resolver
from layerstore.errors import PybuildError

_WILD = set("*?[")
_ARCHIVE_MAGIC = (b"\x1f\x8b", b"BZh", b"\xfd7zXZ\x00", b"\x28\xb5\x2f\xfd")
_DIR = os.O_RDONLY | os.O_DIRECTORY
_READ = os.O_RDONLY | os.O_NONBLOCK     # a FIFO swapped in must not block the build
_CHUNK = 1 << 20
MAX_ACCOUNT_FILE = 8 << 20              # /etc/passwd, /etc/group of an image


class CopyError(PybuildError):
    """A COPY/ADD that docker would refuse (missing source, bad destination, bad --chown)."""


class ContextChanged(CopyError):
    """A context file is not what was hashed for the step's cache key."""


def _changed(real: str) -> ContextChanged:
    return ContextChanged(f"context file {real} changed while it was being copied; build again")


@dataclass
class SourceTree:
    """A tree sources are read from: a directory fd and the resolver policy for it."""

    fd: int
    policy: str
    ctx: Context | None = None      # the build context: its ignore rules
    where: str = "build context"    # for messages
    ident: str = ""                 # names the tree in FileHashes' records

    @classmethod
    def of_context(cls, ctx: Context) -> "SourceTree":
        return cls(ctx.require(), resolver.BENEATH, ctx, f"build {ctx.name}", str(ctx.root))

    @classmethod
    def of_rootfs(cls, fd: int) -> "SourceTree":
        return cls(fd, resolver.IN_ROOT, None, "source image")

    @classmethod
    def of_files(cls, path: Path, where: str) -> "SourceTree":
        """A directory of our own (downloads): names taken literally. close() it."""
        return cls(resolver.open_root(path), resolver.NO_SYMLINKS, None, where)

    def close(self) -> None:
        os.close(self.fd)

    def clean(self, source: str) -> str:
        if self.ctx is not None:
            return self.ctx.resolve(source)
        return posixpath.normpath("/" + source).lstrip("/")

    def locate(self, rel: str) -> str | None:
        """The real path (no symlink in it) `rel` leads to; None if nothing is there."""
        if self.ctx is not None:
            return self.ctx.locate(rel)
        try:
            return resolver.trace(self.fd, rel, policy=self.policy).path
        except (FileNotFoundError, NotADirectoryError):
            return None
        except OSError as exc:
            raise CopyError(f"{rel}: {exc.strerror} in the {self.where}") from None

    def ignored(self, real: str) -> bool:
        return self.ctx is not None and self.ctx.ignored(real)

    def enters(self, real: str) -> bool:
        """Whether an ignored directory must still be walked (a `!` pattern below it)."""
        return self.ctx is not None and self.ctx.matcher.may_reinclude_below(real)

    def open(self, real: str, flags: int) -> int:
        # real paths hold no symlink: one appearing now was swapped in, and is refused
        return resolver.resolve(self.fd, real, policy=resolver.NO_SYMLINKS, follow=False,
                                flags=flags)

    def lstat(self, real: str) -> os.stat_result:
        st = resolver.lstat(self.fd, real, policy=resolver.NO_SYMLINKS)
        if st is None:
            raise FileNotFoundError(2, "No such file or directory", real)
        return st


@dataclass
class Entry:
    """One thing to copy, as it was when selected (and hashed)."""

    rel: str                        # path below its item ("" is the item itself)
    real: str                       # path in the source tree, no symlink in it
    st: os.stat_result              # lstat at selection
    link: str | None = None         # a symlink's target
    digest: str | None = None       # a regular file's content, when hashed


@dataclass
class Item:
    """One selected source: where it is, what it is called under the destination."""

    tree: SourceTree
    rel: str           # the path as named, cleaned (names the destination; --parents)
    real: str          # where it is in its tree
    is_dir: bool
    arg: str           # the source argument it came from
    entries: list[Entry] = field(default_factory=list)
    archive_ok: bool = True        # ADD may extract it (not a downloaded URL)


@dataclass
class Selection:
    items: list[Item] = field(default_factory=list)
    wildcard: bool = False
    count_args: int = 0


def _list_dir(tree: SourceTree, real: str) -> list[tuple[str, os.stat_result, str | None]]:
    """(name, lstat, link target) of a directory's entries, sorted by name."""
    fd = tree.open(real, _DIR)
    try:
        out = []
        with os.scandir(fd) as it:
            for e in it:
                st = e.stat(follow_symlinks=False)
                link = os.readlink(e.name, dir_fd=fd) if stat.S_ISLNK(st.st_mode) else None
                out.append((e.name, st, link))
    finally:
        os.close(fd)
    out.sort(key=lambda t: t[0])
    return out


def _glob(tree: SourceTree, pattern: str) -> list[str]:
    parts = [p for p in pattern.split("/") if p]
    found = [""]
    for part in parts:
        nxt = []
        for base in found:
            if not (_WILD & set(part)):
                nxt.append(posixpath.join(base, part) if base else part)
                continue
            real = tree.locate(base)
            if real is None:
                continue
            try:
                names = [n for n, _, _ in _list_dir(tree, real)]
            except (NotADirectoryError, FileNotFoundError, resolver.PathEscape):
                continue
            for n in names:
                if fnmatch.fnmatchcase(n, part):
                    nxt.append(posixpath.join(base, n) if base else n)
        found = nxt
    return found


def select_sources(sources: list[str], tree: SourceTree, exclude: list[str] | None = None) -> Selection:
    """Expand wildcards, check every source is there, and list what each one copies.

    A source named (or matched) is followed when it is a symlink, inside its tree;
    below a directory, entries are taken literally. What `.dockerignore` hides does not
    exist: not under its name, not through a symlink, not below a directory."""
    sel = Selection(count_args=len(sources))
    ex = Matcher(parse_ignore("\n".join(exclude))) if exclude else None
    for src in sources:
        rel = tree.clean(src)
        if _WILD & set(rel):
            matches = [(m, tree.locate(m)) for m in _glob(tree, rel)]
            matches = [(m, r) for m, r in matches if r is not None]
            sel.wildcard = True
            if not matches:
                raise CopyError(f"no source files were specified: {src} matches nothing")
        else:
            matches = [(rel, tree.locate(rel))]
        for m, real in matches:
            if real is None:
                raise CopyError(f"{src}: not found in the {tree.where}")
            try:
                st = tree.lstat(real)
            except FileNotFoundError:
                raise CopyError(f"{src}: not found in the {tree.where}") from None
            item = Item(tree, m, real, stat.S_ISDIR(st.st_mode), src)
            item.entries.append(Entry("", real, st))
            if item.is_dir:
                _walk(item, ex)
            sel.items.append(item)
    return sel


def _walk(item: Item, exclude: Matcher | None) -> None:
    """Append everything below a directory item to its entries, parents first."""
    tree = item.tree
    stack = [("", item.real)]
    while stack:
        rel_dir, real_dir = stack.pop()
        subdirs = []
        for name, st, link in _list_dir(tree, real_dir):
            rel = f"{rel_dir}/{name}" if rel_dir else name
            real = f"{real_dir}/{name}" if real_dir else name
            is_dir = stat.S_ISDIR(st.st_mode)
            if tree.ignored(real) and not (is_dir and tree.enters(real)):
                continue
            if exclude is not None and exclude.ignored(rel):
                continue
            item.entries.append(Entry(rel, real, st, link))
            if is_dir:
                subdirs.append((rel, real))
        stack.extend(reversed(subdirs))


def digest_selection(sel: Selection, hashes: "FileHashes | None" = None) -> str:
    """Content hash of the selection: names, types, modes, owners, contents, link
    targets, hard links (not mtimes). Records each file's digest in its entry: the
    copy must reproduce exactly these bytes."""
    h = hashlib.sha256()
    inodes: dict[tuple[int, int], int] = {}
    n = 0
    for item in sel.items:
        h.update(f"item {item.arg}\0{item.rel}\0{int(item.is_dir)}\n".encode())
        for e in item.entries:
            st = e.st
            h.update(f"{e.rel}\0{st.st_mode:o}\0{st.st_uid}\0{st.st_gid}\0"
                     .encode(errors="surrogateescape"))
            if stat.S_ISREG(st.st_mode):
                if e.digest is None:
                    e.digest = hashes.get(item.tree, e) if hashes else hash_entry(item.tree, e)
                h.update(e.digest.encode())
                if st.st_nlink > 1:
                    first = inodes.setdefault((st.st_dev, st.st_ino), n)
                    if first != n:
                        h.update(f"\0link {first}".encode())
            elif stat.S_ISLNK(st.st_mode):
                h.update((e.link or "").encode(errors="surrogateescape"))
            h.update(b"\n")
            n += 1
    return h.hexdigest()


def _same(a: os.stat_result, b: os.stat_result) -> bool:
    return (a.st_dev, a.st_ino, a.st_size, a.st_mtime_ns, a.st_ctime_ns) == \
        (b.st_dev, b.st_ino, b.st_size, b.st_mtime_ns, b.st_ctime_ns)


def _open_entry(tree: SourceTree, e: Entry) -> int:
    """The entry's file, which must still be the inode that was selected."""
    try:
        fd = tree.open(e.real, _READ)
    except (OSError, resolver.PathEscape):
        raise _changed(e.real) from None
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode) or (st.st_dev, st.st_ino) != (e.st.st_dev, e.st.st_ino):
        os.close(fd)
        raise _changed(e.real)
    return fd


def hash_entry(tree: SourceTree, e: Entry) -> str:
    """sha256 of a regular file entry, read from an fd of the very inode selected; a
    change during the read (size, mtime, ctime) is an error, not a wrong digest."""
    fd = _open_entry(tree, e)
    try:
        if not _same(os.fstat(fd), e.st):
            raise _changed(e.real)
        h = hashlib.sha256()
        while chunk := os.read(fd, _CHUNK):
            h.update(chunk)
        if not _same(os.fstat(fd), e.st):
            raise _changed(e.real)
        return h.hexdigest()
    finally:
        os.close(fd)


def file_sha256(path: str) -> str:
    """sha256 of a file of our own (a download under ROOT)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
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

    def get(self, tree: SourceTree, e: Entry) -> str:
        st = e.st
        key = f"{tree.ident}\0{e.real}"
        sig = [st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns]
        hit = self.data.get(key)
        if hit and hit[:5] == sig:
            return hit[5]
        digest = hash_entry(tree, e)
        self.data[key] = sig + [digest]
        self.dirty = True
        return digest

    def forget(self, sel: "Selection") -> None:
        """Drop the records of a selection whose copy failed: a file changed without its
        stat signature moving (writes through mmap need not touch ctime) must be hashed
        afresh by the next build instead of failing it again."""
        for item in sel.items:
            for e in item.entries:
                if self.data.pop(f"{item.tree.ident}\0{e.real}", None) is not None:
                    self.dirty = True

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


def _lookup(root_fd: int, file: str, name: str, field_no: int = 2) -> list[str] | None:
    """The line of the image's own passwd/group file naming `name` (read through the
    resolver inside the rootfs, bounded: the image is hostile input)."""
    try:
        fd = resolver.resolve(root_fd, file, policy=resolver.IN_ROOT, flags=_READ)
    except (OSError, resolver.PathEscape):
        return None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return None
        data = os.read(fd, MAX_ACCOUNT_FILE + 1)
    finally:
        os.close(fd)
    if len(data) > MAX_ACCOUNT_FILE:
        raise CopyError(f"{file} of the image is larger than {MAX_ACCOUNT_FILE} bytes")
    for line in data.decode("utf-8", errors="replace").splitlines():
        parts = line.split(":")
        if parts and parts[0] == name and len(parts) > field_no:
            return parts
    return None


def _number(text: str, spec: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise CopyError(f"--chown={spec}: the image's account files give {text!r}, not a number") from None
    if not 0 <= value < (1 << 32) - 1:     # 4294967295 is (uid_t)-1: chown's "leave it"
        raise CopyError(f"--chown={spec}: id {value} out of range")
    return value


def resolve_chown(root_fd: int, spec: str | None) -> tuple[int, int]:
    """`user[:group]` → (uid, gid) from the image's own /etc/passwd and /etc/group."""
    if not spec:
        return 0, 0
    user, _, group = spec.partition(":")
    if user.isascii() and user.isdigit():
        uid = _number(user, spec)
        gid = uid
    else:
        entry = _lookup(root_fd, "/etc/passwd", user, 3)
        if entry is None:
            raise CopyError(f"--chown={spec}: no user {user!r} in the image's /etc/passwd")
        uid, gid = _number(entry[2], spec), _number(entry[3], spec)
    if group:
        if group.isascii() and group.isdigit():
            gid = _number(group, spec)
        else:
            g = _lookup(root_fd, "/etc/group", group, 2)
            if g is None:
                raise CopyError(f"--chown={spec}: no group {group!r} in the image's /etc/group")
            gid = _number(g[2], spec)
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
    chown: str | None = None
    chmod: str | None = None
    exclude: list[str] = field(default_factory=list)
    parents: bool = False
    extract: bool = False           # ADD: unpack local archives
    arg_count: int = 0
    workdir_only: bool = False      # WORKDIR: just create the directory
    mtime: float | None = None
    keep_owner: bool = False        # owners as in the source (also implied by --from)


class _HashingReader:
    """A file object over an fd that hashes what it hands out (ADD's archives)."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.hash = hashlib.sha256()

    def read(self, n: int = -1) -> bytes:
        if n is None or n < 0:
            out = bytearray()
            while chunk := os.read(self.fd, _CHUNK):
                out += chunk
            data = bytes(out)
        else:
            data = os.read(self.fd, n)
        self.hash.update(data)
        return data

    def readinto(self, buf) -> int:
        data = self.read(len(buf))
        buf[:len(data)] = data
        return len(data)

    def readable(self) -> bool:
        return True

    def drain(self) -> str:
        while self.read(_CHUNK):
            pass
        return self.hash.hexdigest()


def _is_archive(fd: int) -> bool:
    head = os.pread(fd, 8, 0)
    if any(head.startswith(m) for m in _ARCHIVE_MAGIC):
        return _decompressed_is_tar(fd)
    return os.pread(fd, 5, 257) == b"ustar"


def _decompressed_is_tar(fd: int) -> bool:
    from layerstore import compression as comp

    try:
        with os.fdopen(os.dup(fd), "rb") as f:
            _, reader = comp.open_reader(f)
            head = reader.read(512)
        return len(head) >= 262 and head[257:262] == b"ustar"
    except Exception:  # noqa: BLE001 - not an archive we can read: copy it as a file
        return False


def _write_all(fd: int, data) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def _copy_plain(src: int, out: int) -> None:
    """Content copy with sendfile (copy_file_range fails across overlay/other filesystems)."""
    size = os.fstat(src).st_size
    offset = 0
    try:
        while offset < size:
            n = os.sendfile(out, src, offset, min(size - offset, 1 << 30))
            if n == 0:
                break
            offset += n
    except OSError:
        os.lseek(src, offset, os.SEEK_SET)
        os.lseek(out, offset, os.SEEK_SET)
        while chunk := os.read(src, _CHUNK):
            _write_all(out, chunk)


def _copy_verified(src: int, out: int, e: Entry) -> None:
    """Copy to EOF while hashing; the bytes must be the ones the key was made from."""
    h = hashlib.sha256()
    size = e.st.st_size
    if size < _CHUNK:
        # one read: a regular file's short read is its end (more than `size` = it grew)
        data = os.read(src, size + 1)
        h.update(data)
        _write_all(out, data)
    else:
        while chunk := os.read(src, _CHUNK):
            h.update(chunk)
            _write_all(out, chunk)
    if h.hexdigest() != e.digest:
        raise _changed(e.real)


class _Writer:
    """Writes entries into the tree at `root_fd` (the mounted rootfs, or a view of
    ours): every path resolved IN_ROOT by the resolver, every change an *at call."""

    def __init__(self, root_fd: int, job: CopyJob) -> None:
        self.root = root_fd
        self.job = job
        self.uid, self.gid = resolve_chown(root_fd, job.chown)
        self.chmod = parse_chmod(job.chmod)
        self.chowned = job.chown is not None
        self.keep_owner = job.keep_owner or job.from_sources is not None
        self.dir_times: list[tuple[str, int, int]] = []
        # hard links: source inode -> (destination path, digest, inode made there)
        self.links: dict[tuple[int, int], tuple[str, str | None, tuple[int, int]]] = {}
        self.parents: dict[str, int] = {}
        self.stale = False        # an entry was replaced: cached directory fds may be stale

    def close(self) -> None:
        for fd in self.parents.values():
            os.close(fd)
        self.parents.clear()

    def parent(self, target: str) -> tuple[int, str]:
        """(fd of the directory that holds `target`, its last name), cached per directory."""
        names = resolver.components(target)
        if not names or names[-1] == "..":
            raise CopyError(f"{target}: not a name in a directory")
        d = "/".join(names[:-1])
        fd = self.parents.get(d)
        if fd is None:
            if len(self.parents) > 64:
                self.close()
            fd = self.parents[d] = resolver.resolve(self.root, d, policy=resolver.IN_ROOT,
                                                    flags=_DIR)
        return fd, names[-1]

    def makedirs(self, path: str) -> int:
        """mkdir -p inside the root (0755, the --chown owner); an fd of the directory."""
        try:
            return resolver.makedirs(self.root, path, policy=resolver.IN_ROOT, mode=0o755,
                                     uid=self.uid, gid=self.gid)
        except (NotADirectoryError, FileExistsError):
            raise CopyError(f"{path}: not a directory in the image (cannot copy into it)") from None

    def owner(self, st: os.stat_result) -> tuple[int, int]:
        if self.chowned or not self.keep_owner:
            return self.uid, self.gid
        return st.st_uid, st.st_gid

    def mode(self, st: os.stat_result) -> int:
        mode = stat.S_IMODE(st.st_mode)
        if self.chmod is not None:
            return self.chmod(mode, stat.S_ISDIR(st.st_mode))
        return mode

    def put(self, tree: SourceTree, e: Entry, target: str) -> None:
        """Create one entry at `target` (absolute inside the root) as selected in `e`."""
        dfd, name = self.parent(target)
        st = e.st
        uid, gid = self.owner(st)
        mode = st.st_mode
        try:
            cur = os.stat(name, dir_fd=dfd, follow_symlinks=False)
        except FileNotFoundError:
            cur = None
        if stat.S_ISDIR(mode):
            fd = self._directory(dfd, name, cur, target)
            try:
                os.fchown(fd, uid, gid)
                os.fchmod(fd, self.mode(st))
            finally:
                os.close(fd)
            self.dir_times.append((target, st.st_atime_ns, st.st_mtime_ns))
            return
        if cur is not None:
            if stat.S_ISDIR(cur.st_mode):
                raise CopyError(f"cannot replace directory {target} with a file")
            os.unlink(name, dir_fd=dfd)
            self.stale = True
        if stat.S_ISREG(mode):
            if st.st_nlink > 1 and self._link(e, dfd, name):
                return
            out = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                          0o600, dir_fd=dfd)
            try:
                src = _open_entry(tree, e)
                try:
                    if e.digest is None:
                        _copy_plain(src, out)
                    else:
                        _copy_verified(src, out, e)
                finally:
                    os.close(src)
                os.fchown(out, uid, gid)
                os.fchmod(out, self.mode(st))
                os.utime(out, ns=(st.st_atime_ns, st.st_mtime_ns))
                made = os.fstat(out)
            finally:
                os.close(out)
            if st.st_nlink > 1:
                self.links[(st.st_dev, st.st_ino)] = (target, e.digest, (made.st_dev, made.st_ino))
        elif stat.S_ISLNK(mode):
            os.symlink(e.link or "", name, dir_fd=dfd)
            os.chown(name, uid, gid, dir_fd=dfd, follow_symlinks=False)
            os.utime(name, ns=(st.st_atime_ns, st.st_mtime_ns), dir_fd=dfd, follow_symlinks=False)
        elif stat.S_ISFIFO(mode) or stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
            os.mknod(name, stat.S_IFMT(mode) | 0o600, st.st_rdev, dir_fd=dfd)
            os.chown(name, uid, gid, dir_fd=dfd, follow_symlinks=False)
            os.chmod(name, self.mode(st), dir_fd=dfd)   # the node we just made (not a link)
        # sockets are skipped, as docker does

    def _directory(self, dfd: int, name: str, cur: os.stat_result | None, target: str) -> int:
        """An fd of the directory at dfd/name: the one there, one a symlink there leads
        to (inside the root), or a new one replacing a non-directory."""
        if cur is not None and stat.S_ISLNK(cur.st_mode):
            try:
                return resolver.resolve(self.root, target, policy=resolver.IN_ROOT, flags=_DIR)
            except OSError:
                pass
        if cur is not None and not stat.S_ISDIR(cur.st_mode):
            os.unlink(name, dir_fd=dfd)
            self.stale = True
            cur = None
        if cur is None:
            os.mkdir(name, 0o700, dir_fd=dfd)
        return os.open(name, _DIR | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dfd)

    def _link(self, e: Entry, dfd: int, name: str) -> bool:
        """Make `name` a hard link to the copy of the same source inode, if there is one
        (three names of one file stay one file, as in BuildKit and buildah)."""
        known = self.links.get((e.st.st_dev, e.st.st_ino))
        if known is None or known[1] != e.digest:
            return False
        first, _, made = known
        try:
            with resolver.parent_of(self.root, first, policy=resolver.IN_ROOT) as (sfd, sname):
                st = os.stat(sname, dir_fd=sfd, follow_symlinks=False)
                if (st.st_dev, st.st_ino) != made:
                    return False        # replaced since: copy this name on its own
                os.link(sname, name, src_dir_fd=sfd, dst_dir_fd=dfd, follow_symlinks=False)
        except FileNotFoundError:
            return False
        return True

    def entries(self, tree: SourceTree, entries: list[Entry], target: str) -> None:
        for e in entries:
            self.put(tree, e, posixpath.join(target, e.rel) if e.rel else target)
            if self.stale:
                self.close()
                self.stale = False

    def copy_item(self, item: Item, dest: str, as_dir: bool) -> None:
        if item.is_dir:
            target = dest.rstrip("/") or "/"
            if self.job.parents and item.rel:
                target = posixpath.join(target, item.rel)
            # the destination directory is created like a parent (0755, --chown owner),
            # not with the source directory's metadata (buildah, BuildKit)
            os.close(self.makedirs(target))
            self.entries(item.tree, item.entries[1:], target)
            return
        e = item.entries[0]
        if self.job.extract and item.archive_ok and stat.S_ISREG(e.st.st_mode):
            src = _open_entry(item.tree, e)
            try:
                if _is_archive(src):
                    self.extract(src, e, dest)
                    return
            finally:
                os.close(src)
        if as_dir:
            name = item.rel if self.job.parents and item.rel else posixpath.basename(item.rel)
            target = posixpath.join(dest.rstrip("/") or "/", name)
        else:
            target = dest
        os.close(self.makedirs(posixpath.dirname(target) or "/"))
        self.entries(item.tree, [e], target)

    def extract(self, src: int, e: Entry, dest: str) -> None:
        from layerstore.layer_apply import apply_layer

        dfd = self.makedirs(dest)
        try:
            os.lseek(src, 0, os.SEEK_SET)
            reader = _HashingReader(src)
            # the directory as its fd: no path of the image is spelled on the host
            apply_layer(reader, Path(f"/proc/self/fd/{dfd}"), mode="flat")
            if e.digest is not None and reader.drain() != e.digest:
                raise _changed(e.real)
        finally:
            os.close(dfd)
        self.close()

    def heredoc(self, target: str, content: str) -> None:
        os.close(self.makedirs(posixpath.dirname(target) or "/"))
        dfd, name = self.parent(target)
        try:
            cur = os.stat(name, dir_fd=dfd, follow_symlinks=False)
        except FileNotFoundError:
            cur = None
        if cur is not None:
            if stat.S_ISDIR(cur.st_mode):
                raise CopyError(f"cannot replace directory {target} with a file")
            os.unlink(name, dir_fd=dfd)
        out = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                      0o600, dir_fd=dfd)
        try:
            _write_all(out, content.encode("utf-8", errors="surrogateescape"))
            os.fchown(out, self.uid, self.gid)
            os.fchmod(out, self.chmod(0o644, False) if self.chmod else 0o644)
            t = self.job.mtime if self.job.mtime is not None else time.time()
            os.utime(out, (t, t))
        finally:
            os.close(out)
        self.close()

    def finish(self) -> None:
        self.close()
        for target, atime, mtime in reversed(self.dir_times):
            try:
                fd = resolver.resolve(self.root, target, policy=resolver.IN_ROOT, flags=_DIR)
            except OSError:
                continue
            try:
                os.utime(fd, ns=(atime, mtime))
            finally:
                os.close(fd)


def copy_into(points: list[str], job: CopyJob) -> str:
    """Run in the mounted rootfs (points[0]; points[1] is the --from tree). Returns a summary."""
    with resolver.rooted(points[0]) as root_fd:
        try:
            return _copy_into(root_fd, points, job)
        except OSError as exc:
            where = f": {exc.filename}" if exc.filename else ""
            raise CopyError(f"{job.keyword} {job.dest}: {exc.strerror or exc}{where}") from None


def _copy_into(root_fd: int, points: list[str], job: CopyJob) -> str:
    if job.workdir_only:
        uid, gid = resolve_chown(root_fd, job.chown) if job.chown else (0, 0)
        os.close(resolver.makedirs(root_fd, job.dest, policy=resolver.IN_ROOT, uid=uid, gid=gid))
        return "dir"
    w = _Writer(root_fd, job)
    from_fd = None
    try:
        if job.from_sources is not None:
            from_fd = resolver.open_root(points[1])
            sel = select_sources(job.from_sources, SourceTree.of_rootfs(from_fd), job.exclude)
            items, wildcard = sel.items, sel.wildcard
        else:
            items, wildcard = list(job.items or []), False
        dest = job.dest
        n_sources = job.arg_count + len(job.heredocs)
        st = resolver.stat_in(root_fd, dest, policy=resolver.IN_ROOT)
        dest_is_dir = dest.endswith("/") or (st is not None and stat.S_ISDIR(st.st_mode))
        many = n_sources > 1 or (wildcard and len(items) > 1)
        if n_sources > 1 and not dest.endswith("/") and not dest_is_dir:
            raise CopyError(f"When using {job.keyword} with more than one source file, the destination "
                            "must be a directory and end with a /")
        if many or dest_is_dir:
            os.close(w.makedirs(dest))
        for item in items:
            w.copy_item(item, dest, as_dir=many or dest_is_dir)
        for name, content in job.heredocs:
            target = posixpath.join(dest.rstrip("/") or "/", name) if (many or dest_is_dir) else dest
            w.heredoc(target, content)
        w.finish()
    finally:
        w.close()
        if from_fd is not None:
            os.close(from_fd)
    return "ok"


def materialize(sel: Selection, parent: Path, name: str) -> None:
    """A private copy of one selected context source at `parent/name` (a directory of
    ours): what a RUN bind mount shows, exactly the bytes its key was made from and
    nothing `.dockerignore` hides. Modes, owners and times as in the context."""
    item = sel.items[0]
    job = CopyJob("RUN --mount", "/" + name, sel.items, None, keep_owner=True)
    with resolver.rooted(parent) as fd:
        w = _Writer(fd, job)
        try:
            w.copy_item(item, "/" + name, as_dir=False)
            if item.is_dir:
                w.entries(item.tree, item.entries[:1], "/" + name)
            w.finish()
        finally:
            w.close()


def summary(keyword: str, content_digest: str, sel: Selection | None, dest: str) -> str:
    """buildah's history text: `COPY file:<sha> in /dest ` (dir: / multi: for several)."""
    kind = "file"
    if sel is not None:
        if len(sel.items) > 1:
            kind = "multi"
        elif sel.items and sel.items[0].is_dir:
            kind = "dir"
    return f"/bin/sh -c #(nop) {keyword} {kind}:{content_digest} in {dest} "


__all__ = ["ContextChanged", "CopyError", "CopyJob", "ContextError", "FileHashes", "Item",
           "Selection", "SourceTree", "copy_into", "digest_selection", "materialize",
           "select_sources", "summary"]
