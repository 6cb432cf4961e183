"""The write-once stores: one contract, checked on the directory and the in-memory fake."""

from __future__ import annotations

import os
import stat
import threading
from pathlib import Path

import pytest

from clawql_secrets.audit.errors import MissingObjectError, StoreError, WriteOnceError
from clawql_secrets.audit.store import LocalWormStore, MemoryWormStore, WormStore
from clawql_secrets.errors import InputError


@pytest.fixture(params=["local", "memory"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> WormStore:
    if request.param == "local":
        return LocalWormStore(tmp_path / "worm")
    return MemoryWormStore()


def test_put_get_list(store: WormStore) -> None:
    store.put_once("segments/n1/a.jsonl", b"one\n")
    store.put_once("segments/n2/b.jsonl", b"two\n")
    store.put_once("checkpoints/n1/1.txt", b"cp\n")
    assert store.get("segments/n1/a.jsonl") == b"one\n"
    assert store.list("segments/") == ["segments/n1/a.jsonl", "segments/n2/b.jsonl"]
    assert store.list("segments/n1/") == ["segments/n1/a.jsonl"]
    assert store.list("nothing/") == []
    assert len(store.list("")) == 3


def test_overwrite_with_other_bytes_is_refused(store: WormStore) -> None:
    store.put_once("checkpoints/n1/1.txt", b"original")
    with pytest.raises(WriteOnceError):
        store.put_once("checkpoints/n1/1.txt", b"rewritten")
    assert store.get("checkpoints/n1/1.txt") == b"original"


def test_rewriting_identical_bytes_is_an_idempotent_retry(store: WormStore) -> None:
    store.put_once("segments/n1/a.jsonl", b"same")
    store.put_once("segments/n1/a.jsonl", b"same")
    assert store.list("segments/") == ["segments/n1/a.jsonl"]


def test_missing_object_is_reported(store: WormStore) -> None:
    with pytest.raises(MissingObjectError):
        store.get("segments/n1/none.jsonl")


@pytest.mark.parametrize(
    "name",
    ["", "/abs", "a/../b", "../escape", "a//b", ".hidden", "a/.tmp-x", "a/b c", "a\\b", "x" * 600],
    ids=["empty", "absolute", "dotdot-inside", "dotdot", "empty-part", "hidden", "tempfile",
         "space", "backslash", "too-long"],
)  # fmt: skip
def test_unsafe_names_are_input_errors(store: WormStore, name: str) -> None:
    with pytest.raises(InputError):
        store.put_once(name, b"x")
    with pytest.raises(InputError):
        store.get(name)


def test_local_objects_are_read_only_and_no_temp_files_remain(tmp_path: Path) -> None:
    store = LocalWormStore(tmp_path)
    store.put_once("segments/n1/a.jsonl", b"data")
    path = tmp_path / "segments" / "n1" / "a.jsonl"
    assert stat.S_IMODE(path.stat().st_mode) == 0o444
    assert sorted(os.listdir(path.parent)) == ["a.jsonl"]


def test_local_list_ignores_temp_and_foreign_files(tmp_path: Path) -> None:
    store = LocalWormStore(tmp_path)
    store.put_once("segments/n1/a.jsonl", b"data")
    (tmp_path / "segments" / "n1" / ".tmp-crashed").write_bytes(b"partial")
    assert store.list("segments/") == ["segments/n1/a.jsonl"]


def test_local_io_failure_is_a_store_error(tmp_path: Path) -> None:
    (tmp_path / "file").write_bytes(b"")
    store = LocalWormStore(tmp_path / "file")  # the root is a file: nothing can be written
    with pytest.raises(StoreError):
        store.put_once("segments/n1/a.jsonl", b"x")


def test_concurrent_writers_never_overwrite_each_other(tmp_path: Path) -> None:
    """Two writers race for each name: exactly one wins and its bytes stay."""
    store = LocalWormStore(tmp_path)
    outcomes: dict[str, list[bytes]] = {}

    def write(name: str, data: bytes) -> None:
        try:
            store.put_once(name, data)
            outcomes.setdefault(name, []).append(data)
        except WriteOnceError:
            pass

    for i in range(50):
        name = f"segments/n1/{i}.jsonl"
        threads = [threading.Thread(target=write, args=(name, w)) for w in (b"A", b"B")]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert len(outcomes[name]) == 1
        assert store.get(name) == outcomes[name][0]
