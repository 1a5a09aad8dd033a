"""The Python client on the production path: Kubernetes Secrets decrypted
through a real OpenBao, callers authenticated by their ServiceAccount tokens."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Iterator

import pytest

from stack_process import Stack
from vaultlet import AsyncClient, Client, PermissionDenied, Unauthenticated
from watching import Watcher


@pytest.fixture(scope="module")
def stack() -> Iterator[Stack]:
    s = Stack()
    s.start()
    yield s
    s.stop()


def test_reads_a_sealed_secret_with_its_token(stack: Stack) -> None:
    with Client(stack.socket, token_file=stack.token("web"), timeout=10) as c:
        s = c.get_secrets("db")["db"]
    assert s["user"] == "shop"
    assert s.key_version >= 1
    assert str(s.ref) == "shop/db"
    assert "password" in repr(s) and s["password"] not in repr(s)


def test_watch_sees_rotation_and_new_content(stack: Stack) -> None:
    with Client(stack.socket, token_file=stack.token("web"), timeout=10) as c:
        w = Watcher(c.watch("db"))
        first = w.next()
        assert first.kind == "SNAPSHOT"

        stack.vaultlet("recrypt", "--namespace", "shop")
        rotated = w.next()
        assert rotated.kind == "RECRYPTED"
        assert rotated.secret.key_version == first.secret.key_version + 1
        assert dict(rotated.secret) == dict(first.secret)

        stack.vaultlet(
            "seal", "-n", "shop", "--name", "db", "--transit-key", "shop", "--allow", "web", "-",
            stdin=b'{"user": "shop", "password": "from-python"}',
        )
        changed = w.next()
        assert changed.kind == "CONTENT_CHANGED"
        assert changed.secret["password"] == "from-python"


def test_a_service_account_not_listed_is_denied(stack: Stack) -> None:
    with Client(stack.socket, token_file=stack.token("worker"), timeout=10) as c:
        with pytest.raises(PermissionDenied) as e:
            c.get_secrets("db")
    assert "serviceaccount shop/worker may not read secret shop/db" in e.value.message


def test_a_bad_token_is_unauthenticated(stack: Stack, tmp_path: Path) -> None:
    forged = tmp_path / "token"
    forged.write_text("not-a-token\n")
    with Client(stack.socket, token_file=forged, timeout=10) as c:
        with pytest.raises(Unauthenticated):
            c.get_secrets("db")
    with Client(stack.socket, token_file=tmp_path / "absent", timeout=10) as c:
        with pytest.raises(Unauthenticated) as e:
            c.get_secrets("db")
    assert "no ServiceAccount token" in e.value.message


def _seal(stack: Stack, password: str) -> None:
    stack.vaultlet(
        "seal", "-n", "shop", "--name", "db", "--transit-key", "shop", "--allow", "web", "-",
        stdin=b'{"user": "shop", "password": "' + password.encode() + b'"}',
    )


def _expiries(stack: Stack) -> int:
    """Watches the agent ended because their token expired."""
    return sum(
        1 for r in stack.audit_records() if r["decision"] == "revoked" and r.get("status") == "UNAUTHENTICATED"
    )


def _rotated_before_expiry(stack: Stack, token: Path) -> int:
    """Writes a fresh token where the old one was (kubelet's rotation), and
    waits until the agent has ended the watch opened with the old one."""
    before = _expiries(stack)
    token.write_text(Path(stack.token("web")).read_text())
    deadline = time.monotonic() + 20
    while _expiries(stack) == before:
        assert time.monotonic() < deadline, "the agent did not end the watch at the token's expiry"
        time.sleep(0.2)
    return before + 1


def test_a_watch_outlives_its_token_and_resumes_with_the_rotated_one(stack: Stack, tmp_path: Path) -> None:
    token = tmp_path / "token"
    token.write_text(stack.short_token("web", "web-1", 4))
    with Client(stack.socket, token_file=token, timeout=10) as c:
        w = Watcher(c.watch("db"))
        assert w.next().kind == "SNAPSHOT"
        _rotated_before_expiry(stack, token)
        # The client reconnected with the new token: nothing repeated ...
        w.quiet(1.5)
        # ... and nothing lost.
        _seal(stack, "after-expiry-sync")
        changed = w.next(timeout=15)
        assert (changed.kind, changed.secret["password"]) == ("CONTENT_CHANGED", "after-expiry-sync")


def test_an_async_watch_outlives_its_token_too(stack: Stack, tmp_path: Path) -> None:
    token = tmp_path / "token"
    token.write_text(stack.short_token("web", "web-1", 4))

    async def run() -> None:
        async with AsyncClient(stack.socket, token_file=token, timeout=10) as c:
            events = c.watch("db").__aiter__()
            assert (await asyncio.wait_for(events.__anext__(), 10)).kind == "SNAPSHOT"
            await asyncio.get_running_loop().run_in_executor(None, _rotated_before_expiry, stack, token)
            pending = asyncio.ensure_future(events.__anext__())
            done, _ = await asyncio.wait({pending}, timeout=1.5)
            assert not done, "nothing repeated"
            _seal(stack, "after-expiry-async")
            changed = await asyncio.wait_for(pending, 15)
            assert (changed.kind, changed.secret["password"]) == ("CONTENT_CHANGED", "after-expiry-async")

    asyncio.run(run())


def test_a_watch_whose_access_is_revoked_raises_permission_denied(stack: Stack) -> None:
    with Client(stack.socket, token_file=stack.token("web"), timeout=10) as c:
        w = Watcher(c.watch("db"))
        assert w.next().kind == "SNAPSHOT"
        stack.vaultlet(
            "seal", "-n", "shop", "--name", "db", "--transit-key", "shop", "--allow", "worker", "-",
            stdin=b'{"user": "shop", "password": "not-for-web"}',
        )
        failure = w.failure(timeout=15)
        assert isinstance(failure, PermissionDenied), repr(failure)
        assert "not-for-web" not in str(failure)
    _seal(stack, "back-to-web")
