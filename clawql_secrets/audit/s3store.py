"""An S3 bucket with Object Lock as the audit log's WORM store (boto3).

Every object is written once, with Object Lock in COMPLIANCE mode and a
retain-until date, so until that date nobody, the bucket owner and the
account root included, can delete or overwrite the version we wrote. What this
adapter adds on top of S3:

- **No overwrite.** ``PutObject`` carries ``If-None-Match: *``: S3 refuses
  (412) a write to an existing key. A retry of identical bytes (a shipper that
  crashed after writing, before recording it) is a no-op, any other write is a
  ``WriteOnceError``. Stores that ignore the header are caught afterwards: a
  key with more than one version means someone overwrote it.
- **The first version is the object.** Reads and listings go through the
  version list, and ``get`` returns the oldest version of a key. A delete
  marker or a later version (which compliance mode cannot prevent: it only
  protects existing versions) can neither hide nor replace what the log wrote.
- **Lock checked, not assumed.** After each write ``HeadObject`` must show
  the version in COMPLIANCE mode with a retain-until date at least the one
  asked for; otherwise the bucket does not do what the log relies on and
  writing stops with a ``StoreError``. (``GetObjectRetention`` is not used:
  moto's server mode answers it with the object body.)

Credentials come from boto3's usual chain (environment, profile, instance
role): never from the shipper's configuration. Every botocore failure leaves
as a ``StoreError`` naming the operation and object, never the response body.

Emulators differ from S3 (see ``reference/openbao-facts.md``): moto refuses
deletes of locked versions but lets retention be shortened or removed. Tamper
evidence therefore comes from ``verify``, not from the store.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from clawql_secrets.audit.errors import MissingObjectError, StoreError, WriteOnceError
from clawql_secrets.audit.store import check_name
from clawql_secrets.errors import ConfigError, InputError

COMPLIANCE = "COMPLIANCE"
DEFAULT_RETENTION_DAYS = 400
_PRECONDITION_CODES = frozenset({"PreconditionFailed", "ConditionalRequestConflict", "412", "409"})
_MISSING_CODES = frozenset({"NoSuchKey", "NoSuchVersion", "404"})
VersionIds = list[str]  # the class below defines a `list` method


@dataclass(frozen=True)
class S3Location:
    """``s3://bucket[/prefix]`` parsed: the prefix is empty or ends with ``/``."""

    bucket: str
    prefix: str = ""

    @classmethod
    def parse(cls, uri: str) -> S3Location:
        parts = urlsplit(uri)
        if parts.scheme != "s3" or not parts.netloc or parts.query or parts.fragment:
            raise InputError(f"{uri!r} is not an s3://bucket[/prefix] URI")
        prefix = parts.path.strip("/")
        if prefix:
            check_name(prefix)
            prefix += "/"
        return cls(parts.netloc, prefix)

    def __str__(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}"


def make_client(
    *,
    endpoint_url: str | None = None,
    region: str | None = None,
    connect_timeout: float = 5.0,
    read_timeout: float = 15.0,
    max_attempts: int = 3,
) -> Any:
    """A boto3 S3 client with bounded timeouts and retries (credentials: boto3's chain)."""
    config = Config(
        connect_timeout=connect_timeout,
        read_timeout=read_timeout,
        retries={"max_attempts": max_attempts, "mode": "standard"},
        s3={"addressing_style": "path"} if endpoint_url else None,
    )
    try:
        return boto3.session.Session().client(
            "s3", endpoint_url=endpoint_url, region_name=region or "us-east-1", config=config
        )
    except (BotoCoreError, ValueError) as exc:
        raise ConfigError(f"cannot configure the S3 client ({type(exc).__name__})") from exc


class S3WormStore:
    """The ``WormStore`` contract on an Object Lock bucket (see the module docstring)."""

    def __init__(
        self,
        client: Any,
        location: S3Location,
        *,
        retention_days: int = DEFAULT_RETENTION_DAYS,
    ) -> None:
        if retention_days < 1:
            raise ConfigError("audit object retention must be at least one day")
        self._s3 = client
        self.location = location
        self.retention = dt.timedelta(days=retention_days)

    def __repr__(self) -> str:
        return f"S3WormStore({str(self.location)!r})"

    # -- setup ---------------------------------------------------------------

    def check_bucket(self) -> None:
        """Refuse a bucket without versioning and Object Lock: it would not be WORM."""
        bucket = self.location.bucket
        try:
            lock = self._s3.get_object_lock_configuration(Bucket=bucket)
            versioning = self._s3.get_bucket_versioning(Bucket=bucket)
        except ClientError as exc:
            if _code(exc) != "ObjectLockConfigurationNotFoundError":
                raise _store_error(exc, "reading the configuration of", bucket) from exc
            lock, versioning = {}, {}
        except BotoCoreError as exc:
            raise _store_error(exc, "reading the configuration of", bucket) from exc
        enabled = lock.get("ObjectLockConfiguration", {}).get("ObjectLockEnabled")
        if enabled != "Enabled" or versioning.get("Status") != "Enabled":
            raise ConfigError(
                f"bucket {bucket!r} does not have Object Lock and versioning enabled",
                fix="create the bucket with ObjectLockEnabledForBucket=true (it cannot be added "
                "to an existing bucket without AWS support)",
            )

    # -- WormStore -----------------------------------------------------------

    def put_once(self, name: str, data: bytes) -> None:
        key = self._key(name)
        versions = self._versions(key)
        if versions:
            self._same_or_refuse(name, key, versions, data)
            return
        until = _now() + self.retention
        try:
            written = self._s3.put_object(
                Bucket=self.location.bucket,
                Key=key,
                Body=data,
                IfNoneMatch="*",
                ObjectLockMode=COMPLIANCE,
                ObjectLockRetainUntilDate=until,
                ChecksumAlgorithm="SHA256",
                ContentType="application/octet-stream",
            )
        except ClientError as exc:
            if _code(exc) in _PRECONDITION_CODES:
                # Another writer (or our own earlier attempt) got there first.
                self._same_or_refuse(name, key, self._versions(key), data)
                return
            raise _store_error(exc, "writing", name) from exc
        except BotoCoreError as exc:
            raise _store_error(exc, "writing", name) from exc
        version = written.get("VersionId")
        self._check_locked(name, key, version, until)
        after = self._versions(key)
        if len(after) != 1:
            raise WriteOnceError(
                f"{name!r} has {len(after)} versions right after it was written: the store "
                "does not honour If-None-Match, or another writer overwrote it"
            )

    def get(self, name: str) -> bytes:
        key = self._key(name)
        versions = self._versions(key)
        if not versions:
            raise MissingObjectError(f"the audit store {self.location} has no {name!r}")
        # The first version written is the write-once object; later ones are
        # overwrites compliance mode could not refuse.
        return self._read(name, key, versions[-1])

    def list(self, prefix: str) -> list[str]:
        names: set[str] = set()
        full = self.location.prefix + prefix
        try:
            pages = self._s3.get_paginator("list_object_versions").paginate(
                Bucket=self.location.bucket, Prefix=full
            )
            for page in pages:
                for v in page.get("Versions", []):
                    names.add(v["Key"][len(self.location.prefix) :])
        except (ClientError, BotoCoreError) as exc:
            raise _store_error(exc, "listing", prefix or "/") from exc
        return sorted(names)

    # -- internals -----------------------------------------------------------

    def _key(self, name: str) -> str:
        check_name(name)
        return self.location.prefix + name

    def _versions(self, key: str) -> VersionIds:
        """Version ids of ``key`` (delete markers excluded), newest first as S3 lists them."""
        found: VersionIds = []
        try:
            pages = self._s3.get_paginator("list_object_versions").paginate(
                Bucket=self.location.bucket, Prefix=key
            )
            for page in pages:
                found.extend(v["VersionId"] for v in page.get("Versions", []) if v["Key"] == key)
        except (ClientError, BotoCoreError) as exc:
            raise _store_error(exc, "listing the versions of", key) from exc
        return found

    def _read(self, name: str, key: str, version: str) -> bytes:
        try:
            obj = self._s3.get_object(
                Bucket=self.location.bucket, Key=key, VersionId=version, ChecksumMode="ENABLED"
            )
            body: bytes = obj["Body"].read()
        except ClientError as exc:
            if _code(exc) in _MISSING_CODES:
                raise MissingObjectError(
                    f"the audit store {self.location} has no {name!r}"
                ) from exc
            raise _store_error(exc, "reading", name) from exc
        except BotoCoreError as exc:
            raise _store_error(exc, "reading", name) from exc
        return body

    def _same_or_refuse(self, name: str, key: str, versions: VersionIds, data: bytes) -> None:
        if self._read(name, key, versions[-1]) != data:
            raise WriteOnceError(
                f"refusing to overwrite {name!r} in the write-once store {self.location}"
            )
        if len(versions) > 1:
            raise WriteOnceError(
                f"{name!r} has {len(versions)} versions in {self.location}: it was overwritten"
            )

    def _check_locked(self, name: str, key: str, version: str | None, until: dt.datetime) -> None:
        args: dict[str, Any] = {"Bucket": self.location.bucket, "Key": key}
        if version:
            args["VersionId"] = version
        head = self._call("checking the lock of", name, "head_object", **args)
        mode = head.get("ObjectLockMode")
        retain = head.get("ObjectLockRetainUntilDate")
        # S3 keeps retain-until dates to the second.
        if (
            mode != COMPLIANCE
            or not isinstance(retain, dt.datetime)
            or retain < until - dt.timedelta(seconds=1)
        ):
            raise StoreError(
                f"{name!r} was stored without COMPLIANCE Object Lock until {until:%Y-%m-%d}",
                fix="use a bucket with Object Lock enabled, and an S3 that implements it",
            )

    def _call(self, doing: str, what: str, method: str, **kwargs: Any) -> dict[str, Any]:
        try:
            result: dict[str, Any] = getattr(self._s3, method)(**kwargs)
        except (ClientError, BotoCoreError) as exc:
            raise _store_error(exc, doing, what) from exc
        return result


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC).replace(microsecond=0)


def _code(exc: ClientError) -> str:
    error = exc.response.get("Error", {})
    code = error.get("Code") or str(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode"))
    return str(code)


def _store_error(exc: Exception, doing: str, what: str) -> StoreError:
    """A ``StoreError`` naming the S3 error code or failure type, never a response body."""
    cause = _code(exc) if isinstance(exc, ClientError) else type(exc).__name__
    return StoreError(f"S3 audit store: {doing} {what!r} failed ({cause})")
