"""The client's exceptions: one class per gRPC status the agent answers with,
all under `VaultletError`, each carrying the status code name and the agent's
message (written for a person, never containing a value)."""

from __future__ import annotations

from typing import Dict, Optional, Type

import grpc


class VaultletError(Exception):
    """An error from the agent, or from reaching it.

    `code` is the canonical gRPC status name (`"NOT_FOUND"`), `message` what
    went wrong.
    """

    code: str = "UNKNOWN"

    def __init__(self, message: str, code: Optional[str] = None) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code

    def __str__(self) -> str:
        return f"{self.code}: {self.message}"


class InvalidArgument(VaultletError):
    """A malformed reference (raised before any call), or a request the agent refuses."""

    code = "INVALID_ARGUMENT"


class NotFound(VaultletError):
    """The secret, its data key or a field does not exist."""

    code = "NOT_FOUND"


class PermissionDenied(VaultletError):
    """Policy does not let this ServiceAccount read the secret."""

    code = "PERMISSION_DENIED"


class Unauthenticated(VaultletError):
    """No token, or one the agent refuses (expired, wrong audience, another pod's)."""

    code = "UNAUTHENTICATED"


class Unavailable(VaultletError):
    """The agent cannot be reached, or its backend is down with nothing cached."""

    code = "UNAVAILABLE"


class FailedPrecondition(VaultletError):
    """The secret exists but cannot be decrypted or parsed."""

    code = "FAILED_PRECONDITION"


_BY_CODE: Dict[str, Type[VaultletError]] = {
    cls.code: cls for cls in (InvalidArgument, NotFound, PermissionDenied, Unauthenticated, Unavailable, FailedPrecondition)
}

_NAME_BY_NUMBER: Dict[int, str] = {status.value[0]: status.name for status in grpc.StatusCode}


def code_name(number: int) -> str:
    """The name of a status code number (`5` -> `"NOT_FOUND"`); `"UNKNOWN"` for numbers newer than this client."""
    return _NAME_BY_NUMBER.get(number, "UNKNOWN")


def error_for(code: str, message: str) -> VaultletError:
    """The exception class for `code`, or `VaultletError` for codes without one."""
    cls = _BY_CODE.get(code)
    return cls(message) if cls is not None else VaultletError(message, code)


def from_rpc_error(e: grpc.RpcError) -> VaultletError:
    return error_for(e.code().name, e.details() or "")


def protocol_error(what: str) -> VaultletError:
    """The agent sent something this client cannot use (a version mismatch)."""
    return VaultletError(f"unexpected answer from the agent: {what}", "INTERNAL")
