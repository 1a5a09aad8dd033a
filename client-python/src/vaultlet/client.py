"""The blocking client: a gRPC channel over the agent's Unix socket, and the two calls."""

from __future__ import annotations

import logging
import threading
from types import TracebackType
from typing import Any, Dict, Iterator, Optional, Type, overload

import grpc

from .connection import CHANNEL_OPTIONS, PathLike, socket_path, target
from .errors import from_rpc_error
from .get import get_request, secrets_by_ref
from .reference import RefLike
from .secret import Event, Secret
from .token import auth_metadata, token_file_path
from .v1.secrets_pb2_grpc import SecretsStub
from .watch import TRANSIENT, Backoff, Reauth, WatchState

log = logging.getLogger("vaultlet")


class Client:
    """A connection to the vaultlet agent. Thread-safe: one per process is enough.

    `socket` defaults to `VAULTLET_SOCKET`, else `/run/vaultlet/vaultlet.sock`;
    the token is read from `token_file` (default `VAULTLET_TOKEN_FILE`, else
    `/var/run/secrets/vaultlet/token`) on every call, and not sent while that
    file does not exist. `timeout` (seconds) bounds each `get_secrets` call.
    Nothing is connected until the first call.
    """

    def __init__(
        self,
        socket: Optional[PathLike] = None,
        *,
        token_file: Optional[PathLike] = None,
        timeout: Optional[float] = None,
    ) -> None:
        self.socket = socket_path(socket)
        self._token_file = token_file_path(token_file)
        self._timeout = timeout
        self._channel = grpc.insecure_channel(target(self.socket), options=CHANNEL_OPTIONS)
        self._stub = SecretsStub(self._channel)
        self._closed = threading.Event()

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self, exc_type: Optional[Type[BaseException]], exc: Optional[BaseException], tb: Optional[TracebackType]
    ) -> None:
        self.close()

    def close(self) -> None:
        """Closes the connection; watches in progress end."""
        self._closed.set()
        self._channel.close()

    @overload
    def get_secrets(self, *refs: str) -> Dict[str, Secret]: ...
    @overload
    def get_secrets(self, *refs: RefLike) -> Dict[RefLike, Secret]: ...
    def get_secrets(self, *refs: RefLike) -> Dict[Any, Secret]:
        """Reads several secrets in one round trip, keyed by each reference as
        given: `get_secrets("app", "payments/db:secrets.json")`.

        All or nothing: if one reference fails, the call raises that
        reference's error (`NotFound`, `PermissionDenied`, ...).
        """
        request, given = get_request(refs)
        try:
            response = self._stub.GetSecrets(request, timeout=self._timeout, metadata=auth_metadata(self._token_file))
        except grpc.RpcError as e:
            raise from_rpc_error(e) from e
        return secrets_by_ref(given, response)

    def watch(self, *refs: RefLike) -> Iterator[Event]:
        """Follows secrets: first a `SNAPSHOT` (or `DELETED`) per reference, then
        an event whenever one changes.

        Reconnects by itself, with jittered backoff, when the agent restarts
        or ends the watch because its token expired (the token file is read
        again: kubelet has rotated it), resuming from what was already yielded:
        no revision, deletion or error is yielded twice. Raises the agent's
        error when it refuses the request itself (a bad reference, a refused
        token) or revokes access (`PermissionDenied`); ends when the client is
        closed. A malformed reference raises `InvalidArgument` here, at once.
        """
        return self._follow(WatchState(refs))

    def _follow(self, state: WatchState) -> Iterator[Event]:
        backoff, reauth = Backoff(), Reauth()
        while not self._closed.is_set():
            try:
                reauth.opened()
                call = self._stub.WatchSecrets(state.request(), metadata=auth_metadata(self._token_file))
            except ValueError:
                # grpc refuses a closed channel: `close` ran in another thread
                # since the check above.
                if self._closed.is_set():
                    return
                raise
            try:
                for message in call:
                    backoff.reset()
                    reauth.accepted()
                    event = state.accept(message)
                    if event is not None:
                        yield event
                why = "the agent ended the stream"
            except grpc.RpcError as e:
                if self._closed.is_set():
                    return
                if e.code() not in TRANSIENT and not reauth.allows(e.code()):
                    raise from_rpc_error(e) from e
                why = str(from_rpc_error(e))
            finally:
                call.cancel()
            delay = backoff.next_delay()
            log.debug("vaultlet watch reconnecting in %.2f s: %s", delay, why)
            if self._closed.wait(delay):
                return
