"""get_secrets against the real agent."""

from __future__ import annotations

import json

import pytest

from agent_process import Agent
from vaultlet import Client, SecretRef


def test_get_one_secret(agent: Agent, client: Client) -> None:
    doc = {"db_password": "s3cret", "port": 5432, "tls": True, "opts": {"a": [1, "x"]}}
    agent.write("app.json", json.dumps(doc))
    secrets = client.get_secrets("app")
    assert list(secrets) == ["app"]
    app = secrets["app"]
    assert dict(app) == {"db_password": "s3cret", "port": "5432", "tls": "true", "opts": '{"a":[1,"x"]}'}
    assert app["db_password"] == "s3cret"
    assert str(app.ref) == "default/app"
    assert app.revision
    assert app.key_version == 0
    assert app.format == "JSON"
    assert app.raw is not None and json.loads(app.raw) == doc


def test_several_refs_in_one_call_keyed_as_given(agent: Agent, client: Client) -> None:
    agent.write("app.json", '{"db_password": "a"}')
    agent.write("worker.env", "QUEUE_PASSWORD='q w'\n")
    agent.write("payments/db.yaml", "user: payments\npassword: p\n")
    refs = ["app", "app:app.json", "worker", "payments/db:db.yaml", "default/app"]
    secrets = client.get_secrets(*refs)
    assert list(secrets) == refs
    assert secrets["app"]["db_password"] == "a"
    assert secrets["app:app.json"].ref.data_key == "app.json"
    assert dict(secrets["worker"]) == {"QUEUE_PASSWORD": "q w"}
    assert secrets["worker"].format == "ENV"
    db = secrets["payments/db:db.yaml"]
    assert dict(db) == {"user": "payments", "password": "p"}
    assert (db.format, str(db.ref)) == ("YAML", "payments/db:db.yaml")
    assert secrets["default/app"].revision == secrets["app"].revision


def test_data_keys_of_one_secret_merge(agent: Agent, client: Client) -> None:
    agent.write("app.json", '{"a": "1"}')
    agent.write("app.env", "B=2\n")
    app = client.get_secrets("app")["app"]
    assert dict(app) == {"a": "1", "B": "2"}
    assert app.raw is None, "two documents have no single raw text"
    assert app.format == "UNSPECIFIED"


def test_field_subset_with_a_secret_ref(agent: Agent, client: Client) -> None:
    agent.write("app.json", '{"user": "u", "password": "p", "other": "o"}')
    ref = SecretRef.parse("app", fields=["password", "user"])
    secrets = client.get_secrets(ref, "app")
    assert dict(secrets[ref]) == {"password": "p", "user": "u"}
    assert secrets[ref].raw is None
    assert len(secrets["app"]) == 3


def test_the_token_file_may_be_absent_and_the_socket_comes_from_the_environment(
    agent: Agent, monkeypatch: pytest.MonkeyPatch
) -> None:
    agent.write("app.json", '{"a": "1"}')
    monkeypatch.setenv("VAULTLET_SOCKET", str(agent.socket))
    monkeypatch.setenv("VAULTLET_TOKEN_FILE", str(agent.secrets_dir / "no-such-token"))
    with Client() as c:
        assert c.socket == str(agent.socket)
        assert c.get_secrets("app")["app"]["a"] == "1"
