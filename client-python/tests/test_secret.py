"""A Secret never shows its values when printed or logged."""

from __future__ import annotations

from agent_process import Agent
from vaultlet import Client
from watching import Watcher

VALUE = "hunter2-do-not-print"


def test_repr_and_str_hide_values(agent: Agent, client: Client) -> None:
    agent.write("app.json", f'{{"db_password": "{VALUE}", "api_key": "{VALUE}-2"}}')
    secrets = client.get_secrets("app")
    app = secrets["app"]
    for text in (repr(app), str(app), repr(secrets), f"{app}"):
        assert VALUE not in text
    assert repr(app) == (
        f"Secret(ref='default/app', revision={app.revision!r}, key_version=0, format='JSON', "
        "fields=['api_key', 'db_password'])"
    )

    event = Watcher(client.watch("app")).next()
    assert VALUE not in repr(event) and VALUE not in str(event)
    assert "db_password" in repr(event)


def test_a_secret_is_a_read_only_mapping(agent: Agent, client: Client) -> None:
    agent.write("app.json", '{"a": "1", "b": "2"}')
    app = client.get_secrets("app")["app"]
    assert app == {"a": "1", "b": "2"}
    assert app.get("missing") is None and "a" in app and sorted(app.keys()) == ["a", "b"]
    assert not hasattr(app, "__setitem__")
