"""Principals scope every name a client sends: store names, conversation keys, roles, key lists."""

from __future__ import annotations

import pytest

from app.auth.admin import parse_duration, since_timestamp
from app.auth.authenticator import bearer_token
from app.auth.principal import Principal
from ingest.vector_index import (
    CollectionNotFound,
    InvalidCollectionName,
    InvalidTenantName,
    split_store_name,
    store_name,
)

pytestmark = pytest.mark.unit


def test_store_names_keep_the_default_tenant_bare_and_prefix_the_others() -> None:
    assert store_name("default", "hr") == "hr"  # a data dir from before tenants keeps its collections
    assert store_name("acme", "hr") == "acme.hr"
    assert split_store_name("hr") == ("default", "hr")
    assert split_store_name("acme.hr") == ("acme", "hr")
    for bad in ("default.hr", "Acme.hr", "a.b.c", "acme.", ".hr"):
        with pytest.raises(InvalidCollectionName):
            split_store_name(bad)
    with pytest.raises(InvalidTenantName):
        store_name("ACME", "hr")
    with pytest.raises(InvalidCollectionName):
        store_name("acme", "h.r")  # a '.' in a collection name could forge another tenant's


def test_a_principal_maps_names_and_hides_what_its_key_may_not_touch() -> None:
    limited = Principal(tenant="acme", role="reader", key_id="key_1", collections=frozenset({"hr"}))
    assert limited.collection("hr") == "acme.hr"
    with pytest.raises(CollectionNotFound):
        limited.collection("legal")
    assert limited.visible("acme.hr") == "hr"
    assert limited.visible("acme.legal") is None and limited.visible("other.hr") is None
    assert limited.visible("hr") is None  # the default tenant's hr
    assert Principal.anonymous().visible("hr") == "hr" and Principal.anonymous().visible("acme.hr") is None


def test_conversation_keys_cannot_be_forged_across_tenants() -> None:
    default, acme = Principal.anonymous(), Principal(tenant="acme", role="reader")
    assert default.conversation_key("c1") == "c1"
    assert acme.conversation_key("c1") == "acme/c1"
    # The default tenant sending "acme/c1" must not land on acme's "c1".
    assert default.conversation_key("acme/c1") == "default/acme/c1" != acme.conversation_key("c1")
    assert acme.conversation_key("x/y") == "acme/x/y"


def test_roles_are_ordered() -> None:
    reader, writer, admin = (Principal(tenant="t", role=r) for r in ("reader", "writer", "admin"))
    assert reader.has_role("reader") and not reader.has_role("writer")
    assert writer.has_role("writer") and not writer.has_role("admin")
    assert admin.has_role("reader") and admin.has_role("admin")


def test_bearer_tokens_and_durations() -> None:
    assert bearer_token("Bearer abc") == "abc" and bearer_token("bearer  abc ") == "abc"
    assert (
        bearer_token("Basic abc") is None and bearer_token("Bearer ") is None and bearer_token(None) is None
    )
    assert (
        parse_duration("30d") == 30 * 86400
        and parse_duration("90") == 90
        and parse_duration("2w") == 14 * 86400
    )
    for bad in ("soon", "-1d", "0", "1y"):
        with pytest.raises(ValueError):
            parse_duration(bad)
    assert since_timestamp("1h", now=10_000.0) == 6400.0
    assert since_timestamp("1795000000", now=0.0) == 1795000000.0
    assert since_timestamp(None) is None
