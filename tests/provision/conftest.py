"""A valid desired state as YAML text, for unit tests to break one field at a time."""

from __future__ import annotations

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

_KEY = (
    ec.generate_private_key(ec.SECP256R1())
    .public_key()
    .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    .decode()
)


def valid_yaml(**replace: str) -> str:
    pem = "\n".join("      " + line for line in _KEY.strip().splitlines())
    text = f"""\
version: 1
exchange:
  issuer: https://gateway.example/exchange
  audience: openbao-agent-exchange
  public_keys:
    - |
{pem}
tenants:
  - name: acme
  - name: globex
databases:
  - name: pg
    engine: postgresql
    host: 127.0.0.1
    port: 5432
    username: admin
    password_env: PG_ADMIN
roles:
  - name: analyst
    tenants: [acme, globex]
    databases:
      - connection: pg
        schema: "{{tenant}}"
        privileges: [SELECT]
    secrets: [api_key]
approvals:
  approvers: [alice, bob, carol]
  threshold: 2
"""
    for old, new in replace.items():
        if old not in text:
            raise KeyError(old)
        text = text.replace(old, new)
    return text
