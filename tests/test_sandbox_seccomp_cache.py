"""Compiled seccomp filters cached on disk: reused across processes, recompiled when
the cache file is missing, short or corrupt, and keyed by the capability set."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from builder.sandbox import seccomp
from builder.sandbox.caps import resolve

REPO = Path(__file__).resolve().parent.parent


def _fresh(cache_dir, caps=None) -> bytes:
    seccomp._compiled.cache_clear()  # as a new process would
    return seccomp.bpf_for(None, caps or resolve([], []), cache_dir)


def test_cache_written_and_reused(tmp_path):
    bpf = _fresh(tmp_path)
    files = list(tmp_path.glob("*.bpf"))
    assert len(files) == 1 and files[0].read_bytes()[32:] == bpf
    assert _fresh(tmp_path) == bpf
    assert bpf == _fresh(None)  # the same program as compiling without a cache
    assert not list(tmp_path.glob(".*.tmp"))


def test_corrupt_or_short_cache_file_is_recompiled(tmp_path):
    bpf = _fresh(tmp_path)
    (f,) = tmp_path.glob("*.bpf")
    for damaged in (b"", f.read_bytes()[:40], f.read_bytes()[:-8], b"x" * 32 + bpf):
        f.write_bytes(damaged)
        assert _fresh(tmp_path) == bpf
        assert f.read_bytes()[32:] == bpf  # and rewritten


def test_key_depends_on_capabilities(tmp_path):
    a = _fresh(tmp_path, resolve([], []))
    b = _fresh(tmp_path, resolve(["CAP_SYS_ADMIN"], []))
    assert a != b and len(list(tmp_path.glob("*.bpf"))) == 2


def test_unwritable_cache_dir_still_compiles(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    assert _fresh(blocker / "seccomp") == _fresh(None)


def test_cache_hit_does_not_load_pyseccomp(tmp_path):
    _fresh(tmp_path)
    code = ("import sys; from builder.sandbox import seccomp; from builder.sandbox.caps import resolve; "
            f"assert seccomp.bpf_for(None, resolve([], []), {str(tmp_path)!r}); "
            "print('pyseccomp' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True,
                         check=True).stdout
    assert out.strip() == "False"
