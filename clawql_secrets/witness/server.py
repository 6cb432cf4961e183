"""The witness over HTTP: ``POST /add-checkpoint`` as c2sp.org/tlog-witness defines it.

Statuses and bodies (tlog-witness, "add-checkpoint"):

- 200 ``text/plain; charset=utf-8``: one note signature line, the witness's
  cosignature (``— <name> base64(key hash || timestamp || signature)\\n``);
- 400 malformed body, or old size larger than the checkpoint's size;
- 403 no valid signature by a key the witness trusts for the origin;
- 404 origin unknown to the witness;
- 409 ``text/x.tlog.size``: the old size is not the size last cosigned (or
  the same size with another root); the body is that size and a newline;
- 422 the consistency proof does not verify;
- 413 body over the configured limit (checked on ``Content-Length`` before
  reading, and while reading), 408 body not received within the read timeout,
  503 the new state could not be persisted (nothing was cosigned).

Other refusals carry a one-line ``text/plain`` reason. The state is persisted
before a 200 is sent (``StateStore.update``). There is no authentication
beyond the log's signature, as in the spec: anyone may submit a checkpoint,
only the log's key can make the witness move.

Blocking work (Ed25519, fsync) runs in a worker thread; the per-origin lock
lives in the store, so requests for different logs do not wait for each other.
"""

from __future__ import annotations

import logging
import socket
import time
from collections.abc import Callable, Mapping, Sequence

import anyio
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from clawql_secrets.audit.checkpoint import Checkpoint
from clawql_secrets.audit.cosignature import WitnessKey, WitnessSigner
from clawql_secrets.errors import BackendError, ConfigError
from clawql_secrets.witness.config import WitnessConfig
from clawql_secrets.witness.state import (
    AddCheckpointRequest,
    Cosigned,
    InconsistentCheckpoint,
    LogPolicy,
    LogState,
    MalformedRequest,
    UnknownLog,
    UntrustedCheckpoint,
    WitnessConflict,
    decide,
    origin_of,
)
from clawql_secrets.witness.store import StateStore

log = logging.getLogger(__name__)

SIZE_CONTENT_TYPE = "text/x.tlog.size"
_MAX_HEADER_BYTES = 16 * 1024


class Witness:
    """The decision procedure bound to a key, the configured logs and the state store."""

    def __init__(
        self,
        signer: WitnessSigner,
        policies: Mapping[str, LogPolicy] | Callable[[], Mapping[str, LogPolicy]],
        store: StateStore,
        *,
        origins: Sequence[str] = (),
        clock: Callable[[], float] = time.time,
    ) -> None:
        """``policies`` is fixed, or a function re-reading them per request (then
        ``origins`` names the logs served)."""
        self.signer = signer
        self.store = store
        self.clock = clock
        self._reload: Callable[[], Mapping[str, LogPolicy]] | None = None
        self._policies: dict[str, LogPolicy] = {}
        if callable(policies):
            self._reload = policies
            self.origins = frozenset(origins)
        else:
            self._policies = dict(policies)
            self.origins = frozenset(self._policies)

    @property
    def policies(self) -> dict[str, LogPolicy]:
        """The logs' keys; read afresh when they come from the logs' key files."""
        if self._reload is None:
            return self._policies
        try:
            return dict(self._reload())
        except ConfigError as exc:
            raise UntrustedCheckpoint(f"no usable key for this log: {exc.message}") from exc

    @property
    def key(self) -> WitnessKey:
        return self.signer.witness_key()

    def cosigned_heads(self) -> list[bytes]:
        """Every tree head this witness holds, as a note it cosigns now (see ``build_app``)."""
        notes = []
        stamp = int(self.clock())
        for origin, state in sorted(self.store.states().items()):
            body = Checkpoint(origin, state.size, state.root).body()
            notes.append(body + b"\n" + self.signer.cosign(body, stamp).line().encode())
        return notes

    def add_checkpoint(self, body: bytes) -> Cosigned:
        """Cosign the request's checkpoint and persist the new state, or raise a refusal."""
        request = AddCheckpointRequest.parse(body)
        origin = origin_of(request)
        if origin not in self.origins:
            raise UnknownLog(f"this witness does not serve log {origin[:200]!r}")
        policies = self.policies

        def step(recorded: LogState | None) -> tuple[Cosigned, LogState]:
            cosigned = decide(request, policies, recorded, self.signer, int(self.clock()))
            return cosigned, cosigned.state

        return self.store.update(origin, step)


class _TooLarge(Exception):
    pass


def build_app(
    witness: Witness, *, max_body_bytes: int = 64 * 1024, read_timeout: float = 10.0
) -> Starlette:
    """The ASGI app: one route; Starlette answers 404/405 for anything else."""

    async def add_checkpoint(request: Request) -> Response:
        try:
            body = await _read_body(request, max_body_bytes, read_timeout)
        except _TooLarge:
            log.info("add-checkpoint: 413 (body over %d bytes)", max_body_bytes)
            return _text(413, f"request body exceeds {max_body_bytes} bytes")
        except TimeoutError:
            log.info("add-checkpoint: 408 (body not received within %g s)", read_timeout)
            return _text(408, f"request body not received within {read_timeout:g} s")
        except ClientDisconnect:
            return _text(400, "client disconnected")
        except MalformedRequest as exc:
            return _text(400, exc.message)
        try:
            cosigned = await run_in_threadpool(witness.add_checkpoint, body)
        except WitnessConflict as exc:
            if exc.fork:
                log.warning("add-checkpoint: 409 (%s); refused note: %r", exc.message, body[-4096:])
            else:
                log.info("add-checkpoint: 409 (%s)", exc.message)
            return Response(
                f"{exc.known_size}\n".encode("ascii"),
                status_code=409,
                headers={"content-type": SIZE_CONTENT_TYPE},
            )
        except (MalformedRequest, UnknownLog, UntrustedCheckpoint) as exc:
            log.info("add-checkpoint: %d (%s)", exc.http_status, exc.message)
            return _text(exc.http_status, exc.message)
        except InconsistentCheckpoint as exc:
            # Signed by the log, yet not an extension of what was cosigned: keep the
            # evidence in the log (checkpoints are public; the note is not secret).
            log.warning("add-checkpoint: 422 (%s); refused note: %r", exc.message, body[-4096:])
            return _text(422, exc.message)
        except BackendError as exc:
            log.error("add-checkpoint: 503 (%s)", exc.message)
            return _text(503, "the witness cannot persist its state; nothing was cosigned")
        log.info("cosigned %r at size %d", cosigned.checkpoint.origin, cosigned.checkpoint.size)
        return Response(
            cosigned.response_body(),
            status_code=200,
            headers={"content-type": "text/plain; charset=utf-8"},
        )

    async def checkpoints(request: Request) -> Response:
        # Not in tlog-witness: what the witness holds, so that a verifier can hold the
        # log's store to it (a truncated tail or a deleted stream shows; ADR 0014).
        notes = await run_in_threadpool(witness.cosigned_heads)
        return JSONResponse(
            {"checkpoints": [n.decode() for n in notes]}, headers={"cache-control": "no-store"}
        )

    app = Starlette(
        routes=[
            Route("/add-checkpoint", add_checkpoint, methods=["POST"]),
            Route("/checkpoints", checkpoints, methods=["GET"]),
        ]
    )
    app.router.redirect_slashes = False  # the path is exactly <prefix>/add-checkpoint
    return app


async def _read_body(request: Request, limit: int, timeout: float) -> bytes:
    """The body, refused early when too large and bounded in time (slow senders)."""
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.isdigit() or len(declared) > 18:
            raise MalformedRequest("invalid Content-Length")
        if int(declared) > limit:
            raise _TooLarge
    chunks: list[bytes] = []
    size = 0
    with anyio.fail_after(timeout):
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise _TooLarge
            chunks.append(chunk)
    return b"".join(chunks)


def _text(status: int, message: str) -> Response:
    return PlainTextResponse(message[:1000] + "\n", status_code=status)


def bind_socket(host: str, port: int) -> socket.socket:
    """A listening socket; port 0 picks a free port (read it back from the socket)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(128)
    except OSError as exc:
        sock.close()
        raise ConfigError(
            f"cannot listen on {host}:{port} ({exc.strerror})",
            fix="choose a free port (or 0) and a local address in the witness config",
        ) from exc
    return sock


def open_witness(config: WitnessConfig) -> Witness:
    """Load the key (checked against the configured name) and open the state store."""
    signer = WitnessSigner.from_file(config.key_file)
    if signer.name != config.name:
        raise ConfigError(
            f"the witness key file {config.key_file} is for {signer.name!r}, "
            f"but the configuration names the witness {config.name!r}"
        )
    if not config.reloads_keys:
        policies = config.policies()
        return Witness(signer, policies, StateStore.open(config.state_dir, policies))
    # Some log's keys come from its key file: check them per request (403 until it exists).
    origins = [log.origin for log in config.logs]
    return Witness(
        signer, config.policies, StateStore.open(config.state_dir, origins), origins=origins
    )


def serve(config: WitnessConfig) -> None:
    """Serve until SIGINT/SIGTERM; print the readiness line once the socket listens."""
    import uvicorn

    witness = open_witness(config)
    try:
        sock = bind_socket(config.host, config.port)
        try:
            server = uvicorn.Server(
                uvicorn.Config(
                    build_app(
                        witness,
                        max_body_bytes=config.max_body_bytes,
                        read_timeout=config.read_timeout_seconds,
                    ),
                    lifespan="off",
                    log_config=None,
                    access_log=False,
                    proxy_headers=False,
                    server_header=False,
                    timeout_keep_alive=30,
                    limit_concurrency=config.max_connections,
                    h11_max_incomplete_event_size=_MAX_HEADER_BYTES,
                )
            )
            host, port = sock.getsockname()[:2]
            shown = f"[{host}]" if ":" in host else host
            # Connections queue on the listening socket until uvicorn accepts them.
            print(f"witness {witness.key} listening on http://{shown}:{port}", flush=True)
            server.run(sockets=[sock])
        finally:
            sock.close()
    finally:
        witness.store.close()
