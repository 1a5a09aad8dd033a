"""watch against the real agent: snapshots, edits, errors, deletions."""

from __future__ import annotations

from agent_process import Agent
from vaultlet import Client
from watching import Watcher


def test_snapshot_then_edit(agent: Agent, client: Client) -> None:
    agent.write("app.json", '{"password": "one"}')
    w = Watcher(client.watch("app"))
    first = w.next()
    assert (first.kind, first.index, first.ref, first.error) == ("SNAPSHOT", 0, "app", None)
    assert dict(first.secret) == {"password": "one"}

    agent.write("app.json", '{"password": "two"}')
    changed = w.next()
    assert (changed.kind, changed.index, changed.ref) == ("CONTENT_CHANGED", 0, "app")
    assert dict(changed.secret) == {"password": "two"}
    assert changed.secret.revision != first.secret.revision


def test_invalid_edit_keeps_the_last_good_values_then_recovers(agent: Agent, client: Client) -> None:
    agent.write("app.json", '{"password": "good"}')
    w = Watcher(client.watch("app"))
    good = w.next()
    assert good.kind == "SNAPSHOT"

    agent.write("app.json", '{"password": "half-writ')
    error = w.next()
    assert error.kind == "ERROR"
    assert error.error is not None
    assert error.error.code == "FAILED_PRECONDITION"
    assert "not valid JSON" in error.error.message
    assert "half-writ" not in error.error.message
    assert error.error.revision != good.secret.revision
    assert dict(error.secret) == {"password": "good"}
    assert error.secret.revision == good.secret.revision

    agent.write("app.json", '{"password": "fixed"}')
    fixed = w.next()
    assert fixed.kind == "CONTENT_CHANGED"
    assert dict(fixed.secret) == {"password": "fixed"}
    assert fixed.error is None


def test_delete_and_reappear(agent: Agent, client: Client) -> None:
    agent.write("app.json", '{"a": "1"}')
    w = Watcher(client.watch("app"))
    assert w.next().kind == "SNAPSHOT"

    agent.remove("app.json")
    deleted = w.next()
    assert deleted.kind == "DELETED"
    assert len(deleted.secret) == 0
    assert str(deleted.secret.ref) == "default/app"

    agent.write("app.json", '{"a": "2"}')
    back = w.next()
    assert back.kind == "CONTENT_CHANGED"
    assert dict(back.secret) == {"a": "2"}


def test_several_refs_carry_their_index(agent: Agent, client: Client) -> None:
    agent.write("app.json", '{"a": "1"}')
    agent.write("team/db.yaml", "user: u\n")
    w = Watcher(client.watch("app", "absent", "team/db:db.yaml"))
    first = sorted((w.next() for _ in range(3)), key=lambda e: e.index)
    assert [(e.index, e.ref, e.kind) for e in first] == [
        (0, "app", "SNAPSHOT"),
        (1, "absent", "DELETED"),
        (2, "team/db:db.yaml", "SNAPSHOT"),
    ]

    agent.write("absent.env", "X=1\n")
    appeared = w.next()
    assert (appeared.index, appeared.ref, appeared.kind) == (1, "absent", "CONTENT_CHANGED")
    assert dict(appeared.secret) == {"X": "1"}
    w.quiet(0.3)


def test_closing_the_client_ends_the_watch(agent: Agent, client: Client) -> None:
    agent.write("app.json", '{"a": "1"}')
    w = Watcher(client.watch("app"))
    assert w.next().kind == "SNAPSHOT"
    client.close()
    w.ended()
