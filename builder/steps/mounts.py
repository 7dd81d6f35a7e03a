"""RUN --mount: secret, cache, tmpfs and bind mounts turned into sandbox mounts.

Secrets come from `--secret id=ID,src=PATH|env=VAR` and reach the sandbox as
bytes (a SecretMount; or the command's environment): the container child puts
them on a tmpfs of its own mount namespace, so they are never on disk, not even
after a SIGKILL, and never in the upper dir, the history or the cache key.
Cache mounts persist under ROOT/cache/mounts/ (`sharing=locked` takes a
lock for the step; `sharing=private` takes an instance no other running step
holds, making a new one when all are busy). A bind mount shows the step a private
copy (read-only unless `rw`): of the context, only what .dockerignore lets through.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import posixpath
import stat
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from builder.keyvalues import fields as kv_fields
from layerstore import resolver
from layerstore.errors import PybuildError


class MountError(PybuildError):
    """A RUN --mount (or --secret) that cannot be provided."""


# BuildKit's limit (secrets.MaxSecretSize): a secret is held in memory and on a tmpfs
MAX_SECRET_SIZE = 500 * 1024


@dataclass
class Secret:
    id: str
    src: Path | None = None
    env: str | None = None

    def _open(self) -> int:
        """The src file, opened without blocking: a FIFO or a device named as a secret
        would hang the build or read without end; only a regular file is one."""
        assert self.src is not None
        try:
            fd = os.open(self.src, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY)
        except OSError as exc:
            raise MountError(f"--secret id={self.id}: cannot read {self.src}: "
                             f"{exc.strerror}") from None
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            os.close(fd)
            raise MountError(f"--secret id={self.id}: {self.src} is not a regular file")
        if st.st_size > MAX_SECRET_SIZE:
            os.close(fd)
            raise MountError(f"--secret id={self.id}: {self.src} is larger than "
                             f"{MAX_SECRET_SIZE // 1024} KiB")
        return fd

    def check(self) -> None:
        """Before the build (docker checks its secret sources before it starts): the
        file is there and readable, the variable set."""
        if self.src is not None:
            os.close(self._open())
        elif self.env is not None and self.env not in os.environ:
            raise MountError(f"--secret id={self.id}: environment variable {self.env} is not set")

    def value(self) -> bytes:
        if self.src is not None:
            with open(self._open(), "rb") as f:
                data = f.read(MAX_SECRET_SIZE + 1)
            if len(data) > MAX_SECRET_SIZE:
                raise MountError(f"secret {self.id}: {self.src} is larger than "
                                 f"{MAX_SECRET_SIZE // 1024} KiB")
            return data
        if self.env is not None:
            if self.env not in os.environ:
                raise MountError(f"secret {self.id}: environment variable {self.env} is not set")
            return os.environ[self.env].encode()
        raise MountError(f"secret {self.id}: no src or env")


def parse_secret(text: str) -> Secret:
    """`id=ID,src=PATH` | `id=ID,env=VAR` (also `type=file|env`, `source=`)."""
    fields = kv_fields(text, "--secret")
    sid = fields.get("id")
    src = fields.get("src") or fields.get("source")
    env = fields.get("env")
    if fields.get("type") == "env" and src and not env:
        env, src = src, None
    if not sid:
        sid = Path(src).name if src else env
    if not sid or (not src and not env):
        raise PybuildError(f"--secret {text!r}: needs id= and src= or env=")
    return Secret(sid, Path(src).expanduser().absolute() if src else None, env)


def _number(text: str | None, base: int, what: str, default: int, kind: str = "secret") -> int:
    """uid=, gid= (decimal) or mode= (octal) of a mount. 4294967295 is (uid_t)-1, which
    chown reads as "leave it": not an owner."""
    if not text:
        return default
    try:
        value = int(text, base) if text.isascii() and text.isalnum() else -1
    except ValueError:
        value = -1
    if not 0 <= value < (0o10000 if what == "mode" else (1 << 32) - 1):
        raise MountError(f"RUN --mount=type={kind}: {what}={text!r} is not valid")
    return value


def parse_size(text: str) -> int:
    from layerstore.humanize import parse_size as parse

    try:
        return parse(text)
    except ValueError as exc:
        raise PybuildError(f"--mount size: {exc}") from None


def _make_cache_dir(d: Path, m) -> None:
    """Made whole or not at all: the owner and mode are set on a new directory before it
    takes its name (a half-made one, left by an error or a kill, would be kept for ever)."""
    mode = _number(m.mode, 8, "mode", 0o755, "cache")
    uid = _number(m.uid, 10, "uid", 0, "cache")
    gid = _number(m.gid, 10, "gid", 0, "cache")
    if d.is_dir():
        return
    d.parent.mkdir(parents=True, exist_ok=True)
    tmp = d.with_name(f".new-{d.name}-{os.getpid()}-{threading.get_ident()}")
    tmp.mkdir()
    try:
        os.chown(tmp, uid, gid)
        os.chmod(tmp, mode)
        os.rename(tmp, d)
    except OSError:
        tmp.rmdir()
        if not d.is_dir():
            raise


def private_instance(d: Path):
    """sharing=private: the first instance of the cache no other step holds
    (d, d-1, d-2, ...), and its lock, already taken, to keep for the step."""
    d.parent.mkdir(parents=True, exist_ok=True)
    n = 0
    while True:
        inst = d if n == 0 else d.with_name(f"{d.name}-{n}")
        f = open(inst.with_suffix(".lock"), "a+")
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return inst, f
        except BlockingIOError:
            f.close()
            n += 1


def _target(target: str | None, cwd: str) -> str | None:
    """A mount target as BuildKit takes it: relative to the working directory, cleaned."""
    if not target:
        return target
    return posixpath.normpath(posixpath.join("/", cwd or "/", target)).replace("//", "/")


def cache_path(cache_dir: Path, cid: str) -> Path:
    """The directory of the cache mount `cid` (its id=, else its target) under
    ROOT/cache/mounts: a hash, so no id ever names a path of its own."""
    return cache_dir / hashlib.sha256(cid.encode()).hexdigest()[:32]


def cache_lock(d: Path) -> Path:
    """The lock file a `sharing=locked` step holds for the cache dir `d` (and what a
    restore of `d` from a remote cache holds)."""
    return d.with_suffix(".lock")


def cache_ids(mounts: list, cwd: str = "/") -> list[str]:
    """The ids of a RUN step's cache mounts, as `prepare` names their directories
    (the build records them, for exporting and restoring cache mounts)."""
    ids = []
    for m in mounts:
        if m.type == "cache":
            target = _target(m.target, cwd)
            if target:
                ids.append(m.id or target)
    return ids


def prepare(mounts: list, ws: Path, env: dict[str, str], *, secrets: dict, cache_dir: Path,
            contexts: dict, context_view: Callable[[int, object, Path], Path],
            stage_tree: Callable[[str, Path], Path], cwd: str = "/"):
    """(sandbox mounts, lock files to hold, mount targets) for a RUN step's --mount flags."""
    from dataclasses import replace

    from builder.sandbox import BindMount, SecretMount, TmpfsMount

    binds, locks, targets = [], [], []
    for k, m in enumerate(mounts):
        m = replace(m, target=_target(m.target, cwd))
        t = m.type
        if t == "secret":
            sec = secrets.get(m.id or Path(m.target or "").name)
            if sec is None:
                if m.required:
                    raise MountError(f"secret {m.id} was not provided (--secret id={m.id},...)")
                continue
            value = sec.value()
            if m.env:
                env[m.env] = value.decode("utf-8", "replace")
                if not m.target:
                    continue
            target = m.target or _target(f"/run/secrets/{sec.id}", "/")
            binds.append(SecretMount(target, value, mode=_number(m.mode, 8, "mode", 0o400),
                                     uid=_number(m.uid, 10, "uid", 0),
                                     gid=_number(m.gid, 10, "gid", 0)))
            targets.append(target)
        elif t == "cache":
            target = m.target
            if not target:
                raise MountError("RUN --mount=type=cache needs target=")
            d = cache_path(cache_dir, m.id or target)
            sharing = m.sharing or "shared"
            if sharing == "private":
                d, held = private_instance(d)
                locks.append(held)
            _make_cache_dir(d, m)
            if sharing == "locked":
                locks.append(cache_lock(d))
            binds.append(BindMount(d, target, readonly=bool(m.readonly)))
            targets.append(target)
        elif t == "tmpfs":
            target = m.target
            if not target:
                raise MountError("RUN --mount=type=tmpfs needs target=")
            size = None
            if m.size:
                size = parse_size(m.size)
            binds.append(TmpfsMount(target, size=size))
            targets.append(target)
        elif t == "bind":
            target = m.target
            if not target:
                raise MountError("RUN --mount=type=bind needs target=")
            # the step sees a private copy, never a host directory: from the context only
            # what .dockerignore lets through, exactly the bytes of the key (`rw` writes
            # go to that copy and are dropped with the workspace)
            if m.from_ and m.from_ not in contexts:
                flat = stage_tree(m.from_, ws / f"bind{k}")
                src = stage_view(flat, m.source or ".", ws, f"bind{k}-src", m.from_)
            else:
                src = context_view(k, m, ws / f"bindctx{k}")
            rw = m.readonly is False
            binds.append(BindMount(src, target, readonly=not rw))
            targets.append(target)
        elif t == "ssh":
            raise MountError("RUN --mount=type=ssh is not supported")
    return binds, locks, targets


def stage_view(flat: Path, source: str, ws: Path, name: str, ref: str) -> Path:
    """What `source` names in a stage's flattened rootfs (resolved inside it, as the
    stage's container would), moved out to ws/name: the bind mount's source is then a
    path of ours, never one spelled from the image's names."""
    with resolver.rooted(flat) as root_fd:
        try:
            real = resolver.trace(root_fd, source, policy=resolver.IN_ROOT).path
        except (FileNotFoundError, NotADirectoryError):
            raise MountError(f"RUN --mount=type=bind,from={ref},source={source}: "
                             "not found") from None
        except OSError as exc:
            raise MountError(f"RUN --mount=type=bind,from={ref},source={source}: "
                             f"{exc.strerror}") from None
        if not real:
            return flat
        with resolver.parent_of(root_fd, real, policy=resolver.NO_SYMLINKS) as (dfd, leaf), \
                resolver.rooted(ws) as wfd:
            os.rename(leaf, name, src_dir_fd=dfd, dst_dir_fd=wfd)
    return ws / name
