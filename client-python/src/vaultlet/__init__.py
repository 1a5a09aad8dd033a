"""Python client for vaultlet, the node-local secrets agent for Kubernetes.

    from vaultlet import Client

    with Client() as vaultlet:
        secrets = vaultlet.get_secrets("app", "payments/db:secrets.json")
    password = secrets["app"]["db_password"]
"""

from .aio import AsyncClient
from .client import Client
from .connection import DEFAULT_SOCKET, SOCKET_ENV
from .errors import (
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    Unauthenticated,
    Unavailable,
    VaultletError,
)
from .reference import RefLike, SecretRef
from .secret import Event, EventError, EventKind, Format, Secret
from .token import DEFAULT_TOKEN_FILE, TOKEN_FILE_ENV

__all__ = [
    "AsyncClient",
    "Client",
    "DEFAULT_SOCKET",
    "DEFAULT_TOKEN_FILE",
    "Event",
    "EventError",
    "EventKind",
    "FailedPrecondition",
    "Format",
    "InvalidArgument",
    "NotFound",
    "PermissionDenied",
    "RefLike",
    "SOCKET_ENV",
    "Secret",
    "SecretRef",
    "TOKEN_FILE_ENV",
    "Unauthenticated",
    "Unavailable",
    "VaultletError",
]
