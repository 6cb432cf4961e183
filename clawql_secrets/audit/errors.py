"""The audit log's errors, placed in the project tree by who is at fault.

Verifiers must be able to tell "this proof does not prove anything" apart from
"the log lied": the first is the prover's problem and may be retried with a
better proof, the second is evidence to keep (certificate-transparency's
``ProofError`` versus ``ConsistencyError``). Everything found wrong with stored
data is an ``IntegrityError``, because nobody but an attacker or a broken disk
changes a write-once log.

    ClawQLError
    ├── InputError                 (project) a caller sent malformed bytes or arguments
    ├── BackendError
    │   └── StoreError             the WORM store failed or lacks an object
    │       └── MissingObjectError     a named object is not in the store
    └── SecurityError
        └── IntegrityError
            ├── ProofError             a proof is malformed or does not reproduce the root
            ├── ConsistencyError       two tree heads cannot both come from one append-only log
            ├── SignatureError         a note is unsigned by the expected key, or forged
            ├── WriteOnceError         an attempt to replace an object in the WORM store
            └── TamperError            stored log data disagrees with itself; names where
"""

from __future__ import annotations

from clawql_secrets.errors import BackendError, IntegrityError


class ProofError(IntegrityError):
    """A proof is malformed, of the wrong length, or does not lead to the claimed root."""


class ConsistencyError(IntegrityError):
    """Two tree heads that cannot both be honest views of one append-only log."""


class SignatureError(IntegrityError):
    """A signed note carries no valid signature by the key the caller trusts."""


class WriteOnceError(IntegrityError):
    """Someone tried to replace an object that a write-once store already holds."""


class TamperError(IntegrityError):
    """Stored log data contradicts itself or its signed checkpoints.

    ``location`` names the first object (segment, entry range or checkpoint)
    found wrong, so an investigator knows where to look first.
    """

    def __init__(self, message: str, *, stream: str, location: str, fix: str | None = None) -> None:
        super().__init__(f"stream {stream!r}: {location}: {message}", fix=fix)
        self.stream = stream
        self.location = location


class StoreError(BackendError):
    """The WORM store could not be read or written."""


class MissingObjectError(StoreError):
    """The store holds no object under the requested name."""
