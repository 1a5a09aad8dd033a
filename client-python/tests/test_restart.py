"""A watch outlives its agent: it reconnects to the next one on the same
socket and yields nothing the caller already has."""

from __future__ import annotations

import pytest

from agent_process import Agent
from vaultlet import Client
from watching import Watcher


@pytest.mark.parametrize("stop", ["terminate", "kill"])
def test_watch_continues_across_restart_without_repeats(agent: Agent, client: Client, stop: str) -> None:
    agent.write("app.json", '{"v": "1"}')
    agent.write("steady.json", '{"s": "1"}')
    agent.write("broken.json", "{")
    w = Watcher(client.watch("app", "steady", "broken", "gone"))
    first = sorted((w.next() for _ in range(4)), key=lambda e: e.index)
    assert [e.kind for e in first] == ["SNAPSHOT", "SNAPSHOT", "ERROR", "DELETED"]
    seen = {first[0].secret.revision}

    getattr(agent, stop)()
    # Changed while no agent runs: the next agent's stream must bring it.
    agent.write("app.json", '{"v": "2"}')
    agent.start()

    missed = w.next()
    assert (missed.index, missed.kind, dict(missed.secret)) == (0, "SNAPSHOT", {"v": "2"})
    assert missed.secret.revision not in seen
    seen.add(missed.secret.revision)

    # The new stream repeated steady's snapshot, broken's error and gone's
    # deletion before this edit; none of them may have reached the caller.
    agent.write("app.json", '{"v": "3"}')
    changed = w.next()
    assert (changed.index, changed.kind, dict(changed.secret)) == (0, "CONTENT_CHANGED", {"v": "3"})
    assert changed.secret.revision not in seen
    w.quiet(0.3)


def test_watch_waits_out_a_long_absence(agent: Agent, client: Client) -> None:
    agent.write("app.json", '{"v": "1"}')
    w = Watcher(client.watch("app"))
    assert w.next().kind == "SNAPSHOT"
    agent.kill()
    # Several reconnect attempts fail meanwhile; none of them ends the watch.
    w.quiet(1.5)
    agent.write("app.json", '{"v": "2"}')
    agent.start()
    back = w.next()
    assert (back.kind, dict(back.secret)) == ("SNAPSHOT", {"v": "2"})
