"""The planted corpus is found (each kind, each file type, right line); look-alikes are not."""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

import pytest

from clawql_secrets.scan import output, sources
from clawql_secrets.scan.detect import Detector
from tests.scan import corpus
from tests.scan.conftest import RunScan, leaks


@pytest.fixture(scope="module")
def planted(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[corpus.Planted]]:
    root = tmp_path_factory.mktemp("planted")
    return root, corpus.plant(root)


def test_every_kind_in_every_file_type_is_found_at_its_line(
    planted: tuple[Path, list[corpus.Planted]],
) -> None:
    root, plants = planted
    result = sources.scan_paths([root], Detector())
    found = {(Path(f.location.name).name, f.location.line, f.kind) for f in result.findings}
    missed = [
        (p.file.name, p.line, p.kind) for p in plants if (p.file.name, p.line, p.kind) not in found
    ]
    assert missed == []
    # Each file type holds each kind (the corpus is what it claims to be).
    kinds_by_file: dict[str, set[str]] = defaultdict(set)
    for p in plants:
        kinds_by_file[p.file.name].add(p.kind)
    assert set(kinds_by_file) == set(corpus.RENDERERS)
    assert len(plants) == len(corpus.RENDERERS) * len(corpus.planted_items())


def test_nothing_is_reported_where_nothing_was_planted(
    planted: tuple[Path, list[corpus.Planted]],
) -> None:
    root, plants = planted
    lines = {(p.file.name, p.line) for p in plants}
    result = sources.scan_paths([root], Detector())
    extra = [
        (Path(f.location.name).name, f.location.line, f.kind)
        for f in result.findings
        if (Path(f.location.name).name, f.location.line) not in lines
    ]
    assert extra == []


@pytest.mark.parametrize("round_", range(5))
def test_look_alikes_are_not_flagged(tmp_path: Path, round_: int) -> None:
    # Fresh random look-alikes each round: hashes, UUIDs, HMACs, public keys, certs, base64 text.
    files = corpus.look_alikes(tmp_path)
    result = sources.scan_paths(files, Detector())
    assert [(str(f.location), f.kind, f.rule) for f in result.findings] == []
    assert result.scanned == len(corpus.RENDERERS)
    assert result.exit_code() == 0


def test_no_output_contains_a_planted_value(
    planted: tuple[Path, list[corpus.Planted]], run_scan: RunScan, tmp_path: Path
) -> None:
    root, plants = planted
    sarif_file = tmp_path / "scan.sarif"
    code_text, text = run_scan(str(root))
    code_json, as_json = run_scan(str(root), "--json", "--sarif", str(sarif_file))
    assert code_text == code_json == 1
    outputs = {"text": text, "json": as_json, "sarif": sarif_file.read_text()}
    leaked = [
        (name, p.kind, p.file.name)
        for p in plants
        for name, out in outputs.items()
        if leaks(p.secret, out)
    ]
    assert leaked == []
    # And the JSON says where, what kind and how it was masked.
    doc = json.loads(as_json)
    assert doc["failures"] == len(doc["findings"]) > 0
    assert all("****" in f["preview"] for f in doc["findings"])


def test_findings_render_without_values_in_every_format(
    planted: tuple[Path, list[corpus.Planted]],
) -> None:
    root, plants = planted
    result = sources.scan_paths([root], Detector())
    rendered = output.text(result) + json.dumps(output.sarif(result))
    rendered += json.dumps(output.to_json(result))
    assert not any(leaks(p.secret, rendered) for p in plants)
