"""natsconf renders what FLEET.md's permissions say, for any site ids, and refuses input that
would make a broken or unsafe configuration."""

from __future__ import annotations

import json
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.fleet.natsconf import (
    Cluster,
    Node,
    SiteCredentials,
    render_leaf,
    render_node,
    site_inbox_prefix,
    site_permissions,
    site_user,
)
from agent.fleet.protocol import SITE_ID

site_ids = st.from_regex(SITE_ID, fullmatch=True)
secrets_ = st.text(
    alphabet=st.characters(min_codepoint=0x21, max_codepoint=0x7E, exclude_characters='"\\'),
    min_size=8,
    max_size=40,
)


def _cluster(**overrides: object) -> Cluster:
    nodes = tuple(
        Node(
            name=f"n{i}",
            host="127.0.0.1",
            client_port=4222 + i,
            cluster_port=6222 + i,
            http_port=8222 + i,
            store_dir=f"/var/lib/nats/n{i}",
            leaf_port=7422 + i,
        )
        for i in range(3)
    )
    values: dict[str, object] = {
        "nodes": nodes,
        "central_password": "central-secret",
        "route_password": "route-secret",
    }
    values.update(overrides)
    return Cluster(**values)  # type: ignore[arg-type]


def _users_block(text: str) -> list[str]:
    return [
        line.strip().rstrip(",") for line in text.splitlines() if line.strip().startswith("{user:")
    ]


@given(sites=st.lists(site_ids, min_size=1, max_size=8, unique=True))
@settings(max_examples=60)
def test_each_site_may_touch_only_its_own_subjects(sites: list[str]) -> None:
    for site in sites:
        perms = site_permissions(site)
        allowed_pub = perms["publish"]["allow"]
        allowed_sub = perms["subscribe"]["allow"]
        assert allowed_pub == [
            f"fleet.up.{site}.>",
            f"$JS.API.CONSUMER.MSG.NEXT.FLEET_CMD.site-{site}",
            f"$JS.API.CONSUMER.INFO.FLEET_CMD.site-{site}",
            f"$JS.ACK.FLEET_CMD.site-{site}.>",
        ]
        assert allowed_sub == [f"_INBOX_{site}.>"]
        # No wildcard that could reach past the site's own tokens.
        for subject in allowed_pub + allowed_sub:
            tokens = subject.split(".")
            assert "*" not in tokens
            assert tokens.index(">") == len(tokens) - 1 if ">" in tokens else True
            assert site in subject


@given(sites=st.lists(site_ids, min_size=1, max_size=6, unique=True), password=secrets_)
@settings(max_examples=40)
def test_rendered_users_carry_their_own_permissions(sites: list[str], password: str) -> None:
    creds = [SiteCredentials(s, password) for s in sites]
    text = render_node(_cluster(), 0, creds)
    users = _users_block(text)
    assert users[0].startswith('{user: "central"')
    assert "permissions" not in users[0]  # the centre may do anything in the account
    for site, line in zip(sites, users[1:], strict=True):
        assert line.startswith(f"{{user: {json.dumps(site_user(site))}")
        perms = json.loads(line[line.index("permissions: ") + len("permissions: ") : -1])
        assert perms == site_permissions(site)
        assert json.dumps(password) in line


def test_node_config_routes_to_the_others_and_stores_on_file() -> None:
    cluster = _cluster()
    text = render_node(cluster, 1, [])
    assert 'server_name: "n1"' in text
    assert 'listen: "127.0.0.1:4223"' in text
    assert 'http: "127.0.0.1:8223"' in text
    assert 'store_dir: "/var/lib/nats/n1"' in text
    assert "max_file_store: 4GB" in text
    assert 'name: "flexbridge-fleet"' in text
    routes = json.loads(re.search(r"routes: (\[.*\])", text)[1])  # type: ignore[index]
    assert routes == [
        "nats-route://route:route-secret@127.0.0.1:6222",
        "nats-route://route:route-secret@127.0.0.1:6224",
    ]
    assert 'listen: "127.0.0.1:7423"' in text  # leaf nodes
    assert "jetstream: enabled" in text


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"nodes": ()}, "odd number >= 3"),
        ({"central_password": "short"}, "central password"),
        ({"route_password": 'has"quote'}, "route password"),
        ({"max_file_store": "lots"}, "store size"),
        ({"name": "bad name"}, "cluster name"),
    ],
)
def test_bad_cluster_settings_are_refused(overrides: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        _cluster(**overrides)


def test_four_nodes_and_duplicate_names_are_refused() -> None:
    node = _cluster().nodes[0]
    with pytest.raises(ValueError, match="odd number"):
        _cluster(nodes=(node, node, node, node))
    with pytest.raises(ValueError, match="unique"):
        _cluster(nodes=(node, node, node))


@pytest.mark.parametrize(
    ("site", "password"),
    [("A", "password1"), ("a.b", "password1"), ("a", "short"), ("a", "with space")],
)
def test_bad_site_credentials_are_refused(site: str, password: str) -> None:
    with pytest.raises(ValueError):
        SiteCredentials(site, password)


def test_a_site_listed_twice_is_refused() -> None:
    with pytest.raises(ValueError, match="twice"):
        render_node(
            _cluster(), 0, [SiteCredentials("a", "pw-a-1234"), SiteCredentials("a", "x" * 9)]
        )


def test_inbox_prefix_and_user_names() -> None:
    assert site_user("gw-7") == "site-gw-7"
    assert site_inbox_prefix("gw-7") == "_INBOX_gw-7"


def test_leaf_config_connects_as_the_site_and_serves_the_agent_locally() -> None:
    text = render_leaf(
        SiteCredentials("a", "site-a-secret"),
        ["nats-leaf://hub1.example:7422", "nats-leaf://10.0.0.2:7422"],
        local_password="local-secret",
    )
    assert 'listen: "127.0.0.1:4222"' in text
    assert 'users: [{user: agent, password: "local-secret"}]' in text
    remotes = json.loads(re.search(r"urls: (\[.*\])", text)[1])  # type: ignore[index]
    assert remotes == [
        "nats-leaf://site-a:site-a-secret@hub1.example:7422",
        "nats-leaf://site-a:site-a-secret@10.0.0.2:7422",
    ]
    assert "jetstream" not in text  # it stores nothing: the site's outbox does


@pytest.mark.parametrize("url", ["nats://hub:4222", "nats-leaf://hub", "nats-leaf://u:p@hub:7422"])
def test_leaf_refuses_urls_it_cannot_put_credentials_in(url: str) -> None:
    with pytest.raises(ValueError, match="nats-leaf://host:port"):
        render_leaf(SiteCredentials("a", "site-a-secret"), [url], local_password="local-secret")


def test_a_domain_adds_the_prefixed_api_for_the_sites_own_consumer_only() -> None:
    text = render_node(_cluster(domain="fleet"), 0, [SiteCredentials("a", "site-a-secret")])
    assert 'domain: "fleet"' in text
    perms = site_permissions("a", "fleet")
    assert perms["publish"]["allow"] == [
        "fleet.up.a.>",
        "$JS.API.CONSUMER.MSG.NEXT.FLEET_CMD.site-a",
        "$JS.API.CONSUMER.INFO.FLEET_CMD.site-a",
        "$JS.fleet.API.CONSUMER.MSG.NEXT.FLEET_CMD.site-a",
        "$JS.fleet.API.CONSUMER.INFO.FLEET_CMD.site-a",
        "$JS.ACK.FLEET_CMD.site-a.>",
    ]
    assert json.dumps(perms) in text
    with pytest.raises(ValueError, match="domain"):
        _cluster(domain="has.dot")
