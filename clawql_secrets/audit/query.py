"""Forensics over a verified log: "did agent A touch path P between T1 and T2?", with proofs.

``query`` recomputes and checks every stream first (signatures, roots,
consistency: ``verify.replay_stream``), so nothing is answered from a log
that contradicts its own checkpoints. Each match comes with an RFC 9162
inclusion proof against the stream's latest signed checkpoint, in the same
self-contained form ``audit prove`` prints: a third party holding only the
verifier key can check each one.

Matching, on the redacted entries (leaf ``kind == "entry"``):

- ``agent``: equal to ``auth.entity_id``, ``auth.display_name``, the display
  name without its auth-mount prefix (``jwt-agent-7`` -> ``agent-7``), or
  ``auth.metadata.agent`` / ``auth.metadata.agent_id``;
- ``tenant``: equal to ``auth.metadata.tenant``;
- ``path``: ``request.path`` equal to it, or matching it as a shell-style
  pattern (``secret/data/tenants/acme/*``);
- ``since``/``until``: the entry's ``time`` within [since, until].

Requests and responses are paired by ``request.id``: when one of a pair
matches, the other is returned too if it satisfies the path and time filters
(a login request carries no identity yet; its response does). Allowed and
denied entries alike are returned, with ``allowed``/``error`` shown.

``prometheus_heads`` fetches, from a Prometheus server's HTTP API, every
(stream, size, root) it ever recorded of ``clawql_audit_checkpoint_info``,
for ``verify`` to hold the log to.
"""

from __future__ import annotations

import datetime as dt
import fnmatch
import json
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import httpx

from clawql_secrets.audit import layout
from clawql_secrets.audit.checkpoint import VerifierKey
from clawql_secrets.audit.keyset import KeySet
from clawql_secrets.audit.metrics import CHECKPOINT_INFO, RecordedHead, heads_from_labels
from clawql_secrets.audit.store import WormStore
from clawql_secrets.audit.verify import InclusionProof, replay_stream, streams
from clawql_secrets.errors import BackendError, InputError, IntegrityError

MAX_MATCHES = 10_000


@dataclass(frozen=True)
class QueryFilter:
    agent: str
    tenant: str | None = None
    path: str | None = None
    since: dt.datetime | None = None
    until: dt.datetime | None = None

    def __post_init__(self) -> None:
        if not self.agent:
            raise InputError("--agent must not be empty")
        for t in (self.since, self.until):
            if t is not None and t.tzinfo is None:
                raise InputError("--since/--until need a time zone (e.g. 2026-01-01T00:00:00Z)")
        if self.since and self.until and self.since > self.until:
            raise InputError("--since is after --until")

    def who(self, entry: Mapping[str, Any]) -> bool:
        auth = entry.get("auth")
        if not isinstance(auth, Mapping):
            return False
        meta = auth.get("metadata")
        meta = meta if isinstance(meta, Mapping) else {}
        display = auth.get("display_name")
        names = {auth.get("entity_id"), display, meta.get("agent"), meta.get("agent_id")}
        if isinstance(display, str) and "-" in display:
            names.add(display.split("-", 1)[1])
        if self.agent not in names:
            return False
        return self.tenant is None or meta.get("tenant") == self.tenant

    def where_when(self, entry: Mapping[str, Any]) -> bool:
        if self.path is not None:
            request = entry.get("request")
            path = request.get("path") if isinstance(request, Mapping) else None
            if not isinstance(path, str):
                return False
            if path != self.path and not fnmatch.fnmatchcase(path, self.path):
                return False
        if self.since is not None or self.until is not None:
            when = entry_time(entry)
            if when is None:
                return False
            if self.since is not None and when < self.since:
                return False
            if self.until is not None and when > self.until:
                return False
        return True


@dataclass(frozen=True)
class Match:
    stream: str
    index: int
    entry: Mapping[str, Any]
    proof: InclusionProof

    def to_json(self) -> dict[str, object]:
        request = self.entry.get("request")
        request = request if isinstance(request, Mapping) else {}
        auth = self.entry.get("auth")
        auth = auth if isinstance(auth, Mapping) else {}
        results = auth.get("policy_results")
        allowed = results.get("allowed") if isinstance(results, Mapping) else None
        return {
            "stream": self.stream,
            "index": self.index,
            "time": self.entry.get("time"),
            "type": self.entry.get("type"),
            "path": request.get("path"),
            "operation": request.get("operation"),
            "request_id": request.get("id"),
            "allowed": allowed,
            "error": self.entry.get("error"),
            "proof": self.proof.to_json(),
        }


def parse_time(text: str) -> dt.datetime:
    """An RFC 3339 / ISO 8601 time; nanoseconds (OpenBao's) are cut to microseconds."""
    value = text.strip()
    if value.endswith(("Z", "z")):
        value = value[:-1] + "+00:00"
    if "." in value:
        head, _, rest = value.partition(".")
        digits = len(rest) - len(rest.lstrip("0123456789"))
        value = f"{head}.{rest[: min(digits, 6)]}{rest[digits:]}"
    try:
        return dt.datetime.fromisoformat(value)
    except ValueError as exc:
        raise InputError(f"{text!r} is not an ISO 8601 time") from exc


def entry_time(entry: Mapping[str, Any]) -> dt.datetime | None:
    value = entry.get("time")
    if not isinstance(value, str):
        return None
    try:
        when = parse_time(value)
    except InputError:
        return None
    return when if when.tzinfo is not None else None


def query(
    store: WormStore,
    verifier: VerifierKey | KeySet,
    flt: QueryFilter,
    *,
    origin_prefix: str = layout.DEFAULT_ORIGIN_PREFIX,
    only_streams: Sequence[str] = (),
    max_matches: int = MAX_MATCHES,
) -> list[Match]:
    """Matching entries of every (verified) stream, each with its inclusion proof."""
    names = list(only_streams) or streams(store)
    if not names:
        raise IntegrityError("the store holds no audit log: nothing to query")
    out: list[Match] = []
    for stream in names:
        # 1. Recompute the stream and check every checkpoint against it.
        state = replay_stream(
            store,
            layout.check_stream(stream),
            verifier,
            origin_prefix=origin_prefix,
            require_covered=False,
        )
        latest = state.latest
        if latest is None:
            continue
        # 2. Entries covered by the latest checkpoint that match directly.
        agent = json.dumps(flt.agent, ensure_ascii=False)[1:-1].encode()
        chosen: dict[int, tuple[bytes, dict[str, Any]]] = {}
        for index, data, entry in _covered(store, state.segments, latest.size, [agent]):
            if flt.who(entry) and flt.where_when(entry):
                chosen[index] = (data, entry)
        # 3. Their request/response partners, if they pass the path and time filters.
        rids = {rid for _, e in chosen.values() if (rid := _request_id(e)) is not None}
        if rids:
            needles = [r.encode() for r in rids] if len(rids) <= 64 else []
            for index, data, entry in _covered(store, state.segments, latest.size, needles):
                if index not in chosen and _request_id(entry) in rids and flt.where_when(entry):
                    chosen[index] = (data, entry)
        if len(out) + len(chosen) > max_matches:
            raise InputError(f"more than {max_matches} matches: narrow the query")
        # 4. Prove each against the latest checkpoint.
        for index in sorted(chosen):
            data, entry = chosen[index]
            path = tuple(state.tree.inclusion_proof(index, latest.size))
            proof = InclusionProof(stream, index, data, path, state.notes[-1])
            out.append(Match(stream, index, entry, proof))
    return out


def _covered(
    store: WormStore, segments: Sequence[layout.SegmentName], size: int, needles: Sequence[bytes]
) -> Iterator[tuple[int, bytes, dict[str, Any]]]:
    """(index, bytes, entry) of OpenBao entries below ``size`` containing any needle.

    The byte test skips JSON parsing of the (many) entries that cannot match;
    no needles means every entry is parsed.
    """
    for seg in segments:
        if seg.first >= size:
            return
        for offset, data in enumerate(layout.decode_segment(store.get(seg.name))):
            index = seg.first + offset
            if index >= size:
                return
            if needles and not any(n in data for n in needles):
                continue
            entry = _entry_of(data)
            if entry is not None:
                yield index, data, entry


def _entry_of(data: bytes) -> dict[str, Any] | None:
    try:
        leaf = json.loads(data)
    except ValueError:
        return None
    if not isinstance(leaf, dict) or leaf.get("kind") != "entry":
        return None
    entry = leaf.get("entry")
    return entry if isinstance(entry, dict) else None


def _request_id(entry: Mapping[str, Any]) -> str | None:
    request = entry.get("request")
    rid = request.get("id") if isinstance(request, Mapping) else None
    return rid if isinstance(rid, str) else None


# -- the Prometheus record -------------------------------------------------------


def prometheus_heads(
    url: str,
    *,
    transport: httpx.BaseTransport | None = None,
    timeout: float = 10.0,
    start: float = 0.0,
    end: float | None = None,
) -> list[RecordedHead]:
    """Every checkpoint (stream, size, root) a Prometheus server holds a series of.

    Uses ``GET /api/v1/series?match[]=clawql_audit_checkpoint_info`` over
    [start, end]: each scraped (size, root) is its own series, so the label
    sets are exactly the tree heads Prometheus saw. An unreachable or
    malformed answer is a ``BackendError``: a record we cannot read proves
    nothing either way.
    """
    params: dict[str, str] = {"match[]": CHECKPOINT_INFO, "start": f"{start:.3f}"}
    params["end"] = f"{(end if end is not None else dt.datetime.now(dt.UTC).timestamp()):.3f}"
    try:
        with httpx.Client(transport=transport, timeout=timeout) as client:
            response = client.get(url.rstrip("/") + "/api/v1/series", params=params)
    except httpx.HTTPError as exc:
        raise BackendError(f"cannot query Prometheus at {url} ({type(exc).__name__})") from exc
    if response.status_code != 200:
        raise BackendError(f"Prometheus at {url} answered HTTP {response.status_code}")
    try:
        doc = response.json()
    except ValueError as exc:
        raise BackendError(f"Prometheus at {url} did not answer JSON") from exc
    if not isinstance(doc, dict) or doc.get("status") != "success":
        raise BackendError(f"Prometheus at {url} reported an error")
    data = doc.get("data")
    if not isinstance(data, list) or not all(isinstance(d, dict) for d in data):
        raise BackendError(f"Prometheus at {url} answered an unexpected series format")
    try:
        return heads_from_labels(data)
    except InputError as exc:
        raise BackendError(f"Prometheus at {url}: {exc.message}") from exc
