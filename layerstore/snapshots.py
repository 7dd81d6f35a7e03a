"""Snapshots: ROOT/snapshots/<chain-id hex>/ holds one layer unpacked in
overlay form, shared by every image whose layer chain has that prefix.

A snapshot is made in a temp dir next to its final place and renamed into
it, so a half-made one is never used; when two processes race, the first
rename wins and the other discards its copy.
"""

from __future__ import annotations

import os
import shutil
import uuid
from pathlib import Path
from typing import BinaryIO, Callable

from layerstore import digest as dg

TMP_PREFIX = ".tmp-"


class SnapshotStore:
    def __init__(self, root: Path) -> None:
        self.dir = root / "snapshots"

    def init(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)

    def path(self, chain_id: str) -> Path:
        return self.dir / dg.hex_of(chain_id)

    def has(self, chain_id: str) -> bool:
        return self.path(chain_id).is_dir()

    def ensure(self, chain_id: str, diff_id: str, open_layer: Callable[[], BinaryIO]) -> Path:
        """Return the snapshot's dir, unpacking the layer first if needed."""
        final = self.path(chain_id)
        if final.is_dir():
            return final
        from layerstore.layer_apply import apply_layer  # only when unpacking

        tmp = self.dir / f"{TMP_PREFIX}{dg.hex_of(chain_id)[:16]}-{uuid.uuid4().hex[:8]}"
        tmp.mkdir(mode=0o755)
        try:
            with open_layer() as stream:
                apply_layer(stream, tmp, mode="overlay", expected_diff_id=diff_id)
            try:
                os.rename(tmp, final)
            except OSError:
                if not final.is_dir():
                    raise
                remove_tree(tmp)  # somebody else made it first
        except BaseException:
            remove_tree(tmp)
            raise
        return final

    def chain_ids(self) -> list[str]:
        if not self.dir.is_dir():
            return []
        return ["sha256:" + e.name for e in os.scandir(self.dir)
                if len(e.name) == 64 and not e.name.startswith(TMP_PREFIX)]

    def leftovers(self) -> list[Path]:
        """Temp dirs of interrupted unpacks (never used; prune removes them)."""
        if not self.dir.is_dir():
            return []
        return [Path(e.path) for e in os.scandir(self.dir) if e.name.startswith(TMP_PREFIX)]

    def remove(self, chain_id: str) -> None:
        """Rename out of the way first so no reader sees a half-deleted tree."""
        final = self.path(chain_id)
        if not final.exists():
            return
        doomed = self.dir / f"{TMP_PREFIX}rm-{uuid.uuid4().hex}"
        os.rename(final, doomed)
        remove_tree(doomed)


def remove_tree(path: Path) -> None:
    """rmtree that also copes with dirs whose mode forbids writing (layers may have 0555 dirs)."""
    def fix(func, p, _exc):
        try:
            os.chmod(os.path.dirname(p), 0o700)
            if os.path.isdir(p) and not os.path.islink(p):
                os.chmod(p, 0o700)
            func(p)
        except FileNotFoundError:
            pass

    if os.path.lexists(path):
        shutil.rmtree(path, onerror=fix)
