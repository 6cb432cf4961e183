"""The S3 Object Lock WORM store against a moto server on loopback."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from typing import Any

import pytest
from botocore.exceptions import ClientError

from clawql_secrets.audit import verify
from clawql_secrets.audit.checkpoint import Ed25519Signer
from clawql_secrets.audit.errors import MissingObjectError, StoreError, WriteOnceError
from clawql_secrets.audit.log import AuditLog
from clawql_secrets.audit.s3store import (
    COMPLIANCE,
    S3Location,
    S3WormStore,
    make_client,
)
from clawql_secrets.errors import ConfigError, InputError
from tests.audit.conftest import entry
from tests.audit.moto_server import ENV, MotoS3


@pytest.fixture(scope="module")
def moto() -> Iterator[MotoS3]:
    server = MotoS3()
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def s3(moto: MotoS3) -> Any:
    return moto.client()


@pytest.fixture
def bucket(moto: MotoS3) -> str:
    return moto.new_bucket()


@pytest.fixture
def store(s3: Any, bucket: str) -> S3WormStore:
    worm = S3WormStore(s3, S3Location(bucket, "audit/"), retention_days=2)
    worm.check_bucket()
    return worm


def test_put_get_list_round_trip(store: S3WormStore) -> None:
    store.put_once("segments/n1/a.jsonl", b"one\n")
    store.put_once("segments/n1/b.jsonl", b"two\n")
    store.put_once("checkpoints/n1/c.txt", b"cp\n")
    assert store.get("segments/n1/a.jsonl") == b"one\n"
    assert store.list("segments/") == ["segments/n1/a.jsonl", "segments/n1/b.jsonl"]
    assert store.list("") == [
        "checkpoints/n1/c.txt",
        "segments/n1/a.jsonl",
        "segments/n1/b.jsonl",
    ]


def test_objects_are_compliance_locked_with_retain_until(
    store: S3WormStore, s3: Any, bucket: str
) -> None:
    before = dt.datetime.now(dt.UTC)
    store.put_once("segments/n1/a.jsonl", b"one\n")
    head = s3.head_object(Bucket=bucket, Key="audit/segments/n1/a.jsonl")
    assert head["ObjectLockMode"] == COMPLIANCE
    until = head["ObjectLockRetainUntilDate"]
    assert before + dt.timedelta(days=2) - dt.timedelta(seconds=2) <= until
    assert until <= before + dt.timedelta(days=2, seconds=60)


def test_deleting_a_locked_version_is_refused(store: S3WormStore, s3: Any, bucket: str) -> None:
    store.put_once("segments/n1/a.jsonl", b"one\n")
    key = "audit/segments/n1/a.jsonl"
    version = s3.head_object(Bucket=bucket, Key=key)["VersionId"]
    with pytest.raises(ClientError) as refused:
        s3.delete_object(Bucket=bucket, Key=key, VersionId=version)
    assert refused.value.response["Error"]["Code"] == "AccessDenied"
    # A delete marker is allowed by S3, but hides nothing from the store.
    s3.delete_object(Bucket=bucket, Key=key)
    assert store.get("segments/n1/a.jsonl") == b"one\n"
    assert store.list("segments/") == ["segments/n1/a.jsonl"]


def test_rewriting_same_bytes_is_a_no_op(store: S3WormStore, s3: Any, bucket: str) -> None:
    store.put_once("checkpoints/n1/c.txt", b"cp\n")
    store.put_once("checkpoints/n1/c.txt", b"cp\n")
    versions = s3.list_object_versions(Bucket=bucket, Prefix="audit/checkpoints/")["Versions"]
    assert len(versions) == 1


def test_overwrite_with_other_bytes_is_refused(store: S3WormStore) -> None:
    store.put_once("checkpoints/n1/c.txt", b"cp\n")
    with pytest.raises(WriteOnceError, match="refusing to overwrite"):
        store.put_once("checkpoints/n1/c.txt", b"forged\n")
    assert store.get("checkpoints/n1/c.txt") == b"cp\n"


def test_if_none_match_refuses_a_racing_writer(store: S3WormStore, s3: Any, bucket: str) -> None:
    store.put_once("checkpoints/n1/c.txt", b"cp\n")
    with pytest.raises(ClientError) as refused:
        s3.put_object(Bucket=bucket, Key="audit/checkpoints/n1/c.txt", Body=b"x", IfNoneMatch="*")
    assert refused.value.response["Error"]["Code"] == "PreconditionFailed"


def test_an_overwrite_behind_our_back_is_ignored_by_reads_and_refused_by_writes(
    store: S3WormStore, s3: Any, bucket: str
) -> None:
    store.put_once("checkpoints/n1/c.txt", b"cp\n")
    # Compliance mode protects versions, not keys: a new version can be added.
    s3.put_object(Bucket=bucket, Key="audit/checkpoints/n1/c.txt", Body=b"forged\n")
    assert store.get("checkpoints/n1/c.txt") == b"cp\n"
    with pytest.raises(WriteOnceError, match="2 versions"):
        store.put_once("checkpoints/n1/c.txt", b"cp\n")


def test_missing_object(store: S3WormStore) -> None:
    with pytest.raises(MissingObjectError):
        store.get("segments/n1/none.jsonl")


@pytest.mark.parametrize("name", ["../x", "a//b", ".hidden", "a/./b", ""])
def test_invalid_names_are_refused(store: S3WormStore, name: str) -> None:
    with pytest.raises(InputError):
        store.put_once(name, b"x")


def test_bucket_without_object_lock_is_refused(moto: MotoS3, s3: Any) -> None:
    plain = moto.new_bucket(object_lock=False)
    with pytest.raises(ConfigError, match="Object Lock"):
        S3WormStore(s3, S3Location(plain)).check_bucket()


def test_unreachable_store_is_a_store_error(moto: MotoS3) -> None:
    client = make_client(
        endpoint_url="http://127.0.0.1:9", connect_timeout=0.5, read_timeout=0.5, max_attempts=1
    )
    down = S3WormStore(client, S3Location("audit-nowhere"))
    with pytest.raises(StoreError, match="failed"):
        down.put_once("segments/n1/a.jsonl", b"x\n")


@pytest.mark.parametrize(
    ("uri", "bucket", "prefix"),
    [
        ("s3://b-1", "b-1", ""),
        ("s3://b-1/", "b-1", ""),
        ("s3://b-1/audit/prod", "b-1", "audit/prod/"),
    ],
)
def test_location_parse(uri: str, bucket: str, prefix: str) -> None:
    assert S3Location.parse(uri) == S3Location(bucket, prefix)


@pytest.mark.parametrize("uri", ["http://b/x", "s3:///x", "s3://b/../x", "s3://b/x?y=1"])
def test_location_parse_refuses(uri: str) -> None:
    with pytest.raises(InputError):
        S3Location.parse(uri)


def test_audit_log_on_s3_verifies(
    moto: MotoS3, bucket: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    for k, v in ENV.items():
        monkeypatch.setenv(k, v)
    worm = S3WormStore(make_client(endpoint_url=moto.endpoint), S3Location(bucket, "log"))
    signer = Ed25519Signer.generate("clawql.test/s3")
    log = AuditLog(worm, signer)
    for i in range(5):
        log.append("n1", entry("n1", i))
    log.checkpoint("n1")
    for i in range(5, 8):
        log.append("n1", entry("n1", i))
    log.checkpoint("n1")
    verify.verify(worm, signer.verifier_key())
    resumed = AuditLog(worm, signer).stream("n1")
    assert resumed.size == 8
