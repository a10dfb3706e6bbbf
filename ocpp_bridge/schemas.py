"""Schema validation of OCPP payloads with validators compiled from the `ocpp` library's schemas.

The library validates with jsonschema's Draft4Validator: ~0.6 ms per 1.6 MeterValues and
~1.3 ms per 2.0.1 TransactionEvent, most of a CSMS's CPU (OCPP.md §2.8). fastjsonschema turns
the same schema files into Python code once (~35-70 µs per message), so every inbound message
is still validated against the official schema at a fraction of the cost.

Semantics follow the library: formats (date-time) are not checked here, because the library
does not either and chargers in the field send zone-less timestamps that the shell reads as UTC
(`timestamps.parse_timestamp`). Outbound CALLs keep the library's own validator (it carries the
1.6 Decimal handling of ``multipleOf: 0.1``); they are rare.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from importlib import resources
from typing import Any

import fastjsonschema
from ocpp.exceptions import (
    FormatViolationError,
    OccurrenceConstraintViolationError,
    OCPPError,
    PropertyConstraintViolationError,
    ProtocolError,
    TypeConstraintViolationError,
)

from ocpp_bridge.events import ProtocolVersion

Validator = Callable[[Any], Any]

_cache: dict[tuple[ProtocolVersion, str], Validator | None] = {}

# JSON-schema keyword -> OCPP-J error code (1.6 §4.2.3, 2.0.1 OCPP-J §4.3). The library maps
# type/maxLength, additionalProperties and required the same way; the rest it calls
# FormatViolation, where the spec's more specific codes fit better.
_ERRORS: dict[str, type[OCPPError]] = {
    "type": TypeConstraintViolationError,
    "maxLength": TypeConstraintViolationError,
    "additionalProperties": FormatViolationError,
    "required": ProtocolError,
    "minItems": OccurrenceConstraintViolationError,
    "maxItems": OccurrenceConstraintViolationError,
    "enum": PropertyConstraintViolationError,
    "minimum": PropertyConstraintViolationError,
    "maximum": PropertyConstraintViolationError,
    "exclusiveMinimum": PropertyConstraintViolationError,
    "pattern": PropertyConstraintViolationError,
    "minLength": PropertyConstraintViolationError,
}


class SchemaNotFound(LookupError):
    """No schema for this action in this version: the action does not exist there."""


def _schema_file(version: ProtocolVersion, name: str) -> str | None:
    folder = "v16" if version is ProtocolVersion.OCPP16 else "v201"
    path = resources.files("ocpp").joinpath(folder, "schemas", f"{name}.json")
    if not path.is_file():
        return None
    # 2.0.1 schema files start with a byte-order mark.
    return path.read_text(encoding="utf-8-sig")


def schema_name(version: ProtocolVersion, action: str, *, response: bool) -> str:
    if version is ProtocolVersion.OCPP16:
        return f"{action}Response" if response else action
    return f"{action}Response" if response else f"{action}Request"


def validator_for(version: ProtocolVersion, action: str, *, response: bool) -> Validator:
    """The compiled validator for an action's request or response (cached)."""
    key = (version, schema_name(version, action, response=response))
    if key not in _cache:
        text = _schema_file(version, key[1])
        if text is None:
            _cache[key] = None
        else:
            schema = json.loads(text)
            # The 2.0.1 files carry a urn $id that fastjsonschema would try to resolve refs
            # against; every ref in them is document-local.
            schema.pop("$id", None)
            schema.pop("id", None)
            _cache[key] = fastjsonschema.compile(schema, use_formats=False)
    found = _cache[key]
    if found is None:
        raise SchemaNotFound(f"OCPP {version} has no action {action!r}")
    return found


def has_action(version: ProtocolVersion, action: str) -> bool:
    try:
        validator_for(version, action, response=False)
    except SchemaNotFound:
        return False
    return True


def validate(version: ProtocolVersion, action: str, payload: Any, *, response: bool) -> None:
    """Raise the OCPP error a peer should get for `payload`, or return quietly."""
    check = validator_for(version, action, response=response)
    try:
        check(payload)
    except fastjsonschema.JsonSchemaValueException as exc:
        error = _ERRORS.get(exc.rule or "", FormatViolationError)
        where = exc.name.replace("data", action, 1) if exc.name else action
        raise error(
            description=f"{where}: {exc.message.removeprefix(exc.name or 'data').strip()}",
            details={"path": where, "rule": exc.rule},
        ) from None


def warm_up(version: ProtocolVersion, actions: tuple[str, ...]) -> None:
    """Compile validators ahead of the first message (compilation takes milliseconds each)."""
    for action in actions:
        validator_for(version, action, response=False)
        validator_for(version, action, response=True)
