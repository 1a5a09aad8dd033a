"""Runs the real `vaultlet dev` agent as a separate process, as a developer
does, so that tests can edit its documents, terminate, kill and restart it."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import Optional

import pytest

REPO = Path(__file__).resolve().parents[2]
BANNER = "vaultlet dev: serving"
START_WITHIN = 20.0
STOP_WITHIN = 15.0


def vaultlet_bin() -> Path:
    """`VAULTLET_BIN`, else the workspace's debug build. Missing is a failure:
    these tests exist to run against the real agent."""
    path = Path(os.environ.get("VAULTLET_BIN") or REPO / "target" / "debug" / "vaultlet")
    if not path.is_file():
        pytest.fail(f"{path} not found: build the agent first with `cargo build -p vaultlet` (or set VAULTLET_BIN)")
    return path


class Agent:
    """`vaultlet dev --secrets-dir DIR/secrets --socket DIR/vaultlet.sock`."""

    def __init__(self, root: Path) -> None:
        self.secrets_dir = root / "secrets"
        self.secrets_dir.mkdir(exist_ok=True)
        self.socket = root / "vaultlet.sock"
        self._stdout = root / "agent.out"
        self._stderr = root / "agent.err"
        self._process: Optional[subprocess.Popen[bytes]] = None

    def start(self) -> None:
        """Starts the agent and waits for its banner and its socket."""
        assert self._process is None, "agent already running"
        with open(self._stdout, "wb") as out, open(self._stderr, "ab") as err:
            self._process = subprocess.Popen(
                [str(vaultlet_bin()), "dev", "--secrets-dir", str(self.secrets_dir), "--socket", str(self.socket)],
                stdout=out,
                stderr=err,
                env={**os.environ, "VAULTLET_LOG": "warn"},
            )
        deadline = time.monotonic() + START_WITHIN
        while not (BANNER in self._stdout.read_text() and self._accepts()):
            code = self._process.poll()
            if code is not None:
                self._process = None
                pytest.fail(f"the agent exited ({code}) before listening:\n{self.stderr()}")
            if time.monotonic() > deadline:
                pytest.fail(f"the agent did not listen on {self.socket} within {START_WITHIN} s:\n{self.stderr()}")
            time.sleep(0.02)

    def terminate(self) -> None:
        """SIGTERM, as kubelet stops a pod; waits for the exit."""
        self._stop(signal.SIGTERM)

    def kill(self) -> None:
        """SIGKILL: no shutdown, the socket file stays behind."""
        self._stop(signal.SIGKILL)

    def _stop(self, sig: signal.Signals) -> None:
        assert self._process is not None, "agent not running"
        self._process.send_signal(sig)
        try:
            self._process.wait(STOP_WITHIN)
        except subprocess.TimeoutExpired:
            self._process.kill()
            pytest.fail(f"the agent was still running {STOP_WITHIN} s after {sig.name}")
        finally:
            self._process = None

    def stop_if_running(self) -> None:
        if self._process is not None:
            self.terminate()

    def _accepts(self) -> bool:
        with socket.socket(socket.AF_UNIX) as s:
            try:
                s.connect(str(self.socket))
            except OSError:
                return False
        return True

    def stderr(self) -> str:
        return self._stderr.read_text() if self._stderr.exists() else ""

    def write(self, name: str, text: str) -> None:
        """Writes a document as editors do: whole, under a temporary name, then renamed."""
        path = self.secrets_dir / name
        path.parent.mkdir(exist_ok=True)
        tmp = path.parent / f".{path.name}.tmp"
        tmp.write_text(text)
        os.replace(tmp, path)

    def remove(self, name: str) -> None:
        (self.secrets_dir / name).unlink()
