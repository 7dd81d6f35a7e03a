"""The id map a rootless pybuild asks for: /etc/subuid parsing (a file we read, bounded
and strict) and the layout of the map (0 = the user, then the ranges back to back)."""

from __future__ import annotations

from builder.rootless import IdRange, MAX_SUBID_FILE, id_map, subordinate_ranges


def _file(tmp_path, text: str | bytes):
    p = tmp_path / "subuid"
    p.write_bytes(text if isinstance(text, bytes) else text.encode())
    return str(p)


def test_ranges_by_name_or_uid_in_file_order(tmp_path):
    f = _file(tmp_path, "alice:100000:65536\nbob:165536:65536\n1001:300000:1000\n"
                        "alice:400000:10\n")
    assert subordinate_ranges(f, "alice", 1001) == [(100000, 65536), (300000, 1000),
                                                    (400000, 10)]
    assert subordinate_ranges(f, "carol", 1002) == []
    assert subordinate_ranges(str(tmp_path / "absent"), "alice", 1001) == []


def test_malformed_lines_are_skipped_not_trusted(tmp_path):
    f = _file(tmp_path, "alice:x:65536\nalice:100000\nalice:-5:10\nalice:0:10\n"
                        "alice:4294967290:100\nalice:10:0\nalice:1:2:3\n\xff\xfe:1:1\n"
                        "alice:200000:5\n")
    # id 0 (host root) is never mappable, nor a range past 2^32, nor an empty one
    assert subordinate_ranges(f, "alice", 1001) == [(200000, 5)]


def test_a_huge_file_is_read_bounded(tmp_path):
    junk = b"x" * (MAX_SUBID_FILE + 10) + b"\nalice:500000:7\n"
    f = _file(tmp_path, b"alice:100000:3\n" + junk)
    assert subordinate_ranges(f, "alice", 1001) == [(100000, 3)]


def test_map_puts_the_user_at_zero_and_the_ranges_after():
    assert id_map(1001, []) == [IdRange(0, 1001, 1)]
    assert id_map(1001, [(100000, 65536), (300000, 10)]) == [
        IdRange(0, 1001, 1), IdRange(1, 100000, 65536), IdRange(65537, 300000, 10)]
    # a range that holds the user's own id would map it twice (newuidmap refuses): dropped
    assert id_map(1001, [(1000, 10), (100000, 5)]) == [IdRange(0, 1001, 1),
                                                       IdRange(1, 100000, 5)]
