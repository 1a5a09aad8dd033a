"""The examples run as a user runs them: as scripts, configured by the environment."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Dict

import grpc

from agent_process import Agent
from fake_agent import FakeAgent, ScriptedSecrets, Stream, event, secret
from vaultlet.v1 import secrets_pb2 as pb

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
VALUE = "do-not-print-me"


def run_example(name: str, socket: Path, *args: str) -> "subprocess.CompletedProcess[str]":
    env: Dict[str, str] = {**os.environ, "VAULTLET_SOCKET": str(socket), "VAULTLET_TOKEN_FILE": str(socket) + ".token"}
    return subprocess.run(
        [sys.executable, str(EXAMPLES / name), *args], env=env, capture_output=True, text=True, timeout=30
    )


def test_kubevault_example_reads_in_one_call(agent: Agent) -> None:
    agent.write("matrix-secrets.json", f'{{"db_password": "{VALUE}", "api_key": "{VALUE}"}}')
    done = run_example("kubevault_example.py", agent.socket, "matrix-secrets:matrix-secrets.json")
    assert done.returncode == 0, done.stderr
    assert "fields api_key, db_password" in done.stdout
    assert VALUE not in done.stdout + done.stderr

    missing = run_example("kubevault_example.py", agent.socket)
    assert missing.returncode == 1
    assert "cannot read matrix-secrets:secrets.json: NOT_FOUND: " in missing.stderr


def test_reload_on_rotation_reacts_to_each_kind(workdir: Path) -> None:
    app = pb.SecretRef(namespace="default", name="app")
    servicer = ScriptedSecrets(
        streams=[
            Stream(
                [
                    event(pb.EVENT_KIND_SNAPSHOT, secret("app", "r1", 1, password=VALUE)),
                    event(pb.EVENT_KIND_RECRYPTED, secret("app", "r2", 2, password=VALUE)),
                    event(pb.EVENT_KIND_CONTENT_CHANGED, secret("app", "r3", 2, password=VALUE + "2")),
                    event(pb.EVENT_KIND_ERROR, secret("app", "r3", 2, password=VALUE + "2"), failed="r4"),
                    event(pb.EVENT_KIND_DELETED, pb.Secret(ref=app)),
                ],
                (grpc.StatusCode.PERMISSION_DENIED, "default/app: permission denied"),
            )
        ]
    )
    with FakeAgent(workdir / "fake.sock", servicer) as fake:
        done = run_example("reload_on_rotation.py", fake.socket, "app")
    assert done.returncode == 1, done.stderr
    assert done.stdout.splitlines() == [
        "INFO app SNAPSHOT: configuration reloaded (revision r1, fields ['password'])",
        "INFO app RECRYPTED: key version 2, same values, nothing to reload",
        "INFO app CONTENT_CHANGED: configuration reloaded (revision r3, fields ['password'])",
        "ERROR app ERROR: revision r4 cannot be used (FAILED_PRECONDITION: cannot decrypt); "
        "keeping the configuration of revision r3",
        "WARNING app DELETED: keeping the current configuration",
        "ERROR watch of app ended: PERMISSION_DENIED: default/app: permission denied",
    ]
    assert VALUE not in done.stdout + done.stderr
