"""The token is read from its file on every call, trimmed, and sent as
`authorization: Bearer TOKEN`. Dev mode ignores tokens, so an in-process
server looks at what arrives."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from fake_agent import FakeAgent, ScriptedSecrets, Stream, event, secret
from vaultlet import AsyncClient, Client, Unauthenticated
from vaultlet.v1 import secrets_pb2 as pb
from vaultlet.token import DEFAULT_TOKEN_FILE, auth_metadata, token_file_path


def test_metadata_is_read_afresh_and_trimmed(workdir: Path) -> None:
    token = workdir / "token"
    assert auth_metadata(str(token)) == ()
    token.write_text("eyJ.one.sig\n")
    assert auth_metadata(str(token)) == (("authorization", "Bearer eyJ.one.sig"),)
    token.write_text("  eyJ.two.sig\r\n")
    assert auth_metadata(str(token)) == (("authorization", "Bearer eyJ.two.sig"),)


def test_unusable_token_files_are_unauthenticated(workdir: Path) -> None:
    token = workdir / "token"
    token.write_text("\n")
    with pytest.raises(Unauthenticated, match="is empty"):
        auth_metadata(str(token))
    token.write_bytes(b"abc\x00def")
    with pytest.raises(Unauthenticated, match="characters a token cannot contain"):
        auth_metadata(str(token))
    with pytest.raises(Unauthenticated, match="cannot read the token file"):
        auth_metadata(str(workdir))


def test_token_file_comes_from_argument_environment_or_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("VAULTLET_TOKEN_FILE", raising=False)
    assert token_file_path(None) == DEFAULT_TOKEN_FILE == "/var/run/secrets/vaultlet/token"
    monkeypatch.setenv("VAULTLET_TOKEN_FILE", "/env/token")
    assert token_file_path(None) == "/env/token"
    assert token_file_path(Path("/arg/token")) == "/arg/token"


def test_client_sends_the_current_token_on_every_call(workdir: Path) -> None:
    token = workdir / "token"
    servicer = ScriptedSecrets(streams=[Stream([event(pb.EVENT_KIND_SNAPSHOT, secret("app", "r1"))])])
    with FakeAgent(workdir / "fake.sock", servicer) as fake, Client(fake.socket, token_file=token) as c:
        token.write_text("tok-1\n")
        c.get_secrets("app")
        # Kubelet replaces the projected token by renaming a new file into place.
        (workdir / "new").write_text("tok-2\n")
        os.replace(workdir / "new", token)
        c.get_secrets("app")
        token.unlink()
        c.get_secrets("app")
        token.write_text("tok-3")
        events = c.watch("app")
        assert next(events).kind == "SNAPSHOT"
    assert [m.get("authorization") for m in servicer.metadata] == ["Bearer tok-1", "Bearer tok-2", None, "Bearer tok-3"]


@pytest.mark.asyncio
async def test_async_client_sends_the_token(workdir: Path) -> None:
    token = workdir / "token"
    token.write_text("tok-async\n")
    servicer = ScriptedSecrets()
    with FakeAgent(workdir / "fake.sock", servicer) as fake:
        async with AsyncClient(fake.socket, token_file=token) as c:
            await c.get_secrets("app")
    assert servicer.metadata[0].get("authorization") == "Bearer tok-async"
