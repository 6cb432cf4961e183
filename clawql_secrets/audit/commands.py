"""CLI: ``audit verify``, ``audit prove`` and ``audit check-proof``.

Exit codes carry the verdict: 0 only when everything checked holds. Every
problem is printed with where it was found; secrets never appear because the
log holds none and the checks print names and indexes, not entry contents.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from clawql_secrets.audit import layout, verify
from clawql_secrets.audit.checkpoint import Checkpoint, VerifierKey, open_checkpoint
from clawql_secrets.audit.store import LocalWormStore
from clawql_secrets.errors import ConfigError, InputError


def register(sub: Any) -> None:
    audit = sub.add_parser("audit", help="verify and prove the tamper-evident audit log")
    asub = audit.add_subparsers(dest="audit_command", metavar="ACTION")
    asub.required = True

    p = asub.add_parser("verify", help="recompute every stream and check every checkpoint")
    _store(p)
    _pubkey(p, required=True)
    p.add_argument(
        "--known",
        type=Path,
        action="append",
        default=[],
        metavar="NOTE",
        help="a signed checkpoint kept outside the store; the log must still extend it",
    )
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(func=_verify)

    p = asub.add_parser("prove", help="print an inclusion proof against the latest checkpoint")
    _store(p)
    _pubkey(p, required=False)
    p.add_argument("--stream", required=True, help="log stream (one per OpenBao node)")
    p.add_argument("--index", type=int, required=True, help="0-based entry index")
    p.set_defaults(func=_prove)

    p = asub.add_parser("check-proof", help="check an inclusion proof printed by `audit prove`")
    _pubkey(p, required=True)
    p.add_argument("--origin-prefix", default=layout.DEFAULT_ORIGIN_PREFIX)
    p.add_argument("proof", type=Path, help="the proof JSON file ('-' for stdin)")
    p.set_defaults(func=_check_proof)


def _store(p: argparse.ArgumentParser) -> None:
    p.add_argument("--store", type=Path, required=True, help="the local write-once directory")
    p.add_argument(
        "--origin-prefix",
        default=layout.DEFAULT_ORIGIN_PREFIX,
        help=f"checkpoint origin prefix (default {layout.DEFAULT_ORIGIN_PREFIX})",
    )


def _pubkey(p: argparse.ArgumentParser, *, required: bool) -> None:
    g = p.add_mutually_exclusive_group(required=required)
    g.add_argument("--pubkey", metavar="VERIFIER_KEY", help="C2SP verifier key <name>+<hash>+<key>")
    g.add_argument("--pubkey-file", type=Path, help="a file holding the verifier key")


def _verifier(args: argparse.Namespace) -> VerifierKey | None:
    if args.pubkey_file is not None:
        try:
            return VerifierKey.parse(args.pubkey_file.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"cannot read verifier key file {args.pubkey_file}") from exc
    return None if args.pubkey is None else VerifierKey.parse(args.pubkey)


def _open_store(args: argparse.Namespace) -> LocalWormStore:
    if not args.store.is_dir():
        raise InputError(f"audit store {args.store} is not a directory")
    return LocalWormStore(args.store)


def _read(path: Path) -> bytes:
    try:
        return sys.stdin.buffer.read() if str(path) == "-" else path.read_bytes()
    except OSError as exc:
        raise InputError(f"cannot read {path}") from exc


def _verify(args: argparse.Namespace) -> int:
    verifier = _verifier(args)
    if verifier is None:  # argparse makes one of the two required
        raise InputError("a verifier key is required")
    known: list[Checkpoint] = []
    for path in args.known:
        known.append(open_checkpoint(_read(path), verifier))
    result = verify.report(
        _open_store(args), verifier, origin_prefix=args.origin_prefix, known=known
    )
    if args.json:
        print(json.dumps(result.to_json(), indent=2))
    else:
        if result.problem:
            print(f"FAIL: {result.problem}")
        for s in result.streams:
            if s.problem:
                print(f"FAIL {s.stream}: {s.problem}")
            else:
                print(
                    f"ok   {s.stream}: {s.entries} entries, {s.checkpoints} checkpoints, "
                    f"latest size {s.latest_size} root {s.latest_root}"
                )
        print("verified" if result.ok else "NOT verified")
    return 0 if result.ok else 1


def _prove(args: argparse.Namespace) -> int:
    proof = verify.prove(
        _open_store(args),
        args.stream,
        args.index,
        _verifier(args),
        origin_prefix=args.origin_prefix,
    )
    print(json.dumps(proof.to_json(), indent=2))
    return 0


def _check_proof(args: argparse.Namespace) -> int:
    verifier = _verifier(args)
    if verifier is None:
        raise InputError("a verifier key is required")
    try:
        document = json.loads(_read(args.proof))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InputError(f"{args.proof} is not JSON") from exc
    proof = verify.InclusionProof.from_json(document)
    cp = verify.check_inclusion(proof, verifier, origin_prefix=args.origin_prefix)
    print(f"entry {proof.index} of stream {proof.stream!r} is in the log at tree size {cp.size}")
    return 0
