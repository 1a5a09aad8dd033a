"""What both clients' watches share: the bookkeeping that lets a watch resume
after an agent restart without yielding anything twice, which failures are
worth a reconnect, and the backoff between attempts.

The agent ends a watch UNAUTHENTICATED when the token it was opened with
expires; kubelet has rotated the token file by then, so the watch reconnects
with the file read again (`Reauth`). PERMISSION_DENIED (access revoked) ends
the watch."""

from __future__ import annotations

import random
import time
from dataclasses import dataclass
from typing import List, Optional, Sequence

import grpc

from .errors import protocol_error
from .reference import RefLike, SecretRef, as_ref
from .secret import Event
from .v1 import secrets_pb2 as pb

BACKOFF_FIRST = 0.1
BACKOFF_MAX = 5.0

# What a restart of the agent produces; anything else is about the request
# itself (a bad reference, a refused token) and ends the watch.
TRANSIENT = frozenset(
    {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.UNKNOWN, grpc.StatusCode.INTERNAL, grpc.StatusCode.CANCELLED}
)


@dataclass
class _Held:
    """What the caller holds for one reference."""

    revision: Optional[str] = None
    deleted: bool = False
    failed_revision: Optional[str] = None

    def is_news(self, e: Event) -> bool:
        """False when the event repeats what the caller already has (after a reconnect)."""
        if e.kind == "DELETED":
            return not self.deleted
        if e.kind == "ERROR":
            return (e.error.revision if e.error else None) != self.failed_revision
        return self.revision != e.secret.revision

    def update(self, e: Event) -> None:
        if e.kind == "DELETED":
            self.revision, self.deleted, self.failed_revision = None, True, None
        elif e.kind == "ERROR":
            self.failed_revision = e.error.revision if e.error else None
        else:
            self.revision, self.deleted, self.failed_revision = e.secret.revision, False, None


class WatchState:
    """The references of one watch and what the caller holds of each."""

    def __init__(self, refs: Sequence[RefLike]) -> None:
        self._given = list(refs)
        # Parsed now, so that a malformed reference fails the `watch` call itself.
        self._refs: List[SecretRef] = [as_ref(r) for r in self._given]
        self._held = [_Held() for _ in self._refs]

    def request(self) -> pb.WatchSecretsRequest:
        """Asks for every reference, with the revision already held so the agent
        skips snapshots that would repeat it."""
        return pb.WatchSecretsRequest(
            secrets=[
                pb.WatchedSecret(ref=r.to_proto(), known_revision=h.revision or "")
                for r, h in zip(self._refs, self._held)
            ]
        )

    def accept(self, message: pb.SecretEvent) -> Optional[Event]:
        """The event for the caller, or None when it already has it."""
        if message.index >= len(self._given):
            raise protocol_error(f"event for unknown index {message.index}")
        event = Event.from_proto(message, self._given[message.index])
        held = self._held[event.index]
        if not held.is_news(event):
            return None
        held.update(event)
        return event


REAUTH_ATTEMPTS = 5
"""Reconnects after UNAUTHENTICATED before the watch gives up (the token file
was not rotated: the token is bad for good)."""
SETTLED = 30.0
"""Seconds a stream stays open that prove its token was good: the attempts refill."""


class Reauth:
    """Whether an UNAUTHENTICATED is worth a reconnect: only for a watch the
    agent accepted before (its token has expired since), a few times."""

    def __init__(self) -> None:
        self._accepted = False
        self._left = REAUTH_ATTEMPTS
        self._opened_at = time.monotonic()

    def opened(self) -> None:
        self._opened_at = time.monotonic()

    def accepted(self) -> None:
        self._accepted = True

    def allows(self, code: grpc.StatusCode) -> bool:
        if code != grpc.StatusCode.UNAUTHENTICATED or not self._accepted:
            return False
        if time.monotonic() - self._opened_at >= SETTLED:
            self._left = REAUTH_ATTEMPTS
        if self._left == 0:
            return False
        self._left -= 1
        return True


class Backoff:
    """Exponential backoff with jitter, so that a node's pods do not all
    reconnect at the same instant when their agent comes back."""

    def __init__(self) -> None:
        self._attempt = 0

    def reset(self) -> None:
        self._attempt = 0

    def next_delay(self) -> float:
        """Seconds to wait: a random point in the upper half of a cap that
        doubles from 100 ms to at most 5 s."""
        cap = min(BACKOFF_FIRST * (1 << min(self._attempt, 6)), BACKOFF_MAX)
        self._attempt += 1
        return cap * (0.5 + random.random() / 2)
