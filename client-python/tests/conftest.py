"""Fixtures: a real agent per test, in a short temporary directory (a Unix
socket path must stay under 108 bytes), and clients of it."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import AsyncIterator, Iterator

import pytest
import pytest_asyncio

from agent_process import Agent
from vaultlet import AsyncClient, Client


@pytest.fixture
def workdir() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="vaultlet-py-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def agent(workdir: Path) -> Iterator[Agent]:
    agent = Agent(workdir)
    agent.start()
    yield agent
    agent.stop_if_running()


@pytest.fixture
def no_token(workdir: Path) -> Path:
    """A token file that does not exist: dev mode takes none, and the machine's
    own VAULTLET_TOKEN_FILE must not leak into the tests."""
    return workdir / "no-token"


@pytest.fixture
def client(agent: Agent, no_token: Path) -> Iterator[Client]:
    with Client(agent.socket, token_file=no_token, timeout=10) as c:
        yield c


@pytest_asyncio.fixture
async def async_client(agent: Agent, no_token: Path) -> AsyncIterator[AsyncClient]:
    async with AsyncClient(agent.socket, token_file=no_token, timeout=10) as c:
        yield c
