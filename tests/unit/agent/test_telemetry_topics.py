"""The topic tree and Home Assistant discovery ids: safe topic levels, valid and distinct ids."""

from __future__ import annotations

import re
from urllib.parse import unquote

from hypothesis import given
from hypothesis import strategies as st

from agent.interfaces.telemetry.topics import HomeAssistant, Topics, object_id, topic_level

ids = st.text(min_size=1, max_size=60).filter(lambda s: "\0" not in s)


@given(ids)
def test_topic_level_has_no_reserved_characters_and_decodes_back(value: str) -> None:
    level = topic_level(value)
    assert not set(level) & {"/", "+", "#", "\0"}
    assert unquote(level) == value


@given(ids, ids)
def test_distinct_ids_get_distinct_topic_levels(a: str, b: str) -> None:
    if a != b:
        assert topic_level(a) != topic_level(b)


@given(ids)
def test_object_id_uses_only_what_home_assistant_allows(value: str) -> None:
    assert re.fullmatch(r"[a-zA-Z0-9_-]+", object_id(value))


def test_object_id_keeps_plain_ids_and_tells_escaped_ones_apart() -> None:
    assert object_id("CP-01") == "CP-01"
    # '+' and '*' are legal in an OCPP identity; both would become '_' without the hash.
    assert object_id("CP+1") != object_id("CP*1")
    assert object_id("CP+1").startswith("CP_1_")


def test_charger_topics_escape_mqtt_wildcards() -> None:
    topics = Topics("flexbridge", "north")
    assert topics.charger_state("CP+1") == "flexbridge/north/charger/CP%2B1/state"
    assert (
        topics.prognosis("ea1.2020-01.example.com:cp/1#a")
        == "flexbridge/north/congestion_point/ea1.2020-01.example.com:cp%2F1%23a/prognosis"
    )


def test_every_charger_entity_has_a_unique_id_and_the_site_as_via_device() -> None:
    ha = HomeAssistant(Topics("flexbridge", "north"), "homeassistant", "1.2.3")
    configs = {**ha.charger("CP-01"), **ha.charger("CP-02"), **ha.site("North", ["ean.1"])}
    unique = [c["unique_id"] for c in configs.values()]
    assert len(set(unique)) == len(unique) == 5 + 5 + 10
    for topic, config in configs.items():
        assert re.fullmatch(
            r"homeassistant/(sensor|binary_sensor)/flexbridge_north/[a-zA-Z0-9_-]+/config", topic
        )
        assert config["availability_topic"] == "flexbridge/north/status"
        if config["device"]["identifiers"] != ["flexbridge_north"]:
            assert config["device"]["via_device"] == "flexbridge_north"
