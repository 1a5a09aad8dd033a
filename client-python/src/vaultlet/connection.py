"""Where the agent listens, and the channel settings every connection to it needs."""

from __future__ import annotations

import os
from typing import List, Optional, Tuple, Union

SOCKET_ENV = "VAULTLET_SOCKET"
DEFAULT_SOCKET = "/run/vaultlet/vaultlet.sock"

PathLike = Union[str, "os.PathLike[str]"]

CHANNEL_OPTIONS: List[Tuple[str, Union[str, int]]] = [
    # grpc-core otherwise sends the percent-encoded socket path as :authority,
    # and the agent's HTTP/2 server refuses it (`INTERNAL: RST_STREAM`).
    ("grpc.default_authority", "localhost"),
    # After a failed connection grpc-core fails every call until its own
    # reconnect timer fires (1 s, growing to 2 minutes); keep that timer within
    # the watch's backoff so a restarted agent is reached promptly.
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 5000),
]


def socket_path(socket: Optional[PathLike]) -> str:
    """`socket`, else `VAULTLET_SOCKET`, else `/run/vaultlet/vaultlet.sock`; made absolute."""
    if socket is None:
        socket = os.environ.get(SOCKET_ENV) or DEFAULT_SOCKET
    return os.path.abspath(os.fspath(socket))


def target(socket: str) -> str:
    return f"unix:{socket}"
