"""UFTP XML <-> models: lxml, no namespace, UTF-8, strict and hardened.

Outbound: `to_xml` builds the document from the model, validates it against the official 3.1.0
XSD and only then returns the bytes; an invalid outbound message raises, because our peers do
not validate (shapeshifter-uftp never does) and a mistake would otherwise surface as a silent
rejection days later.

Inbound: `from_xml` refuses DTDs and entities, never touches the network, bounds the size,
validates against the XSD and then builds the model. One documented tolerance: shapeshifter-uftp
2.4.0 sends `TestMessageResponse` with a `Result` attribute that 3.1.0 does not allow (it
appears only in the unreleased spec, issue #55); those attributes are dropped and the rest
must be valid.
"""

from __future__ import annotations

import base64
import binascii
import logging
import re
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from decimal import Decimal
from enum import Enum
from functools import cache
from typing import Any, TypeVar

from lxml import etree
from pydantic import AwareDatetime, ValidationError

from uftp.models import (
    MESSAGE_TYPES,
    FixedPlaces,
    PayloadMessage,
    SignedMessage,
    UftpModel,
)
from uftp.schema import uftp_schema, xml_parser

log = logging.getLogger(__name__)

DEFAULT_MAX_BYTES = 16 * 1024 * 1024
XML_DECLARATION = b'<?xml version="1.0" encoding="UTF-8"?>\n'

# shapeshifter-uftp 2.4.0 quirk: TestMessageResponse carries these (not in the 3.1.0 XSD).
_TEST_RESPONSE_EXTRAS = ("Result", "RejectionReason")
_OFFSET = re.compile(r"(Z|[+-]\d{2}:\d{2})$")
_DATE_WITH_ZONE = re.compile(r"^(-?\d{4,}-\d{2}-\d{2})(Z|[+-]\d{2}:\d{2})$")


class CodecError(ValueError):
    """Input is not an acceptable UFTP document; the message says why."""


class UnsafeXml(CodecError):
    """DTD, entity declaration, non-UTF-8 encoding or oversize: refused before interpretation."""


class MalformedXml(CodecError):
    """Not well-formed XML."""


class SchemaViolation(CodecError):
    """Well-formed but not valid against the UFTP 3.1.0 XSD."""

    def __init__(self, root: str, errors: list[str]) -> None:
        self.errors = errors
        shown = "; ".join(errors[:3]) + ("; ..." if len(errors) > 3 else "")
        super().__init__(f"{root} is not valid UFTP 3.1.0: {shown}")


class ContentError(CodecError):
    """Schema-valid but the values do not fit the model (e.g. an ISP-Duration in months)."""


M = TypeVar("M", bound=UftpModel)


# --- per-class plans ----------------------------------------------------------------------------


@dataclass(frozen=True)
class _Attribute:
    field: str
    xml: str
    write: Callable[[Any], str]
    kind: type


@dataclass(frozen=True)
class _Child:
    field: str
    tag: str
    model: type[UftpModel]
    many: bool
    # Whether the child element needs more than its attributes copied (children of its own,
    # or values to normalise).
    nested: bool


@dataclass(frozen=True)
class _Plan:
    attributes: tuple[_Attribute, ...]
    children: tuple[_Child, ...]
    datetimes: frozenset[str]
    dates: frozenset[str]
    binaries: frozenset[str]
    special: bool  # some attribute needs normalising before validation
    by_tag: dict[str, _Child]


def _unwrap(tp: Any) -> tuple[Any, list[Any]]:
    """`X | None` and `Annotated[X, ...]` -> (X, annotation metadata)."""
    metadata: list[Any] = []
    while True:
        origin = typing.get_origin(tp)
        if origin in (typing.Union, types.UnionType):
            args = [a for a in typing.get_args(tp) if a is not type(None)]
            if len(args) != 1:
                raise TypeError(f"unsupported union {tp!r}")
            tp = args[0]
        elif origin is typing.Annotated:
            metadata.extend(tp.__metadata__)
            tp = typing.get_args(tp)[0]
        else:
            return (datetime if tp is AwareDatetime else tp), metadata


def _write_bool(value: bool) -> str:
    return "true" if value else "false"


def _write_datetime(value: datetime) -> str:
    # Always with an offset; the models hold UTC.
    return value.isoformat()


def _write_duration(value: timedelta) -> str:
    return f"PT{int(value.total_seconds()) // 60}M"


def _write_decimal(places: int | None) -> Callable[[Decimal], str]:
    if places is None:
        # 'f' never produces exponent notation, which xs:decimal does not allow.
        return lambda value: format(value, "f")
    return lambda value: format(value, f".{places}f")


def _write_bytes(value: bytes) -> str:
    return base64.b64encode(value).decode("ascii")


def _writer(kind: Any, metadata: list[Any]) -> Callable[[Any], str]:
    if kind is bool:
        return _write_bool
    if kind is int or kind is str:
        return str
    if isinstance(kind, type) and issubclass(kind, Enum):
        return lambda value: str(value.value)
    if kind is Decimal:
        places = next((m.places for m in metadata if isinstance(m, FixedPlaces)), None)
        return _write_decimal(places)
    if kind is datetime:
        return _write_datetime
    if kind is date:
        return date.isoformat
    if kind is timedelta:
        return _write_duration
    if kind is bytes:
        return _write_bytes
    raise TypeError(f"no XML writer for {kind!r}")


@cache
def _plan(cls: type[UftpModel]) -> _Plan:
    attributes: list[_Attribute] = []
    children: list[_Child] = []
    for name, info in cls.model_fields.items():
        xml = info.alias or name
        tp, metadata = _unwrap(info.annotation)
        many = typing.get_origin(tp) is tuple
        inner = typing.get_args(tp)[0] if many else tp
        if isinstance(inner, type) and issubclass(inner, UftpModel):
            child_plan = _plan(inner)
            nested = bool(child_plan.children) or child_plan.special
            children.append(_Child(name, xml, inner, many, nested))
        else:
            inner, more = _unwrap(inner)
            writer = _writer(inner, [*info.metadata, *metadata, *more])
            attributes.append(_Attribute(name, xml, writer, inner))
    datetimes = frozenset(a.xml for a in attributes if a.kind is datetime)
    dates = frozenset(a.xml for a in attributes if a.kind is date)
    binaries = frozenset(a.xml for a in attributes if a.kind is bytes)
    return _Plan(
        attributes=tuple(attributes),
        children=tuple(children),
        datetimes=datetimes,
        dates=dates,
        binaries=binaries,
        special=bool(datetimes or dates or binaries),
        by_tag={child.tag: child for child in children},
    )


# --- writing ------------------------------------------------------------------------------------


def _element(model: UftpModel, tag: str, parent: etree._Element | None) -> etree._Element:
    plan = _plan(type(model))
    attrib: dict[str, str] = {}
    for attribute in plan.attributes:
        value = getattr(model, attribute.field)
        if value is not None:
            attrib[attribute.xml] = attribute.write(value)
    element = (
        etree.Element(tag, attrib) if parent is None else etree.SubElement(parent, tag, attrib)
    )
    for child in plan.children:
        value = getattr(model, child.field)
        if value is None:
            continue
        for item in value if child.many else (value,):
            _element(item, child.tag, element)
    return element


def _schema_errors(schema: etree.XMLSchema) -> list[str]:
    return [f"line {e.line}: {e.message}" for e in schema.error_log]


def to_xml(message: PayloadMessage | SignedMessage) -> bytes:
    """The UTF-8 document for `message`, validated against the official 3.1.0 XSD.

    Raises SchemaViolation when the result is not valid: our own output must never be what a
    peer rejects.
    """
    if not message.xml_name:
        raise TypeError(f"{type(message).__name__} is not a UFTP message")
    root = _element(message, message.xml_name, None)
    schema = uftp_schema()
    if not schema.validate(root):
        raise SchemaViolation(message.xml_name, _schema_errors(schema))
    return XML_DECLARATION + etree.tostring(root, encoding="UTF-8", xml_declaration=False)


# --- reading ------------------------------------------------------------------------------------


def _check_safe(data: bytes, max_bytes: int) -> None:
    if not isinstance(data, bytes | bytearray | memoryview):
        raise TypeError(f"expected bytes, got {type(data).__name__}")
    if len(data) > max_bytes:
        raise UnsafeXml(f"document of {len(data)} bytes exceeds the limit of {max_bytes}")
    if not data:
        raise MalformedXml("empty document")
    head = bytes(data[:4])
    if head.startswith((b"\xff\xfe", b"\xfe\xff", b"\x00\x00", b"\x00<", b"<\x00")):
        raise UnsafeXml("document is not UTF-8 (UFTP messages are UTF-8)")
    # No UFTP document has a DTD. Refusing it outright closes billion-laughs, external
    # entities (file or network reads) and parameter-entity tricks at once.
    if b"<!DOCTYPE" in data or b"<!ENTITY" in data:
        raise UnsafeXml("DTDs and entity declarations are not allowed")


def _parse(data: bytes, max_bytes: int) -> etree._Element:
    _check_safe(data, max_bytes)
    try:
        root = etree.fromstring(bytes(data), xml_parser())
    except etree.XMLSyntaxError as exc:
        raise MalformedXml(f"not well-formed XML: {exc}") from None
    docinfo = root.getroottree().docinfo
    if docinfo.doctype:
        raise UnsafeXml("DTDs are not allowed")
    if (docinfo.encoding or "UTF-8").upper() != "UTF-8":
        raise UnsafeXml(f"document encoding {docinfo.encoding!r} is not UTF-8")
    return root


def _validate(root: etree._Element) -> None:
    schema = uftp_schema()
    if schema.validate(root):
        return
    errors = _schema_errors(schema)
    if root.tag == "TestMessageResponse" and any(a in root.attrib for a in _TEST_RESPONSE_EXTRAS):
        for name in _TEST_RESPONSE_EXTRAS:
            root.attrib.pop(name, None)
        if schema.validate(root):
            log.debug("dropped Result from a TestMessageResponse (shapeshifter-uftp quirk)")
            return
        errors = _schema_errors(schema)
    raise SchemaViolation(_tag(root), errors)


def _data(element: etree._Element, cls: type[UftpModel]) -> dict[str, Any]:
    plan = _plan(cls)
    data: dict[str, Any] = dict(element.items())
    if plan.special:
        _normalise(data, plan)
    if plan.children:
        by_tag = plan.by_tag
        for sub in element:
            tag = sub.tag
            if not isinstance(tag, str):
                continue
            child = by_tag[tag]
            # Leaf elements (ISPs, 96 of them in a prognosis) are plain attribute dicts.
            value = _data(sub, child.model) if child.nested else dict(sub.items())
            if child.many:
                data.setdefault(tag, []).append(value)
            else:
                data[tag] = value
    return data


def _normalise(data: dict[str, Any], plan: _Plan) -> None:
    for name in plan.datetimes & data.keys():
        text = data[name].strip()
        # 3.1.0 makes the offset optional (xs:dateTime); a value without one is read as UTC.
        data[name] = text if _OFFSET.search(text) else text + "+00:00"
    for name in plan.dates & data.keys():
        match = _DATE_WITH_ZONE.match(data[name].strip())
        if match:
            # xs:date may carry a zone; a Period is a local calendar day, so it adds nothing.
            data[name] = match.group(1)
    for name in plan.binaries & data.keys():
        try:
            data[name] = binascii.a2b_base64(data[name].encode("ascii"))
        except (binascii.Error, UnicodeEncodeError) as exc:
            raise ContentError(f"{name} is not base64: {exc}") from None


def _tag(element: etree._Element) -> str:
    tag = element.tag
    return tag if isinstance(tag, str) else repr(tag)


def _model(element: etree._Element, cls: type[M]) -> M:
    try:
        return cls.model_validate(_data(element, cls))
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']}" for err in exc.errors()[:3]
        )
        raise ContentError(f"{_tag(element)}: {problems}") from None
    except KeyError as exc:  # an element the schema allowed but the model does not know
        raise ContentError(f"{_tag(element)}: unexpected element {exc}") from None


def from_xml(data: bytes, *, max_bytes: int = DEFAULT_MAX_BYTES) -> PayloadMessage:
    """Parse and validate an inner UFTP message (anything but the SignedMessage envelope)."""
    root = _parse(data, max_bytes)
    _validate(root)
    cls = MESSAGE_TYPES.get(_tag(root))
    if cls is None:
        raise CodecError(f"{_tag(root)} is not an inner UFTP message")
    return _model(root, cls)


def envelope_from_xml(data: bytes, *, max_bytes: int = DEFAULT_MAX_BYTES) -> SignedMessage:
    """Parse and validate a SignedMessage envelope (the HTTP request body)."""
    root = _parse(data, max_bytes)
    if root.tag != SignedMessage.xml_name:
        raise CodecError(f"expected a SignedMessage envelope, got {_tag(root)}")
    _validate(root)
    return _model(root, SignedMessage)


def validation_errors(data: bytes) -> list[str]:
    """XSD errors of a document (empty when valid), without the TestMessageResponse tolerance.

    For tests and tooling that check documents produced elsewhere.
    """
    root = _parse(data, DEFAULT_MAX_BYTES)
    schema = uftp_schema()
    return [] if schema.validate(root) else _schema_errors(schema)
