"""Masking by the model: every secret value, at any depth, becomes `***` (hypothesis builds
payloads around a canary; the canary must never survive)."""

from __future__ import annotations

import json
from typing import Annotated

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import AliasChoices, BaseModel, Field, SecretBytes, SecretStr

from sluice.message import SECRET, mask_secrets
from sluice.settings import mask_url

CANARY = "canary-7f3a"


class Inner(BaseModel):
    token: SecretStr
    name: str = ""


class Payload(BaseModel):
    password: SecretStr
    keys: list[SecretStr] = []
    maybe: Annotated[SecretBytes, Field(min_length=1)] | None = None
    tagged: str = Field("", validation_alias=AliasChoices("tag", "tagged_as"),
                        json_schema_extra=SECRET)
    aliased: SecretStr | None = Field(None, alias="Aliased")
    inner: Inner | None = None
    inners: list[Inner] = []
    by_name: dict[str, Inner] = {}
    plain: str = ""


def _inner() -> st.SearchStrategy[dict[str, str]]:
    return st.fixed_dictionaries({"token": st.just(CANARY), "name": st.text(max_size=5)})


PAYLOADS = st.fixed_dictionaries(
    {"password": st.just(CANARY)},
    optional={"keys": st.lists(st.just(CANARY), max_size=3), "maybe": st.just(CANARY),
              "tag": st.just(CANARY), "tagged_as": st.just(CANARY), "tagged": st.just(CANARY),
              "Aliased": st.just(CANARY), "aliased": st.just(CANARY), "inner": _inner(),
              "inners": st.lists(_inner(), max_size=3),
              "by_name": st.dictionaries(st.text(min_size=1, max_size=4), _inner(),
                                         max_size=3),
              "plain": st.text(max_size=10).filter(lambda t: CANARY not in t)})


@given(PAYLOADS)
def test_no_secret_value_survives_masking(payload: dict[str, object]) -> None:
    masked = mask_secrets(Payload, payload)
    assert CANARY not in json.dumps(masked)
    assert masked.get("plain") == payload.get("plain")  # and nothing else is touched


@pytest.mark.parametrize("url, secret", [
    ("redis://:s3cret@h:6379/0", "s3cret"), ("redis://user:s3cret@h/0", "s3cret"),
    ("redis://h/0?password=s3cret&db=1", "s3cret"),
    ("postgresql+psycopg2://u:s3cret@h/db?sslpassword=s3cret", "s3cret")])
def test_every_password_form_is_masked_in_urls(url: str, secret: str) -> None:
    assert secret not in mask_url(url) and "***" in mask_url(url)


def test_a_url_without_secrets_is_printed_as_it_is() -> None:
    assert mask_url("sqlite:///sluice.db") == "sqlite:///sluice.db"
