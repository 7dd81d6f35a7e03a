"""Layer tar -> directory: the apply half of the layer codec.

Layers are hostile input.  Every path is resolved from a directory fd of the
target one component at a time with O_NOFOLLOW, so neither a `..`, an
absolute name, a symlink planted by an earlier entry nor one already in the
tree can lead a write outside the target; such entries are rejected with
BadLayer naming them.  Symlink targets are stored verbatim (they point into
the container's root) and never followed here.

Two forms: "overlay" builds a snapshot (whiteouts kept as 0/0 char devices,
opaque dirs as trusted.overlay.opaque=y) in an empty dir; "flat" applies the
layer onto an existing tree (whiteouts delete, opaque dirs lose the children
this layer did not write).  Directory mode, owner and mtime are set last, so
writing their children neither fails on read-only dirs nor bumps the mtime.
"""

from __future__ import annotations

import errno
import hashlib
import os
import stat
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Callable, Iterator, Sequence

from layerstore import compression as comp
from layerstore import resolver
from layerstore.merged import is_opaque, merged_entry
from layerstore.userns import in_user_namespace, mapped_ids, opaque_xattr
from layerstore.errors import BadLayer, DigestMismatch, NotFound, PybuildError
from layerstore.layer_tar import (BLK, CHR, CONT, DIR, FIFO, LNK, MAX_DEPTH, OPAQUE_MARKER, REG, SYM,
                                  WHITEOUT_PREFIX, Header, HeaderError, TarTruncated, read_entries)

OVERLAY, FLAT = "overlay", "flat"
_MAX_ID = (1 << 32) - 2  # (uid_t)-1 means "leave unchanged" to chown; beyond it is no id
_MAX_TIME_NS = (1 << 63) - 1
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_FILE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
_DATA_TYPES = (REG, CONT)
_KNOWN_TYPES = (REG, CONT, LNK, SYM, CHR, BLK, DIR, FIFO)


@dataclass
class ApplyStats:
    diff_id: str
    uncompressed_size: int
    entries: int


class LayerApplyError(PybuildError):
    """The target refused an entry for a reason other than the layer (disk full, permissions)."""


def _show(name: bytes) -> str:
    """An entry name for a message: quoted, and cut short (a PAX path may be 1 MiB)."""
    text = name.decode("utf-8", "backslashreplace")
    return repr(text[:256]) + ("..." if len(text) > 256 else "")


class _TarStream:
    """Exact reads and copies over the chunks the decompressing pump hands over."""

    def __init__(self, chunks: Iterator[bytes], limit: int | None = None) -> None:
        self._chunks = chunks
        self._view = memoryview(b"")
        self._pos = 0
        self.offset = 0
        self._limit = limit
        self._seen = 0

    def _count(self, n: int) -> None:
        # a gzip bomb (a few MB that inflate to terabytes) is stopped here, in the
        # entries and in the padding after them alike
        self._seen += n
        if self._limit is not None and self._seen > self._limit:
            raise BadLayer(f"layer is larger than {self._limit} bytes uncompressed, the limit "
                           "for this kind of archive")

    def _fill(self) -> bool:
        for chunk in self._chunks:
            self._count(len(chunk))
            if chunk:
                self._view = memoryview(chunk)
                self._pos = 0
                return True
        return False

    def read(self, size: int) -> bytes:
        """Exactly `size` bytes; b"" at a clean end of stream; TarTruncated in between."""
        parts = []
        left = size
        while left:
            if self._pos >= len(self._view) and not self._fill():
                if left == size:
                    return b""
                raise TarTruncated("the stream ends inside an entry")
            piece = self._view[self._pos:self._pos + left]
            parts.append(piece)
            self._pos += len(piece)
            left -= len(piece)
        self.offset += size
        return b"".join(parts)

    def copy(self, fd: int | None, size: int) -> None:
        """Moves `size` bytes into fd (or drops them when fd is None)."""
        left = size
        while left:
            if self._pos >= len(self._view) and not self._fill():
                raise TarTruncated("the stream ends inside an entry")
            piece = self._view[self._pos:self._pos + left]
            if fd is not None:
                written = 0
                while written < len(piece):
                    written += os.write(fd, piece[written:])
            self._pos += len(piece)
            left -= len(piece)
        self.offset += size

    def skip(self, size: int) -> None:
        self.copy(None, size)

    def drain(self) -> None:
        for chunk in self._chunks:
            self._count(len(chunk))


@dataclass
class _Progress:
    """The last entry name seen, for error messages about what follows it."""

    last: bytes = b"(start of layer)"


@dataclass
class _Entry:
    name: bytes
    parts: list[bytes]
    header: Header


def _components(name: bytes, what: str, entry: bytes) -> list[bytes]:
    if name.startswith(b"/"):
        raise BadLayer(f"layer entry {_show(entry)}: absolute {what} is not allowed")
    if b"\0" in name:
        raise BadLayer(f"layer entry {_show(entry)}: NUL byte in {what}")
    parts = [p for p in name.split(b"/") if p and p != b"."]
    if b".." in parts:
        raise BadLayer(f"layer entry {_show(entry)}: '..' in {what} leads outside the target")
    if len(parts) > MAX_DEPTH:
        raise BadLayer(f"layer entry {_show(entry)}: {what} is nested deeper than {MAX_DEPTH} levels")
    return parts


class _Tree:
    """The target dir, walked by fds without following symlinks."""

    def __init__(self, target: Path) -> None:
        self.root = os.open(target, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        self._names: list[bytes] = []
        self._fds: list[int] = [self.root]
        self.created: list[list[bytes]] = []  # parent dirs no entry declared, made 0755

    def close(self) -> None:
        for fd in self._fds:
            os.close(fd)
        self._fds = []

    def _open_dir(self, pfd: int, name: bytes, create: bool, entry: bytes, shown: list[bytes]) -> int | None:
        try:
            return os.open(name, _DIR_FLAGS, dir_fd=pfd)
        except FileNotFoundError:
            if not create:
                return None
        except OSError as exc:
            if exc.errno in (errno.ELOOP, errno.ENOTDIR):
                raise BadLayer(f"layer entry {_show(entry)}: {_show(b'/'.join(shown))} is not a directory "
                               "(a symlink or file); refusing to write through it") from None
            raise
        os.mkdir(name, 0o755, dir_fd=pfd)
        self.created.append(list(shown))
        return os.open(name, _DIR_FLAGS, dir_fd=pfd)

    def dir_fd(self, parts: list[bytes], entry: bytes, create: bool = True) -> int | None:
        """fd of the directory `parts` (kept open and cached as a stack); None if absent."""
        keep = 0
        limit = min(len(parts), len(self._names))
        while keep < limit and self._names[keep] == parts[keep]:
            keep += 1
        for fd in self._fds[keep + 1:]:
            os.close(fd)
        del self._fds[keep + 1:]
        del self._names[keep:]
        for part in parts[keep:]:
            fd = self._open_dir(self._fds[-1], part, create, entry, self._names + [part])
            if fd is None:
                return None
            self._fds.append(fd)
            self._names.append(part)
        return self._fds[-1]

    def lookup_parent(self, parts: list[bytes], entry: bytes) -> int | None:
        """A fresh fd (caller closes) of the dir holding `parts`, for link sources."""
        fd = os.dup(self.root)
        for i, part in enumerate(parts[:-1]):
            try:
                nfd = self._open_dir(fd, part, False, entry, parts[:i + 1])
            finally:
                os.close(fd)
            if nfd is None:
                return None
            fd = nfd
        return fd


def _remove(pfd: int, name: bytes) -> None:
    try:
        st = os.stat(name, dir_fd=pfd, follow_symlinks=False)
    except FileNotFoundError:
        return
    if stat.S_ISDIR(st.st_mode):
        resolver.remove_tree_at(pfd, name)     # a loop: a layer's tree may be deep
    else:
        os.unlink(name, dir_fd=pfd)


def xattr_allowed(key: bytes) -> bool:
    """Whether a layer may set the xattr `key` (anything else is dropped, as a file
    system without xattr support would drop it).

    Kept: user.* (data of the image's own software), security.capability (file
    capabilities: docker keeps them; the sandbox's bounding set still limits them),
    and POSIX ACLs. Dropped: trusted.* -- trusted.overlay.* is overlayfs's own
    metadata (opaque, redirect, metacopy, origin: a layer setting them could make a
    snapshot hide, redirect to or borrow the data of other layers' files; opaque
    dirs have the .wh..wh..opq marker for that) and nothing else in trusted.* is an
    image's business; user.overlay.* (the same, for overlay mounted with userxattr);
    security.* other than the capability (SELinux labels, IMA/EVM signatures belong
    to the host's policy, which labels containers itself)."""
    if key.startswith(b"user."):
        return not key.startswith(b"user.overlay.")
    return key in (b"security.capability", b"system.posix_acl_access",
                   b"system.posix_acl_default")


def _set_xattrs(target: int | str, xattrs: dict[bytes, bytes], entry: bytes) -> None:
    for key, value in xattrs.items():
        try:
            if isinstance(target, int):
                os.setxattr(target, key, value)
            else:
                os.setxattr(target, key, value, follow_symlinks=False)
        except OSError as exc:
            if exc.errno in (errno.ENOTSUP, errno.EOPNOTSUPP):
                continue  # the filesystem cannot hold it; same as tar --xattrs
            raise BadLayer(f"layer entry {_show(entry)}: cannot set xattr {_show(key)}: {exc.strerror}") from None


def copy_xattrs(src_fd: int, dst_fd: int) -> None:
    """The xattrs a layer may carry (xattr_allowed), from one open file to another."""
    try:
        names = os.listxattr(src_fd)
    except OSError:
        return
    for key in names:
        if xattr_allowed(os.fsencode(key)):
            try:
                os.setxattr(dst_fd, key, os.getxattr(src_fd, key))
            except OSError as exc:
                if exc.errno not in (errno.ENOTSUP, errno.EOPNOTSUPP, errno.ENODATA):
                    raise


def copy_data(src: int, dst: int, size: int) -> None:
    left = size
    try:
        while left > 0:
            n = os.copy_file_range(src, dst, min(left, 1 << 30))
            if n == 0:
                return
            left -= n
    except OSError as exc:
        if exc.errno not in (errno.EXDEV, errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
            raise
        while left > 0 and (chunk := os.read(src, min(left, 1 << 20))):
            view = memoryview(chunk)
            while view:
                view = view[os.write(dst, view):]
            left -= len(chunk)


class _Extractor:
    def __init__(self, target: Path, mode: str, lowers: list[Path]) -> None:
        self.tree = _Tree(target)
        self.overlay = mode == OVERLAY
        self.whiteouts = True       # False: `.wh.*` names are plain entries (docker cp's untar)
        self.written: set[bytes] = set()
        self.dirs: list[tuple[list[bytes], Header]] = []
        self.lowers: list[int] = []  # O_PATH fds of the lower snapshots, top first
        try:
            for lower in reversed(lowers):
                self.lowers.append(resolver.open_root(lower))
        except OSError:
            self.close()
            raise

    def apply(self, e: _Entry, ts: _TarStream) -> None:
        """Applies one entry (the data it does not take from `ts` is skipped by the reader)."""
        h = e.header
        if not e.parts:
            if h.typeflag != DIR:
                raise BadLayer(f"layer entry {_show(e.name)}: names the target root but is not a directory")
            self.dirs.append(([], h))
            return
        base = e.parts[-1]
        if base.startswith(WHITEOUT_PREFIX) and self.whiteouts:
            self.whiteout(e, base)
            return
        pfd = self.tree.dir_fd(e.parts[:-1], e.name)
        assert pfd is not None
        t = h.typeflag
        if t == DIR:
            self.directory(pfd, base, e)
        elif t in _DATA_TYPES:
            self.regular(pfd, base, e, ts)
        elif t == SYM:
            self.replace(pfd, base, lambda: os.symlink(h.linkname, base, dir_fd=pfd))
            self.finish_node(pfd, base, h, e.name, chmod=False)
        elif t == LNK:
            self.hardlink(pfd, base, e)
        elif t == FIFO:
            self.replace(pfd, base, lambda: os.mkfifo(base, 0o600, dir_fd=pfd))
            self.finish_node(pfd, base, h, e.name)
        else:
            kind = stat.S_IFCHR if t == CHR else stat.S_IFBLK
            dev = os.makedev(h.devmajor, h.devminor)
            self.replace(pfd, base, lambda: os.mknod(base, kind | 0o600, dev, dir_fd=pfd))
            self.finish_node(pfd, base, h, e.name)
        self.written.add(b"/".join(e.parts))

    @staticmethod
    def replace(pfd: int, name: bytes, create) -> None:
        """Runs create(); if the name exists, removes what is there (never following it) first."""
        try:
            create()
        except FileExistsError:
            _remove(pfd, name)
            create()

    @staticmethod
    def finish_node(pfd: int, name: bytes, h: Header, entry: bytes, chmod: bool = True) -> None:
        os.chown(name, h.uid, h.gid, dir_fd=pfd, follow_symlinks=False)
        if chmod:  # the node was just created by us and is not a symlink
            os.chmod(name, h.mode, dir_fd=pfd)
        if h.xattrs:
            _set_xattrs(f"/proc/self/fd/{pfd}/{os.fsdecode(name)}", h.xattrs, entry)
        os.utime(name, ns=(h.mtime_ns, h.mtime_ns), dir_fd=pfd, follow_symlinks=False)

    def directory(self, pfd: int, name: bytes, e: _Entry) -> None:
        try:
            os.mkdir(name, 0o700, dir_fd=pfd)
        except FileExistsError:
            if not stat.S_ISDIR(os.stat(name, dir_fd=pfd, follow_symlinks=False).st_mode):
                _remove(pfd, name)
                os.mkdir(name, 0o700, dir_fd=pfd)
        if e.header.xattrs:
            fd = os.open(name, _DIR_FLAGS, dir_fd=pfd)
            try:
                _set_xattrs(fd, e.header.xattrs, e.name)
            finally:
                os.close(fd)
        self.dirs.append((e.parts, e.header))

    def regular(self, pfd: int, name: bytes, e: _Entry, ts: _TarStream) -> None:
        h = e.header
        try:
            fd = os.open(name, _FILE_FLAGS, 0o600, dir_fd=pfd)
        except FileExistsError:
            _remove(pfd, name)
            fd = os.open(name, _FILE_FLAGS, 0o600, dir_fd=pfd)
        try:
            ts.copy(fd, h.size)
            os.fchown(fd, h.uid, h.gid)
            os.fchmod(fd, h.mode)
            if h.xattrs:  # after chown, which drops security.capability
                _set_xattrs(fd, h.xattrs, e.name)
            os.utime(fd, ns=(h.mtime_ns, h.mtime_ns))
        finally:
            os.close(fd)

    def hardlink(self, pfd: int, name: bytes, e: _Entry) -> None:
        src = _components(e.header.linkname, "hardlink target", e.name)
        key = b"/".join(src)
        if src and key not in self.written:
            # A link to a file this layer did not write: docker writes such layers (the
            # file of a lower layer got a second name). Flat, the file is in the tree;
            # as a snapshot it is in a lower one, and is copied up first, as overlayfs
            # does when a container links a lower file.
            found = self._copy_up(src, e) if self.overlay else self._existing(src, e)
            if not found:
                raise BadLayer(f"layer entry {_show(e.name)}: hardlink to {_show(e.header.linkname)}, "
                               "which is neither an earlier entry of this layer nor a file below it")
            self.written.add(key)
        if not src:
            raise BadLayer(f"layer entry {_show(e.name)}: hardlink without a target")
        if src == e.parts:
            return
        sfd = self.tree.lookup_parent(src, e.name)
        if sfd is None:
            raise BadLayer(f"layer entry {_show(e.name)}: hardlink target {_show(key)} no longer exists")
        try:
            self.replace(pfd, name, lambda: os.link(src[-1], name, src_dir_fd=sfd, dst_dir_fd=pfd,
                                                    follow_symlinks=False))
        except OSError as exc:
            raise BadLayer(f"layer entry {_show(e.name)}: cannot hardlink to {_show(key)}: {exc.strerror}") from None
        finally:
            os.close(sfd)

    def _existing(self, src: list[bytes], e: _Entry) -> bool:
        """Flat: whether `src` is a non-directory already in the tree (no symlink on the way)."""
        try:
            st = resolver.lstat(self.tree.root, b"/".join(src), policy=resolver.NO_SYMLINKS)
        except (resolver.PathEscape, OSError):
            return False
        return st is not None and not stat.S_ISDIR(st.st_mode)

    @staticmethod
    def _merged(src: list[bytes], layers: list[int], want_dir: bool = False
                ) -> tuple[int, os.stat_result] | None:
        """merged_entry, when what shows is (not) a directory as wanted."""
        found = merged_entry(layers, src)
        if found is None or stat.S_ISDIR(found[1].st_mode) != want_dir:
            return None
        return found

    def _copy_up(self, src: list[bytes], e: _Entry) -> bool:
        """Copy the lower file `src` into the snapshot with its content, mode, owner,
        xattrs and times (the parent dirs it needs get their lowers' metadata in
        finish(), as every parent this layer did not declare)."""
        found = self._merged(src, [self.tree.root, *self.lowers])
        if found is None:
            return False
        lfd, st = found
        if lfd == self.tree.root:
            return True  # already in this snapshot
        pfd = self.tree.dir_fd(src[:-1], e.name)
        assert pfd is not None
        name, path = src[-1], b"/".join(src)
        if stat.S_ISREG(st.st_mode):
            sfd = resolver.resolve(lfd, path, policy=resolver.NO_SYMLINKS, follow=False,
                                   flags=os.O_RDONLY)
            try:
                dfd = os.open(name, _FILE_FLAGS, 0o600, dir_fd=pfd)
                try:
                    copy_data(sfd, dfd, st.st_size)
                    os.fchown(dfd, st.st_uid, st.st_gid)
                    os.fchmod(dfd, stat.S_IMODE(st.st_mode))
                    copy_xattrs(sfd, dfd)  # after chown, which drops security.capability
                    os.utime(dfd, ns=(st.st_atime_ns, st.st_mtime_ns))
                finally:
                    os.close(dfd)
            finally:
                os.close(sfd)
            return True
        if stat.S_ISLNK(st.st_mode):
            os.symlink(resolver.readlink(lfd, path, policy=resolver.NO_SYMLINKS), name, dir_fd=pfd)
        else:  # fifo, device node or socket: the node itself
            os.mknod(name, stat.S_IFMT(st.st_mode) | 0o600, st.st_rdev, dir_fd=pfd)
            os.chmod(name, stat.S_IMODE(st.st_mode), dir_fd=pfd)
        os.chown(name, st.st_uid, st.st_gid, dir_fd=pfd, follow_symlinks=False)
        os.utime(name, ns=(st.st_atime_ns, st.st_mtime_ns), dir_fd=pfd, follow_symlinks=False)
        return True

    def _implicit_dirs(self) -> None:
        """Parent dirs made for entries (none declared them): in a snapshot over lowers
        they take the metadata of the dir they cover, as an overlayfs copy-up would,
        so the merged view does not turn /etc 0755 root:root under a hand-made layer."""
        for parts in self.tree.created:
            path = b"/".join(parts)
            if any(is_opaque(self.tree.root, b"/".join(parts[:i])) for i in range(1, len(parts))):
                continue
            found = self._merged(parts, self.lowers, want_dir=True)
            if found is None:
                continue
            lfd, st = found
            try:
                fd = resolver.resolve(self.tree.root, path, policy=resolver.NO_SYMLINKS, flags=_DIR_FLAGS)
            except (resolver.PathEscape, OSError):
                continue  # replaced by a later entry
            try:
                sfd = resolver.resolve(lfd, path, policy=resolver.NO_SYMLINKS, flags=_DIR_FLAGS)
                try:
                    os.fchown(fd, st.st_uid, st.st_gid)
                    os.fchmod(fd, stat.S_IMODE(st.st_mode))
                    copy_xattrs(sfd, fd)
                    os.utime(fd, ns=(st.st_atime_ns, st.st_mtime_ns))
                finally:
                    os.close(sfd)
            finally:
                os.close(fd)

    def whiteout(self, e: _Entry, base: bytes) -> None:
        parent = e.parts[:-1]
        if base == OPAQUE_MARKER:
            pfd = self.tree.dir_fd(parent, e.name, create=self.overlay)
            if pfd is None:
                return
            if self.overlay:
                os.setxattr(pfd, opaque_xattr(), b"y")
                return
            prefix = b"/".join(parent) + b"/" if parent else b""
            for child in os.listdir(pfd):
                if prefix + os.fsencode(child) not in self.written:
                    _remove(pfd, os.fsencode(child))
            return
        if base.startswith(WHITEOUT_PREFIX * 2):
            return  # other aufs metadata (.wh..wh.plnk etc.): nothing to apply
        victim = base[len(WHITEOUT_PREFIX):]
        if victim in (b"", b".", b".."):
            raise BadLayer(f"layer entry {_show(e.name)}: whiteout of {_show(victim)} is not allowed")
        pfd = self.tree.dir_fd(parent, e.name, create=self.overlay)
        if pfd is None:
            return
        _remove(pfd, victim)
        self.written.discard(b"/".join(parent + [victim]))
        if self.overlay:
            os.mknod(victim, stat.S_IFCHR, 0, dir_fd=pfd)

    def finish(self) -> None:
        """Directory owner, mode and mtime, now that their contents are written."""
        if self.lowers:
            self._implicit_dirs()  # first: a dir entry of the layer itself wins
        for parts, h in self.dirs:
            if parts:
                try:
                    pfd = self.tree.dir_fd(parts[:-1], b"/".join(parts), create=False)
                    fd = os.open(parts[-1], _DIR_FLAGS, dir_fd=pfd) if pfd is not None else None
                except (OSError, BadLayer):
                    fd = None  # replaced, whited out or turned into a symlink by a later entry
                if fd is None:
                    continue
            else:
                fd = os.dup(self.tree.root)
            try:
                os.fchown(fd, h.uid, h.gid)
                os.fchmod(fd, h.mode)
                os.utime(fd, ns=(h.mtime_ns, h.mtime_ns))
            finally:
                os.close(fd)

    def close(self) -> None:
        self.tree.close()
        for fd in self.lowers:
            os.close(fd)
        self.lowers = []


_warned: set[str] = set()


def _warn_once(kind: str, text: str) -> None:
    if kind not in _warned:
        _warned.add(kind)
        sys.stderr.write(f"pybuild: warning: {text}\n")


class _UserNamespaceFit:
    """Rootless: only the ids of our user namespace's map can own a file, and no device
    node can be made (mknod needs CAP_MKNOD in the initial namespace). As rootless docker
    and podman do, a device node is left out; an owner beyond the map becomes root, with
    a warning that names the fix, since the image is then not what its layers say."""

    def __init__(self) -> None:
        self.uids = mapped_ids("uid")
        self.gids = mapped_ids("gid")

    def fits(self, h: Header) -> bool:
        if h.typeflag in (CHR, BLK) and (h.devmajor, h.devminor) != (0, 0):
            _warn_once("device", f"layer entry {_show(h.name)}: device nodes cannot be made "
                       "without root; left out (as rootless docker does)")
            return False
        if h.uid >= self.uids or h.gid >= self.gids:
            _warn_once("ids", f"layer entry {_show(h.name)} is owned by {h.uid}:{h.gid}, but "
                       f"this user namespace maps only {self.uids} uids and {self.gids} gids; "
                       "such files are owned by root here. Add ranges for your user to "
                       "/etc/subuid and /etc/subgid (usermod --add-subuids/--add-subgids)")
            h.uid = h.uid if h.uid < self.uids else 0
            h.gid = h.gid if h.gid < self.gids else 0
        return True


def _entry(h: Header, devices: bool = True) -> _Entry:
    """The checks of a layer's entry beyond the tar format: ids, devices and times the
    kernel can take, known types, xattrs an image may set (xattr_allowed); with
    devices=False no device node at all."""
    if not devices and h.typeflag in (CHR, BLK):
        raise BadLayer(f"layer entry {_show(h.name)}: device nodes are not allowed in this "
                       "kind of archive")
    if h.uid < 0 or h.gid < 0 or h.uid > _MAX_ID or h.gid > _MAX_ID:
        raise BadLayer(f"layer entry {_show(h.name)}: owner {h.uid}:{h.gid} is out of range")
    if not 0 <= h.devmajor <= 0xFFFFFFFF or not 0 <= h.devminor <= 0xFFFFFFFF:
        raise BadLayer(f"layer entry {_show(h.name)}: device number {h.devmajor}:{h.devminor} "
                       "is out of range")
    if not -_MAX_TIME_NS <= h.mtime_ns <= _MAX_TIME_NS:
        h.mtime_ns = 0  # as docker: a time the kernel cannot store becomes the epoch
    if h.typeflag not in _KNOWN_TYPES:
        raise BadLayer(f"layer entry {_show(h.name)}: unsupported tar entry type {h.typeflag!r}")
    if h.xattrs:
        h.xattrs = {k: v for k, v in h.xattrs.items() if xattr_allowed(k)}
    return _Entry(name=h.name, parts=_components(h.name, "name", h.name), header=h)


def apply_layer(stream: BinaryIO, target: Path, *, mode: str = OVERLAY,
                expected_diff_id: str | None = None,
                lowers: Sequence[Path] = (), devices: bool = True,
                max_size: int | None = None, whiteouts: bool = True,
                adjust: Callable[[Header], None] | None = None) -> ApplyStats:
    """Unpacks a layer (plain, gzip, zstd, bzip2 or xz tar) into `target`.

    `lowers` (overlay mode): the snapshots of the layers below this one, BOTTOM
    FIRST (the order of a mount plan's lowers and of SnapshotStore.chain). A hard
    link to a file of one of them is applied as overlayfs would: the file (looked
    up through the lowers' whiteouts and opaque dirs) is copied up into `target`,
    then linked. Flat, a hard link may name any non-directory already in the tree.

    devices=False refuses device nodes (flat whiteouts make none); `max_size` bounds
    the uncompressed stream (BadLayer beyond it). whiteouts=False (flat) writes `.wh.*`
    names as they are; `adjust(header)` may change an entry's owner and mode before it
    is checked and applied (`pybuild cp`: owned by root, or by the caller).

    Raises BadLayer naming the entry for hostile or corrupt input, and
    DigestMismatch when the uncompressed stream does not hash to
    `expected_diff_id`.  Atomicity is the caller's (extract into a temp dir).
    """
    if mode not in (OVERLAY, FLAT):
        raise ValueError(f"unknown apply mode {mode!r}")
    try:
        ex = _Extractor(target, mode, list(lowers) if mode == OVERLAY else [])
    except OSError as exc:
        raise NotFound(f"{target}: cannot apply a layer here: {exc.strerror}") from None
    ex.whiteouts = whiteouts or mode == OVERLAY
    pump = None
    state = _Progress()
    count = 0
    confined = _UserNamespaceFit() if in_user_namespace() else None
    try:
        _, reader = comp.open_reader(stream)
        hasher = hashlib.sha256()
        pump = comp.ChunkPump(reader, hasher)
        ts = _TarStream(iter(pump), max_size)
        try:
            for h in read_entries(ts):
                state.last = h.name
                if adjust is not None:
                    adjust(h)
                entry = _entry(h, devices)
                if confined is not None and not confined.fits(h):
                    count += 1
                    continue
                try:
                    ex.apply(entry, ts)
                except OSError as exc:
                    raise LayerApplyError(f"layer entry {_show(entry.name)}: cannot apply: "
                                          f"{exc.strerror or exc}") from None
                count += 1
        except TarTruncated as exc:
            # a stream of no bytes at all is an empty layer: docker takes it (Go's reader
            # sees a clean end); a layer that stops anywhere else is truncated
            if pump.size or count:
                raise BadLayer(f"layer truncated in or after entry {_show(state.last)}: {exc}") from None
        except HeaderError as exc:
            if exc.entry is not None:
                raise BadLayer(f"layer entry {_show(exc.entry)}: {exc}") from None
            raise BadLayer(f"layer entry after {_show(state.last)} (offset {exc.offset}): {exc}") from None
        ex.finish()
        ts.drain()
    except comp.CorruptStream as exc:
        raise BadLayer(f"layer stream corrupt in or after entry {_show(state.last)}: {exc}") from None
    finally:
        ex.close()
        if pump is not None:
            pump.close()
    diff_id = "sha256:" + hasher.hexdigest()
    if expected_diff_id is not None and expected_diff_id != diff_id:
        raise DigestMismatch(expected_diff_id, diff_id, what="layer diff ID")
    return ApplyStats(diff_id=diff_id, uncompressed_size=pump.size, entries=count)
