"""HSM bridge throughput versus raw PKCS#11 AES-GCM, measured side by side.

Run: ``.venv/bin/python -m benchmarks.bench_hsm`` (prints a markdown section).
Everything is local: a fresh SoftHSM2 token in a temp dir, the bridge on a
loopback port with mutual TLS, one keep-alive httpx client. The "raw" rows
call the same token through :class:`~clawql_secrets.hsm.token.HSMToken`
(python-pkcs11 underneath, same lock, same AAD), so the ratio is the cost of
HTTPS + mTLS + JSON + the thread hop of the bridge.
"""

from __future__ import annotations

import base64
import json
import socket
import ssl
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import httpx

from clawql_secrets.hsm import bridge, envelope
from clawql_secrets.hsm.softhsm import ensure_token
from clawql_secrets.hsm.token import HSMToken
from clawql_secrets.tlsca import LocalCA

KEY = "clawql-unseal"
PLAINTEXT = bytes(range(32)) * 2  # 64 B, the size of OpenBao's root key blob order
REPEATS = 5
MAX_OPS = 2000
MAX_SECONDS = 2.0


def _rate(op: Callable[[], object]) -> float:
    """Operations per second of ``op``, bounded in count and time."""
    op()  # warm-up
    count, start = 0, time.perf_counter()
    deadline = start + MAX_SECONDS
    while count < MAX_OPS and time.perf_counter() < deadline:
        op()
        count += 1
    return count / (time.perf_counter() - start)


def _median_rate(op: Callable[[], object]) -> float:
    return statistics.median(_rate(op) for _ in range(REPEATS))


def run() -> str:
    with tempfile.TemporaryDirectory(prefix="bench-hsm-") as tmp:
        root = Path(tmp)
        setup = ensure_token(root / "hsm")
        server_ca = LocalCA.load_or_create(root / "server-ca", "bench bridge CA")
        client_ca = LocalCA.load_or_create(root / "client-ca", "bench seal-client CA")
        server = server_ca.issue(root / "certs", "bridge", ips=("127.0.0.1",), server=True)
        node = client_ca.issue(
            root / "certs", "n1", uris=("spiffe://clawql.local/openbao/n1",), client=True
        )
        settings = bridge.BridgeSettings(
            lib_path=setup.lib_path,
            softhsm_conf=setup.conf_path,
            token_label=setup.token_label,
            pin_file=setup.pin_file,
            key_name=KEY,
            port=0,
            tls_cert=server.cert_path,
            tls_key=server.key_path,
            client_ca=client_ca.cert_path,
        )
        with HSMToken.from_pin_file(
            lib_path=setup.lib_path,
            token_label=setup.token_label,
            pin_file=setup.pin_file,
            key_name=KEY,
            softhsm_conf=setup.conf_path,
        ) as token:
            token.generate_version()

            def aad(version: int) -> bytes:
                return envelope.aad_for("transit", KEY, version)

            version, blob = token.encrypt(PLAINTEXT, aad)
            raw_enc = _median_rate(lambda: token.encrypt(PLAINTEXT, aad))
            raw_dec = _median_rate(lambda: token.decrypt(version, blob, aad(version)))

            ctx = ssl.create_default_context(cafile=str(server_ca.cert_path))
            ctx.load_cert_chain(node.cert_path, node.key_path)
            # OpenBao's Go client sets TCP_NODELAY; httpx does not. Set it so that
            # the figure measures the bridge, not Nagle on the client side.
            transport = httpx.HTTPTransport(
                verify=ctx, socket_options=[(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)]
            )
            with (
                bridge.running_in_thread(settings, token) as url,
                httpx.Client(base_url=url, transport=transport) as client,
            ):
                enc_body = json.dumps({"plaintext": base64.b64encode(PLAINTEXT).decode()})
                ciphertext = client.put(f"/v1/transit/encrypt/{KEY}", content=enc_body).json()[
                    "data"
                ]["ciphertext"]
                dec_body = json.dumps({"ciphertext": ciphertext})

                def bridge_enc() -> None:
                    client.put(f"/v1/transit/encrypt/{KEY}", content=enc_body).raise_for_status()

                def bridge_dec() -> None:
                    client.put(f"/v1/transit/decrypt/{KEY}", content=dec_body).raise_for_status()

                br_enc = _median_rate(bridge_enc)
                br_dec = _median_rate(bridge_dec)

    rows = [
        ("encrypt", br_enc, raw_enc),
        ("decrypt", br_dec, raw_dec),
    ]
    lines = [
        "## HSM bridge (transit seal over PKCS#11)",
        "",
        f"SoftHSM2 AES-256-GCM, {len(PLAINTEXT)}-byte plaintext, one client, loopback; "
        f"median of {REPEATS} runs of at most {MAX_OPS} ops or {MAX_SECONDS:.0f} s each.",
        "",
        "| operation | bridge HTTPS+mTLS ops/s | raw PKCS#11 ops/s | bridge / raw |",
        "|---|---:|---:|---:|",
    ]
    for name, via_bridge, raw in rows:
        lines.append(f"| {name} | {via_bridge:,.0f} | {raw:,.0f} | {via_bridge / raw:.1%} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    print(run())
