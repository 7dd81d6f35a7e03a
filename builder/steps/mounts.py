"""RUN --mount: secret, cache, tmpfs and bind mounts turned into sandbox mounts.

Secrets come from `--secret id=ID,src=PATH|env=VAR`, are written into the
step's private workspace (or put in the command's environment) and
bind-mounted read-only: never into the upper dir, the history or the cache
key. Cache mounts persist under ROOT/cache/mounts/ (`sharing=locked` takes a
lock for the step; `sharing=private` takes an instance no other running step
holds, making a new one when all are busy); bind mounts are read-only unless `rw`, which gets a copy.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from builder.context import Context
from builder.rootview import secure_join
from layerstore.errors import PybuildError


class MountError(PybuildError):
    """A RUN --mount (or --secret) that cannot be provided."""


@dataclass
class Secret:
    id: str
    src: Path | None = None
    env: str | None = None

    def value(self) -> bytes:
        if self.src is not None:
            try:
                return self.src.read_bytes()
            except OSError as exc:
                raise MountError(f"secret {self.id}: cannot read {self.src}: {exc.strerror}") from None
        if self.env is not None:
            if self.env not in os.environ:
                raise MountError(f"secret {self.id}: environment variable {self.env} is not set")
            return os.environ[self.env].encode()
        raise MountError(f"secret {self.id}: no src or env")


def parse_secret(text: str) -> Secret:
    """`id=ID,src=PATH` | `id=ID,env=VAR` (also `type=file|env`, `source=`)."""
    fields = {}
    for part in text.split(","):
        k, eq, v = part.partition("=")
        if not eq:
            raise PybuildError(f"--secret {text!r}: expected key=value pairs")
        fields[k.strip().lower()] = v
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


def parse_size(text: str) -> int:
    from layerstore.humanize import parse_size as parse

    try:
        return parse(text)
    except ValueError as exc:
        raise PybuildError(f"--mount size: {exc}") from None


def _make_cache_dir(d: Path, m) -> None:
    if not d.exists():
        d.mkdir(parents=True, exist_ok=True)
        os.chmod(d, int(m.mode, 8) if m.mode else 0o755)
        os.chown(d, int(m.uid or 0), int(m.gid or 0))


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


def prepare(mounts: list, ws: Path, env: dict[str, str], *, secrets: dict, cache_dir: Path,
            contexts: dict, bind_context: Callable[[str | None], Context],
            stage_tree: Callable[[str, Path], Path]):
    """(sandbox mounts, lock files to hold, mount targets) for a RUN step's --mount flags."""
    from builder.sandbox import BindMount, TmpfsMount

    binds, locks, targets = [], [], []
    for k, m in enumerate(mounts):
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
            target = m.target or f"/run/secrets/{sec.id}"
            sd = ws / "secrets"
            sd.mkdir(exist_ok=True, mode=0o700)
            f = sd / f"s{k}"
            f.write_bytes(value)
            os.chmod(f, int(m.mode, 8) if m.mode else 0o400)
            os.chown(f, int(m.uid or 0), int(m.gid or 0))
            binds.append(BindMount(f, target, readonly=True))
            targets.append(target)
        elif t == "cache":
            target = m.target
            if not target:
                raise MountError("RUN --mount=type=cache needs target=")
            cid = m.id or target
            d = cache_dir / hashlib.sha256(cid.encode()).hexdigest()[:32]
            sharing = m.sharing or "shared"
            if sharing == "private":
                d, held = private_instance(d)
                locks.append(held)
            _make_cache_dir(d, m)
            if sharing == "locked":
                locks.append(d.with_suffix(".lock"))
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
            src_rel = m.source or "."
            if m.from_ and m.from_ not in contexts:
                flat = stage_tree(m.from_, ws / f"bind{k}")
                src = Path(secure_join(str(flat), src_rel))
            else:
                ctx = bind_context(m.from_)
                if ctx.root is None:
                    raise MountError("RUN --mount=type=bind: no build context")
                rel = ctx.resolve(src_rel)
                src = ctx.real(rel)
                if not src.exists():
                    raise MountError(f"RUN --mount=type=bind,source={src_rel}: not found "
                                     "in the build context")
            rw = m.readonly is False
            if rw:
                copy_dir = ws / f"bindrw{k}"
                if src.is_dir():
                    shutil.copytree(src, copy_dir, symlinks=True)
                else:
                    shutil.copy2(src, copy_dir)
                src = copy_dir
            binds.append(BindMount(src, target, readonly=not rw))
            targets.append(target)
        elif t == "ssh":
            raise MountError("RUN --mount=type=ssh is not supported")
    return binds, locks, targets
