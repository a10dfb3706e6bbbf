"""Schema validation of OCPP payloads with validators compiled from the `ocpp` library's schemas.

The library validates with jsonschema's Draft4Validator: ~0.6 ms per 1.6 MeterValues and
~1.3 ms per 2.0.1 TransactionEvent, most of a CSMS's CPU (bench/ocpp.py). fastjsonschema turns
the same schema files into Python code once (~35-70 µs per message), so every inbound message
is still validated against the official schema at a fraction of the cost.

Semantics follow the library: formats (date-time) are not checked here, because the library
does not either and chargers in the field send zone-less timestamps that the shell reads as UTC
(`timestamps.parse_timestamp`). Outbound CALLs keep the library's own validator (it carries the
1.6 Decimal handling of ``multipleOf: 0.1``); they are rare.

The action name comes from the charger, so it is checked against the version's list of actions
(the library's `Action` enums, one schema file pair each) before anything touches the disk: a
name like ``../../../tmp/x/evil`` must never become a path, because fastjsonschema turns a schema
into Python code and runs it. Only those known names are compiled and cached, which bounds the
cache at two validators per action.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import fastjsonschema
import ocpp
from ocpp.exceptions import (
    FormatViolationError,
    OccurrenceConstraintViolationError,
    OCPPError,
    PropertyConstraintViolationError,
    ProtocolError,
    TypeConstraintViolationError,
)
from ocpp.v16.enums import Action as Action16
from ocpp.v201.enums import Action as Action201

from ocpp_bridge.events import ProtocolVersion

Validator = Callable[[Any], Any]

ACTIONS: Mapping[ProtocolVersion, frozenset[str]] = {
    ProtocolVersion.OCPP16: frozenset(a.value for a in Action16),
    ProtocolVersion.OCPP201: frozenset(a.value for a in Action201),
}
_FOLDERS = {ProtocolVersion.OCPP16: "v16", ProtocolVersion.OCPP201: "v201"}
_PACKAGE = Path(ocpp.__file__).resolve().parent

# A request and a response validator per known action: the cache cannot grow beyond this.
CACHE_LIMIT = 2 * sum(len(actions) for actions in ACTIONS.values())
_cache: dict[tuple[ProtocolVersion, str], Validator] = {}
# The same validators by (version, action, response), for `validate`; known actions only.
_by_action: dict[tuple[ProtocolVersion, str, bool], Validator] = {}

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


def schema_dir(version: ProtocolVersion) -> Path:
    """The folder of the `ocpp` package that holds this version's official schema files."""
    return _PACKAGE / _FOLDERS[version] / "schemas"


def _schema_file(version: ProtocolVersion, name: str) -> str:
    folder = schema_dir(version).resolve()
    path = (folder / f"{name}.json").resolve()
    # Callers pass known action names only; this is the second line, should that ever change.
    if path.parent != folder:
        raise SchemaNotFound(f"schema {name!r} is not a file of {folder}")
    # 2.0.1 schema files start with a byte-order mark.
    return path.read_text(encoding="utf-8-sig")


def schema_name(version: ProtocolVersion, action: str, *, response: bool) -> str:
    if version is ProtocolVersion.OCPP16:
        return f"{action}Response" if response else action
    return f"{action}Response" if response else f"{action}Request"


def has_action(version: ProtocolVersion, action: str) -> bool:
    """Whether `action` is an action of this OCPP version (no disk access)."""
    return action in ACTIONS[version]


def validator_for(version: ProtocolVersion, action: str, *, response: bool) -> Validator:
    """The compiled validator for an action's request or response (cached)."""
    if not has_action(version, action):
        raise SchemaNotFound(f"OCPP {version} has no action {action[:64]!r}")
    key = (version, schema_name(version, action, response=response))
    found = _cache.get(key)
    if found is None:
        schema = json.loads(_schema_file(version, key[1]))
        # The 2.0.1 files carry a urn $id that fastjsonschema would try to resolve refs
        # against; every ref in them is document-local.
        schema.pop("$id", None)
        schema.pop("id", None)
        # use_default=False: a check, never a rewrite. Filling the schemas' defaults would change
        # what a relay forwards (2.0.1 unitOfMeasure.multiplier the charger never sent).
        found = fastjsonschema.compile(schema, use_formats=False, use_default=False)
        _cache[key] = found
    return found


def cached_validators() -> int:
    """How many validators are compiled (at most `CACHE_LIMIT`)."""
    return len(_cache)


def validate(version: ProtocolVersion, action: str, payload: Any, *, response: bool) -> None:
    """Raise the OCPP error a peer should get for `payload`, or return quietly."""
    # Every relayed or handled message comes here: the compiled validator by one lookup.
    check = _by_action.get((version, action, response))
    if check is None:
        check = validator_for(version, action, response=response)
        _by_action[(version, action, response)] = check
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
