"""Every error class, each from the situation that produces it."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent_process import Agent
from vaultlet import (
    Client,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    Unavailable,
    VaultletError,
)
from watching import Watcher


def test_missing_secret_is_not_found(agent: Agent, client: Client) -> None:
    with pytest.raises(NotFound) as e:
        client.get_secrets("nope")
    assert e.value.code == "NOT_FOUND"
    assert "secret default/nope not found" in e.value.message
    assert str(e.value).startswith("NOT_FOUND: ")
    assert isinstance(e.value, VaultletError)


def test_missing_data_key_is_not_found(agent: Agent, client: Client) -> None:
    agent.write("app.json", '{"a": "1"}')
    with pytest.raises(NotFound, match='no data key "secrets.json"'):
        client.get_secrets("app:secrets.json")


def test_one_failing_ref_fails_the_whole_call(agent: Agent, client: Client) -> None:
    agent.write("app.json", '{"a": "1"}')
    with pytest.raises(NotFound, match="nope"):
        client.get_secrets("app", "nope")


def test_malformed_ref_is_refused_before_any_call(workdir: Path, no_token: Path) -> None:
    # No agent listens: had the client called, this would be Unavailable.
    with Client(workdir / "nobody.sock", token_file=no_token) as c:
        with pytest.raises(InvalidArgument, match="invalid secret name") as e:
            c.get_secrets("app", "Bad_Name")
        assert e.value.code == "INVALID_ARGUMENT"
        with pytest.raises(InvalidArgument, match="invalid namespace"):
            c.watch("app", "NS/app")


def test_no_agent_is_unavailable(workdir: Path, no_token: Path) -> None:
    with Client(workdir / "nobody.sock", token_file=no_token) as c:
        with pytest.raises(Unavailable) as e:
            c.get_secrets("app")
    assert e.value.code == "UNAVAILABLE"
    assert "nobody.sock" in e.value.message


def test_document_that_never_parsed_is_failed_precondition(agent: Agent, client: Client) -> None:
    agent.write("broken.json", '{"password": "hunter2",,}')
    with pytest.raises(FailedPrecondition) as e:
        client.get_secrets("broken")
    assert e.value.code == "FAILED_PRECONDITION"
    assert "not valid JSON" in e.value.message
    assert "hunter2" not in str(e.value)


def test_agent_refusing_a_watch_ends_it_with_the_error(agent: Agent, client: Client) -> None:
    # More references than the agent takes in one request: not worth a reconnect.
    w = Watcher(client.watch(*[f"s{i}" for i in range(129)]))
    failure = w.failure()
    assert isinstance(failure, InvalidArgument)
    assert "the limit is 128" in failure.message
