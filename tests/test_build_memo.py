"""The whole-build memo (builder/buildmemo.py): an unchanged rebuild is answered from
the record with the solver's own output, and every change the solver would see makes
the memo step aside: context content, base image, tags, cache entries, build args."""

from __future__ import annotations

import json
import os
import shutil
import textwrap

import pytest

from buildpeer import import_busybox, rootfs_tar

DOCKERFILE = """\
FROM busybox
ARG GREETING=hello
COPY msg.txt /msg.txt
RUN echo "$GREETING $(cat /msg.txt)" > /out
CMD ["cat", "/out"]
"""


@pytest.fixture
def bb(pybuild, busybox_rootfs, tmp_path):
    import_busybox(pybuild, busybox_rootfs, tmp_path)
    return pybuild


@pytest.fixture
def ctx(tmp_path):
    files = {"Dockerfile": DOCKERFILE, "msg.txt": "one\n", ".dockerignore": "scratch/\n",
             "scratch/junk": "ignored\n"}
    for name, text in files.items():
        (tmp_path / "ctx" / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "ctx" / name).write_text(text)
    return tmp_path / "ctx"


def _records(store_root) -> list:
    d = store_root / "cache" / "builds"
    return sorted(d.iterdir()) if d.is_dir() else []


def _build(pybuild, ctx, *args):
    p = pybuild("build", "--progress", "plain", "-t", "memo", *args, ctx)
    return p.stdout.strip().splitlines()[-1], p.stderr


def _run(pybuild, name="memo") -> str:
    return pybuild("run", "--rm", "--network", "none", name).stdout


def test_unchanged_rebuild_is_answered_like_the_solver(bb, ctx, store_root):
    image1, first = _build(bb, ctx)
    assert "(4 steps run" in first and len(_records(store_root)) == 1
    answer = _answer(store_root, ctx)
    assert answer is not None and answer.image_id == image1 and answer.names == [
        "docker.io/library/memo:latest"]
    image2, memo_out = _build(bb, ctx)
    # the same rebuild answered by the solver's cache alone, for comparison
    shutil.rmtree(store_root / "cache" / "builds")
    image3, solver_out = _build(bb, ctx)
    assert image1 == image2 == image3
    assert memo_out == solver_out
    assert "#4 CACHED" in memo_out and "(0 steps run, 4 cached)" in memo_out
    assert len(_records(store_root)) == 1  # the solver's answer was recorded again


def test_content_change_with_same_size_and_mtime_rebuilds(bb, ctx):
    image1, _ = _build(bb, ctx)
    st = (ctx / "msg.txt").stat()
    (ctx / "msg.txt").write_text("two\n")                       # same size
    os.utime(ctx / "msg.txt", ns=(st.st_atime_ns, st.st_mtime_ns))  # same mtime; ctime moves
    image2, out = _build(bb, ctx)
    assert image2 != image1 and "#4 DONE" in out
    assert _run(bb) == "hello two\n"


def test_ignored_files_do_not_matter_but_new_files_do(bb, ctx):
    image1, _ = _build(bb, ctx)
    (ctx / "scratch" / "junk").write_text("changed, still ignored\n")
    image2, out = _build(bb, ctx)
    assert image2 == image1 and "(0 steps run" in out
    (ctx / "new.txt").write_text("not read by any step\n")   # the memo steps aside ...
    image3, out = _build(bb, ctx)
    assert image3 == image1 and "(0 steps run" in out         # ... the solver still hits


def test_build_arg_from_environment_is_part_of_the_key(bb, ctx, monkeypatch):
    monkeypatch.setenv("GREETING", "hi")
    _build(bb, ctx, "--build-arg", "GREETING")
    assert _run(bb) == "hi one\n"
    monkeypatch.setenv("GREETING", "hey")
    _build(bb, ctx, "--build-arg", "GREETING")
    assert _run(bb) == "hey one\n"


def test_base_image_retagged_is_seen(bb, ctx, busybox_rootfs, tmp_path):
    image1, _ = _build(bb, ctx)
    # a different busybox: same rootfs plus one file
    other = tmp_path / "other-rootfs"
    shutil.copytree(busybox_rootfs, other, symlinks=True)
    (other / "marker").write_text("other base\n")
    bb("import", "--change", 'CMD ["sh"]', rootfs_tar(other, tmp_path / "other.tar"), "busybox")
    image2, out = _build(bb, ctx)
    assert image2 != image1 and "#4 DONE" in out
    assert bb("run", "--rm", "--network", "none", "memo", "cat", "/marker").stdout == "other base\n"


def test_removed_tag_is_tagged_again(bb, ctx):
    image1, _ = _build(bb, ctx)
    bb("rmi", "memo")
    image2, _ = _build(bb, ctx)
    assert image2 == image1
    assert json.loads(bb("inspect", "memo").stdout)[0]["Id"] == image1
    image3, _ = _build(bb, ctx, "-t", "second")             # another tag: another key
    assert image3 == image1
    assert json.loads(bb("inspect", "second").stdout)[0]["Id"] == image1


def test_pruned_cache_forgets_the_memo(bb, ctx, store_root):
    _build(bb, ctx)
    bb("rmi", "memo")
    bb("prune", "--all")
    assert _records(store_root) == []
    _, out = _build(bb, ctx)
    assert "#4 DONE" in out
    assert _run(bb) == "hello one\n"


def test_cache_entry_gone_means_solver(bb, ctx, store_root):
    _build(bb, ctx)
    rec = json.loads(_records(store_root)[0].read_text())
    last = rec["entries"][-1]
    (store_root / "cache" / "entries" / last[:2] / f"{last}.json").unlink()
    _, out = _build(bb, ctx)
    assert "#5 DONE" in out and "#4 CACHED" in out


def _answer(store_root, ctx):
    from builder.buildmemo import BuildMemo
    from builder.buildopts import BuildOptions

    memo = BuildMemo(store_root)
    return memo.answer(memo.key(BuildOptions(context=ctx, tags=["memo"]), []))


def test_no_cache_and_other_outputs_bypass_the_memo(bb, ctx, tmp_path, store_root):
    _build(bb, ctx)
    image, out = _build(bb, ctx, "--no-cache")
    assert "#4 DONE" in out
    # ... but --no-cache leaves the record a plain rebuild is answered from
    assert _answer(store_root, ctx).image_id == image
    again, out = _build(bb, ctx)
    assert again == image and "(0 steps run, 4 cached)" in out
    dest = tmp_path / "out"
    bb("build", "--progress", "quiet", "--output", f"type=local,dest={dest}", ctx)
    assert (dest / "out").read_text() == "hello one\n"


def test_iidfile_and_metadata_from_the_memo(bb, ctx, tmp_path):
    image1, _ = _build(bb, ctx)
    iid, meta = tmp_path / "iid", tmp_path / "meta.json"
    image2, _ = _build(bb, ctx, "--iidfile", str(iid), "--metadata-file", str(meta))
    assert iid.read_text() == image1 == image2
    doc = json.loads(meta.read_text())
    assert doc["containerimage.config.digest"] == image1
    assert doc["containerimage.digest"] == json.loads(bb("inspect", "memo").stdout)[0]["Descriptor"]["digest"]
    assert doc["image.name"] == "docker.io/library/memo:latest"


def test_multistage_copy_from_changed_source(bb, tmp_path):
    d = tmp_path / "ms"
    d.mkdir()
    (d / "Dockerfile").write_text(textwrap.dedent("""\
        FROM busybox AS gen
        COPY in.txt /in.txt
        RUN tr a-z A-Z < /in.txt > /up.txt
        FROM busybox
        COPY --from=gen /up.txt /up.txt
        CMD ["cat", "/up.txt"]
        """))
    (d / "in.txt").write_text("abc\n")
    bb("build", "--progress", "quiet", "-t", "ms", d)
    assert _run(bb, "ms") == "ABC\n"
    (d / "in.txt").write_text("xyz\n")
    bb("build", "--progress", "quiet", "-t", "ms", d)
    assert _run(bb, "ms") == "XYZ\n"


def test_what_the_memo_cannot_read_is_left_to_the_solver(bb, ctx, tmp_path, store_root):
    missing = tmp_path / "no-such-dir"   # an unused named context: the solver does not mind
    for _ in range(2):
        image, out = _build(bb, ctx, "--build-context", f"other={missing}")
        assert image.startswith("sha256:")
    assert _records(store_root) == []


@pytest.mark.parametrize("edit", [
    lambda r: r.update(entries=["../../../../etc/passwd"]),
    lambda r: r.update(blobs=["sha256:" + "0" * 63 + "/"]),
    lambda r: r.update(bases=[["x", 5]]),
    lambda r: r.update(steps="all of them"),
    lambda r: r.update(names={"memo": 1}),
    lambda r: r.pop("manifest"),
])
def test_a_tampered_record_is_no_answer(bb, ctx, store_root, edit):
    """A memo record is read back from the store: names in it that are not digests and
    cache keys, or fields of the wrong shape, make it no record (the solver answers,
    from its cache), never a lookup outside the store or a crash."""
    _build(bb, ctx)
    assert _answer(store_root, ctx) is not None
    path = _records(store_root)[0]
    rec = json.loads(path.read_text())
    edit(rec)
    path.write_text(json.dumps(rec))
    assert _answer(store_root, ctx) is None
    _, out = _build(bb, ctx)
    assert "#4 CACHED" in out and "#5 CACHED" in out
    assert _run(bb) == "hello one\n"
