"""The I/O edge of the scanner: files and directories, process environments, live OpenBao.

Everything here reads and hands text or metadata to the pure modules; what
cannot be read is recorded as ``Skipped`` (incomplete), never dropped.
Only this project's errors leave this module.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping
from pathlib import Path, PurePosixPath
from typing import Any

from clawql_secrets.cluster.client import OpenBaoClient
from clawql_secrets.errors import ConfigError, InputError, OpenBaoError
from clawql_secrets.scan import bootstrap, kube, kv
from clawql_secrets.scan.detect import Detector, Hit
from clawql_secrets.scan.model import (
    BOOTSTRAP,
    SECRET,
    Finding,
    Location,
    ScanResult,
    Skipped,
)

_BINARY_PROBE = 8192
_AGE_HEADER = b"age-encryption.org/v1\n"
_K8S_ENV = re.compile(r"name[\"']?[ \t]*:[\s\S]{0,200}?value[\"']?[ \t]*:")
_K8S_SECRET = re.compile(r"kind[\"']?[ \t]*:[ \t]*[\"']?(?:Secret|List|SecretList)\b")


# -- files ---------------------------------------------------------------------


def scan_paths(paths: Iterable[Path], detector: Detector, *, uid: int | None = None) -> ScanResult:
    """Scan files and directory trees (symlinks are not followed)."""
    config = detector.config
    expected_uid = os.geteuid() if uid is None else uid
    result = ScanResult()
    for root in paths:
        if not os.path.lexists(root):
            raise InputError(f"cannot scan {root}: no such file or directory")
        if not root.is_dir() or root.is_symlink():
            result.extend(scan_file(root, detector, expected_uid))
            continue

        def onerror(exc: OSError) -> None:
            result.skipped.append(
                Skipped(str(exc.filename), f"cannot list ({exc.strerror})", incomplete=True)
            )

        for dirpath, dirnames, filenames in os.walk(root, onerror=onerror):
            dirnames[:] = sorted(d for d in dirnames if d not in config.exclude_dirs)
            for name in sorted(filenames):
                result.extend(scan_file(Path(dirpath) / name, detector, expected_uid))
    return result


def scan_file(path: Path, detector: Detector, expected_uid: int) -> ScanResult:
    result = ScanResult()
    display = str(path)
    item = bootstrap.match(PurePosixPath(path.absolute().as_posix()))
    try:
        st = path.lstat()
        if item is not None:
            facts = bootstrap.FileFacts(st.st_mode, st.st_uid, path.parent.stat().st_mode)
            result.scanned = 1
            result.findings.append(
                Finding(
                    BOOTSTRAP,
                    item.kind,
                    Location("file", display),
                    item.description,
                    f"bootstrap:{item.kind}",
                    bootstrap.protection_problems(facts, expected_uid),
                )
            )
            return result
        if path.is_symlink():
            result.skipped.append(Skipped(display, "symlink (not followed)", incomplete=False))
            return result
        if not path.is_file():
            return result
        with path.open("rb") as fh:
            data = fh.read(detector.config.max_file_bytes + 1)
    except OSError as exc:
        result.skipped.append(
            Skipped(display, f"cannot read ({exc.strerror or type(exc).__name__})", True)
        )
        return result
    kind = content_kind(data)
    if kind is not None:
        result.skipped.append(Skipped(display, kind, incomplete=False))
        return result
    if len(data) > detector.config.max_file_bytes:
        data = data[: detector.config.max_file_bytes]
        result.skipped.append(
            Skipped(display, f"scanned first {len(data)} bytes only", incomplete=True)
        )
    result.scanned = 1
    text = data.decode("utf-8", errors="replace")
    for hit in text_hits(text, detector):
        result.findings.append(
            Finding(
                SECRET,
                hit.kind,
                Location("file", display, hit.line, hit.column),
                hit.preview,
                hit.rule,
            )
        )
    return result


def content_kind(data: bytes) -> str | None:
    """``binary`` or ``encrypted (age)`` for content not scanned as text; None for text."""
    if data.startswith(_AGE_HEADER):
        # Recipient stanzas are random base64 (ephemeral keys, wrapped file keys).
        return "encrypted (age)"
    probe = data[:_BINARY_PROBE]
    if b"\0" in probe:
        return "binary"
    text = probe.decode("utf-8", errors="replace")
    if text and text.count("\ufffd") * 10 > len(text):
        return "binary"
    return None


def text_hits(text: str, detector: Detector) -> list[Hit]:
    """Line hits, plus decoded ``Secret`` entries and paired container env; one per line, kind."""
    hits = detector.scan_text(text)
    entries: list[tuple[kube.SecretEntry, bool]] = []
    if _K8S_SECRET.search(text):
        entries.extend((e, True) for e in kube.secret_entries(text))
    if _K8S_ENV.search(text):
        entries.extend((e, False) for e in kube.env_entries(text))
    # Where structure pairs a name with its value, its verdict replaces the line scan's
    # (which sees base64, or a value without its name).
    covered = {n for e, _ in entries for n in range(e.line, e.end_line + 1)}
    hits = [h for h in hits if h.line not in covered]
    for entry, storage in entries:
        for hit in detector.scan_value(
            entry.key, entry.value, line=entry.line, column=entry.column, secret_storage=storage
        ):
            hits.append(Hit(hit.line, hit.column, hit.kind, f"k8s>{hit.rule}", hit.preview))
    seen: set[tuple[int, str]] = set()
    out = []
    for hit in sorted(hits, key=lambda h: (h.line, h.column, h.kind)):
        if (hit.line, hit.kind) not in seen:
            seen.add((hit.line, hit.kind))
            out.append(hit)
    return out


# -- process environments ----------------------------------------------------


def read_environ(pid: int) -> dict[str, str]:
    """The environment a process started with (``/proc/<pid>/environ``)."""
    path = Path(f"/proc/{pid}/environ")
    try:
        raw = path.read_bytes()
    except FileNotFoundError as exc:
        raise InputError(f"no process {pid}") from exc
    except PermissionError as exc:
        raise ConfigError(
            f"cannot read the environment of process {pid}: permission denied",
            fix="run the scan as the process's owner (or root); ptrace rules apply",
        ) from exc
    except OSError as exc:
        raise InputError(f"cannot read the environment of process {pid} ({exc.strerror})") from exc
    env: dict[str, str] = {}
    for item in raw.split(b"\0"):
        if not item:
            continue
        name, _, value = item.decode("utf-8", errors="replace").partition("=")
        env[name] = value
    return env


def scan_environment(env: Mapping[str, str], label: str, detector: Detector) -> ScanResult:
    """Every variable, as ``NAME=value`` (so name-based rules apply). Pure."""
    result = ScanResult()
    for i, (name, value) in enumerate(sorted(env.items())):
        result.scanned += 1
        hits = detector.scan_text(f"{name}={value}")
        if not hits:
            continue
        # A name is not a secret, unless it has the shape of one.
        shown = name if not detector.scan_text(name) else f"<variable #{i}>"
        for hit in hits:
            result.findings.append(
                Finding(
                    SECRET, hit.kind, Location("env", f"{label}:{shown}"), hit.preview, hit.rule
                )
            )
    return result


# -- live OpenBao ---------------------------------------------------------------


class KVSource:
    """Lists a KV v2 mount and reads metadata (never data) as one identity."""

    def __init__(self, client: OpenBaoClient, token: str, mount: str = "secret") -> None:
        if not re.fullmatch(r"[A-Za-z0-9_.-]+(?:/[A-Za-z0-9_.-]+)*", mount) or ".." in mount:
            raise InputError(f"invalid KV mount name {mount!r}")
        self._client = client
        self._token = token
        self.mount = mount

    def list_keys(self, prefix: str) -> list[str] | None:
        try:
            resp = self._client.request(
                "LIST", f"{self.mount}/metadata/{prefix}", token=self._token
            )
        except OpenBaoError as exc:
            if exc.status == 404:
                return []
            if exc.status == 403:
                return None
            raise
        keys = (resp.get("data") or {}).get("keys") or []
        return [str(k) for k in keys]

    def read_metadata(self, path: str) -> dict[str, Any] | None:
        try:
            resp = self._client.request("GET", f"{self.mount}/metadata/{path}", token=self._token)
        except OpenBaoError as exc:
            if exc.status == 403:
                return None
            if exc.status == 404:
                return {}
            raise
        data = resp.get("data")
        return data if isinstance(data, dict) else {}


def scan_kv(source: KVSource, allow: kv.AllowList, prefix: str = "") -> ScanResult:
    walked = kv.walk(source.list_keys, source.read_metadata, prefix)
    return kv_result(walked, allow, source.mount)


def kv_result(walked: kv.KVWalk, allow: kv.AllowList, mount: str) -> ScanResult:
    """Each live secret off the allow-list is a static credential. Pure."""
    result = ScanResult(scanned=len(walked.secrets))
    for path, version in walked.secrets:
        if allow.allows(path):
            continue
        result.findings.append(
            Finding(
                SECRET,
                "static_kv_secret",
                Location("kv", f"{mount}/{path}"),
                f"version {version} (values not read)",
                "kv:not-allow-listed",
            )
        )
    for denied in walked.denied:
        result.skipped.append(
            Skipped(f"kv:{mount}/{denied.lstrip('/')}", "permission denied for this identity", True)
        )
    if walked.truncated:
        result.skipped.append(
            Skipped(f"kv:{mount}", f"stopped after {kv.MAX_SECRETS} secrets", True)
        )
    return result
