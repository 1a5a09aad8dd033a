"""The Python client on the production path: Kubernetes Secrets decrypted
through a real OpenBao, callers authenticated by their ServiceAccount tokens."""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import pytest

from stack_process import Stack
from vaultlet import Client, PermissionDenied, Unauthenticated
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
