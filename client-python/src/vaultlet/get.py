"""The wire form of `get_secrets`, shared by both clients."""

from __future__ import annotations

from typing import Dict, List, Sequence, Tuple

from .errors import protocol_error
from .reference import RefLike, as_ref
from .secret import Secret
from .v1 import secrets_pb2 as pb


def get_request(refs: Sequence[RefLike]) -> Tuple[pb.GetSecretsRequest, List[RefLike]]:
    """The request for `refs`, and the references as given. Parsing them here
    raises `InvalidArgument` before any call."""
    given = list(refs)
    return pb.GetSecretsRequest(refs=[as_ref(r).to_proto() for r in given]), given


def secrets_by_ref(given: List[RefLike], response: pb.GetSecretsResponse) -> Dict[RefLike, Secret]:
    """The answer keyed by each reference as given (the agent answers in request order)."""
    if len(response.secrets) != len(given):
        raise protocol_error(f"asked for {len(given)} secrets, got {len(response.secrets)}")
    return {ref: Secret.from_proto(s) for ref, s in zip(given, response.secrets)}
