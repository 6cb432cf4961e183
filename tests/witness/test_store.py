"""The witness state on disk: atomic, private, locked, and never silently reset."""

from __future__ import annotations

import json
import os
import shutil
import stat
from collections.abc import Callable
from pathlib import Path

import pytest

from clawql_secrets.audit import merkle
from clawql_secrets.errors import BackendError, ConfigError, InputError
from clawql_secrets.witness.state import LogState
from clawql_secrets.witness.store import StateStore, encode_state, state_file_name
from tests.witness.conftest import ORIGIN

S5 = LogState(ORIGIN, 5, bytes(range(32)))
S9 = LogState(ORIGIN, 9, bytes(range(1, 33)))


def put(store: StateStore, state: LogState) -> None:
    store.update(state.origin, lambda _current: (None, state))


def test_persists_across_reopen(tmp_path: Path) -> None:
    with StateStore.open(tmp_path, [ORIGIN]) as store:
        assert store.get(ORIGIN) is None
        put(store, S5)
        put(store, S9)
    with StateStore.open(tmp_path, [ORIGIN]) as again:
        assert again.get(ORIGIN) == S9
    path = tmp_path / state_file_name(ORIGIN)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert sorted(p.name for p in tmp_path.iterdir()) == [".lock", path.name]
    assert json.loads(path.read_text()) == {
        "format": "clawql-witness-state/1",
        "origin": ORIGIN,
        "size": 9,
        "root": bytes(range(1, 33)).hex(),
    }


def test_directory_created_private(tmp_path: Path) -> None:
    with StateStore.open(tmp_path / "a" / "state", [ORIGIN]):
        pass
    assert stat.S_IMODE((tmp_path / "a" / "state").stat().st_mode) == 0o700


def test_one_process_per_directory(tmp_path: Path) -> None:
    with (
        StateStore.open(tmp_path, [ORIGIN]),
        pytest.raises(ConfigError, match="another witness process"),
    ):
        StateStore.open(tmp_path, [ORIGIN])
    StateStore.open(tmp_path, [ORIGIN]).close()  # released on close


def test_leftover_temporary_file_is_discarded(tmp_path: Path) -> None:
    with StateStore.open(tmp_path, [ORIGIN]) as store:
        put(store, S5)
    leftover = tmp_path / ".state-0123456789abcdef.tmp"
    leftover.write_bytes(encode_state(S9)[:20])  # a write cut short by a crash
    with StateStore.open(tmp_path, [ORIGIN]) as store:
        assert store.get(ORIGIN) == S5
    assert not leftover.exists()


def _doc(**changes: object) -> bytes:
    doc: dict[str, object] = json.loads(encode_state(S5))
    doc.update(changes)
    return json.dumps(doc).encode()


CORRUPTIONS: dict[str, Callable[[bytes], bytes]] = {
    "truncated": lambda d: d[: len(d) // 2],
    "empty": lambda d: b"",
    "not-json": lambda d: b"\x00\x01garbage",
    "not-utf8": lambda d: d.replace(b"clawql", b"\xffclawql"),
    "array": lambda d: b"[]",
    "wrong-format": lambda d: _doc(format="clawql-witness-state/0"),
    "extra-field": lambda d: _doc(note="x"),
    "missing-field": lambda d: json.dumps({"format": "clawql-witness-state/1"}).encode(),
    "size-bool": lambda d: _doc(size=True),
    "size-string": lambda d: _doc(size="5"),
    "size-negative": lambda d: _doc(size=-1),
    "root-not-hex": lambda d: _doc(root="%%%"),
    "root-short": lambda d: _doc(root="AAAA"),
    "root-upper-case-hex": lambda d: _doc(root="AB" * 32),
    "empty-tree-with-root": lambda d: _doc(size=0),
    "other-origin": lambda d: _doc(origin="clawql.local/audit/n2"),
    "huge": lambda d: d + b" " * (70 * 1024),
}


@pytest.mark.parametrize("name", sorted(CORRUPTIONS))
def test_corrupt_state_refuses_to_start_and_is_kept(tmp_path: Path, name: str) -> None:
    with StateStore.open(tmp_path, [ORIGIN]) as store:
        put(store, S5)
    path = tmp_path / state_file_name(ORIGIN)
    corrupt = CORRUPTIONS[name](path.read_bytes())
    path.write_bytes(corrupt)
    with pytest.raises(ConfigError, match="corrupt") as refused:
        StateStore.open(tmp_path, [ORIGIN])
    assert str(path) in refused.value.message
    assert refused.value.fix is not None and "do not delete" in refused.value.fix
    assert path.read_bytes() == corrupt  # never reset
    StateStore.open(tmp_path / "other", [ORIGIN]).close()  # and the lock was released


def test_symlinked_state_file_is_refused(tmp_path: Path) -> None:
    with StateStore.open(tmp_path / "real", [ORIGIN]) as store:
        put(store, S5)
    (tmp_path / "state").mkdir()
    name = state_file_name(ORIGIN)
    (tmp_path / "state" / name).symlink_to(tmp_path / "real" / name)
    with pytest.raises(ConfigError, match="symlinks"):
        StateStore.open(tmp_path / "state", [ORIGIN])


def test_failed_write_keeps_the_old_state(tmp_path: Path) -> None:
    directory = tmp_path / "state"
    store = StateStore.open(directory, [ORIGIN])
    put(store, S5)
    shutil.rmtree(directory)  # the disk is gone from under the witness
    with pytest.raises(BackendError, match="cannot persist"):
        put(store, S9)
    assert store.get(ORIGIN) == S5
    store.close()


def test_decision_that_raises_writes_nothing(tmp_path: Path) -> None:
    def refuse(_current: LogState | None) -> tuple[None, LogState]:
        raise InputError("refused")

    with StateStore.open(tmp_path, [ORIGIN]) as store, pytest.raises(InputError):
        store.update(ORIGIN, refuse)
        assert store.get(ORIGIN) is None
    assert not (tmp_path / state_file_name(ORIGIN)).exists()


def test_only_configured_origins(tmp_path: Path) -> None:
    with (
        StateStore.open(tmp_path, [ORIGIN]) as store,
        pytest.raises(InputError, match="does not serve"),
    ):
        put(store, LogState("made.up/origin", 0, merkle.EMPTY_ROOT))
        with pytest.raises(InputError, match="another origin"):
            store.update(ORIGIN, lambda _c: (None, LogState("x", 0, merkle.EMPTY_ROOT)))


def test_unconfigured_origin_state_is_kept(tmp_path: Path) -> None:
    """A log removed from the config keeps its state for the day it comes back."""
    with StateStore.open(tmp_path, [ORIGIN]) as store:
        put(store, S5)
    with StateStore.open(tmp_path, ["clawql.local/audit/n2"]) as store:
        assert store.states() == {ORIGIN: S5}
    with StateStore.open(tmp_path, [ORIGIN]) as store:
        assert store.get(ORIGIN) == S5


def test_closed_store_refuses(tmp_path: Path) -> None:
    store = StateStore.open(tmp_path, [ORIGIN])
    store.close()
    with pytest.raises(BackendError, match="closed"):
        put(store, S5)
    assert not os.path.exists(tmp_path / state_file_name(ORIGIN))
