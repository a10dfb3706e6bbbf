"""Property: every message the models accept serialises to XML the official 3.1.0 XSD accepts,
and parses back to an equal model. Messages of every type are generated from the models' own
field declarations, so a model rule looser than the XSD shows up here as a SchemaViolation."""

from __future__ import annotations

import typing
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from enum import Enum
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import AwareDatetime
from pydantic.fields import FieldInfo

from uftp import codec, models

# Printable text plus the odd tab/newline and non-ASCII letter; XML cannot carry controls.
TEXT = st.characters(
    blacklist_categories=("Cs", "Cc"),
    blacklist_characters="\ufffe\uffff",
    whitelist_characters="\t\n\r",
)
ASCII = st.characters(min_codepoint=0x21, max_codepoint=0x7E)


def _constraint(info: FieldInfo, metadata: list[Any], name: str) -> Any:
    for item in [*info.metadata, *metadata]:
        value = getattr(item, name, None)
        if value is not None:
            return value
    return None


def _unwrap(tp: Any) -> tuple[Any, list[Any], bool]:
    metadata: list[Any] = []
    optional = False
    while True:
        origin = typing.get_origin(tp)
        if origin is typing.Annotated:
            metadata.extend(tp.__metadata__)
            tp = typing.get_args(tp)[0]
        elif origin in (typing.Union, __import__("types").UnionType):
            args = [a for a in typing.get_args(tp) if a is not type(None)]
            optional = optional or len(args) < len(typing.get_args(tp))
            tp = args[0]
        else:
            return tp, metadata, optional


def value_strategy(
    tp: Any, info: FieldInfo, metadata: list[Any], name: str
) -> st.SearchStrategy[Any]:
    if tp is AwareDatetime or tp is datetime:
        return st.datetimes(
            min_value=datetime(2000, 1, 1), max_value=datetime(2099, 12, 31), timezones=st.just(UTC)
        )
    if tp is date:
        return st.dates(min_value=date(2000, 1, 1), max_value=date(2099, 12, 31))
    if tp is timedelta:
        return st.sampled_from([5, 15, 30, 60]).map(lambda m: timedelta(minutes=m))
    if tp is bool:
        return st.booleans()
    if isinstance(tp, type) and issubclass(tp, Enum):
        return st.sampled_from(list(tp))
    if tp is bytes:
        return st.binary(min_size=65, max_size=200)
    if tp is int:
        low = _constraint(info, metadata, "ge")
        high = _constraint(info, metadata, "le")
        return st.integers(
            min_value=max(low if low is not None else -(10**12), -(2**63)),
            max_value=min(high if high is not None else 10**12, 2**63 - 1),
        )
    if tp is Decimal:
        places = _constraint(info, metadata, "decimal_places")
        low = _constraint(info, metadata, "ge")
        high = _constraint(info, metadata, "le")
        return st.decimals(
            min_value=low if low is not None else Decimal("-1e9"),
            max_value=high if high is not None else Decimal("1e9"),
            places=places if places is not None else 3,
            allow_nan=False,
            allow_infinity=False,
        )
    if tp is str:
        pattern = _constraint(info, metadata, "pattern")
        if pattern is not None:
            return st.from_regex(pattern, fullmatch=True, alphabet=ASCII)
        return st.text(TEXT, max_size=40)
    raise AssertionError(f"no strategy for {name}: {tp!r}")


def model_strategy(cls: type[models.UftpModel]) -> st.SearchStrategy[models.UftpModel]:
    fields: dict[str, st.SearchStrategy[Any]] = {}
    for name, info in cls.model_fields.items():
        tp, metadata, optional = _unwrap(info.annotation)
        if typing.get_origin(tp) is tuple:
            item = typing.get_args(tp)[0]
            low = 0 if not info.is_required() and info.default == () else 1
            fields[name] = st.lists(
                st.deferred(lambda item=item: model_strategy(item)), min_size=low, max_size=3
            )
        elif isinstance(tp, type) and issubclass(tp, models.UftpModel):
            fields[name] = st.deferred(lambda tp=tp: model_strategy(tp))
        else:
            fields[name] = value_strategy(tp, info, metadata, name)
        if optional:
            fields[name] = st.none() | fields[name]
    return st.fixed_dictionaries(fields).map(lambda data: cls(**data))


ALL_TYPES = sorted(models.MESSAGE_TYPES.values(), key=lambda c: c.xml_name)


@pytest.mark.parametrize("cls", ALL_TYPES, ids=lambda c: c.xml_name)
@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_every_message_type_validates_and_round_trips(
    cls: type[models.PayloadMessage], data: st.DataObject
) -> None:
    message = data.draw(model_strategy(cls))
    xml = codec.to_xml(message)  # raises SchemaViolation if the XSD disagrees
    assert codec.validation_errors(xml) == []
    assert codec.from_xml(xml) == message


@settings(max_examples=40, deadline=None)
@given(envelope=model_strategy(models.SignedMessage))
def test_envelopes_round_trip(envelope: models.SignedMessage) -> None:
    assert codec.envelope_from_xml(codec.to_xml(envelope)) == envelope


def test_the_catalogue_covers_every_global_element_of_the_schema() -> None:
    from importlib import resources

    from lxml import etree

    names: set[str] = set()
    for path in resources.files("uftp.xsd").iterdir():
        if path.name.endswith(".xsd"):
            tree = etree.fromstring(path.read_bytes())
            names.update(
                e.get("name") for e in tree.findall("{http://www.w3.org/2001/XMLSchema}element")
            )
    assert names - {"SignedMessage"} == set(models.MESSAGE_TYPES)
