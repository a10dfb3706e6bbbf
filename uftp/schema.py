"""The official UFTP 3.1.0 XSDs, compiled once per thread, and a hardened XML parser.

lxml parser and schema objects must not be shared between threads, so each thread gets its
own (compiling the schema takes a few tens of milliseconds, once).

Hardening (issue 3, "hostile input"): no DTD is loaded, no entity is expanded, nothing is
fetched from the network, no "huge tree" mode, and any document that carries a DOCTYPE at all
is refused before and after parsing. UFTP documents never need one.
"""

from __future__ import annotations

import threading
from importlib import resources

from lxml import etree

SCHEMA_PACKAGE = "uftp.xsd"
WRAPPER_SCHEMA = "UFTP-all.xsd"


class _PerThread(threading.local):
    parser: etree.XMLParser | None = None
    schema: etree.XMLSchema | None = None


_local = _PerThread()


def xml_parser() -> etree.XMLParser:
    if _local.parser is None:
        _local.parser = etree.XMLParser(
            resolve_entities=False,
            no_network=True,
            load_dtd=False,
            dtd_validation=False,
            huge_tree=False,
            remove_comments=True,
            remove_pis=True,
            collect_ids=False,
        )
    return _local.parser


def uftp_schema() -> etree.XMLSchema:
    """Every UFTP 3.1.0 element (envelope and inner messages of all role pairs) in one schema."""
    if _local.schema is None:
        files = resources.files(SCHEMA_PACKAGE)
        with resources.as_file(files / WRAPPER_SCHEMA) as path:
            # The schema files are our own package data; parsing them with a parser that
            # cannot reach the network keeps xs:include local.
            doc = etree.parse(str(path), etree.XMLParser(no_network=True, resolve_entities=False))
            _local.schema = etree.XMLSchema(doc)
    return _local.schema
