"""The failures an operator fears, on a real 3-node cluster behind a real SoftHSM2 bridge.

Tests in this module share one stack (module-scoped fixture) and run in order;
each one leaves the cluster healthy for the next.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from clawql_secrets.cluster import bootstrap, stack
from clawql_secrets.cluster.client import OpenBaoClient
from clawql_secrets.cluster.layout import NODE_IDS, StackSettings
from clawql_secrets.errors import ClawQLError, NotLeaderError, OpenBaoError
from clawql_secrets.issuer import LocalIssuer

pytestmark = pytest.mark.cluster


@pytest.fixture
def ops(live_stack: StackSettings) -> Iterator[tuple[OpenBaoClient, str]]:
    issuer = LocalIssuer.load_or_create(live_stack.issuer_dir, stack.ISSUER_URL)
    with stack.client_for(live_stack, retry_for=30) as client:
        yield client, bootstrap.operator_login(client, issuer)


def leader(s: StackSettings, client: OpenBaoClient) -> str | None:
    for node in NODE_IDS:
        h = client.health(s.api_addr(node))
        if h and h.get("initialized") and not h.get("sealed") and not h.get("standby"):
            return node
    return None


def wait_healthy(s: StackSettings, timeout: float = 90) -> dict[str, object]:
    deadline = time.monotonic() + timeout
    st: dict[str, object] = {}
    while time.monotonic() < deadline:
        st = stack.status(s)
        nodes = st["nodes"]
        assert isinstance(nodes, dict)
        if all(n["up"] and n["sealed"] is False and n["voter"] for n in nodes.values()):
            return st
        time.sleep(0.5)
    raise AssertionError(f"cluster not healthy after {timeout}s: {st}")


def test_cluster_forms_with_three_voters_and_replicates_kv(
    live_stack: StackSettings, ops: tuple[OpenBaoClient, str]
) -> None:
    client, token = ops
    st = wait_healthy(live_stack)
    nodes = st["nodes"]
    assert isinstance(nodes, dict)
    assert sorted(n["raft_status"] for n in nodes.values()) == ["leader", "voter", "voter"]
    bridge = st["bridge"]
    assert isinstance(bridge, dict) and bridge["up"] and bridge["key_version"] >= 1
    lead = leader(live_stack, client)
    assert lead
    client.request(
        "POST",
        "secret/data/ops/replicated",
        body={"data": {"v": "on-leader"}},
        token=token,
        node=live_stack.api_addr(lead),
    )
    # Standbys answer reads from their own raft copy: the write shows up on each
    # of them once replicated (eventual, bounded here by 15 s).
    for node in NODE_IDS:
        deadline = time.monotonic() + 15
        while True:
            try:
                got = client.request(
                    "GET",
                    "secret/data/ops/replicated",
                    token=token,
                    node=live_stack.api_addr(node),
                )
                break
            except OpenBaoError as exc:
                if exc.status != 404 or time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        assert got["data"]["data"] == {"v": "on-leader"}, node


def test_root_token_was_revoked_and_never_written(live_stack: StackSettings) -> None:
    # Nothing under the data dir looks like an OpenBao service/root token.
    import re

    pattern = re.compile(rb"\b(s|hvs)\.[A-Za-z0-9]{24}\b")
    for path in live_stack.data_dir.rglob("*"):
        if path.is_file() and "raft" not in path.parts and path.suffix != ".db":
            assert not pattern.search(path.read_bytes()), path


def test_leader_sigkill_under_writes_loses_no_acknowledged_write(
    live_stack: StackSettings, ops: tuple[OpenBaoClient, str]
) -> None:
    client, token = ops
    acked: list[int] = []
    stop = threading.Event()

    def writer() -> None:
        with stack.client_for(live_stack, retry_for=0.5, timeout=2.0) as w:
            i = 0
            deadline = time.monotonic() + 60
            while not stop.is_set() and time.monotonic() < deadline and i < 5000:
                try:
                    w.write(f"secret/data/ops/stream/{i}", {"data": {"i": i}}, token=token)
                except ClawQLError:
                    time.sleep(0.05)
                    continue
                acked.append(i)
                i += 1

    old = leader(live_stack, client)
    assert old
    t = threading.Thread(target=writer)
    t.start()
    try:
        while len(acked) < 20:
            time.sleep(0.05)
        before = len(acked)
        pid = stack.child_pid(live_stack, old)
        assert pid
        os.kill(pid, signal.SIGKILL)
        killed_at = time.monotonic()
        # Writes resume once a new leader is elected.
        while len(acked) < before + 20 and time.monotonic() - killed_at < 45:
            time.sleep(0.05)
    finally:
        stop.set()
        t.join()
    assert len(acked) >= before + 20, "writes did not resume after the leader was killed"
    # A leader exists again, and the killed process is not the one serving.
    new = leader(live_stack, client)
    assert new is not None
    assert stack.child_pid(live_stack, old) != pid
    # Read on the leader: a standby may answer from a raft copy that lags.
    missing = []
    for i in acked:
        try:
            got = client.request(
                "GET", f"secret/data/ops/stream/{i}", token=token, node=live_stack.api_addr(new)
            )
        except OpenBaoError as exc:
            if exc.status != 404:
                raise
            missing.append(i)
            continue
        assert got["data"]["data"] == {"i": i}
    assert not missing, f"acknowledged writes lost: {missing}"
    wait_healthy(live_stack)


def test_two_of_three_down_writes_fail_clearly_then_resume(
    live_stack: StackSettings, ops: tuple[OpenBaoClient, str]
) -> None:
    client, token = ops
    survivor = NODE_IDS[0]
    down = [n for n in NODE_IDS if n != survivor]
    for n in down:
        stack.hold(live_stack, n)
    try:
        # The supervisor's own record, not a health probe: a slow node can miss a
        # probe's timeout while still voting.
        _wait_for(lambda: all(stack.child_pid(live_stack, n) is None for n in down), 60)
        with stack.client_for(live_stack, retry_for=3) as c:
            t0 = time.monotonic()
            with pytest.raises(NotLeaderError) as err:
                c.write("secret/data/ops/no-quorum", {"data": {"x": 1}}, token=token)
            # Bounded: the client gave up (no hang, no redirect loop).
            assert time.monotonic() - t0 < 20
        assert "majority of nodes" in err.value.diagnostics()
    finally:
        for n in down:
            stack.release(live_stack, n)
    wait_healthy(live_stack)
    client.write("secret/data/ops/quorum-back", {"data": {"x": 2}}, token=token)
    assert client.read("secret/data/ops/quorum-back", token=token)["data"]["data"] == {"x": 2}


def test_node_started_while_bridge_down_is_restarted_until_bridge_is_back(
    live_stack: StackSettings,
) -> None:
    node = NODE_IDS[2]
    stack.hold(live_stack, "bridge")
    stack.hold(live_stack, node)
    try:
        _wait_for(lambda: stack.child_pid(live_stack, node) is None, 30)
        restarts_before = _restarts(live_stack, node)
        stack.release(live_stack, node)
        # The node exits (KMS unreachable) and is restarted, again and again.
        _wait_for(lambda: _restarts(live_stack, node) >= restarts_before + 2, 60)
        h = stack.status(live_stack)["nodes"][node]
        assert not (h["up"] and h["sealed"] is False)
    finally:
        stack.release(live_stack, node)
        stack.release(live_stack, "bridge")
    wait_healthy(live_stack)


def test_restart_everything_auto_unseals_without_input(
    live_stack: StackSettings, ops: tuple[OpenBaoClient, str]
) -> None:
    client, token = ops
    client.write("secret/data/ops/survives", {"data": {"v": 1}}, token=token)
    children = [stack.child_pid(live_stack, n) for n in (*NODE_IDS, "bridge")]
    assert all(children)
    assert stack.down(live_stack)
    assert stack.supervisor_pid(live_stack) is None
    for pid in children:  # everything it started is gone
        assert pid is not None
        assert not Path(f"/proc/{pid}").exists() or b"zombie" in _proc_state(pid)
    res = stack.up(live_stack)
    assert not res.initialised_now
    wait_healthy(live_stack)
    issuer = LocalIssuer.load_or_create(live_stack.issuer_dir, stack.ISSUER_URL)
    with stack.client_for(live_stack, retry_for=30) as c:
        tok = bootstrap.operator_login(c, issuer)
        assert c.read("secret/data/ops/survives", token=tok)["data"]["data"] == {"v": 1}


def _proc_state(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/status").read_bytes()
    except OSError:
        return b"zombie"


def _restarts(s: StackSettings, name: str) -> int:
    state = stack.read_state(s) or {}
    children = state.get("children")
    assert isinstance(children, dict)
    return int(children[name]["restarts"])


def _wait_for(pred: object, timeout: float) -> None:
    assert callable(pred)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return
        time.sleep(0.2)
    raise AssertionError("condition not reached in time")


@pytest.mark.parametrize(
    ("identity", "method", "path"),
    [
        ("GATEWAY", "GET", "database/creds/acme-analyst-pg_main"),
        ("GATEWAY", "GET", "secret/data/tenants/acme/agents/a1/token"),
        ("GATEWAY", "POST", "pki_int/issue/acme-analyst"),
        ("GATEWAY", "POST", "sys/policies/acl/agent-x"),
        ("PROVISIONER", "GET", "database/creds/acme-analyst-pg_main"),
        ("PROVISIONER", "POST", "pki_int/issue/acme-analyst"),
        ("PROVISIONER", "POST", "pki_int/sign/acme-analyst"),
        ("PROVISIONER", "POST", "pki/sign-verbatim"),
        ("PROVISIONER", "GET", "identity/oidc/token/aws_readonly"),
        ("PROVISIONER", "POST", "sys/policies/acl/agent-x"),
        ("OPERATOR", "GET", "secret/data/tenants/acme/agents/a1/token"),
        ("OPERATOR", "POST", "sys/policies/acl/agent-x"),
        ("CERTS_RENEWER", "POST", "pki_int/issue/svc-alpha"),
        ("CERTS_RENEWER", "POST", "pki_int/sign/acme-analyst"),
        ("CERTS_RENEWER", "GET", "database/creds/acme-analyst-pg_main"),
        ("CERTS_RENEWER", "GET", "secret/data/tenants/acme/agents/a1/token"),
        ("CERTS_RENEWER", "POST", "sys/policies/acl/agent-x"),
    ],
)
def test_service_identities_cannot_use_what_they_do_not_own(
    live_stack: StackSettings, identity: str, method: str, path: str
) -> None:
    issuer = LocalIssuer.load(live_stack.issuer_dir, stack.ISSUER_URL)
    with stack.client_for(live_stack, retry_for=10) as client:
        token = bootstrap.login(client, issuer, getattr(bootstrap, identity))
        try:
            body = {} if method == "POST" else None
            with pytest.raises(OpenBaoError) as err:
                client.request(method, path, body=body, token=token)
            assert err.value.status == 403, err.value
        finally:
            client.request("POST", "auth/token/revoke-self", token=token)
