"""End to end on a live 3-node cluster: real audit files shipped, redacted, proven.

One stack for the module. The shipper reads each node's file audit device
from the start (bootstrap included), signs with an Ed25519 key it generates
in the stack's own SoftHSM token (as ``stack_config`` sets it up), and
writes to a local write-once directory.
"""

from __future__ import annotations

import contextlib
import json
import secrets
import string
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from clawql_secrets.audit import layout, verify
from clawql_secrets.audit.checkpoint import VerifierKey
from clawql_secrets.audit.query import QueryFilter, query
from clawql_secrets.audit.ship_config import open_signer, stack_config
from clawql_secrets.audit.shipper import Shipper, ShipperSettings
from clawql_secrets.audit.store import LocalWormStore
from clawql_secrets.cluster import bootstrap, stack
from clawql_secrets.cluster.client import OpenBaoClient
from clawql_secrets.cluster.layout import NODE_IDS, StackSettings
from clawql_secrets.errors import OpenBaoError
from clawql_secrets.issuer import LocalIssuer

pytestmark = pytest.mark.cluster


@dataclass
class Run:
    store: LocalWormStore
    verifier: VerifierKey
    canaries: dict[str, str]
    probes: dict[str, str]  # node -> KV path read on that node
    planted: dict[str, str]


def _alnum(n: int) -> str:
    return "".join(secrets.choice(string.ascii_letters + string.digits) for _ in range(n))


@pytest.fixture(scope="module")
def run(live_stack: StackSettings, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Run]:
    config = stack_config(live_stack.data_dir)
    store = LocalWormStore(tmp_path_factory.mktemp("worm"))
    signer, release = open_signer(config.signer)
    try:
        verifier = VerifierKey.from_public_key(signer.key_name, signer.public_key_bytes())
        canaries: dict[str, str] = {}
        probes: dict[str, str] = {}
        issuer = LocalIssuer.load_or_create(live_stack.issuer_dir, stack.ISSUER_URL)
        with stack.client_for(live_stack, retry_for=30) as client:
            # Real credentials issued through OpenBao: a login JWT and the token it buys.
            jwt = issuer.mint(bootstrap.OPERATOR.subject, bootstrap.WORKLOAD_AUDIENCE, ttl=60)
            resp = client.request(
                "POST",
                f"auth/{bootstrap.WORKLOAD_MOUNT}/login",
                body={"role": bootstrap.OPERATOR.role, "jwt": jwt},
                token="",
            )
            token = str(resp["auth"]["client_token"])
            canaries.update(jwt=jwt, token=token, accessor=str(resp["auth"]["accessor"]))
            # A KV secret value, written and read back.
            value = "kv-canary-" + _alnum(24)
            canaries["kv_value"] = value
            kv = f"secret/data/ops/canary-{uuid.uuid4().hex[:8]}"
            client.request("POST", kv, body={"data": {"password": value}}, token=token)
            assert client.request("GET", kv, token=token)["data"]["data"]["password"] == value
            # One read pinned to each node: it must show up in that node's stream.
            for node in NODE_IDS:
                probe = f"secret/data/ops/probe-{node}-{uuid.uuid4().hex[:8]}"
                client.request("POST", probe, body={"data": {"v": "x"}}, token=token)
                _read_on(client, live_stack, node, probe, token)
                probes[node] = probe
            # Secrets planted in free text (the request path, logged in clear).
            planted = {"aws": "AKIA" + _alnum(16).upper(), "token": "s." + _alnum(24)}
            for v in planted.values():
                with contextlib.suppress(OpenBaoError):  # 404: only the path matters
                    client.request("GET", f"secret/data/ops/{v}", token=token, retry_for=0)
        settings = ShipperSettings(interval_seconds=60, origin_prefix=config.origin_prefix)
        with Shipper(config.sources(), store, signer, settings) as shipper:
            shipper.drain()
            shipper.publish()
        yield Run(store, verifier, canaries, probes, planted)
    finally:
        release()


def _read_on(client: OpenBaoClient, s: StackSettings, node: str, path: str, token: str) -> None:
    # A fresh write may take a moment to reach a standby's raft copy (404 until then).
    deadline = time.monotonic() + 15
    while True:
        try:
            client.request("GET", path, token=token, node=s.api_addr(node), retry_for=5)
            return
        except OpenBaoError as exc:
            if exc.status != 404 or time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def _leaves(store: LocalWormStore, stream: str) -> list[dict[str, object]]:
    out: list[dict[str, object]] = []
    for name in store.list(f"segments/{stream}/"):
        out.extend(json.loads(e) for e in layout.decode_segment(store.get(name)))
    return out


def _reads(leaves: list[dict[str, object]]) -> list[str]:
    """Paths of the read requests in a stream."""
    out = []
    for leaf in leaves:
        entry = leaf.get("entry")
        request = entry.get("request") if isinstance(entry, dict) else None
        if isinstance(request, dict) and request.get("operation") == "read":
            out.append(str(request.get("path")))
    return out


def test_every_node_has_a_verified_stream(run: Run) -> None:
    assert verify.streams(run.store) == list(NODE_IDS)
    verify.verify(run.store, run.verifier)


def test_requests_appear_in_the_log_of_the_node_that_served_them(run: Run) -> None:
    reads = {n: _reads(_leaves(run.store, n)) for n in NODE_IDS}
    for node, probe in run.probes.items():
        served = [n for n in NODE_IDS if probe in reads[n]]
        # Standbys answer reads themselves: the read is in that node's log only.
        assert served == [node], f"read of {probe} on {node} found in {served}"


def test_real_credentials_never_reach_the_store(run: Run) -> None:
    blob = b"".join(run.store.get(n) for n in run.store.list(""))
    for name, value in run.canaries.items():
        assert value.encode() not in blob, name
    assert run.canaries["token"].split(".", 1)[1].encode() not in blob


def test_planted_secrets_in_free_text_are_redacted(run: Run) -> None:
    blob = b"".join(run.store.get(n) for n in run.store.list(""))
    for value in run.planted.values():
        assert value.encode() not in blob
    kinds = {
        r["type"]
        for n in NODE_IDS
        for leaf in _leaves(run.store, n)
        if isinstance(leaf.get("entry"), dict)
        for r in leaf["entry"]["redactions"]  # type: ignore[index]
    }
    assert {"aws_access_key_id", "openbao_token"} <= kinds, kinds


def test_the_operators_requests_come_with_proofs(run: Run) -> None:
    matches = query(
        run.store, run.verifier, QueryFilter(agent=bootstrap.OPERATOR.subject, path="*/probe-*")
    )
    assert {m.entry["request"]["path"] for m in matches} >= set(run.probes.values())
    for m in matches:
        verify.check_inclusion(m.proof, run.verifier)
        assert m.entry["type"] in ("request", "response")
