"""The asyncio client (grpc.aio): the same calls as `Client`, awaitable."""

from __future__ import annotations

import asyncio
import logging
from types import TracebackType
from typing import Any, AsyncIterator, Dict, Optional, Set, Type, overload

import grpc
import grpc.aio

from .connection import CHANNEL_OPTIONS, PathLike, socket_path, target
from .errors import from_rpc_error
from .get import get_request, secrets_by_ref
from .reference import RefLike
from .secret import Event, Secret
from .token import auth_metadata, token_file_path
from .v1 import secrets_pb2 as pb
from .v1.secrets_pb2_grpc import SecretsStub
from .watch import TRANSIENT, Backoff, Reauth, WatchState

log = logging.getLogger("vaultlet")


class AsyncClient:
    """A connection to the vaultlet agent for asyncio code; see `Client` for
    the arguments. Make it inside the event loop that uses it:
    `async with AsyncClient() as client:`.
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
        self._channel = grpc.aio.insecure_channel(target(self.socket), options=CHANNEL_OPTIONS)
        self._stub = SecretsStub(self._channel)
        self._closed = False
        # Closing a grpc.aio channel does not wake a stream being read, so
        # `close` cancels the watches' calls itself.
        self._watches: Set[grpc.aio.UnaryStreamCall[pb.WatchSecretsRequest, pb.SecretEvent]] = set()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(
        self, exc_type: Optional[Type[BaseException]], exc: Optional[BaseException], tb: Optional[TracebackType]
    ) -> None:
        await self.close()

    async def close(self) -> None:
        """Closes the connection; watches in progress end."""
        self._closed = True
        for call in list(self._watches):
            call.cancel()
        await self._channel.close()

    @overload
    async def get_secrets(self, *refs: str) -> Dict[str, Secret]: ...
    @overload
    async def get_secrets(self, *refs: RefLike) -> Dict[RefLike, Secret]: ...
    async def get_secrets(self, *refs: RefLike) -> Dict[Any, Secret]:
        """See `Client.get_secrets`."""
        request, given = get_request(refs)
        try:
            response = await self._stub.GetSecrets(
                request, timeout=self._timeout, metadata=auth_metadata(self._token_file)
            )
        except grpc.RpcError as e:
            raise from_rpc_error(e) from e
        return secrets_by_ref(given, response)

    def watch(self, *refs: RefLike) -> AsyncIterator[Event]:
        """See `Client.watch`; iterate with `async for`."""
        return self._follow(WatchState(refs))

    async def _follow(self, state: WatchState) -> AsyncIterator[Event]:
        backoff, reauth = Backoff(), Reauth()
        while not self._closed:
            reauth.opened()
            call = self._stub.WatchSecrets(state.request(), metadata=auth_metadata(self._token_file))
            self._watches.add(call)
            try:
                async for message in call:
                    backoff.reset()
                    reauth.accepted()
                    event = state.accept(message)
                    if event is not None:
                        yield event
                why = "the agent ended the stream"
            except grpc.RpcError as e:
                if self._closed:
                    return
                if e.code() not in TRANSIENT and not reauth.allows(e.code()):
                    raise from_rpc_error(e) from e
                why = str(from_rpc_error(e))
            except asyncio.CancelledError:
                # `close` cancelled the call; otherwise the caller's task is being cancelled.
                if self._closed:
                    return
                raise
            finally:
                self._watches.discard(call)
                call.cancel()
            delay = backoff.next_delay()
            log.debug("vaultlet watch reconnecting in %.2f s: %s", delay, why)
            await asyncio.sleep(delay)
