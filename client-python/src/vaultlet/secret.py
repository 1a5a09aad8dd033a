"""What the agent hands back: secrets (read-only mappings that never print
their values) and watch events."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Iterator, Literal, Mapping, Optional

from .errors import code_name, protocol_error
from .reference import RefLike, SecretRef
from .v1 import secrets_pb2 as pb

#: Document format, as in the `vaultlet.io/format` annotation.
Format = Literal["UNSPECIFIED", "JSON", "YAML", "ENV", "RAW"]
#: What an event says happened; `UNKNOWN` is a kind newer than this client.
EventKind = Literal["SNAPSHOT", "CONTENT_CHANGED", "RECRYPTED", "DELETED", "ERROR", "UNKNOWN"]

_FORMATS: Dict[int, Format] = {
    pb.FORMAT_JSON: "JSON",
    pb.FORMAT_YAML: "YAML",
    pb.FORMAT_ENV: "ENV",
    pb.FORMAT_RAW: "RAW",
}
_KINDS: Dict[int, EventKind] = {
    pb.EVENT_KIND_SNAPSHOT: "SNAPSHOT",
    pb.EVENT_KIND_CONTENT_CHANGED: "CONTENT_CHANGED",
    pb.EVENT_KIND_RECRYPTED: "RECRYPTED",
    pb.EVENT_KIND_DELETED: "DELETED",
    pb.EVENT_KIND_ERROR: "ERROR",
}


class Secret(Mapping[str, str]):
    """One secret (or the part of it a reference selects) at one revision: a
    read-only mapping field -> value.

    Strings are given as they are; other JSON/YAML values (numbers, booleans,
    nested objects) as compact JSON text. `repr` and `str` show the field names,
    never the values.
    """

    __slots__ = ("_ref", "_revision", "_key_version", "_values", "_raw", "_format")

    def __init__(
        self,
        ref: SecretRef,
        revision: str,
        key_version: int,
        values: Mapping[str, str],
        raw: Optional[bytes],
        format: Format,
    ) -> None:
        self._ref = ref
        self._revision = revision
        self._key_version = key_version
        self._values = dict(values)
        self._raw = raw
        self._format = format

    @property
    def ref(self) -> SecretRef:
        """The reference as resolved by the agent (namespace filled in)."""
        return self._ref

    @property
    def revision(self) -> str:
        """Opaque: changes whenever the secret changes. Compare for equality only."""
        return self._revision

    @property
    def key_version(self) -> int:
        """Transit key version of the ciphertext; 0 when the source is not encrypted (dev mode)."""
        return self._key_version

    @property
    def raw(self) -> Optional[bytes]:
        """The plaintext document as stored, when the reference names a single
        document and no field subset (the only content of a document that is
        not an object)."""
        return self._raw

    @property
    def format(self) -> Format:
        return self._format

    def __getitem__(self, field: str) -> str:
        return self._values[field]

    def __iter__(self) -> Iterator[str]:
        return iter(self._values)

    def __len__(self) -> int:
        return len(self._values)

    def __repr__(self) -> str:
        return (
            f"Secret(ref={str(self._ref)!r}, revision={self._revision!r}, key_version={self._key_version}, "
            f"format={self._format!r}, fields={sorted(self._values)!r})"
        )

    __str__ = __repr__

    @classmethod
    def from_proto(cls, m: pb.Secret) -> Secret:
        if not m.HasField("ref"):
            raise protocol_error("secret without reference")
        return cls(
            ref=SecretRef.from_proto(m.ref),
            revision=m.revision,
            key_version=m.key_version,
            values=m.values,
            raw=m.raw or None,
            format=_FORMATS.get(m.format, "UNSPECIFIED"),
        )


@dataclass(frozen=True)
class EventError:
    """Why the newest version of a secret cannot be served."""

    #: A gRPC status name, e.g. `"FAILED_PRECONDITION"` (cannot be decrypted or parsed).
    code: str
    #: What went wrong, for a person; never contains a value.
    message: str
    #: The revision that failed; the event's `secret` keeps the last good one.
    revision: str

    @classmethod
    def from_proto(cls, m: pb.EventError) -> EventError:
        return cls(code=code_name(m.code), message=m.message, revision=m.revision)


@dataclass(frozen=True)
class Event:
    """One event of a watch.

    - `SNAPSHOT`: the current state, first for each reference;
    - `CONTENT_CHANGED`: new values (also: the secret appeared);
    - `RECRYPTED`: same values, new ciphertext (key rotation);
    - `DELETED`: the secret does not exist (any more); `secret` is empty;
    - `ERROR`: the newest version cannot be served; `secret` keeps the last
      good values (empty if there never were any) and `error` says why.
    """

    kind: EventKind
    #: Position of the reference in the arguments of `watch`.
    index: int
    #: The reference as given to `watch`.
    ref: RefLike
    secret: Secret
    error: Optional[EventError]

    @classmethod
    def from_proto(cls, m: pb.SecretEvent, ref: RefLike) -> Event:
        if not m.HasField("secret"):
            raise protocol_error("event without secret")
        return cls(
            kind=_KINDS.get(m.kind, "UNKNOWN"),
            index=m.index,
            ref=ref,
            secret=Secret.from_proto(m.secret),
            error=EventError.from_proto(m.error) if m.HasField("error") else None,
        )
