"""Identifiers in the local stack's logs and audit trails are not findings; credentials are.

After ``up`` and ``demo`` the gateway log, the node logs and both audit trails
(OpenBao's ``audit.log`` and the Merkle store's segments) hold session ids
(``sid=``, and inside ``secret/data/clawql-anomalies/<sid>/<rule>``), OpenBao
lease ids (``database/creds/<role>/<24 alphanumerics>``), request ids and
accessors. Every value here is generated when the test runs and put into the
line shapes those files really have. Each identifier is checked three ways:
alone (or in a shape that is not an identifier's) it is reported, so the
check has teeth; in its context it is not; and a real credential in the very
same line shape still is.
"""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from clawql_secrets.gateway.jwt_check import SID_RE
from clawql_secrets.scan.detect import LEASE_ID, Detector, identifier_path, public_name
from tests.scan.conftest import RunScan, leaks
from tests.scan.corpus import ALNUM, _pem_private_key, b64url, rand

DETECTOR = Detector()
URLSAFE = ALNUM + "-_"
DRAWS = 25
"""Fresh identifiers per context: url-safe ids may start or end with ``-``/``_``."""


def kinds(text: str) -> list[str]:
    return [h.kind for h in DETECTOR.scan_text(text)]


# -- generated identifiers and credentials ------------------------------------------


def sid() -> str:
    """A session id at the long end of what the gateway accepts (entropy rule territory)."""
    value = rand(43, URLSAFE)
    assert SID_RE.fullmatch(value)
    return value


def lease_id(mount: str = "database", role: str = "acme-analyst-pg_main") -> str:
    return f"{mount}/creds/{role}/{rand(24)}"


def lone_sid() -> str:
    """A session id the entropy rule judges alone: a '-' in the middle keeps it from
    holding a 40-character run the AWS secret key rule would claim first."""
    value = rand(21, URLSAFE) + "-" + rand(21, URLSAFE)
    assert SID_RE.fullmatch(value)
    return value


def accessor() -> str:
    # OpenBao's are 24 characters; a longer one is what the entropy rule would judge.
    return rand(36)


def service_token() -> str:
    return "hv" + "s." + rand(90, URLSAFE)


def short_token() -> str:
    return "s." + rand(24)


def jwt() -> str:
    header = b64url(json.dumps({"alg": "ES256", "typ": "JWT"}).encode())
    claims = b64url(json.dumps({"sid": sid(), "exp": 4102444800}).encode())
    return f"{header}.{claims}.{b64url(secrets.token_bytes(64))}"


def hmac() -> str:
    return "hmac-sha256:" + hashlib.sha256(secrets.token_bytes(8)).hexdigest()


# -- the files' line shapes ---------------------------------------------------------


def node_revoked(lease: str) -> str:
    """``<data-dir>/logs/n1.log``: OpenBao's expiration manager."""
    return f"2026-11-28T23:56:30.729Z [INFO]  expiration: revoked lease: lease_id={lease}"


def gateway_ended(session: str, tail: str = "") -> str:
    """``<data-dir>/logs/gateway.log``: a session's end."""
    return (
        "2026-11-28 23:56:32,651 INFO clawql_secrets.gateway session ended "
        f"sid={session} reason=ended leases_revoked=1 ms=3.2{tail}"
    )


def gateway_anomaly(session: str) -> str:
    return (
        f"2026-11-28 23:56:31,745 WARNING clawql_secrets.gateway anomaly sid={session} "
        "tenant=globex agent=bot-g rule=denied_burst tool=sql.query: more than 5 denied "
        "calls in 30s; revoking the session"
    )


def gateway_http(path: str, method: str = "POST") -> str:
    """httpx's request line in the gateway log: the OpenBao API path in clear."""
    return (
        f"2026-11-28 23:56:32,043 INFO httpx HTTP Request: {method} "
        f'https://127.0.0.1:18200/v1/{path} "HTTP/1.1 200 OK"'
    )


def anomaly_path(session: str) -> str:
    return f"secret/data/clawql-anomalies/{session}/denied_burst"


def audit_record(
    *,
    session: str,
    lease: str,
    acc: str,
    request_data: dict[str, object] | None = None,
    response_data: dict[str, object] | None = None,
    client_token: str | None = None,
) -> dict[str, object]:
    """OpenBao's audit device entry (``nodes/<n>/audit/audit.log``), as the demo leaves it."""
    return {
        "time": "2026-11-28T23:56:31.993889843Z",
        "type": "response",
        "auth": {
            "client_token": client_token or hmac(),
            "accessor": acc,
            "display_name": "workload-clawql-gateway",
            "entity_id": str(uuid.uuid4()),
            "token_type": "service",
        },
        "request": {
            "id": str(uuid.uuid4()),
            "client_id": str(uuid.uuid4()),
            "operation": "create",
            "mount_accessor": "kv_" + secrets.token_hex(4),
            "client_token": hmac(),
            "client_token_accessor": acc,
            "path": anomaly_path(session),
            "data": request_data or {"data": {"sid": hmac(), "rule": hmac()}},
        },
        "response": {
            "request_id": str(uuid.uuid4()),
            "secret": {"lease_id": lease},
            "data": response_data or {"created_time": "2026-11-28T23:56:31.994153578Z"},
        },
    }


def audit_line(record: dict[str, object]) -> str:
    return json.dumps(record, separators=(",", ":"))


def store_line(record: dict[str, object]) -> str:
    """The Merkle audit store's segment line (``audit/store/segments/<n>/*.jsonl``)."""
    digest = hashlib.sha256(secrets.token_bytes(8)).hexdigest()
    return json.dumps(
        {"entry": record, "id": digest, "kind": "entry", "v": 1}, separators=(",", ":")
    )


def record(
    session: str | None = None, lease: str | None = None, acc: str | None = None, **rest: Any
) -> dict[str, object]:
    return audit_record(
        session=session or sid(), lease=lease or lease_id(), acc=acc or accessor(), **rest
    )


# -- controls: without their context these values are reported ---------------------


@pytest.mark.parametrize(
    ("name", "text", "kind"),
    [
        ("sid_alone", lambda: "seen " + lone_sid(), "high_entropy_token"),
        ("accessor_alone", lambda: "seen " + accessor(), "high_entropy_token"),
        ("lease_tail_too_long", lambda: "seen database/creds/acme-analyst-pg_main/" + rand(40),
         "high_entropy_token"),
        ("not_a_lease_verb", lambda: "seen database/config/acme/" + rand(24) + rand(16),
         "high_entropy_token"),
        ("upper_case_mount", lambda: "seen Secret/data/app/" + lone_sid(), "high_entropy_token"),
        ("bare_aws_shape", lambda: "seen " + rand(40, ALNUM + "/+"), "aws_secret_access_key"),
    ],
)  # fmt: skip
def test_controls_are_reported(name: str, text: Callable[[], str], kind: str) -> None:
    assert kind in kinds(text()), name


# -- identifiers in their context: not reported ------------------------------------


@pytest.mark.parametrize(
    ("name", "text"),
    [
        ("node_log_revoked_lease", lambda: node_revoked(lease_id())),
        ("node_log_revoked_maria_lease",
         lambda: node_revoked(lease_id(role="globex-analyst-maria_main"))),
        ("gateway_session_ended", lambda: gateway_ended(sid())),
        ("gateway_anomaly", lambda: gateway_anomaly(sid())),
        ("gateway_http_anomaly_record", lambda: gateway_http(anomaly_path(sid()))),
        ("gateway_http_lease_lookup",
         lambda: gateway_http("sys/leases/lookup/" + lease_id(), "PUT")),
        ("gateway_http_kv_metadata",
         lambda: gateway_http("secret/metadata/clawql-anomalies/" + sid(), "GET")),
        ("lease_with_namespace", lambda: node_revoked(lease_id() + "." + rand(5))),
        ("json_session_info", lambda: json.dumps(
            {"sid": sid(), "state": "ended", "leases_revoked": 2, "jti": sid()})),
        ("json_lease", lambda: json.dumps({"lease_id": lease_id(), "renewable": True})),
        ("yaml_accessors", lambda: f"token_accessor: {accessor()}\nmount_accessor: {accessor()}"),
        ("openbao_audit_entry", lambda: audit_line(record())),
        ("audit_store_segment", lambda: store_line(record())),
        ("lease_of_aws_secret_shape", lambda: "revoked db/creds/reader/" + rand(24) + " ok"),
    ],
)  # fmt: skip
def test_identifiers_in_context_are_not_reported(name: str, text: Callable[[], str]) -> None:
    for _ in range(DRAWS):
        line = text()
        assert kinds(line) == [], (name, DETECTOR.scan_text(line))


# -- credentials in the same line shapes: still reported ---------------------------


def _pem_record() -> str:
    pem, _ = _pem_private_key()
    return audit_line(record(response_data={"private_key": pem, "serial_number": "1a:2b"}))


@pytest.mark.parametrize(
    ("name", "text", "kind"),
    [
        ("service_token_as_lease_id", lambda: node_revoked(service_token()), "openbao_token"),
        ("short_token_as_sid", lambda: gateway_ended(short_token()), "openbao_token"),
        ("jwt_as_sid", lambda: gateway_anomaly(jwt()), "jwt"),
        ("password_after_sid", lambda: gateway_ended(sid(), " password=" + rand(16)),
         "secret_assignment"),
        ("unlabelled_token_after_sid", lambda: gateway_ended(sid(), " " + rand(48)),
         "high_entropy_token"),
        ("token_in_request_path",
         lambda: gateway_http("auth/token/lookup/" + service_token(), "GET"), "openbao_token"),
        ("token_as_kv_segment", lambda: gateway_http(anomaly_path(short_token())),
         "openbao_token"),
        ("audit_client_token_in_clear",
         lambda: audit_line(record(client_token=service_token())), "openbao_token"),
        ("audit_token_as_accessor", lambda: audit_line(record(acc=service_token())),
         "openbao_token"),
        ("audit_token_as_lease", lambda: audit_line(record(lease=service_token())),
         "openbao_token"),
        ("audit_password_in_response",
         lambda: audit_line(record(response_data={"username": "v-acme", "password": rand(20)})),
         "secret_assignment"),
        ("audit_private_key_in_response", _pem_record, "pem_private_key"),
        ("store_password_in_request",
         lambda: store_line(record(request_data={"data": {"password": rand(20)}})),
         "secret_assignment"),
        ("store_token_as_sid", lambda: store_line(record(
            request_data={"data": {"sid": service_token()}})), "openbao_token"),
        ("base64_pem_as_lease_id", lambda: node_revoked(
            base64.b64encode(_pem_private_key()[0].encode()).decode()), "pem_private_key"),
    ],
)  # fmt: skip
def test_credentials_in_the_same_lines_are_reported(
    name: str, text: Callable[[], str], kind: str
) -> None:
    for _ in range(3):
        assert kind in kinds(text()), name


# -- the shapes themselves ----------------------------------------------------------


def test_identifier_shapes_are_narrow() -> None:
    ident = rand(24)
    assert LEASE_ID.fullmatch(f"database/creds/acme-analyst-pg_main/{ident}")
    assert identifier_path(f"18200/v1/sys/leases/revoke/aws/sts/deploy/{ident}")
    assert identifier_path(f"v1/pki_int/issue/acme-integrator/{ident}")
    assert identifier_path(anomaly_path(sid()))
    assert identifier_path(f"kv/team-a/data/{sid()}")
    for not_one in (
        f"database/creds/acme-analyst-pg_main/{ident}{rand(4)}",  # 28, not 24
        f"database/creds/Acme/{ident}",  # role names are lower case here
        f"creds/acme/{ident}",  # no mount before the verb
        f"api/webhooks/123456/{rand(40)}",  # a chat webhook's token: no KV verb
        f"443/data/{rand(40)}",  # a port, then no mount
        f"secret/data/{rand(65)}",  # longer than any segment name here
        f"{rand(12)}/{rand(30)}/{rand(20)}",  # base64 with slashes
        "x" * 600,
    ):
        assert not identifier_path(not_one), not_one


def test_public_names_for_identifiers() -> None:
    for name in ("sid", "jti", "lease_id", "request_id", "session_id", "accessor",
                 "client_token_accessor", "mount_accessor", "token_accessor"):  # fmt: skip
        assert public_name(name), name
    for name in ("session_token", "sid_secret", "accessor_token", "lease_password", "sids"):
        assert not public_name(name), name


# -- files: a data directory's logs and audit trails -------------------------------


def _write(path: Path, lines: list[str]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")
    return path


def test_stack_files_with_identifiers_scan_clean_and_canaries_are_found(
    tmp_path: Path, run_scan: RunScan
) -> None:
    sessions = [sid() for _ in range(4)]
    leases = [lease_id(), lease_id(role="globex-analyst-pg_main"),
              lease_id(role="globex-analyst-maria_main")]  # fmt: skip
    gateway = [gateway_anomaly(sessions[0]), gateway_http(anomaly_path(sessions[0]))]
    gateway += [gateway_ended(s) for s in sessions]
    node = [node_revoked(lease) for lease in leases]
    records = [record(session=s, lease=lease) for s, lease in zip(sessions, leases, strict=False)]
    files = {
        "gateway": _write(tmp_path / "logs" / "gateway.log", gateway),
        "node": _write(tmp_path / "logs" / "n1.log", node),
        "audit": _write(
            tmp_path / "nodes" / "n1" / "audit" / "audit.log", [audit_line(r) for r in records]
        ),
        "store": _write(
            tmp_path / "audit" / "store" / "segments" / "n1" / "0-3.jsonl",
            [store_line(r) for r in records],
        ),
    }
    code, out = run_scan(str(tmp_path), "--json")
    doc = json.loads(out)
    assert (code, doc["findings"], doc["scanned"]) == (0, [], 4), out

    # One credential per file, in that file's own line shape, after the identifiers.
    token, password = service_token(), rand(20)
    pem, _ = _pem_private_key()
    canaries = {
        "gateway": (gateway_ended(sessions[0], " password=" + password), "secret_assignment",
                    password),
        "node": (node_revoked(token), "openbao_token", token),
        "audit": (audit_line(record(response_data={"private_key": pem})), "pem_private_key",
                  pem.splitlines()[2]),
        "store": (store_line(record(client_token=token)), "openbao_token", token),
    }  # fmt: skip
    for name, (line, _, _) in canaries.items():
        with files[name].open("a") as fh:
            fh.write(line + "\n")
    code, out = run_scan(str(tmp_path), "--json")
    doc = json.loads(out)
    assert code == 1
    found = {(f["location"]["name"], f["location"]["line"], f["kind"]) for f in doc["findings"]}
    # Exactly the canary lines (the last of each file), each with its credential's kind; a
    # JSON key such as "private_key" may add a second kind on the same line.
    last = {str(p): len(p.read_text().splitlines()) for p in files.values()}
    assert {(name, line) for name, line, _ in found} == set(last.items())
    for name, (_, kind, _) in canaries.items():
        assert (str(files[name]), last[str(files[name])], kind) in found
    for _, _, value in canaries.values():
        assert not leaks(value, out)
