"""The ``clawql-secrets`` command line.

Each capability package contributes its sub-commands through a
``commands.register(subparsers)`` function; handlers take the parsed
``argparse.Namespace`` and return an exit code. Errors are caught once, here:
a ``ClawQLError`` prints its diagnostics and exits 1; anything else is a bug
and exits 2 with its type only, never a value that might be a secret.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence

from clawql_secrets import __version__
from clawql_secrets.errors import ClawQLError

Handler = Callable[[argparse.Namespace], int]


def build_parser() -> argparse.ArgumentParser:
    from clawql_secrets.audit import commands as audit_commands
    from clawql_secrets.certs import commands as certs_commands
    from clawql_secrets.cluster import commands as cluster_commands
    from clawql_secrets.demo import commands as demo_commands
    from clawql_secrets.gateway import commands as gateway_commands
    from clawql_secrets.hsm import commands as hsm_commands
    from clawql_secrets.policy import commands as policy_commands
    from clawql_secrets.provision import commands as provision_commands
    from clawql_secrets.scan import commands as scan_commands

    parser = argparse.ArgumentParser(
        prog="clawql-secrets",
        description="The secrets plane of ClawQL: OpenBao cluster, HSM bridge, audit.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    cluster_commands.register(sub)
    cluster_commands.register_breakglass(sub)
    hsm_commands.register(sub)
    audit_commands.register(sub)
    scan_commands.register(sub)
    provision_commands.register(sub)
    policy_commands.register(sub)
    gateway_commands.register(sub)
    demo_commands.register(sub)
    certs_commands.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    handler: Handler = args.func
    try:
        return handler(args)
    except ClawQLError as exc:
        print(f"error: {exc.diagnostics()}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        # A bug. Its message might quote a value (even a secret): show the type only,
        # unless the operator asked for the traceback.
        if os.environ.get("CLAWQL_DEBUG"):
            raise
        print(
            f"internal error ({type(exc).__name__}); rerun with CLAWQL_DEBUG=1 for details",
            file=sys.stderr,
        )
        return 2


if __name__ == "__main__":
    sys.exit(main())
