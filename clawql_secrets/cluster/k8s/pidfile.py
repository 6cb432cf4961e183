"""``python -m clawql_secrets.cluster.k8s.pidfile FILE -- COMMAND…``: write our pid, exec.

A service that reads its certificate only at start (``audit ingest``) is
reloaded by the renewer beside it with SIGTERM to the pid in ``FILE`` (the pod
shares one process namespace); ``exec`` keeps the pid, so the file names the
service itself. Kubernetes then starts it again with the new certificate.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) < 3 or args[1] != "--":
        print(
            "usage: python -m clawql_secrets.cluster.k8s.pidfile FILE -- COMMAND…", file=sys.stderr
        )
        return 2
    path, command = Path(args[0]), args[2:]
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(f"{os.getpid()}\n", encoding="ascii")
    os.replace(tmp, path)
    os.execvp(command[0], command)  # noqa: S606 (the pod's own command line)


if __name__ == "__main__":
    sys.exit(main())
