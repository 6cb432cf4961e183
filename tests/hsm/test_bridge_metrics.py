"""The bridge's Prometheus metrics: labels, counts after real seal calls, their own listener."""

from __future__ import annotations

import base64
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from clawql_secrets.errors import ConfigError, HSMError
from clawql_secrets.hsm import bridge
from clawql_secrets.hsm.softhsm import TokenSetup
from clawql_secrets.hsm.token import DecryptionFailed, HSMToken, KeyVersionMissing, PinError
from tests.hsm.conftest import KEY_NAME, PKI, ClientFactory, open_handle, put_json

PREFIX = "spiffe://clawql.local/openbao/"
ENC = f"/v1/transit/encrypt/{KEY_NAME}"
DEC = f"/v1/transit/decrypt/{KEY_NAME}"
SECRET = b"the root key, in clear"
B64 = base64.b64encode(SECRET).decode()


def value(metrics: bridge.BridgeMetrics, name: str, **labels: str) -> float:
    got = metrics.registry.get_sample_value(name, labels)
    return 0.0 if got is None else got


def total(metrics: bridge.BridgeMetrics, name: str) -> float:
    return sum(s.value for f in metrics.registry.collect() for s in f.samples if s.name == name)


def collect(metrics: bridge.BridgeMetrics) -> dict[str, float]:
    """One scrape's unlabelled samples and counter totals by name (probes the token once)."""
    out: dict[str, float] = {}
    for family in metrics.registry.collect():
        for s in family.samples:
            out[s.name] = out.get(s.name, 0.0) + s.value
    return out


def scrape(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    resp = httpx.get(url, timeout=5, trust_env=False)
    assert resp.status_code == 200
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for f in text_string_to_metric_families(resp.text)
        for s in f.samples
    }


# -- labels (pure) ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("identity", "label"),
    [
        pytest.param(PREFIX + "n1", "n1", id="node_under_prefix"),
        pytest.param(PREFIX + "openbao-2.eu_west", "openbao-2.eu_west", id="dots_dashes"),
        pytest.param(None, "other", id="no_certificate"),
        pytest.param("spiffe://clawql.local/openbao-evil/n1", "other", id="sibling_prefix"),
        pytest.param("spiffe://elsewhere/openbao/n1", "other", id="another_trust_domain"),
        pytest.param(PREFIX, "other", id="prefix_alone"),
        pytest.param(PREFIX + "n1/extra", "other", id="nested_path"),
        pytest.param(PREFIX + "n1?x=1", "other", id="query"),
        pytest.param(PREFIX + "-n1", "other", id="leading_dash"),
        pytest.param(PREFIX + "n" * 64, "other", id="too_long"),
        pytest.param(PREFIX + "n\u00e9", "other", id="non_ascii"),
    ],
)
def test_caller_label_keeps_node_ids_under_the_prefix_only(
    identity: str | None, label: str
) -> None:
    assert bridge.caller_label(identity, PREFIX) == label


def test_callers_beyond_the_cap_count_as_other() -> None:
    metrics = bridge.BridgeMetrics(PREFIX)
    first = [metrics.caller(f"{PREFIX}n{i}") for i in range(bridge.MAX_CALLERS)]
    assert first == [f"n{i}" for i in range(bridge.MAX_CALLERS)]
    assert metrics.caller(f"{PREFIX}late") == "other"
    assert metrics.caller(f"{PREFIX}n0") == "n0"  # those already seen keep their label


@pytest.mark.parametrize(
    ("exc", "kind"),
    [
        pytest.param(PinError("the token refused the PIN 1234"), "pin", id="pin"),
        pytest.param(KeyVersionMissing("no key"), "key_missing", id="key_missing"),
        pytest.param(DecryptionFailed("altered"), "token", id="other_hsm_error"),
        pytest.param(HSMError("the token is not present"), "token", id="token"),
        pytest.param(RuntimeError("bug"), "internal", id="bug"),
    ],
)
def test_hsm_error_kind_is_a_fixed_word(exc: BaseException, kind: str) -> None:
    assert bridge.hsm_error_kind(exc) == kind


# -- counts after real calls through the bridge ---------------------------------------


def test_seal_operations_are_counted_by_operation_outcome_and_caller(
    make_client: ClientFactory, pki: PKI, bridge_metrics: bridge.BridgeMetrics
) -> None:
    client = make_client(pki.node)
    ciphertexts = []
    for _ in range(2):
        resp = put_json(client, ENC, {"plaintext": B64})
        assert resp.status_code == 200
        ciphertexts.append(resp.json()["data"]["ciphertext"])
    assert put_json(client, DEC, {"ciphertext": ciphertexts[0]}).status_code == 200
    for ciphertext in ("clawql:v1:" + "A" * 40, "clawql:v9:" + "A" * 40, "clawql:v1"):
        assert put_json(client, DEC, {"ciphertext": ciphertext}).status_code == 400
    assert put_json(client, ENC, {"plaintext": "***"}).status_code == 400

    name = "clawql_bridge_seal_operations_total"
    counts = {
        (s.labels["operation"], s.labels["outcome"], s.labels["caller"]): s.value
        for f in bridge_metrics.registry.collect()
        for s in f.samples
        if s.name == name
    }
    assert counts == {
        ("encrypt", "ok", "n1"): 2,
        ("decrypt", "ok", "n1"): 1,
        ("decrypt", "not_authentic", "n1"): 1,
        ("decrypt", "unknown_version", "n1"): 1,
        ("decrypt", "invalid_request", "n1"): 1,
        ("encrypt", "invalid_request", "n1"): 1,
    }
    assert {outcome for _, outcome, _ in counts} <= set(bridge.SEAL_OUTCOMES)
    # Every call that reached the token was timed; malformed input never reaches it.
    seconds = "clawql_bridge_pkcs11_seconds_count"
    assert value(bridge_metrics, seconds, operation="encrypt") == 2
    assert value(bridge_metrics, seconds, operation="decrypt") == 3
    assert total(bridge_metrics, "clawql_bridge_refused_requests_total") == 0
    assert total(bridge_metrics, "clawql_bridge_hsm_errors_total") == 0


REFUSED = [
    # (id, cert attribute or None, method, path, body, reason, caller)
    ("no_client_cert", None, "PUT", ENC, {"plaintext": B64}, "no_client_cert", "other"),
    (
        "san_outside_prefix",
        "wrong_identity",
        "PUT",
        ENC,
        {"plaintext": B64},
        "identity_not_allowed",
        "other",
    ),
    ("no_uri_san", "no_uri", "PUT", DEC, {"ciphertext": "x"}, "identity_not_allowed", "other"),
    ("oversize_body", "node", "PUT", ENC, {"plaintext": "A" * 70_000}, "body_too_large", "n1"),
    ("unknown_mount", "node", "PUT", f"/v1/other/encrypt/{KEY_NAME}", {}, "not_found", "n1"),
    ("unknown_key", "node", "PUT", "/v1/transit/encrypt/nokey", {}, "not_found", "n1"),
    ("metrics_on_the_api_listener", "node", "GET", "/metrics", None, "not_found", "other"),
    ("renew_self", "node", "PUT", "/v1/auth/token/renew-self", {}, "token_renewal", "n1"),
    ("wrong_method", "node", "GET", ENC, None, "method_not_allowed", "n1"),
    ("body_not_json", "node", "PUT", ENC, b"plaintext=abc", "bad_request", "n1"),
]


@pytest.mark.parametrize(
    ("cert", "method", "path", "body", "reason", "caller"),
    [pytest.param(*case[1:], id=case[0]) for case in REFUSED],
)
def test_refusals_are_counted_by_reason_and_never_as_seal_operations(
    make_client: ClientFactory,
    pki: PKI,
    bridge_metrics: bridge.BridgeMetrics,
    cert: str | None,
    method: str,
    path: str,
    body: Any,
    reason: str,
    caller: str,
) -> None:
    client = make_client(getattr(pki, cert) if cert else None)
    content = body if isinstance(body, bytes) else None
    resp = client.request(method, path, content=content, json=None if content else body)
    assert resp.status_code >= 400
    name = "clawql_bridge_refused_requests_total"
    assert reason in bridge.REFUSAL_REASONS
    assert value(bridge_metrics, name, reason=reason, caller=caller) == 1
    assert total(bridge_metrics, name) == 1
    assert total(bridge_metrics, "clawql_bridge_seal_operations_total") == 0
    assert value(bridge_metrics, "clawql_bridge_pkcs11_seconds_count", operation="encrypt") == 0


def test_refusal_series_and_error_kinds_start_at_zero() -> None:
    """So that ``increase()`` in an alert rule sees the first one."""
    metrics = bridge.BridgeMetrics(PREFIX)
    for reason in bridge.REFUSAL_REASONS:
        got = metrics.registry.get_sample_value(
            "clawql_bridge_refused_requests_total", {"reason": reason, "caller": "other"}
        )
        assert got == 0
    for kind in bridge.HSM_ERROR_KINDS:
        got = metrics.registry.get_sample_value("clawql_bridge_hsm_errors_total", {"kind": kind})
        assert got == 0


# -- the token at scrape time -----------------------------------------------------------


def test_key_version_follows_rotation_without_traffic(
    token: HSMToken, hsm_setup: TokenSetup, bridge_metrics: bridge.BridgeMetrics
) -> None:
    assert value(bridge_metrics, "clawql_bridge_key_version") == 1
    assert value(bridge_metrics, "clawql_bridge_token_available") == 1
    with open_handle(hsm_setup) as other:
        other.generate_version()
    assert value(bridge_metrics, "clawql_bridge_key_version") == 2
    assert value(bridge_metrics, "clawql_bridge_pkcs11_seconds_count", operation="current_version")


@pytest.mark.parametrize(
    ("key_name", "close", "kind"),
    [
        pytest.param(KEY_NAME, True, "token", id="handle_closed"),
        pytest.param("never-generated", False, "key_missing", id="no_key_version"),
    ],
)
def test_an_unusable_token_shows_as_unavailable_with_one_log_line(
    token: HSMToken,
    hsm_setup: TokenSetup,
    caplog: pytest.LogCaptureFixture,
    key_name: str,
    close: bool,
    kind: str,
) -> None:
    handle = open_handle(hsm_setup, key_name)
    try:
        if close:
            handle.close()
        metrics = bridge.BridgeMetrics(PREFIX, probe=handle.current_version)
        with caplog.at_level(logging.INFO, logger="clawql_secrets.hsm.bridge"):
            scrapes = [collect(metrics) for _ in range(3)]
            by_kind = value(metrics, "clawql_bridge_hsm_errors_total", kind=kind)  # a 4th scrape
    finally:
        handle.close()
    assert [s["clawql_bridge_token_available"] for s in scrapes] == [0, 0, 0]
    assert all("clawql_bridge_key_version" not in s for s in scrapes)
    # Each scrape's own failure is in its counters (the probe is collected first).
    assert [s["clawql_bridge_hsm_errors_total"] for s in scrapes] == [1, 2, 3]
    assert by_kind == 4
    lines = [r.getMessage() for r in caplog.records if r.name == "clawql_secrets.hsm.bridge"]
    assert len(lines) == 1 and "token is unavailable" in lines[0]
    assert hsm_setup.pin_file.read_text().strip() not in lines[0]


# -- the metrics listener ----------------------------------------------------------------


def test_metrics_listener_serves_plaintext_while_the_api_listener_404s_metrics(
    make_client: ClientFactory, pki: PKI, bridge_metrics: bridge.BridgeMetrics
) -> None:
    client = make_client(pki.node)
    ciphertext = put_json(client, ENC, {"plaintext": B64}).json()["data"]["ciphertext"]
    assert put_json(client, DEC, {"ciphertext": ciphertext}).status_code == 200
    with bridge.metrics_listener(bridge_metrics, "127.0.0.1", 0) as url:
        assert url.startswith("http://127.0.0.1:") and url.endswith("/metrics")
        samples = scrape(url)
        text = httpx.get(url, timeout=5, trust_env=False).text
    # The seal API listener still serves only the seal API, with or without a certificate.
    for cert in (pki.node, None):
        resp = make_client(cert).get("/metrics")
        assert resp.status_code == 404 and "clawql_bridge" not in resp.text
    assert samples[("clawql_bridge_token_available", ())] == 1
    assert samples[("clawql_bridge_key_version", ())] == 1
    labels = (("caller", "n1"), ("operation", "decrypt"), ("outcome", "ok"))
    assert samples[("clawql_bridge_seal_operations_total", labels)] == 1
    for secret in (B64, ciphertext, ciphertext.split(":")[2], SECRET.decode()):
        assert secret not in text


def test_metrics_port_in_use_is_a_config_error_naming_it(
    bridge_metrics: bridge.BridgeMetrics,
) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        with (
            pytest.raises(ConfigError, match=f"metrics port {port} "),
            bridge.metrics_listener(bridge_metrics, "127.0.0.1", port),
        ):
            pass


def test_metrics_are_off_unless_configured_and_never_on_the_api_port(
    settings: bridge.BridgeSettings,
) -> None:
    assert settings.metrics_port is None and settings.metrics_host == "127.0.0.1"
    doc = settings.model_dump(mode="json") | {"port": 18300, "metrics_port": 18300}
    with pytest.raises(ValueError, match="metrics_port must differ from port"):
        bridge.BridgeSettings.model_validate(doc)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def test_hsm_serve_exposes_metrics_and_stops_them_on_sigterm(
    settings: bridge.BridgeSettings, token: HSMToken, tmp_path: Path
) -> None:
    """`hsm serve` with metrics_port: the listener comes up with the bridge and goes with it."""
    api, port = _free_port(), _free_port()
    config = tmp_path / "serve.json"
    served = settings.model_copy(update={"port": api, "metrics_port": port})
    config.write_text(served.model_dump_json())
    proc = subprocess.Popen(
        [sys.executable, "-m", "clawql_secrets", "hsm", "serve", "--config", str(config)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={k: v for k, v in os.environ.items() if k != "SOFTHSM2_CONF"},
    )
    url = f"http://127.0.0.1:{port}/metrics"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                samples = scrape(url)
                break
            except httpx.TransportError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        assert samples[("clawql_bridge_key_version", ())] == 1
    finally:
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=30)
    assert proc.returncode == 0, stderr
    assert f"HSM bridge metrics on {url}" in stderr
    with pytest.raises(httpx.TransportError):
        httpx.get(url, timeout=2, trust_env=False)
