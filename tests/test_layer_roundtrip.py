"""Layer round trip through a real overlayfs: diff(upper) then apply must
reproduce the merged view, flat onto the lower and as an overlay snapshot.

LAYER_EXAMPLES=300 runs more hypothesis examples than the CI default of 25.
"""

from __future__ import annotations

import os
import shutil
import struct
import subprocess
import tempfile
from contextlib import contextmanager
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from layerstore.layer_apply import apply_layer
from treecmp import describe_tree, diff_trees
from layerstore.layer_diff import write_layer

# vfs_cap_data v2: effective, CAP_NET_RAW (13) permitted
CAP_NET_RAW = struct.pack("<IIIII", 0x02000001, 1 << 13, 0, 0, 0)

NAMES = ["a", "b", "c", "d.x", "e-1", "L" * 99]
NEW_NAMES = ["a", "n1", "n2", "z"]

owners = st.sampled_from([(0, 0), (1000, 1000), (123, 456)])
file_modes = st.sampled_from([0o644, 0o755, 0o600, 0o4755, 0o2711, 0o444])
dir_modes = st.sampled_from([0o755, 0o700, 0o1777, 0o555])
xattrs = st.sampled_from([None, ("user.note", b"v1"), ("security.capability", CAP_NET_RAW)])

leaf = st.one_of(
    st.tuples(st.just("file"), st.binary(max_size=3000), file_modes, owners, xattrs),
    st.tuples(st.just("symlink"), st.sampled_from(["a", "../b", "/etc/passwd", "c/d.x", "missing", "t" * 150]),
              owners),
    st.tuples(st.just("fifo"), file_modes, owners),
    st.tuples(st.just("chardev"), owners),
    st.tuples(st.just("blockdev"), owners),
    st.tuples(st.just("hardlink"), st.integers(0, 40)),
)
trees = st.recursive(
    leaf, lambda kids: st.tuples(st.just("dir"), st.dictionaries(st.sampled_from(NAMES), kids, max_size=4),
                                 dir_modes, owners), max_leaves=14)
roots = st.dictionaries(st.sampled_from(NAMES), trees, min_size=1, max_size=5)


def _own(path: Path, owner: tuple[int, int], mode: int | None = None) -> None:
    os.lchown(path, *owner)
    if mode is not None:
        os.chmod(path, mode)


def build_tree(path: Path, kids: dict, files: list[Path]) -> None:
    for name, node in sorted(kids.items()):
        p = path / name
        kind = node[0]
        if kind == "file":
            p.write_bytes(node[1])
            _own(p, node[3], node[2])
            if node[4]:
                os.setxattr(p, node[4][0], node[4][1])
            files.append(p)
        elif kind == "symlink":
            os.symlink(node[1], p)
            _own(p, node[2])
        elif kind == "fifo":
            os.mkfifo(p)
            _own(p, node[2], node[1])
        elif kind in ("chardev", "blockdev"):
            os.mknod(p, 0o640 | (0o020000 if kind == "chardev" else 0o060000), os.makedev(1, 3))
            _own(p, node[1])
        elif kind == "hardlink":
            if files:
                os.link(files[node[1] % len(files)], p)
            else:
                p.write_bytes(b"lonely")
        else:
            p.mkdir()
            build_tree(p, node[1], files)
            _own(p, node[3], node[2])


@contextmanager
def overlay_mount(mnt: Path, lowers: list[Path], upper: Path | None = None, work: Path | None = None):
    opts = "lowerdir=" + ":".join(map(str, lowers))
    if upper is not None:
        opts += f",upperdir={upper},workdir={work}"
    mnt.mkdir(exist_ok=True)
    subprocess.run(["mount", "-t", "overlay", "overlay", "-o", opts, str(mnt)], check=True)
    try:
        yield mnt
    finally:
        if subprocess.run(["umount", str(mnt)]).returncode != 0:
            subprocess.run(["umount", "-l", str(mnt)], check=True)


def _entries(root: Path) -> tuple[list[Path], list[Path]]:
    """(non-directories, directories including the root) of a tree."""
    others, dirs = [], [root]
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = Path(dirpath, name)
            (dirs if p.is_dir() and not p.is_symlink() else others).append(p)
    return sorted(others), sorted(dirs)


def change(m: Path, data) -> None:
    """Applies random changes to the merged view `m`, as a RUN step would."""
    for _ in range(data.draw(st.integers(1, 8), label="changes")):
        others, dirs = _entries(m)
        files = [p for p in others if p.is_file() and not p.is_symlink()]
        op = data.draw(st.sampled_from(["new_file", "modify", "chmod", "chown", "delete", "rmtree", "dir_to_file",
                                        "file_to_dir", "opaque", "hardlink", "xattr", "rename", "fifo",
                                        "symlink"]), label="op")
        pick = lambda pool, label: data.draw(st.sampled_from(pool), label=label)  # noqa: E731
        new = lambda: pick(dirs, "dir") / pick(NEW_NAMES, "name")  # noqa: E731
        if op in ("new_file", "fifo", "symlink", "hardlink", "rename"):
            dest = new()
            if os.path.lexists(dest):
                continue
            if op == "new_file":
                dest.write_bytes(data.draw(st.binary(max_size=500), label="content"))
            elif op == "fifo":
                os.mkfifo(dest, 0o600)
            elif op == "symlink":
                os.symlink("../somewhere", dest)
            elif op == "hardlink" and files:
                os.link(pick(files, "file"), dest)
            elif op == "rename" and others:
                os.rename(pick(others, "entry"), dest)
        elif op in ("modify", "xattr") and files:
            f = pick(files, "file")
            if op == "modify":
                with open(f, "r+b") as fh:
                    fh.write(b"changed!")
            else:
                os.setxattr(f, "user.added", b"yes")
        elif op in ("chmod", "chown") and others + dirs[1:]:
            p = pick(others + dirs[1:], "entry")
            if op == "chown":
                os.lchown(p, 42, 43)
            elif not p.is_symlink():
                os.chmod(p, 0o750)
        elif op == "delete" and others:
            os.unlink(pick(others, "entry"))
        elif op in ("rmtree", "dir_to_file", "opaque") and len(dirs) > 1:
            d = pick(dirs[1:], "dir")
            shutil.rmtree(d)
            if op == "dir_to_file":
                d.write_bytes(b"was a dir")
            elif op == "opaque":
                d.mkdir()
                (d / "inner").write_bytes(b"fresh")
        elif op == "file_to_dir" and others:
            p = pick(others, "entry")
            os.unlink(p)
            p.mkdir()
            (p / "inner").write_bytes(b"was a file")


@pytest.mark.slow
@settings(max_examples=int(os.environ.get("LAYER_EXAMPLES", "25")), deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                 HealthCheck.data_too_large])
@given(lower_spec=roots, data=st.data())
def test_layer_roundtrip_through_overlayfs(tmp_path, lower_spec, data):
    base = Path(tempfile.mkdtemp(dir=tmp_path))
    lower, upper, work = base / "lower", base / "upper", base / "work"
    for d in (lower, upper, work):
        d.mkdir()
    build_tree(lower, lower_spec, [])
    with overlay_mount(base / "merged", [lower], upper, work) as merged:
        change(merged, data)
        want = describe_tree(merged)

    layer = base / "layer.tar.gz"
    with open(layer, "wb") as out:
        stats = write_layer(upper, out, compression="gzip")

    flat = base / "flat"
    subprocess.run(["cp", "-a", str(lower), str(flat)], check=True)
    with open(layer, "rb") as f:
        applied = apply_layer(f, flat, mode="flat", expected_diff_id=stats.diff_id)
    assert applied.uncompressed_size == stats.uncompressed_size
    assert not diff_trees(describe_tree(flat), want)

    snap = base / "snap"
    snap.mkdir()
    with open(layer, "rb") as f:
        apply_layer(f, snap, mode="overlay", expected_diff_id=stats.diff_id)
    with overlay_mount(base / "view", [snap, lower]) as view:
        assert not diff_trees(describe_tree(view), want)

    for compression in ("gzip", "zstd"):
        blobs = []
        for _ in range(2):
            with open(base / "again", "wb") as out:
                again = write_layer(upper, out, compression=compression)
            blobs.append((base / "again").read_bytes())
            assert again.diff_id == stats.diff_id
        assert blobs[0] == blobs[1]
    shutil.rmtree(base)
