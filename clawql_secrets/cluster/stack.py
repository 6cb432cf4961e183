"""``up``, ``down`` and ``status`` of the local stack.

``up`` prepares everything that must exist before a process starts (CAs and
certificates, the SoftHSM2 token and its first key version, the bridge's
settings, the nodes' HCL), starts the supervisor daemon, initialises the
cluster once, and waits until three voters are unsealed. On an existing data
directory it only restarts: the nodes auto-unseal through the bridge.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import signal
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx

from clawql_secrets import holders
from clawql_secrets.audit.ship_config import load_config, stack_config, write_config
from clawql_secrets.audit.stream_status import BAD_STATES, observe
from clawql_secrets.cluster import bootstrap, hcl, prometheus, redis_registry
from clawql_secrets.cluster.client import OpenBaoClient
from clawql_secrets.cluster.layout import (
    LOOPBACK,
    NODE_IDS,
    NODE_URI_PREFIX,
    SEAL_KEY,
    SEAL_MOUNT,
    WORKLOAD_ISSUER_URL,
    StackSettings,
)
from clawql_secrets.cluster.supervisor import (
    BRIDGE,
    GATEWAY,
    PROMETHEUS,
    REGISTRY,
    SHIPPER,
    WITNESS,
    read_state,
)
from clawql_secrets.errors import ClawQLError, ConfigError, ProcessError
from clawql_secrets.gateway.localstack import stack_gateway_config
from clawql_secrets.hsm import softhsm
from clawql_secrets.hsm.bridge import BridgeSettings, open_token
from clawql_secrets.issuer import LocalIssuer
from clawql_secrets.tlsca import LocalCA
from clawql_secrets.witness import localstack as witness_localstack

ISSUER_URL = WORKLOAD_ISSUER_URL
# Every 10 s on a laptop (the demo waits for one); production's default is 60 s.
LOCAL_CHECKPOINT_SECONDS = 10.0
Progress = Callable[[str], None]


def _quiet(_: str) -> None:
    return None


# -- settings persistence ----------------------------------------------------
def save_settings(settings: StackSettings) -> None:
    data = {k: str(v) if isinstance(v, Path) else v for k, v in asdict(settings).items()}
    settings.data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    settings.settings_file.write_text(json.dumps(data, indent=2))


def load_settings(data_dir: Path, **overrides: Any) -> StackSettings:
    """Settings saved by the first ``up`` of this data dir; flags apply on a new one."""
    path = data_dir / "stack.json"
    if not path.exists():
        return StackSettings(data_dir=data_dir, **{k: v for k, v in overrides.items() if v})
    try:
        raw = json.loads(path.read_text())
        raw["data_dir"] = data_dir
        raw["lib_path"] = Path(raw["lib_path"])
        return StackSettings(**raw)
    except (ValueError, TypeError, KeyError) as exc:
        raise ConfigError(
            f"{path} is not a valid stack settings file ({type(exc).__name__})",
            fix=f"restore it, or remove {data_dir} to start a new stack",
        ) from exc


# -- ports -------------------------------------------------------------------
def _port_free(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def free_settings(data_dir: Path, host: str = LOOPBACK) -> StackSettings:
    """Settings whose node and bridge ports are all free now (tests, benchmarks)."""
    rng = random.Random()
    for _ in range(200):
        base = rng.randrange(20000, 45000, 100)
        candidate = StackSettings(
            data_dir=data_dir, base_port=base, bridge_port=base + 50, host=host
        )
        if all(_port_free(host, p) for p in _ports(candidate)):
            return candidate
    raise ConfigError("no free range of loopback ports found between 20000 and 45000")


def _ports(settings: StackSettings) -> list[int]:
    ports = [settings.bridge_port, settings.audit_metrics_port, settings.gateway_port]
    ports.append(settings.bridge_metrics_port)
    ports.append(settings.demo_target_port)  # bound by `demo` only, but kept free for it
    ports.append(settings.prometheus_port)
    ports.append(settings.registry_port)
    for n in NODE_IDS:
        p = settings.node_ports(n)
        ports += [p.api, p.cluster]
    return ports


# -- preparation -------------------------------------------------------------
def _check_ports(settings: StackSettings) -> None:
    for port in _ports(settings):
        if not _port_free(settings.host, port):
            raise ConfigError(
                f"port {settings.host}:{port} is in use by another process",
                fix="stop that process, or choose other ports "
                "(clawql-secrets up --base-port N --bridge-port M on a new data dir)",
            )


def prepare(settings: StackSettings) -> LocalIssuer:
    """Create or refresh every file the processes need. Idempotent."""
    s = settings
    for d in (s.data_dir, s.run_dir, s.log_dir):
        d.mkdir(parents=True, exist_ok=True, mode=0o700)
    node_ca = LocalCA.load_or_create(s.node_ca_dir, "ClawQL local OpenBao CA")
    seal_ca = LocalCA.load_or_create(s.seal_ca_dir, "ClawQL local seal-client CA")
    bridge_tls = node_ca.issue(
        s.bridge_tls_dir, "bridge", dns=("localhost",), ips=(s.host,), server=True
    )
    setup = softhsm.ensure_token(s.hsm_dir, label="clawql", lib_path=s.lib_path)
    bridge = BridgeSettings(
        lib_path=setup.lib_path,
        softhsm_conf=setup.conf_path,
        token_label=setup.token_label,
        pin_file=setup.pin_file,
        key_name=SEAL_KEY,
        mount=SEAL_MOUNT,
        host=s.host,
        port=s.bridge_port,
        tls_cert=bridge_tls.cert_path,
        tls_key=bridge_tls.key_path,
        client_ca=seal_ca.cert_path,
        allowed_uri_prefix=NODE_URI_PREFIX,
        metrics_host=s.host,  # plain HTTP, loopback: the stack's Prometheus scrapes it
        metrics_port=s.bridge_metrics_port,
    )
    s.bridge_config.write_text(bridge.model_dump_json(indent=2))
    with open_token(bridge) as token:
        if not token.versions():
            # Generated inside the token, never extractable. `hsm ceremony` adds an
            # escrowed version for break-glass when the operator wants one.
            token.generate_version()
    peers = tuple(s.api_addr(n) for n in NODE_IDS)
    for node in NODE_IDS:
        d = s.node_dir(node)
        for sub in ("raft", "audit", "tls"):
            (d / sub).mkdir(parents=True, exist_ok=True, mode=0o700)
        listener = node_ca.issue(
            d / "tls", "listener", dns=("localhost",), ips=(s.host,), server=True, client=True
        )
        seal_client = seal_ca.issue(
            d / "tls", "seal-client", uris=(NODE_URI_PREFIX + node,), client=True
        )
        ports = s.node_ports(node)
        spec = hcl.NodeSpec(
            node_id=node,
            api_addr=s.api_addr(node),
            cluster_addr=f"https://{s.host}:{ports.cluster}",
            listen_address=f"{s.host}:{ports.api}",
            cluster_listen_address=f"{s.host}:{ports.cluster}",
            raft_path=d / "raft",
            audit_path=Path("audit/audit.log"),
            listener_tls=hcl.TLSFiles(listener.cert_path, listener.key_path, node_ca.cert_path),
            peers=peers,
            seal=hcl.TransitSeal(
                address=s.bridge_addr,
                mount_path=SEAL_MOUNT,
                key_name=SEAL_KEY,
                client=hcl.TLSFiles(seal_client.cert_path, seal_client.key_path, node_ca.cert_path),
            ),
        )
        s.node_config(node).write_text(hcl.render_node(spec))
    s.audit_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    # The witness reads the log's keys from the shipper's verifier key file.
    witness = witness_localstack.prepare(s, s.audit_dir / "verifier.txt")
    write_config(
        stack_config(
            s.data_dir,
            NODE_IDS,
            metrics_port=s.audit_metrics_port,
            interval_seconds=LOCAL_CHECKPOINT_SECONDS,
            witnesses=[witness],
        ),
        s.shipper_config,
    )
    prometheus.binary()  # refuse to start without it, naming the fix
    prometheus.install(s)
    redis_registry.prepare(s)  # the session registry's CA, certificate, redis.conf
    s.gateway_config.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    s.gateway_config.write_text(stack_gateway_config(s).model_dump_json(indent=2))
    return LocalIssuer.load_or_create(s.issuer_dir, ISSUER_URL)


def client_for(settings: StackSettings, **kw: Any) -> OpenBaoClient:
    return OpenBaoClient(
        [settings.api_addr(n) for n in NODE_IDS], settings.node_ca_dir / "ca.pem", **kw
    )


# -- supervisor process --------------------------------------------------------
def supervisor_pid(settings: StackSettings) -> int | None:
    """The live supervisor's pid; a pid file naming a dead or foreign process is stale."""
    try:
        pid = int(settings.pid_file.read_text().strip())
    except (OSError, ValueError):
        return None
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return None
    if b"supervise" in cmdline and str(settings.data_dir.resolve()).encode() in cmdline:
        return pid
    return None


def _start_supervisor(settings: StackSettings, progress: Progress) -> int:
    pid = supervisor_pid(settings)
    if pid:
        progress(f"supervisor already running (pid {pid})")
        return pid
    if settings.pid_file.exists():
        progress(f"removing stale lock {settings.pid_file} (its process is gone)")
        settings.pid_file.unlink()
    _check_ports(settings)
    # `supervise --daemonize` forks the real supervisor (new session, reparented to
    # init) and exits at once, writing the pid file: `up` leaves no child behind.
    with (settings.log_dir / "supervisor.log").open("ab") as log:
        done = subprocess.run(
            [
                sys.executable,
                "-m",
                "clawql_secrets",
                "cluster",
                "supervise",
                "--daemonize",
                "--data-dir",
                str(settings.data_dir.resolve()),
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            check=False,
            timeout=30,
        )
    pid = supervisor_pid(settings)
    if done.returncode != 0 or pid is None:
        raise ProcessError(
            "the supervisor did not start",
            fix=f"read {settings.log_dir / 'supervisor.log'}",
        )
    return pid


def _wait(
    what: str,
    check: Callable[[], bool],
    timeout: float,
    progress: Progress,
    settings: StackSettings,
) -> None:
    progress(f"waiting: {what}")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        if supervisor_pid(settings) is None:
            raise ProcessError(
                f"the supervisor died while waiting for {what}",
                fix=f"read {settings.log_dir / 'supervisor.log'}",
            )
        time.sleep(0.2)
    raise ProcessError(
        f"timed out after {timeout:.0f}s waiting for {what}",
        fix=f"read the logs in {settings.log_dir} (bridge.log names HSM problems)",
    )


@dataclass
class UpResult:
    settings: StackSettings
    initialised_now: bool
    share_files: list[str] = field(default_factory=list)


def up(settings: StackSettings, progress: Progress = _quiet, timeout: float = 120) -> UpResult:
    s = settings
    save_settings(s)
    progress("preparing certificates, HSM token and node configuration")
    issuer = prepare(s)
    _start_supervisor(s, progress)
    result = UpResult(settings=s, initialised_now=False)
    with client_for(s) as client:
        first = s.api_addr(NODE_IDS[0])
        _wait("node n1 answers", lambda: client.health(first) is not None, timeout, progress, s)
        h = client.health(first) or {}
        if not h.get("initialized"):
            progress("initialising the cluster (recovery shares to the key holders)")
            recipients = holders.generate_local_holders(s.holders_dir, s.recovery_shares)
            res = bootstrap.initialise(
                client,
                first,
                shares=s.recovery_shares,
                threshold=s.recovery_threshold,
                recipients=recipients,
                recovery_dir=s.recovery_dir,
                issuer=issuer,
            )
            result.initialised_now = True
            result.share_files = [str(p) for p in res.share_files]
        _wait(
            "3 nodes unsealed", lambda: _unsealed(client, s) == len(NODE_IDS), timeout, progress, s
        )
        _wait(
            "3 raft voters and a leader",
            lambda: _voters_ready(client, issuer),
            timeout,
            progress,
            s,
        )
    _wait(
        "the session registry's Redis keyed in OpenBao",
        lambda: redis_registry.keyed(s, child_pid(s, REGISTRY)),
        timeout,
        progress,
        s,
    )
    _wait("Prometheus ready", lambda: _prometheus_ready(s), timeout, progress, s)
    return result


def _unsealed(client: OpenBaoClient, s: StackSettings) -> int:
    n = 0
    for node in NODE_IDS:
        h = client.health(s.api_addr(node))
        if h and h.get("initialized") and not h.get("sealed"):
            n += 1
    return n


def _voters_ready(client: OpenBaoClient, issuer: LocalIssuer) -> bool:
    try:
        state = autopilot_state(client, issuer)
    except ClawQLError:
        return False
    servers = state.get("servers", {})
    return len(state.get("voters", [])) == len(NODE_IDS) and any(
        v.get("status") == "leader" for v in servers.values()
    )


def autopilot_state(client: OpenBaoClient, issuer: LocalIssuer) -> dict[str, Any]:
    token = bootstrap.operator_login(client, issuer)
    try:
        data: dict[str, Any] = client.read("sys/storage/raft/autopilot/state", token=token)["data"]
    finally:
        with contextlib.suppress(ClawQLError):
            client.request("POST", "auth/token/revoke-self", token=token, retry_for=2)
    return data


# -- down -------------------------------------------------------------------------
def down(settings: StackSettings, progress: Progress = _quiet, timeout: float = 60) -> bool:
    """Stop the supervisor (which stops its children). False if nothing was running."""
    pid = supervisor_pid(settings)
    if pid is None:
        if settings.pid_file.exists():
            progress(f"removing stale lock {settings.pid_file}")
            settings.pid_file.unlink()
        return False
    progress(f"stopping supervisor {pid} and its processes")
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if supervisor_pid(settings) is None:
            break
        time.sleep(0.1)
    else:
        raise ProcessError(
            f"supervisor {pid} did not stop within {timeout:.0f}s",
            fix=f"kill {pid}; its children are in {settings.state_file}",
        )
    with contextlib.suppress(FileNotFoundError):
        settings.pid_file.unlink()
    return True


# -- node control (hold files) ------------------------------------------------------
def hold(settings: StackSettings, name: str) -> None:
    _check_name(name)
    settings.hold_file(name).touch()


def release(settings: StackSettings, name: str) -> None:
    _check_name(name)
    with contextlib.suppress(FileNotFoundError):
        settings.hold_file(name).unlink()


def _check_name(name: str) -> None:
    names = (*NODE_IDS, BRIDGE, SHIPPER, GATEWAY, PROMETHEUS, REGISTRY, WITNESS)
    if name not in names:
        raise ConfigError(f"unknown process {name!r}", fix=f"one of {', '.join(names)}")


def child_pid(settings: StackSettings, name: str) -> int | None:
    state = read_state(settings) or {}
    children = state.get("children")
    if not isinstance(children, dict):
        return None
    pid = (children.get(name) or {}).get("pid")
    return int(pid) if pid else None


# -- status ----------------------------------------------------------------------------
def status(settings: StackSettings) -> dict[str, Any]:
    s = settings
    if not s.settings_file.exists():
        raise ConfigError(
            f"no local stack in {s.data_dir}", fix="run `clawql-secrets up` (or pass --data-dir)"
        )
    out: dict[str, Any] = {"data_dir": str(s.data_dir), "supervisor_pid": supervisor_pid(s)}
    state = read_state(s) or {}
    raw_children = state.get("children")
    children: dict[str, Any] = raw_children if isinstance(raw_children, dict) else {}
    nodes: dict[str, Any] = {}
    with client_for(s, retry_for=2) as client:
        auto: dict[str, Any] = {}
        try:
            issuer = LocalIssuer.load(s.issuer_dir, ISSUER_URL)
            auto = autopilot_state(client, issuer).get("servers", {})
        except ClawQLError as exc:
            out["raft_error"] = exc.message
        for node in NODE_IDS:
            h = client.health(s.api_addr(node))
            a = auto.get(node, {})
            kid = children.get(node) or {}
            nodes[node] = {
                "address": s.api_addr(node),
                "pid": kid.get("pid"),
                "restarts": kid.get("restarts", 0),
                "held": kid.get("held", False),
                "up": h is not None,
                "initialized": bool(h and h.get("initialized")),
                "sealed": None if h is None else bool(h.get("sealed")),
                "role": None if h is None else ("standby" if h.get("standby") else "leader"),
                "voter": a.get("status") in ("leader", "voter") if a else None,
                "raft_status": a.get("status"),
                "applied_index": a.get("last_index"),
            }
    out["nodes"] = nodes
    out["bridge"] = bridge_health(s)
    shipper = children.get(SHIPPER) or {}
    verifier = s.audit_dir / "verifier.txt"
    out["audit"] = {
        "shipper_pid": shipper.get("pid"),
        "restarts": shipper.get("restarts", 0),
        "store": str(s.audit_dir / "store"),
        "metrics": f"http://{s.host}:{s.audit_metrics_port}/metrics",
        "verifier_key_file": str(verifier) if verifier.exists() else None,
    }
    gateway = children.get(GATEWAY) or {}
    out["gateway"] = {
        "pid": gateway.get("pid"),
        "restarts": gateway.get("restarts", 0),
        "url": s.gateway_addr,
    }
    registry = children.get(REGISTRY) or {}
    out["registry"] = {  # where and whether OpenBao holds its admin (never a password)
        "pid": registry.get("pid"),
        "restarts": registry.get("restarts", 0),
        "address": f"rediss://{s.host}:{s.registry_port}",
        "ca_file": str(redis_registry.ca_file(s)),
        "keyed": redis_registry.keyed(s, registry.get("pid")),
    }
    alive = out["supervisor_pid"] is not None and _alive(shipper.get("pid"))
    streams = out["audit"]["streams"] = audit_streams(s, shipper_alive=alive)
    out["audit"]["healthy"] = all(v["state"] not in BAD_STATES for v in streams.values())
    out["audit"]["interval_seconds"] = load_config(s.shipper_config).interval_seconds
    out["prometheus"] = prometheus_health(s, (children.get(PROMETHEUS) or {}).get("pid"))
    out["witness"] = witness_health(s, children.get(WITNESS) or {})
    return out


def witness_health(s: StackSettings, child: dict[str, Any]) -> dict[str, Any]:
    """The witness: its key (bootstrap trust for `audit verify --witness-key`) and, per
    stream, the newest size it cosigned against the newest checkpoint stored."""
    from clawql_secrets.audit.witnessing import COSIGNATURES

    key = None
    with contextlib.suppress(ClawQLError):
        key = str(witness_localstack.witness_key(s))
    cosigned: dict[str, dict[str, int]] = {}
    store = s.audit_dir / "store"
    for node in NODE_IDS:
        sizes = [int(p.name) for p in (store / COSIGNATURES / node).glob("[0-9]*") if p.is_dir()]
        latest = [int(p.stem) for p in (store / "checkpoints" / node).glob("[0-9]*.txt")]
        cosigned[node] = {"cosigned": max(sizes, default=0), "checkpoint": max(latest, default=0)}
    return {
        "pid": child.get("pid"),
        "restarts": child.get("restarts", 0),
        "up": _alive(child.get("pid")),
        "url": s.witness_addr,
        "key": key,
        "streams": cosigned,
    }


def _alive(pid: object) -> bool:
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def audit_streams(s: StackSettings, *, shipper_alive: bool) -> dict[str, Any]:
    """Each audit stream as its status document tells it (``audit.stream_status.observe``):
    stalled when the document is stale or no shipper runs."""
    config = load_config(s.shipper_config)
    now = time.time()
    return {
        src.name: observe(
            src.status_file,
            stream=src.name,
            interval=config.interval_seconds,
            shipper_alive=shipper_alive,
            now=now,
        )
        for src in config.sources()
    }


def _prometheus_ready(s: StackSettings) -> bool:
    try:
        resp = httpx.get(f"{s.prometheus_addr}/-/ready", timeout=2.0, trust_env=False)
    except httpx.HTTPError:
        return False
    return resp.status_code == 200


def prometheus_health(s: StackSettings, pid: object = None) -> dict[str, Any]:
    """Prometheus: ready, each scrape job's health, its alert rules and those firing."""
    out: dict[str, Any] = {"url": s.prometheus_addr, "pid": pid, "up": False}
    try:
        with httpx.Client(base_url=s.prometheus_addr, timeout=2.0, trust_env=False) as c:
            out["up"] = c.get("/-/ready").status_code == 200
            if not out["up"]:
                return out
            targets = c.get("/api/v1/targets", params={"state": "active"}).json()
            out["targets"] = {
                t["labels"]["job"]: t["health"] for t in targets["data"]["activeTargets"]
            }
            groups = c.get("/api/v1/rules", params={"type": "alert"}).json()["data"]["groups"]
            rules = [r for g in groups for r in g["rules"]]
            out["alert_rules"] = len(rules)
            out["alerts_firing"] = sorted({r["name"] for r in rules if r["state"] == "firing"})
    except (httpx.HTTPError, ValueError, KeyError, TypeError) as exc:
        out["error"] = type(exc).__name__
    return out


def bridge_health(s: StackSettings) -> dict[str, Any]:
    try:
        resp = httpx.get(
            f"{s.bridge_addr}/v1/health",
            verify=ssl.create_default_context(cafile=str(s.node_ca_dir / "ca.pem")),
            timeout=2.0,
            trust_env=False,
        )
        data: dict[str, Any] = resp.json()
        data["up"] = resp.status_code == 200
        return data
    except (httpx.HTTPError, ValueError) as exc:
        return {"up": False, "error": type(exc).__name__, "address": s.bridge_addr}


@contextlib.contextmanager
def running(settings: StackSettings, progress: Progress = _quiet) -> Iterator[UpResult]:
    """``up`` for the duration of a block, always followed by ``down``."""
    try:
        yield up(settings, progress)
    finally:
        down(settings)
