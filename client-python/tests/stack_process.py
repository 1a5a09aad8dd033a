"""Runs `vaultlet-stack --info-out FILE`: a real kube-apiserver and etcd, a real
OpenBao and `vaultlet serve`, with a sealed Secret `shop/db` readable by
service account `shop/web`. Tests reach the production path through it."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

import pytest

from agent_process import REPO, vaultlet_bin

START_WITHIN = 90.0


class Stack:
    def __init__(self) -> None:
        self._dir = Path(tempfile.mkdtemp(prefix="vaultlet-stack-"))
        self._info = self._dir / "info.json"
        self._log = self._dir / "stack.log"
        self._process: Optional[subprocess.Popen[bytes]] = None
        self.info: Dict[str, Any] = {}

    def start(self) -> None:
        binary = self._binary()
        with open(self._log, "wb") as log:
            self._process = subprocess.Popen([str(binary), "--info-out", str(self._info)], stdout=log, stderr=log)
        deadline = time.monotonic() + START_WITHIN
        while not self._info.exists():
            if self._process.poll() is not None:
                pytest.fail(f"vaultlet-stack exited ({self._process.returncode}):\n{self._log.read_text()}")
            if time.monotonic() > deadline:
                pytest.fail(f"vaultlet-stack not ready within {START_WITHIN} s:\n{self._log.read_text()}")
            time.sleep(0.1)
        self.info = json.loads(self._info.read_text())

    @staticmethod
    def _binary() -> Path:
        binary = Path(os.environ.get("VAULTLET_STACK_BIN") or REPO / "target" / "debug" / "vaultlet-stack")
        if not binary.is_file():
            pytest.fail(f"{binary} not found: build it with `cargo build -p vaultlet-tests --bins`")
        return binary

    def short_token(self, service_account: str, pod: str, expires_in: int) -> str:
        """A token of `service_account` bound to `pod`, expiring in `expires_in`
        seconds (signed with the cluster's own key: the API server issues
        none shorter than ten minutes)."""
        argv = [
            str(self._binary()), "token", "--controlplane", str(self.info["controlplane"]),
            "--namespace", str(self.info["namespace"]), "--service-account", service_account,
            "--pod", pod, "--expires-in", str(expires_in),
        ]
        result = subprocess.run(argv, capture_output=True, timeout=60)
        if result.returncode != 0:
            pytest.fail(f"vaultlet-stack token failed: {result.stderr.decode()}")
        return result.stdout.decode().strip()

    def audit_records(self) -> List[Dict[str, Any]]:
        return [json.loads(line) for line in Path(self.info["audit_log"]).read_text().splitlines() if line]

    def stop(self) -> None:
        if self._process is not None:
            self._process.send_signal(signal.SIGTERM)
            try:
                self._process.wait(30)
            except subprocess.TimeoutExpired:
                self._process.kill()
            self._process = None

    @property
    def socket(self) -> str:
        return str(self.info["socket"])

    def token(self, account: str) -> str:
        return str(self.info["tokens"][account])

    def vaultlet(self, *args: str, stdin: Optional[bytes] = None) -> subprocess.CompletedProcess[bytes]:
        """The `vaultlet` CLI as an operator runs it against this stack."""
        env = {
            **os.environ,
            "KUBECONFIG": str(self.info["kubeconfig"]),
            "VAULT_ADDR": str(self.info["vault_addr"]),
            "VAULT_TOKEN": str(self.info["vault_token"]),
            "VAULTLET_LOG": "warn",
        }
        argv: List[str] = [str(vaultlet_bin()), *args]
        result = subprocess.run(argv, input=stdin, capture_output=True, env=env, timeout=60)
        if result.returncode != 0:
            pytest.fail(f"vaultlet {' '.join(args)} failed: {result.stderr.decode()}")
        return result
