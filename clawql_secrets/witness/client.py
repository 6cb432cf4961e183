"""What a log uses to ask a witness for a cosignature (c2sp.org/tlog-witness).

``WitnessClient.add_checkpoint`` sends the old size, the consistency proof and
the signed checkpoint, and returns the witness's cosignature only after
checking it against the ``WitnessKey`` the client was configured with: a
witness that answers 200 with a line that does not verify is treated as
misbehaving, not trusted. Errors are this project's, by who is at fault:

- ``WitnessConflict(known_size)`` (409): the witness holds another size;
  resend from ``known_size`` with a proof from there;
- ``InconsistentCheckpoint`` (422) and ``SignatureError`` (a bad or missing
  cosignature): ``IntegrityError``s;
- ``InputError`` (400, 413), ``ConfigError`` (403, 404: the witness is not set
  up for this log or its key);
- ``BackendError``: unreachable, timed out, 5xx, or an answer outside the spec.

No httpx exception escapes. Response bodies are read up to a bound.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from types import TracebackType

import httpx

from clawql_secrets.audit.checkpoint import Checkpoint, NoteSignature, SignedNote
from clawql_secrets.audit.cosignature import WitnessKey, cosignature_timestamp
from clawql_secrets.audit.errors import SignatureError
from clawql_secrets.errors import BackendError, ConfigError, InputError
from clawql_secrets.witness.state import (
    AddCheckpointRequest,
    InconsistentCheckpoint,
    WitnessConflict,
)

__all__ = ["InconsistentCheckpoint", "WitnessClient", "WitnessConflict"]

_MAX_RESPONSE_BYTES = 64 * 1024
_SIZE_TYPE = "text/x.tlog.size"
_SIZE_BODY = re.compile(rb"(0|[1-9][0-9]{0,18})\n")
_MAX_SIZE = 2**63 - 1


class WitnessClient:
    """A connection (pool) to one witness, identified by its submission URL prefix and key."""

    def __init__(
        self,
        url: str,
        key: WitnessKey,
        *,
        timeout: float = 10.0,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        if not url.startswith(("http://", "https://")):
            raise ConfigError(f"witness URL {url!r} must start with http:// or https://")
        self.url = url.rstrip("/") + "/add-checkpoint"
        self.key = key
        self._http = httpx.Client(
            timeout=httpx.Timeout(timeout),
            transport=transport,
            follow_redirects=False,
            headers={"content-type": "text/plain; charset=utf-8"},
        )

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> WitnessClient:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def add_checkpoint(self, old_size: int, proof: Sequence[bytes], note: bytes) -> NoteSignature:
        """The witness's verified cosignature of ``note``'s checkpoint.

        ``old_size`` is the size the witness last cosigned for this log (0 the
        first time), ``proof`` the RFC 9162 consistency proof from it.
        """
        body = AddCheckpointRequest.build(old_size, proof, note).to_bytes()
        text = SignedNote.parse(note).text
        status, content_type, answer = self._post(body)
        if status == 200:
            return self._cosignature(text, answer)
        reason = _printable(answer)
        if status == 409:
            raise WitnessConflict(_known_size(content_type, answer))
        if status == 422:
            raise InconsistentCheckpoint(
                f"witness {self.key.name!r} refused the consistency proof: {reason}"
            )
        if status in (400, 413):
            raise InputError(f"witness {self.key.name!r} refused the request ({status}): {reason}")
        if status == 403:
            raise ConfigError(
                f"witness {self.key.name!r} trusts no key that signed this checkpoint: {reason}",
                fix="configure the witness with the log's verifier key",
            )
        if status == 404:
            raise ConfigError(
                f"witness {self.key.name!r} does not serve this log (or {self.url} is no "
                f"witness): {reason}",
                fix="add the log's origin and verifier key to the witness configuration",
            )
        raise BackendError(f"witness {self.key.name!r} answered {status}: {reason}")

    def checkpoints(self) -> list[Checkpoint]:
        """The tree heads this witness holds, each cosigned by it now (``GET /checkpoints``,
        our extension of tlog-witness): what a verifier holds the log's store to."""
        status, _, answer = self._request(
            "GET", self.url.removesuffix("add-checkpoint") + "checkpoints"
        )
        if status != 200:
            raise BackendError(f"witness {self.key.name!r} answered {status}: {_printable(answer)}")
        try:
            notes = json.loads(answer)["checkpoints"]
            if not isinstance(notes, list) or not all(isinstance(n, str) for n in notes):
                raise ValueError("not a list of notes")
        except (ValueError, KeyError, TypeError) as exc:
            raise BackendError(f"witness {self.key.name!r} sent no checkpoint list") from exc
        heads = []
        for text in notes:
            note = SignedNote.parse(text.encode())
            if cosignature_timestamp(note, self.key) is None:
                raise SignatureError(
                    f"a tree head from witness {self.key.name!r} is not cosigned by it"
                )
            heads.append(Checkpoint.parse(note.text))
        return heads

    def _post(self, body: bytes) -> tuple[int, str, bytes]:
        return self._request("POST", self.url, body)

    def _request(self, method: str, url: str, body: bytes | None = None) -> tuple[int, str, bytes]:
        try:
            with self._http.stream(method, url, content=body) as response:
                chunks: list[bytes] = []
                size = 0
                for chunk in response.iter_bytes():
                    size += len(chunk)
                    if size > _MAX_RESPONSE_BYTES:
                        raise BackendError(
                            f"witness {self.key.name!r} sent a response over "
                            f"{_MAX_RESPONSE_BYTES} bytes"
                        )
                    chunks.append(chunk)
                content_type = response.headers.get("content-type", "")
                return response.status_code, content_type, b"".join(chunks)
        except httpx.TimeoutException as exc:
            raise BackendError(f"witness {self.key.name!r} at {self.url} timed out") from exc
        except httpx.HTTPError as exc:
            raise BackendError(
                f"witness {self.key.name!r} at {self.url} is unreachable ({type(exc).__name__})"
            ) from exc

    def _cosignature(self, text: bytes, answer: bytes) -> NoteSignature:
        """Our witness's line among the answer's signature lines, verified over ``text``.

        The answer is read as the signature block of the checkpoint's note
        (tlog-witness suggests exactly that); lines of keys we were not
        configured with are ignored.
        """
        try:
            lines = SignedNote.parse(text + b"\n" + answer).signatures
        except InputError as exc:
            raise BackendError(
                f"witness {self.key.name!r} answered 200 without signature lines: {exc.message}"
            ) from exc
        mine = [line for line in lines if self.key.matches(line)]
        if not mine:
            raise SignatureError(
                f"witness {self.key.name!r} answered without a cosignature by its key {self.key}"
            )
        if len(mine) > 1:
            raise SignatureError(f"witness {self.key.name!r} answered with {len(mine)} lines")
        self.key.verify(text, mine[0])
        return mine[0]


def _known_size(content_type: str, answer: bytes) -> int:
    """The 409 body: the tree size in decimal and a newline, as ``text/x.tlog.size``."""
    media = content_type.split(";", 1)[0].strip().lower()
    match = _SIZE_BODY.fullmatch(answer)
    if media != _SIZE_TYPE or match is None or int(match[1]) > _MAX_SIZE:
        raise BackendError("witness answered 409 without a text/x.tlog.size tree size")
    return int(match[1])


def _printable(answer: bytes, limit: int = 300) -> str:
    text = answer.decode("utf-8", errors="replace").strip()
    return "".join(c if c.isprintable() else " " for c in text)[:limit] or "(no reason given)"
