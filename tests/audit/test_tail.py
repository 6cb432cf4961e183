"""Tailer: complete lines only, rotation (mv + reopen), copytruncate, crash-resume, limits.

The "writer" in these tests does what OpenBao's file audit device does: it
holds the file open in append mode, writes whole lines, and on SIGHUP closes
it and opens (creating) the path again. Rotation is ``os.rename`` by an
operator while the writer still holds the old file.
"""

from __future__ import annotations

import json
import os
import random
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

import pytest

from clawql_secrets.audit.tail import (
    AuditTailer,
    Cursor,
    CursorFile,
    EntryKind,
    LineAssembler,
    RawEntry,
    TailConfig,
    entry_id,
    parse_line,
    request_key,
)
from clawql_secrets.errors import BackendError, ConfigError, InputError

STREAM = "node-1"


class Writer:
    """An OpenBao-like file audit device writer."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.f: BinaryIO = open(path, "ab")  # noqa: SIM115
        self.n = 0
        self.written: list[bytes] = []

    def line(self, payload: str | None = None) -> bytes:
        self.n += 1
        body = payload or f"req-{self.n}"
        data = json.dumps({"type": "request", "request": {"id": body}}).encode()
        self.f.write(data + b"\n")
        self.f.flush()
        self.written.append(data)
        return data

    def raw(self, data: bytes) -> None:
        self.f.write(data)
        self.f.flush()

    def sighup(self) -> None:
        self.f.close()
        self.f = open(self.path, "ab")  # noqa: SIM115

    def close(self) -> None:
        self.f.close()


@pytest.fixture
def audit(tmp_path: Path) -> Iterator[tuple[Path, Writer]]:
    path = tmp_path / "audit.log"
    w = Writer(path)
    yield path, w
    w.close()


def tailer(path: Path, **cfg: int) -> AuditTailer:
    return AuditTailer(
        path, STREAM, CursorFile(path.parent / "node-1.cursor"), TailConfig(**cfg) if cfg else None
    )


def lines(entries: list[RawEntry]) -> list[bytes]:
    return [e.line for e in entries if e.kind is EntryKind.ENTRY]


def rotate(path: Path, w: Writer, suffix: str = ".1") -> None:
    os.rename(path, path.with_name(path.name + suffix))


def logrotate_shift(path: Path) -> None:
    """logrotate's numbered scheme: .N -> .N+1 for every N, then the file -> .1."""
    numbered = sorted(
        (int(p.name.rsplit(".", 1)[1]) for p in path.parent.glob(path.name + ".*")),
        reverse=True,
    )
    for n in numbered:
        os.rename(path.with_name(f"{path.name}.{n}"), path.with_name(f"{path.name}.{n + 1}"))
    os.rename(path, path.with_name(path.name + ".1"))


# -- pure pieces ------------------------------------------------------------


def test_partial_line_waits_for_its_newline(audit: tuple[Path, Writer]) -> None:
    path, w = audit
    first = w.line()
    w.raw(b'{"type":"request","req')
    with tailer(path) as t:
        assert lines(t.poll()) == [first]
        assert t.poll() == []
        w.raw(b'uest":{"id":"x"}}\n')
        assert lines(t.poll()) == [b'{"type":"request","request":{"id":"x"}}']


def test_assembler_splits_lines_across_chunk_boundaries() -> None:
    data = b"a\nbb\n\nccc\ndd"
    for cut in range(len(data) + 1):
        asm = LineAssembler(STREAM, 100)
        got = asm.feed(data[:cut]) + asm.feed(data[cut:])
        assert [g.data for g in got] == [b"a", b"bb", b"ccc"]
        assert [g.offset for g in got] == [0, 2, 6]
        assert asm.pending_bytes == 2
        assert [g.line_id for g in got] == [entry_id(STREAM, x) for x in (b"a", b"bb", b"ccc")]


def test_assembler_never_buffers_more_than_the_limit() -> None:
    asm = LineAssembler(STREAM, 1000)
    big = b"x" * 10_000
    for i in range(0, len(big), 333):
        assert asm.feed(big[i : i + 333]) == []
        assert asm.buffered_bytes <= 1000
    (line,) = asm.feed(b"\n")
    assert line.data is None
    assert line.length == 10_000
    assert line.line_id == entry_id(STREAM, big)


def test_entry_id_depends_on_stream_and_bytes_only() -> None:
    assert entry_id("a", b"x") == entry_id("a", b"x")
    assert entry_id("a", b"x") != entry_id("b", b"x")
    assert entry_id("a", b"x") != entry_id("a", b"x ")


@pytest.mark.parametrize(
    "line",
    [
        pytest.param(b'{"password": "hunter2"', id="truncated_json"),
        pytest.param(b'["' + b"s." + b'AbCdEfGhIjKlMnOpQrStUvWx"]', id="json_not_an_object"),
        pytest.param(b"\xff\xfe hunter2", id="not_utf8"),
    ],
)
def test_parse_line_rejects_non_entries_without_echoing_them(line: bytes) -> None:
    with pytest.raises(BackendError) as exc:
        parse_line(line)
    assert "hunter2" not in str(exc.value)
    assert "AbCdEf" not in str(exc.value)


def test_request_key_pairs_request_and_response() -> None:
    entry = parse_line(b'{"type":"response","request":{"id":"84014c4d"}}')
    assert request_key(entry) == ("84014c4d", "response")
    assert request_key({"type": "request"}) is None


# -- rotation -----------------------------------------------------------------


def test_rotation_reads_old_inode_to_its_end_then_the_new_file(
    audit: tuple[Path, Writer],
) -> None:
    path, w = audit
    before = [w.line() for _ in range(3)]
    with tailer(path) as t:
        assert lines(t.poll()) == before
        rotate(path, w)
        # mv done, no SIGHUP yet: OpenBao keeps writing to the old inode.
        between = [w.line() for _ in range(2)]
        assert lines(t.poll()) == between
        late = w.line()  # written after our read, before the reopen
        w.sighup()
        after = [w.line() for _ in range(2)]
        assert lines(t.poll()) == [late, *after]
        assert lines(t.poll()) == []


def test_several_rotations_between_polls_keep_order(audit: tuple[Path, Writer]) -> None:
    path, w = audit
    with tailer(path) as t:
        t.poll()
        for suffix in (".3", ".2", ".1"):
            w.line()
            rotate(path, w, suffix)
            w.sighup()
        w.line()
        assert lines(t.poll()) == w.written


def test_rotated_file_ending_mid_line_reports_a_truncated_line(
    audit: tuple[Path, Writer],
) -> None:
    path, w = audit
    w.line()
    w.raw(b'{"type":"req')  # OpenBao died mid-write
    with tailer(path) as t:
        t.poll()
        rotate(path, w)
        w.sighup()
        new = w.line()
        got = t.poll()
    assert [e.kind for e in got] == [EntryKind.TRUNCATED_LINE, EntryKind.ENTRY]
    assert got[0].line == b""
    assert got[0].entry_id == entry_id(STREAM, b'{"type":"req')
    assert got[1].line == new


# -- copytruncate ---------------------------------------------------------------


def test_copytruncate_rereads_from_zero_with_a_notice(audit: tuple[Path, Writer]) -> None:
    path, w = audit
    for _ in range(5):
        w.line()
    with tailer(path) as t:
        t.poll()
        os.truncate(path, 0)
        w.f.seek(0)
        fresh = w.line("short")
        got = t.poll()
    assert [e.kind for e in got] == [EntryKind.FILE_TRUNCATED, EntryKind.ENTRY]
    assert got[1].line == fresh


def test_copytruncate_detected_after_the_file_grew_back(audit: tuple[Path, Writer]) -> None:
    path, w = audit
    w.line("a")
    with tailer(path) as t:
        t.poll()
        os.truncate(path, 0)
        w.f.seek(0)
        regrown = [w.line(f"much-longer-than-before-{i}") for i in range(3)]
        got = t.poll()
    assert got[0].kind is EntryKind.FILE_TRUNCATED
    assert lines(got) == regrown


# -- oversized lines --------------------------------------------------------


def test_oversized_line_is_an_error_entry_not_a_silent_drop(audit: tuple[Path, Writer]) -> None:
    path, w = audit
    big = b'{"data":"' + b"x" * 5000 + b'"}'
    w.line()
    w.raw(big + b"\n")
    after = w.line()
    with tailer(path, max_line_bytes=1024, read_chunk_bytes=512) as t:
        got = t.poll()
    assert [e.kind for e in got] == [EntryKind.ENTRY, EntryKind.OVERSIZED, EntryKind.ENTRY]
    oversized = got[1]
    assert oversized.line == b""
    assert oversized.size == len(big)
    assert oversized.entry_id == entry_id(STREAM, big)
    assert "5011 bytes" in oversized.detail
    assert got[2].line == after


def test_oversized_partial_line_is_not_reported_until_complete(
    audit: tuple[Path, Writer],
) -> None:
    path, w = audit
    w.raw(b"y" * 4000)
    with tailer(path, max_line_bytes=1024, read_chunk_bytes=512) as t:
        assert t.poll() == []
        w.raw(b"y" * 4000 + b"\n")
        (got,) = t.poll()
    assert got.kind is EntryKind.OVERSIZED
    assert got.entry_id == entry_id(STREAM, b"y" * 8000)


# -- crash and resume -------------------------------------------------------


def test_crash_between_poll_and_commit_replays_never_loses(audit: tuple[Path, Writer]) -> None:
    path, w = audit
    for _ in range(10):
        w.line()
    t1 = tailer(path)
    got = t1.poll()
    t1.commit(got[3].cursor)  # entries 0..3 stored downstream, then crash
    t1.close()
    t2 = tailer(path)
    replay = t2.poll()
    t2.close()
    assert lines(replay) == w.written[4:]


def test_resume_after_rotation_while_down(audit: tuple[Path, Writer]) -> None:
    path, w = audit
    for _ in range(3):
        w.line()
    with tailer(path) as t:
        got = t.poll()
        t.commit(got[0].cursor)
    w.line()
    rotate(path, w)
    w.line()
    w.sighup()
    w.line()
    with tailer(path) as t:
        assert lines(t.poll()) == w.written[1:]


def test_cursor_file_gone_while_down_reports_a_gap_and_rereads_all(
    audit: tuple[Path, Writer],
) -> None:
    path, w = audit
    w.line()
    with tailer(path) as t:
        t.commit(t.poll()[0].cursor)
    w.line()
    rotate(path, w)
    w.sighup()
    w.line()
    os.unlink(path.with_name("audit.log.1"))  # logrotate deleted it
    with tailer(path) as t:
        got = t.poll()
    assert got[0].kind is EntryKind.GAP
    assert lines(got) == [w.written[2]]


def test_cursor_whose_line_changed_is_not_trusted(audit: tuple[Path, Writer]) -> None:
    path, w = audit
    for _ in range(3):
        w.line()
    with tailer(path) as t:
        t.commit(t.poll()[-1].cursor)
    os.truncate(path, 0)
    w.f.seek(0)
    for _ in range(4):
        w.line("different-content-same-inode")
    with tailer(path) as t:
        got = t.poll()
    assert got[0].kind is EntryKind.GAP
    assert len(lines(got)) == 4


def test_random_rotations_crashes_and_partial_writes_lose_nothing(tmp_path: Path) -> None:
    """Model check: after de-duplication by entry_id, every written line exactly once, in order."""
    for seed in range(40):
        rng = random.Random(seed)
        d = tmp_path / f"s{seed}"
        d.mkdir()
        path = d / "audit.log"
        w = Writer(path)
        t = tailer(path, read_chunk_bytes=rng.choice([7, 64, 4096]))
        delivered: dict[str, bytes] = {}
        order: list[bytes] = []
        pending: list[RawEntry] = []
        rotations = 0
        for _ in range(60):
            op = rng.random()
            if op < 0.45:
                w.line(f"s{seed}-{w.n + 1}-" + "z" * rng.randrange(0, 300))
            elif op < 0.55:
                if not path.exists():
                    w.sighup()  # the previous mv is still waiting for its SIGHUP
                rotations += 1
                if seed % 2:
                    rotate(path, w, f".{rotations:03d}")
                else:
                    logrotate_shift(path)
                if rng.random() < 0.8:
                    w.sighup()
            elif op < 0.8:
                pending.extend(t.poll())
            elif op < 0.92 and pending:
                # store some prefix downstream, then commit its last cursor
                k = rng.randrange(1, len(pending) + 1)
                for e in pending[:k]:
                    if e.kind is EntryKind.ENTRY and e.entry_id not in delivered:
                        delivered[e.entry_id] = e.line
                        order.append(e.line)
                t.commit(pending[k - 1].cursor)
                pending = pending[k:]
            else:
                t.close()  # crash: uncommitted entries are lost in memory
                pending = []
                t = tailer(path, read_chunk_bytes=rng.choice([7, 64, 4096]))
        w.sighup()
        for _ in range(5):
            for e in [*pending, *t.poll()]:
                if e.kind is EntryKind.ENTRY and e.entry_id not in delivered:
                    delivered[e.entry_id] = e.line
                    order.append(e.line)
        t.close()
        w.close()
        assert order == w.written, f"seed {seed}"


# -- cursor -----------------------------------------------------------------


def test_cursor_round_trips() -> None:
    c = Cursor(STREAM, 1, 2, 300, 100, 199, "ab" * 32)
    assert Cursor.from_json(c.to_json()) == c


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(b"", id="empty_file"),
        pytest.param(b"{not json", id="garbage"),
        pytest.param(b'{"v": 99, "stream": "node-1"}', id="unknown_version"),
        pytest.param(
            b'{"v":1,"stream":"node-1","device":1,"inode":2,"offset":-5,'
            b'"line_offset":0,"line_length":0,"line_id":""}',
            id="negative_offset",
        ),
        pytest.param(
            b'{"v":1,"stream":"node-1","device":1,"inode":2,"offset":"7",'
            b'"line_offset":0,"line_length":0,"line_id":""}',
            id="offset_not_int",
        ),
        pytest.param(b'{"v":1,"stream":"node-1","extra":1}', id="unknown_field"),
    ],
)
def test_damaged_cursor_is_a_config_error_with_a_fix(data: bytes) -> None:
    with pytest.raises(ConfigError) as exc:
        Cursor.from_json(data)
    assert exc.value.fix


def test_cursor_of_another_stream_is_refused(audit: tuple[Path, Writer]) -> None:
    path, w = audit
    w.line()
    CursorFile(path.parent / "node-1.cursor").save(Cursor("node-2", 1, 2, 0))
    with tailer(path) as t, pytest.raises(ConfigError):
        t.poll()
    with tailer(path) as t, pytest.raises(InputError):
        t.commit(Cursor("node-2", 1, 2, 0))


def test_cursor_save_is_atomic_and_leaves_no_temp(tmp_path: Path) -> None:
    cf = CursorFile(tmp_path / "c")
    cf.save(Cursor(STREAM, 1, 2, 3))
    cf.save(Cursor(STREAM, 1, 2, 4))
    assert cf.load() == Cursor(STREAM, 1, 2, 4)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c"]


def test_missing_audit_file_means_nothing_yet(tmp_path: Path) -> None:
    path = tmp_path / "audit.log"
    with tailer(path) as t:
        assert t.poll() == []
        path.write_bytes(b'{"a":1}\n')
        assert lines(t.poll()) == [b'{"a":1}']


def test_poll_is_bounded(audit: tuple[Path, Writer]) -> None:
    path, w = audit
    for _ in range(50):
        w.line()
    with tailer(path, max_entries_per_poll=10, read_chunk_bytes=64) as t:
        first = t.poll()
        assert 10 <= len(first) < 50
        rest: list[RawEntry] = []
        while batch := t.poll():
            rest.extend(batch)
    assert lines(first + rest) == w.written


def test_first_start_reads_rotated_files_before_the_live_one(audit: tuple[Path, Writer]) -> None:
    path, w = audit
    w.line()
    rotate(path, w, ".1")
    w.sighup()
    w.line()
    with tailer(path) as t:
        assert lines(t.poll()) == w.written


def test_deleted_file_still_held_by_the_writer_is_read_to_its_end(
    audit: tuple[Path, Writer],
) -> None:
    path, w = audit
    w.line()
    with tailer(path) as t:
        t.poll()
        os.unlink(path)  # rm instead of mv: the inode lives on while open
        w.line()
        w.sighup()
        w.line()
        assert lines(t.poll()) == w.written[1:]


@pytest.mark.parametrize(
    "field", ["max_line_bytes", "read_chunk_bytes", "max_entries_per_poll", "max_bytes_per_poll"]
)
def test_non_positive_limits_are_a_config_error(field: str) -> None:
    with pytest.raises(ConfigError):
        TailConfig(**{field: 0})
