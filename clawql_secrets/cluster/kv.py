"""The KV v2 mount of injected secrets: its name, its version limit, and writing its config.

Bootstrap creates the mount and sets the limit on a new cluster; ``provision
apply`` keeps it (and repairs an older cluster). One version per key on the whole
mount: a write permanently deletes the value it replaces, so a rotated (leaked)
secret cannot be read back with ``?version=``. Not a setting: any larger number
keeps rotated values readable by their agent.
"""

from __future__ import annotations

import time
from collections.abc import Mapping

from clawql_secrets.cluster.client import OpenBaoClient
from clawql_secrets.errors import OpenBaoError

KV_MOUNT = "secret"
KV_MAX_VERSIONS = 1
_UPGRADING = "Upgrading from non-versioned to versioned data"


def write_config(
    client: OpenBaoClient, token: str, body: Mapping[str, object], *, wait: float = 30.0
) -> None:
    """Write ``<KV_MOUNT>/config``, waiting out the storage upgrade of a new mount.

    For a moment after it is enabled a KV v2 mount answers every request with
    400 "Upgrading from non-versioned to versioned data"; the client does not
    retry a 400, so this does, for that answer only, until ``wait`` has passed.
    """
    deadline = time.monotonic() + wait
    while True:
        left = max(0.0, deadline - time.monotonic())
        try:
            client.request("POST", f"{KV_MOUNT}/config", body=body, token=token, retry_for=left)
            return
        except OpenBaoError as exc:
            if exc.status != 400 or _UPGRADING not in str(exc) or time.monotonic() >= deadline:
                raise
        time.sleep(0.2)
