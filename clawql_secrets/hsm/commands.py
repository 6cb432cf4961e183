"""``clawql-secrets hsm ...``: serve the bridge, rotate, status, break-glass.

Handlers take the parsed namespace and return an exit code; failures are
raised as ``ClawQLError`` subclasses and reported once by ``cli.main``.
Nothing here prints a PIN or key; ``share-decrypt`` prints a share, which is
its purpose (to a terminal or a 0600 file of the holder's choosing).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Any

from clawql_secrets import holders
from clawql_secrets.errors import ConfigError, InputError
from clawql_secrets.hsm import bridge, ceremony, softhsm
from clawql_secrets.tlsca import write_private


def register(subparsers: Any) -> None:
    """Add the ``hsm`` command and its sub-commands to the CLI."""
    hsm = subparsers.add_parser(
        "hsm", help="the HSM bridge (OpenBao transit seal over PKCS#11) and break-glass"
    )
    sub = hsm.add_subparsers(dest="hsm_command", metavar="HSM_COMMAND")
    sub.required = True

    def with_config(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
        p.add_argument("--config", type=Path, required=True, help="bridge configuration JSON")
        return p

    p = with_config(sub.add_parser("serve", help="serve the transit-seal API over mTLS"))
    p.set_defaults(func=cmd_serve)

    p = with_config(sub.add_parser("rotate", help="add a new key version in the token"))
    p.set_defaults(func=cmd_rotate)

    p = with_config(sub.add_parser("status", help="token, key versions and their attributes"))
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_status)

    p = sub.add_parser("init-token", help="create a private SoftHSM2 token (idempotent)")
    p.add_argument("--hsm-dir", type=Path, required=True)
    p.add_argument("--label", default="clawql")
    p.set_defaults(func=cmd_init_token)

    p = with_config(
        sub.add_parser("ceremony", help="escrow a new key version with M-of-N key holders")
    )
    p.add_argument("--holder", action="append", default=[], metavar="AGE_PUBKEY")
    p.add_argument("--holders-file", type=Path, help="one age public key per line")
    p.add_argument("--threshold", type=int, default=3)
    p.add_argument("--out", type=Path, required=True, help="directory for shares + manifest")
    p.set_defaults(func=cmd_ceremony)

    p = sub.add_parser("share-decrypt", help="a key holder opens their share")
    p.add_argument("--identity", type=Path, required=True, help="age identity file")
    p.add_argument("share_file", type=Path)
    p.add_argument("--out", type=Path, help="write here (mode 0600) instead of stdout")
    p.set_defaults(func=cmd_share_decrypt)

    p = with_config(sub.add_parser("restore", help="restore the key from M decrypted shares"))
    p.add_argument("--share", action="append", type=Path, required=True, metavar="FILE")
    p.add_argument("--manifest", type=Path, help="the ceremony manifest to pin (recommended)")
    p.set_defaults(func=cmd_restore)


def _log_to_stderr() -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger("clawql_secrets")
    root.addHandler(handler)
    root.setLevel(logging.INFO)


def cmd_serve(args: argparse.Namespace) -> int:
    settings = bridge.load_settings(args.config)
    _log_to_stderr()
    bridge.serve(settings)
    return 0


def cmd_rotate(args: argparse.Namespace) -> int:
    settings = bridge.load_settings(args.config)
    with bridge.open_token(settings) as token:
        version = token.generate_version()
    print(
        f"key {settings.key_name!r} is now at v{version} in token {settings.token_label!r}; "
        "older versions still decrypt, and a running bridge encrypts with the new one "
        "without a restart"
    )
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    settings = bridge.load_settings(args.config)
    with bridge.open_token(settings) as token:
        info = token.info()
    if args.json:
        doc = {
            "token_label": info.token_label,
            "token_serial": info.token_serial,
            "library": info.library,
            "key_name": info.key_name,
            "current_version": info.current_version,
            "versions": [
                {
                    "version": v.version,
                    "label": v.label,
                    "generated_in_token": v.generated_in_token,
                    "sensitive": v.sensitive,
                    "extractable": v.extractable,
                }
                for v in info.versions
            ],
        }
        print(json.dumps(doc, indent=2))
        return 0
    print(f"token    {info.token_label} (serial {info.token_serial}, {info.library})")
    print(f"key      {info.key_name}, current version {info.current_version or 'none'}")
    for v in info.versions:
        origin = "generated in token" if v.generated_in_token else "imported (ceremony)"
        flags = "sensitive" if v.sensitive else "NOT sensitive"
        flags += ", non-extractable" if not v.extractable else ", EXTRACTABLE"
        print(f"  v{v.version:<5} {origin}, {flags}")
    return 0


def cmd_init_token(args: argparse.Namespace) -> int:
    setup = softhsm.ensure_token(args.hsm_dir, args.label)
    print(f"token {setup.token_label!r} ready: conf {setup.conf_path}, PIN file {setup.pin_file}")
    return 0


def _holders(args: argparse.Namespace) -> list[str]:
    holders = list(args.holder)
    if args.holders_file is not None:
        try:
            lines = args.holders_file.read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"cannot read the holders file {args.holders_file}") from exc
        holders += [ln.strip() for ln in lines if ln.strip() and not ln.startswith("#")]
    if not holders:
        raise InputError("name the key holders with --holder AGE_PUBKEY or --holders-file")
    return holders


def cmd_ceremony(args: argparse.Namespace) -> int:
    settings = bridge.load_settings(args.config)
    holders = _holders(args)
    with bridge.open_token(settings) as token:
        result = ceremony.ceremony(token, holders, args.out, threshold=args.threshold)
    m = result.manifest
    print(json.dumps(m, indent=2))
    print(
        f"\nceremony {m['ceremony_id']}: key {m['key_name']} v{m['key_version']} imported; "
        f"{m['threshold']} of {m['shares']} shares restore it.\n"
        f"Pin this: ceremony public key {m['ceremony_public_key']}, "
        f"key check value {m['key_check_value']}.\n"
        f"Give share-<i>.age to holder i; keep {result.manifest_path.name} with the runbook.",
        file=sys.stderr,
    )
    return 0


def cmd_share_decrypt(args: argparse.Namespace) -> int:
    identity = holders.load_identity(args.identity)
    try:
        encrypted = args.share_file.read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read the share file {args.share_file}") from exc
    data = ceremony.decrypt_share(encrypted, identity, args.share_file.name)
    if args.out is not None:
        write_private(args.out, data)
    else:
        sys.stdout.write(data.decode("utf-8") + "\n")
    return 0


def cmd_restore(args: argparse.Namespace) -> int:
    settings = bridge.load_settings(args.config)
    pin = ceremony.load_pin(args.manifest) if args.manifest is not None else None
    shares = []
    for path in args.share:
        try:
            shares.append((path.name, path.read_bytes()))
        except OSError as exc:
            raise ConfigError(f"cannot read the share file {path}") from exc
    # Verify and recombine first: a refused restore never opens the token.
    recovered = ceremony.recombine(shares, pin=pin)
    try:
        with bridge.open_token(settings) as token:
            version = ceremony.import_recovered(recovered, token)
    finally:
        recovered.wipe()
    print(f"restored key {settings.key_name!r} v{version} into token {settings.token_label!r}")
    return 0
