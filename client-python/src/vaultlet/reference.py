"""Secret references, `[NAMESPACE/]NAME[:DATA_KEY]`, and the Kubernetes naming
rules they follow (the agent checks the same rules; checking them here turns a
typo into an error before any call)."""

from __future__ import annotations

import json
import string
from dataclasses import dataclass
from typing import Iterable, Optional, Tuple, Union

from .errors import InvalidArgument
from .v1 import secrets_pb2 as pb

#: Most fields one reference may select (the agent refuses more).
MAX_FIELDS = 256
_MAX_FIELD_BYTES = 253
_LOWER_ALNUM = frozenset(string.ascii_lowercase + string.digits)
_DATA_KEY_CHARS = frozenset(string.ascii_letters + string.digits + "-_.")
_USAGE = "expected [NAMESPACE/]NAME[:DATA_KEY]"


@dataclass(frozen=True)
class SecretRef:
    """Names a secret, one data key of it, or a subset of its fields.

    Checked when made: a malformed reference raises `InvalidArgument`.
    """

    name: str
    #: Empty: the caller's own namespace.
    namespace: str = ""
    #: One key of the Secret's `data`; None: all of them, their fields merged.
    data_key: Optional[str] = None
    #: Only these fields of the document; empty: all fields.
    fields: Tuple[str, ...] = ()

    def __post_init__(self) -> None:
        # Accept any iterable of fields but keep a tuple, so references stay hashable.
        object.__setattr__(self, "fields", tuple(self.fields))
        self._validate()

    @classmethod
    def parse(cls, text: str, fields: Iterable[str] = ()) -> SecretRef:
        """Reads the text form `[NAMESPACE/]NAME[:DATA_KEY]`."""
        if not text:
            raise InvalidArgument(f"reference is empty; {_USAGE}")
        path, colon, data_key = text.partition(":")
        namespace, slash, name = path.partition("/")
        if not slash:
            namespace, name = "", path
        elif not namespace:
            raise InvalidArgument(_namespace_error(namespace))
        return cls(name=name, namespace=namespace, data_key=data_key if colon else None, fields=tuple(fields))

    def __str__(self) -> str:
        text = f"{self.namespace}/{self.name}" if self.namespace else self.name
        return f"{text}:{self.data_key}" if self.data_key is not None else text

    def _validate(self) -> None:
        if self.namespace and not is_dns_label(self.namespace):
            raise InvalidArgument(_namespace_error(self.namespace))
        if not is_dns_subdomain(self.name):
            if not self.name:
                raise InvalidArgument(f"reference is empty; {_USAGE}")
            raise InvalidArgument(
                f"invalid secret name {_quote(self.name)}: a name is 1-253 lowercase letters, digits, '-' or '.', "
                "starting and ending with a letter or digit"
            )
        if self.data_key is not None and not is_data_key(self.data_key):
            raise InvalidArgument(
                f"invalid data key {_quote(self.data_key)}: a data key is 1-253 letters, digits, '-', '_' or '.' "
                "(not '.' or '..')"
            )
        if len(self.fields) > MAX_FIELDS:
            raise InvalidArgument(f"too many fields: {len(self.fields)} (at most {MAX_FIELDS})")
        for field in self.fields:
            if not field or len(field.encode()) > _MAX_FIELD_BYTES:
                raise InvalidArgument(f"invalid field {_quote(field)}: a field name is 1-{_MAX_FIELD_BYTES} characters")

    def to_proto(self) -> pb.SecretRef:
        return pb.SecretRef(
            namespace=self.namespace, name=self.name, data_key=self.data_key or "", fields=list(self.fields)
        )

    @classmethod
    def from_proto(cls, m: pb.SecretRef) -> SecretRef:
        return cls(name=m.name, namespace=m.namespace, data_key=m.data_key or None, fields=tuple(m.fields))


#: What the client methods accept: the text form, or a `SecretRef` (which can
#: also select fields).
RefLike = Union[str, SecretRef]


def as_ref(ref: RefLike) -> SecretRef:
    return ref if isinstance(ref, SecretRef) else SecretRef.parse(ref)


def _quote(s: str) -> str:
    """Quoted as the agent quotes names in its messages, so both read alike."""
    return json.dumps(s, ensure_ascii=False)


def _namespace_error(namespace: str) -> str:
    return (
        f"invalid namespace {_quote(namespace)}: a namespace is 1-63 lowercase letters, digits or '-', "
        "starting and ending with a letter or digit"
    )


def is_dns_label(s: str) -> bool:
    """RFC 1123 label, as Kubernetes namespaces are."""
    return (
        0 < len(s) <= 63
        and s[0] in _LOWER_ALNUM
        and s[-1] in _LOWER_ALNUM
        and all(c in _LOWER_ALNUM or c == "-" for c in s)
    )


def is_dns_subdomain(s: str) -> bool:
    """RFC 1123 subdomain, as Kubernetes object names are."""
    return len(s) <= 253 and all(is_dns_label(label) for label in s.split("."))


def is_data_key(s: str) -> bool:
    """A key of a Secret's `data` (`[-._a-zA-Z0-9]+`)."""
    return 0 < len(s) <= 253 and s not in (".", "..") and all(c in _DATA_KEY_CHARS for c in s)
