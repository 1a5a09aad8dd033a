"""AsyncClient against the real agent: the same behaviour as Client, awaited."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import AsyncIterator

import pytest

from agent_process import Agent
from vaultlet import AsyncClient, Event, InvalidArgument, NotFound, Unavailable

EVENT_WITHIN = 5.0


async def next_event(events: AsyncIterator[Event]) -> Event:
    return await asyncio.wait_for(events.__anext__(), EVENT_WITHIN)


@pytest.mark.asyncio
async def test_get(agent: Agent, async_client: AsyncClient) -> None:
    agent.write("app.json", '{"db_password": "a"}')
    agent.write("payments/db.yaml", "password: p\n")
    secrets = await async_client.get_secrets("app", "payments/db:db.yaml")
    assert list(secrets) == ["app", "payments/db:db.yaml"]
    assert secrets["app"]["db_password"] == "a"
    assert secrets["payments/db:db.yaml"]["password"] == "p"


@pytest.mark.asyncio
async def test_errors(agent: Agent, async_client: AsyncClient, workdir: Path) -> None:
    with pytest.raises(NotFound):
        await async_client.get_secrets("nope")
    with pytest.raises(InvalidArgument):
        async_client.watch("Nope")
    async with AsyncClient(workdir / "nobody.sock", token_file=workdir / "t") as nobody:
        with pytest.raises(Unavailable):
            await nobody.get_secrets("app")


@pytest.mark.asyncio
async def test_watch_edit_and_restart(agent: Agent, async_client: AsyncClient) -> None:
    agent.write("app.json", '{"v": "1"}')
    events = async_client.watch("app", "gone")
    first = sorted([await next_event(events), await next_event(events)], key=lambda e: e.index)
    assert [(e.kind, e.ref) for e in first] == [("SNAPSHOT", "app"), ("DELETED", "gone")]

    agent.write("app.json", '{"v": "2"}')
    changed = await next_event(events)
    assert (changed.kind, dict(changed.secret)) == ("CONTENT_CHANGED", {"v": "2"})

    # The agent's blocking helpers run in a thread so the client's reconnects proceed meanwhile.
    await asyncio.to_thread(agent.terminate)
    agent.write("app.json", '{"v": "3"}')
    await asyncio.to_thread(agent.start)
    missed = await next_event(events)
    assert (missed.index, missed.kind, dict(missed.secret)) == (0, "SNAPSHOT", {"v": "3"})

    agent.write("app.json", '{"v": "4"}')
    latest = await next_event(events)
    assert (latest.index, latest.kind, dict(latest.secret)) == (0, "CONTENT_CHANGED", {"v": "4"})
    revisions = [e.secret.revision for e in (first[0], changed, missed, latest)]
    assert len(set(revisions)) == len(revisions)


@pytest.mark.asyncio
async def test_closing_the_client_ends_the_watch(agent: Agent, async_client: AsyncClient) -> None:
    agent.write("app.json", '{"v": "1"}')
    events = async_client.watch("app")
    assert (await next_event(events)).kind == "SNAPSHOT"
    pending = asyncio.ensure_future(next_event(events))
    await asyncio.sleep(0.1)
    await async_client.close()
    with pytest.raises(StopAsyncIteration):
        await pending
