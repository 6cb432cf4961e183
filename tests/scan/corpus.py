"""Test corpora for the scanner, generated at test time: no secret is ever committed.

Every planted credential is built from pieces and fresh randomness when the
test runs (the repository's commit hook refuses token and key shapes, rightly).
``plant(dir)`` writes one file per file type, each holding every kind, and
returns where each one is (file, line, kind) and the values (for canaries).
``look_alikes(dir)`` writes the same file types holding random-but-public
values only: hashes, UUIDs, HMACs, public keys, certificates, base64 text.
"""

from __future__ import annotations

import base64
import datetime
import hashlib
import json
import secrets
import string
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.x509.oid import NameOID

ALNUM = string.ascii_letters + string.digits
UPPER_DIGITS = string.ascii_uppercase + string.digits
BECH32_UPPER = "023456789ACDEFGHJKLMNPQRSTUVWXYZ"
BECH32_LOWER = BECH32_UPPER.lower()


def rand(n: int, alphabet: str = ALNUM) -> str:
    """Random text with upper case, lower case and digits whenever the alphabet has them."""
    while True:
        s = "".join(secrets.choice(alphabet) for _ in range(n))
        need = [c for c in (string.ascii_uppercase, string.ascii_lowercase, string.digits)
                if any(a in c for a in alphabet)]  # fmt: skip
        if all(any(ch in c for ch in s) for c in need):
            return s


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def b64(text: str | bytes) -> str:
    return base64.b64encode(text.encode() if isinstance(text, str) else text).decode()


@dataclass(frozen=True)
class Item:
    key: str
    value: str
    kind: str | None
    """The kind the scanner must report (None: a look-alike, must not be reported)."""
    secret: str
    """The part of ``value`` that must never appear in any output (empty for look-alikes)."""

    @property
    def multiline(self) -> bool:
        return "\n" in self.value


@dataclass(frozen=True)
class Planted:
    file: Path
    line: int
    kind: str
    secret: str


# -- generated key material -----------------------------------------------------


def _pem_private_key() -> tuple[str, bytes]:
    key = ec.generate_private_key(ec.SECP256R1())
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()
    der = key.private_bytes(
        serialization.Encoding.DER,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    return pem.strip(), der


def _certificate() -> tuple[str, bytes, str, dict[str, str]]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "look-alike.test")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + datetime.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    pem = cert.public_bytes(serialization.Encoding.PEM).decode().strip()
    der = cert.public_bytes(serialization.Encoding.DER)
    pub = (
        key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
        .strip()
    )
    nums = key.public_key().public_numbers()
    jwk = {
        "kty": "EC",
        "crv": "P-256",
        "x": b64url(nums.x.to_bytes(32, "big")),
        "y": b64url(nums.y.to_bytes(32, "big")),
    }
    return pem, der, pub, jwk


def _ssh_public_key() -> str:
    raw = ed25519.Ed25519PrivateKey.generate().public_key()
    blob = raw.public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    return blob.decode() + " deploy@ci"


def planted_items() -> list[Item]:
    """One item per kind (and per recognizer pattern worth its own case)."""
    pem, der = _pem_private_key()
    s_tok = "s." + rand(24)
    hv_tok = "hv" + "s." + rand(90, ALNUM + "_-")
    b_tok = "b." + rand(120, ALNUM + "_-")
    header = b64url(json.dumps({"alg": "ES256", "typ": "JWT"}).encode())
    claims = b64url(json.dumps({"sub": "agent-" + rand(6), "exp": 4102444800}).encode())
    jwt = f"{header}.{claims}.{b64url(secrets.token_bytes(64))}"
    sa_json = json.dumps(
        {"type": "service" + "_account", "project_id": "p-" + rand(6), "private_key_id": rand(40)}
    )
    gcp = b64(sa_json)
    akid = "AK" + "IA" + rand(16, UPPER_DIGITS)
    aws_secret = rand(40, ALNUM + "/+")
    url_pw = rand(14)
    db_pw = rand(16)
    api = rand(32)
    bearer = rand(40)
    seed = rand(32)
    unlabelled = rand(48)
    age = "AGE-" + "SECRET-KEY-1" + rand(58, BECH32_UPPER)
    wrapped = rand(30)
    return [
        Item("ref_service", s_tok, "openbao_token", s_tok),
        Item("ref_vault", hv_tok, "openbao_token", hv_tok),
        Item("ref_batch", b_tok, "openbao_token", b_tok),
        Item("ref_jwt", jwt, "jwt", jwt),
        # Canaries skip public format headers ("-----BEGIN", ASN.1 prefixes) that
        # previews may show: what must never appear is key material.
        Item("tls_material", pem, "pem_private_key", pem.splitlines()[2]),
        Item("ref_pem_b64", b64(pem), "pem_private_key", b64(pem)[96:]),
        Item("ref_gcp", gcp, "gcp_service_account_key", gcp),
        Item("ref_key_id", akid, "aws_access_key_id", akid),
        Item("ref_aws", aws_secret, "aws_secret_access_key", aws_secret),
        Item(
            "database_url", f"postgres://app:{url_pw}@db.internal:5432/app", "url_password", url_pw
        ),
        Item("db_password", db_pw, "secret_assignment", db_pw),
        Item("stripe_api_key", api, "secret_assignment", api),
        Item("authorization", "Bearer " + bearer, "secret_assignment", bearer),
        Item("signing_seed", seed, "high_entropy_value", seed),
        Item("ref_blob", unlabelled, "high_entropy_token", unlabelled),
        Item("ref_age", age, "age_secret_key", age[16:]),
        Item("ref_der", b64(der), "private_key_der", b64(der)[64:]),
        Item("ref_wrapped", b64("client_secret=" + wrapped), "secret_assignment", wrapped),
    ]


def look_alike_items() -> list[Item]:
    cert_pem, cert_der, pub_pem, jwk = _certificate()
    sha = hashlib.sha256(secrets.token_bytes(16)).hexdigest()
    return [
        Item("checksum", sha, None, ""),
        Item("sha256", sha.upper(), None, ""),
        Item("commit", hashlib.sha1(secrets.token_bytes(8)).hexdigest(), None, ""),
        Item("build_id", str(uuid.uuid4()), None, ""),
        Item("request_id", str(uuid.uuid4()).upper(), None, ""),
        Item("client_token", "hmac-sha256:" + hashlib.sha256(b"t").hexdigest(), None, ""),
        Item("accessor", "hmac-sha256:" + hashlib.sha256(b"a").hexdigest(), None, ""),
        Item("ca_cert", cert_pem, None, ""),
        Item("public_key", pub_pem, None, ""),
        Item("cert_b64", b64(cert_pem), None, ""),
        Item("cert_der", b64(cert_der), None, ""),
        Item("ssh_authorized", _ssh_public_key(), None, ""),
        Item("age_recipient", "age1" + rand(58, BECH32_LOWER), None, ""),
        Item("x", jwk["x"], None, ""),
        Item("y", jwk["y"], None, ""),
        Item(
            "greeting_b64", b64("Hello from the look-alike corpus; nothing to see here."), None, ""
        ),
        Item("motd_b64", b64("thirty bytes of harmless text"), None, ""),
        Item("image", "quay.io/openbao/openbao@sha256:" + sha, None, ""),
        Item("integrity", "sha512-" + b64(secrets.token_bytes(64)), None, ""),
        Item("db_password", "${DB_PASSWORD}", None, ""),
        Item("api_key", "{{ .Values.apiKey }}", None, ""),
        Item("password_file", "/run/secrets/db-password", None, ""),
        Item("service_name", "clawql-secrets-gateway-internal", None, ""),
    ]


# -- file types ------------------------------------------------------------------
# Each renderer returns the file's lines and, per item, the line its finding starts on.

Rendered = tuple[list[str], list[int]]


def _q(value: str) -> str:
    return json.dumps(value)


def render_env(items: list[Item]) -> Rendered:
    lines = ["# generated .env", "APP_ENV=production"]
    at = []
    for it in items:
        at.append(len(lines) + 1)
        lines.append(f"{it.key.upper()}={_q(it.value)}")
    return lines, at


def _yaml_block(lines: list[str], indent: str, key: str, value: str) -> int:
    """``key: value`` or a literal block; returns the line the value starts on."""
    if "\n" in value:
        lines.append(f"{indent}{key}: |")
        start = len(lines) + 1
        lines.extend(f"{indent}  {v}" for v in value.splitlines())
        return start
    lines.append(f"{indent}{key}: {_q(value)}")
    return len(lines)


def render_yaml(items: list[Item]) -> Rendered:
    lines = ["# application config", "server:", "  port: 8080", "settings:"]
    return lines, [_yaml_block(lines, "  ", it.key, it.value) for it in items]


def render_k8s_secret(items: list[Item]) -> Rendered:
    lines = [
        "apiVersion: v1",
        "kind: Secret",
        "metadata:",
        "  name: app-credentials",
        "  namespace: clawql",
        "type: Opaque",
        "data:",
    ]
    at = []
    for it in items:
        at.append(len(lines) + 1)
        lines.append(f"  {it.key.replace('_', '-')}: {b64(it.value)}")
    return lines, at


def render_helm(items: list[Item]) -> Rendered:
    lines = [
        "---",
        "# Source: app/templates/configmap.yaml",
        "apiVersion: v1",
        "kind: ConfigMap",
        "metadata:",
        "  name: release-app",
        "  labels:",
        '    helm.sh/chart: "app-1.2.3"',
        "data:",
    ]
    at: dict[int, int] = {}
    for i, it in enumerate(items):
        if it.multiline:
            at[i] = _yaml_block(lines, "  ", it.key, it.value)
    lines += [
        "---",
        "# Source: app/templates/deployment.yaml",
        "apiVersion: apps/v1",
        "kind: Deployment",
        "metadata:",
        "  name: release-app",
        "spec:",
        "  template:",
        "    spec:",
        "      containers:",
        "        - name: app",
        '          image: "ghcr.io/example/app:1.2.3"',
        "          env:",
    ]
    for i, it in enumerate(items):
        if not it.multiline:
            lines.append(f"            - name: {it.key.upper()}")
            at[i] = len(lines) + 1
            lines.append(f"              value: {_q(it.value)}")
    return lines, [at[i] for i in range(len(items))]


def render_hcl(items: list[Item]) -> Rendered:
    lines = ['storage "raft" {', '  path = "/openbao/data"', "}", 'app "settings" {']
    at = []
    for it in items:
        if it.multiline:
            lines.append(f"  {it.key} = <<EOT")
            at.append(len(lines) + 1)
            lines.extend(it.value.splitlines())
            lines.append("EOT")
        else:
            at.append(len(lines) + 1)
            lines.append(f"  {it.key} = {_q(it.value)}")
    lines.append("}")
    return lines, at


def render_compose(items: list[Item]) -> Rendered:
    lines = ["services:", "  app:", '    image: "ghcr.io/example/app:1.2.3"', "    environment:"]
    at: dict[int, int] = {}
    for i, it in enumerate(items):
        if not it.multiline:
            at[i] = len(lines) + 1
            lines.append(f"      - {it.key.upper()}={it.value}")
    lines += ["  worker:", '    image: "ghcr.io/example/worker:1.2.3"', "    environment:"]
    for i, it in enumerate(items):
        if it.multiline:
            at[i] = _yaml_block(lines, "      ", it.key.upper(), it.value)
    return lines, [at[i] for i in range(len(items))]


def render_json(items: list[Item]) -> Rendered:
    lines = ["{", '  "name": "app",', '  "settings": {']
    at = []
    for n, it in enumerate(items):
        at.append(len(lines) + 1)
        comma = "," if n < len(items) - 1 else ""
        lines.append(f"    {_q(it.key)}: {_q(it.value)}{comma}")
    lines += ["  }", "}"]
    return lines, at


def render_text(items: list[Item]) -> Rendered:
    lines = ["Deployment notes", "================", ""]
    at = []
    for it in items:
        if it.multiline:
            lines.append(f"{it.key}:")
            at.append(len(lines) + 1)
            lines.extend(it.value.splitlines())
        else:
            at.append(len(lines) + 1)
            lines.append(f"{it.key} = {it.value}")
        lines.append("")
    return lines, at


RENDERERS: dict[str, Callable[[list[Item]], Rendered]] = {
    ".env": render_env,
    "config.yaml": render_yaml,
    "secret.yaml": render_k8s_secret,
    "rendered-chart.yaml": render_helm,
    "main.hcl": render_hcl,
    "docker-compose.yml": render_compose,
    "config.json": render_json,
    "notes.txt": render_text,
}
"""File name -> renderer: every file type the issue names."""


def _write(directory: Path, name: str, lines: list[str]) -> Path:
    path = directory / name
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def plant(directory: Path) -> list[Planted]:
    """Every kind in every file type; returns where each one is."""
    directory.mkdir(parents=True, exist_ok=True)
    out: list[Planted] = []
    for name, render in RENDERERS.items():
        items = planted_items()
        lines, at = render(items)
        path = _write(directory, name, lines)
        for it, line in zip(items, at, strict=True):
            if it.kind is None:
                continue
            kind = it.kind
            if name == "secret.yaml" and kind == "high_entropy_token":
                kind = "high_entropy_value"  # in a Secret every value has a name
            out.append(Planted(path, line, kind, it.secret))
    return out


def look_alikes(directory: Path) -> list[Path]:
    """Random-but-public values in every file type."""
    directory.mkdir(parents=True, exist_ok=True)
    return [
        _write(directory, name, render(look_alike_items())[0]) for name, render in RENDERERS.items()
    ]
