"""The watch's bookkeeping across reconnects, on exact event sequences from a
scripted server: what is dropped as already held, what `known_revision` the
client sends back, and which failures end the watch."""

from __future__ import annotations

from pathlib import Path
from typing import List

import grpc
import pytest

from fake_agent import FakeAgent, ScriptedSecrets, Stream, event, secret
from vaultlet import Client, PermissionDenied, Unauthenticated, VaultletError
from vaultlet.v1 import secrets_pb2 as pb
from vaultlet.watch import BACKOFF_FIRST, BACKOFF_MAX, Backoff
from watching import Watcher

SNAPSHOT = pb.EVENT_KIND_SNAPSHOT
CONTENT_CHANGED = pb.EVENT_KIND_CONTENT_CHANGED
RECRYPTED = pb.EVENT_KIND_RECRYPTED
DELETED = pb.EVENT_KIND_DELETED
ERROR = pb.EVENT_KIND_ERROR


def test_reconnects_drop_what_is_held_and_resume_from_it(workdir: Path) -> None:
    streams = [
        Stream(
            [
                event(SNAPSHOT, secret("app", "r1", 1, password="p1")),
                event(DELETED, pb.Secret(ref=pb.SecretRef(namespace="default", name="gone")), index=1),
                event(RECRYPTED, secret("app", "r2", 2, password="p1")),
            ]
        ),  # then the stream ends, as when the agent shuts down
        Stream(
            [
                event(SNAPSHOT, secret("app", "r2", 2, password="p1")),  # held: dropped
                event(DELETED, pb.Secret(ref=pb.SecretRef(namespace="default", name="gone")), index=1),  # held
                event(ERROR, secret("app", "r2", 2, password="p1"), failed="r3"),
            ],
            (grpc.StatusCode.UNAVAILABLE, "agent going away"),
        ),
        Stream(
            [
                event(ERROR, secret("app", "r2", 2, password="p1"), failed="r3"),  # held: dropped
                event(CONTENT_CHANGED, secret("app", "r4", 2, password="p4")),
            ],
            (grpc.StatusCode.PERMISSION_DENIED, "default/app: permission denied: policy changed"),
        ),
    ]
    servicer = ScriptedSecrets(streams=streams)
    with FakeAgent(workdir / "fake.sock", servicer) as fake, Client(fake.socket, token_file=workdir / "t") as c:
        w = Watcher(c.watch("app", "gone"))
        got = [w.next() for _ in range(5)]
        failure = w.failure()
    assert [(e.kind, e.ref, e.secret.revision) for e in got] == [
        ("SNAPSHOT", "app", "r1"),
        ("DELETED", "gone", ""),
        ("RECRYPTED", "app", "r2"),
        ("ERROR", "app", "r2"),
        ("CONTENT_CHANGED", "app", "r4"),
    ]
    assert got[2].secret.key_version == 2 and dict(got[2].secret) == {"password": "p1"}
    assert got[3].error is not None
    assert (got[3].error.code, got[3].error.revision) == ("FAILED_PRECONDITION", "r3")
    # A refusal of the request itself ends the watch instead of a reconnect.
    assert isinstance(failure, PermissionDenied)
    assert failure.message == "default/app: permission denied: policy changed"
    assert [[s.known_revision for s in r.secrets] for r in servicer.watch_requests] == [
        ["", ""],
        ["r2", ""],
        ["r2", ""],
    ]


def test_a_refused_token_ends_the_watch(workdir: Path) -> None:
    servicer = ScriptedSecrets(streams=[Stream([], (grpc.StatusCode.UNAUTHENTICATED, "token expired"))])
    with FakeAgent(workdir / "fake.sock", servicer) as fake, Client(fake.socket, token_file=workdir / "t") as c:
        with pytest.raises(Unauthenticated, match="token expired"):
            next(c.watch("app"))
        servicer.get_status = (grpc.StatusCode.PERMISSION_DENIED, "default/app: permission denied")
        with pytest.raises(PermissionDenied):
            c.get_secrets("app")


def test_an_event_for_an_unknown_index_is_a_protocol_error(workdir: Path) -> None:
    servicer = ScriptedSecrets(streams=[Stream([event(SNAPSHOT, secret("app", "r1"), index=3)])])
    with FakeAgent(workdir / "fake.sock", servicer) as fake, Client(fake.socket, token_file=workdir / "t") as c:
        with pytest.raises(VaultletError, match="event for unknown index 3") as e:
            next(c.watch("app"))
    assert e.value.code == "INTERNAL"


def test_backoff_doubles_with_jitter_up_to_five_seconds() -> None:
    b = Backoff()
    delays = [b.next_delay() for _ in range(10)]
    caps = [min(BACKOFF_FIRST * 2**i, BACKOFF_MAX) for i in range(10)]
    assert all(cap / 2 <= d <= cap for d, cap in zip(delays, caps)), delays
    b.reset()
    assert b.next_delay() <= BACKOFF_FIRST
