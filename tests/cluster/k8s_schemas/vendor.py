"""Regenerate the vendored CRD schemas from prometheus-operator's CRD files.

    python tests/cluster/k8s_schemas/vendor.py VERSION CRD.yaml…

e.g. with the two files of ``example/prometheus-operator-crd/`` at tag
``v<VERSION>`` (monitoring.coreos.com_servicemonitors.yaml and
monitoring.coreos.com_prometheusrules.yaml). Writes ``<kind>-monitoring-v1.json``
beside this file: the ``openAPIV3Schema`` of the served ``v1`` version, byte
for byte as this script prints it (sorted keys, two-space indent), with the
source recorded under ``x-clawql-source``. Run by hand when upgrading; tests
never download anything.
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent
SOURCE = (
    "https://github.com/prometheus-operator/prometheus-operator/blob/v{version}/"
    "example/prometheus-operator-crd/{name}"
)


def main(argv: list[str]) -> int:
    version, paths = argv[0], [Path(p) for p in argv[1:]]
    for path in paths:
        raw = path.read_bytes()
        crd = yaml.safe_load(raw)
        (served,) = [v for v in crd["spec"]["versions"] if v["name"] == "v1"]
        schema = dict(served["schema"]["openAPIV3Schema"])
        schema["x-clawql-source"] = {
            "url": SOURCE.format(version=version, name=path.name),
            "version": version,
            "sha256": hashlib.sha256(raw).hexdigest(),
            "license": "Apache-2.0 (prometheus-operator authors)",
        }
        kind = crd["spec"]["names"]["kind"].lower()
        out = HERE / f"{kind}-monitoring-v1.json"
        out.write_text(json.dumps(schema, indent=2, sort_keys=True) + "\n")
        print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
