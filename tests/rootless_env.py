"""An unprivileged user for the rootless tests and benchmarks, and a way to run pybuild as it.

No tests live here; tests/test_rootless.py and bench/bench_rootless.py import it.

* `ensure_user(NAME, subordinate=True)` creates a plain user (home under /home, no login
  shell) with /etc/subuid and /etc/subgid ranges of 65536 ids that overlap no other user's;
  `subordinate=False` makes one without ranges (the single-uid fallback).
* `ensure_venv()` is a venv of Debian's /usr/bin/python3 with pyproject.toml's dependencies,
  in a root-owned, world-readable directory (the pytest interpreter lives under /root, which
  the user cannot read). It is cached across runs under a name derived from the dependency
  list, made in a temporary directory and renamed into place under a lock. The repo under
  test goes on PYTHONPATH, so the user runs this worktree's code.
* `pybuild_as(user, ...)` runs `python -m builder ...` as the user: uid/gid only (no
  supplementary groups, no capabilities), a clean environment, XDG_RUNTIME_DIR=/run/user/UID.
* `Session` holds a lock for the whole test session (two pytest runs sharing the user would
  kill each other's processes in teardown) and at the end kills every process running as
  the user or one of its subordinate ids (the rootless keeper, containers, fuse-overlayfs,
  slirp4netns) and checks that none is left.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import pwd
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
import tomllib
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
CACHE = Path("/var/cache/pybuild-rootless")
USER = "pybuild-rl-test"
NOSUB_USER = "pybuild-rl-nosub"
SUB_WIDTH = 65536
SUB_FLOOR = 100000
BASE_PYTHON = "/usr/bin/python3"
SYSTEM_PATH = "/usr/sbin:/usr/bin:/sbin:/bin"
SUBUID, SUBGID = Path("/etc/subuid"), Path("/etc/subgid")


@dataclass(frozen=True)
class TestUser:
    name: str
    uid: int
    gid: int
    home: Path
    subuids: tuple[tuple[int, int], ...]   # (start, count) from /etc/subuid
    subgids: tuple[tuple[int, int], ...]

    __test__ = False  # not a pytest class

    @property
    def runtime_dir(self) -> Path:
        return Path(f"/run/user/{self.uid}")

    def own_uid(self, uid: int) -> bool:
        """Whether a host uid is the user's own or one of its subordinate uids."""
        return uid == self.uid or any(s <= uid < s + n for s, n in self.subuids)

    def own_gid(self, gid: int) -> bool:
        return gid == self.gid or any(s <= gid < s + n for s, n in self.subgids)


# --- users and their subordinate ranges -------------------------------------------

def read_subids(path: Path) -> dict[str, list[tuple[int, int]]]:
    """NAME-or-UID -> [(start, count)] of a /etc/subuid-style file."""
    out: dict[str, list[tuple[int, int]]] = {}
    try:
        text = path.read_text()
    except FileNotFoundError:
        return out
    for line in text.splitlines():
        parts = line.strip().split(":")
        if len(parts) != 3 or line.startswith("#"):
            continue
        try:
            out.setdefault(parts[0], []).append((int(parts[1]), int(parts[2])))
        except ValueError:
            continue
    return out


def _ranges_of(name: str, uid: int, path: Path) -> list[tuple[int, int]]:
    table = read_subids(path)
    return table.get(name, []) + table.get(str(uid), [])


def free_subid_start(width: int = SUB_WIDTH) -> int:
    """A start at which `width` ids overlap nobody's subuid/subgid range nor a real uid."""
    ends = [SUB_FLOOR]
    for path in (SUBUID, SUBGID):
        for ranges in read_subids(path).values():
            ends += [s + n for s, n in ranges]
    ends += [p.pw_uid + 1 for p in pwd.getpwall() if p.pw_uid < 65534]
    start = max(ends)
    return -(-start // width) * width     # round up: ranges on 64 Ki boundaries


def _run_root(*argv: str) -> None:
    p = subprocess.run(argv, capture_output=True, text=True)
    if p.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed ({p.returncode}): {p.stderr.strip()}")


def ensure_user(name: str, subordinate: bool = True) -> TestUser:
    """The user `name`, created when absent; with (or without) subordinate ranges."""
    if os.geteuid() != 0:
        raise RuntimeError("the rootless tests set up their user as root")
    CACHE.mkdir(mode=0o755, parents=True, exist_ok=True)
    with _locked(CACHE / "users.lock"):
        try:
            pw = pwd.getpwnam(name)
        except KeyError:
            _run_root("useradd", "--create-home", "--home-dir", f"/home/{name}",
                      "--shell", "/usr/sbin/nologin", "--user-group", name)
            pw = pwd.getpwnam(name)
        subuids = _ranges_of(name, pw.pw_uid, SUBUID)
        subgids = _ranges_of(name, pw.pw_uid, SUBGID)
        if subordinate and not (subuids and subgids):
            start = free_subid_start()
            span = f"{start}-{start + SUB_WIDTH - 1}"
            if not subuids:
                _run_root("usermod", "--add-subuids", span, name)
            if not subgids:
                _run_root("usermod", "--add-subgids", span, name)
        elif not subordinate and (subuids or subgids):
            for s, n in subuids:
                _run_root("usermod", "--del-subuids", f"{s}-{s + n - 1}", name)
            for s, n in subgids:
                _run_root("usermod", "--del-subgids", f"{s}-{s + n - 1}", name)
        subuids = _ranges_of(name, pw.pw_uid, SUBUID)
        subgids = _ranges_of(name, pw.pw_uid, SUBGID)
    home = Path(pw.pw_dir)
    if not home.is_dir():
        home.mkdir(mode=0o700, parents=True)
        os.chown(home, pw.pw_uid, pw.pw_gid)
    return TestUser(name, pw.pw_uid, pw.pw_gid, home, tuple(subuids), tuple(subgids))


class _locked:
    """An exclusive flock on `path` for a `with` block (created 0600 root)."""

    def __init__(self, path: Path, timeout: float = 900) -> None:
        self.path, self.timeout, self.fd = path, timeout, -1

    def __enter__(self) -> "_locked":
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        deadline = time.monotonic() + self.timeout
        while True:
            try:
                fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return self
            except BlockingIOError:
                if time.monotonic() > deadline:
                    os.close(self.fd)
                    raise RuntimeError(f"{self.path} stayed locked for {self.timeout:.0f} s")
                time.sleep(0.2)

    def __exit__(self, *exc) -> None:
        os.close(self.fd)


# --- the install the user runs ------------------------------------------------------

def dependencies() -> list[str]:
    with open(REPO / "pyproject.toml", "rb") as f:
        return sorted(tomllib.load(f)["project"]["dependencies"])


def venv_dir() -> Path:
    base = subprocess.run([BASE_PYTHON, "-c", "import sys; print(sys.version)"],
                          capture_output=True, text=True, check=True).stdout.strip()
    key = hashlib.sha256("\n".join([base, *dependencies()]).encode()).hexdigest()[:16]
    return CACHE / f"venv-{key}"


def ensure_venv() -> Path:
    """The python of a venv the test users can run (made once per dependency list)."""
    final = venv_dir()
    python = final / "bin" / "python"
    if (final / ".complete").exists():
        return python
    CACHE.mkdir(mode=0o755, parents=True, exist_ok=True)
    os.chmod(CACHE, 0o755)
    with _locked(CACHE / "venv.lock"):
        if (final / ".complete").exists():
            return python
        if final.exists():                       # a half-made one from a killed run
            shutil.rmtree(final)
        tmp = Path(tempfile.mkdtemp(prefix=".venv-", dir=CACHE))
        try:
            # the venv is used through its python only, so the temporary path in pip's
            # script shebangs does not matter after the rename
            umask = lambda: os.umask(0o022)  # noqa: E731
            subprocess.run([BASE_PYTHON, "-m", "venv", str(tmp)], check=True,
                           capture_output=True, preexec_fn=umask)
            p = subprocess.run([str(tmp / "bin" / "python"), "-m", "pip", "install", "-q",
                                "--disable-pip-version-check", *dependencies()],
                               capture_output=True, text=True, preexec_fn=umask)
            if p.returncode != 0:
                raise RuntimeError(f"pip install into the rootless venv failed:\n{p.stderr}")
            (tmp / ".complete").write_text("\n".join(dependencies()) + "\n")
            os.chmod(tmp, 0o755)
            os.rename(tmp, final)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return python


# --- running as the user -------------------------------------------------------------

def ensure_runtime_dir(user: TestUser) -> Path:
    run = user.runtime_dir
    run.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
    if not run.is_dir():
        run.mkdir(mode=0o700)
    os.chown(run, user.uid, user.gid)
    os.chmod(run, 0o700)
    return run


def make_user_dir(user: TestUser, path: Path, mode: int = 0o700) -> Path:
    """A directory the user owns (its parents must be searchable by it)."""
    path.mkdir(mode=mode, parents=True, exist_ok=True)
    os.chown(path, user.uid, user.gid)
    os.chmod(path, mode)
    return path


def user_env(user: TestUser, data_home: Path | None = None,
             extra: dict[str, str] | None = None) -> dict[str, str]:
    """A login-like environment: nothing of root's (PYTHONPATH = the repo under test)."""
    env = {
        "HOME": str(user.home),
        "USER": user.name,
        "LOGNAME": user.name,
        "PATH": SYSTEM_PATH,
        "LANG": "C.UTF-8",
        "XDG_RUNTIME_DIR": str(user.runtime_dir),
        "PYTHONPATH": str(REPO),
        # the repo's bytecode is root's: the user must not try (and fail) to write it
        "PYTHONDONTWRITEBYTECODE": "1",
    }
    if data_home is not None:
        env["XDG_DATA_HOME"] = str(data_home)
    if extra:
        env.update(extra)
    return env


def as_user_argv(user: TestUser, argv: list[str]) -> list[str]:
    """argv run with the user's uid and gid, no supplementary groups; setresuid clears
    the capabilities, so the child is as unprivileged as a login of that user."""
    return ["setpriv", f"--reuid={user.uid}", f"--regid={user.gid}", "--clear-groups",
            "--", *argv]


def run_as(user: TestUser, argv: list[str], *, env: dict[str, str] | None = None,
           input: str | bytes | None = None, timeout: float = 120, cwd: Path | None = None,
           check: bool = False) -> subprocess.CompletedProcess:
    full_env = user_env(user) if env is None else env
    text = not isinstance(input, bytes)
    p = subprocess.run(as_user_argv(user, argv), env=full_env, input=input,
                       capture_output=True, text=text, timeout=timeout,
                       cwd=str(cwd or user.home), start_new_session=True,
                       stdin=subprocess.DEVNULL if input is None else None)
    if check and p.returncode != 0:
        raise AssertionError(f"as {user.name}: {' '.join(map(str, argv))} exited "
                             f"{p.returncode}:\n{p.stdout}\n{p.stderr}")
    return p


def pybuild_as(user: TestUser, *args: str, env: dict[str, str] | None = None,
               input: str | bytes | None = None, timeout: float = 120,
               cwd: Path | None = None, check: bool = True) -> subprocess.CompletedProcess:
    """`pybuild ARGS` (this repo's code, through the venv's python) as the user."""
    return run_as(user, [str(ensure_venv()), "-m", "builder", *map(str, args)], env=env,
                  input=input, timeout=timeout, cwd=cwd, check=check)


# --- processes of the user ----------------------------------------------------------

def user_processes(user: TestUser) -> list[int]:
    """Pids of processes with any uid (real, effective, saved, fs) of the user's own or
    subordinate ones: the keeper, containers (uid 1000 inside = a subordinate uid)."""
    pids = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/status") as f:
                for line in f:
                    if line.startswith("State:") and line.split()[1] in ("Z", "X"):
                        break       # dead, waiting for its parent: nothing runs
                    if line.startswith("Uid:"):
                        if any(user.own_uid(int(u)) for u in line.split()[1:]):
                            pids.append(int(entry.name))
                        break
        except (OSError, ValueError, IndexError):
            continue
    return pids


def kill_user_processes(user: TestUser, timeout: float = 15) -> list[int]:
    """SIGKILL every process of the user until none is left; returns what survived."""
    deadline = time.monotonic() + timeout
    while True:
        pids = user_processes(user)
        if not pids or time.monotonic() > deadline:
            return pids
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        time.sleep(0.1)


# --- what the user wrote ------------------------------------------------------------

def _searchable_by(user: TestUser, st: os.stat_result) -> bool:
    if user.own_uid(st.st_uid):
        return True
    if st.st_gid == user.gid:
        return bool(st.st_mode & stat.S_IXGRP)
    return bool(st.st_mode & stat.S_IXOTH)


def owned_entries(user: TestUser, tops: Iterable[Path],
                  exclude: Iterable[Path] = ()) -> dict[str, tuple[int, int, int]]:
    """path -> (inode, size, mtime_ns) of every entry below `tops` owned by one of the user's
    ids, walking only directories the user can search (it could not write anywhere else)."""
    skip = {str(p) for p in exclude}
    out: dict[str, tuple[int, int, int]] = {}
    stack = [str(t) for t in tops]
    while stack:
        d = stack.pop()
        if d in skip:
            continue
        try:
            st = os.lstat(d)
            it = list(os.scandir(d)) if stat.S_ISDIR(st.st_mode) else []
        except OSError:
            continue
        if user.own_uid(st.st_uid):
            out[d] = (st.st_ino, st.st_size, st.st_mtime_ns)
        if not _searchable_by(user, st):
            continue
        for e in it:
            try:
                est = e.stat(follow_symlinks=False)
            except OSError:
                continue
            if e.path in skip:
                continue
            if stat.S_ISDIR(est.st_mode):
                stack.append(e.path)
            elif user.own_uid(est.st_uid):
                out[e.path] = (est.st_ino, est.st_size, est.st_mtime_ns)
    return out


def foreign_owners(user: TestUser, top: Path, limit: int = 20) -> list[str]:
    """Entries below `top` (walked as root, never following a link) whose host owner or group
    is outside the user's own ids: an in-image uid leaked onto the host as itself."""
    bad: list[str] = []
    for dirpath, dirnames, filenames in os.walk(top):
        for name in [*dirnames, *filenames, "."]:
            path = os.path.join(dirpath, name) if name != "." else dirpath
            try:
                st = os.lstat(path)
            except FileNotFoundError:
                continue
            if not (user.own_uid(st.st_uid) and user.own_gid(st.st_gid)):
                bad.append(f"{path} {st.st_uid}:{st.st_gid}")
                if len(bad) >= limit:
                    return bad
    return bad


# --- the session ------------------------------------------------------------------

def ensure_tun() -> None:
    """/dev/net/tun and /dev/fuse read-writable for all, as Debian's udev rules make them
    (scripts/setup.sh does the same): slirp4netns and fuse-overlayfs open them as the
    user. A machine without udev leaves them 0600."""
    for dev in ("/dev/net/tun", "/dev/fuse"):
        st = os.stat(dev)
        if not stat.S_ISCHR(st.st_mode):
            raise RuntimeError(f"{dev} is not a character device")
        if stat.S_IMODE(st.st_mode) != 0o666:
            os.chmod(dev, 0o666)


class Session:
    """The users, the venv and the session lock; `close()` kills what the users left."""

    def __init__(self) -> None:
        CACHE.mkdir(mode=0o755, parents=True, exist_ok=True)
        self._lock = _locked(CACHE / "session.lock").__enter__()
        try:
            self.user = ensure_user(USER, subordinate=True)
            self.nosub = ensure_user(NOSUB_USER, subordinate=False)
            for u in (self.user, self.nosub):
                if kill_user_processes(u):          # a killed earlier run's leftovers
                    raise RuntimeError(f"processes of {u.name} survive SIGKILL")
                ensure_runtime_dir(u)
            ensure_tun()
            self.python = ensure_venv()
            self.dirs: list[Path] = []
        except BaseException:
            self._lock.__exit__()
            raise

    def workdir(self, user: TestUser, name: str) -> Path:
        """A fresh directory the user owns, under its home (removed by close())."""
        path = user.home / f"rltest-{name}-{os.getpid()}"
        if path.exists():
            shutil.rmtree(path)
        self.dirs.append(path)
        return make_user_dir(user, path)

    def close(self) -> list[str]:
        """Kill every process of both users, remove the work dirs and empty the runtime
        dirs; returns the problems (leftover processes) for the caller to assert on."""
        problems = []
        try:
            for u in (self.user, self.nosub):
                left = kill_user_processes(u)
                if left:
                    problems.append(f"{u.name}: processes {left} survive SIGKILL")
            for d in self.dirs:
                shutil.rmtree(d, ignore_errors=True)
            for u in (self.user, self.nosub):
                for e in list(os.scandir(u.runtime_dir)) if u.runtime_dir.is_dir() else []:
                    if e.is_dir(follow_symlinks=False):
                        shutil.rmtree(e.path, ignore_errors=True)
                    else:
                        os.unlink(e.path)
        finally:
            self._lock.__exit__()
        return problems


if __name__ == "__main__":
    # `python3 tests/rootless_env.py [ARGS]`: set everything up and run pybuild ARGS as the user
    s = Session()
    try:
        p = pybuild_as(s.user, *(sys.argv[1:] or ["info"]), check=False)
        sys.stdout.write(p.stdout)
        sys.stderr.write(p.stderr)
    finally:
        print("\n".join(s.close()) or "clean", file=sys.stderr)
