"""The snapshotter: snapshots, the work dirs over them, and how both are mounted.

ROOT/snapshots/<chain-id hex>/ holds one layer unpacked in overlay form,
shared by every image whose layer chain has that prefix. A snapshot is made
in a temp dir next to its final place and renamed into it, so a half-made
one is never used; when two processes race, the first rename wins and the
other discards its copy.

Over them, as containerd's snapshotter does:

* `prepare(lowers)` -> a Workspace: a fresh upper and work dir under
  ROOT/containers/build-<hex>/, owned by this process (layerstore.workdirs: a
  SIGKILLed owner's dirs are reclaimed later), and the mount plan for it;
* `commit(upper, chain_id)` promotes a finished upper into the snapshot of
  its layer, instead of unpacking the layer's blob again;
* `view(lowers)` -> a read-only mount plan.

A plan is mounted by `open_mount` (a detached mount fd, made with the
caller's credentials, for move_mount(2) later and elsewhere) or `mount`
(attached on a path of the caller's private mount namespace). This module is
the only code that writes overlay mount options: fsopen(2) with one
`lowerdir+` per lower (Linux 6.8) where the kernel has it, else mount(2),
whose options must fit in one page, with every dir named by its fd number.

`remove_stubs` takes the mount points a container needed out of an upper dir
again, through the path resolver (a container may have re-routed any path
through a symlink to the host by then).
"""

from __future__ import annotations

import errno
import fcntl
import os
import stat
import threading
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, Callable, Iterable, Sequence

from layerstore import digest as dg
from layerstore import resolver, syscalls, workdirs
from layerstore.resolver import remove_tree
from layerstore.merged import merged_entry
from layerstore.userns import in_user_namespace, opaque_xattr

TMP_PREFIX = ".tmp-"
WORK_PREFIX = "build-"

# The new mount API (fsopen + overlay's `lowerdir+`) where the kernel has it; tests switch
# it off to exercise the mount(2) path that kernels before 6.8 (Debian 12's 6.1) take.
USE_NEW_MOUNT_API = True

_probed: list[bool] = []


def new_api_available() -> bool:
    """True when fsopen and overlay's `lowerdir+` key (Linux 6.8) can be used."""
    if not USE_NEW_MOUNT_API:
        return False
    if not _probed:
        try:
            fd = syscalls.fsopen("overlay")
        except OSError:
            _probed.append(False)
        else:
            try:
                syscalls.fsconfig(fd, syscalls.FSCONFIG_SET_STRING, "lowerdir+", "/")
                _probed.append(True)
            except OSError:       # EINVAL: an unknown key before Linux 6.8
                _probed.append(False)
            finally:
                os.close(fd)
    return _probed[0]


@dataclass
class MountPlan:
    """A filesystem to mount: read-only `lowers` (bottom, the base layer, first) and,
    unless this is a read-only view, an `upper` that takes every write (+ its `work`)."""

    lowers: list[Path]
    upper: Path | None = None
    work: Path | None = None
    # skip overlay's syncs (nothing reaches the disk before unmount, and unmount does
    # not flush): for an upper whose content is committed through the store's own
    # fsynced ingest. A volatile upper can be mounted only once.
    volatile: bool = False
    # a private dir of ours where fuse-overlayfs (rootless, where the kernel refuses
    # overlayfs in a user namespace) mounts for a moment; default: the work dir's parent
    scratch: Path | None = None


@dataclass
class Workspace:
    """A prepared upper (+ work dir) over lowers, in a work dir of this process under
    ROOT/containers/ that also holds the step's own files (sandbox state, pipes, ...)."""

    dir: Path
    plan: MountPlan
    _owner: workdirs.WorkDir = field(repr=False)

    @property
    def upper(self) -> Path:
        assert self.plan.upper is not None
        return self.plan.upper

    def release(self) -> None:
        """Remove the work dir with everything left in it (a committed upper is gone)."""
        self._owner.release()

    def __enter__(self) -> "Workspace":
        return self

    def __exit__(self, *exc) -> None:
        self.release()


class SnapshotStore:
    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.dir = self.root / "snapshots"
        self.work_dir = self.root / "containers"
        # one unpack of a layer at a time in this process: the platforms of a
        # multi-platform build (a stage FROM --platform=$BUILDPLATFORM each) and parallel
        # stages unpacked the same base twice over, the loser's copy thrown away
        self._unpacking: dict[str, threading.Lock] = {}
        self._unpacking_lock = threading.Lock()

    def init(self) -> None:
        self.dir.mkdir(mode=0o700, parents=True, exist_ok=True)

    def path(self, chain_id: str) -> Path:
        return self.dir / dg.hex_of(chain_id)

    def has(self, chain_id: str) -> bool:
        return _real_dir(self.path(chain_id))

    @staticmethod
    def _clear(final: Path) -> None:
        """Unlink what sits at a snapshot's place and is not a directory (a symlink or
        a file put there by hand): the path is mounted as a lower dir, and a mount
        follows a symlink wherever it points."""
        try:
            if not stat.S_ISDIR(os.lstat(final).st_mode):
                os.unlink(final)
        except FileNotFoundError:
            pass

    # --- snapshots ------------------------------------------------------------------

    def ensure(self, chain_id: str, diff_id: str, open_layer: Callable[[], BinaryIO],
               parents: Sequence[Path] = ()) -> Path:
        """Return the snapshot's dir, unpacking the layer first if needed. `parents`: the
        snapshots below it, bottom first."""
        final = self.path(chain_id)
        if _real_dir(final):
            return final
        with self._unpacking_lock:
            lock = self._unpacking.setdefault(chain_id, threading.Lock())
        with lock:
            return self._unpack(final, chain_id, diff_id, open_layer, parents)

    def _unpack(self, final: Path, chain_id: str, diff_id: str,
                open_layer: Callable[[], BinaryIO], parents: Sequence[Path]) -> Path:
        if _real_dir(final):      # another thread of ours made it meanwhile
            return final
        self._clear(final)
        from layerstore.layer_apply import apply_layer  # only when unpacking

        # the root of a snapshot is the root of the image's filesystem: 0755 as docker's
        tmp = workdirs.create(self.dir, f"{TMP_PREFIX}{dg.hex_of(chain_id)[:16]}-", mode=0o755)
        try:
            with open_layer() as stream:
                # a hard link may name a file of a layer below (docker writes those)
                apply_layer(stream, tmp.path, mode="overlay", expected_diff_id=diff_id,
                            lowers=parents)
            try:
                os.rename(tmp.path, final)
            except OSError:
                if not _real_dir(final):
                    raise
                tmp.release()  # somebody else made it first
            else:
                tmp.disown()
        except BaseException:
            tmp.release()
            raise
        return final

    def chain(self, diff_ids: Sequence[str], open_layer: Callable[[int], BinaryIO]) -> list[Path]:
        """Every layer of a chain unpacked (once): the lowers of a mount plan, bottom
        first. `open_layer(i)` opens the blob of the i-th layer."""
        paths: list[Path] = []
        for i, (chain_id, diff_id) in enumerate(zip(dg.chain_ids(list(diff_ids)), diff_ids)):
            paths.append(self.ensure(chain_id, diff_id, lambda i=i: open_layer(i), list(paths)))
        return paths

    def commit(self, upper: Path, chain_id: str) -> bool:
        """Make a finished upper dir the snapshot of `chain_id` (the layer made from it),
        instead of unpacking that layer again; False when the snapshot already existed."""
        final = self.path(chain_id)
        if _real_dir(final):
            return False
        self._clear(final)
        try:
            os.rename(upper, final)
        except OSError:
            return False
        return True

    def chain_ids(self) -> list[str]:
        if not self.dir.is_dir():
            return []
        return ["sha256:" + e.name for e in os.scandir(self.dir)
                if len(e.name) == 64 and not e.name.startswith(TMP_PREFIX)]

    def leftovers(self) -> list[Path]:
        """Temp dirs of interrupted unpacks and removals whose process is gone."""
        if not self.dir.is_dir():
            return []
        return [Path(e.path) for e in os.scandir(self.dir)
                if e.name.startswith(TMP_PREFIX) and not workdirs.owner_alive(Path(e.path))]

    def remove(self, chain_id: str) -> None:
        """Rename out of the way first so no reader sees a half-deleted tree (locked
        while it goes, so a reclaim after a crash finishes the job)."""
        final = self.path(chain_id)
        try:
            fd = os.open(final, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except FileNotFoundError:
            return
        except OSError as exc:
            if exc.errno not in (errno.ELOOP, errno.ENOTDIR):
                raise
            self._clear(final)       # a symlink or file in its place: gone, never followed
            return
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            doomed = self.dir / f"{TMP_PREFIX}rm-{uuid.uuid4().hex}"
            os.rename(final, doomed)
            remove_tree(doomed)
        finally:
            os.close(fd)

    # --- work dirs ------------------------------------------------------------------

    def prepare(self, lowers: Sequence[Path], *, volatile: bool = False) -> Workspace:
        """A fresh upper over `lowers` (bottom first) in a new work dir of this process."""
        new_api_available()      # probed once here: the forked children that mount inherit it
        owner = workdirs.create(self.work_dir, WORK_PREFIX)
        try:
            d = owner.path
            for name in ("upper", "work"):
                os.mkdir(d / name, 0o755)
                os.chmod(d / name, 0o755)   # the upper's root is the container's "/"
            lowers = list(lowers)
            if not lowers:                  # an overlay needs one lower: an empty one
                os.mkdir(d / "empty", 0o755)
                lowers = [d / "empty"]
        except BaseException:
            owner.release()
            raise
        return Workspace(d, MountPlan(lowers, d / "upper", d / "work", volatile), owner)

    def view(self, lowers: Sequence[Path]) -> MountPlan:
        """A read-only plan of `lowers` (bottom first)."""
        new_api_available()      # probed once here: the forked children that mount inherit it
        return MountPlan(list(lowers), scratch=self.root / "tmp")

    def reclaim(self, everything: bool = False,
                reclaimed: Callable[[str], None] | None = None) -> tuple[int, int]:
        """Remove the work dirs (and, with `everything`, the snapshot temp dirs and
        ROOT/tmp entries) of processes that are gone; (how many, bytes freed).
        `reclaimed(name)` hears of each step work dir removed."""
        places = [(self.work_dir, (WORK_PREFIX,)), (self.root / "tmp", (WORK_PREFIX,))]
        if everything:
            places = [(self.work_dir, (WORK_PREFIX,)), (self.root / "tmp", ("",)),
                      (self.dir, (TMP_PREFIX,))]
        count = freed = 0
        for parent, prefixes in places:
            c, f = workdirs.reclaim(parent, prefixes, measure=everything,
                                    reclaimed=reclaimed if parent == self.work_dir else None)
            count, freed = count + c, freed + f
        return count, freed


def _real_dir(path: Path) -> bool:
    """A directory itself, not a symlink to one."""
    try:
        return stat.S_ISDIR(os.lstat(path).st_mode)
    except FileNotFoundError:
        return False


# --- mounting a plan ------------------------------------------------------------------

def open_mount(plan: MountPlan) -> int | None:
    """The plan as a detached mount tree (an fd for move_mount), made now with the
    caller's credentials; None when this kernel needs `mount` (no `lowerdir+`)."""
    if overlay_driver() == FUSE and (plan.upper is not None or len(plan.lowers) > 1):
        return _fuse_open(plan)
    if not new_api_available():
        return None
    if plan.upper is None and len(plan.lowers) <= 1:
        if not plan.lowers:      # nothing at all: an empty read-only tmpfs
            fd = syscalls.fsopen("tmpfs")
            try:
                syscalls.fsconfig(fd, syscalls.FSCONFIG_SET_STRING, "mode", "755")
                syscalls.fsconfig(fd, syscalls.FSCONFIG_CMD_CREATE)
                return syscalls.fsmount(fd, syscalls.MOUNT_ATTR_RDONLY)
            finally:
                os.close(fd)
        tree = syscalls.open_tree(str(plan.lowers[0]),
                                  syscalls.OPEN_TREE_CLONE | syscalls.OPEN_TREE_CLOEXEC)
        try:
            syscalls.make_readonly(tree, str(plan.lowers[0]))
        except BaseException:
            os.close(tree)
            raise
        return tree
    _check(plan)
    fd = syscalls.fsopen("overlay")
    try:
        # lowerdir+ appends each below the ones before it: the top layer goes first
        for lower in reversed(plan.lowers):
            syscalls.fsconfig(fd, syscalls.FSCONFIG_SET_STRING, "lowerdir+", str(lower))
        if plan.upper is not None:
            syscalls.fsconfig(fd, syscalls.FSCONFIG_SET_STRING, "upperdir", str(plan.upper))
            syscalls.fsconfig(fd, syscalls.FSCONFIG_SET_STRING, "workdir", str(plan.work))
            if plan.volatile:
                syscalls.fsconfig(fd, syscalls.FSCONFIG_SET_FLAG, "volatile")
        if in_user_namespace():
            # trusted.overlay.* needs CAP_SYS_ADMIN in the initial user namespace; without
            # this flag a rootless overlay fails (EIO) at the first whiteout or copy-up
            syscalls.fsconfig(fd, syscalls.FSCONFIG_SET_FLAG, "userxattr")
        syscalls.fsconfig(fd, syscalls.FSCONFIG_CMD_CREATE)
        return syscalls.fsmount(fd)
    finally:
        os.close(fd)


NATIVE, FUSE = "native", "fuse-overlayfs"
_driver: list[str] = []


def overlay_driver() -> str:
    """The kernel's overlayfs, or fuse-overlayfs in a user namespace where the kernel
    refuses it (before Linux 5.11: overlayfs is not mountable there). PYBUILD_OVERLAY
    (native | fuse-overlayfs) chooses; asked once per process."""
    if _driver:
        return _driver[0]
    choice = os.environ.get("PYBUILD_OVERLAY", "")
    if choice not in ("", NATIVE, FUSE):
        from layerstore.errors import PybuildError

        raise PybuildError(f"PYBUILD_OVERLAY={choice!r}: use {NATIVE} or {FUSE}")
    if not choice:
        choice = NATIVE
        if in_user_namespace():
            try:
                # overlayfs's FS_USERNS_MOUNT flag is what fsopen checks in a user namespace
                os.close(syscalls.fsopen("overlay"))
            except OSError:
                choice = FUSE
    _driver.append(choice)
    return choice


def _fuse_open(plan: MountPlan) -> int:
    """fuse-overlayfs mounted on a scratch dir, cloned as a detached tree, the mount
    itself detached at once. The daemon stays in this mount namespace but no mount of it
    does: once the clone's last user (a container's namespace, an fd) is gone the kernel
    ends the FUSE connection and the daemon exits -- nothing to stop, even after SIGKILL."""
    import shutil
    import subprocess
    import tempfile

    exe = shutil.which(FUSE, path="/usr/bin:/bin:/usr/sbin:/sbin")
    if exe is None:
        raise OSError(errno.ENOENT, "overlayfs is not mountable in this user namespace and "
                                    f"{FUSE} is not installed")
    scratch = plan.scratch or (plan.work.parent if plan.work is not None else None)
    if scratch is None:
        raise OSError(errno.EINVAL, f"{FUSE}: this mount plan names no scratch dir")
    dirs = [*reversed(plan.lowers)] + ([plan.upper, plan.work] if plan.upper else [])
    for d in dirs:
        if any(c in str(d) for c in ":,\n"):
            raise OSError(errno.EINVAL, f"{d}: {FUSE} cannot take a path holding ':' or ','")
    opts = "lowerdir=" + ":".join(str(d) for d in reversed(plan.lowers))
    if plan.upper is not None:
        opts += f",upperdir={plan.upper},workdir={plan.work}"
    os.makedirs(scratch, mode=0o700, exist_ok=True)
    point = tempfile.mkdtemp(prefix=".fuse-", dir=scratch)
    try:
        res = subprocess.run([exe, "-o", opts, point], stdin=subprocess.DEVNULL,
                             capture_output=True, timeout=60)
        if res.returncode != 0:
            why = [ln for ln in res.stderr.decode("utf-8", "replace").splitlines()
                   if "unknown argument ignored" not in ln][-1:] or [f"exit {res.returncode}"]
            raise OSError(errno.EIO, f"{FUSE}: {why[0]}")
        try:
            fd = syscalls.open_tree(point, syscalls.OPEN_TREE_CLONE | syscalls.OPEN_TREE_CLOEXEC)
            if plan.upper is None:
                syscalls.make_readonly(fd, point)
        finally:
            syscalls.umount2(point, syscalls.MNT_DETACH)
        return fd
    finally:
        os.rmdir(point)


def mount(plan: MountPlan, target: str) -> None:
    """Mount the plan on `target` in the caller's own, private mount namespace.

    The mount(2) path changes the working directory for a moment: call it only from a
    single-threaded process (the forked children that mount do)."""
    fd = open_mount(plan)
    if fd is not None:
        try:
            syscalls.move_mount_fd(fd, target)
        finally:
            os.close(fd)
        return
    if plan.upper is None and not plan.lowers:
        syscalls.mount("tmpfs", target, "tmpfs", syscalls.MS_RDONLY, "mode=755")
        return
    if plan.upper is None and len(plan.lowers) == 1:
        syscalls.mount(str(plan.lowers[0]), target, None, syscalls.MS_BIND)
        syscalls.mount(None, target, None,
                       syscalls.MS_BIND | syscalls.MS_REMOUNT | syscalls.MS_RDONLY)
        return
    _mount_overlay_legacy(plan, target)


def _check(plan: MountPlan) -> None:
    if not plan.lowers:
        raise ValueError("an overlay mount plan needs at least one lower dir")
    if (plan.upper is None) != (plan.work is None):
        raise ValueError("an overlay mount plan needs both an upper and a work dir, or neither")


def _mount_overlay_legacy(plan: MountPlan, target: str) -> None:
    """mount(2) copies one page of options, ~40 snapshot paths: name each dir by the
    number of an fd we hold on it instead, resolved against /proc/self/fd as the working
    directory, so even overlay's 500 lowers take ~2 KiB. (The kernel looks the names up
    once, at mount time: a dir renamed or replaced later does not matter.)"""
    _check(plan)
    dirs = [*reversed(plan.lowers)]           # the option lists the top layer first
    if plan.upper is not None:
        dirs += [plan.upper, plan.work]
    fds: list[int] = []
    try:
        for d in dirs:
            fds.append(os.open(d, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC))
        n = len(plan.lowers)
        data = "lowerdir=" + ":".join(str(fd) for fd in fds[:n])
        if plan.upper is not None:
            data += f",upperdir={fds[n]},workdir={fds[n + 1]}"
            if plan.volatile:
                data += ",volatile"
        if in_user_namespace():
            data += ",userxattr"
        if len(data) >= 4096:
            raise OSError(errno.E2BIG, f"overlay: {n} lower directories do not fit in one "
                                       "mount option page and this kernel lacks lowerdir+")
        dest = os.path.abspath(target)
        here = os.open(".", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            os.chdir("/proc/self/fd")
            syscalls.mount("overlay", dest, "overlay", 0, data)
        finally:
            os.fchdir(here)
            os.close(here)
    finally:
        for fd in fds:
            os.close(fd)


# --- stubs ------------------------------------------------------------------------------

_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


def remove_stubs(top: Path, stubs: Iterable[str], lowers: Sequence[Path] | None = None) -> None:
    """Take the mount points and stub files a container needed (/etc/hosts, /proc,
    RUN --mount targets, ...) out of `top` again, so they never reach a layer.

    `top` is an overlay's upper dir over `lowers` (bottom first), or, with lowers None,
    a plain root used in place. Only an empty file or empty directory that no lower has
    is removed (a /dev stub with whatever is in it); for an overlay, the parents its
    creation copied up from a lower go again when left empty and unchanged (the merged
    view is the same without them; parents the sandbox made are stubs themselves). Every path
    is resolved from an fd of `top` without following any symlink: a path the container
    re-routed (`mv /x /x2 && ln -s /host/dir /x`) is simply not touched, so nothing
    outside `top` is ever removed (CVE-2024-23652)."""
    wanted: list[list[str]] = []
    for stub in set(stubs):
        names = resolver.components(stub)
        if names and ".." not in names:
            wanted.append(names)
    if not wanted:
        return
    with resolver.rooted(top) as tfd:
        lfds: list[int] = []
        try:
            for lower in reversed(lowers or []):       # the top layer first
                lfds.append(resolver.open_root(lower))
            parents: set[tuple[str, ...]] = set()
            for names in sorted(wanted, key=len, reverse=True):
                if _remove_stub(tfd, names, lfds) and len(names) > 1:
                    parents.add(tuple(names[:-1]))
            if lowers is not None:
                for names in sorted(parents, key=len, reverse=True):
                    _remove_parents(tfd, list(names), lfds)
        finally:
            for fd in lfds:
                os.close(fd)


def _remove_stub(tfd: int, names: list[str], lfds: list[int]) -> bool:
    path = "/".join(names)
    try:
        with resolver.parent_of(tfd, path, policy=resolver.NO_SYMLINKS) as (dfd, name):
            st = os.stat(name, dir_fd=dfd, follow_symlinks=False)
            if _lower_entry(lfds, names) is not None:
                return False
            if stat.S_ISREG(st.st_mode) and st.st_size == 0:
                os.unlink(name, dir_fd=dfd)
            elif stat.S_ISDIR(st.st_mode) and path == "dev":
                resolver.remove_tree_at(dfd, name)    # the sandbox's /dev, nothing of the image
            elif stat.S_ISDIR(st.st_mode):
                os.rmdir(name, dir_fd=dfd)            # ENOTEMPTY: the step put something there
            else:
                return False
            return True
    except (resolver.PathEscape, OSError):
        return False


def _remove_parents(tfd: int, names: list[str], lfds: list[int]) -> None:
    """Remove each parent, deepest first, while it is an empty, unchanged copy-up of a
    lower's directory. (An upper outlives one run in `pybuild run`: an empty directory
    the container made itself is content, even where a stub was made inside it.)"""
    while names:
        path = "/".join(names)
        try:
            with resolver.parent_of(tfd, path, policy=resolver.NO_SYMLINKS) as (dfd, name):
                fd = os.open(name, _DIR, dir_fd=dfd)
                try:
                    st = os.fstat(fd)
                    if next(iter(os.scandir(fd)), None) is not None:
                        return
                    if opaque_xattr() in os.listxattr(fd):
                        return                    # it hides the lower's content: a change
                    low = _lower_entry(lfds, names)
                    if low is None or not (
                            stat.S_ISDIR(low.st_mode) and (low.st_mode, low.st_uid, low.st_gid)
                            == (st.st_mode, st.st_uid, st.st_gid)):
                        return                    # new here, or changed (chmod, chown, ...)
                finally:
                    os.close(fd)
                os.rmdir(name, dir_fd=dfd)
        except (resolver.PathEscape, OSError):
            return
        names = names[:-1]


def _lower_entry(lfds: list[int], names: list[str]) -> os.stat_result | None:
    """What the lowers (fds, top first) show at `names`, as the overlay merges them."""
    shown = merged_entry(lfds, names)
    return shown[1] if shown is not None else None

