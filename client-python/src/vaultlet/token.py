"""The caller's ServiceAccount token. Kubelet rotates the projected token in
place, so it is read again on every call."""

from __future__ import annotations

import os
from typing import Optional, Tuple, Union

from .errors import Unauthenticated

TOKEN_FILE_ENV = "VAULTLET_TOKEN_FILE"
DEFAULT_TOKEN_FILE = "/var/run/secrets/vaultlet/token"

Metadata = Tuple[Tuple[str, str], ...]


def token_file_path(token_file: Optional[Union[str, os.PathLike[str]]]) -> str:
    """`token_file`, else `VAULTLET_TOKEN_FILE`, else the projected token's default path."""
    if token_file is not None:
        return os.fspath(token_file)
    return os.environ.get(TOKEN_FILE_ENV) or DEFAULT_TOKEN_FILE


def auth_metadata(token_file: str) -> Metadata:
    """`authorization: Bearer TOKEN` with the token as the file holds it now,
    trimmed (token files often end with a newline, and a JWT with one is
    refused); nothing when the file does not exist (development mode needs no
    token)."""
    try:
        with open(token_file, "rb") as f:
            token = f.read().strip()
    except FileNotFoundError:
        return ()
    except OSError as e:
        raise Unauthenticated(f"cannot read the token file {token_file}: {e.strerror or e}") from None
    if not token:
        raise Unauthenticated(f"the token file {token_file} is empty")
    # Metadata values are printable ASCII; anything else cannot be a token.
    if not all(0x20 <= b <= 0x7E for b in token):
        raise Unauthenticated(f"the token file {token_file} holds characters a token cannot contain")
    return (("authorization", "Bearer " + token.decode("ascii")),)
