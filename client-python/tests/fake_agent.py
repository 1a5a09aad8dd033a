"""An in-process gRPC server that speaks the wire API from a script, for what
the real agent in dev mode cannot show: the metadata a client sends, key
rotation (RECRYPTED), refusals (UNAUTHENTICATED, PERMISSION_DENIED) and exact
event sequences across reconnects."""

from __future__ import annotations

import time
from concurrent import futures
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Tuple

import grpc

from vaultlet.v1 import secrets_pb2 as pb
from vaultlet.v1.secrets_pb2_grpc import SecretsServicer, add_SecretsServicer_to_server

Status = Tuple[grpc.StatusCode, str]


@dataclass
class Stream:
    """What one WatchSecrets call gets: these events, then the end of the
    stream (status None), or a status."""

    events: List[pb.SecretEvent]
    status: Optional[Status] = None


def secret(name: str, revision: str, key_version: int = 1, **values: str) -> pb.Secret:
    return pb.Secret(
        ref=pb.SecretRef(namespace="default", name=name),
        revision=revision,
        key_version=key_version,
        values=values,
        format=pb.FORMAT_JSON,
    )


def event(kind: pb.EventKind, s: pb.Secret, index: int = 0, failed: str = "") -> pb.SecretEvent:
    error = pb.EventError(code=9, message="cannot decrypt", revision=failed) if failed else None
    return pb.SecretEvent(kind=kind, index=index, secret=s, error=error)


@dataclass
class ScriptedSecrets(SecretsServicer):
    streams: List[Stream] = field(default_factory=list)
    #: GetSecrets fails with this status when set.
    get_status: Optional[Status] = None
    #: The invocation metadata of every call, in order.
    metadata: List[Dict[str, str]] = field(default_factory=list)
    watch_requests: List[pb.WatchSecretsRequest] = field(default_factory=list)

    def _record(self, context: grpc.ServicerContext) -> None:
        self.metadata.append({k: str(v) for k, v in context.invocation_metadata()})

    def GetSecrets(self, request: pb.GetSecretsRequest, context: grpc.ServicerContext) -> pb.GetSecretsResponse:
        self._record(context)
        if self.get_status is not None:
            context.abort(*self.get_status)
        return pb.GetSecretsResponse(secrets=[secret(r.name, "r1", value="v") for r in request.refs])

    def WatchSecrets(self, request: pb.WatchSecretsRequest, context: grpc.ServicerContext) -> Iterator[pb.SecretEvent]:
        self._record(context)
        self.watch_requests.append(request)
        if not self.streams:
            # Script exhausted: hold the stream open until the client leaves.
            while context.is_active():
                time.sleep(0.02)
            return
        stream = self.streams.pop(0)
        yield from stream.events
        if stream.status is not None:
            context.abort(*stream.status)


class FakeAgent:
    def __init__(self, socket: Path, servicer: ScriptedSecrets) -> None:
        self.socket = socket
        self.servicer = servicer
        self._server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        add_SecretsServicer_to_server(servicer, self._server)
        self._server.add_insecure_port(f"unix:{socket}")

    def __enter__(self) -> FakeAgent:
        self._server.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.stop(grace=None)
