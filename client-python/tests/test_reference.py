"""References follow the same syntax and Kubernetes naming rules as the Rust client."""

from __future__ import annotations

import pytest

from vaultlet import InvalidArgument, SecretRef
from vaultlet.reference import MAX_FIELDS


def test_parses_every_form() -> None:
    assert SecretRef.parse("app") == SecretRef(name="app")
    assert SecretRef.parse("payments/db") == SecretRef(name="db", namespace="payments")
    r = SecretRef.parse("payments/db:secrets.json")
    assert (r.namespace, r.name, r.data_key) == ("payments", "db", "secrets.json")
    assert str(r) == "payments/db:secrets.json"
    r = SecretRef.parse("db:config.yaml")
    assert (r.namespace, r.name, r.data_key) == ("", "db", "config.yaml")
    assert str(SecretRef.parse("app.v2")) == "app.v2"


@pytest.mark.parametrize(
    "bad", ["", "/db", "a/b/c", "Upper", "db:", "db:a/b", "ns/", "-db", "db-", "ns_x/db", "db:..", "a b", "é"]
)
def test_refuses_malformed_refs(bad: str) -> None:
    with pytest.raises(InvalidArgument) as e:
        SecretRef.parse(bad)
    assert e.value.code == "INVALID_ARGUMENT"


def test_length_limits() -> None:
    with pytest.raises(InvalidArgument, match="secret name"):
        SecretRef.parse("a" * 254)
    with pytest.raises(InvalidArgument, match="namespace"):
        SecretRef.parse("a" * 64 + "/db")
    assert SecretRef.parse("a" * 63 + "/" + ".".join(["b" * 63] * 3) + ":" + "k" * 253)


def test_messages_name_the_bad_part() -> None:
    with pytest.raises(InvalidArgument, match='invalid secret name "Upper"'):
        SecretRef.parse("Upper")
    with pytest.raises(InvalidArgument, match='invalid data key ""'):
        SecretRef.parse("db:")
    with pytest.raises(InvalidArgument, match=r"reference is empty; expected \[NAMESPACE/\]NAME\[:DATA_KEY\]"):
        SecretRef.parse("")


def test_fields_are_checked_and_kept_hashable() -> None:
    r = SecretRef.parse("db", fields=["user", "password"])
    assert r.fields == ("user", "password")
    assert {r: 1}[SecretRef(name="db", fields=("user", "password"))] == 1
    with pytest.raises(InvalidArgument, match="invalid field"):
        SecretRef(name="db", fields=("",))
    with pytest.raises(InvalidArgument, match="too many fields"):
        SecretRef(name="db", fields=("x",) * (MAX_FIELDS + 1))
