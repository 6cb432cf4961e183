"""Where the local stack keeps things, and which ports it uses.

One ``StackSettings`` value describes a stack; every path is derived from the
data directory so that two stacks (a developer's and a test run's) never share
a file. Nothing here does I/O.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from clawql_secrets.errors import ConfigError

NODE_IDS = ("n1", "n2", "n3")
SEAL_MOUNT = "transit"
SEAL_KEY = "clawql-unseal"
NODE_URI_PREFIX = "spiffe://clawql.local/openbao/"
LOOPBACK = "127.0.0.1"
WORKLOAD_ISSUER_URL = "https://issuer.clawql.local"  # the local stack's workload issuer


@dataclass(frozen=True)
class NodePorts:
    api: int
    cluster: int


@dataclass(frozen=True)
class StackSettings:
    """The knobs of a local stack.

    Ports: node i uses base+10*i (API) and +1 (cluster); the audit witness
    base+30; the HSM bridge's metrics base+35; the session registry's Redis
    (TLS only) base+40; the audit shipper's metrics base+60; the gateway
    base+70; the demo's HTTPS destination base+80 (bound only while ``demo``
    runs); Prometheus base+90; the bridge its own port.
    """

    data_dir: Path
    base_port: int = 18200
    bridge_port: int = 18300
    host: str = LOOPBACK
    recovery_shares: int = 5
    recovery_threshold: int = 3
    lib_path: Path = field(default=Path("/usr/lib/softhsm/libsofthsm2.so"))

    def __post_init__(self) -> None:
        if not self.host.startswith("127."):
            raise ConfigError(
                f"the local stack binds loopback addresses only, not {self.host!r}",
                fix="use an address in 127.0.0.0/8",
            )
        ports = [p for n in NODE_IDS for p in self.node_ports(n).__dict__.values()]
        ports += [
            self.bridge_port,
            self.bridge_metrics_port,
            self.witness_port,
            self.registry_port,
            self.audit_metrics_port,
            self.gateway_port,
            self.demo_target_port,
            self.prometheus_port,
        ]
        if len(set(ports)) != len(ports) or not all(1024 <= p < 65536 for p in ports):
            raise ConfigError(
                f"ports overlap or are out of range (base {self.base_port}, "
                f"bridge {self.bridge_port})",
                fix="choose a base port with 91 free ports above it and a distinct bridge port",
            )
        if not 1 <= self.recovery_threshold <= self.recovery_shares:
            raise ConfigError("recovery threshold must be between 1 and the number of shares")

    def node_ports(self, node_id: str) -> NodePorts:
        i = NODE_IDS.index(node_id)
        return NodePorts(api=self.base_port + 10 * i, cluster=self.base_port + 10 * i + 1)

    def api_addr(self, node_id: str) -> str:
        return f"https://{self.host}:{self.node_ports(node_id).api}"

    @property
    def witness_port(self) -> int:
        """The audit log's witness, its own process with its own key (base + 30)."""
        return self.base_port + 30

    @property
    def witness_addr(self) -> str:
        return f"http://{self.host}:{self.witness_port}"

    @property
    def witness_dir(self) -> Path:
        """The witness's key (0600), configuration and cosigned-state directory."""
        return self.data_dir / "witness"

    @property
    def bridge_metrics_port(self) -> int:
        """The HSM bridge's Prometheus endpoint, plain HTTP on its own listener (base + 35)."""
        return self.base_port + 35

    @property
    def registry_port(self) -> int:
        """The gateway's session registry, a Redis that speaks TLS only (base + 40)."""
        return self.base_port + 40

    @property
    def audit_metrics_port(self) -> int:
        """The audit shipper's Prometheus endpoint (base + 60)."""
        return self.base_port + 60

    @property
    def gateway_port(self) -> int:
        """The agent-facing gateway (base + 70)."""
        return self.base_port + 70

    @property
    def demo_target_port(self) -> int:
        """The demo's HTTPS destination for ``http.request`` (base + 80)."""
        return self.base_port + 80

    @property
    def prometheus_port(self) -> int:
        """The stack's Prometheus (base + 90): scrapes the shipper, the gateway, the bridge."""
        return self.base_port + 90

    @property
    def prometheus_addr(self) -> str:
        return f"http://{self.host}:{self.prometheus_port}"

    @property
    def prometheus_dir(self) -> Path:
        """Its configuration, the alert rules it loads, and its TSDB (``data/``)."""
        return self.data_dir / "prometheus"

    @property
    def gateway_addr(self) -> str:
        return f"http://{self.host}:{self.gateway_port}"

    @property
    def gateway_config(self) -> Path:
        return self.data_dir / "gateway" / "gateway.json"

    @property
    def bridge_addr(self) -> str:
        return f"https://{self.host}:{self.bridge_port}"

    # -- paths -------------------------------------------------------------
    @property
    def hsm_dir(self) -> Path:
        return self.data_dir / "hsm"

    @property
    def tls_dir(self) -> Path:
        return self.data_dir / "tls"

    @property
    def node_ca_dir(self) -> Path:
        """CA of the nodes' listeners (clients verify OpenBao with it)."""
        return self.tls_dir / "openbao-ca"

    @property
    def seal_ca_dir(self) -> Path:
        """CA trusted by the HSM bridge: it signs only the nodes' seal-client certs."""
        return self.tls_dir / "seal-client-ca"

    @property
    def bridge_tls_dir(self) -> Path:
        return self.tls_dir / "bridge"

    @property
    def registry_ca_dir(self) -> Path:
        """CA of the registry Redis's server certificate (the gateway and OpenBao trust it)."""
        return self.tls_dir / "registry-ca"

    @property
    def registry_dir(self) -> Path:
        """The registry Redis: its configuration (no secret), certificate and data."""
        return self.data_dir / "registry"

    @property
    def demo_target_ca_dir(self) -> Path:
        """CA of the demo destination's server certificate (the gateway trusts it)."""
        return self.tls_dir / "demo-target-ca"

    def node_dir(self, node_id: str) -> Path:
        return self.data_dir / "nodes" / node_id

    def node_config(self, node_id: str) -> Path:
        return self.node_dir(node_id) / "node.hcl"

    def audit_log(self, node_id: str) -> Path:
        return self.node_dir(node_id) / "audit" / "audit.log"

    @property
    def bridge_config(self) -> Path:
        return self.hsm_dir / "bridge.json"

    @property
    def audit_dir(self) -> Path:
        return self.data_dir / "audit"

    @property
    def shipper_config(self) -> Path:
        return self.audit_dir / "ship.json"

    @property
    def holders_dir(self) -> Path:
        return self.data_dir / "holders"

    @property
    def recovery_dir(self) -> Path:
        return self.data_dir / "recovery"

    @property
    def issuer_dir(self) -> Path:
        return self.data_dir / "issuer"

    @property
    def run_dir(self) -> Path:
        return self.data_dir / "run"

    @property
    def log_dir(self) -> Path:
        return self.data_dir / "logs"

    @property
    def pid_file(self) -> Path:
        return self.run_dir / "supervisor.pid"

    @property
    def state_file(self) -> Path:
        return self.run_dir / "state.json"

    @property
    def settings_file(self) -> Path:
        return self.data_dir / "stack.json"

    def hold_file(self, name: str) -> Path:
        """A file whose presence tells the supervisor to keep ``name`` stopped."""
        return self.run_dir / f"{name}.hold"
