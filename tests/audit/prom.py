"""A real Prometheus server (Debian ``prometheus``) scraping one loopback target, for tests."""

from __future__ import annotations

import socket
import subprocess
import time
from pathlib import Path
from typing import IO

import httpx

PROMETHEUS = Path("/usr/bin/prometheus")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class PrometheusServer:
    def __init__(self, workdir: Path, target_port: int) -> None:
        self.workdir = workdir
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        workdir.mkdir(parents=True, exist_ok=True)
        (workdir / "prometheus.yml").write_text(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n"
            "scrape_configs:\n  - job_name: clawql-audit\n    static_configs:\n"
            f"      - targets: ['127.0.0.1:{target_port}']\n"
        )
        self._proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    def __enter__(self) -> PrometheusServer:
        self._log = (self.workdir / "prometheus.log").open("wb")
        self._proc = subprocess.Popen(
            [
                str(PROMETHEUS),
                f"--config.file={self.workdir / 'prometheus.yml'}",
                f"--storage.tsdb.path={self.workdir / 'data'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
            ],
            stdout=subprocess.DEVNULL,
            stderr=self._log,
        )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{self.url}/-/ready", timeout=1).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        self.__exit__()
        raise AssertionError("prometheus did not become ready in 30 s")

    def wait_for_series(self, count: int, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            r = httpx.get(
                f"{self.url}/api/v1/series",
                params={"match[]": "clawql_audit_checkpoint_info", "start": "0"},
                timeout=2,
            )
            if r.status_code == 200 and len(r.json().get("data", [])) >= count:
                return
            time.sleep(0.3)
        raise AssertionError(f"prometheus did not record {count} checkpoint series")

    def __exit__(self, *exc: object) -> None:
        if self._proc is not None:
            self._proc.terminate()
            try:
                self._proc.wait(15)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait(5)
            self._proc = None
        if self._log is not None:
            self._log.close()
            self._log = None
