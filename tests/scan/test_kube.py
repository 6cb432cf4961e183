"""Kubernetes structure: Secret entries decoded, container env paired with its name."""

from __future__ import annotations

import base64

from clawql_secrets.scan import kube, sources
from clawql_secrets.scan.detect import Detector
from tests.scan.corpus import rand


def b64(s: str) -> str:
    return base64.b64encode(s.encode()).decode()


def test_secret_data_is_decoded_with_its_line() -> None:
    text = f"kind: Secret\ndata:\n  a: {b64('one')}\nstringData:\n  b: two\n"
    entries = kube.secret_entries(text)
    assert [(e.line, e.key, e.value) for e in entries] == [(3, "a", "one"), (5, "b", "two")]


def test_secret_inside_a_list_is_found() -> None:
    text = f"kind: List\nitems:\n  - kind: Secret\n    data:\n      k: {b64('v')}\n"
    assert [(e.key, e.value) for e in kube.secret_entries(text)] == [("k", "v")]


def test_configmap_is_not_a_secret() -> None:
    assert kube.secret_entries(f"kind: ConfigMap\ndata:\n  k: {b64('v')}\n") == []


def test_unrendered_template_yields_nothing_but_does_not_fail() -> None:
    assert kube.secret_entries("kind: Secret\ndata:\n  {{ .Values.x }}: [\n") == []


def test_env_value_is_judged_under_its_name() -> None:
    secret = rand(12)
    text = (
        "kind: Deployment\nspec:\n  containers:\n    - env:\n"
        f"        - name: DB_PASSWORD\n          value: {secret}\n"
        "        - name: LOG_LEVEL\n          value: debug\n"
    )
    hits = sources.text_hits(text, Detector())
    assert [(h.line, h.kind) for h in hits] == [(6, "secret_assignment")]


def test_secret_data_raw_base64_line_is_replaced_by_the_decoded_verdict() -> None:
    # Raw "password: <base64 of ${REF}>" would match the recognizer; decoded it is a reference.
    text = f"kind: Secret\ndata:\n  password: {b64('${DB_PASSWORD}')}\n"
    assert sources.text_hits(text, Detector()) == []
