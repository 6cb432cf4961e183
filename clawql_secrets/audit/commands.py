"""CLI: ``audit ship|verify|prove|consistency|check-proof|query``.

Exit codes carry the verdict: 0 only when everything checked holds. Every
problem is printed with where it was found; secrets never appear because the
log holds none and the checks print names and indexes, not entry contents.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import signal
import sys
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

from clawql_secrets.atomicfile import write_atomic
from clawql_secrets.audit import layout, verify
from clawql_secrets.audit.checkpoint import Checkpoint, VerifierKey
from clawql_secrets.audit.errors import SignatureError
from clawql_secrets.audit.key_transition import load_keyset
from clawql_secrets.audit.keyset import KeySet
from clawql_secrets.audit.store import LocalWormStore, WormStore
from clawql_secrets.errors import ConfigError, InputError

if TYPE_CHECKING:
    from clawql_secrets.audit.bundle import TrustPolicy
    from clawql_secrets.audit.query import Match
    from clawql_secrets.audit.witnessing import WitnessPolicy


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
    p.add_argument(
        "--prometheus",
        metavar="URL",
        help="a Prometheus server: every checkpoint (size, root) it recorded must fit the log",
    )
    p.add_argument(
        "--witness-key",
        action="append",
        default=[],
        metavar="VKEY",
        help="a trusted witness's C2SP tlog-cosignature key; with it, each stream's newest "
        "checkpoint must be cosigned and every stored cosignature must verify; repeatable",
    )
    p.add_argument(
        "--witness-threshold",
        type=int,
        metavar="K",
        help="how many of the --witness-key witnesses must have cosigned (default: all)",
    )
    p.add_argument(
        "--witness-url",
        action="append",
        default=[],
        metavar="URL",
        help="ask this witness (the one of the --witness-key at the same position) for every "
        "tree head it cosigned: the store must hold each of them (a truncated tail or a "
        "deleted stream shows); repeatable",
    )
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(func=_verify)

    p = asub.add_parser("prove", help="print an inclusion proof against the latest checkpoint")
    _store(p)
    _pubkey(p, required=False)
    p.add_argument("--stream", required=True, help="log stream (one per OpenBao node)")
    p.add_argument("--index", type=int, required=True, help="0-based entry index")
    p.add_argument(
        "--bundle",
        type=Path,
        metavar="FILE",
        help="write an offline proof bundle (C2SP tlog-proof carrying the entry; "
        "see audit/bundle.py) to FILE instead of printing JSON",
    )
    p.add_argument("--force", action="store_true", help="overwrite an existing --bundle FILE")
    p.add_argument(
        "--witness-key",
        action="append",
        default=[],
        metavar="VKEY",
        help="a trusted witness's C2SP tlog-cosignature key: the proof's checkpoint must be "
        "cosigned by --witness-threshold of them (reported); repeatable",
    )
    p.add_argument(
        "--witness-threshold",
        type=int,
        metavar="K",
        help="how many of the --witness-key witnesses must have cosigned (default: all)",
    )
    p.set_defaults(func=_prove)

    p = asub.add_parser(
        "consistency", help="print a consistency proof between two signed sizes of a stream"
    )
    _store(p)
    _pubkey(p, required=False)
    p.add_argument("--stream", required=True, help="log stream (one per OpenBao node)")
    p.add_argument("--old", type=int, required=True, help="the older signed tree size")
    p.add_argument("--new", type=int, required=True, help="the newer signed tree size")
    p.set_defaults(func=_consistency)

    p = asub.add_parser(
        "check-proof",
        help="check offline a proof bundle, or a proof printed by `audit prove|consistency`",
    )
    _trusted_keys(p)
    p.add_argument(
        "--origin-prefix",
        default=layout.DEFAULT_ORIGIN_PREFIX,
        help=f"checkpoint origin prefix (default {layout.DEFAULT_ORIGIN_PREFIX})",
    )
    p.add_argument("--stream", help="the stream the proof must be for (default: any under it)")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument(
        "--bundle", type=Path, metavar="FILE", help="a .tlog-proof bundle ('-' for stdin)"
    )
    src.add_argument("proof", type=Path, nargs="?", help="a proof JSON file ('-' for stdin)")
    p.set_defaults(func=_check_proof)

    p = asub.add_parser(
        "query", help="entries of an agent (optionally tenant, path, time), each with its proof"
    )
    _store(p)
    _pubkey(p, required=True)
    p.add_argument("--agent", required=True, help="entity id, display name or agent name")
    p.add_argument("--tenant", help="auth metadata tenant")
    p.add_argument("--path", help="request path, or a shell-style pattern (secret/data/x/*)")
    p.add_argument("--since", help="ISO 8601 time with zone (inclusive)")
    p.add_argument("--until", help="ISO 8601 time with zone (inclusive)")
    p.add_argument("--stream", action="append", default=[], help="only these streams")
    p.add_argument(
        "--proofs",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="include each match's inclusion proof in the JSON (default: yes)",
    )
    p.add_argument(
        "--bundle-dir",
        type=Path,
        metavar="DIR",
        help="also write one offline proof bundle per match, DIR/<stream>-<index>.tlog-proof",
    )
    p.add_argument("--force", action="store_true", help="overwrite existing bundle files")
    p.set_defaults(func=_query)

    p = asub.add_parser("ship", help="tail, redact and ship the nodes' audit files (foreground)")
    p.add_argument("--config", type=Path, required=True, help="shipper configuration (JSON/YAML)")
    p.set_defaults(func=_ship)

    p = asub.add_parser(
        "ingest", help="serve an mTLS endpoint for Fluent Bit's http output (foreground)"
    )
    p.add_argument("--config", type=Path, required=True, help="ingest configuration (JSON/YAML)")
    p.set_defaults(func=_ingest)

    from clawql_secrets.witness.commands import register as register_witness

    register_witness(asub)


def _store(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--store",
        required=True,
        help="the local write-once directory, or s3://bucket[/prefix] (boto3 credentials)",
    )
    p.add_argument("--s3-endpoint", metavar="URL", help="S3 endpoint (for S3-compatible stores)")
    p.add_argument(
        "--origin-prefix",
        default=layout.DEFAULT_ORIGIN_PREFIX,
        help=f"checkpoint origin prefix (default {layout.DEFAULT_ORIGIN_PREFIX})",
    )


def _pubkey(p: argparse.ArgumentParser, *, required: bool) -> None:
    g = p.add_mutually_exclusive_group(required=required)
    g.add_argument("--pubkey", metavar="VERIFIER_KEY", help="C2SP verifier key <name>+<hash>+<key>")
    g.add_argument(
        "--pubkey-file",
        type=Path,
        help="the log's verifier key file: one key, or every key the log used with the sizes "
        "at which each took over (the shipper's verifier.txt)",
    )


def _verifier(args: argparse.Namespace) -> KeySet | None:
    if args.pubkey_file is not None:
        return load_keyset(args.pubkey_file)
    return None if args.pubkey is None else KeySet.single(VerifierKey.parse(args.pubkey))


def _open_store(args: argparse.Namespace) -> WormStore:
    if str(args.store).startswith("s3://"):
        from clawql_secrets.audit.s3store import S3Location, S3WormStore, make_client

        store = S3WormStore(
            make_client(endpoint_url=args.s3_endpoint), S3Location.parse(str(args.store))
        )
        store.check_bucket()
        return store
    path = Path(args.store)
    if not path.is_dir():
        raise InputError(f"audit store {path} is not a directory")
    return LocalWormStore(path)


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
        known.append(verifier.open_any(_read(path)))
    known.extend(_witness_heads(args))
    if args.prometheus:
        from clawql_secrets.audit.query import prometheus_heads

        heads = prometheus_heads(args.prometheus)
        if not heads:
            raise InputError(f"Prometheus at {args.prometheus} holds no audit checkpoint record")
        known.extend(h.checkpoint for h in heads)
        print(f"checking {len(heads)} tree heads recorded by Prometheus", file=sys.stderr)
    result = verify.report(
        _open_store(args),
        verifier,
        origin_prefix=args.origin_prefix,
        known=known,
        witnesses=_witness_policy(args),
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
                witnessed = ""
                if s.cosigned_by is not None:
                    witnessed = f", cosigned by {', '.join(sorted(s.cosigned_by))}"
                print(
                    f"ok   {s.stream}: {s.entries} entries, {s.checkpoints} checkpoints, "
                    f"latest size {s.latest_size} root {s.latest_root}{witnessed}"
                )
        print("verified" if result.ok else "NOT verified")
    return 0 if result.ok else 1


def _witness_heads(args: argparse.Namespace) -> list[Checkpoint]:
    """The tree heads the --witness-url witnesses hold, each checked against its key."""
    from clawql_secrets.audit.cosignature import WitnessKey
    from clawql_secrets.witness.client import WitnessClient

    if len(args.witness_url) > len(args.witness_key):
        raise ConfigError("each --witness-url needs the --witness-key at the same position")
    heads: list[Checkpoint] = []
    for url, key in zip(args.witness_url, args.witness_key, strict=False):
        with WitnessClient(url, WitnessKey.parse(key)) as client:
            got = client.checkpoints()
        print(f"checking {len(got)} tree heads held by witness {url}", file=sys.stderr)
        heads.extend(got)
    return heads


def _witness_policy(args: argparse.Namespace) -> WitnessPolicy | None:
    from clawql_secrets.audit.cosignature import WitnessKey
    from clawql_secrets.audit.witnessing import WitnessPolicy

    if not args.witness_key:
        if args.witness_threshold is not None:
            raise ConfigError("--witness-threshold needs --witness-key")
        return None
    keys = tuple(WitnessKey.parse(k) for k in args.witness_key)
    return WitnessPolicy(
        keys, len(keys) if args.witness_threshold is None else args.witness_threshold
    )


def _prove(args: argparse.Namespace) -> int:
    if args.force and args.bundle is None:
        raise InputError("--force only applies with --bundle")
    verifier = _verifier(args)
    proof = verify.prove(
        _open_store(args),
        args.stream,
        args.index,
        verifier,
        origin_prefix=args.origin_prefix,
    )
    policy = _witness_policy(args)
    if policy is not None:
        from clawql_secrets.audit.cosignature import check_witnesses

        # The checkpoint the proof leads to, with the cosignatures stored for it.
        cosigned = check_witnesses(proof.checkpoint, policy.keys, policy.threshold)
        print(f"cosigned by {', '.join(sorted(cosigned))}", file=sys.stderr)
    if args.bundle is None:
        print(json.dumps(proof.to_json(), indent=2))
        return 0
    data = _bundle_of(proof, verifier, args.origin_prefix)
    _write_new(args.bundle, data, force=args.force)
    print(f"wrote {args.bundle}: entry {proof.index} of stream {proof.stream!r}")
    return 0


def _bundle_of(proof: verify.InclusionProof, verifier: KeySet | None, origin_prefix: str) -> bytes:
    """The bundle of ``proof``, checked as its reader will check it when a key is at hand."""
    from clawql_secrets.audit.bundle import Bundle, TrustPolicy, check_bundle

    data = Bundle.from_proof(proof).to_bytes()
    if verifier is not None:
        policy = TrustPolicy((verifier,), origin_prefix=origin_prefix, stream=proof.stream)
        check_bundle(data, policy)
    return data


def _write_new(path: Path, data: bytes, *, force: bool) -> None:
    """Write ``path`` atomically (a crash leaves no half file); never replace one unless forced
    (``atomicfile``: link(2) fails on an existing file, even one created meanwhile)."""
    try:
        write_atomic(path, data, mode=0o644, replace=force)
    except FileExistsError as exc:
        raise InputError(f"{path} exists: not overwriting it (use --force)") from exc
    except OSError as exc:
        raise InputError(f"cannot write {path}: {exc.strerror}") from exc


def _read_bounded(path: Path, limit: int) -> bytes:
    """At most ``limit`` bytes of ``path`` ('-': stdin); more is refused unread."""
    try:
        if str(path) == "-":
            data = sys.stdin.buffer.read(limit + 1)
        else:
            with path.open("rb") as f:
                data = f.read(limit + 1)
    except OSError as exc:
        raise InputError(f"cannot read {path}") from exc
    if len(data) > limit:
        raise InputError(f"{path} exceeds {limit} bytes: not a proof bundle")
    return data


def _trusted_keys(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--pubkey",
        action="append",
        default=[],
        metavar="VERIFIER_KEY",
        help="a trusted log key <name>+<hash>+<key>; repeat for every key the log used",
    )
    p.add_argument(
        "--pubkey-file",
        action="append",
        default=[],
        type=Path,
        metavar="FILE",
        help="a trusted log key file (one key, or the log's key set with its ranges); repeatable",
    )
    p.add_argument(
        "--witness-key",
        action="append",
        default=[],
        metavar="VKEY",
        help="a trusted witness's C2SP tlog-cosignature verifier key; repeatable",
    )
    p.add_argument(
        "--witness-threshold",
        type=int,
        metavar="K",
        help="how many of the --witness-key witnesses must have cosigned (default: all)",
    )


def _trust_roots(args: argparse.Namespace) -> tuple[KeySet, ...]:
    roots = [KeySet.single(VerifierKey.parse(k)) for k in args.pubkey]
    roots.extend(load_keyset(path) for path in args.pubkey_file)
    if not roots:
        raise InputError("a trusted log key is required: --pubkey or --pubkey-file")
    return tuple(roots)


def _check_proof(args: argparse.Namespace) -> int:
    from clawql_secrets.audit import bundle
    from clawql_secrets.audit.cosignature import WitnessKey

    roots = _trust_roots(args)
    witnesses = tuple(WitnessKey.parse(k) for k in args.witness_key)
    policy = bundle.TrustPolicy(
        roots,
        origin_prefix=args.origin_prefix,
        stream=args.stream,
        witness_keys=witnesses,
        witness_threshold=args.witness_threshold,
    )
    if args.bundle is not None:
        data = _read_bounded(args.bundle, bundle.max_bundle_bytes(policy.limits))
    else:
        try:
            document = json.loads(_read(args.proof))
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise InputError(f"{args.proof} is not JSON") from exc
        if isinstance(document, dict) and document.get("format") == verify.CONSISTENCY_FORMAT:
            return _check_consistency(verify.ConsistencyProof.from_json(document), policy)
        proof = verify.InclusionProof.from_json(document)
        if args.stream is not None and args.stream != proof.stream:
            raise InputError(f"the proof is for stream {proof.stream!r}, not {args.stream!r}")
        policy = dataclasses.replace(policy, stream=proof.stream)
        data = bundle.Bundle.from_proof(proof).to_bytes()
    result = bundle.report(data, policy)
    print("\n".join(result.lines()))
    return 0 if result.ok else 1


def _check_consistency(proof: verify.ConsistencyProof, policy: TrustPolicy) -> int:
    """A consistency proof holds under the first trust root that signed its checkpoints."""
    if policy.witness_keys:
        raise InputError("witness keys apply to inclusion proofs and bundles only")
    if policy.stream is not None and policy.stream != proof.stream:
        raise InputError(f"the proof is for stream {proof.stream!r}, not {policy.stream!r}")
    for keys in policy.log_keys[:-1]:
        try:
            old, new = verify.check_consistency(proof, keys, origin_prefix=policy.origin_prefix)
            break
        except SignatureError:
            continue
    else:
        old, new = verify.check_consistency(
            proof, policy.log_keys[-1], origin_prefix=policy.origin_prefix
        )
    print(
        f"stream {proof.stream!r}: the signed tree of size {old.size} is a prefix of "
        f"the signed tree of size {new.size}"
    )
    return 0


def _consistency(args: argparse.Namespace) -> int:
    proof = verify.consistency(
        _open_store(args),
        args.stream,
        args.old,
        args.new,
        _verifier(args),
        origin_prefix=args.origin_prefix,
    )
    print(json.dumps(proof.to_json(), indent=2))
    return 0


def _query(args: argparse.Namespace) -> int:
    from clawql_secrets.audit.query import QueryFilter, parse_time, query

    verifier = _verifier(args)
    if verifier is None:
        raise InputError("a verifier key is required")
    if args.bundle_dir is not None and not args.proofs:
        raise InputError("--bundle-dir writes proofs: it cannot go with --no-proofs")
    if args.force and args.bundle_dir is None:
        raise InputError("--force only applies with --bundle-dir")
    flt = QueryFilter(
        agent=args.agent,
        tenant=args.tenant,
        path=args.path,
        since=None if args.since is None else parse_time(args.since),
        until=None if args.until is None else parse_time(args.until),
    )
    matches = query(
        _open_store(args),
        verifier,
        flt,
        origin_prefix=args.origin_prefix,
        only_streams=args.stream,
    )
    documents = [m.to_json() for m in matches]
    if args.bundle_dir is not None:
        _write_bundles(args.bundle_dir, matches, documents, verifier, args)
    if not args.proofs:
        for doc in documents:
            del doc["proof"]
    print(json.dumps({"matches": documents}, indent=2))
    return 0


def _write_bundles(
    directory: Path,
    matches: list[Match],
    documents: list[dict[str, object]],
    verifier: KeySet,
    args: argparse.Namespace,
) -> None:
    """One bundle per match, named ``<stream>-<index>.tlog-proof``; the JSON names each.

    Without ``--force``, any existing target stops the run before a file is written.
    """
    from clawql_secrets.audit.bundle import EXTENSION

    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InputError(f"cannot create {directory}: {exc.strerror}") from exc
    paths = [directory / f"{m.stream}-{m.index}{EXTENSION}" for m in matches]
    taken = [str(p) for p in paths if p.exists()]
    if taken and not args.force:
        raise InputError(f"{', '.join(taken[:3])} exist: not overwriting them (use --force)")
    for match, path, doc in zip(matches, paths, documents, strict=True):
        _write_new(path, _bundle_of(match.proof, verifier, args.origin_prefix), force=args.force)
        doc["bundle"] = str(path)
    print(f"wrote {len(paths)} bundles to {directory}", file=sys.stderr)


def _ship(args: argparse.Namespace) -> int:
    from clawql_secrets.audit.metrics import registry_for
    from clawql_secrets.audit.ship_config import load_config, open_signer, open_store
    from clawql_secrets.audit.shipper import Shipper
    from clawql_secrets.audit.witnessing import WitnessSubmitter
    from clawql_secrets.witness.client import WitnessClient

    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(message)s")
    logging.getLogger("clawql_secrets").setLevel(logging.INFO)
    config = load_config(args.config)
    store = open_store(config.store)
    signer, release = open_signer(config.signer)
    keys = None
    if config.verifier_file is not None:
        from clawql_secrets.audit.key_transition import adopt
        from clawql_secrets.audit.ship_config import verifier_of

        try:
            # The log's key set, with a key transition if the signer's key is new.
            keys = adopt(
                store, verifier_of(signer), config.verifier_file, origin_prefix=config.origin_prefix
            )
        except BaseException:
            release()
            raise
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    server = None
    clients: list[WitnessClient] = []
    try:
        clients = [
            WitnessClient(w.url, w.witness_key(), timeout=w.timeout_seconds)
            for w in config.witnesses
        ]
        submitter = WitnessSubmitter(clients, store) if clients else None
        with Shipper(
            config.sources(), store, signer, config.settings(), keys=keys, witnesses=submitter
        ) as shipper:
            if config.metrics is not None:
                from prometheus_client import start_http_server

                try:
                    server, _ = start_http_server(
                        config.metrics.port,
                        addr=config.metrics.host,
                        registry=registry_for(shipper.metrics),
                    )
                except OSError as exc:
                    raise ConfigError(
                        f"cannot serve metrics on {config.metrics.host}:{config.metrics.port}"
                    ) from exc
                print(
                    f"metrics on http://{config.metrics.host}:{server.server_port}/metrics",
                    flush=True,
                )
            print(f"shipping {', '.join(shipper.streams)}", flush=True)
            shipper.run(stop)
    finally:
        if server is not None:
            server.shutdown()
            server.server_close()
        for client in clients:
            client.close()
        release()
    print("stopped", flush=True)
    return 0


def _ingest(args: argparse.Namespace) -> int:
    from clawql_secrets.audit.fluentbit import load_ingest_config, serve
    from clawql_secrets.audit.ship_config import open_signer, open_store

    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(message)s")
    logging.getLogger("clawql_secrets").setLevel(logging.INFO)
    config = load_ingest_config(args.config)
    store = open_store(config.store)
    signer, release = open_signer(config.signer)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    try:
        serve(config, store, signer, stop)
    finally:
        release()
    print("stopped", flush=True)
    return 0
